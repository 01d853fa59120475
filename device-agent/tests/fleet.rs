//! A fleet that keeps updating for years: one release built per model and hardware revision,
//! bootloader floors, repositories that grow fields older agents never heard of, a pump that
//! sat switched off through many root rotations, and ed25519 and ECDSA P-256 keys side by side.
//! Every refusal asserts the exact error and that nothing persisted changed (slots, running
//! version, security counter, trusted metadata).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// `drop(store)` is the power going off: it ends the borrow of the flash memory
#![allow(clippy::drop_non_drop)]

mod common;

use common::*;
use device_agent::{AgentError, Boot, DeviceInfo, FirmwareStore, Outcome, Slot, SlotState};
use hale_core::limits::DEFAULT_MAX_ROOT_ROTATIONS;
use hale_core::policy::PolicyError;
use hale_core::{Error, Name, Version};
use hale_repo::keys::{KeyKind, SigningKey};
use hale_tests::{key, tamper_signed, RepoSim, DAY};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PUMP_A_R1: &str = "pump-a/r1/firmware.bin";
const PUMP_A_R2: &str = "pump-a/r2/firmware.bin";
const PUMP_B: &str = "pump-b/firmware.bin";
const YEAR: i64 = 365 * DAY;

type AgentErr = AgentError<MapError, device_agent::memflash::MemFlashError>;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn pump(model: &'static str, revision: &'static str, target: &'static str) -> DeviceInfo<'static> {
    DeviceInfo {
        model,
        revision,
        bootloader: Version::new(1, 2, 0),
        target,
        rollback_target: None,
    }
}

/// The 2.0.0 image built for one hardware variant (distinct bytes per variant).
fn build_for(variant: &str) -> Vec<u8> {
    image_bytes(&format!("2.0.0 {variant}"), 4000 + variant.len() * 100)
}

fn firmware(version: &str, hardware: Value, min_bootloader: &str) -> Value {
    json!({"hardware": hardware, "version": version, "security_counter": 2,
           "min_bootloader": min_bootloader})
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One release: an image per model and revision, each at its own target path.
fn release_per_variant() -> RepoSim {
    let mut sim = RepoSim::new();
    for (path, hardware) in [
        (PUMP_A_R1, json!([{"model": "pump-a", "revisions": ["r1"]}])),
        (PUMP_A_R2, json!([{"model": "pump-a", "revisions": ["r2"]}])),
        (
            PUMP_B,
            json!([{"model": "pump-b", "revisions": ["r1", "r2"]}]),
        ),
    ] {
        sim.add_target(
            "targets",
            path,
            &build_for(path),
            Some(firmware("2.0.0", hardware, "1.0.0")),
        );
    }
    sim.publish();
    sim
}

/// Lists `image` at `TARGET` as 2.0.0 (security counter 2, for pump-a), then publishes.
fn release(sim: &mut RepoSim, image: &[u8]) {
    sim.add_target("targets", TARGET, image, Some(custom("2.0.0", 2, "pump-a")));
    sim.publish();
}

/// The pump stages exactly `want` in slot B: its record and its bytes.
fn assert_staged(store: &mut FirmwareStore<Flash<'_>>, want: &[u8]) {
    let info = store.slots().info(Slot::B);
    assert_eq!(info.state, SlotState::Pending);
    let img = info.image.unwrap();
    assert_eq!(img.sha256, sha(want), "the staged record names the image");
    assert_eq!(img.length, want.len() as u64);
    let mut buf = vec![0u8; want.len()];
    store.read_slot(Slot::B, 0, &mut buf).unwrap();
    assert!(buf == want, "slot B holds exactly the published bytes");
}

/// The state a refused check must leave alone, plus the running image and counter spelled out.
fn assert_untouched(store: &mut FirmwareStore<Flash<'_>>, before: &Persisted) {
    assert_eq!(&persisted(store), before);
    let s = store.slots();
    assert_eq!(s.running().unwrap().version, v("1.0.0"));
    assert_eq!(s.security_counter(), 1);
    assert_eq!(s.info(Slot::B).state, before.slots.info(Slot::B).state);
}

/// A refused check, run twice: the first may persist metadata that verified (refusal comes after
/// the refresh), the second must change nothing at all. Slots never change. No image is fetched.
fn assert_refused_twice(
    mem: &mut [u8],
    sim: &RepoSim,
    device: &DeviceInfo<'_>,
    want: &AgentErr,
) -> Persisted {
    let mut store = open_store(mem);
    let slots = store.slots();
    for round in 0..2 {
        let before = persisted(&mut store);
        let mut t = MapTransport::new(&sim.files);
        let err = check_as(&mut store, device, &mut t, &mut Pump::default()).unwrap_err();
        assert_eq!(&err, want);
        assert_eq!(store.slots(), slots);
        assert!(
            !t.requests.iter().any(|r| r.starts_with("targets/")),
            "no image bytes fetched: {:?}",
            t.requests
        );
        if round == 1 {
            assert_untouched(&mut store, &before);
        }
    }
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    persisted(&mut store)
}

// --- 1. one release, an image per model and revision ---------------------------------------

#[test]
fn one_release_gives_each_model_and_revision_exactly_its_own_image() {
    let sim = release_per_variant();
    for device in [
        pump("pump-a", "r1", PUMP_A_R1),
        pump("pump-a", "r2", PUMP_A_R2),
        pump("pump-b", "r2", PUMP_B),
    ] {
        let mut mem = provisioned(&sim);
        let mut store = open_store(&mut mem);
        let mut t = MapTransport::new(&sim.files);
        assert_eq!(
            check_as(&mut store, &device, &mut t, &mut Pump::default()).unwrap(),
            Outcome::Staged {
                version: v("2.0.0")
            },
            "{device:?}"
        );
        let want = build_for(device.target);
        assert_staged(&mut store, &want);
        // only its own image was downloaded
        let own = sim.target_file_name(device.target);
        let images: Vec<_> = t
            .requests
            .iter()
            .filter(|r| r.starts_with("targets/"))
            .map(|r| r.split('@').next().unwrap())
            .collect();
        assert!(
            !images.is_empty() && images.iter().all(|r| *r == own),
            "{images:?}"
        );
        drop(store);
        let mut store = open_store(&mut mem);
        assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
        store.confirm().unwrap();
        assert_eq!(store.slots().running().unwrap().sha256, sha(&want));
    }
}

#[test]
fn a_pump_pointed_at_another_variants_image_refuses_it_and_changes_nothing() {
    let sim = release_per_variant();
    // pump-a r1 configured with r2's path: the model matches, the revision does not
    let mut mem = provisioned(&sim);
    assert_refused_twice(
        &mut mem,
        &sim,
        &pump("pump-a", "r1", PUMP_A_R2),
        &AgentError::Policy(PolicyError::WrongRevision {
            model: Name::new("pump-a"),
            revision: Name::new("r1"),
        }),
    );
    // pump-b configured with pump-a r1's path
    let mut mem = provisioned(&sim);
    assert_refused_twice(
        &mut mem,
        &sim,
        &pump("pump-b", "r1", PUMP_A_R1),
        &AgentError::Policy(PolicyError::WrongModel {
            model: Name::new("pump-b"),
        }),
    );
    // pump-a r2 configured with pump-b's path
    let mut mem = provisioned(&sim);
    assert_refused_twice(
        &mut mem,
        &sim,
        &pump("pump-a", "r2", PUMP_B),
        &AgentError::Policy(PolicyError::WrongModel {
            model: Name::new("pump-a"),
        }),
    );
}

// --- 2. min_bootloader ------------------------------------------------------------------------

#[test]
fn an_image_needing_a_newer_bootloader_waits_until_the_bootloader_is_updated() {
    let mut sim = RepoSim::new();
    let image = build_for("bl");
    sim.add_target(
        "targets",
        TARGET,
        &image,
        Some(firmware(
            "2.0.0",
            json!([{"model": "pump-a", "revisions": ["r2"]}]),
            "1.3.0",
        )),
    );
    sim.publish();
    let mut mem = provisioned(&sim);
    let old = DeviceInfo {
        bootloader: v("1.2.9"),
        ..device()
    };
    assert_refused_twice(
        &mut mem,
        &sim,
        &old,
        &AgentError::Policy(PolicyError::BootloaderTooOld {
            required: v("1.3.0"),
            have: v("1.2.9"),
        }),
    );
    // the bootloader is updated (to exactly the floor): the same pump, the same flash, installs
    let updated = DeviceInfo {
        bootloader: v("1.3.0"),
        ..device()
    };
    let mut store = open_store(&mut mem);
    assert_eq!(
        check_as(
            &mut store,
            &updated,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default()
        )
        .unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_staged(&mut store, &image);
}

// --- 3. an agent that predates new fields ----------------------------------------------------

/// A release whose metadata carries fields this agent has never heard of, everywhere a
/// repository might add them; root version 2 carries some too.
fn repo_from_the_future() -> (RepoSim, Vec<u8>) {
    let mut sim = RepoSim::new();
    let image = build_for("future");
    let custom = json!({
        "hardware": [{"model": "pump-a", "revisions": ["r1", "r2"],
                      "board_id": 7, "radio": {"band": "ism-2.4", "fcc_id": "X-123"}}],
        "version": "2.0.0", "security_counter": 2, "min_bootloader": "1.0.0",
        "sbom": "pump-a/2.0.0/sbom.spdx.json",
        "rollout": {"wave": 3, "percent": 25, "regions": ["eu", "us"]},
        "therapy_limits": {"max_bolus_units": 25}
    });
    sim.add_target("targets", TARGET, &image, Some(custom));
    let entry = sim.targets.targets.get_mut(TARGET).unwrap();
    entry["x-build"] = json!({"reproducible": true, "toolchain": "rust 1.99"});
    entry["signatures_detached"] = json!([]);
    sim.targets
        .extra
        .insert("x-release-notes".into(), json!("pump-a/2.0.0/notes.md"));
    sim.snapshot
        .extra
        .insert("x-mirrors".into(), json!(["https://cdn.example"]));
    sim.timestamp
        .extra
        .insert("x-poll-interval".into(), json!(3600));
    sim.rotate_root(|r| {
        r.root
            .extra
            .insert("x-fleet".into(), json!({"ca": "device-root-2031"}));
    });
    sim.publish();
    (sim, image)
}

#[test]
fn an_old_agent_verifies_and_installs_metadata_with_fields_it_never_heard_of() {
    let (sim, image) = repo_from_the_future();
    // the fields really are in what the agent fetches, inside `signed`
    let targets: Value =
        serde_json::from_slice(&sim.files[&format!("{}.targets.json", sim.targets.version)])
            .unwrap();
    let entry = &targets["signed"]["targets"][TARGET];
    assert_eq!(entry["custom"]["hardware"][0]["board_id"], 7);
    assert_eq!(entry["x-build"]["reproducible"], true);
    assert_eq!(
        targets["signed"]["x-release-notes"],
        "pump-a/2.0.0/notes.md"
    );

    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_staged(&mut store, &image);
    // and it trusts root 2, the one with the unknown field
    let mut buf = vec![0u8; 8192];
    assert_eq!(
        store
            .read_metadata(hale_core::Role::Root, &mut buf)
            .unwrap()
            .unwrap(),
        sim.root_bytes(2).as_slice()
    );
}

#[test]
fn the_signatures_cover_the_fields_an_old_agent_does_not_understand() {
    let (sim, _) = repo_from_the_future();
    let threshold = |role: &str| {
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new(role),
            threshold: 1,
            valid: 0,
        })
    };
    let targets_file = format!("{}.targets.json", sim.targets.version);
    type Tamper = fn(&mut Value);
    // (what verified before the refusal is kept: root, then timestamp and snapshot)
    let cases: [(&str, Tamper, AgentErr); 6] = [
        (
            "targets",
            |s| s["targets"][TARGET]["custom"]["hardware"][0]["board_id"] = 8.into(),
            threshold("targets"),
        ),
        (
            "targets",
            |s| s["targets"][TARGET]["custom"]["rollout"]["percent"] = 100.into(),
            threshold("targets"),
        ),
        (
            "targets",
            |s| s["targets"][TARGET]["x-build"]["reproducible"] = false.into(),
            threshold("targets"),
        ),
        (
            "targets",
            |s| s["x-release-notes"] = "elsewhere.md".into(),
            threshold("targets"),
        ),
        (
            "timestamp",
            |s| s["x-poll-interval"] = 1.into(),
            threshold("timestamp"),
        ),
        (
            "root",
            |s| s["x-fleet"]["ca"] = "attacker-ca".into(),
            threshold("root"),
        ),
    ];
    for (role, tamper, want) in cases {
        let file = match role {
            "targets" => targets_file.clone(),
            "timestamp" => "timestamp.json".to_string(),
            _ => "2.root.json".to_string(),
        };
        let mut files = sim.files.clone();
        let bytes = tamper_signed(&files[&file], tamper);
        assert_ne!(bytes, files[&file]);
        files.insert(file.clone(), bytes);
        let mut mem = provisioned(&sim);
        let mut store = open_store(&mut mem);
        let before = persisted(&mut store);
        let err = check_fresh(&mut store, &files).unwrap_err();
        assert_eq!(err, want, "tampered {file}");
        // what verified before the refused file is kept (spec 5.3.8, 5.4.5, 5.5.7); the refused
        // file, the slots and the running image are as provisioned
        let verified: &[&str] = match role {
            "targets" => &[
                "2.root.json",
                "timestamp.json",
                &format!("{}.snapshot.json", sim.snapshot.version),
            ],
            "timestamp" => &["2.root.json"],
            _ => &[],
        };
        let mut kept = before.clone();
        for (stored, name) in kept.metadata.iter_mut().zip(verified) {
            *stored = Some(files[*name].clone());
        }
        assert_untouched(&mut store, &kept);
        // and the next check changes nothing
        assert_eq!(check_fresh(&mut store, &files).unwrap_err(), want);
        assert_untouched(&mut store, &kept);
    }
}

#[test]
fn a_state_record_written_before_the_last_check_existed_opens_and_updates() {
    // a pump in the field: it checked (up to date) under the agent that wrote the last check...
    let mut sim = repo_with("1.0.0", 1, 5000);
    let mut mem = provisioned(&sim);
    let before = {
        let mut store = open_store(&mut mem);
        assert_eq!(
            check_fresh(&mut store, &sim.files).unwrap(),
            Outcome::UpToDate {
                running: v("1.0.0")
            }
        );
        assert!(store.last_check().is_some());
        persisted(&mut store)
    };
    // ...its records as the agent before the last-check field wrote them
    strip_last_check_records(&mut mem);
    let mut store = open_store(&mut mem);
    assert_eq!(store.last_check(), None, "no last check in the old format");
    assert_eq!(
        persisted(&mut store),
        before,
        "slots and metadata read back"
    );
    // the pump searches in full (no remembered conclusion) and is still up to date
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::UpToDate {
            running: v("1.0.0")
        }
    );
    assert!(store.last_check().is_some(), "the new agent records one");
    // a new release installs
    let image = build_for("after-upgrade");
    release(&mut sim, &image);
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_staged(&mut store, &image);
}

