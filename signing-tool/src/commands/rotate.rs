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
    /// Replace a staged root that already meets every threshold it needs. Such a root is valid
    /// for devices in the hands of whoever kept a copy; replacing it forks the fleet unless every
    /// copy is destroyed. Without it, publish that root and make the change in the next version.
    #[arg(long)]
    discard_signed_root: bool,
}

/// A key to remove: its key id, and the key itself when the argument is a key file.
fn keyid_of_arg(s: &str) -> anyhow::Result<(String, Option<Value>)> {
    let p = Path::new(s);
    if p.exists() {
        let k = load_public(p)?;
        return Ok((k.keyid, Some(k.key)));
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((s.to_ascii_lowercase(), None));
    }
    bail!("--remove-key {s:?}: neither a key file nor a keyid")
}

/// hale-core's fingerprint of a TUF key object (`None`: a key it cannot use).
fn fingerprint(key: &Value) -> Option<[u8; 32]> {
    let bytes = serde_json::to_vec(key).ok()?;
    let parsed = hale_core::json::parse(&bytes).ok()?;
    let key = hale_core::crypto::PublicKey::from_tuf(&parsed.as_object()?).ok()?;
    Some(key.fingerprint())
}

/// The key ids of the key map `keys` that name the key to remove (its own key id and any other
/// the same key is listed under: an ECDSA key as `ecdsa` and as `ecdsa-sha2-nistp256`, or as
/// PEM and as hex), so that a removed key is not left trusted under another key id.
fn ids_of_key(keys: Option<&Value>, (id, key): &(String, Option<Value>)) -> Vec<String> {
    let map = keys.and_then(Value::as_object);
    let target = key
        .as_ref()
        .or_else(|| map.and_then(|m| m.get(id)))
        .and_then(fingerprint);
    let mut ids = vec![id.clone()];
    if let (Some(map), Some(target)) = (map, target) {
        for (other, k) in map {
            if other != id && fingerprint(k) == Some(target) {
                ids.push(other.clone());
            }
        }
    }
    ids
}

/// Apply the change to one `{keyids, threshold}` entry.
/// `remove`: for each key to remove, every key id it is listed under (the first is the one
/// given).
fn change(
    entry: &mut Value,
    role: &str,
    add: &[String],
    remove: &[Vec<String>],
    threshold: Option<u32>,
) -> anyhow::Result<(u32, usize)> {
    let ids = entry
        .get_mut("keyids")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{role}: no keyids"))?;
    for group in remove {
        let before = ids.len();
        ids.retain(|k| !k.as_str().is_some_and(|k| group.iter().any(|g| g == k)));
        let given = group.first().map_or("", String::as_str);
        match before - ids.len() {
            0 => bail!("--remove-key {given}: not a key of {role}"),
            1 => {}
            n => eprintln!(
                "note: the key {given} is listed under {n} key ids in {role}: removed under all"
            ),
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
    state.discard_signed_root = a.discard_signed_root;
    if a.add.is_empty() && a.remove.is_empty() && a.threshold.is_none() {
        bail!("nothing to change: give --add-key, --remove-key or --threshold");
    }
    let added = load_keys(&a.add, &state.config, &a.role)?;
    let add_ids: Vec<String> = added.iter().map(|k| k.keyid.clone()).collect();
    let remove_keys: Vec<(String, Option<Value>)> = a
        .remove
        .iter()
        .map(|r| keyid_of_arg(r))
        .collect::<anyhow::Result<_>>()?;
    let remove_ids = |keys: Option<&Value>| -> Vec<Vec<String>> {
        remove_keys.iter().map(|k| ids_of_key(keys, k)).collect()
    };

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
        let remove = remove_ids(body.get("keys"));
        let entry = body
            .pointer_mut(&format!("/roles/{}", a.role))
            .with_context(|| format!("root has no role {}", a.role))?;
        let r = change(entry, &a.role, &add_ids, &remove, a.threshold)?;
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
        let remove = remove_ids(body.pointer("/delegations/keys"));
        let dels = body
            .get_mut("delegations")
            .with_context(|| format!("{delegator} has no delegations"))?;
        let r = if let Some(roles) = dels.get_mut("roles").and_then(Value::as_array_mut) {
            let entry = roles
                .iter_mut()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(a.role.as_str()))
                .with_context(|| format!("{delegator} does not delegate to {}", a.role))?;
            change(entry, &a.role, &add_ids, &remove, a.threshold)?
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
                &remove,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A key removed by one key id, or by its key file in the other form, goes under every key
    /// id the role lists it under (a P-256 key as `ecdsa` and as `ecdsa-sha2-nistp256`); other
    /// keys stay.
    #[test]
    fn a_removed_key_goes_under_every_key_id_it_is_listed_under() {
        let k = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::EcdsaP256, &[3; 32])
            .expect("a key");
        let other =
            hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[4; 32]).expect("a key");
        let (id, key) = (k.keyid(), k.public());
        let mut alt = key.clone();
        alt["keytype"] = json!("ecdsa-sha2-nistp256");
        let alt_id = hale_repo::keys::keyid_of(&alt).expect("a key id");
        assert_ne!(alt_id, id);
        let keys = json!({&id: key, &alt_id: alt.clone(), other.keyid(): other.public()});
        let entry = json!({"keyids": [&id, &alt_id, other.keyid()], "threshold": 1});
        for given in [
            (id.clone(), None),
            (alt_id.clone(), None),
            (alt_id.clone(), Some(alt)),
        ] {
            let group = ids_of_key(Some(&keys), &given);
            let mut e = entry.clone();
            assert_eq!(
                change(&mut e, "targets", &[], &[group], None).expect("removed"),
                (1, 1)
            );
            assert_eq!(e["keyids"], json!([other.keyid()]), "{given:?}");
        }
        // a key id not in the key map is itself only
        assert_eq!(
            ids_of_key(Some(&keys), &("ab".repeat(32), None)),
            ["ab".repeat(32)]
        );
    }
}
