//! The operator's CLI: what it refuses before it changes anything.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_string()
}

#[test]
fn commands_on_a_data_directory_init_never_made_are_refused_and_make_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("dtaa");
    let t = typo.to_str().unwrap();
    let manifest = dir.path().join("manifest.json");
    std::fs::write(&manifest, b"{}").unwrap();
    for args in [
        vec!["audit", "verify", "--data", t],
        vec!["token", "add", "--data", t, "--name", "bob"],
        vec![
            "enroll-token",
            "--data",
            t,
            "--serial",
            "SN-1",
            "--model",
            "pump-a",
        ],
        vec![
            "manifest",
            "import",
            "--data",
            t,
            "--tls-dir",
            t,
            manifest.to_str().unwrap(),
        ],
    ] {
        let out = run_bin(&args, &dir.path().join("none"));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "error: {t}: not a hale-server data directory (no repository: check --data, or \
                 run `hale-server init`)"
            ),
            "{args:?}"
        );
        assert!(!typo.exists(), "{args:?} made {t}");
    }
}

#[test]
fn an_enrollment_token_lives_thirty_days_at_most_and_online_keys_are_the_owners_alone() {
    let f = Fixture::new();
    let data = f.data.to_str().unwrap();
    let token = |ttl: &str| {
        let args = [
            "enroll-token",
            "--data",
            data,
            "--serial",
            "SN-1",
            "--model",
            "pump-a",
        ];
        run_bin(&[&args[..], &["--ttl", ttl]].concat(), &f.pass_file)
    };
    let before = with_store(&f.data, |store| {
        use hale_server::store::Store;
        store.audit_all().unwrap().len()
    });
    for ttl in ["0", "2592001", "18446744073709551615"] {
        let out = token(ttl);
        assert_eq!(out.status.code(), Some(1), "--ttl {ttl}");
        assert_eq!(
            stderr(&out),
            format!("error: token lifetime of {ttl} s: 1 to 2592000 s (30 days)"),
            "--ttl {ttl}"
        );
        assert!(out.stdout.is_empty(), "no token printed");
    }
    let after = with_store(&f.data, |store| {
        use hale_server::store::Store;
        store.audit_all().unwrap().len()
    });
    assert_eq!(after, before, "nothing recorded");
    // the longest there is: issued, with its end as a date
    let out = token("2592000");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("single use, expires at 20") && said.contains("Z: shown once"),
        "{said}"
    );

    // the online keys init installed: encrypted, and readable by their owner only
    for e in std::fs::read_dir(f.data.join("keys")).unwrap() {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "key") {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

#[test]
fn a_tls_listener_without_a_tls_directory_is_refused() {
    let f = Fixture::new();
    let data = f.data.to_str().unwrap();
    // (a server that starts anyway is stopped after 10 s, and the test fails)
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            "--staff-listen",
            "127.0.0.1:0",
        ])
        .env("HALE_PASSPHRASE_FILE", &f.pass_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "it served: {}", stderr(&out));
    assert!(
        stderr(&out).starts_with(
            "error: the following required arguments were not provided:\n  --tls-dir <TLS_DIR>"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_command_beside_a_running_server_says_the_database_is_in_use() {
    let f = Fixture::new();
    let _s = f.start();
    let data = f.data.to_str().unwrap();
    let out = run_bin(
        &["token", "add", "--data", data, "--name", "bob"],
        &f.pass_file,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: database: {}: in use by another process (a running hale-server? stop it first)",
            f.data.join("db").display()
        )
    );
}

/// A second `serve` on a running server's directory stops at the database's lock before it
/// touches anything: until 2026-11-24 it first removed the running server's uploads in progress
/// and temporary files, failing them (found by review).
#[test]
fn a_second_server_on_a_running_ones_directory_stops_before_removing_its_uploads() {
    let f = Fixture::new();
    let _s = f.start();
    let data = f.data.to_str().unwrap();
    // what a running server has in progress: an upload's part file, a metadata temporary
    let part = f.data.join("repo/upload/in-progress.part");
    let tmp = f.data.join("repo/metadata/.2.targets.json.tmp4242");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, b"half an image").unwrap();
    std::fs::write(&tmp, b"being written").unwrap();
    let out = run_bin(
        &["serve", "--data", data, "--listen", "127.0.0.1:0"],
        &f.pass_file,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: database: {}: in use by another process (a running hale-server? stop it first)",
            f.data.join("db").display()
        )
    );
    assert_eq!(std::fs::read(&part).unwrap(), b"half an image");
    assert_eq!(std::fs::read(&tmp).unwrap(), b"being written");
}

