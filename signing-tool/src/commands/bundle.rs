//! `hale-sign bundle DIR --target PATH [--from-root-version N] [--authorization FILE] --out FILE`:
//! one file a technician carries to a pump with no network (USB, or `hale-link` over a serial
//! line). It holds exactly what a device trusting root version N fetches to install PATH from the
//! published repository — roots N+1…, timestamp, snapshot, targets, the delegated roles on the
//! way, the image — and optionally a rollback authorization.
//!
//! Like `publish`, nothing is written unless hale-core accepts it: the repository is walked with
//! the client workflow from root N, the authorization is verified against the published
//! `targets` (threshold of the `rollback` role, validity, this exact image), and the finished
//! bundle is walked again from its own bytes, as the device will.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hale_core::bundle::{Bundle, AUTHORIZATION};
use hale_core::metadata::MetaFile;
use hale_core::trusted::{RoleSource, SearchError};
use hale_core::{Name, Storage, TrustedSet};

use crate::config::repository_dir;
use crate::state::{unix_now, State};

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// The repository working directory (its published `repository/` is bundled).
    dir: PathBuf,
    /// The target to install (e.g. `pump-a/fw-2.0.0.bin`).
    #[arg(long, value_name = "PATH")]
    target: String,
    /// Root version the devices trust now (the bundle carries the chain from there; versions
    /// start at 1).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    from_root_version: u64,
    /// A rollback authorization to include (verified first).
    #[arg(long, value_name = "FILE")]
    authorization: Option<PathBuf>,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    pub server: FromServer,
}

/// Where the published repository is read: hale-server, or the local `repository/`.
#[derive(Args, Debug)]
pub struct FromServer {
    /// Read the repository hale-server serves (its base URL) instead of the local
    /// `repository/`: releases pushed to hale-server get their timestamp and snapshot there.
    /// What it serves is verified from the local root, as a device would. A server with TLS on
    /// serves it on the staff listener (https://HOST:PORT, with --staff-cert); a development
    /// server on its plain listener (e.g. http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    pub from_server: Option<String>,
    /// Staff certificate chain (PEM) from `hale-sign ca staff` (technician or operator): read
    /// the staff listener over mTLS.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["from_server", "staff_key", "server_ca_cert"]
    )]
    pub staff_cert: Option<PathBuf>,
    /// The staff certificate's private key, sealed as `hale-sign ca staff` writes it.
    #[arg(long, value_name = "FILE", requires = "staff_cert")]
    pub staff_key: Option<PathBuf>,
    /// The Server CA certificate (PEM): the only anchor the server's certificate is checked
    /// against.
    #[arg(long, value_name = "FILE", requires = "staff_cert")]
    pub server_ca_cert: Option<PathBuf>,
    /// Open --staff-key with the passphrase in this environment variable (else
    /// --staff-key-passphrase-file, else a prompt).
    #[arg(
        long,
        value_name = "VAR",
        requires = "staff_cert",
        conflicts_with = "staff_key_passphrase_file"
    )]
    pub staff_key_passphrase_env: Option<String>,
    /// Open --staff-key with the first line of this file.
    #[arg(long, value_name = "PATH", requires = "staff_cert")]
    pub staff_key_passphrase_file: Option<PathBuf>,
}

/// Largest metadata file read while resolving (the host-side bound).
const MAX_METADATA: usize = 4 << 20;
/// Largest image put in a bundle (hale-core's format bounds an entry at u32).
const MAX_IMAGE: u64 = u32::MAX as u64;

/// What the client workflow fetched and verified on the way to one target.
#[derive(Debug)]
pub struct Resolved {
    /// Repository names and bytes, in fetch order (the image last).
    pub files: Vec<(String, Vec<u8>)>,
    pub sha256: [u8; 32],
    /// The verified top-level targets (to check rollback authorizations against).
    pub targets: Vec<u8>,
}

type Get<'a> = dyn FnMut(&str) -> anyhow::Result<Option<Vec<u8>>> + 'a;

/// A repository to read files from (see [`source`]).
pub type Files = Box<Get<'static>>;

struct Source<'g, 'a> {
    get: &'g mut Get<'a>,
    files: Vec<(String, Vec<u8>)>,
    error: Option<anyhow::Error>,
}

