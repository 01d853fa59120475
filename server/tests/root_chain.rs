//! Several root versions in one publish (`{"roots": [N+1, N+2…], "roles": …}`): a copy of the
//! repository that published roots N+1 and N+2 since the server's N sends both, and the server
//! applies them in order as a device walks them (hale-core's `update_root`: each the next
//! version, signed by a threshold of the root before it and of its own), then checks the roles
//! under the last. All or nothing: a refused link stores no root and no role.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use hale_repo::build::{self, Profile, RoleKeys};
use hale_repo::SigningKey;
use serde_json::json;

/// Root version `v` as `Fixture::root_v` makes it (the fixture's root and online keys), with
/// `targets` as the targets keys (threshold: all of them), expiring at `expires`, signed by
/// `signers`.
fn root(
    f: &Fixture,
    v: u64,
    targets: &[&SigningKey],
    expires: &str,
    signers: &[&SigningKey],
) -> Vec<u8> {
    root_keyed(f, v, &f.root_key, targets, expires, signers)
}

/// [`root`] with `root_key` as its root role's key.
fn root_keyed(
    f: &Fixture,
    v: u64,
    root_key: &SigningKey,
    targets: &[&SigningKey],
    expires: &str,
    signers: &[&SigningKey],
) -> Vec<u8> {
    let mut keys = BTreeMap::new();
    for k in [root_key, &f.ts_key, &f.snap_key]
        .into_iter()
        .chain(targets.iter().copied())
    {
        keys.insert(k.keyid(), k.public());
    }
    let one = |k: &SigningKey| RoleKeys {
        keyids: vec![k.keyid()],
        threshold: 1,
    };
    let mut roles = BTreeMap::new();
    roles.insert("root".to_string(), one(root_key));
    roles.insert("timestamp".to_string(), one(&f.ts_key));
    roles.insert("snapshot".to_string(), one(&f.snap_key));
    roles.insert(
        "targets".to_string(),
        RoleKeys {
            keyids: targets.iter().map(|k| k.keyid()).collect(),
            threshold: targets.len() as u32,
        },
    );
    let body = build::root(Profile::Standard, v, expires, &keys, &roles, true);
    hale_repo::sign::sign_new(&body, signers).unwrap()
}

/// A year from now.
fn in_a_year() -> String {
    build::expires_at(now(), 365 * 86_400).unwrap()
}

/// The publish body `{"roots": [...], "roles": {...}}`, envelopes as signed.
fn chain_body(roots: &[&[u8]], roles: &[(&str, &[u8])]) -> Vec<u8> {
    let text = |b: &[u8]| std::str::from_utf8(b).unwrap().to_string();
    let roots: Vec<String> = roots.iter().map(|r| text(r)).collect();
    let roles: Vec<String> = roles
        .iter()
        .map(|(n, b)| format!("{}:{}", json!(n), text(b)))
        .collect();
    format!(
        "{{\"roots\":[{}],\"roles\":{{{}}}}}",
        roots.join(","),
        roles.join(",")
    )
    .into_bytes()
}

