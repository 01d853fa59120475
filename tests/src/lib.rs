#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Shared test machinery for Hale's attack suite and interop tests.
//!
//! [`RepoSim`] is an in-memory TUF repository (after python-tuf's `repository_simulator.py`):
//! deterministic keys from fixed seeds, metadata built with `hale-repo`, every file served from a
//! map so a test can tamper with any byte. [`Client`] is the thinnest possible driver of
//! `hale-core`'s trusted set over such a map: it persists what verified, exactly like a device,
//! so tests can assert that a rejected update left the trusted state where it was.

pub mod peers;

use std::collections::BTreeMap;

use hale_core::trusted::{RoleSource, SearchError};
use hale_core::{Error, Freshness, Name, Role, Storage, TrustedSet, Update};
use hale_repo::build::{self, Profile, RoleKeys};
use hale_repo::keys::{KeyKind, SigningKey};
use hale_repo::sign;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// 2030-01-01T00:00:00Z: the simulated "now" (metadata expiry is relative to it).
pub const NOW: i64 = 1_893_456_000;
pub const DAY: i64 = 86_400;

/// A key derived from a name (deterministic fixtures).
pub fn key(name: &str, kind: KeyKind) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("hale-test-{name}").as_bytes()).into();
    SigningKey::from_seed(kind, &seed).unwrap_or_else(|| key(&format!("{name}'"), kind))
}

/// One role's state in the simulator.
#[derive(Debug, Clone)]
pub struct RoleState {
    pub version: u64,
    pub expires: i64,
    pub keys: Vec<SigningKey>,
    pub threshold: u32,
    /// for targets-type roles
    pub targets: Map<String, Value>,
    pub delegations: Option<Value>,
    /// extra fields put into `signed` (unknown-field tests)
    pub extra: Map<String, Value>,
    /// keys that actually sign (defaults to `keys`)
    pub signers: Option<Vec<SigningKey>>,
}

impl RoleState {
    pub fn new(keys: Vec<SigningKey>, threshold: u32, expires: i64) -> Self {
        RoleState {
            version: 1,
            expires,
            keys,
            threshold,
            targets: Map::new(),
            delegations: None,
            extra: Map::new(),
            signers: None,
        }
    }
    fn role_keys(&self) -> RoleKeys {
        RoleKeys {
            keyids: self.keys.iter().map(|k| k.keyid()).collect(),
            threshold: self.threshold,
        }
    }
    fn signing(&self) -> Vec<&SigningKey> {
        self.signers.as_ref().unwrap_or(&self.keys).iter().collect()
    }
}

/// An in-memory repository.
#[derive(Debug, Clone)]
pub struct RepoSim {
    pub profile: Profile,
    pub root: RoleState,
    pub timestamp: RoleState,
    pub snapshot: RoleState,
    pub targets: RoleState,
    /// delegated roles by name
    pub delegated: BTreeMap<String, RoleState>,
    /// served files
    pub files: BTreeMap<String, Vec<u8>>,
    /// target contents by path
    pub contents: BTreeMap<String, Vec<u8>>,
    /// roles whose content changed since the last publish
    dirty: Vec<String>,
    /// root versions signed by the previous root keys too (for rotations)
    previous_root_signers: Option<(Vec<SigningKey>, u32)>,
}

impl RepoSim {
    /// A repository with one key per role (targets ECDSA, the rest ed25519) — published once.
    pub fn new() -> Self {
        Self::with_profile(Profile::Standard)
    }

