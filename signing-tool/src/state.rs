//! The state of a repository working directory: for every role, its *effective* metadata — the
//! staged copy when one is being signed, else the latest published version — and who may sign
//! it. Who signed what is always computed by `hale_core::verify::check_signatures`; this module
//! only finds the delegator bytes to hand it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hale_core::metadata::{DelegatedRole, Envelope, Root, Snapshot, Targets, Timestamp};
use hale_core::verify::{check_signatures, Report};
use hale_core::Name;
use hale_repo::build::Profile;
use serde_json::{json, Value};

use crate::config::{repository_dir, staged_dir, Config};
use crate::durable::Batch;
use crate::error::{invalid, read, Result, ToolError};

pub const TOP_LEVEL: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// The `'static` name of a top-level role (hale-core's `Root::role` takes one).
pub fn top_level(name: &str) -> Option<&'static str> {
    TOP_LEVEL.iter().copied().find(|r| *r == name)
}

/// One role's metadata as it stands.
#[derive(Debug, Clone)]
pub struct Meta {
    pub name: String,
    pub bytes: Vec<u8>,
    pub signed: Value,
    pub version: u64,
    pub staged: bool,
    pub path: PathBuf,
}

impl Meta {
    pub fn from_bytes(name: &str, bytes: Vec<u8>, path: &Path, staged: bool) -> Result<Self> {
        let mut doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| ToolError::json(path, e))?;
        let signed = doc.get_mut("signed").map(Value::take).ok_or_else(|| {
            invalid(format!(
                "{}: no `signed` object (not TUF metadata)",
                path.display()
            ))
        })?;
        let version = signed
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid(format!("{}: `signed.version` missing", path.display())))?;
        Ok(Meta {
            name: name.to_string(),
            bytes,
            signed,
            version,
            staged,
            path: path.to_path_buf(),
        })
    }

    pub fn kind(&self) -> &str {
        self.signed
            .get("_type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn expires(&self) -> &str {
        self.signed
            .get("expires")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    /// Why devices would refuse this file for its expiry at `now` (hale-core's rule), if they
    /// would.
    pub fn expired(&self, now: i64) -> Option<String> {
        match hale_core::time::parse_expires(self.expires().as_bytes()) {
            None => Some(format!(
                "has no valid expiry ({:?}; expected YYYY-MM-DDTHH:MM:SSZ)",
                self.expires()
            )),
            Some(t) if hale_core::time::is_expired(t, now) => {
                Some(format!("expired at {}", self.expires()))
            }
            Some(_) => None,
        }
    }
}

/// Who authorises a role's signatures: root (for top-level roles), the previous root (for a new
/// root version), or a delegating targets role.
#[derive(Debug, Clone)]
pub struct Authority {
    pub label: String,
    /// "root" or the delegating role's name.
    pub delegator: String,
    pub bytes: Vec<u8>,
}

/// Refuse metadata `env_bytes` whose body is not what `role` holds, as a client parses it (a
/// file is named by its role: a copy renamed, or the wrong file copied over, must not be signed
/// or reported as another role).
pub fn check_body(role: &str, env_bytes: &[u8]) -> Result<()> {
    let what = |e| ToolError::trust(role.to_string(), e);
    let env = Envelope::parse(env_bytes, role).map_err(what)?;
    match role {
        "root" => Root::parse(&env.signed).map(drop),
        "timestamp" => Timestamp::parse(&env.signed).map(drop),
        "snapshot" => Snapshot::parse(&env.signed).map(drop),
        _ => Targets::parse(&env.signed, Name::new(role)).map(drop),
    }
    .map_err(what)
}

impl Authority {
    /// hale-core's per-key report of `env_bytes` (metadata of `role`) against this authority.
    pub fn report(&self, role: &str, env_bytes: &[u8]) -> Result<Report> {
        let what = |e| ToolError::trust(format!("{role} ({})", self.label), e);
        let env = Envelope::parse(env_bytes, role).map_err(what)?;
        if self.delegator == "root" {
            let top = top_level(role)
                .ok_or_else(|| invalid(format!("{role} is not a top-level role")))?;
            let renv = Envelope::parse(&self.bytes, "root").map_err(what)?;
            let root = Root::parse(&renv.signed).map_err(what)?;
            let keys = root.role(top).map_err(what)?;
            return check_signatures(&env, &keys).map_err(what);
        }
        let denv = Envelope::parse(&self.bytes, &self.delegator).map_err(what)?;
        let d = Targets::parse(&denv.signed, Name::new(&self.delegator)).map_err(what)?;
        let dels = d
            .delegations
            .ok_or_else(|| invalid(format!("{} delegates nothing", self.delegator)))?;
        let keys = if let Some(roles) = dels.roles {
            roles
                .iter()
                .filter_map(|v| v.as_object())
                .filter_map(|o| DelegatedRole::parse(&o, Name::new(&self.delegator)).ok())
                .find(|r| r.name.eq_str(role))
                .map(|r| r.keys(dels.keys))
                .ok_or_else(|| invalid(format!("{} does not delegate to {role}", self.delegator)))?
        } else if let Some(s) = dels.succinct {
            s.keys(dels.keys, role)
        } else {
            return Err(invalid(format!("{} delegates nothing", self.delegator)));
        };
        check_signatures(&env, &keys).map_err(what)
    }
}

/// Is `name` one of the succinct bins `prefix-<hex>` with `bit_length` bits?
pub fn is_bin(name: &str, prefix: &str, bit_length: u64) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let width = bit_length.div_ceil(4) as usize;
    rest.len() == width
        && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && u64::from_str_radix(rest, 16).is_ok_and(|b| bit_length <= 32 && b < (1u64 << bit_length))
}

