//! `hale-sign push DIR --server URL (--cert FILE --key FILE --ca-cert FILE | --token-env VAR |
//! --token-file PATH)`: publish a release to hale-server instead of a static directory. The server holds the online snapshot and timestamp
//! keys; this command sends what only the offline side can sign — a new root, `targets` and the
//! delegated roles — plus the target contents they name.
//!
//! 1. What the server already serves is read from its repository (`root.json`, `timestamp.json`
//!    → snapshot), only to choose what to send: every root version after the server's, in order
//!    (each is a version devices walk through, not only the newest), roles whose local version
//!    is newer, and contents the server's copy of a role does not already list. A server whose
//!    root is newer than this copy's, or another than this copy's of the same version, is
//!    refused (this copy is not the one its releases come from). The server verifies
//!    everything itself (signatures, thresholds, version increase, every named target present
//!    with its length and hashes).
//! 2. Every role to send (staged, else the latest published in `repository/`) must meet every
//!    threshold it needs, as hale-core's `check_signatures` reports them (the same check as
//!    `status` and `publish`); a root, staged or published, a threshold of its own root keys
//!    AND of the root before it, and the chain must apply on the server's root as a device
//!    applies it (`TrustedSet::update_root`). Otherwise nothing is sent.
//! 3. Contents go to `POST /api/v1/targets`, then the metadata to `POST /api/v1/publish` (one
//!    root as `root`; several as `roots`, in one publish, to a server whose `GET
//!    /api/v1/publish` says `"root_chain": true`). A
//!    refusal is printed verbatim (the server's `{"error", "message"}`), exit 2, nothing local
//!    changes. On success the pushed staged files move into `repository/` under their consistent
//!    names (as `publish` without online keys does), so the next `target add` starts a new
//!    version.
//! 4. Nothing newer to send: see [`nothing_newer`] (a push whose answer was lost is completed
//!    locally; a conflicting copy is refused).
//!
//! Authentication: with the server's TLS listeners (`--tls-dir`), the operator's own staff
//! certificate over mTLS to the **staff listener** (`--server https://STAFF`): `--cert` / `--key`
//! from `hale-sign ca staff --role operator` (the key stays sealed at rest; its passphrase comes
//! from `--key-passphrase-env`, `--key-passphrase-file` or a prompt), the server verified against
//! the Server CA certificate only (`--ca-cert`). The server records `operator:<name>` as the
//! actor. Without TLS (development) an operator token over plain HTTP, from an environment
//! variable or a file, never the command line. Transport failures (connection, TLS, timeouts) are
//! reported apart from the server's refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::status::{unmet_root_thresholds, unmet_thresholds};
use crate::config::repository_dir;
use crate::durable::Batch;
use crate::staff;
use crate::state::{Meta, State};

/// Largest metadata document read from the server to decide what to send.
const MAX_SERVER_METADATA: u64 = 16 << 20;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// hale-server's base URL: the staff listener with --cert (https://HOST:PORT), else the
    /// plain listener of a development server (e.g. http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    server: String,
    /// Operator certificate chain (PEM) from `hale-sign ca staff --role operator`: publish over
    /// mTLS on the staff listener.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["key", "ca_cert"],
        conflicts_with_all = ["token_env", "token_file"]
    )]
    cert: Option<PathBuf>,
    /// The certificate's private key, sealed as `hale-sign ca staff` writes it.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The Server CA certificate (PEM): the only anchor the server's certificate is checked against.
    #[arg(long, value_name = "FILE", requires = "cert")]
    ca_cert: Option<PathBuf>,
    /// Open --key with the passphrase in this environment variable (else --key-passphrase-file,
    /// else a prompt).
    #[arg(
        long,
        value_name = "VAR",
        requires = "cert",
        conflicts_with = "key_passphrase_file"
    )]
    key_passphrase_env: Option<String>,
    /// Open --key with the first line of this file.
    #[arg(long, value_name = "PATH", requires = "cert")]
    key_passphrase_file: Option<PathBuf>,
    /// Read the operator token from this environment variable (development: plain HTTP).
    #[arg(long, value_name = "VAR", conflicts_with = "token_file")]
    token_env: Option<String>,
    /// Read the operator token from the first line of this file (development: plain HTTP).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
}

