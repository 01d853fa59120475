//! An offline bundle (the untrusted file a field technician carries to a pump) through the
//! agent's install path: `device_agent::BundleTransport` into `check_for_update` (`no_std`, on
//! the simulated NOR flash), as `hale-agent bundle install` runs it, at the fixed "now" of the
//! fixtures. The input is the bundle file itself.
//!
//! The fixture repository is the install target's (`fixtures/install.bin`: 2.0.0, counter 7;
//! `fixtures/install-v3.bin`: 3.0.0, counter 9), then taken back to 0.9.0 (counter 1) with a
//! `rollback` role (`fixtures/install-rollback.bin`, which also packs a rollback authorization
//! for this pump to go from 1.0.0 to 0.9.0). The valid bundle of each release is built here the
//! way device-agent's tests build one (every file a pump at root 1 asks for, the image, and for
//! 0.9.0 the authorization), byte for byte the seeds `valid-v2`, `valid-v3` and
//! `rollback-authorized` (the other seeds: `tampered-image`, `short-image`, `truncated`, and
//! `whole-repository`, every file the repository served with the authorization). A custom mutator keeps most inputs bundles: it mutates one entry's
//! bytes, drops, duplicates, renames, truncates, swaps or reorders entries, splices in a file of
//! any of the three releases (mix and match), adds or removes the authorization, or mutates the
//! raw bytes (header, lengths, truncation). An authorization in the bundle goes to a
//! `RollbackAuthorization` hook, and the target its (unverified) `signed.target` names is looked
//! up instead of the channel's, as `hale-agent` does.
//!
//! Each bundle that parses is installed on three pumps (model pump-a r2, bootloader 1.2.0,
//! provisioned with the fixture's root 1): new from the factory (1.0.0, counter 1); one that
//! trusts the 2.0.0 release's metadata and reverted 2.0.0's trial; one that trusts the 0.9.0
//! release's metadata and runs 0.9.0, confirmed after the authorized rollback. Checked:
//! - the valid bundles end exactly as expected on each pump (staged, up to date, 2.0.0 refused
//!   as reverted, the older releases' metadata refused as a rollback);
//! - a check never changes the running image, the active slot or the security counter; only a
//!   `Staged` outcome makes a slot pending, and then the pending slot is the one reported, its
//!   bytes are exactly a released image (sha256 and bytes compared with the fixture's images)
//!   and its record has that release's version, counter and length as its signed targets list
//!   them; a downgrade is staged only with the fixture's signed authorization (its canonical
//!   `signed` compared), which it records as spent. Every slot the pump may boot holds a
//!   released image byte for byte; a staging slot lists one;
//! - stored metadata never goes back a version, is never dropped, and is always a document the
//!   fixture keys signed (its canonical `signed` is one of the fixture's, version included);
//! - a refused bundle installed again is refused with the same error and changes nothing;
//! - at the next power-up the pump boots a released image (the staged one on trial after
//!   `Staged`), the security counter no higher than the running image's.
#![no_main]
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Once, OnceLock};

use device_agent::bundle::BundleError;
use device_agent::memflash::{MemFlash, MemFlashError};
use device_agent::{
    check_for_update, AgentError, Application, Boot, BundleTransport, DeferReason, DeviceInfo,
    FirmwareStore, Image, LastCheck, Layout, Outcome, RollbackAuthorization, Slot, SlotState,
    Slots, Transport,
};
use hale_core::bundle::{Bundle, AUTHORIZATION};
use hale_core::json::Value;
use hale_core::metadata::{peek_header, Envelope, Targets};
use hale_core::{Name, Role, Version};
use hale_fuzz::fixture::{unpack, NOW};
use hale_fuzz::VecSink;
use libfuzzer_sys::{fuzz_crossover, fuzz_mutator, fuzz_target, fuzzer_mutate};
use sha2::{Digest, Sha256};

const ERASE: usize = 1024;
const LAYOUT: Layout = Layout::contiguous(0, 8 * 1024, 16 * 1024);
const TARGET: &str = "pump-a/firmware.bin";
const DEVICE_ID: &str = "pump-a-000123";
/// The factory image (1.0.0, counter 1), as the install target provisions it.
const V1_LEN: usize = 2500;
const ROLES: [(Role, &str); 4] = [
    (Role::Root, "root"),
    (Role::Timestamp, "timestamp"),
    (Role::Snapshot, "snapshot"),
    (Role::Targets, "targets"),
];

