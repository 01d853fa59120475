//! Threshold signature checks.
//!
//! A role is satisfied when at least `threshold` *distinct* keys that its delegator authorises have
//! a valid signature over the canonical form of `signed`. Distinct means distinct key material: two
//! key ids that name the same key count once. Signatures from keys the role does not list, and
//! extra bad signatures, are ignored — they neither count nor fail metadata that meets its
//! threshold. Keys we cannot use (an unknown scheme, RSA without `std`) are skipped, so a fleet of
//! mixed devices can share one repository.

use heapless::Vec as HVec;

use crate::canonical::write_canonical;
use crate::crypto::{hex_decode, PublicKey};
use crate::error::{pass, Error, Name, RoleName};
use crate::json::{Object, Value};
use crate::limits::{EXTRA_SIGNATURE_ATTEMPTS, MAX_KEYS_PER_ROLE, MAX_SIGNATURE_LEN};
use crate::metadata::{Envelope, RoleKeys};

/// Signature entries tried for one key id (bounds work when an attacker repeats a key id).
const MAX_SIGNATURES_PER_KEY: usize = 4;

/// What each authorised key contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    /// A valid signature from this key.
    Signed,
    /// No signature entry carries this key id.
    Missing,
    /// A signature entry carries this key id but does not verify.
    Invalid,
    /// The key is listed but we cannot use it (reason), or duplicates a key already counted.
    Unusable(&'static str),
}

/// Per-key result of a threshold check (for `hale-sign status`).
#[derive(Debug, Clone)]
pub struct Report {
    pub role: Name,
    pub threshold: u32,
    /// Key ids in full (up to [`crate::limits::MAX_NAME_LEN`] bytes).
    pub keys: HVec<(RoleName, KeyStatus), MAX_KEYS_PER_ROLE>,
    /// Signature entries whose key id the role does not list.
    pub unlisted: usize,
}

impl Report {
    pub fn valid(&self) -> u32 {
        self.keys
            .iter()
            .filter(|(_, s)| *s == KeyStatus::Signed)
            .count() as u32
    }
    pub fn met(&self) -> bool {
        self.valid() >= self.threshold
    }
}

/// Check every authorised key's signature on `env` and report, without deciding.
pub fn check_signatures(env: &Envelope<'_>, role: &RoleKeys<'_>) -> Result<Report, Error> {
    let name = role.name;
    let threshold = check_role(role)?;
    // the message must be canonicalisable at all (refuses duplicate keys anywhere in `signed`)
    write_canonical(
        &Value::Object(env.signed),
        &mut crate::canonical::Counter::default(),
    )
    .map_err(|error| Error::Json { role: name, error })?;

    let mut report = Report {
        role: name,
        threshold,
        keys: HVec::new(),
        unlisted: 0,
    };
    let mut counted: HVec<[u8; 32], MAX_KEYS_PER_ROLE> = HVec::new();
    // the report looks at every key, but still within a bound
    let mut unlimited = (MAX_KEYS_PER_ROLE * MAX_SIGNATURES_PER_KEY) as u32;
    for kid in role.keyids.iter() {
        let Some(kid) = kid.as_str() else {
            return Err(Error::Field {
                role: name,
                field: "keyids",
            });
        };
        let kname = RoleName::from_json(&kid);
        let status = match key_for(&role.keys, &kid) {
            Err(reason) => KeyStatus::Unusable(reason),
            Ok(key) if counted.contains(&key.fingerprint()) => {
                KeyStatus::Unusable("same key as another key id")
            }
            Ok(key) => {
                let s = signature_status(env, &kid, &key, name, &mut unlimited)?;
                if s == KeyStatus::Signed {
                    // bounded by the TooManyKeys check above
                    let _ = counted.push(key.fingerprint());
                }
                s
            }
        };
        let _ = report.keys.push((kname, status));
    }
    for sig in env.signatures.iter() {
        let listed = sig
            .as_object()
            .and_then(|o| o.get("keyid").ok().flatten())
            .and_then(|v| v.as_str())
            .is_some_and(|k| {
                role.keyids
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|l| l == k)
            });
        if !listed {
            report.unlisted += 1;
        }
    }
    Ok(report)
}

/// Refuse unless the threshold is met. Same rules as [`check_signatures`], without the report:
/// it stops verifying as soon as the threshold is met, and tries the first signature entry of
/// each listed key (at most [`MAX_KEYS_PER_ROLE`]) and at most `threshold +`
/// [`EXTRA_SIGNATURE_ATTEMPTS`] repeated entries of a key.
pub fn verify_threshold(env: &Envelope<'_>, role: &RoleKeys<'_>) -> Result<(), Error> {
    let name = role.name;
    let threshold = pass!(check_role(role));
    // No separate canonicalisation pass: each signature check canonicalises `signed` (refusing
    // duplicate keys) and the number of checks is bounded, so hostile input costs bounded CPU.
    let mut attempts = threshold.saturating_add(EXTRA_SIGNATURE_ATTEMPTS);
    // a fingerprint per counted key, not the keys: small stack on a device
    let mut counted: HVec<[u8; 32], MAX_KEYS_PER_ROLE> = HVec::new();
    for kid in role.keyids.iter() {
        let Some(kid) = kid.as_str() else {
            return Err(Error::Field {
                role: name,
                field: "keyids",
            });
        };
        let Ok(key) = key_for(&role.keys, &kid) else {
            continue;
        };
        let fp = key.fingerprint();
        if counted.contains(&fp) {
            continue;
        }
        if pass!(signature_status(env, &kid, &key, name, &mut attempts)) == KeyStatus::Signed {
            let _ = counted.push(fp);
            if counted.len() as u32 >= threshold {
                return Ok(());
            }
        }
    }
    Err(Error::ThresholdNotMet {
        role: name,
        threshold,
        valid: counted.len() as u32,
    })
}

