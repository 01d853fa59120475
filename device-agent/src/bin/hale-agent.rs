//! `hale-agent`: a simulated insulin pump. Its flash is a file in the state directory (so it
//! survives the process like a real one survives a reset); it polls a TUF repository over
//! HTTP(S) with jitter, installs through the A/B slots, and reports to the server.
//!
//! Commands and options: [`USAGE`] (what `hale-agent --help` prints).
//!
//! Identity commands and `run --server https://…` (mTLS with the operational certificate,
//! renewal at 2/3 of its lifetime, re-enrollment after expiry) read the device secret that seals
//! the device's keys from `--device-secret-file F` or `HALE_DEVICE_SECRET`.

/// What `hale-agent --help` prints (and a command line it cannot read, after the reason).
const USAGE: &str = "\
usage:
  hale-agent --state DIR provision --root ROOT --image FILE --version V [--security-counter N]
             --id ID --model M --revision R --target PATH [--bootloader V] [--group G]
  hale-agent --state DIR run --server URL [--metadata-url U] [--target-base-url U]
             [--interval S] [--jitter S] [--once] [--authorization FILE]
             [--request-timeout S]           a request unanswered for S s (default 60) fails the check
  hale-agent --state DIR bundle install FILE   offline install from a bundle (no network)
  hale-agent --state DIR link --device PATH|- [--mtu N] [--capacity N] [--idle-timeout S]
             [--min-restart-interval S]        receive a bundle from a technician (hale-link), install it
                                               (a line silent for S s, default 300, ends the session;
                                               a new transfer begins at most once per S s, default 30)
  hale-agent --state DIR therapy on|off        tester: is insulin being delivered?
  hale-agent --state DIR health pass|fail      tester: result of the next health checks
  hale-agent --state DIR crash                 tester: the next trial crashes before confirming
  hale-agent --state DIR crash after-record    tester: the next boot decision (a trial's outcome, a
                                               damaged image) is recorded in flash, then the
                                               process dies before keeping it for the report
  hale-agent --state DIR reboot                simulate a reset (boot step + application start)
  hale-agent --state DIR status                print the report as JSON
  hale-agent --state DIR factory-csr --serial S [--key-type p256|ed25519] [--out CSR]
  hale-agent --state DIR factory-install --cert FACTORY_CERT
  hale-agent --state DIR enroll --est URL --ca-cert SERVER_CA [--token-file F | --token-env VAR]
                                               with the factory certificate, or a single-use token
                                               (never on the command line)
The identity commands and `run --server https://…` (mTLS) read the device secret that seals the
device's keys from --device-secret-file F or HALE_DEVICE_SECRET.
";

/// `println!` that never panics: the technician link (`link --device -`) talks over stdout, and a
/// host that hangs up must not crash the pump in the middle of an install.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use device_agent::host::{self, CheckBuffers, FileFlash, HttpTransport};
use device_agent::identity::{Action, DeviceSecret, Identity, IdentityError};
use device_agent::offline;
use device_agent::{
    check_for_update, AgentError, Application, Boot, BundleTransport, DeferReason, DeviceInfo,
    FirmwareStore, Image, Layout, Outcome, RollbackAuthorization, Slot, SlotState, Transport,
};
use hale_core::Version;
use hale_pki::KeyAlgorithm;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The simulated pump's flash as `provision` makes it (see `host::PUMP_LAYOUT`: 2 × 260 KiB
/// state records, 2 × 1 MiB slots, a checkpoint every 64 KiB); a flash made before is opened
/// with its own layout (`host::pump_layout`).
const LAYOUT: Layout = host::PUMP_LAYOUT;
const BUF: usize = host::PUMP_ROLE_MAX;

/// The buffers an update check works in ([`host::CheckBuffers`]): a device's are static;
/// `run` makes them once, at its start, and every poll uses them.
fn check_buffers() -> CheckBuffers {
    CheckBuffers::new(BUF, 4096, 4 * BUF)
}

struct Opts {
    state: PathBuf,
    args: Vec<String>,
}

impl Opts {
    fn opt(&self, name: &str) -> Option<String> {
        self.args
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.args.get(i + 1))
            .cloned()
    }
    fn req(&self, name: &str) -> Result<String> {
        self.opt(name)
            .with_context(|| format!("{name} is required"))
    }
    fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.state.join(name)
    }
}

struct Pump<'a> {
    dir: &'a Path,
}

impl Application for Pump<'_> {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        if self.dir.join("therapy-running").exists() {
            return Err(DeferReason::TherapyRunning);
        }
        Ok(())
    }
}

/// The pump's store, for this process alone (another hale-agent writing it is refused); first,
/// the outcome of a boot decision the flash recorded just before the last process died
/// ([`conclude_in_flight`]), before anything else this process keeps or reports.
fn open_store(o: &Opts) -> Result<FirmwareStore<FileFlash>> {
    let store = open_store_with(o, false)?;
    conclude_in_flight(o, &store)?;
    Ok(store)
}

/// The pump's store as last synced, to read beside a running hale-agent (`status`).
fn read_store(o: &Opts) -> Result<FirmwareStore<FileFlash>> {
    open_store_with(o, true)
}

/// The flash with the layout it was provisioned with, told by its length (`host::pump_layout`).
fn open_store_with(o: &Opts, read_only: bool) -> Result<FirmwareStore<FileFlash>> {
    let path = o.file("flash.bin");
    if !path.exists() {
        bail!("{}: no flash; run `provision` first", path.display());
    }
    let (flash, layout) = FileFlash::open_pump(&path, read_only)?;
    FirmwareStore::open(flash, layout).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn device_config(o: &Opts) -> Result<Value> {
    let p = o.file("device.json");
    let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
    serde_json::from_slice(&bytes).with_context(|| p.display().to_string())
}

fn field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Put `bytes` in the state directory's file `name` whole or not at all, and durably: a
/// temporary file, synced, renamed over it, and the directory synced. A crash or a power cut
/// keeps either the one before or this one (a rename alone may reach the disk before the
/// data it names).
fn replace_file(o: &Opts, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let p = o.file(name);
    let tmp = o.file(&format!(".{name}.tmp"));
    (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(&o.state)?.sync_all()
    })()
    .with_context(|| p.display().to_string())
}

/// The last check's result, for the next report (see [`replace_file`]).
fn set_last(o: &Opts, result: &str, reason: &str) -> Result<()> {
    replace_file(
        o,
        "last_result.json",
        json!({"result": result, "reason": reason})
            .to_string()
            .as_bytes(),
    )
}

/// Forget the last result (the report then carries none).
fn clear_last(o: &Opts) -> Result<()> {
    let p = o.file("last_result.json");
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| p.display().to_string())
        }
        _ => Ok(()),
    }
}

