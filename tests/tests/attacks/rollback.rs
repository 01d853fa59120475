//! Rollback: an attacker replays older metadata (or older firmware) to undo a fix.

use hale_core::{Error, Name, Role};
use hale_tests::*;

fn updated_twice() -> (RepoSim, Client, std::collections::BTreeMap<String, Vec<u8>>) {
    let mut r = RepoSim::new();
    r.add_target("targets", "fw.bin", b"v1", None);
    r.publish();
    let old = r.files.clone();
    r.add_target("targets", "fw.bin", b"v2", None);
    r.publish();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    (r, c, old)
}

#[test]
fn rejects_rollback_when_timestamp_version_decreases() {
    let (_r, mut c, old) = updated_twice();
    let before = c.trusted();
    let err = c.refresh(&old, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("timestamp"),
            trusted: 3,
            received: 2
        })
    );
    // hale-core kept the trusted timestamp v3, byte for byte, not the replayed v2
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
fn rejects_rollback_of_snapshot_version_named_by_timestamp() {
    let (mut r, mut c, _) = updated_twice();
    let before = c.trusted();
    // a compromised timestamp key signs a newer timestamp naming an older snapshot
    let tkey = r.timestamp.keys[0].clone();
    let ts = resign(&r.files["timestamp.json"], &[&tkey], |s| {
        s["version"] = 10.into();
        s["meta"]["snapshot.json"]["version"] = 1.into();
    });
    r.files.insert("timestamp.json".into(), ts);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("snapshot"),
            trusted: 3,
            received: 1
        })
    );
    // hale-core kept the trusted timestamp v3, not the v10 naming snapshot v1
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
fn rejects_rollback_of_targets_version_in_new_snapshot() {
    let (mut r, mut c, _) = updated_twice();
    let before = c.trusted();
    // compromised online keys: a new snapshot that names targets v1 again
    let (skey, tkey) = (r.snapshot.keys[0].clone(), r.timestamp.keys[0].clone());
    let snap = resign(&r.files["3.snapshot.json"], &[&skey], |s| {
        s["version"] = 4.into();
        s["meta"]["targets.json"]["version"] = 1.into();
    });
    let ts = resign(&r.files["timestamp.json"], &[&tkey], |s| {
        s["version"] = 4.into();
        s["meta"]["snapshot.json"] = serde_json::json!({"version": 4});
    });
    r.files.insert("4.snapshot.json".into(), snap);
    r.files.insert("timestamp.json".into(), ts);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("targets"),
            trusted: 3,
            received: 1
        })
    );
    // hale-core took timestamp v4 but kept the trusted snapshot v3, not the v4 naming targets v1
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(4),
            snapshot: Some(3),
            targets: None
        }
    );
    assert_eq!(c.core_stored(Role::Snapshot), c.snapshot.as_deref());
    assert_eq!(c.trusted(), before);
}

/// After a refused snapshot: hale-core took the new timestamp and kept the trusted snapshot
/// (byte for byte), and the client persisted nothing.
fn assert_kept_the_snapshot(c: &Client, before: &Trusted) {
    assert_eq!(
        c.core(),
        Trusted {
            timestamp: Some(before.timestamp.unwrap() + 1),
            targets: None,
            ..before.clone()
        }
    );
    assert_eq!(c.core_stored(Role::Snapshot), c.snapshot.as_deref());
    assert_eq!(c.trusted(), *before);
}

#[test]
fn rejects_snapshot_that_drops_a_role() {
    let mut r = RepoSim::new();
    r.delegate(
        "targets",
        "pump-a",
        &["pump-a/*"],
        true,
        vec![key("pump-a", hale_repo::keys::KeyKind::Ed25519)],
        1,
    );
    r.publish();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let before = c.trusted();
    let (skey, tkey) = (r.snapshot.keys[0].clone(), r.timestamp.keys[0].clone());
    let v = r.snapshot.version;
    let snap = resign(&r.files[&format!("{v}.snapshot.json")], &[&skey], |s| {
        s["version"] = (v + 1).into();
        s["meta"].as_object_mut().unwrap().remove("pump-a.json");
    });
    let ts = resign(&r.files["timestamp.json"], &[&tkey], |s| {
        s["version"] = (r.timestamp.version + 1).into();
        s["meta"]["snapshot.json"] = serde_json::json!({"version": v + 1});
    });
    r.files.insert(format!("{}.snapshot.json", v + 1), snap);
    r.files.insert("timestamp.json".into(), ts);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::MissingFromSnapshot {
            role: Name::new("pump-a")
        })
    );
    // hale-core kept the trusted snapshot, not the one without pump-a
    assert_kept_the_snapshot(&c, &before);
}

