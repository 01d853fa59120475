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
use crate::journal::{Entry, Journal};
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

/// Test-only fault injection: the process dies (abort, no clean-up) at the named point of a
/// publish: `verified` (the client workflow run over the repository as it would be, its result
/// not acted on, nothing written), `journaled` (the journal durable, nothing written yet),
/// `metadata` (the metadata and snapshot written, not the timestamp), `written` (everything
/// written, the journal still there) or `done` (the journal removed, the staged copies not yet).
/// `metadata` applies to a publish finishing an interrupted one too.
const CRASH_ENV: &str = "HALE_SIGN_TEST_CRASH_AFTER";

fn crash_point(name: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Finish the publish the journal in `a.dir` records (one killed, or stopped by a write that
/// failed): write what it lists, in its order, and remove it. Not undone: a device may already
/// hold part of it (a root above all), and a root taken back and then published again with other
/// content forks the fleet.
///
/// The client workflow is not run again first: everything listed was verified as a whole before
/// the first write, and a part of it may already be served. A check could only refuse to write
/// the rest, which leaves the repository half a publish (a new root served with a timestamp that
/// the new root's keys do not sign, say: devices stuck until it is finished), and the way on from
/// there would be to take back what was served. What can have changed since is the clock: a
/// timestamp (or any role) that expired while the publish was interrupted is written all the
/// same, with a note. A device refuses an expired file and keeps running the firmware it
/// verified; a newer timestamp, from the next publish with the online keys or from hale-server,
/// supersedes it. A repository changed since by hand is refused ([`Journal::check_repository`]).
///
/// If the finish fails in turn (a full disk), the journal stays and the error says to run
/// `publish` again: nothing is lost, and a file written is never written twice with other bytes.
fn finish_interrupted(a: &PublishArgs, repo: &Path, journal: &Journal) -> anyhow::Result<()> {
    journal.check_repository(repo)?;
    let written = journal
        .write(repo, || crash_point("metadata"))
        .map_err(|e| {
            anyhow::anyhow!(
                "finishing the interrupted publish of {} failed: {}. Nothing taken back and {} \
                 kept: fix the cause (disk space, permissions) and run `hale-sign publish {}` \
                 again to finish it",
                a.dir.display(),
                crate::render(&e),
                journal.path().display(),
                a.dir.display()
            )
        })?;
    journal.remove()?;
    let total = journal.entries().count();
    println!(
        "finished the publish that was interrupted: {} into {} ({} of {total} file(s) were \
         already written; the bytes it verified before it was interrupted, nothing taken back)",
        journal.describe(),
        repo.display(),
        written.already,
    );
    let now = crate::state::unix_now();
    for e in journal.entries() {
        let role = match crate::state::split_versioned(&e.name) {
            Some((_, role)) => role,
            None if e.name == "timestamp.json" => "timestamp",
            None => continue,
        };
        let Ok(m) =
            crate::state::Meta::from_bytes(role, e.bytes.clone(), &repo.join(&e.name), false)
        else {
            continue;
        };
        if let Some(why) = m.expired(now) {
            eprintln!(
                "note: {role} v{} {why}, while the publish was interrupted: written all the same \
                 (a device refuses it and keeps the firmware it verified; taking it back could \
                 take back what a device holds). Devices take no update until a newer one is \
                 published",
                m.version
            );
        }
    }
    Ok(())
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
    // no other command changes the directory until this one exits (the journal's finish first)
    crate::config::Config::load(&a.dir)?;
    let _lock = crate::state::lock_for_change(&a.dir)?;
    // a publish killed (or stopped by a failed write) before it finished: finish it, then go on
    let repo = repository_dir(&a.dir);
    let interrupted = Journal::load(&a.dir)?;
    if let Some(journal) = &interrupted {
        finish_interrupted(&a, &repo, journal)?;
    }
    let mut state = t.time("load", || State::load(&a.dir))?;
    // staged copies of what a finished publish wrote (killed before it removed them, or just
    // finished above)
    for p in std::mem::take(&mut state.already_published) {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        eprintln!("{}: already published; staged copy removed", p.display());
    }
    state.check_staged_roles()?;
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
        if interrupted.is_some() {
            // the interrupted publish was the whole of it
            println!("{}: nothing else staged", a.dir.display());
            t.finish();
            return Ok(ExitCode::SUCCESS);
        }
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
    // are those verified above, and the journal that lists them is durable before the first
    // write: a write that fails or is cut short is finished by the next publish, never undone
    // (see `finish_interrupted`). No second client check after the write: it would find what was
    // verified above (re-hashing every target to do so), and could act only once the files are
    // served, by taking back what a device may already hold (a root above all).
    let write_start = Instant::now();
    let entries = |v: Vec<(String, Vec<u8>)>| {
        v.into_iter()
            .map(|(name, bytes)| Entry { name, bytes })
            .collect::<Vec<_>>()
    };
    let journal = Journal::new(&a.dir, entries(files), entries(ts).pop());
    journal.save().map_err(|e| {
        anyhow::anyhow!(
            "refusing to publish {}: writing {}: {} (repository unchanged; staged files kept)",
            a.dir.display(),
            journal.path().display(),
            crate::render(&e)
        )
    })?;
    crash_point("journaled");
    let result = journal.write(&repo, || crash_point("metadata"));
    crash_point("written");
    t.add("write", write_start.elapsed());
    if let Err(e) = result {
        // an in-process failure follows the rule of a kill: what was written may be served
        // already, and the rest was verified with it
        bail!(
            "publishing {} stopped while writing: {}. Nothing taken back: every file it writes \
             was verified before the first write, and {} lists them. Fix the cause (disk space, \
             permissions) and run `hale-sign publish {}` to finish it",
            a.dir.display(),
            crate::render(&e),
            journal.path().display(),
            a.dir.display()
        );
    }
    // the publish stands from here (a kill after this leaves staged copies of what is published,
    // which the next publish clears)
    journal.remove()?;
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