    /// As [`new`](Self::new); the `Compat` profile (rust-tuf) uses ed25519 keys only.
    pub fn with_profile(profile: Profile) -> Self {
        let targets_kind = if profile == Profile::Compat {
            KeyKind::Ed25519
        } else {
            KeyKind::EcdsaP256
        };
        let mut sim = RepoSim {
            profile,
            root: RoleState::new(vec![key("root-1", KeyKind::Ed25519)], 1, NOW + 365 * DAY),
            timestamp: RoleState::new(vec![key("timestamp", KeyKind::Ed25519)], 1, NOW + DAY),
            snapshot: RoleState::new(vec![key("snapshot", KeyKind::Ed25519)], 1, NOW + 7 * DAY),
            targets: RoleState::new(vec![key("targets", targets_kind)], 1, NOW + 90 * DAY),
            delegated: BTreeMap::new(),
            files: BTreeMap::new(),
            contents: BTreeMap::new(),
            dirty: vec![],
            previous_root_signers: None,
        };
        sim.write_root();
        sim.publish();
        sim
    }

    pub fn root_bytes(&self, version: u64) -> Vec<u8> {
        self.files[&format!("{version}.root.json")].clone()
    }

    /// Bytes of the trusted root a device ships with (version 1).
    pub fn initial_root(&self) -> Vec<u8> {
        self.root_bytes(1)
    }

    fn root_signed(&self) -> Value {
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for (name, st) in [
            ("root", &self.root),
            ("timestamp", &self.timestamp),
            ("snapshot", &self.snapshot),
            ("targets", &self.targets),
        ] {
            for k in &st.keys {
                keys.insert(k.keyid(), k.public());
            }
            roles.insert(name.to_string(), st.role_keys());
        }
        let expires = build::expires_at(self.root.expires, 0).unwrap_or_default();
        let mut v = build::root(
            self.profile,
            self.root.version,
            &expires,
            &keys,
            &roles,
            true,
        );
        merge(&mut v, &self.root.extra);
        v
    }

    /// Sign and store the current root as `N.root.json` (and `root.json`).
    pub fn write_root(&mut self) {
        let signed = self.root_signed();
        let mut signers: Vec<&SigningKey> = self.root.signing();
        if let Some((prev, _)) = &self.previous_root_signers {
            for k in prev {
                if !signers.iter().any(|s| s.keyid() == k.keyid()) {
                    signers.push(k);
                }
            }
        }
        let bytes = sign::sign_new(&signed, &signers).expect("sign root");
        self.files
            .insert(format!("{}.root.json", self.root.version), bytes.clone());
        self.files.insert("root.json".into(), bytes);
    }

    /// New root version with `change` applied; signed by the old and the new root keys.
    pub fn rotate_root(&mut self, change: impl FnOnce(&mut RepoSim)) {
        self.previous_root_signers = Some((
            self.root.signing().into_iter().cloned().collect(),
            self.root.threshold,
        ));
        change(self);
        self.root.version += 1;
        self.write_root();
        self.previous_root_signers = None;
    }

    /// Add (or replace) a target in `role` ("targets" or a delegated role).
    pub fn add_target(&mut self, role: &str, path: &str, content: &[u8], custom: Option<Value>) {
        let entry = build::target_entry(content, custom);
        let sha = hex::encode(Sha256::digest(content));
        self.contents.insert(path.to_string(), content.to_vec());
        let file = hale_repo::layout::target_path(path, &sha, true).expect("safe test path");
        self.files.insert(file, content.to_vec());
        self.role_mut(role).targets.insert(path.to_string(), entry);
        self.mark(role);
    }

    pub fn role_mut(&mut self, role: &str) -> &mut RoleState {
        match role {
            "targets" => &mut self.targets,
            other => self
                .delegated
                .get_mut(other)
                .unwrap_or_else(|| panic!("no role {other}")),
        }
    }

    pub fn mark(&mut self, role: &str) {
        if !self.dirty.iter().any(|d| d == role) {
            self.dirty.push(role.to_string());
        }
    }