fn token(a: &PushArgs) -> anyhow::Result<String> {
    let t = if let Some(var) = &a.token_env {
        std::env::var(var).with_context(|| format!("reading the token from ${var}"))?
    } else if let Some(p) = &a.token_file {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading the token from {}", p.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        bail!(
            "no credentials: give --cert FILE --key FILE --ca-cert FILE (operator certificate, \
             staff listener), or for a development server --token-env VAR or --token-file PATH \
             (never the token itself)"
        );
    };
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("the operator token is empty");
    }
    Ok(t)
}

/// The server's answer to a refused request, as it sent it.
fn refusal(url: &str, code: u16, resp: ureq::Response) -> anyhow::Error {
    let body = resp
        .into_string()
        .unwrap_or_else(|e| format!("(unreadable body: {e})"));
    anyhow::anyhow!("{url}: the server refused (HTTP {code}): {}", body.trim())
}

/// The answer of `GET /api/v1/publish`.
struct Publisher {
    name: String,
    /// `"root_chain": true`: the publish body may carry `roots`, several root versions in order
    /// (older servers ignore the field: a chain sent to them would lose its roots).
    takes_root_chain: bool,
}

struct Server {
    base: String,
    agent: ureq::Agent,
    /// None with a certificate (mTLS authenticates).
    token: Option<String>,
}

impl Server {
    /// A POST with the operator token when there is one.
    fn post(&self, url: &str) -> ureq::Request {
        self.authorized(self.agent.post(url))
    }

