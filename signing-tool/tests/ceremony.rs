//! Key ceremonies through the real binary: threshold signing across signers, refusals, root
//! rotation with both thresholds, the compat profile and the demo-key warning.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{publish_args, sign_args, snapshot_tree, Env, Run, PW, PW_ENV};

#[test]
fn two_of_three_root_ceremony_signers_sign_one_at_a_time_and_status_shows_who_is_missing() {
    let e = Env::new();
    e.standard_keys();
    let (a, b, c) = (e.keyid("root-a"), e.keyid("root-b"), e.keyid("root-c"));
    e.init();
    let staged = e.json("repo/staged/root.json");
    assert_eq!(staged["signed"]["version"], 1);
    assert_eq!(staged["signed"]["roles"]["root"]["threshold"], 2);
    assert_eq!(staged["signed"]["consistent_snapshot"], true);
    assert_eq!(staged["signatures"], serde_json::json!([]));

    // nobody signed yet: exit 1, every root key missing
    let s = e.run(&["status", "repo"]);
    assert_eq!(s.code, 1, "{}", s.stdout);
    assert!(
        s.stdout
            .contains("root v1 (its own root role): threshold 2 — 0 valid — NOT MET"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(&format!("missing  {a}, {b}, {c}")),
        "{}",
        s.stdout
    );

    // signer 1, passphrase from the environment
    e.sign("repo/staged/root.json", "root-a");
    let s = e.run(&["status", "repo/staged/root.json"]);
    assert_eq!(s.code, 1);
    assert!(
        s.stdout.contains(&format!("signed   {a}\n")),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(&format!("missing  {b}, {c}\n")),
        "{}",
        s.stdout
    );

    // signer 2 on "another machine", passphrase from a file, ECDSA key
    e.write("pw.txt", format!("{PW}\n").as_bytes());
    e.ok(&[
        "sign",
        "repo/staged/root.json",
        "--key",
        "root-b.key",
        "--passphrase-file",
        "pw.txt",
    ]);
    let s = e.run(&["status", "repo/staged/root.json"]);
    assert_eq!(s.code, 0, "{}", s.stdout);
    assert!(
        s.stdout.contains("threshold 2 — 2 valid — MET"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(&format!("missing  {c}\n")),
        "{}",
        s.stdout
    );

    // the whole directory: targets still unsigned
    assert_eq!(e.run(&["status", "repo"]).code, 1);
    e.sign("repo/staged/targets.json", "targets");
    let s = e.run(&["status", "repo"]);
    assert_eq!(s.code, 0, "{}", s.stdout);
    assert!(s
        .stdout
        .contains("all 2 staged file(s) meet their thresholds"));

    let p = e.publish();
    assert!(
        p.stdout
            .contains("published root v1, targets v1, snapshot v1 (1 roles), timestamp v1"),
        "{}",
        p.stdout
    );
    for f in [
        "root.json",
        "1.root.json",
        "1.targets.json",
        "1.snapshot.json",
        "timestamp.json",
    ] {
        assert!(e.path("repo/repository").join(f).exists(), "{f}");
    }
    assert!(
        std::fs::read_dir(e.path("repo/staged"))
            .unwrap()
            .next()
            .is_none(),
        "staged files are removed after publish"
    );
    let v = e.verify();
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("root       chain 1 "), "{}", v.stdout);
}

#[test]
fn several_keys_without_a_threshold_are_refused_and_nothing_is_written() {
    // a default of 1 made three root keys a 1-of-3 root: any one holder could rotate it alone
    let e = Env::new();
    e.standard_keys();
    let r = e.run(&[
        "init",
        "repo",
        "--root-key",
        "root-a.pub",
        "--root-key",
        "root-b.pub",
        "--root-key",
        "root-c.pub",
        "--targets-key",
        "targets.pub",
        "--snapshot-key",
        "snapshot.pub",
        "--timestamp-key",
        "timestamp.pub",
    ]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: root: 3 keys and no --root-threshold: say how many of them must sign \
             (--root-threshold K; --root-threshold 1 lets any one key holder sign for root alone)"
        )
    );
    assert!(!e.path("repo").exists(), "nothing written");
    // one key needs no threshold; a chosen 1-of-n is taken as chosen
    e.init();
    assert_eq!(
        e.json("repo/staged/root.json")["signed"]["roles"]["root"]["threshold"],
        2
    );
    assert_eq!(
        e.json("repo/staged/root.json")["signed"]["roles"]["targets"]["threshold"],
        1
    );
}

#[test]
fn refuses_a_signature_from_a_key_the_role_does_not_list_and_leaves_the_file_unchanged() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.sign("repo/staged/root.json", "root-a");
    let before = std::fs::read(e.path("repo/staged/root.json")).unwrap();
    let (a, b, c, t) = (
        e.keyid("root-a"),
        e.keyid("root-b"),
        e.keyid("root-c"),
        e.keyid("targets"),
    );
    let r = e.run(&sign_args("repo/staged/root.json", "targets.key"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: refusing to sign repo/staged/root.json: key {t} (targets.key) is not listed for role root by root v1 \
             (its own root role) (listed keys: {a}, {b}, {c}); the file is unchanged"
        )
    );
    e.unchanged("repo/staged/root.json", &before, "refused");

    // and the other way round: a root key cannot sign targets
    let targets_before = std::fs::read(e.path("repo/staged/targets.json")).unwrap();
    let r = e.run(&sign_args("repo/staged/targets.json", "root-c.key"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: refusing to sign repo/staged/targets.json: key {c} (root-c.key) is not listed for role targets by root v1 \
             (listed keys: {t}); the file is unchanged"
        )
    );
    e.unchanged("repo/staged/targets.json", &targets_before, "refused");

    // a wrong passphrase opens no key: refused before anything is written
    e.write("wrong.txt", b"not the passphrase\n");
    let r = e.run(&[
        "sign",
        "repo/staged/targets.json",
        "--key",
        "targets.key",
        "--passphrase-file",
        "wrong.txt",
    ]);
    assert_eq!(r.code, 2);
    // what was to be signed is shown first (before the passphrase is asked for)
    assert_eq!(
        r.stderr.trim_end(),
        "to sign: repo/staged/targets.json: targets v1 (published: none)\n  new role: nothing \
         published before\nerror: targets.key: wrong passphrase or damaged key file"
    );
    // an unset passphrase variable is refused too
    let r = e.run(&[
        "sign",
        "repo/staged/targets.json",
        "--key",
        "targets.key",
        "--passphrase-env",
        "NO_SUCH_VAR",
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end().lines().last(),
        Some("error: targets.key: passphrase: environment variable NO_SUCH_VAR is not set")
    );
    e.unchanged("repo/staged/targets.json", &targets_before, "refused");
    e.unchanged("repo/staged/root.json", &before, "refused");
    // the right passphrase signs: the refusal was the passphrase
    e.sign("repo/staged/targets.json", "targets");
    assert_ne!(
        std::fs::read(e.path("repo/staged/targets.json")).unwrap(),
        targets_before
    );
}

#[test]
fn publish_refuses_below_threshold_and_leaves_the_repository_unchanged() {
    let e = Env::new();
    e.published_repo();
    // a new targets version, signed by nobody; a root rotation signed by one of two
    e.write("fw.bin", b"firmware");
    e.ok(&["target", "add", "repo", "--file", "fw.bin"]);
    e.key("root-d", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
        "--remove-key",
        "root-c.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    let before = snapshot_tree(&e.path("repo/repository"));
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: refusing to publish repo: 3 threshold(s) not met: root v2: 1/2 by root v2 (its own root role); \
         root v2: 1/2 by root v1 (the trusted root it rotates from); targets v2: 0/1 by root v2 \
         (repository unchanged; see `hale-sign status repo`)"
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), before);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);
}