impl RoleSource for Source<'_, '_> {
    type Buf = Vec<u8>;
    type Error = ();
    fn fetch_role(&mut self, name: &str, meta: &MetaFile<'_>) -> Result<Vec<u8>, ()> {
        let file = format!("{}.{name}.json", meta.version);
        match (self.get)(&file) {
            Ok(Some(b)) => {
                if meta.length.is_some_and(|l| b.len() as u64 != l) {
                    self.error = Some(anyhow::anyhow!("{file}: length differs from the snapshot"));
                    return Err(());
                }
                self.files.push((file, b.clone()));
                Ok(b)
            }
            Ok(None) => {
                self.error = Some(anyhow::anyhow!("{file}: not found"));
                Err(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(())
            }
        }
    }
}

fn need(get: &mut Get<'_>, name: &str) -> anyhow::Result<Vec<u8>> {
    get(name)?.with_context(|| format!("{name}: not found"))
}

/// The TUF client workflow (hale-core decides every step) from `trusted_root` to `target`,
/// over files served by `get` (repository names, consistent snapshots).
pub fn resolve(
    get: &mut Get<'_>,
    trusted_root: &[u8],
    target: &str,
    now: i64,
) -> anyhow::Result<Resolved> {
    resolve_with(get, trusted_root, target, now, true)
}

/// [`resolve`] without fetching the image (`image` false): the metadata alone, for what needs
/// only the target's verified hash (a rollback authorization).
pub fn resolve_with(
    get: &mut Get<'_>,
    trusted_root: &[u8],
    target: &str,
    now: i64,
    image: bool,
) -> anyhow::Result<Resolved> {
    hale_core::metadata::check_target_path(target).map_err(|e| anyhow::anyhow!("{target}: {e}"))?;
    let trust = |what: String| move |e: hale_core::Error| anyhow::anyhow!("{what}: {e}");
    let mut set = TrustedSet::new(Storage::with_capacity(MAX_METADATA), trusted_root, now)
        .map_err(trust("trusted root".into()))?;
    let mut files = Vec::new();
    loop {
        let name = format!("{}.root.json", set.root().header.version + 1);
        let Some(bytes) = get(&name)? else { break };
        set.update_root(&bytes).map_err(trust(name.clone()))?;
        files.push((name, bytes));
    }
    if !set.root().consistent_snapshot {
        bail!("bundles need a repository with consistent snapshots");
    }
    let ts = get("timestamp.json")?.context(
        "timestamp.json: not found (releases pushed to hale-server get their timestamp and \
         snapshot there: give --from-server URL, the server's repository)",
    )?;
    set.update_timestamp(&ts)
        .map_err(trust("timestamp.json".into()))?;
    files.push(("timestamp.json".into(), ts));
    let sv = set.timestamp().map(|t| t.snapshot.version).unwrap_or(0);
    let name = format!("{sv}.snapshot.json");
    let snap = need(get, &name)?;
    set.update_snapshot(&snap).map_err(trust(name.clone()))?;
    files.push((name, snap));
    let tv = set
        .snapshot()
        .map(|s| s.role("targets"))
        .transpose()
        .map_err(trust("snapshot".into()))?
        .flatten()
        .map_or(0, |m| m.version);
    let name = format!("{tv}.targets.json");
    let targets = need(get, &name)?;
    set.update_targets(&targets).map_err(trust(name.clone()))?;
    files.push((name, targets.clone()));

    let mut source = Source {
        get: &mut *get,
        files: Vec::new(),
        error: None,
    };
    let found = match set.find_target(target, &mut source) {
        Ok(Some(f)) => f,
        Ok(None) => bail!("target {target} is not in the repository"),
        Err(SearchError::Trust(e)) => bail!("{target}: {e}"),
        Err(SearchError::Fetch(())) => {
            return Err(source
                .error
                .take()
                .unwrap_or_else(|| anyhow::anyhow!("{target}: a delegated role is missing")))
        }
    };
    let file = found.file(target).map_err(trust(target.into()))?;
    let sha256 = file
        .sha256()
        .with_context(|| format!("{target}: lists no sha256"))?;
    if file.length > MAX_IMAGE {
        bail!("{target}: {} bytes, too large for a bundle", file.length);
    }
    let image_name = hale_repo::layout::target_path(target, &hex::encode(sha256), true)?;
    if !image {
        let mut all = files;
        all.append(&mut source.files);
        return Ok(Resolved {
            files: all,
            sha256,
            targets,
        });
    }
    let image = need(source.get, &image_name)?;
    file.verify_bytes(&image, Name::new(target))
        .map_err(trust(image_name.clone()))?;
    let mut all = files;
    all.append(&mut source.files);
    all.push((image_name, image));
    Ok(Resolved {
        files: all,
        sha256,
        targets,
    })
}

/// Time to connect to hale-server, and to read one file (an image may be large).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Files of the repository hale-server serves at `base` (metadata at `{base}/NAME`, targets at
/// `{base}/targets/…`, hale-server's layout) through `agent`: `None` on 404, at most
/// `MAX_METADATA` bytes of metadata and `MAX_IMAGE` of a target. Untrusted bytes: `resolve`
/// verifies them. `hint` follows a failed connection (what the staff listener needs).
pub fn server_source(
    base: &str,
    agent: ureq::Agent,
    hint: Option<&'static str>,
) -> impl FnMut(&str) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let base = base.trim_end_matches('/').to_string();
    move |name: &str| {
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("{name}: not a repository file name");
        }
        let limit = if name.starts_with("targets/") {
            MAX_IMAGE
        } else {
            MAX_METADATA as u64
        };
        // each segment percent-encoded (the server decodes them): a target named with `#`, `?`
        // or `%` is asked for as itself
        let path: Vec<String> = name.split('/').map(percent_encode).collect();
        let url = format!("{base}/{}", path.join("/"));
        match agent.get(&url).call() {
            Ok(r) => {
                let mut out = Vec::new();
                r.into_reader()
                    .take(limit + 1)
                    .read_to_end(&mut out)
                    .with_context(|| format!("reading {url}"))?;
                if out.len() as u64 > limit {
                    bail!("{url}: longer than {limit} bytes");
                }
                Ok(Some(out))
            }
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                if code == 403 && body.contains("rollout_pending") {
                    bail!(
                        "{url}: held back by a staged rollout below 100 % (the server serves it \
                         to admitted devices only): end or widen the rollout first ({})",
                        body.trim()
                    )
                }
                bail!("{url}: HTTP {code}: {}", body.trim())
            }
            Err(e) => match hint {
                Some(h) => bail!("{url}: {} ({h})", crate::staff::without_url(&e)),
                None => bail!("{url}: {}", crate::staff::without_url(&e)),
            },
        }
    }
}

