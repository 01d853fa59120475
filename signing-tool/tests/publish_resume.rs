//! A publish interrupted partway through its writes — killed, or stopped by a write that failed —
//! is finished by the next `publish`, never undone: every file its journal (`publishing.json`)
//! lists was verified by hale-core's client workflow before the first write, a device may already
//! hold what was written (a root above all: a root taken back, then published again with other
//! content, forks the fleet), and the rest is what completes it. Before (2026-11-25) the next
//! publish undid it. Each test fails on the old code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{snapshot_tree, Env};

/// The files the journal of `repo` lists, in the order they are written, with their bytes.
fn journal_files(e: &Env) -> Vec<(String, Vec<u8>)> {
    listed_in(&std::fs::read(e.path("repo/publishing.json")).unwrap())
}

/// The files the journal `bytes` lists, in the order they are written, with their bytes.
fn listed_in(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let j: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let file = |f: &serde_json::Value| {
        (
            f["file"].as_str().unwrap().to_string(),
            hex::decode(f["bytes"].as_str().unwrap()).unwrap(),
        )
    };
    let mut out: Vec<_> = j["metadata"].as_array().unwrap().iter().map(file).collect();
    if !j["timestamp"].is_null() {
        out.push(file(&j["timestamp"]));
    }
    out
}

/// `repo/repository/` as it was (`before`) with the journal's files written over it.
fn with_written(
    e: &Env,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    listed: &[(String, Vec<u8>)],
) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut expected = before.clone();
    for (name, bytes) in listed {
        expected.insert(e.path("repo/repository").join(name), bytes.clone());
    }
    expected
}

/// Everything the working directory `repo` holds but its journal: to assert that nothing changed.
fn working_dir(e: &Env) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut t = snapshot_tree(&e.path("repo"));
    t.remove(&e.path("repo/publishing.json"));
    t
}

/// A release (targets v2) killed after its journal, after its metadata batch, and after its last
/// write: each time the next `publish repo` (no keys: nothing else to sign) writes what is
/// missing, byte for byte the files it verified (the staged targets v2 as signed, the snapshot and
/// timestamp it signed), removes the journal and the staged copy, and hale-core accepts the
/// repository. Before, the journal was an undo journal: the next publish took the files back.
/// `hale-sign verify` of the served repository passes and prints `line` (`what` says which
/// check, in a failure's message).
fn verifies_showing(e: &Env, line: &str, what: impl std::fmt::Display) {
    let v = e.verify();
    assert_eq!(v.code, 0, "{what}: {}", v.stderr);
    assert!(v.stdout.contains(line), "{what}: {}", v.stdout);
}

#[test]
fn a_publish_killed_partway_is_finished_with_the_files_it_verified() {
    for (point, already) in [("written", 3), ("metadata", 2), ("journaled", 0)] {
        let e = Env::new();
        e.signed_release();
        let before = snapshot_tree(&e.path("repo/repository"));
        let staged_targets = std::fs::read(e.path("repo/staged/targets.json")).unwrap();
        e.crash_publish(point);
        let killed = snapshot_tree(&e.path("repo/repository"));
        let journal = std::fs::read(e.path("repo/publishing.json")).unwrap();

        let r = e.run(&["publish", "repo"]);
        let now = snapshot_tree(&e.path("repo/repository"));
        // what the killed publish wrote stays
        for (p, bytes) in killed.iter().filter(|(p, b)| before.get(*p) != Some(*b)) {
            assert!(
                now.get(p) == Some(bytes),
                "{point}: {} taken back",
                p.display()
            );
        }
        let listed = listed_in(&journal);
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["2.targets.json", "2.snapshot.json", "timestamp.json"],
            "{point}"
        );
        assert_eq!(listed[0].1, staged_targets, "{point}: targets v2 as signed");
        if point == "journaled" {
            assert_eq!(killed, before, "nothing written yet");
        }
        assert_eq!(r.code, 0, "{point}: {}", r.stderr);
        assert_eq!(
            r.stdout,
            format!(
                "finished the publish that was interrupted: targets v2, snapshot v2, timestamp v2 \
                 into repo/repository ({already} of 3 file(s) were already written; the bytes it \
                 verified before it was interrupted, nothing taken back)\nrepo: nothing else \
                 staged\n"
            ),
            "{point}"
        );
        assert_eq!(
            r.stderr, "repo/staged/targets.json: already published; staged copy removed\n",
            "{point}"
        );
        assert_eq!(
            snapshot_tree(&e.path("repo/repository")),
            with_written(&e, &before, &listed),
            "{point}: repository/ is what it was with the verified files written"
        );
        assert!(!e.path("repo/publishing.json").exists(), "{point}");
        assert!(!e.path("repo/staged/targets.json").exists(), "{point}");
        verifies_showing(
            &e,
            "\n  timestamp  v2\n  snapshot   v2\n  targets    v2\n",
            point,
        );
        // and the directory is a normal one again
        e.write("fw3.bin", b"firmware 3");
        e.ok(&["target", "add", "repo", "--file", "fw3.bin"]);
    }
}