#[test]
fn a_key_type_the_fleet_does_not_verify_is_refused_for_every_role_and_nothing_changes() {
    let e = Env::new();
    e.standard_keys();
    let b = e.keyid("root-b");
    let init = |types: &'static str, root_keys: &[&'static str]| {
        init_with(&["fleet", "--device-key-types", types], root_keys)
    };
    let refused = format!(
        "error: root-b.pub: key {b} is of type ecdsa-p256, and this repository's devices verify \
         ed25519 only (device_key_types in hale-repo.json): its signatures would count for \
         nothing on them, and a root threshold that needs one would stop every update"
    );
    // firmware built without hale-core's `ecdsa`: a P-256 root key is refused at init
    let both = [
        "--root-key",
        "root-a.pub",
        "--root-key",
        "root-b.pub",
        "--root-threshold",
        "2",
    ];
    let r = e.run(&init("ed25519", &both));
    assert_eq!((r.code, r.stderr.trim_end()), (2, refused.as_str()));
    assert!(!e.path("fleet").exists(), "nothing written");
    for (types, error) in [
        (
            "ecdsa-p256",
            "error: device key types must include ed25519 (every device build verifies it)",
        ),
        (
            "ed25519,ed448",
            "error: device key type \"ed448\": not one of ed25519, ecdsa-p256, rsa",
        ),
        (
            "ed25519,ed25519",
            "error: device key type ed25519 is listed twice",
        ),
    ] {
        let r = e.run(&init(types, &["--root-key", "root-a.pub"]));
        assert_eq!((r.code, r.stderr.trim_end()), (2, error), "{types}");
        assert!(!e.path("fleet").exists(), "nothing written: {types}");
    }

    // and at every later door: a rotation and a delegation
    e.ok(&init("ed25519", &["--root-key", "root-a.pub"]));
    assert_eq!(
        e.json("fleet/hale-repo.json")["device_key_types"],
        serde_json::json!(["ed25519"])
    );
    let staged = std::fs::read(e.path("fleet/staged/root.json")).unwrap();
    let r = e.run(&[
        "rotate",
        "fleet",
        "--role",
        "root",
        "--add-key",
        "root-b.pub",
    ]);
    assert_eq!((r.code, r.stderr.trim_end()), (2, refused.as_str()));
    e.unchanged(
        "fleet/staged/root.json",
        &staged,
        "root after a refused rotation",
    );
    let targets = std::fs::read(e.path("fleet/staged/targets.json")).unwrap();
    let r = e.run(&[
        "delegate",
        "fleet",
        "--to",
        "pumps",
        "--key",
        "root-b.pub",
        "--paths",
        "pump-a/*",
    ]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            refused
                .replace("a root threshold", "a pumps threshold")
                .as_str()
        )
    );
    e.unchanged(
        "fleet/staged/targets.json",
        &targets,
        "targets after a refused delegation",
    );
    assert!(!e.path("fleet/staged/pumps.json").exists());

    // without the option: what hale-core's default device build verifies, written down
    e.init();
    assert_eq!(
        e.json("repo/hale-repo.json")["device_key_types"],
        serde_json::json!(["ed25519", "ecdsa-p256"])
    );
}

/// `device_key_types` narrowed by hand after a key of the dropped type was listed: `status` and
/// `publish` judge the staged files as the fleet will, not as the signing tool's own build
/// does (it verifies every type). A root whose threshold is met with a P-256 signature is
/// refused by an ed25519-only fleet.
#[test]
fn a_listed_key_of_a_type_the_fleet_no_longer_verifies_keeps_the_draft_from_publishing() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    e.sign("repo/staged/targets.json", "targets");
    let b = e.keyid("root-b");
    let mut cfg = e.json("repo/hale-repo.json");
    cfg["device_key_types"] = serde_json::json!(["ed25519"]);
    e.write(
        "repo/hale-repo.json",
        &serde_json::to_vec_pretty(&cfg).unwrap(),
    );
    let before = snapshot_tree(&e.path("repo"));

    let r = e.run(&["status", "repo"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("root v1 (expires ")
            && r.stdout
                .contains("— lists keys devices do not verify: not ready to publish"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "    key {b} (ecdsa-p256) for root: devices verify ed25519 only (device_key_types): \
             its signatures count for nothing there; remove it (`hale-sign rotate \
             --remove-key`) or list its type"
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "1 of 2 staged file(s) list keys this repository's devices do not verify, not ready \
             to publish: root"
        ),
        "{}",
        r.stdout
    );

    let r = e.run(&publish_args("repo"));
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            format!(
                "error: repo/staged/root.json: root v1 lists a key of a type this repository's \
                 devices do not verify (ed25519 only, device_key_types in hale-repo.json): {b} \
                 (ecdsa-p256) for root. Their signatures count for nothing there, and a \
                 threshold met with them is not met on a device. Remove them (`hale-sign rotate \
                 repo --role ROLE --remove-key KEYID`), or list the type in device_key_types if \
                 every device verifies it (repository unchanged)"
            )
            .as_str()
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before, "nothing written");

    // the way on: the key removed (the signed draft discarded: it met its threshold with it),
    // signed by two ed25519 keys, published
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--remove-key",
        "root-b.pub",
        "--discard-signed-root",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-c");
    e.ok(&["status", "repo"]);
    e.publish();
    let r = e.verify();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// Two commands changing one working directory at once (two signers of a shared directory, a
/// publish started twice) would each write what it read, and one's signature or files would be
/// lost: the second is refused at once, with nothing done, while the first holds the directory.
#[test]
fn a_command_changing_a_working_directory_another_one_is_changing_is_refused() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.sign("repo/staged/root.json", "root-a");
    assert!(e.path("repo/.hale-sign.lock").is_file(), "init makes it");
    let lock = e.hold_lock();
    let before = snapshot_tree(&e.path("repo"));
    let busy = "error: repo: another hale-sign command is changing this working directory \
                (repo/.hale-sign.lock is locked): run this again when it has finished; nothing \
                done";
    let sign = sign_args("repo/staged/root.json", "root-b.key");
    for args in [
        &sign[..],
        &publish_args("repo")[..],
        &["target", "add", "repo", "--file", "root-a.pub"][..],
        &[
            "rotate",
            "repo",
            "--role",
            "targets",
            "--add-key",
            "root-c.pub",
        ][..],
    ] {
        let r = e.run(args);
        // (sign names the directory it found the file in, absolute)
        let said = r.stderr.replace(e.p("repo").as_str(), "repo");
        assert_eq!((r.code, said.trim_end()), (2, busy), "{args:?}");
        assert_eq!(snapshot_tree(&e.path("repo")), before, "{args:?}");
    }
    // reading is not changing
    let r = e.run(&["status", "repo"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    fs2::FileExt::unlock(&lock).unwrap();
    // one command, one lock: a directory named twice (however spelled) is said as such
    let absolute = e.p("repo");
    let r = e.run(&[
        "sign",
        "repo",
        absolute.as_str(),
        "--key",
        "root-b.key",
        "--passphrase-env",
        PW_ENV,
    ]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            format!(
                "error: {absolute}: given twice (its staged files are signed once; the \
                 directory is locked by this command)"
            )
            .as_str()
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before);
    e.sign("repo/staged/root.json", "root-b");
    e.ok(&["status", "repo/staged/root.json"]);
}

#[test]
fn a_published_file_is_never_signed_in_place() {
    let e = Env::new();
    e.published_repo();
    let before = std::fs::read(e.path("repo/repository/1.root.json")).unwrap();
    let sign = sign_args("repo/repository/1.root.json", "root-c.key");
    let r = e.run(&[&sign[..], &["--repo", "repo"]].concat());
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: refusing to sign repo/repository/1.root.json: it is published (in \
             repo/repository), and a published version never changes; stage a new version \
             (rotate, renew, target add) and sign the staged file; the file is unchanged"
        )
    );
    e.unchanged("repo/repository/1.root.json", &before, "published root");
}

