//! `hale-sign sign FILE --key K.key`: add K's signature to staged metadata, in place. Each signer
//! runs it on the same file on their own machine. A key the role does not list is refused before
//! any passphrase is asked and the file stays byte-for-byte unchanged; which keys a role lists is
//! read by hale-core from the delegator (root, the previous root for a new root, or the
//! delegating targets role).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use hale_core::verify::KeyStatus;
use hale_repo::SigningKey;

use crate::durable::Batch;
use crate::error::read;
use crate::key_source::{load_private, peek_private, PublicKey};
use crate::par;
use crate::state::{Authority, Meta, State};
use crate::timings::Timings;
use crate::PassArgs;

#[derive(Args, Debug)]
pub struct SignArgs {
    /// Staged metadata file(s) (DIR/staged/<role>.json), or a repository directory: then every
    /// staged file that lists one of the keys is signed.
    #[arg(required = true, value_name = "FILE-or-DIR")]
    paths: Vec<PathBuf>,
    /// Encrypted private key file (.key); repeatable.
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<PathBuf>,
    /// The repository directory, when FILE is not inside DIR/staged/.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Print phase timings as one JSON line on stderr (also HALE_SIGN_TIMINGS=1).
    #[arg(long)]
    timings: bool,
}

/// The repository directory a staged file belongs to.
pub fn repo_of(file: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    // a mistyped name is said as such, not as a file outside any repository
    if !file.exists() {
        bail!("{}: no such file or directory", file.display());
    }
    if let Some(r) = explicit {
        return Ok(r.to_path_buf());
    }
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let abs = parent
        .canonicalize()
        .with_context(|| format!("{}", parent.display()))?;
    if abs.file_name().and_then(|n| n.to_str()) == Some(crate::config::STAGED_DIR) {
        if let Some(dir) = abs.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!("{}: cannot tell which repository it belongs to (it is not in DIR/staged/); pass --repo DIR", file.display())
}

/// A file of `dir`'s published `repository/` is never signed in place: a published version is
/// what devices and hale-server already hold, and a copy changed under the same name would
/// differ from theirs (the next push is refused).
fn refuse_published(file: &Path, dir: &Path) -> anyhow::Result<()> {
    let canonical = |p: &Path| p.canonicalize().ok();
    let (Some(f), Some(published)) = (
        canonical(file),
        canonical(&crate::config::repository_dir(dir)),
    ) else {
        return Ok(());
    };
    if f.starts_with(&published) {
        bail!(
            "refusing to sign {}: it is published (in {}), and a published version never \
             changes; stage a new version (rotate, renew, target add) and sign the staged file; \
             the file is unchanged",
            file.display(),
            crate::config::repository_dir(dir).display()
        );
    }
    Ok(())
}

/// The role a metadata file holds: its name without `.json` (and without a `N.` version prefix
/// for published copies).
pub fn role_of(file: &Path) -> anyhow::Result<String> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some((_, role)) = crate::state::split_versioned(name) {
        return Ok(role.to_string());
    }
    match name.strip_suffix(".json") {
        Some(r) if !r.is_empty() => Ok(r.to_string()),
        _ => bail!("{}: expected a <role>.json metadata file", file.display()),
    }
}

struct Job {
    path: PathBuf,
    role: String,
    bytes: Vec<u8>,
    auths: Vec<Authority>,
    keys: Vec<usize>,
    /// what it changes against the published version, shown before any passphrase
    changes: crate::changes::Changes,
    /// the staged version, as shown
    version: String,
    /// the published version of the role, if any
    published: Option<u64>,
    /// key ids whose signature on the file does not verify
    invalid: Vec<String>,
}

/// Staged files whose changes are shown in full before signing; the rest are counted.
const MAX_SHOWN: usize = 16;

