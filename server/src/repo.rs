//! The repository on disk and its committed state.
//!
//! ```text
//! DATA/repo/metadata/N.root.json          every root, kept forever
//! DATA/repo/metadata/N.<role>.json        snapshot, targets, delegated roles (immutable once committed)
//! DATA/repo/metadata/ts/N.timestamp.json  every timestamp version
//! DATA/repo/blobs/<sha256>                target contents, content-addressed
//! DATA/repo/CURRENT                       {"root": R, "timestamp": T}: the one pointer
//! ```
//!
//! **Crash safety.** A commit writes every new file first (each atomically: temporary file, fsync,
//! rename, fsync of the directory) and flips `CURRENT` last. Files are named by version or by
//! content, so writing them never changes what `CURRENT` names. A crash before the flip leaves the
//! old repository (plus unreferenced files the next commit overwrites); after it, the new one.
//! Readers are served only what `CURRENT` reaches, from memory, so a timestamp can never point at
//! something not stored.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hale_core::metadata::{Envelope, Snapshot, TargetFile, Targets, Timestamp};
use hale_core::{Name, RoleSource, SearchError, Storage, TrustedSet};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Largest metadata document accepted or loaded.
pub const MAX_METADATA_LEN: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("repository is not initialised: run `hale-server init` (no {0})")]
    NotInitialised(String),
    #[error("repository state is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Write(#[from] hale_repo::RepoError),
}

/// One metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub version: u64,
    pub bytes: Bytes,
}

/// A complete repository state: what `CURRENT` reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// root version → bytes (every version the server has; the last is current)
    pub roots: BTreeMap<u64, Bytes>,
    pub timestamp: Option<Meta>,
    pub snapshot: Option<Meta>,
    /// `targets` and every delegated role the snapshot lists
    pub roles: BTreeMap<String, Meta>,
}

impl State {
    pub fn root(&self) -> Option<(u64, &Bytes)> {
        self.roots.iter().next_back().map(|(v, b)| (*v, b))
    }
    pub fn root_version(&self) -> u64 {
        self.root().map(|r| r.0).unwrap_or(0)
    }
    pub fn timestamp_version(&self) -> u64 {
        self.timestamp.as_ref().map(|m| m.version).unwrap_or(0)
    }
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot.as_ref().map(|m| m.version).unwrap_or(0)
    }
}

/// The files of a repository under `DATA/repo`.
#[derive(Debug, Clone)]
pub struct RepoDir {
    pub dir: PathBuf,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |e| RepoError::Io(p.display().to_string(), e)
}

