//! The technician link into the real `hale-agent link --device -` (the simulated pump's stdin and
//! stdout are the serial line), driven by `hale_link::host::push`: a transfer cut by the host and
//! one killed on the pump resume from the offset the pump reports (nothing is resent from 0) and
//! the bundle then installs through the verified path; a corrupted block is refused at the
//! checksum with the exact error and nothing is installed; a bundle over the store's capacity
//! is refused before a byte is written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod offline;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;

use common::*;
use hale_link::host::{push, PushError, PushOptions, Pushed};
use hale_link::wire::{Command as LinkCommand, Refusal};
use offline::*;
use serde_json::Value;

const MTU: u32 = 512;

/// What the host put on the line, frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Wait,
    Write { offset: u32, len: usize },
    Swap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    /// send bytes that are not a command instead of this frame
    Garble,
    /// flip the last data byte of this `Write`
    Corrupt,
    /// close the pump's stdin instead of sending this frame (a cable pulled)
    Cut,
    /// kill the pump instead of sending this frame (a reset)
    Kill,
}

/// The host's writer: decodes each frame it forwards, logs it, and may tamper with the line.
struct Line<F> {
    inner: Option<ChildStdin>,
    child: Rc<RefCell<Child>>,
    pending: Vec<u8>,
    log: Rc<RefCell<Vec<Sent>>>,
    policy: F,
}

impl<F: FnMut(&Sent) -> Action> Write for Line<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            let Some(inner) = self.inner.as_mut() else {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            };
            if *b != 0 {
                self.pending.push(*b);
                continue;
            }
            let mut frame = std::mem::take(&mut self.pending);
            if frame.is_empty() {
                inner.write_all(&[0])?;
                continue;
            }
            let mut copy = frame.clone();
            let cmd: LinkCommand<'_> = postcard::from_bytes_cobs(&mut copy).unwrap();
            let sent = match &cmd {
                LinkCommand::Write { offset, data, .. } => Sent::Write {
                    offset: *offset,
                    len: data.len(),
                },
                LinkCommand::Swap { .. } => Sent::Swap,
                _ => Sent::Wait,
            };
            match (self.policy)(&sent) {
                Action::Forward => {}
                Action::Garble => frame = vec![0x04, 0xff, 0xfe, 0xfd],
                Action::Corrupt => {
                    let LinkCommand::Write {
                        version,
                        offset,
                        data,
                        correlation_id,
                    } = &cmd
                    else {
                        panic!("corrupting {sent:?}")
                    };
                    let mut bad = data.to_vec();
                    *bad.last_mut().unwrap() ^= 0x01;
                    frame = postcard::to_allocvec_cobs(&LinkCommand::new_write(
                        version,
                        *offset,
                        &bad,
                        *correlation_id,
                    ))
                    .unwrap();
                    frame.pop();
                }
                Action::Cut => {
                    self.inner = None;
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                Action::Kill => {
                    self.inner = None;
                    let mut child = self.child.borrow_mut();
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
            self.log.borrow_mut().push(sent);
            frame.push(0);
            inner.write_all(&frame)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().map_or(Ok(()), |i| i.flush())
    }
}

/// One session: `hale-agent link --device -` on `state`, `bundle` pushed through a [`Line`] with
/// `policy`. Returns the push result, the frames sent, and the pump's exit, stdout (after the
/// link frames) and stderr.
struct Session {
    pushed: Result<Pushed, PushError>,
    sent: Vec<Sent>,
    success: Option<bool>,
    stdout: String,
    stderr: String,
}

fn session(
    state: &Path,
    extra: &[&str],
    bundle: &[u8],
    policy: impl FnMut(&Sent) -> Action,
) -> Session {
    let mtu = MTU.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale-agent"))
        .arg("--state")
        .arg(state)
        .args(["link", "--device", "-", "--mtu", &mtu])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let child = Rc::new(RefCell::new(child));
    let log = Rc::new(RefCell::new(Vec::new()));
    let line = Line {
        inner: Some(stdin),
        child: child.clone(),
        pending: Vec::new(),
        log: log.clone(),
        policy,
    };
    let pushed = push(bundle, &mut stdout, line, &PushOptions::default());
    // the line is closed (the writer was consumed): the pump installs or gives up, then exits
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let status = child.borrow_mut().wait().unwrap();
    let sent = log.borrow().clone();
    Session {
        pushed,
        sent,
        // a killed pump has no exit code
        success: status.code().map(|c| c == 0),
        stdout: String::from_utf8_lossy(&rest).into_owned(),
        stderr: err,
    }
}

fn writes(sent: &[Sent]) -> Vec<(u32, usize)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Write { offset, len } => Some((*offset, *len)),
            _ => None,
        })
        .collect()
}

