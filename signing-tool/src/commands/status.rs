//! `hale-sign status FILE-or-DIR`: for each staged file, who signed, who is missing, which
//! signatures are invalid and which come from keys the role does not list. hale-core's
//! `check_signatures` decides; this command prints. Exit 0 when every threshold is met, 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hale_core::verify::{KeyStatus, Report};
use serde_json::Value;

use super::sign::{repo_of, role_of};
use crate::error::read;
use crate::state::{Authority, State};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A repository directory (every staged file) or one staged file.
    #[arg(value_name = "FILE-or-DIR")]
    path: PathBuf,
    /// The repository directory, when FILE is not inside DIR/staged/.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// One line per file.
    #[arg(long, short)]
    quiet: bool,
}

/// One file to report on: role, path, bytes, "vN (expires …)", why devices would refuse it for
/// its expiry (if they would).
type Staged = (String, PathBuf, Vec<u8>, String, Option<String>);

/// The threshold reports of one staged file, one per authority.
pub fn reports(
    role: &str,
    bytes: &[u8],
    auths: &[Authority],
) -> anyhow::Result<Vec<(String, Report)>> {
    crate::state::check_body(role, bytes)?;
    auths
        .iter()
        .map(|a| Ok((a.label.clone(), a.report(role, bytes)?)))
        .collect()
}

/// "role vN: valid/threshold by authority" for every threshold `m` does not meet yet (empty: all met).
pub fn unmet_thresholds(
    state: &crate::state::State,
    m: &crate::state::Meta,
) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let auths = state
        .authorities(&m.name)
        .with_context(|| format!("{}", m.path.display()))?;
    unmet(m, &auths, false)
}

/// [`unmet_thresholds`] of a root as a device applies it, whether it is staged or already in
/// `repository/`: a threshold of its own root keys AND of the root before it
/// ([`State::authorities_of`]); each threshold not met also names the keys whose signature it
/// lacks ("…, missing: K, K").
pub fn unmet_root_thresholds(
    state: &crate::state::State,
    m: &crate::state::Meta,
) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let auths = state
        .authorities_of("root", &m.bytes)
        .with_context(|| format!("{}", m.path.display()))?;
    unmet(m, &auths, true)
}

fn unmet(
    m: &crate::state::Meta,
    auths: &[Authority],
    name_keys: bool,
) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    Ok(reports(&m.name, &m.bytes, auths)
        .with_context(|| format!("{}", m.path.display()))?
        .into_iter()
        .filter(|(_, r)| !r.met())
        .map(|(by, r)| {
            let mut line = format!(
                "{} v{}: {}/{} by {by}",
                m.name,
                m.version,
                r.valid(),
                r.threshold
            );
            if name_keys {
                for (what, status) in [
                    ("missing", KeyStatus::Missing),
                    ("invalid", KeyStatus::Invalid),
                ] {
                    let keys: Vec<String> = r
                        .keys
                        .iter()
                        .filter(|(_, s)| *s == status)
                        .map(|(k, _)| label(k.as_str()))
                        .collect();
                    if !keys.is_empty() {
                        line.push_str(&format!(", {what}: {}", keys.join(", ")));
                    }
                }
            }
            line
        })
        .collect())
}

fn label(keyid: &str) -> String {
    match crate::demo::name_of(keyid) {
        Some(n) => format!("{keyid} (DEMO {n})"),
        None => keyid.to_string(),
    }
}

fn print_report(auth: &str, r: &Report, quiet: bool) {
    let met = if r.met() { "MET" } else { "NOT MET" };
    println!(
        "  {auth}: threshold {} — {} valid — {met}",
        r.threshold,
        r.valid()
    );
    if quiet {
        return;
    }
    let pick = |want: &dyn Fn(&KeyStatus) -> bool| -> Vec<String> {
        r.keys
            .iter()
            .filter(|(_, s)| want(s))
            .map(|(k, s)| match s {
                KeyStatus::Unusable(why) => format!("{} ({why})", label(k.as_str())),
                _ => label(k.as_str()),
            })
            .collect()
    };
    for (title, list) in [
        ("signed", pick(&|s| *s == KeyStatus::Signed)),
        ("missing", pick(&|s| *s == KeyStatus::Missing)),
        ("invalid", pick(&|s| *s == KeyStatus::Invalid)),
        ("unusable", pick(&|s| matches!(s, KeyStatus::Unusable(_)))),
    ] {
        if !list.is_empty() || title == "missing" || title == "signed" {
            let shown = if list.is_empty() {
                "-".to_string()
            } else {
                list.join(", ")
            };
            println!("    {title:<8} {shown}");
        }
    }
}

