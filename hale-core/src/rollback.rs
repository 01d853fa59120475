//! Rollback authorizations: the only way a device goes back to older firmware.
//!
//! A downgrade is the oldest attack on updaters, so a field technician can force one only with a
//! document signed by a threshold of the **`rollback`** role — a role that top-level `targets`
//! delegates to (its keys held by field service and clinical engineering), listed in
//! `delegations.roles` with no paths, so it can never sign targets itself.
//!
//! ```json
//! {"signed": {
//!    "_type": "rollback-authorization", "spec_version": "1.0.34", "version": 1,
//!    "issued": "2030-01-01T08:00:00Z", "expires": "2030-01-01T20:00:00Z",
//!    "devices": ["pump-a-000123"],            // and/or "group": "ward-7"
//!    "target": "pump-a/fw-2.0.0.bin",         // what to go back to ...
//!    "hashes": {"sha256": "…"},               // ... exactly these bytes
//!    "installed": "2.1.0",                    // the release it replaces (optional)
//!    "reason": "INC-4711: occlusion alarm regression in 2.1.0"},
//!  "signatures": [...]}
//! ```
//!
//! [`verify_authorization`] checks the signatures against the trusted `targets`' delegation to
//! `rollback`, the expiry and a maximum validity, that it was issued after the last one the device
//! installed by (each is used once: the device keeps that `issued`), and that it names this
//! device, this exact target and (if given) the version the device runs. The caller then evaluates firmware policy with
//! `allow_downgrade_to = true`, which lifts only the version rule: the security counter is never
//! crossed ([`crate::policy::PolicyError::BelowSecurityCounter`]).

use crate::error::{pass, Error, Name};
use crate::json::{JStr, JsonError, Object, Value};
use crate::metadata::{self, Envelope, Header, RoleKeys, Targets};
use crate::policy::Version;
use crate::time::{parse_expires, UnixTime};
use crate::verify::verify_threshold;

/// The role that signs authorizations.
pub const ROLLBACK_ROLE: &str = "rollback";
/// `signed._type` of an authorization.
pub const AUTHORIZATION_TYPE: &str = "rollback-authorization";
/// Default longest validity (expires − issued) a device accepts: one day.
pub const DEFAULT_MAX_VALIDITY: i64 = 24 * 3600;
/// How far `issued` may be ahead of the device's clock (seconds): an authorization is good from
/// its issue time until it expires, with an hour for a pump's clock and the signer's to be
/// apart. Without it one issued for tomorrow morning was good from tonight, and once used it
/// was the device's last (`AuthorizationUsed` for any issued before that time).
pub const ISSUED_LEEWAY: i64 = 3600;
/// Longest `reason` (bytes, one line) an authorization should carry: a device reports it with
/// the rollback and hale-server audits it, and refuses a longer one
/// ([`crate::report::MAX_REASON`]). hale-sign signs none longer; a device verifies the signature
/// whatever its length, and reports the reason cut to fit.
pub const MAX_REASON: usize = crate::report::MAX_REASON;

/// What the device is about to do.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub device_id: &'a str,
    /// The device's group (ward, clinic, fleet), if it has one.
    pub group: Option<&'a str>,
    /// Version of the confirmed, running image.
    pub running: Version,
    /// The target it wants to install, and its sha256 from verified targets metadata.
    pub target: &'a str,
    pub target_sha256: [u8; 32],
    /// `issued` of the last authorization this device installed an image by (0: none). Only a
    /// later one is accepted: an authorization is used once, so a copy replayed within its
    /// validity (after the device moved on again) rolls nothing back.
    pub last_used: UnixTime,
}

/// A verified authorization.
#[derive(Debug, Clone, Copy)]
pub struct Authorization<'a> {
    pub header: Header,
    pub issued: UnixTime,
    pub reason: JStr<'a>,
    pub target: JStr<'a>,
}

/// Verify `bytes` as an authorization for `req`, against the trusted top-level `targets`.
#[inline(never)]
pub fn verify_authorization<'a>(
    targets: &Targets<'_>,
    bytes: &'a [u8],
    req: &Request<'_>,
    now: UnixTime,
    max_validity: i64,
) -> Result<Authorization<'a>, Error> {
    let keys = pass!(rollback_keys(targets));
    let env = pass!(Envelope::parse(bytes, AUTHORIZATION_TYPE));
    pass!(verify_threshold(&env, &keys));
    terms(&env.signed, req, now, max_validity)
}

/// The checks of [`verify_authorization`] on the authorization's own fields (validity, expiry,
/// use, device or group, target, hashes, installed version), without its signatures: what a
/// signing tool refuses before anyone signs (a co-signer asked to sign terms a device would
/// refuse). Never a trust decision: a device runs [`verify_authorization`].
pub fn check_terms(
    bytes: &[u8],
    req: &Request<'_>,
    now: UnixTime,
    max_validity: i64,
) -> Result<(), Error> {
    let env = pass!(Envelope::parse(bytes, AUTHORIZATION_TYPE));
    terms(&env.signed, req, now, max_validity).map(|_| ())
}