/// `bytes` (signed metadata) served with the entries of `signed.meta` in reverse order: the
/// signature, over the canonical form, still holds.
fn with_meta_reversed(bytes: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let member = |k: &str, x: String| format!("{}:{x}", serde_json::Value::from(k));
    let signed: Vec<String> = v["signed"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| match (k.as_str(), x.as_object()) {
            ("meta", Some(meta)) => {
                let entries: Vec<String> = meta
                    .iter()
                    .rev()
                    .map(|(mk, mv)| member(mk, mv.to_string()))
                    .collect();
                member(k, format!("{{{}}}", entries.join(",")))
            }
            _ => member(k, x.to_string()),
        })
        .collect();
    format!(
        "{{\"signatures\":{},\"signed\":{{{}}}}}",
        v["signatures"],
        signed.join(",")
    )
    .into_bytes()
}

#[test]
fn rejects_rollback_of_a_role_that_a_snapshot_lists_in_another_order() {
    // three delegated roles; pump-c at v2
    let mut r = RepoSim::new();
    for name in ["pump-a", "pump-b", "pump-c"] {
        r.delegate(
            "targets",
            name,
            &[&format!("{name}/*")],
            true,
            vec![key(name, hale_repo::keys::KeyKind::Ed25519)],
            1,
        );
        r.add_target(name, &format!("{name}/fw.bin"), name.as_bytes(), None);
    }
    r.publish();
    r.mark("pump-c");
    r.publish();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let (skey, tkey) = (r.snapshot.keys[0].clone(), r.timestamp.keys[0].clone());
    let v = r.snapshot.version;
    // the online keys sign a snapshot listing a new role before the others, served with its
    // entries in reverse order (valid: the signature covers the canonical form)
    let serve = |r: &mut RepoSim, n: u64, pump_c: u64| {
        let snap = resign(&r.files[&format!("{v}.snapshot.json")], &[&skey], |s| {
            s["version"] = (v + n).into();
            s["meta"]["aaa.json"] = serde_json::json!({"version": 1});
            s["meta"]["pump-c.json"]["version"] = pump_c.into();
        });
        let ts = resign(&r.files["timestamp.json"], &[&tkey], |s| {
            s["version"] = (r.timestamp.version + n).into();
            s["meta"]["snapshot.json"] = serde_json::json!({"version": v + n});
        });
        r.files.insert(
            format!("{}.snapshot.json", v + n),
            with_meta_reversed(&snap),
        );
        r.files.insert("timestamp.json".into(), ts);
    };
    // the same versions in another order: taken
    serve(&mut r, 1, 2);
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(c.trusted().snapshot, Some(v + 1));
    let before = c.trusted();
    // pump-c back to v1, in that order: refused as the rollback it is
    serve(&mut r, 2, 1);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Rollback {
            role: Name::new("pump-c"),
            trusted: 2,
            received: 1
        })
    );
    // hale-core kept the trusted snapshot v + 1
    assert_kept_the_snapshot(&c, &before);
}

#[test]
fn rejects_older_root_served_as_the_next_version() {
    let mut r = RepoSim::new();
    r.rotate_root(|_| {});
    let mut c = Client::new(r.initial_root());
    // the attacker serves root v1 where v2 is expected
    let v1 = r.root_bytes(1);
    r.files.insert("2.root.json".into(), v1);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::RootVersionNotNext {
            trusted: 1,
            received: 1
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
fn rejects_older_firmware_by_policy() {
    use hale_core::policy::{evaluate, Device, PolicyError, Version};
    let mut r = RepoSim::new();
    let custom = serde_json::json!({"hardware": [{"model": "pump-a", "revisions": ["r1"]}], "version": "1.4.0", "security_counter": 2});
    r.add_target("targets", "pump-a/fw.bin", b"old image", Some(custom));
    r.publish();
    let mut c = Client::new(r.initial_root());
    let set = c.refresh(&r.files, NOW).unwrap();
    let t = set
        .targets()
        .unwrap()
        .target("pump-a/fw.bin", Name::new("targets"))
        .unwrap()
        .unwrap();
    let device = Device {
        model: "pump-a",
        revision: "r1",
        running: Version::parse("1.5.0").unwrap(),
        security_counter: 2,
        bootloader: Version::new(1, 0, 0),
    };
    assert_eq!(
        evaluate(t.custom.as_ref(), &device, false),
        Err(PolicyError::NotNewer {
            running: Version::parse("1.5.0").unwrap(),
            offered: Version::parse("1.4.0").unwrap()
        })
    );
}