/// The working directory: configuration, effective roles, published versions.
#[derive(Debug)]
pub struct State {
    pub dir: PathBuf,
    pub config: Config,
    pub profile: Profile,
    pub roles: BTreeMap<String, Meta>,
    /// Latest published version of each role (root and the `N.role.json` files).
    pub published: BTreeMap<String, u64>,
    /// Staged files that a publish killed before removing them left: the same bytes as the
    /// published version; or a staged file (a root or another role) whose content is published
    /// as its version, signed there by others (a copy of the repository collected its
    /// signatures and published it).
    /// Not staged for any command (a change builds on the published version); `publish` removes
    /// them.
    pub already_published: Vec<PathBuf>,
    pub now: i64,
    /// The engineer's `--discard-signed-root`: [`stage`](Self::stage) replaces a staged root that
    /// meets every threshold it needs, with a warning, instead of refusing.
    pub discard_signed_root: bool,
    /// The working directory's lock, held by a command that changes it
    /// ([`load_for_change`](Self::load_for_change)) until it exits.
    lock: Option<std::fs::File>,
}

/// The file a command that changes a working directory holds an exclusive lock on (`flock`),
/// made by `init`: two such commands at once (two signers of a shared directory, a publish
/// started twice) would each write what it read, and one's signature or file would be lost.
pub const LOCK_FILE: &str = ".hale-sign.lock";

/// Lock the working directory `dir` for a change, or refuse at once (a command never waits
/// behind another one, which may be waiting for a passphrase).
pub fn lock_for_change(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let io = |e: std::io::Error| invalid(format!("{}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            Err(invalid(format!(
                "{}: another hale-sign command is changing this working directory ({} is locked): \
             run this again when it has finished; nothing done",
                dir.display(),
                path.display()
            )))
        }
        Err(e) => Err(io(e)),
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `signed.version` of metadata `bytes`, if it has one (read unverified: bookkeeping).
pub(crate) fn version_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(bytes)
        .ok()?
        .pointer("/signed/version")?
        .as_u64()
}

/// `N.role.json` → (N, role).
pub fn split_versioned(file: &str) -> Option<(u64, &str)> {
    let stem = file.strip_suffix(".json")?;
    let (n, role) = stem.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || role.is_empty() {
        return None;
    }
    Some((n.parse().ok()?, role))
}