    /// `r` with the operator token when there is one.
    fn authorized(&self, r: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// Ask whether these credentials may publish, before any upload: a refusal costs no image
    /// sent for nothing. The publisher's name, and whether the server takes several root
    /// versions in one publish.
    fn may_publish(&self) -> anyhow::Result<Publisher> {
        let url = self.url("api/v1/publish");
        let resp = match self.authorized(self.agent.get(&url)).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => return Err(refusal(&url, code, r)),
            Err(e) => bail!("{url}: {}", staff::without_url(&e)),
        };
        let body: Value = serde_json::from_str(
            &resp
                .into_string()
                .with_context(|| format!("{url}: reading the answer"))?,
        )
        .with_context(|| format!("{url}: the answer is not JSON"))?;
        Ok(Publisher {
            name: body
                .get("publisher")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            takes_root_chain: body.get("root_chain") == Some(&Value::Bool(true)),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// GET a metadata file the server serves: `None` on 404.
    fn metadata(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let url = self.url(name);
        match self.agent.get(&url).call() {
            Ok(r) => {
                let mut out = Vec::new();
                r.into_reader()
                    .take(MAX_SERVER_METADATA + 1)
                    .read_to_end(&mut out)
                    .with_context(|| format!("reading {url}"))?;
                if out.len() as u64 > MAX_SERVER_METADATA {
                    bail!("{url}: longer than {MAX_SERVER_METADATA} bytes");
                }
                Ok(Some(out))
            }
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(code, r)) => Err(refusal(&url, code, r)),
            Err(e) => Err(anyhow::anyhow!("{url}: {}", staff::without_url(&e))),
        }
    }

    /// Role → version of the targets roles the server serves now (empty before the first publish).
    fn served_versions(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let Some(ts) = self.metadata("timestamp.json")? else {
            return Ok(BTreeMap::new());
        };
        let ts: Value = serde_json::from_slice(&ts).context("the server's timestamp.json")?;
        let v = ts
            .pointer("/signed/meta/snapshot.json/version")
            .and_then(Value::as_u64)
            .context("the server's timestamp.json names no snapshot version")?;
        let name = format!("{v}.snapshot.json");
        let snap = self.metadata(&name)?.with_context(|| {
            format!("the server's timestamp names {name}, which it does not serve")
        })?;
        let snap: Value =
            serde_json::from_slice(&snap).with_context(|| format!("the server's {name}"))?;
        let meta = snap
            .pointer("/signed/meta")
            .and_then(Value::as_object)
            .with_context(|| format!("the server's {name} has no meta"))?;
        Ok(meta
            .iter()
            .filter_map(|(k, m)| {
                let role = k.strip_suffix(".json")?;
                Some((role.to_string(), m.get("version")?.as_u64()?))
            })
            .collect())
    }

    /// Upload one target's content; the server's hashes must be the ones the metadata lists.
    fn upload(&self, path: &Path, length: u64, sha256: &str) -> anyhow::Result<()> {
        let url = self.url("api/v1/targets");
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let resp = match self
            .post(&url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &length.to_string())
            .send(f)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => return Err(refusal(&url, code, r)),
            Err(e) => bail!(
                "{url}: uploading {}: {}",
                path.display(),
                staff::without_url(&e)
            ),
        };
        let body: Value = serde_json::from_str(
            &resp
                .into_string()
                .with_context(|| format!("{url}: reading the answer"))?,
        )
        .with_context(|| format!("{url}: the answer is not JSON"))?;
        let got = body.pointer("/hashes/sha256").and_then(Value::as_str);
        let got_len = body.get("length").and_then(Value::as_u64);
        if got != Some(sha256) || got_len != Some(length) {
            bail!(
                "{}: the server stored {} bytes with sha256 {} but the metadata lists {length} bytes with sha256 {sha256} (the local content is damaged: re-run `hale-sign target add`)",
                path.display(),
                got_len.map_or("?".into(), |l| l.to_string()),
                got.unwrap_or("?")
            );
        }
        Ok(())
    }
}

/// (name, length, sha256) of every target a targets role lists.
fn listed_targets(m: &Meta) -> anyhow::Result<Vec<(String, u64, String)>> {
    let Some(targets) = m.signed.get("targets").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    targets
        .iter()
        .map(|(name, t)| {
            let len = t.get("length").and_then(Value::as_u64);
            let sha = t.pointer("/hashes/sha256").and_then(Value::as_str);
            match (len, sha) {
                (Some(l), Some(s)) => Ok((name.clone(), l, s.to_string())),
                _ => bail!(
                    "{}: target {name:?} has no length or sha256",
                    m.path.display()
                ),
            }
        })
        .collect()
}

fn sha256s(doc: &[u8]) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(doc).unwrap_or(Value::Null);
    v.pointer("/signed/targets")
        .and_then(Value::as_object)
        .map(|t| {
            t.values()
                .filter_map(|e| e.pointer("/hashes/sha256").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// This copy's root of version `v`: `root` (the effective one, maybe staged) or the published
/// `repository/v.root.json`.
fn local_root(state: &State, root: &Meta, v: u64) -> anyhow::Result<Meta> {
    if v == root.version {
        return Ok(root.clone());
    }
    let path = repository_dir(&state.dir).join(format!("{v}.root.json"));
    let bytes = state.published_root(v)?;
    Ok(Meta::from_bytes("root", bytes, &path, false)?)
}

/// The server's root (`root.json`, the bytes it serves) and the root versions this copy has
/// after it, in order: each is a version devices walk through, so every one goes, not only the
/// newest. Refused, before anything is sent, when the server's root is newer than this copy's or
/// another than this copy's of the same version.
fn roots_to_send(
    a: &PushArgs,
    state: &State,
    server: &Server,
    root: &Meta,
) -> anyhow::Result<(Vec<u8>, Vec<Meta>)> {
    let theirs = server
        .metadata("root.json")?
        .with_context(|| format!("{}: not served", server.url("root.json")))?;
    let v = hale_core::metadata::peek_header(&theirs, "root")
        .map_err(|e| anyhow::anyhow!("{}: {e}", server.url("root.json")))?
        .version;
    if v > root.version {
        bail!(
            "{}: the server serves a newer root ({v}.root.json) than this copy's root v{}; the \
             server is ahead: this copy is not the one its releases come from (nothing sent)",
            a.dir.display(),
            root.version
        );
    }
    let ours = local_root(state, root, v)?;
    // (what was pushed is served as sent: the signed JSON without surrounding whitespace)
    if ours.bytes.trim_ascii() != theirs.trim_ascii() {
        bail!(
            "{}: the server serves another root v{v} ({}) than this copy's: this copy is not the \
             one its releases come from (nothing sent)",
            ours.path.display(),
            server.url(&format!("{v}.root.json"))
        );
    }
    let chain = (v + 1..=root.version)
        .map(|n| local_root(state, root, n))
        .collect::<anyhow::Result<_>>()?;
    Ok((theirs, chain))
}

pub fn run(a: PushArgs) -> anyhow::Result<ExitCode> {
    let state = State::load_for_change(&a.dir)?;
    state.warn_demo();
    let timeout = Duration::from_secs(a.timeout.max(1));
    let (agent, token) = match &a.cert {
        Some(cert) => {
            let (Some(key), Some(ca_cert)) = (&a.key, &a.ca_cert) else {
                bail!("--cert needs --key and --ca-cert");
            };
            let c = staff::Credentials {
                cert,
                key,
                ca_cert,
                passphrase_env: a.key_passphrase_env.as_deref(),
                passphrase_file: a.key_passphrase_file.as_ref(),
                flags: staff::Flags {
                    url: "--server",
                    cert: "--cert",
                },
            };
            (staff::agent(&a.server, &c, timeout)?.build(), None)
        }
        None => (
            ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .build(),
            Some(token(&a)?),
        ),
    };
    let server = Server {
        base: a.server.trim_end_matches('/').to_string(),
        agent,
        token,
    };

    // 1. may we publish at all; what the server serves now, and what is newer here
    let publisher = server.may_publish()?;
    let served = server.served_versions()?;
    let root = state.root()?;
    let (their_root, roots) = roots_to_send(&a, &state, &server, root)?;
    let roles: Vec<&Meta> = state
        .roles
        .values()
        .filter(|m| m.kind() == "targets")
        .filter(|m| served.get(&m.name).is_none_or(|v| m.version > *v))
        .collect();
    if roots.is_empty() && roles.is_empty() {
        return nothing_newer(&a, &state, &server, &served, root);
    }

    // 2. every threshold met, each root's against the root before it too (hale-core decides)
    let mut to_send: Vec<&Meta> = roots.iter().collect();
    to_send.extend(&roles);
    let mut unmet = Vec::new();
    let mut hints = Vec::new();
    for m in &to_send {
        let short = if m.name == "root" {
            unmet_root_thresholds(&state, m)?
        } else {
            unmet_thresholds(&state, m)?
        };
        if short.is_empty() {
            continue;
        }
        // `status DIR` reports the staged files; a published root is given as a file
        let hint = if m.staged {
            format!("`hale-sign status {}`", a.dir.display())
        } else {
            format!(
                "`hale-sign status {} --repo {}`",
                m.path.display(),
                a.dir.display()
            )
        };
        if !hints.contains(&hint) {
            hints.push(hint);
        }
        unmet.extend(short);
    }
    if !unmet.is_empty() {
        bail!(
            "refusing to push {}: {} threshold(s) not met: {} (nothing sent; see {})",
            a.dir.display(),
            unmet.len(),
            unmet.join("; "),
            hints.join(" and ")
        );
    }
    // and the chain as a device walks it from the server's root: each the next version
    let chain: Vec<(String, &[u8])> = roots
        .iter()
        .map(|m| (m.path.display().to_string(), m.bytes.as_slice()))
        .collect();
    crate::client::apply_roots(&their_root, &chain, state.now)
        .map_err(|e| anyhow::anyhow!("refusing to push {}: {e} (nothing sent)", a.dir.display()))?;
    if roots.len() > 1 && !publisher.takes_root_chain {
        bail!(
            "refusing to push {}: the server lacks {} root versions ({}), which go in one \
             publish, and this server takes one root per publish (a hale-server older than this \
             hale-sign): upgrade it first (nothing sent)",
            a.dir.display(),
            roots.len(),
            roots
                .iter()
                .map(|m| format!("v{}", m.version))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    // 3. target contents the server's current roles do not already list
    let repo = repository_dir(&a.dir);
    let mut known: BTreeSet<String> = BTreeSet::new();
    for m in &roles {
        if let Some(v) = served.get(&m.name) {
            if let Some(doc) = server.metadata(&format!("{v}.{}.json", m.name))? {
                known.extend(sha256s(&doc));
            }
        }
    }
    let mut uploaded = 0usize;
    let mut bytes_up = 0u64;
    for m in &roles {
        for (name, length, sha) in listed_targets(m)? {
            if !known.insert(sha.clone()) {
                continue;
            }
            let rel = hale_repo::layout::target_path(&name, &sha, true)
                .with_context(|| format!("{}: target {name:?}", m.path.display()))?;
            let path = repo.join(rel);
            let local = std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (content of {name} listed by {})",
                    path.display(),
                    m.name
                )
            })?;
            if local.len() as u64 != length || hex::encode(Sha256::digest(&local)) != sha {
                bail!(
                    "{}: does not match the {length} bytes with sha256 {sha} that {} lists for {name} (nothing published)",
                    path.display(),
                    m.name
                );
            }
            server.upload(&path, length, &sha)?;
            uploaded += 1;
            bytes_up += length;
        }
    }
    println!(
        "uploaded {uploaded} target file(s), {bytes_up} bytes, to {}",
        server.base
    );

    // 4. the metadata, byte for byte as signed (the server serves exactly what it verified)
    let raw = |m: &Meta| -> anyhow::Result<String> {
        std::str::from_utf8(&m.bytes)
            .map(|s| s.trim().to_string())
            .with_context(|| format!("{}: not UTF-8", m.path.display()))
    };
    let mut body = String::from("{");
    match roots.as_slice() {
        [] => {}
        // one root as every hale-server takes it
        [one] => body.push_str(&format!("\"root\":{},", raw(one)?)),
        // several: in order, in one publish the server verifies link by link (all or nothing)
        chain => {
            let chain: Vec<String> = chain.iter().map(raw).collect::<anyhow::Result<_>>()?;
            body.push_str(&format!("\"roots\":[{}],", chain.join(",")));
        }
    }
    body.push_str("\"roles\":{");
    for (i, m) in roles.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{}:{}", Value::String(m.name.clone()), raw(m)?));
    }
    body.push_str("}}");
    let url = server.url("api/v1/publish");
    let resp = match server
        .post(&url)
        .set("Content-Type", "application/json")
        .send_string(&body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => return Err(refusal(&url, code, r)),
        Err(e) => bail!("{url}: {}", staff::without_url(&e)),
    };
    let answer = resp
        .into_string()
        .with_context(|| format!("{url}: reading the answer"))?;
    let names: Vec<String> = to_send
        .iter()
        .map(|m| format!("{} v{}", m.name, m.version))
        .collect();
    println!(
        "pushed {} to {} as {}",
        names.join(", "),
        server.base,
        publisher.name
    );
    println!("server: {}", answer.trim());

    // 5. what was pushed from staged/ is now published
    //    (a staged root not sent is the one the server already has)
    let mut pushed = to_send.clone();
    if root.staged && roots.is_empty() {
        pushed.push(root);
    }
    move_published(&repo, &pushed)?;
    Ok(ExitCode::SUCCESS)
}

/// Move the staged files among `pushed` into `repository/` under their consistent names, as
/// `publish` does: the server serves them now.
fn move_published(repo: &Path, pushed: &[&Meta]) -> anyhow::Result<()> {
    let mut batch = Batch::new();
    let mut moved = Vec::new();
    for m in pushed.iter().filter(|m| m.staged) {
        let name = hale_repo::layout::metadata_name(&m.name, m.version, true);
        batch.add(&repo.join(name), &m.bytes)?;
        if m.name == "root" {
            batch.add(&repo.join("root.json"), &m.bytes)?;
        }
        moved.push(m.path.clone());
    }
    batch.commit()?;
    for p in moved {
        std::fs::remove_file(&p).with_context(|| format!("removing pushed {}", p.display()))?;
    }
    Ok(())
}

/// Nothing here is newer than what the server serves (and the root is the server's).
///
/// - The server is ahead of a role: another copy published since; this one is not where the
///   releases come from (error, nothing changes).
/// - A staged role at the very version the server serves, with other bytes: another copy
///   published that version (error, nothing changes).
/// - Staged roles the server serves byte for byte: an earlier push went through but its answer
///   was lost (a dropped connection, a timeout), so they were never moved out of `staged/`;
///   they are moved now, as that push would have, and the next `target add` starts a new
///   version instead of re-signing one the server has already published.
/// - Otherwise: the server serves this copy; nothing to do (success).
fn nothing_newer(
    a: &PushArgs,
    state: &State,
    server: &Server,
    served: &BTreeMap<String, u64>,
    root: &Meta,
) -> anyhow::Result<ExitCode> {
    let targets_roles = || state.roles.values().filter(|m| m.kind() == "targets");
    if targets_roles().any(|m| served.get(&m.name).is_some_and(|v| *v > m.version)) {
        // a server ahead of this copy: another copy published since
        let versions: Vec<String> = targets_roles()
            .map(|m| match served.get(&m.name) {
                Some(v) if *v > m.version => {
                    format!("{} v{} here, v{v} on the server", m.name, m.version)
                }
                _ => format!("{} v{}", m.name, m.version),
            })
            .collect();
        bail!(
            "{}: nothing to push: the server serves every role at this copy's version or later \
             ({}); the server is ahead: this copy is not the one its releases come from",
            a.dir.display(),
            versions.join(", "),
        );
    }
    let mut staged: Vec<&Meta> = Vec::new();
    for m in targets_roles().filter(|m| m.staged) {
        let name = format!("{}.{}.json", m.version, m.name);
        let theirs = server.metadata(&name)?;
        if theirs.as_deref().map(<[u8]>::trim_ascii) != Some(m.bytes.trim_ascii()) {
            bail!(
                "{}: the server serves another {} v{} than the one staged here: another copy \
                 published that version, or an earlier push of this copy went through (its \
                 answer lost) before the staged file changed again. Nothing sent. To go on from \
                 what the server serves: keep aside what you staged since, put the server's \
                 {name} ({}) into {} and remove {}, then stage your changes again (they become \
                 v{})",
                m.path.display(),
                m.name,
                m.version,
                server.url(&name),
                repository_dir(&a.dir).display(),
                m.path.display(),
                m.version + 1
            );
        }
        staged.push(m);
    }
    if root.staged {
        // the server serves this very root (checked by the caller)
        staged.push(root);
    }
    let versions: Vec<String> = targets_roles()
        .map(|m| format!("{} v{}", m.name, m.version))
        .collect();
    if staged.is_empty() {
        println!(
            "nothing to push: the server serves this copy's versions already ({})",
            versions.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    move_published(&repository_dir(&a.dir), &staged)?;
    let names: Vec<String> = staged
        .iter()
        .map(|m| format!("{} v{}", m.name, m.version))
        .collect();
    println!(
        "already on the server, byte for byte: {} (an earlier push went through but its answer \
         was lost); moved from staged/ into repository/",
        names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