/// Read a whole file, refusing more than `limit` bytes.
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, RepoError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io(path))?;
    if out.len() > limit {
        return Err(RepoError::Damaged(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(out)
}

impl RepoDir {
    pub fn new(data: &Path) -> Self {
        RepoDir {
            dir: data.join("repo"),
        }
    }
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    pub fn meta_path(&self, role: &str, version: u64) -> PathBuf {
        if role == "timestamp" {
            self.metadata_dir()
                .join("ts")
                .join(format!("{version}.timestamp.json"))
        } else {
            self.metadata_dir().join(format!("{version}.{role}.json"))
        }
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    pub fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        self.blobs_dir().join(sha256_hex)
    }
    pub fn upload_dir(&self) -> PathBuf {
        self.dir.join("upload")
    }
    fn current_path(&self) -> PathBuf {
        self.dir.join("CURRENT")
    }

    pub fn is_initialised(&self) -> bool {
        self.current_path().exists()
    }

    /// Remove temporary files a crash left behind (uploads in progress, half-written files).
    pub fn clean_temporaries(&self) {
        let _ = std::fs::remove_dir_all(self.upload_dir());
        for d in [
            self.metadata_dir(),
            self.metadata_dir().join("ts"),
            self.dir.clone(),
        ] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    if n.starts_with('.') && n.contains(".tmp") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Load the committed state.
    pub fn load(&self) -> Result<State, RepoError> {
        let cur_path = self.current_path();
        if !cur_path.exists() {
            return Err(RepoError::NotInitialised(cur_path.display().to_string()));
        }
        let cur: serde_json::Value = serde_json::from_slice(&read_bounded(&cur_path, 4096)?)
            .map_err(|e| RepoError::Damaged(format!("CURRENT: {e}")))?;
        let root_v = cur
            .get("root")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| RepoError::Damaged("CURRENT has no root version".into()))?;
        let ts_v = cur.get("timestamp").and_then(|v| v.as_u64());
        let mut st = State::default();
        for v in 1..=root_v {
            let p = self.meta_path("root", v);
            if p.exists() {
                st.roots
                    .insert(v, Bytes::from(read_bounded(&p, MAX_METADATA_LEN)?));
            }
        }
        if !st.roots.contains_key(&root_v) {
            return Err(RepoError::Damaged(format!("{root_v}.root.json is missing")));
        }
        let Some(ts_v) = ts_v else { return Ok(st) };
        let ts = Bytes::from(read_bounded(
            &self.meta_path("timestamp", ts_v),
            MAX_METADATA_LEN,
        )?);
        let snap_v = {
            let env =
                Envelope::parse(&ts, "timestamp").map_err(|e| RepoError::Damaged(e.to_string()))?;
            Timestamp::parse(&env.signed)
                .map_err(|e| RepoError::Damaged(e.to_string()))?
                .snapshot
                .version
        };
        let snap = Bytes::from(read_bounded(
            &self.meta_path("snapshot", snap_v),
            MAX_METADATA_LEN,
        )?);
        for (role, v) in snapshot_roles(&snap).map_err(|e| RepoError::Damaged(e.to_string()))? {
            let b = Bytes::from(read_bounded(&self.meta_path(&role, v), MAX_METADATA_LEN)?);
            st.roles.insert(
                role,
                Meta {
                    version: v,
                    bytes: b,
                },
            );
        }
        st.timestamp = Some(Meta {
            version: ts_v,
            bytes: ts,
        });
        st.snapshot = Some(Meta {
            version: snap_v,
            bytes: snap,
        });
        Ok(st)
    }

    /// Write `new`'s files that `old` does not have, then flip `CURRENT`. See the module docs.
    pub fn commit(&self, old: &State, new: &State) -> Result<(), RepoError> {
        for (v, b) in &new.roots {
            if old.roots.get(v) != Some(b) {
                hale_repo::layout::write_atomic(&self.meta_path("root", *v), b)?;
            }
        }
        for (role, m) in &new.roles {
            if old.roles.get(role) != Some(m) {
                hale_repo::layout::write_atomic(&self.meta_path(role, m.version), &m.bytes)?;
            }
        }
        if let Some(s) = &new.snapshot {
            if old.snapshot.as_ref() != Some(s) {
                hale_repo::layout::write_atomic(&self.meta_path("snapshot", s.version), &s.bytes)?;
            }
        }
        if let Some(t) = &new.timestamp {
            if old.timestamp.as_ref() != Some(t) {
                hale_repo::layout::write_atomic(&self.meta_path("timestamp", t.version), &t.bytes)?;
            }
        }
        crate::crash_point("before-current");
        let cur = json!({"root": new.root_version(), "timestamp": new.timestamp.as_ref().map(|t| t.version)});
        hale_repo::layout::write_atomic(&self.current_path(), cur.to_string().as_bytes())?;
        Ok(())
    }
}

/// `(role, version)` for every `<role>.json` entry of a snapshot.
pub fn snapshot_roles(snapshot: &[u8]) -> Result<Vec<(String, u64)>, hale_core::Error> {
    let env = Envelope::parse(snapshot, "snapshot")?;
    let snap = Snapshot::parse(&env.signed)?;
    let mut out = Vec::new();
    for (k, _) in snap.meta.members() {
        let name = k.to_string();
        let Some(role) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(m) = snap.role(role)? {
            hale_core::metadata::check_role_name(role)?;
            out.push((role.to_string(), m.version));
        }
    }
    Ok(out)
}

/// Every target a role lists: (path, sha256 hex, length).
pub fn role_targets(
    role: &str,
    bytes: &[u8],
) -> Result<Vec<(String, String, u64)>, hale_core::Error> {
    let env = Envelope::parse(bytes, role)?;
    let t = Targets::parse(&env.signed, Name::new(role))?;
    let mut out = Vec::new();
    for (k, v) in t.targets.members() {
        let path = k.to_string();
        let o = v.as_object().ok_or(hale_core::Error::Field {
            role: Name::new(role),
            field: "targets",
        })?;
        let f = TargetFile::parse(&o, Name::new(role))?;
        let sha = f.sha256().map(hex::encode).unwrap_or_default();
        out.push((path, sha, f.length));
    }
    Ok(out)
}

/// Delegated roles as a search source for [`TrustedSet::find_target`], from a state in memory.
struct StateSource<'a>(&'a State);

impl RoleSource for StateSource<'_> {
    type Buf = Bytes;
    type Error = String;
    fn fetch_role(
        &mut self,
        name: &str,
        meta: &hale_core::metadata::MetaFile<'_>,
    ) -> Result<Bytes, String> {
        match self.0.roles.get(name) {
            Some(m) if m.version == meta.version => Ok(m.bytes.clone()),
            Some(m) => Err(format!(
                "{name}: have version {}, snapshot names {}",
                m.version, meta.version
            )),
            None => Err(format!("{name}: not stored")),
        }
    }
}

