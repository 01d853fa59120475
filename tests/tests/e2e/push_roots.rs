//! `hale-sign push` and the root chain, against a real hale-server on loopback (review of push):
//!
//! - a root that a threshold of the root before it did not sign is refused before any request
//!   that changes the server, naming the signatures it lacks; a published one was only checked
//!   against its own keys, so its target contents were uploaded before the server refused it.
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
