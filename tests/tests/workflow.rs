//! The client workflow itself: call order, unchanged metadata, stored snapshots, the root
//! rotation cap, and a device that sat switched off through many rotations.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_core::{Error, Freshness, Name, Role, Seal, Storage, TrustedSet, Update};
use hale_repo::keys::KeyKind;
use hale_tests::*;

fn set(r: &RepoSim) -> TrustedSet<Vec<u8>> {
    TrustedSet::new(Storage::with_capacity(1 << 16), &r.initial_root(), NOW).unwrap()
}

#[test]
fn calls_out_of_order_are_refused_and_change_nothing() {
    let r = RepoSim::new();
    let mut s = set(&r);
    assert_eq!(
        s.update_snapshot(&r.files["1.snapshot.json"]).unwrap_err(),
        Error::WrongOrder {
            operation: "snapshot update",
            requires: "a timestamp"
        }
    );
    assert_eq!(
        s.update_targets(&r.files["1.targets.json"]).unwrap_err(),
        Error::WrongOrder {
            operation: "targets update",
            requires: "a current snapshot"
        }
    );
    s.update_timestamp(&r.files["timestamp.json"]).unwrap();
    assert_eq!(
        s.update_root(&r.files["1.root.json"]).unwrap_err(),
        Error::WrongOrder {
            operation: "update_root",
            requires: "no timestamp loaded yet"
        }
    );
    assert!(s.stored(Role::Snapshot).is_none() && s.stored(Role::Targets).is_none());
}

/// `s`, started at `r`'s timestamp expiry, loads that timestamp as the stored one and refuses
/// the same bytes served again: `Expired`.
fn refused_once_expired(s: &mut TrustedSet<Vec<u8>>, r: &RepoSim) {
    let expires = r.timestamp.expires;
    s.load_trusted_timestamp(&r.files["timestamp.json"])
        .unwrap();
    assert_eq!(
        s.update_timestamp(&r.files["timestamp.json"]).unwrap_err(),
        Error::Expired {
            role: Name::new("timestamp"),
            expires,
            now: expires,
        }
    );
}

#[test]
fn same_timestamp_again_is_unchanged_not_an_error() {
    let r = RepoSim::new();
    let mut s = set(&r);
    s.load_trusted_timestamp(&r.files["timestamp.json"])
        .unwrap();
    assert_eq!(
        s.update_timestamp(&r.files["timestamp.json"]).unwrap(),
        Update::Unchanged { version: 1 }
    );

    // the same bytes once they expired: refused, and the trusted timestamp stays
    let expires = r.timestamp.expires;
    let mut s =
        TrustedSet::new(Storage::with_capacity(1 << 16), &r.initial_root(), expires).unwrap();
    refused_once_expired(&mut s, &r);
    assert_eq!(
        s.stored(Role::Timestamp),
        Some(&r.files["timestamp.json"][..])
    );
}

/// The seal of a set that verified `r`'s root and timestamp, as a device's check leaves it.
fn sealed(r: &RepoSim) -> Seal {
    let mut s = set(r);
    assert_eq!(s.seal(), None, "no seal before a timestamp");
    s.update_timestamp(&r.files["timestamp.json"]).unwrap();
    s.seal().unwrap()
}

fn resume(root: &[u8], seal: &Seal, now: i64) -> Result<TrustedSet<Vec<u8>>, Error> {
    TrustedSet::resume(Storage::with_capacity(1 << 16), root, now, Some(seal))
}

/// `timestamp`, offered as the stored one, does not verify: refused, and dropped with the stored
/// snapshot (spec 5.3.11), as without a seal.
fn refused_and_dropped(s: &mut TrustedSet<Vec<u8>>, timestamp: &[u8], r: &RepoSim) {
    assert_eq!(
        s.load_trusted_timestamp(timestamp).unwrap_err(),
        Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        }
    );
    assert_eq!(s.stored(Role::Timestamp), None);
    assert_eq!(
        s.load_trusted_snapshot(&r.files["1.snapshot.json"])
            .unwrap_err(),
        Error::OnlineKeysRotated
    );
}

#[test]
fn a_seal_takes_the_same_root_and_timestamp_again_and_gives_the_same_seal() {
    let r = RepoSim::new();
    let seal = sealed(&r);
    let mut s = resume(&r.initial_root(), &seal, NOW).unwrap();
    s.load_trusted_timestamp(&r.files["timestamp.json"])
        .unwrap();
    assert_eq!(
        s.update_timestamp(&r.files["timestamp.json"]).unwrap(),
        Update::Unchanged { version: 1 }
    );
    assert_eq!(s.seal(), Some(seal));
    // a set that verified everything itself seals the same bytes alike
    let mut full = set(&r);
    full.load_trusted_timestamp(&r.files["timestamp.json"])
        .unwrap();
    assert_eq!(full.seal(), Some(seal));
}

