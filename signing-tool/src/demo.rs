//! Demo keys (`keys-example/`): derived from fixed, public seeds so anyone can regenerate them —
//! and so anyone can sign with them. hale-sign recognises them by key id and warns loudly
//! whenever a repository trusts one.
//!
//! seed(name) = sha256("hale-demo-" + name). Key files are encrypted with [`DEMO_PASSPHRASE`];
//! their salts and nonces are random, so `.key` files differ on every generation while the keys
//! inside, and the `.pub` files, are byte-for-byte reproducible.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use hale_repo::{KeyKind, SigningKey};
use sha2::{Digest, Sha256};

use crate::error::{invalid, Result};

/// The demo passphrase. Not a secret: it is written in keys-example/PASSPHRASE.
pub const DEMO_PASSPHRASE: &str = "hale-demo-keys-are-public-never-use-in-production";

/// Demo key names and algorithms (two ECDSA keys show a mixed fleet).
pub const DEMO_KEYS: [(&str, KeyKind); 8] = [
    ("root-1", KeyKind::Ed25519),
    ("root-2", KeyKind::EcdsaP256),
    ("root-3", KeyKind::Ed25519),
    ("targets-1", KeyKind::EcdsaP256),
    ("snapshot", KeyKind::Ed25519),
    ("timestamp", KeyKind::Ed25519),
    ("rollback-1", KeyKind::Ed25519),
    ("rollback-2", KeyKind::Ed25519),
];

pub fn seed(name: &str) -> [u8; 32] {
    Sha256::digest(format!("hale-demo-{name}").as_bytes()).into()
}

pub fn key(name: &str, kind: KeyKind) -> Result<SigningKey> {
    SigningKey::from_seed(kind, &seed(name)).ok_or_else(|| {
        invalid(format!(
            "demo seed for {name} is not a valid {} key",
            kind.as_str()
        ))
    })
}

/// keyid → demo key name.
pub fn keyids() -> &'static BTreeMap<String, &'static str> {
    static IDS: OnceLock<BTreeMap<String, &'static str>> = OnceLock::new();
    IDS.get_or_init(|| {
        DEMO_KEYS
            .iter()
            .filter_map(|(name, kind)| key(name, *kind).ok().map(|k| (k.keyid(), *name)))
            .collect()
    })
}

pub fn name_of(keyid: &str) -> Option<&'static str> {
    keyids().get(keyid).copied()
}

/// Print the loud warning for roles (role label, demo key names) that trust demo keys.
pub fn warn(what: &str, hits: &[(String, Vec<&'static str>)]) {
    if hits.is_empty() {
        return;
    }
    let bar = "!".repeat(78);
    eprintln!("{bar}");
    eprintln!("!! WARNING: {what} is rooted in DEMO KEYS from keys-example/.");
    eprintln!("!! Their seeds are public: ANYONE can sign as them. NEVER use this in production.");
    for (role, names) in hits {
        eprintln!("!!   role {role} trusts demo key(s): {}", names.join(", "));
    }
    eprintln!("{bar}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_keys_are_deterministic_and_distinct() {
        let a = keyids().clone();
        assert_eq!(a.len(), DEMO_KEYS.len());
        let k = key("root-2", KeyKind::EcdsaP256).unwrap();
        assert_eq!(name_of(&k.keyid()), Some("root-2"));
        assert_eq!(k.kind(), KeyKind::EcdsaP256);
    }
}