/// How long before an offline-signed role's expiry `/healthz` and the log warn: 14 days, time
/// for the release engineers to gather a threshold of signers (`hale-sign renew`).
pub const OFFLINE_EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// The targets roles a device's search can reach: targets, and every role delegated to by a
/// role reachable itself. A role no longer delegated stays stored and listed in the snapshot
/// (clients refuse a snapshot that drops one) but no device reads it.
pub fn reachable_roles(st: &State) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let names: Vec<String> = st.roles.keys().cloned().collect();
    let mut todo = vec!["targets".to_string()];
    while let Some(name) = todo.pop() {
        let Some(m) = st.roles.get(&name) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let Ok(env) = Envelope::parse(&m.bytes, &name) else {
            continue;
        };
        let Ok(t) = Targets::parse(&env.signed, Name::new(&name)) else {
            continue;
        };
        todo.extend(
            crate::publish::delegated_names(&t, names.iter())
                .into_iter()
                .filter(|c| !seen.contains(c)),
        );
    }
    seen
}

/// `(role, version, expires)` of every role served now that a device reads: root (the current
/// one), timestamp, snapshot, targets and every delegated role [reachable](reachable_roles). A
/// role whose header does not parse is left out (publish refuses such a role: it cannot be
/// served).
pub fn served_expiries(st: &State) -> Vec<(String, u64, i64)> {
    let header = |bytes: &[u8], ty: &'static str| {
        hale_core::metadata::peek_header(bytes, ty)
            .ok()
            .map(|h| (h.version, h.expires))
    };
    let mut out = Vec::new();
    if let Some((_, b)) = st.root() {
        out.extend(header(b, "root").map(|(v, e)| ("root".to_string(), v, e)));
    }
    if let Some(m) = &st.timestamp {
        out.extend(header(&m.bytes, "timestamp").map(|(v, e)| ("timestamp".to_string(), v, e)));
    }
    if let Some(m) = &st.snapshot {
        out.extend(header(&m.bytes, "snapshot").map(|(v, e)| ("snapshot".to_string(), v, e)));
    }
    let reachable = reachable_roles(st);
    for (role, m) in st.roles.iter().filter(|(r, _)| reachable.contains(*r)) {
        out.extend(header(&m.bytes, "targets").map(|(v, e)| (role.clone(), v, e)));
    }
    out
}

/// Why devices cannot update now or soon, for `/healthz` and the log: every served role a
/// device reads that expired (a top-level one: devices refuse every update; a delegated one: the targets it
/// holds), and every offline-signed role (root, targets, delegated: renewed only by people)
/// within [`OFFLINE_EXPIRY_WARNING_SECS`] of its expiry.
/// Timestamp and snapshot are the server's to renew, so they only count once expired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    /// `(role, version, expires)`: root, timestamp, snapshot, then targets and delegated roles
    pub expired: Vec<(String, u64, i64)>,
    pub expiring: Vec<(String, u64, i64)>,
    /// the offline-signed role that expires first: `(role, expires)`
    pub offline_first: Option<(String, i64)>,
    /// when the served timestamp expires
    pub timestamp: Option<i64>,
}

impl ExpiryReport {
    pub fn of(st: &State, now: i64) -> ExpiryReport {
        let mut r = ExpiryReport::default();
        for (role, v, e) in served_expiries(st) {
            if role == "timestamp" {
                r.timestamp = Some(e);
            }
            let online = role == "timestamp" || role == "snapshot";
            if hale_core::time::is_expired(e, now) {
                r.expired.push((role.clone(), v, e));
            } else if !online && e - now <= OFFLINE_EXPIRY_WARNING_SECS {
                r.expiring.push((role.clone(), v, e));
            }
            if !online && r.offline_first.as_ref().is_none_or(|(_, f)| e < *f) {
                r.offline_first = Some((role, e));
            }
        }
        r
    }
}

/// `t` (Unix seconds) as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn date(t: i64) -> String {
    let mut buf = [0u8; 20];
    hale_core::time::format_expires(t, &mut buf)
        .map_or_else(|| format!("{t} (unix seconds)"), str::to_string)
}

impl ExpiryReport {
    /// One line per expired or expiring role, saying what devices do and what to run.
    pub fn warnings(&self, now: i64) -> Vec<String> {
        let expired = self.expired.iter().map(|r| (r, true));
        let expiring = self.expiring.iter().map(|r| (r, false));
        expired
            .chain(expiring)
            .map(|((role, v, e), gone)| expiry_warning(role, *v, *e, gone, now))
            .collect()
    }
}