    /// Delegate from `from` to a new role `name` with `paths` (glob patterns).
    pub fn delegate(
        &mut self,
        from: &str,
        name: &str,
        paths: &[&str],
        terminating: bool,
        keys: Vec<SigningKey>,
        threshold: u32,
    ) {
        let entry = json!({
            "name": name,
            "keyids": keys.iter().map(|k| k.keyid()).collect::<Vec<_>>(),
            "threshold": threshold,
            "terminating": terminating,
            "paths": paths,
        });
        let delegator = self.role_mut(from);
        let d = delegator
            .delegations
            .get_or_insert_with(|| json!({"keys": {}, "roles": []}));
        for k in &keys {
            d["keys"][k.keyid()] = k.public();
        }
        if let Some(roles) = d["roles"].as_array_mut() {
            roles.push(entry);
        }
        self.mark(from);
        self.delegated.insert(
            name.to_string(),
            RoleState::new(keys, threshold, NOW + 90 * DAY),
        );
        self.mark(name);
    }

    /// Succinct hash bins from `from`: 2^bit_length roles signed by `key`.
    pub fn delegate_bins(&mut self, from: &str, bit_length: u32, key: SigningKey) {
        let mut keys = BTreeMap::new();
        keys.insert(key.keyid(), key.public());
        let d = build::succinct_delegation(&keys, &[key.keyid()], 1, bit_length, "bin");
        self.role_mut(from).delegations = Some(d);
        self.mark(from);
        for bin in 0..(1u32 << bit_length) {
            let name = build::bin_name(bin, bit_length, "bin");
            self.delegated.insert(
                name.clone(),
                RoleState::new(vec![key.clone()], 1, NOW + 90 * DAY),
            );
            self.mark(&name);
        }
    }

    fn targets_signed(&self, st: &RoleState) -> Value {
        let expires = build::expires_at(st.expires, 0).unwrap_or_default();
        let mut v = build::targets(
            self.profile,
            st.version,
            &expires,
            &st.targets,
            st.delegations.as_ref(),
        );
        merge(&mut v, &st.extra);
        v
    }

    /// Bump and sign every changed targets role, then snapshot and timestamp.
    pub fn publish(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for role in &dirty {
            let first = !self
                .files
                .keys()
                .any(|f| f.ends_with(&format!(".{role}.json")));
            let st = self.role_mut(role);
            if !first {
                st.version += 1;
            }
        }
        for role in std::iter::once("targets".to_string()).chain(self.delegated.keys().cloned()) {
            let st = if role == "targets" {
                &self.targets
            } else {
                &self.delegated[&role]
            };
            let name = format!("{}.{role}.json", st.version);
            if self.files.contains_key(&name) && !dirty.contains(&role) {
                continue;
            }
            let bytes =
                sign::sign_new(&self.targets_signed(st), &st.signing()).expect("sign targets");
            self.files.insert(name, bytes);
        }
        self.snapshot.version +=
            u64::from(self.files.keys().any(|f| f.ends_with(".snapshot.json")));
        self.write_snapshot();
        self.timestamp.version += u64::from(self.files.contains_key("timestamp.json"));
        self.write_timestamp();
    }

    /// Snapshot naming the current version of every targets role.
    pub fn write_snapshot(&mut self) {
        let mut meta = BTreeMap::new();
        meta.insert("targets".to_string(), self.targets.version);
        for (n, st) in &self.delegated {
            meta.insert(n.clone(), st.version);
        }
        let expires = build::expires_at(self.snapshot.expires, 0).unwrap_or_default();
        let mut v = build::snapshot(self.profile, self.snapshot.version, &expires, &meta);
        merge(&mut v, &self.snapshot.extra);
        let bytes = sign::sign_new(&v, &self.snapshot.signing()).expect("sign snapshot");
        self.files
            .insert(format!("{}.snapshot.json", self.snapshot.version), bytes);
    }

    /// Timestamp naming the current snapshot.
    pub fn write_timestamp(&mut self) {
        let snap = self.files[&format!("{}.snapshot.json", self.snapshot.version)].clone();
        let expires = build::expires_at(self.timestamp.expires, 0).unwrap_or_default();
        let mut v = build::timestamp(
            self.profile,
            self.timestamp.version,
            &expires,
            self.snapshot.version,
            &snap,
        );
        merge(&mut v, &self.timestamp.extra);
        let bytes = sign::sign_new(&v, &self.timestamp.signing()).expect("sign timestamp");
        self.files.insert("timestamp.json".into(), bytes);
    }

