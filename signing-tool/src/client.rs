//! The TUF client workflow (spec §5) over a repository directory, with every decision made by
//! `hale_core::TrustedSet`: the root chain from `N.root.json`, timestamp, snapshot, top-level
//! targets, every delegated role verified against each delegator that leads to it (never cached
//! by name), and every target file's length and hashes. Used by `verify` and by `publish`, which
//! runs it over the repository as it will be ([`Repository::with_overlay`]: the files it is about
//! to write laid over the directory) and writes nothing a device would reject.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use hale_core::limits::MAX_DELEGATION_DEPTH;
use hale_core::metadata::{DelegatedRole, Envelope, TargetFile, Targets};
use hale_core::{Name, Role, Storage, TrustedSet};

use crate::error::{invalid, read, Result, ToolError};

/// Largest succinct-bins `bit_length` walked in full (65,536 bins).
const MAX_WALKED_BIT_LENGTH: u32 = 16;

/// What a successful verification saw.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub root_chain: Vec<u64>,
    pub root_expires: i64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    /// (delegator, role, version) for every verified delegation edge.
    pub delegated: Vec<(String, String, u64)>,
    pub target_files: usize,
    pub target_bytes: u64,
    pub firmware: usize,
    /// Key ids of every role in the final root and in every verified delegation.
    pub keyids: Vec<(String, Vec<String>)>,
}

/// The files the client workflow reads: a repository directory, and the files not yet written
/// that `publish` lays over it (by name relative to the directory, `/`-separated). Every error
/// names the file under the directory, where it is or will be.
#[derive(Debug, Clone)]
pub struct Repository<'a> {
    dir: &'a Path,
    overlay: BTreeMap<String, &'a [u8]>,
}

impl<'a> Repository<'a> {
    /// The directory as it is on disk.
    pub fn on_disk(dir: &'a Path) -> Self {
        Repository {
            dir,
            overlay: BTreeMap::new(),
        }
    }

    /// The directory as it would be with `overlay` written over it (names relative to `dir`);
    /// nothing is written.
    pub fn with_overlay(dir: &'a Path, overlay: BTreeMap<String, &'a [u8]>) -> Self {
        Repository { dir, overlay }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.overlay.contains_key(name) || self.path(name).exists()
    }

    /// The bytes of `name`, from the overlay or the directory.
    pub fn read(&self, name: &str) -> Result<Cow<'a, [u8]>> {
        match self.overlay.get(name) {
            Some(b) => Ok(Cow::Borrowed(*b)),
            None => read(&self.path(name)).map(Cow::Owned),
        }
    }

    /// A reader over `name` (a target file: streamed, not read whole).
    fn open(&self, name: &str) -> Result<Box<dyn Read + 'a>> {
        match self.overlay.get(name) {
            Some(b) => Ok(Box::new(*b)),
            None => {
                let path = self.path(name);
                let f = std::fs::File::open(&path).map_err(|e| ToolError::io(&path, e))?;
                Ok(Box::new(f))
            }
        }
    }
}

fn trust(what: impl std::fmt::Display) -> impl FnOnce(hale_core::Error) -> ToolError {
    let what = what.to_string();
    move |e| ToolError::trust(what, e)
}

/// Verify the root chain only (no timestamp yet): returns the versions applied.
pub fn verify_root_chain(repo: &Repository, trusted_root: &[u8], now: i64) -> Result<Vec<u64>> {
    let cap = capacity(repo, trusted_root.len())?;
    let mut set = TrustedSet::new(Storage::with_capacity(cap), trusted_root, now)
        .map_err(trust("trusted root"))?;
    update_roots(&mut set, repo)
}

/// Apply `roots` (each named by its file, for the error) in order on `trusted_root`, as a device
/// walks them (spec 5.3): each the next version, signed by a threshold of the root before it and
/// of its own root keys.
pub fn apply_roots(trusted_root: &[u8], roots: &[(String, &[u8])], now: i64) -> Result<()> {
    let cap = roots
        .iter()
        .map(|(_, b)| b.len())
        .fold(trusted_root.len().max(4096), usize::max);
    let mut set = TrustedSet::new(Storage::with_capacity(cap), trusted_root, now)
        .map_err(trust("trusted root"))?;
    for (name, bytes) in roots {
        set.update_root(bytes).map_err(trust(name))?;
    }
    Ok(())
}

fn update_roots(set: &mut TrustedSet<Vec<u8>>, repo: &Repository) -> Result<Vec<u64>> {
    let mut chain = vec![set.root().header.version];
    loop {
        let next = set.root().header.version + 1;
        let name = format!("{next}.root.json");
        if !repo.exists(&name) {
            break;
        }
        let bytes = repo.read(&name)?;
        set.update_root(&bytes)
            .map_err(trust(format!("{next}.root.json")))?;
        chain.push(next);
    }
    Ok(chain)
}