fn last(o: &Opts) -> (String, String) {
    let v: Value = std::fs::read(o.file("last_result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (field(&v, "result"), field(&v, "reason"))
}

/// `status`: the pump's local view. A trial the flash decided before the last process died,
/// which the next start keeps and reports ([`conclude_in_flight`]), is shown as that result
/// already (`note`: its note, read before the flash); nothing is written here
/// (`status` reads beside a running pump). Beside a running pump that has just recorded a
/// decision, this shows the outcome with the restart's reason for the moment until that pump
/// keeps its own (the read-only view cannot tell a live process's note from a dead one's).
fn report(o: &Opts, store: &FirmwareStore<FileFlash>, note: Option<&Note>) -> Result<Value> {
    let d = device_config(o)?;
    let decided = note.and_then(|n| n.decided(&store.slots()));
    let (result, reason) = match decided {
        Some(decided) => {
            let (result, reason) = decided.result();
            (result.to_string(), reason)
        }
        None => last(o),
    };
    let last_check: Value = std::fs::read(o.file("last_check.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let mut r = host::report_json(
        store,
        &field(&d, "id"),
        &field(&d, "model"),
        &field(&d, "revision"),
        &result,
        &reason,
    );
    r["last_check"] = last_check;
    // the time its checks run at when the clock is behind it (as recorded)
    if store.time_floor() > 0 {
        r["time_floor"] = offline::iso8601(store.time_floor()).into();
    }
    match refused_records(o) {
        Some(refused) if refused.is_empty() => {}
        Some(refused) => r["install_records_refused"] = refused.into(),
        None => r["install_records_refused"] = format!("unreadable: {REFUSED_RECORDS}").into(),
    }
    Ok(r)
}

/// What a boot may decide ([`Note`]: `{"at"}`, the time it was noted; `{"version", "sha256",
/// "trial"}` of the image pending or on trial; `{"good": {"slot", "version", "sha256"}}` of the
/// active good image), written before every boot (and again once a trial boot verified its
/// image) and removed once the boot's result is kept, or by a start that finds the boot decided
/// nothing: found at a later start with a decision on the flash, the process died in between
/// ([`conclude_in_flight`]).
const IN_FLIGHT: &str = "in_flight.json";
/// Tester flag: die right after the flash records a boot's decision (`crash after-record`).
const CRASH_AFTER_RECORD: &str = "crash-after-record";
/// Results process starts kept (`[{"result", "reason"}]`, oldest first) that must reach the
/// server before a check's result replaces them: the next reports carry them, one each, before
/// the poll's own, and each is forgotten once the server took its report.
const RESULT_TO_REPORT: &str = "result_to_report.json";
/// Results kept for the server at most (a server that refuses reports for many restarts: the
/// oldest give way).
const MAX_RESULTS_TO_REPORT: usize = 8;

fn results_to_report(o: &Opts) -> Vec<Value> {
    match std::fs::read(o.file(RESULT_TO_REPORT))
        .ok()
        .map(|b| serde_json::from_slice::<Value>(&b))
    {
        Some(Ok(Value::Array(kept))) => kept,
        None => Vec::new(),
        Some(_) => {
            say!("{RESULT_TO_REPORT}: not a list of results: left out");
            Vec::new()
        }
    }
}

fn set_results_to_report(o: &Opts, kept: &[Value]) -> Result<()> {
    if kept.is_empty() {
        return remove_state_file(o, RESULT_TO_REPORT);
    }
    replace_file(
        o,
        RESULT_TO_REPORT,
        Value::from(kept.to_vec()).to_string().as_bytes(),
    )
}

/// Keep the last result for the server ([`RESULT_TO_REPORT`]), after any not reported yet.
fn keep_result_to_report(o: &Opts) -> Result<()> {
    let (result, reason) = last(o);
    let mut kept = results_to_report(o);
    kept.push(json!({"result": result, "reason": reason}));
    let over = kept.len().saturating_sub(MAX_RESULTS_TO_REPORT);
    kept.drain(..over);
    set_results_to_report(o, &kept)
}

/// Forget a file of the state directory, durably (the directory synced): a removal a power cut
/// undid would bring back what it ended.
fn remove_state_file(o: &Opts, name: &str) -> Result<()> {
    let p = o.file(name);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other
            .and_then(|()| std::fs::File::open(&o.state)?.sync_all())
            .with_context(|| p.display().to_string()),
    }
}

/// The tester's `crash after-record`, once: the process ends here, as a crash would.
fn crash_point(o: &Opts) -> Result<()> {
    let flag = o.file(CRASH_AFTER_RECORD);
    if flag.exists() {
        std::fs::remove_file(&flag).with_context(|| flag.display().to_string())?;
        say!("crash after the flash record (simulated)");
        std::process::exit(137);
    }
    Ok(())
}

/// A boot decision the flash recorded but the process died before keeping for the report
/// (`IN_FLIGHT` left by an earlier boot): the result is read from the slots now (a trial
/// confirmed or reverted, or an image the boot found damaged), kept, and reported first.
/// Nothing while the image is still pending or on trial (no decision recorded: a boot will
/// make it), nor after a boot that found nothing to decide.
fn conclude_in_flight(o: &Opts, store: &FirmwareStore<FileFlash>) -> Result<bool> {
    let note = in_flight_note(o);
    let Some(decided) = note.as_ref().and_then(|n| n.decided(&store.slots())) else {
        // a note of a boot that decided nothing ends here too
        clear_in_flight(o)?;
        return Ok(false);
    };
    let (result, reason) = decided.result();
    set_last(o, result, &reason)?;
    match &decided {
        Decided::Confirmed { version } => {
            say!("{version} was confirmed before the last restart: reporting it");
            conclude_install(o, version, "confirmed")?;
        }
        Decided::Reverted { version } => {
            say!("{version} was reverted before the last restart: reporting it");
            conclude_install(o, version, "reverted")?;
        }
        Decided::Damaged { version, trial, .. } => {
            say!("{version} was found damaged before the last restart: reporting it");
            // found when the boot noted it (a note of an earlier agent has no time: now)
            let noted = note.map(|n| n.at).filter(|a| !a.is_empty());
            let at = noted
                .clone()
                .unwrap_or_else(|| offline::iso8601(host::now()));
            // queued already when the process died after queuing it: the same record (without
            // a noted time, the same but for the time)
            let queued = install_records(o).last().is_some_and(|r| {
                r["kind"] == "damaged"
                    && r["version"] == version.as_str()
                    && r["reason"] == reason
                    && (noted.is_none() || r["staged"] == at.as_str())
            });
            if !queued {
                record_damage(o, version, &reason, &at)?;
            }
            if *trial {
                conclude_install(o, version, "reverted")?;
            }
        }
    }
    // whatever this process does next (a bundle's check too), the server hears of it first
    keep_result_to_report(o)?;
    clear_in_flight(o)?;
    Ok(true)
}

/// What a boot was about to decide, noted before the flash records it ([`IN_FLIGHT`]): the
/// image pending or on trial, and the good image the boot checks when there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Note {
    /// The image pending or on trial.
    deciding: Option<Deciding>,
    /// The active slot's image when it is good: a boot that finds its bytes damaged forgets
    /// it (the slot empties) and runs the other slot's.
    good: Option<(Slot, String, [u8; 32])>,
    /// When it was noted (ISO 8601): a damage the boot finds is recorded as found then, by
    /// the boot or by the restart that reads it back.
    at: String,
}

/// The image a boot was about to decide, as its note names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deciding {
    version: String,
    /// Its sha256, and whether it was on trial (booted with its bytes verified) when noted;
    /// notes of earlier agents name only the version (or the version and the sha256).
    verified: Option<([u8; 32], bool)>,
}

/// What an earlier boot decided, read from the slots ([`Note::decided`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decided {
    /// The trial passed its health checks.
    Confirmed { version: String },
    /// The trial ended without a confirmation (failed health checks, a reset): refused for good.
    Reverted { version: String },
    /// The boot found the image's bytes no longer matching its record (`trial`: it was pending
    /// or on trial, so its install ends here; else it was the good image, now forgotten).
    Damaged {
        version: String,
        slot: Slot,
        running: String,
        trial: bool,
    },
}

impl Note {
    /// The note for a boot of `slots` (before it decides) at `at`, as JSON.
    fn of(slots: &device_agent::Slots, at: &str) -> Value {
        let mut v = json!({ "at": at });
        if let Some(image) = deciding(slots) {
            let trial = [Slot::A, Slot::B]
                .into_iter()
                .any(|s| slots.info(s).state == SlotState::Trial);
            v["version"] = image.version.to_string().into();
            v["sha256"] = hex(&image.sha256).into();
            v["trial"] = trial.into();
        }
        let active = slots.info(slots.active());
        if let (SlotState::Good, Some(image)) = (active.state, active.image) {
            v["good"] = json!({
                "slot": slots.active().as_str(),
                "version": image.version.to_string(),
                "sha256": hex(&image.sha256),
            });
        }
        v
    }

    fn parse(v: &Value) -> Note {
        let trial = v.get("trial").and_then(Value::as_bool);
        let deciding = Some(field(v, "version"))
            .filter(|s| !s.is_empty())
            .map(|version| Deciding {
                version,
                verified: unhex(&field(v, "sha256")).zip(trial),
            });
        let good = v.get("good").and_then(|g| {
            let slot = match field(g, "slot").as_str() {
                "a" => Slot::A,
                "b" => Slot::B,
                _ => return None,
            };
            Some((slot, field(g, "version"), unhex(&field(g, "sha256"))?))
        });
        Note {
            deciding,
            good,
            at: field(v, "at"),
        }
    }

    /// What the boot decided, now that `slots` are past it. `None` while the image noted is
    /// still pending or on trial, and after a boot that decided nothing.
    fn decided(&self, slots: &device_agent::Slots) -> Option<Decided> {
        let running = slots
            .info(slots.active())
            .image
            .map(|i| i.version.to_string())
            .unwrap_or_default();
        if let Some(Deciding { version, verified }) = &self.deciding {
            if deciding(slots).is_some_and(|i| i.version.to_string() == *version) {
                return None;
            }
            let active = slots.info(slots.active());
            let confirmed = active.state == SlotState::Good
                && active
                    .image
                    .is_some_and(|i| i.version.to_string() == *version);
            if confirmed {
                return Some(Decided::Confirmed {
                    version: version.clone(),
                });
            }
            // rejected while pending, before a trial verified its bytes: the boot found it
            // damaged (a trial that ended unconfirmed was noted on trial, after its boot)
            let damaged = verified.and_then(|(sha, trial)| {
                [Slot::A, Slot::B].into_iter().find(|s| {
                    let info = slots.info(*s);
                    !trial
                        && info.state == SlotState::Rejected
                        && info.image.is_some_and(|i| i.sha256 == sha)
                })
            });
            return Some(match damaged {
                Some(slot) => Decided::Damaged {
                    version: version.clone(),
                    slot,
                    running,
                    trial: true,
                },
                None => Decided::Reverted {
                    version: version.clone(),
                },
            });
        }
        let (slot, version, sha) = self.good.as_ref()?;
        // the good image left its slot at that boot: the only way a boot empties one
        let held = slots.info(*slot).image.is_some_and(|i| i.sha256 == *sha);
        (!held).then(|| Decided::Damaged {
            version: version.clone(),
            slot: *slot,
            running,
            trial: false,
        })
    }
}

impl Decided {
    /// The result [`conclude_in_flight`] keeps: `(result, reason)`.
    fn result(&self) -> (&'static str, String) {
        match self {
            Decided::Confirmed { version } => ("installed", version.clone()),
            Decided::Reverted { version } => (
                "reverted",
                format!(
                    "{version} did not run to its confirmation (the pump restarted before the \
                     reason was kept)"
                ),
            ),
            Decided::Damaged {
                version,
                slot,
                running,
                ..
            } => ("reverted", damaged_reason(version, *slot, running)),
        }
    }
}

/// The result's reason for an image a boot found damaged in `slot` while `running` runs.
fn damaged_reason(version: &str, slot: Slot, running: &str) -> String {
    format!(
        "{version} in slot {} was damaged (its bytes no longer match its record): running {running}",
        slot.as_str()
    )
}