/// Key ids of signatures no authority lists.
fn unlisted(bytes: &[u8], reps: &[(String, Report)]) -> Vec<String> {
    let doc: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let listed: Vec<&str> = reps
        .iter()
        .flat_map(|(_, r)| r.keys.iter().map(|(k, _)| k.as_str()))
        .collect();
    doc.get("signatures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("keyid").and_then(Value::as_str))
                .filter(|k| !listed.contains(k))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (state, files): (State, Vec<Staged>) = if a.path.is_dir() {
        let st = State::load(&a.path)?;
        let f = st
            .staged()
            .map(|m| {
                (
                    m.name.clone(),
                    m.path.clone(),
                    m.bytes.clone(),
                    describe(m),
                    m.expired(st.now),
                )
            })
            .collect();
        (st, f)
    } else {
        let dir = repo_of(&a.path, a.repo.as_deref())?;
        let st = State::load(&dir)?;
        let role = role_of(&a.path)?;
        let bytes = read(&a.path)?;
        let meta = crate::state::Meta::from_bytes(&role, bytes.clone(), &a.path, true)?;
        let expired = meta.expired(st.now);
        (
            st,
            vec![(role, a.path.clone(), bytes, describe(&meta), expired)],
        )
    };
    state.warn_demo();
    let journal = state.dir.join(crate::journal::JOURNAL);
    if journal.exists() {
        println!(
            "{}: a publish was interrupted and the repository holds part of it: run `hale-sign \
             publish {}` to finish the interrupted publish (it writes the verified files the \
             journal lists)",
            journal.display(),
            state.dir.display()
        );
    }
    // a stale staged role is said, with the way on, before any threshold is counted on it
    state.check_staged_roles()?;
    if a.path.is_dir() {
        expiry_notes(&state);
    }
    if files.is_empty() {
        println!("{}: nothing staged", state.dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut all_met = true;
    let mut unmet = Vec::new();
    let mut stale = Vec::new();
    let mut skipping = Vec::new();
    for (role, path, bytes, version, expired) in &files {
        if expired.is_some() {
            stale.push(role.clone());
        }
        let auths = state
            .authorities_of(role, bytes)
            .with_context(|| format!("{}", path.display()))?;
        let reps = reports(role, bytes, &auths).with_context(|| format!("{}", path.display()))?;
        let met = reps.iter().all(|(_, r)| r.met());
        all_met &= met;
        if !met {
            unmet.push(role.clone());
        }
        let skipped = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("signed").map(|s| state.config.keys_devices_skip(s)))
            .unwrap_or_default();
        if !skipped.is_empty() {
            skipping.push(role.clone());
        }
        if a.quiet && files.len() > 16 && met && expired.is_none() && skipped.is_empty() {
            continue;
        }
        let verdict = match (expired, met, skipped.is_empty()) {
            (Some(why), _, _) => format!("{why}: devices would refuse it"),
            (None, _, false) => "lists keys devices do not verify: not ready to publish".into(),
            (None, true, true) => "ready".into(),
            (None, false, true) => "needs signatures".into(),
        };
        println!("{}: {role} {version} — {verdict}", path.display());
        for k in &skipped {
            println!(
                "    key {k}: devices verify {} only (device_key_types): its signatures count \
                 for nothing there; remove it (`hale-sign rotate --remove-key`) or list its type",
                state.config.device_key_types().join(", ")
            );
        }
        for (auth, r) in &reps {
            print_report(auth, r, a.quiet);
        }
        let extra = unlisted(bytes, &reps);
        if !extra.is_empty() {
            println!(
                "    unlisted signatures (ignored): {}",
                extra
                    .iter()
                    .map(|k| label(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !stale.is_empty() {
        println!(
            "{} of {} staged file(s) expired, not ready to publish: {} (stage them again with a later expiry: {})",
            stale.len(),
            files.len(),
            summarize(&stale),
            renew_command(&state, &stale)
        );
    }
    if !skipping.is_empty() {
        println!(
            "{} of {} staged file(s) list keys this repository's devices do not verify, not ready \
             to publish: {}",
            skipping.len(),
            files.len(),
            summarize(&skipping)
        );
    }
    if all_met && stale.is_empty() && skipping.is_empty() {
        println!(
            "all {} staged file(s) meet their thresholds: ready to publish",
            files.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        if !unmet.is_empty() {
            println!(
                "{} of {} staged file(s) below threshold: {}",
                unmet.len(),
                files.len(),
                summarize(&unmet)
            );
        }
        Ok(ExitCode::from(1))
    }
}

fn describe(m: &crate::state::Meta) -> String {
    format!("v{} (expires {})", m.version, m.expires())
}

/// Published offline-signed roles (root, targets, delegated; not staged again) that have
/// expired or expire within [`RENEW_WITHIN`]: after that devices refuse every update.
fn expiry_notes(state: &State) {
    let mut late = Vec::new();
    // hashed bins are made with one expiry and expire together: counted on one line, renewed
    // with one `--role <prefix>`
    let bins = state.config.bins.as_ref();
    let is_bin =
        |n: &str| bins.is_some_and(|b| crate::state::is_bin(n, &b.prefix, u64::from(b.bit_length)));
    let (mut late_bins, mut all_bins, mut earliest) = (0usize, 0usize, i64::MAX);
    for m in state.roles.values() {
        if m.staged || m.name == "snapshot" || m.name == "timestamp" {
            continue;
        }
        let Some(t) = hale_core::time::parse_expires(m.expires().as_bytes()) else {
            continue;
        };
        let left = t.saturating_sub(state.now);
        if is_bin(&m.name) {
            all_bins += 1;
            if left <= RENEW_WITHIN {
                late_bins += 1;
                earliest = earliest.min(t);
            }
            continue;
        }
        // a delegated role holds only the targets delegated to it
        let refused = if crate::state::top_level(&m.name).is_some() {
            "devices refuse every update"
        } else {
            "devices refuse the targets it holds"
        };
        if hale_core::time::is_expired(t, state.now) {
            println!(
                "{} v{} expired at {}: {refused} until a renewed version is published",
                m.name,
                m.version,
                m.expires()
            );
        } else if left <= RENEW_WITHIN {
            println!(
                "{} v{} expires at {} (in {}): {refused} after it",
                m.name,
                m.version,
                m.expires(),
                span(left)
            );
        } else {
            continue;
        }
        late.push(m.name.clone());
    }
    if let (Some(b), true) = (bins, late_bins > 0) {
        let when = hale_core::Date(earliest);
        if hale_core::time::is_expired(earliest, state.now) {
            println!(
                "{late_bins} of {all_bins} published hashed bins {}-* expired or expire within 14 \
                 days, the first at {when}: devices refuse the targets they hold after that",
                b.prefix
            );
        } else {
            println!(
                "{late_bins} of {all_bins} published hashed bins {}-* expire within 14 days, the \
                 first at {when} (in {}): devices refuse the targets they hold after that",
                b.prefix,
                span(earliest.saturating_sub(state.now))
            );
        }
        late.push(b.prefix.clone());
    }
    if !late.is_empty() {
        println!(
            "to renew: {}, then sign, publish and push",
            renew_command(state, &late)
        );
    }
}

/// How long before its expiry `status` mentions a published role: 14 days, time to gather a
/// threshold of signers.
const RENEW_WITHIN: i64 = 14 * 86_400;

/// `secs` as "N days", "N hours" or "N minutes".
fn span(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", (s / 60).max(1)),
    }
}

/// `hale-sign renew DIR --role R …` for `roles` (`--role <role>` for more than six).
pub fn renew_command(state: &State, roles: &[String]) -> String {
    let mut cmd = format!("`hale-sign renew {}", state.dir.display());
    if roles.len() <= 6 {
        for r in roles {
            cmd.push_str(&format!(" --role {r}"));
        }
    } else {
        cmd.push_str(" --role <role> …");
    }
    cmd.push('`');
    cmd
}

fn summarize(names: &[String]) -> String {
    if names.len() <= 6 {
        names.join(", ")
    } else {
        format!(
            "{} ... ({} more)",
            names.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            names.len() - 5
        )
    }
}