#[test]
fn a_root_rotating_the_online_keys_is_published_only_with_them_and_nothing_is_written_before() {
    let e = Env::new();
    e.published_repo();
    e.key("timestamp-2", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "timestamp",
        "--add-key",
        "timestamp-2.pub",
        "--remove-key",
        "timestamp.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let before = snapshot_tree(&e.path("repo"));
    // without online keys the served timestamp (old key) would fail under root v2: refused
    // before the write, so no device can fetch a root v2 that is then taken back
    let r = e.run(&["publish", "repo"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            "error: refusing to publish repo: root v2 changes the timestamp role's keys, and the \
             timestamp served now meets 0 of its threshold 1 (devices would take the new root, \
             then refuse every timestamp): give --timestamp-key with the new key(s), or push to \
             a hale-server that holds them (repository unchanged)"
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before, "nothing written");
    // with the old timestamp key: hale-core's refusal of that key under root v2, as before
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(snapshot_tree(&e.path("repo")), before, "nothing written");
    // with the new one: published, and the repository verifies from root v1
    e.ok(&[
        "publish",
        "repo",
        "--snapshot-key",
        "snapshot.key",
        "--timestamp-key",
        "timestamp-2.key",
        "--passphrase-env",
        PW_ENV,
    ]);
    e.ok(&["verify", "repo", "--root", "repo/repository/1.root.json"]);
}

#[test]
fn root_rotation_needs_the_old_and_the_new_threshold() {
    let e = Env::new();
    e.published_repo();
    let (a, b, c) = (e.keyid("root-a"), e.keyid("root-b"), e.keyid("root-c"));
    let d = e.key("root-d", "ed25519");
    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
        "--remove-key",
        &a,
    ]);
    assert!(
        r.stdout.contains("root v2 staged: root is now 2-of-3"),
        "{}",
        r.stdout
    );
    let root = e.json("repo/staged/root.json");
    assert_eq!(root["signed"]["version"], 2);
    assert!(
        root["signed"]["keys"].get(&a).is_none(),
        "the removed key is dropped from keys"
    );

    // the new keys alone: the new threshold is met, the old one is not. Each signer is shown
    // what root v2 changes before a passphrase is asked for
    let r = e.sign("repo/staged/root.json", "root-d");
    // the rotation sets a new expiry a year from its own clock: listed when that second differs
    // from the one root v1 was made in
    let (was, now) = (
        e.json("repo/repository/1.root.json")["signed"]["expires"].clone(),
        root["signed"]["expires"].clone(),
    );
    let expires = if was == now {
        String::new()
    } else {
        format!(
            "\n  expires {} (was {})",
            now.as_str().unwrap(),
            was.as_str().unwrap()
        )
    };
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "to sign: repo/staged/root.json: root v2 (published: v1)\n  root: keys +{} (ed25519) \
             -{}{expires}",
            &d[..8],
            &a[..8]
        )
    );
    e.sign("repo/staged/root.json", "root-c");
    let s = e.run(&["status", "repo"]);
    assert_eq!(s.code, 1, "{}", s.stdout);
    assert!(
        s.stdout
            .contains("root v2 (its own root role): threshold 2 — 2 valid — MET"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(
            "root v1 (the trusted root it rotates from): threshold 2 — 1 valid — NOT MET"
        ),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(&format!("missing  {a}, {b}\n")),
        "{}",
        s.stdout
    );
    let repo_before = snapshot_tree(&e.path("repo/repository"));
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: refusing to publish repo: 1 threshold(s) not met: root v2: 1/2 by root v1 (the trusted root it \
         rotates from) (repository unchanged; see `hale-sign status repo`)"
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), repo_before);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);

    // a key of the OLD root may sign the new root (it is needed for the old threshold)
    e.sign("repo/staged/root.json", "root-a");
    let s = e.run(&["status", "repo"]);
    assert_eq!(s.code, 0, "{}", s.stdout);
    assert!(
        s.stdout
            .contains("root v1 (the trusted root it rotates from): threshold 2 — 2 valid — MET"),
        "{}",
        s.stdout
    );
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stdout.contains("root       chain 1 -> 2 "),
        "{}",
        v.stdout
    );
    assert!(e.path("repo/repository/2.root.json").exists());
    assert_eq!(e.json("repo/repository/root.json")["signed"]["version"], 2);
    let _ = (c, d);
}

