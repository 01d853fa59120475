//! `publish` verifies before it writes: a publish that hale-core refuses for any reason (a root
//! under which the served targets fail, a delegated role that fails under its new delegator, a
//! target whose file does not match its hashes) never creates or changes a file of the working
//! directory — not even for the moment of the check, nor when the process is killed there. A
//! file written and undone would have been served for that moment, and a root that was visible
//! once can be fetched and kept by a device (a published root version can never be replaced).
//!
//! "Never written" is observed, not inferred from equal bytes: every file and directory keeps its
//! inode and its modification and change times, which a write that is undone does not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{publish_args, snapshot_tree, Env, PW, PW_ENV};

/// What a write changes about one entry of a directory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    inode: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// A file's bytes (`None`: a directory).
    bytes: Option<Vec<u8>>,
}

/// Every file and directory under `dir` (and `dir` itself), as [`Seen`].
fn observe(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let bytes = m.is_file().then(|| std::fs::read(p).unwrap());
        out.insert(
            p.to_path_buf(),
            Seen {
                inode: m.ino(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                bytes,
            },
        );
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Assert that nothing under the observed tree was created, removed, written or put back.
fn assert_untouched(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>, what: &str) {
    let mut changes = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => changes.push(format!("removed {}", p.display())),
            Some(a) if a.bytes != b.bytes => changes.push(format!("{}: bytes", p.display())),
            Some(a) if a.inode != b.inode => {
                changes.push(format!("{}: written again (new inode)", p.display()))
            }
            Some(a) if a != b => changes.push(format!(
                "{}: modified or its entries changed (mtime/ctime)",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        changes.push(format!("created {}", p.display()));
    }
    assert!(
        changes.is_empty(),
        "{what}: the working directory was touched:\n  {}",
        changes.join("\n  ")
    );
}

/// `publish repo` with the test-only crash hook set at `point` (`HALE_SIGN_TEST_CRASH_AFTER`): its
/// exit code (`None`: killed there) and its stderr.
fn publish_killed_at(e: &Env, point: &str) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hale-sign"))
        .args(publish_args("repo"))
        .current_dir(e.tmp.path())
        .env(PW_ENV, PW)
        .env("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N", "10")
        .env("HALE_SIGN_TEST_CRASH_AFTER", point)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `publish repo` is refused with `refusal` (exit 2) and touches nothing in `repo/`, also when
/// killed where it verifies (`verified`); where the publish of before was killed with its files
/// written and not yet verified (`written`) it never gets: it is refused the same way. Then the
/// repository still verifies from root v1, as it was.
fn refused_before_anything_is_written(e: &Env, refusal: &str) {
    let repo = e.path("repo");
    let before = observe(&repo);
    let verified_before = e.verify();
    assert_eq!(verified_before.code, 0, "{}", verified_before.stderr);

    let r = e.run(&publish_args("repo"));
    assert_eq!((r.code, r.stderr.trim_end()), (2, refusal));
    assert_untouched(&before, &observe(&repo), "refused");

    let (code, _) = publish_killed_at(e, "verified");
    assert_eq!(code, None, "killed where it verifies");
    assert_untouched(&before, &observe(&repo), "killed at verified");
    let (code, stderr) = publish_killed_at(e, "written");
    assert_eq!(
        (code, stderr.trim_end()),
        (Some(2), refusal),
        "never written"
    );
    assert_untouched(&before, &observe(&repo), "written");
    assert!(!e.path("repo/publishing.json").exists());
    // the same report, but for the time of the check on its first line
    let report = |stdout: &str| stdout.lines().skip(1).collect::<Vec<_>>().join("\n");
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert_eq!(report(&v.stdout), report(&verified_before.stdout));
}

/// A root v2 that rotates the targets key, published without the targets re-signed: the served
/// targets v1 fails under it. The threshold checks pass (nothing staged is short of a
/// signature); hale-core's client workflow refuses. Before, root v2 was written (`2.root.json`,
/// `root.json`) and taken back after the check — served for that moment, and left served with
/// the journal by a kill in between.
#[test]
fn a_root_under_which_the_served_targets_fail_is_refused_before_anything_is_written() {
    let e = Env::new();
    e.published_repo();
    e.key("targets-2", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
        "--remove-key",
        "targets.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    // the engineer throws away the targets v2 that rotate staged for the new key
    std::fs::remove_file(e.path("repo/staged/targets.json")).unwrap();
    refused_before_anything_is_written(
        &e,
        "error: refusing to publish repo: 1.targets.json: targets: 0 valid signatures from \
         distinct authorized keys, threshold is 1 (repository unchanged; staged files kept)",
    );
    assert!(!e.path("repo/repository/2.root.json").exists());
}

/// Targets v3 re-delegates pump-a to a new key; the pump-a v2 that rotate staged for it is thrown
/// away, so the served pump-a v1 (signed by the old key) fails under its new delegator.
#[test]
fn a_delegated_role_that_fails_under_its_new_delegator_is_refused_before_anything_is_written() {
    let e = Env::new();
    e.published_repo();
    e.key("pump-a", "ed25519");
    e.key("pump-a-2", "ed25519");
    e.ok(&[
        "delegate",
        "repo",
        "--to",
        "pump-a",
        "--key",
        "pump-a.pub",
        "--paths",
        "pump-a/*",
    ]);
    e.sign("repo/staged/pump-a.json", "pump-a");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "pump-a",
        "--add-key",
        "pump-a-2.pub",
        "--remove-key",
        "pump-a.pub",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    std::fs::remove_file(e.path("repo/staged/pump-a.json")).unwrap();
    refused_before_anything_is_written(
        &e,
        "error: refusing to publish repo: 1.pump-a.json (delegated by targets): pump-a: 0 valid \
         signatures from distinct authorized keys, threshold is 1 (repository unchanged; staged \
         files kept)",
    );
    assert!(!e.path("repo/repository/3.targets.json").exists());
}

/// A release whose firmware file in `repository/targets/` no longer matches the hashes the signed
/// targets v2 lists (changed on disk after `target add`).
#[test]
fn a_target_whose_file_does_not_match_its_hashes_is_refused_before_anything_is_written() {
    let e = Env::new();
    e.signed_release();
    let files: Vec<PathBuf> = snapshot_tree(&e.path("repo/repository/targets"))
        .into_keys()
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with(".fw.bin"), "{name}");
    std::fs::write(&files[0], b"firmwarE").unwrap();
    refused_before_anything_is_written(
        &e,
        &format!(
            "error: refusing to publish repo: target fw.bin (repo/repository/targets/{name}): \
             fw.bin: sha256 hash does not match (repository unchanged; staged files kept)"
        ),
    );
    assert!(!e.path("repo/repository/2.targets.json").exists());
}

/// A publish that would pass, killed once its verification is done: nothing is written yet, so
/// the working directory is as it was (no journal either, nothing for the next publish to undo),
/// and the next publish goes out as if the first had never run.
#[test]
fn a_publish_killed_at_its_verification_leaves_the_working_directory_untouched() {
    let e = Env::new();
    e.signed_release();
    let repo = e.path("repo");
    let before = observe(&repo);
    let (code, _) = publish_killed_at(&e, "verified");
    assert_eq!(code, None, "killed where it verifies");
    assert_untouched(&before, &observe(&repo), "killed at verified");
    let st = e.run(&["status", "repo"]);
    assert!(
        !st.stdout.contains("a publish was interrupted"),
        "{}",
        st.stdout
    );
    let r = e.publish();
    assert!(
        !r.stderr.contains("a publish was interrupted"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .starts_with("published targets v2, snapshot v2 (1 roles), timestamp v2 into "),
        "{}",
        r.stdout
    );
    assert!(!e.path("repo/publishing.json").exists());
    assert_eq!(e.verify().code, 0);
}
