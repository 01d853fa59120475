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

/// A published repository with TARGET (from build/fw-2.0.0.bin) added to a staged targets, with
/// `policy` options after `--name`; targets is left staged and unsigned.
fn repo_staging_target(policy: &[&str]) -> Env {
    let e = Env::new();
    e.published_repo();
    e.write("build/fw-2.0.0.bin", b"pump firmware 2.0.0");
    let add = [
        "target",
        "add",
        "repo",
        "--file",
        "build/fw-2.0.0.bin",
        "--name",
        TARGET,
    ];
    e.ok(&[&add[..], policy].concat());
    e
}

/// A published repository listing TARGET, whose targets delegates to a 2-of-2 rollback role
/// (field-a: ed25519, field-b: ecdsa).
fn repo_with_rollback_role() -> Env {
    let e = repo_staging_target(&[
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
    let delegate = [
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
    ];
    // the rollback role takes no paths; refusing paths keeps it from ever signing targets
    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
    let r = e.run(&[&delegate[..], &["--paths", "pump-a/*"]].concat());
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: --to rollback: the rollback role is delegated by top-level targets with no \
             --paths (it can never sign targets)"
        )
    );
    assert_eq!(
        snapshot_tree(&e.path("repo/staged")),
        staged,
        "nothing staged"
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), published);
    // two keys and no threshold: said, not taken as 1 (one technician alone could authorize)
    let r = e.run(&delegate[..delegate.len() - 2]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: rollback: 2 keys and no --threshold: say how many of them must sign \
             (--threshold K; --threshold 1 lets any one key holder sign for rollback alone)"
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged);
    e.ok(&delegate);
    e.sign("repo/staged/targets.json", "targets");
    e.sign("repo/staged/rollback.json", "field-a");
    e.sign("repo/staged/rollback.json", "field-b");
    e.publish();
    e
}

/// The arguments of `rollback authorize` of TARGET for `whom` (`--device ID`, `--group G`, or
/// nothing), reason "x", one hour, signed with field-a.key into auth.json.
fn authorize_args<'a>(whom: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["rollback", "authorize", "repo"];
    args.extend_from_slice(whom);
    args.extend_from_slice(&[
        "--target",
        TARGET,
        "--reason",
        "x",
        "--expires-in",
        "1h",
        "--key",
        "field-a.key",
        "--out",
        "auth.json",
    ]);
    args
}

/// `rollback authorize` with [`authorize_args`]. Does not check the exit status.
fn authorize_whom(e: &Env, whom: &[&str]) -> Run {
    e.run(&authorize_args(whom))
}

/// `rollback authorize` for device pump-a-000123 (fixed reason, installed 2.1.0) with `extra`
/// options appended; writes auth.json on success. Does not check the exit status.
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

/// `authorize` with `--target TARGET --expires-in EXPIRES_IN --key KEY_FILE`, the usual options.
fn authorize_for(e: &Env, target: &str, expires_in: &str, key_file: &str) -> Run {
    authorize(
        e,
        &[
            "--target",
            target,
            "--expires-in",
            expires_in,
            "--key",
            key_file,
        ],
    )
}

/// `rollback sign repo auth.json --key KEY_FILE` (passphrase from the environment), for `Env::run`
/// or `Env::ok`; on success the signature is added to auth.json in place.
fn rollback_sign_args(key_file: &str) -> [&str; 8] {
    [
        "rollback",
        "sign",
        "repo",
        "auth.json",
        "--key",
        key_file,
        "--passphrase-env",
        PW_ENV,
    ]
}

/// `bundle repo --target TARGET`, then `extra` options, then `--out b.bin`, for `Env::run` or
/// `Env::ok`; on success the bundle is written to b.bin.
fn bundle_args<'a>(target: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [
        &["bundle", "repo", "--target", target][..],
        extra,
        &["--out", "b.bin"],
    ]
    .concat()
}

/// Asserts that `r` was refused (exit 2) with exactly `error` as its stderr and that `not_written`
/// (a name in the temporary directory) does not exist.
#[track_caller]
fn assert_refused(e: &Env, r: &Run, error: &str, not_written: &str) {
    assert_eq!((r.code, r.stderr.trim_end()), (2, error));
    assert!(!e.path(not_written).exists(), "{not_written} was written");
}