/// Act on `Write` number `n` (1-based) with `action`, forward everything else.
fn at_write(n: usize, action: Action) -> impl FnMut(&Sent) -> Action {
    let mut seen = 0;
    move |s| {
        if matches!(s, Sent::Write { .. }) {
            seen += 1;
            if seen == n {
                return action;
            }
        }
        Action::Forward
    }
}

fn agent(state: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hale-agent"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hale-agent {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A pump running 1.0.0 (counter 1) provisioned with `sim`'s first root, in `dir/pump`.
fn provision(sim: &hale_tests::RepoSim, dir: &Path) -> PathBuf {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(dir.join("root.json"), sim.initial_root()).unwrap();
    std::fs::write(dir.join("fw.bin"), image_bytes("1.0.0", 5000)).unwrap();
    let state = dir.join("pump");
    agent(
        &state,
        &[
            "provision",
            "--root",
            &p("root.json"),
            "--image",
            &p("fw.bin"),
            "--version",
            "1.0.0",
            "--security-counter",
            "1",
            "--id",
            DEVICE_ID,
            "--model",
            "pump-a",
            "--revision",
            "r2",
            "--target",
            TARGET,
            "--bootloader",
            "1.2.0",
        ],
    );
    state
}

/// Everything the pump would report, and its pending records.
fn pump_state(state: &Path) -> (Value, Option<Vec<u8>>, Option<Vec<u8>>) {
    let status: Value = serde_json::from_str(&agent(state, &["status"])).unwrap();
    (
        status,
        std::fs::read(state.join("last_result.json")).ok(),
        std::fs::read(state.join("install_records.json")).ok(),
    )
}

fn running_version(state: &Path) -> String {
    let (status, _, _) = pump_state(state);
    let slots = status["slots"].as_array().unwrap();
    let running = slots
        .iter()
        .find(|s| s["active"] == true)
        .unwrap_or_else(|| panic!("no active slot: {status}"));
    running["version"].as_str().unwrap().to_string()
}

#[test]
fn a_cut_and_a_killed_transfer_resume_from_the_pumps_offset_then_install() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    let len = bundle.len() as u32;
    assert!(len > 8 * MTU, "the bundle spans many blocks ({len} bytes)");
    let tmp = tempfile::tempdir().unwrap();
    let state = provision(&sim, tmp.path());
    let before = pump_state(&state);

    // 1. the host's cable comes out before the 3rd block: two blocks are durable
    let s = session(&state, &[], &bundle, at_write(3, Action::Cut));
    assert!(matches!(s.pushed, Err(PushError::Io(_))), "{:?}", s.pushed);
    assert_eq!(writes(&s.sent), vec![(0, 512), (512, 512)]);
    assert_eq!(s.success, Some(false));
    assert!(
        s.stderr.contains(&format!(
            "link - closed before a bundle was complete (1024 of {len} bytes stored; push again to resume)"
        )),
        "{}",
        s.stderr
    );
    assert_eq!(pump_state(&state), before, "nothing installed yet");

    // 2. resumed at 1024; the pump is killed (a reset) before the 4th block of this session
    let s = session(&state, &[], &bundle, at_write(4, Action::Kill));
    assert!(
        matches!(s.pushed, Err(PushError::Io(_)) | Err(PushError::Closed)),
        "{:?}",
        s.pushed
    );
    assert_eq!(s.success, None, "killed");
    assert_eq!(
        writes(&s.sent),
        vec![(1024, 512), (1536, 512), (2048, 512)],
        "resumed at the pump's offset, not from 0"
    );
    assert!(
        s.stderr.contains(&format!(
            "link: holding bundle {}: 1024 of {len} bytes",
            hale_link::BundleId::of(&bundle).unwrap()
        )),
        "{}",
        s.stderr
    );
    assert_eq!(pump_state(&state), before, "nothing installed yet");

    // 3. the pump boots again: resumed at 2560 (acknowledged before the kill), complete, installed
    let s = session(&state, &[], &bundle, |_| Action::Forward);
    let pushed = s.pushed.unwrap();
    assert_eq!(pushed.resumed_from, 2560);
    assert_eq!(pushed.bytes_sent, u64::from(len - 2560));
    let w = writes(&s.sent);
    assert_eq!(w.first(), Some(&(2560, 512)));
    assert!(w.iter().all(|(o, _)| *o >= 2560), "nothing resent: {w:?}");
    let mut at = 2560;
    for (o, n) in &w {
        assert_eq!(*o, at);
        at += *n as u32;
    }
    assert_eq!(at, len);
    assert_eq!(s.sent.last(), Some(&Sent::Swap));
    assert_eq!(s.success, Some(true), "{}{}", s.stdout, s.stderr);
    assert!(
        s.stderr.contains(&format!(
            "link: bundle {} complete ({len} bytes, checksum verified)",
            pushed.id
        )),
        "{}",
        s.stderr
    );
    assert!(
        s.stdout.contains("staged 2.0.0: rebooting into it"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains("health check passed: 2.0.0 confirmed"),
        "{}",
        s.stdout
    );
    assert_eq!(running_version(&state), "2.0.0");
    let queued: Value =
        serde_json::from_slice(&std::fs::read(state.join("install_records.json")).unwrap())
            .unwrap();
    let rec = &queued[0];
    assert_eq!(rec["outcome"], "confirmed", "{queued}");
    assert_eq!(rec["kind"], "offline");
    assert_eq!(rec["target"], TARGET);
    assert_eq!(rec["version"], "2.0.0");
    // the store is emptied once the bundle went through the verified path
    assert!(!state.join("link/bundle.progress").exists());
}

/// Therapy running when a bundle arrives: not installed, and kept whole in the pump's store, so
/// that the technician's next push once therapy stops sends nothing again (it was discarded:
/// the whole bundle went over the line a second time).
#[test]
fn a_bundle_deferred_by_therapy_is_kept_and_the_next_push_sends_nothing_again() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    let len = bundle.len() as u32;
    let tmp = tempfile::tempdir().unwrap();
    let state = provision(&sim, tmp.path());
    agent(&state, &["therapy", "on"]);
    let slots_before = pump_state(&state).0["slots"].clone();

    let s = session(&state, &[], &bundle, |_| Action::Forward);
    let pushed = s.pushed.unwrap();
    assert_eq!(pushed.bytes_sent, u64::from(len));
    // (exit 3: not now)
    assert_eq!(s.success, Some(false), "{}{}", s.stdout, s.stderr);
    assert!(
        s.stdout.contains("2.0.0 deferred: therapy running"),
        "{}",
        s.stdout
    );
    assert!(
        s.stderr.contains(&format!(
            "link: bundle {} kept: push it again once installing is safe; nothing is sent again",
            pushed.id
        )),
        "{}",
        s.stderr
    );
    let (status, _, records) = pump_state(&state);
    assert_eq!(status["slots"], slots_before, "nothing staged");
    assert_eq!(records, None, "nothing installed");
    assert!(state.join("link/bundle.progress").exists(), "kept");

    // therapy stops; the next push finds the whole bundle there: a swap, no block, installed
    agent(&state, &["therapy", "off"]);
    let s = session(&state, &[], &bundle, |_| Action::Forward);
    let again = s.pushed.unwrap();
    assert_eq!(again.id, pushed.id);
    assert_eq!((again.resumed_from, again.bytes_sent), (len, 0));
    assert_eq!(s.sent.last(), Some(&Sent::Swap));
    assert!(writes(&s.sent).is_empty(), "{:?}", s.sent);
    assert_eq!(s.success, Some(true), "{}{}", s.stdout, s.stderr);
    assert!(
        s.stdout.contains("health check passed: 2.0.0 confirmed"),
        "{}",
        s.stdout
    );
    assert_eq!(running_version(&state), "2.0.0");
    // installed: the store is emptied
    assert!(!state.join("link/bundle.progress").exists());
}