/// The published `signed` of `role` in `st` (the version before the staged one), if any.
fn published_signed(st: &State, role: &str) -> Option<serde_json::Value> {
    let v = *st.published.get(role)?;
    let path = crate::config::repository_dir(&st.dir).join(format!("{v}.{role}.json"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    doc.get("signed").cloned()
}

/// What signing `bytes` as `role` vouches for, against what is published, and the staged
/// version (as shown).
fn changes_of(
    st: &State,
    role: &str,
    signed: &serde_json::Value,
) -> (crate::changes::Changes, String) {
    (
        crate::changes::describe(published_signed(st, role).as_ref(), signed),
        crate::changes::text_of(signed.get("version")),
    )
}

/// "to sign: FILE: ROLE vN (published: vM)" and the changes, indented.
fn show(j: &Job) -> String {
    let mut out = format!(
        "to sign: {}: {} v{} (published: {})",
        j.path.display(),
        j.role,
        j.version,
        j.published.map_or("none".to_string(), |v| format!("v{v}"))
    );
    for l in j.changes.lines() {
        out.push_str("\n  ");
        out.push_str(&l);
    }
    out
}

/// Key ids the authorities list for `role`, as hale-core reads them (after checking the file
/// holds that role), and those among them whose signature on the file does not verify.
fn listed(role: &str, bytes: &[u8], auths: &[Authority]) -> anyhow::Result<Listed> {
    crate::state::check_body(role, bytes)?;
    let mut out = Listed::default();
    for a in auths {
        let r = a.report(role, bytes)?;
        for (k, st) in r.keys.iter() {
            let id = k.as_str().to_string();
            if *st == KeyStatus::Invalid && !out.invalid.contains(&id) {
                out.invalid.push(id.clone());
            }
            out.ids.push(id);
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Listed {
    ids: Vec<String>,
    /// a signature entry that does not verify over the content (changed after it was given)
    invalid: Vec<String>,
}

/// The working directory `p` names, as one key however it is spelled (`repo`, `./repo`, an
/// absolute path): a second State of it would take its lock a second time, and be refused.
fn same_dir(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub fn run(a: SignArgs) -> anyhow::Result<ExitCode> {
    let mut t = Timings::start("sign", a.timings);
    let signers: Vec<PublicKey> = a
        .keys
        .iter()
        .map(|k| peek_private(k))
        .collect::<Result<_, _>>()?;
    let mut jobs: Vec<Job> = Vec::new();
    let mut states: BTreeMap<PathBuf, State> = BTreeMap::new();
    for p in &a.paths {
        if p.is_dir() {
            if states.contains_key(&same_dir(p)) {
                bail!(
                    "{}: given twice (its staged files are signed once; the directory is locked \
                     by this command)",
                    p.display()
                );
            }
            let st = t.time("load", || State::load_for_change(p))?;
            let check_start = Instant::now();
            let staged: Vec<&Meta> = st.staged().collect();
            let found = par::map(&staged, |m| -> anyhow::Result<Option<Job>> {
                let auths = st
                    .authorities(&m.name)
                    .with_context(|| format!("{}", m.path.display()))?;
                let listed = listed(&m.name, &m.bytes, &auths)
                    .with_context(|| format!("{}", m.path.display()))?;
                let keys: Vec<usize> = (0..signers.len())
                    .filter(|i| {
                        signers
                            .get(*i)
                            .is_some_and(|s| listed.ids.contains(&s.keyid))
                    })
                    .collect();
                Ok((!keys.is_empty()).then(|| {
                    let (changes, version) = changes_of(&st, &m.name, &m.signed);
                    Job {
                        path: m.path.clone(),
                        role: m.name.clone(),
                        bytes: m.bytes.clone(),
                        auths,
                        keys,
                        changes,
                        version,
                        published: st.published.get(&m.name).copied(),
                        invalid: listed.invalid,
                    }
                }))
            });
            for job in found {
                jobs.extend(job?);
            }
            states.insert(same_dir(p), st);
            t.add("check", check_start.elapsed());
            continue;
        }
        let dir = repo_of(p, a.repo.as_deref())?;
        refuse_published(p, &dir)?;
        // (one State, and one lock, per working directory however its path is spelled)
        let dir_key = same_dir(&dir);
        let st = match states.remove(&dir_key) {
            Some(s) => s,
            None => t.time("load", || State::load_for_change(&dir))?,
        };
        let check_start = Instant::now();
        let role = role_of(p)?;
        let bytes = read(p)?;
        let auths = st
            .authorities_of(&role, &bytes)
            .with_context(|| format!("{}", p.display()))?;
        let Listed { ids, invalid } =
            listed(&role, &bytes, &auths).with_context(|| format!("{}", p.display()))?;
        for s in &signers {
            if !ids.contains(&s.keyid) {
                let who: Vec<&str> = auths.iter().map(|a| a.label.as_str()).collect();
                bail!(
                    "refusing to sign {}: key {} ({}) is not listed for role {role} by {} (listed keys: {}); the file is unchanged",
                    p.display(),
                    s.keyid,
                    s.path.display(),
                    who.join(" / "),
                    if ids.is_empty() { "none".to_string() } else { ids.join(", ") }
                );
            }
        }
        // (`listed` checked the file holds this role's metadata)
        let signed = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|d| d.get("signed").cloned())
            .unwrap_or_default();
        let (changes, version) = changes_of(&st, &role, &signed);
        jobs.push(Job {
            changes,
            version,
            published: st.published.get(&role).copied(),
            path: p.clone(),
            role,
            bytes,
            auths,
            keys: (0..signers.len()).collect(),
            invalid,
        });
        states.insert(dir_key, st);
        t.add("check", check_start.elapsed());
    }
    if jobs.is_empty() {
        bail!(
            "no staged metadata lists any of the given keys ({})",
            signers
                .iter()
                .map(|s| s.keyid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // a signature that no longer verifies: the content changed after it was given. The next
    // signer must not co-sign what the first did not sign (their signature would count with a
    // fresh one of the first key's holder, over content that holder never saw). A signer's own
    // keys are exempt: their new signature replaces the old one.
    for j in &jobs {
        let mine: Vec<&str> = j
            .keys
            .iter()
            .filter_map(|i| signers.get(*i))
            .map(|s| s.keyid.as_str())
            .collect();
        let invalid: Vec<&str> = j
            .invalid
            .iter()
            .map(String::as_str)
            .filter(|id| !mine.contains(id))
            .collect();
        if !invalid.is_empty() {
            bail!(
                "refusing to sign {}: the signature of {} does not verify over this content \
                 (changed after it was signed?); nothing written. Stage it again (its signatures \
                 are dropped), or let the holder of that key sign it again first",
                j.path.display(),
                invalid.join(", ")
            );
        }
    }
    for s in &states {
        s.1.warn_demo();
    }
    // what the signer vouches for, before any passphrase (on stderr: stdout says what was done):
    // root, then top-level targets, then the other roles; every file that changes who may sign
    // in full, the others up to MAX_SHOWN, then counted
    let rank = |j: &Job| match j.role.as_str() {
        "root" => 0,
        "targets" => 1,
        _ => 2,
    };
    let mut order: Vec<&Job> = jobs.iter().collect();
    order.sort_by_key(|j| rank(j));
    let (mut shown, mut hidden) = (0usize, 0usize);
    for j in order {
        if !j.changes.trust.is_empty() || shown < MAX_SHOWN {
            eprintln!("{}", show(j));
            shown += 1;
        } else {
            hidden += 1;
        }
    }
    if hidden > 0 {
        eprintln!("to sign: … and {hidden} more staged files (no change to who may sign)");
    }
    // open only the keys some job needs, once each
    let unlock_start = Instant::now();
    let mut opened: BTreeMap<usize, SigningKey> = BTreeMap::new();
    for i in jobs.iter().flat_map(|j| j.keys.iter().copied()) {
        if opened.contains_key(&i) {
            continue;
        }
        let Some(path) = a.keys.get(i) else { continue };
        let key = load_private(path, &a.pass.source(&path.display().to_string()))?;
        if let Some(name) = crate::demo::name_of(&key.keyid()) {
            eprintln!(
                "WARNING: signing with DEMO key {name} ({}): never use demo keys in production",
                path.display()
            );
        }
        opened.insert(i, key);
    }
    t.add("unlock", unlock_start.elapsed());
    let signed = t.time("sign", || {
        par::map(&jobs, |j| {
            let ks: Vec<&SigningKey> = j.keys.iter().filter_map(|i| opened.get(i)).collect();
            hale_repo::sign::add_signatures(&j.bytes, &ks)
                .with_context(|| format!("signing {}", j.path.display()))
        })
    });
    let done: Vec<(&Job, Vec<u8>)> = jobs
        .iter()
        .zip(signed)
        .map(|(j, s)| s.map(|s| (j, s)))
        .collect::<anyhow::Result<_>>()?;
    t.time("write", || {
        let mut batch = Batch::new();
        for (j, signed) in &done {
            batch.add(&j.path, signed)?;
        }
        batch.commit()
    })
    .context("writing signed metadata")?;
    let check_start = Instant::now();
    let lines = par::map(&done, |(j, signed)| -> anyhow::Result<String> {
        let mut parts = Vec::new();
        for auth in &j.auths {
            let r = auth.report(&j.role, signed)?;
            // "by root v1", "as delegated by targets v2"
            let by = if auth.label.starts_with("delegated by ") {
                "as"
            } else {
                "by"
            };
            parts.push(format!("{}/{} {by} {}", r.valid(), r.threshold, auth.label));
        }
        Ok(format!(
            "signed {} ({}): {}",
            j.path.display(),
            j.role,
            parts.join("; ")
        ))
    });
    for line in lines {
        println!("{}", line?);
    }
    t.add("check", check_start.elapsed());
    t.finish();
    Ok(ExitCode::SUCCESS)
}
