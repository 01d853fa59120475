//! `hale-sign ca reseal`: the Technician and Server CA files of an existing hierarchy sealed
//! again under their own (operations) passphrase. The real binary on real files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use common::{snapshot_tree, Env, PW, PW_ENV};
use hale_pki::{Ca, CaRole};

const SERVER_PASS: &str = "the server's own passphrase";
const OPS_PASS: &str = "the operations' own passphrase";
const WRONG: &str = "key file: wrong passphrase or damaged key file";

/// `ca init` of ca/ as before `--operations-passphrase-*`: the offline passphrase (`PW`, from the
/// environment) and the server's (`SERVER_PASS`, file server-pass), which then also seals the
/// Technician and Server CA files. With `operations`, the operations passphrase too
/// (`OPS_PASS`, file ops-pass), as `ca init` seals them now.
fn ca_init(env: &Env, operations: bool) -> common::Run {
    env.write("server-pass", format!("{SERVER_PASS}\n").as_bytes());
    env.write("ops-pass", format!("{OPS_PASS}\n").as_bytes());
    let mut a = [
        "ca",
        "init",
        "--out",
        &env.p("ca"),
        "--passphrase-env",
        PW_ENV,
    ]
    .map(String::from)
    .to_vec();
    a.extend(["--server-passphrase-file".into(), env.p("server-pass")]);
    if operations {
        a.extend(["--operations-passphrase-file".into(), env.p("ops-pass")]);
    }
    env.ok(&a)
}

/// `ca reseal --ca-dir DIR --ca WHICH`, then `pass` (the current passphrase's and the new one's
/// options), for `Env::run` or `Env::ok`.
fn reseal_args(env: &Env, dir: &str, which: &str, pass: &[&str]) -> Vec<String> {
    let mut a = ["ca", "reseal", "--ca-dir", &env.p(dir), "--ca", which]
        .map(String::from)
        .to_vec();
    a.extend(pass.iter().map(|s| s.to_string()));
    a
}

/// Runs `args`, expecting a refusal: exit 2, `error` as the last line of stderr, and every file
/// under `dir` byte for byte as before the run.
#[track_caller]
fn assert_refused_unchanged(env: &Env, dir: &Path, args: &[String], error: &str) {
    let before = snapshot_tree(dir);
    let r = env.run(args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().last().unwrap(), error);
    assert_eq!(snapshot_tree(dir), before);
}

/// Whether CA_DIR/<slug>.key opens with `pass` to the CA of `role` whose certificate is
/// CA_DIR/<slug>.crt; a file that does not open is hale-pki's wrong passphrase.
#[track_caller]
fn opens_with(env: &Env, dir: &str, role: CaRole, pass: &str) -> bool {
    let file = std::fs::read(env.path(&format!("{dir}/{}.key", role.slug()))).unwrap();
    match Ca::from_file(&file, pass.as_bytes()) {
        Ok(ca) => {
            assert_eq!(ca.role(), role);
            let crt = std::fs::read_to_string(env.path(&format!("{dir}/{}.crt", role.slug())));
            assert_eq!(ca.certificate_pem().unwrap(), crt.unwrap(), "{role}");
            true
        }
        Err(e) => {
            assert_eq!(e.to_string(), WRONG, "{role}");
            false
        }
    }
}