/// Root v2 published, killed after its last write, and killed once its metadata batch
/// (`2.root.json`, `root.json`, the snapshot) was written and before the timestamp: root v2 was
/// served from then on, and a device may hold it. The next publish keeps it and writes what is
/// missing, also when it then fails (here: its passphrase cannot be read); the same command again
/// goes on as a publish with nothing staged (a new snapshot and timestamp). Before, the next
/// publish took root v2 back first, and one that failed after that left it taken back.
#[test]
fn a_root_written_by_a_killed_publish_is_never_taken_back() {
    for (point, already) in [("written", 4), ("metadata", 3)] {
        let e = Env::new();
        e.published_repo();
        e.ok(&["renew", "repo", "--role", "root"]);
        e.sign("repo/staged/root.json", "root-a");
        e.sign("repo/staged/root.json", "root-b");
        let root_v2 = std::fs::read(e.path("repo/staged/root.json")).unwrap();
        e.crash_publish(point);
        e.unchanged("repo/repository/2.root.json", &root_v2, point);
        e.unchanged("repo/repository/root.json", &root_v2, point);
        let before = snapshot_tree(&e.path("repo/repository"));
        let journal = std::fs::read(e.path("repo/publishing.json")).unwrap();

        let r = e.run(&[
            "publish",
            "repo",
            "--snapshot-key",
            "snapshot.key",
            "--timestamp-key",
            "timestamp.key",
            "--passphrase-env",
            "HALE_TEST_NO_SUCH_VARIABLE",
        ]);
        assert_eq!(r.code, 2, "{point}: {}", r.stderr);
        assert!(
            e.path("repo/repository/2.root.json").exists(),
            "{point}: root v2 taken back"
        );
        e.unchanged("repo/repository/2.root.json", &root_v2, point);
        e.unchanged("repo/repository/root.json", &root_v2, point);
        assert_eq!(
            r.stdout,
            format!(
                "finished the publish that was interrupted: root v2, snapshot v2, timestamp v2 \
                 into repo/repository ({already} of 4 file(s) were already written; the bytes it \
                 verified before it was interrupted, nothing taken back)\n"
            ),
            "{point}"
        );
        assert!(
            r.stderr
                .starts_with("repo/staged/root.json: already published; staged copy removed\n"),
            "{point}: {}",
            r.stderr
        );
        assert_eq!(
            snapshot_tree(&e.path("repo/repository")),
            with_written(&e, &before, &listed_in(&journal)),
            "{point}"
        );
        assert!(!e.path("repo/publishing.json").exists(), "{point}");
        assert!(!e.path("repo/staged/root.json").exists(), "{point}");
        verifies_showing(&e, "  root       chain 1 -> 2 ", point);

        // the same command with its keys: a publish with nothing staged
        let r = e.publish();
        assert!(
            r.stdout.starts_with(
                "published snapshot v3 (1 roles), timestamp v3 (nothing staged: signed again) \
                 into repo/repository\n"
            ),
            "{point}: {}",
            r.stdout
        );
        verifies_showing(&e, "  timestamp  v3\n", point);
    }
}

