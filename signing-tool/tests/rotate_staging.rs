//! A root staged on top of a staged root, through the real binary: a draft whose version is
//! already published (from another copy of the repository, or published after the draft was
//! made) is never built on nor signed, and a staged root that already meets every threshold it
//! needs (a valid root for devices, whoever kept a copy) is not replaced unless the engineer says
//! `--discard-signed-root`. Both from the adversarial review of root rotation (L2, L4); each test
//! fails on the code before it.
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
/// `rotate repo --role targets --add-key targets-2.pub`, which must stage root v3.
fn add_targets_key_as_root_v3(e: &Env) {
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
}

fn stale_v2(dir: &str) -> String {
    format!(
        "staged root v2 is already published with other content (the newest published root is \
         v2): this draft can never be published, and a root built on it would fork the chain of \
         roots devices follow. Move {dir}/staged/root.json out of {dir}/staged (its changes are \
         not in the published root: make them again if still wanted), then run this again to \
         build on root v2 as root v3"
    )
}

/// `args` exits 2 with `expected` on stderr, and `repo`'s staged/ and repository/ are as they
/// were, byte for byte.
fn refused_leaving_it_as_it_was(e: &Env, args: &[&str], expected: &str) {
    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
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
}

/// In `repo`, a root v2 adding root-d.pub staged and signed by `signers`; meanwhile another copy
/// published a root v2 adding root-e.pub instead (signed by root-a and root-b).
fn stale_root_v2(e: &Env, signers: &[&str]) {
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
    ]);
    for signer in signers {
        e.sign("repo/staged/root.json", signer);
    }
    publish_from_another_copy(e, |e| {
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
    stale_root_v2(&e, &["root-a"]);
    assert_eq!(e.json("repo/staged/root.json")["signed"]["version"], 2);
    assert_eq!(
        e.json("repo/repository/2.root.json")["signed"]["version"],
        2
    );

    let refused = |args: &[&str], expected: &str| {
        refused_leaving_it_as_it_was(&e, args, expected);
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
    add_targets_key_as_root_v3(&e);
    let root = e.json("repo/staged/root.json");
    assert_eq!(root["signed"]["version"], 3);
    assert!(
        root["signed"]["keys"].get(&root_e).is_some(),
        "published v2"
    );
    assert!(root["signed"]["keys"].get(&d).is_none(), "not the draft's");
}

/// A stale staged root v2 (root v2 published from another copy with other content) that is also
/// fully signed — root v1's threshold and its own — is a valid root v2 for every device on root
/// v1, from any signer's copy: a fork of the published root v2. The refusal says so, and that
/// every copy is to be destroyed; before, it was refused as stale alone. Nothing changes. Fails
/// on the old code (the message).
#[test]
fn a_stale_staged_root_that_is_fully_signed_is_refused_as_such() {
    let e = Env::new();
    e.published_repo();
    e.key("root-d", "ed25519");
    e.key("root-e", "ed25519");
    e.key("targets-2", "ed25519");
    stale_root_v2(&e, &["root-a", "root-b"]);
    assert_ne!(
        e.json("repo/staged/root.json")["signed"],
        e.json("repo/repository/2.root.json")["signed"]
    );

    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
    let stale = "staged root v2 is already published with other content (the newest published \
                 root is v2): this draft can never be published, and a root built on it would \
                 fork the chain of roots devices follow. It is also fully signed, meeting both \
                 thresholds (root v1's and its own): a valid root v2 for every device on root v1, \
                 so a copy of it given to devices (each signer had one) forks them from the \
                 published root v2; destroy every copy of it. Move repo/staged/root.json out of \
                 repo/staged (its changes are not in the published root: make them again if \
                 still wanted), then run this again to build on root v2 as root v3";
    for (args, refusal) in [
        (
            &[
                "rotate",
                "repo",
                "--role",
                "targets",
                "--add-key",
                "targets-2.pub",
            ][..],
            format!("error: {stale}"),
        ),
        (
            &["renew", "repo", "--role", "root"][..],
            format!("error: {stale}"),
        ),
        (
            &["status", "repo"][..],
            format!("error: repo/staged/root.json: {stale}"),
        ),
        (
            &publish_args("repo")[..],
            format!("error: repo/staged/root.json: {stale}"),
        ),
    ] {
        let r = e.run(args);
        assert_eq!(
            (r.code, r.stderr.trim_end()),
            (2, refusal.as_str()),
            "{args:?}: {}",
            r.stdout
        );
        assert_eq!(snapshot_tree(&e.path("repo/staged")), staged, "{args:?}");
        assert_eq!(
            snapshot_tree(&e.path("repo/repository")),
            published,
            "{args:?}"
        );
    }
}

/// The same for root v1, signed by its threshold in one copy while another copy published a
/// different root v1: the draft is a valid root v1 (it can provision devices), said as such.
#[test]
fn a_stale_first_root_that_is_fully_signed_is_refused_as_such() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.key("targets-2", "ed25519");
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    publish_from_another_copy(&e, |e| {
        e.ok(&[
            "rotate",
            "repo-b",
            "--role",
            "targets",
            "--add-key",
            "targets-2.pub",
            "--discard-signed-root",
        ]);
        e.sign("repo-b/staged/root.json", "root-a");
        e.sign("repo-b/staged/root.json", "root-b");
        e.sign("repo-b/staged/targets.json", "targets");
    });
    let staged = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&["renew", "repo", "--role", "root"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: staged root v1 is already published with other content (the newest \
             published root is v1): this draft can never be published, and a root built on it \
             would fork the chain of roots devices follow. It is also fully signed, meeting its \
             threshold: a valid root v1, so a copy of it given to devices (each signer had one) \
             forks them from the published root v1; destroy every copy of it. Move \
             repo/staged/root.json out of repo/staged (its changes are not in the published \
             root: make them again if still wanted), then run this again to build on root v1 as \
             root v2"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged);
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

    add_targets_key_as_root_v3(&e);
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

/// The refusal to change a staged root that meets both thresholds.
fn signed_root_refusal(version: u64) -> String {
    format!(
        "error: refusing to change repo/staged/root.json: root v{version} meets both thresholds \
         (root v{}'s and its own), so it is already a valid root v{version} for every device on \
         root v{}: whoever kept a copy (each signer had one) can give it to devices, and a \
         different root v{version} would fork the fleet. Publish it (`hale-sign publish repo`) \
         and make this change in root v{}, or give --discard-signed-root to replace it anyway \
         (then destroy every copy of it); nothing staged",
        version - 1,
        version - 1,
        version + 1
    )
}

/// L4: a staged root v2 signed by both thresholds is a root every device on v1 accepts, from
/// whoever kept a copy. Before, `rotate` and `renew` replaced it with a different root v2 and
/// only said "the signatures no longer apply"; now they refuse, nothing changes, and the way on
/// is to publish it and change root v3. `--discard-signed-root` replaces it, with a warning.
#[test]
fn a_staged_root_that_meets_both_thresholds_is_not_replaced_without_discard_signed_root() {
    let e = Env::new();
    e.published_repo();
    e.key("root-d", "ed25519");
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
    e.sign("repo/staged/root.json", "root-b");
    // a signer's copy: ready, as devices would judge it
    std::fs::create_dir(e.path("kept")).unwrap();
    std::fs::copy(e.path("repo/staged/root.json"), e.path("kept/root.json")).unwrap();
    let s = e.run(&["status", "kept/root.json", "--repo", "repo"]);
    assert_eq!(s.code, 0, "{}\n{}", s.stdout, s.stderr);

    for args in [
        &[
            "rotate",
            "repo",
            "--role",
            "targets",
            "--add-key",
            "targets-2.pub",
        ][..],
        &[
            "rotate",
            "repo",
            "--role",
            "root",
            "--remove-key",
            "root-d.pub",
        ][..],
        &["renew", "repo", "--role", "root", "--expires-in", "800d"][..],
    ] {
        refused_leaving_it_as_it_was(&e, args, signed_root_refusal(2).as_str());
    }

    // the way on: publish root v2, then the change is root v3
    e.publish();
    add_targets_key_as_root_v3(&e);

    // root v3 signed by both thresholds, then replaced on purpose: said loudly
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--threshold",
        "2",
        "--discard-signed-root",
    ]);
    assert!(
        r.stderr.contains(
            "WARNING: --discard-signed-root: repo/staged/root.json held root v3, which meets \
             both thresholds (root v2's and its own): it stays a valid root v3 for every device \
             on root v2, and a copy of it given to devices forks them from the root v3 staged \
             now; destroy every copy of it (each signer had one)\n"
        ),
        "{}",
        r.stderr
    );
    let root = e.json("repo/staged/root.json");
    assert_eq!(root["signed"]["version"], 3);
    assert_eq!(root["signatures"], serde_json::json!([]));
    assert!(
        r.stdout
            .starts_with("root v3 staged: targets is now 2-of-2"),
        "{}",
        r.stdout
    );
}

/// L4 for root v1, staged by `init` and signed by its threshold before its first publish: a
/// signer's copy can provision devices. Not replaced without `--discard-signed-root`; a root
/// below its threshold is changed as before (the note about the signatures it drops).
#[test]
fn a_first_root_that_meets_its_threshold_is_not_replaced_without_discard_signed_root() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.key("targets-2", "ed25519");
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let staged = snapshot_tree(&e.path("repo/staged"));
    let args = [
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
    ];
    let r = e.run(&args);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: refusing to change repo/staged/root.json: root v1 meets its threshold, so it \
             is already a valid root v1: whoever kept a copy (each signer had one) can give it to \
             devices, and a different root v1 would fork the fleet. Publish it (`hale-sign \
             publish repo`) and make this change in root v2, or give --discard-signed-root to \
             replace it anyway (then destroy every copy of it); nothing staged"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged, "staged/");
    assert_eq!(
        snapshot_tree(&e.path("repo/repository")),
        std::collections::BTreeMap::new(),
        "nothing published"
    );

    let r = e.ok(&[&args[..], &["--discard-signed-root"]].concat());
    assert!(
        r.stderr.contains(
            "WARNING: --discard-signed-root: repo/staged/root.json held root v1, which meets its \
             threshold: it stays a valid root v1, and a copy of it given to devices forks them \
             from the root v1 staged now; destroy every copy of it (each signer had one)\n"
        ),
        "{}",
        r.stderr
    );
    // below its threshold now: changed with the note alone
    e.sign("repo/staged/root.json", "root-a");
    let r = e.ok(&["rotate", "repo", "--role", "targets", "--threshold", "2"]);
    assert!(!r.stderr.contains("WARNING"), "{}", r.stderr);
    assert!(r.stderr.contains("no longer apply"), "{}", r.stderr);
}

