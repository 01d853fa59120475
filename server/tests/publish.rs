//! Publishing through the HTTP API: accepted releases are served; bad ones are refused with the
//! exact error and leave the repository byte-identical.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn accepted_publish_is_served_and_verifies_as_a_client() {
    let f = Fixture::new();
    let s = f.start();
    // nothing published yet: only the root
    assert_eq!(get(&s.url("timestamp.json")).status, 404);
    assert_eq!(get(&s.url("1.root.json")).body, f.root);

    let fw = b"firmware image v1.0.0".repeat(1000);
    let up = upload(&s, &f.token, &fw).unwrap();
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    assert_eq!(up.json()["length"], fw.len());
    let custom = json!({"version": "1.0.0", "security_counter": 1, "hardware": [{"model": "pump-a", "revisions": ["r1"]}]});
    let t = f.targets(1, &[("pump-a/fw.bin", &fw, Some(custom))], None);
    let r = publish(&s, &f.token, None, &[("targets", &t)]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["published"]["timestamp"], 1);
    assert_eq!(r.json()["published"]["roles"]["targets"], 1);
    // served exactly as signed
    assert_eq!(get(&s.url("1.targets.json")).body, t);
    let v = client_update(&s.base, &f.root, &["pump-a/fw.bin"]).unwrap();
    assert_eq!((v.timestamp, v.snapshot, v.targets), (1, 1, 1));

    // a second release with a delegated role
    let fw2 = b"firmware for pump-b".to_vec();
    assert_eq!(upload(&s, &f.token, &fw2).unwrap().status, 200);
    let d = f.delegation("pump-b", &["pump-b/*"]);
    let t2 = f.targets(2, &[("pump-a/fw.bin", &fw, None)], Some(&d));
    let pb = f.delegated(1, &[("pump-b/fw.bin", &fw2, None)]);
    let r = publish(&s, &f.token, None, &[("targets", &t2), ("pump-b", &pb)]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = client_update(&s.base, &f.root, &["pump-a/fw.bin", "pump-b/fw.bin"]).unwrap();
    assert_eq!((v.timestamp, v.targets), (2, 2));
    assert_eq!(get(&s.url("1.pump-b.json")).body, pb);

    // root rotation 1 -> 2 (same keys): accepted, served as 2.root.json, client follows it
    let root2 = f.root_v(2, &f.ts_key, &f.snap_key, &[&f.root_key]);
    let r = publish(&s, &f.token, Some(&root2), &[]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(&s.url("2.root.json")).body, root2);
    assert_eq!(
        client_update(&s.base, &f.root, &["pump-b/fw.bin"])
            .unwrap()
            .root,
        2
    );

    // the audit chain holds every change and verifies
    let mut s = s;
    assert!(s.terminate().success());
    let out = run_bin(
        &["audit", "verify", "--data", f.data.to_str().unwrap()],
        &f.pass_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit chain OK: 5 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // each publish record names the firmware it released (and took away) by its hash
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let publishes: Vec<serde_json::Value> = with_store(&f.data, |store| {
        hale_server::store::Store::audit_all(store).unwrap()
    })
    .iter()
    .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
    .filter(|r| r["kind"] == "publish")
    .collect();
    assert_eq!(publishes.len(), 3);
    assert_eq!(
        publishes[0]["detail"]["targets"],
        json!({"added": [{"role": "targets", "path": "pump-a/fw.bin", "sha256": sha(&fw), "length": fw.len()}],
               "removed": [], "added_count": 1, "removed_count": 0})
    );
    // targets v2 lists pump-a/fw.bin again (same content): only pump-b's image is new
    assert_eq!(
        publishes[1]["detail"]["targets"],
        json!({"added": [{"role": "pump-b", "path": "pump-b/fw.bin", "sha256": sha(&fw2), "length": fw2.len()}],
               "removed": [], "added_count": 1, "removed_count": 0})
    );
    assert_eq!(
        publishes[2]["detail"]["targets"],
        json!({"added": [], "removed": [], "added_count": 0, "removed_count": 0})
    );
}

/// Publish `roles` and expect a refusal with exactly `message`, the repository files unchanged
/// and the served timestamp unchanged.
fn refused(
    f: &Fixture,
    s: &Server,
    root: Option<&[u8]>,
    roles: &[(&str, &[u8])],
    code: &str,
    message: &str,
) {
    let before = f.repo_digest();
    let ts_before = get(&s.url("timestamp.json")).body;
    let r = publish(s, &f.token, root, roles).unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["message"],
        message,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["error"], code);
    assert_eq!(
        f.repo_digest(),
        before,
        "a refused publish changed the repository"
    );
    assert_eq!(get(&s.url("timestamp.json")).body, ts_before);
}

