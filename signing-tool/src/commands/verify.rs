//! `hale-sign verify REPO_DIR --root TRUSTED_ROOT.json [--now UNIX]`: the full client workflow
//! over a repository directory with hale-core, as a device would run it. Nonzero exit with the
//! core's error on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::client;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The repository directory (what a web server serves), or a working directory holding
    /// `repository/`.
    repo: PathBuf,
    /// The root the client trusts (shipped with the device), e.g. 1.root.json.
    #[arg(long, value_name = "ROOT.json")]
    root: PathBuf,
    /// The update start time (seconds since the epoch); default now.
    #[arg(long, value_name = "UNIX")]
    now: Option<i64>,
}

pub fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let repo = if a.repo.join(crate::config::CONFIG_FILE).exists() {
        crate::config::repository_dir(&a.repo)
    } else {
        a.repo.clone()
    };
    let trusted = std::fs::read(&a.root)
        .with_context(|| format!("reading trusted root {}", a.root.display()))?;
    let now = a.now.unwrap_or_else(crate::state::unix_now);
    let s = client::verify_repository(&client::Repository::on_disk(&repo), &trusted, now)
        .with_context(|| format!("verifying {}", repo.display()))?;
    crate::demo::warn(
        &format!("repository {}", repo.display()),
        &client::demo_hits(&s.keyids),
    );
    let chain: Vec<String> = s.root_chain.iter().map(u64::to_string).collect();
    let mut buf = [0u8; 20];
    let expires = hale_core::time::format_expires(s.root_expires, &mut buf).unwrap_or("?");
    println!("{}: OK (verified by hale-core at {now})", repo.display());
    println!(
        "  root       chain {} (expires {expires})",
        chain.join(" -> ")
    );
    println!("  timestamp  v{}", s.timestamp);
    println!("  snapshot   v{}", s.snapshot);
    println!("  targets    v{}", s.targets);
    println!("  delegated  {} role verification(s)", s.delegated.len());
    for (d, r, v) in s.delegated.iter().take(8) {
        println!("             {r} v{v} (by {d})");
    }
    if s.delegated.len() > 8 {
        println!("             … {} more", s.delegated.len() - 8);
    }
    println!(
        "  targets    {} file(s), {} bytes, {} with firmware policy",
        s.target_files, s.target_bytes, s.firmware
    );
    if let Some((newest, listed)) = crate::commands::bundle::pushed_past_snapshot(&repo) {
        eprintln!(
            "note: {} also holds targets v{newest}, newer than the v{listed} verified above: \
             releases pushed to hale-server are listed in the server's snapshot, and what the \
             pumps get is what it serves",
            repo.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