/// A usable threshold (1..=u32::MAX) and at most [`MAX_KEYS_PER_ROLE`] key ids.
fn check_role(role: &RoleKeys<'_>) -> Result<u32, Error> {
    let threshold = u32::try_from(role.threshold)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| Error::BadThreshold {
            role: role.name,
            threshold: role.threshold,
            keys: role.keyids.len(),
        })?;
    let count = role.keyids.len();
    if count > MAX_KEYS_PER_ROLE {
        return Err(Error::TooManyKeys {
            role: role.name,
            count,
        });
    }
    Ok(threshold)
}

/// The first two key ids `role` lists for one key (compared by the key: an ECDSA key under
/// `ecdsa` and under `ecdsa-sha2-nistp256`, or as PEM and as hex, has another key id each).
/// [`verify_threshold`] counts such a key once, so this decides nothing for a client; it is a
/// publisher's check (hale-sign before it stages): the key would look like two key holders to a
/// signer, and removing it by one key id would leave it trusted under the other.
pub fn repeated_key<'a>(
    role: &RoleKeys<'a>,
) -> Option<(crate::json::JStr<'a>, crate::json::JStr<'a>)> {
    let mut seen: HVec<([u8; 32], crate::json::JStr<'a>), MAX_KEYS_PER_ROLE> = HVec::new();
    for kid in role.keyids.iter().filter_map(|k| k.as_str()) {
        let Ok(key) = key_for(&role.keys, &kid) else {
            continue;
        };
        let f = key.fingerprint();
        if let Some((_, first)) = seen.iter().find(|(g, id)| *g == f && *id != kid) {
            return Some((*first, kid));
        }
        if seen.push((f, kid)).is_err() {
            break;
        }
    }
    None
}

/// [`repeated_key`] for root's four roles: the role's name and the two key ids.
pub fn repeated_key_in_root<'a>(
    root: &crate::metadata::Root<'a>,
) -> Option<(&'static str, crate::json::JStr<'a>, crate::json::JStr<'a>)> {
    ["root", "targets", "snapshot", "timestamp"]
        .into_iter()
        .find_map(|name| {
            let (a, b) = repeated_key(&root.role(name).ok()?)?;
            Some((name, a, b))
        })
}

/// [`repeated_key`] for every role `delegator` delegates to (`name_prefix` for hashed bins):
/// the role's name and the two key ids.
pub fn repeated_key_in_delegations<'a>(
    delegator: &crate::metadata::Targets<'a>,
) -> Option<(
    crate::json::JStr<'a>,
    crate::json::JStr<'a>,
    crate::json::JStr<'a>,
)> {
    let d = delegator.delegations?;
    if let Some((prefix, role)) = d.bins_keys() {
        let (a, b) = repeated_key(&role)?;
        return Some((prefix, a, b));
    }
    d.roles?.iter().find_map(|v| {
        let r = crate::metadata::DelegatedRole::parse(&v.as_object()?, Name::new("delegations"))
            .ok()?;
        let (a, b) = repeated_key(&r.keys(d.keys))?;
        Some((r.name, a, b))
    })
}

#[inline(never)]
pub(crate) fn key_for(
    keys: &Object<'_>,
    kid: &crate::json::JStr<'_>,
) -> Result<PublicKey, &'static str> {
    let v = keys
        .get_by(|k| k == kid)
        .map_err(|_| "duplicate key id in keys")?;
    let o = v.and_then(|v| v.as_object()).ok_or("key id not in keys")?;
    PublicKey::from_tuf(&o)
}

#[inline(never)]
fn signature_status(
    env: &Envelope<'_>,
    kid: &crate::json::JStr<'_>,
    key: &PublicKey,
    role: Name,
    attempts: &mut u32,
) -> Result<KeyStatus, Error> {
    let mut tried = 0;
    for sig in env.signatures.iter() {
        let Some(o) = sig.as_object() else { continue };
        let Some(k) = o.get("keyid").ok().flatten().and_then(|v| v.as_str()) else {
            continue;
        };
        if k != *kid {
            continue;
        }
        tried += 1;
        // each listed key's first entry is tried (at most MAX_KEYS_PER_ROLE in all): stale
        // signatures of other listed keys never use up a good one's; repeats of one key share
        // the extra budget
        if tried > 1 {
            if tried > MAX_SIGNATURES_PER_KEY || *attempts == 0 {
                break;
            }
            *attempts -= 1;
        }
        let Some(s) = o.get("sig").ok().flatten().and_then(|v| v.as_str()) else {
            continue;
        };
        let mut hex = [0u8; MAX_SIGNATURE_LEN * 2];
        let mut raw = [0u8; MAX_SIGNATURE_LEN];
        let Some(hex) = s.decode_into(&mut hex) else {
            continue;
        };
        let Some(n) = hex_decode(hex.as_bytes(), &mut raw) else {
            continue;
        };
        let ok = key
            .verify(raw.get(..n).unwrap_or(&[]), |sink| {
                write_canonical(&Value::Object(env.signed), sink)
            })
            .map_err(|error| Error::Json { role, error })?;
        if ok {
            return Ok(KeyStatus::Signed);
        }
    }
    Ok(if tried == 0 {
        KeyStatus::Missing
    } else {
        KeyStatus::Invalid
    })
}