fn publish_raw(s: &Server, f: &Fixture, body: &[u8]) -> Resp {
    request(
        "POST",
        &s.url("/api/v1/publish"),
        &[
            ("Authorization", &format!("Bearer {}", f.token)),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
    .unwrap()
}

/// A running server serving targets v1 (`pump-a/fw.bin`, signed by both targets keys of root v1);
/// the firmware.
fn first_release(f: &Fixture) -> (Server, Vec<u8>) {
    let s = f.start();
    let fw = b"firmware image v1.0.0".repeat(100);
    assert_eq!(upload(&s, &f.token, &fw).unwrap().status, 200);
    let t = f.targets(1, &[("pump-a/fw.bin", &fw, None)], None);
    let r = publish(&s, &f.token, None, &[("targets", &t)]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (s, fw)
}

/// `body` refused with 400 and `code`; the repository files, the served timestamp and root as
/// they were, and no `N.root.json` of the chain served. The refusal's message.
fn refused(f: &Fixture, s: &Server, body: &[u8], code: &str) -> String {
    let before = f.repo_digest();
    let served = |name: &str| get(&s.url(name));
    let (ts, root) = (served("timestamp.json").body, served("root.json").body);
    let r = publish_raw(s, f, body);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some(code)),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        f.repo_digest(),
        before,
        "a refused publish changed the repository"
    );
    assert_eq!(served("timestamp.json").body, ts);
    assert_eq!(served("root.json").body, root);
    for v in 2..=4 {
        assert_eq!(
            served(&format!("{v}.root.json")).status,
            404,
            "{v}.root.json"
        );
    }
    r.json()["message"].as_str().unwrap().to_string()
}

#[test]
fn several_root_versions_go_in_one_publish_in_order_and_a_device_walks_them() {
    let f = Fixture::new();
    let (s, fw) = first_release(&f);
    // the server says it takes them
    let r = request(
        "GET",
        &s.url("/api/v1/publish"),
        &[("Authorization", &format!("Bearer {}", f.token))],
        None,
    )
    .unwrap();
    assert_eq!(r.json(), json!({"publisher": "alice", "root_chain": true}));

    // root v2 hands targets to one new key (expired since: devices walk through an expired
    // root on the way, only the last must be current), root v3 keeps it; targets v2 is signed
    // by the new key alone. Neither root alone with these targets would verify: v2 is expired,
    // and v3 does not follow v1.
    let new_targets = &f.delegate_key;
    let root2 = root(
        &f,
        2,
        &[new_targets],
        "2020-01-01T00:00:00Z",
        &[&f.root_key],
    );
    let root3 = root(&f, 3, &[new_targets], &in_a_year(), &[&f.root_key]);
    let t2 = hale_repo::sign::sign_new(
        &targets_body(2, &[("pump-a/fw.bin", &fw, None)], None),
        &[new_targets],
    )
    .unwrap();
    let r = publish_raw(&s, &f, &chain_body(&[&root2, &root3], &[("targets", &t2)]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let published = &r.json()["published"];
    assert_eq!(
        (&published["root"], &published["roles"]["targets"]),
        (&json!(3), &json!(2))
    );
    assert_eq!(get(&s.url("2.root.json")).body, root2);
    assert_eq!(get(&s.url("3.root.json")).body, root3);
    assert_eq!(get(&s.url("root.json")).body, root3);
    // a device that trusts root v1 walks v2 and v3 and takes targets v2
    let v = client_update(&s.base, &f.root, &["pump-a/fw.bin"]).unwrap();
    assert_eq!((v.root, v.targets), (3, 2));

    // after a restart: the same state, from the files
    let mut s = s;
    assert!(s.terminate().success());
    let s = f.start();
    let v = client_update(&s.base, &f.root, &["pump-a/fw.bin"]).unwrap();
    assert_eq!((v.root, v.targets), (3, 2));
}

#[test]
fn a_root_chain_is_refused_whole_when_a_link_fails_and_nothing_is_stored() {
    let f = Fixture::new();
    let (s, _) = first_release(&f);
    let old_targets = [&f.targets_keys[0], &f.targets_keys[1]];
    let root2 = f.root_v(2, &f.ts_key, &f.snap_key, &[&f.root_key]);

    // root v3 not signed by root v2's root key
    let unsigned3 = root(&f, 3, &old_targets, &in_a_year(), &[&f.delegate_key]);
    assert_eq!(
        refused(
            &f,
            &s,
            &chain_body(&[&root2, &unsigned3], &[]),
            "threshold_not_met"
        ),
        "roots[1]: root: 0 valid signatures from distinct authorized keys, threshold is 1: \
         root v2's threshold, the root before it, which must sign root v3"
    );
    // root v3 hands root to a new key and is signed by root v2's key alone: the threshold of
    // the root before it is met, its own is not (hale-core's error is the same for both)
    let new_root_key = &f.delegate_key;
    let unsigned_by_its_own = root_keyed(
        &f,
        3,
        new_root_key,
        &old_targets,
        &in_a_year(),
        &[&f.root_key],
    );
    assert_eq!(
        refused(
            &f,
            &s,
            &chain_body(&[&root2, &unsigned_by_its_own], &[]),
            "threshold_not_met"
        ),
        "roots[1]: root: 0 valid signatures from distinct authorized keys, threshold is 1: \
         root v3's own threshold (a new root is signed by the keys it lists for root too, not \
         only by the root before it)"
    );
    // a version left out
    let root4 = root(&f, 4, &old_targets, &in_a_year(), &[&f.root_key]);
    assert_eq!(
        refused(
            &f,
            &s,
            &chain_body(&[&root2, &root4], &[]),
            "rejected_metadata"
        ),
        "roots[1]: root version 4 does not follow trusted version 2"
    );
    // the last root expired: devices would stop at it
    let expired3 = root(&f, 3, &old_targets, "2020-01-01T00:00:00Z", &[&f.root_key]);
    let before = now();
    let message = refused(
        &f,
        &s,
        &chain_body(&[&root2, &expired3], &[]),
        "rejected_metadata",
    );
    let started = message
        .strip_prefix("roots[1]: root expired at 2020-01-01T00:00:00Z (update started at ")
        .and_then(|m| m.strip_suffix(')'))
        .and_then(|t| hale_core::time::parse_expires(t.as_bytes()))
        .unwrap_or_else(|| panic!("{message}"));
    assert!((before..=now()).contains(&started), "{message}");
    // `root` and `roots` together: which is the chain?
    let both = format!(
        "{{\"root\":{},\"roots\":[{}],\"roles\":{{}}}}",
        String::from_utf8_lossy(&root2),
        String::from_utf8_lossy(&root2)
    );
    assert_eq!(
        refused(&f, &s, both.as_bytes(), "bad_request"),
        "publish body: give one root as `root` or several, in order, as `roots`, not both"
    );
    // root v3 signed by root v2's key and by its own new one: a link like any other
    let signed_by_both = root_keyed(
        &f,
        3,
        new_root_key,
        &old_targets,
        &in_a_year(),
        &[&f.root_key, new_root_key],
    );
    let r = publish_raw(&s, &f, &chain_body(&[&root2, &signed_by_both], &[]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(&s.url("3.root.json")).body, signed_by_both);
}

/// A single root refused for a threshold says whose, as a link of a chain does.
#[test]
fn a_single_root_refused_for_a_threshold_says_whose() {
    let f = Fixture::new();
    let (s, _) = first_release(&f);
    let old_targets = [&f.targets_keys[0], &f.targets_keys[1]];
    let not_by_v1 = root(&f, 2, &old_targets, &in_a_year(), &[&f.delegate_key]);
    assert_eq!(
        refused(&f, &s, &chain_body(&[&not_by_v1], &[]), "threshold_not_met"),
        "root: 0 valid signatures from distinct authorized keys, threshold is 1: root v1's \
         threshold, the root before it, which must sign root v2"
    );
    let not_by_itself = root_keyed(
        &f,
        2,
        &f.delegate_key,
        &old_targets,
        &in_a_year(),
        &[&f.root_key],
    );
    assert_eq!(
        refused(
            &f,
            &s,
            &chain_body(&[&not_by_itself], &[]),
            "threshold_not_met"
        ),
        "root: 0 valid signatures from distinct authorized keys, threshold is 1: root v2's own \
         threshold (a new root is signed by the keys it lists for root too, not only by the root \
         before it)"
    );
}

#[test]
fn a_single_root_in_roots_is_published_as_with_root() {
    let f = Fixture::new();
    let (s, _) = first_release(&f);
    let root2 = f.root_v(2, &f.ts_key, &f.snap_key, &[&f.root_key]);
    let r = publish_raw(&s, &f, &chain_body(&[&root2], &[]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["published"]["root"], json!(2));
    assert_eq!(get(&s.url("2.root.json")).body, root2);
}
