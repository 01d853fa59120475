//! `hale-sign delegate DIR --from targets --to ROLE --key K.pub --paths 'pump-a/*'`: a new
//! delegation (the next version of the delegator, unsigned) and an empty, unsigned v1 of ROLE.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hale_repo::build;
use serde_json::{json, Map, Value};

use super::{check_threshold, chosen_threshold, key_map, load_keys};
use crate::durable::Batch;
use crate::state::{top_level, State};

#[derive(Args, Debug)]
pub struct DelegateArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// The delegating targets role.
    #[arg(long, default_value = "targets")]
    from: String,
    /// The new role.
    #[arg(long, value_name = "ROLE")]
    to: String,
    /// A key of the new role (.pub); repeatable.
    #[arg(long = "key", value_name = "PUB", required = true)]
    keys: Vec<PathBuf>,
    /// How many of the keys must sign (k of n); required with more than one key.
    #[arg(long)]
    threshold: Option<u32>,
    /// Path patterns delegated (python-tuf rules: `*` does not cross `/`); repeatable. Required,
    /// except for the `rollback` role, which is delegated no paths (it signs authorizations,
    /// never targets).
    #[arg(long = "paths", value_name = "PATTERN", value_delimiter = ',')]
    paths: Vec<String>,
    /// Stop the search here for matching paths (later delegations are not consulted).
    #[arg(long)]
    terminating: bool,
}

pub fn run(a: DelegateArgs) -> anyhow::Result<ExitCode> {
    let mut state = State::load_for_change(&a.dir)?;
    hale_core::metadata::check_role_name(&a.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if top_level(&a.to).is_some() {
        bail!("--to {}: a top-level role cannot be delegated", a.to);
    }
    if state.roles.contains_key(&a.to) {
        bail!(
            "role {} already exists (use `hale-sign rotate` to change its keys)",
            a.to
        );
    }
    // staged/Root.json is staged/root.json on a case-insensitive file system (a signer's Mac),
    // and so is an export of the repository: hale-server refuses such a name too
    if let Some(other) = ["root", "timestamp", "snapshot", "targets"]
        .into_iter()
        .chain(state.roles.keys().map(String::as_str))
        .find(|o| *o == a.to || hale_repo::layout::same_file_name(o, &a.to))
    {
        bail!(
            "--to {}: differs from the role {other} only in case: a case-insensitive file system \
             would keep both in one file",
            a.to
        );
    }
    let from = state
        .get(&a.from)
        .with_context(|| format!("--from {}", a.from))?;
    if from.kind() != "targets" {
        bail!("--from {}: not a targets role", a.from);
    }
    if a.to == hale_core::rollback::ROLLBACK_ROLE {
        if !a.paths.is_empty() || a.from != "targets" {
            bail!("--to rollback: the rollback role is delegated by top-level targets with no --paths (it can never sign targets)");
        }
    } else if a.paths.is_empty() {
        bail!("--paths is required");
    }
    for p in &a.paths {
        if p.is_empty() || p.chars().any(char::is_control) || p.starts_with('/') {
            bail!("--paths {p:?}: not a usable path pattern");
        }
    }
    let keys = load_keys(&a.keys, &state.config, &a.to)?;
    let threshold = chosen_threshold(&a.to, "--threshold", a.threshold, keys.len())?;
    check_threshold(&a.to, threshold, keys.len())?;
    let mut body = state.next_body(&a.from)?;
    let dels = body
        .as_object_mut()
        .context("metadata is not an object")?
        .entry("delegations")
        .or_insert_with(|| json!({"keys": {}, "roles": []}));
    if dels.get("succinct_roles").is_some() {
        bail!(
            "{} delegates to hashed bins (succinct_roles); it cannot also list named roles",
            a.from
        );
    }
    let keymap = dels
        .as_object_mut()
        .context("delegations is not an object")?
        .entry("keys")
        .or_insert_with(|| json!({}));
    let keymap = keymap
        .as_object_mut()
        .context("delegations.keys is not an object")?;
    for (id, k) in key_map(&keys) {
        keymap.insert(id, k);
    }
    let roles = dels
        .as_object_mut()
        .context("delegations is not an object")?
        .entry("roles")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .context("delegations.roles is not an array")?;
    roles.push(json!({
        "name": a.to,
        "keyids": keys.iter().map(|k| k.keyid.clone()).collect::<Vec<_>>(),
        "threshold": threshold,
        "terminating": a.terminating,
        "paths": a.paths,
    }));
    let from_version = body.get("version").and_then(Value::as_u64).unwrap_or(0);
    let mut batch = Batch::new();
    state.stage(&mut batch, &a.from, body)?;
    let exp = build::expires_at(state.now, state.config.expires.delegated)?;
    let new = build::targets(state.profile, 1, &exp, &Map::new(), None);
    state.stage(&mut batch, &a.to, new)?;
    batch
        .commit()
        .with_context(|| format!("staging metadata in {}", a.dir.display()))?;
    state.warn_demo();
    println!(
        "delegated {} from {} (v{from_version}) to {} ({}-of-{}){}",
        a.paths.join(","),
        a.from,
        a.to,
        threshold,
        keys.len(),
        if a.terminating { ", terminating" } else { "" }
    );
    super::staged_hint(&state);
    Ok(ExitCode::SUCCESS)
}
