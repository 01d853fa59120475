//! `hale-repo.json`: how a repository working directory is set up.
//!
//! ```text
//! DIR/hale-repo.json      this file (profile, expiry policy, hashed bins)
//! DIR/staged/<role>.json  metadata being signed, one signer after another
//! DIR/repository/         the published, servable repository (hale_repo::layout)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hale_repo::build::Profile;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, read, Result, ToolError};

pub const CONFIG_FILE: &str = "hale-repo.json";
pub const STAGED_DIR: &str = "staged";
pub const REPOSITORY_DIR: &str = "repository";
const FORMAT: &str = "hale-repo-v1";

const DAY: i64 = 86_400;

/// Expiry policy: seconds from signing time, per role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Expiry {
    pub root: i64,
    pub targets: i64,
    pub snapshot: i64,
    pub timestamp: i64,
    /// Every delegated role (including hashed bins).
    pub delegated: i64,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            root: 365 * DAY,
            targets: 90 * DAY,
            snapshot: 7 * DAY,
            timestamp: DAY,
            delegated: 90 * DAY,
        }
    }
}

impl Expiry {
    pub fn for_role(&self, role: &str) -> i64 {
        match role {
            "root" => self.root,
            "targets" => self.targets,
            "snapshot" => self.snapshot,
            "timestamp" => self.timestamp,
            _ => self.delegated,
        }
    }

    /// Apply `root=365d,targets=90d,…` on top of the current values.
    pub fn apply(&mut self, spec: &str) -> Result<()> {
        // all or nothing
        let mut next = self.clone();
        let mut seen: Vec<&str> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, dur) = part.split_once('=').ok_or_else(|| {
                invalid(format!(
                    "--expires: {part:?} is not ROLE=DURATION (e.g. targets=90d)"
                ))
            })?;
            let secs = parse_duration(dur)?;
            let role = role.trim();
            if seen.contains(&role) {
                return Err(invalid(format!(
                    "--expires: {role} given twice ({spec:?}): which one is meant?"
                )));
            }
            seen.push(role);
            let slot = match role {
                "root" => &mut next.root,
                "targets" => &mut next.targets,
                "snapshot" => &mut next.snapshot,
                "timestamp" => &mut next.timestamp,
                "delegated" => &mut next.delegated,
                other => {
                    return Err(invalid(format!(
                        "--expires: unknown role {other:?} (root, targets, snapshot, timestamp, delegated)"
                    )))
                }
            };
            *slot = secs;
        }
        *self = next;
        Ok(())
    }
}

/// `90d`, `12h`, `30m`, `3600s` or `2w`. A number without its unit is refused: `365` meant as
/// days would silently be six minutes.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let bad = || {
        invalid(format!(
            "{s:?} is not a duration: a number and its unit, s, m, h, d or w (e.g. 90d, 12h)"
        ))
    };
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (s.get(..i).ok_or_else(bad)?, s.get(i..).ok_or_else(bad)?),
        None => {
            return Err(invalid(format!(
                "duration {s:?} has no unit: {s}s, {s}m, {s}h, {s}d or {s}w?"
            )))
        }
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => DAY,
        "w" => 7 * DAY,
        _ => return Err(bad()),
    };
    let v = n.checked_mul(mul).ok_or_else(bad)?;
    if v <= 0 {
        return Err(invalid(format!("duration {s:?} must be positive")));
    }
    Ok(v)
}

/// TAP 15 hashed bins delegated from one targets role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bins {
    pub from: String,
    pub bit_length: u32,
    pub prefix: String,
}

/// The contents of `hale-repo.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub profile: String,
    pub consistent_snapshot: bool,
    pub expires: Expiry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<Bins>,
    /// The key types every device of the fleet verifies (`device_key_types`; absent in
    /// repositories made before it: [`DEFAULT_DEVICE_KEY_TYPES`]). A key of another type is
    /// refused for every role: a device that skips it counts no signature of it, and a root
    /// whose threshold needs one strands the fleet on the root before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key_types: Option<Vec<String>>,
    /// Unknown fields are kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Key types hale-core's default device build verifies (feature `ecdsa` on; RSA needs `std`).
pub const DEFAULT_DEVICE_KEY_TYPES: &[&str] = &["ed25519", "ecdsa-p256"];
/// Every key type hale-core verifies in some build.
pub const KEY_TYPES: &[&str] = &["ed25519", "ecdsa-p256", "rsa"];

/// The type name (as `device_key_types` and `key generate --type` spell it) of a TUF key's
/// `keytype`.
pub fn key_type_name(keytype: &str) -> &str {
    match keytype {
        "ecdsa" | "ecdsa-sha2-nistp256" => "ecdsa-p256",
        other => other,
    }
}

/// `device_key_types` from a comma-separated list: known types, each once, ed25519 among them
/// (every build verifies it).
pub fn parse_device_key_types(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in list.split(',').map(str::trim) {
        if !KEY_TYPES.contains(&t) {
            return Err(invalid(format!(
                "device key type {t:?}: not one of {}",
                KEY_TYPES.join(", ")
            )));
        }
        if out.iter().any(|o| o == t) {
            return Err(invalid(format!("device key type {t} is listed twice")));
        }
        out.push(t.to_string());
    }
    if !out.iter().any(|t| t == "ed25519") {
        return Err(invalid(
            "device key types must include ed25519 (every device build verifies it)".to_string(),
        ));
    }
    Ok(out)
}

impl Config {
    pub fn new(profile: Profile, expires: Expiry, device_key_types: Vec<String>) -> Self {
        Config {
            format: FORMAT.into(),
            profile: profile.as_str().into(),
            consistent_snapshot: true,
            expires,
            bins: None,
            device_key_types: Some(device_key_types),
            extra: BTreeMap::new(),
        }
    }