#[test]
fn two_signers_authorize_a_rollback_and_a_bundle_carries_it() {
    let e = repo_with_rollback_role();
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
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
    let b = e.run(&bundle_args(TARGET, &["--authorization", "auth.json"]));
    assert_refused(
        &e,
        &b,
        "error: auth.json: rollback authorization refused: rollback: 1 valid signatures from distinct \
         authorized keys, threshold is 2",
        "b.bin",
    );

    // the second signer, on their own machine, adds a signature to the same file
    let r = e.ok(&rollback_sign_args("field-b.key"));
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

    e.ok(&bundle_args(TARGET, &["--authorization", "auth.json"]));
    // the co-signed authorization and the bundle are never written over unasked: the second
    // signature could not be got back
    let (auth_before, bundle_before) = (
        std::fs::read(e.path("auth.json")).unwrap(),
        std::fs::read(e.path("b.bin")).unwrap(),
    );
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        "error: auth.json: exists (use --force to overwrite)"
    );
    let r = e.run(&bundle_args(TARGET, &["--authorization", "auth.json"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        "error: b.bin: exists (use --force to overwrite)"
    );
    assert_eq!(std::fs::read(e.path("auth.json")).unwrap(), auth_before);
    assert_eq!(std::fs::read(e.path("b.bin")).unwrap(), bundle_before);
    e.ok(&bundle_args(
        TARGET,
        &["--authorization", "auth.json", "--force"],
    ));
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
    let r = authorize_for(&e, TARGET, "2d", "field-a.key");
    assert_refused(
        &e,
        &r,
        "error: --expires-in 2d: 172800 s is longer than the maximum validity of 86400 s (devices \
         refuse it)",
        "auth.json",
    );
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
    assert_refused(
        &e,
        &r,
        "error: --expires-in 8h: 28800 s is longer than the maximum validity of 3600 s (devices \
         refuse it)",
        "auth.json",
    );
    // a maximum above the devices' own would let through what every device refuses
    let r = authorize(
        &e,
        &[
            "--target",
            TARGET,
            "--expires-in",
            "2d",
            "--max-validity",
            "1000d",
            "--key",
            "field-a.key",
        ],
    );
    assert_refused(
        &e,
        &r,
        "error: --max-validity 1000d: 86400000 s is longer than devices accept (86400 s): it may \
         only lower that",
        "auth.json",
    );

    // the second signer's stricter policy: terms past it are refused before a passphrase is
    // asked for, and nothing is written (the signature used to be written first: a complete
    // authorization on disk that devices accept, and an error)
    e.ok(&[
        "rollback",
        "authorize",
        "repo",
        "--device",
        "pump-a-000123",
        "--reason",
        "x",
        "--installed",
        "2.1.0",
        "--passphrase-env",
        PW_ENV,
        "--out",
        "auth.json",
        "--target",
        TARGET,
        "--expires-in",
        "20h",
        "--key",
        "field-a.key",
    ]);
    let before = std::fs::read(e.path("auth.json")).unwrap();
    let mut args = rollback_sign_args("field-b.key").to_vec();
    args.extend_from_slice(&["--max-validity", "8h"]);
    // no passphrase: none is asked for
    args.retain(|a| *a != "--passphrase-env" && *a != PW_ENV);
    let r = e.run(&args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        "error: auth.json: hale-core refuses its terms (nothing signed, nothing written): \
         rollback authorization valid for 72000 s, more than the 28800 s allowed"
    );
    assert_eq!(std::fs::read(e.path("auth.json")).unwrap(), before);
    // within it, the co-signature goes on
    e.ok(&rollback_sign_args("field-b.key"));
}

/// Releases pushed to hale-server: `repository/` holds their targets, and the server signs
/// their snapshot and timestamp. An authorization for such a release, read from the local
/// repository (whose snapshot lists the older targets), says to read from the server (review:
/// "not in the repository", though the file was there).
#[test]
fn a_target_pushed_to_a_server_names_from_server() {
    let e = repo_with_rollback_role();
    e.write("build/fw-2.1.0.bin", b"pump firmware 2.1.0");
    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "build/fw-2.1.0.bin",
        "--name",
        "pump-a/fw-2.1.0.bin",
        "--model",
        "pump-a",
        "--revisions",
        "r2",
        "--version",
        "2.1.0",
        "--security-counter",
        "3",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    // what `push` does once the server took it: the staged targets moves into repository/
    let v = e.json("repo/staged/targets.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    std::fs::rename(
        e.path("repo/staged/targets.json"),
        e.path(&format!("repo/repository/{v}.targets.json")),
    )
    .unwrap();
    let r = authorize_for(&e, "pump-a/fw-2.1.0.bin", "8h", "field-a.key");
    assert_refused(
        &e,
        &r,
        &format!(
            "error: pump-a/fw-2.1.0.bin in the published repository of repo (repository/ holds \
             targets v{v}, newer than the v{} its own snapshot lists: releases pushed to \
             hale-server are listed in the server's snapshot; give --from-server URL): target \
             pump-a/fw-2.1.0.bin is not in the repository",
            v - 1
        ),
        "auth.json",
    );
    // verify reports what the directory's own snapshot lists, and says the push is not in it
    let r = e.ok(&["verify", "repo", "--root", "repo/repository/1.root.json"]);
    assert!(
        r.stdout.contains(&format!("targets    v{}\n", v - 1)),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "note: repo/repository also holds targets v{v}, newer than the v{} verified above: \
             releases pushed to hale-server are listed in the server's snapshot, and what the \
             pumps get is what it serves",
            v - 1
        )
    );
}

