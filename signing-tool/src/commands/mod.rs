//! One file per subcommand. Handlers return `anyhow::Result<ExitCode>` with context naming the
//! file or directory they worked on.

pub mod bins;
pub mod bundle;
pub mod ca;
pub mod config;
pub mod delegate;
pub mod factory;
pub mod init;
pub mod key;
pub mod publish;
pub mod push;
pub mod renew;
pub mod rollback;
pub mod rotate;
pub mod sign;
pub mod status;
pub mod target;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::Config;
use crate::key_source::{load_public, PublicKey};
use crate::state::State;

/// Load public keys, refusing duplicates, a type the fleet's devices do not verify
/// (`device_key_types`) and (in the compat profile) anything but ed25519.
pub fn load_keys(paths: &[PathBuf], config: &Config, role: &str) -> anyhow::Result<Vec<PublicKey>> {
    let mut out: Vec<PublicKey> = Vec::new();
    for p in paths {
        let k = load_public(p).with_context(|| format!("loading a {role} key"))?;
        if out.iter().any(|o| o.keyid == k.keyid) {
            bail!("{}: key {} is given twice for {role}", p.display(), k.keyid);
        }
        check_profile_key(config.profile()?, &k)?;
        check_device_key(config, &k, role)?;
        out.push(k);
    }
    Ok(out)
}

/// rust-tuf (the compat profile's client) verifies ed25519 only.
pub fn check_profile_key(profile: hale_repo::build::Profile, k: &PublicKey) -> anyhow::Result<()> {
    if profile == hale_repo::build::Profile::Compat && !k.is_ed25519() {
        bail!(
            "{}: compat profile refuses key {} of type {}: its clients (rust-tuf 0.3) verify ed25519 only",
            k.path.display(),
            k.keyid,
            k.keytype()
        );
    }
    Ok(())
}

/// A key of a type every device verifies: a device skips the others, so their signatures count
/// for nothing there, and a root whose threshold needs one is refused by the whole fleet.
fn check_device_key(config: &Config, k: &PublicKey, role: &str) -> anyhow::Result<()> {
    let types = config.device_key_types();
    let t = crate::config::key_type_name(k.keytype());
    if !types.contains(&t) {
        bail!(
            "{}: key {} is of type {t}, and this repository's devices verify {} only \
             (device_key_types in {}): its signatures would count for nothing on them, and a \
             {role} threshold that needs one would stop every update",
            k.path.display(),
            k.keyid,
            types.join(", "),
            crate::config::CONFIG_FILE
        );
    }
    Ok(())
}

/// A threshold must be reachable with the distinct keys given, and within hale-core's limits.
/// The threshold for `keys` keys of `role`: `given` (`flag` on the command line), or 1 for a
/// single key. Several keys need it said: a default of 1 made a 3-key root a 1-of-3 root, one
/// key holder alone able to sign for it.
pub fn chosen_threshold(
    role: &str,
    flag: &str,
    given: Option<u32>,
    keys: usize,
) -> anyhow::Result<u32> {
    match given {
        Some(t) => Ok(t),
        None if keys <= 1 => Ok(1),
        None => bail!(
            "{role}: {keys} keys and no {flag}: say how many of them must sign ({flag} K; \
             {flag} 1 lets any one key holder sign for {role} alone)"
        ),
    }
}

pub fn check_threshold(role: &str, threshold: u32, keys: usize) -> anyhow::Result<()> {
    if threshold == 0 || threshold as usize > keys {
        bail!("{role}: threshold {threshold} cannot be met with {keys} key(s)");
    }
    if keys > hale_core::limits::MAX_KEYS_PER_ROLE {
        bail!(
            "{role}: {keys} keys, more than hale-core's limit of {}",
            hale_core::limits::MAX_KEYS_PER_ROLE
        );
    }
    Ok(())
}

/// keyid → TUF key object.
pub fn key_map(keys: &[PublicKey]) -> BTreeMap<String, Value> {
    keys.iter()
        .map(|k| (k.keyid.clone(), k.key.clone()))
        .collect()
}

/// Print what is staged now and the next step.
pub fn staged_hint(state: &State) {
    let staged: Vec<String> = state
        .staged()
        .map(|m| format!("{} v{}", m.name, m.version))
        .collect();
    if staged.len() <= 8 {
        eprintln!("staged: {}", staged.join(", "));
    } else {
        eprintln!(
            "staged: {} files ({} ...)",
            staged.len(),
            staged
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!("next: each signer runs `hale-sign sign {}/staged/<role>.json --key <their key>`; `hale-sign status {}` shows who is missing", state.dir.display(), state.dir.display());
}