/// What devices do about `role` v`v` expiring at `e` (`expired`: it has) and what to run.
pub fn expiry_warning(role: &str, v: u64, e: i64, expired: bool, now: i64) -> String {
    let renew = "renew it (`hale-sign renew DIR --role …`, sign, push)";
    // a delegated role holds only the targets delegated to it
    let refused = if is_top_level(role) {
        "devices refuse every update"
    } else {
        "devices refuse the targets it holds"
    };
    if !expired {
        return format!(
            "{role} v{v} expires at {} (in {} h): {refused} after it; {renew}",
            date(e),
            (e - now) / 3600
        );
    }
    let fix = if role == "timestamp" || role == "snapshot" {
        "the server signs it again when its online keys are loaded"
    } else {
        renew
    };
    format!("{role} v{v} expired at {}: {refused}; {fix}", date(e))
}

/// Root, timestamp, snapshot or targets: every update goes through it.
pub fn is_top_level(role: &str) -> bool {
    matches!(role, "root" | "timestamp" | "snapshot" | "targets")
}

/// Run the whole client workflow of TUF §5 with hale-core over `new`, as a device holding `old`
/// would (or a fresh device holding only the oldest root, when `old` has no timestamp): root chain,
/// timestamp, snapshot, targets, every delegated role against every delegator that names it, and a
/// search for every listed target, whose content must be stored. Anything a device would reject
/// is refused here, before it is published.
///
/// `may_have_expired` names the offline roles (`targets` or delegated) that may be found expired
/// without failing the check: those the change does not touch. Devices already refuse what they
/// hold, and the expiry report says so (`/healthz`, the log); re-signing the timestamp and
/// publishing other roles must go on meanwhile, or one lapsed delegation would stop every
/// device's updates a day later. A role the change does touch must be current, and so must every
/// role on the way to a target it lists. `before`, the state the change starts from, keeps the
/// change from putting a lapsed role in a device's way: a target whose search ends at an expired
/// role is let pass only if its search in `before`, at the same time, failed too (a targets that
/// moves a lapsed delegation ahead of a current one would otherwise cut devices off from what
/// they find today). Without `before` (the server's start check, export: reports), or when
/// `before` no longer loads at `now` (its targets expired: every search failed; its timestamp
/// expired while the server was down, and the re-sign at start failed), the lapsed roles alone
/// decide.
pub fn verify_as_client(
    old: Option<&State>,
    new: &State,
    now: i64,
    blob_len: &dyn Fn(&str) -> Option<u64>,
    may_have_expired: &dyn Fn(&str) -> bool,
    before: Option<&State>,
) -> Result<(), String> {
    // an expiry that does not fail the check: of an offline role named above (the rest of that
    // role's checks passed: hale-core checks the expiry last). A name cut short in the error
    // (over 32 bytes) stands for every stored role it begins: each must be such a role (a
    // touched role with the same beginning fails the check, whichever expired)
    let lapsed = |e: &hale_core::Error| {
        let hale_core::Error::Expired { role, .. } = e else {
            return false;
        };
        let name = role.as_str();
        if !role.is_truncated() {
            return (name == "targets" || !is_top_level(name)) && may_have_expired(name);
        }
        let mut could_be = new
            .roles
            .keys()
            .filter(|r| r.len() > name.len() && r.starts_with(name))
            .peekable();
        could_be.peek().is_some() && could_be.all(|r| may_have_expired(r))
    };
    // the search a device made in `before` at `now`: None when its chain no longer loads (an
    // expired targets: every search failed)
    let before_set = before.map(|b| searchable(b, now).ok());
    let trusted_root = old
        .and_then(|o| o.root())
        .or_else(|| new.roots.iter().next().map(|(v, b)| (*v, b)))
        .ok_or("no root")?;
    let mut set = TrustedSet::new(
        Storage::with_capacity(MAX_METADATA_LEN),
        trusted_root.1,
        now,
    )
    .map_err(|e| format!("trusted root: {e}"))?
    .with_max_root_rotations(u32::MAX);
    for (v, b) in new.roots.range(trusted_root.0 + 1..) {
        set.update_root(b)
            .map_err(|e| format!("{v}.root.json: {e}"))?;
    }
    let (Some(ts), Some(snap)) = (&new.timestamp, &new.snapshot) else {
        return Ok(()); // nothing published yet: only the root chain to check
    };
    if let Some(old_ts) = old.and_then(|o| o.timestamp.as_ref()) {
        // the rollback baseline; fails after a timestamp key rotation, as on a device (dropped)
        let _ = set.load_trusted_timestamp(&old_ts.bytes);
    }
    set.update_timestamp(&ts.bytes)
        .map_err(|e| format!("timestamp.json: {e}"))?;
    let old_snap = old.and_then(|o| o.snapshot.as_ref());
    // the snapshot baseline; dropped when it no longer verifies (snapshot key rotation)
    let fresh = old_snap.map(|s| set.load_trusted_snapshot(&s.bytes));
    if matches!(fresh, Some(Ok(hale_core::Freshness::Current))) {
        if old_snap != Some(snap) {
            return Err("snapshot changed without a new version".into());
        }
    } else {
        set.update_snapshot(&snap.bytes)
            .map_err(|e| format!("{}.snapshot.json: {e}", snap.version))?;
    }
    let targets = new.roles.get("targets").ok_or("targets: not stored")?;
    match set.update_targets(&targets.bytes) {
        Ok(_) => {}
        // nothing below it reaches a device until it is renewed: fine if nothing below changed
        Err(e) if lapsed(&e) => {
            return match new.roles.keys().find(|r| !may_have_expired(r)) {
                None => Ok(()),
                Some(r) => Err(format!(
                    "{}.targets.json: {e}: no device would reach {r} until targets is renewed",
                    targets.version
                )),
            }
        }
        Err(e) => return Err(format!("{}.targets.json: {e}", targets.version)),
    }

    // every delegated role against every delegator that names it (diamonds included)
    for (dname, d) in &new.roles {
        let env = Envelope::parse(&d.bytes, dname).map_err(|e| format!("{dname}: {e}"))?;
        let delegator =
            Targets::parse(&env.signed, Name::new(dname)).map_err(|e| format!("{dname}: {e}"))?;
        for child in crate::publish::delegated_names(&delegator, new.roles.keys()) {
            if let Some(c) = new.roles.get(&child) {
                match set.verify_delegated(&delegator, &child, &c.bytes) {
                    Ok(_) => {}
                    Err(e) if lapsed(&e) => {}
                    Err(e) => return Err(format!("{child} (delegated by {dname}): {e}")),
                }
            }
        }
    }
    // every listed target's content is stored with the listed length (what a device downloads
    // when its search ends at that entry) ...
    for (role, m) in &new.roles {
        let list = role_targets(role, &m.bytes).map_err(|e| format!("{role}: {e}"))?;
        for (path, sha, length) in &list {
            if sha.is_empty() {
                return Err(format!("{path}: no sha256 listed"));
            }
            match blob_len(sha) {
                Some(len) if len == *length => {}
                Some(len) => {
                    return Err(format!(
                        "{path}: stored content has {len} bytes, metadata says {length}"
                    ))
                }
                None => return Err(format!("{path}: content {sha} is not stored")),
            }
        }
        // ... and a device's search (pre-order, priorities, terminating roles, every delegated
        // role verified on the way) succeeds for every target a delegated role lists. Top-level
        // targets are found first by definition: no search needed (it would cost O(n) each).
        if role == "targets" {
            continue;
        }
        for (path, _, _) in &list {
            let found = match set.find_target(path, &mut StateSource(new)) {
                Ok(found) => found,
                // a role that may have expired, holding a target of another such role: devices
                // refuse it as they did before this change (and, `before` given, did then)
                Err(SearchError::Trust(e)) if lapsed(&e) && may_have_expired(role) => {
                    let found_before = match (&before_set, before) {
                        // a search that ended without a target found nothing either
                        (Some(Some(b)), Some(bst)) => {
                            matches!(b.find_target(path, &mut StateSource(bst)), Ok(Some(_)))
                        }
                        _ => false,
                    };
                    if found_before {
                        return Err(format!(
                            "searching {path}: {e}: devices find it now; this change puts the \
                             expired role in their way"
                        ));
                    }
                    continue;
                }
                Err(e) => return Err(format!("searching {path}: {e}")),
            };
            if let Some(found) = found {
                found.file(path).map_err(|e| format!("{path}: {e}"))?;
            } // None: shadowed by a terminating delegation, never fetched
        }
    }
    Ok(())
}

