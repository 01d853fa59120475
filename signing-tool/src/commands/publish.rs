//! `hale-sign publish DIR [--snapshot-key S.key… --timestamp-key TS.key…]`: move fully signed staged
//! metadata into `repository/` under its consistent names, sign snapshot and timestamp when their
//! keys are given (the directory is then a complete repository any static web server can serve),
//! after running the client workflow over the result. Refuses — writing nothing — while any staged
//! file is below its threshold, and when hale-core rejects the repository as it would be: the
//! workflow reads the files to write from memory, laid over `repository/`, and only a result it
//! accepts is written. A device or a server syncing the directory never sees a file (a new root
//! above all: a published root version can never be replaced) that is then taken back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use hale_repo::build;
use serde_json::Value;

use super::status::unmet_thresholds;
use crate::client::{self, Repository};
use crate::config::repository_dir;
use crate::durable::Batch;
use crate::key_source::load_private;
use crate::state::{Authority, State};
use crate::timings::Timings;
use crate::PassArgs;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The repository working directory.
    dir: PathBuf,
    /// A snapshot key (.key): sign a new snapshot listing every targets role. Repeat it for
    /// each of the keys root's snapshot threshold asks.
    #[arg(long = "snapshot-key", value_name = "KEY", requires = "timestamp_keys")]
    snapshot_keys: Vec<PathBuf>,
    /// A timestamp key (.key): sign a new timestamp for the newest snapshot. Repeat it for each
    /// of the keys root's timestamp threshold asks.
    #[arg(long = "timestamp-key", value_name = "KEY")]
    timestamp_keys: Vec<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Print phase timings as one JSON line on stderr (also HALE_SIGN_TIMINGS=1).
    #[arg(long)]
    timings: bool,
}

/// The publish journal, `DIR/publishing.json`: every repository file this publish writes and
/// what it held before, made durable before the first write and removed once the publish is
/// done (or undone). Everything it lists was verified before the write; a publish killed in
/// between leaves it, and the next `publish` restores the repository from it first: a crash
/// never leaves half a publish served (a new snapshot without the timestamp that points at it),
/// nor a working directory whose staged files no longer follow what is published.
pub(crate) const JOURNAL: &str = "publishing.json";

/// Test-only fault injection: the process dies (abort, no clean-up) at the named point of a
/// publish: `verified` (the client workflow run over the repository as it would be, its result
/// not acted on, nothing written), `written` (everything written, the journal still there) or
/// `done` (the journal removed, the staged copies not yet).
const CRASH_ENV: &str = "HALE_SIGN_TEST_CRASH_AFTER";

