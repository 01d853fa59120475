//! Offline bundles through the agent: one file installs through the same `check_for_update` as
//! an online update, from the pump's own trusted root, with the same gating; a tampered bundle
//! or an unsuitable image is refused with the exact error and nothing changes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::drop_non_drop)]

mod common;
mod offline;

use common::*;
use device_agent::bundle::BundleError;
use device_agent::{
    AgentError, Boot, BundleTransport, DeferReason, FirmwareStore, NoRollback, Outcome,
    RollbackAuthorization, Slot,
};
use hale_core::bundle::{Bundle, AUTHORIZATION};
use hale_core::policy::PolicyError;
use hale_core::{Error, Name, Version};
use offline::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A pump offered `bundle`: refused with `want`; the slots, running version and counter are
/// as provisioned; a second attempt changes nothing at all. Metadata that verified before the
/// refusal is stored (as online); with `metadata_unchanged` none did.
fn assert_refused(
    sim: &hale_tests::RepoSim,
    bundle: &[u8],
    want: Err<BundleError>,
    metadata_unchanged: bool,
) {
    let mut mem = provisioned(sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let before = persisted(&mut store);
    let mut t = BundleTransport::parse(bundle).unwrap();
    let err = check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    assert_eq!(err, want);
    let first = persisted(&mut store);
    assert_eq!(first.slots, before.slots, "slots changed");
    if metadata_unchanged {
        assert_eq!(first, before, "trusted metadata changed");
    }
    let err = check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    assert_eq!(err, want);
    assert_eq!(
        persisted(&mut store),
        first,
        "a second attempt changed state"
    );
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
    assert_eq!(store.slots().security_counter(), 1);
}

/// Rebuild `bundle` with `f` applied to its entries.
fn rebuilt(bundle: &[u8], f: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<u8>)> = Bundle::parse(bundle)
        .unwrap()
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    f(&mut entries);
    hale_repo::bundle::encode(&entries).unwrap()
}

#[test]
fn a_bundle_installs_offline_from_the_devices_own_root() {
    let mut sim = repo_offering("2.0.0", 2);
    // the repository moved on to root 2 since the pump was provisioned: the bundle carries it
    sim.rotate_root(|r| {
        r.root
            .keys
            .push(hale_tests::key("root-2", hale_repo::keys::KeyKind::Ed25519))
    });
    sim.publish();
    let bundle = bundle_for(&sim, &[]);
    let mut mem = vec![0u8; LAYOUT.end() as usize];
    {
        // provisioned with root 1 (before the rotation)
        let fw = image_bytes("1.0.0", 5000);
        FirmwareStore::provision(
            Flash::new(&mut mem),
            LAYOUT,
            &sim.root_bytes(1),
            &fw,
            image_record(&fw, "1.0.0", 1),
        )
        .unwrap();
    }
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = BundleTransport::parse(&bundle).unwrap();
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
    let mut buf = vec![0u8; 8192];
    let root = store
        .read_metadata(hale_core::Role::Root, &mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(
        hale_core::metadata::peek_header(root, "root")
            .unwrap()
            .version,
        2
    );
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    let mut img = vec![0u8; 3000];
    store.read_slot(Slot::B, 0, &mut img).unwrap();
    assert_eq!(img, image_bytes("2.0.0", 3000));
    assert_eq!(store.slots().security_counter(), 2);
}

#[test]
fn a_bundle_install_is_deferred_while_therapy_runs() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let slots = store.slots();
    let mut t = BundleTransport::parse(&bundle).unwrap();
    let mut pump = Pump { therapy: true };
    assert_eq!(
        check_with(&mut store, &mut t, &mut pump, &mut NoRollback),
        Ok(Outcome::Deferred {
            offered: v("2.0.0"),
            reason: DeferReason::TherapyRunning
        })
    );
    assert_eq!(store.slots(), slots, "nothing written to a slot");
    pump.therapy = false;
    assert_eq!(
        check_with(&mut store, &mut t, &mut pump, &mut NoRollback),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
}

#[test]
fn a_bundle_carrying_an_authorization_rolls_back() {
    let sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    let bundle = bundle_for(&sim, &[(AUTHORIZATION, &auth)]);
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = BundleTransport::parse(&bundle).unwrap();
    assert_eq!(t.authorization(), Some(&auth[..]));
    let mut hook = t
        .authorization()
        .map(|a| RollbackAuthorization::new(a, DEVICE_ID, None));
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    assert_eq!(
        hook.unwrap().verified().unwrap().reason.as_plain(),
        Some(REASON)
    );
}

#[test]
fn refuses_a_downgrade_bundle_without_authorization() {
    let sim = repo_offering("0.9.0", 1);
    assert_refused(
        &sim,
        &bundle_for(&sim, &[]),
        AgentError::Policy(PolicyError::NotNewer {
            running: v("1.0.0"),
            offered: v("0.9.0"),
        }),
        false,
    );
}

#[test]
fn refuses_a_bundle_with_a_tampered_image() {
    let sim = repo_offering("2.0.0", 2);
    let image = sim.target_file_name(TARGET);
    let bundle = rebuilt(&bundle_for(&sim, &[]), |e| {
        let (_, d) = e.iter_mut().find(|(n, _)| *n == image).unwrap();
        d[1500] ^= 0x01;
    });
    assert_refused(
        &sim,
        &bundle,
        AgentError::Trust(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256",
        }),
        false,
    );
}