/// A trusted set over `st` as a device holding only its oldest root would build it at `now`, up
/// to targets, for searches; the error of the first step that fails.
fn searchable(st: &State, now: i64) -> Result<TrustedSet<Vec<u8>>, String> {
    let (_, first) = st.roots.iter().next().ok_or("no root")?;
    let mut set = TrustedSet::new(Storage::with_capacity(MAX_METADATA_LEN), first, now)
        .map_err(|e| e.to_string())?
        .with_max_root_rotations(u32::MAX);
    for b in st.roots.values().skip(1) {
        set.update_root(b).map_err(|e| e.to_string())?;
    }
    let (Some(ts), Some(snap), Some(t)) = (&st.timestamp, &st.snapshot, st.roles.get("targets"))
    else {
        return Err("nothing published".into());
    };
    set.update_timestamp(&ts.bytes).map_err(|e| e.to_string())?;
    set.update_snapshot(&snap.bytes)
        .map_err(|e| e.to_string())?;
    set.update_targets(&t.bytes).map_err(|e| e.to_string())?;
    Ok(set)
}

/// A response entry served from memory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub bytes: Bytes,
    /// strong validator: sha256 of the bytes
    pub etag: hyper::header::HeaderValue,
    pub cache: &'static str,
}

/// A target served from disk.
#[derive(Debug, Clone)]
pub struct TargetRef {
    pub blob: PathBuf,
    pub length: u64,
    pub etag: hyper::header::HeaderValue,
}