#[test]
fn an_operator_token_can_be_listed_and_revoked_and_a_revoked_one_no_longer_uploads() {
    let f = Fixture::new();
    let data = f.data.to_str().unwrap();
    let run = |args: &[&str]| run_bin(args, &f.pass_file);
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let bob: Vec<String> = (0..2)
        .map(|_| {
            text(&run(&["token", "add", "--data", data, "--name", "bob"]).stdout)
                .trim()
                .to_string()
        })
        .collect();
    let id = |t: &str| {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()))[..16].to_string()
    };
    let listed = text(&run(&["token", "list", "--data", data]).stdout);
    let mut expected: Vec<String> = [(&f.token, "alice"), (&bob[0], "bob"), (&bob[1], "bob")]
        .iter()
        .map(|(t, op)| format!("{}  {op}", id(t)))
        .collect();
    expected.sort();
    assert_eq!(listed.lines().collect::<Vec<_>>(), expected);

    // refusals change nothing
    for (args, err) in [
        (
            vec!["--name", "carol"],
            "error: operator \"carol\" has no token (`token list` shows them)".to_string(),
        ),
        (
            vec!["--id", "abc"],
            "error: --id \"abc\": at least 8 hex digits of a token id from `token list`"
                .to_string(),
        ),
        (
            vec!["--id", "0000000000"],
            "error: no token has id 0000000000 (`token list` shows them)".to_string(),
        ),
    ] {
        let out = run(&[&["token", "revoke", "--data", data][..], &args[..]].concat());
        assert_eq!(
            (out.status.code(), stderr(&out)),
            (Some(1), err),
            "{args:?}"
        );
    }
    assert_eq!(
        text(&run(&["token", "list", "--data", data]).stdout),
        listed
    );

    // every token of bob
    let out = run(&["token", "revoke", "--data", data, "--name", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut revoked: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    revoked.sort();
    let mut want: Vec<String> = bob
        .iter()
        .map(|t| format!("revoked token {} of operator bob", id(t)))
        .collect();
    want.sort();
    assert_eq!(revoked, want);
    assert_eq!(
        text(&run(&["token", "list", "--data", data]).stdout),
        format!("{}  alice\n", id(&f.token))
    );
    let s = f.start();
    let up = upload(&s, &bob[0], b"fw").unwrap();
    assert_eq!(up.status, 401, "{}", text(&up.body));
    assert_eq!(upload(&s, &f.token, b"fw").unwrap().status, 200);
    drop(s);

    // one token by its id; audited
    let out = run(&[
        "token",
        "revoke",
        "--data",
        data,
        "--id",
        &id(&f.token)[..8],
    ]);
    assert_eq!(
        text(&out.stdout),
        format!("revoked token {} of operator alice\n", id(&f.token))
    );
    assert_eq!(
        stderr(&run(&["token", "list", "--data", data])),
        "no operator tokens"
    );
    let records = with_store(&f.data, |store| {
        hale_server::store::Store::audit_all(store).unwrap()
    });
    let revokes: Vec<serde_json::Value> = records
        .iter()
        .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
        .filter(|r| r["kind"] == "token-revoke")
        .map(|r| r["detail"].clone())
        .collect();
    assert_eq!(revokes.len(), 3);
    assert_eq!(
        revokes[2],
        serde_json::json!({"operator": "alice", "token_id": id(&f.token)})
    );
}