#[test]
fn bad_publishes_are_refused_with_the_exact_error_and_change_nothing() {
    let f = Fixture::new();
    let s = f.start();
    let fw = b"release one".to_vec();
    upload(&s, &f.token, &fw).unwrap();
    let t1 = f.targets(1, &[("fw.bin", &fw, None)], None);
    assert_eq!(
        publish(&s, &f.token, None, &[("targets", &t1)])
            .unwrap()
            .status,
        200
    );

    let fw2 = b"release two".to_vec();
    upload(&s, &f.token, &fw2).unwrap();

    // bad signature: content changed after signing
    let mut v: serde_json::Value =
        serde_json::from_slice(&f.targets(2, &[("fw.bin", &fw2, None)], None)).unwrap();
    v["signed"]["version"] = json!(3);
    let tampered = serde_json::to_vec(&v).unwrap();
    refused(
        &f,
        &s,
        None,
        &[("targets", &tampered)],
        "threshold_not_met",
        "targets: 0 valid signatures from distinct authorized keys, threshold is 2",
    );

    // threshold not met: one of the two targets keys
    let body = targets_body(2, &[("fw.bin", &fw2, None)], None);
    let one = hale_repo::sign::sign_new(&body, &[&f.targets_keys[0]]).unwrap();
    refused(
        &f,
        &s,
        None,
        &[("targets", &one)],
        "threshold_not_met",
        "targets: 1 valid signatures from distinct authorized keys, threshold is 2",
    );

    // version not increased
    let same = f.targets(1, &[("fw.bin", &fw2, None)], None);
    refused(
        &f,
        &s,
        None,
        &[("targets", &same)],
        "version_not_increased",
        "targets: version 1 is not greater than the published version 1",
    );

    // target missing: content never uploaded
    let missing = b"never uploaded".to_vec();
    let t = f.targets(2, &[("other.bin", &missing, None)], None);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&missing));
    refused(
        &f,
        &s,
        None,
        &[("targets", &t)],
        "target_missing",
        &format!("targets: target other.bin: content {sha} was not uploaded"),
    );

    // wrong target hash: sha256 of uploaded content, but sha512 of something else
    let mut entry = hale_repo::build::target_entry(&fw2, None);
    entry["hashes"]["sha512"] = json!(hex::encode([7u8; 64]));
    let mut map = serde_json::Map::new();
    map.insert("fw.bin".into(), entry);
    let body = hale_repo::build::targets(
        hale_repo::build::Profile::Standard,
        2,
        &hale_repo::build::expires_at(now(), 86_400).unwrap(),
        &map,
        None,
    );
    let wrong =
        hale_repo::sign::sign_new(&body, &[&f.targets_keys[0], &f.targets_keys[1]]).unwrap();
    refused(
        &f,
        &s,
        None,
        &[("targets", &wrong)],
        "target_mismatch",
        "targets: fw.bin: sha512 hash does not match",
    );

    // wrong length
    let mut entry = hale_repo::build::target_entry(&fw2, None);
    entry["length"] = json!(fw2.len() + 1);
    let mut map = serde_json::Map::new();
    map.insert("fw.bin".into(), entry);
    let body = hale_repo::build::targets(
        hale_repo::build::Profile::Standard,
        2,
        &hale_repo::build::expires_at(now(), 86_400).unwrap(),
        &map,
        None,
    );
    let long = hale_repo::sign::sign_new(&body, &[&f.targets_keys[0], &f.targets_keys[1]]).unwrap();
    refused(
        &f,
        &s,
        None,
        &[("targets", &long)],
        "target_mismatch",
        "targets: fw.bin: length 11, expected 12",
    );

    // malformed firmware policy
    let bad_policy = f.targets(
        2,
        &[(
            "fw.bin",
            &fw2,
            Some(json!({"version": "one", "hardware": []})),
        )],
        None,
    );
    refused(
        &f,
        &s,
        None,
        &[("targets", &bad_policy)],
        "bad_policy",
        "targets: target fw.bin: firmware policy field `version` missing or malformed",
    );

    // a delegated role nobody delegates to
    let orphan = f.delegated(1, &[("fw.bin", &fw2, None)]);
    refused(
        &f,
        &s,
        None,
        &[("orphan", &orphan)],
        "not_delegated",
        "orphan: no published or uploaded role delegates to it",
    );

    // a delegated role that takes a top-level role's name: its files would take the place of
    // the top-level role's (`2.snapshot.json` served as a targets document, `1.root.json`
    // overwritten on disk), whether it is uploaded or only delegated to
    for top in ["snapshot", "root", "timestamp"] {
        let d = f.delegation(top, &["nothing-matches/*"]);
        let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
        let v = if top == "root" { 1 } else { 2 };
        // listing nothing: no device's search would ever reach it to refuse it
        let shadow = f.delegated(v, &[]);
        refused(
            &f,
            &s,
            None,
            &[("targets", &t2), (top, &shadow)],
            "rejected_metadata",
            &format!("{top}: unsafe role or target name \"{top}\""),
        );
        refused(
            &f,
            &s,
            None,
            &[("targets", &t2)],
            "rejected_metadata",
            &format!("targets: unsafe role or target name \"{top}\""),
        );
    }
    // ... or `targets` itself, which the uploaded `targets` is
    let d = f.delegation("targets", &["nothing-matches/*"]);
    let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2)],
        "rejected_metadata",
        "targets: unsafe role or target name \"targets\"",
    );
    // ... or one of them in another case: one file with it on a case-insensitive file system
    // (an export on a macOS disk: `2.Snapshot.json` is `2.snapshot.json`)
    let collision = "Snapshot: differs from the role snapshot only in case: a case-insensitive \
                     file system (an export, a signer's staged directory) would keep both in one \
                     file";
    let d = f.delegation("Snapshot", &["nothing-matches/*"]);
    let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
    let shadow = f.delegated(1, &[]);
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2), ("Snapshot", &shadow)],
        "role_name_collision",
        collision,
    );
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2)],
        "role_name_collision",
        collision,
    );
    // in Unicode case too: NTFS compares names upper-cased, and `ſ` (U+017F) is `S`
    let d = f.delegation("\u{17f}napshot", &["nothing-matches/*"]);
    let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2)],
        "role_name_collision",
        "\u{17f}napshot: differs from the role snapshot only in case: a case-insensitive file \
         system (an export, a signer's staged directory) would keep both in one file",
    );
    // paths delegated to the rollback role (its keys sign rollback authorizations, never
    // firmware): by pattern or by hash prefix, with or without the role's own file
    let rollback_paths = "targets: delegates paths to the rollback role: its keys sign rollback \
                          authorizations and are delegated no paths (\"paths\": []), so they \
                          can never sign targets";
    let d = f.delegation("rollback", &["pump-a/*"]);
    let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
    let firmware = f.delegated(1, &[("pump-a/fw.bin", &fw2, None)]);
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2), ("rollback", &firmware)],
        "rollback_role_paths",
        rollback_paths,
    );
    let mut d = f.delegation("rollback", &[]);
    d["roles"][0]
        .as_object_mut()
        .unwrap()
        .remove("paths")
        .unwrap();
    d["roles"][0]["path_hash_prefixes"] = json!(["8"]);
    let t2 = f.targets(2, &[("fw.bin", &fw2, None)], Some(&d));
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2)],
        "rollback_role_paths",
        rollback_paths,
    );
    assert_eq!(get(&s.url("1.root.json")).body, f.root);
    assert_eq!(get(&s.url("2.snapshot.json")).status, 404);

    // a root not signed by the trusted root key
    let other = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[9; 32]).unwrap();
    let root2 = f.root_v(2, &f.ts_key, &f.snap_key, &[&other]);
    refused(
        &f,
        &s,
        Some(&root2),
        &[],
        "threshold_not_met",
        "root: 0 valid signatures from distinct authorized keys, threshold is 1: root v1's \
         threshold, the root before it, which must sign root v2",
    );

    // a root listing online keys the server does not hold
    let root2 = f.root_v(2, &other, &f.snap_key, &[&f.root_key]);
    refused(
        &f,
        &s,
        Some(&root2),
        &[],
        "online_keys_not_listed",
        "root: timestamp needs 1 signatures but the server holds 0 of the keys it lists",
    );

    // no token, wrong token: refused before the body is read, with a release that the right
    // token publishes below (so an accepted one would show in the repository)
    let good = f.targets(2, &[("fw.bin", &fw2, None)], None);
    let unauthorized = json!({"error": "unauthorized",
        "message": "a valid operator token is required (Authorization: Bearer …)"});
    let before = f.repo_digest();
    let ts_before = get(&s.url("timestamp.json")).body;
    let r = request(
        "POST",
        &s.url("/api/v1/publish"),
        &[],
        Some(&publish_body(None, &[("targets", &good)])),
    )
    .unwrap();
    assert_eq!((r.status, r.json()), (401, unauthorized.clone()));
    let r = publish(&s, "hale_wrong", None, &[("targets", &good)]).unwrap();
    assert_eq!((r.status, r.json()), (401, unauthorized.clone()));
    assert_eq!(
        f.repo_digest(),
        before,
        "a refused publish changed the repository"
    );
    assert_eq!(get(&s.url("timestamp.json")).body, ts_before);
    // the body-less check a publisher makes before uploading: the same refusals, and the name
    let check = |headers: &[(&str, &str)]| {
        let r = request("GET", &s.url("/api/v1/publish"), headers, None).unwrap();
        (r.status, r.json())
    };
    assert_eq!(check(&[]), (401, unauthorized.clone()));
    assert_eq!(
        check(&[("Authorization", "Bearer hale_wrong")]),
        (401, unauthorized)
    );
    let bearer = format!("Bearer {}", f.token);
    let (status, body) = check(&[("Authorization", bearer.as_str())]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["publisher"]
            .as_str()
            .is_some_and(|p| p.contains("alice")),
        "{body}"
    );

    // the good release still goes through afterwards
    assert_eq!(
        publish(&s, &f.token, None, &[("targets", &good)])
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client_update(&s.base, &f.root, &["fw.bin"])
            .unwrap()
            .targets,
        2
    );
    // each refusal of the authenticated operator is in the audit log, named by its error (the
    // unauthenticated ones are not: anyone could fill the log with them)
    let mut s = s;
    assert!(s.terminate().success());
    let refusals: Vec<(String, String)> = with_store(&f.data, |store| {
        hale_server::store::Store::audit_all(store).unwrap()
    })
    .iter()
    .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
    .filter(|r| r["kind"] == "publish-refused")
    .map(|r| {
        (
            r["actor"].as_str().unwrap().to_string(),
            r["detail"]["error"].as_str().unwrap().to_string(),
        )
    })
    .collect();
    let codes: Vec<&str> = refusals.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        codes,
        [
            "threshold_not_met",
            "threshold_not_met",
            "version_not_increased",
            "target_missing",
            "target_mismatch",
            "target_mismatch",
            "bad_policy",
            "not_delegated",
            "rejected_metadata",
            "rejected_metadata",
            "rejected_metadata",
            "rejected_metadata",
            "rejected_metadata",
            "rejected_metadata",
            "rejected_metadata",
            // three requests, two with the same message: a record each (a request is told by
            // its body's sha256, and the same body refused again within the hour is one)
            "role_name_collision",
            "role_name_collision",
            "role_name_collision",
            // two requests, the same message
            "rollback_role_paths",
            "rollback_role_paths",
            "threshold_not_met",
            "online_keys_not_listed"
        ]
    );
    assert!(refusals.iter().all(|(a, _)| a == "alice"), "{refusals:?}");
}