type Flash<'m> = MemFlash<'m, ERASE>;
type Err = AgentError<BundleError, MemFlashError>;

/// An image the fixture's signed metadata lists (or the factory's), with its record.
#[derive(Debug)]
struct Known {
    image: Image,
    bytes: Vec<u8>,
}

/// How a valid bundle ends on a pump.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Staged(&'static str),
    UpToDate(&'static str),
    Reverted(&'static str),
    /// its timestamp is older than the one the pump trusts
    MetadataRollback,
}

impl Expect {
    fn holds(self, r: &Result<Outcome, Err>) -> bool {
        let v = |s: &str| Version::parse(s).unwrap();
        match (self, r) {
            (Expect::Staged(s), Ok(Outcome::Staged { version })) => *version == v(s),
            (Expect::UpToDate(s), Ok(Outcome::UpToDate { running })) => *running == v(s),
            (Expect::Reverted(s), Err(AgentError::PreviouslyReverted { version })) => {
                *version == v(s)
            }
            (
                Expect::MetadataRollback,
                Err(AgentError::Trust(hale_core::Error::Rollback { .. })),
            ) => true,
            _ => false,
        }
    }
}

/// A pump before the bundle comes: its flash and how each valid bundle ends on it.
struct Pump {
    name: &'static str,
    mem: Vec<u8>,
    /// for the 2.0.0, 3.0.0 and 0.9.0 (authorized) bundles
    expect: [Expect; 3],
}

struct Fixture {
    /// every file of the three releases' repositories (and the authorization), for splices
    pool: Vec<(String, Vec<u8>)>,
    /// the valid bundle of each release
    bundles: [Vec<u8>; 3],
    images: Vec<Known>,
    /// (version, sha256 of the canonical `signed`) of every metadata file of the fixture, by role
    signed: BTreeMap<&'static str, BTreeSet<(u64, [u8; 32])>>,
    /// sha256 of the canonical `signed` of the fixture's authorization, and its `issued`
    authorization: ([u8; 32], i64),
    pumps: Vec<Pump>,
}

struct Idle;

impl Application for Idle {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        Ok(())
    }
}

/// sha256 of the canonical form of `signed` in envelope `bytes` of type `role` (what its
/// signatures sign).
fn canonical_sha256(bytes: &[u8], role: &str) -> Option<[u8; 32]> {
    let env = Envelope::parse(bytes, role).ok()?;
    let mut canon = VecSink::default();
    hale_core::canonical::write_canonical(&Value::Object(env.signed), &mut canon).ok()?;
    Some(Sha256::digest(&canon.0).into())
}

/// The version of metadata `bytes` and [`canonical_sha256`].
fn signed_digest(bytes: &[u8], role: &'static str) -> Option<(u64, [u8; 32])> {
    let version = peek_header(bytes, role).ok()?.version;
    Some((version, canonical_sha256(bytes, role)?))
}

/// The target an (unverified) authorization names, read as `hale-agent` reads it
/// (`device_agent::offline::authorization_target`, with serde_json there): only to know what to
/// look up.
fn authorization_target(bytes: &[u8]) -> Option<String> {
    let v = hale_core::json::parse(bytes).ok()?;
    let signed = v.as_object()?.get("signed").ok()??;
    match signed.as_object()?.get("target").ok()?? {
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The fuzzed pumps' hardware, following TARGET (or `rollback_target`, which an authorization
/// names).
fn device(rollback_target: Option<&str>) -> DeviceInfo<'_> {
    DeviceInfo {
        model: "pump-a",
        revision: "r2",
        bootloader: Version::new(1, 2, 0),
        target: TARGET,
        rollback_target,
    }
}

/// One `bundle install` of the bundle `t` serves, as `hale-agent` runs it.
fn install(
    store: &mut FirmwareStore<Flash<'_>>,
    t: &mut BundleTransport<'_>,
) -> Result<Outcome, Err> {
    let authorization = t.authorization();
    let rollback_target = authorization.and_then(authorization_target);
    let device = device(rollback_target.as_deref());
    let mut hook = authorization.map(|a| RollbackAuthorization::new(a, DEVICE_ID, None));
    let mut buffers = hale_fuzz::Buffers::new();
    let ws = buffers.workspace(true);
    check_for_update(store, &device, t, &mut Idle, &mut hook, NOW, ws)
}

/// What a check may change on flash.
#[derive(Debug, PartialEq)]
struct Persisted {
    slots: Slots,
    download_offset: u64,
    last_check: Option<LastCheck>,
    last_authorization: i64,
    meta: [Option<Vec<u8>>; 4],
}

fn persisted(store: &mut FirmwareStore<Flash<'_>>) -> Persisted {
    let mut buf = vec![0u8; 8192];
    let meta = ROLES.map(|(role, _)| {
        store
            .read_metadata(role, &mut buf)
            .unwrap()
            .map(<[u8]>::to_vec)
    });
    Persisted {
        slots: store.slots(),
        download_offset: store.download_offset(),
        last_check: store.last_check(),
        last_authorization: store.last_authorization(),
        meta,
    }
}

/// Records the names a check asks for; serves a packed repository.
struct Probe<'f> {
    files: &'f BTreeMap<String, Vec<u8>>,
    asked: BTreeSet<String>,
}

