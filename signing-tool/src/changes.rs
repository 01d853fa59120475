//! What a staged role changes against the version published before it, in words a signer reads
//! before giving a passphrase: a signature vouches for the whole document, and a co-signer asked
//! to "sign the ceremony" must see that root v2 adds a key or lowers a threshold, or which
//! images a targets role adds. Read from the `signed` JSON only; nothing here decides trust.
//!
//! Changes to who may sign (keys, key ids, thresholds, delegations, hashed bins) are always
//! shown in full and first; expiry and target changes follow, at most [`MAX_LINES`] of them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Expiry and target lines shown per document before the rest are counted (changes to who may
/// sign are never cut).
pub const MAX_LINES: usize = 12;

/// What signing a document vouches for: changes to who may sign, then the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// keys, key ids, thresholds, delegations, hashed bins: never cut
    pub trust: Vec<String>,
    /// expiry, targets: at most [`MAX_LINES`], then a count
    pub other: Vec<String>,
}

impl Changes {
    /// Every line to show, trust changes first.
    pub fn lines(&self) -> Vec<String> {
        let mut out = self.trust.clone();
        out.extend(capped(self.other.clone()));
        out
    }
}

/// The changes from `old` (the published `signed`, if any) to `new`.
pub fn describe(old: Option<&Value>, new: &Value) -> Changes {
    let mut c = Changes::default();
    let (old, first) = match old {
        Some(o) => (o.clone(), false),
        None => (Value::Null, true),
    };
    if first {
        c.other.push("new role: nothing published before".into());
    }
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if new.get("_type").and_then(Value::as_str) == Some("root") {
        c.trust
            .extend(key_objects(old.get("keys"), new.get("keys")));
        c.trust.extend(root_roles(&old, new));
        if !first && field(&old, "consistent_snapshot") != field(new, "consistent_snapshot") {
            c.trust.push(format!(
                "consistent_snapshot {} (was {})",
                text(&field(new, "consistent_snapshot")),
                text(&field(&old, "consistent_snapshot"))
            ));
        }
    }
    c.trust.extend(key_objects(
        old.pointer("/delegations/keys"),
        new.pointer("/delegations/keys"),
    ));
    c.trust.extend(delegations(&old, new));
    if !first && field(&old, "expires") != field(new, "expires") {
        c.other.push(format!(
            "expires {} (was {})",
            text(&field(new, "expires")),
            text(&field(&old, "expires"))
        ));
    }
    c.other.extend(targets(&old, new));
    if c.trust.is_empty() && c.other.is_empty() {
        c.other.push("no change but the version (a renewal)".into());
    }
    c
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

/// A key map's keys whose public key changed under the same id, and keys whose id is not the
/// hash of the key (a signer reading "keys +a1b2…" must be able to trust that the id names the
/// key): what a diff of key ids alone would not show.
fn key_objects(old: Option<&Value>, new: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(new) = new.and_then(Value::as_object) else {
        return out;
    };
    let old = old.and_then(Value::as_object);
    for (id, key) in new {
        if let Some(before) = old.and_then(|o| o.get(id)) {
            if before != key {
                out.push(format!(
                    "key {}: its public key CHANGED under the same key id",
                    short(id)
                ));
            }
        }
        match hale_repo::keys::keyid_of(key) {
            Ok(real) if real == *id => {}
            _ => out.push(format!(
                "key {}: the key id is NOT the hash of its public key",
                short(id)
            )),
        }
    }
    out
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

/// "keys +a1b2c3d4 (ed25519) -e5f6a7b8; threshold 2 → 1 of 3" for one `{keyids, threshold}`
/// entry, its keys described from `keys` (the document's key map); `None` when nothing changed.
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

/// The order devices search the delegations in, when it is not the published one with new
/// delegations after it: the first delegation whose paths match answers for a path (and a
/// terminating one ends the search), so moving a delegation ahead of another, or adding one
/// ahead of those published, changes which key signs for a path without changing a delegation.
fn search_order(old: &Value, new: &Value) -> Option<String> {
    let names = |v: &Value| -> Vec<String> {
        v.pointer("/delegations/roles")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| {
                        r.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (o, n) = (names(old), names(new));
    let kept: Vec<&String> = o.iter().filter(|name| n.contains(name)).collect();
    let added = n.iter().filter(|name| !o.contains(name));
    let expected: Vec<&String> = kept.into_iter().chain(added).collect();
    if expected == n.iter().collect::<Vec<_>>() {
        return None;
    }
    Some(format!(
        "delegations searched in a NEW ORDER: {} (was {})",
        n.join(", "),
        if o.is_empty() {
            "-".into()
        } else {
            o.join(", ")
        }
    ))
}

/// Delegations added, removed or changed (keys, threshold, paths, terminating), their order, and
/// hashed bins.
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
    out.extend(search_order(old, new));
    let bins = |v: &Value| v.pointer("/delegations/succinct_roles").cloned();
    match (bins(old), bins(new)) {
        (before, Some(b)) if before.as_ref() != Some(&b) => {
            let c = keys_change(before.as_ref().unwrap_or(&empty), &b, keys).unwrap_or_default();
            out.push(format!(
                "hashed bins {}-* (bit_length {}): {c}",
                text(&b["name_prefix"]),
                text(&b["bit_length"])
            ));
        }
        (Some(b), None) => out.push(format!(
            "removes the hashed bins {}-*",
            text(&b["name_prefix"])
        )),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(seed: u8) -> (String, Value) {
        let k = hale_repo::SigningKey::from_seed(hale_repo::KeyKind::Ed25519, &[seed; 32])
            .expect("a key");
        (k.keyid(), k.public())
    }

    #[test]
    fn a_root_that_adds_a_key_and_lowers_a_threshold_says_so() {
        let ((a, ka), (b, kb), (d, kd)) = (key(1), key(2), key(4));
        let old = json!({"_type": "root", "expires": "2027-01-01T00:00:00Z",
            "keys": {&a: ka, &b: kb},
            "roles": {"root": {"keyids": [&a, &b], "threshold": 2}}});
        let mut new = old.clone();
        new["keys"][&d] = kd;
        new["roles"]["root"] = json!({"keyids": [&a, &b, &d], "threshold": 1});
        let c = describe(Some(&old), &new);
        assert_eq!(
            c.trust,
            [format!(
                "root: keys +{} (ed25519); threshold 2 → 1 of 3",
                &d[..8]
            )]
        );
        assert!(c.other.is_empty(), "{c:?}");
        assert_eq!(
            describe(Some(&old), &old).lines(),
            ["no change but the version (a renewal)"]
        );
    }

    #[test]
    fn another_public_key_under_the_same_key_id_is_shown() {
        // a root that keeps key id A but puts another public key under it: the id set is the
        // same, and a diff of ids alone showed nothing
        let ((a, ka), (_, evil)) = (key(1), key(9));
        let old = json!({"_type": "root", "keys": {&a: ka},
            "roles": {"root": {"keyids": [&a], "threshold": 1}}});
        let mut new = old.clone();
        new["keys"][&a] = evil;
        assert_eq!(
            describe(Some(&old), &new).trust,
            [
                format!(
                    "key {}: its public key CHANGED under the same key id",
                    &a[..8]
                ),
                format!(
                    "key {}: the key id is NOT the hash of its public key",
                    &a[..8]
                )
            ]
        );
    }

    #[test]
    fn trust_changes_are_never_cut_and_targets_are() {
        let (r, kr) = key(5);
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
            "delegations": {"keys": {&r: kr},
                "roles": [{"name": "rollback", "keyids": [&r], "threshold": 1,
                           "terminating": false, "paths": []}]}});
        let c = describe(Some(&old), &new);
        assert_eq!(
            c.trust,
            [format!(
                "delegates [] to rollback: keys +{} (ed25519); threshold - → 1 of 1",
                &r[..8]
            )]
        );
        let lines = c.lines();
        assert_eq!(lines.len(), 1 + MAX_LINES);
        assert_eq!(lines[0], c.trust[0], "trust first");
        assert_eq!(
            lines[1],
            "expires 2027-02-01T00:00:00Z (was 2027-01-01T00:00:00Z)"
        );
        assert_eq!(
            lines[2],
            "adds target f00.bin (version 1.0.0, 1 bytes, sha256 ffffffff…)"
        );
        // 1 expiry + 20 added + 1 removed = 22 others; 11 shown and the rest counted
        assert_eq!(lines[MAX_LINES], "… and 11 more changes");
        // the bins delegation removed is said
        let binned = json!({"_type": "targets", "delegations": {"keys": {},
            "succinct_roles": {"keyids": [], "threshold": 1, "bit_length": 2, "name_prefix": "bin"}}});
        let plain = json!({"_type": "targets"});
        assert_eq!(
            describe(Some(&binned), &plain).trust,
            ["removes the hashed bins bin-*"]
        );
    }

    /// Devices search delegations in their order and the first match answers: a staged targets
    /// that only swaps two delegations (a terminating pump-a/* behind a catalog's */*, so the
    /// catalog's key signs pump-a's firmware), or adds one ahead of those published, says so
    /// as a change of trust; one that appends a delegation, or drops one, keeps the order.
    #[test]
    fn a_new_search_order_of_delegations_is_a_trust_change() {
        let (k, kk) = key(6);
        let role = |name: &str, paths: &str, terminating: bool| {
            json!({"name": name, "keyids": [&k], "threshold": 1, "terminating": terminating,
                   "paths": [paths]})
        };
        let doc = |roles: Vec<Value>| {
            json!({"_type": "targets", "targets": {},
                   "delegations": {"keys": {&k: kk.clone()}, "roles": roles}})
        };
        let old = doc(vec![
            role("pump-a", "pump-a/*", true),
            role("catalog", "*/*", false),
        ]);
        let swapped = doc(vec![
            role("catalog", "*/*", false),
            role("pump-a", "pump-a/*", true),
        ]);
        let c = describe(Some(&old), &swapped);
        assert_eq!(
            c.trust,
            ["delegations searched in a NEW ORDER: catalog, pump-a (was pump-a, catalog)"]
        );
        assert!(!c.lines().iter().any(|l| l.contains("renewal")), "{c:?}");
        // a delegation added ahead of the published ones
        let ahead = doc(vec![
            role("any", "*", true),
            role("pump-a", "pump-a/*", true),
            role("catalog", "*/*", false),
        ]);
        let c = describe(Some(&old), &ahead);
        assert_eq!(
            c.trust[1],
            "delegations searched in a NEW ORDER: any, pump-a, catalog (was pump-a, catalog)"
        );
        // appended, or one dropped: the order of the rest is the published one
        let appended = doc(vec![
            role("pump-a", "pump-a/*", true),
            role("catalog", "*/*", false),
            role("late", "late/*", false),
        ]);
        assert_eq!(
            describe(Some(&old), &appended).trust.len(),
            1,
            "only the new delegation"
        );
        let dropped = doc(vec![role("catalog", "*/*", false)]);
        assert_eq!(
            describe(Some(&old), &dropped).trust,
            ["removes the delegation to pump-a"]
        );
    }
}
