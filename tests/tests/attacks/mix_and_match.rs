//! Mix-and-match: an attacker combines metadata from different points in time, each validly
//! signed. Versions and hashes must match what the referencing role names.

use hale_core::{Error, Name};
use hale_tests::*;

#[test]
fn rejects_snapshot_other_than_the_one_timestamp_names() {
    let mut r = RepoSim::new();
    r.publish();
    let mut c = Client::new(r.initial_root());
    // serve snapshot v1 under the name of v2
    let v1 = r.files["1.snapshot.json"].clone();
    let v2_len = r.files["2.snapshot.json"].len() as u64;
    r.files.insert("2.snapshot.json".into(), v1.clone());
    let err = c.refresh(&r.files, NOW).unwrap_err();
    let expected = if v1.len() as u64 == v2_len {
        Error::HashMismatch {
            what: Name::new("snapshot.json"),
            algorithm: "sha256",
        }
    } else {
        Error::LengthMismatch {
            what: Name::new("snapshot.json"),
            expected: v2_len,
            received: v1.len() as u64,
        }
    };
    assert_eq!(err, ClientError::Trust(expected));
    // hale-core took the timestamp, not the substituted snapshot
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(2),
            snapshot: None,
            targets: None
        }
    );
}

#[test]
fn rejects_targets_version_other_than_snapshot_names() {
    let mut r = RepoSim::new();
    r.add_target("targets", "fw.bin", b"x", None);
    r.publish();
    let mut c = Client::new(r.initial_root());
    let old = r.files["1.targets.json"].clone();
    r.files.insert("2.targets.json".into(), old);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::VersionMismatch {
            role: Name::new("targets"),
            expected: 2,
            received: 1
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(2),
            snapshot: Some(2),
            targets: None
        }
    );
}

#[test]
fn rejects_delegated_role_version_other_than_snapshot_names() {
    let mut r = RepoSim::new();
    r.delegate(
        "targets",
        "pump-a",
        &["pump-a/*"],
        true,
        vec![key("pump-a", hale_repo::keys::KeyKind::Ed25519)],
        1,
    );
    r.add_target("pump-a", "pump-a/fw.bin", b"one", None);
    r.publish();
    r.add_target("pump-a", "pump-a/fw.bin", b"two", None);
    r.publish();
    let mut c = Client::new(r.initial_root());
    let old = r.files["1.pump-a.json"].clone();
    r.files.insert("2.pump-a.json".into(), old);
    let err = c.download(&r.files, "pump-a/fw.bin", NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::VersionMismatch {
            role: Name::new("pump-a"),
            expected: 2,
            received: 1
        })
    );
}