impl Transport for Probe<'_> {
    type Error = ();
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, ()> {
        self.asked.insert(name.to_string());
        let Some(f) = self.files.get(name) else {
            return Ok(None);
        };
        buf.get_mut(..f.len()).ok_or(())?.copy_from_slice(f);
        Ok(Some(f.len()))
    }
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        let name = format!("targets/{name}");
        let f = self.files.get(&name).ok_or(())?;
        self.asked.insert(name);
        let o = offset as usize;
        buf.copy_from_slice(f.get(o..o + buf.len()).ok_or(())?);
        Ok(())
    }
}

fn factory(root: &[u8], v1: &[u8]) -> Vec<u8> {
    let mut mem = vec![0u8; LAYOUT.end() as usize];
    let image = Image {
        version: Version::new(1, 0, 0),
        security_counter: 1,
        length: v1.len() as u64,
        sha256: Sha256::digest(v1).into(),
    };
    FirmwareStore::provision(Flash::new(&mut mem), LAYOUT, root, v1, image).unwrap();
    mem
}

/// The valid bundle of `repo` (device-agent's tests' `bundle_for`): every file a factory pump's
/// check asks for, the image its latest targets list for `TARGET`, and `extra`; in name order.
fn bundle_for(
    factory_mem: &[u8],
    repo: &BTreeMap<String, Vec<u8>>,
    image: &str,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut mem = factory_mem.to_vec();
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut probe = Probe {
        files: repo,
        asked: BTreeSet::new(),
    };
    let mut buffers = hale_fuzz::Buffers::new();
    let ws = buffers.workspace(false);
    let device = device(None);
    // whatever the probe decides (0.9.0 is refused without an authorization), it has asked for
    // every metadata file the workflow needs
    let _ = check_for_update(
        &mut store,
        &device,
        &mut probe,
        &mut Idle,
        &mut device_agent::NoRollback,
        NOW,
        ws,
    );
    let mut entries: BTreeMap<&str, &[u8]> = probe
        .asked
        .iter()
        .filter_map(|n| repo.get_key_value(n))
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    entries.insert(image, repo[image].as_slice());
    entries.extend(extra.iter().copied());
    let entries: Vec<(&str, &[u8])> = entries.into_iter().collect();
    let mut out = vec![0u8; hale_core::bundle::encoded_len(&entries)];
    hale_core::bundle::write(&entries, &mut out).unwrap();
    out
}

/// The newest `N.targets.json` of `repo`.
fn latest_targets(repo: &BTreeMap<String, Vec<u8>>) -> &[u8] {
    repo.iter()
        .filter_map(|(n, d)| Some((n.strip_suffix(".targets.json")?.parse::<u64>().ok()?, d)))
        .max_by_key(|(v, _)| *v)
        .map(|(_, d)| &d[..])
        .unwrap()
}