    /// The served target file for `path`.
    pub fn target_file_name(&self, path: &str) -> String {
        let sha = hex::encode(Sha256::digest(&self.contents[path]));
        hale_repo::layout::target_path(path, &sha, true).expect("safe path")
    }

    /// Write every served file into `dir`.
    pub fn write_to(&self, dir: &std::path::Path) {
        for (name, bytes) in &self.files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, bytes).expect("write");
        }
    }
}

impl Default for RepoSim {
    fn default() -> Self {
        Self::new()
    }
}

fn merge(v: &mut Value, extra: &Map<String, Value>) {
    if let Some(o) = v.as_object_mut() {
        for (k, x) in extra {
            o.insert(k.clone(), x.clone());
        }
    }
}

/// Replace the `signed` part of metadata, keeping the signatures (now stale).
pub fn tamper_signed(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).expect("json");
    f(&mut doc["signed"]);
    serde_json::to_vec(&doc).expect("json")
}

/// Re-sign metadata with `keys` after changing `signed`.
pub fn resign(bytes: &[u8], keys: &[&SigningKey], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).expect("json");
    f(&mut doc["signed"]);
    sign::sign_new(&doc["signed"], keys).expect("sign")
}

/// What a client trusts, as versions (for "nothing changed" assertions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trusted {
    pub root: u64,
    pub timestamp: Option<u64>,
    pub snapshot: Option<u64>,
    pub targets: Option<u64>,
}

/// Fetch errors of the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    NotFound(String),
    TooLarge(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A refresh or download failure: trust or transport, kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    Trust(Error),
    Fetch(FetchError),
    NotFound(String),
}

impl From<Error> for ClientError {
    fn from(e: Error) -> Self {
        ClientError::Trust(e)
    }
}

impl From<SearchError<FetchError>> for ClientError {
    fn from(e: SearchError<FetchError>) -> Self {
        match e {
            SearchError::Trust(t) => ClientError::Trust(t),
            SearchError::Fetch(f) => ClientError::Fetch(f),
        }
    }
}

/// The bound a client applies to metadata of unknown length (endless-data defence).
pub const MAX_METADATA: usize = 512 * 1024;

/// A device-like client: persists verified top-level metadata between refreshes.
#[derive(Debug, Clone)]
pub struct Client {
    pub root: Vec<u8>,
    pub timestamp: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
    pub targets: Option<Vec<u8>>,
    pub max_root_rotations: u32,
    /// names of every file fetched in the last refresh
    pub fetched: Vec<String>,
    /// what hale-core's `TrustedSet` itself held when the last refresh ended, refused or not
    /// (`None` before the first refresh, or when the trusted root did not load): the client
    /// persists only a whole successful refresh, so "nothing changed" after a refusal is asserted
    /// on this, the core's own state
    pub core: Option<CoreState>,
}

/// The roles a `TrustedSet` stores, as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreState {
    pub root: Vec<u8>,
    pub timestamp: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
    pub targets: Option<Vec<u8>>,
}

impl CoreState {
    fn of(set: &TrustedSet<Vec<u8>>) -> Self {
        CoreState {
            root: set.stored(Role::Root).expect("root").to_vec(),
            timestamp: set.stored(Role::Timestamp).map(<[u8]>::to_vec),
            snapshot: set.stored(Role::Snapshot).map(<[u8]>::to_vec),
            targets: set.stored(Role::Targets).map(<[u8]>::to_vec),
        }
    }

    /// The stored bytes of `role`.
    pub fn stored(&self, role: Role) -> Option<&[u8]> {
        match role {
            Role::Root => Some(&self.root),
            Role::Timestamp => self.timestamp.as_deref(),
            Role::Snapshot => self.snapshot.as_deref(),
            Role::Targets => self.targets.as_deref(),
        }
    }

    /// The versions of what the core stores.
    pub fn versions(&self) -> Trusted {
        versions(&self.root, &self.timestamp, &self.snapshot, &self.targets)
    }
}

