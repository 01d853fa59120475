//! `hale-sign config DIR --device-key-types`: the key types every device of the fleet verifies,
//! changed by a command instead of by editing hale-repo.json. Narrowing is refused while a key of
//! a dropped type is listed by the published root or any staged or published role; widening is
//! allowed with a warning; an unchanged list writes nothing. Every test fails on the code before
//! the command (no such subcommand).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{snapshot_tree, Env};

const CONFIG: &str = "repo/hale-repo.json";

/// `config repo --device-key-types TYPES`.
fn config(e: &Env, types: &str) -> common::Run {
    e.run(&["config", "repo", "--device-key-types", types])
}

/// Assert `r` was refused with exactly `error` and hale-repo.json still holds `before`.
#[track_caller]
fn refused(e: &Env, r: &common::Run, error: &str, before: &[u8]) {
    assert_eq!((r.code, r.stderr.trim_end()), (2, error), "{}", r.stdout);
    e.unchanged(CONFIG, before, "refused");
}

#[test]
fn an_unchanged_list_is_said_and_nothing_is_written() {
    let e = Env::new();
    e.standard_keys();
    e.init();
    let before = std::fs::read(e.path(CONFIG)).unwrap();
    // the same types in another order
    let r = config(&e, "ecdsa-p256,ed25519");
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    assert_eq!(
        r.stdout.trim_end(),
        "repo: device_key_types is already ed25519, ecdsa-p256; repo/hale-repo.json unchanged"
    );
    e.unchanged(CONFIG, &before, "unchanged list");

    // lists that are not one: refused as such
    refused(
        &e,
        &config(&e, "ed25519,dsa"),
        "error: --device-key-types ed25519,dsa: device key type \"dsa\": not one of ed25519, \
         ecdsa-p256, rsa",
        &before,
    );
    refused(
        &e,
        &config(&e, "ecdsa-p256"),
        "error: --device-key-types ecdsa-p256: device key types must include ed25519 (every \
         device build verifies it)",
        &before,
    );
    // another command holds the directory
    let lock = e.hold_lock();
    refused(
        &e,
        &config(&e, "ed25519,ecdsa-p256,rsa"),
        "error: repo: another hale-sign command is changing this working directory \
         (repo/.hale-sign.lock is locked): run this again when it has finished; nothing done",
        &before,
    );
    drop(lock);

    // a repository made before device_key_types: the default, said as such
    let mut doc = e.json(CONFIG);
    doc.as_object_mut().unwrap().remove("device_key_types");
    e.write(CONFIG, &serde_json::to_vec_pretty(&doc).unwrap());
    let before = std::fs::read(e.path(CONFIG)).unwrap();
    let r = e.ok(&["config", "repo", "--device-key-types", "ed25519,ecdsa-p256"]);
    assert_eq!(
        r.stdout.trim_end(),
        "repo: device_key_types is already ed25519, ecdsa-p256 (the default: \
         repo/hale-repo.json lists none); repo/hale-repo.json unchanged"
    );
    e.unchanged(CONFIG, &before, "the default");
}

/// The refusal to drop ecdsa-p256 while `listed` ("root v1 (published) lists KEY (ecdsa-p256)
/// for root", …) are listed.
fn narrowing_refusal(listed: &str) -> String {
    format!(
        "error: refusing to drop ecdsa-p256 from device_key_types: keys of that type are listed: \
         {listed}. A device that does not verify ecdsa-p256 counts no signature of them, and a \
         root whose threshold needs one strands it on the root before it. Rotate them out first \
         (`hale-sign rotate repo --role ROLE --remove-key KEYID`, then sign and publish), then \
         run this again; repo/hale-repo.json unchanged"
    )
}

/// Narrowing to ed25519 while the published root lists root-b (P-256) and a staged targets
/// delegates to pump-a with a P-256 key: refused, naming both keys, their roles and documents,
/// nothing written. Rotated out of the staged files, the published root still lists root-b:
/// still refused. Once root v2 without it is published, the list narrows.
#[test]
fn narrowing_is_refused_while_a_key_of_a_dropped_type_is_listed_until_it_is_rotated_out() {
    let e = Env::new();
    e.published_repo();
    let b = e.keyid("root-b");
    let pe = e.key("pe", "ecdsa-p256");
    e.key("pf", "ed25519");
    e.ok(&[
        "delegate", "repo", "--to", "pump-a", "--key", "pe.pub", "--paths", "pump-a/*",
    ]);
    let before = std::fs::read(e.path(CONFIG)).unwrap();
    let staged = snapshot_tree(&e.path("repo/staged"));
    let published = snapshot_tree(&e.path("repo/repository"));
    refused(
        &e,
        &config(&e, "ed25519"),
        &narrowing_refusal(&format!(
            "root v1 (published) lists {b} (ecdsa-p256) for root; targets v2 (staged) lists \
             {pe} (ecdsa-p256) for pump-a"
        )),
        &before,
    );
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged);
    assert_eq!(snapshot_tree(&e.path("repo/repository")), published);

    // rotated out of what is staged: the published root v1 still lists root-b
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "root",
        "--remove-key",
        "root-b.pub",
    ]);
    e.ok(&[
        "rotate",
        "repo",
        "--role",
        "pump-a",
        "--remove-key",
        "pe.pub",
        "--add-key",
        "pf.pub",
    ]);
    refused(
        &e,
        &config(&e, "ed25519"),
        &narrowing_refusal(&format!(
            "root v1 (published) lists {b} (ecdsa-p256) for root"
        )),
        &before,
    );

    // published: the list narrows
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    e.sign("repo/staged/root.json", "root-c");
    e.sign("repo/staged/targets.json", "targets");
    e.sign("repo/staged/pump-a.json", "pf");
    e.publish();
    let r = config(&e, "ed25519");
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{}", r.stdout);
    assert_eq!(
        r.stdout.trim_end(),
        "repo: device_key_types is now ed25519 (was ed25519, ecdsa-p256) in repo/hale-repo.json"
    );
    assert_eq!(
        e.json(CONFIG)["device_key_types"],
        serde_json::json!(["ed25519"])
    );
    // and keys of the dropped type are refused from then on
    ecdsa_key_refused(&e, &pe);
}