#[test]
fn a_corrupted_block_is_refused_at_the_checksum_and_nothing_is_installed() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let state = provision(&sim, tmp.path());
    let before = pump_state(&state);

    // the first block arrives garbled (refused as a bad frame, resent), the third corrupted
    let mut n = 0;
    let s = session(&state, &[], &bundle, move |sent| {
        if matches!(sent, Sent::Write { .. }) {
            n += 1;
            return match n {
                1 => Action::Garble,
                4 => Action::Corrupt,
                _ => Action::Forward,
            };
        }
        Action::Forward
    });
    match &s.pushed {
        Err(PushError::Refused(r)) => assert_eq!(*r, Refusal::ChecksumMismatch),
        other => panic!("{other:?}"),
    }
    // the garbled frame changed nothing: the same block went again at the same offset
    let w = writes(&s.sent);
    assert_eq!(w.get(..3), Some(&[(0, 512), (0, 512), (512, 512)][..]));
    assert_eq!(s.sent.last(), Some(&Sent::Swap));
    assert!(
        s.stderr
            .contains("link: refused: frame is not a link command"),
        "{}",
        s.stderr
    );
    assert!(
        s.stderr.contains(
            "link: refused: stored bundle does not match the swap checksum; transfer discarded"
        ),
        "{}",
        s.stderr
    );
    assert!(
        s.stderr.contains(
            "link - closed before a bundle was complete (nothing stored; push again to resume)"
        ),
        "{}",
        s.stderr
    );
    assert_eq!(s.success, Some(false));
    assert!(!s.stdout.contains("staged"), "{}", s.stdout);
    // nothing installed, nothing recorded, the transfer discarded
    assert_eq!(pump_state(&state), before);
    assert!(!state.join("link/bundle.progress").exists());
    assert_eq!(
        std::fs::metadata(state.join("link/bundle.part"))
            .unwrap()
            .len(),
        0
    );

    // a clean push afterwards, in a new session: the store kept when the last transfer began,
    // so this one begins no sooner than the interval after it (the discard and the new session
    // do not reset it): it waits out the rest, then starts from 0 and installs
    let begun = || {
        let text = std::fs::read_to_string(state.join("link/bundle.begun")).unwrap();
        let ms = text.strip_prefix("hale-link-begun 1 ").unwrap();
        ms.trim_end().parse::<u64>().unwrap()
    };
    let first_begin = begun();
    let s = session(&state, &["--min-restart-interval", "5"], &bundle, |_| {
        Action::Forward
    });
    let pushed = s.pushed.unwrap();
    assert_eq!(pushed.resumed_from, 0);
    assert!(
        begun() >= first_begin + 5_000,
        "began {} ms after the last begin",
        begun() - first_begin
    );
    // (unless this machine took the whole interval to start the session, it waited)
    assert!(pushed.waited_ms <= 5_000, "waited {} ms", pushed.waited_ms);
    assert_eq!(
        pushed.waited_ms > 0,
        s.stderr.contains("link: refused: a new transfer"),
        "{}",
        s.stderr
    );
    assert_eq!(s.success, Some(true), "{}{}", s.stdout, s.stderr);
    assert_eq!(running_version(&state), "2.0.0");
}