/// A hierarchy made before `--operations-passphrase-*` keeps the Technician and Server CA files
/// under the server's passphrase: whoever reads it on the server opens them wherever they are
/// copied and mints operator certificates. `ca reseal` seals them again under their own, with
/// the same CA inside; the commands that use them then take the new passphrase.
#[test]
fn reseal_gives_the_technician_and_server_ca_files_their_own_passphrase() {
    let env = Env::new();
    let init = ca_init(&env, false);
    for role in [CaRole::Technician, CaRole::Server] {
        assert!(opens_with(&env, "ca", role, SERVER_PASS), "{role}");
    }
    // init says so, and names the command that separates them
    assert!(
        init.stderr.contains(&format!(
            "are sealed with the server's passphrase, so anyone who reads it on the server can \
             open them wherever they are copied; give --operations-passphrase-env or \
             --operations-passphrase-file to seal them with their own, or seal them again with \
             `hale-sign ca reseal --ca-dir {} --ca operations` (as those of a hierarchy made \
             before)\n",
            env.p("ca")
        )),
        "{}",
        init.stderr
    );
    let before = snapshot_tree(&env.path("ca"));
    let r = env.ok(&reseal_args(
        &env,
        "ca",
        "operations",
        &[
            "--passphrase-file",
            &env.p("server-pass"),
            "--new-passphrase-file",
            &env.p("ops-pass"),
        ],
    ));
    assert_eq!(
        r.stdout,
        format!(
            "technician      {} sealed with the new passphrase (certificate unchanged)\n\
             server          {} sealed with the new passphrase (certificate unchanged)\n",
            env.path("ca/technician.key").display(),
            env.path("ca/server.key").display()
        )
    );
    // every other CA file was there to compare with: no note; what is left to do is said
    assert_eq!(
        r.stderr.lines().last().unwrap(),
        "copies of the old Technician and Server CA files (backups, other machines) still open \
         with the old passphrase: replace or destroy them"
    );
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);

    for role in [CaRole::Technician, CaRole::Server] {
        assert!(opens_with(&env, "ca", role, OPS_PASS), "{role}");
        assert!(!opens_with(&env, "ca", role, SERVER_PASS), "{role}");
        assert!(!opens_with(&env, "ca", role, PW), "{role}");
        assert_eq!(env.mode(&format!("ca/{}.key", role.slug())), 0o600);
    }
    // only the two CA files changed, and nothing was left beside them
    let after = snapshot_tree(&env.path("ca"));
    let changed: std::collections::BTreeSet<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        ["server.key", "technician.key"]
    );

    // ca staff and ca server-cert issue with the new passphrase ...
    let staff = |pass: &str| {
        [
            "ca",
            "staff",
            "--ca-dir",
            &env.p("ca"),
            "--role",
            "operator",
            "--name",
            "olga",
            "--hours",
            "8",
            "--out",
            &env.p("olga"),
            "--passphrase-file",
            &env.p(pass),
            "--key-passphrase-env",
            PW_ENV,
        ]
        .map(String::from)
        .to_vec()
    };
    let server_cert = |pass: &str| {
        [
            "ca",
            "server-cert",
            "--ca-dir",
            &env.p("ca"),
            "--dns",
            "localhost",
            "--out",
            &env.p("tls/server"),
            "--passphrase-file",
            &env.p(pass),
            "--key-passphrase-file",
            &env.p("server-pass"),
        ]
        .map(String::from)
        .to_vec()
    };
    // ... and no longer with the server's
    let refusal = |file: &str| {
        format!(
            "error: {}: {WRONG}; `ca init` seals it with the operations passphrase \
             (--operations-passphrase-*; without it, the server's, or without that the offline \
             one)",
            env.path(file).display()
        )
    };
    let root = env.path("");
    assert_refused_unchanged(
        &env,
        &root,
        &staff("server-pass"),
        &refusal("ca/technician.key"),
    );
    assert_refused_unchanged(
        &env,
        &root,
        &server_cert("server-pass"),
        &refusal("ca/server.key"),
    );
    env.ok(&staff("ops-pass"));
    env.ok(&server_cert("ops-pass"));
    // issued by the same CAs: each chain ends with its CA's certificate, unchanged
    for (crt, ca) in [("olga.crt", "technician"), ("tls/server.crt", "server")] {
        let chain = std::fs::read_to_string(env.path(crt)).unwrap();
        let ca_pem = std::fs::read_to_string(env.path(&format!("ca/{ca}.crt"))).unwrap();
        assert!(chain.ends_with(&ca_pem), "{crt}");
        assert_eq!(
            before[&env.path(&format!("ca/{ca}.crt"))],
            ca_pem.as_bytes()
        );
    }
}