// --- 4. a pump switched off for years --------------------------------------------------------

/// Root generation `i`: one to three root keys of both kinds, threshold rising and falling.
fn root_generation(i: usize) -> (Vec<SigningKey>, u32) {
    let n = 1 + i % 3;
    let keys = (0..n)
        .map(|k| {
            let kind = if (i + k) % 2 == 0 {
                KeyKind::EcdsaP256
            } else {
                KeyKind::Ed25519
            };
            key(&format!("fleet-root-{i}-{k}"), kind)
        })
        .collect();
    // 1-of-1, 2-of-2, 2-of-3, 1-of-1, 1-of-2, 3-of-3, ...
    let threshold = if i % 2 == 1 { n } else { (n - 1).max(1) };
    (keys, threshold as u32)
}

/// A pump that checked once at provisioning (up to date on 1.0.0), then sat switched off while
/// the repository rotated its root `rotations` times (with the online keys) and released 2.0.0.
/// Every intermediate root expired years before `NOW`; the last one is valid.
fn years_of_rotations(rotations: usize) -> (RepoSim, Vec<u8>, Vec<u8>) {
    let mut sim = repo_with("1.0.0", 1, 5000);
    let mut mem = provisioned(&sim);
    drop(open_checked(&mut mem, &sim));
    for i in 0..rotations {
        let last = i + 1 == rotations;
        sim.rotate_root(|r| {
            let (keys, threshold) = root_generation(i);
            r.root.keys = keys;
            r.root.threshold = threshold;
            r.root.expires = if last {
                NOW + YEAR
            } else {
                NOW - 3 * YEAR + i as i64 * DAY
            };
            r.timestamp.keys = vec![key(&format!("fleet-ts-{i}"), KeyKind::Ed25519)];
            if i % 3 == 0 {
                r.snapshot.keys = vec![key(&format!("fleet-snap-{i}"), KeyKind::EcdsaP256)];
            }
        });
    }
    let image = build_for("years-later");
    release(&mut sim, &image);
    (sim, mem, image)
}

