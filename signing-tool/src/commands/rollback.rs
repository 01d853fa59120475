//! `hale-sign rollback authorize|sign|status`: rollback authorizations, signed by a threshold of
//! the `rollback` role that the published top-level `targets` delegates to (create it once with
//! `hale-sign delegate DIR --to rollback --key A.pub --key B.pub --threshold 2`, no paths).
//!
//! ```text
//! hale-sign rollback authorize DIR (--device ID ... | --group G) --target PATH --reason TEXT
//!           --expires-in DURATION [--installed V] --key K.key ... --out FILE
//! hale-sign rollback sign DIR FILE --key K.key ...     a second signer adds a signature
//! hale-sign rollback status DIR FILE                    who signed, who still has to (exit 1)
//! ```
//!
//! Threats handled here: the target must be in the published repository (found by the client
//! workflow from root v1, so its sha256 is the one devices verify); a validity above the maximum
//! (`--max-validity`, else `rollback_max_validity` in hale-repo.json, else
//! `hale_core::rollback::DEFAULT_MAX_VALIDITY`) is refused — devices refuse it too; a key the
//! rollback role does not list is refused before any passphrase is asked; once the threshold is
//! met, hale-core verifies the document exactly as a device will.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hale_core::metadata::{Envelope, Targets};
use hale_core::rollback::{
    verify_authorization, Request, DEFAULT_MAX_VALIDITY, MAX_REASON, ROLLBACK_ROLE,
};
use hale_core::verify::{KeyStatus, Report};
use hale_core::{Name, Version};
use hale_repo::build::{self, RollbackAuthorization};
use hale_repo::{sign, SigningKey};
use serde_json::Value;

use super::bundle::{published_root, resolve_with, source, FromServer};
use crate::config::parse_duration;
use crate::key_source::{load_private, peek_private};
use crate::state::{unix_now, Authority, State};
use crate::PassArgs;

#[derive(Subcommand, Debug)]
pub enum RollbackCmd {
    /// Write a new authorization signed by your rollback-role key(s).
    Authorize(AuthorizeArgs),
    /// Add your signature to an existing authorization file (in place).
    Sign(SignArgs),
    /// Who signed an authorization and who still has to (exit 1 while below threshold).
    Status(StatusArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("whom").required(true).multiple(true).args(["devices", "group"])))]
pub struct AuthorizeArgs {
    /// The repository working directory (its published repository is used).
    dir: PathBuf,
    /// A device the authorization names; repeatable. It names devices, a group, or both.
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// A device group (ward, clinic) the authorization names.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// The target to go back to (must be in the published repository).
    #[arg(long, value_name = "PATH")]
    target: String,
    /// Why (an incident reference): reported by the device and audited by the server.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// How long the authorization is valid (e.g. 8h).
    #[arg(long, value_name = "DURATION")]
    expires_in: String,
    /// The version the devices must be running (the release being replaced).
    #[arg(long, value_name = "V")]
    installed: Option<String>,
    /// Longest validity allowed (default: `rollback_max_validity` in hale-repo.json, else 24h,
    /// the most devices accept: it may only be lowered).
    #[arg(long, value_name = "DURATION")]
    max_validity: Option<String>,
    /// Encrypted private key file (.key) of the rollback role; repeatable.
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<PathBuf>,
    /// Where to write the authorization.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: FromServer,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The repository working directory (its published repository is used).
    dir: PathBuf,
    /// The authorization file (signed in place).
    file: PathBuf,
    /// Encrypted private key file (.key) of the rollback role; repeatable.
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<PathBuf>,
    /// Longest validity allowed (default: `rollback_max_validity` in hale-repo.json, else 24h,
    /// the most devices accept: it may only be lowered).
    #[arg(long, value_name = "DURATION")]
    max_validity: Option<String>,
    #[command(flatten)]
    server: FromServer,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The repository working directory (its published repository is used).
    dir: PathBuf,
    /// The authorization file.
    file: PathBuf,
    /// Longest validity allowed (default: `rollback_max_validity` in hale-repo.json, else 24h,
    /// the most devices accept: it may only be lowered).
    #[arg(long, value_name = "DURATION")]
    max_validity: Option<String>,
    #[command(flatten)]
    server: FromServer,
}