#[test]
fn refuses_a_target_not_in_the_repository_and_a_key_outside_the_role() {
    let e = repo_with_rollback_role();
    let r = authorize_for(&e, "pump-a/fw-9.9.9.bin", "8h", "field-a.key");
    assert_refused(
        &e,
        &r,
        "error: pump-a/fw-9.9.9.bin in the published repository of repo: target \
         pump-a/fw-9.9.9.bin is not in the repository",
        "auth.json",
    );

    let r = authorize_for(&e, TARGET, "8h", "targets.key");
    assert_refused(
        &e,
        &r,
        &format!(
            "error: targets.key: key {} is not a key of the rollback role (nothing written)",
            e.keyid("targets")
        ),
        "auth.json",
    );

    // adding a signature with a foreign key leaves the file byte-for-byte unchanged
    authorize_for(&e, TARGET, "8h", "field-a.key");
    let before = std::fs::read(e.path("auth.json")).unwrap();
    let r = e.run(&rollback_sign_args("targets.key"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            format!(
                "error: targets.key: key {} is not a key of the rollback role (nothing written)",
                e.keyid("targets")
            )
            .as_str()
        )
    );
    assert_eq!(std::fs::read(e.path("auth.json")).unwrap(), before);
}

#[test]
fn refuses_an_authorization_without_a_rollback_role() {
    let e = repo_staging_target(&[]);
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    e.key("field-a", "ed25519");
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_refused(
        &e,
        &r,
        "error: the published targets delegates to no `rollback` role: create it with `hale-sign \
         delegate DIR --to rollback --key A.pub --key B.pub --threshold 2`, sign and publish",
        "auth.json",
    );
}

#[test]
fn a_bundle_from_an_older_root_carries_the_root_chain_and_refuses_unknown_targets() {
    let e = repo_with_rollback_role();
    let r = e.run(&bundle_args("pump-a/none.bin", &[]));
    assert_refused(
        &e,
        &r,
        "error: resolving pump-a/none.bin in repo: target pump-a/none.bin is not in the repository",
        "b.bin",
    );
    let r = e.run(&bundle_args(TARGET, &["--from-root-version", "7"]));
    assert_refused(
        &e,
        &r,
        "error: repo/repository/7.root.json: no published root v7: No such file or directory (os \
         error 2)",
        "b.bin",
    );
}

#[test]
fn the_second_signer_sees_what_they_sign_and_never_signs_what_the_first_did_not() {
    let e = repo_with_rollback_role();
    assert_eq!(authorize_for(&e, TARGET, "8h", "field-a.key").code, 0);
    let signed = std::fs::read(e.path("auth.json")).unwrap();

    // the content changed after the first signature: refused, the file as it was
    let mut doc = e.json("auth.json");
    doc["signed"]["reason"] = "routine".into();
    let tampered = serde_json::to_vec(&doc).unwrap();
    e.write("auth.json", &tampered);
    let r = e.run(&rollback_sign_args("field-b.key"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            &*format!(
                "error: auth.json: the signature of {} does not verify over this content (changed \
                 after it was signed?); refusing to add one (nothing written)",
                e.keyid("field-a")
            )
        )
    );
    assert_eq!(std::fs::read(e.path("auth.json")).unwrap(), tampered);

    // the untouched file: its terms are shown before the signature is added
    e.write("auth.json", &signed);
    let r = e.ok(&rollback_sign_args("field-b.key"));
    let terms = r.stdout.lines().next().unwrap();
    assert!(
        terms.starts_with(&format!(
            "rollback authorization: target {TARGET}; for devices [\"pump-a-000123\"]; \
             while running 2.1.0; reason \"INC-4711: occlusion alarm regression in 2.1.0\"; issued "
        )),
        "{terms}"
    );
    assert!(
        r.stdout.contains("complete: verified by hale-core"),
        "{}",
        r.stdout
    );
}