#[test]
fn a_pump_switched_off_for_years_catches_up_through_ten_root_rotations_and_installs() {
    let (sim, mut mem, image) = years_of_rotations(10);
    // the rotations are what the brief says: keys and thresholds change, intermediates expired
    let thresholds: Vec<u64> = (2..=11)
        .map(|n| {
            let r: Value = serde_json::from_slice(&sim.root_bytes(n)).unwrap();
            let expires = r["signed"]["expires"].as_str().unwrap().to_string();
            assert_eq!(
                n == 11,
                expires.starts_with("2031"),
                "root {n} expires {expires}"
            );
            r["signed"]["roles"]["root"]["threshold"].as_u64().unwrap()
        })
        .collect();
    assert!(thresholds.iter().any(|t| *t > 1) && thresholds.contains(&1));
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    let chain: Vec<String> = (2..=12).map(|n| format!("{n}.root.json")).collect();
    assert_eq!(&t.requests[..11], chain.as_slice());
    assert_eq!(t.requests[11], "timestamp.json");
    assert_staged(&mut store, &image);
    let mut buf = vec![0u8; 8192];
    assert_eq!(
        store
            .read_metadata(hale_core::Role::Root, &mut buf)
            .unwrap()
            .unwrap(),
        sim.root_bytes(11).as_slice()
    );
}