fn versions(
    root: &[u8],
    timestamp: &Option<Vec<u8>>,
    snapshot: &Option<Vec<u8>>,
    targets: &Option<Vec<u8>>,
) -> Trusted {
    let v = |b: &Option<Vec<u8>>, t: &'static str| {
        b.as_ref().map(|b| {
            hale_core::metadata::peek_header(b, t)
                .expect("stored")
                .version
        })
    };
    Trusted {
        root: hale_core::metadata::peek_header(root, "root")
            .expect("stored root")
            .version,
        timestamp: v(timestamp, "timestamp"),
        snapshot: v(snapshot, "snapshot"),
        targets: v(targets, "targets"),
    }
}

struct MapSource<'a> {
    files: &'a BTreeMap<String, Vec<u8>>,
    fetched: &'a mut Vec<String>,
}

impl RoleSource for MapSource<'_> {
    type Buf = Vec<u8>;
    type Error = FetchError;
    fn fetch_role(
        &mut self,
        name: &str,
        meta: &hale_core::metadata::MetaFile<'_>,
    ) -> Result<Vec<u8>, FetchError> {
        let file = format!("{}.{name}.json", meta.version);
        let limit = meta.length.map_or(MAX_METADATA, |l| l as usize);
        fetch(self.files, &file, limit, self.fetched)
    }
}

fn fetch(
    files: &BTreeMap<String, Vec<u8>>,
    name: &str,
    limit: usize,
    log: &mut Vec<String>,
) -> Result<Vec<u8>, FetchError> {
    log.push(name.to_string());
    let b = files
        .get(name)
        .ok_or_else(|| FetchError::NotFound(name.to_string()))?;
    if b.len() > limit {
        return Err(FetchError::TooLarge(name.to_string()));
    }
    Ok(b.clone())
}

impl Client {
    pub fn new(trusted_root: Vec<u8>) -> Self {
        Client {
            root: trusted_root,
            timestamp: None,
            snapshot: None,
            targets: None,
            max_root_rotations: 64,
            fetched: vec![],
            core: None,
        }
    }

    /// Versions of what the client trusts now (persisted by the last successful refresh).
    pub fn trusted(&self) -> Trusted {
        versions(&self.root, &self.timestamp, &self.snapshot, &self.targets)
    }

    /// Versions of what hale-core's `TrustedSet` held when the last refresh ended, refused or
    /// not (panics before a refresh loaded the trusted root).
    pub fn core(&self) -> Trusted {
        self.core
            .as_ref()
            .expect("a refresh loaded the trusted root")
            .versions()
    }

    /// The bytes of `role` hale-core's `TrustedSet` held when the last refresh ended.
    pub fn core_stored(&self, role: Role) -> Option<&[u8]> {
        self.core
            .as_ref()
            .expect("a refresh loaded the trusted root")
            .stored(role)
    }

    /// The spec §5 workflow over `files` at time `now`; on success the new state is persisted,
    /// on failure nothing is. Either way [`Client::core`] is what the `TrustedSet` kept.
    pub fn refresh(
        &mut self,
        files: &BTreeMap<String, Vec<u8>>,
        now: i64,
    ) -> Result<TrustedSet<Vec<u8>>, ClientError> {
        self.fetched.clear();
        self.core = None;
        let mut set = TrustedSet::new(Storage::with_capacity(MAX_METADATA), &self.root, now)?
            .with_max_root_rotations(self.max_root_rotations);
        let r = self.refresh_steps(&mut set, files);
        self.core = Some(CoreState::of(&set));
        r?;
        // persist only now: the whole refresh verified
        self.root = set.stored(Role::Root).expect("root").to_vec();
        self.timestamp = set.stored(Role::Timestamp).map(<[u8]>::to_vec);
        self.snapshot = set.stored(Role::Snapshot).map(<[u8]>::to_vec);
        self.targets = set.stored(Role::Targets).map(<[u8]>::to_vec);
        Ok(set)
    }

