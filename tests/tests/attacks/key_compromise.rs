//! Key compromise below threshold: one stolen key must not be enough where two are required,
//! however the attacker arranges key ids and signatures.

use hale_core::{Error, Name, Role};
use hale_repo::keys::{KeyKind, SigningKey};
use hale_repo::sign;
use hale_tests::*;
use serde_json::json;

fn two_of_three() -> (RepoSim, [SigningKey; 3]) {
    let ks = [
        key("root-a", KeyKind::Ed25519),
        key("root-b", KeyKind::EcdsaP256),
        key("root-c", KeyKind::Ed25519),
    ];
    let mut r = RepoSim::new();
    r.rotate_root(|r| {
        r.root.keys = ks.to_vec();
        r.root.threshold = 2;
    });
    (r, ks)
}

#[test]
fn rejects_root_signed_by_one_of_two_required_keys() {
    let (mut r, ks) = two_of_three();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let before = c.trusted();
    let evil = key("attacker", KeyKind::Ed25519);
    let v3 = resign(&r.root_bytes(2), &[&ks[0]], |s| {
        s["version"] = 3.into();
        s["keys"][evil.keyid()] = evil.public();
        s["roles"]["timestamp"]["keyids"] = json!([evil.keyid()]);
    });
    r.files.insert("3.root.json".into(), v3);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("root"),
            threshold: 2,
            valid: 1
        })
    );
    // hale-core kept the trusted root v2, byte for byte, not the one-key v3
    assert_eq!(
        c.core(),
        Trusted {
            root: 2,
            timestamp: None,
            snapshot: None,
            targets: None
        }
    );
    assert_eq!(c.core_stored(Role::Root), Some(&c.root[..]));
    assert_eq!(c.trusted(), before);
}

#[test]
fn one_key_listed_under_two_key_ids_counts_once() {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    let old = r.root.keys[0].clone();
    let k = key("dup", KeyKind::Ed25519);
    let mut doc: serde_json::Value = serde_json::from_slice(&r.root_bytes(1)).unwrap();
    let s = &mut doc["signed"];
    s["version"] = 2.into();
    s["keys"]["dup-a"] = k.public();
    s["keys"]["dup-b"] = k.public();
    s["roles"]["root"] = json!({"keyids": ["dup-a", "dup-b"], "threshold": 2});
    let msg = sign::canonical(s).unwrap();
    let sig = hex::encode(k.sign(&msg));
    let bytes = sign::to_file(&json!({
        "signed": s,
        "signatures": [
            {"keyid": old.keyid(), "sig": hex::encode(old.sign(&msg))},
            {"keyid": "dup-a", "sig": sig},
            {"keyid": "dup-b", "sig": sig},
        ],
    }))
    .unwrap();
    r.files.insert("2.root.json".into(), bytes);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("root"),
            threshold: 2,
            valid: 1
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
fn extra_bad_and_unlisted_signatures_do_not_fail_metadata_that_meets_its_threshold() {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    let tkid = r.timestamp.keys[0].keyid();
    let mut doc: serde_json::Value = serde_json::from_slice(&r.files["timestamp.json"]).unwrap();
    let sigs = doc["signatures"].as_array_mut().unwrap();
    // a bad signature from the listed key comes first, then an unknown key's
    sigs.insert(0, json!({"keyid": tkid, "sig": "00".repeat(64)}));
    sigs.push(json!({"keyid": "f".repeat(64), "sig": "ab"}));
    r.files
        .insert("timestamp.json".into(), serde_json::to_vec(&doc).unwrap());
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(c.trusted().timestamp, Some(1));
}

/// Stale signatures of listed keys (signers of an earlier draft, say) do not fail a document
/// that the other listed keys sign to its threshold, however many come first: 3 of a 2-of-5
/// timestamp's keys signed something else, the other 2 this. python-tuf accepts it. Before,
/// the attempts were shared (threshold + 2 in all), and the third stale one used the last.
/// Each listed key's first entry is tried; the extra budget bounds repeats of one key.
#[test]
fn stale_signatures_of_listed_keys_do_not_fail_a_document_the_others_sign() {
    let ks: Vec<SigningKey> = (0..5)
        .map(|i| key(&format!("ts-{i}"), KeyKind::Ed25519))
        .collect();
    let mut r = RepoSim::new();
    r.rotate_root(|r| {
        r.timestamp.keys = ks.clone();
        r.timestamp.threshold = 2;
        r.timestamp.signers = Some(ks[3..].to_vec());
    });
    r.publish();
    let mut c = Client::new(r.initial_root());
    let mut doc: serde_json::Value = serde_json::from_slice(&r.files["timestamp.json"]).unwrap();
    let stale = sign::canonical(&json!({"an": "earlier draft"})).unwrap();
    let sigs = doc["signatures"].as_array_mut().unwrap();
    assert_eq!(sigs.len(), 2);
    for k in &ks[..3] {
        sigs.insert(
            0,
            json!({"keyid": k.keyid(), "sig": hex::encode(k.sign(&stale))}),
        );
    }
    r.files
        .insert("timestamp.json".into(), serde_json::to_vec(&doc).unwrap());
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(c.trusted().timestamp, Some(r.timestamp.version));

    // one key's repeats still share the budget: five stale entries of ts-3 before its good one
    // leave ts-3 uncounted (python-tuf refuses any repeated key id outright)
    let mut r2 = RepoSim::new();
    r2.rotate_root(|r| {
        r.timestamp.keys = ks.clone();
        r.timestamp.threshold = 2;
        r.timestamp.signers = Some(ks[3..].to_vec());
    });
    r2.publish();
    let mut c2 = Client::new(r2.initial_root());
    let mut doc: serde_json::Value = serde_json::from_slice(&r2.files["timestamp.json"]).unwrap();
    let sigs = doc["signatures"].as_array_mut().unwrap();
    for _ in 0..5 {
        sigs.insert(
            0,
            json!({"keyid": ks[3].keyid(), "sig": hex::encode(ks[3].sign(&stale))}),
        );
    }
    r2.files
        .insert("timestamp.json".into(), serde_json::to_vec(&doc).unwrap());
    let before = {
        c2.refresh(&r2.files, NOW).unwrap_err();
        c2.trusted()
    };
    let err = c2.refresh(&r2.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 2,
            valid: 1
        })
    );
    assert_eq!(c2.trusted(), before);
    assert_eq!(before.timestamp, None);
}

/// A root v2 that hands the root role to a new key, signed by `signer` only: it must carry
/// both thresholds (old and new), so either alone is refused and nothing is trusted.
fn assert_one_sided_rotation_refused(signer: impl FnOnce(&RepoSim, &SigningKey) -> SigningKey) {
    let mut r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    let new = key("new-root", KeyKind::Ed25519);
    let by = signer(&r, &new);
    let v2 = resign(&r.root_bytes(1), &[&by], |s| {
        s["version"] = 2.into();
        s["keys"][new.keyid()] = new.public();
        s["roles"]["root"] = json!({"keyids": [new.keyid()], "threshold": 1});
    });
    r.files.insert("2.root.json".into(), v2);
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("root"),
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
fn rejects_rotation_signed_only_by_the_new_keys() {
    assert_one_sided_rotation_refused(|_, new| new.clone());
}

#[test]
fn rejects_rotation_not_signed_by_the_new_keys() {
    assert_one_sided_rotation_refused(|r, _| r.root.keys[0].clone());
}