/// The damage goes to the server in a record of its own, queued until a report carries it:
/// the next check may install the image again and replace the result. (`target`: the device's
/// channel target; a slot record keeps no path, so an image a rollback authorization installed
/// from another path is named by its channel's.)
fn record_damage(o: &Opts, version: &str, reason: &str, at: &str) -> Result<()> {
    let target = field(&device_config(o)?, "target");
    let mut rec = offline::install_record("damaged", &target, version, None);
    rec["reason"] = reason.into();
    rec["outcome"] = "reverted".into();
    // when it was found (the boot's note): two damages of one image are two records
    rec["staged"] = at.into();
    queue_install(o, rec)
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    for (o, i) in out.iter_mut().zip((0..64).step_by(2)) {
        *o = u8::from_str_radix(s.get(i..i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The [`IN_FLIGHT`] note; `None` without one, or one unreadable (it tells nothing: the next
/// start removes it).
fn in_flight_note(o: &Opts) -> Option<Note> {
    std::fs::read(o.file(IN_FLIGHT))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| Note::parse(&v))
}

/// The image pending or on trial, which the next boot decides (one at most).
fn deciding(slots: &device_agent::Slots) -> Option<Image> {
    [Slot::A, Slot::B].into_iter().find_map(|slot| {
        let info = slots.info(slot);
        matches!(info.state, SlotState::Pending | SlotState::Trial)
            .then_some(info.image)
            .flatten()
    })
}

/// Forget [`IN_FLIGHT`] once the outcome it stood for is kept.
fn clear_in_flight(o: &Opts) -> Result<()> {
    remove_state_file(o, IN_FLIGHT)
}

/// A reset: the boot step, then the application's start (health checks → confirm). True when
/// it kept a result for the report (a trial's outcome, a damaged or reverted image, or an
/// earlier boot's outcome the process died before keeping).
fn power_on(o: &Opts, store: &mut FirmwareStore<FileFlash>) -> Result<bool> {
    // (a damaged good image is forgotten by the boot step: its record is read here)
    let before = store.slots();
    // an earlier boot's decision whose result was not kept
    let concluded = conclude_in_flight(o, store)?;
    // what this boot may decide (a trial's outcome, a damaged image): noted before the flash
    // records it
    let at = offline::iso8601(host::now());
    replace_file(o, IN_FLIGHT, Note::of(&before, &at).to_string().as_bytes())?;
    let boot = store.boot().map_err(|e| anyhow::anyhow!("boot: {e}"))?;
    let version = |slot: Slot| {
        store
            .slots()
            .info(slot)
            .image
            .map(|i| i.version.to_string())
            .unwrap_or_default()
    };
    match boot {
        Boot::Normal { slot } => {
            say!("booted slot {}", slot.as_str());
            clear_in_flight(o)?;
            return Ok(concluded);
        }
        Boot::Damaged { slot, damaged } => {
            let was = before.info(damaged);
            let running = version(slot);
            let (d, s) = (damaged.as_str(), slot.as_str());
            let damaged_image = was.image.filter(|_| was.state != SlotState::Rejected);
            let (said, reason) = match damaged_image {
                Some(image) => (
                    format!(
                        "slot {d}'s image ({}) no longer matches its record",
                        image.version
                    ),
                    damaged_reason(&image.version.to_string(), damaged, &running),
                ),
                // (no transition leaves the active slot so; a record might)
                None => (
                    format!("slot {d} is {}: nothing to run there", was.state.as_str()),
                    format!("slot {d} held nothing to run: running {running}"),
                ),
            };
            crash_point(o)?;
            say!("{said}: booted {running} in slot {s}");
            set_last(o, "reverted", &reason)?;
            if let Some(image) = damaged_image {
                record_damage(o, &image.version.to_string(), &reason, &at)?;
            }
            // an install that never ran ends here; a confirmed one ended at its confirmation
            if let (SlotState::Pending | SlotState::Trial, Some(image)) = (was.state, was.image) {
                conclude_install(o, &image.version.to_string(), "reverted")?;
            }
        }
        Boot::Reverted { slot, rejected } => {
            crash_point(o)?;
            say!(
                "reverted to slot {} (slot {} was never confirmed)",
                slot.as_str(),
                rejected.as_str()
            );
            set_last(o, "reverted", "reset before confirmation")?;
            if let Some(image) = store.slots().info(rejected).image {
                conclude_install(o, &image.version.to_string(), "reverted")?;
            }
        }
        Boot::Trial { slot } => {
            let version = version(slot);
            say!("trial boot of {version} in slot {}", slot.as_str());
            // its bytes verified: from here a rejection is its trial's, not damage
            replace_file(
                o,
                IN_FLIGHT,
                Note::of(&store.slots(), &at).to_string().as_bytes(),
            )?;
            let crash = o.file("crash-before-confirm");
            if crash.exists() {
                std::fs::remove_file(&crash).with_context(|| crash.display().to_string())?;
                say!("crash before confirmation (simulated): resetting");
                return power_on(o, store);
            }
            if std::fs::read_to_string(o.file("health")).is_ok_and(|s| s.trim() == "fail") {
                store.reject().map_err(|e| anyhow::anyhow!("reject: {e}"))?;
                crash_point(o)?;
                say!("health check failed: reverted");
                set_last(o, "reverted", &format!("{version} failed its health check"))?;
                conclude_install(o, &version, "reverted")?;
            } else {
                store
                    .confirm()
                    .map_err(|e| anyhow::anyhow!("confirm: {e}"))?;
                crash_point(o)?;
                say!("health check passed: {version} confirmed");
                set_last(o, "installed", &version)?;
                conclude_install(o, &version, "confirmed")?;
            }
        }
    }
    // the outcome is kept
    clear_in_flight(o)?;
    Ok(true)
}

fn provision(o: &Opts) -> Result<()> {
    // every report names the target, and hale-server refuses a report whose target is longer
    // than 256 bytes or has control or format characters (hale_core::report::one_line): such a
    // pump could never report
    let target = o.req("--target")?;
    if target.is_empty() || !hale_core::report::one_line(&target, hale_core::report::MAX_TARGET) {
        bail!(
            "--target {target:?}: 1 to {} bytes, one line without control or format characters (every report names it)",
            hale_core::report::MAX_TARGET
        );
    }
    // every option is read before anything is written: a provision refused for a missing or bad
    // one leaves the pump as it was
    let root_path = o.req("--root")?;
    let root = std::fs::read(&root_path).with_context(|| root_path.clone())?;
    // the root every check of this pump starts from: signed by its own threshold (hale-core's
    // check at the start of every update), else no update could ever verify
    hale_core::trusted::TrustedSet::new(
        hale_core::trusted::Storage::on_heap(BUF),
        &root,
        host::now(),
    )
    .map_err(|e| anyhow::anyhow!("--root {root_path}: not a root this pump can start from: {e}"))?;
    let image_path = o.req("--image")?;
    let image = std::fs::read(&image_path).with_context(|| image_path.clone())?;
    let version =
        Version::parse(&o.req("--version")?).context("--version is not a semantic version")?;
    let counter: u64 = o
        .opt("--security-counter")
        .map_or(Ok(0), |s| s.parse())
        .context("--security-counter")?;
    let id = o.req("--id")?;
    // the server takes reports only under an id a device certificate can name (hale-pki's rule)
    hale_pki::check_name("device id", &id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
    let cfg = json!({
        "id": id, "model": o.req("--model")?, "revision": o.req("--revision")?,
        "target": target, "bootloader": o.opt("--bootloader").unwrap_or_else(|| "1.0.0".into()),
        "group": o.opt("--group").unwrap_or_default(),
    });
    // a pump with an identity (factory-csr) is known to the server by its serial
    if let Some(serial) = Identity::stored_serial(&o.file("identity"))? {
        if serial != id {
            bail!(
                "--id {id:?}: this pump's identity is serial {serial:?} (factory-csr), and the \
                 server knows a pump by its serial: give --id {serial}"
            );
        }
    }
    let record = Image {
        version,
        security_counter: counter,
        length: image.len() as u64,
        sha256: Sha256::digest(&image).into(),
    };
    std::fs::create_dir_all(&o.state).with_context(|| o.state.display().to_string())?;
    // the new flash is made beside the old one, which is replaced only once it is whole: a root
    // or an image refused here leaves the pump as it was
    let flash_path = o.file("flash.bin");
    let new_path = o.file(".flash.bin.provisioning");
    match std::fs::remove_file(&new_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| new_path.display().to_string())
        }
        _ => {}
    }
    let flash = FileFlash::open(&new_path, LAYOUT.end() as usize)
        .with_context(|| new_path.display().to_string())?;
    let made = FirmwareStore::provision(flash, LAYOUT, &root, &image, record);
    let new_store = match made {
        Ok(store) => store,
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            bail!("provision: {e} (the pump is as it was)");
        }
    };
    // the old flash, held (locked) until it and its note are gone: a `run` starting meanwhile
    // would boot it and note that boot
    let mut old = None;
    if flash_path.exists() {
        // refused while a running hale-agent holds the old flash
        match FileFlash::open_pump(&flash_path, false) {
            // not held: replaced. A boot decision it recorded before the last process died is
            // kept for the report first: an outcome of the flash replaced, which its note would
            // otherwise be read against the new one
            Ok((flash, layout)) => {
                if let Ok(store) = FirmwareStore::open(flash, layout) {
                    // (a state directory too broken to keep it, e.g. no device.json, does not
                    // stop the provisioning that mends it)
                    if let Err(e) = conclude_in_flight(o, &store) {
                        say!("the old flash's last boot decision was not kept: {e:#}");
                    }
                    old = Some(store);
                }
            }
            // of no length a pump's flash has: replaced all the same
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
            Err(e) => {
                drop(new_store);
                let _ = std::fs::remove_file(&new_path);
                return Err(e).with_context(|| flash_path.display().to_string());
            }
        }
    }
    // a note the old flash did not decide (or could not be read against) ends with it
    clear_in_flight(o)?;
    drop(old);
    drop(new_store);
    (|| {
        std::fs::rename(&new_path, &flash_path)?;
        std::fs::File::open(&o.state)?.sync_all()
    })()
    .with_context(|| flash_path.display().to_string())?;
    replace_file(o, "device.json", &serde_json::to_vec_pretty(&cfg)?)?;
    set_last(o, "installed", &version.to_string())?;
    say!("provisioned {} with {version}", o.state.display());
    Ok(())
}

/// The rollback authorization at `path` for this poll, or `None` (said why) when there is none to
/// offer: the file is gone or unreadable (a technician cleaned up), the pump has used it, or it
/// has expired (its dates read unverified, only to stop offering it). The poll then follows
/// the channel: a held authorization no longer ties the pump to its target, and a missing file
/// no longer ends the pump's polling. One offered and refused is followed by a channel check in
/// the same poll ([`poll`]).
fn held_authorization(store: &FirmwareStore<FileFlash>, path: &str) -> Option<Vec<u8>> {
    let bytes = match offline::read_bounded(Path::new(path), offline::MAX_AUTHORIZATION) {
        Ok(b) => b,
        Err(e) => {
            say!("rollback authorization {path} not read ({e}): this poll follows the channel");
            return None;
        }
    };
    match offline::authorization_times(&bytes) {
        Some((issued, _)) if issued <= store.last_authorization() => {
            say!(
                "rollback authorization {path} was used (issued {}): this poll follows the channel",
                hale_core::Date(issued)
            );
            None
        }
        // at the time the check runs at (a clock behind the time floor runs at the floor)
        Some((_, expires))
            if hale_core::time::is_expired(
                expires,
                hale_core::time::check_time(host::now(), store.time_floor()),
            ) =>
        {
            say!(
                "rollback authorization {path} expired at {}: this poll follows the channel",
                hale_core::Date(expires)
            );
            None
        }
        // anything else is offered, and hale-core decides
        _ => Some(bytes),
    }
}

/// One poll: check, install when staged (reboot into the trial), report; first a report of a
/// result a process start kept ([`RESULT_TO_REPORT`]), which the check's result would otherwise
/// replace unreported.
fn poll(
    o: &Opts,
    store: &mut FirmwareStore<FileFlash>,
    buffers: &mut CheckBuffers,
    server: &str,
    http: &mut HttpTransport,
) -> Result<()> {
    let d = device_config(o)?;
    // results a start kept, oldest first, each forgotten once its report got through
    let mut kept = results_to_report(o);
    let delivered_kept = !kept.is_empty();
    while let Some(first) = kept.first() {
        let result = (field(first, "result"), field(first, "reason"));
        if !send_report(o, store, server, http, &d, Some(result))? {
            break;
        }
        kept.remove(0);
        set_results_to_report(o, &kept)?;
    }
    let delivered_kept = delivered_kept && kept.is_empty();
    // a rollback authorization handed to this run (a bundle's comes with the bundle)
    let held = o.opt("--authorization");
    let authorization = held.as_deref().and_then(|p| held_authorization(store, p));
    // a poll that ends without an install is no failure of the process: it polls again
    http.clear_timed_out();
    let ended = install_once(
        o,
        store,
        buffers,
        &d,
        http,
        authorization.as_deref(),
        "online",
        false,
    )?;
    if let (Some(p), Some(_)) = (&held, &authorization) {
        // refused (another pump's, not a downgrade, its signatures, its target's policy, or a
        // file that is no authorization at all), or naming the image the pump runs: it does not
        // tie the pump to that image until the date it claims. The channel is checked in the
        // same poll; a refusal stays the result the server hears unless the channel changes
        // something (one report a poll, the same at each, so the audit log gets one record,
        // not two a poll)
        let refused = matches!(ended, Ended::Refused);
        if refused {
            say!("rollback authorization {p} refused: this poll follows the channel");
        } else if matches!(ended, Ended::UpToDate) {
            say!(
                "rollback authorization {p} names the running image: this poll follows the channel"
            );
        }
        if refused || matches!(ended, Ended::UpToDate) {
            install_once(o, store, buffers, &d, http, None, "online", refused)?;
        }
    }
    if http.timed_out() && !delivered_kept {
        // the report would wait as long again for the same silent server; what it would say
        // is kept (status, last check) and goes with the next poll that reaches it. (After
        // older results went through just now, it is sent anyway: the server would otherwise
        // show the oldest as the latest.)
        say!("report not sent: the server did not answer the check in time; the next poll reports");
        return Ok(());
    }
    send_report(o, store, server, http, &d, None).map(|_| ())
}

/// The report of the pump's state and its last result (or `result`), with each offline install
/// or rollback record whose trial has ended. Whether the server took the first (the one that
/// carries the result; further ones carry the other records).
fn send_report(
    o: &Opts,
    store: &FirmwareStore<FileFlash>,
    server: &str,
    http: &mut HttpTransport,
    d: &Value,
    result: Option<(String, String)>,
) -> Result<bool> {
    let target = field(d, "target");
    let url = format!(
        "{}/api/v1/devices/{}/report",
        server.trim_end_matches('/'),
        field(d, "id")
    );
    let (result, reason) = result.unwrap_or_else(|| last(o));
    let body = host::server_report_json(store, &target, &result, &reason);
    // the offline installs and rollbacks since the last sync whose trial has ended: one report
    // each (the server takes one record per report), each forgotten once the server has it
    let mut taken = false;
    loop {
        let records = install_records(o);
        let next = records.iter().position(|r| r.get("outcome").is_some());
        let mut body = body.clone();
        if let Some(i) = next {
            body["install_record"] = records[i].clone();
        }
        match post(http, &url, &body) {
            Ok(()) => {
                taken = true;
                let Some(i) = next else { return Ok(true) };
                let mut records = records;
                records.remove(i);
                set_install_records(o, &records)?;
                if !records.iter().any(|r| r.get("outcome").is_some()) {
                    return Ok(true);
                }
            }
            Err(ureq::Error::Status(code, r)) => {
                say!(
                    "report to {url} refused (HTTP {code}): {}",
                    r.into_string().unwrap_or_default().trim()
                );
                // 400 (a field over the server's limits) or 413 (too large): the server refuses
                // the report as sent, and would refuse it again at every poll, holding back
                // every later report. When it carried a record:
                let Some(i) = next.filter(|_| matches!(code, 400 | 413)) else {
                    return Ok(taken);
                };
                let mut records = records;
                // 1. the record again with its reason cut to fit (control characters as
                //    spaces, "…" where it was cut): the one field of a record that can be out of
                //    bounds, from an authorization signed elsewhere or before hale-sign checked
                //    reasons. Taken, the record is reported and leaves the queue.
                let reason = field(&records[i], "reason");
                let fitted = host::fit_text(&reason, host::MAX_REASON);
                if fitted != reason {
                    let mut cut = body.clone();
                    cut["install_record"] = records[i].clone();
                    cut["install_record"]["reason"] = fitted.into();
                    match post(http, &url, &cut) {
                        Ok(()) => {
                            say!(
                                "install record of {} {} reported with its reason cut to {} bytes",
                                field(&records[i], "kind"),
                                field(&records[i], "version"),
                                host::MAX_REASON
                            );
                            taken = true;
                            records.remove(i);
                            set_install_records(o, &records)?;
                            if !records.iter().any(|r| r.get("outcome").is_some()) {
                                return Ok(true);
                            }
                            continue;
                        }
                        Err(e) => say!(
                            "report to {url} with the record's reason cut failed too: {}",
                            post_error(e)
                        ),
                    }
                }
                // 2. else the record is set aside (kept beside the state, shown by `status`,
                //    not sent again): at once when a report of this call was taken (the bodies
                //    differ only in the record), else once the same report without it is taken.
                //    (A server older than the pump that refuses a record field it does not know
                //    has the record set aside too: it stays in the file.)
                if !taken {
                    let mut bare = body.clone();
                    if let Some(fields) = bare.as_object_mut() {
                        fields.remove("install_record");
                    }
                    if let Err(e) = post(http, &url, &bare) {
                        say!(
                            "report to {url} without its install record failed too: {}",
                            post_error(e)
                        );
                        return Ok(false);
                    }
                    taken = true;
                }
                let refused = records.remove(i);
                // (set aside before it leaves the queue: a crash between the two sends it once
                // more, and it is not set aside twice)
                set_aside_record(o, refused)?;
                set_install_records(o, &records)?;
                if !records.iter().any(|r| r.get("outcome").is_some()) {
                    return Ok(true);
                }
            }
            Err(ureq::Error::Transport(t)) => {
                say!("report to {url} failed: {}", host::transport_message(&t));
                return Ok(taken);
            }
        }
    }
}

/// POST `body` as JSON to `url`.
fn post(http: &mut HttpTransport, url: &str, body: &Value) -> Result<(), ureq::Error> {
    http.agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map(|_| ())
}

/// Why a POST failed, in a line.
fn post_error(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => format!(
            "HTTP {code}: {}",
            r.into_string().unwrap_or_default().trim()
        ),
        ureq::Error::Transport(t) => host::transport_message(&t),
    }
}

/// Install records the server refused for good (HTTP 400 or 413 to a report carrying one, also
/// with its reason cut to fit, and took the report without it), oldest first, at most
/// [`MAX_INSTALL_RECORDS`]: what the pump installed offline or rolled back stays on record here
/// for a technician and `status`.
const REFUSED_RECORDS: &str = "install_records_refused.json";

/// The records set aside; `None` when the file is there but cannot be read as a list.
fn refused_records(o: &Opts) -> Option<Vec<Value>> {
    match std::fs::read(o.file(REFUSED_RECORDS)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
        Err(_) => None,
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Array(v)) => Some(v),
            _ => None,
        },
    }
}

