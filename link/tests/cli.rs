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