#[test]
fn an_authorization_naming_no_device_and_no_group_is_refused_naming_both() {
    let e = repo_with_rollback_role();
    let r = authorize_whom(&e, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(
            "the following required arguments were not provided:\n  <--device <ID>|--group <G>>"
        ),
        "{}",
        r.stderr
    );
    assert!(!e.path("auth.json").exists());
}

#[test]
fn a_bundle_from_root_version_zero_is_refused_before_anything_is_read() {
    let e = repo_with_rollback_role();
    let r = e.run(&bundle_args(TARGET, &["--from-root-version", "0"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with("error: invalid value '0' for '--from-root-version <N>': 0 is not in 1.."),
        "{}",
        r.stderr
    );
    assert!(!e.path("b.bin").exists());
}

/// `rollback authorize` for device pump-a-000123, TARGET, one hour, key field-a, with `reason`.
fn authorize_with_reason(e: &Env, reason: &str) -> Run {
    e.run(&[
        "rollback",
        "authorize",
        "repo",
        "--device",
        "pump-a-000123",
        "--target",
        TARGET,
        "--reason",
        reason,
        "--expires-in",
        "1h",
        "--key",
        "field-a.key",
        "--passphrase-env",
        PW_ENV,
        "--out",
        "auth.json",
    ])
}

/// The reason goes to hale-server with the device's report and into its audit log, which
/// takes one line of at most 512 bytes: a longer one, a line break (or line separator), a
/// bidirectional control or an empty one is refused before anything is signed.
#[test]
fn an_authorization_reason_the_server_would_refuse_is_refused() {
    let e = repo_with_rollback_role();
    let long = "x".repeat(513);
    for reason in [
        "INC-4711\nsecond line",
        &long,
        " ",
        "tab\there",
        "INC-4711\u{2028}second line",
        "INC-\u{202E}1174",
    ] {
        let r = authorize_with_reason(&e, reason);
        assert_refused(
            &e,
            &r,
            "error: --reason: 1 to 512 bytes on one line, no control or format characters (devices report it and hale-server audits it)",
            "auth.json",
        );
    }
}

/// A reason of exactly 512 bytes (two-byte characters) is signed as it is.
#[test]
fn an_authorization_reason_of_512_bytes_is_signed() {
    let e = repo_with_rollback_role();
    let reason = "é".repeat(256);
    let r = authorize_with_reason(&e, &reason);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.path("auth.json")).unwrap()).unwrap();
    assert_eq!(doc["signed"]["reason"], reason.as_str());
}

