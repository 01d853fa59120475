//! Publishing: verify an upload against the trusted state with hale-core, then sign a new snapshot
//! and timestamp with the online keys, then check the whole result as a device would.
//!
//! Threats handled here:
//! - *Arbitrary software / compromised operator token*: a token only lets someone *offer*
//!   metadata; nothing is published unless a threshold of the keys the current root (or the
//!   delegator) lists signed it. The server's online keys sign only snapshot and timestamp.
//! - *Rollback*: every uploaded role's version must be strictly greater than the published one.
//! - *Mix-and-match / missing content*: every target an uploaded role lists must already be stored
//!   with exactly the listed length and hashes (streamed through hale-core's `TargetHasher`).
//! - *Bricking the fleet*: policy fields of firmware targets must parse with hale-core's
//!   `parse_firmware`, and the final state must pass the full client workflow
//!   ([`crate::repo::verify_as_client`]) from both the previous state and a fresh device.
//! - *Freeze*: snapshot and timestamp are re-signed before they expire ([`resign`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use bytes::Bytes;
use hale_core::metadata::{
    check_delegated_role_name, check_role_name, check_target_path, DelegatedRole, Envelope, Root,
    Targets,
};
use hale_core::verify::verify_threshold;
use hale_core::{Name, PolicyError, Storage, TrustedSet};
use hale_repo::build::Profile;
use hale_repo::SigningKey;
use serde_json::json;

use crate::repo::{Meta, RepoDir, State, MAX_METADATA_LEN};

/// Why a publish was refused. The message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// hale-core refused a document (bad signature, threshold, expiry, shape…). The message is
    /// hale-core's, prefixed with the role when hale-core's text does not start with it.
    #[error("{}", with_role(role, error))]
    Trust {
        role: String,
        error: hale_core::Error,
    },
    /// hale-core's `update_root` refused a new root for a threshold: `which` says whose, the
    /// root before it (which must sign its successor) or the new root's own (its root role must
    /// sign it too). hale-core's error is the same for both; the decision is hale-core's, the
    /// server only finds which of the two checks it failed, to say so.
    #[error("{}: {which}", with_role(role, error))]
    RootThreshold {
        role: String,
        error: hale_core::Error,
        which: String,
    },
    #[error("{role}: version {received} is not greater than the published version {published}")]
    VersionNotIncreased {
        role: String,
        published: u64,
        received: u64,
    },
    #[error("{role}: target {path}: content {sha256} was not uploaded")]
    TargetMissing {
        role: String,
        path: String,
        sha256: String,
    },
    #[error("{role}: {error}")]
    TargetContent {
        role: String,
        path: String,
        error: hale_core::Error,
    },
    #[error("{role}: target {path}: no sha256 hash listed (content is stored by sha256)")]
    NoSha256 { role: String, path: String },
    #[error("{role}: target {path}: {error}")]
    Policy {
        role: String,
        path: String,
        error: PolicyError,
    },
    #[error("{role}: no published or uploaded role delegates to it")]
    NotDelegated { role: String },
    #[error("{role}: differs from the role {other} only in case: a case-insensitive file system (an export, a signer's staged directory) would keep both in one file")]
    CaseCollision { role: String, other: String },
    #[error("{delegator}: delegates paths to the rollback role: its keys sign rollback authorizations and are delegated no paths (\"paths\": []), so they can never sign targets")]
    RollbackPaths { delegator: String },
    #[error("{delegator}: {role} lists the rollback role's key {keyid}: the keys that sign rollback authorizations sign nothing else (delegated paths or one of root's roles, they would sign what devices install or trust)")]
    RollbackKeys {
        delegator: String,
        role: String,
        keyid: String,
    },
    #[error("root: {role} needs {threshold} signatures but the server holds {held} of the keys it lists")]
    OnlineKeys {
        role: &'static str,
        threshold: u64,
        held: usize,
    },
    #[error("root: consistent_snapshot must be true (the server serves consistent snapshots)")]
    NotConsistent,
    #[error("the first publish must include targets")]
    NoTargets,
    #[error("nothing to publish")]
    Empty,
    #[error("a device would reject the result: {0}")]
    ClientCheck(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl PublishError {
    /// A short machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Trust {
                error: hale_core::Error::ThresholdNotMet { .. },
                ..
            } => "threshold_not_met",
            PublishError::Trust { .. } => "rejected_metadata",
            PublishError::RootThreshold { .. } => "threshold_not_met",
            PublishError::VersionNotIncreased { .. } => "version_not_increased",
            PublishError::TargetMissing { .. } => "target_missing",
            PublishError::TargetContent { .. } => "target_mismatch",
            PublishError::NoSha256 { .. } => "target_no_sha256",
            PublishError::Policy { .. } => "bad_policy",
            PublishError::NotDelegated { .. } => "not_delegated",
            PublishError::CaseCollision { .. } => "role_name_collision",
            PublishError::RollbackPaths { .. } => "rollback_role_paths",
            PublishError::RollbackKeys { .. } => "rollback_keys_shared",
            PublishError::OnlineKeys { .. } => "online_keys_not_listed",
            PublishError::NotConsistent => "not_consistent",
            PublishError::NoTargets => "no_targets",
            PublishError::Empty => "empty",
            PublishError::ClientCheck(_) => "client_check_failed",
            PublishError::BadRequest(_) => "bad_request",
            PublishError::Internal(_) => "internal",
        }
    }
}

