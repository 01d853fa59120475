//! `rollback::shared_in_root` and `rollback::shared_in_delegations`: the keys that sign rollback
//! authorizations are found wherever another role lists them, by the key and not by its key id,
//! and only where that role could sign something (a delegation with no paths signs no targets).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use hale_core::metadata::{Envelope, Root, Targets};
use hale_core::rollback::{rollback_keys, shared_in_delegations, shared_in_root};
use hale_core::Name;

fn public(seed: u8) -> String {
    let k = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!(r#"{{"keytype":"ed25519","scheme":"ed25519","keyval":{{"public":"{hex}"}}}}"#)
}

/// `{"id": key}` for (id, seed) pairs.
fn keys(pairs: &[(&str, u8)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(id, seed)| format!(r#""{id}":{}"#, public(*seed)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn envelope(signed: &str) -> Vec<u8> {
    format!(r#"{{"signed":{signed},"signatures":[]}}"#).into_bytes()
}

fn targets(delegations: &str) -> Vec<u8> {
    envelope(&format!(
        r#"{{"_type":"targets","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","targets":{{}},"delegations":{delegations}}}"#
    ))
}

fn role(name: &str, ids: &[&str], paths: &str) -> String {
    let ids: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        r#"{{"name":"{name}","keyids":[{}],"threshold":1,"terminating":false,{paths}}}"#,
        ids.join(",")
    )
}

/// Top-level targets delegating to the rollback role (key id "r", seed 1) and to `others`.
fn top_targets(extra_keys: &[(&str, u8)], others: &[String]) -> Vec<u8> {
    let mut all = vec![("r", 1)];
    all.extend_from_slice(extra_keys);
    let mut roles = vec![role("rollback", &["r"], r#""paths":[]"#)];
    roles.extend(others.iter().cloned());
    targets(&format!(
        r#"{{"keys":{},"roles":[{}]}}"#,
        keys(&all),
        roles.join(",")
    ))
}

fn root(roles: [(&str, u8); 4]) -> Vec<u8> {
    let ids: Vec<(String, u8)> = roles
        .iter()
        .map(|(name, seed)| (format!("id-{name}"), *seed))
        .collect();
    let pairs: Vec<(&str, u8)> = ids.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    let entries: Vec<String> = roles
        .iter()
        .map(|(name, _)| format!(r#""{name}":{{"keyids":["id-{name}"],"threshold":1}}"#))
        .collect();
    envelope(&format!(
        r#"{{"_type":"root","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","consistent_snapshot":true,"keys":{},"roles":{{{}}}}}"#,
        keys(&pairs),
        entries.join(",")
    ))
}

/// What `shared_in_delegations` finds in `delegator`, with the rollback keys of `top`.
fn in_delegations(top: &[u8], delegator: &[u8]) -> Option<(String, String)> {
    let top_env = Envelope::parse(top, "targets").unwrap();
    let top = Targets::parse(&top_env.signed, Name::new("targets")).unwrap();
    let rollback = rollback_keys(&top).unwrap();
    let env = Envelope::parse(delegator, "targets").unwrap();
    let t = Targets::parse(&env.signed, Name::new("targets")).unwrap();
    shared_in_delegations(&rollback, &t).map(|(r, k)| (r.to_string(), k.to_string()))
}

fn in_root(top: &[u8], root_bytes: &[u8]) -> Option<(&'static str, String)> {
    let top_env = Envelope::parse(top, "targets").unwrap();
    let top = Targets::parse(&top_env.signed, Name::new("targets")).unwrap();
    let rollback = rollback_keys(&top).unwrap();
    let env = Envelope::parse(root_bytes, "root").unwrap();
    let r = Root::parse(&env.signed).unwrap();
    shared_in_root(&rollback, &r).map(|(n, k)| (n, k.to_string()))
}

fn owned(role: &str, keyid: &str) -> Option<(String, String)> {
    Some((role.to_string(), keyid.to_string()))
}

#[test]
fn a_delegation_with_paths_that_lists_a_rollback_key_is_found_by_the_key() {
    let paths = r#""paths":["pump-a/*"]"#;
    // the rollback role alone, and a firmware role with a key of its own: nothing shared
    let clean = top_targets(&[("f", 2)], &[role("firmware", &["f"], paths)]);
    assert_eq!(in_delegations(&clean, &clean), None);
    // the firmware role lists the rollback key under its own id
    let t = top_targets(&[("f", 2)], &[role("firmware", &["f", "r"], paths)]);
    assert_eq!(in_delegations(&t, &t), owned("firmware", "r"));
    // ... and under another id for the same key: found by the key
    let t = top_targets(
        &[("f", 2), ("r2", 1)],
        &[role("firmware", &["f", "r2"], paths)],
    );
    assert_eq!(in_delegations(&t, &t), owned("firmware", "r2"));
    // by hash prefix
    let t = top_targets(
        &[("r2", 1)],
        &[role("firmware", &["r2"], r#""path_hash_prefixes":["8"]"#)],
    );
    assert_eq!(in_delegations(&t, &t), owned("firmware", "r2"));
    // a role delegated no paths signs no targets
    let t = top_targets(&[], &[role("notes", &["r"], r#""paths":[]"#)]);
    assert_eq!(in_delegations(&t, &t), None);
}

#[test]
fn another_delegator_is_compared_by_its_own_keys_not_by_the_ids() {
    let top = top_targets(&[], &[]);
    let paths = r#""paths":["pump-a/*"]"#;
    // the same key id "r" names another key in this delegator: not shared
    let other = targets(&format!(
        r#"{{"keys":{},"roles":[{}]}}"#,
        keys(&[("r", 3)]),
        role("firmware", &["r"], paths)
    ));
    assert_eq!(in_delegations(&top, &other), None);
    // another id naming the rollback key: shared
    let other = targets(&format!(
        r#"{{"keys":{},"roles":[{}]}}"#,
        keys(&[("x", 3), ("y", 1)]),
        role("firmware", &["x", "y"], paths)
    ));
    assert_eq!(in_delegations(&top, &other), owned("firmware", "y"));
    // hashed bins whose keys include it
    let bins = targets(&format!(
        r#"{{"keys":{},"succinct_roles":{{"keyids":["y"],"threshold":1,"bit_length":8,"name_prefix":"bins"}}}}"#,
        keys(&[("y", 1)])
    ));
    assert_eq!(in_delegations(&top, &bins), owned("bins", "y"));
    let bins = targets(&format!(
        r#"{{"keys":{},"succinct_roles":{{"keyids":["y"],"threshold":1,"bit_length":8,"name_prefix":"bins"}}}}"#,
        keys(&[("y", 4)])
    ));
    assert_eq!(in_delegations(&top, &bins), None);
    // a role named rollback holds its own keys (paths given to it are refused on their own)
    let other = targets(&format!(
        r#"{{"keys":{},"roles":[{}]}}"#,
        keys(&[("y", 1)]),
        role("rollback", &["y"], paths)
    ));
    assert_eq!(in_delegations(&top, &other), None);
}

#[test]
fn each_of_roots_roles_that_lists_a_rollback_key_is_found() {
    let top = top_targets(&[], &[]);
    let clean = root([
        ("root", 5),
        ("targets", 6),
        ("snapshot", 7),
        ("timestamp", 8),
    ]);
    assert_eq!(in_root(&top, &clean), None);
    for name in ["root", "targets", "snapshot", "timestamp"] {
        let mut roles = [
            ("root", 5),
            ("targets", 6),
            ("snapshot", 7),
            ("timestamp", 8),
        ];
        roles.iter_mut().find(|(n, _)| *n == name).unwrap().1 = 1;
        let expected = format!("id-{name}");
        assert_eq!(
            in_root(&top, &root(roles)),
            Some((name, expected)),
            "{name}"
        );
    }
}