/// A server that served wrong image bytes makes the pump wait before it downloads them from
/// the server again; a technician's bundle carries its own bytes and is tried at once.
#[test]
fn a_bundle_installs_at_once_where_the_server_served_wrong_image_bytes() {
    let sim = repo_offering("2.0.0", 2);
    let image = sim.target_file_name(TARGET);
    let mut wrong = sim.files.clone();
    wrong.get_mut(&image).unwrap()[100] ^= 1;
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut online = MapTransport::new(&wrong);
    assert_eq!(
        check_with(
            &mut store,
            &mut online,
            &mut Pump::default(),
            &mut NoRollback
        ),
        Err(AgentError::Trust(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256",
        }))
    );
    let mut online = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(
            &mut store,
            &mut online,
            &mut Pump::default(),
            &mut NoRollback
        ),
        Err(AgentError::WrongBytes {
            retry_at: NOW + device_agent::agent::RETRY_WRONG_BYTES
        })
    );
    let bundle = bundle_for(&sim, &[]);
    let mut t = BundleTransport::parse(&bundle).unwrap();
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
    assert_eq!(store.last_check(), None);
}

#[test]
fn refuses_a_bundle_with_tampered_metadata() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = rebuilt(&bundle_for(&sim, &[]), |e| {
        let (_, d) = e.iter_mut().find(|(n, _)| n == "timestamp.json").unwrap();
        *d = hale_tests::tamper_signed(d, |s| s["version"] = serde_json::json!(7));
    });
    assert_refused(
        &sim,
        &bundle,
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0,
        }),
        true,
    );
}

#[test]
fn a_bundle_missing_its_image_fails_as_transport_and_keeps_the_running_image() {
    let sim = repo_offering("2.0.0", 2);
    let image = sim.target_file_name(TARGET);
    let bundle = rebuilt(&bundle_for(&sim, &[]), |e| e.retain(|(n, _)| *n != image));
    let name = image.strip_prefix("targets/").unwrap();
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = BundleTransport::parse(&bundle).unwrap();
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Err(AgentError::Transport {
            what: Name::new(TARGET),
            error: BundleError::NoTarget {
                name: Name::new(name),
            },
        })
    );
    // the download never began: the inactive slot is as it was, the running one stands
    assert_eq!(
        store.slots().info(Slot::B).state,
        device_agent::SlotState::Empty
    );
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
}

#[test]
fn refuses_a_bundle_image_for_another_hardware_revision() {
    let sim = repo_offering_custom("2.0.0", custom_for("2.0.0", 2, &["r3"], "1.0.0"));
    assert_refused(
        &sim,
        &bundle_for(&sim, &[]),
        AgentError::Policy(PolicyError::WrongRevision {
            model: Name::new("pump-a"),
            revision: Name::new("r2"),
        }),
        false,
    );
}

#[test]
fn refuses_a_bundle_image_that_needs_a_newer_bootloader() {
    let sim = repo_offering_custom("2.0.0", custom_for("2.0.0", 2, &["r2"], "2.0.0"));
    assert_refused(
        &sim,
        &bundle_for(&sim, &[]),
        AgentError::Policy(PolicyError::BootloaderTooOld {
            required: v("2.0.0"),
            have: v("1.2.0"),
        }),
        false,
    );
}

#[test]
fn refuses_a_structurally_broken_bundle_before_anything_runs() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    assert_eq!(
        BundleTransport::parse(&bundle[..bundle.len() - 1]).unwrap_err(),
        Error::BadBundle {
            reason: "entry runs past the end"
        }
    );
}

fn agent(state: &std::path::Path, args: &[&str]) -> String {
    agent_exits(state, args, 0)
}

