//! `hale-sign bins DIR --from targets --bit-length B --key K.pub`: TAP 15 succinct hashed bins for
//! big catalogs. The delegator's next version delegates to `2^B` bins named `<prefix>-<hex>`;
//! every bin is staged (empty ones too: clients fetch every bin the snapshot lists), the targets
//! the delegator listed itself move into their bins, and `target add --role <from>` routes each
//! target into its bin from now on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hale_repo::build;
use serde_json::{Map, Value};

use super::{check_threshold, chosen_threshold, key_map, load_keys};
use crate::config::Bins;
use crate::durable::Batch;
use crate::state::State;

/// Most bins hale-sign writes (2^16).
const MAX_BIT_LENGTH: u32 = 16;

#[derive(Args, Debug)]
pub struct BinsArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// The targets role whose catalog goes into bins.
    #[arg(long, default_value = "targets")]
    from: String,
    /// 2^B bins (B = 8: 256 bins).
    #[arg(long, value_name = "B")]
    bit_length: u32,
    /// The bins' key (.pub); repeatable.
    #[arg(long = "key", value_name = "PUB", required = true)]
    keys: Vec<PathBuf>,
    /// How many of the keys must sign (k of n); required with more than one key.
    #[arg(long)]
    threshold: Option<u32>,
    /// Bin names are <prefix>-<hex>.
    #[arg(long, default_value = "bin")]
    prefix: String,
}

pub fn run(a: BinsArgs) -> anyhow::Result<ExitCode> {
    let mut state = State::load_for_change(&a.dir)?;
    if !(1..=MAX_BIT_LENGTH).contains(&a.bit_length) {
        bail!(
            "--bit-length {}: must be 1..={MAX_BIT_LENGTH}",
            a.bit_length
        );
    }
    hale_core::metadata::check_role_name(&a.prefix)
        .map_err(|e| anyhow::anyhow!("--prefix: {e}"))?;
    if let Some(b) = &state.config.bins {
        bail!(
            "{} already delegates to hashed bins ({}-*, bit length {})",
            b.from,
            b.prefix,
            b.bit_length
        );
    }
    let from = state
        .get(&a.from)
        .with_context(|| format!("--from {}", a.from))?;
    if from.kind() != "targets" {
        bail!("--from {}: not a targets role", a.from);
    }
    if from.signed.get("delegations").is_some() {
        bail!(
            "{} already has delegations; hashed bins replace the whole delegation list",
            a.from
        );
    }
    let keys = load_keys(&a.keys, &state.config, "bins")?;
    let threshold = chosen_threshold("bins", "--threshold", a.threshold, keys.len())?;
    check_threshold("bins", threshold, keys.len())?;
    let keyids: Vec<String> = keys.iter().map(|k| k.keyid.clone()).collect();
    let mut body = state.next_body(&a.from)?;
    // the role's own targets move into their bins: a client looks in the role itself before its
    // delegations, so an entry left there would answer for its name whatever its bin lists later
    // (a new image under that name would never reach a device)
    let listed = body
        .get_mut("targets")
        .and_then(Value::as_object_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let moved = listed.len();
    let mut binned: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (name, entry) in listed {
        let bin = build::bin_for(&name, a.bit_length, &a.prefix);
        binned.entry(bin).or_default().insert(name, entry);
    }
    body["delegations"] =
        build::succinct_delegation(&key_map(&keys), &keyids, threshold, a.bit_length, &a.prefix);
    let mut batch = Batch::new();
    state.stage(&mut batch, &a.from, body)?;
    let exp = build::expires_at(state.now, state.config.expires.delegated)?;
    let count = 1u32 << a.bit_length;
    for bin in 0..count {
        let name = build::bin_name(bin, a.bit_length, &a.prefix);
        if state.roles.contains_key(&name) {
            bail!("role {name} already exists");
        }
        let targets = binned.remove(&name).unwrap_or_default();
        let body = build::targets(state.profile, 1, &exp, &targets, None);
        state.stage(&mut batch, &name, body)?;
    }
    batch
        .commit()
        .with_context(|| format!("staging bins in {}", a.dir.display()))?;
    state.config.bins = Some(Bins {
        from: a.from.clone(),
        bit_length: a.bit_length,
        prefix: a.prefix.clone(),
    });
    state.config.save(&a.dir)?;
    state.warn_demo();
    let first = build::bin_name(0, a.bit_length, &a.prefix);
    let last = build::bin_name(count - 1, a.bit_length, &a.prefix);
    println!(
        "{} delegates to {count} hashed bins {first} … {last} ({}-of-{})",
        a.from,
        threshold,
        keys.len()
    );
    if moved > 0 {
        println!(
            "moved the {moved} target(s) {} listed into their bins",
            a.from
        );
    }
    super::staged_hint(&state);
    Ok(ExitCode::SUCCESS)
}