/// `rollback sign` refuses to add a signature to an authorization whose reason hale-server
/// would refuse (made by another tool, or by a hale-sign before the check), before any key.
#[test]
fn a_second_signature_is_refused_for_a_reason_the_server_would_refuse() {
    let e = repo_with_rollback_role();
    let r = authorize_for(&e, TARGET, "1h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(e.path("auth.json")).unwrap();
    let bad = text.replace(
        "INC-4711: occlusion alarm regression in 2.1.0",
        "INC-4711\\nsecond line",
    );
    assert_ne!(bad, text);
    std::fs::write(e.path("auth.json"), &bad).unwrap();
    let r = e.run(&rollback_sign_args("field-b.key"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: auth.json: its reason must be 1 to 512 bytes on one line, no control or format characters (devices report it and hale-server audits it); refusing to sign it (nothing written)"
        )
    );
    assert_eq!(std::fs::read_to_string(e.path("auth.json")).unwrap(), bad);
    // `status` still says who signed (the signature no longer verifies: the content changed),
    // with a warning about the reason
    let r = e.run(&["rollback", "status", "repo", "auth.json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: auth.json: its reason is not 1 to 512 bytes on one line, no control or format characters (devices report it and hale-server audits it); a device reports it cut to fit"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .starts_with("auth.json: 0 of 2 required signatures from the rollback role\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("INVALID signature"), "{}", r.stdout);
}

/// A device named in `devices` or in `group` takes an authorization: a co-signer reads the two
/// as either one, not both (review: "devices X; group Y" read as a device of Y named X).
#[test]
fn the_second_signer_reads_devices_and_group_as_either_one() {
    let e = repo_with_rollback_role();
    let r = authorize(
        &e,
        &[
            "--group",
            "ward-7",
            "--target",
            TARGET,
            "--expires-in",
            "8h",
            "--key",
            "field-a.key",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = e.ok(&rollback_sign_args("field-b.key"));
    let terms = r.stdout.lines().next().unwrap();
    assert!(
        terms.starts_with(&format!(
            "rollback authorization: target {TARGET}; for devices [\"pump-a-000123\"] and any \
             device of group ward-7; while running 2.1.0;"
        )),
        "{terms}"
    );
}

#[test]
fn an_authorization_naming_an_empty_device_or_group_is_refused() {
    let e = repo_with_rollback_role();
    for whom in [["--device", ""], ["--group", " "]] {
        let r = authorize_whom(&e, &whom);
        assert_refused(
            &e,
            &r,
            "error: --device and --group name a device or a group: not empty",
            "auth.json",
        );
    }
}

#[test]
fn the_rollback_roles_keys_are_refused_for_any_other_role_and_nothing_is_staged() {
    let e = repo_with_rollback_role();
    e.key("firmware", "ed25519");
    let (field_a, targets) = (e.keyid("field-a"), e.keyid("targets"));
    let refusal = |delegator: &str, role: &str, keyid: &str| {
        format!(
            "error: {delegator}: {role} lists the rollback role's key {keyid}: the keys that sign \
             rollback authorizations sign nothing else (delegated paths or one of root's roles, \
             they would sign what devices install or trust)"
        )
    };
    let delegate_firmware = [
        "delegate",
        "repo",
        "--to",
        "firmware",
        "--paths",
        "pump-a/*",
        "--key",
        "firmware.pub",
    ];
    let rotate_adding = |role: &'static str, key: &'static str| {
        ["rotate", "repo", "--role", role, "--add-key", key]
    };
    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
    let refused = |args: &[&str], expected: &str| {
        let r = e.run(args);
        assert_eq!((r.code, r.stderr.trim_end()), (2, expected), "{args:?}");
        assert_eq!(
            snapshot_tree(&e.path("repo/staged")),
            staged,
            "{args:?}: staged"
        );
        assert_eq!(snapshot_tree(&e.path("repo/repository")), published);
    };
    // a firmware role holding a technician's key beside its own
    refused(
        &[
            &delegate_firmware[..],
            &["--key", "field-a.pub", "--threshold", "1"],
        ]
        .concat(),
        &refusal("targets", "firmware", &field_a),
    );
    // root's targets role given a technician's key
    refused(
        &rotate_adding("targets", "field-a.pub"),
        &refusal("root", "targets", &field_a),
    );
    // the rollback role given the targets key
    refused(
        &rotate_adding("rollback", "targets.pub"),
        &refusal("root", "targets", &targets),
    );
    // kept apart: staged
    e.ok(&delegate_firmware);
    // then the rollback role given the firmware key: the staged delegation shares it
    let r = e.run(&rotate_adding("rollback", "firmware.pub"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            refusal("targets", "firmware", &e.keyid("firmware")).as_str()
        )
    );
}

/// `bundle` only reads the working directory (it writes --out): it is made while another command
/// holds the directory's lock (a signer at a passphrase prompt, a publish). Before, it took the
/// lock and was refused as "another hale-sign command is changing this working directory". It is
/// still refused while a publish is interrupted (the repository holds part of one), writing
/// nothing. The first part fails on the old code.
#[test]
fn a_bundle_is_made_while_another_command_holds_the_directory_not_during_an_interrupted_publish() {
    let e = Env::new();
    e.signed_release();
    e.publish();
    let lock = e.hold_lock();
    let before = snapshot_tree(&e.path("repo"));
    let r = e.run(&bundle_args("fw.bin", &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("wrote b.bin ("), "{}", r.stdout);
    let bundle = std::fs::read(e.path("b.bin")).unwrap();
    let parsed = Bundle::parse(&bundle).unwrap();
    assert!(
        parsed.iter().any(|(_, bytes)| bytes == b"firmware"),
        "the image"
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before, "DIR only read");
    fs2::FileExt::unlock(&lock).unwrap();
    std::fs::remove_file(e.path("b.bin")).unwrap();

    // a publish interrupted: refused, nothing written
    e.write("fw3.bin", b"firmware 3");
    e.ok(&["target", "add", "repo", "--file", "fw3.bin"]);
    e.sign("repo/staged/targets.json", "targets");
    e.crash_publish("metadata");
    let r = e.run(&bundle_args("fw.bin", &[]));
    assert_refused(
        &e,
        &r,
        "error: repo: a publish was interrupted (repo/publishing.json is there) and the \
         repository holds part of it: run `hale-sign publish repo` to finish the interrupted \
         publish, then this again; nothing done",
        "b.bin",
    );
    // finished, the bundle is made again
    e.ok(&["publish", "repo"]);
    e.ok(&bundle_args("fw3.bin", &[]));
}

/// The refusal of every command but `publish` while a publish of `repo` is interrupted.
const INTERRUPTED: &str = "error: repo: a publish was interrupted (repo/publishing.json is there) \
     and the repository holds part of it: run `hale-sign publish repo` to finish the interrupted \
     publish, then this again; nothing done";

/// `rollback authorize` and `rollback sign` only read the working directory (its hale-repo.json
/// and published repository/; they write --out and FILE): they work while another command holds
/// the directory's lock, and DIR stays byte for byte as it was. Before, they took the lock and
/// were refused as "another hale-sign command is changing this working directory". They are
/// still refused while a publish is interrupted (the repository holds part of one), writing
/// nothing. The first part fails on the old code.
#[test]
fn rollback_authorize_and_sign_work_while_another_command_holds_the_directory_not_during_an_interrupted_publish(
) {
    let e = repo_with_rollback_role();
    let lock = e.hold_lock();
    let before = snapshot_tree(&e.path("repo"));
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("1 of 2 required signatures"),
        "{}",
        r.stdout
    );
    let r = e.ok(&rollback_sign_args("field-b.key"));
    assert!(
        r.stdout.contains("complete: verified by hale-core"),
        "{}",
        r.stdout
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before, "DIR only read");
    drop(lock);

    // a publish interrupted: refused, nothing written
    std::fs::rename(e.path("auth.json"), e.path("complete.json")).unwrap();
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::rename(e.path("auth.json"), e.path("pending.json")).unwrap();
    e.write("fw3.bin", b"firmware 3");
    e.ok(&["target", "add", "repo", "--file", "fw3.bin"]);
    e.sign("repo/staged/targets.json", "targets");
    e.crash_publish("metadata");
    let before = snapshot_tree(&e.path("repo"));
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_refused(&e, &r, INTERRUPTED, "auth.json");
    let pending = std::fs::read(e.path("pending.json")).unwrap();
    let sign_pending = [
        "rollback",
        "sign",
        "repo",
        "pending.json",
        "--key",
        "field-b.key",
        "--passphrase-env",
        PW_ENV,
    ];
    let r = e.run(&sign_pending);
    assert_eq!((r.code, r.stderr.trim_end()), (2, INTERRUPTED));
    e.unchanged("pending.json", &pending, "refused");
    assert_eq!(snapshot_tree(&e.path("repo")), before, "DIR unchanged");
    // finished, both work again
    e.ok(&["publish", "repo"]);
    let r = e.ok(&sign_pending);
    assert!(
        r.stdout.contains("complete: verified by hale-core"),
        "{}",
        r.stdout
    );
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// Run hale-sign with `args` in `e`, its passphrase read from the named pipe `fifo`; then run
/// `meanwhile` once it waits there (it has read what it signs), then give it the passphrase.
fn with_passphrase_held(
    e: &Env,
    args: &[&str],
    fifo: &str,
    meanwhile: impl FnOnce(),
) -> std::process::Output {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let status = std::process::Command::new("mkfifo")
        .arg(e.path(fifo))
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hale-sign"))
        .args(args)
        .args(["--passphrase-file", fifo])
        .current_dir(e.tmp.path())
        .env("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N", "10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // opened without waiting (O_NONBLOCK, Linux) until the command opens it to read: a command
    // that ends before then fails the test instead of hanging it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut pipe = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000)
            .open(e.path(fifo))
        {
            Ok(f) => break f,
            Err(_) if std::time::Instant::now() < deadline => {
                if let Some(status) = child.try_wait().unwrap() {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "{args:?} ended ({status}) before asking for its passphrase: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(err) => panic!("{args:?} never read its passphrase: {err}"),
        }
    };
    meanwhile();
    pipe.write_all(format!("{PW}\n").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// `rollback sign` of auth.json refused because another signer's version (`theirs`) was written
/// while it signed; auth.json is theirs, byte for byte.
fn refused_as_changed_meanwhile(e: &Env, out: &std::process::Output, theirs: &[u8]) {
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ),
        (
            Some(2),
            "error: auth.json: changed while this signature was made (another signer added \
             theirs?); refusing to write over it (nothing written): run this again to sign what \
             it holds now"
        )
    );
    e.unchanged("auth.json", theirs, "the other signer's");
}

/// With no lock, two signers of one authorization file may sign it at once: one that waited at
/// its passphrase prompt while the other added a signature refuses to write over it (which would
/// drop that signature), and an `authorize` whose --out another one wrote meanwhile refuses to
/// write over it. Fails on the old code (the second command is refused by the lock).
#[test]
fn a_signature_added_while_a_signer_waits_for_a_passphrase_is_not_written_over() {
    let e = repo_with_rollback_role();
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut theirs = Vec::new();
    let out = with_passphrase_held(
        &e,
        &[
            "rollback",
            "sign",
            "repo",
            "auth.json",
            "--key",
            "field-b.key",
        ],
        "pass-1",
        || {
            e.ok(&rollback_sign_args("field-b.key"));
            theirs = std::fs::read(e.path("auth.json")).unwrap();
        },
    );
    refused_as_changed_meanwhile(&e, &out, &theirs);
    assert_eq!(
        e.json("auth.json")["signatures"].as_array().unwrap().len(),
        2
    );

    std::fs::remove_file(e.path("auth.json")).unwrap();
    let mut theirs = Vec::new();
    let out = with_passphrase_held(
        &e,
        &authorize_args(&["--device", "pump-a-000123"]),
        "pass-2",
        || {
            let r = authorize_for(&e, TARGET, "8h", "field-a.key");
            assert_eq!(r.code, 0, "{}", r.stderr);
            theirs = std::fs::read(e.path("auth.json")).unwrap();
        },
    );
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ),
        (
            Some(2),
            "error: auth.json: exists (use --force to overwrite)"
        )
    );
    e.unchanged("auth.json", &theirs, "the other authorization");
}

/// A signature added between a signer's check that the file is unchanged and its write is not
/// written over either: the check and the write are one step under an flock on the file. Here the
/// test holds that flock while the signer is given its passphrase, writes another signer's version
/// of the file in place, and only then lets go: the signer, which reaches the check while the lock
/// is held, reads the file anew and refuses. Fails on the old code (checked and wrote without
/// waiting, exit 0).
#[test]
fn a_signature_written_while_a_signer_writes_is_not_written_over() {
    let e = repo_with_rollback_role();
    let r = authorize_for(&e, TARGET, "8h", "field-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // the other signer's version: field-b's signature added to a copy
    let ours = std::fs::read(e.path("auth.json")).unwrap();
    e.ok(&rollback_sign_args("field-b.key"));
    let theirs = std::fs::read(e.path("auth.json")).unwrap();
    std::fs::write(e.path("auth.json"), &ours).unwrap();
    let mut writer = None;
    let out = with_passphrase_held(
        &e,
        &[
            "rollback",
            "sign",
            "repo",
            "auth.json",
            "--key",
            "field-b.key",
        ],
        "pass-3",
        || {
            let held = std::fs::File::open(e.path("auth.json")).unwrap();
            fs2::FileExt::lock_exclusive(&held).unwrap();
            let (path, theirs) = (e.path("auth.json"), theirs.clone());
            writer = Some(std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(3));
                std::fs::write(path, theirs).unwrap();
                drop(held);
            }));
        },
    );
    writer.unwrap().join().unwrap();
    refused_as_changed_meanwhile(&e, &out, &theirs);
}
