//! `hale-sign init DIR`: root k-of-n, targets keys, the online snapshot/timestamp public keys,
//! the expiry policy and the profile. Stages root v1 and an empty targets v1, unsigned.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hale_repo::build::{self, Profile, RoleKeys};
use serde_json::{Map, Value};

use super::{check_threshold, chosen_threshold, key_map, load_keys};
use crate::config::{self, Config, Expiry};
use crate::durable::Batch;
use crate::state::State;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The new repository working directory.
    dir: PathBuf,
    /// A root key (.pub); repeat for k-of-n.
    #[arg(long = "root-key", value_name = "PUB", required = true)]
    root_keys: Vec<PathBuf>,
    /// How many of the root keys must sign (k of n); required with more than one key.
    #[arg(long)]
    root_threshold: Option<u32>,
    /// A targets key (.pub); repeatable.
    #[arg(long = "targets-key", value_name = "PUB", required = true)]
    targets_keys: Vec<PathBuf>,
    /// How many of the targets keys must sign (k of n); required with more than one key.
    #[arg(long)]
    targets_threshold: Option<u32>,
    /// The (online) snapshot key (.pub); repeatable.
    #[arg(long = "snapshot-key", value_name = "PUB", required = true)]
    snapshot_keys: Vec<PathBuf>,
    /// How many of the snapshot keys must sign (k of n); required with more than one key.
    #[arg(long)]
    snapshot_threshold: Option<u32>,
    /// The (online) timestamp key (.pub); repeatable.
    #[arg(long = "timestamp-key", value_name = "PUB", required = true)]
    timestamp_keys: Vec<PathBuf>,
    /// How many of the timestamp keys must sign (k of n); required with more than one key.
    #[arg(long)]
    timestamp_threshold: Option<u32>,
    /// Expiry per role, e.g. root=365d,targets=90d,snapshot=7d,timestamp=1d,delegated=90d.
    #[arg(long, value_name = "ROLE=DURATION,...")]
    expires: Option<String>,
    /// standard (TUF 1.0.34) or compat (rust-tuf 0.3 clients: spec 1.0.0, ed25519 only).
    #[arg(long, default_value = "standard")]
    profile: String,
    /// The key types every device of the fleet verifies, comma-separated: ed25519, ecdsa-p256
    /// (hale-core's `ecdsa` feature, on by default), rsa (host builds only). Keys of any other
    /// type are refused for every role. Default: ed25519,ecdsa-p256 (ed25519 in the compat
    /// profile); give ed25519 for firmware built without `ecdsa`.
    #[arg(long, value_name = "TYPES")]
    device_key_types: Option<String>,
}

pub fn run(a: InitArgs) -> anyhow::Result<ExitCode> {
    let profile = Profile::parse(&a.profile)?;
    let cfg_path = a.dir.join(config::CONFIG_FILE);
    if cfg_path.exists() {
        bail!(
            "{}: already a repository (found {})",
            a.dir.display(),
            cfg_path.display()
        );
    }
    let device_key_types = match (&a.device_key_types, profile) {
        (Some(list), _) => config::parse_device_key_types(list)?,
        (None, Profile::Compat) => vec!["ed25519".to_string()],
        (None, _) => config::DEFAULT_DEVICE_KEY_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
    };
    let cfg = Config::new(profile, Expiry::default(), device_key_types);
    let mut expires = Expiry::default();
    if let Some(e) = &a.expires {
        expires.apply(e)?;
    }
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (role, paths, threshold) in [
        ("root", &a.root_keys, a.root_threshold),
        ("targets", &a.targets_keys, a.targets_threshold),
        ("snapshot", &a.snapshot_keys, a.snapshot_threshold),
        ("timestamp", &a.timestamp_keys, a.timestamp_threshold),
    ] {
        let ks = load_keys(paths, &cfg, role)?;
        let flag = format!("--{role}-threshold");
        let threshold = chosen_threshold(role, &flag, threshold, ks.len())?;
        check_threshold(role, threshold, ks.len())?;
        keys.extend(key_map(&ks));
        roles.insert(
            role.to_string(),
            RoleKeys {
                keyids: ks.iter().map(|k| k.keyid.clone()).collect(),
                threshold,
            },
        );
    }
    // everything that can be refused is refused before the first file is written: a refused
    // init leaves nothing behind that would make its retry "already a repository"
    let now = crate::state::unix_now();
    let expiry = |role: &str, secs: i64| {
        build::expires_at(now, secs).map_err(|_| {
            anyhow::anyhow!(
                "--expires {role}: {secs} s from now is past 9999-12-31 (the latest expiry)"
            )
        })
    };
    let root_expires = expiry("root", expires.root)?;
    let targets_expires = expiry("targets", expires.targets)?;
    let staged = config::staged_dir(&a.dir);
    if std::fs::read_dir(&staged).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{}: holds staged files already (a repository's, moved or half-removed?); refusing to \
             mix a new root with them",
            staged.display()
        );
    }
    let created = !a.dir.exists();
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cfg = Config { expires, ..cfg };
    cfg.save(&a.dir)?;
    let r = stage_first(&a, profile, &keys, &roles, &root_expires, &targets_expires);
    if r.is_err() {
        // undone, so that the init can be run again
        if created {
            let _ = std::fs::remove_dir_all(&a.dir);
        } else {
            let _ = std::fs::remove_file(&cfg_path);
            let _ = std::fs::remove_file(a.dir.join(crate::state::LOCK_FILE));
        }
    }
    r
}

/// Stage root v1 and targets v1 in the new repository `a.dir` (its configuration saved).
fn stage_first(
    a: &InitArgs,
    profile: Profile,
    keys: &BTreeMap<String, Value>,
    roles: &BTreeMap<String, RoleKeys>,
    root_expires: &str,
    targets_expires: &str,
) -> anyhow::Result<ExitCode> {
    let mut state = State::load_for_change(&a.dir)?;
    let root = build::root(profile, 1, root_expires, keys, roles, true);
    let targets = build::targets(profile, 1, targets_expires, &Map::new(), None);
    let mut batch = Batch::new();
    state.stage(&mut batch, "root", root)?;
    state.stage(&mut batch, "targets", targets)?;
    std::fs::create_dir_all(config::repository_dir(&a.dir).join("targets"))
        .with_context(|| format!("creating {}", config::repository_dir(&a.dir).display()))?;
    batch
        .commit()
        .with_context(|| format!("staging metadata in {}", a.dir.display()))?;
    state.warn_demo();
    println!(
        "initialised {} ({} profile): root {}-of-{}, targets {}-of-{}",
        a.dir.display(),
        profile.as_str(),
        roles["root"].threshold,
        a.root_keys.len(),
        roles["targets"].threshold,
        a.targets_keys.len()
    );
    super::staged_hint(&state);
    Ok(ExitCode::SUCCESS)
}