/// The header and [`check`] of `signed`, refusals turned into the [`Error`] once.
fn terms<'a>(
    s: &Object<'a>,
    req: &Request<'_>,
    now: UnixTime,
    max_validity: i64,
) -> Result<Authorization<'a>, Error> {
    let what = Name::new(AUTHORIZATION_TYPE);
    let header = pass!(metadata::parse_header(s, AUTHORIZATION_TYPE, what));
    let (issued, target, reason) = pass!(check(s, header.expires, req, now, max_validity).map_err(
        |r| match r {
            Refusal::Json(error) => Error::Json { role: what, error },
            Refusal::Field(field) => Error::Field { role: what, field },
            Refusal::TooLong(validity) => Error::AuthorizationTooLong {
                max: max_validity,
                validity,
            },
            Refusal::Ahead(ahead) => Error::AuthorizationAhead {
                ahead,
                leeway: ISSUED_LEEWAY,
            },
            Refusal::Used(issued) => Error::AuthorizationUsed {
                issued,
                last: req.last_used,
            },
            Refusal::Expired => Error::Expired {
                role: what,
                expires: header.expires,
                now,
            },
            Refusal::NotForThisDevice => Error::NotForThisDevice {
                device: Name::new(req.device_id),
            },
            Refusal::TargetMismatch(authorized) => Error::AuthorizationTargetMismatch {
                authorized: Name::from_json(&authorized),
                requested: Name::new(req.target),
            },
            Refusal::HashMismatch => Error::HashMismatch {
                what: Name::new(req.target),
                algorithm: "sha256",
            },
            Refusal::InstalledMismatch(authorized) => Error::AuthorizationInstalledMismatch {
                authorized,
                running: req.running,
            },
        }
    ));
    Ok(Authorization {
        header,
        issued,
        reason,
        target,
    })
}

/// The `rollback` role's keys and threshold as the trusted top-level `targets` delegate them;
/// [`Error::NoRollbackRole`] when `delegations.roles` does not list it.
pub fn rollback_keys<'t>(targets: &Targets<'t>) -> Result<RoleKeys<'t>, Error> {
    match targets.delegations {
        Some(d) => pass!(d.listed_keys(ROLLBACK_ROLE)).ok_or(Error::NoRollbackRole),
        None => Err(Error::NoRollbackRole),
    }
}

/// The keys that sign rollback authorizations (field service, clinical engineering) sign nothing
/// else. Listed by another role, they could sign firmware devices install (a delegation with
/// paths, root's `targets`), new keys for every role (`root`), or the online roles' metadata
/// (`timestamp`, `snapshot`: then the repository server's keys sign authorizations). The first
/// of root's four roles that lists one of `rollback`'s keys (compared by the key, not by its key
/// id), if any: the role's name and the key id it lists the key under. Not a device's check: a
/// publisher's (hale-sign before it stages, hale-server before it publishes).
pub fn shared_in_root<'a>(
    rollback: &RoleKeys<'_>,
    root: &metadata::Root<'a>,
) -> Option<(&'static str, JStr<'a>)> {
    let fingerprints = fingerprints(rollback);
    ["root", "targets", "snapshot", "timestamp"]
        .into_iter()
        .find_map(|name| Some((name, shared(&fingerprints, &root.role(name).ok()?)?)))
}

/// As [`shared_in_root`], for the roles `delegator` delegates paths to: the first that lists one
/// of `rollback`'s keys, by its name (`name_prefix` for hashed bins), and the key id. A role
/// delegated no paths signs no targets and is not looked at, nor is the rollback role: it holds
/// its own keys, and paths given to it are refused on their own (`rollback_role_paths`).
pub fn shared_in_delegations<'a>(
    rollback: &RoleKeys<'_>,
    delegator: &Targets<'a>,
) -> Option<(JStr<'a>, JStr<'a>)> {
    let d = delegator.delegations?;
    let fingerprints = fingerprints(rollback);
    if let Some((prefix, role)) = d.bins_keys() {
        return shared(&fingerprints, &role).map(|keyid| (prefix, keyid));
    }
    d.roles?.iter().find_map(|v| {
        let r = metadata::DelegatedRole::parse(&v.as_object()?, Name::new("delegations")).ok()?;
        let pathless =
            r.paths.is_some_and(|p| p.iter().next().is_none()) && r.path_hash_prefixes.is_none();
        if pathless || r.name.eq_str(ROLLBACK_ROLE) {
            return None;
        }
        Some((r.name, shared(&fingerprints, &r.keys(d.keys))?))
    })
}

