//! Offline bundles: a device installs from one file with no network, verifying it exactly as an
//! online update from its own trusted root. A tampered bundle fails like a tampered repository.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use hale_core::bundle::Bundle;
use hale_core::{Error, Name};
use hale_repo::keys::KeyKind;
use hale_tests::*;

/// What a technician's bundle for `target` holds: every file an update from the device's root
/// version fetches (what `Client` fetched online), and the image.
fn bundle_for(r: &RepoSim, target: &str) -> Vec<u8> {
    let mut probe = Client::new(r.initial_root());
    probe.download(&r.files, target, NOW).unwrap();
    let entries: Vec<(String, Vec<u8>)> = probe
        .fetched
        .iter()
        .filter_map(|n| r.files.get(n).map(|b| (n.clone(), b.clone())))
        .collect();
    hale_repo::bundle::encode(&entries).unwrap()
}

fn as_files(bundle: &[u8]) -> BTreeMap<String, Vec<u8>> {
    Bundle::parse(bundle)
        .unwrap()
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect()
}

fn repo() -> RepoSim {
    let mut r = RepoSim::new();
    r.delegate(
        "targets",
        "pump-a",
        &["pump-a/*"],
        true,
        vec![key("pump-a", KeyKind::Ed25519)],
        1,
    );
    r.add_target(
        "pump-a",
        "pump-a/fw-3.0.0.bin",
        b"pump firmware 3.0.0",
        None,
    );
    r.publish();
    r.rotate_root(|r| r.root.keys.push(key("root-2", KeyKind::EcdsaP256)));
    r.publish();
    r
}

#[test]
fn a_device_installs_from_a_bundle_with_no_network() {
    let r = repo();
    let bundle = bundle_for(&r, "pump-a/fw-3.0.0.bin");
    let mut device = Client::new(r.initial_root());
    assert_eq!(
        device
            .download(&as_files(&bundle), "pump-a/fw-3.0.0.bin", NOW)
            .unwrap(),
        b"pump firmware 3.0.0"
    );
    assert_eq!(device.trusted().root, 2);
}

#[test]
fn a_tampered_bundle_is_refused_and_changes_nothing() {
    let r = repo();
    let bundle = bundle_for(&r, "pump-a/fw-3.0.0.bin");
    let mut files = as_files(&bundle);
    let image = r.target_file_name("pump-a/fw-3.0.0.bin");
    files.get_mut(&image).unwrap()[0] ^= 0x20;
    let tampered = hale_repo::bundle::encode(&files.into_iter().collect::<Vec<_>>()).unwrap();
    let mut device = Client::new(r.initial_root());
    let err = device
        .download(&as_files(&tampered), "pump-a/fw-3.0.0.bin", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::HashMismatch {
            what: Name::new("pump-a/fw-3.0.0.bin"),
            algorithm: "sha256"
        })
    );

    // metadata tampered inside the bundle: refused before anything is trusted
    let mut files = as_files(&bundle);
    let t = files.get_mut("timestamp.json").unwrap();
    let pos = t.iter().position(|b| *b == b'T').unwrap();
    t[pos] = b'U';
    let tampered = hale_repo::bundle::encode(&files.into_iter().collect::<Vec<_>>()).unwrap();
    let mut device = Client::new(r.initial_root());
    let err = device
        .download(&as_files(&tampered), "pump-a/fw-3.0.0.bin", NOW)
        .unwrap_err();
    // the changed byte is in the signed `expires`: the signature check refuses it first
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        })
    );
    // hale-core took the bundle's genuine root chain and no timestamp
    assert_eq!(
        device.core(),
        Trusted {
            root: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        device.trusted(),
        Trusted {
            root: 1,
            ..Default::default()
        }
    );
}

#[test]
fn a_bundle_rooted_elsewhere_is_refused() {
    // a bundle made from another repository (its own root keys) cannot move this device
    let ours = repo();
    let mut theirs = RepoSim::new();
    theirs.root.keys = vec![key("other-root", KeyKind::Ed25519)];
    theirs.timestamp.keys = vec![key("other-timestamp", KeyKind::Ed25519)];
    theirs.snapshot.keys = vec![key("other-snapshot", KeyKind::Ed25519)];
    theirs.targets.keys = vec![key("other-targets", KeyKind::Ed25519)];
    theirs.write_root();
    theirs.add_target("targets", "pump-a/fw-3.0.0.bin", b"other firmware", None);
    theirs.publish();
    let bundle = bundle_for(&theirs, "pump-a/fw-3.0.0.bin");
    let mut device = Client::new(ours.initial_root());
    let err = device
        .download(&as_files(&bundle), "pump-a/fw-3.0.0.bin", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        })
    );
}
