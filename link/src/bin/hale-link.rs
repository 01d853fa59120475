//! `hale-link`: the technician's end of the link. Pushes an offline bundle (made by
//! `hale-sign bundle`) to a pump over a serial device, or over the stdin/stdout of a process it
//! spawns (a pump simulator, or a tool that bridges to the pump), with [`hale_link::host::push`].
//!
//! ```text
//! hale-link push --bundle FILE --device PATH [--block N]
//! hale-link push --bundle FILE [--block N] -- COMMAND [ARGS...]
//! ```
//!
//! A push that is cut resumes where the pump's store stands: run it again. The pump reports the
//! offset it holds and only the rest is sent. The link is a transport, never a source of trust:
//! the pump verifies the bundle from its own root before it installs anything (see `lib.rs`).
//! With a spawned process, whatever it writes to stdout after the bundle is complete (its install
//! log) is copied to this process's stdout, and its exit status is this command's (a pump's 3,
//! deferred, stays 3; 1 for a push that failed on the link itself).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use hale_link::host::{push, PushOptions, Pushed};

/// Largest bundle read from a file (the link's offsets are `u32`; pumps cap it far lower).
const MAX_BUNDLE: u64 = 256 << 20;
/// Largest install log copied from a spawned process.
const MAX_LOG: u64 = 1 << 20;

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .with_context(|| path.display().to_string())?;
    if out.len() as u64 > max {
        bail!("{}: longer than {max} bytes", path.display());
    }
    Ok(out)
}

fn describe(p: &Pushed) -> String {
    let waited = if p.waited_ms > 0 {
        format!(
            "; waited {} ms for the pump to begin a new transfer",
            p.waited_ms
        )
    } else {
        String::new()
    };
    format!(
        "pushed bundle {}: {} bytes in {} blocks, resumed from offset {} ({} resyncs{waited}); the pump verified its checksum",
        p.id, p.bytes_sent, p.blocks, p.resumed_from, p.resyncs
    )
}

fn push_cmd(args: &[String]) -> Result<()> {
    let (opts_args, command) = match args.iter().position(|a| a == "--") {
        Some(i) => (args.get(..i).unwrap_or(&[]), args.get(i + 1..)),
        None => (args, None),
    };
    let opt = |name: &str| {
        opts_args
            .iter()
            .position(|a| a == name)
            .and_then(|i| opts_args.get(i + 1))
    };
    let bundle_path = opt("--bundle").context("--bundle FILE is required")?;
    let bundle = read_bounded(Path::new(bundle_path), MAX_BUNDLE)?;
    let mut opts = PushOptions::default();
    // a pump that does not answer (not in `link` mode, a serial line not raw, nothing there)
    let answer = match opt("--timeout") {
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .with_context(|| format!("--timeout {s}: 1 to 3600 seconds"))?,
        None => 30,
    };
    let answer = std::time::Duration::from_secs(answer);
    let silent = |e: anyhow::Error| {
        let timed_out = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        if timed_out {
            e.context(format!(
                "no answer from the pump for {} s: is it running `hale-agent link`? (a serial \
                 line must be raw: stty -F DEVICE raw)",
                answer.as_secs()
            ))
        } else {
            e
        }
    };
    if let Some(b) = opt("--block") {
        opts.block_len = b.parse().context("--block")?;
        if opts.block_len == 0 {
            bail!("--block must be at least 1");
        }
    }
    match (opt("--device"), command) {
        (Some(device), None) => {
            let port = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(device)
                .with_context(|| device.clone())?;
            let writer = port.try_clone().with_context(|| device.clone())?;
            let reader = hale_link::host::IdleReader::spawn(port, answer);
            let pushed = push(&bundle, reader, writer, &opts)
                .with_context(|| device.clone())
                .map_err(silent)?;
            println!("{}", describe(&pushed));
            Ok(())
        }
        (None, Some([program, rest @ ..])) => {
            let mut child = Command::new(program)
                .args(rest)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| program.clone())?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("{program}: no stdin/stdout");
            };
            let mut stdout = hale_link::host::IdleReader::spawn(stdout, answer);
            let result = push(&bundle, &mut stdout, stdin, &opts);
            // the install that follows takes as long as it takes
            stdout.set_idle(None);
            // `push` consumed stdin: the device sees the end of the link now
            if let Ok(p) = &result {
                println!("{}", describe(p));
                let mut log = Vec::new();
                (&mut stdout)
                    .take(MAX_LOG)
                    .read_to_end(&mut log)
                    .with_context(|| program.clone())?;
                print!("{}", String::from_utf8_lossy(&log));
            }
            drop(stdout);
            if result.is_err() {
                // a pump that stopped answering may never end: 5 s, then it is stopped
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let status = child.wait().with_context(|| program.clone())?;
            let pushed = result.with_context(|| program.clone()).map_err(silent)?;
            if !status.success() {
                // the pump's verdict, passed on as its exit status: `hale-agent … link` exits 3
                // for a deferred install and 1 for one not installed (its log above says why)
                let meaning = match status.code() {
                    Some(3) => {
                        ": the install is deferred (see the pump's log above); push again \
                                when the pump allows it"
                    }
                    Some(1) => ": not installed (see the pump's log above)",
                    _ => "",
                };
                eprintln!(
                    "{program} exited with {status} after receiving bundle {}{meaning}",
                    pushed.id
                );
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        _ => bail!("push: give exactly one of --device PATH or -- COMMAND [ARGS...]"),
    }
}

/// What `hale-link --help` prints (and a command line it cannot read, after the reason).
const USAGE: &str = "\
usage:
  hale-link push --bundle FILE --device PATH [--block N] [--timeout S]
                                                           to a pump on a serial device (raw:
                                                           stty -F PATH raw)
  hale-link push --bundle FILE [--block N] [--timeout S] -- COMMAND [ARGS...]
                                                           to a process's stdin/stdout
A pump that does not answer for S seconds (default 30) ends the push.
A push that is cut resumes where the pump's store stands: run it again.
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--help` before a `--` (after it, the words belong to the spawned command)
    let own = args.iter().take_while(|a| *a != "--");
    if own.clone().any(|a| a == "--help" || a == "-h") || args.first().is_some_and(|a| a == "help")
    {
        print!("{USAGE}");
        return Ok(());
    }
    match args.split_first() {
        Some((cmd, rest)) if cmd == "push" => push_cmd(rest),
        Some((cmd, _)) => bail!("unknown command {cmd:?}\n{}", USAGE.trim_end()),
        None => bail!("no command\n{}", USAGE.trim_end()),
    }
}