fn with_role(role: &str, e: &hale_core::Error) -> String {
    let text = e.to_string();
    if text.starts_with(&format!("{role}:")) {
        text
    } else {
        format!("{role}: {text}")
    }
}

/// The refusal of `new` (a root, named `what` in the upload) by hale-core's `update_root` from
/// `previous` (the root it follows). A threshold not met is either the previous root's (checked
/// first) or the new root's own, and hale-core's error does not say which: it is the previous
/// root's if hale-core's threshold check of `new` against the previous root's root role fails,
/// else its own. Any other error, or a root that does not parse, is hale-core's as it is.
fn root_refused(what: &str, previous: &[u8], new: &[u8], error: hale_core::Error) -> PublishError {
    if !matches!(error, hale_core::Error::ThresholdNotMet { .. }) {
        return trust(what)(error);
    }
    let version = |bytes: &[u8]| {
        Envelope::parse(bytes, "root")
            .and_then(|env| Root::parse(&env.signed).map(|r| r.header.version))
            .ok()
    };
    let by_previous = Envelope::parse(previous, "root").and_then(|p| {
        let keys = Root::parse(&p.signed)?.role("root")?;
        verify_threshold(&Envelope::parse(new, "root")?, &keys)
    });
    let (Some(prev_v), Some(new_v)) = (version(previous), version(new)) else {
        return trust(what)(error);
    };
    let which = match by_previous {
        Err(hale_core::Error::ThresholdNotMet { .. }) => {
            format!("root v{prev_v}'s threshold, the root before it, which must sign root v{new_v}")
        }
        Ok(()) => format!(
            "root v{new_v}'s own threshold (a new root is signed by the keys it lists for root \
             too, not only by the root before it)"
        ),
        Err(_) => return trust(what)(error),
    };
    PublishError::RootThreshold {
        role: what.to_string(),
        error,
        which,
    }
}

fn trust(role: &str) -> impl FnOnce(hale_core::Error) -> PublishError + '_ {
    move |error| PublishError::Trust {
        role: role.to_string(),
        error,
    }
}

/// The server's online keys. More than one per role is allowed, for rotation: the server signs
/// with every key it holds that the current root lists.
#[derive(Debug, Clone, Default)]
pub struct OnlineKeys {
    pub timestamp: Vec<SigningKey>,
    pub snapshot: Vec<SigningKey>,
}

/// Lifetimes of what the server signs, and when it re-signs.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub timestamp_secs: i64,
    pub timestamp_resign_before_secs: i64,
    pub snapshot_secs: i64,
    pub snapshot_resign_before_secs: i64,
    pub profile: Profile,
}