impl State {
    pub fn load(dir: &Path) -> Result<Self> {
        let config = Config::load(dir)?;
        let profile = config.profile()?;
        let mut st = State {
            dir: dir.to_path_buf(),
            config,
            profile,
            roles: BTreeMap::new(),
            published: BTreeMap::new(),
            already_published: Vec::new(),
            now: unix_now(),
            discard_signed_root: false,
            lock: None,
        };
        // (role, file, staged): the newest published version of each role, then the staged files
        // that override them; read and parsed in parallel (hundreds of hashed bins)
        let mut files: Vec<(String, PathBuf, bool)> = Vec::new();
        let repo = repository_dir(dir);
        if repo.is_dir() {
            for e in std::fs::read_dir(&repo).map_err(|e| ToolError::io(&repo, e))? {
                let e = e.map_err(|e| ToolError::io(&repo, e))?;
                let name = e.file_name();
                let Some((v, role)) = name.to_str().and_then(split_versioned) else {
                    continue;
                };
                let slot = st.published.entry(role.to_string()).or_insert(0);
                *slot = (*slot).max(v);
            }
            for (role, v) in st.published.clone() {
                if role == "snapshot" {
                    continue;
                }
                let path = repo.join(format!("{v}.{role}.json"));
                files.push((role, path, false));
            }
        }
        let staged = staged_dir(dir);
        if staged.is_dir() {
            for e in std::fs::read_dir(&staged).map_err(|e| ToolError::io(&staged, e))? {
                let e = e.map_err(|e| ToolError::io(&staged, e))?;
                let fname = e.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                if fname.starts_with('.') {
                    continue;
                }
                let Some(role) = fname.strip_suffix(".json") else {
                    continue;
                };
                files.push((role.to_string(), e.path(), true));
            }
        }
        let metas = crate::par::map(&files, |(role, path, staged)| {
            Meta::from_bytes(role, read(path)?, path, *staged)
        });
        for meta in metas {
            let meta = meta?;
            if meta.staged
                && (st.roles.get(&meta.name).is_some_and(|p| {
                    !p.staged && p.version == meta.version && p.bytes == meta.bytes
                }) || st.published_content(&meta))
            {
                st.already_published.push(meta.path.clone());
                continue;
            }
            st.roles.insert(meta.name.clone(), meta);
        }
        // the hashed bins as the metadata delegates them, when hale-repo.json does not say (a
        // `bins` stopped between staging them and saving the config): routing, `rotate` and
        // `renew` of the bins follow the metadata, which is what clients read
        if st.config.bins.is_none() {
            st.config.bins = st.roles.values().find_map(|m| {
                let s = m.signed.pointer("/delegations/succinct_roles")?;
                // hale-core's rule: 1..=32 bits (anything else is not a bins delegation clients
                // follow, and routing would shift by it)
                let bit_length = u32::try_from(s.get("bit_length")?.as_u64()?)
                    .ok()
                    .filter(|b| (1..=32).contains(b))?;
                let prefix = s.get("name_prefix")?.as_str()?;
                hale_core::metadata::check_role_name(prefix).ok()?;
                Some(crate::config::Bins {
                    from: m.name.clone(),
                    bit_length,
                    prefix: prefix.to_string(),
                })
            });
        }
        Ok(st)
    }

    /// [`load`](Self::load) for a command that changes the working directory or sends it out
    /// (target add, sign, push…): refused while a publish that was interrupted has not been
    /// finished, since the repository then holds part of it
    /// ([`refuse_if_interrupted`](crate::journal::refuse_if_interrupted)), and while a staged
    /// role other than root is of a version already published
    /// ([`check_staged_roles`](Self::check_staged_roles)).
    pub fn load_for_change(dir: &Path) -> Result<Self> {
        // (a directory that is not one is said as such, not as a lock file it cannot make)
        Config::load(dir)?;
        let lock = lock_for_change(dir)?;
        crate::journal::refuse_if_interrupted(dir)?;
        let mut st = Self::load(dir)?;
        st.check_staged_roles()?;
        st.lock = Some(lock);
        Ok(st)
    }

    /// [`load`](Self::load) for a command that only reads the working directory and writes
    /// elsewhere (`bundle`, `rollback authorize`, `rollback sign`): no lock, so it runs while a
    /// signer waits at a passphrase prompt or a publish runs, but refused while a publish is
    /// interrupted ([`refuse_if_interrupted`](crate::journal::refuse_if_interrupted)): the
    /// repository then holds part of one. What such a command reads of `repository/` was
    /// verified before it was written and is never taken back (an interrupted publish is
    /// finished), and it verifies what it writes with hale-core from those bytes.
    pub fn load_to_read(dir: &Path) -> Result<Self> {
        // (a directory that is not one is said as such, not as a publish it cannot find)
        Config::load(dir)?;
        crate::journal::refuse_if_interrupted(dir)?;
        Self::load(dir)
    }

    pub fn staged(&self) -> impl Iterator<Item = &Meta> {
        self.roles.values().filter(|m| m.staged)
    }

    pub fn root(&self) -> Result<&Meta> {
        self.roles.get("root").ok_or_else(|| {
            invalid(format!(
                "{}: no root metadata (staged or published)",
                self.dir.display()
            ))
        })
    }

    pub fn get(&self, role: &str) -> Result<&Meta> {
        self.roles.get(role).ok_or_else(|| {
            invalid(format!(
                "{}: role {role:?} has no metadata (staged or published)",
                self.dir.display()
            ))
        })
    }

