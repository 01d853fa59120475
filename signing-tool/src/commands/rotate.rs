//! `hale-sign rotate DIR --role R --add-key X.pub --remove-key Y.pub [--threshold N]`: change
//! who signs role R. The change is a new version of R's delegator — root for the top-level roles
//! (a new root must then be signed by a threshold of the old root's root keys AND of its own,
//! which `status` shows separately), the delegating targets role otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};

use super::{check_threshold, load_keys};
use crate::durable::Batch;
use crate::key_source::load_public;
use crate::state::{is_bin, top_level, State};

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// root, targets, snapshot, timestamp, a delegated role, or the hashed bins (a bin name or
    /// their prefix).
    #[arg(long)]
    role: String,
    /// A key to add (.pub); repeatable.
    #[arg(long = "add-key", value_name = "PUB")]
    add: Vec<PathBuf>,
    /// A key to remove (.pub, .key, or its keyid); repeatable.
    #[arg(long = "remove-key", value_name = "PUB-or-KEYID")]
    remove: Vec<String>,
    /// The new threshold (default: unchanged).
    #[arg(long)]
    threshold: Option<u32>,
    /// The delegator, when several delegate to the role.
    #[arg(long)]
    from: Option<String>,
}

fn keyid_of_arg(s: &str) -> anyhow::Result<String> {
    let p = Path::new(s);
    if p.exists() {
        return Ok(load_public(p)?.keyid);
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(s.to_ascii_lowercase());
    }
    bail!("--remove-key {s:?}: neither a key file nor a keyid")
}

/// Apply the change to one `{keyids, threshold}` entry.
fn change(
    entry: &mut Value,
    role: &str,
    add: &[String],
    remove: &[String],
    threshold: Option<u32>,
) -> anyhow::Result<(u32, usize)> {
    let ids = entry
        .get_mut("keyids")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{role}: no keyids"))?;
    for r in remove {
        let before = ids.len();
        ids.retain(|k| k.as_str() != Some(r.as_str()));
        if ids.len() == before {
            bail!("--remove-key {r}: not a key of {role}");
        }
    }
    for k in add {
        if ids.iter().any(|i| i.as_str() == Some(k.as_str())) {
            bail!("--add-key {k}: already a key of {role}");
        }
        ids.push(json!(k));
    }
    let n = ids.len();
    let t = match threshold {
        Some(t) => t,
        None => entry
            .get("threshold")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(1),
    };
    check_threshold(role, t, n)?;
    entry["threshold"] = json!(t);
    Ok((t, n))
}

/// Drop keys no role uses any more.
fn prune(keys: &mut Map<String, Value>, used: &BTreeSet<String>) {
    keys.retain(|k, _| used.contains(k));
}

fn used_ids<'a>(entries: impl Iterator<Item = &'a Value>) -> BTreeSet<String> {
    entries
        .filter_map(|e| e.get("keyids").and_then(Value::as_array))
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect()
}