#[test]
fn oversized_uploads_are_refused_and_change_nothing() {
    let f = Fixture::with_config(json!({"max_target_bytes": 1000, "max_publish_bytes": 4096}));
    let s = f.start();
    let before = f.repo_digest();
    let r = upload(&s, &f.token, &vec![0u8; 1001]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["message"], "target upload larger than 1000 bytes");
    assert!(
        std::fs::read_dir(f.data.join("repo/blobs"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    // a publish body over the limit
    let big = f.targets(
        1,
        &[("x", b"x", Some(json!({"pad": "p".repeat(5000)})))],
        None,
    );
    let r = publish(&s, &f.token, None, &[("targets", &big)]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "too_large");
    assert_eq!(f.repo_digest(), before);
    assert_eq!(upload(&s, &f.token, &vec![0u8; 1000]).unwrap().status, 200);
}

/// A fixture whose server published `fw.bin` (targets v1) and was stopped.
fn first_release_stopped() -> Fixture {
    let f = Fixture::new();
    let mut s = f.start();
    let fw = b"fw".to_vec();
    upload(&s, &f.token, &fw).unwrap();
    let t = f.targets(1, &[("fw.bin", &fw, None)], None);
    assert_eq!(
        publish(&s, &f.token, None, &[("targets", &t)])
            .unwrap()
            .status,
        200
    );
    assert!(s.terminate().success());
    f
}

/// A new timestamp key from `seed`, added with `hale-server key add` (the server stopped: the
/// store is locked otherwise).
fn add_timestamp_key(f: &Fixture, seed: u8) -> hale_repo::SigningKey {
    let key = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[seed; 32]).unwrap();
    let p = f.write_key(&format!("ts-{seed}.key"), &key);
    let data = f.data.to_str().unwrap();
    let out = run_bin(
        &[
            "key",
            "add",
            "--data",
            data,
            "--role",
            "timestamp",
            "--key",
            p.to_str().unwrap(),
        ],
        &f.pass_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// Lifetimes for commits made in process.
fn test_lifetimes() -> hale_server::publish::Lifetimes {
    hale_server::publish::Lifetimes {
        timestamp_secs: 86_400,
        timestamp_resign_before_secs: 3_600,
        snapshot_secs: 7 * 86_400,
        snapshot_resign_before_secs: 86_400,
        profile: hale_repo::build::Profile::Standard,
    }
}

/// The audit log's records, oldest first (the server stopped).
fn audit_records(f: &Fixture) -> Vec<serde_json::Value> {
    with_store(&f.data, |store| {
        hale_server::store::Store::audit_all(store).unwrap()
    })
    .iter()
    .map(|(_, b)| serde_json::from_slice(b).unwrap())
    .collect()
}

/// Their kinds.
fn audit_kinds(f: &Fixture) -> Vec<String> {
    audit_records(f)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

/// What a publish of root `v` listing `ts` as the timestamp key commits, committed in process
/// with no audit record after it (a crash between the commit and its records).
fn commit_root_without_records(f: &Fixture, v: u64, ts: &hale_repo::SigningKey) {
    let root = f.root_v(v, ts, &f.snap_key, &[&f.root_key]);
    commit_roots_without_records(f, &[&root], ts);
}

/// [`commit_root_without_records`] for a chain of roots, the last listing `ts`.
fn commit_roots_without_records(f: &Fixture, roots: &[&[u8]], ts: &hale_repo::SigningKey) {
    let repo = hale_server::repo::RepoDir::new(&f.data);
    let old = repo.load().unwrap();
    let upload = hale_server::publish::Upload {
        roots: roots.iter().map(|r| r.to_vec().into()).collect(),
        roles: Default::default(),
    };
    let online = hale_server::publish::OnlineKeys {
        timestamp: vec![ts.clone()],
        snapshot: vec![f.snap_key.clone()],
    };
    let new =
        hale_server::publish::prepare(&old, &upload, &online, &test_lifetimes(), now(), &repo)
            .unwrap();
    repo.commit(&old, &new).unwrap();
}

#[test]
fn online_key_rotation_add_key_then_publish_root_listing_it() {
    let f = first_release_stopped();
    let new_ts = add_timestamp_key(&f, 42);
    let data = f.data.to_str().unwrap();

    let s = f.start();
    let root2 = f.root_v(2, &new_ts, &f.snap_key, &[&f.root_key]);
    let r = publish(&s, &f.token, Some(&root2), &[]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // the timestamp is now signed by the new key only; a device on root 1 follows (fast-forward recovery)
    let ts: serde_json::Value =
        serde_json::from_slice(&get(&s.url("timestamp.json")).body).unwrap();
    assert_eq!(ts["signatures"][0]["keyid"], new_ts.keyid());
    let v = client_update(&s.base, &f.root, &["fw.bin"]).unwrap();
    assert_eq!((v.root, v.timestamp), (2, 2));
    let mut s = s;
    assert!(s.terminate().success());
    let out = run_bin(&["audit", "verify", "--data", data], &f.pass_file);
    assert!(out.status.success());
    assert_eq!(
        audit_kinds(&f),
        [
            "init",
            "token-add",
            "publish",
            "key-add",
            "key-change",
            "publish"
        ]
    );
}

/// `{"roots": [...], "roles": {}}`: several roots in one publish, in order.
fn roots_body(roots: &[&[u8]]) -> Vec<u8> {
    let roots: Vec<&str> = roots
        .iter()
        .map(|r| std::str::from_utf8(r).unwrap())
        .collect();
    format!("{{\"roots\":[{}],\"roles\":{{}}}}", roots.join(",")).into_bytes()
}

/// The online keys a key-change record lists for a root listing `ts` and the fixture's
/// snapshot key.
fn online_keys(f: &Fixture, ts: &hale_repo::SigningKey) -> serde_json::Value {
    json!({"timestamp": [ts.keyid()], "snapshot": [f.snap_key.keyid()]})
}

/// A chain of roots in one publish that lists another timestamp key, then the first again:
/// each root that changed the online keys has its key-change record, in order (the records
/// compared the first and the last root only, and here recorded nothing).
#[test]
fn each_root_of_a_chain_that_changes_the_online_keys_has_its_key_change_record() {
    let f = first_release_stopped();
    let other = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[42; 32]).unwrap();
    let root2 = f.root_v(2, &other, &f.snap_key, &[&f.root_key]);
    let root3 = f.root_v(3, &f.ts_key, &f.snap_key, &[&f.root_key]);
    let root4 = f.root_v(4, &f.ts_key, &f.snap_key, &[&f.root_key]);
    let mut s = f.start();
    let r = request(
        "POST",
        &s.url("/api/v1/publish"),
        &[
            ("Authorization", &format!("Bearer {}", f.token)),
            ("Content-Type", "application/json"),
        ],
        Some(&roots_body(&[&root2, &root3, &root4])),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = client_update(&s.base, &f.root, &["fw.bin"]).unwrap();
    assert_eq!(v.root, 4);
    assert!(s.terminate().success());
    assert_eq!(
        audit_kinds(&f),
        [
            "init",
            "token-add",
            "publish",
            "key-change",
            "key-change",
            "publish"
        ]
    );
    let records = audit_records(&f);
    assert_eq!(
        (&records[3]["detail"], &records[4]["detail"]),
        (
            &json!({"root": 2, "online_keys": online_keys(&f, &other)}),
            &json!({"root": 3, "online_keys": online_keys(&f, &f.ts_key)})
        )
    );
    assert_eq!(records[3]["actor"], records[5]["actor"]);
    assert_eq!(records[5]["detail"]["root"], 4);
}

/// A crash after a root that rotates the online keys was committed, before its audit records:
/// the start records the change as `recovered` and the key rotation as `key-change` (it recorded
/// only `recovered`, and the log never told that the online keys had changed).
#[test]
fn an_online_key_rotation_a_crash_kept_from_the_audit_log_is_recorded_at_the_start() {
    let f = first_release_stopped();
    let new_ts = add_timestamp_key(&f, 42);
    let data = f.data.to_str().unwrap();
    commit_root_without_records(&f, 2, &new_ts);

    let mut s = f.start();
    let v = client_update(&s.base, &f.root, &["fw.bin"]).unwrap();
    assert_eq!((v.root, v.timestamp), (2, 2));
    assert!(s.terminate().success());
    let out = run_bin(&["audit", "verify", "--data", data], &f.pass_file);
    assert!(out.status.success());
    let records = audit_records(&f);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "init",
            "token-add",
            "publish",
            "key-add",
            "recovered",
            "key-change"
        ]
    );
    let change = &records[5];
    assert_eq!(change["actor"], "startup", "{change}");
    assert_eq!(change["detail"]["root"], 2, "{change}");
    assert_eq!(
        change["detail"]["online_keys"]["timestamp"],
        json!([new_ts.keyid()]),
        "{change}"
    );
    assert_eq!(change["detail"]["recovered_at_start"], true, "{change}");

    // and once only: the next start finds everything recorded
    let mut s = f.start();
    assert!(s.terminate().success());
    let n = with_store(&f.data, |store| {
        hale_server::store::Store::audit_all(store).unwrap().len()
    });
    assert_eq!(n, records.len());

    // a crash between a publish's two records: the key change recorded, the publish not. The
    // start records the publish as recovered, and the key change no second time
    let newer_ts = add_timestamp_key(&f, 43);
    commit_root_without_records(&f, 3, &newer_ts);
    with_store(&f.data, |store| {
        let audit = hale_server::audit::Audit::open(std::sync::Arc::new(store.clone())).unwrap();
        let keys = json!({"timestamp": [newer_ts.keyid()], "snapshot": [f.snap_key.keyid()]});
        audit
            .append(
                "key-change",
                "operator:olivia",
                json!({"root": 3, "online_keys": keys}),
            )
            .unwrap();
    });
    let mut s = f.start();
    assert!(s.terminate().success());
    assert_eq!(
        audit_kinds(&f)[records.len()..],
        ["key-add", "key-change", "recovered"]
    );

    // a crash after a chain that rotated the key and rotated it back: the start records each
    // root's change, as the publish would have
    let records = audit_records(&f);
    let other = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[44; 32]).unwrap();
    let root4 = f.root_v(4, &other, &f.snap_key, &[&f.root_key]);
    let root5 = f.root_v(5, &newer_ts, &f.snap_key, &[&f.root_key]);
    commit_roots_without_records(&f, &[&root4, &root5], &newer_ts);
    let mut s = f.start();
    assert!(s.terminate().success());
    let after = audit_records(&f);
    let kinds: Vec<&str> = after[records.len()..]
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovered", "key-change", "key-change"]);
    let details: Vec<&serde_json::Value> = after[records.len() + 1..]
        .iter()
        .map(|r| &r["detail"])
        .collect();
    assert_eq!(
        details,
        [
            &json!({"root": 4, "online_keys": online_keys(&f, &other), "recovered_at_start": true}),
            &json!({"root": 5, "online_keys": online_keys(&f, &newer_ts), "recovered_at_start": true})
        ]
    );
}

/// A targets stored before the server refused paths delegated to the rollback role (committed
/// here without the check): an upload of the rollback role itself, listing firmware, is refused
/// all the same (it was checked only against the delegators uploaded with it).
#[test]
fn the_rollback_role_is_refused_under_a_stored_delegation_of_paths() {
    let f = first_release_stopped();
    let fw = b"fw".to_vec();
    let repo = hale_server::repo::RepoDir::new(&f.data);
    let now = now();
    let keys = hale_server::publish::OnlineKeys {
        timestamp: vec![f.ts_key.clone()],
        snapshot: vec![f.snap_key.clone()],
    };
    // every re-sign due: the snapshot is signed again over the roles as they are
    let life = hale_server::publish::Lifetimes {
        timestamp_resign_before_secs: 86_400,
        snapshot_resign_before_secs: 7 * 86_400,
        ..test_lifetimes()
    };
    let old = repo.load().unwrap();
    let mut st = old.clone();
    let d = f.delegation("rollback", &["fw*"]);
    let t2 = f.targets(2, &[("fw.bin", &fw, None)], Some(&d));
    st.roles.insert(
        "targets".into(),
        hale_server::repo::Meta {
            version: 2,
            bytes: t2.into(),
        },
    );
    let st = hale_server::publish::resign(&st, &keys, &life, now, &repo)
        .unwrap()
        .unwrap();
    repo.commit(&old, &st).unwrap();

    let firmware = f.delegated(1, &[("fw-evil.bin", &fw, None)]);
    let up = hale_server::publish::Upload {
        roots: Vec::new(),
        roles: [("rollback".to_string(), bytes::Bytes::from(firmware))].into(),
    };
    let e = hale_server::publish::prepare(&st, &up, &keys, &life, now, &repo).unwrap_err();
    assert_eq!(e.code(), "rollback_role_paths");
    assert_eq!(
        e.to_string(),
        "targets: delegates paths to the rollback role: its keys sign rollback authorizations \
         and are delegated no paths (\"paths\": []), so they can never sign targets"
    );
    assert!(repo.load().unwrap() == st, "stored state changed");
}

#[test]
fn init_refuses_online_keys_the_root_does_not_list() {
    let f = Fixture::new(); // reuse its keys and root
    let data = f.dir.path().join("other-data");
    std::fs::create_dir_all(&data).unwrap();
    let root_path = f.dir.path().join("root.json");
    let stranger =
        hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[77; 32]).unwrap();
    let bad = f.write_key("stranger.key", &stranger);
    let snap = f.write_key("snap2.key", &f.snap_key);
    let init = |ts: &str| -> Vec<String> {
        [
            "init",
            "--data",
            data.to_str().unwrap(),
            "--root",
            root_path.to_str().unwrap(),
            "--timestamp-key",
            ts,
            "--snapshot-key",
            snap.to_str().unwrap(),
        ]
        .map(String::from)
        .into()
    };
    let run = |args: Vec<String>, pass: &std::path::Path| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&args, pass)
    };
    let args = |ts: &str| run(init(ts), &f.pass_file);
    let out = args(bad.to_str().unwrap());
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: root: timestamp needs 1 signatures but the server holds 0 of the keys it lists"
    );
    assert!(!data.join("repo/CURRENT").exists());
    // a wrong passphrase is refused too
    let wrong = f.dir.path().join("wrong-pass");
    std::fs::write(&wrong, "nope").unwrap();
    let ts = f.write_key("ts2.key", &f.ts_key);
    let out = run(init(ts.to_str().unwrap()), &wrong);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase or damaged key file"));
    // no passphrase given at all: where it is looked for
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hale-server"))
        .args(init(ts.to_str().unwrap()))
        .env_remove("HALE_PASSPHRASE_FILE")
        .env_remove("HALE_KEY_PASSPHRASE")
        .env("HALE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: reading the online keys' passphrase (from --passphrase-file F, \
         HALE_PASSPHRASE_FILE or the config's passphrase_file, else the environment variable \
         HALE_KEY_PASSPHRASE): environment variable HALE_KEY_PASSPHRASE is not set"
    );
    assert!(!data.join("repo/CURRENT").exists());
}