    /// The published root of version `v`.
    pub fn published_root(&self, v: u64) -> Result<Vec<u8>> {
        read(&repository_dir(&self.dir).join(format!("{v}.root.json")))
    }

    /// Is `meta` a staged file whose content (`signed`) is published as its version (a root, or
    /// `N.ROLE.json` of another role; the timestamp as `timestamp.json`, which holds its newest
    /// version only)? Its signatures may differ from the published file's: signers of another
    /// copy of the repository completed it there, and it was published from that copy.
    fn published_content(&self, meta: &Meta) -> bool {
        let published = self.published_version(&meta.name);
        if !meta.staged || meta.version > published {
            return false;
        }
        let file = if meta.name == "timestamp" {
            "timestamp.json".to_string()
        } else {
            format!("{}.{}.json", meta.version, meta.name)
        };
        read(&repository_dir(&self.dir).join(file))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|doc| doc.get("signed") == Some(&meta.signed))
    }

    /// The newest published version of `role`: its newest `N.ROLE.json`, or for the timestamp
    /// the version `repository/timestamp.json` holds (read unverified: bookkeeping, as the file
    /// names are). 0 when none is published.
    pub fn published_version(&self, role: &str) -> u64 {
        if role == "timestamp" {
            return read(&repository_dir(&self.dir).join("timestamp.json"))
                .ok()
                .and_then(|b| version_of(&b))
                .unwrap_or(0);
        }
        self.published.get(role).copied().unwrap_or(0)
    }

    /// Refuse staged roles other than root (targets, delegated roles, snapshot, timestamp)
    /// whose version is already published: one with the same content is not staged (see
    /// [`load`](Self::load)), so each has other content. It can never be published (versions
    /// are immutable), and a change built on it (`target add`, `rotate`, `renew`...) would be
    /// staged at that version again, signed, and refused only at publish. The release engineer
    /// decides what becomes of its changes: it is moved out of `staged/` by hand, never dropped
    /// by a command. (The root: [`check_staged_root`](Self::check_staged_root).)
    pub fn check_staged_roles(&self) -> Result<()> {
        let stale: Vec<(&Meta, u64)> = self
            .staged()
            .filter(|m| m.name != "root")
            .map(|m| (m, self.published_version(&m.name)))
            .filter(|(m, published)| m.version <= *published)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let drafts: Vec<String> = stale
            .iter()
            .map(|(m, p)| {
                format!(
                    "{} v{} (the newest published {} is v{p})",
                    m.name, m.version, m.name
                )
            })
            .collect();
        let files: Vec<String> = stale
            .iter()
            .map(|(m, _)| m.path.display().to_string())
            .collect();
        let next: Vec<String> = stale
            .iter()
            .map(|(m, p)| format!("{} v{p} as {} v{}", m.name, m.name, p + 1))
            .collect();
        let (is, draft, it, its) = if stale.len() == 1 {
            ("is", "this draft", "it", "its")
        } else {
            ("are", "these drafts", "them", "their")
        };
        Err(invalid(format!(
            "staged {} {is} already published with other content: {draft} can never be \
             published (versions are immutable), and a change built on {it} would be staged at a \
             version already published. Move {} out of {} ({its} changes are not in what is \
             published: make them again if still wanted), then run this again to build on {}; \
             nothing done",
            drafts.join(", "),
            files.join(", "),
            staged_dir(&self.dir).display(),
            next.join(", ")
        )))
    }

    /// Refuse a staged root whose version is already published: one with the same content is
    /// not staged (see [`load`](Self::load)), so this one has other content. It can never be
    /// published, and a root built on it (`rotate`, `renew`) would be a second root of a version
    /// devices already follow, or skip the published ones: a fork of the chain once signed.
    /// Signing it is refused too. The release engineer decides what becomes of its changes: it
    /// is moved out of `staged/` by hand, never dropped by a command. A draft that meets every
    /// threshold it needs is said to: it is a valid root for devices from any signer's copy, a
    /// fork of the published one, and every copy of it is to be destroyed.
    pub fn check_staged_root(&self) -> Result<()> {
        let Some(root) = self.roles.get("root").filter(|m| m.staged) else {
            return Ok(());
        };
        let published = self.published.get("root").copied().unwrap_or(0);
        if root.version > published {
            return Ok(());
        }
        let n = root.version;
        // a draft that meets every threshold it needs is a valid root for devices, from whoever
        // kept a copy: a fork of the published root of its version, and said to be one
        let met = self
            .root_authorities(n, &root.bytes, n > 1)
            .is_ok_and(|auths| {
                auths
                    .iter()
                    .all(|a| a.report("root", &root.bytes).is_ok_and(|r| r.met()))
            });
        let signed = match (met, n > 1) {
            (false, _) => String::new(),
            (true, true) => format!(
                " It is also fully signed, meeting both thresholds (root v{}'s and its own): a \
                 valid root v{n} for every device on root v{}, so a copy of it given to devices \
                 (each signer had one) forks them from the published root v{n}; destroy every \
                 copy of it.",
                n - 1,
                n - 1
            ),
            (true, false) => format!(
                " It is also fully signed, meeting its threshold: a valid root v{n}, so a copy of \
                 it given to devices (each signer had one) forks them from the published root \
                 v{n}; destroy every copy of it."
            ),
        };
        Err(invalid(format!(
            "staged root v{n} is already published with other content (the newest published root \
             is v{published}): this draft can never be published, and a root built on it would \
             fork the chain of roots devices follow.{signed} Move {} out of {} (its changes are \
             not in the published root: make them again if still wanted), then run this again to \
             build on root v{published} as root v{}",
            root.path.display(),
            staged_dir(&self.dir).display(),
            published + 1
        )))
    }

    /// Who must sign `bytes`, metadata of `role` given as a file of its own (`--repo`: a file
    /// mailed to a signer, say): a root by its own root role and by the root before it (as a
    /// device checks it), whatever root the repository stages; a root of a version already
    /// published must be the published one. Another role as [`authorities`](Self::authorities)
    /// says.
    pub fn authorities_of(&self, role: &str, bytes: &[u8]) -> Result<Vec<Authority>> {
        if role != "root" {
            return self.authorities(role);
        }
        // (a file that holds another role is refused as such, not as a root that does not parse)
        check_body(role, bytes)?;
        // the staged root itself: a draft whose version is published is said as such
        if self
            .roles
            .get("root")
            .is_some_and(|m| m.staged && m.bytes == bytes)
        {
            self.check_staged_root()?;
        }
        let version = hale_core::metadata::peek_header(bytes, "root")
            .map_err(|e| ToolError::trust("root", e))?
            .version;
        let published = self.published.get("root").copied().unwrap_or(0);
        if version <= published {
            // a root of a version already published must be that root: checked against its
            // own keys alone, another one signed by keys it lists itself would look ready
            let theirs = self.published_root(version)?;
            let signed = |b: &[u8]| {
                serde_json::from_slice::<Value>(b)
                    .ok()
                    .and_then(|v| v.get("signed").cloned())
            };
            if signed(bytes) != signed(&theirs) {
                return Err(invalid(format!(
                    "root v{version} is published with other content: this file is not it (a \
                     new root takes version {})",
                    published + 1
                )));
            }
        }
        self.root_authorities(version, bytes, version > 1)
    }

    /// A root of `version`: its own root role, and the previous (published) root when `rotates`.
    fn root_authorities(
        &self,
        version: u64,
        bytes: &[u8],
        rotates: bool,
    ) -> Result<Vec<Authority>> {
        let mut v = vec![Authority {
            label: format!("root v{version} (its own root role)"),
            delegator: "root".into(),
            bytes: bytes.to_vec(),
        }];
        if rotates {
            let prev = version - 1;
            let bytes = self.published_root(prev).map_err(|e| {
                invalid(format!(
                    "root v{version} is new but the previous root v{prev} is not published: {e}"
                ))
            })?;
            v.push(Authority {
                label: format!("root v{prev} (the trusted root it rotates from)"),
                delegator: "root".into(),
                bytes,
            });
        }
        Ok(v)
    }

    /// Who must sign `role`'s current metadata.
    pub fn authorities(&self, role: &str) -> Result<Vec<Authority>> {
        let root = self.root()?;
        if role == "root" {
            self.check_staged_root()?;
            return self.root_authorities(
                root.version,
                &root.bytes,
                root.version > 1 && root.staged,
            );
        }
        if top_level(role).is_some() {
            return Ok(vec![Authority {
                label: format!("root v{}", root.version),
                delegator: "root".into(),
                bytes: root.bytes.clone(),
            }]);
        }
        let out: Vec<Authority> = self
            .delegators_of(role)
            .into_iter()
            .filter_map(|d| self.roles.get(&d))
            .map(|m| Authority {
                label: format!("delegated by {} v{}", m.name, m.version),
                delegator: m.name.clone(),
                bytes: m.bytes.clone(),
            })
            .collect();
        if out.is_empty() {
            return Err(invalid(format!(
                "role {role:?} is not delegated by any targets role"
            )));
        }
        Ok(out)
    }

    /// Targets roles whose delegations name `role` (by name or as a succinct bin).
    pub fn delegators_of(&self, role: &str) -> Vec<String> {
        self.roles
            .values()
            .filter(|m| m.kind() == "targets")
            .filter(|m| {
                let Some(d) = m.signed.get("delegations") else {
                    return false;
                };
                if let Some(rs) = d.get("roles").and_then(Value::as_array) {
                    return rs
                        .iter()
                        .any(|r| r.get("name").and_then(Value::as_str) == Some(role));
                }
                if let Some(s) = d.get("succinct_roles") {
                    let prefix = s.get("name_prefix").and_then(Value::as_str).unwrap_or("");
                    let bits = s.get("bit_length").and_then(Value::as_u64).unwrap_or(0);
                    return is_bin(role, prefix, bits);
                }
                false
            })
            .map(|m| m.name.clone())
            .collect()
    }

    /// The body to modify for `role`: the staged one as is, or a copy of the published one with
    /// the next version. Expiry and spec_version are renewed. A staged root whose version is
    /// already published is refused ([`check_staged_root`](Self::check_staged_root)).
    pub fn next_body(&self, role: &str) -> Result<Value> {
        if role == "root" {
            self.check_staged_root()?;
        }
        let m = self.get(role)?;
        let mut body = m.signed.clone();
        if !m.staged {
            body["version"] = json!(m.version + 1);
        }
        self.renew(role, &mut body)?;
        Ok(body)
    }

    /// Set `expires` by the policy and `spec_version` by the profile.
    pub fn renew(&self, role: &str, body: &mut Value) -> Result<()> {
        let exp = hale_repo::build::expires_at(self.now, self.config.expires.for_role(role))?;
        body["expires"] = json!(exp);
        body["spec_version"] = json!(self.profile.spec_version());
        Ok(())
    }

    /// Stage `signed` for `role` without signatures (its content changed: everyone signs again).
    pub fn stage(&mut self, batch: &mut Batch, role: &str, signed: Value) -> Result<()> {
        self.stage_all(batch, vec![(role.to_string(), signed)])
    }

    /// [`stage`](Self::stage) many roles at once: checked and serialised in parallel (hundreds
    /// of hashed bins), written to `batch` in order.
    pub fn stage_all(&mut self, batch: &mut Batch, bodies: Vec<(String, Value)>) -> Result<()> {
        let profile = self.profile;
        let encoded = crate::par::map(&bodies, |(role, signed)| -> Result<(Vec<u8>, u64)> {
            hale_core::metadata::check_role_name(role).map_err(|e| ToolError::trust(role, e))?;
            hale_repo::build::check_profile(profile, signed)
                .map_err(|e| invalid(format!("{role}: {e}")))?;
            let version = signed
                .get("version")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid(format!("{role}: `version` missing")))?;
            Ok((hale_repo::sign::unsigned(signed)?, version))
        });
        let encoded = encoded.into_iter().collect::<Result<Vec<_>>>()?;
        let staged: Vec<(&str, &[u8])> = bodies
            .iter()
            .zip(&encoded)
            .map(|((role, _), (bytes, _))| (role.as_str(), bytes.as_slice()))
            .collect();
        self.check_rollback_keys(&staged)?;
        check_repeated_keys(&staged)?;
        // a root of a version already published is another root of that version: never staged
        let published_root = self.published.get("root").copied().unwrap_or(0);
        for ((role, _), (_, version)) in bodies.iter().zip(&encoded) {
            if role == "root" && *version <= published_root {
                return Err(invalid(format!(
                    "root v{version}: root v{published_root} is published, a new root takes \
                     version {}; nothing staged",
                    published_root + 1
                )));
            }
        }
        if bodies.iter().any(|(role, _)| role == "root") {
            if let Some(warning) = self.check_replace_root()? {
                eprintln!("{warning}");
            }
        }
        for ((role, signed), (bytes, version)) in bodies.into_iter().zip(encoded) {
            let path = staged_dir(&self.dir).join(format!("{role}.json"));
            // a ceremony's signatures are other people's work: say when a change voids them
            let collected = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("signatures").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0);
            if collected > 0 {
                eprintln!(
                    "note: staged {role}.json changed: the {collected} signature(s) collected on \
                     it no longer apply; collect them again"
                );
            }
            batch.add(&path, &bytes)?;
            // the body just serialised, not a re-parse of its bytes
            let meta = Meta {
                name: role.clone(),
                bytes,
                signed,
                version,
                staged: true,
                path,
            };
            self.roles.insert(role, meta);
        }
        Ok(())
    }

    /// A staged root about to be replaced: refused when it meets every threshold it needs
    /// (hale-core's reports against its own root role and, from v2, the published root before
    /// it), unless [`discard_signed_root`](Self::discard_signed_root), which gets the warning
    /// returned. Such a root is already valid: every signer had a copy, and whoever kept one can
    /// give it to devices (as the next root of those on the root before it, or to provision them,
    /// for v1); a different root of the same version forks the fleet. The way on is to publish it
    /// and make the change in the next version.
    fn check_replace_root(&self) -> Result<Option<String>> {
        let Some(old) = self.roles.get("root").filter(|m| m.staged) else {
            return Ok(None);
        };
        for auth in self.authorities("root")? {
            if !auth.report("root", &old.bytes)?.met() {
                return Ok(None);
            }
        }
        let n = old.version;
        let (met, valid) = if n > 1 {
            (
                format!("both thresholds (root v{}'s and its own)", n - 1),
                format!("a valid root v{n} for every device on root v{}", n - 1),
            )
        } else {
            ("its threshold".to_string(), format!("a valid root v{n}"))
        };
        if self.discard_signed_root {
            return Ok(Some(format!(
                "WARNING: --discard-signed-root: {} held root v{n}, which meets {met}: it stays \
                 {valid}, and a copy of it given to devices forks them from the root v{n} staged \
                 now; destroy every copy of it (each signer had one)",
                old.path.display()
            )));
        }
        Err(invalid(format!(
            "refusing to change {}: root v{n} meets {met}, so it is already {valid}: whoever kept \
             a copy (each signer had one) can give it to devices, and a different root v{n} would \
             fork the fleet. Publish it (`hale-sign publish {}`) and make this change in root \
             v{}, or give --discard-signed-root to replace it anyway (then destroy every copy of \
             it); nothing staged",
            old.path.display(),
            self.dir.display(),
            n + 1
        )))
    }

    /// The keys that sign rollback authorizations sign nothing else: refuse `staged` (role,
    /// unsigned bytes) when, with it in place, root or a delegation with paths lists one of the
    /// rollback role's keys (hale-core's `rollback::shared_in_root` and
    /// `shared_in_delegations`, the checks hale-server makes at every publish).
    fn check_rollback_keys(&self, staged: &[(&str, &[u8])]) -> Result<()> {
        let bytes_of = |name: &str| {
            staged
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| *b)
                .or_else(|| self.roles.get(name).map(|m| m.bytes.as_slice()))
        };
        let parse = |name: &str, bytes| {
            hale_core::metadata::Envelope::parse(bytes, name).map_err(|e| ToolError::trust(name, e))
        };
        let Some(top) = bytes_of("targets") else {
            return Ok(());
        };
        let top = parse("targets", top)?;
        let top = hale_core::metadata::Targets::parse(&top.signed, hale_core::Name::new("targets"))
            .map_err(|e| ToolError::trust("targets", e))?;
        let Ok(rollback) = hale_core::rollback::rollback_keys(&top) else {
            return Ok(());
        };
        let refuse =
            |delegator: &str, role: &dyn std::fmt::Display, keyid: &dyn std::fmt::Display| {
                invalid(format!(
                "{delegator}: {role} lists the rollback role's key {keyid}: the keys that sign \
                 rollback authorizations sign nothing else (delegated paths or one of root's \
                 roles, they would sign what devices install or trust)"
            ))
            };
        if let Some(root) = bytes_of("root") {
            let env = parse("root", root)?;
            let root = hale_core::metadata::Root::parse(&env.signed)
                .map_err(|e| ToolError::trust("root", e))?;
            if let Some((role, keyid)) = hale_core::rollback::shared_in_root(&rollback, &root) {
                return Err(refuse("root", &role, &keyid));
            }
        }
        // every targets role that delegates, as it is staged or published
        let delegators = self
            .roles
            .iter()
            .filter(|(n, _)| !staged.iter().any(|(s, _)| s == n))
            .filter(|(_, m)| m.kind() == "targets" && m.signed.get("delegations").is_some())
            .map(|(n, m)| (n.as_str(), m.bytes.as_slice()))
            .chain(staged.iter().copied().filter(|(n, _)| *n != "root"));
        for (name, bytes) in delegators {
            let env = parse(name, bytes)?;
            if env.signed.get("delegations").ok().flatten().is_none() {
                continue;
            }
            let t = hale_core::metadata::Targets::parse(&env.signed, hale_core::Name::new(name))
                .map_err(|e| ToolError::trust(name, e))?;
            if let Some((role, keyid)) = hale_core::rollback::shared_in_delegations(&rollback, &t) {
                return Err(refuse(name, &role, &keyid));
            }
        }
        Ok(())
    }

    /// Roles (with labels) that trust demo keys, in the root and every delegation.
    pub fn demo_hits(&self) -> Vec<(String, Vec<&'static str>)> {
        let mut hits = Vec::new();
        let ids = |v: Option<&Value>| -> Vec<&'static str> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .filter_map(crate::demo::name_of)
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(root) = self.roles.get("root") {
            if let Some(roles) = root.signed.get("roles").and_then(Value::as_object) {
                for (r, v) in roles {
                    let names = ids(v.get("keyids"));
                    if !names.is_empty() {
                        hits.push((r.clone(), names));
                    }
                }
            }
        }
        for m in self.roles.values().filter(|m| m.kind() == "targets") {
            let Some(d) = m.signed.get("delegations") else {
                continue;
            };
            for r in d
                .get("roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let names = ids(r.get("keyids"));
                if !names.is_empty() {
                    let n = r.get("name").and_then(Value::as_str).unwrap_or("?");
                    hits.push((format!("{n} (delegated by {})", m.name), names));
                }
            }
            if let Some(s) = d.get("succinct_roles") {
                let names = ids(s.get("keyids"));
                if !names.is_empty() {
                    let p = s.get("name_prefix").and_then(Value::as_str).unwrap_or("?");
                    hits.push((format!("{p}-* bins (delegated by {})", m.name), names));
                }
            }
        }
        hits
    }

    /// Warn loudly when any role trusts a demo key.
    pub fn warn_demo(&self) {
        crate::demo::warn(
            &format!("repository {}", self.dir.display()),
            &self.demo_hits(),
        );
    }
}