#[test]
fn compat_profile_refuses_an_ecdsa_key_and_writes_spec_1_0_0() {
    let e = Env::new();
    e.standard_keys();
    let b = e.keyid("root-b");
    // `init compat --profile compat` with ROOT_KEYS, then the standard targets, snapshot and
    // timestamp keys
    let init_compat =
        |root_keys: &[&'static str]| init_with(&["compat", "--profile", "compat"], root_keys);
    let r = e.run(&init_compat(&[
        "--root-key",
        "root-a.pub",
        "--root-key",
        "root-b.pub",
    ]));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!("error: root-b.pub: compat profile refuses key {b} of type ecdsa: its clients (rust-tuf 0.3) verify ed25519 only")
    );
    assert!(!e.path("compat").exists(), "nothing written");

    e.ok(&init_compat(&["--root-key", "root-a.pub"]));
    assert_eq!(
        e.json("compat/staged/root.json")["signed"]["spec_version"],
        "1.0.0"
    );
    // no ECDSA key can come in later either
    let r = e.run(&[
        "rotate",
        "compat",
        "--role",
        "targets",
        "--add-key",
        "root-b.pub",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("compat profile refuses key"),
        "{}",
        r.stderr
    );
    e.sign("compat/staged/root.json", "root-a");
    e.sign("compat/staged/targets.json", "targets");
    e.ok(&publish_args("compat"));
    assert_eq!(
        e.json("compat/repository/timestamp.json")["signed"]["spec_version"],
        "1.0.0"
    );
    e.ok(&[
        "verify",
        "compat",
        "--root",
        "compat/repository/1.root.json",
    ]);
}

#[test]
fn demo_keys_are_reproducible_and_trigger_the_loud_warning() {
    let e = Env::new();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../keys-example");
    // the committed demo keys are exactly what the seeds give (what CI checks)
    let r = e.ok(&[
        "key",
        "demo",
        "--out",
        &demo.display().to_string(),
        "--check",
    ]);
    assert!(
        r.stdout.contains("all 8 demo keys match their seeds"),
        "{}",
        r.stdout
    );
    // regenerating gives the same .pub files byte for byte
    e.ok(&["key", "demo", "--out", "regen"]);
    assert_eq!(e.mode("regen/snapshot.key"), 0o600);
    assert_eq!(e.mode("regen/PASSPHRASE"), 0o600);
    // a directory holding keys by those names (real ones, say) is never written over
    e.ok(&[
        "key",
        "generate",
        "--out",
        "regen/snapshot",
        "--force",
        "--passphrase-env",
        common::PW_ENV,
    ]);
    let before = snapshot_tree(&e.path("regen"));
    let r = e.run(&["key", "demo", "--out", "regen"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: regen: {} exist(s); refusing to overwrite with demo keys (use --force to rewrite a demo key directory)",
            [
                "root-1", "root-2", "root-3", "targets-1", "snapshot", "timestamp", "rollback-1",
                "rollback-2"
            ]
            .iter()
            .flat_map(|n| [format!("{n}.key"), format!("{n}.pub")])
            .chain(["PASSPHRASE".to_string()])
            .collect::<Vec<_>>()
            .join(", ")
        )
    );
    assert_eq!(snapshot_tree(&e.path("regen")), before, "nothing written");
    e.ok(&["key", "demo", "--out", "regen", "--force"]);
    for name in [
        "root-1",
        "root-2",
        "root-3",
        "targets-1",
        "snapshot",
        "timestamp",
        "rollback-1",
        "rollback-2",
    ] {
        assert_eq!(
            std::fs::read(e.path(&format!("regen/{name}.pub"))).unwrap(),
            std::fs::read(demo.join(format!("{name}.pub"))).unwrap(),
            "{name}.pub"
        );
    }
    let k = |n: &str| demo.join(n).display().to_string();
    let r = e.ok(&[
        "init",
        "repo",
        "--root-key",
        &k("root-1.pub"),
        "--root-key",
        &k("root-2.pub"),
        "--root-key",
        &k("root-3.pub"),
        "--root-threshold",
        "2",
        "--targets-key",
        &k("targets-1.pub"),
        "--snapshot-key",
        &k("snapshot.pub"),
        "--timestamp-key",
        &k("timestamp.pub"),
    ]);
    assert!(
        r.stderr
            .contains("!! WARNING: repository repo is rooted in DEMO KEYS from keys-example/."),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("!!   role root trusts demo key(s): root-1, root-2, root-3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("NEVER use this in production"),
        "{}",
        r.stderr
    );
    // every command touching the repository warns, and signing with a demo key too
    let s = e.run(&["status", "repo"]);
    assert!(s.stderr.contains("rooted in DEMO KEYS"), "{}", s.stderr);
    let r = e.ok(&[
        "sign",
        "repo",
        "--key",
        &k("root-1.key"),
        "--key",
        &k("targets-1.key"),
        "--passphrase-file",
        &k("PASSPHRASE"),
    ]);
    assert!(
        r.stderr.contains("WARNING: signing with DEMO key root-1"),
        "{}",
        r.stderr
    );
    // a repository with real keys does not warn
    let e2 = Env::new();
    e2.standard_keys();
    e2.init();
    assert!(!e2.run(&["status", "repo"]).stderr.contains("DEMO"));
}

#[test]
fn expired_staged_metadata_is_not_ready_and_is_never_published() {
    let e = Env::new();
    e.published_repo();
    // a targets policy of 2 s: the next targets expires before the ceremony ends
    let cfg = e.path("repo/hale-repo.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["expires"]["targets"] = serde_json::json!(2);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    e.write("fw.bin", b"firmware");
    e.ok(&["target", "add", "repo", "--file", "fw.bin"]);
    e.sign("repo/staged/targets.json", "targets");
    let expires = e.json("repo/staged/targets.json")["signed"]["expires"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(std::time::Duration::from_secs(3));

    let st = e.run(&["status", "repo"]);
    assert_eq!(st.code, 1, "{}", st.stdout);
    assert!(
        st.stdout.contains(&format!(
            "targets v2 (expires {expires}) — expired at {expires}: devices would refuse it"
        )),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains(
            "1 of 1 staged file(s) expired, not ready to publish: targets (stage them again with a later expiry: `hale-sign renew repo --role targets`)"
        ),
        "{}",
        st.stdout
    );
    assert!(!st.stdout.contains("ready to publish\n"), "{}", st.stdout);

    let before = snapshot_tree(&e.path("repo/repository"));
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: repo/staged/targets.json: targets v2 expired at {expires}: devices would refuse it (stage it again with a later expiry: `hale-sign renew repo --role targets`)"
        )
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), before);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);

    // the hint's command, with a lifetime of its own (the policy's 2 s would expire again):
    // the same content, the same version (it was never published), a later expiry; signed
    // again, it publishes
    let r = e.ok(&["renew", "repo", "--role", "targets", "--expires-in", "30d"]);
    let renewed = e.json("repo/staged/targets.json")["signed"].clone();
    let new_expires = renewed["expires"].as_str().unwrap().to_string();
    assert_eq!(
        r.stdout,
        format!("targets v2 staged: expires {new_expires} (was {expires})\n")
    );
    assert!(new_expires > expires, "{new_expires}");
    assert!(
        r.stderr.contains(
            "note: staged targets.json changed: the 1 signature(s) collected on it no longer apply"
        ),
        "{}",
        r.stderr
    );
    let mut was: serde_json::Value =
        serde_json::from_slice(&staged_before[&e.path("repo/staged/targets.json")]).unwrap();
    was["signed"]["expires"] = serde_json::json!(new_expires);
    assert_eq!(renewed, was["signed"], "only the expiry changed");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    assert_eq!(e.verify().code, 0);

    // a policy that is not a positive duration is refused when the directory is read
    c["expires"]["targets"] = serde_json::json!(-5);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let r = e.run(&["status", "repo"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: repo/hale-repo.json: expires.targets is -5 s: an expiry must be a positive number of seconds"
    );
}

#[test]
fn a_timestamp_alone_never_publishes_a_targets_role_no_snapshot_lists() {
    let e = Env::new();
    e.signed_release();
    let before = snapshot_tree(&e.path("repo/repository"));
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&[
        "publish",
        "repo",
        "--timestamp-key",
        "timestamp.key",
        "--passphrase-env",
        common::PW_ENV,
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: repo: staged targets must be listed in a new snapshot: give --snapshot-key with --timestamp-key (or neither, and let the server sign both)"
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), before);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);
    // with the snapshot key it goes out, and the new targets is what devices see
    let r = e.publish();
    assert!(
        r.stdout
            .starts_with("published targets v2, snapshot v2 (1 roles), timestamp v2 into "),
        "{}",
        r.stdout
    );
    assert_eq!(e.verify().code, 0);
}