/// A refusal given before the body is read (a bad token, a declared size over the limit) must
/// reach a client that sends the whole body before reading the answer, as most HTTP clients
/// do: not end in a connection reset halfway through the upload.
#[test]
fn refusals_reach_a_client_still_sending_a_large_body() {
    let f = Fixture::with_config(json!({"max_target_bytes": 1000, "max_publish_bytes": 4096}));
    let s = f.start();
    let before = f.repo_digest();
    let big = vec![7u8; 8 << 20];
    // declared length over the target limit
    let r = upload(&s, &f.token, &big).unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (413, json!("target upload larger than 1000 bytes"))
    );
    // a token that is not an operator's, on both publish endpoints
    for path in ["/api/v1/targets", "/api/v1/publish"] {
        let r = request(
            "POST",
            &s.url(path),
            &[("Authorization", "Bearer not-a-token")],
            Some(&big),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (401, json!("unauthorized")),
            "{path}"
        );
    }
    // publish body over the limit
    let r = publish(&s, &f.token, None, &[("targets", &big)]).unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (413, json!("too_large"))
    );
    assert_eq!(f.repo_digest(), before);
    assert!(
        std::fs::read_dir(f.data.join("repo/blobs"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    // the server still answers on a new connection
    assert_eq!(upload(&s, &f.token, &[1u8; 10]).unwrap().status, 200);
}

/// A refused publish or target upload of an authenticated operator is an audit record
/// (`publish-refused`): who, the error code, and what was sent, by its sha256 and length (never
/// the body: a record holds a bounded amount whatever was sent). A body that did not parse or
/// gave both `root` and `roots`, and a publish or an upload over its limit, were refused without
/// one. One operator's are recorded at most REFUSALS_PER_ACTOR_PER_HOUR an hour, the last saying
/// so: a script sending a new bad body in a loop grew the log by a record each.
#[test]
fn refused_publishes_and_uploads_are_audited_by_what_was_sent_and_bounded() {
    use sha2::Digest;
    let f = Fixture::with_config(json!({"max_target_bytes": 1000, "max_publish_bytes": 4096}));
    let mut s = f.start();
    let fw = b"firmware".to_vec();
    assert_eq!(upload(&s, &f.token, &fw).unwrap().status, 200);
    let before = f.repo_digest();
    let bearer = format!("Bearer {}", f.token);
    let post = |path: &str, body: &[u8]| {
        request(
            "POST",
            &s.url(path),
            &[("Authorization", &bearer)],
            Some(body),
        )
        .unwrap()
    };
    let refused = |r: Resp, status: u16, code: &str| {
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (status, Some(code)),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    };
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));

    let garbage = br#"{"roles": {"targets": <script>alert(1)</script>"#.to_vec();
    refused(post("/api/v1/publish", &garbage), 400, "bad_request");
    let root2 = f.root_v(2, &f.ts_key, &f.snap_key, &[&f.root_key]);
    let both = format!(
        "{{\"root\":{0},\"roots\":[{0}]}}",
        String::from_utf8_lossy(&root2)
    )
    .into_bytes();
    refused(post("/api/v1/publish", &both), 400, "bad_request");
    refused(post("/api/v1/publish", &[b' '; 5000]), 413, "too_large");
    refused(
        upload(&s, &f.token, &[0u8; 1001]).unwrap(),
        413,
        "too_large",
    );
    // a release hale-core refuses (signed by a key the root does not list), sent twice: one
    // record, the body by its hash
    let other = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[9; 32]).unwrap();
    let t = hale_repo::sign::sign_new(&targets_body(1, &[("fw.bin", &fw, None)], None), &[&other])
        .unwrap();
    let forged = publish_body(None, &[("targets", &t)]);
    for _ in 0..2 {
        refused(post("/api/v1/publish", &forged), 400, "threshold_not_met");
    }
    // a storm of bodies that differ: the operator's hour is spent at the REFUSALS_PER_ACTOR_PER_HOUR-th
    for i in 0..70 {
        refused(
            post("/api/v1/publish", format!("not a publish {i}").as_bytes()),
            400,
            "bad_request",
        );
    }
    assert_eq!(
        f.repo_digest(),
        before,
        "a refused request changed the repository"
    );
    assert!(s.terminate().success());

    let records: Vec<serde_json::Value> = audit_records(&f)
        .into_iter()
        .filter(|r| r["kind"] == "publish-refused")
        .collect();
    let per_hour = hale_server::audit::REFUSALS_PER_ACTOR_PER_HOUR as usize;
    assert_eq!(records.len(), per_hour);
    assert!(records.iter().all(|r| r["actor"] == "alice"));
    let without_message = |r: &serde_json::Value| {
        let mut d = r["detail"].clone();
        d.as_object_mut().unwrap().remove("message");
        d
    };
    let first: Vec<serde_json::Value> = records[..5].iter().map(without_message).collect();
    assert_eq!(
        first,
        [
            json!({"endpoint": "/api/v1/publish", "sha256": sha(&garbage),
                   "bytes": garbage.len(), "error": "bad_request"}),
            json!({"endpoint": "/api/v1/publish", "sha256": sha(&both), "bytes": both.len(),
                   "error": "bad_request"}),
            json!({"endpoint": "/api/v1/publish", "declared_bytes": 5000, "error": "too_large"}),
            json!({"endpoint": "/api/v1/targets", "declared_bytes": 1001, "received_bytes": 0,
                   "error": "too_large"}),
            json!({"endpoint": "/api/v1/publish", "sha256": sha(&forged),
                   "bytes": forged.len(), "error": "threshold_not_met"}),
        ]
    );
    assert_eq!(
        records[1]["detail"]["message"],
        "publish body: give one root as `root` or several, in order, as `roots`, not both"
    );
    assert_eq!(
        records[4]["detail"]["message"],
        "targets: 0 valid signatures from distinct authorized keys, threshold is 2"
    );
    // nothing of a body is copied
    assert!(records.iter().all(|r| !r.to_string().contains("<script>")));
    // the last of the hour says so; the storm's first 55 are recorded, the rest are not
    let last = records.last().unwrap();
    assert_eq!(last["detail"]["more_refusals_not_recorded"], true);
    assert_eq!(
        last["detail"]["sha256"],
        sha(format!("not a publish {}", per_hour - 6).as_bytes())
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["detail"].get("more_refusals_not_recorded").is_some())
            .count(),
        1
    );
}