#[test]
fn one_rotation_more_than_the_cap_stops_there_and_the_next_check_goes_on() {
    let cap = DEFAULT_MAX_ROOT_ROTATIONS as usize;
    let (sim, mut mem, image) = years_of_rotations(cap + 1);
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let mut t = MapTransport::new(&sim.files);
    let err = check(&mut store, &mut t, &mut Pump::default()).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::TooManyRootRotations {
            cap: DEFAULT_MAX_ROOT_ROTATIONS
        })
    );
    // it stopped at the root past the cap: nothing else fetched
    assert_eq!(
        t.requests.last().unwrap(),
        &format!("{}.root.json", cap + 2)
    );
    assert_eq!(t.requests.len(), cap + 1);
    // the roots it verified are kept (and only they): root cap+1 is trusted, slots and the
    // other metadata are as they were
    let after = persisted(&mut store);
    assert_eq!(after.slots, before.slots);
    assert_eq!(after.metadata[1..], before.metadata[1..]);
    let root = after.metadata[0].as_ref().unwrap();
    assert_eq!(
        root,
        sim.files.get(&format!("{}.root.json", cap + 1)).unwrap()
    );
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));

    // the next check goes on from there: one more root, then the update
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
    assert_eq!(t.requests[0], format!("{}.root.json", cap + 2));
    assert_eq!(t.requests[1], format!("{}.root.json", cap + 3));
    let staged = store.slots().info(Slot::B).image.unwrap();
    assert_eq!(staged.sha256, <[u8; 32]>::from(Sha256::digest(&image)));
}