/// A publish killed after its journal, partway through its writes, is finished by the next: the
/// files it verified stay served (a device may hold them) and the rest are written, never taken
/// back. Before (2026-11-25), the next publish undid them first. Fails on the old code.
#[test]
fn a_publish_killed_midway_is_finished_by_the_next_and_never_blocks_it() {
    let e = Env::new();
    e.signed_release();
    let crash = |point: &str| e.crash_publish(point);

    // killed after writing the metadata and the snapshot, before the timestamp
    crash("metadata");
    assert!(e.path("repo/repository/2.targets.json").exists());
    assert!(e.path("repo/repository/2.snapshot.json").exists());
    assert_eq!(
        e.json("repo/repository/timestamp.json")["signed"]["version"],
        1
    );
    assert!(e.path("repo/publishing.json").exists());
    let st = e.run(&["status", "repo"]);
    assert!(
        st.stdout.starts_with(
            "repo/publishing.json: a publish was interrupted and the repository holds part of \
             it: run `hale-sign publish repo` to finish the interrupted publish (it writes the \
             verified files the journal lists)\n"
        ),
        "{}",
        st.stdout
    );
    // the next publish finishes it first (shown here by one that then fails: no passphrase)
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
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "finished the publish that was interrupted: targets v2, snapshot v2, timestamp v2 \
             into repo/repository (2 of 3 file(s) were already written; the bytes it verified \
             before it was interrupted, nothing taken back)\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .starts_with("repo/staged/targets.json: already published; staged copy removed\n"),
        "{}",
        r.stderr
    );
    assert!(!e.path("repo/publishing.json").exists());
    assert!(!e.path("repo/staged/targets.json").exists());
    assert_eq!(
        e.json("repo/repository/timestamp.json")["signed"]["version"],
        2
    );
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    let published = snapshot_tree(&e.path("repo/repository"));

    // killed after the publish stood, before the staged copies were removed: the next publish
    // clears them instead of refusing them as "not newer than published"
    e.ok(&[
        "target", "add", "repo", "--file", "fw.bin", "--name", "fw2.bin",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    crash("done");
    assert!(e.path("repo/repository/3.targets.json").exists());
    assert!(e.path("repo/staged/targets.json").exists());
    assert!(!e.path("repo/publishing.json").exists());
    let r = e.publish();
    assert!(
        r.stderr
            .contains("repo/staged/targets.json: already published; staged copy removed"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("finished the publish"), "{}", r.stdout);
    assert!(!e.path("repo/staged/targets.json").exists());
    assert!(e.path("repo/repository/3.targets.json").exists());
    assert_eq!(e.verify().code, 0);
    assert_ne!(snapshot_tree(&e.path("repo/repository")), published);
}

#[test]
fn a_mistyped_path_is_named_as_missing() {
    let e = Env::new();
    e.published_repo();
    for args in [
        vec!["status", "repo-typo"],
        vec!["sign", "repo/staged/tragets.json", "--key", "targets.key"],
    ] {
        let r = e.run(&args);
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(
            r.stderr.trim_end(),
            format!("error: {}: no such file or directory", args[1]),
            "{args:?}"
        );
    }
}

#[test]
fn a_file_holding_another_role_is_neither_signed_nor_reported_as_the_one_its_name_says() {
    let env = Env::new();
    env.published_repo();
    // the "copy the file over" workflow: the published targets, copied (or renamed) as root.json
    std::fs::create_dir(env.path("m")).unwrap();
    std::fs::copy(
        env.path("repo/repository/1.targets.json"),
        env.path("m/root.json"),
    )
    .unwrap();
    let before = snapshot_tree(&env.path(""));
    let mut sign: Vec<&str> = sign_args("m/root.json", "root-a.key").to_vec();
    sign.extend(["--repo", "repo"]);
    let status = vec!["status", "m/root.json", "--repo", "repo"];
    for args in [sign, status] {
        let r = env.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.lines().last().unwrap(),
            "error: m/root.json: root: expected _type \"root\", found \"targets\"",
            "{args:?}"
        );
        assert_eq!(snapshot_tree(&env.path("")), before, "{args:?}");
    }
}

#[test]
fn a_refused_init_leaves_nothing_that_blocks_its_retry() {
    let env = Env::new();
    env.standard_keys();
    let init = |dir: &str, extra: &[&str]| {
        let mut a = vec![
            "init",
            dir,
            "--root-key",
            "root-a.pub",
            "--targets-key",
            "targets.pub",
        ];
        a.extend([
            "--snapshot-key",
            "snapshot.pub",
            "--timestamp-key",
            "timestamp.pub",
        ]);
        a.extend(extra);
        env.run(&a)
    };
    let r = init("x", &["--expires", "root=99999999999d"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.lines().last().unwrap(),
        "error: --expires root: 8639999999913600 s from now is past 9999-12-31 (the latest expiry)"
    );
    assert!(!env.path("x").exists(), "nothing written");
    assert_eq!(init("x", &[]).code, 0, "the retry");

    // a directory holding staged files already: refused, as it was
    std::fs::create_dir_all(env.path("y/staged")).unwrap();
    env.write("y/staged/root.json", b"{}");
    let before = snapshot_tree(&env.path("y"));
    let r = init("y", &[]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.lines().last().unwrap(),
        "error: y/staged: holds staged files already (a repository's, moved or half-removed?); \
         refusing to mix a new root with them"
    );
    assert_eq!(snapshot_tree(&env.path("y")), before);
}

#[test]
fn target_add_refuses_a_policy_that_no_pump_could_install_and_changes_nothing() {
    let env = Env::new();
    env.published_repo();
    env.write("fw.bin", b"firmware 1");
    env.write("fw2.bin", b"firmware 2");
    let add = |file: &str, extra: &[&str]| {
        let mut a = vec![
            "target",
            "add",
            "repo",
            "--file",
            file,
            "--name",
            "pump-a/fw.bin",
        ];
        a.extend(extra);
        env.run(&a)
    };
    let policy = [
        "--version",
        "1.0.0",
        "--model",
        "pump-a",
        "--revisions",
        "r1,r2",
    ];
    assert_eq!(add("fw.bin", &policy).code, 0);
    let before = snapshot_tree(&env.path(""));
    let refused = |r: Run, error: &str| {
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(r.stderr.lines().last().unwrap(), error);
        assert_eq!(snapshot_tree(&env.path("")), before);
    };
    // an empty revision list: the image would match no pump
    refused(
        add("fw2.bin", &["--version", "2.0.0", "--model", "pump-a", "--revisions", " , "]),
        "error: --model pump-a: --revisions \" , \" lists no revision: the image would install on no pump",
    );
    // the next release under the same name without its policy: every pump would refuse it
    refused(
        add("fw2.bin", &[]),
        "error: target \"pump-a/fw.bin\" in targets has a firmware policy \
         ({\"hardware\":[{\"model\":\"pump-a\",\"revisions\":[\"r1\",\"r2\"]}],\"version\":\"1.0.0\"}); \
         the new entry has none: give its --version, --model and --revisions (and \
         --security-counter) again",
    );
    // with it, the release replaces the entry
    let r = add(
        "fw2.bin",
        &[
            "--version",
            "2.0.0",
            "--model",
            "pump-a",
            "--revisions",
            "r1,r2",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_change_that_voids_collected_signatures_says_so() {
    let env = Env::new();
    env.standard_keys();
    env.init();
    env.sign("repo/staged/root.json", "root-a");
    // the targets keys live in root: root changes, and root-a's signature is void
    env.key("targets-2", "ed25519");
    let r = env.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
    ]);
    assert!(
        r.stderr.contains(
            "note: staged root.json changed: the 1 signature(s) collected on it no longer apply; \
             collect them again"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.json("repo/staged/root.json")["signatures"],
        serde_json::json!([])
    );
    // nothing collected, nothing to say
    let r = env.ok(&["rotate", "repo", "--role", "targets", "--threshold", "2"]);
    assert!(!r.stderr.contains("no longer apply"), "{}", r.stderr);
}

#[test]
fn a_file_changed_after_someone_signed_it_is_not_co_signed() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    e.sign("repo/staged/root.json", "root-a");
    let (a, b) = (e.keyid("root-a"), e.keyid("root-b"));
    // someone edits the staged root after root-a signed (a key's expiry moved out by a year),
    // keeping root-a's signature
    let mut doc = e.json("repo/staged/root.json");
    let expires = doc["signed"]["expires"].as_str().unwrap().to_string();
    let later = format!(
        "{}{}",
        expires[..4].parse::<u32>().unwrap() + 1,
        &expires[4..]
    );
    doc["signed"]["expires"] = serde_json::Value::String(later);
    e.write("repo/staged/root.json", &serde_json::to_vec(&doc).unwrap());
    let before = std::fs::read(e.path("repo/staged/root.json")).unwrap();

    // root-b is refused before any passphrase, by file and by directory, and nothing is written
    for path in ["repo/staged/root.json", "repo"] {
        let r = e.run(&sign_args(path, "root-b.key"));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(
            r.stderr.trim_end(),
            format!(
                "error: refusing to sign repo/staged/root.json: the signature of {a} does not \
                 verify over this content (changed after it was signed?); nothing written. Stage \
                 it again (its signatures are dropped), or let the holder of that key sign it \
                 again first"
            ),
            "{path}"
        );
        e.unchanged("repo/staged/root.json", &before, path);
    }

    // root-a signs the new content again (their signature replaces the old one), then root-b
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let s = e.run(&["status", "repo/staged/root.json"]);
    assert_eq!(s.code, 0, "{}", s.stdout);
    assert!(
        s.stdout.contains("threshold 2 — 2 valid — MET"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains(&format!("signed   {a}, {b}\n")),
        "{}",
        s.stdout
    );
}

#[test]
fn a_publish_without_online_keys_says_devices_do_not_see_the_release_yet() {
    let env = Env::new();
    env.signed_release();
    let r = env.ok(&["publish", "repo"]);
    assert!(
        r.stdout.contains(
            "not seen by devices yet: no snapshot lists the new targets (`hale-sign push` to the \
             server, which signs snapshot and timestamp, or publish with --snapshot-key and \
             --timestamp-key)"
        ),
        "{}",
        r.stdout
    );
    // with the online keys, it is seen
    env.write("fw3.bin", b"firmware 3");
    env.ok(&["target", "add", "repo", "--file", "fw3.bin"]);
    env.sign("repo/staged/targets.json", "targets");
    let r = env.publish();
    assert!(!r.stdout.contains("not seen by devices"), "{}", r.stdout);
    // nothing staged: the online roles are signed again, and said so
    let r = env.publish();
    assert_eq!(
        r.stdout.lines().next().unwrap(),
        "published snapshot v3 (1 roles), timestamp v3 (nothing staged: signed again) into \
         repo/repository"
    );
}

#[test]
fn a_push_to_a_server_that_is_down_names_its_url_once() {
    let env = Env::new();
    env.published_repo();
    // a port nothing listens on and nothing else can take while the test runs: bound, never
    // listening (a port freed by dropping a listener was taken by a parallel test's server
    // before the push, which then reached it; an outgoing connection's own port could be
    // picked again as the source of a connect, which would then reach itself)
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    holder.bind(&loopback.into()).unwrap();
    let down = holder.local_addr().unwrap().as_socket().unwrap();
    let refused = std::net::TcpStream::connect(down).unwrap_err();
    let server = format!("http://{down}");
    let r = env.run(&["push", "repo", "--server", &server, "--token-env", PW_ENV]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap();
    assert!(last.starts_with(&format!("error: {server}/")), "{last}");
    assert!(
        last.ends_with(&format!(": Connection Failed: Connect error: {refused}")),
        "{last}"
    );
    assert_eq!(last.matches(&server).count(), 1, "{last}");
}

#[test]
fn without_a_terminal_the_passphrase_prompt_says_how_else_to_give_it() {
    let env = Env::new();
    // `setsid`: no controlling terminal, as in a script or CI
    let out = std::process::Command::new("setsid")
        .arg(env!("CARGO_BIN_EXE_hale-sign"))
        .args(["key", "generate", "--out", "k", "--type", "ed25519"])
        .current_dir(env.path(""))
        .stdin(std::process::Stdio::null())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: passphrase for k.key: cannot ask on a terminal (")
            && last.ends_with("); give it with --passphrase-env VAR or --passphrase-file FILE"),
        "{last}"
    );
    assert!(!env.path("k.key").exists() && !env.path("k.pub").exists());
}

#[test]
fn a_new_key_needs_a_passphrase_of_twelve_bytes_or_more() {
    let env = Env::new();
    for (var, value) in [("SHORT", "a"), ("ELEVEN", "12345678901")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hale-sign"))
            .args(["key", "generate", "--out", "k", "--type", "ed25519"])
            .args(["--passphrase-env", var])
            .current_dir(env.path(""))
            .env(var, value)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!(
                "error: passphrase for k.key: {} bytes; a new key's needs at least 12",
                value.len()
            )
        );
        assert!(!env.path("k.key").exists() && !env.path("k.pub").exists());
    }
    // the online CA files too
    env.write("s", b"short\n");
    let r = env.run(&[
        "ca",
        "init",
        "--out",
        "ca",
        "--passphrase-env",
        PW_ENV,
        "--server-passphrase-file",
        "s",
    ]);
    assert_eq!(
        (r.code, r.stderr.lines().last().unwrap()),
        (
            2,
            "error: passphrase for the server's CA files: 5 bytes; a new key's needs at least 12"
        )
    );
    assert!(!env.path("ca").exists());
}

#[test]
fn a_published_role_near_its_expiry_is_named_by_status_and_renewed_without_other_change() {
    let e = Env::new();
    e.published_repo();
    // targets policy of 3½ days: the published targets v2 expires within the two weeks status
    // warns about
    let cfg = e.path("repo/hale-repo.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["expires"]["targets"] = serde_json::json!(3 * 86_400 + 43_200);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    e.write("fw.bin", b"firmware");
    e.ok(&["target", "add", "repo", "--file", "fw.bin"]);
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let expires = e.json("repo/repository/2.targets.json")["signed"]["expires"]
        .as_str()
        .unwrap()
        .to_string();
    let st = e.ok(&["status", "repo"]);
    assert_eq!(
        st.stdout,
        format!(
            "targets v2 expires at {expires} (in 3 days): devices refuse every update after it\n\
             to renew: `hale-sign renew repo --role targets`, then sign, publish and push\n\
             repo: nothing staged\n"
        )
    );

    // refusals change nothing
    let before = snapshot_tree(&e.path("repo"));
    for (args, err) in [
        (
            vec!["renew", "repo", "--role", "snapshot"],
            "error: --role snapshot: snapshot and timestamp are signed again at each publish (`hale-sign publish repo`) or by the server, not renewed here",
        ),
        (
            vec!["renew", "repo", "--role", "nosuch"],
            "error: repo: role \"nosuch\" has no metadata (staged or published)",
        ),
        (
            vec!["renew", "repo", "--role", "targets", "--role", "targets"],
            "error: --role targets: targets is named twice",
        ),
    ] {
        let r = e.run(&args);
        assert_eq!((r.code, r.stderr.trim_end()), (2, err), "{args:?}");
    }
    // a renewal that would expire sooner than now
    let r = e.run(&["renew", "repo", "--role", "targets", "--expires-in", "1d"]);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            format!(
                "error: targets: the renewed expiry {} is sooner than the current {expires}: give a longer --expires-in (or none, for the policy's)",
                r.stderr.split("renewed expiry ").nth(1).and_then(|t| t.split(' ').next()).unwrap_or("?")
            )
            .as_str()
        )
    );
    let r = e.run(&["renew", "repo", "--role", "targets", "--expires-in", "90"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("duration \"90\" has no unit: 90s, 90m, 90h, 90d or 90w?"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot_tree(&e.path("repo")), before);

    // targets v3: v2's content, the policy's lifetime from now (the default 90 days again)
    c["expires"]["targets"] = serde_json::json!(90 * 86_400);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let r = e.ok(&["renew", "repo", "--role", "targets"]);
    let v3 = e.json("repo/staged/targets.json")["signed"].clone();
    let new_expires = v3["expires"].as_str().unwrap().to_string();
    assert_eq!(
        r.stdout,
        format!("targets v3 staged: expires {new_expires} (was {expires})\n")
    );
    let mut v2 = e.json("repo/repository/2.targets.json")["signed"].clone();
    v2["version"] = serde_json::json!(3);
    v2["expires"] = serde_json::json!(new_expires);
    assert_eq!(v3, v2, "only version and expiry changed");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    assert_eq!(e.verify().code, 0);
    assert_eq!(e.ok(&["status", "repo"]).stdout, "repo: nothing staged\n");
}

#[test]
fn new_key_files_get_the_full_scrypt_cost_and_a_cheaper_one_is_named_when_opened() {
    let e = Env::new();
    let run_plain = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hale-sign"))
            .args(args)
            .current_dir(e.tmp.path())
            .env(common::PW_ENV, PW)
            .env_remove("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // a production key file: N = 2^17 (OWASP's least for scrypt)
    let err = run_plain(&[
        "key",
        "generate",
        "--out",
        "strong",
        "--passphrase-env",
        common::PW_ENV,
    ]);
    assert_eq!(err, "", "no warning for a new key");
    assert_eq!(e.json("strong.key")["kdf"]["log_n"], 17);
    // one sealed at 2^10 (as the test knob writes them), opened without the knob: named
    e.standard_keys();
    e.init();
    let err = run_plain(&[
        "sign",
        "repo/staged/targets.json",
        "--key",
        "targets.key",
        "--passphrase-env",
        common::PW_ENV,
    ]);
    assert!(
        err.contains(
            "warning: targets.key: sealed with scrypt N = 2^10, below the 2^17 new key files get: \
             a stolen copy is 128x cheaper to guess. Generate a new key and rotate to it when you \
             can.\n"
        ),
        "{err}"
    );
}

/// A root given as a file of its own (`--repo`: mailed to the signers) is checked against its
/// own root role and the published root before it, not the repository's: a clone without the
/// staged rotation refused a new root key ("not listed … by root v1") and `status` called the
/// file met on the old root's keys alone, never checking its own (found by review, 2026-11-24).
#[test]
fn a_mailed_root_is_signed_and_reported_against_its_own_root_role() {
    let e = Env::new();
    e.published_repo();
    e.key("root-d", "ed25519");
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--add-key",
        "root-d.pub",
        "--remove-key",
        "root-a.pub",
    ]);
    std::fs::create_dir(e.path("m")).unwrap();
    std::fs::copy(e.path("repo/staged/root.json"), e.path("m/root.json")).unwrap();
    // a signer's clone: the published repository, no staged rotation
    let cp = std::process::Command::new("cp")
        .args(["-r", &e.p("repo"), &e.p("clone")])
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::remove_file(e.path("clone/staged/root.json")).unwrap();
    let sign = |key: &str| {
        let mut a: Vec<&str> = sign_args("m/root.json", key).to_vec();
        a.extend(["--repo", "clone"]);
        e.run(&a)
    };
    let status = || e.run(&["status", "m/root.json", "--repo", "clone"]);
    let r = sign("root-d.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = status();
    assert_eq!(s.code, 1, "{}", s.stdout);
    for line in [
        "root v2 (its own root role): threshold 2 — 1 valid — NOT MET",
        "root v1 (the trusted root it rotates from): threshold 2 — 0 valid — NOT MET",
    ] {
        assert!(s.stdout.contains(line), "{line}\n{}", s.stdout);
    }
    // the removed key signs for the root it rotates from, and does not count for its own role
    let before = std::fs::read(e.path("m/root.json")).unwrap();
    let r = sign("root-a.key");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(std::fs::read(e.path("m/root.json")).unwrap(), before);
    let s = status();
    assert!(
        s.stdout
            .contains("root v2 (its own root role): threshold 2 — 1 valid — NOT MET"),
        "{}",
        s.stdout
    );
    // the two that stay on both: met on both
    sign("root-b.key");
    sign("root-c.key");
    let s = status();
    assert_eq!(s.code, 0, "{}", s.stdout);
    for line in [
        "root v2 (its own root role): threshold 2 — 3 valid — MET",
        "root v1 (the trusted root it rotates from): threshold 2 — 3 valid — MET",
    ] {
        assert!(s.stdout.contains(line), "{line}\n{}", s.stdout);
    }
}

/// `target add --from-dir` refuses a symbolic link in the directory, naming it, and adds nothing:
/// before, it was left out without a word and the release missed an image the engineer saw
/// there (found by review, 2026-11-24).
#[test]
fn from_dir_refuses_a_symbolic_link_and_adds_nothing() {
    let e = Env::new();
    e.published_repo();
    e.write("src/a.bin", b"image a");
    e.write("elsewhere.bin", b"image b");
    std::os::unix::fs::symlink(e.path("elsewhere.bin"), e.path("src/b.bin")).unwrap();
    let repo_before = snapshot_tree(&e.path("repo/repository"));
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    let r = e.run(&["target", "add", "repo", "--from-dir", "src"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert_eq!(
        r.stderr.trim_end(),
        "error: src/b.bin: a symbolic link: --from-dir adds regular files and directories only; \
         give it with --file, or copy the file in"
    );
    assert_eq!(snapshot_tree(&e.path("repo/repository")), repo_before);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);
    // given with --file, the file the link names is added under the link's name
    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "src/a.bin",
        "--file",
        "src/b.bin",
    ]);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["targets"]["b.bin"]["length"], 7);
    assert_eq!(t["signed"]["targets"]["a.bin"]["length"], 7);
}

/// A snapshot threshold of 2 (which `init` allows) is met at publish by giving `--snapshot-key`
/// twice; one key, a key given twice or a key that is not a snapshot key is refused with what is
/// missing, and nothing is written. Before, publish took one key and called the snapshot key
/// "not a snapshot key" (found by review, 2026-11-24).
#[test]
fn publish_meets_an_online_threshold_above_one_with_repeated_keys() {
    let e = Env::new();
    e.standard_keys();
    e.key("snapshot-2", "ecdsa-p256");
    e.ok(&[
        "init",
        "repo",
        "--root-key",
        "root-a.pub",
        "--root-key",
        "root-b.pub",
        "--root-key",
        "root-c.pub",
        "--root-threshold",
        "2",
        "--targets-key",
        "targets.pub",
        "--snapshot-key",
        "snapshot.pub",
        "--snapshot-key",
        "snapshot-2.pub",
        "--snapshot-threshold",
        "2",
        "--timestamp-key",
        "timestamp.pub",
    ]);
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    e.sign("repo/staged/targets.json", "targets");
    let publish = |snapshot: &[&str]| {
        let mut a = vec!["publish", "repo"];
        for k in snapshot {
            a.extend(["--snapshot-key", k]);
        }
        a.extend([
            "--timestamp-key",
            "timestamp.key",
            "--passphrase-env",
            PW_ENV,
        ]);
        e.run(&a)
    };
    let staged_before = snapshot_tree(&e.path("repo/staged"));
    for (keys, error) in [
        (
            &["snapshot.key"][..],
            "error: snapshot: root v1 asks 2 signatures, 1 key(s) given: give --snapshot-key \
             once for each of 2 of its keys"
                .to_string(),
        ),
        (
            &["snapshot.key", "snapshot.key"][..],
            format!(
                "error: snapshot.key: key {} is given twice for snapshot",
                e.keyid("snapshot")
            ),
        ),
        (
            &["snapshot.key", "targets.key"][..],
            format!(
                "error: targets.key: key {} is not a snapshot key of root v1",
                e.keyid("targets")
            ),
        ),
    ] {
        let r = publish(keys);
        assert_eq!(r.code, 2, "{keys:?}: {}", r.stdout);
        assert_eq!(r.stderr.trim_end(), error, "{keys:?}");
        assert!(!e.path("repo/repository/1.root.json").exists(), "{keys:?}");
        assert!(!e.path("repo/repository/timestamp.json").exists());
        assert_eq!(snapshot_tree(&e.path("repo/staged")), staged_before);
    }
    let r = publish(&["snapshot.key", "snapshot-2.key"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let snap = e.json("repo/repository/1.snapshot.json");
    assert_eq!(snap["signatures"].as_array().unwrap().len(), 2);
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
}

/// A mailed root of a version already published must be the published one: another, signed by
/// keys it lists itself, was called ready by `status` (checked against its own root role alone)
/// and signed by `sign` (found by review, 2026-11-24). Refused by both, the file unchanged.
#[test]
fn a_mailed_root_of_a_published_version_must_be_the_published_one() {
    let e = Env::new();
    e.published_repo();
    let mut forged = e.json("repo/repository/1.root.json");
    forged["signed"]["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    e.write("m/root.json", &serde_json::to_vec(&forged).unwrap());
    let before = std::fs::read(e.path("m/root.json")).unwrap();
    let error = "root v1 is published with other content: this file is not it (a new root takes \
                 version 2)";
    let s = e.run(&["status", "m/root.json", "--repo", "repo"]);
    assert_eq!(s.code, 2, "{}", s.stdout);
    assert!(s.stderr.contains(error), "{}", s.stderr);
    let mut a: Vec<&str> = sign_args("m/root.json", "root-a.key").to_vec();
    a.extend(["--repo", "repo"]);
    let r = e.run(&a);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains(error), "{}", r.stderr);
    assert_eq!(std::fs::read(e.path("m/root.json")).unwrap(), before);
    // the published root itself, mailed: reported against its own root role
    std::fs::copy(e.path("repo/repository/1.root.json"), e.path("m/root.json")).unwrap();
    let s = e.run(&["status", "m/root.json", "--repo", "repo"]);
    assert_eq!(s.code, 0, "{}\n{}", s.stdout, s.stderr);
    assert!(
        s.stdout
            .contains("root v1 (its own root role): threshold 2 — 2 valid — MET"),
        "{}",
        s.stdout
    );
}

/// After a publish killed midway, a change waits for the next `publish` to finish it (the
/// repository holds part of a publish: a target added or an authorization made now would build
/// on it, a push would send it); after one killed once it stood, before removing the staged
/// copies, a change builds on the published version instead of re-staging it (before,
/// `target add` changed targets v3 in place and the publish refused it as already published
/// with other content). Found by review, 2026-11-24; fails on the old code. Since 2026-11-25 the
/// refusal says the publish finishes the interrupted one (it undid it before).
#[test]
fn after_a_killed_publish_changes_wait_for_its_finish_and_build_on_what_was_published() {
    let e = Env::new();
    e.signed_release();
    let crash = |point: &str| e.crash_publish(point);
    crash("written");
    let repo = snapshot_tree(&e.path("repo/repository"));
    let staged = snapshot_tree(&e.path("repo/staged"));
    e.write("fw3.bin", b"firmware 3");
    let refusal = "error: repo: a publish was interrupted (repo/publishing.json is there) and \
                   the repository holds part of it: run `hale-sign publish repo` to finish the \
                   interrupted publish, then this again; nothing done";
    for args in [
        &["target", "add", "repo", "--file", "fw3.bin"][..],
        &sign_args("repo", "targets.key")[..],
        &["renew", "repo", "--role", "targets"][..],
    ] {
        let r = e.run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stdout);
        assert_eq!(r.stderr.trim_end(), refusal, "{args:?}");
        assert_eq!(snapshot_tree(&e.path("repo/repository")), repo, "{args:?}");
        assert_eq!(snapshot_tree(&e.path("repo/staged")), staged, "{args:?}");
        assert!(e.path("repo/publishing.json").exists());
    }
    // the publish finishes it (targets v2), and signs a new snapshot and timestamp after it
    e.publish();
    assert_eq!(e.verify().code, 0);

    // a release of targets v3 that stood, killed before its staged copy was removed
    e.ok(&["target", "add", "repo", "--file", "fw3.bin"]);
    e.sign("repo/staged/targets.json", "targets");
    crash("done");
    assert_eq!(e.json("repo/staged/targets.json")["signed"]["version"], 3);
    assert!(e.path("repo/repository/3.targets.json").exists());
    // the next change stages v4 over the published v3, which publishes
    e.write("fw4.bin", b"firmware 4");
    e.ok(&["target", "add", "repo", "--file", "fw4.bin"]);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["version"], 4);
    assert_eq!(t["signed"]["targets"]["fw3.bin"]["length"], 10);
    assert_eq!(t["signed"]["targets"]["fw4.bin"]["length"], 10);
    e.sign("repo/staged/targets.json", "targets");
    let r = e.publish();
    assert!(r.stdout.starts_with("published targets v4"), "{}", r.stdout);
    assert_eq!(e.verify().code, 0);
}

/// One key under two key ids (a P-256 key as `ecdsa` and as `ecdsa-sha2-nistp256`: each form
/// has its own key id) is refused in a root role, a delegation or hashed bins, and nothing is staged: it
/// counts once toward a threshold, reads to a co-signer as two key holders, and a rotation
/// removing it by one key id left it trusted under the other, so a stolen key still signed
/// releases after its "removal" (review).
#[test]
fn one_key_under_two_key_ids_is_refused_and_nothing_is_staged() {
    let e = Env::new();
    e.published_repo();
    let t1 = e.key("t1", "ecdsa-p256");
    let mut alt = e.json("t1.pub");
    alt["keytype"] = serde_json::json!("ecdsa-sha2-nistp256");
    alt.as_object_mut().unwrap().remove("keyid");
    e.write("t1-alt.pub", &serde_json::to_vec_pretty(&alt).unwrap());
    let alt_id = hale_repo::keys::keyid_of(&alt).unwrap();
    assert_ne!(alt_id, t1);
    let staged = snapshot_tree(&e.path("repo/staged"));
    let refusal = |delegator: &str, role: &str| {
        format!(
            "error: {delegator}: {role} lists one key under two key ids ({t1} and {alt_id}; an \
             ECDSA key as `ecdsa` and as `ecdsa-sha2-nistp256`, or as PEM and as hex): it counts \
             once toward the threshold, would read as two key holders, and removing it by one key \
             id would leave it trusted under the other"
        )
    };
    for (args, delegator, role) in [
        (
            vec![
                "rotate",
                "repo",
                "--role",
                "targets",
                "--add-key",
                "t1.pub",
                "--add-key",
                "t1-alt.pub",
            ],
            "root",
            "targets",
        ),
        (
            vec![
                "delegate",
                "repo",
                "--to",
                "pump-a",
                "--paths",
                "pump-a/*",
                "--key",
                "t1.pub",
                "--key",
                "t1-alt.pub",
                "--threshold",
                "2",
            ],
            "targets",
            "pump-a",
        ),
        (
            vec![
                "bins",
                "repo",
                "--bit-length",
                "3",
                "--key",
                "t1.pub",
                "--key",
                "t1-alt.pub",
                "--threshold",
                "2",
            ],
            "targets",
            "bin",
        ),
    ] {
        let r = e.run(&args);
        assert_eq!(
            (r.code, r.stderr.trim_end()),
            (2, refusal(delegator, role).as_str()),
            "{args:?}"
        );
        assert_eq!(snapshot_tree(&e.path("repo/staged")), staged, "{args:?}");
    }
}

/// `init DIR OPTIONS…` with `root_keys`, then the standard targets, snapshot and timestamp keys.
fn init_with(dir_and_options: &[&'static str], root_keys: &[&'static str]) -> Vec<&'static str> {
    [
        &["init"][..],
        dir_and_options,
        root_keys,
        &[
            "--targets-key",
            "targets.pub",
            "--snapshot-key",
            "snapshot.pub",
            "--timestamp-key",
            "timestamp.pub",
        ],
    ]
    .concat()
}