/// Whether `name` is a top-level role's file (root, timestamp, snapshot, top-level targets).
fn top_level_file(name: &str) -> bool {
    name == "timestamp.json"
        || name == "root.json"
        || [".root.json", ".snapshot.json", ".targets.json"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Buffer size for the top-level roles: the largest metadata file in the directory or the
/// overlay.
fn capacity(repo: &Repository, at_least: usize) -> Result<usize> {
    let mut cap = at_least.max(4096);
    for (name, bytes) in &repo.overlay {
        if top_level_file(name) {
            cap = cap.max(bytes.len());
        }
    }
    let dir = repo.dir;
    for e in std::fs::read_dir(dir).map_err(|e| ToolError::io(dir, e))? {
        let e = e.map_err(|e| ToolError::io(dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if top_level_file(name) {
            let len = e
                .metadata()
                .map_err(|err| ToolError::io(&e.path(), err))?
                .len();
            cap = cap.max(usize::try_from(len).unwrap_or(usize::MAX));
        }
    }
    Ok(cap)
}

/// The whole client workflow over `repo`, starting from `trusted_root`, at time `now`.
pub fn verify_repository(repo: &Repository, trusted_root: &[u8], now: i64) -> Result<Summary> {
    if !repo.dir.is_dir() {
        return Err(invalid(format!("{}: not a directory", repo.dir.display())));
    }
    let cap = capacity(repo, trusted_root.len())?;
    let mut set = TrustedSet::new(Storage::with_capacity(cap), trusted_root, now)
        .map_err(trust("trusted root"))?;
    let mut s = Summary {
        root_chain: update_roots(&mut set, repo)?,
        ..Summary::default()
    };
    s.root_expires = set.root().header.expires;

    if !repo.exists("timestamp.json") {
        return Err(invalid(format!(
            "{}: no timestamp.json (publish with --snapshot-key and --timestamp-key, or let the server sign them)",
            repo.dir.display()
        )));
    }
    set.update_timestamp(&repo.read("timestamp.json")?)
        .map_err(trust("timestamp.json"))?;
    let snap_v = set
        .timestamp()
        .map(|t| t.snapshot.version)
        .ok_or_else(|| invalid("timestamp vanished"))?;
    let snap_file = format!("{snap_v}.snapshot.json");
    set.update_snapshot(&repo.read(&snap_file)?)
        .map_err(trust(&snap_file))?;
    let targets_v = set
        .delegated_meta("targets")
        .map_err(trust("snapshot"))?
        .version;
    let targets_file = format!("{targets_v}.targets.json");
    set.update_targets(&repo.read(&targets_file)?)
        .map_err(trust(&targets_file))?;
    s.timestamp = set.timestamp().map(|t| t.header.version).unwrap_or(0);
    s.snapshot = snap_v;
    s.targets = targets_v;

    // root's roles, for the demo-key warning
    let root_bytes = set.stored(Role::Root).unwrap_or(&[]).to_vec();
    s.keyids.extend(role_keyids_of_root(&root_bytes));

    let top_bytes = set.stored(Role::Targets).unwrap_or(&[]).to_vec();
    let mut verified: Vec<(String, Vec<u8>)> = Vec::new();
    {
        let env = Envelope::parse(&top_bytes, "targets").map_err(trust(&targets_file))?;
        let top =
            Targets::parse(&env.signed, Name::new("targets")).map_err(trust(&targets_file))?;
        let mut seen = BTreeSet::new();
        walk(
            &set,
            repo,
            &top,
            "targets",
            1,
            &mut seen,
            &mut verified,
            &mut s,
        )?;
    }
    verified.push(("targets".into(), top_bytes));
    check_targets(repo, &verified, &mut s)?;
    Ok(s)
}

fn role_keyids_of_root(bytes: &[u8]) -> Vec<(String, Vec<String>)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    v.pointer("/signed/roles")
        .and_then(|r| r.as_object())
        .map(|roles| {
            roles
                .iter()
                .map(|(r, e)| (r.clone(), keyid_list(e.get("keyids"))))
                .collect()
        })
        .unwrap_or_default()
}

fn keyid_list(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Depth-first over the delegations of `delegator`, verifying each child against it.
#[allow(clippy::too_many_arguments)]
fn walk(
    set: &TrustedSet<Vec<u8>>,
    repo: &Repository,
    delegator: &Targets<'_>,
    dname: &str,
    depth: usize,
    seen: &mut BTreeSet<(String, String)>,
    out: &mut Vec<(String, Vec<u8>)>,
    s: &mut Summary,
) -> Result<()> {
    let Some(dels) = delegator.delegations else {
        return Ok(());
    };
    let mut children: Vec<String> = Vec::new();
    if let Some(roles) = dels.roles {
        for v in roles.iter() {
            let o = v
                .as_object()
                .ok_or_else(|| invalid(format!("{dname}: malformed delegations.roles")))?;
            let r = DelegatedRole::parse(&o, Name::new(dname)).map_err(trust(dname))?;
            let ids: Vec<String> = r
                .keyids
                .iter()
                .filter_map(|k| k.as_str().map(|k| k.to_string()))
                .collect();
            s.keyids
                .push((format!("{} (delegated by {dname})", r.name), ids));
            children.push(r.name.to_string());
        }
    }
    if let Some(sr) = dels.succinct {
        if sr.bit_length > MAX_WALKED_BIT_LENGTH {
            return Err(invalid(format!(
                "{dname}: succinct bins with bit_length {} are too many to walk",
                sr.bit_length
            )));
        }
        let ids: Vec<String> = sr
            .keyids
            .iter()
            .filter_map(|k| k.as_str().map(|k| k.to_string()))
            .collect();
        s.keyids.push((
            format!("{}-* bins (delegated by {dname})", sr.name_prefix),
            ids,
        ));
        let mut buf = [0u8; hale_core::limits::MAX_NAME_LEN];
        for bin in 0..(1u32 << sr.bit_length) {
            let name = sr
                .bin_name(bin, &mut buf)
                .ok_or_else(|| invalid(format!("{dname}: bin name too long")))?;
            children.push(name.to_string());
        }
    }
    for child in children {
        if !seen.insert((dname.to_string(), child.clone())) {
            continue;
        }
        if depth > MAX_DELEGATION_DEPTH {
            return Err(ToolError::trust(
                &child,
                hale_core::Error::DelegationTooDeep {
                    role: Name::new(&child),
                },
            ));
        }
        hale_core::metadata::check_delegated_role_name(&child).map_err(trust(&child))?;
        let meta = set
            .delegated_meta(&child)
            .map_err(trust(format!("{child} (delegated by {dname})")))?;
        let version = meta.version;
        let file = format!("{version}.{child}.json");
        let bytes = repo.read(&file)?.into_owned();
        {
            let t = set
                .verify_delegated(delegator, &child, &bytes)
                .map_err(trust(format!("{file} (delegated by {dname})")))?;
            walk(set, repo, &t, &child, depth + 1, seen, out, s)?;
        }
        s.delegated
            .push((dname.to_string(), child.clone(), version));
        out.push((child, bytes));
    }
    Ok(())
}

/// Every target of every verified role: the file under its consistent name, its length and
/// hashes (hale-core's streaming checker), and firmware policy fields when present.
fn check_targets(repo: &Repository, roles: &[(String, Vec<u8>)], s: &mut Summary) -> Result<()> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let chunk = roles.len().div_ceil(workers).max(1);
    let results: Vec<Result<(usize, u64, usize)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = roles
            .chunks(chunk)
            .map(|part| sc.spawn(move || check_roles(repo, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(invalid("target check panicked")))
            })
            .collect()
    });
    for r in results {
        let (n, bytes, fw) = r?;
        s.target_files += n;
        s.target_bytes += bytes;
        s.firmware += fw;
    }
    Ok(())
}

fn check_roles(repo: &Repository, roles: &[(String, Vec<u8>)]) -> Result<(usize, u64, usize)> {
    let (mut n, mut total, mut fw) = (0usize, 0u64, 0usize);
    let mut buf = vec![0u8; 64 * 1024];
    for (role, bytes) in roles {
        let name = Name::new(role);
        let env = Envelope::parse(bytes, role).map_err(trust(role))?;
        let t = Targets::parse(&env.signed, name).map_err(trust(role))?;
        for (k, v) in t.targets.members() {
            let target = k.to_string();
            let o = v
                .as_object()
                .ok_or_else(|| invalid(format!("{role}: target {target:?} is not an object")))?;
            let tf = TargetFile::parse(&o, name).map_err(trust(role))?;
            let sha = tf.sha256().ok_or_else(|| {
                invalid(format!(
                    "{role}: target {target:?} lists no sha256 (targets are served by sha256)"
                ))
            })?;
            let rel = hale_repo::layout::target_path(&target, &hex::encode(sha), true)?;
            check_file(repo, &rel, &tf, &target, &mut buf)?;
            if let Some(c) = tf.custom {
                if c.get("hardware").ok().flatten().is_some() {
                    hale_core::policy::parse_firmware(Some(&c)).map_err(|e| {
                        ToolError::trust(format!("{role}: target {target}"), e.into())
                    })?;
                    fw += 1;
                }
            }
            n += 1;
            total += tf.length;
        }
    }
    Ok((n, total, fw))
}

fn check_file(
    repo: &Repository,
    rel: &str,
    tf: &TargetFile<'_>,
    target: &str,
    buf: &mut [u8],
) -> Result<()> {
    let path = repo.path(rel);
    let what = |e| ToolError::trust(format!("target {target} ({})", path.display()), e);
    let mut h = tf.hasher(Name::new(target)).map_err(what)?;
    let mut f = repo.open(rel)?;
    loop {
        let n = f.read(buf).map_err(|e| ToolError::io(&path, e))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[])).map_err(what)?;
    }
    h.finish().map_err(what)
}

/// The demo keys among `keyids` lists, per role label.
pub fn demo_hits(keyids: &[(String, Vec<String>)]) -> Vec<(String, Vec<&'static str>)> {
    keyids
        .iter()
        .filter_map(|(role, ids)| {
            let names: Vec<&'static str> =
                ids.iter().filter_map(|k| crate::demo::name_of(k)).collect();
            (!names.is_empty()).then(|| (role.clone(), names))
        })
        .collect()
}