pub fn run(cmd: RollbackCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RollbackCmd::Authorize(a) => authorize(a),
        RollbackCmd::Sign(a) => sign_existing(a),
        RollbackCmd::Status(a) => status(a),
    }
}

/// The longest validity accepted: the flag, else `rollback_max_validity` in hale-repo.json
/// (a duration string or seconds), else hale-core's default. Either may only lower the
/// default: devices refuse an authorization valid for longer, whatever the tool allowed.
pub fn max_validity(state: &State, flag: Option<&str>) -> anyhow::Result<i64> {
    let (what, max) = match (flag, state.config.extra.get("rollback_max_validity")) {
        (Some(f), _) => (format!("--max-validity {f}"), parse_duration(f)?),
        (None, None) => return Ok(DEFAULT_MAX_VALIDITY),
        (None, Some(Value::Number(n))) => (
            format!("hale-repo.json: rollback_max_validity {n}"),
            n.as_i64()
                .filter(|n| *n > 0)
                .context("hale-repo.json: rollback_max_validity must be positive")?,
        ),
        (None, Some(Value::String(s))) => (
            format!("hale-repo.json: rollback_max_validity {s:?}"),
            parse_duration(s)?,
        ),
        (None, Some(_)) => bail!("hale-repo.json: rollback_max_validity must be a duration"),
    };
    if max > DEFAULT_MAX_VALIDITY {
        bail!(
            "{what}: {max} s is longer than devices accept ({DEFAULT_MAX_VALIDITY} s): it may \
             only lower that"
        );
    }
    Ok(max)
}

/// Verify `auth` with hale-core as a device it names would, for `target` with `sha256`, against
/// the verified top-level `targets`. Returns a one-line summary.
pub fn verify_for_target(
    targets: &[u8],
    auth: &[u8],
    target: &str,
    sha256: [u8; 32],
    now: i64,
    max_validity: i64,
) -> anyhow::Result<String> {
    check_for_target(targets, auth, target, sha256, now, max_validity, true)
}

/// [`verify_for_target`], or with `signatures` false only the authorization's terms (hale-core's
/// `check_terms`): what a signer refuses before signing.
fn check_for_target(
    targets: &[u8],
    auth: &[u8],
    target: &str,
    sha256: [u8; 32],
    now: i64,
    max_validity: i64,
    signatures: bool,
) -> anyhow::Result<String> {
    let doc: Value = serde_json::from_slice(auth).context("not JSON")?;
    let s = &doc["signed"];
    let device = s["devices"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = s["group"].as_str();
    let running = match s["installed"].as_str() {
        Some(v) => Version::parse(v).context("`installed` is not a semantic version")?,
        None => Version::new(0, 0, 0),
    };
    let env = Envelope::parse(targets, "targets").map_err(|e| anyhow::anyhow!("targets: {e}"))?;
    let t = Targets::parse(&env.signed, Name::new("targets"))
        .map_err(|e| anyhow::anyhow!("targets: {e}"))?;
    let req = Request {
        device_id: device,
        group,
        running,
        target,
        target_sha256: sha256,
        // what a device that never used an authorization accepts (a device that used a later
        // one refuses this one: `AuthorizationUsed`)
        last_used: 0,
    };
    if !signatures {
        hale_core::rollback::check_terms(auth, &req, now, max_validity)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok("its terms hold".into());
    }
    let a = verify_authorization(&t, auth, &req, now, max_validity)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!(
        "{}, valid until {}",
        a.reason.to_owned_string(),
        hale_repo::build::expires_at(a.header.expires, 0)?
    ))
}