fn set_aside_record(o: &Opts, record: Value) -> Result<()> {
    say!(
        "install record of {} {} set aside in {REFUSED_RECORDS}: the server refuses it, and takes the report without it",
        field(&record, "kind"),
        field(&record, "version")
    );
    let mut kept = match refused_records(o) {
        Some(kept) => kept,
        None => {
            // kept as it is, under a name of its own, rather than written over
            let aside = (1..)
                .map(|n| format!("{REFUSED_RECORDS}.unreadable.{n}"))
                .find(|name| !o.file(name).exists())
                .unwrap_or_default();
            say!("{REFUSED_RECORDS}: not a list of records: kept as {aside}");
            std::fs::rename(o.file(REFUSED_RECORDS), o.file(&aside))
                .with_context(|| o.file(&aside).display().to_string())?;
            Vec::new()
        }
    };
    if kept.contains(&record) {
        return Ok(());
    }
    kept.push(record);
    let excess = kept.len().saturating_sub(MAX_INSTALL_RECORDS);
    if excess > 0 {
        kept.drain(..excess);
        say!("note: the oldest {excess} install record(s) set aside dropped (more than {MAX_INSTALL_RECORDS})");
    }
    replace_file(o, REFUSED_RECORDS, Value::from(kept).to_string().as_bytes())
}