/// `s` with every byte but `A-Za-z0-9-_.~` percent-encoded (an URL path segment).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// When `dir`'s `repository/` holds a targets version newer than its own snapshot lists (releases
/// pushed to hale-server, which signs their snapshot and timestamp), what to do: read from the
/// server.
pub fn pushed_hint(dir: &Path) -> Option<String> {
    let (newest, listed) = pushed_past_snapshot(&repository_dir(dir))?;
    Some(format!(
        "repository/ holds targets v{newest}, newer than the v{listed} its own snapshot lists: \
         releases pushed to hale-server are listed in the server's snapshot; give \
         --from-server URL"
    ))
}

/// The newest targets version in the repository directory `repo` and the one its own snapshot
/// lists (0 if none), when the first is newer: releases pushed to hale-server, whose snapshot
/// and timestamp only the server has. Read unverified, only to say so.
pub fn pushed_past_snapshot(repo: &Path) -> Option<(u64, u64)> {
    let newest = std::fs::read_dir(repo)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            match crate::state::split_versioned(&name)? {
                (v, "targets") => Some(v),
                _ => None,
            }
        })
        .max()?;
    let json = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(repo.join(name)).ok()?).ok()
    };
    let listed = json("timestamp.json")
        .and_then(|t| t["signed"]["meta"]["snapshot.json"]["version"].as_u64())
        .and_then(|sv| json(&format!("{sv}.snapshot.json")))
        .and_then(|s| s["signed"]["meta"]["targets.json"]["version"].as_u64())
        .unwrap_or(0);
    (newest > listed).then_some((newest, listed))
}