/// The published repository's verified targets and the target's sha256 (refusing a target the
/// repository does not list).
fn published_target(
    dir: &Path,
    from: &FromServer,
    target: &str,
    now: i64,
) -> anyhow::Result<(Vec<u8>, [u8; 32])> {
    let root = published_root(dir, 1)?;
    let r =
        resolve_with(&mut *source(dir, from)?, &root, target, now, false).with_context(|| {
            match &from.from_server {
                Some(url) => format!("{target} in the repository at {url}"),
                None => match super::bundle::pushed_hint(dir) {
                    Some(hint) => format!(
                        "{target} in the published repository of {} ({hint})",
                        dir.display()
                    ),
                    None => format!("{target} in the published repository of {}", dir.display()),
                },
            }
        })?;
    Ok((r.targets, r.sha256))
}

/// hale-core's per-key report of `auth` against the rollback role of `targets`.
fn report(targets: &[u8], auth: &[u8]) -> anyhow::Result<Report> {
    let env = Envelope::parse(targets, "targets").map_err(|e| anyhow::anyhow!("targets: {e}"))?;
    let t = Targets::parse(&env.signed, Name::new("targets"))
        .map_err(|e| anyhow::anyhow!("targets: {e}"))?;
    let delegates = t.delegations.is_some_and(|d| {
        d.roles.is_some_and(|r| {
            r.iter().any(|v| {
                v.as_object()
                    .and_then(|o| o.get("name").ok().flatten())
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| n.eq_str(ROLLBACK_ROLE))
            })
        })
    });
    if !delegates {
        bail!("the published targets delegates to no `rollback` role: create it with `hale-sign delegate DIR --to rollback --key A.pub --key B.pub --threshold 2`, sign and publish");
    }
    let auth_of = Authority {
        label: "published targets".into(),
        delegator: "targets".into(),
        bytes: targets.to_vec(),
    };
    Ok(auth_of.report(ROLLBACK_ROLE, auth)?)
}

/// Open the keys after checking (without a passphrase) that the rollback role lists each.
fn signing_keys(
    keys: &[PathBuf],
    listed: &Report,
    pass: &PassArgs,
) -> anyhow::Result<Vec<SigningKey>> {
    // every key checked before any passphrase is asked for
    for k in keys {
        let p = peek_private(k)?;
        if !listed.keys.iter().any(|(id, _)| id.as_str() == p.keyid) {
            bail!(
                "{}: key {} is not a key of the rollback role (nothing written)",
                k.display(),
                p.keyid
            );
        }
    }
    keys.iter()
        .map(|k| Ok(load_private(k, &pass.source(&k.display().to_string()))?))
        .collect()
}

fn print_status(file: &Path, r: &Report) -> bool {
    println!(
        "{}: {} of {} required signatures from the rollback role",
        file.display(),
        r.valid(),
        r.threshold
    );
    for (id, s) in &r.keys {
        let what = match s {
            KeyStatus::Signed => "signed",
            KeyStatus::Missing => "missing",
            KeyStatus::Invalid => "INVALID signature",
            KeyStatus::Unusable(why) => why,
        };
        println!("  {id}  {what}");
    }
    if r.met() {
        true
    } else {
        let missing: Vec<String> = r
            .keys
            .iter()
            .filter(|(_, s)| *s != KeyStatus::Signed)
            .map(|(id, _)| id.as_str().to_string())
            .collect();
        println!(
            "still to sign: {} more of {}",
            r.threshold - r.valid(),
            missing.join(", ")
        );
        false
    }
}

/// After a signature: status, and hale-core's full verification once the threshold is met.
fn finish(
    dir: &Path,
    file: &Path,
    bytes: &[u8],
    targets: &[u8],
    sha: [u8; 32],
    max: i64,
) -> anyhow::Result<bool> {
    let r = report(targets, bytes)?;
    let met = print_status(file, &r);
    if met {
        let target = target_of(bytes)?;
        let summary = verify_for_target(targets, bytes, &target, sha, unix_now(), max)
            .with_context(|| format!("{}: hale-core refuses it", file.display()))?;
        println!(
            "complete: verified by hale-core against {} ({summary})",
            dir.display()
        );
    }
    Ok(met)
}

