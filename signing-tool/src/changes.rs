//! What a staged role changes against the version published before it, in words a signer reads
//! before giving a passphrase: a signature vouches for the whole document, and a co-signer asked
//! to "sign the ceremony" must see that root v2 adds a key or lowers a threshold, or which
//! images a targets role adds. Read from the `signed` JSON only; nothing here decides trust.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Lines shown per document before the rest are counted.
pub const MAX_LINES: usize = 12;

/// The changes from `old` (the published `signed`, if any) to `new`, one line each, at most
/// [`MAX_LINES`] (then a count of the rest).
pub fn describe(old: Option<&Value>, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(old) = old else {
        out.push("new role: nothing published before".into());
        if new.get("_type").and_then(Value::as_str) == Some("root") {
            out.extend(root_roles(&Value::Null, new));
        }
        out.extend(targets(&Value::Null, new));
        out.extend(delegations(&Value::Null, new));
        return capped(out);
    };
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if field(old, "expires") != field(new, "expires") {
        out.push(format!(
            "expires {} (was {})",
            text(&field(new, "expires")),
            text(&field(old, "expires"))
        ));
    }
    if new.get("_type").and_then(Value::as_str) == Some("root") {
        if field(old, "consistent_snapshot") != field(new, "consistent_snapshot") {
            out.push(format!(
                "consistent_snapshot {} (was {})",
                text(&field(new, "consistent_snapshot")),
                text(&field(old, "consistent_snapshot"))
            ));
        }
        out.extend(root_roles(old, new));
    }
    out.extend(targets(old, new));
    out.extend(delegations(old, new));
    if out.is_empty() {
        out.push("no change but the version (a renewal)".into());
    }
    capped(out)
}

fn capped(mut out: Vec<String>) -> Vec<String> {
    if out.len() > MAX_LINES {
        let rest = out.len() - (MAX_LINES - 1);
        out.truncate(MAX_LINES - 1);
        out.push(format!("… and {rest} more changes"));
    }
    out
}