/// The image `TARGET` is in `repo`'s newest targets, as they list it; and its served name.
fn listed_image(repo: &BTreeMap<String, Vec<u8>>) -> (Known, String) {
    let env = Envelope::parse(latest_targets(repo), "targets").unwrap();
    let targets = Targets::parse(&env.signed, Name::new("targets")).unwrap();
    let file = targets
        .target(TARGET, Name::new("targets"))
        .unwrap()
        .unwrap();
    let fw = hale_core::policy::parse_firmware(file.custom.as_ref()).unwrap();
    let sha256 = file.sha256().unwrap();
    let name = format!(
        "targets/{}",
        device_agent::agent::target_file_name(TARGET, &sha256, true).unwrap()
    );
    let bytes = repo[&name].clone();
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), sha256);
    assert_eq!(bytes.len() as u64, file.length);
    let image = Image {
        version: fw.version,
        security_counter: fw.security_counter,
        length: file.length,
        sha256,
    };
    (Known { image, bytes }, name)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut repos = [
            unpack(include_bytes!("../fixtures/install.bin")),
            unpack(include_bytes!("../fixtures/install-v3.bin")),
            unpack(include_bytes!("../fixtures/install-rollback.bin")),
        ];
        let authorization = repos[2].remove(AUTHORIZATION).expect("the authorization");
        let root = repos[0]["1.root.json"].clone();
        assert!(repos.iter().all(|r| r["1.root.json"] == root));
        let v1: Vec<u8> = (0..V1_LEN).map(|i| (i % 251) as u8).collect();
        let factory_mem = factory(&root, &v1);

        let mut images = vec![Known {
            image: Image {
                version: Version::new(1, 0, 0),
                security_counter: 1,
                length: V1_LEN as u64,
                sha256: Sha256::digest(&v1).into(),
            },
            bytes: v1,
        }];
        let mut bundles = Vec::new();
        for (i, repo) in repos.iter().enumerate() {
            let (known, name) = listed_image(repo);
            let extra: &[(&str, &[u8])] = match i {
                2 => &[(AUTHORIZATION, &authorization)],
                _ => &[],
            };
            bundles.push(bundle_for(&factory_mem, repo, &name, extra));
            images.push(known);
        }
        let versions: Vec<String> = images.iter().map(|k| k.image.version.to_string()).collect();
        assert_eq!(versions, ["1.0.0", "2.0.0", "3.0.0", "0.9.0"]);

        let mut signed: BTreeMap<&'static str, BTreeSet<(u64, [u8; 32])>> = BTreeMap::new();
        let mut pool = Vec::new();
        for repo in &repos {
            for (name, bytes) in repo {
                pool.push((name.clone(), bytes.clone()));
                for (_, role) in ROLES {
                    if name == &format!("{role}.json") || name.ends_with(&format!(".{role}.json")) {
                        let d = signed_digest(bytes, role).expect("fixture metadata");
                        signed.entry(role).or_default().insert(d);
                    }
                }
            }
        }
        pool.push((AUTHORIZATION.to_string(), authorization.clone()));
        let env = Envelope::parse(&authorization, "rollback-authorization").unwrap();
        let issued = match env.signed.get("issued").unwrap() {
            Some(Value::Str(s)) => hale_core::time::parse_expires(s.to_string().as_bytes()),
            _ => None,
        }
        .expect("the authorization's issued");

        // the pump that reverted 2.0.0's trial, and the one rolled back to 0.9.0
        let mut reverted = factory_mem.clone();
        let mut rolled_back = factory_mem.clone();
        for (mem, bundle, version, confirm) in [
            (&mut reverted, &bundles[0], "2.0.0", false),
            (&mut rolled_back, &bundles[2], "0.9.0", true),
        ] {
            let mut store = FirmwareStore::open(Flash::new(mem), LAYOUT).unwrap();
            let mut t = BundleTransport::parse(bundle).unwrap();
            assert!(Expect::Staged(version).holds(&install(&mut store, &mut t)));
            let mut store = FirmwareStore::open(store.into_flash(), LAYOUT).unwrap();
            assert!(matches!(store.boot().unwrap(), Boot::Trial { .. }));
            if confirm {
                store.confirm().unwrap();
            } else {
                assert!(matches!(store.reject().unwrap(), Boot::Reverted { .. }));
            }
        }
        use Expect::*;
        let pumps = vec![
            Pump {
                name: "factory 1.0.0",
                mem: factory_mem,
                expect: [Staged("2.0.0"), Staged("3.0.0"), Staged("0.9.0")],
            },
            Pump {
                name: "1.0.0, 2.0.0 reverted",
                mem: reverted,
                expect: [Reverted("2.0.0"), Staged("3.0.0"), Staged("0.9.0")],
            },
            Pump {
                name: "0.9.0 rolled back to",
                mem: rolled_back,
                expect: [MetadataRollback, MetadataRollback, UpToDate("0.9.0")],
            },
        ];
        Fixture {
            pool,
            bundles: bundles.try_into().unwrap(),
            images,
            signed,
            authorization: (
                canonical_sha256(&authorization, "rollback-authorization").unwrap(),
                issued,
            ),
            pumps,
        }
    })
}

fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("HALE_FUZZ_DEBUG").is_some())
}

/// The released (or factory) image `image` records, its bytes checked against what `slot`
/// holds.
fn check_slot_image(store: &mut FirmwareStore<Flash<'_>>, slot: Slot, image: &Image, what: &str) {
    let f = fixture();
    let known = f
        .images
        .iter()
        .find(|k| k.image.sha256 == image.sha256)
        .unwrap_or_else(|| {
            panic!("{what}: slot {slot:?} records an image no release lists: {image:?}")
        });
    assert_eq!(
        *image, known.image,
        "{what}: slot {slot:?} records another version, counter or length than its release"
    );
    let mut got = vec![0u8; known.bytes.len()];
    store.read_slot(slot, 0, &mut got).unwrap();
    assert!(
        got == known.bytes,
        "{what}: slot {slot:?} records {} but holds other bytes",
        image.version
    );
}

/// Every slot the pump may boot holds a released image byte for byte; a staging slot lists one.
fn check_slots(store: &mut FirmwareStore<Flash<'_>>, what: &str) {
    let s = store.slots();
    for slot in [Slot::A, Slot::B] {
        let info = s.info(slot);
        match info.state {
            SlotState::Pending | SlotState::Trial | SlotState::Good => {
                let image = info.image.expect("a bootable slot records its image");
                check_slot_image(store, slot, &image, what);
            }
            SlotState::Staging => {
                let image = info.image.expect("a staging slot records its image");
                assert!(
                    fixture().images.iter().any(|k| k.image == image),
                    "{what}: slot {slot:?} is staging an image no release lists: {image:?}"
                );
                assert!(store.download_offset() <= image.length);
            }
            SlotState::Empty | SlotState::Rejected => {}
        }
    }
}

/// Stored metadata: never dropped, never an older version, always signed by the fixture keys.
fn check_metadata(before: &Persisted, after: &Persisted, what: &str) {
    let f = fixture();
    for (i, (_, role)) in ROLES.iter().enumerate() {
        let (b, a) = (&before.meta[i], &after.meta[i]);
        let Some(a) = a else {
            assert!(b.is_none(), "{what}: stored {role} dropped");
            continue;
        };
        let (version, digest) = signed_digest(a, role)
            .unwrap_or_else(|| panic!("{what}: stored {role} does not parse"));
        assert!(
            f.signed[role].contains(&(version, digest)),
            "{what}: stored {role} version {version} is no document the fixture keys signed"
        );
        if let Some(b) = b {
            let was = peek_header(b, role).unwrap().version;
            assert!(
                version >= was,
                "{what}: stored {role} went back from version {was} to {version}"
            );
        }
    }
}

