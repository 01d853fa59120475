//! Fast-forward: a compromised online key pushes a huge version number, so that the real
//! repository's metadata looks like a rollback forever. Rotating the key in root recovers
//! (spec 5.3.11): the stored copy no longer verifies and is dropped.

use hale_core::{Error, Name, Role};
use hale_repo::keys::KeyKind;
use hale_tests::*;

fn fast_forwarded() -> (RepoSim, Client) {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    // the attacker, holding the timestamp key, gets version 1000 onto the device
    let tkey = r.timestamp.keys[0].clone();
    let mut evil = r.files.clone();
    evil.insert(
        "timestamp.json".into(),
        resign(&r.files["timestamp.json"], &[&tkey], |s| {
            s["version"] = 1000.into()
        }),
    );
    c.refresh(&evil, NOW).unwrap();
    assert_eq!(c.trusted().timestamp, Some(1000));
    r.publish();
    (r, c)
}

#[test]
fn fast_forwarded_timestamp_blocks_updates_until_the_key_rotates() {
    let (r, mut c) = fast_forwarded();
    let before = c.trusted();
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("timestamp"),
            trusted: 1000,
            received: 2
        })
    );
    // hale-core kept the fast-forwarded timestamp, not the genuine v2
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(1000),
            snapshot: None,
            targets: None
        }
    );
    assert_eq!(c.core_stored(Role::Timestamp), c.timestamp.as_deref());
    assert_eq!(c.trusted(), before);
}

#[test]
fn recovers_when_root_rotates_the_timestamp_key() {
    let (mut r, mut c) = fast_forwarded();
    r.rotate_root(|r| r.timestamp.keys = vec![key("timestamp-2", KeyKind::Ed25519)]);
    r.publish();
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 2,
            timestamp: Some(3),
            snapshot: Some(3),
            targets: Some(1)
        }
    );
}

#[test]
fn rotating_another_key_does_not_discard_the_timestamp_baseline() {
    let (mut r, mut c) = fast_forwarded();
    r.rotate_root(|r| r.targets.keys = vec![key("targets-2", KeyKind::Ed25519)]);
    r.mark("targets");
    r.publish();
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("timestamp"),
            trusted: 1000,
            received: 3
        })
    );
    // root v2 verified, but the refresh as a whole failed: nothing was persisted
    assert_eq!(c.trusted().root, 1);
    // hale-core verified root v2 and kept the v1000 baseline, byte for byte
    assert_eq!(
        c.core(),
        Trusted {
            root: 2,
            timestamp: Some(1000),
            snapshot: None,
            targets: None
        }
    );
    assert_eq!(c.core_stored(Role::Timestamp), c.timestamp.as_deref());
}

/// The attacker holds both online keys and gets timestamp 1000 naming snapshot 1000 (its
/// `meta` genuine) onto the device, which keeps both.
fn fast_forwarded_both() -> (RepoSim, Client) {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let mut evil = r.clone();
    evil.snapshot.version = 1000;
    evil.write_snapshot();
    evil.timestamp.version = 1000;
    evil.write_timestamp();
    c.refresh(&evil.files, NOW).unwrap();
    assert_eq!(
        (c.trusted().timestamp, c.trusted().snapshot),
        (Some(1000), Some(1000))
    );
    r.publish();
    (r, c)
}

/// Spec 5.3.11: once the timestamp keys rotate, neither stored file is a baseline. Rotating the
/// timestamp key dropped the stored timestamp (it no longer verifies) but kept the stored
/// snapshot 1000, which then refused every genuine snapshot as a rollback: the recovery the
/// threat model names did not recover (found by review, 2026-11-24).
#[test]
fn recovers_from_a_fast_forwarded_snapshot_when_only_the_timestamp_key_rotates() {
    let (mut r, mut c) = fast_forwarded_both();
    r.rotate_root(|r| r.timestamp.keys = vec![key("timestamp-2", KeyKind::Ed25519)]);
    r.publish();
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 2,
            timestamp: Some(3),
            snapshot: Some(3),
            targets: Some(1)
        }
    );
}

/// A device that took the new root in an earlier update but not the files after it (here: its
/// stored root is already the rotated one): the stored timestamp no longer verifies, and the
/// stored snapshot is dropped with it.
#[test]
fn a_stored_timestamp_that_no_longer_verifies_takes_the_stored_snapshot_with_it() {
    let (mut r, mut c) = fast_forwarded_both();
    r.rotate_root(|r| r.timestamp.keys = vec![key("timestamp-2", KeyKind::Ed25519)]);
    r.publish();
    c.root = r.files["2.root.json"].clone();
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 2,
            timestamp: Some(3),
            snapshot: Some(3),
            targets: Some(1)
        }
    );
}