/// Where `resolve` reads: the server at `--from-server` (over the staff listener's mTLS with
/// `--staff-cert`), else the published `repository/` of `dir`.
pub fn source(dir: &Path, from: &FromServer) -> anyhow::Result<Files> {
    let Some(url) = &from.from_server else {
        return Ok(Box::new(repository_source(dir)));
    };
    let (builder, hint) = match (&from.staff_cert, &from.staff_key, &from.server_ca_cert) {
        (Some(cert), Some(key), Some(ca_cert)) => {
            let c = crate::staff::Credentials {
                cert,
                key,
                ca_cert,
                passphrase_env: from.staff_key_passphrase_env.as_deref(),
                passphrase_file: from.staff_key_passphrase_file.as_ref(),
                flags: crate::staff::Flags {
                    url: "--from-server",
                    cert: "--staff-cert",
                },
            };
            let b = crate::staff::agent(url, &c, CONNECT_TIMEOUT)?.timeout(READ_TIMEOUT);
            (b, None)
        }
        (None, _, _) => {
            let hint = url.starts_with("https://").then_some(
                "a server with TLS on serves its repository to staff on the staff listener: \
                 give --staff-cert, --staff-key and --server-ca-cert",
            );
            let b = ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout(READ_TIMEOUT);
            (b, hint)
        }
        _ => bail!("--staff-cert needs --staff-key and --server-ca-cert"),
    };
    Ok(Box::new(server_source(url, builder.build(), hint)))
}

/// Files of the published repository in `dir` (refusing names that leave it).
pub fn repository_source(dir: &Path) -> impl FnMut(&str) -> anyhow::Result<Option<Vec<u8>>> {
    let repo = repository_dir(dir);
    move |name: &str| {
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("{name}: not a repository file name");
        }
        let p = repo.join(name);
        match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", p.display())),
            Ok(m) if m.len() > MAX_IMAGE => bail!("{}: too large", p.display()),
            Ok(_) => {}
        }
        std::fs::read(&p)
            .map(Some)
            .with_context(|| p.display().to_string())
    }
}

/// The published root of version `v` in `dir`.
pub fn published_root(dir: &Path, v: u64) -> anyhow::Result<Vec<u8>> {
    let p = repository_dir(dir).join(format!("{v}.root.json"));
    std::fs::read(&p).with_context(|| format!("{}: no published root v{v}", p.display()))
}

pub fn run(a: BundleArgs) -> anyhow::Result<ExitCode> {
    crate::durable::refuse_existing(&a.out, a.force)?;
    // DIR is only read (the bundle is written to --out): no lock, so a bundle is made while a
    // signer or a publish holds the directory. What it reads of repository/ was verified before
    // it was written and is never taken back (an interrupted publish is finished), and the bundle
    // is verified as a device would, from its own bytes, before it is written: files read while
    // a publish renames new ones in make a bundle that verifies as a whole, or none. Refused
    // while a publish is interrupted, though: the repository then holds part of one (a new root
    // whose timestamp is not written yet, say).
    let state = State::load_to_read(&a.dir)?;
    state.warn_demo();
    let now = unix_now();
    let root = published_root(&a.dir, a.from_root_version)?;
    let resolved = resolve(&mut *source(&a.dir, &a.server)?, &root, &a.target, now).with_context(
        || match &a.server.from_server {
            Some(url) => format!("resolving {} at {url}", a.target),
            None => match pushed_hint(&a.dir) {
                Some(hint) => format!("resolving {} in {} ({hint})", a.target, a.dir.display()),
                None => format!("resolving {} in {}", a.target, a.dir.display()),
            },
        },
    )?;
    let mut entries = resolved.files.clone();
    let mut note = String::new();
    if let Some(path) = &a.authorization {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let max = super::rollback::max_validity(&state, None)?;
        let a_ok = super::rollback::verify_for_target(
            &resolved.targets,
            &bytes,
            &a.target,
            resolved.sha256,
            now,
            max,
        )
        .with_context(|| format!("{}: rollback authorization refused", path.display()))?;
        note = format!(", rollback authorization ({a_ok})");
        entries.push((AUTHORIZATION.to_string(), bytes));
    }
    let bundle = hale_repo::bundle::encode(&entries)?;

    // the device's view: the finished bundle alone, from the same root
    let parsed = Bundle::parse(&bundle).map_err(|e| anyhow::anyhow!("bundle: {e}"))?;
    let mut from_bundle = |name: &str| Ok(parsed.get(name).map(<[u8]>::to_vec));
    resolve(&mut from_bundle, &root, &a.target, now)
        .context("the written bundle does not verify on its own")?;

    crate::durable::write_one(&a.out, &bundle)?;
    println!(
        "wrote {} ({} bytes): {} for devices trusting root v{}, {} files{note}",
        a.out.display(),
        bundle.len(),
        a.target,
        a.from_root_version,
        entries.len()
    );
    Ok(ExitCode::SUCCESS)
}