/// The served state's `path` as a device at `now` finds it: the sha256 it would install.
fn device_finds(
    st: &hale_server::repo::State,
    now: i64,
    path: &str,
) -> Result<Option<String>, String> {
    struct Roles<'a>(&'a hale_server::repo::State);
    impl hale_core::RoleSource for Roles<'_> {
        type Buf = bytes::Bytes;
        type Error = String;
        fn fetch_role(
            &mut self,
            name: &str,
            _: &hale_core::metadata::MetaFile<'_>,
        ) -> Result<bytes::Bytes, String> {
            let m = self.0.roles.get(name).ok_or(name.to_string())?;
            Ok(m.bytes.clone())
        }
    }
    let e = |e: hale_core::Error| e.to_string();
    let (_, root) = st.root().unwrap();
    let storage = hale_core::Storage::with_capacity(1 << 20);
    let mut set = hale_core::TrustedSet::new(storage, root, now).map_err(e)?;
    set.update_timestamp(&st.timestamp.as_ref().unwrap().bytes)
        .map_err(e)?;
    set.update_snapshot(&st.snapshot.as_ref().unwrap().bytes)
        .map_err(e)?;
    set.update_targets(&st.roles["targets"].bytes).map_err(e)?;
    let found = set
        .find_target(path, &mut Roles(st))
        .map_err(|e| e.to_string())?;
    Ok(found.map(|f| hex::encode(f.file(path).unwrap().sha256().unwrap())))
}