#[test]
fn a_new_root_verified_before_the_timestamp_failed_stays_trusted_when_the_next_root_is_withheld() {
    let mut sim = RepoSim::new();
    let image = build_for("after-rotation");
    release(&mut sim, &image);
    let mut mem = provisioned(&sim);
    // the timestamp key is revoked by root 2; whoever holds it still signs with it
    let mut old = sim.clone();
    sim.rotate_root(|r| {
        r.timestamp.keys = vec![key("fleet-ts-after-revocation", KeyKind::Ed25519)]
    });
    sim.publish();

    // the check verifies root 2, then the timestamp cannot be had (not re-signed yet, or the
    // network dropped)
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let mut files = sim.files.clone();
    files.remove("timestamp.json");
    let mut t = MapTransport::new(&files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()),
        Err(AgentError::Missing {
            what: Name::new("timestamp.json")
        })
    );
    assert_eq!(t.requests, ["2.root.json", "3.root.json", "timestamp.json"]);
    // root 2 is trusted from now on; nothing else changed
    let after = persisted(&mut store);
    assert_eq!(
        after.metadata[0].as_deref(),
        Some(sim.root_bytes(2).as_slice())
    );
    assert_eq!(after.metadata[1..], before.metadata[1..]);
    assert_eq!(after.slots, before.slots);

    // root 2 withheld and a newer timestamp signed with the revoked key: refused, as root 2 says
    old.timestamp.version += 10;
    old.write_timestamp();
    assert!(!old.files.contains_key("2.root.json"));
    let mut t = MapTransport::new(&old.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()),
        Err(AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        }))
    );
    assert_untouched(&mut store, &after);

    // the repository's own files: the update goes on from root 2
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
    assert_eq!(t.requests[0], "3.root.json");
    assert_staged(&mut store, &image);
}