fn crash_point(name: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Files written by this publish and what they held before (to roll back).
struct Written {
    repo: PathBuf,
    journal: PathBuf,
    undo: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Written {
    fn new(dir: &Path, repo: &Path) -> Self {
        Written {
            repo: repo.to_path_buf(),
            journal: dir.join(JOURNAL),
            undo: Vec::new(),
        }
    }

    /// The journal's entries: names relative to the repository, prior bytes in hex.
    fn save_journal(&self) -> anyhow::Result<()> {
        let entries: Vec<Value> = self
            .undo
            .iter()
            .map(|(p, before)| {
                let name = p.strip_prefix(&self.repo).unwrap_or(p);
                serde_json::json!({
                    "file": name.to_string_lossy(),
                    "before": before.as_ref().map(hex::encode),
                })
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&serde_json::json!({ "files": entries }))?;
        crate::durable::write_one(&self.journal, &bytes)?;
        Ok(())
    }

    /// The journal a killed publish left in `dir`, if any.
    fn load_journal(dir: &Path, repo: &Path) -> anyhow::Result<Option<Self>> {
        let journal = dir.join(JOURNAL);
        let bytes = match std::fs::read(&journal) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
        };
        let bad = |why: &str| anyhow::anyhow!("{}: {why}", journal.display());
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
        let mut undo = Vec::new();
        for f in doc
            .get("files")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no files"))?
        {
            let name = f
                .get("file")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an entry without a file"))?;
            // only names inside the repository
            let rel = Path::new(name);
            if name.is_empty()
                || !rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(&format!("{name:?} is not a file of the repository")));
            }
            let before = match f.get("before") {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) => Some(hex::decode(h).map_err(|e| bad(&e.to_string()))?),
                Some(_) => return Err(bad("an entry's before is not hex")),
            };
            undo.push((repo.join(rel), before));
        }
        Ok(Some(Written {
            repo: repo.to_path_buf(),
            journal,
            undo,
        }))
    }

    /// Write `files` (names in the repository) as one batch, journalled first.
    fn write(&mut self, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = Batch::new();
        for (name, bytes) in files {
            let p = self.repo.join(name);
            let before = if p.exists() {
                Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
            } else {
                None
            };
            self.undo.push((p.clone(), before));
            batch.add(&p, bytes)?;
        }
        // what to undo is on the disk before anything it undoes
        self.save_journal()?;
        batch.commit()?;
        Ok(())
    }

    /// The publish stands: forget the journal.
    fn done(self) -> anyhow::Result<()> {
        remove_journal(&self.journal)
    }

    fn roll_back(self) -> Vec<String> {
        let mut problems = Vec::new();
        // newest first: the timestamp goes back before the files it pointed at
        for (p, before) in self.undo.into_iter().rev() {
            let r = match before {
                Some(b) => crate::durable::write_one(&p, &b).map_err(|e| e.to_string()),
                None => match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("{}: {e}", p.display()))
                    }
                    _ => Ok(()),
                },
            };
            if let Err(e) = r {
                problems.push(e);
            }
        }
        // a journal whose undo failed stays, for the next publish to try again
        if problems.is_empty() {
            if let Err(e) = remove_journal(&self.journal) {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

fn remove_journal(journal: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(journal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", journal.display()))
        }
        _ => Ok(()),
    }
}

/// A new root must be met by the timestamp and snapshot the repository will serve: those already
/// served, unless new ones are signed in this publish. One that rotates their keys is refused
/// before any key is unlocked, naming the keys to give (the client workflow over the repository
/// as it would be refuses it too, later, with hale-core's error on the served timestamp, which
/// does not say what to do).
fn online_roles_under(
    root: &crate::state::Meta,
    repo: &Path,
    a: &PublishArgs,
) -> anyhow::Result<()> {
    let auth = Authority {
        label: format!("root v{}", root.version),
        delegator: "root".into(),
        bytes: root.bytes.clone(),
    };
    let read = |name: &str| std::fs::read(repo.join(name)).ok();
    let Some(ts) = read("timestamp.json") else {
        return Ok(());
    };
    let snapshot = serde_json::from_slice::<Value>(&ts)
        .ok()
        .and_then(|v| v.pointer("/signed/meta/snapshot.json/version")?.as_u64())
        .and_then(|v| read(&format!("{v}.snapshot.json")));
    let served = [
        (
            "timestamp",
            Some(ts),
            a.timestamp_keys.is_empty(),
            "--timestamp-key",
        ),
        (
            "snapshot",
            snapshot,
            a.snapshot_keys.is_empty(),
            "--snapshot-key and --timestamp-key",
        ),
    ];
    for (role, bytes, keep, give) in served {
        let Some(bytes) = bytes.filter(|_| keep) else {
            continue;
        };
        let report = auth.report(role, &bytes)?;
        if !report.met() {
            bail!(
                "refusing to publish {}: root v{} changes the {role} role's keys, and the {role} \
                 served now meets {} of its threshold {} (devices would take the new root, then \
                 refuse every {role}): give {give} with the new key(s), or push to a hale-server \
                 that holds them (repository unchanged)",
                a.dir.display(),
                root.version,
                report.valid(),
                report.threshold
            );
        }
    }
    Ok(())
}

/// The client workflow from the first root over `repo`, as a device starting from the root it
/// shipped with: the whole repository when it has a timestamp, the root chain alone otherwise
/// (`None`).
fn verify_as_client(repo: &Repository, now: i64) -> anyhow::Result<Option<client::Summary>> {
    let first = repo.read("1.root.json")?;
    if repo.exists("timestamp.json") {
        Ok(Some(client::verify_repository(repo, &first, now)?))
    } else {
        client::verify_root_chain(repo, &first, now)?;
        Ok(None)
    }
}

fn timestamp_version(repo: &Path) -> anyhow::Result<u64> {
    let p = repo.join("timestamp.json");
    if !p.exists() {
        return Ok(0);
    }
    let v: Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("{}", p.display()))?;
    v.pointer("/signed/version")
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: no signed.version", p.display()))
}