/// `--request-timeout S`: how long one request may go unanswered (1 to 600 s, default 60).
fn request_timeout(o: &Opts) -> Result<Duration> {
    let secs: u64 = o
        .opt("--request-timeout")
        .map_or(Ok(60), |s| s.parse())
        .context("--request-timeout")?;
    if !(1..=600).contains(&secs) {
        bail!("--request-timeout {secs}: 1 to 600 seconds");
    }
    Ok(Duration::from_secs(secs))
}

/// Reboot into the staged image, unless the application now says not to: the gate was asked
/// before staging, and therapy may have started while the image was written. A deferred reboot
/// is tried again at the next check (`AwaitingReboot`).
fn reboot_when_safe(
    o: &Opts,
    store: &mut FirmwareStore<FileFlash>,
    app: &mut Pump<'_>,
    what: &str,
) -> Result<()> {
    match app.safe_to_install() {
        Ok(()) => {
            say!("{what}: rebooting into it");
            // (its result goes with this poll's report)
            power_on(o, store).map(|_| ())
        }
        Err(reason) => {
            say!("{what}; reboot deferred: {reason}");
            set_last(o, "deferred", reason.as_str())
        }
    }
}

/// Offline installs and rollbacks not reported yet, oldest first: each goes to the server with a
/// report once its trial has ended (its `outcome`: confirmed or reverted).
const INSTALL_RECORDS: &str = "install_records.json";
/// One record, as versions before the queue kept it: taken in as the oldest.
const LEGACY_INSTALL_RECORD: &str = "install_record.json";
/// At most this many wait for a sync (a pump serviced offline that often without one: the
/// oldest go, and the pump says so).
const MAX_INSTALL_RECORDS: usize = 32;

fn install_records(o: &Opts) -> Vec<Value> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(o.file(name)).ok()?).ok()
    };
    let mut out: Vec<Value> = read(LEGACY_INSTALL_RECORD).into_iter().collect();
    if let Some(Value::Array(queued)) = read(INSTALL_RECORDS) {
        out.extend(queued);
    }
    out
}

fn set_install_records(o: &Opts, records: &[Value]) -> Result<()> {
    replace_file(
        o,
        INSTALL_RECORDS,
        Value::from(records.to_vec()).to_string().as_bytes(),
    )?;
    remove_state_file(o, LEGACY_INSTALL_RECORD)
}

/// Queue the record of an offline install or rollback just staged (its outcome comes with its
/// trial).
fn queue_install(o: &Opts, record: Value) -> Result<()> {
    let mut records = install_records(o);
    records.push(record);
    if records.len() > MAX_INSTALL_RECORDS {
        let dropped = records.len() - MAX_INSTALL_RECORDS;
        records.drain(..dropped);
        say!("note: {dropped} install record(s) never reported dropped (more than {MAX_INSTALL_RECORDS} since the last sync)");
    }
    set_install_records(o, &records)
}

/// The trial of `version` ended with `outcome`: its queued record (the newest without one) says
/// so, and may be reported.
fn conclude_install(o: &Opts, version: &str, outcome: &str) -> Result<()> {
    let mut records = install_records(o);
    let open = records
        .iter_mut()
        .rev()
        .find(|r| r["version"] == version && r.get("outcome").is_none());
    if let Some(r) = open {
        r["outcome"] = outcome.into();
        set_install_records(o, &records)?;
    }
    Ok(())
}

/// One check over `transport` (the server, or an offline bundle), with `authorization` for a
/// downgrade: gate, stage, reboot into the trial, and remember what an offline install or a
/// rollback verified for the next report. `via` is "online" or "bundle".
/// How a check ended, for a command's exit status (a bundle install: the technician must know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The offered image runs now (installed and confirmed, or it was running already).
    Running,
    /// Not now (therapy, a trial under way): the same bundle installs later.
    Deferred,
    /// Failed, or reverted at its trial: the pump runs what it ran.
    NotInstalled,
    /// Refused (by hale-core, policy or the agent's rules): the pump runs what it ran.
    Refused,
    /// The offered image is the one running: nothing to do.
    UpToDate,
}

impl Ended {
    /// The exit status of `bundle install` and `link`: 0 running, 3 deferred, 1 otherwise.
    fn exit(self) {
        match self {
            Ended::Running | Ended::UpToDate => {}
            Ended::Deferred => std::process::exit(3),
            Ended::NotInstalled | Ended::Refused => std::process::exit(1),
        }
    }
}

