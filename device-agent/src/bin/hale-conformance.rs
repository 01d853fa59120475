//! TUF client conformance entry point (tuf-conformance CLIENT-CLI protocol):
//!
//! ```text
//! hale-conformance --metadata-dir DIR init ROOT_FILE
//! hale-conformance --metadata-url URL --metadata-dir DIR refresh
//! hale-conformance --metadata-url URL --metadata-dir DIR --target-name P [--target-name P ...]
//!                  --target-dir D --target-base-url U download
//! ```
//! Global options come before the command. Exit 0 on success, 1 on any failure. Time is read
//! from the C library's clock (so `faketime` works).

/// What `hale-conformance --help` prints.
const USAGE: &str = "\
usage:
  hale-conformance --metadata-dir DIR init ROOT_FILE
  hale-conformance --metadata-url URL --metadata-dir DIR refresh
  hale-conformance --metadata-url URL --metadata-dir DIR --target-name P [--target-name P ...]
                   --target-dir D --target-base-url U download
Global options come before the command. Exit 0 on success, 1 on any failure.
";

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use device_agent::host::{now, ConformanceClient};

#[derive(Default)]
struct Args {
    metadata_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    target_names: Vec<String>,
    target_dir: Option<PathBuf>,
    target_base_url: Option<String>,
    command: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--metadata-dir" => a.metadata_dir = Some(value("--metadata-dir")?.into()),
            "--metadata-url" => a.metadata_url = Some(value("--metadata-url")?),
            "--target-name" => a.target_names.push(value("--target-name")?),
            "--target-dir" => a.target_dir = Some(value("--target-dir")?.into()),
            "--target-base-url" => a.target_base_url = Some(value("--target-base-url")?),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => {
                a.command.push(arg);
                a.command.extend(it.by_ref());
            }
        }
    }
    Ok(a)
}

fn run() -> Result<()> {
    let a = parse()?;
    let dir = a
        .metadata_dir
        .clone()
        .context("--metadata-dir is required")?;
    let cmd: Vec<&str> = a.command.iter().map(String::as_str).collect();
    match cmd.as_slice() {
        ["init", root] => ConformanceClient::init(&dir, std::path::Path::new(root))
            .with_context(|| format!("init from {root}"))?,
        ["refresh"] => {
            let url = a.metadata_url.context("--metadata-url is required")?;
            let mut c = ConformanceClient::new(&dir, &url, "");
            c.refresh(now())
                .with_context(|| format!("refresh from {url}"))?;
        }
        ["download"] => {
            let url = a.metadata_url.context("--metadata-url is required")?;
            let turl = a.target_base_url.context("--target-base-url is required")?;
            let tdir = a.target_dir.context("--target-dir is required")?;
            if a.target_names.is_empty() {
                bail!("--target-name is required");
            }
            let mut c = ConformanceClient::new(&dir, &url, &turl);
            c.download(now(), &a.target_names, &tdir)
                .with_context(|| format!("download from {url} / {turl}"))?;
        }
        _ => bail!("no such command\n{}", USAGE.trim_end()),
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hale-conformance: {e:#}");
            ExitCode::from(1)
        }
    }
}
