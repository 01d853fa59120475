//! Arbitrary software: an attacker serves files or metadata that the repository's keys did not sign.

use hale_core::{Error, Name, Role};
use hale_repo::keys::KeyKind;
use hale_tests::*;

fn repo_with_firmware() -> RepoSim {
    let mut r = RepoSim::new();
    r.add_target("targets", "pump-a/fw.bin", b"genuine firmware v1", None);
    r.publish();
    r
}

#[test]
fn rejects_target_whose_content_was_replaced() {
    let mut r = repo_with_firmware();
    let mut c = Client::new(r.initial_root());
    let name = r.target_file_name("pump-a/fw.bin");
    r.files.insert(name, b"malicious firmware!".to_vec()); // same length
    let err = c.download(&r.files, "pump-a/fw.bin", NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::HashMismatch {
            what: Name::new("pump-a/fw.bin"),
            algorithm: "sha256"
        })
    );
    // the metadata refresh itself was fine and is what the client now trusts
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 1,
            timestamp: Some(2),
            snapshot: Some(2),
            targets: Some(2)
        }
    );
}

#[test]
fn rejects_targets_resigned_by_an_attacker_key() {
    let mut r = repo_with_firmware();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let before = c.trusted();
    r.add_target("targets", "pump-a/fw.bin", b"genuine firmware v2", None);
    r.publish();
    let evil = key("attacker", KeyKind::Ed25519);
    let name = format!("{}.targets.json", r.targets.version);
    let forged = resign(&r.files[&name], &[&evil], |s| {
        s["targets"]["pump-a/fw.bin"]["hashes"]["sha256"] = "00".repeat(32).into();
    });
    r.files.insert(name, forged);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("targets"),
            threshold: 1,
            valid: 0
        })
    );
    // hale-core took the genuine timestamp and snapshot v3, not the forged targets
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(3),
            snapshot: Some(3),
            targets: None
        }
    );
    assert_eq!(c.trusted(), before);
}

#[test]
fn rejects_signed_content_changed_after_signing() {
    let mut r = repo_with_firmware();
    let mut c = Client::new(r.initial_root());
    let name = format!("{}.targets.json", r.targets.version);
    let tampered = tamper_signed(&r.files[&name], |s| {
        s["targets"]["pump-a/fw.bin"]["length"] = 1.into();
    });
    r.files.insert(name, tampered);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("targets"),
            threshold: 1,
            valid: 0
        })
    );
    // hale-core stores no targets: the tampered one was refused
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
fn rejects_unknown_field_added_after_signing_but_accepts_signed_ones() {
    let mut r = repo_with_firmware();
    r.timestamp
        .extra
        .insert("x-hale-note".into(), "signed by the repository".into());
    r.publish();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW)
        .expect("signed unknown fields are kept and verified");
    let before = c.trusted();
    r.publish();
    let ts = tamper_signed(&r.files["timestamp.json"], |s| {
        s["x-injected"] = "not signed".into();
    });
    r.files.insert("timestamp.json".into(), ts);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        })
    );
    // hale-core kept the signed timestamp v3 it trusted, byte for byte, not the tampered v4
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(3),
            snapshot: None,
            targets: None
        }
    );
    assert_eq!(c.core_stored(Role::Timestamp), c.timestamp.as_deref());
    assert_eq!(c.trusted(), before);
}

#[test]
fn rejects_timestamp_signed_with_another_roles_key() {
    let mut r = repo_with_firmware();
    let mut c = Client::new(r.initial_root());
    let snapshot_key = r.snapshot.keys[0].clone();
    let ts = resign(&r.files["timestamp.json"], &[&snapshot_key], |_| {});
    r.files.insert("timestamp.json".into(), ts);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: None,
            snapshot: None,
            targets: None
        }
    );
}

#[test]
fn rejects_duplicate_keys_that_two_parsers_would_read_differently() {
    let mut r = repo_with_firmware();
    let mut c = Client::new(r.initial_root());
    // a second "version" member after the signed one: one parser takes the first, another the last
    let ts = String::from_utf8(r.files["timestamp.json"].clone()).unwrap();
    let ts = ts.replacen("\"version\":2", "\"version\":2,\"version\":999", 1);
    r.files.insert("timestamp.json".into(), ts.into_bytes());
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Json {
            role: Name::new("timestamp"),
            error: hale_core::json::JsonError::DuplicateKey
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: None,
            snapshot: None,
            targets: None
        }
    );
}