/// An upload: metadata bytes exactly as the release engineers signed them.
#[derive(Debug, Default)]
pub struct Upload {
    /// New root versions in order, N+1, N+2… after the trusted N: each is a version devices walk
    /// through, so a repository that published several since the last upload sends them all.
    pub roots: Vec<Bytes>,
    pub roles: BTreeMap<String, Bytes>,
}

/// The keys among `held` that `root` lists for `role`, if they meet its threshold.
pub fn online_signers<'k>(
    root: &[u8],
    role: &'static str,
    held: &'k [SigningKey],
) -> Result<Vec<&'k SigningKey>, PublishError> {
    let env = Envelope::parse(root, "root").map_err(trust("root"))?;
    let r = Root::parse(&env.signed).map_err(trust("root"))?;
    let keys = r.role(role).map_err(trust("root"))?;
    let listed: Vec<String> = keys
        .keyids
        .iter()
        .filter_map(|v| v.as_str())
        .map(|s| s.to_string())
        .collect();
    let signers: Vec<&SigningKey> = held
        .iter()
        .filter(|k| listed.contains(&k.keyid()))
        .collect();
    if (signers.len() as u64) < keys.threshold || signers.is_empty() {
        return Err(PublishError::OnlineKeys {
            role,
            threshold: keys.threshold,
            held: signers.len(),
        });
    }
    Ok(signers)
}

/// Names of the roles `delegator` delegates to: its `roles` list, and for succinct hash bins the
/// `candidates` that are one of its bins.
pub fn delegated_names<'a>(
    delegator: &Targets<'_>,
    candidates: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let Some(d) = delegator.delegations else {
        return Vec::new();
    };
    if let Some(roles) = d.roles {
        return roles
            .iter()
            .filter_map(|v| v.as_object())
            .filter_map(|o| DelegatedRole::parse(&o, Name::new("delegations")).ok())
            .map(|r| r.name.to_string())
            .collect();
    }
    let Some(s) = d.succinct else {
        return Vec::new();
    };
    let prefix = s.name_prefix.to_string();
    candidates
        .filter(|c| {
            let Some(hex) = c
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_prefix('-'))
            else {
                return false;
            };
            let Ok(bin) = u32::from_str_radix(hex, 16) else {
                return false;
            };
            let mut buf = [0u8; 160];
            (u64::from(bin) < (1u64 << s.bit_length))
                && s.bin_name(bin, &mut buf) == Some(c.as_str())
        })
        .cloned()
        .collect()
}

/// `name` against the top-level roles' names and `others`: refused when it differs from one only
/// in ASCII case. Devices compare names exactly, but files named after roles meet
/// case-insensitive file systems (an export copied to a macOS or Windows disk, a signer's staged
/// directory), where `Root.json` is `root.json`.
fn check_case(name: &str, others: &[&str]) -> Result<(), PublishError> {
    let tops = ["root", "timestamp", "snapshot", "targets"];
    match tops
        .iter()
        .chain(others)
        .find(|o| hale_repo::layout::same_file_name(o, name))
    {
        Some(o) => Err(PublishError::CaseCollision {
            role: name.to_string(),
            other: (*o).to_string(),
        }),
        None => Ok(()),
    }
}

/// `delegator` delegates no paths to the `rollback` role. Its keys (field service, clinical
/// engineering) sign rollback authorizations; delegated a path, they could sign firmware devices
/// install (hale-core checks the authorization's signers, and the device's search would take a
/// target from the role like any other). hale-sign never writes such a delegation; this refuses
/// one made with another tool or by hand.
fn check_rollback_role(delegator: &str, t: &Targets<'_>) -> Result<(), PublishError> {
    let Some(roles) = t.delegations.and_then(|d| d.roles) else {
        return Ok(());
    };
    let pathless = |r: &DelegatedRole<'_>| {
        r.paths.is_some_and(|p| p.iter().next().is_none()) && r.path_hash_prefixes.is_none()
    };
    let lists_paths = roles
        .iter()
        .filter_map(|v| v.as_object())
        .filter_map(|o| DelegatedRole::parse(&o, Name::new(delegator)).ok())
        .any(|r| r.name.eq_str(hale_core::rollback::ROLLBACK_ROLE) && !pathless(&r));
    if lists_paths {
        return Err(PublishError::RollbackPaths {
            delegator: delegator.to_string(),
        });
    }
    Ok(())
}