/// The server holds the image back: a staged rollout that does not include this device yet
/// (`403 rollout_pending`). Not a failure: the pump runs on and asks again at its next poll.
fn held_back<E: 'static, F>(e: &AgentError<E, F>) -> Option<String> {
    let AgentError::Transport { error, .. } = e else {
        return None;
    };
    match (error as &dyn std::any::Any).downcast_ref::<host::HttpError>() {
        Some(host::HttpError::Refused { error, message, .. }) if error == "rollout_pending" => {
            Some(message.clone())
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn install_once<T: Transport<Error: std::fmt::Display + 'static>>(
    o: &Opts,
    store: &mut FirmwareStore<FileFlash>,
    buffers: &mut CheckBuffers,
    d: &Value,
    transport: &mut T,
    authorization: Option<&[u8]>,
    via: &str,
    after_refusal: bool,
) -> Result<Ended> {
    let (model, revision, id, group) = (
        field(d, "model"),
        field(d, "revision"),
        field(d, "id"),
        field(d, "group"),
    );
    // an authorization names the target to go back to (read unverified: the agent looks that
    // target up instead, installs it only as the downgrade the authorization verifies, and
    // hale-core checks it is exactly that target)
    let channel = field(d, "target");
    let rollback_target = authorization.and_then(offline::authorization_target);
    let target = rollback_target.clone().unwrap_or_else(|| channel.clone());
    let bootloader = Version::parse(&field(d, "bootloader")).unwrap_or(Version::new(1, 0, 0));
    let device = DeviceInfo {
        model: &model,
        revision: &revision,
        bootloader,
        target: &channel,
        rollback_target: rollback_target.as_deref(),
    };
    let ws = buffers.workspace();
    let mut app = Pump { dir: &o.state };
    let group = (!group.is_empty()).then_some(group.as_str());
    let mut hook = authorization.map(|a| RollbackAuthorization::new(a, &id, group));
    let now = host::now();
    let floor = store.time_floor();
    if now < floor {
        say!(
            "clock: {} is before {}, a time an earlier check showed to be past: the check runs at that time",
            offline::iso8601(now),
            offline::iso8601(floor)
        );
    }
    let checked = check_for_update(store, &device, transport, &mut app, &mut hook, now, ws);
    // what this check came to, kept for `status` (a failure to reach the server included: the
    // report that would carry it is likely not to get through either)
    let rollout = checked.as_ref().err().and_then(held_back);
    let summary = match &checked {
        _ if rollout.is_some() => format!(
            "update deferred: staged rollout: {}",
            rollout.as_deref().unwrap_or_default()
        ),
        Ok(Outcome::Staged { version }) => format!("staged {version}"),
        Ok(Outcome::AwaitingReboot { version }) => format!("{version} is staged"),
        Ok(Outcome::Deferred { offered, reason }) => format!("{offered} deferred: {reason}"),
        Ok(Outcome::UpToDate { running }) => format!("up to date: running {running}"),
        Ok(Outcome::TrialRunning { version }) => {
            format!("{version} is on trial: nothing is checked until it is confirmed or reverted")
        }
        Err(
            e @ (AgentError::Transport { .. } | AgentError::Missing { .. } | AgentError::Store(_)),
        ) => format!("update check failed: {e}"),
        // a bundle made before what the pump already trusts: not an attack, most likely
        Err(e @ AgentError::Trust(hale_core::Error::Rollback { .. })) if via == "bundle" => {
            format!("update refused: {e}; this bundle is older than the metadata the pump trusts: make a new one")
        }
        Err(AgentError::WrongBytes { retry_at }) => format!(
            "update refused: the server's bytes for the image on offer did not match its hashes \
             last time: not downloaded again before {} or a new release",
            offline::iso8601(*retry_at)
        ),
        Err(AgentError::DownloadBroken { retry_at }) => format!(
            "update check failed: the download of the image on offer broke off before its next \
             checkpoint last time: tried again at {} or with a new release (each try erases the \
             same flash sectors again)",
            offline::iso8601(*retry_at)
        ),
        Err(e) => format!("update refused: {e}"),
    };
    set_last_check(o, now, via, &summary)?;
    // after a reboot into it: does the offered image run, confirmed?
    let runs = |store: &FirmwareStore<FileFlash>, version: Version| {
        let s = store.slots();
        let active = s.info(s.active());
        match (active.state, active.image.map(|i| i.version)) {
            (SlotState::Good, Some(v)) if v == version => Ended::Running,
            _ if s.in_trial().is_some() => Ended::Deferred,
            _ => Ended::NotInstalled,
        }
    };
    let ended = match checked {
        Ok(Outcome::Staged { version }) => {
            let verified = hook.as_ref().and_then(|h| h.verified().copied());
            if let Some(a) = &verified {
                say!(
                    "rollback authorized: {} (target {})",
                    a.reason.to_owned_string(),
                    a.target.to_owned_string()
                );
            }
            if verified.is_some() || via != "online" {
                let mut buf = vec![0u8; BUF];
                let targets_bytes = store
                    .read_metadata(hale_core::Role::Targets, &mut buf)
                    .map_err(|e| anyhow::anyhow!("flash: {e}"))?
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let env = hale_core::metadata::Envelope::parse(&targets_bytes, "targets");
                let targets = env.ok().and_then(|e| {
                    hale_core::metadata::Targets::parse(&e.signed, hale_core::Name::new("targets"))
                        .ok()
                });
                let auth = match (&verified, &targets, authorization) {
                    (Some(a), Some(t), Some(b)) => Some((a, t, b)),
                    _ => None,
                };
                let mut rec =
                    offline::install_record("offline", &target, &version.to_string(), auth);
                // when: two installs of the same bundle are two records, not one sent twice
                rec["staged"] = offline::iso8601(now).into();
                queue_install(o, rec)?;
            }
            reboot_when_safe(o, store, &mut app, &summary)?;
            runs(store, version)
        }
        // staged earlier, its reboot deferred
        Ok(Outcome::AwaitingReboot { version }) => {
            reboot_when_safe(o, store, &mut app, &summary)?;
            runs(store, version)
        }
        Ok(Outcome::Deferred { reason, .. }) => {
            say!("{summary}");
            set_last(o, "deferred", reason.as_str())?;
            Ended::Deferred
        }
        Ok(Outcome::UpToDate { .. }) => {
            say!("{summary}");
            // a refusal or a deferral an earlier check reported holds no more (the server's
            // answer was bad once, or the offer is gone); what was installed or reverted stands.
            // Not the refusal of the authorization this poll offered first: it holds, and the
            // server hears it
            if !after_refusal && matches!(last(o).0.as_str(), "rejected" | "deferred") {
                clear_last(o)?;
            }
            Ended::UpToDate
        }
        Ok(Outcome::TrialRunning { .. }) => {
            say!("{summary}");
            Ended::Deferred
        }
        // held back by a staged rollout: reported as a deferral, asked again at the next poll
        Err(_) if rollout.is_some() => {
            say!("{summary}");
            set_last(
                o,
                "deferred",
                "staged rollout: not offered to this device yet",
            )?;
            Ended::Deferred
        }
        // cannot reach the repository, or a download keeps breaking off (or flash trouble):
        // keep running, say why
        Err(
            AgentError::Transport { .. }
            | AgentError::Missing { .. }
            | AgentError::Store(_)
            | AgentError::DownloadBroken { .. },
        ) => {
            say!("{summary}");
            Ended::NotInstalled
        }
        Err(e) => {
            say!("{summary}");
            set_last(o, "rejected", &e.to_string())?;
            Ended::Refused
        }
    };
    Ok(ended)
}

/// The last check, for `status`: when (the check's clock), how (online or from a bundle) and
/// what it came to.
fn set_last_check(o: &Opts, at: i64, via: &str, summary: &str) -> Result<()> {
    let mut buf = [0u8; 20];
    let when = hale_core::time::format_expires(at, &mut buf).unwrap_or("?");
    let v = json!({"at": when, "via": via, "outcome": summary});
    replace_file(o, "last_check.json", v.to_string().as_bytes())
}

/// `bundle install FILE`: an offline install from a technician's bundle (no network).
fn bundle_install(o: &Opts) -> Result<Ended> {
    let (Some("install"), Some(file)) = (o.args.first().map(String::as_str), o.args.get(1)) else {
        bail!("bundle install FILE");
    };
    let bytes = offline::read_bounded(Path::new(file), offline::MAX_BUNDLE)
        .with_context(|| file.clone())?;
    let mut transport =
        BundleTransport::parse(&bytes).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let d = device_config(o)?;
    let mut store = open_store(o)?;
    let authorization = transport.authorization();
    bundle_carries(&transport, &d, authorization)?;
    install_once(
        o,
        &mut store,
        &mut check_buffers(),
        &d,
        &mut transport,
        authorization,
        "bundle",
        false,
    )
}

/// Refuse a bundle that carries images but none for the target this pump looks up (its channel,
/// or the target its rollback authorization names), before anything is checked: otherwise the
/// pump would say "up to date" (exit 0) about its channel, or fail to fetch an image the bundle
/// does not hold, and the technician would not learn that the bundle was made for another target.
/// A bundle without images (metadata only) goes through.
fn bundle_carries(
    transport: &BundleTransport<'_>,
    d: &Value,
    authorization: Option<&[u8]>,
) -> Result<()> {
    let wanted = authorization
        .and_then(offline::authorization_target)
        .unwrap_or_else(|| field(d, "target"));
    let carried = offline::bundle_images(transport.bundle());
    if carried.is_empty() || carried.contains(&wanted) {
        return Ok(());
    }
    bail!(
        "this bundle carries {}; this pump installs {wanted} ({}): make it again with \
         `hale-sign bundle … --target {wanted}`",
        carried.join(", "),
        if authorization.is_some() {
            "the target its rollback authorization names"
        } else {
            "the target in its device.json"
        }
    )
}

// --- technician link (see hale_link and device_agent::link_store) ------------------------------

/// Largest block the pump accepts over the link; its frame buffer is sized for it.
const LINK_MAX_MTU: u32 = 4096;
const LINK_FRAME: usize = hale_link::max_frame_len(LINK_MAX_MTU);

/// Longest silence on the link before the session ends (`--idle-timeout`, seconds).
const LINK_IDLE_DEFAULT: u64 = 300;

/// A std byte stream as the `embedded_io` port the receiver serves (a serial driver on a pump).
struct LinkPort<R, W> {
    reader: R,
    writer: W,
}

impl<R, W> embedded_io::ErrorType for LinkPort<R, W> {
    type Error = std::io::Error;
}

impl<R: std::io::Read, W> embedded_io::Read for LinkPort<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.reader.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl<R, W: std::io::Write> embedded_io::Write for LinkPort<R, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// `link --device PATH|- [--mtu N] [--capacity N] [--idle-timeout S] [--min-restart-interval S]`:
/// receive a bundle from a technician over a byte stream (a serial device, or stdin/stdout with `-`) into the state directory's bundle
/// store, then install it through the same `install_once` as `bundle install`. Progress is
/// durable before it is acknowledged, so a transfer cut or killed mid-way resumes from the offset
/// the pump reports. The link's own log goes to stderr (with `-`, stdout is the link until the
/// bundle is complete; the install's output follows it).
fn link(o: &Opts) -> Result<Ended> {
    use device_agent::link_store::LinkStore;
    use hale_link::device::{Config, Event, Receiver, ServeError};

    let device = o.req("--device")?;
    let mtu: u32 = o
        .opt("--mtu")
        .map_or(Ok(1024), |s| s.parse())
        .context("--mtu")?;
    if mtu == 0 || mtu > LINK_MAX_MTU {
        bail!("--mtu {mtu}: 1 to {LINK_MAX_MTU}");
    }
    let max = u32::try_from(offline::MAX_BUNDLE).unwrap_or(u32::MAX);
    let capacity: u32 = o
        .opt("--capacity")
        .map_or(Ok(max), |s| s.parse())
        .context("--capacity")?;
    if capacity == 0 || capacity > max {
        bail!("--capacity {capacity}: 1 to {max}");
    }
    let idle: u64 = o
        .opt("--idle-timeout")
        .map_or(Ok(LINK_IDLE_DEFAULT), |s| s.parse())
        .context("--idle-timeout")?;
    if idle == 0 || idle > 86_400 {
        bail!("--idle-timeout {idle}: 1 to 86400 seconds");
    }
    let idle = Duration::from_secs(idle);
    // each new transfer discards the bundle store (an erase on a NOR part): the device maker
    // sets how often that may happen for its part
    let restart: u32 = o
        .opt("--min-restart-interval")
        .map_or(Ok(hale_link::DEFAULT_MIN_RESTART_INTERVAL_MS / 1000), |s| {
            s.parse()
        })
        .context("--min-restart-interval")?;
    if restart == 0 || restart > 3600 {
        bail!("--min-restart-interval {restart}: 1 to 3600 seconds");
    }
    let d = device_config(o)?;
    let mut store = open_store(o)?;
    let running = store
        .slots()
        .running()
        .map(|i| i.version.to_string())
        .unwrap_or_default();
    let version = running
        .as_bytes()
        .get(..hale_link::device::MAX_VERSION_LEN)
        .unwrap_or(running.as_bytes());
    let dir = o.file("link");
    let sink = LinkStore::open(&dir, capacity).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some((id, offset)) = sink.progress() {
        eprintln!(
            "link: holding bundle {id}: {offset} of {} bytes",
            id.bundle_len()
        );
    }
    let config = Config {
        running_version: version,
        mtu,
        max_bundle_len: capacity,
        min_restart_interval_ms: restart * 1000,
    };
    // the receiver's clock: the wall clock in milliseconds, the same for every session, so the
    // store's last begin holds a session started for a reconnect to the restart bound too (a
    // clock set back makes the kept begin lie ahead, and it bounds nothing)
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let mut rx = Receiver::<_, LINK_FRAME>::new(sink, config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let log = |e: &Result<Event, hale_link::Error<_>>| match e {
        Ok(Event::Stored { .. } | Event::Status) => {}
        Ok(Event::Resync { expected, received }) => {
            eprintln!("link: block at {received} ignored; expecting {expected}")
        }
        Ok(Event::Started {
            id,
            replaced,
            offset,
        }) => match replaced {
            Some(old) => eprintln!("link: receiving bundle {id} at {offset} (discarded {old})"),
            None => eprintln!("link: receiving bundle {id} at {offset}"),
        },
        Ok(Event::BundleComplete { id, len }) => {
            eprintln!("link: bundle {id} complete ({len} bytes, checksum verified)")
        }
        Err(e) => eprintln!("link: refused: {e}"),
    };
    let served = if device == "-" {
        let mut port = LinkPort {
            reader: hale_link::host::IdleReader::spawn(std::io::stdin(), idle),
            writer: std::io::stdout().lock(),
        };
        rx.serve(&mut port, clock, log)
    } else {
        let port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .with_context(|| device.clone())?;
        let writer = port.try_clone().with_context(|| device.clone())?;
        rx.serve(
            &mut LinkPort {
                reader: hale_link::host::IdleReader::spawn(port, idle),
                writer,
            },
            clock,
            log,
        )
    };
    let held = || {
        rx.transfer()
            .map(|(id, offset)| format!("{offset} of {} bytes stored", id.bundle_len()))
            .unwrap_or_else(|| "nothing stored".into())
    };
    let id = match served {
        Ok((id, _)) => id,
        Err(ServeError::Closed) => bail!(
            "link {device} closed before a bundle was complete ({}; push again to resume)",
            held()
        ),
        Err(ServeError::Port(e)) if e.kind() == std::io::ErrorKind::TimedOut => bail!(
            "link {device}: {e}: session closed ({}; push again to resume)",
            held()
        ),
        Err(ServeError::Noise { bytes }) => bail!(
            "link {device}: {bytes} bytes in a row without one command (line noise: the wrong \
             port or baud rate, or a cable with nothing at its far end): session closed ({}; \
             push again to resume)",
            held()
        ),
        Err(ServeError::Port(e)) => bail!("link {device}: {e}"),
    };
    let bytes = rx
        .sink_mut()
        .read_complete()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("link: complete bundle not in the store")?;
    let mut transport = match BundleTransport::parse(&bytes) {
        Ok(t) => t,
        Err(e) => {
            rx.discard().map_err(|e| anyhow::anyhow!("{e}"))?;
            bail!("link: received bundle refused: {e}");
        }
    };
    let authorization = transport.authorization();
    if let Err(e) = bundle_carries(&transport, &d, authorization) {
        rx.discard().map_err(|e| anyhow::anyhow!("{e}"))?;
        return Err(e);
    }
    let ended = install_once(
        o,
        &mut store,
        &mut check_buffers(),
        &d,
        &mut transport,
        authorization,
        "bundle",
        false,
    )?;
    // not now (therapy, a trial under way): the bundle stays whole in the store, so that the next
    // push of it, once installing is safe, sends nothing again (the authorization it may carry is
    // spent only when its image is staged, and is checked again then)
    if ended == Ended::Deferred {
        eprintln!(
            "link: bundle {id} kept: push it again once installing is safe; nothing is sent again"
        );
        return Ok(ended);
    }
    // installed or refused: the bundle has been through the verified path; a kill before this
    // line leaves it complete in the store, and the next push re-offers it
    rx.discard().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ended)
}

// --- device identity (see device_agent::identity) ---------------------------------------------

fn identity(o: &Opts) -> Result<Identity> {
    let secret = DeviceSecret::load(o.opt("--device-secret-file").as_deref().map(Path::new))?;
    Ok(Identity::new(&o.file("identity"), secret))
}

/// The device makes its factory key (sealed under the device secret) and a CSR for the station.
fn factory_csr(o: &Opts) -> Result<()> {
    let serial = o.req("--serial")?;
    let alg = match o.opt("--key-type").as_deref() {
        None | Some("p256") => KeyAlgorithm::P256,
        Some("ed25519") => KeyAlgorithm::Ed25519,
        Some(k) => bail!("--key-type {k:?}: expected p256 or ed25519"),
    };
    let csr = identity(o)?.factory_csr(&serial, alg)?;
    match o.opt("--out") {
        Some(p) => std::fs::write(&p, csr.as_bytes()).with_context(|| p.clone())?,
        None => print!("{csr}"),
    }
    Ok(())
}

/// Store the factory certificate the station issued (checked against the factory key).
fn factory_install(o: &Opts) -> Result<()> {
    let p = o.req("--cert")?;
    let pem = std::fs::read_to_string(&p).with_context(|| p.clone())?;
    identity(o)?
        .install_factory_certificate(&pem)
        .with_context(|| p.clone())?;
    say!("factory certificate installed");
    Ok(())
}

fn print_action(a: &Action) {
    match a {
        Action::Current => {}
        Action::Enrolled { serial_hex } => {
            say!("enrolled: operational certificate {serial_hex}")
        }
        Action::Renewed { serial_hex } => {
            say!("renewed: operational certificate {serial_hex}")
        }
        Action::ReEnrolled { serial_hex } => say!(
            "certificate had expired: enrolled again with the factory certificate ({serial_hex})"
        ),
        Action::RenewedWithFactory {
            serial_hex,
            renewal_error,
        } => say!(
            "renewal refused ({renewal_error}): enrolled again with the factory certificate ({serial_hex})"
        ),
        Action::RenewalFailed { reason } => {
            say!("renewal failed (current certificate still valid): {reason}")
        }
        // said once, by the refusal that asked for the wait
        Action::RenewalWaiting { .. } => {}
        Action::ReplacedRefused {
            serial_hex,
            refusal,
        } => say!(
            "the server refused the operational certificate ({refusal}): enrolled again with the factory certificate ({serial_hex})"
        ),
        Action::ReplacementFailed { reason } => say!(
            "the server refused the operational certificate, and enrolling again failed: {reason}"
        ),
    }
}

/// The single-use enrollment token, from `--token-file F` (its first line) or `--token-env VAR`:
/// a secret, so never from the command line, where `ps` and the shell's history show it.
fn enrollment_token(o: &Opts) -> Result<Option<String>> {
    if o.opt("--token").is_some() {
        bail!(
            "--token: an enrollment token is a secret and is not taken from the command line; \
             give it with --token-file F or --token-env VAR"
        );
    }
    let token = match (o.opt("--token-file"), o.opt("--token-env")) {
        (Some(_), Some(_)) => bail!("--token-file and --token-env: give one of them"),
        (Some(f), None) => {
            let text = std::fs::read_to_string(&f).with_context(|| format!("--token-file {f}"))?;
            text.lines().next().unwrap_or("").trim().to_string()
        }
        (None, Some(var)) => match std::env::var(&var) {
            Ok(t) => t.trim().to_string(),
            Err(_) => bail!("--token-env: environment variable {var} is not set"),
        },
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        bail!("the enrollment token is empty");
    }
    Ok(Some(token))
}

/// `enroll --est URL --ca-cert FILE [--token-file F | --token-env VAR]`: first enrollment, with
/// the factory certificate or a single-use token. A refusal prints the server's error code and
/// exits 1.
fn enroll(o: &Opts) -> Result<()> {
    let token = enrollment_token(o)?;
    let id = identity(o)?;
    let est = o.req("--est")?;
    let ca_path = o.req("--ca-cert")?;
    let ca = std::fs::read_to_string(&ca_path).with_context(|| ca_path.clone())?;
    id.configure(&est, &ca).with_context(|| ca_path.clone())?;
    let result = match token {
        Some(t) => id.enroll_with_token(&t),
        None => id.ensure(std::time::SystemTime::now()),
    };
    match result {
        Ok(Action::Current) => say!("already enrolled: operational certificate is current"),
        Ok(a) => print_action(&a),
        // the server's refusal, or a failure here (nothing asked, no answer)
        Err(e @ (IdentityError::Refused { .. } | IdentityError::HandshakeRefused { .. })) => {
            say!("enrollment refused: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            say!("enrollment failed: {e}");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// `run` against the device listener: before each poll, renew (2/3 of the lifetime) or re-enroll
/// (expired) as needed; every request uses the current operational certificate. A poll whose
/// certificate the server refused (revoked before its renewal time) enrolls again with the
/// factory certificate at once and polls again with the new one. Failures are printed and the
/// pump keeps running its verified firmware.
#[allow(clippy::too_many_arguments)]
fn run_mtls(
    o: &Opts,
    store: &mut FirmwareStore<FileFlash>,
    buffers: &mut CheckBuffers,
    server: &str,
    murl: &str,
    turl: &str,
    interval: u64,
    jit: u64,
) -> Result<()> {
    let id = identity(o)?;
    let serial = id.serial()?;
    let dev = field(&device_config(o)?, "id");
    if dev != serial {
        bail!("device.json id {dev:?} is not the certificate identity {serial:?}");
    }
    // the transport and the serial of the certificate it presents
    let mut http: Option<(HttpTransport, String)> = None;
    // a new certificate: the next requests present it
    let replaced = |a: &Action| {
        matches!(
            a,
            Action::Enrolled { .. }
                | Action::Renewed { .. }
                | Action::ReEnrolled { .. }
                | Action::RenewedWithFactory { .. }
                | Action::ReplacedRefused { .. }
        )
    };
    loop {
        match id.ensure(std::time::SystemTime::now()) {
            Ok(a) => {
                if replaced(&a) {
                    http = None;
                }
                print_action(&a);
            }
            Err(e) => say!("enrollment failed: {e}"),
        }
        // a second round only after the server refused the certificate and another replaced it
        for _round in 0..2 {
            // another process (`enroll --token`, say) stored another certificate: present it
            if let Some((_, used)) = &http {
                if id.current_serial().ok().flatten().as_deref() != Some(used.as_str()) {
                    http = None;
                }
            }
            if http.is_none() {
                http = device_transport(o, &id, murl, turl)?;
            }
            let Some((h, serial_hex)) = http.as_mut() else {
                break;
            };
            poll(o, store, buffers, server, h)?;
            let Some(refusal) = h.take_certificate_refusal() else {
                break;
            };
            match id.replace_refused(serial_hex, &refusal, std::time::SystemTime::now()) {
                // replaced by another process since the transport was made: poll with that one
                Ok(Action::Current) => http = None,
                Ok(a) => {
                    print_action(&a);
                    if !replaced(&a) {
                        break;
                    }
                    http = None;
                }
                Err(e) => {
                    say!("the server refused the operational certificate ({refusal}), and enrolling again failed: {e}");
                    break;
                }
            }
        }
        if o.flag("--once") {
            break;
        }
        std::thread::sleep(Duration::from_secs(interval + jitter(jit)));
    }
    Ok(())
}

/// A transport presenting the current operational certificate, with that certificate's serial;
/// `None` (said) when there is no usable one.
fn device_transport(
    o: &Opts,
    id: &device_agent::identity::Identity,
    murl: &str,
    turl: &str,
) -> Result<Option<(HttpTransport, String)>> {
    match id.device_tls() {
        Ok((tls, serial_hex)) => Ok(Some((
            HttpTransport::with_tls(murl, turl, tls).with_request_timeout(request_timeout(o)?),
            serial_hex,
        ))),
        Err(e) => {
            say!("no usable device certificate: {e}");
            Ok(None)
        }
    }
}

fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) % (max + 1)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") || args.first().is_some_and(|a| a == "help")
    {
        print!("{USAGE}");
        return Ok(());
    }
    let state = match args.iter().position(|a| a == "--state") {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            PathBuf::from(v)
        }
        _ => bail!("--state DIR is required\n{}", USAGE.trim_end()),
    };
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    let o = Opts { state, args };
    match cmd.as_str() {
        "provision" => provision(&o)?,
        "therapy" => match o.args.first().map(String::as_str) {
            Some("on") => {
                std::fs::write(o.file("therapy-running"), b"1").context("therapy flag")?
            }
            Some("off") => {
                let _ = std::fs::remove_file(o.file("therapy-running"));
            }
            _ => bail!("therapy on|off"),
        },
        "health" => match o.args.first().map(String::as_str) {
            Some(v @ ("pass" | "fail")) => {
                std::fs::write(o.file("health"), v).context("health flag")?
            }
            _ => bail!("health pass|fail"),
        },
        "crash" => match o.args.first().map(String::as_str) {
            None => std::fs::write(o.file("crash-before-confirm"), b"1").context("crash flag")?,
            Some("after-record") => {
                std::fs::write(o.file(CRASH_AFTER_RECORD), b"1").context("crash flag")?
            }
            _ => bail!("crash [after-record]"),
        },
        "reboot" => {
            let mut store = open_store(&o)?;
            power_on(&o, &mut store)?;
        }
        "bundle" => bundle_install(&o)?.exit(),
        "link" => link(&o)?.exit(),
        "factory-csr" => factory_csr(&o)?,
        "factory-install" => factory_install(&o)?,
        "enroll" => enroll(&o)?,
        "status" => {
            // the note before the flash: a note is written only after the flash record that
            // makes its image pending is synced, so the flash read next is at least that far
            let note = in_flight_note(&o);
            let store = read_store(&o)?;
            say!(
                "{}",
                serde_json::to_string_pretty(&report(&o, &store, note.as_ref())?)?
            );
        }
        "run" => {
            let server = o.req("--server")?;
            let base = server.trim_end_matches('/').to_string();
            // hale-server serves the TUF metadata at its root and contents under /targets
            let murl = o.opt("--metadata-url").unwrap_or_else(|| base.clone());
            let turl = o
                .opt("--target-base-url")
                .unwrap_or_else(|| format!("{base}/targets"));
            let interval: u64 = o
                .opt("--interval")
                .map_or(Ok(60), |s| s.parse())
                .context("--interval")?;
            let jit: u64 = o
                .opt("--jitter")
                .map_or(Ok(interval / 4), |s| s.parse())
                .context("--jitter")?;
            let timeout = request_timeout(&o)?;
            let mut store = open_store(&o)?;
            // the process start is a power-on; what it kept is reported before the first check
            if power_on(&o, &mut store)? {
                keep_result_to_report(&o)?;
            }
            // what a device keeps in static RAM: made once, at the start, and used by every poll
            let mut buffers = check_buffers();
            if server.starts_with("https://") {
                // device listener: mTLS with the operational certificate for every call
                return run_mtls(
                    &o,
                    &mut store,
                    &mut buffers,
                    &server,
                    &murl,
                    &turl,
                    interval,
                    jit,
                );
            }
            let mut http = HttpTransport::new(&murl, &turl).with_request_timeout(timeout);
            loop {
                poll(&o, &mut store, &mut buffers, &server, &mut http)?;
                if o.flag("--once") {
                    break;
                }
                std::thread::sleep(Duration::from_secs(interval + jitter(jit)));
            }
        }
        "" => bail!("no command\n{}", USAGE.trim_end()),
        other => bail!("unknown command {other:?}\n{}", USAGE.trim_end()),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use device_agent::Slots;

    const AT: &str = "2026-11-24T09:00:00Z";

    fn image(major: u64, sha: u8) -> Image {
        Image {
            version: Version::new(major, 0, 0),
            security_counter: 1,
            length: 100,
            sha256: [sha; 32],
        }
    }

    /// 1.0.0 good in slot A, 2.0.0 (sha 2s) pending in slot B.
    fn pending() -> Slots {
        let mut s = Slots::factory(image(1, 1));
        s.begin_staging_in_place(image(2, 2)).unwrap();
        s.finish_staging_in_place().unwrap();
        s
    }

    /// The note written before a boot of `before`, as read back from its file.
    fn note(before: &Slots) -> Note {
        let v: Value = serde_json::from_str(&Note::of(before, AT).to_string()).unwrap();
        Note::parse(&v)
    }

    #[test]
    fn a_note_names_the_image_decided_and_the_good_one_and_reads_back() {
        let n = note(&pending());
        let deciding = |trial| {
            Some(Deciding {
                version: "2.0.0".into(),
                verified: Some(([2; 32], trial)),
            })
        };
        assert_eq!(n.deciding, deciding(false));
        assert_eq!(n.good, Some((Slot::A, "1.0.0".into(), [1; 32])));
        assert_eq!(n.at, AT);
        let mut trial = pending();
        trial.boot_in_place();
        assert_eq!(note(&trial).deciding, deciding(true));
        // a note of an agent before 2026-11-24: the version alone
        let old = Note::parse(&json!({"version": "2.0.0"}));
        assert_eq!(
            old.deciding,
            Some(Deciding {
                version: "2.0.0".into(),
                verified: None
            })
        );
        assert_eq!((old.good, old.at.as_str()), (None, ""));
        // a note whose fields do not read is a note of nothing
        let nothing = Note {
            deciding: None,
            good: None,
            at: String::new(),
        };
        let bad = Note::parse(&json!({"good": {"slot": "c", "version": "1.0.0", "sha256": "zz"}}));
        assert_eq!(bad, nothing);
        for sha in [
            "zz".repeat(32),
            format!("+{}", "1".repeat(63)),
            "é".repeat(32),
        ] {
            let bad =
                Note::parse(&json!({"good": {"slot": "a", "version": "1.0.0", "sha256": sha}}));
            assert_eq!(bad, nothing, "{sha}");
        }
        let fine = Note::parse(
            &json!({"good": {"slot": "a", "version": "1.0.0", "sha256": "0A".repeat(32)}}),
        );
        assert_eq!(fine.good, Some((Slot::A, "1.0.0".into(), [10; 32])));
    }

    #[test]
    fn the_slots_after_the_boot_tell_what_it_decided() {
        let before = pending();
        let n = note(&before);
        // not decided yet: pending, then on trial
        assert_eq!(n.decided(&before), None);
        let mut trial = before;
        trial.boot_in_place();
        assert_eq!(n.decided(&trial), None);
        // the trial boot notes it again, on trial
        let t = note(&trial);
        assert_eq!(t.decided(&trial), None);
        // confirmed
        let mut good = trial;
        good.confirm_in_place().unwrap();
        assert_eq!(
            t.decided(&good),
            Some(Decided::Confirmed {
                version: "2.0.0".into()
            })
        );
        // reverted: rejected after its trial's note (failed health checks, a reset)
        let mut rejected = trial;
        rejected.reject_in_place().unwrap();
        let reverted = Some(Decided::Reverted {
            version: "2.0.0".into(),
        });
        assert_eq!(t.decided(&rejected), reverted);
        let mut reset = trial;
        reset.boot_in_place();
        assert_eq!(reset.info(Slot::B).state, SlotState::Rejected);
        assert_eq!(t.decided(&reset), reverted);
        // found damaged: rejected while still pending (the boot checks a pending image's bytes
        // as its trial starts); the install ends
        let mut damaged = trial;
        damaged.image_damaged_in_place(Slot::B);
        assert_eq!(damaged.info(Slot::B).state, SlotState::Rejected);
        assert_eq!(
            n.decided(&damaged),
            Some(Decided::Damaged {
                version: "2.0.0".into(),
                slot: Slot::B,
                running: "1.0.0".into(),
                trial: true
            })
        );
        // an old note (no sha256, no trial) cannot tell: reverted, as before
        let old = Note::parse(&json!({"version": "2.0.0"}));
        assert_eq!(old.decided(&damaged), reverted);
        // the good image: still there after a normal boot; forgotten when found damaged
        let mut two_good = good;
        two_good.boot_in_place();
        let n = note(&two_good);
        assert_eq!(n.deciding, None);
        assert_eq!(n.good, Some((Slot::B, "2.0.0".into(), [2; 32])));
        assert_eq!(n.decided(&two_good), None);
        let mut forgotten = two_good;
        forgotten.image_damaged_in_place(Slot::B);
        assert_eq!(forgotten.info(Slot::B).state, SlotState::Empty);
        let decided = n.decided(&forgotten);
        assert_eq!(
            decided,
            Some(Decided::Damaged {
                version: "2.0.0".into(),
                slot: Slot::B,
                running: "1.0.0".into(),
                trial: false
            })
        );
        assert_eq!(
            decided.unwrap().result(),
            (
                "reverted",
                "2.0.0 in slot b was damaged (its bytes no longer match its record): running 1.0.0"
                    .to_string()
            )
        );
    }
}