/// A lapsed delegation stops the targets it holds, as `/healthz` says, not the repository: the
/// server still re-signs the timestamp and snapshot, and other roles are still released. Before
/// 2026-11-24 the whole-repository client check at each re-sign failed on the expired role, so a
/// day later every device's timestamp had expired too, and every publish was refused (found by
/// review). Time is the functions' parameter: days pass without waiting.
const DAY: i64 = 86_400;

/// Targets metadata (unsigned) of version `v` expiring `life` seconds after `t0`.
fn targets_at(
    t0: i64,
    v: u64,
    life: i64,
    files: &[(&str, &[u8])],
    d: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut t = serde_json::Map::new();
    for (path, content) in files {
        t.insert(
            path.to_string(),
            hale_repo::build::target_entry(content, None),
        );
    }
    let exp = hale_repo::build::expires_at(t0, life).unwrap();
    hale_repo::build::targets(hale_repo::build::Profile::Standard, v, &exp, &t, d)
}

/// The expired-delegation tests' start: `targets` (for `targets_days`) delegating `pump-a/*` to
/// pump-a (thirty days, listing `a1`) and `pump-b/*` to `b` (one day, listing `b1`), published
/// at `t0` with `a2` uploaded too, the server stopped; the online keys and lifetimes to go on
/// in process.
struct TwoDelegations {
    f: Fixture,
    t0: i64,
    repo: hale_server::repo::RepoDir,
    st: hale_server::repo::State,
    keys: hale_server::publish::OnlineKeys,
    life: hale_server::publish::Lifetimes,
    a1: Vec<u8>,
    b1: Vec<u8>,
    a2: Vec<u8>,
}

fn two_delegations(b: &str, targets_days: i64) -> TwoDelegations {
    let f = Fixture::new();
    let mut s = f.start();
    let (a1, b1, a2) = (
        b"pump-a 1".to_vec(),
        b"pump-b 1".to_vec(),
        b"pump-a 2".to_vec(),
    );
    for fw in [&a1, &b1, &a2] {
        assert_eq!(upload(&s, &f.token, fw).unwrap().status, 200);
    }
    let t0 = now();
    let k = &f.delegate_key;
    let delegations = json!({
        "keys": {k.keyid(): k.public()},
        "roles": [
            {"name": "pump-a", "keyids": [k.keyid()], "threshold": 1, "terminating": true, "paths": ["pump-a/*"]},
            {"name": b, "keyids": [k.keyid()], "threshold": 1, "terminating": true, "paths": ["pump-b/*"]},
        ],
    });
    let targets = &[&f.targets_keys[0], &f.targets_keys[1]];
    let sign = |body: serde_json::Value, keys: &[&hale_repo::SigningKey]| {
        hale_repo::sign::sign_new(&body, keys).unwrap()
    };
    let t1 = sign(
        targets_at(t0, 1, targets_days * DAY, &[], Some(&delegations)),
        targets,
    );
    let pa1 = sign(
        targets_at(t0, 1, 30 * DAY, &[("pump-a/fw.bin", &a1)], None),
        &[k],
    );
    let pb1 = sign(
        targets_at(t0, 1, DAY, &[("pump-b/fw.bin", &b1)], None),
        &[k],
    );
    let r = publish(
        &s,
        &f.token,
        None,
        &[("targets", &t1), ("pump-a", &pa1), (b, &pb1)],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(s.terminate().success());
    let repo = hale_server::repo::RepoDir::new(&f.data);
    let st = repo.load().unwrap();
    let keys = hale_server::publish::OnlineKeys {
        timestamp: vec![f.ts_key.clone()],
        snapshot: vec![f.snap_key.clone()],
    };
    let life = hale_server::publish::Lifetimes {
        timestamp_secs: DAY,
        timestamp_resign_before_secs: DAY / 2,
        snapshot_secs: 7 * DAY,
        snapshot_resign_before_secs: 3 * DAY,
        profile: hale_repo::build::Profile::Standard,
    };
    TwoDelegations {
        f,
        t0,
        repo,
        st,
        keys,
        life,
        a1,
        b1,
        a2,
    }
}

/// A day and an hour on: `b` expired, the timestamp due. Re-signed all the same; a device finds
/// pump-a's image and refuses pump-b's (naming the role as an error shows it, `shown`), as
/// `/healthz` says (`delegated_role_expired`); and pump-a's next release goes out meanwhile.
/// The state after it, and the time.
fn resign_and_release_past_the_expired(
    d: &TwoDelegations,
    shown: &str,
) -> (hale_server::repo::State, i64) {
    use hale_server::publish::{prepare, resign, Upload};
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let t = d.t0 + DAY + 3_600;
    let st = resign(&d.st, &d.keys, &d.life, t, &d.repo)
        .unwrap()
        .unwrap();
    assert_eq!(st.timestamp.as_ref().unwrap().version, 2);
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(Some(sha(&d.a1))));
    let at = |t: i64| hale_repo::build::expires_at(t, 0).unwrap();
    assert_eq!(
        device_finds(&st, t, "pump-b/fw.bin"),
        Err(format!(
            "{shown}: expired at {} (update started at {})",
            at(d.t0 + DAY),
            at(t)
        ))
    );
    let pa2 = hale_repo::sign::sign_new(
        &targets_at(d.t0, 2, 30 * DAY, &[("pump-a/fw.bin", &d.a2)], None),
        &[&d.f.delegate_key],
    )
    .unwrap();
    let up = Upload {
        roots: Vec::new(),
        roles: [("pump-a".to_string(), bytes::Bytes::from(pa2))].into(),
    };
    let st = prepare(&st, &up, &d.keys, &d.life, t, &d.repo).unwrap();
    assert_eq!(st.roles["pump-a"].version, 2);
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(Some(sha(&d.a2))));
    (st, t)
}