/// The keys `delegator` gives to `name` (`None` if it does not delegate to it).
fn delegation_keys<'a>(
    delegator: &Targets<'a>,
    name: &str,
) -> Option<hale_core::metadata::RoleKeys<'a>> {
    let d = delegator.delegations?;
    if let Some(roles) = d.roles {
        return roles
            .iter()
            .filter_map(|v| v.as_object())
            .filter_map(|o| DelegatedRole::parse(&o, Name::new(name)).ok())
            .find(|r| r.name.eq_str(name))
            .map(|r| r.keys(d.keys));
    }
    d.succinct.map(|s| s.keys(d.keys, name))
}

/// Verify `upload` against `old` and build the new state (new snapshot and timestamp included).
/// Nothing is written: the caller commits the result.
pub fn prepare(
    old: &State,
    upload: &Upload,
    keys: &OnlineKeys,
    life: &Lifetimes,
    now: i64,
    repo: &RepoDir,
) -> Result<State, PublishError> {
    if upload.roots.is_empty() && upload.roles.is_empty() {
        return Err(PublishError::Empty);
    }
    let mut new = old.clone();

    // 1. roots, in order as a device walks them: each signed by the root before it and by
    //    itself, the next version (hale-core's update_root); only the last must be unexpired
    //    (spec 5.3.10: a device passes through an expired root on the way). One sent as `root`
    //    is named `root` in a refusal, one of several by its place in `roots`.
    if !upload.roots.is_empty() {
        let (_, cur) = old
            .root()
            .ok_or_else(|| PublishError::Internal("no trusted root".into()))?;
        let mut set = TrustedSet::new(Storage::with_capacity(MAX_METADATA_LEN), cur, now)
            .map_err(trust("root"))?;
        let last = upload.roots.len() - 1;
        let mut previous = cur.clone();
        for (i, root) in upload.roots.iter().enumerate() {
            let what = if last == 0 {
                "root".to_string()
            } else {
                format!("roots[{i}]")
            };
            let v = set
                .update_root(root)
                .map_err(|e| root_refused(&what, &previous, root, e))?;
            previous = root.clone();
            let env = Envelope::parse(root, "root").map_err(trust(&what))?;
            let r = Root::parse(&env.signed).map_err(trust(&what))?;
            if !r.consistent_snapshot {
                return Err(PublishError::NotConsistent);
            }
            if i == last && r.header.expires <= now {
                return Err(PublishError::Trust {
                    role: what,
                    error: hale_core::Error::ExpiredRoot {
                        expires: r.header.expires,
                        now,
                    },
                });
            }
            new.roots.insert(v, root.clone());
        }
    }
    let (_, root_bytes) = new
        .root()
        .ok_or_else(|| PublishError::Internal("no trusted root".into()))?;
    let root_bytes = root_bytes.clone();
    online_signers(&root_bytes, "timestamp", &keys.timestamp)?;
    online_signers(&root_bytes, "snapshot", &keys.snapshot)?;

    // 2. shape, version increase and expiry of every uploaded role
    let all: Vec<&str> = old
        .roles
        .keys()
        .chain(upload.roles.keys())
        .map(String::as_str)
        .collect();
    for (name, bytes) in &upload.roles {
        // `targets`, or a delegated role: never another top-level role's name, whose files it
        // would take the place of (`N.root.json`, `N.snapshot.json`), nor one in another case
        if name == "targets" {
            check_role_name(name)
        } else {
            check_delegated_role_name(name)
        }
        .map_err(trust(name))?;
        check_case(name, &all)?;
        if bytes.len() > MAX_METADATA_LEN {
            return Err(PublishError::BadRequest(format!(
                "{name}: larger than {MAX_METADATA_LEN} bytes"
            )));
        }
        let env = Envelope::parse(bytes, name).map_err(trust(name))?;
        let t = Targets::parse(&env.signed, Name::new(name)).map_err(trust(name))?;
        if let Some(published) = old.roles.get(name) {
            if t.header.version <= published.version {
                return Err(PublishError::VersionNotIncreased {
                    role: name.clone(),
                    published: published.version,
                    received: t.header.version,
                });
            }
        }
        if t.header.expires <= now {
            return Err(PublishError::Trust {
                role: name.clone(),
                error: hale_core::Error::Expired {
                    role: Name::new(name),
                    expires: t.header.expires,
                    now,
                },
            });
        }
        new.roles.insert(
            name.clone(),
            Meta {
                version: t.header.version,
                bytes: bytes.clone(),
            },
        );
    }
    if !new.roles.contains_key("targets") {
        return Err(PublishError::NoTargets);
    }

    // 3. signatures: targets by the root's targets role; every delegated role by every delegator
    //    that names it (a device may reach it through any of them)
    let env = Envelope::parse(&root_bytes, "root").map_err(trust("root"))?;
    let root = Root::parse(&env.signed).map_err(trust("root"))?;
    let top_env =
        Envelope::parse(&new.roles["targets"].bytes, "targets").map_err(trust("targets"))?;
    verify_threshold(&top_env, &root.role("targets").map_err(trust("root"))?)
        .map_err(trust("targets"))?;
    let top = Targets::parse(&top_env.signed, Name::new("targets")).map_err(trust("targets"))?;
    // the keys that sign rollback authorizations sign nothing else, checked over the whole new
    // state at every publish: a delegation stored before this check existed holds every publish
    // back until a new version of its delegator mends it
    let rollback = hale_core::rollback::rollback_keys(&top).ok();
    if let Some((role, keyid)) = rollback
        .as_ref()
        .and_then(|r| hale_core::rollback::shared_in_root(r, &root))
    {
        return Err(PublishError::RollbackKeys {
            delegator: "root".into(),
            role: role.into(),
            keyid: keyid.to_string(),
        });
    }
    let mut delegators: HashMap<String, Vec<String>> = HashMap::new();
    let names: Vec<String> = new.roles.keys().cloned().collect();
    for (dname, d) in &new.roles {
        let env = Envelope::parse(&d.bytes, dname).map_err(trust(dname))?;
        let t = Targets::parse(&env.signed, Name::new(dname)).map_err(trust(dname))?;
        // each delegator uploaded, and every one when the rollback role itself is (a
        // delegation stored before this check existed)
        if upload.roles.contains_key(dname)
            || upload
                .roles
                .contains_key(hale_core::rollback::ROLLBACK_ROLE)
        {
            check_rollback_role(dname, &t)?;
        }
        if let Some((role, keyid)) = rollback
            .as_ref()
            .and_then(|r| hale_core::rollback::shared_in_delegations(r, &t))
        {
            return Err(PublishError::RollbackKeys {
                delegator: dname.clone(),
                role: role.to_string(),
                keyid: keyid.to_string(),
            });
        }
        for child in delegated_names(&t, names.iter()) {
            check_delegated_role_name(&child).map_err(trust(dname))?;
            if upload.roles.contains_key(dname) {
                check_case(&child, &[])?;
            }
            delegators.entry(child).or_default().push(dname.clone());
        }
    }
    for (name, m) in &new.roles {
        if name == "targets" {
            continue;
        }
        let Some(ds) = delegators.get(name) else {
            if upload.roles.contains_key(name) {
                return Err(PublishError::NotDelegated { role: name.clone() });
            }
            continue; // no longer delegated: kept in the snapshot (clients refuse removals), unreachable
        };
        let env = Envelope::parse(&m.bytes, name).map_err(trust(name))?;
        for dname in ds {
            let d = &new.roles[dname];
            let denv = Envelope::parse(&d.bytes, dname).map_err(trust(dname))?;
            let dt = Targets::parse(&denv.signed, Name::new(dname)).map_err(trust(dname))?;
            if let Some(k) = delegation_keys(&dt, name) {
                verify_threshold(&env, &k).map_err(trust(name))?;
            }
        }
    }

    // 4. every target an uploaded role lists is stored with its length and hashes; policy fields parse
    for (name, bytes) in &upload.roles {
        check_targets(name, bytes, old.roles.get(name).map(|m| &m.bytes), repo)?;
    }

    // 5. new snapshot and timestamp, signed online
    sign_online(&mut new, old, keys, life, now, true)?;

    // 6. what a device would do, from the previous state and from scratch
    verify_final(old, &new, now, repo)?;
    Ok(new)
}