// --- 5. ed25519 and ECDSA P-256 in one repository ----------------------------------------------

/// Every top-level role has an ed25519 and a P-256 key; `threshold` per role. Root version 1 (the
/// one pumps are provisioned with) already lists both; 2.0.0 is released for TARGET.
fn dual_key_repo(threshold: u32) -> (RepoSim, Vec<u8>) {
    let mut sim = RepoSim::new();
    for (name, st) in [
        ("root", &mut sim.root),
        ("timestamp", &mut sim.timestamp),
        ("snapshot", &mut sim.snapshot),
        ("targets", &mut sim.targets),
    ] {
        st.keys = vec![
            key(&format!("dual-{name}-ed25519"), KeyKind::Ed25519),
            key(&format!("dual-{name}-p256"), KeyKind::EcdsaP256),
        ];
        st.threshold = threshold;
    }
    sim.write_root();
    let image = build_for("dual");
    release(&mut sim, &image);
    (sim, image)
}

/// Re-sign timestamp, snapshot and targets with only the keys of `kind` (root stays dual).
fn signed_only_with(sim: &mut RepoSim, kind: KeyKind) {
    for st in [&mut sim.timestamp, &mut sim.snapshot, &mut sim.targets] {
        st.signers = Some(
            st.keys
                .iter()
                .filter(|k| k.kind() == kind)
                .cloned()
                .collect(),
        );
    }
    sim.mark("targets");
    sim.publish();
}

fn signatures(sim: &RepoSim, file: &str) -> usize {
    let doc: Value = serde_json::from_slice(&sim.files[file]).unwrap();
    doc["signatures"].as_array().unwrap().len()
}

fn installs(sim: &RepoSim, image: &[u8]) {
    let mut mem = provisioned(sim);
    let mut store = open_store(&mut mem);
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_staged(&mut store, image);
}

#[test]
fn a_repository_signing_with_ed25519_and_p256_serves_both_kinds_of_pump() {
    let (mut sim, image) = dual_key_repo(1);
    assert_eq!(signatures(&sim, "timestamp.json"), 2);
    assert_eq!(signatures(&sim, "1.root.json"), 2);
    // the host agent (ecdsa on) with both signatures
    installs(&sim, &image);
    // what an ed25519-only build relies on: the ed25519 signatures alone meet every threshold
    // (a build without `ecdsa` skips the P-256 keys: hale-core/tests/ecdsa_feature.rs, firmware-qemu)
    signed_only_with(&mut sim, KeyKind::Ed25519);
    assert_eq!(signatures(&sim, "timestamp.json"), 1);
    installs(&sim, &image);
    // and the P-256 signatures alone meet them in this build
    signed_only_with(&mut sim, KeyKind::EcdsaP256);
    assert_eq!(signatures(&sim, "timestamp.json"), 1);
    installs(&sim, &image);
}

#[test]
fn a_threshold_of_two_counts_the_p256_signature_and_needs_it() {
    // every role needs both signatures: installs only because the P-256 one is counted
    let (mut sim, image) = dual_key_repo(2);
    installs(&sim, &image);
    // without the P-256 signatures the same repository falls one short, at the first role read
    signed_only_with(&mut sim, KeyKind::Ed25519);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 2,
            valid: 1
        })
    );
    assert_untouched(&mut store, &before);
}