/// Sign `body` as `role` (snapshot or timestamp) with every key in `paths` and check the result
/// against `root` (version `root_version`): each key must be one of the role's, and together
/// they must meet its threshold. The error names the key that is not the role's, or how many
/// more are needed.
fn sign_online(
    role: &str,
    body: &Value,
    paths: &[PathBuf],
    root: &Authority,
    root_version: u64,
    pass: &PassArgs,
    t: &mut Timings,
) -> anyhow::Result<Vec<u8>> {
    let keys = paths
        .iter()
        .map(|p| {
            t.time("unlock", || {
                load_private(p, &pass.source(&p.display().to_string()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = t.time("sign", || {
        hale_repo::sign::sign_new(body, &keys.iter().collect::<Vec<_>>())
    })?;
    let r = root.report(role, &bytes)?;
    let mut seen = std::collections::BTreeSet::new();
    for (p, k) in paths.iter().zip(&keys) {
        let id = k.keyid();
        if !r.keys.iter().any(|(kid, _)| kid.as_str() == id) {
            bail!(
                "{}: key {id} is not a {role} key of root v{root_version}",
                p.display()
            );
        }
        if !seen.insert(id.clone()) {
            bail!("{}: key {id} is given twice for {role}", p.display());
        }
    }
    if !r.met() {
        bail!(
            "{role}: root v{root_version} asks {} signatures, {} key(s) given: give \
             --{role}-key once for each of {} of its keys",
            r.threshold,
            r.valid(),
            r.threshold
        );
    }
    Ok(bytes)
}

pub fn run(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let mut t = Timings::start("publish", a.timings);
    // no other command changes the directory until this one exits (the journal's undo first)
    crate::config::Config::load(&a.dir)?;
    let _lock = crate::state::lock_for_change(&a.dir)?;
    // a publish killed before it finished: undo what it wrote, then publish afresh
    let repo = repository_dir(&a.dir);
    if let Some(interrupted) = Written::load_journal(&a.dir, &repo)? {
        let n = interrupted.undo.len();
        let problems = interrupted.roll_back();
        if !problems.is_empty() {
            bail!(
                "{}: undoing an interrupted publish failed: {} ({JOURNAL} kept)",
                a.dir.display(),
                problems.join("; ")
            );
        }
        eprintln!(
            "{}: a publish was interrupted; its {n} repository file(s) restored to before it",
            a.dir.display()
        );
    }
    let mut state = t.time("load", || State::load(&a.dir))?;
    // staged copies of what a finished publish wrote (killed before it removed them)
    for p in std::mem::take(&mut state.already_published) {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        eprintln!("{}: already published; staged copy removed", p.display());
    }
    state.warn_demo();
    let staged: Vec<_> = state.staged().collect();
    // a new targets role needs a new snapshot: a timestamp alone would point devices at one that
    // does not list it
    if !a.timestamp_keys.is_empty() && a.snapshot_keys.is_empty() {
        let changed: Vec<&str> = staged
            .iter()
            .filter(|m| m.kind() == "targets")
            .map(|m| m.name.as_str())
            .collect();
        if !changed.is_empty() {
            bail!(
                "{}: staged {} must be listed in a new snapshot: give --snapshot-key with --timestamp-key (or neither, and let the server sign both)",
                a.dir.display(),
                changed.join(", ")
            );
        }
    }
    if staged.is_empty() && a.timestamp_keys.is_empty() {
        bail!(
            "{}: nothing staged to publish (and no --timestamp-key to refresh the timestamp)",
            a.dir.display()
        );
    }

    // 1. every staged file meets every threshold it needs (hale-core decides)
    let check_start = Instant::now();
    let checked = crate::par::map(&staged, |m| -> anyhow::Result<Vec<String>> {
        let mut unmet = Vec::new();
        if m.name == "snapshot" || m.name == "timestamp" {
            bail!("{}: snapshot and timestamp are signed at publish time (--snapshot-key, --timestamp-key) or by the server", m.path.display());
        }
        if let Some(why) = m.expired(state.now) {
            bail!(
                "{}: {} v{} {why}: devices would refuse it (stage it again with a later expiry: \
                 `hale-sign renew {} --role {}`)",
                m.path.display(),
                m.name,
                m.version,
                state.dir.display(),
                m.name
            );
        }
        let skipped = state.config.keys_devices_skip(&m.signed);
        if !skipped.is_empty() {
            bail!(
                "{}: {} v{} lists {} this repository's devices do not verify ({} only, \
                 device_key_types in {}): {}. Their signatures count for nothing there, and a \
                 threshold met with them is not met on a device. Remove them (`hale-sign rotate \
                 {} --role ROLE --remove-key KEYID`), or list the type in device_key_types if \
                 every device verifies it (repository unchanged)",
                m.path.display(),
                m.name,
                m.version,
                if skipped.len() == 1 {
                    "a key of a type"
                } else {
                    "keys of types"
                },
                state.config.device_key_types().join(", "),
                crate::config::CONFIG_FILE,
                skipped.join("; "),
                state.dir.display()
            );
        }
        unmet.extend(unmet_thresholds(&state, m)?);
        build::check_profile(state.profile, &m.signed)
            .map_err(|e| anyhow::anyhow!("{}: {e}", m.path.display()))?;
        let published = state.published.get(&m.name).copied().unwrap_or(0);
        if m.name == "root" && m.version != published + 1 {
            bail!(
                "{}: root v{} does not follow published root v{published}",
                m.path.display(),
                m.version
            );
        }
        if m.version <= published {
            bail!(
                "{}: {} v{} is not newer than published v{published}",
                m.path.display(),
                m.name,
                m.version
            );
        }
        Ok(unmet)
    });
    let mut unmet = Vec::new();
    for c in checked {
        unmet.extend(c?);
    }
    if !unmet.is_empty() {
        let shown: Vec<String> = unmet.iter().take(10).cloned().collect();
        bail!(
            "refusing to publish {}: {} threshold(s) not met: {}{} (repository unchanged; see `hale-sign status {}`)",
            a.dir.display(),
            unmet.len(),
            shown.join("; "),
            if unmet.len() > 10 { " …" } else { "" },
            a.dir.display()
        );
    }

    if let Some(root) = staged.iter().find(|m| m.name == "root") {
        online_roles_under(root, &repo, &a)?;
    }

    t.add("check", check_start.elapsed());

    // 2. what to write (names in the repository)
    let build_start = Instant::now();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for m in &staged {
        let name = hale_repo::layout::metadata_name(&m.name, m.version, true);
        let path = repo.join(&name);
        if let Ok(existing) = std::fs::read(&path) {
            if existing != m.bytes {
                bail!(
                    "{}: already published with other content (versions are immutable)",
                    path.display()
                );
            }
        }
        files.push((name, m.bytes.clone()));
        if m.name == "root" {
            files.push(("root.json".into(), m.bytes.clone()));
        }
    }

    // 3. snapshot and timestamp, when their keys are given
    let mut online: Vec<(String, Vec<u8>)> = Vec::new();
    let mut snapshot_note = String::new();
    if !a.timestamp_keys.is_empty() {
        let root = state.root()?;
        let root_auth = Authority {
            label: format!("root v{}", root.version),
            delegator: "root".into(),
            bytes: root.bytes.clone(),
        };
        let (snap_version, snap_bytes) = if !a.snapshot_keys.is_empty() {
            let meta: BTreeMap<String, u64> = state
                .roles
                .values()
                .filter(|m| m.kind() == "targets")
                .map(|m| (m.name.clone(), m.version))
                .collect();
            let v = state.published.get("snapshot").copied().unwrap_or(0) + 1;
            let exp = build::expires_at(state.now, state.config.expires.snapshot)?;
            let body = build::snapshot(state.profile, v, &exp, &meta);
            let bytes = sign_online(
                "snapshot",
                &body,
                &a.snapshot_keys,
                &root_auth,
                root.version,
                &a.pass,
                &mut t,
            )?;
            online.push((format!("{v}.snapshot.json"), bytes.clone()));
            snapshot_note = format!(", snapshot v{v} ({} roles)", meta.len());
            (v, bytes)
        } else {
            let v = state
                .published
                .get("snapshot")
                .copied()
                .context("no published snapshot to timestamp: give --snapshot-key too")?;
            let p = repo.join(format!("{v}.snapshot.json"));
            (
                v,
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            )
        };
        let v = timestamp_version(&repo)? + 1;
        let exp = build::expires_at(state.now, state.config.expires.timestamp)?;
        let body = build::timestamp(state.profile, v, &exp, snap_version, &snap_bytes);
        let bytes = sign_online(
            "timestamp",
            &body,
            &a.timestamp_keys,
            &root_auth,
            root.version,
            &a.pass,
            &mut t,
        )?;
        online.push(("timestamp.json".into(), bytes));
        snapshot_note.push_str(&format!(", timestamp v{v}"));
    }

    // build: everything since the threshold check but unlocking and signing
    let signing = t.get("unlock") + t.get("sign");
    t.add("build", build_start.elapsed().saturating_sub(signing));

    // 4. the client workflow over the repository as it would be: the files to write laid over
    // it in memory. Nothing is written unless hale-core accepts the whole result.
    let (ts, rest): (Vec<_>, Vec<_>) = online
        .into_iter()
        .partition(|(name, _)| name == "timestamp.json");
    files.extend(rest);
    let verify_start = Instant::now();
    let overlay = Repository::with_overlay(
        &repo,
        files
            .iter()
            .chain(&ts)
            .map(|(name, bytes)| (name.clone(), bytes.as_slice()))
            .collect(),
    );
    let check = verify_as_client(&overlay, state.now);
    crash_point("verified");
    t.add("verify", verify_start.elapsed());
    let summary = check.map_err(|e| {
        anyhow::anyhow!(
            "refusing to publish {}: {} (repository unchanged; staged files kept)",
            a.dir.display(),
            crate::render(&e)
        )
    })?;

    // 5. write: metadata and snapshot first, the timestamp that points at them last. The bytes
    // are those verified above; the journal undoes a write that fails or is cut short. No second
    // client check after the write: it would find what was verified above (re-hashing every
    // target to do so), and could act only once the files are served, by taking back what a
    // device may already hold (a root above all) — the window this order closes.
    let write_start = Instant::now();
    let mut written = Written::new(&a.dir, &repo);
    let result = written.write(&files).and_then(|_| written.write(&ts));
    crash_point("written");
    t.add("write", write_start.elapsed());
    if let Err(e) = result {
        let problems = written.roll_back();
        if !problems.is_empty() {
            bail!(
                "publish failed: {}; rolling back ALSO failed: {}",
                crate::render(&e),
                problems.join("; ")
            );
        }
        bail!(
            "refusing to publish {}: {} (repository restored; staged files kept)",
            a.dir.display(),
            crate::render(&e)
        );
    }
    // the publish stands from here (a kill after this leaves staged copies of what is published,
    // which the next publish clears)
    written.done()?;
    crash_point("done");
    t.time("write", || {
        staged.iter().try_for_each(|m| {
            std::fs::remove_file(&m.path)
                .with_context(|| format!("removing published {}", m.path.display()))
        })
    })?;
    let names: Vec<String> = staged
        .iter()
        .map(|m| format!("{} v{}", m.name, m.version))
        .collect();
    // targets roles published without a new snapshot: in the repository, not yet seen by devices
    let unlisted: Vec<&str> = if a.timestamp_keys.is_empty() {
        staged
            .iter()
            .filter(|m| m.kind() == "targets")
            .map(|m| m.name.as_str())
            .collect()
    } else {
        Vec::new()
    };
    let shown = if names.len() > 8 {
        format!("{} files", names.len())
    } else {
        names.join(", ")
    };
    match (shown.is_empty(), snapshot_note.strip_prefix(", ")) {
        // nothing staged: snapshot and timestamp signed again
        (true, Some(online)) => println!(
            "published {online} (nothing staged: signed again) into {}",
            repo.display()
        ),
        _ => println!("published {shown}{snapshot_note} into {}", repo.display()),
    }
    match summary {
        Some(s) => println!(
            "verified with hale-core: root v{}, timestamp v{}, snapshot v{}, targets v{}, {} delegated role(s), {} target file(s)",
            s.root_chain.last().copied().unwrap_or(0),
            s.timestamp,
            s.snapshot,
            s.targets,
            s.delegated.len(),
            s.target_files
        ),
        None => println!("root chain verified with hale-core; no timestamp yet (give --snapshot-key and --timestamp-key, or let the server sign them)"),
    }
    if !unlisted.is_empty() {
        println!(
            "not seen by devices yet: no snapshot lists the new {} (`hale-sign push` to the \
             server, which signs snapshot and timestamp, or publish with --snapshot-key and \
             --timestamp-key)",
            unlisted.join(", ")
        );
    }
    t.finish();
    Ok(ExitCode::SUCCESS)
}