/// `hale-agent --state STATE ARGS`, which must exit with `code`; its output.
fn agent_exits(state: &std::path::Path, args: &[&str], code: i32) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hale-agent"))
        .arg("--state")
        .arg(state)
        .args(args)
        // an error's text, not a backtrace (CI sets RUST_BACKTRACE)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "hale-agent {args:?}: {text}");
    text
}

/// A simulated pump in `dir/pump`, provisioned with 1.0.0 (counter 1, model pump-a r2,
/// bootloader 1.2.0) and `sim`'s root.
fn provisioned_pump(dir: &std::path::Path, sim: &hale_tests::RepoSim) -> std::path::PathBuf {
    let (root, fw, state) = (dir.join("root.json"), dir.join("fw.bin"), dir.join("pump"));
    std::fs::write(&root, sim.initial_root()).unwrap();
    std::fs::write(&fw, image_bytes("1.0.0", 5000)).unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    agent(
        &state,
        &[
            "provision",
            "--root",
            &s(&root),
            "--image",
            &s(&fw),
            "--version",
            "1.0.0",
            "--security-counter",
            "1",
            "--id",
            DEVICE_ID,
            "--model",
            "pump-a",
            "--revision",
            "r2",
            "--target",
            TARGET,
            "--bootloader",
            "1.2.0",
        ],
    );
    state
}

#[test]
fn hale_agent_rolls_back_from_a_bundle_after_therapy_and_records_who_signed() {
    let sim = repo_offering("0.9.0", 1);
    // the simulated pump runs on the real clock: an authorization valid now
    let now = device_agent::host::now();
    let mut a = authorization_for("0.9.0");
    a.issued = now - 60;
    a.expires = now + 8 * 3600;
    let auth = signed(&a, &rollback_keys());
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    std::fs::write(p("b.bin"), bundle_for(&sim, &[(AUTHORIZATION, &auth)])).unwrap();
    std::fs::write(p("plain.bin"), bundle_for(&sim, &[])).unwrap();
    let state = provisioned_pump(tmp.path(), &sim);
    let s = |x: &str| p(x).display().to_string();
    // without the authorization: refused, as online
    let slots =
        |status: &str| serde_json::from_str::<serde_json::Value>(status).unwrap()["slots"].clone();
    let slots_before = slots(&agent(&state, &["status"]));
    let flash_before = std::fs::read(state.join("flash.bin")).unwrap();
    // (exit 1: not installed, so the technician knows)
    let out = agent_exits(&state, &["bundle", "install", &s("plain.bin")], 1);
    assert_eq!(
        out,
        "update refused: version 0.9.0 is not newer than running 1.0.0\n"
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("last_result.json")).unwrap()).unwrap();
    assert_eq!(
        (&last["result"], &last["reason"]),
        (
            &serde_json::json!("rejected"),
            &serde_json::json!("version 0.9.0 is not newer than running 1.0.0")
        )
    );
    assert_eq!(slots(&agent(&state, &["status"])), slots_before);
    let l = device_agent::host::PUMP_LAYOUT;
    let flash = std::fs::read(state.join("flash.bin")).unwrap();
    for at in l.slots.map(|a| a as usize..(a + l.slot_len) as usize) {
        assert_eq!(flash[at.clone()], flash_before[at], "a slot image changed");
    }
    assert!(!state.join("install_records.json").exists());
    // gated like an online install
    agent(&state, &["therapy", "on"]);
    // (exit 3: not now; the same bundle installs later)
    let out = agent_exits(&state, &["bundle", "install", &s("b.bin")], 3);
    assert!(out.contains("0.9.0 deferred: therapy running"), "{out}");
    assert!(!state.join("install_records.json").exists());
    agent(&state, &["therapy", "off"]);
    let out = agent(&state, &["bundle", "install", &s("b.bin")]);
    assert!(
        out.contains(&format!("rollback authorized: {REASON}")),
        "{out}"
    );
    assert!(
        out.contains("health check passed: 0.9.0 confirmed"),
        "{out}"
    );
    // queued for the next sync, with how its trial ended
    let queued: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("install_records.json")).unwrap())
            .unwrap();
    assert_eq!(queued.as_array().unwrap().len(), 1, "{queued}");
    let rec = &queued[0];
    assert_eq!(rec["outcome"], "confirmed");
    assert_eq!(rec["kind"], "rollback");
    assert_eq!(rec["target"], TARGET);
    assert_eq!(rec["version"], "0.9.0");
    assert_eq!(rec["reason"], REASON);
    let mut want: Vec<String> = rollback_keys().iter().map(|k| k.keyid()).collect();
    want.sort();
    let mut got: Vec<String> = rec["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn an_offline_install_that_fails_its_trial_is_queued_as_reverted_and_exits_1() {
    let sim = repo_offering("2.0.0", 2);
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    std::fs::write(p("b.bin"), bundle_for(&sim, &[])).unwrap();
    let state = provisioned_pump(tmp.path(), &sim);
    let s = |x: &str| p(x).display().to_string();
    agent(&state, &["health", "fail"]);
    let out = agent_exits(&state, &["bundle", "install", &s("b.bin")], 1);
    assert!(out.contains("health check failed: reverted"), "{out}");
    // what the server will hear: an offline install of 2.0.0 that was reverted, not installed
    let mut queued: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("install_records.json")).unwrap())
            .unwrap();
    // when it was staged (YYYY-MM-DDTHH:MM:SSZ): the same bundle installed twice is two records
    let staged = queued[0].as_object_mut().unwrap().remove("staged").unwrap();
    let staged = staged.as_str().unwrap();
    assert!(
        staged.len() == 20 && staged.starts_with("20") && staged.ends_with('Z'),
        "{staged}"
    );
    assert_eq!(
        queued,
        serde_json::json!([{"kind": "offline", "target": TARGET, "version": "2.0.0",
                            "outcome": "reverted"}])
    );
}

