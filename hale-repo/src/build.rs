//! Bodies (`signed`) of TUF metadata, as JSON values. Times are passed in.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::RepoError;

/// What a repository is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// TUF 1.0.34 as python-tuf 7, go-tuf and Hale devices read it.
    Standard,
    /// For older clients such as rust-tuf 0.3: `spec_version` "1.0.0", ed25519 keys only, and no
    /// control characters in strings (rust-tuf escapes them, so its canonical bytes differ).
    Compat,
}

impl Profile {
    pub fn spec_version(&self) -> &'static str {
        match self {
            Profile::Standard => "1.0.34",
            Profile::Compat => "1.0.0",
        }
    }
    pub fn parse(s: &str) -> Result<Self, RepoError> {
        match s {
            "standard" => Ok(Profile::Standard),
            "compat" | "rust-tuf" => Ok(Profile::Compat),
            o => Err(RepoError::Invalid(format!(
                "unknown profile {o:?} (standard or compat)"
            ))),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::Compat => "compat",
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `now + seconds`.
pub fn expires_at(now: i64, seconds: i64) -> Result<String, RepoError> {
    let mut buf = [0u8; 20];
    hale_core::time::format_expires(now.saturating_add(seconds), &mut buf)
        .map(str::to_owned)
        .ok_or_else(|| RepoError::Invalid("expiry out of range".into()))
}

/// The keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

impl RoleKeys {
    pub fn to_json(&self) -> Value {
        json!({"keyids": self.keyids, "threshold": self.threshold})
    }
}

/// `root`.
pub fn root(
    profile: Profile,
    version: u64,
    expires: &str,
    keys: &BTreeMap<String, Value>,
    roles: &BTreeMap<String, RoleKeys>,
    consistent_snapshot: bool,
) -> Value {
    let roles: Map<String, Value> = roles
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    json!({
        "_type": "root",
        "spec_version": profile.spec_version(),
        "version": version,
        "expires": expires,
        "consistent_snapshot": consistent_snapshot,
        "keys": keys,
        "roles": roles,
    })
}

/// A target entry for `content`: length, sha256, and `custom` when given.
pub fn target_entry(content: &[u8], custom: Option<Value>) -> Value {
    let mut e = json!({"length": content.len(), "hashes": {"sha256": hex::encode(Sha256::digest(content))}});
    if let (Some(c), Some(o)) = (custom, e.as_object_mut()) {
        o.insert("custom".into(), c);
    }
    e
}

/// `targets` (top-level or delegated).
pub fn targets(
    profile: Profile,
    version: u64,
    expires: &str,
    targets: &Map<String, Value>,
    delegations: Option<&Value>,
) -> Value {
    let mut v = json!({
        "_type": "targets",
        "spec_version": profile.spec_version(),
        "version": version,
        "expires": expires,
        "targets": targets,
    });
    if let (Some(d), Some(o)) = (delegations, v.as_object_mut()) {
        o.insert("delegations".into(), d.clone());
    }
    v
}

/// `snapshot`: `meta` maps role names to versions.
pub fn snapshot(
    profile: Profile,
    version: u64,
    expires: &str,
    meta: &BTreeMap<String, u64>,
) -> Value {
    let meta: Map<String, Value> = meta
        .iter()
        .map(|(r, v)| (format!("{r}.json"), json!({"version": v})))
        .collect();
    json!({
        "_type": "snapshot",
        "spec_version": profile.spec_version(),
        "version": version,
        "expires": expires,
        "meta": meta,
    })
}

/// `timestamp` naming `snapshot_bytes` (its version, length and sha256).
pub fn timestamp(
    profile: Profile,
    version: u64,
    expires: &str,
    snapshot_version: u64,
    snapshot_bytes: &[u8],
) -> Value {
    json!({
        "_type": "timestamp",
        "spec_version": profile.spec_version(),
        "version": version,
        "expires": expires,
        "meta": {"snapshot.json": {
            "version": snapshot_version,
            "length": snapshot_bytes.len(),
            "hashes": {"sha256": hex::encode(Sha256::digest(snapshot_bytes))},
        }},
    })
}

/// Hash-bin parameters for large catalogs (TAP 15 succinct delegations): `2^bit_length` bins
/// named `<prefix>-<hex>`.
pub fn succinct_delegation(
    keys: &BTreeMap<String, Value>,
    keyids: &[String],
    threshold: u32,
    bit_length: u32,
    prefix: &str,
) -> Value {
    json!({
        "keys": keys,
        "succinct_roles": {"keyids": keyids, "threshold": threshold, "bit_length": bit_length, "name_prefix": prefix},
    })
}

/// The bin a target path falls in, and its name (same rule as `hale-core`).
pub fn bin_for(path: &str, bit_length: u32, prefix: &str) -> String {
    let h: [u8; 32] = Sha256::digest(path.as_bytes()).into();
    let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let bin = first >> (32 - bit_length);
    bin_name(bin, bit_length, prefix)
}

pub fn bin_name(bin: u32, bit_length: u32, prefix: &str) -> String {
    let width = bit_length.div_ceil(4) as usize;
    format!("{prefix}-{bin:0width$x}")
}

/// Refuse what the profile's clients cannot read.
pub fn check_profile(profile: Profile, signed: &Value) -> Result<(), RepoError> {
    if profile != Profile::Compat {
        return Ok(());
    }
    fn walk(v: &Value) -> Result<(), RepoError> {
        match v {
            Value::String(s) if s.chars().any(char::is_control) => Err(RepoError::Invalid(format!(
                "compat profile: control character in {s:?} (rust-tuf would compute other canonical bytes)"
            ))),
            Value::Array(a) => a.iter().try_for_each(walk),
            Value::Object(o) => o.iter().try_for_each(|(k, v)| {
                if k.chars().any(char::is_control) {
                    return Err(RepoError::Invalid("compat profile: control character in a key".into()));
                }
                walk(v)
            }),
            _ => Ok(()),
        }
    }
    walk(signed)?;
    if let Some(keys) = signed
        .get("keys")
        .or_else(|| signed.pointer("/delegations/keys"))
        .and_then(|k| k.as_object())
    {
        for (id, k) in keys {
            if k.get("keytype").and_then(|t| t.as_str()) != Some("ed25519") {
                return Err(RepoError::Invalid(format!(
                    "compat profile: key {id} is not ed25519"
                )));
            }
        }
    }
    Ok(())
}

/// What a rollback authorization says (see `hale_core::rollback`).
#[derive(Debug, Clone)]
pub struct RollbackAuthorization {
    pub devices: Vec<String>,
    pub group: Option<String>,
    pub target: String,
    pub target_sha256: String,
    pub installed: Option<String>,
    pub reason: String,
    pub issued: i64,
    pub expires: i64,
}

/// The `signed` body of a rollback authorization.
pub fn rollback_authorization(
    profile: Profile,
    a: &RollbackAuthorization,
) -> Result<Value, RepoError> {
    if a.devices.is_empty() && a.group.is_none() {
        return Err(RepoError::Invalid(
            "a rollback authorization names devices or a group".into(),
        ));
    }
    if a.reason.trim().is_empty() {
        return Err(RepoError::Invalid(
            "a rollback authorization needs a reason".into(),
        ));
    }
    let mut v = json!({
        "_type": "rollback-authorization",
        "spec_version": profile.spec_version(),
        "version": 1,
        "issued": expires_at(a.issued, 0)?,
        "expires": expires_at(a.expires, 0)?,
        "devices": a.devices,
        "target": a.target,
        "hashes": {"sha256": a.target_sha256},
        "reason": a.reason,
    });
    if let Some(o) = v.as_object_mut() {
        if let Some(g) = &a.group {
            o.insert("group".into(), json!(g));
        }
        if let Some(i) = &a.installed {
            o.insert("installed".into(), json!(i));
        }
    }
    Ok(v)
}
