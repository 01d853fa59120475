//! Interop with python-tuf 7 (the reference implementation), in both directions:
//! - hale-core verifies repositories written by python-tuf's Metadata API (ECDSA and ed25519 keys,
//!   indented and compact JSON, delegations, succinct hash bins, root rotations) and their targets;
//! - python-tuf's ngclient refreshes and downloads from a repository Hale wrote, served over HTTP
//!   on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use hale_repo::keys::KeyKind;
use hale_tests::peers::{interop_script, load_dir, now, python, HttpServer};
use hale_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn python_repo(scenario: &str, extra: &[&str]) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repo");
    let st = Command::new(python())
        .arg(interop_script("python_tuf_repo.py"))
        .args(["--scenario", scenario, "--out"])
        .arg(&out)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "python_tuf_repo.py {scenario} failed");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(out.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn hale_core_reads_python_repo(scenario: &str, extra: &[&str]) {
    let (dir, expected) = python_repo(scenario, extra);
    let files = load_dir(&dir.path().join("repo"));
    let mut c = Client::new(files["1.root.json"].clone());
    let targets = expected["targets"].as_object().unwrap();
    assert!(!targets.is_empty());
    for (name, want) in targets {
        let bytes = c
            .download(&files, name, now())
            .unwrap_or_else(|e| panic!("{scenario}: {name}: {e:?}"));
        assert_eq!(
            bytes.len() as u64,
            want["length"].as_u64().unwrap(),
            "{scenario}: {name}"
        );
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            want["sha256"].as_str().unwrap(),
            "{scenario}: {name}"
        );
    }
    let newest_root = expected["root_versions"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v.as_u64())
        .unwrap_or(1);
    assert_eq!(c.trusted().root, newest_root, "{scenario}");
}

#[test]
fn hale_core_verifies_python_tuf_basic_repository_indented_and_compact() {
    hale_core_reads_python_repo("basic", &[]);
    hale_core_reads_python_repo("basic", &["--compact", "--meta-hashes"]);
}

#[test]
fn hale_core_verifies_python_tuf_delegations() {
    hale_core_reads_python_repo("delegations", &[]);
}

#[test]
fn hale_core_verifies_python_tuf_succinct_hash_bins() {
    hale_core_reads_python_repo("succinct", &[]);
    hale_core_reads_python_repo("succinct", &["--bit-length", "8", "--compact"]);
}

#[test]
fn hale_core_verifies_python_tuf_root_rotations() {
    hale_core_reads_python_repo("rotation", &["--meta-hashes"]);
}

#[test]
fn hale_core_rejects_python_tuf_repository_with_flipped_target_byte() {
    let (dir, expected) = python_repo("basic", &[]);
    let mut files = load_dir(&dir.path().join("repo"));
    let (name, want) = expected["targets"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let sha = want["sha256"].as_str().unwrap();
    let file = hale_repo::layout::target_path(name, sha, true).unwrap();
    files.get_mut(&file).unwrap()[0] ^= 1;
    let mut c = Client::new(files["1.root.json"].clone());
    let err = c.download(&files, name, now()).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(hale_core::Error::HashMismatch {
            what: hale_core::Name::new(name),
            algorithm: "sha256"
        })
    );
}

/// A Hale repository (hale-repo writes what hale-sign writes) with ECDSA and ed25519 keys, a
/// delegation, hash bins and a root rotation, dated from the real clock.
fn hale_repository() -> (RepoSim, Vec<&'static str>) {
    let mut r = RepoSim::new();
    let shift = now() - NOW; // RepoSim dates are relative to NOW
    for st in [
        &mut r.root,
        &mut r.timestamp,
        &mut r.snapshot,
        &mut r.targets,
    ] {
        st.expires += shift;
    }
    r.write_root();
    r.delegate(
        "targets",
        "pump-a",
        &["pump-a/*"],
        true,
        vec![key("pump-a", KeyKind::EcdsaP256)],
        1,
    );
    r.delegated.get_mut("pump-a").unwrap().expires += shift;
    let custom = serde_json::json!({"hardware": [{"model": "pump-a", "revisions": ["r1"]}], "version": "1.0.0"});
    r.add_target("targets", "monitor-b.bin", b"monitor firmware", None);
    r.add_target(
        "pump-a",
        "pump-a/fw-1.0.0.bin",
        b"pump firmware 1.0.0",
        Some(custom),
    );
    r.publish();
    r.rotate_root(|r| r.root.keys.push(key("root-2", KeyKind::EcdsaP256)));
    r.publish();
    (r, vec!["monitor-b.bin", "pump-a/fw-1.0.0.bin"])
}