pub fn run(a: RotateArgs) -> anyhow::Result<ExitCode> {
    let mut state = State::load_for_change(&a.dir)?;
    if a.add.is_empty() && a.remove.is_empty() && a.threshold.is_none() {
        bail!("nothing to change: give --add-key, --remove-key or --threshold");
    }
    let added = load_keys(&a.add, state.profile, &a.role)?;
    let add_ids: Vec<String> = added.iter().map(|k| k.keyid.clone()).collect();
    let remove_ids: Vec<String> = a
        .remove
        .iter()
        .map(|r| keyid_of_arg(r))
        .collect::<anyhow::Result<_>>()?;

    let (delegator, mut body) = if top_level(&a.role).is_some() {
        ("root".to_string(), state.next_body("root")?)
    } else {
        let mut ds = state.delegators_of(&a.role);
        if let Some(b) = state.config.bins.as_ref().filter(|b| b.prefix == a.role) {
            ds = vec![b.from.clone()];
        }
        let d = match (&a.from, ds.len()) {
            (Some(f), _) if ds.contains(f) => f.clone(),
            (Some(f), _) => bail!("{f} does not delegate to {}", a.role),
            (None, 1) => ds.remove(0),
            (None, 0) => bail!("role {} is not delegated by any targets role", a.role),
            (None, _) => bail!(
                "role {} is delegated by {}: choose one with --from",
                a.role,
                ds.join(", ")
            ),
        };
        let b = state.next_body(&d)?;
        (d, b)
    };

    let (t, n) = if delegator == "root" {
        let entry = body
            .pointer_mut(&format!("/roles/{}", a.role))
            .with_context(|| format!("root has no role {}", a.role))?;
        let r = change(entry, &a.role, &add_ids, &remove_ids, a.threshold)?;
        let used = used_ids(
            body.get("roles")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.values()),
        );
        let keys = body
            .get_mut("keys")
            .and_then(Value::as_object_mut)
            .context("root has no keys")?;
        for k in &added {
            keys.insert(k.keyid.clone(), k.key.clone());
        }
        prune(keys, &used);
        r
    } else {
        let dels = body
            .get_mut("delegations")
            .with_context(|| format!("{delegator} has no delegations"))?;
        let r = if let Some(roles) = dels.get_mut("roles").and_then(Value::as_array_mut) {
            let entry = roles
                .iter_mut()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(a.role.as_str()))
                .with_context(|| format!("{delegator} does not delegate to {}", a.role))?;
            change(entry, &a.role, &add_ids, &remove_ids, a.threshold)?
        } else if let Some(s) = dels.get_mut("succinct_roles") {
            let prefix = s
                .get("name_prefix")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let bits = s.get("bit_length").and_then(Value::as_u64).unwrap_or(0);
            if a.role != prefix && !is_bin(&a.role, &prefix, bits) {
                bail!("{delegator}'s hashed bins are {prefix}-*, not {}", a.role);
            }
            eprintln!("note: the keys of all {prefix}-* bins change together (they share one succinct delegation)");
            change(
                s,
                &format!("{prefix}-* bins"),
                &add_ids,
                &remove_ids,
                a.threshold,
            )?
        } else {
            bail!("{delegator} has no delegations");
        };
        let mut used = used_ids(
            dels.get("roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
        used.extend(used_ids(dels.get("succinct_roles").into_iter()));
        let keys = dels
            .get_mut("keys")
            .and_then(Value::as_object_mut)
            .context("delegations has no keys")?;
        for k in &added {
            keys.insert(k.keyid.clone(), k.key.clone());
        }
        prune(keys, &used);
        r
    };
    let version = body.get("version").and_then(Value::as_u64).unwrap_or(0);
    // the rotated role itself: its published version is signed by the keys as they were, which
    // clients holding the new delegator refuse once a removed key is gone; its next version
    // (same content) is staged with it, to be signed by the keys as they are now. Not for root
    // (it is the delegator), nor snapshot and timestamp (signed again at each publish or by the
    // server); a role already staged is left as it is.
    // (one bin named: the bins share their keys, so every bin is signed again)
    let bins_prefix = state
        .config
        .bins
        .as_ref()
        .filter(|b| is_bin(&a.role, &b.prefix, u64::from(b.bit_length)))
        .map(|b| b.prefix.clone());
    let rotated: Vec<String> = match a.role.as_str() {
        "root" | "snapshot" | "timestamp" => Vec::new(),
        r => super::renew::roles_named(&state, bins_prefix.as_deref().unwrap_or(r))?
            .into_iter()
            .filter(|n| state.get(n).is_ok_and(|m| !m.staged))
            .collect(),
    };
    let mut bodies = vec![(delegator.clone(), body)];
    for n in &rotated {
        bodies.push((n.clone(), state.next_body(n)?));
    }
    let restaged: Vec<String> = bodies
        .iter()
        .skip(1)
        .map(|(n, b)| {
            format!(
                "{n} v{}",
                b.get("version").and_then(Value::as_u64).unwrap_or(0)
            )
        })
        .collect();
    let mut batch = Batch::new();
    state.stage_all(&mut batch, bodies)?;
    batch
        .commit()
        .with_context(|| format!("staging {delegator} in {}", a.dir.display()))?;
    state.warn_demo();
    println!(
        "{delegator} v{version} staged: {} is now {t}-of-{n}",
        a.role
    );
    match restaged.len() {
        0 => {}
        1..=8 => println!(
            "{} staged (same content) to be signed by {}'s keys as they are now",
            restaged.join(", "),
            a.role
        ),
        k => println!(
            "{k} roles staged (same content) to be signed by {}'s keys as they are now",
            a.role
        ),
    }
    if delegator == "root" && version > 1 {
        println!(
            "root v{version} must be signed by a threshold of root v{}'s root keys AND of its own root keys",
            version - 1
        );
    }
    super::staged_hint(&state);
    Ok(ExitCode::SUCCESS)
}