/// Install the bundle `t` serves on `pump`, then check everything the header lists.
fn exercise(pump: &Pump, t: BundleTransport<'_>, valid: Option<usize>) {
    let f = fixture();
    let what = pump.name;
    let mut mem = pump.mem.clone();
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let before = persisted(&mut store);
    let outcome = install(&mut store, &mut t.clone());
    if debug() {
        eprintln!("{what}: {outcome:?} (valid bundle: {valid:?})");
    }
    if let Some(k) = valid {
        assert!(
            pump.expect[k].holds(&outcome),
            "{what}: valid bundle {k} ended {outcome:?}, not {:?}",
            pump.expect[k]
        );
    }
    let after = persisted(&mut store);
    let (b, a) = (before.slots, after.slots);
    assert_eq!(
        a.active(),
        b.active(),
        "{what}: a check changed the active slot"
    );
    assert_eq!(
        a.running(),
        b.running(),
        "{what}: a check changed the running image"
    );
    assert_eq!(
        a.security_counter(),
        b.security_counter(),
        "{what}: a check changed the security counter"
    );
    for slot in [Slot::A, Slot::B] {
        let (bi, ai) = (b.info(slot), a.info(slot));
        let new = matches!(
            ai.state,
            SlotState::Pending | SlotState::Trial | SlotState::Good
        ) && ai != bi;
        match outcome {
            Ok(Outcome::Staged { version }) if new => {
                assert_eq!(
                    ai.state,
                    SlotState::Pending,
                    "{what}: staged as {:?}",
                    ai.state
                );
                let image = ai.image.unwrap();
                assert_eq!(
                    image.version, version,
                    "{what}: staged another version than reported"
                );
                let running = b.running().unwrap().version;
                if version <= running {
                    // a downgrade: only with the fixture's signed authorization, spent now
                    let auth = t.authorization().unwrap_or_else(|| {
                        panic!("{what}: staged {version} over {running} without an authorization")
                    });
                    let digest = canonical_sha256(auth, "rollback-authorization");
                    assert_eq!(
                        digest,
                        Some(f.authorization.0),
                        "{what}: staged {version} over {running} by an authorization the fixture did not sign"
                    );
                    assert_eq!(after.last_authorization, f.authorization.1);
                }
            }
            _ => assert!(!new, "{what}: slot {slot:?} became {ai:?} ({outcome:?})"),
        }
    }
    if let Ok(Outcome::Staged { .. }) = outcome {
        assert!(
            [Slot::A, Slot::B]
                .iter()
                .any(|s| a.info(*s).state == SlotState::Pending),
            "{what}: Staged, but no slot is pending"
        );
    }
    check_slots(&mut store, what);
    check_metadata(&before, &after, what);

    // a refused bundle, installed again: refused the same way, nothing changed
    if let Err(e) = &outcome {
        let again = install(&mut store, &mut t.clone());
        assert_eq!(
            again.as_ref(),
            Err(e),
            "{what}: the same bundle again ended otherwise"
        );
        assert_eq!(
            persisted(&mut store),
            after,
            "{what}: the same bundle again changed the pump"
        );
    }

    // the next power-up (the store above is gone) boots a released image
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT)
        .expect("a valid state record after the install");
    check_slots(&mut store, what);
    let boot = store.boot().expect("a verified image boots");
    if let Ok(Outcome::Staged { version }) = outcome {
        assert!(
            matches!(boot, Boot::Trial { .. }),
            "{what}: staged {version}, booted {boot:?}"
        );
    }
    let s = store.slots();
    let running = s
        .info(boot.slot())
        .image
        .expect("the booted slot records its image");
    check_slot_image(&mut store, boot.slot(), &running, what);
    assert!(
        s.security_counter() <= running.security_counter,
        "{what}: counter {} with {} running",
        s.security_counter(),
        running.version
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // the valid bundles, on every pump, before anything else (the seeds are the same bytes)
    static SELF_CHECK: Once = Once::new();
    SELF_CHECK.call_once(|| {
        for (k, b) in f.bundles.iter().enumerate() {
            let t = BundleTransport::parse(b).unwrap();
            for pump in &f.pumps {
                exercise(pump, t, Some(k));
            }
        }
    });
    // structure refused before anything runs (`hale-agent bundle install` stops there)
    let Ok(t) = BundleTransport::parse(data) else {
        return;
    };
    let valid = f.bundles.iter().position(|b| b == data);
    for pump in &f.pumps {
        exercise(pump, t, valid);
    }
});

/// splitmix64: the mutator's choices, from libFuzzer's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A name for an entry: one the fixture serves, the authorization's, the next root, or one of
/// the bundle's own.
fn some_name(rng: &mut Rng, entries: &[(String, Vec<u8>)]) -> String {
    let pool = &fixture().pool;
    match rng.below(8) {
        0 => "2.root.json".to_string(),
        1 => AUTHORIZATION.to_string(),
        2 | 3 if !entries.is_empty() => entries[rng.below(entries.len())].0.clone(),
        _ => pool[rng.below(pool.len())].0.clone(),
    }
}