/// A write that fails in the process (here `root.json` cannot be replaced: a directory is in its
/// way, as a full disk would stop the write) after root v2 was written: the publish stops, keeps
/// the journal and says to publish again to finish it; root v2 stays. A finish that fails in turn
/// changes nothing and keeps the journal; once the cause is gone, it finishes. Before, the
/// publish restored the repository (it took the new root back).
#[test]
fn a_write_that_fails_partway_is_finished_by_the_next_publish_not_undone() {
    let e = Env::new();
    e.published_repo();
    e.ok(&["renew", "repo", "--role", "root"]);
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let root_v2 = std::fs::read(e.path("repo/staged/root.json")).unwrap();
    let before = snapshot_tree(&e.path("repo/repository"));
    std::fs::remove_file(e.path("repo/repository/root.json")).unwrap();
    std::fs::create_dir(e.path("repo/repository/root.json")).unwrap();

    let r = e.run(&common::publish_args("repo"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: publishing repo stopped while writing: repo/repository/root.json: Is a \
             directory (os error 21). Nothing taken back: every file it writes was verified \
             before the first write, and repo/publishing.json lists them. Fix the cause (disk \
             space, permissions) and run `hale-sign publish repo` to finish it"
        )
    );
    e.unchanged("repo/repository/2.root.json", &root_v2, "stopped");
    assert!(e.path("repo/publishing.json").exists());
    let listed = journal_files(&e);
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "2.root.json",
            "root.json",
            "2.snapshot.json",
            "timestamp.json"
        ]
    );
    assert!(!e.path("repo/repository/2.snapshot.json").exists());

    // the finish stopped by the same cause: nothing changes, the journal stays
    let stopped = snapshot_tree(&e.path("repo"));
    let r = e.run(&["publish", "repo"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: finishing the interrupted publish of repo failed: repo/repository/root.json: \
             Is a directory (os error 21). Nothing taken back and repo/publishing.json kept: fix \
             the cause (disk space, permissions) and run `hale-sign publish repo` again to \
             finish it"
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo")), stopped, "nothing changed");

    // the cause gone, it finishes
    std::fs::remove_dir(e.path("repo/repository/root.json")).unwrap();
    let r = e.run(&["publish", "repo"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "finished the publish that was interrupted: root v2, snapshot v2, timestamp v2 into \
             repo/repository (1 of 4 file(s) were already written;"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        snapshot_tree(&e.path("repo/repository")),
        with_written(&e, &before, &listed)
    );
    assert!(!e.path("repo/publishing.json").exists());
    assert!(!e.path("repo/staged/root.json").exists());
    verifies_showing(&e, "  root       chain 1 -> 2 ", "");
}

/// The timestamp of a publish killed after its journal expires before the next publish: it is
/// written all the same, with a note (a device refuses an expired timestamp and keeps running the
/// firmware it verified; not writing it would leave half a publish, and undoing it would take back
/// what a device may hold). A publish with the online keys then supersedes it. Before, the next
/// publish undid the interrupted one.
#[test]
fn a_timestamp_that_expired_while_its_publish_was_interrupted_is_written_all_the_same() {
    let e = Env::new();
    e.signed_release();
    let mut config = e.json("repo/hale-repo.json");
    config["expires"]["timestamp"] = serde_json::json!(3);
    e.write(
        "repo/hale-repo.json",
        &serde_json::to_vec_pretty(&config).unwrap(),
    );
    let before = snapshot_tree(&e.path("repo/repository"));
    e.crash_publish("journaled");
    let listed = journal_files(&e);
    let ts: serde_json::Value = serde_json::from_slice(&listed[2].1).unwrap();
    let expires = ts["signed"]["expires"].as_str().unwrap().to_string();
    // past its expiry
    std::thread::sleep(std::time::Duration::from_secs(5));

    let r = e.run(&["publish", "repo"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "finished the publish that was interrupted: targets v2, snapshot v2, timestamp v2 "
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr,
        format!(
            "note: timestamp v2 expired at {expires}, while the publish was interrupted: written \
             all the same (a device refuses it and keeps the firmware it verified; taking it back \
             could take back what a device holds). Devices take no update until a newer one is \
             published\nrepo/staged/targets.json: already published; staged copy removed\n"
        )
    );
    assert_eq!(
        snapshot_tree(&e.path("repo/repository")),
        with_written(&e, &before, &listed)
    );
    assert!(!e.path("repo/publishing.json").exists());
    let v = e.verify();
    assert_eq!(v.code, 2, "expired: {}", v.stdout);
    assert!(v.stderr.contains("expired"), "{}", v.stderr);

    // a timestamp signed again supersedes it
    config["expires"]["timestamp"] = serde_json::json!(86_400);
    e.write(
        "repo/hale-repo.json",
        &serde_json::to_vec_pretty(&config).unwrap(),
    );
    let r = e.publish();
    assert!(
        r.stdout.starts_with(
            "published snapshot v3 (1 roles), timestamp v3 (nothing staged: signed again) into "
        ),
        "{}",
        r.stdout
    );
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
}

/// A journal that is damaged — cut short, a file's bytes changed, a name outside the repository,
/// too large, or the undo journal of an older hale-sign — is refused with what is wrong with it,
/// and nothing is written: its bytes are not written into the served repository, and it is kept.
/// Then the intact journal finishes. Before, the journal was read as an undo journal (and a
/// damaged one could not be told from one of another format).
#[test]
fn a_damaged_journal_is_refused_and_nothing_is_written() {
    let e = Env::new();
    e.signed_release();
    e.crash_publish("journaled");
    let intact = std::fs::read(e.path("repo/publishing.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&intact).unwrap();
    let before = working_dir(&e);
    let damaged = |why: &str| {
        format!(
            "error: repo/publishing.json: damaged ({why}): refusing to finish the interrupted \
             publish from it; nothing written, the journal kept. repo/repository may hold part of \
             that publish: check it against staged/, and remove the journal by hand only once \
             the repository is as it should be"
        )
    };
    let mut flipped = doc.clone();
    let hex = flipped["metadata"][0]["bytes"]
        .as_str()
        .unwrap()
        .to_string();
    let last = if hex.ends_with('0') { "1" } else { "0" };
    flipped["metadata"][0]["bytes"] = serde_json::json!(format!("{}{last}", &hex[..hex.len() - 1]));
    let mut outside = doc.clone();
    outside["metadata"][0]["file"] = serde_json::json!("../hale-repo.json");
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            intact[..20].to_vec(),
            damaged("not JSON: EOF while parsing a string at line 1 column 20"),
        ),
        (
            serde_json::to_vec(&flipped).unwrap(),
            damaged(
                "the bytes of 2.targets.json are not the ones it recorded (their sha256 differs)",
            ),
        ),
        (
            serde_json::to_vec(&outside).unwrap(),
            damaged("\"../hale-repo.json\" is not a metadata file of the repository"),
        ),
        (
            br#"{"files": [{"file": "2.targets.json", "before": null}]}"#.to_vec(),
            "error: repo/publishing.json: an undo journal of an older hale-sign (what each file \
             held before the publish, not what to write), which this one does not act on; \
             nothing written. Run `hale-sign publish repo` with the hale-sign that wrote it, then \
             publish with this one"
                .to_string(),
        ),
    ];
    for (bytes, refusal) in &cases {
        e.write("repo/publishing.json", bytes);
        let r = e.run(&["publish", "repo"]);
        assert_eq!((r.code, r.stderr.trim_end()), (2, refusal.as_str()));
        assert_eq!(working_dir(&e), before, "{refusal}: nothing changed");
        e.unchanged("repo/publishing.json", bytes, "kept");
    }
    // too large: refused by its size, unread (a sparse file)
    let f = std::fs::File::create(e.path("repo/publishing.json")).unwrap();
    f.set_len((1 << 30) + 1).unwrap();
    drop(f);
    let r = e.run(&["publish", "repo"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            damaged("1073741825 bytes, more than 1073741824 (the most a journal holds)").as_str()
        )
    );
    assert_eq!(working_dir(&e), before, "too large: nothing changed");

    e.write("repo/publishing.json", &intact);
    let r = e.run(&["publish", "repo"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!e.path("repo/publishing.json").exists());
    assert_eq!(e.verify().code, 0);
}

/// A repository changed by hand while its publish was interrupted is not written over: a
/// versioned file that holds other bytes than the ones verified for it (versions are immutable: a
/// device may hold the one there), or a timestamp newer than the one to write (devices refuse a
/// rollback). Refused, nothing written, the journal kept.
#[test]
fn a_finish_over_a_repository_changed_since_is_refused_and_nothing_is_written() {
    let e = Env::new();
    e.signed_release();
    e.crash_publish("journaled");
    let listed = journal_files(&e);
    let before = snapshot_tree(&e.path("repo"));
    let refused = |path: &str, why: &str| {
        let r = e.run(&["publish", "repo"]);
        assert_eq!(
            (r.code, r.stderr.trim_end()),
            (
                2,
                format!(
                    "error: refusing to finish the interrupted publish of repo: {path} {why}: it \
                     was changed since, by hand or by another tool. Nothing written, \
                     repo/publishing.json kept: find out which of the two devices may hold \
                     before anything else is published"
                )
                .as_str()
            )
        );
    };

    e.write("repo/repository/2.targets.json", b"{\"signed\": {}}");
    let changed = snapshot_tree(&e.path("repo"));
    refused(
        "repo/repository/2.targets.json",
        "holds other bytes than the interrupted publish verified for it (versions are immutable)",
    );
    assert_eq!(snapshot_tree(&e.path("repo")), changed);
    std::fs::remove_file(e.path("repo/repository/2.targets.json")).unwrap();

    let old_ts = std::fs::read(e.path("repo/repository/timestamp.json")).unwrap();
    let mut newer: serde_json::Value = serde_json::from_slice(&listed[2].1).unwrap();
    newer["signed"]["version"] = serde_json::json!(7);
    e.write(
        "repo/repository/timestamp.json",
        &serde_json::to_vec(&newer).unwrap(),
    );
    let changed = snapshot_tree(&e.path("repo"));
    refused(
        "repo/repository/timestamp.json",
        "holds version 7, newer than the version 2 the interrupted publish verified for it",
    );
    assert_eq!(snapshot_tree(&e.path("repo")), changed);

    e.write("repo/repository/timestamp.json", &old_ts);
    assert_eq!(snapshot_tree(&e.path("repo")), before);
    let r = e.run(&["publish", "repo"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(e.verify().code, 0);
}
