//! `hale-link`'s command line: help, and what it says to a line it cannot read.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn hale_link(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hale-link"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn help_shows_the_usage_and_a_line_it_cannot_read_is_refused_with_it() {
    let (ok, usage, err) = hale_link(&["--help"]);
    assert!(ok && err.is_empty(), "{err}");
    assert!(
        usage.starts_with("usage:\n  hale-link push --bundle FILE --device PATH"),
        "{usage}"
    );
    for args in [&["-h"][..], &["help"], &["push", "--help"]] {
        assert_eq!(
            hale_link(args),
            (true, usage.clone(), String::new()),
            "{args:?}"
        );
    }
    for (args, reason) in [
        (&[][..], "no command"),
        (&["pull"], "unknown command \"pull\""),
    ] {
        assert_eq!(
            hale_link(args),
            (false, String::new(), format!("Error: {reason}\n{usage}")),
            "{args:?}"
        );
    }
    // after `--`, `--help` is the spawned command's: not taken as this one's (the push starts,
    // and stops at the missing bundle file)
    let (ok, out, err) = hale_link(&["push", "--bundle", "/nonexistent/b", "--", "cat", "--help"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.starts_with("Error: /nonexistent/b"), "{err}");
}

#[test]
fn a_pump_that_does_not_answer_ends_the_push_with_a_hint() {
    let bundle = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-silent-pump.hale");
    std::fs::write(&bundle, [7u8; 100]).unwrap();
    // a pump that never answers (here: a process that reads nothing and writes nothing); a push
    // that waits for ever is stopped after 60 s, and the test fails
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale-link"))
        .args([
            "push",
            "--bundle",
            bundle.to_str().unwrap(),
            "--timeout",
            "1",
        ])
        .args(["--", "sleep", "60"])
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the push waited for ever"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "Error: no answer from the pump for 1 s: is it running `hale-agent link`? (a serial \
             line must be raw: stty -F DEVICE raw)"
        ),
        "{err}"
    );
    // out-of-range waits are refused before anything is sent
    let b = bundle.to_str().unwrap();
    let (ok, _, err) = hale_link(&["push", "--bundle", b, "--timeout", "0", "--", "true"]);
    assert!(
        !ok && err.starts_with("Error: --timeout 0: 1 to 3600 seconds"),
        "{err}"
    );
}
