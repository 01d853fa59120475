//! `hale-sign delegate --to rollback`, `rollback authorize|sign|status` and `bundle` with real
//! encrypted key files: threshold signing across two people, refusals that write nothing, and a
//! bundle that hale-core verifies from its own bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hale_core::bundle::{Bundle, AUTHORIZATION};

const TARGET: &str = "pump-a/fw-2.0.0.bin";

/// A published repository listing TARGET, whose targets delegates to a 2-of-2 rollback role
/// (field-a: ed25519, field-b: ecdsa).
fn repo_with_rollback_role() -> Env {
    let e = Env::new();
    e.published_repo();
    e.write("build/fw-2.0.0.bin", b"pump firmware 2.0.0");
    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "build/fw-2.0.0.bin",
        "--name",
        TARGET,
        "--model",
        "pump-a",
        "--revisions",
        "r2",
        "--version",
        "2.0.0",
        "--security-counter",
        "3",
    ]);
    e.key("field-a", "ed25519");
    e.key("field-b", "ecdsa-p256");
    // the rollback role takes no paths; refusing paths keeps it from ever signing targets
    let r = e.run(&[
        "delegate",
        "repo",
        "--to",
        "rollback",
        "--key",
        "field-a.pub",
        "--key",
        "field-b.pub",
        "--threshold",
        "2",
        "--paths",
        "pump-a/*",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no --paths"), "{}", r.stderr);
    e.ok(&[
        "delegate",
        "repo",
        "--to",
        "rollback",
        "--key",
        "field-a.pub",
        "--key",
        "field-b.pub",
        "--threshold",
        "2",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    e.sign("repo/staged/rollback.json", "field-a");
    e.sign("repo/staged/rollback.json", "field-b");
    e.publish();
    e
}

fn authorize(e: &Env, extra: &[&str]) -> Run {
    let mut args = vec![
        "rollback",
        "authorize",
        "repo",
        "--device",
        "pump-a-000123",
        "--reason",
        "INC-4711: occlusion alarm regression in 2.1.0",
        "--installed",
        "2.1.0",
        "--passphrase-env",
        PW_ENV,
        "--out",
        "auth.json",
    ];
    args.extend_from_slice(extra);
    e.run(&args)
}

#[test]
fn two_signers_authorize_a_rollback_and_a_bundle_carries_it() {
    let e = repo_with_rollback_role();
    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("1 of 2 required signatures"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("still to sign: 1 more of"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&e.keyid("field-b")), "{}", r.stdout);
    let st = e.run(&["rollback", "status", "repo", "auth.json"]);
    assert_eq!(st.code, 1, "below threshold: {}", st.stdout);

    // a bundle refuses the half-signed authorization and writes nothing
    let b = e.run(&[
        "bundle",
        "repo",
        "--target",
        TARGET,
        "--authorization",
        "auth.json",
        "--out",
        "b.bin",
    ]);
    assert_eq!(b.code, 2);
    assert!(
        b.stderr
            .contains("rollback authorization refused: rollback: 1 valid signatures from distinct authorized keys, threshold is 2"),
        "{}",
        b.stderr
    );
    assert!(!e.path("b.bin").exists());

    // the second signer, on their own machine, adds a signature to the same file
    let r = e.ok(&[
        "rollback",
        "sign",
        "repo",
        "auth.json",
        "--key",
        "field-b.key",
        "--passphrase-env",
        PW_ENV,
    ]);
    assert!(
        r.stdout.contains("2 of 2 required signatures"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("complete: verified by hale-core"),
        "{}",
        r.stdout
    );
    assert_eq!(e.run(&["rollback", "status", "repo", "auth.json"]).code, 0);
    let doc = e.json("auth.json");
    assert_eq!(doc["signed"]["target"], TARGET);
    assert_eq!(doc["signed"]["devices"][0], "pump-a-000123");
    assert_eq!(doc["signatures"].as_array().unwrap().len(), 2);

    e.ok(&[
        "bundle",
        "repo",
        "--target",
        TARGET,
        "--authorization",
        "auth.json",
        "--out",
        "b.bin",
    ]);
    let bytes = std::fs::read(e.path("b.bin")).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let names: Vec<&str> = bundle.iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"timestamp.json"), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with(".snapshot.json")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".targets.json")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("targets/pump-a/") && n.ends_with(".fw-2.0.0.bin")),
        "{names:?}"
    );
    assert_eq!(
        bundle.authorization(),
        Some(&std::fs::read(e.path("auth.json")).unwrap()[..])
    );
    // no root entries: the device already trusts root v1, the newest
    assert!(
        !names.iter().any(|n| n.ends_with(".root.json")),
        "{names:?}"
    );
    assert!(names.contains(&AUTHORIZATION));
}

#[test]
fn refuses_a_validity_above_the_maximum_and_writes_nothing() {
    let e = repo_with_rollback_role();
    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "2d",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("172800 s is longer than the maximum validity of 86400 s"),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());
    // a stricter configured maximum
    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--max-validity",
            "1h",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("maximum validity of 3600 s"),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());
}

#[test]
fn refuses_a_target_not_in_the_repository_and_a_key_outside_the_role() {
    let e = repo_with_rollback_role();
    let r = authorize(
        &e,
        &[
            "--target",
            "pump-a/fw-9.9.9.bin",
            "--expires-in",
            "8h",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("target pump-a/fw-9.9.9.bin is not in the repository"),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());

    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--key",
            "targets.key",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!(
            "key {} is not a key of the rollback role",
            e.keyid("targets")
        )),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());

    // adding a signature with a foreign key leaves the file byte-for-byte unchanged
    authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--key",
            "field-a.key",
        ],
    );
    let before = std::fs::read(e.path("auth.json")).unwrap();
    let r = e.run(&[
        "rollback",
        "sign",
        "repo",
        "auth.json",
        "--key",
        "targets.key",
        "--passphrase-env",
        PW_ENV,
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(std::fs::read(e.path("auth.json")).unwrap(), before);
}

#[test]
fn refuses_an_authorization_without_a_rollback_role() {
    let e = Env::new();
    e.published_repo();
    e.write("build/fw-2.0.0.bin", b"pump firmware 2.0.0");
    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "build/fw-2.0.0.bin",
        "--name",
        TARGET,
    ]);
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    e.key("field-a", "ed25519");
    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("the published targets delegates to no `rollback` role"),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());
}

#[test]
fn a_bundle_from_an_older_root_carries_the_root_chain_and_refuses_unknown_targets() {
    let e = repo_with_rollback_role();
    let r = e.run(&[
        "bundle",
        "repo",
        "--target",
        "pump-a/none.bin",
        "--out",
        "b.bin",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("target pump-a/none.bin is not in the repository"),
        "{}",
        r.stderr
    );
    assert!(!e.path("b.bin").exists());
    let r = e.run(&[
        "bundle",
        "repo",
        "--target",
        TARGET,
        "--from-root-version",
        "7",
        "--out",
        "b.bin",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no published root v7"), "{}", r.stderr);
    assert!(!e.path("b.bin").exists());
}