#[test]
fn a_bundle_over_the_stores_capacity_is_refused_before_a_byte_is_written() {
    let sim = repo_offering("2.0.0", 2);
    let bundle = bundle_for(&sim, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let state = provision(&sim, tmp.path());
    let before = pump_state(&state);
    let s = session(&state, &["--capacity", "4096"], &bundle, |_| {
        Action::Forward
    });
    match &s.pushed {
        Err(PushError::Refused(r)) => assert_eq!(
            *r,
            Refusal::BundleTooLarge {
                declared: bundle.len() as u32,
                max: 4096
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.success, Some(false));
    assert_eq!(pump_state(&state), before);
    assert!(!state.join("link/bundle.progress").exists());
    assert_eq!(
        std::fs::metadata(state.join("link/bundle.part"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_silent_line_ends_the_session_and_frees_the_pump() {
    // a laptop left connected, sending nothing: the session ends after the idle limit, the pump's
    // flash is free again, nothing was written
    let sim = repo_offering("2.0.0", 2);
    let dir = tempfile::tempdir().unwrap();
    let state = provision(&sim, dir.path());
    let before = pump_state(&state);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale-agent"))
        .arg("--state")
        .arg(&state)
        .args(["link", "--device", "-", "--idle-timeout", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _line = child.stdin.take().unwrap(); // open, silent
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the session outlived its idle limit");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "link -: no bytes for 1 s: session closed (nothing stored; push again to resume)"
        ),
        "{err}"
    );
    assert_eq!(pump_state(&state), before, "nothing changed");
    // the flash is free: a reset goes through
    agent(&state, &["reboot"]);
    assert_eq!(running_version(&state), "1.0.0");
}

#[test]
fn a_line_of_zeros_ends_the_session_and_frees_the_pump() {
    // an adapter whose far end is unplugged, or the wrong port, says only zeros: bytes keep
    // coming, so the idle limit never ends the session; the noise bound does
    let sim = repo_offering("2.0.0", 2);
    let dir = tempfile::tempdir().unwrap();
    let state = provision(&sim, dir.path());
    let before = pump_state(&state);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale-agent"))
        .arg("--state")
        .arg(&state)
        .args(["link", "--device", "-"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = child.stdin.take().unwrap();
    // zeros until the pump hangs up (a write then fails), or 10 MiB
    let zeros = [0u8; 4096];
    for _ in 0..2560 {
        if line.write_all(&zeros).is_err() {
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "Error: link -: 65536 bytes in a row without one command (line noise: the wrong port or \
         baud rate, or a cable with nothing at its far end): session closed (nothing stored; push \
         again to resume)\n"
    );
    assert!(out.stdout.is_empty(), "no frame was answered");
    assert_eq!(pump_state(&state), before, "nothing changed");
    agent(&state, &["reboot"]);
    assert_eq!(running_version(&state), "1.0.0");
}

#[test]
fn a_restart_interval_out_of_range_is_refused_before_the_link_opens() {
    let sim = repo_offering("2.0.0", 2);
    let dir = tempfile::tempdir().unwrap();
    let state = provision(&sim, dir.path());
    let before = pump_state(&state);
    for (value, want) in [
        ("0", "Error: --min-restart-interval 0: 1 to 3600 seconds\n"),
        (
            "3601",
            "Error: --min-restart-interval 3601: 1 to 3600 seconds\n",
        ),
        (
            "soon",
            "Error: --min-restart-interval\n\nCaused by:\n    invalid digit found in string\n",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hale-agent"))
            .arg("--state")
            .arg(&state)
            .args(["link", "--device", "-", "--min-restart-interval", value])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err, want, "{value}");
        assert!(out.stdout.is_empty(), "the link never opened");
        assert_eq!(pump_state(&state), before);
        assert!(!state.join("link").exists(), "no bundle store made");
    }
}
