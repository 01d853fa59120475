//! `hale-sign config DIR --device-key-types ed25519[,ecdsa-p256]`: change the key types every
//! device of the fleet verifies (`device_key_types` in `hale-repo.json`, set at `init
//! --device-key-types`).
//!
//! Narrowing the list is refused while a key of a type it drops is listed by the newest published
//! root or by any staged or published role (the root's roles, or a targets role's delegations):
//! devices that no longer verify that type would count no signature of it, and a root whose
//! threshold needs one strands them on the root before it. The check is [`keys_of_types`], which
//! [`Config::keys_devices_skip`] (`status`, `publish`) runs too. Widening is allowed, with a
//! warning: hale-sign then accepts keys of the new type for every role, and every device of the
//! fleet must verify it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use crate::config::{keys_of_types, parse_device_key_types, repository_dir, Config, CONFIG_FILE};
use crate::error::read;
use crate::state::State;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// The key types every device of the fleet verifies, comma-separated: ed25519 (always),
    /// ecdsa-p256 (hale-core's `ecdsa` feature, on by default), rsa (host builds only). A type
    /// dropped must be listed by no key of the published root or of any staged or published role.
    #[arg(long, value_name = "TYPES", required = true)]
    device_key_types: String,
}

/// Every document whose keys devices use now or will once it is published: the newest published
/// root, and each role that lists keys (root, targets roles) as staged and as published. As
/// (label, `signed`), e.g. ("root v1 (published)", …).
fn documents(state: &State) -> anyhow::Result<Vec<(String, Value)>> {
    let published_signed = |role: &str, v: u64| -> anyhow::Result<Value> {
        let path = repository_dir(&state.dir).join(format!("{v}.{role}.json"));
        let doc: Value = serde_json::from_slice(&read(&path)?)
            .with_context(|| format!("{}: not JSON", path.display()))?;
        doc.get("signed")
            .cloned()
            .with_context(|| format!("{}: no `signed` object", path.display()))
    };
    let mut out = Vec::new();
    for m in state.roles.values() {
        if m.name != "root" && m.kind() != "targets" {
            continue;
        }
        let what = if m.staged { "staged" } else { "published" };
        out.push((
            format!("{} v{} ({what})", m.name, m.version),
            m.signed.clone(),
        ));
        if m.staged {
            if let Some(&v) = state.published.get(&m.name) {
                out.push((
                    format!("{} v{v} (published)", m.name),
                    published_signed(&m.name, v)?,
                ));
            }
        }
    }
    Ok(out)
}

/// `types` as "a", "a and b" or "a, b and c" (`word` "and"; or "or").
fn list(types: &[&str], word: &str) -> String {
    match types {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} {word} {last}", rest.join(", ")),
    }
}

pub fn run(a: ConfigArgs) -> anyhow::Result<ExitCode> {
    let new = parse_device_key_types(&a.device_key_types)
        .with_context(|| format!("--device-key-types {}", a.device_key_types))?;
    let state = State::load_for_change(&a.dir)?;
    // the file as written (State fills in what it infers, such as the hashed bins)
    let mut config = Config::load(&a.dir)?;
    let path = a.dir.join(CONFIG_FILE);
    let old: Vec<String> = config
        .device_key_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let dropped: Vec<&str> = old
        .iter()
        .map(String::as_str)
        .filter(|t| !new.iter().any(|n| n == t))
        .collect();
    let added: Vec<&str> = new
        .iter()
        .map(String::as_str)
        .filter(|t| !old.iter().any(|o| o == t))
        .collect();
    if dropped.is_empty() && added.is_empty() {
        let default = if config.device_key_types.is_none() {
            format!(" (the default: {} lists none)", path.display())
        } else {
            String::new()
        };
        println!(
            "{}: device_key_types is already {}{default}; {} unchanged",
            a.dir.display(),
            old.join(", "),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !dropped.is_empty() {
        let listed: Vec<String> = documents(&state)?
            .into_iter()
            .filter_map(|(label, signed)| {
                let keys = keys_of_types(&signed, |t| dropped.contains(&t));
                (!keys.is_empty()).then(|| format!("{label} lists {}", keys.join(", ")))
            })
            .collect();
        if !listed.is_empty() {
            let types = list(&dropped, "and");
            let them = if dropped.len() == 1 {
                "that type"
            } else {
                "those types"
            };
            bail!(
                "refusing to drop {types} from device_key_types: keys of {them} are listed: {}. A \
                 device that does not verify {} counts no signature of them, and a root \
                 whose threshold needs one strands it on the root before it. Rotate them out \
                 first (`hale-sign rotate {} --role ROLE --remove-key KEYID`, then sign and \
                 publish), then run this again; {} unchanged",
                listed.join("; "),
                list(&dropped, "or"),
                a.dir.display(),
                path.display()
            );
        }
    }
    if !added.is_empty() {
        let types = list(&added, "and");
        let them = if added.len() == 1 {
            "that type"
        } else {
            "those types"
        };
        let rsa = if added.contains(&"rsa") {
            " (hale-core verifies rsa in host builds only, with `std`: check the pumps' firmware)"
        } else {
            ""
        };
        eprintln!(
            "warning: device_key_types now lists {types}: hale-sign accepts keys of {them} for \
             every role from now on. Every device of the fleet, older hardware and firmware too, \
             must verify {types}{rsa}: a device that does not counts no signature of such a key, \
             and a root whose threshold needs one strands it on the root before it (a published \
             root is never replaced)"
        );
    }
    config.device_key_types = Some(new.clone());
    config.save(&a.dir)?;
    println!(
        "{}: device_key_types is now {} (was {}) in {}",
        a.dir.display(),
        new.join(", "),
        old.join(", "),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_types_read_as_english() {
        assert_eq!(list(&["rsa"], "and"), "rsa");
        assert_eq!(list(&["ecdsa-p256", "rsa"], "or"), "ecdsa-p256 or rsa");
        assert_eq!(list(&["a", "b", "c"], "and"), "a, b and c");
    }
}