#[test]
fn python_tuf_ngclient_updates_from_a_hale_repository_over_http() {
    let (r, targets) = hale_repository();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    r.write_to(&repo);
    let server = HttpServer::start(&repo);
    let root = dir.path().join("trusted-root.json");
    std::fs::write(&root, r.initial_root()).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(interop_script("python_tuf_client.py"))
        .arg("--root")
        .arg(&root)
        .args([
            "--metadata-url",
            &server.base,
            "--target-base-url",
            &format!("{}/targets", server.base),
            "--work",
        ])
        .arg(dir.path().join("client"));
    for t in &targets {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-tuf refused the Hale repository: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for t in targets {
        assert_eq!(
            report["targets"][t],
            hex::encode(Sha256::digest(&r.contents[t])),
            "{t}"
        );
    }
}

#[test]
fn python_tuf_ngclient_rejects_a_tampered_hale_repository() {
    let (mut r, _) = hale_repository();
    let name = r.target_file_name("monitor-b.bin");
    r.files.get_mut(&name).unwrap()[0] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    r.write_to(&repo);
    let server = HttpServer::start(&repo);
    let root = dir.path().join("trusted-root.json");
    std::fs::write(&root, r.initial_root()).unwrap();
    let out = Command::new(python())
        .arg(interop_script("python_tuf_client.py"))
        .arg("--root")
        .arg(&root)
        .args([
            "--metadata-url",
            &server.base,
            "--target-base-url",
            &format!("{}/targets", server.base),
            "--work",
        ])
        .arg(dir.path().join("client"))
        .args(["--target", "monitor-b.bin"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "python-tuf accepted a tampered target"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hash"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Delegation path patterns match as python-tuf matches them (`DelegatedRole.
/// _is_target_in_pathpattern`: split on `/`, `fnmatch` each part), over 20,000 generated pairs
/// of patterns and target paths with wildcards, classes, ranges and non-ASCII characters:
/// exactly for ASCII targets; for the others, where hale-core answers it answers as python-tuf
/// does, and it does not answer ("not told": the search stops there with an error) where its `?`
/// or a class met a non-ASCII character and nothing matched (python's take one;
/// `hale_core::metadata::fnmatch`). Until 2026-11-24 they took a byte, and about 2,000 of these
/// pairs differed, some matching where python-tuf does not (found by review; this test fails on
/// that code, and on the code that read "not told" as no match until the next fix).
#[test]
fn path_patterns_match_as_python_tuf_matches_them() {
    // a small deterministic generator (xorshift): the same pairs every run
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    const NAME: [&str; 7] = ["a", "b", "-", "]", "[", "é", "💉"];
    const PATTERN: [&str; 13] = [
        "a", "b", "é", "💉", "-", "*", "?", "[", "]", "!", "[a-é]", "[!é]", "/",
    ];
    let mut pairs = Vec::new();
    for _ in 0..20_000 {
        let segs = 1 + next(2);
        let mut target = String::new();
        for s in 0..segs {
            if s > 0 {
                target.push('/');
            }
            // half the targets ASCII only
            let alphabet = if next(2) == 0 { &NAME[..] } else { &NAME[..5] };
            for _ in 0..1 + next(5) {
                target.push_str(alphabet[next(alphabet.len())]);
            }
        }
        let mut pattern = String::new();
        if next(2) == 0 {
            // random tokens: mostly no match
            for _ in 0..1 + next(7) {
                pattern.push_str(PATTERN[next(PATTERN.len())]);
            }
        } else {
            // the target with some characters made wildcards or classes: often a match
            for c in target.chars() {
                match (c, next(8)) {
                    ('/', _) => pattern.push('/'),
                    (_, 0) => pattern.push('?'),
                    (_, 1) => pattern.push('*'),
                    (_, 2) => pattern.push_str(&format!("[{c}]")),
                    (_, 3) => pattern.push_str("[!a]"),
                    (_, 4) => pattern.push_str("[a-é]"),
                    _ => pattern.push(c),
                }
            }
        }
        pairs.push((pattern, target));
    }
    let script = r#"
import json, sys
from tuf.api.metadata import DelegatedRole
pairs = json.load(sys.stdin)
json.dump([DelegatedRole._is_target_in_pathpattern(t, p) for p, t in pairs], sys.stdout)
"#;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(&pairs).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), pairs.len());
    let mut differ = Vec::new();
    let (mut ascii, mut untold) = (0, 0);
    for ((p, t), want) in pairs.iter().zip(&want) {
        let lit = serde_json::to_string(p).unwrap();
        let hale_core::json::Value::Str(js) = hale_core::json::parse(lit.as_bytes()).unwrap()
        else {
            panic!("{lit}")
        };
        let got = hale_core::metadata::path_matches(&js, t);
        if t.is_ascii() {
            ascii += 1;
        }
        match (got, *want) {
            (Some(g), w) if g == w => {}
            // `?` or a class met a non-ASCII character, and nothing matched
            (None, _) if !t.is_ascii() => untold += 1,
            _ => differ.push(format!(
                "{p:?} vs {t:?}: python-tuf {want}, hale-core {got:?}"
            )),
        }
    }
    let matched = want.iter().filter(|w| **w).count();
    assert!(
        matched > 4_000,
        "too few matching pairs to mean much: {matched}"
    );
    assert!(ascii > 4_000, "too few ASCII targets: {ascii}");
    // most non-ASCII targets are still told
    let non_ascii = pairs.len() - ascii;
    assert!(
        untold < non_ascii / 2,
        "{untold} of {non_ascii} non-ASCII targets not told"
    );
    eprintln!("{untold} of {non_ascii} pairs with a non-ASCII target not told");
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ[..differ.len().min(20)].join("\n")
    );
}