/// The same with a delegated role whose name is longer than an error holds (32 bytes): hale-core
/// names it cut short in its `Expired`, and the check before a commit took such a name for a
/// role that must not have expired, so the expiry of one long-named role untouched by the change
/// stopped every re-sign and every release (the timestamp would then expire a day later, and
/// the whole fleet refuse every update). Found by review; fails on the old check.
#[test]
fn an_expired_delegated_role_with_a_long_name_stops_neither_the_resign_nor_other_releases() {
    const LONG: &str = "infusion-pump-model-b-firmware-2026";
    assert!(LONG.len() > 32);
    let d = two_delegations(LONG, 30);
    resign_and_release_past_the_expired(&d, "infusion-pump-model-b-firmware-2…");
}

#[test]
fn an_expired_delegated_role_stops_neither_the_resign_nor_other_releases() {
    use hale_server::publish::{prepare, resign, PublishError, Upload};
    // targets for two days, pump-a for thirty, pump-b for one
    let d = two_delegations("pump-b", 2);
    let (st, t) = resign_and_release_past_the_expired(&d, "pump-b");
    let TwoDelegations {
        f,
        t0,
        repo,
        keys,
        life,
        a1,
        b1,
        a2,
        ..
    } = d;
    let (day, k) = (DAY, &f.delegate_key);
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let targets = &[&f.targets_keys[0], &f.targets_keys[1]];
    let body = |v, life, files: &[(&str, &[u8])], d| targets_at(t0, v, life, files, d);
    let up = |role: &str, bytes: &[u8]| Upload {
        roots: Vec::new(),
        roles: [(role.to_string(), bytes::Bytes::from(bytes.to_vec()))].into(),
    };
    let at = |t: i64| hale_repo::build::expires_at(t, 0).unwrap();
    // pump-b signed again as it was (still expired) is refused, as before
    let stale =
        hale_repo::sign::sign_new(&body(2, day, &[("pump-b/fw.bin", &b1)], None), &[k]).unwrap();
    let e = prepare(&st, &up("pump-b", &stale), &keys, &life, t, &repo).unwrap_err();
    assert!(
        matches!(&e, PublishError::Trust { role, error: hale_core::Error::Expired { .. } } if role == "pump-b"),
        "{e}"
    );

    // two days on, targets expired too: still re-signed (devices refuse every update, and
    // `/healthz` says `metadata_expired`), but a release under it is refused: no device would
    // reach it until targets is renewed
    let t = t0 + 2 * day + 3_600;
    let st = resign(&st, &keys, &life, t, &repo).unwrap().unwrap();
    assert_eq!(st.timestamp.as_ref().unwrap().version, 4);
    let pa3 = hale_repo::sign::sign_new(&body(3, 30 * day, &[("pump-a/fw.bin", &a1)], None), &[k])
        .unwrap();
    let e = prepare(&st, &up("pump-a", &pa3), &keys, &life, t, &repo).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "a device would reject the result: 1.targets.json: targets: expired at {} (update \
             started at {}): no device would reach pump-a until targets is renewed",
            at(t0 + 2 * day),
            at(t)
        )
    );
    assert_eq!(e.code(), "client_check_failed");

    // targets renewed without pump-b: pump-b stays stored and listed (clients refuse a snapshot
    // that drops a role) but no device reads it, so neither /healthz nor the log counts it
    // expired (before, /healthz said delegated_role_expired and asked to renew a role that
    // publish then refused as not delegated)
    let only_a = json!({
        "keys": {k.keyid(): k.public()},
        "roles": [
            {"name": "pump-a", "keyids": [k.keyid()], "threshold": 1, "terminating": true, "paths": ["pump-a/*"]},
        ],
    });
    let t2 = hale_repo::sign::sign_new(&body(2, 30 * day, &[], Some(&only_a)), targets).unwrap();
    let st = prepare(&st, &up("targets", &t2), &keys, &life, t, &repo).unwrap();
    assert!(st.roles.contains_key("pump-b"));
    assert_eq!(
        hale_server::repo::reachable_roles(&st),
        ["pump-a".to_string(), "targets".to_string()].into()
    );
    let r = hale_server::repo::ExpiryReport::of(&st, t);
    assert_eq!(r.expired, []);
    let (code, h) = hale_server::http::health(&st, t);
    assert_eq!((code.as_u16(), &h["status"]), (200, &json!("ok")), "{h}");
    assert_eq!(h["warnings"], json!([]));
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(Some(sha(&a2))));
}