/// A JSON value as a signer reads it (`-` when absent).
pub fn text_of(v: Option<&Value>) -> String {
    v.map_or("-".into(), text)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The first 8 hex digits of a key id (as `status` shows them).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// keyids of an entry `{keyids, threshold}`.
fn keyids(entry: &Value) -> BTreeSet<String> {
    entry
        .get("keyids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// "keys +a1b2c3d4 (ed25519) -e5f6a7b8; threshold 2 → 1" for one `{keyids, threshold}` entry,
/// its keys described from `keys` (the document's key map); `None` when nothing changed.
fn keys_change(old: &Value, new: &Value, keys: &Value) -> Option<String> {
    let (o, n) = (keyids(old), keyids(new));
    let mut parts = Vec::new();
    let added: Vec<String> = n
        .difference(&o)
        .map(|id| {
            let kind = keys
                .get(id)
                .and_then(|k| k.get("keytype"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            format!("+{} ({kind})", short(id))
        })
        .collect();
    let removed: Vec<String> = o
        .difference(&n)
        .map(|id| format!("-{}", short(id)))
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        parts.push(format!("keys {}", [added, removed].concat().join(" ")));
    }
    let (ot, nt) = (old.get("threshold"), new.get("threshold"));
    if ot != nt {
        parts.push(format!(
            "threshold {} → {} of {}",
            ot.map_or("-".into(), text),
            nt.map_or("-".into(), text),
            n.len()
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Per top-level role of a root: key and threshold changes.
fn root_roles(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let empty = Value::Null;
    let keys = new.get("keys").unwrap_or(&empty);
    let roles = |v: &Value| -> BTreeMap<String, Value> {
        v.get("roles")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (o, n) = (roles(old), roles(new));
    for (role, entry) in &n {
        if let Some(c) = keys_change(o.get(role).unwrap_or(&empty), entry, keys) {
            out.push(format!("{role}: {c}"));
        }
    }
    out
}

/// Targets added, removed or changed (length, sha256, `custom.version`).
fn targets(old: &Value, new: &Value) -> Vec<String> {
    let list = |v: &Value| -> BTreeMap<String, Value> {
        v.get("targets")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (o, n) = (list(old), list(new));
    let what = |t: &Value| {
        let sha = t
            .pointer("/hashes/sha256")
            .and_then(Value::as_str)
            .map_or("?", short)
            .to_string();
        let len = t.get("length").map_or("?".into(), text);
        match t.pointer("/custom/version").and_then(Value::as_str) {
            Some(v) => format!("version {v}, {len} bytes, sha256 {sha}…"),
            None => format!("{len} bytes, sha256 {sha}…"),
        }
    };
    let mut out = Vec::new();
    for (path, t) in &n {
        match o.get(path) {
            None => out.push(format!("adds target {path} ({})", what(t))),
            Some(before) if before != t => out.push(format!(
                "changes target {path} ({}; was {})",
                what(t),
                what(before)
            )),
            Some(_) => {}
        }
    }
    for path in o.keys().filter(|p| !n.contains_key(*p)) {
        out.push(format!("removes target {path}"));
    }
    out
}

/// Delegations added, removed or changed (keys, threshold, paths, terminating), and hashed bins.
fn delegations(old: &Value, new: &Value) -> Vec<String> {
    let empty = Value::Null;
    let keys = new.pointer("/delegations/keys").unwrap_or(&empty);
    let roles = |v: &Value| -> BTreeMap<String, Value> {
        v.pointer("/delegations/roles")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| Some((r.get("name")?.as_str()?.to_string(), r.clone())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (o, n) = (roles(old), roles(new));
    let mut out = Vec::new();
    for (name, r) in &n {
        let paths = r
            .get("paths")
            .or_else(|| r.get("path_hash_prefixes"))
            .map_or("-".into(), Value::to_string);
        let term = if r.get("terminating") == Some(&Value::Bool(true)) {
            ", terminating"
        } else {
            ""
        };
        match o.get(name) {
            None => out.push(format!(
                "delegates {paths} to {name}{term}: {}",
                keys_change(&empty, r, keys).unwrap_or_default()
            )),
            Some(before) => {
                let mut parts = Vec::new();
                if let Some(c) = keys_change(before, r, keys) {
                    parts.push(c);
                }
                if before.get("paths") != r.get("paths")
                    || before.get("path_hash_prefixes") != r.get("path_hash_prefixes")
                {
                    parts.push(format!("paths {paths}"));
                }
                if before.get("terminating") != r.get("terminating") {
                    parts.push(format!("terminating {}", text(&r["terminating"])));
                }
                if !parts.is_empty() {
                    out.push(format!("delegation to {name}: {}", parts.join("; ")));
                }
            }
        }
    }
    for name in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push(format!("removes the delegation to {name}"));
    }
    let bins = |v: &Value| v.pointer("/delegations/succinct_roles").cloned();
    if bins(old) != bins(new) {
        if let Some(b) = bins(new) {
            let c = keys_change(&bins(old).unwrap_or(Value::Null), &b, keys).unwrap_or_default();
            out.push(format!(
                "hashed bins {}-* (bit_length {}): {c}",
                text(&b["name_prefix"]),
                text(&b["bit_length"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_root_that_adds_a_key_and_lowers_a_threshold_says_so() {
        let old = json!({"_type": "root", "expires": "2027-01-01T00:00:00Z", "keys": {},
            "roles": {"root": {"keyids": ["aaaaaaaa11", "bbbbbbbb22"], "threshold": 2},
                      "targets": {"keyids": ["cccccccc33"], "threshold": 1}}});
        let new = json!({"_type": "root", "expires": "2027-01-01T00:00:00Z",
            "keys": {"dddddddd44": {"keytype": "ed25519"}},
            "roles": {"root": {"keyids": ["aaaaaaaa11", "bbbbbbbb22", "dddddddd44"], "threshold": 1},
                      "targets": {"keyids": ["cccccccc33"], "threshold": 1}}});
        assert_eq!(
            describe(Some(&old), &new),
            ["root: keys +dddddddd (ed25519); threshold 2 → 1 of 3"]
        );
        assert_eq!(
            describe(Some(&old), &old),
            ["no change but the version (a renewal)"]
        );
    }

    #[test]
    fn targets_and_delegations_changes_are_listed_and_capped() {
        let old = json!({"_type": "targets", "expires": "2027-01-01T00:00:00Z",
            "targets": {"a.bin": {"length": 3, "hashes": {"sha256": "0123456789ab"}}}});
        let mut t = serde_json::Map::new();
        for i in 0..20 {
            t.insert(
                format!("f{i:02}.bin"),
                json!({"length": 1, "hashes": {"sha256": "ffffffffffff"}, "custom": {"version": "1.0.0"}}),
            );
        }
        let new = json!({"_type": "targets", "expires": "2027-02-01T00:00:00Z", "targets": t,
            "delegations": {"keys": {"eeeeeeee55": {"keytype": "ecdsa"}},
                "roles": [{"name": "rollback", "keyids": ["eeeeeeee55"], "threshold": 1,
                           "terminating": false, "paths": []}]}});
        let d = describe(Some(&old), &new);
        assert_eq!(d.len(), MAX_LINES);
        assert_eq!(
            d[0],
            "expires 2027-02-01T00:00:00Z (was 2027-01-01T00:00:00Z)"
        );
        assert_eq!(
            d[1],
            "adds target f00.bin (version 1.0.0, 1 bytes, sha256 ffffffff…)"
        );
        // 1 expiry + 20 added + 1 removed + 1 delegation = 23; 11 shown and the rest counted
        assert_eq!(d[MAX_LINES - 1], "… and 12 more changes");
    }
}