/// The fingerprints of the keys `role` lists (at most [`crate::limits::MAX_KEYS_PER_ROLE`]: a
/// role listing more is refused by every device, and signs nothing).
fn fingerprints(
    role: &RoleKeys<'_>,
) -> heapless::Vec<[u8; 32], { crate::limits::MAX_KEYS_PER_ROLE }> {
    role.keyids
        .iter()
        .filter_map(|kid| crate::verify::key_for(&role.keys, &kid.as_str()?).ok())
        .map(|k| k.fingerprint())
        .take(crate::limits::MAX_KEYS_PER_ROLE)
        .collect()
}

/// The first key id of `role` whose key is one of `fingerprints`.
fn shared<'a>(fingerprints: &[[u8; 32]], role: &RoleKeys<'a>) -> Option<JStr<'a>> {
    role.keyids
        .iter()
        .filter_map(|kid| kid.as_str())
        .find(|kid| {
            crate::verify::key_for(&role.keys, kid)
                .is_ok_and(|k| fingerprints.contains(&k.fingerprint()))
        })
}

/// Why [`check`] refuses; [`verify_authorization`] turns it into the [`Error`] once. Small, so a
/// refusal moves a few bytes where an `Error` (with its names) would move over a hundred.
enum Refusal<'a> {
    Json(JsonError),
    Field(&'static str),
    TooLong(i64),
    Ahead(i64),
    Expired,
    Used(UnixTime),
    NotForThisDevice,
    TargetMismatch(JStr<'a>),
    HashMismatch,
    InstalledMismatch(Version),
}

/// The authorization's own fields, read in one pass over `signed` and checked in this order:
/// `issued` (validity, expiry, later than the last one used), `devices`/`group`, `target`,
/// `hashes`, `installed`, `reason`.
fn check<'a>(
    s: &Object<'a>,
    expires: UnixTime,
    req: &Request<'_>,
    now: UnixTime,
    max_validity: i64,
) -> Result<(UnixTime, JStr<'a>, JStr<'a>), Refusal<'a>> {
    let [issued, devices, group, target, hashes, installed, reason] = s
        .fields([
            "issued",
            "devices",
            "group",
            "target",
            "hashes",
            "installed",
            "reason",
        ])
        .map_err(Refusal::Json)?;
    let string =
        |v: Option<Value<'a>>, field| v.and_then(|v| v.as_str()).ok_or(Refusal::Field(field));
    let mut buf = [0u8; 64];
    let mut time = [0u8; 32];
    let issued = string(issued, "issued")?
        .decode_into(&mut time)
        .and_then(|t| parse_expires(t.as_bytes()))
        .ok_or(Refusal::Field("issued"))?;
    let validity = expires - issued;
    if validity <= 0 || validity > max_validity {
        return Err(Refusal::TooLong(validity));
    }
    // and good only from its issue time: one dated ahead (issued in 2040, or tomorrow morning)
    // would otherwise be good from now until then, and once used would refuse every one issued
    // before its date (`Used`)
    let ahead = issued.saturating_sub(now);
    if ahead > ISSUED_LEEWAY {
        return Err(Refusal::Ahead(ahead));
    }
    if crate::time::is_expired(expires, now) {
        return Err(Refusal::Expired);
    }
    if issued <= req.last_used {
        return Err(Refusal::Used(issued));
    }

    let named = devices.and_then(|v| v.as_array()).is_some_and(|a| {
        a.iter()
            .filter_map(|v| v.as_str())
            .any(|d| d.eq_str(req.device_id))
    });
    let in_group = match (group.and_then(|v| v.as_str()), req.group) {
        (Some(g), Some(mine)) => g.eq_str(mine),
        _ => false,
    };
    if !named && !in_group {
        return Err(Refusal::NotForThisDevice);
    }

    let target = string(target, "target")?;
    if !target.eq_str(req.target) {
        return Err(Refusal::TargetMismatch(target));
    }
    let hashes = hashes
        .and_then(|v| v.as_object())
        .ok_or(Refusal::Field("hashes"))?;
    let mut raw = [0u8; 32];
    let ok = hashes
        .get("sha256")
        .ok()
        .flatten()
        .and_then(|v| v.as_str())
        .and_then(|sha| sha.decode_into(&mut buf))
        .and_then(|h| crate::crypto::hex_decode(h.as_bytes(), &mut raw))
        .is_some_and(|n| n == 32);
    if !ok {
        return Err(Refusal::Field("hashes"));
    }
    if raw != req.target_sha256 {
        return Err(Refusal::HashMismatch);
    }

    // absent (or null): any running version; present, it must be a version (a number or an
    // object would otherwise drop the check)
    if let Some(v) = installed.filter(|v| !matches!(v, Value::Null)) {
        let authorized = v
            .as_str()
            .ok_or(Refusal::Field("installed"))?
            .decode_into(&mut buf)
            .and_then(Version::parse)
            .ok_or(Refusal::Field("installed"))?;
        if authorized != req.running {
            return Err(Refusal::InstalledMismatch(authorized));
        }
    }
    Ok((issued, target, string(reason, "reason")?))
}