/// What readers see: built once per commit, swapped in whole.
#[derive(Debug, Default)]
pub struct Served {
    pub state: State,
    pub metadata: HashMap<String, Entry>,
    pub targets: HashMap<String, TargetRef>,
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

fn entry(bytes: &Bytes, cache: &'static str) -> Entry {
    let h = Sha256::digest(bytes);
    let etag = hyper::header::HeaderValue::from_str(&format!("\"{}\"", hex::encode(h)))
        .unwrap_or(hyper::header::HeaderValue::from_static("\"\""));
    Entry {
        bytes: bytes.clone(),
        etag,
        cache,
    }
}

impl Served {
    /// Index `state` for serving. `previous` keeps the versioned files of the state just replaced,
    /// so a client in the middle of an update can still fetch what its timestamp named.
    pub fn build(state: State, previous: Option<&Served>, repo: &RepoDir) -> Served {
        let mut metadata = HashMap::new();
        if let Some(p) = previous {
            // only the previous state's own versioned files (not what it carried itself), so
            // memory stays bounded by two generations
            let own = p
                .state
                .snapshot
                .iter()
                .map(|s| format!("{}.snapshot.json", s.version))
                .chain(
                    p.state
                        .roles
                        .iter()
                        .map(|(r, m)| format!("{}.{r}.json", m.version)),
                );
            for k in own {
                if let Some(e) = p.metadata.get(&k) {
                    metadata.insert(k, e.clone());
                }
            }
        }
        for (v, b) in &state.roots {
            metadata.insert(format!("{v}.root.json"), entry(b, IMMUTABLE));
        }
        if let Some((_, b)) = state.root() {
            metadata.insert("root.json".into(), entry(b, REVALIDATE));
        }
        if let Some(t) = &state.timestamp {
            metadata.insert("timestamp.json".into(), entry(&t.bytes, REVALIDATE));
        }
        if let Some(s) = &state.snapshot {
            metadata.insert(
                format!("{}.snapshot.json", s.version),
                entry(&s.bytes, IMMUTABLE),
            );
        }
        let mut targets = HashMap::new();
        // the previous state's targets too: a device mid-download keeps its content
        for st in previous.map(|p| &p.state).into_iter().chain([&state]) {
            for (role, m) in &st.roles {
                index_targets(role, &m.bytes, repo, &mut targets);
            }
        }
        for (role, m) in &state.roles {
            metadata.insert(
                format!("{}.{role}.json", m.version),
                entry(&m.bytes, IMMUTABLE),
            );
        }
        Served {
            state,
            metadata,
            targets,
        }
    }
}

fn index_targets(role: &str, bytes: &[u8], repo: &RepoDir, out: &mut HashMap<String, TargetRef>) {
    let Ok(list) = role_targets(role, bytes) else {
        return;
    };
    for (path, sha, length) in list {
        if let Ok(served) = hale_repo::layout::target_path(&path, &sha, true) {
            let etag = hyper::header::HeaderValue::from_str(&format!("\"{sha}\""))
                .unwrap_or(hyper::header::HeaderValue::from_static("\"\""));
            out.insert(
                served,
                TargetRef {
                    blob: repo.blob_path(&sha),
                    length,
                    etag,
                },
            );
        }
    }
}

/// Shared handle to what is served now.
pub type Current = Arc<std::sync::RwLock<Arc<Served>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use hale_repo::build::{self, Profile, RoleKeys};
    use hale_repo::{KeyKind, SigningKey};

    /// A state with `n` targets in top-level targets, signed by one key per role.
    fn state(n: usize) -> State {
        state_with_lives(n, 86_400, 86_400)
    }