/// `rotate` adding the ECDSA key `pe.pub` to the targets role.
const ROTATE_IN_PE: [&str; 6] = ["rotate", "repo", "--role", "targets", "--add-key", "pe.pub"];

/// [`ROTATE_IN_PE`] in a repository whose devices verify ed25519 only: refused (exit 2), saying
/// why (`pe`: the key's id).
fn ecdsa_key_refused(e: &Env, pe: &str) {
    let r = e.run(&ROTATE_IN_PE);
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (
            2,
            format!(
                "error: pe.pub: key {pe} is of type ecdsa-p256, and this repository's devices \
                 verify ed25519 only (device_key_types in hale-repo.json): its signatures would \
                 count for nothing on them, and a targets threshold that needs one would stop \
                 every update"
            )
            .as_str()
        )
    );
}

/// The warning of a widening to `types`, `rsa` the note on rsa.
fn widening_warning(types: &str, them: &str, rsa: &str) -> String {
    format!(
        "warning: device_key_types now lists {types}: hale-sign accepts keys of {them} for every \
         role from now on. Every device of the fleet, older hardware and firmware too, must \
         verify {types}{rsa}: a device that does not counts no signature of such a key, and a \
         root whose threshold needs one strands it on the root before it (a published root is \
         never replaced)"
    )
}

/// A repository whose devices verify ed25519 only: widening to ecdsa-p256 is allowed with a
/// warning that every device must verify it, and a P-256 key is accepted from then on; rsa is
/// said to be verified by host builds only.
#[test]
fn widening_warns_that_every_device_of_the_fleet_must_verify_the_type() {
    let e = Env::new();
    for k in ["root-a", "targets", "snapshot", "timestamp"] {
        e.key(k, "ed25519");
    }
    let pe = e.key("pe", "ecdsa-p256");
    e.ok(&[
        "init",
        "repo",
        "--root-key",
        "root-a.pub",
        "--targets-key",
        "targets.pub",
        "--snapshot-key",
        "snapshot.pub",
        "--timestamp-key",
        "timestamp.pub",
        "--device-key-types",
        "ed25519",
    ]);
    let staged = snapshot_tree(&e.path("repo/staged"));
    ecdsa_key_refused(&e, &pe);
    assert_eq!(snapshot_tree(&e.path("repo/staged")), staged);

    let r = config(&e, "ed25519,ecdsa-p256");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        widening_warning("ecdsa-p256", "that type", "")
    );
    assert_eq!(
        r.stdout.trim_end(),
        "repo: device_key_types is now ed25519, ecdsa-p256 (was ed25519) in repo/hale-repo.json"
    );
    assert_eq!(
        e.json(CONFIG)["device_key_types"],
        serde_json::json!(["ed25519", "ecdsa-p256"])
    );
    e.ok(&ROTATE_IN_PE);

    let r = config(&e, "ed25519,rsa,ecdsa-p256");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        widening_warning(
            "rsa",
            "that type",
            " (hale-core verifies rsa in host builds only, with `std`: check the pumps' firmware)"
        )
    );
    assert_eq!(
        e.json(CONFIG)["device_key_types"],
        serde_json::json!(["ed25519", "rsa", "ecdsa-p256"])
    );

    // both dropped at once while the staged root lists the P-256 key: refused, naming it
    let before = std::fs::read(e.path(CONFIG)).unwrap();
    refused(
        &e,
        &config(&e, "ed25519"),
        &format!(
            "error: refusing to drop rsa and ecdsa-p256 from device_key_types: keys of those \
             types are listed: root v1 (staged) lists {pe} (ecdsa-p256) for targets. A device \
             that does not verify rsa or ecdsa-p256 counts no signature of them, and a root \
             whose threshold needs one strands it on the root before it. Rotate them out first \
             (`hale-sign rotate repo --role ROLE --remove-key KEYID`, then sign and publish), \
             then run this again; repo/hale-repo.json unchanged"
        ),
        &before,
    );
}
