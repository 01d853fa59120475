//! A root staged on top of a staged root, through the real binary: a draft whose version is
//! already published (from another copy of the repository, or published after the draft was
//! made) is never built on nor signed. From the adversarial review of root rotation (L2); each
//! test fails on the code before it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use common::{publish_args, sign_args, snapshot_tree, Env};

/// Copy the tree `from` into `to` (created as needed), files overwritten.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Root v2 published from `repo-b`, a copy of `repo` made after `repo`'s own changes were
/// staged; `repo`'s repository/ then takes what `repo-b` published (synced back).
fn publish_from_another_copy(e: &Env, change_in_b: impl FnOnce(&Env)) {
    copy_tree(&e.path("repo"), &e.path("repo-b"));
    change_in_b(e);
    e.ok(&publish_args("repo-b"));
    copy_tree(&e.path("repo-b/repository"), &e.path("repo/repository"));
}

/// The refusal of a stale staged root v2 when root v2 is published with other content, in the
/// repository `dir`.
fn stale_v2(dir: &str) -> String {
    format!(
        "staged root v2 is already published with other content (the newest published root is \
         v2): this draft can never be published, and a root built on it would fork the chain of \
         roots devices follow. Move {dir}/staged/root.json out of {dir}/staged (its changes are \
         not in the published root: make them again if still wanted), then run this again to \
         build on root v2 as root v3"
    )
}

/// L2: root v2 staged in one copy (adding root-d), root v2 published from another (adding
/// root-e) and synced into the first. Before, `rotate` changed the stale draft in place and
/// staged a second root v2 (it can never be published, and signed by both thresholds it would
/// be a fork of the chain), `renew --role root` did the same, and `sign DIR` signed it.
#[test]
fn a_staged_root_whose_version_is_published_with_other_content_is_never_built_on_nor_signed() {
    let e = Env::new();
    e.published_repo();
    let d = e.key("root-d", "ed25519");
    let root_e = e.key("root-e", "ed25519");
    e.key("targets-2", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    publish_from_another_copy(&e, |e| {
        std::fs::remove_file(e.path("repo-b/staged/root.json")).unwrap();
        e.ok(&[
            "rotate",
            "repo-b",
            "--role",
            "root",
            "--add-key",
            "root-e.pub",
        ]);
        e.sign("repo-b/staged/root.json", "root-a");
        e.sign("repo-b/staged/root.json", "root-b");
    });
    assert_eq!(e.json("repo/staged/root.json")["signed"]["version"], 2);
    assert_eq!(
        e.json("repo/repository/2.root.json")["signed"]["version"],
        2
    );

    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
    let refused = |args: &[&str], expected: &str| {
        let r = e.run(args);
        assert_eq!(
            (r.code, r.stderr.trim_end()),
            (2, expected),
            "{args:?}: {}",
            r.stdout
        );
        assert_eq!(
            snapshot_tree(&e.path("repo/staged")),
            staged,
            "{args:?}: staged/ byte for byte"
        );
        assert_eq!(
            snapshot_tree(&e.path("repo/repository")),
            published,
            "{args:?}: repository/ byte for byte"
        );
    };
    let stale = format!("error: {}", stale_v2("repo"));
    refused(
        &[
            "rotate",
            "repo",
            "--role",
            "targets",
            "--add-key",
            "targets-2.pub",
        ],
        &stale,
    );
    refused(
        &["rotate", "repo", "--role", "root", "--threshold", "3"],
        &stale,
    );
    refused(&["renew", "repo", "--role", "root"], &stale);
    // a signer given the directory or the file: the draft is not signed; nor is it published,
    // and `status` says what to do with it
    let named = format!("error: repo/staged/root.json: {}", stale_v2("repo"));
    refused(&sign_args("repo", "root-b.key"), &named);
    // (a file is placed in its repository by its absolute path)
    let absolute = e.path("repo").canonicalize().unwrap();
    refused(
        &sign_args("repo/staged/root.json", "root-b.key"),
        &format!(
            "error: repo/staged/root.json: {}",
            stale_v2(&absolute.display().to_string())
        ),
    );
    refused(&publish_args("repo"), &named);
    refused(&["status", "repo"], &named);

    // the way on: the draft moved aside, the change builds on the published root v2
    std::fs::rename(e.path("repo/staged/root.json"), e.path("draft-root.json")).unwrap();
    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
    ]);
    assert!(
        r.stdout
            .starts_with("root v3 staged: targets is now 1-of-2"),
        "{}",
        r.stdout
    );
    let root = e.json("repo/staged/root.json");
    assert_eq!(root["signed"]["version"], 3);
    assert!(
        root["signed"]["keys"].get(&root_e).is_some(),
        "published v2"
    );
    assert!(root["signed"]["keys"].get(&d).is_none(), "not the draft's");
}

/// L2, the draft's content published: root v2 staged and signed by root-a in one copy, signed by
/// root-b and published from another, synced back. The staged copy differs from the published
/// one in its signatures alone: a change builds on the published root (before, `rotate` changed
/// the copy in place and staged another root v2), and the chain stays 1 -> 2 -> 3.
#[test]
fn a_staged_root_published_from_another_copy_is_built_on_as_published() {
    let e = Env::new();
    e.published_repo();
    let d = e.key("root-d", "ed25519");
    e.key("targets-2", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    publish_from_another_copy(&e, |e| {
        e.sign("repo-b/staged/root.json", "root-b");
    });
    assert_ne!(
        std::fs::read(e.path("repo/staged/root.json")).unwrap(),
        std::fs::read(e.path("repo/repository/2.root.json")).unwrap(),
        "one signature here, two published"
    );

    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
    ]);
    assert!(
        r.stdout
            .starts_with("root v3 staged: targets is now 1-of-2"),
        "{}",
        r.stdout
    );
    let root = e.json("repo/staged/root.json");
    assert_eq!(root["signed"]["version"], 3);
    assert!(root["signed"]["keys"].get(&d).is_some(), "built on v2");
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stdout.contains("root       chain 1 -> 2 -> 3 "),
        "{}",
        v.stdout
    );
}