    fn refresh_steps(
        &mut self,
        set: &mut TrustedSet<Vec<u8>>,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), ClientError> {
        loop {
            let next =
                hale_core::metadata::peek_header(set.stored(Role::Root).unwrap_or(&[]), "root")?
                    .version
                    + 1;
            match fetch(
                files,
                &format!("{next}.root.json"),
                MAX_METADATA,
                &mut self.fetched,
            ) {
                Ok(b) => {
                    set.update_root(&b)?;
                }
                Err(FetchError::NotFound(_)) => break,
                Err(e) => return Err(ClientError::Fetch(e)),
            }
        }
        if let Some(ts) = &self.timestamp {
            // a stored timestamp that no longer verifies (rotated keys) is dropped
            let _ = set.load_trusted_timestamp(ts);
        }
        let ts = fetch(files, "timestamp.json", MAX_METADATA, &mut self.fetched)
            .map_err(ClientError::Fetch)?;
        set.update_timestamp(&ts)?;
        let mut fresh = Freshness::Stale;
        if let Some(s) = &self.snapshot {
            if let Ok(f) = set.load_trusted_snapshot(s) {
                fresh = f;
            }
        }
        if fresh == Freshness::Stale {
            let meta = set.timestamp().expect("timestamp loaded").snapshot;
            let limit = meta.length.map_or(MAX_METADATA, |l| l as usize);
            let name = format!("{}.snapshot.json", meta.version);
            let s = fetch(files, &name, limit, &mut self.fetched).map_err(ClientError::Fetch)?;
            set.update_snapshot(&s)?;
        }
        let local_ok = match &self.targets {
            Some(t) => set.update_targets(t).is_ok(),
            None => false,
        };
        if !local_ok {
            let meta = set.delegated_meta("targets")?;
            let (v, limit) = (
                meta.version,
                meta.length.map_or(MAX_METADATA, |l| l as usize),
            );
            let t = fetch(
                files,
                &format!("{v}.targets.json"),
                limit,
                &mut self.fetched,
            )
            .map_err(ClientError::Fetch)?;
            set.update_targets(&t)?;
        }
        Ok(())
    }

    /// Refresh, find `path` through the delegations, download and check it.
    pub fn download(
        &mut self,
        files: &BTreeMap<String, Vec<u8>>,
        path: &str,
        now: i64,
    ) -> Result<Vec<u8>, ClientError> {
        let set = self.refresh(files, now)?;
        let mut log = std::mem::take(&mut self.fetched);
        // the log is kept whatever the outcome: tests check what a failed search fetched
        let result = Self::find_and_fetch(&set, files, path, &mut log);
        self.fetched = log;
        result
    }

    fn find_and_fetch(
        set: &TrustedSet<Vec<u8>>,
        files: &BTreeMap<String, Vec<u8>>,
        path: &str,
        log: &mut Vec<String>,
    ) -> Result<Vec<u8>, ClientError> {
        let found = set
            .find_target(
                path,
                &mut MapSource {
                    files,
                    fetched: &mut *log,
                },
            )?
            .ok_or_else(|| ClientError::NotFound(path.to_string()))?;
        let tf = found.file(path)?;
        let sha = tf.sha256().map(hex::encode).unwrap_or_default();
        hale_core::metadata::check_target_path(path)?;
        let name = hale_repo::layout::target_path(path, &sha, true)
            .map_err(|_| ClientError::NotFound(path.to_string()))?;
        let bytes = fetch(files, &name, usize::MAX, log).map_err(ClientError::Fetch)?;
        // streamed check, as a device does it: refuses as soon as the data passes the length
        let mut h = tf.hasher(Name::new(path))?;
        for chunk in bytes.chunks(4096) {
            h.update(chunk)?;
        }
        h.finish()?;
        Ok(bytes)
    }
}

/// Check an `Update` result is `Updated`.
pub fn updated(u: Update) -> u64 {
    match u {
        Update::Updated { version } => version,
        Update::Unchanged { version } => panic!("expected an update, got unchanged at {version}"),
    }
}