/// The authorization's terms, as its signers must see them.
fn describe(bytes: &[u8]) -> anyhow::Result<String> {
    let d = sign::signed_of(bytes)?;
    let field = |k: &str| match &d[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    // a device named in `devices` or in `group` takes it: either one, not both
    let who = match (d["devices"].is_null(), d["group"].is_null()) {
        (false, true) => format!("devices {}", field("devices")),
        (true, false) => format!("any device of group {}", field("group")),
        (false, false) => format!(
            "devices {} and any device of group {}",
            field("devices"),
            field("group")
        ),
        (true, true) => "no device (neither devices nor group)".to_string(),
    };
    Ok(format!(
        "rollback authorization: target {}; for {who}; while running {}; reason {:?}; issued {}; \
         expires {}",
        field("target"),
        field("installed"),
        field("reason"),
        field("issued"),
        field("expires")
    ))
}

fn target_of(bytes: &[u8]) -> anyhow::Result<String> {
    let doc = sign::signed_of(bytes)?;
    if doc["_type"].as_str() != Some(hale_core::rollback::AUTHORIZATION_TYPE) {
        bail!("not a rollback authorization");
    }
    doc["target"]
        .as_str()
        .map(str::to_string)
        .context("authorization names no target")
}

fn authorize(a: AuthorizeArgs) -> anyhow::Result<ExitCode> {
    // an empty name matches no device: the authorization would be signed for nothing
    if a.devices.iter().any(|d| d.trim().is_empty())
        || a.group.as_ref().is_some_and(|g| g.trim().is_empty())
    {
        bail!("--device and --group name a device or a group: not empty");
    }
    if !reason_fits(&a.reason) {
        bail!("--reason: {REASON_RULE}");
    }
    crate::durable::refuse_existing(&a.out, a.force)?;
    // DIR is only read (its hale-repo.json and published repository/; the authorization is
    // written to --out): no lock, so it is made while a signer or a publish holds the directory;
    // refused while a publish is interrupted
    let state = State::load_to_read(&a.dir)?;
    state.warn_demo();
    let now = unix_now();
    let max = max_validity(&state, a.max_validity.as_deref())?;
    let validity = parse_duration(&a.expires_in)?;
    if validity > max {
        bail!(
            "--expires-in {}: {validity} s is longer than the maximum validity of {max} s (devices refuse it)",
            a.expires_in
        );
    }
    if let Some(v) = &a.installed {
        Version::parse(v).with_context(|| format!("--installed {v}: not a semantic version"))?;
    }
    let (targets, sha) = published_target(&a.dir, &a.server, &a.target, now)?;
    let body = build::rollback_authorization(
        state.profile,
        &RollbackAuthorization {
            devices: a.devices.clone(),
            group: a.group.clone(),
            target: a.target.clone(),
            target_sha256: hex::encode(sha),
            installed: a.installed.clone(),
            reason: a.reason.clone(),
            issued: now,
            expires: now + validity,
        },
    )?;
    let listed = report(&targets, &sign::unsigned(&body)?)?;
    let keys = signing_keys(&a.keys, &listed, &a.pass)?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let bytes = sign::sign_new(&body, &refs)?;
    // again, as it is written: no lock keeps another command from writing --out while a
    // passphrase was asked for, and a check before the write would leave a window between them
    if a.force {
        crate::durable::write_one(&a.out, &bytes)?;
    } else {
        crate::durable::write_new(&a.out, &bytes)?;
    }
    println!("wrote {}", a.out.display());
    finish(&a.dir, &a.out, &bytes, &targets, sha, max)?;
    Ok(ExitCode::SUCCESS)
}

/// What a reason must be. Devices report it with the rollback and hale-server audits it: it
/// takes one line of at most `MAX_REASON` bytes, and would refuse every report carrying a
/// longer one. (Not empty either: it is the audit trail's why.)
const REASON_RULE: &str = "1 to 512 bytes on one line, no control or format characters (devices report it and hale-server audits it)";

const _: () = assert!(MAX_REASON == 512, "REASON_RULE names the limit");

fn reason_fits(reason: &str) -> bool {
    !reason.trim().is_empty() && hale_core::report::one_line(reason, MAX_REASON)
}

/// Whether the authorization `bytes` has a reason that fits ([`reason_fits`]).
fn reason_of_fits(bytes: &[u8]) -> anyhow::Result<bool> {
    Ok(sign::signed_of(bytes)?["reason"]
        .as_str()
        .is_some_and(reason_fits))
}

fn sign_existing(a: SignArgs) -> anyhow::Result<ExitCode> {
    // DIR is only read (its hale-repo.json and published repository/; the signature is added to
    // FILE): no lock, so it signs while another signer or a publish holds the directory; refused
    // while a publish is interrupted
    let state = State::load_to_read(&a.dir)?;
    let max = max_validity(&state, a.max_validity.as_deref())?;
    let bytes = std::fs::read(&a.file).with_context(|| a.file.display().to_string())?;
    let target = target_of(&bytes).with_context(|| a.file.display().to_string())?;
    if !reason_of_fits(&bytes)? {
        bail!(
            "{}: its reason must be {REASON_RULE}; refusing to sign it (nothing written)",
            a.file.display()
        );
    }
    let (targets, sha) = published_target(&a.dir, &a.server, &target, unix_now())?;
    let listed = report(&targets, &bytes)?;
    // a signature that does not verify: the content changed after it was given; the second
    // person must not co-sign what the first did not sign
    let invalid: Vec<&str> = listed
        .keys
        .iter()
        .filter(|(_, s)| *s == KeyStatus::Invalid)
        .map(|(id, _)| id.as_str())
        .collect();
    if !invalid.is_empty() {
        bail!(
            "{}: the signature of {} does not verify over this content (changed after it was \
             signed?); refusing to add one (nothing written)",
            a.file.display(),
            invalid.join(", ")
        );
    }
    // what the second person is asked to sign, before any passphrase
    println!("{}", describe(&bytes)?);
    // terms a device would refuse (longer than this signer's policy allows, expired, another
    // image) are refused before anyone signs them
    check_for_target(&targets, &bytes, &target, sha, unix_now(), max, false).with_context(
        || {
            format!(
                "{}: hale-core refuses its terms (nothing signed, nothing written)",
                a.file.display()
            )
        },
    )?;
    let keys = signing_keys(&a.keys, &listed, &a.pass)?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let signed = sign::add_signatures(&bytes, &refs)?;
    // complete: verified whole before it is written
    let r = report(&targets, &signed)?;
    if r.valid() >= r.threshold {
        verify_for_target(&targets, &signed, &target, sha, unix_now(), max).with_context(|| {
            format!(
                "{}: hale-core refuses it (nothing written)",
                a.file.display()
            )
        })?;
    }
    // another signer may have added a signature to FILE while this one waited for a passphrase
    // (no lock keeps them apart): writing over it would drop theirs. The comparison and the write
    // are one step under an flock on FILE, held only for them: a signer that takes it after
    // another's write reads FILE anew by its path, so sees the other's signature and refuses.
    let held = std::fs::File::open(&a.file).with_context(|| a.file.display().to_string())?;
    fs2::FileExt::lock_exclusive(&held).with_context(|| format!("locking {}", a.file.display()))?;
    let now_there = std::fs::read(&a.file).with_context(|| a.file.display().to_string())?;
    if now_there != bytes {
        bail!(
            "{}: changed while this signature was made (another signer added theirs?); \
             refusing to write over it (nothing written): run this again to sign what it holds \
             now",
            a.file.display()
        );
    }
    crate::durable::write_one(&a.file, &signed)?;
    drop(held);
    finish(&a.dir, &a.file, &signed, &targets, sha, max)?;
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let state = State::load(&a.dir)?;
    let max = max_validity(&state, a.max_validity.as_deref())?;
    let bytes = std::fs::read(&a.file).with_context(|| a.file.display().to_string())?;
    let target = target_of(&bytes).with_context(|| a.file.display().to_string())?;
    if !reason_of_fits(&bytes)? {
        eprintln!(
            "warning: {}: its reason is not {REASON_RULE}; a device reports it cut to fit",
            a.file.display()
        );
    }
    let (targets, sha) = published_target(&a.dir, &a.server, &target, unix_now())?;
    Ok(if finish(&a.dir, &a.file, &bytes, &targets, sha, max)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