/// A published repository whose targets delegates `pump-a/*` to pump-a (key pa, 1-of-1): targets
/// v2 and pump-a v1 published.
fn repo_with_pump_a(e: &Env) {
    e.published_repo();
    e.key("pa", "ed25519");
    e.key("pb", "ed25519");
    e.ok(&[
        "delegate", "repo", "--to", "pump-a", "--key", "pa.pub", "--paths", "pump-a/*",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    e.sign("repo/staged/pump-a.json", "pa");
    e.publish();
}

/// `target add DIR --file FILE [--role pump-a --name pump-a/FILE]`.
fn add(e: &Env, dir: &str, file: &str, pump_a: bool) {
    e.write(file, file.as_bytes());
    let name = format!("pump-a/{file}");
    let mut args = vec!["target", "add", dir, "--file", file];
    if pump_a {
        args.extend_from_slice(&["--role", "pump-a", "--name", &name]);
    }
    e.ok(&args);
}

/// Staged targets v3 and pump-a v2 (adding a.bin) in one copy; targets v3 and pump-a v2 (adding
/// b.bin instead) published from another and synced into the first. Before, every command built
/// on the stale drafts or signed them: `target add` changed targets v3 in place (still v3),
/// `rotate --role pump-a` and `renew --role targets` staged targets v3 again, `sign DIR` signed
/// it (shown as "targets v3 (published: v3)"), `status` called it "needs signatures" (exit 1),
/// and only `publish` refused ("targets v3 is not newer than published v3"). Now each is refused
/// before anything is written, naming the drafts and the way on; nothing changes. Fails on the
/// old code (`target add` succeeds).
#[test]
fn staged_roles_whose_versions_are_published_with_other_content_are_never_built_on_nor_signed() {
    let e = Env::new();
    repo_with_pump_a(&e);
    add(&e, "repo", "a.bin", true);
    add(&e, "repo", "a.bin", false);
    e.sign("repo/staged/pump-a.json", "pa");
    publish_from_another_copy(&e, |e| {
        for role in ["targets", "pump-a"] {
            std::fs::remove_file(e.path(&format!("repo-b/staged/{role}.json"))).unwrap();
        }
        add(e, "repo-b", "b.bin", true);
        add(e, "repo-b", "b.bin", false);
        e.sign("repo-b/staged/targets.json", "targets");
        e.sign("repo-b/staged/pump-a.json", "pa");
    });
    assert_eq!(e.json("repo/staged/targets.json")["signed"]["version"], 3);
    assert_eq!(e.json("repo/staged/pump-a.json")["signed"]["version"], 2);
    assert!(e.path("repo/repository/3.targets.json").exists());
    assert!(e.path("repo/repository/2.pump-a.json").exists());

    e.write("c.bin", b"c.bin");
    let stale = |dir: &str| {
        format!(
            "error: staged pump-a v2 (the newest published pump-a is v2), targets v3 (the newest \
             published targets is v3) are already published with other content: these drafts can \
             never be published (versions are immutable), and a change built on them would be \
             staged at a version already published. Move {dir}/staged/pump-a.json, \
             {dir}/staged/targets.json out of {dir}/staged (their changes are not in what is \
             published: make them again if still wanted), then run this again to build on pump-a \
             v2 as pump-a v3, targets v3 as targets v4; nothing done"
        )
    };
    // (a file is placed in its repository by its absolute path)
    let absolute = e.path("repo").canonicalize().unwrap();
    let absolute = absolute.display().to_string();
    for (args, dir) in [
        (&["target", "add", "repo", "--file", "c.bin"][..], "repo"),
        (
            &["rotate", "repo", "--role", "pump-a", "--add-key", "pb.pub"],
            "repo",
        ),
        (&["renew", "repo", "--role", "targets"], "repo"),
        (&sign_args("repo", "targets.key"), "repo"),
        (
            &sign_args("repo/staged/targets.json", "targets.key"),
            &absolute,
        ),
        (&["status", "repo"], "repo"),
        (&["status", "repo/staged/pump-a.json"], &absolute),
        (&publish_args("repo"), "repo"),
    ] {
        refused_leaving_it_as_it_was(&e, args, stale(dir).as_str());
    }

    // the way on: one draft moved aside, the other is still named
    std::fs::rename(
        e.path("repo/staged/pump-a.json"),
        e.path("draft-pump-a.json"),
    )
    .unwrap();
    let r = e.run(&["renew", "repo", "--role", "targets"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: staged targets v3 (the newest published targets is v3) is already published \
             with other content: this draft can never be published (versions are immutable), and \
             a change built on it would be staged at a version already published. Move \
             repo/staged/targets.json out of repo/staged (its changes are not in what is \
             published: make them again if still wanted), then run this again to build on \
             targets v3 as targets v4; nothing done"
        )
    );
    // both moved aside: the change builds on the published targets v3
    std::fs::rename(
        e.path("repo/staged/targets.json"),
        e.path("draft-targets.json"),
    )
    .unwrap();
    e.ok(&["target", "add", "repo", "--file", "c.bin"]);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["version"], 4);
    let names: Vec<&String> = t["signed"]["targets"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["b.bin", "c.bin"], "published v3's, and the new one");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
}

/// A staged targets v2 whose content is published as targets v2, signed there by others (its
/// signatures were collected in another copy of the repository, published from it and synced
/// back): read as published, as a root is. Before, it stayed staged: `status` called it "needs
/// signatures" (exit 1) and `target add` changed it in place as targets v2, which could never
/// be published. Fails on the old code.
#[test]
fn a_staged_role_published_from_another_copy_is_built_on_as_published() {
    let e = Env::new();
    e.published_repo();
    add(&e, "repo", "a.bin", false);
    publish_from_another_copy(&e, |e| {
        e.sign("repo-b/staged/targets.json", "targets");
    });
    assert_ne!(
        std::fs::read(e.path("repo/staged/targets.json")).unwrap(),
        std::fs::read(e.path("repo/repository/2.targets.json")).unwrap(),
        "no signature here, one published"
    );
    let r = e.ok(&["status", "repo"]);
    assert_eq!(r.stdout.trim_end(), "repo: nothing staged");
    add(&e, "repo", "c.bin", false);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["version"], 3);
    let names: Vec<&String> = t["signed"]["targets"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["a.bin", "c.bin"]);
}

