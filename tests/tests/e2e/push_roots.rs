//! `hale-sign push` and the root chain, against a real hale-server on loopback (review of push,
//! findings L5 and L6):
//!
//! - every root version the server lacks goes, in order, in one publish the server verifies link
//!   by link (a pump walks them one by one); only the newest was sent, and the server refused it;
//! - a root that a threshold of the root before it did not sign is refused before any request
//!   that changes the server, naming the signatures it lacks; a published one was only checked
//!   against its own keys, so its target contents were uploaded before the server refused it;
//! - a server whose root is newer than this copy's, or another root of the same version, is said
//!   so and nothing is sent.
//!
//! Each refusal asserts the exact message and exit code, that the server serves the same root
//! and timestamp and stores no new content, and that the working directory is unchanged.

use std::collections::BTreeMap;

use super::*;

/// The key id written in `WORK/keys/NAME.pub`.
fn keyid(t: &Tools, name: &str) -> String {
    let pubkey: Value =
        serde_json::from_slice(&std::fs::read(t.key(&format!("{name}.pub"))).unwrap()).unwrap();
    pubkey["keyid"].as_str().unwrap().to_string()
}

/// Keys root-1…root-4, targets and the online keys; `WORK/release` with root v1 (root-1…root-3,
/// 2-of-3) signed by root-1 and root-2; hale-server initialised with it, running, and serving
/// targets v1 (firmware 1.0.0) pushed from `WORK/release`.
fn server_with_v1(t: &Tools) -> Server {
    t.generate_keys(&[
        ("root-1", "ed25519"),
        ("root-2", "ed25519"),
        ("root-3", "ed25519"),
        ("root-4", "ed25519"),
        ("targets", "ed25519"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
    ]);
    let (k1, k2, k3) = (
        t.key("root-1.pub"),
        t.key("root-2.pub"),
        t.key("root-3.pub"),
    );
    let staged_root = t.init_repo(&[
        "--root-key",
        &k1,
        "--root-key",
        &k2,
        "--root-key",
        &k3,
        "--root-threshold",
        "2",
    ]);
    for key in ["root-1.key", "root-2.key"] {
        t.sign(&["sign", &staged_root, "--key", &t.key(key)]);
    }
    t.init_server(&staged_root);
    let server = start_server(t);
    let out = t.release(&server.url, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    server
}

/// `hale-sign rotate WORK/release --role root CHANGE…`, the staged root signed with `signers`.
fn rotate_root(t: &Tools, change: &[&str], signers: &[&str]) {
    let repo = t.p("release");
    let mut args = vec!["rotate", repo.as_str(), "--role", "root"];
    args.extend(change);
    t.ok("hale-sign", &args);
    for key in signers {
        t.sign(&[
            "sign",
            &format!("{repo}/staged/root.json"),
            "--key",
            &t.key(key),
        ]);
    }
}

/// What the server serves and stores: its root.json, its timestamp.json and the names of the
/// target contents it holds (uploaded, published or not).
fn server_state(t: &Tools, url: &str) -> (String, String, Vec<String>) {
    let mut blobs: Vec<String> = std::fs::read_dir(t.work.join("server/repo/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    (
        http_get(&format!("{url}/root.json")),
        http_get(&format!("{url}/timestamp.json")),
        blobs,
    )
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `hale-sign push` refused with exit 2 and exactly `error`, the server and the working
/// directory as they were.
fn push_refused(t: &Tools, url: &str, error: &str) {
    let repo = t.work.join("release");
    let (server_before, local_before) = (server_state(t, url), files(&repo));
    let out = t.push(url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (Some(2), error),
        "{}",
        text(&out)
    );
    assert_eq!(
        server_state(t, url),
        server_before,
        "the server serves the same root and timestamp and stores no new content"
    );
    assert!(
        files(&repo) == local_before,
        "the working directory is unchanged"
    );
}

/// `WORK/release/repository/N.root.json`.
fn published_root(t: &Tools, v: u64) -> String {
    std::fs::read_to_string(t.work.join(format!("release/repository/{v}.root.json"))).unwrap()
}

#[test]
fn push_sends_every_root_the_server_lacks_in_order_and_a_pump_walks_them() {
    let t = Tools::new();
    let server = server_with_v1(&t);
    let url = server.url.clone();
    let repo = t.p("release");
    provision(&t, 1);

    // root v2 (root-3 out) and v3 (root-4 in), each published into this copy only
    rotate_root(
        &t,
        &["--remove-key", &t.key("root-3.pub")],
        &["root-1.key", "root-2.key"],
    );
    t.ok("hale-sign", &["publish", &repo]);
    rotate_root(
        &t,
        &["--add-key", &t.key("root-4.pub")],
        &["root-1.key", "root-2.key"],
    );
    t.ok("hale-sign", &["publish", &repo]);
    t.stage("2.0.0", "2", "pump-a");
    let fw = std::fs::metadata(t.work.join("fw-2.0.0-pump-a.bin")).unwrap();

    let out = t.push(&url);
    assert!(out.status.success(), "push: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().take(2).collect::<Vec<_>>(),
        [
            format!("uploaded 1 target file(s), {} bytes, to {url}", fw.len()),
            format!("pushed root v2, root v3, targets v2 to {url} as e2e"),
        ]
    );
    // each root version served as this copy published it; the current one is v3
    for v in [2, 3] {
        assert_eq!(
            http_get(&format!("{url}/{v}.root.json")),
            published_root(&t, v).trim(),
            "{v}.root.json"
        );
    }
    assert_eq!(
        http_get(&format!("{url}/root.json")),
        published_root(&t, 3).trim()
    );
    assert!(!t.work.join("release/staged/targets.json").exists());
    assert!(t.work.join("release/repository/2.targets.json").exists());

    // the pump, provisioned with root v1, walks v2 and v3 and installs 2.0.0
    t.pump(1, &["health", "pass"]);
    let log = t.poll(1, &url);
    assert!(log.contains("2.0.0 confirmed"), "{log}");
    assert_eq!(
        t.status(1),
        ("installed".into(), "2.0.0".into(), "2.0.0".into())
    );

    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(0),
            "nothing to push: the server serves this copy's versions already (targets v2)"
        )
    );
}

/// Root v2 with root-3 out and root-4 in, signed by root-1 and root-4: its own 2-of-3, but one
/// of root v1's two; staged with a new release (new content, which must not be uploaded
/// either). The refusal push must give, `see` naming the command that shows the signatures.
fn root_v1_did_not_sign(t: &Tools) -> impl Fn(&str) -> String {
    rotate_root(
        t,
        &[
            "--add-key",
            &t.key("root-4.pub"),
            "--remove-key",
            &t.key("root-3.pub"),
        ],
        &["root-1.key", "root-4.key"],
    );
    t.stage("2.0.0", "2", "pump-a");
    // root v1's keys in its own order, but root-1's
    let v1: Value = serde_json::from_str(&published_root(t, 1)).unwrap();
    let signed_by_1 = keyid(t, "root-1");
    let missing: Vec<String> = v1["signed"]["roles"]["root"]["keyids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .filter(|k| *k != signed_by_1)
        .collect();
    let mut sorted = missing.clone();
    sorted.sort();
    let mut expected = [keyid(t, "root-2"), keyid(t, "root-3")];
    expected.sort();
    assert_eq!(sorted, expected);
    let repo = t.p("release");
    move |see: &str| {
        format!(
            "error: refusing to push {repo}: 1 threshold(s) not met: root v2: 1/2 by root v1 (the \
             trusted root it rotates from), missing: {} (nothing sent; see {see})",
            missing.join(", ")
        )
    }
}

#[test]
fn push_refuses_a_staged_root_the_root_before_it_did_not_sign_naming_the_missing_keys() {
    let t = Tools::new();
    let server = server_with_v1(&t);
    let refusal = root_v1_did_not_sign(&t);
    let repo = t.p("release");
    push_refused(
        &t,
        &server.url,
        &refusal(&format!("`hale-sign status {repo}`")),
    );
}

#[test]
fn push_refuses_a_published_root_the_root_before_it_did_not_sign_before_sending_anything() {
    let t = Tools::new();
    let server = server_with_v1(&t);
    let refusal = root_v1_did_not_sign(&t);
    let repo = t.p("release");
    // the root put into repository/ by hand (another tool, a copy, a hand edit; `publish`
    // refuses it): it was checked against its own keys alone, its release's content uploaded,
    // and the server's refusal came last
    let staged = t.work.join("release/staged/root.json");
    for name in ["2.root.json", "root.json"] {
        std::fs::copy(&staged, t.work.join("release/repository").join(name)).unwrap();
    }
    std::fs::remove_file(&staged).unwrap();
    push_refused(
        &t,
        &server.url,
        &refusal(&format!(
            "`hale-sign status {repo}/repository/2.root.json --repo {repo}`"
        )),
    );
}

#[test]
fn push_says_when_the_server_is_ahead_of_this_copys_root_or_serves_another_one() {
    let t = Tools::new();
    let server = server_with_v1(&t);
    let url = server.url.clone();
    let repo = t.p("release");
    let cp = |from: &str, to: &str| {
        let ok = Command::new("cp")
            .args(["-a", &t.p(from), &t.p(to)])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    cp("release", "release-stale");

    // root v2 pushed from this copy
    rotate_root(
        &t,
        &["--remove-key", &t.key("root-3.pub")],
        &["root-1.key", "root-2.key"],
    );
    let out = t.push(&url);
    assert!(out.status.success(), "push root v2: {}", text(&out));
    std::fs::rename(&repo, t.p("release-current")).unwrap();
    std::fs::rename(t.p("release-stale"), &repo).unwrap();

    // a copy still at root v1, with a release newer than the server's: the server is ahead (its
    // targets went out under root v2 before)
    t.stage("2.0.0", "2", "pump-a");
    push_refused(
        &t,
        &url,
        &format!(
            "error: {repo}: the server serves a newer root (2.root.json) than this copy's root \
             v1; the server is ahead: this copy is not the one its releases come from (nothing \
             sent)"
        ),
    );

    // this copy's own root v2 (root-2 out): another root v2 than the server's, staged…
    rotate_root(
        &t,
        &["--remove-key", &t.key("root-2.pub")],
        &["root-1.key", "root-3.key"],
    );
    let another = |path: &str| {
        format!(
            "error: {path}: the server serves another root v2 ({url}/2.root.json) than this \
             copy's: this copy is not the one its releases come from (nothing sent)"
        )
    };
    push_refused(&t, &url, &another(&format!("{repo}/staged/root.json")));
    // …or published here, with a root v3 on it
    t.ok("hale-sign", &["publish", &repo]);
    rotate_root(
        &t,
        &["--add-key", &t.key("root-4.pub")],
        &["root-1.key", "root-3.key"],
    );
    push_refused(
        &t,
        &url,
        &another(&format!("{repo}/repository/2.root.json")),
    );
}