/// The final gate before anything is committed: hale-core's client workflow over the new state.
pub fn verify_final(
    old: &State,
    new: &State,
    now: i64,
    repo: &RepoDir,
) -> Result<(), PublishError> {
    let blob_len = |sha: &str| std::fs::metadata(repo.blob_path(sha)).ok().map(|m| m.len());
    // a role this change leaves as it was may have expired: devices refuse what it holds either
    // way, and the re-sign and the other roles' releases go on (see `verify_as_client`)
    let untouched =
        |role: &str| old.roles.get(role).map(|m| &m.bytes) == new.roles.get(role).map(|m| &m.bytes);
    if old.timestamp.is_some() {
        crate::repo::verify_as_client(Some(old), new, now, &blob_len, &untouched, Some(old))
            .map_err(PublishError::ClientCheck)?;
    }
    crate::repo::verify_as_client(None, new, now, &blob_len, &untouched, Some(old))
        .map_err(|e| PublishError::ClientCheck(format!("fresh device: {e}")))
}

const FIRMWARE_FIELDS: [&str; 4] = ["version", "hardware", "security_counter", "min_bootloader"];

fn check_targets(
    role: &str,
    bytes: &[u8],
    published: Option<&Bytes>,
    repo: &RepoDir,
) -> Result<(), PublishError> {
    let env = Envelope::parse(bytes, role).map_err(trust(role))?;
    let t = Targets::parse(&env.signed, Name::new(role)).map_err(trust(role))?;
    let old_env = published.and_then(|b| Envelope::parse(b, role).ok());
    let old_t = old_env.and_then(|e| Targets::parse(&e.signed, Name::new(role)).ok());
    // the published entries by path, raw bytes, read once (a lookup per entry would be O(n²))
    let old_entries: HashMap<String, &[u8]> = old_t
        .iter()
        .flat_map(|ot| ot.targets.members())
        .filter_map(|(k, v)| v.raw().map(|raw| (k.to_string(), raw)))
        .collect();
    for (k, v) in t.targets.members() {
        let path = k.to_string();
        check_target_path(&path).map_err(trust(role))?;
        let o = v.as_object().ok_or(PublishError::Trust {
            role: role.into(),
            error: hale_core::Error::Field {
                role: Name::new(role),
                field: "targets",
            },
        })?;
        let f = hale_core::metadata::TargetFile::parse(&o, Name::new(role)).map_err(trust(role))?;
        if let Some(custom) = &f.custom {
            let is_firmware = FIRMWARE_FIELDS
                .iter()
                .any(|field| custom.get(field).ok().flatten().is_some());
            if is_firmware {
                hale_core::policy::parse_firmware(Some(custom)).map_err(|error| {
                    PublishError::Policy {
                        role: role.into(),
                        path: path.clone(),
                        error,
                    }
                })?;
            }
        }
        let sha = f
            .sha256()
            .map(hex::encode)
            .ok_or_else(|| PublishError::NoSha256 {
                role: role.into(),
                path: path.clone(),
            })?;
        // unchanged entry of the published version: its content was checked when it was published
        let unchanged = old_entries
            .get(&path)
            .is_some_and(|raw| Some(*raw) == v.raw());
        let blob = repo.blob_path(&sha);
        if unchanged && blob.exists() {
            continue;
        }
        let file = std::fs::File::open(&blob).map_err(|_| PublishError::TargetMissing {
            role: role.into(),
            path: path.clone(),
            sha256: sha.clone(),
        })?;
        let mut hasher =
            f.hasher(Name::new(&path))
                .map_err(|error| PublishError::TargetContent {
                    role: role.into(),
                    path: path.clone(),
                    error,
                })?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| PublishError::Internal(format!("{}: {e}", blob.display())))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or(&[]);
            hasher
                .update(chunk)
                .map_err(|error| PublishError::TargetContent {
                    role: role.into(),
                    path: path.clone(),
                    error,
                })?;
        }
        hasher
            .finish()
            .map_err(|error| PublishError::TargetContent {
                role: role.into(),
                path: path.clone(),
                error,
            })?;
    }
    Ok(())
}

