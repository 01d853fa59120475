//! `hale-sign renew DIR --role R [--role R …] [--expires-in D]`: stage the next version of
//! offline-signed roles with the same content and a later expiry. Devices refuse every update
//! once root or targets has expired, and the targets a delegated role holds once it has (they
//! keep running their firmware), so
//! a repository whose releases are rare still needs a ceremony before each role's expiry; this
//! is the command for it. The staged files are then signed, published and pushed as any other.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::durable::Batch;
use crate::state::{is_bin, State};

#[derive(Args, Debug)]
pub struct RenewArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// root, targets, a delegated role, or the hashed bins' prefix (every bin); repeatable.
    #[arg(long, required = true)]
    role: Vec<String>,
    /// The new lifetime from now (e.g. 90d), instead of the repository's policy for the role.
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    expires_in: Option<i64>,
    /// Replace a staged root that already meets every threshold it needs. Such a root is valid
    /// for devices in the hands of whoever kept a copy; replacing it forks the fleet unless every
    /// copy is destroyed. Without it, publish that root and renew the next version.
    #[arg(long)]
    discard_signed_root: bool,
}

fn parse_lifetime(s: &str) -> Result<i64, String> {
    crate::config::parse_duration(s).map_err(|e| e.to_string())
}

/// The roles `name` stands for: itself, or every bin when it is the bins' prefix.
pub(super) fn roles_named(state: &State, name: &str) -> anyhow::Result<Vec<String>> {
    if name == "snapshot" || name == "timestamp" {
        bail!(
            "--role {name}: snapshot and timestamp are signed again at each publish (`hale-sign \
             publish {}`) or by the server, not renewed here",
            state.dir.display()
        );
    }
    if let Some(b) = state.config.bins.as_ref().filter(|b| b.prefix == name) {
        let bins: Vec<String> = state
            .roles
            .keys()
            .filter(|r| is_bin(r, &b.prefix, u64::from(b.bit_length)))
            .cloned()
            .collect();
        if bins.is_empty() {
            bail!("--role {name}: the hashed bins {name}-* have no metadata yet");
        }
        return Ok(bins);
    }
    state.get(name)?;
    Ok(vec![name.to_string()])
}

pub fn run(a: RenewArgs) -> anyhow::Result<ExitCode> {
    let mut state = State::load_for_change(&a.dir)?;
    state.discard_signed_root = a.discard_signed_root;
    let mut names = Vec::new();
    for r in &a.role {
        for n in roles_named(&state, r)? {
            if names.contains(&n) {
                bail!("--role {r}: {n} is named twice");
            }
            names.push(n);
        }
    }
    let mut bodies = Vec::with_capacity(names.len());
    let mut lines = Vec::with_capacity(names.len());
    for n in &names {
        let was = state.get(n)?.expires().to_string();
        let mut body = state.next_body(n)?;
        if let Some(secs) = a.expires_in {
            body["expires"] = json!(hale_repo::build::expires_at(state.now, secs)?);
        }
        // a renewal that would expire sooner is a mistake a signing ceremony should not carry
        let new = body.get("expires").and_then(|v| v.as_str()).unwrap_or("");
        let sooner = match (
            hale_core::time::parse_expires(new.as_bytes()),
            hale_core::time::parse_expires(was.as_bytes()),
        ) {
            (Some(n), Some(w)) => n < w,
            _ => false,
        };
        if sooner {
            bail!(
                "{n}: the renewed expiry {new} is sooner than the current {was}: give a longer \
                 --expires-in (or none, for the policy's)"
            );
        }
        let version = body.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        let expires = body
            .get("expires")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        lines.push(format!(
            "{n} v{version} staged: expires {expires} (was {was})"
        ));
        bodies.push((n.clone(), body));
    }
    let mut batch = Batch::new();
    state.stage_all(&mut batch, bodies)?;
    batch
        .commit()
        .with_context(|| format!("staging in {}", a.dir.display()))?;
    state.warn_demo();
    if lines.len() <= 8 {
        for l in &lines {
            println!("{l}");
        }
    } else {
        println!("{} roles staged with later expiries", lines.len());
    }
    super::staged_hint(&state);
    Ok(ExitCode::SUCCESS)
}