    /// [`state`], root and targets expiring `offline` seconds from now, snapshot and timestamp
    /// `online` seconds from now.
    fn state_with_lives(n: usize, offline: i64, online: i64) -> State {
        let k = |s: u8| SigningKey::from_seed(KeyKind::Ed25519, &[s; 32]).unwrap();
        let (root_k, t_k, ts_k, s_k) = (k(1), k(2), k(3), k(4));
        let now = crate::now();
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for (r, key) in [
            ("root", &root_k),
            ("targets", &t_k),
            ("timestamp", &ts_k),
            ("snapshot", &s_k),
        ] {
            keys.insert(key.keyid(), key.public());
            roles.insert(
                r.to_string(),
                RoleKeys {
                    keyids: vec![key.keyid()],
                    threshold: 1,
                },
            );
        }
        let exp = build::expires_at(now, offline).unwrap();
        let online_exp = build::expires_at(now, online).unwrap();
        let root = hale_repo::sign::sign_new(
            &build::root(Profile::Standard, 1, &exp, &keys, &roles, true),
            &[&root_k],
        )
        .unwrap();
        let mut t = serde_json::Map::new();
        for i in 0..n {
            t.insert(
                format!("fw/{i:06}.bin"),
                build::target_entry(format!("{i}").as_bytes(), None),
            );
        }
        let targets = hale_repo::sign::sign_new(
            &build::targets(Profile::Standard, 1, &exp, &t, None),
            &[&t_k],
        )
        .unwrap();
        let meta: BTreeMap<String, u64> = [("targets".to_string(), 1)].into_iter().collect();
        let snap = hale_repo::sign::sign_new(
            &build::snapshot(Profile::Standard, 1, &online_exp, &meta),
            &[&s_k],
        )
        .unwrap();
        let ts = hale_repo::sign::sign_new(
            &build::timestamp(Profile::Standard, 1, &online_exp, 1, &snap),
            &[&ts_k],
        )
        .unwrap();
        let mut st = State::default();
        st.roots.insert(1, Bytes::from(root));
        st.roles.insert(
            "targets".into(),
            Meta {
                version: 1,
                bytes: Bytes::from(targets),
            },
        );
        st.snapshot = Some(Meta {
            version: 1,
            bytes: Bytes::from(snap),
        });
        st.timestamp = Some(Meta {
            version: 1,
            bytes: Bytes::from(ts),
        });
        st
    }

    #[test]
    fn client_check_finds_every_target_and_refuses_missing_content() {
        let st = state(20);
        let len = |_: &str| Some(1u64);
        // every entry's content is 1 or 2 bytes long ("0".."19"): lengths differ for two-digit ones
        let err = verify_as_client(None, &st, crate::now(), &len, &|_| false, None).unwrap_err();
        assert!(
            err.contains("fw/000010.bin: stored content has 1 bytes, metadata says 2"),
            "{err}"
        );
        let none = |_: &str| None;
        let err = verify_as_client(None, &st, crate::now(), &none, &|_| false, None).unwrap_err();
        assert!(err.starts_with("fw/000000.bin: content "), "{err}");
    }

    #[test]
    fn a_publish_names_at_most_a_hundred_targets_and_counts_them_all() {
        let (before, after) = (State::default(), state(150));
        let c = crate::publish::target_changes(&before, &after);
        assert_eq!(
            (
                c["added"].as_array().unwrap().len(),
                &c["added_count"],
                &c["removed_count"]
            ),
            (100, &json!(150), &json!(0))
        );
        assert_eq!(c["added"][0]["path"], "fw/000000.bin");
        let back = crate::publish::target_changes(&after, &before);
        assert_eq!(
            (
                back["removed"].as_array().unwrap().len(),
                &back["removed_count"]
            ),
            (100, &json!(150))
        );
    }