    /// The key types the fleet's devices verify.
    pub fn device_key_types(&self) -> Vec<&str> {
        match &self.device_key_types {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => DEFAULT_DEVICE_KEY_TYPES.to_vec(),
        }
    }

    /// The keys `signed` (a root, or a targets role's delegations) lists whose type the fleet's
    /// devices do not verify: "KEYID (TYPE) for ROLE[, ROLE…]". Keys are refused at every command
    /// that adds one ([`crate::commands::load_keys`]), and `hale-sign config` refuses to narrow
    /// `device_key_types` while one of a dropped type is listed ([`keys_of_types`]), but the
    /// setting narrowed by hand, or a draft made before it, can still list one; its signatures
    /// count for nothing on a device, so a threshold met with it is met for the signing tool
    /// only.
    pub fn keys_devices_skip(&self, signed: &serde_json::Value) -> Vec<String> {
        let types = self.device_key_types();
        keys_of_types(signed, |t| !types.contains(&t))
    }

    pub fn profile(&self) -> Result<Profile> {
        Ok(Profile::parse(&self.profile)?)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        if !path.exists() {
            return Err(invalid(format!(
                "{}: not a hale-sign repository directory (no {CONFIG_FILE}; create one with `hale-sign init`)",
                dir.display()
            )));
        }
        let c: Config =
            serde_json::from_slice(&read(&path)?).map_err(|e| ToolError::json(&path, e))?;
        if c.format != FORMAT {
            return Err(invalid(format!(
                "{}: unknown format {:?} (expected {FORMAT})",
                path.display(),
                c.format
            )));
        }
        if !c.consistent_snapshot {
            return Err(invalid(format!(
                "{}: hale-sign writes consistent snapshots only",
                path.display()
            )));
        }
        c.profile()
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        if let Some(types) = &c.device_key_types {
            parse_device_key_types(&types.join(","))
                .map_err(|e| invalid(format!("{}: device_key_types: {e}", path.display())))?;
        }
        let e = &c.expires;
        for (role, secs) in [
            ("root", e.root),
            ("targets", e.targets),
            ("snapshot", e.snapshot),
            ("timestamp", e.timestamp),
            ("delegated", e.delegated),
        ] {
            if secs <= 0 {
                return Err(invalid(format!(
                    "{}: expires.{role} is {secs} s: an expiry must be a positive number of seconds",
                    path.display()
                )));
            }
        }
        Ok(c)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| ToolError::json(&path, e))?;
        bytes.push(b'\n');
        crate::durable::write_one(&path, &bytes)
    }
}

/// The keys `signed` (a root, or a targets role's delegations) lists whose type (as
/// `device_key_types` spells it, [`key_type_name`]) `pick` takes: "KEYID (TYPE) for ROLE[,
/// ROLE…]", or "KEYID (TYPE, no role)".
pub fn keys_of_types(signed: &serde_json::Value, pick: impl Fn(&str) -> bool) -> Vec<String> {
    use serde_json::Value;
    // root lists its keys and roles at the top; a targets role in its delegations
    let (keys, roles): (Option<&Value>, Vec<(String, &Value)>) = match signed.get("keys") {
        Some(keys) => (
            Some(keys),
            signed
                .get("roles")
                .and_then(Value::as_object)
                .map(|r| r.iter().map(|(n, v)| (n.clone(), v)).collect())
                .unwrap_or_default(),
        ),
        None => {
            let d = signed.get("delegations");
            let mut roles: Vec<(String, &Value)> = d
                .and_then(|d| d.get("roles"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|r| (r["name"].as_str().unwrap_or("?").to_string(), r))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(s) = d.and_then(|d| d.get("succinct_roles")) {
                let prefix = s["name_prefix"].as_str().unwrap_or("?");
                roles.push((format!("{prefix}-* bins"), s));
            }
            (d.and_then(|d| d.get("keys")), roles)
        }
    };
    let Some(keys) = keys.and_then(Value::as_object) else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|(id, key)| {
            let t = key_type_name(key.get("keytype")?.as_str()?);
            if !pick(t) {
                return None;
            }
            let users: Vec<&str> = roles
                .iter()
                .filter(|(_, r)| {
                    r.get("keyids")
                        .and_then(Value::as_array)
                        .is_some_and(|ids| ids.iter().any(|k| k.as_str() == Some(id)))
                })
                .map(|(n, _)| n.as_str())
                .collect();
            Some(if users.is_empty() {
                format!("{id} ({t}, no role)")
            } else {
                format!("{id} ({t}) for {}", users.join(", "))
            })
        })
        .collect()
}

pub fn staged_dir(dir: &Path) -> PathBuf {
    dir.join(STAGED_DIR)
}

pub fn repository_dir(dir: &Path) -> PathBuf {
    dir.join(REPOSITORY_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_expiry_specs() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * DAY);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("3600s").unwrap(), 3600);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY);
        assert_eq!(
            parse_duration("365").unwrap_err().to_string(),
            "duration \"365\" has no unit: 365s, 365m, 365h, 365d or 365w?"
        );
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("0d").is_err());
        let mut e = Expiry::default();
        e.apply("root=730d, timestamp=6h").unwrap();
        assert_eq!(
            (e.root, e.timestamp, e.targets),
            (730 * DAY, 6 * 3600, 90 * DAY)
        );
        assert!(e.apply("bogus=1d").is_err());
        let before = e.clone();
        assert_eq!(
            e.apply("root=365d,root=1d").unwrap_err().to_string(),
            "--expires: root given twice (\"root=365d,root=1d\"): which one is meant?"
        );
        assert_eq!(e, before, "nothing applied");
    }
}