/// A staged root or delegation may not list one key under two key ids (`hale_core::verify::
/// repeated_key`): a signer would read it as two key holders, and a rotation that removes the
/// key by one key id would leave it trusted under the other.
fn check_repeated_keys(staged: &[(&str, &[u8])]) -> Result<()> {
    let refuse = |delegator: &str,
                  role: &dyn std::fmt::Display,
                  a: &dyn std::fmt::Display,
                  b: &dyn std::fmt::Display| {
        invalid(format!(
            "{delegator}: {role} lists one key under two key ids ({a} and {b}; an ECDSA key as \
             `ecdsa` and as `ecdsa-sha2-nistp256`, or as PEM and as hex): it counts once toward \
             the threshold, would read as two key holders, and removing it by one key id would \
             leave it trusted under the other"
        ))
    };
    for (name, bytes) in staged {
        let env = hale_core::metadata::Envelope::parse(bytes, name)
            .map_err(|e| ToolError::trust(name, e))?;
        if *name == "root" {
            let root = hale_core::metadata::Root::parse(&env.signed)
                .map_err(|e| ToolError::trust(name, e))?;
            if let Some((role, a, b)) = hale_core::verify::repeated_key_in_root(&root) {
                return Err(refuse(name, &role, &a, &b));
            }
        } else if env.signed.get("delegations").ok().flatten().is_some() {
            let t = hale_core::metadata::Targets::parse(&env.signed, hale_core::Name::new(name))
                .map_err(|e| ToolError::trust(name, e))?;
            if let Some((role, a, b)) = hale_core::verify::repeated_key_in_delegations(&t) {
                return Err(refuse(name, &role, &a, &b));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_and_versioned_files() {
        assert!(is_bin("bin-0a", "bin", 8));
        assert!(!is_bin("bin-a", "bin", 8));
        assert!(!is_bin("bin-1f", "bin", 4));
        assert!(is_bin("bin-1", "bin", 1));
        assert!(!is_bin("bin-2", "bin", 1));
        assert!(!is_bin("x-00", "bin", 8));
        assert_eq!(split_versioned("12.pump-a.json"), Some((12, "pump-a")));
        assert_eq!(split_versioned("timestamp.json"), None);
        assert_eq!(split_versioned("1.a.b.json"), Some((1, "a.b")));
    }
}