    #[test]
    fn health_fails_when_any_served_role_expired_and_warns_before_offline_roles_expire() {
        let day = 86_400;
        let roles = |list: &[(String, u64, i64)]| -> Vec<String> {
            list.iter().map(|(r, _, _)| r.clone()).collect()
        };
        // root and targets for 30 days, the online roles for a day: all well
        let st = state_with_lives(0, 30 * day, day);
        let now = crate::now();
        let (code, h) = crate::http::health(&st, now);
        assert_eq!((code.as_u16(), &h["status"]), (200, &json!("ok")));
        assert_eq!(h["warnings"], json!([]));
        assert_eq!(h["expired"], json!([]));
        assert_eq!(h["offline_expires_first"], "root");
        let left = h["offline_expires_in"].as_i64().unwrap();
        assert!((30 * day - 5..=30 * day).contains(&left), "{left}");
        // 20 days on (the timestamp re-signed meanwhile, as the server does): root and targets
        // expire within 14 days; still served, with a warning each
        let later = now + 20 * day;
        let r = ExpiryReport::of(&st, later);
        assert_eq!(roles(&r.expiring), ["root", "targets"]);
        assert_eq!(roles(&r.expired), ["timestamp", "snapshot"]);
        // offline roles expired, the online ones fresh: devices refuse every update
        let st = state_with_lives(0, 10, 40 * day);
        let (code, h) = crate::http::health(&st, now + 11);
        assert_eq!(
            (code.as_u16(), &h["status"]),
            (503, &json!("metadata_expired"))
        );
        assert_eq!(h["expired"], json!(["root", "targets"]));
        let expires = date(now + 10);
        assert_eq!(
            h["warnings"],
            json!([
                format!("root v1 expired at {expires}: devices refuse every update; renew it (`hale-sign renew DIR --role …`, sign, push)"),
                format!("targets v1 expired at {expires}: devices refuse every update; renew it (`hale-sign renew DIR --role …`, sign, push)"),
            ])
        );
        // 10 days before: warned, served
        let st = state_with_lives(0, 10 * day + 100, 40 * day);
        let (code, h) = crate::http::health(&st, now);
        assert_eq!((code.as_u16(), &h["status"]), (200, &json!("ok")));
        assert_eq!(
            h["warnings"][1],
            format!(
                "targets v1 expires at {} (in 240 h): devices refuse every update after it; renew it (`hale-sign renew DIR --role …`, sign, push)",
                date(now + 10 * day + 100)
            )
        );
        // a delegated role expired: the targets it holds are refused, not every update; 200
        let mut st = state_with_lives(0, 30 * day, day);
        let k = SigningKey::from_seed(KeyKind::Ed25519, &[9; 32]).unwrap();
        let gone = build::expires_at(now, 10).unwrap();
        let pump_b = hale_repo::sign::sign_new(
            &build::targets(Profile::Standard, 3, &gone, &serde_json::Map::new(), None),
            &[&k],
        )
        .unwrap();
        st.roles.insert(
            "pump-b".into(),
            Meta {
                version: 3,
                bytes: Bytes::from(pump_b),
            },
        );
        // not delegated (stored, unreachable): not counted
        let (code, h) = crate::http::health(&st, now + 11);
        assert_eq!(
            (code.as_u16(), &h["status"], &h["expired"]),
            (200, &json!("ok"), &json!([]))
        );
        // delegated by targets: counted
        let delegations = json!({
            "keys": {k.keyid(): k.public()},
            "roles": [{"name": "pump-b", "keyids": [k.keyid()], "threshold": 1,
                       "terminating": true, "paths": ["pump-b/*"]}],
        });
        let targets = hale_repo::sign::sign_new(
            &build::targets(
                Profile::Standard,
                1,
                &build::expires_at(now, 30 * day).unwrap(),
                &serde_json::Map::new(),
                Some(&delegations),
            ),
            &[&SigningKey::from_seed(KeyKind::Ed25519, &[2; 32]).unwrap()],
        )
        .unwrap();
        st.roles.insert(
            "targets".into(),
            Meta {
                version: 1,
                bytes: Bytes::from(targets),
            },
        );
        let (code, h) = crate::http::health(&st, now + 11);
        assert_eq!(
            (code.as_u16(), &h["status"], &h["expired"]),
            (200, &json!("delegated_role_expired"), &json!(["pump-b"]))
        );
        assert_eq!(
            h["warnings"],
            json!([format!(
                "pump-b v3 expired at {}: devices refuse the targets it holds; renew it (`hale-sign renew DIR --role …`, sign, push)",
                date(now + 10)
            )])
        );
        // the timestamp expired: its own status, as before
        let st = state_with_lives(0, 30 * day, 10);
        let (code, h) = crate::http::health(&st, now + 11);
        assert_eq!(
            (code.as_u16(), &h["status"]),
            (503, &json!("timestamp_expired"))
        );
        assert_eq!(h["expired"], json!(["timestamp", "snapshot"]));
    }

    /// Cost of the final client check for a large single-role catalog (run with --ignored).
    #[test]
    #[ignore]
    fn client_check_time_for_large_catalogs() {
        for n in [1_000, 5_000] {
            let st = state(n);
            let t0 = std::time::Instant::now();
            let lens: HashMap<String, u64> = role_targets("targets", &st.roles["targets"].bytes)
                .unwrap()
                .into_iter()
                .map(|(_, sha, len)| (sha, len))
                .collect();
            verify_as_client(
                None,
                &st,
                crate::now(),
                &|s: &str| lens.get(s).copied(),
                &|_| false,
                None,
            )
            .unwrap();
            eprintln!("{n} targets: {:?}", t0.elapsed());
        }
    }
}