/// A targets that moves an expired delegation ahead of a current one is refused: devices find
/// pump-a's image today (their search reaches pump-a before the lapsed legacy role) and would
/// stop at legacy after it. The expired role is untouched, and so is pump-a, so the tolerance of
/// lapsed roles let it through before (found by review, 2026-11-24; fails on the old check).
/// The same targets keeping the order is accepted: devices refuse legacy's image either way.
#[test]
fn a_targets_that_puts_an_expired_delegation_in_the_way_is_refused() {
    use hale_server::publish::{prepare, resign, Lifetimes, OnlineKeys, Upload};
    let f = Fixture::new();
    let s = f.start();
    let (a1, l1) = (b"pump-a 1".to_vec(), b"legacy 1".to_vec());
    for fw in [&a1, &l1] {
        assert_eq!(upload(&s, &f.token, fw).unwrap().status, 200);
    }
    let day = 86_400;
    let t0 = now();
    let body = |v, life, files: &[(&str, &[u8])], d: Option<&serde_json::Value>| {
        targets_at(t0, v, life, files, d)
    };
    let k = &f.delegate_key;
    let role = |name: &str, paths: &[&str]| json!({"name": name, "keyids": [k.keyid()], "threshold": 1, "terminating": false, "paths": paths});
    let delegations =
        |roles: Vec<serde_json::Value>| json!({"keys": {k.keyid(): k.public()}, "roles": roles});
    let targets = &[&f.targets_keys[0], &f.targets_keys[1]];
    // targets for thirty days delegating to `roles`
    let delegating = |v: u64, roles: Vec<serde_json::Value>| {
        hale_repo::sign::sign_new(&body(v, 30 * day, &[], Some(&delegations(roles))), targets)
            .unwrap()
    };
    let t1 = delegating(
        1,
        vec![role("pump-a", &["pump-a/*"]), role("legacy", &["legacy/*"])],
    );
    let pa = hale_repo::sign::sign_new(&body(1, 30 * day, &[("pump-a/fw.bin", &a1)], None), &[k])
        .unwrap();
    let lg =
        hale_repo::sign::sign_new(&body(1, day, &[("legacy/fw.bin", &l1)], None), &[k]).unwrap();
    let r = publish(
        &s,
        &f.token,
        None,
        &[("targets", &t1), ("pump-a", &pa), ("legacy", &lg)],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut s = s;
    assert!(s.terminate().success());
    let repo = hale_server::repo::RepoDir::new(&f.data);
    let st = repo.load().unwrap();
    let keys = OnlineKeys {
        timestamp: vec![f.ts_key.clone()],
        snapshot: vec![f.snap_key.clone()],
    };
    let life = Lifetimes {
        timestamp_secs: day,
        timestamp_resign_before_secs: day / 2,
        snapshot_secs: 7 * day,
        snapshot_resign_before_secs: 3 * day,
        profile: hale_repo::build::Profile::Standard,
    };
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let up = |bytes: &[u8]| Upload {
        roots: Vec::new(),
        roles: [("targets".to_string(), bytes::Bytes::from(bytes.to_vec()))].into(),
    };
    // a day and an hour on: legacy expired, the timestamp re-signed (as the server does);
    // devices find pump-a's image
    let t = t0 + day + 3_600;
    let st = resign(&st, &keys, &life, t, &repo).unwrap().unwrap();
    let at = |t: i64| hale_repo::build::expires_at(t, 0).unwrap();
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(Some(sha(&a1))));

    // legacy first, for every path (`*/*`: a pattern matches name by name): refused, and
    // nothing changes
    let ahead = delegating(
        2,
        vec![role("legacy", &["*/*"]), role("pump-a", &["pump-a/*"])],
    );
    let disk = repo.load().unwrap();
    let e = prepare(&st, &up(&ahead), &keys, &life, t, &repo).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "a device would reject the result: searching pump-a/fw.bin: legacy: expired at {} \
             (update started at {}): devices find it now; this change puts the expired role in \
             their way",
            at(t0 + day),
            at(t)
        )
    );
    assert_eq!(e.code(), "client_check_failed");
    assert!(repo.load().unwrap() == disk, "stored state changed");

    // the same delegations in the same order, renewed: accepted; devices still find pump-a's
    // image and refuse legacy's, as before
    let same = delegating(
        2,
        vec![role("pump-a", &["pump-a/*"]), role("legacy", &["legacy/*"])],
    );
    let st = prepare(&st, &up(&same), &keys, &life, t, &repo).unwrap();
    assert_eq!(st.roles["targets"].version, 2);
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(Some(sha(&a1))));
    assert!(device_finds(&st, t, "legacy/fw.bin")
        .unwrap_err()
        .starts_with("legacy: expired at "));

    // a terminating role that lists nothing ahead of pump-a: devices find nothing for
    // pump-a/fw.bin (a search that ends without a target is no finding) ...
    let term = |name: &str, paths: &[&str]| json!({"name": name, "keyids": [k.keyid()], "threshold": 1, "terminating": true, "paths": paths});
    let blocked = delegating(
        3,
        vec![
            term("block", &["pump-a/*"]),
            role("pump-a", &["pump-a/*"]),
            role("legacy", &["legacy/*"]),
        ],
    );
    let block = hale_repo::sign::sign_new(&body(1, 30 * day, &[], None), &[k]).unwrap();
    let both = Upload {
        roots: Vec::new(),
        roles: [
            ("targets".to_string(), bytes::Bytes::from(blocked)),
            ("block".to_string(), bytes::Bytes::from(block)),
        ]
        .into(),
    };
    let st = prepare(&st, &both, &keys, &life, t, &repo).unwrap();
    assert_eq!(device_finds(&st, t, "pump-a/fw.bin"), Ok(None));
    // ... so a targets that puts the expired legacy there instead takes nothing from them:
    // accepted (it was refused as "devices find it now")
    let instead = delegating(
        4,
        vec![role("legacy", &["*/*"]), role("pump-a", &["pump-a/*"])],
    );
    let st = prepare(&st, &up(&instead), &keys, &life, t, &repo).unwrap();
    assert_eq!(st.roles["targets"].version, 4);
    assert!(device_finds(&st, t, "pump-a/fw.bin")
        .unwrap_err()
        .starts_with("legacy: expired at "));
}

#[test]
fn the_rollback_roles_keys_are_refused_anywhere_else_and_nothing_changes() {
    let f = Fixture::new();
    let s = f.start();
    let fw = b"release one".to_vec();
    upload(&s, &f.token, &fw).unwrap();
    let rollback_key =
        hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[7; 32]).unwrap();
    let (r, d) = (rollback_key.keyid(), f.delegate_key.keyid());
    // top-level targets delegating to the rollback role (no paths) with `rollback_keys`, and
    // pump-a/* to the firmware role with `firmware_keys`
    let delegations = |rollback_keys: &[&hale_repo::SigningKey],
                       firmware_keys: &[&hale_repo::SigningKey]| {
        let mut keys = serde_json::Map::new();
        for k in rollback_keys.iter().chain(firmware_keys) {
            keys.insert(k.keyid(), k.public());
        }
        let ids = |ks: &[&hale_repo::SigningKey]| ks.iter().map(|k| k.keyid()).collect::<Vec<_>>();
        json!({
            "keys": keys,
            "roles": [
                {"name": "rollback", "keyids": ids(rollback_keys), "threshold": 1, "terminating": false, "paths": []},
                {"name": "firmware", "keyids": ids(firmware_keys), "threshold": 1, "terminating": true, "paths": ["pump-a/*"]},
            ],
        })
    };
    let firmware = f.delegated(1, &[]);
    let shared = |delegator: &str, role: &str, keyid: &str| {
        format!(
            "{delegator}: {role} lists the rollback role's key {keyid}: the keys that sign \
             rollback authorizations sign nothing else (delegated paths or one of root's roles, \
             they would sign what devices install or trust)"
        )
    };

    // the firmware role lists the rollback key beside its own
    let t1 = f.targets(
        1,
        &[("fw.bin", &fw, None)],
        Some(&delegations(
            &[&rollback_key],
            &[&f.delegate_key, &rollback_key],
        )),
    );
    refused(
        &f,
        &s,
        None,
        &[("targets", &t1), ("firmware", &firmware)],
        "rollback_keys_shared",
        &shared("targets", "firmware", &r),
    );
    // the rollback role given the snapshot key (the server's online key would sign
    // authorizations)
    let t1 = f.targets(
        1,
        &[("fw.bin", &fw, None)],
        Some(&delegations(
            &[&rollback_key, &f.snap_key],
            &[&f.delegate_key],
        )),
    );
    refused(
        &f,
        &s,
        None,
        &[("targets", &t1), ("firmware", &firmware)],
        "rollback_keys_shared",
        &shared("root", "snapshot", &f.snap_key.keyid()),
    );

    // kept apart: published
    let t1 = f.targets(
        1,
        &[("fw.bin", &fw, None)],
        Some(&delegations(&[&rollback_key], &[&f.delegate_key])),
    );
    let ok = publish(
        &s,
        &f.token,
        None,
        &[("targets", &t1), ("firmware", &firmware)],
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // then the rollback role rotated to the firmware role's key: the stored firmware delegation
    // now shares it
    let t2 = f.targets(
        2,
        &[("fw.bin", &fw, None)],
        Some(&delegations(&[&f.delegate_key], &[&f.delegate_key])),
    );
    refused(
        &f,
        &s,
        None,
        &[("targets", &t2)],
        "rollback_keys_shared",
        &shared("targets", "firmware", &d),
    );
    assert_eq!(get(&s.url("2.targets.json")).status, 404);
    assert_eq!(get(&s.url("1.targets.json")).body, t1);
}