#[test]
fn a_bundle_older_than_what_the_pump_trusts_says_to_make_a_new_one() {
    let mut sim = repo_offering("2.0.0", 2);
    let old = bundle_for(&sim, &[]);
    sim.add_target(
        "targets",
        TARGET,
        &image_bytes("3.0.0", 3000),
        Some(custom_for("3.0.0", 3, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    std::fs::write(p("old.bin"), old).unwrap();
    std::fs::write(p("new.bin"), bundle_for(&sim, &[])).unwrap();
    let state = provisioned_pump(tmp.path(), &sim);
    let s = |x: &str| p(x).display().to_string();
    let out = agent(&state, &["bundle", "install", &s("new.bin")]);
    assert!(
        out.contains("health check passed: 3.0.0 confirmed"),
        "{out}"
    );
    let out = agent_exits(&state, &["bundle", "install", &s("old.bin")], 1);
    assert_eq!(
        out,
        "update refused: timestamp: version 2 is older than trusted version 3 (rollback); this \
         bundle is older than the metadata the pump trusts: make a new one\n"
    );
}

#[test]
fn a_bundle_made_for_another_target_is_refused_and_says_which_to_make() {
    // the channel lists what the pump could install; the technician's bundle carries an image
    // under another path only: the pump used to say "up to date" about its channel (exit 0)
    const HOTFIX: &str = "pump-a/hotfix.bin";
    let mut sim = repo_offering("2.0.0", 1);
    let hotfix = image_bytes("2.1.0", 3000);
    sim.add_target(
        "targets",
        HOTFIX,
        &hotfix,
        Some(custom_for("2.1.0", 1, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
    let for_channel = bundle_for(&sim, &[]);
    let parsed = hale_core::bundle::Bundle::parse(&for_channel).unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let hotfix_name = format!("targets/pump-a/{}.hotfix.bin", sha(&hotfix));
    let mut entries: Vec<(&str, &[u8])> = parsed
        .iter()
        .filter(|(n, _)| !n.starts_with("targets/"))
        .collect();
    entries.push((&hotfix_name, &hotfix));
    let mut out = vec![0u8; hale_core::bundle::encoded_len(&entries)];
    let other = hale_core::bundle::write(&entries, &mut out)
        .unwrap()
        .to_vec();

    let tmp = tempfile::tempdir().unwrap();
    let state = provisioned_pump(tmp.path(), &sim);
    std::fs::write(tmp.path().join("hotfix.hale"), &other).unwrap();
    let status_before = agent(&state, &["status"]);
    let flash_before = std::fs::read(state.join("flash.bin")).unwrap();
    let out = agent_exits(
        &state,
        &[
            "bundle",
            "install",
            tmp.path().join("hotfix.hale").to_str().unwrap(),
        ],
        1,
    );
    assert_eq!(
        out,
        format!(
            "Error: this bundle carries {HOTFIX}; this pump installs {TARGET} (the target in its \
             device.json): make it again with `hale-sign bundle … --target {TARGET}`\n"
        )
    );
    assert_eq!(agent(&state, &["status"]), status_before, "nothing changed");
    assert_eq!(
        std::fs::read(state.join("flash.bin")).unwrap(),
        flash_before
    );
    // the bundle for the channel installs
    std::fs::write(tmp.path().join("channel.hale"), &for_channel).unwrap();
    let out = agent(
        &state,
        &[
            "bundle",
            "install",
            tmp.path().join("channel.hale").to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("health check passed: 2.0.0 confirmed"),
        "{out}"
    );
}