#[test]
fn a_seal_does_not_stand_for_a_root_it_was_not_made_of() {
    let r = RepoSim::new();
    let seal = sealed(&r);
    let tampered = tamper_signed(&r.initial_root(), |s| s["version"] = 7.into());
    assert_eq!(
        resume(&tampered, &seal, NOW).unwrap_err(),
        Error::ThresholdNotMet {
            role: Name::new("root"),
            threshold: 1,
            valid: 0
        }
    );
}

#[test]
fn a_seal_does_not_stand_for_a_timestamp_it_was_not_made_of() {
    let r = RepoSim::new();
    let seal = sealed(&r);
    let mut s = resume(&r.initial_root(), &seal, NOW).unwrap();
    let tampered = tamper_signed(&r.files["timestamp.json"], |s| s["version"] = 9.into());
    refused_and_dropped(&mut s, &tampered, &r);
}

#[test]
fn after_a_new_root_the_sealed_timestamp_is_verified_again_and_dropped_when_its_keys_rotated() {
    // spec 5.3.11: the timestamp key rotated (a compromise); the stored timestamp, which the
    // seal was made of under the old root, must not stay the rollback baseline
    let mut r = RepoSim::new();
    let seal = sealed(&r);
    let old_timestamp = r.files["timestamp.json"].clone();
    r.rotate_root(|r| r.timestamp.keys = vec![key("ts-rotated", KeyKind::Ed25519)]);
    r.publish();
    let mut s = resume(&r.initial_root(), &seal, NOW).unwrap();
    assert_eq!(s.update_root(&r.root_bytes(2)).unwrap(), 2);
    refused_and_dropped(&mut s, &old_timestamp, &r);
    // the new timestamp verifies under the new root, and the seal is of both
    assert_eq!(
        updated(s.update_timestamp(&r.files["timestamp.json"]).unwrap()),
        2
    );
    assert_ne!(s.seal(), Some(seal));
}

#[test]
fn a_sealed_root_and_timestamp_are_still_checked_for_expiry() {
    let r = RepoSim::new();
    let seal = sealed(&r);
    let root_expires = hale_core::metadata::peek_header(&r.initial_root(), "root")
        .unwrap()
        .expires;
    let mut s = resume(&r.initial_root(), &seal, root_expires).unwrap();
    assert_eq!(
        s.load_trusted_timestamp(&r.files["timestamp.json"])
            .unwrap_err(),
        Error::ExpiredRoot {
            expires: root_expires,
            now: root_expires
        }
    );
    assert_eq!(s.stored(Role::Timestamp), None);

    let mut s = resume(&r.initial_root(), &seal, r.timestamp.expires).unwrap();
    refused_once_expired(&mut s, &r);
}

#[test]
fn a_stored_snapshot_that_is_current_needs_no_download() {
    let mut r = RepoSim::new();
    let mut s = set(&r);
    s.update_timestamp(&r.files["timestamp.json"]).unwrap();
    assert_eq!(
        s.load_trusted_snapshot(&r.files["1.snapshot.json"])
            .unwrap(),
        Freshness::Current
    );
    s.update_targets(&r.files["1.targets.json"]).unwrap();

    r.publish();
    let mut s = set(&r);
    s.update_timestamp(&r.files["timestamp.json"]).unwrap();
    assert_eq!(
        s.load_trusted_snapshot(&r.files["1.snapshot.json"])
            .unwrap(),
        Freshness::Stale
    );
    assert_eq!(
        s.update_targets(&r.files["1.targets.json"]).unwrap_err(),
        Error::WrongOrder {
            operation: "targets update",
            requires: "a current snapshot"
        }
    );
    assert_eq!(
        updated(s.update_snapshot(&r.files["2.snapshot.json"]).unwrap()),
        2
    );
}

#[test]
fn a_device_switched_off_for_years_catches_up_through_ten_root_rotations() {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    for i in 0..10 {
        // every rotation replaces the root key and one online key
        r.rotate_root(|r| {
            r.root.keys = vec![key(
                &format!("root-gen-{i}"),
                if i % 2 == 0 {
                    KeyKind::EcdsaP256
                } else {
                    KeyKind::Ed25519
                },
            )];
            r.timestamp.keys = vec![key(&format!("ts-gen-{i}"), KeyKind::Ed25519)];
        });
        r.publish();
    }
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 11,
            timestamp: Some(11),
            snapshot: Some(11),
            targets: Some(1)
        }
    );
}