/// A staged snapshot or timestamp (put there by hand: both are signed at publish or by the
/// server) is treated as any other role: a copy of the published one is read as published, one
/// of a published version with other content is refused, naming it. Before, both stayed staged:
/// `status` reported the copy of timestamp.json as staged. Fails on the old code.
#[test]
fn a_staged_snapshot_or_timestamp_of_a_published_version_is_read_as_published_or_refused() {
    let e = Env::new();
    e.published_repo();
    std::fs::copy(
        e.path("repo/repository/timestamp.json"),
        e.path("repo/staged/timestamp.json"),
    )
    .unwrap();
    let r = e.ok(&["status", "repo"]);
    assert_eq!(r.stdout.trim_end(), "repo: nothing staged");

    // the same versions with other content (a later expiry)
    for (from, to) in [
        (
            "repo/repository/timestamp.json",
            "repo/staged/timestamp.json",
        ),
        (
            "repo/repository/1.snapshot.json",
            "repo/staged/snapshot.json",
        ),
    ] {
        let mut doc = e.json(from);
        doc["signed"]["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
        e.write(to, &serde_json::to_vec(&doc).unwrap());
    }
    let staged = snapshot_tree(&e.path("repo/staged"));
    e.write("c.bin", b"c.bin");
    for args in [
        &["status", "repo"][..],
        &["target", "add", "repo", "--file", "c.bin"],
    ] {
        let r = e.run(args);
        assert_eq!(
            (r.code, r.stderr.trim_end()),
            (
                2,
                "error: staged snapshot v1 (the newest published snapshot is v1), timestamp v1 \
                 (the newest published timestamp is v1) are already published with other \
                 content: these drafts can never be published (versions are immutable), and a \
                 change built on them would be staged at a version already published. Move \
                 repo/staged/snapshot.json, repo/staged/timestamp.json out of repo/staged (their \
                 changes are not in what is published: make them again if still wanted), then \
                 run this again to build on snapshot v1 as snapshot v2, timestamp v1 as timestamp \
                 v2; nothing done"
            ),
            "{args:?}: {}",
            r.stdout
        );
        assert_eq!(snapshot_tree(&e.path("repo/staged")), staged, "{args:?}");
    }
}
