//! Endless data: an attacker streams more bytes than the metadata allows, to fill flash or memory.

use hale_core::{Error, Name, Role, Storage, TrustedSet};
use hale_tests::*;

#[test]
fn rejects_target_longer_than_listed_as_soon_as_it_passes_the_length() {
    let mut r = RepoSim::new();
    r.add_target("targets", "fw.bin", b"0123456789", None);
    r.publish();
    let mut c = Client::new(r.initial_root());
    let name = r.target_file_name("fw.bin");
    r.files.insert(name, vec![b'A'; 1 << 20]);
    let err = c.download(&r.files, "fw.bin", NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::TooLarge {
            what: Name::new("fw.bin"),
            limit: 10
        })
    );
}

#[test]
fn rejects_snapshot_longer_than_timestamp_says() {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    let mut padded = r.files["1.snapshot.json"].clone();
    let listed = padded.len() as u64;
    padded.extend_from_slice(&[b' '; 64]);
    r.files.insert("1.snapshot.json".into(), padded);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    // the client's fetch limit (the length the timestamp lists) stops it first ...
    assert_eq!(
        err,
        ClientError::Fetch(FetchError::TooLarge("1.snapshot.json".into()))
    );
    // ... and the core refuses it on its own too
    let mut set = TrustedSet::new(Storage::with_capacity(1 << 16), &r.initial_root(), NOW).unwrap();
    set.update_timestamp(&r.files["timestamp.json"]).unwrap();
    let err = set
        .update_snapshot(&r.files["1.snapshot.json"])
        .unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            what: Name::new("snapshot.json"),
            expected: listed,
            received: listed + 64
        }
    );
    assert!(set.stored(Role::Snapshot).is_none());
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 1,
            ..Default::default()
        }
    );
    // the client's own run: hale-core took the timestamp and no snapshot
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(1),
            snapshot: None,
            targets: None
        }
    );
}

#[test]
fn rejects_json_nesting_bomb_without_recursing_deeply() {
    let r = RepoSim::new();
    let mut set = TrustedSet::new(Storage::with_capacity(1 << 20), &r.initial_root(), NOW).unwrap();
    let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = set.update_timestamp(bomb.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        Error::Json {
            role: Name::new("timestamp"),
            error: hale_core::json::JsonError::TooDeep {
                offset: hale_core::limits::MAX_JSON_DEPTH
            }
        }
    );
    assert!(set.stored(Role::Timestamp).is_none());
}

#[test]
fn refuses_metadata_larger_than_the_devices_storage() {
    let mut r = RepoSim::new();
    for i in 0..40 {
        r.add_target(
            "targets",
            &format!("fw-{i}.bin"),
            format!("image {i}").as_bytes(),
            None,
        );
    }
    r.publish();
    let store = Storage {
        root: vec![0u8; 4096],
        timestamp: vec![0u8; 1024],
        snapshot: vec![0u8; 1024],
        targets: vec![0u8; 2048],
    };
    let mut set = TrustedSet::new(store, &r.initial_root(), NOW).unwrap();
    set.update_timestamp(&r.files["timestamp.json"]).unwrap();
    set.update_snapshot(&r.files["2.snapshot.json"]).unwrap();
    let t = &r.files["2.targets.json"];
    let err = set.update_targets(t).unwrap_err();
    assert_eq!(
        err,
        Error::StorageTooSmall {
            role: Role::Targets,
            capacity: 2048,
            needed: t.len()
        }
    );
    assert!(set.targets().is_none());
}
