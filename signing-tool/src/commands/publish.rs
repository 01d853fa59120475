//! `hale-sign publish DIR [--snapshot-key S.key --timestamp-key TS.key]`: move fully signed staged
//! metadata into `repository/` under its consistent names, sign snapshot and timestamp when their
//! keys are given (the directory is then a complete repository any static web server can serve),
//! and run the client workflow over the result. Refuses — writing nothing — while any staged file
//! is below its threshold; rolls back its own writes when hale-core rejects the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use hale_repo::build;
use serde_json::Value;

use super::status::unmet_thresholds;
use crate::client;
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
    /// The snapshot key (.key): sign a new snapshot listing every targets role.
    #[arg(long, value_name = "KEY", requires = "timestamp_key")]
    snapshot_key: Option<PathBuf>,
    /// The timestamp key (.key): sign a new timestamp for the newest snapshot.
    #[arg(long, value_name = "KEY")]
    timestamp_key: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Print phase timings as one JSON line on stderr (also HALE_SIGN_TIMINGS=1).
    #[arg(long)]
    timings: bool,
}

/// Files written by this publish and what they held before (to roll back).
struct Written {
    undo: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Written {
    fn write(&mut self, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = Batch::new();
        for (p, bytes) in files {
            let before = if p.exists() {
                Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
            } else {
                None
            };
            self.undo.push((p.clone(), before));
            batch.add(p, bytes)?;
        }
        batch.commit()?;
        Ok(())
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
        problems
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

pub fn run(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let mut t = Timings::start("publish", a.timings);
    let state = t.time("load", || State::load(&a.dir))?;
    state.warn_demo();
    let repo = repository_dir(&a.dir);
    let staged: Vec<_> = state.staged().collect();
    if staged.is_empty() && a.timestamp_key.is_none() {
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

    t.add("check", check_start.elapsed());

    // 2. what to write
    let build_start = Instant::now();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
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
        files.push((path, m.bytes.clone()));
        if m.name == "root" {
            files.push((repo.join("root.json"), m.bytes.clone()));
        }
    }

    // 3. snapshot and timestamp, when their keys are given
    let mut online: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut snapshot_note = String::new();
    if let Some(ts_key) = &a.timestamp_key {
        let root = state.root()?;
        let root_auth = Authority {
            label: format!("root v{}", root.version),
            delegator: "root".into(),
            bytes: root.bytes.clone(),
        };
        let (snap_version, snap_bytes) = if let Some(sk) = &a.snapshot_key {
            let key = t.time("unlock", || {
                load_private(sk, &a.pass.source(&sk.display().to_string()))
            })?;
            let meta: BTreeMap<String, u64> = state
                .roles
                .values()
                .filter(|m| m.kind() == "targets")
                .map(|m| (m.name.clone(), m.version))
                .collect();
            let v = state.published.get("snapshot").copied().unwrap_or(0) + 1;
            let exp = build::expires_at(state.now, state.config.expires.snapshot)?;
            let body = build::snapshot(state.profile, v, &exp, &meta);
            let bytes = t.time("sign", || hale_repo::sign::sign_new(&body, &[&key]))?;
            let r = root_auth.report("snapshot", &bytes)?;
            if !r.met() {
                bail!(
                    "{}: key {} is not a snapshot key of root v{} ({} of {} signatures)",
                    sk.display(),
                    key.keyid(),
                    root.version,
                    r.valid(),
                    r.threshold
                );
            }
            online.push((repo.join(format!("{v}.snapshot.json")), bytes.clone()));
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
        let key = t.time("unlock", || {
            load_private(ts_key, &a.pass.source(&ts_key.display().to_string()))
        })?;
        let v = timestamp_version(&repo)? + 1;
        let exp = build::expires_at(state.now, state.config.expires.timestamp)?;
        let body = build::timestamp(state.profile, v, &exp, snap_version, &snap_bytes);
        let bytes = t.time("sign", || hale_repo::sign::sign_new(&body, &[&key]))?;
        let r = root_auth.report("timestamp", &bytes)?;
        if !r.met() {
            bail!(
                "{}: key {} is not a timestamp key of root v{} ({} of {} signatures)",
                ts_key.display(),
                key.keyid(),
                root.version,
                r.valid(),
                r.threshold
            );
        }
        online.push((repo.join("timestamp.json"), bytes));
        snapshot_note.push_str(&format!(", timestamp v{v}"));
    }

    // build: everything since the threshold check but unlocking and signing
    let signing = t.get("unlock") + t.get("sign");
    t.add("build", build_start.elapsed().saturating_sub(signing));

    // 4. write: metadata and snapshot first, the timestamp that points at them last
    let write_start = Instant::now();
    let mut written = Written { undo: Vec::new() };
    let (ts, rest): (Vec<_>, Vec<_>) = online
        .into_iter()
        .partition(|(p, _)| p.ends_with("timestamp.json"));
    files.extend(rest);
    let result = written.write(&files).and_then(|_| written.write(&ts));
    t.add("write", write_start.elapsed());
    let verify_start = Instant::now();
    // 5. the client workflow over the result, from the first root
    let check = result.and_then(|_| {
        let first = std::fs::read(repo.join("1.root.json"))
            .with_context(|| format!("reading {}/1.root.json", repo.display()))?;
        if repo.join("timestamp.json").exists() {
            client::verify_repository(&repo, &first, state.now)
                .map(Some)
                .map_err(anyhow::Error::from)
        } else {
            client::verify_root_chain(&repo, &first, state.now)
                .map(|_| None)
                .map_err(anyhow::Error::from)
        }
    });
    t.add("verify", verify_start.elapsed());
    let summary = match check {
        Ok(s) => s,
        Err(e) => {
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
    };
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
    let shown = if names.len() > 8 {
        format!("{} files", names.len())
    } else {
        names.join(", ")
    };
    println!("published {shown}{snapshot_note} into {}", repo.display());
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
    t.finish();
    Ok(ExitCode::SUCCESS)
}