/// A refused reseal writes nothing: a wrong current passphrase (named as `ca init` names it), a
/// new one that is the current one, the server's or the offline one, one too short, a CA that
/// is not the operations side's.
#[test]
fn reseal_refuses_a_wrong_or_shared_passphrase_and_changes_nothing() {
    let env = Env::new();
    ca_init(&env, false);
    let root = env.path("");
    let pass = |old: &str, new: &str| {
        [
            "--passphrase-file".to_string(),
            env.p(old),
            "--new-passphrase-file".into(),
            env.p(new),
        ]
    };
    let args = |which: &str, p: &[String]| {
        reseal_args(
            &env,
            "ca",
            which,
            &p.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    env.write("offline-pass", format!("{PW}\n").as_bytes());
    env.write("short-pass", b"short\n");

    // the current passphrase is wrong: the file and the passphrase it takes are named
    assert_refused_unchanged(
        &env,
        &root,
        &args("technician", &pass("offline-pass", "ops-pass")),
        &format!(
            "error: {}: {WRONG}; `ca init` seals it with the operations passphrase \
             (--operations-passphrase-*; without it, the server's, or without that the offline \
             one)",
            env.path("ca/technician.key").display()
        ),
    );
    // the new one is the current one (here also the server's: said first)
    assert_refused_unchanged(
        &env,
        &root,
        &args("operations", &pass("server-pass", "server-pass")),
        "error: the new passphrase (Technician and Server CA files) must differ from the current \
         one",
    );
    // the new one is the offline one
    assert_refused_unchanged(
        &env,
        &root,
        &args("server", &pass("server-pass", "offline-pass")),
        &format!(
            "error: the new passphrase (Server CA file) must differ from the offline CA files' \
             passphrase: it opens {}",
            env.path("ca/root.key").display()
        ),
    );
    assert_refused_unchanged(
        &env,
        &root,
        &args("technician", &pass("server-pass", "short-pass")),
        "error: passphrase for the Technician CA file: 5 bytes; a new key's needs at least 12",
    );
    assert_refused_unchanged(
        &env,
        &root,
        &args("device-issuing", &pass("server-pass", "ops-pass")),
        "error: --ca \"device-issuing\": expected technician, server or operations (both: the CA \
         files that take the operations passphrase)",
    );

    // resealed once, the server's passphrase is no longer the current one: refused as the server's
    env.ok(&args("operations", &pass("server-pass", "ops-pass")));
    assert_refused_unchanged(
        &env,
        &root,
        &args("operations", &pass("ops-pass", "server-pass")),
        &format!(
            "error: the new passphrase (Technician and Server CA files) must differ from the \
             server's passphrase: it opens {}, the CA file the server holds",
            env.path("ca/device-issuing.key").display()
        ),
    );
    for role in [CaRole::Technician, CaRole::Server] {
        assert!(opens_with(&env, "ca", role, OPS_PASS), "{role}");
    }
}

/// Where only the Technician and Server CA files are kept (the operations side, as `ca init`
/// advises), the new passphrase cannot be compared with the server's or the offline one: the
/// reseal is done and says so.
#[test]
fn reseal_without_the_other_ca_files_says_what_it_could_not_compare() {
    let env = Env::new();
    ca_init(&env, true);
    for f in [
        "technician.crt",
        "technician.key",
        "server.crt",
        "server.key",
    ] {
        env.write(
            &format!("ops/{f}"),
            &std::fs::read(env.path(&format!("ca/{f}"))).unwrap(),
        );
    }
    env.write("new-pass", b"the operations' next passphrase\n");
    let r = env.ok(&reseal_args(
        &env,
        "ops",
        "technician",
        &[
            "--passphrase-file",
            &env.p("ops-pass"),
            "--new-passphrase-file",
            &env.p("new-pass"),
        ],
    ));
    let note = |files: &str, whose: &str| {
        format!(
            "note: no {files}: the new passphrase was not compared with {whose}; it must differ \
             from it"
        )
    };
    let notes: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("note")).collect();
    assert_eq!(
        notes,
        [
            note(
                &env.path("ops/device-issuing.key").display().to_string(),
                "the server's passphrase"
            ),
            note(
                &format!(
                    "{} or {}",
                    env.path("ops/root.key").display(),
                    env.path("ops/manufacturing.key").display()
                ),
                "the offline CA files' passphrase"
            ),
        ]
    );
    assert!(opens_with(
        &env,
        "ops",
        CaRole::Technician,
        "the operations' next passphrase"
    ));
    assert!(!opens_with(&env, "ops", CaRole::Technician, OPS_PASS));
    assert!(opens_with(&env, "ops", CaRole::Server, OPS_PASS));
}