/// Sign a new timestamp (and a new snapshot when `new_snapshot`, or when the roles changed) into
/// `new`, with versions one above `old`'s.
pub fn sign_online(
    new: &mut State,
    old: &State,
    keys: &OnlineKeys,
    life: &Lifetimes,
    now: i64,
    new_snapshot: bool,
) -> Result<(), PublishError> {
    let internal = |e: hale_repo::RepoError| PublishError::Internal(e.to_string());
    let (_, root) = new
        .root()
        .ok_or_else(|| PublishError::Internal("no trusted root".into()))?;
    let root = root.clone();
    let ts_keys = online_signers(&root, "timestamp", &keys.timestamp)?;
    let snap_keys = online_signers(&root, "snapshot", &keys.snapshot)?;
    let roles_changed = new.roles != old.roles;
    if new_snapshot || roles_changed || new.snapshot.is_none() {
        let meta: BTreeMap<String, u64> = new
            .roles
            .iter()
            .map(|(k, m)| (k.clone(), m.version))
            .collect();
        let version = old.snapshot_version() + 1;
        let expires = hale_repo::build::expires_at(now, life.snapshot_secs).map_err(internal)?;
        let body = hale_repo::build::snapshot(life.profile, version, &expires, &meta);
        let bytes = hale_repo::sign::sign_new(&body, &snap_keys).map_err(internal)?;
        new.snapshot = Some(Meta {
            version,
            bytes: Bytes::from(bytes),
        });
    }
    let snap = new
        .snapshot
        .as_ref()
        .ok_or_else(|| PublishError::Internal("no snapshot".into()))?;
    let version = old.timestamp_version() + 1;
    let expires = hale_repo::build::expires_at(now, life.timestamp_secs).map_err(internal)?;
    let body =
        hale_repo::build::timestamp(life.profile, version, &expires, snap.version, &snap.bytes);
    let bytes = hale_repo::sign::sign_new(&body, &ts_keys).map_err(internal)?;
    new.timestamp = Some(Meta {
        version,
        bytes: Bytes::from(bytes),
    });
    Ok(())
}