#[test]
fn the_root_rotation_cap_bounds_one_update() {
    let mut r = RepoSim::new();
    for _ in 0..5 {
        r.rotate_root(|_| {});
    }
    let mut s = set(&r).with_max_root_rotations(3);
    for v in 2..=4 {
        assert_eq!(s.update_root(&r.root_bytes(v)).unwrap(), v);
    }
    assert_eq!(
        s.update_root(&r.root_bytes(5)).unwrap_err(),
        Error::TooManyRootRotations { cap: 3 }
    );
    assert_eq!(
        hale_core::metadata::peek_header(s.stored(Role::Root).unwrap(), "root")
            .unwrap()
            .version,
        4
    );
}

#[test]
fn a_trusted_root_that_does_not_verify_itself_is_refused() {
    let r = RepoSim::new();
    let tampered = tamper_signed(&r.initial_root(), |s| s["version"] = 7.into());
    let err = TrustedSet::new(Storage::with_capacity(4096), &tampered, NOW).unwrap_err();
    assert_eq!(
        err,
        Error::ThresholdNotMet {
            role: Name::new("root"),
            threshold: 1,
            valid: 0
        }
    );
}

#[test]
fn unsupported_spec_versions_and_wrong_types_are_named() {
    let r = RepoSim::new();
    let tkey = r.timestamp.keys[0].clone();
    let mut s = set(&r);
    let two = resign(&r.files["timestamp.json"], &[&tkey], |s| {
        s["spec_version"] = "2.0.0".into()
    });
    assert_eq!(
        s.update_timestamp(&two).unwrap_err(),
        Error::UnsupportedSpecVersion {
            role: Name::new("timestamp"),
            found: Name::new("2.0.0")
        }
    );
    let wrong = resign(&r.files["timestamp.json"], &[&tkey], |s| {
        s["_type"] = "snapshot".into()
    });
    assert_eq!(
        s.update_timestamp(&wrong).unwrap_err(),
        Error::WrongType {
            expected: "timestamp",
            found: Name::new("snapshot")
        }
    );
    assert!(s.stored(Role::Timestamp).is_none());
}

#[test]
fn rsa_pss_keys_verify_in_std_builds() {
    // python-tuf interop covers ECDSA and ed25519; RSA-PSS keys come from the unit vector below,
    // made with securesystemslib (rsassa-pss-sha256, 2048 bits)
    let v: serde_json::Value =
        serde_json::from_str(include_str!("vectors/rsa-pss/root.json")).unwrap();
    let bytes = serde_json::to_vec(&v).unwrap();
    TrustedSet::new(Storage::with_capacity(1 << 14), &bytes, NOW).unwrap();
    let tampered = tamper_signed(&bytes, |s| s["version"] = 2.into());
    assert_eq!(
        TrustedSet::new(Storage::with_capacity(1 << 14), &tampered, NOW).unwrap_err(),
        Error::ThresholdNotMet {
            role: Name::new("root"),
            threshold: 1,
            valid: 0
        }
    );
}

#[test]
fn the_time_passed_is_a_fresh_timestamps_start_time_or_a_signed_timestamps_expiry_only() {
    let r = RepoSim::new();
    let ts = &r.files["timestamp.json"];
    let mut s = set(&r);
    assert_eq!(s.time_passed(), i64::MIN, "nothing before a timestamp");
    s.update_timestamp(ts).unwrap();
    assert_eq!(s.time_passed(), NOW);
    // a signed timestamp refused as expired: its expiry, not the later start time
    let late = r.timestamp.expires + 500;
    let mut s = TrustedSet::new(Storage::with_capacity(1 << 16), &r.initial_root(), late).unwrap();
    assert_eq!(
        s.update_timestamp(ts).unwrap_err(),
        Error::Expired {
            role: Name::new("timestamp"),
            expires: r.timestamp.expires,
            now: late,
        }
    );
    assert_eq!(s.time_passed(), r.timestamp.expires);
    // an expired timestamp the root's keys did not sign: nothing (anyone can write an expiry)
    let mut forged = r.clone();
    forged.timestamp.version += 1;
    forged.timestamp.expires = NOW - 100;
    forged.timestamp.keys = vec![key("intruder", KeyKind::Ed25519)];
    forged.write_timestamp();
    let mut s = set(&r);
    assert_eq!(
        s.update_timestamp(&forged.files["timestamp.json"])
            .unwrap_err(),
        Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0,
        }
    );
    assert_eq!(s.time_passed(), i64::MIN);
    // an expired root: nothing either (a root lives long: a clock that ran past it once would
    // hold every check back until the next root)
    let after_root = r.root.expires + 1;
    let mut s = TrustedSet::new(
        Storage::with_capacity(1 << 16),
        &r.initial_root(),
        after_root,
    )
    .unwrap();
    assert_eq!(
        s.update_timestamp(ts).unwrap_err(),
        Error::ExpiredRoot {
            expires: r.root.expires,
            now: after_root,
        }
    );
    assert_eq!(s.time_passed(), i64::MIN);
}