/// One structure-aware change to a bundle's entries (see the header).
fn mutate_entries(rng: &mut Rng, entries: &mut Vec<(String, Vec<u8>)>, room: usize) {
    let pool = &fixture().pool;
    let n = entries.len();
    let pick = |rng: &mut Rng| rng.below(n);
    match rng.below(10) {
        // one entry's bytes, by libFuzzer's own mutations
        0 | 1 if n > 0 => {
            let (_, d) = &mut entries[pick(rng)];
            let size = d.len();
            // (libFuzzer's mutations need room for at least one byte)
            d.resize(size + room.clamp(1, 512), 0);
            let max = d.len();
            let got = fuzzer_mutate(d, size, max);
            d.truncate(got);
        }
        2 if n > 0 => {
            entries.remove(pick(rng));
        }
        // an entry's bytes under another name
        3 if n > 0 => {
            let d = entries[pick(rng)].1.clone();
            entries.push((some_name(rng, entries), d));
        }
        4 if n > 0 => {
            let i = pick(rng);
            entries[i].0 = some_name(rng, entries);
        }
        5 if n > 0 => {
            let (_, d) = &mut entries[pick(rng)];
            let keep = rng.below(d.len() + 1);
            d.truncate(keep);
        }
        // a file of any release, in place of the entry of that name or added (mix and match)
        6 => {
            let (name, d) = &pool[rng.below(pool.len())];
            match entries.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = d.clone(),
                None => entries.push((name.clone(), d.clone())),
            }
        }
        7 => match entries.iter().position(|(n, _)| n == AUTHORIZATION) {
            Some(i) => {
                entries.remove(i);
            }
            None => {
                let (_, d) = pool.iter().find(|(n, _)| n == AUTHORIZATION).unwrap();
                entries.push((AUTHORIZATION.to_string(), d.clone()));
            }
        },
        8 if n > 1 => {
            let (i, j) = (pick(rng), pick(rng));
            let d = std::mem::take(&mut entries[i].1);
            entries[i].1 = std::mem::replace(&mut entries[j].1, d);
        }
        9 if n > 1 => {
            let e = entries.remove(pick(rng));
            let at = rng.below(entries.len() + 1);
            entries.insert(at, e);
        }
        _ => {}
    }
}

fn encode(entries: &[(String, Vec<u8>)], out: &mut [u8]) -> Option<usize> {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    hale_core::bundle::write(&refs, out).ok().map(<[u8]>::len)
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = Rng(u64::from(seed));
    let entries: Option<Vec<(String, Vec<u8>)>> = Bundle::parse(&data[..size])
        .ok()
        .map(|b| b.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect());
    match entries {
        // the raw bytes: header, lengths, names, truncation
        _ if rng.below(4) == 0 => fuzzer_mutate(data, size, max_size),
        Some(mut entries) => {
            for _ in 0..1 + rng.below(2) {
                mutate_entries(&mut rng, &mut entries, max_size.saturating_sub(size));
            }
            match encode(&entries, &mut data[..max_size]) {
                Some(n) => n,
                None => fuzzer_mutate(data, size, max_size),
            }
        }
        // not a bundle: now and then a valid one to start again from
        None => {
            let bundles = &fixture().bundles;
            let b = &bundles[rng.below(bundles.len())];
            if rng.below(4) == 0 && b.len() <= max_size {
                data[..b.len()].copy_from_slice(b);
                b.len()
            } else {
                fuzzer_mutate(data, size, max_size)
            }
        }
    }
});

// two bundles: the first's entries, each replaced by the second's of that name or not, and the
// second's other entries added or not (mix and match across inputs)
fuzz_crossover!(|data1: &[u8], data2: &[u8], out: &mut [u8], seed: u32| {
    let mut rng = Rng(u64::from(seed));
    let (Ok(a), Ok(b)) = (Bundle::parse(data1), Bundle::parse(data2)) else {
        let n = data1.len().min(out.len());
        out[..n].copy_from_slice(&data1[..n]);
        return n;
    };
    let mut entries: Vec<(String, Vec<u8>)> = a
        .iter()
        .map(|(n, d)| {
            let d = match b.get(n) {
                Some(other) if rng.below(2) == 0 => other,
                _ => d,
            };
            (n.to_string(), d.to_vec())
        })
        .collect();
    for (n, d) in b.iter() {
        if a.get(n).is_none() && rng.below(4) == 0 {
            entries.push((n.to_string(), d.to_vec()));
        }
    }
    match encode(&entries, out) {
        Some(n) => n,
        None => {
            let n = data1.len().min(out.len());
            out[..n].copy_from_slice(&data1[..n]);
            n
        }
    }
});