/// What a scheduled re-sign would change: `None` when nothing expires soon.
pub fn resign(
    old: &State,
    keys: &OnlineKeys,
    life: &Lifetimes,
    now: i64,
    repo: &RepoDir,
) -> Result<Option<State>, PublishError> {
    let (Some(ts), Some(snap)) = (&old.timestamp, &old.snapshot) else {
        return Ok(None);
    };
    let ts_exp = hale_core::metadata::peek_header(&ts.bytes, "timestamp")
        .map_err(trust("timestamp"))?
        .expires;
    let snap_exp = hale_core::metadata::peek_header(&snap.bytes, "snapshot")
        .map_err(trust("snapshot"))?
        .expires;
    let snap_due = snap_exp - now <= life.snapshot_resign_before_secs;
    let ts_due = ts_exp - now <= life.timestamp_resign_before_secs;
    if !snap_due && !ts_due {
        return Ok(None);
    }
    let mut new = old.clone();
    sign_online(&mut new, old, keys, life, now, snap_due)?;
    verify_final(old, &new, now, repo)?;
    Ok(Some(new))
}

/// At most this many targets are named one by one in a publish's audit record (a catalog
/// release can change thousands); the counts are always whole.
pub const AUDITED_TARGETS_MAX: usize = 100;

/// What a change did to the targets served: `{"added": [{role, path, sha256, length}…],
/// "removed": [{role, path, sha256, length}…], "added_count", "removed_count"}`, a target whose content changed
/// counting as removed and added. For the audit log: which firmware went out, by its hash.
pub fn target_changes(old: &State, new: &State) -> serde_json::Value {
    let (added, removed) = listing_changes(old, new);
    changes_json(&added, &removed)
}

/// [`target_changes`]' answer for listings [`listing_changes`] gave.
pub fn changes_json(added: &[Listed], removed: &[Listed]) -> serde_json::Value {
    json!({
        "added": added
            .iter()
            .take(AUDITED_TARGETS_MAX)
            .map(|(role, path, sha, len)| json!({"role": role, "path": path, "sha256": sha, "length": len}))
            .collect::<Vec<_>>(),
        "removed": removed
            .iter()
            .take(AUDITED_TARGETS_MAX)
            .map(|(role, path, sha, len)| json!({"role": role, "path": path, "sha256": sha, "length": len}))
            .collect::<Vec<_>>(),
        "added_count": added.len(),
        "removed_count": removed.len(),
    })
}

/// `(role, path, sha256, length)` of every target entry `new` lists that `old` did not, and of
/// every one `old` listed that `new` does not.
pub type Listed = (String, String, String, u64);
pub fn listing_changes(old: &State, new: &State) -> (Vec<Listed>, Vec<Listed>) {
    // only roles whose version changed can list other targets
    let changed = |role: &String| {
        old.roles.get(role).map(|m| m.version) != new.roles.get(role).map(|m| m.version)
    };
    let listed = |st: &State| -> std::collections::BTreeSet<Listed> {
        st.roles
            .iter()
            .filter(|(role, _)| changed(role))
            .flat_map(|(role, m)| {
                crate::repo::role_targets(role, &m.bytes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |(path, sha, len)| (role.clone(), path, sha, len))
            })
            .collect()
    };
    let (before, after) = (listed(old), listed(new));
    let added = after.difference(&before).cloned().collect();
    let removed = before.difference(&after).cloned().collect();
    (added, removed)
}

/// What a release does past the staged rollouts it was meant to go through: each image `added`
/// ([`listing_changes`]) under a path a rollout names, with other bytes than the rollout's, and
/// that no rollout holds back (the rollout's sha256 taken over other bytes: the image is offered
/// to every device). The gate goes by the hash; the path is the operator's note of what it meant.
pub fn rollout_warnings(added: &[Listed], rollouts: &[crate::rollout::Rollout]) -> Vec<String> {
    let held: std::collections::BTreeSet<&str> =
        rollouts.iter().map(|r| r.sha256.as_str()).collect();
    let mut out = Vec::new();
    for (_, path, sha, _) in added {
        if held.contains(sha.as_str()) {
            continue;
        }
        for r in rollouts {
            if r.target.as_deref() == Some(path.as_str()) && r.sha256 != *sha {
                out.push(format!(
                    "{path} is released as sha256 {sha}, which no rollout holds back: every \
                     device is offered it. The rollout naming {path} ({}%, set by {}) holds \
                     sha256 {}: set the rollout on the image's sha256",
                    r.percent, r.by, r.sha256
                ));
            }
        }
    }
    out
}

/// A JSON summary of a state (for responses and the audit log).
pub fn summary(st: &State) -> serde_json::Value {
    let roles: BTreeMap<&String, u64> = st.roles.iter().map(|(k, m)| (k, m.version)).collect();
    json!({
        "root": st.root_version(),
        "timestamp": st.timestamp_version(),
        "snapshot": st.snapshot_version(),
        "roles": roles,
    })
}
