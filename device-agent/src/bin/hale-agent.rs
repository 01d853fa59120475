//! `hale-agent`: a simulated insulin pump. Its flash is a file in the state directory (so it
//! survives the process like a real one survives a reset); it polls a TUF repository over
//! HTTP(S) with jitter, installs through the A/B slots, and reports to the server.
//!
//! ```text
//! hale-agent --state DIR provision --root ROOT --image FILE --version V [--security-counter N]
//!            --id ID --model M --revision R --target PATH [--bootloader V]
//! hale-agent --state DIR run --server URL [--metadata-url U] [--target-base-url U]
//!            [--interval S] [--jitter S] [--once]
//! hale-agent --state DIR therapy on|off        tester: is insulin being delivered?
//! hale-agent --state DIR health pass|fail      tester: result of the next health checks
//! hale-agent --state DIR crash                 tester: the next trial crashes before confirming
//! hale-agent --state DIR reboot                simulate a reset (boot step + application start)
//! hale-agent --state DIR status                print the report as JSON
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use device_agent::host::{self, FileFlash, HttpTransport};
use device_agent::{
    check_for_update, AgentError, Application, Boot, DeferReason, DeviceInfo, FirmwareStore, Image,
    Layout, NoRollback, Outcome, Workspace,
};
use hale_core::{Storage, Version};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// 2 × 64 KiB state records, 2 × 1 MiB slots.
const LAYOUT: Layout = Layout::contiguous(0, 64 << 10, 1 << 20);
const BUF: usize = 64 << 10;

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

fn open_store(o: &Opts) -> Result<FirmwareStore<FileFlash>> {
    let path = o.file("flash.bin");
    if !path.exists() {
        bail!("{}: no flash; run `provision` first", path.display());
    }
    let flash = FileFlash::open(&path, LAYOUT.end() as usize)
        .with_context(|| path.display().to_string())?;
    FirmwareStore::open(flash, LAYOUT).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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

fn set_last(o: &Opts, result: &str, reason: &str) -> Result<()> {
    let p = o.file("last_result.json");
    std::fs::write(&p, json!({"result": result, "reason": reason}).to_string())
        .with_context(|| p.display().to_string())
}

fn last(o: &Opts) -> (String, String) {
    let v: Value = std::fs::read(o.file("last_result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (field(&v, "result"), field(&v, "reason"))
}

fn report(o: &Opts, store: &FirmwareStore<FileFlash>) -> Result<Value> {
    let d = device_config(o)?;
    let (result, reason) = last(o);
    Ok(host::report_json(
        store,
        &field(&d, "id"),
        &field(&d, "model"),
        &field(&d, "revision"),
        &result,
        &reason,
    ))
}

/// A reset: the boot step, then the application's start (health checks → confirm).
fn power_on(o: &Opts, store: &mut FirmwareStore<FileFlash>) -> Result<()> {
    let boot = store.boot().map_err(|e| anyhow::anyhow!("boot: {e}"))?;
    match boot {
        Boot::Normal { slot } => println!("booted slot {}", slot.as_str()),
        Boot::Reverted { slot, rejected } => {
            println!(
                "reverted to slot {} (slot {} was never confirmed)",
                slot.as_str(),
                rejected.as_str()
            );
            set_last(o, "reverted", "reset before confirmation")?;
        }
        Boot::Trial { slot } => {
            let version = store
                .slots()
                .info(slot)
                .image
                .map(|i| i.version.to_string())
                .unwrap_or_default();
            println!("trial boot of {version} in slot {}", slot.as_str());
            let crash = o.file("crash-before-confirm");
            if crash.exists() {
                std::fs::remove_file(&crash).with_context(|| crash.display().to_string())?;
                println!("crash before confirmation (simulated): resetting");
                return power_on(o, store);
            }
            if std::fs::read_to_string(o.file("health")).is_ok_and(|s| s.trim() == "fail") {
                store.reject().map_err(|e| anyhow::anyhow!("reject: {e}"))?;
                println!("health check failed: reverted");
                set_last(o, "reverted", &format!("{version} failed its health check"))?;
            } else {
                store
                    .confirm()
                    .map_err(|e| anyhow::anyhow!("confirm: {e}"))?;
                println!("health check passed: {version} confirmed");
                set_last(o, "installed", &version)?;
            }
        }
    }
    Ok(())
}

fn provision(o: &Opts) -> Result<()> {
    std::fs::create_dir_all(&o.state).with_context(|| o.state.display().to_string())?;
    let root_path = o.req("--root")?;
    let root = std::fs::read(&root_path).with_context(|| root_path.clone())?;
    let image_path = o.req("--image")?;
    let image = std::fs::read(&image_path).with_context(|| image_path.clone())?;
    let version =
        Version::parse(&o.req("--version")?).context("--version is not a semantic version")?;
    let counter: u64 = o
        .opt("--security-counter")
        .map_or(Ok(0), |s| s.parse())
        .context("--security-counter")?;
    let record = Image {
        version,
        security_counter: counter,
        length: image.len() as u64,
        sha256: Sha256::digest(&image).into(),
    };
    let flash_path = o.file("flash.bin");
    let _ = std::fs::remove_file(&flash_path);
    let flash = FileFlash::open(&flash_path, LAYOUT.end() as usize)
        .with_context(|| flash_path.display().to_string())?;
    FirmwareStore::provision(flash, LAYOUT, &root, &image, record)
        .map_err(|e| anyhow::anyhow!("provision: {e}"))?;
    let cfg = json!({
        "id": o.req("--id")?, "model": o.req("--model")?, "revision": o.req("--revision")?,
        "target": o.req("--target")?, "bootloader": o.opt("--bootloader").unwrap_or_else(|| "1.0.0".into()),
    });
    std::fs::write(o.file("device.json"), serde_json::to_vec_pretty(&cfg)?)
        .context("device.json")?;
    set_last(o, "installed", &version.to_string())?;
    println!("provisioned {} with {version}", o.state.display());
    Ok(())
}

/// One poll: check, install when staged (reboot into the trial), report.
fn poll(
    o: &Opts,
    store: &mut FirmwareStore<FileFlash>,
    server: &str,
    http: &mut HttpTransport,
) -> Result<()> {
    let d = device_config(o)?;
    let (model, revision, target) = (
        field(&d, "model"),
        field(&d, "revision"),
        field(&d, "target"),
    );
    let bootloader = Version::parse(&field(&d, "bootloader")).unwrap_or(Version::new(1, 0, 0));
    let device = DeviceInfo {
        model: &model,
        revision: &revision,
        bootloader,
        target: &target,
    };
    let mut meta: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; BUF]);
    let (mut scratch, mut chunk, mut deleg) = (vec![0u8; BUF], vec![0u8; 4096], vec![0u8; 4 * BUF]);
    let [r, t, s, g] = &mut meta;
    let ws = Workspace {
        metadata: Storage {
            root: r.as_mut_slice(),
            timestamp: t.as_mut_slice(),
            snapshot: s.as_mut_slice(),
            targets: g.as_mut_slice(),
        },
        scratch: &mut scratch,
        chunk: &mut chunk,
        delegations: &mut deleg,
    };
    let mut app = Pump { dir: &o.state };
    match check_for_update(
        store,
        &device,
        http,
        &mut app,
        &mut NoRollback,
        host::now(),
        ws,
    ) {
        Ok(Outcome::Staged { version }) => {
            println!("staged {version}: rebooting into it");
            power_on(o, store)?;
        }
        Ok(Outcome::Deferred { offered, reason }) => {
            println!("{offered} deferred: {reason}");
            set_last(o, "deferred", reason.as_str())?;
        }
        Ok(other) => println!("{other:?}"),
        Err(
            e @ (AgentError::Transport { .. } | AgentError::Missing { .. } | AgentError::Store(_)),
        ) => {
            // cannot reach the repository (or flash trouble): keep running, say why
            println!("update check failed: {e}");
        }
        Err(e) => {
            println!("update refused: {e}");
            set_last(o, "rejected", &e.to_string())?;
        }
    }
    let url = format!(
        "{}/api/v1/devices/{}/report",
        server.trim_end_matches('/'),
        field(&d, "id")
    );
    let (result, reason) = last(o);
    let body = host::server_report_json(store, &target, &result, &reason);
    match ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(_) => {}
        Err(ureq::Error::Status(code, r)) => println!(
            "report to {url} refused (HTTP {code}): {}",
            r.into_string().unwrap_or_default().trim()
        ),
        Err(e) => println!("report to {url} failed: {e}"),
    }
    Ok(())
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
    let state = match args.iter().position(|a| a == "--state") {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            PathBuf::from(v)
        }
        _ => bail!("--state DIR is required"),
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
            Some("on") => std::fs::write(o.file("therapy-running"), b"1").context("therapy flag")?,
            Some("off") => {
                let _ = std::fs::remove_file(o.file("therapy-running"));
            }
            _ => bail!("therapy on|off"),
        },
        "health" => match o.args.first().map(String::as_str) {
            Some(v @ ("pass" | "fail")) => std::fs::write(o.file("health"), v).context("health flag")?,
            _ => bail!("health pass|fail"),
        },
        "crash" => std::fs::write(o.file("crash-before-confirm"), b"1").context("crash flag")?,
        "reboot" => {
            let mut store = open_store(&o)?;
            power_on(&o, &mut store)?;
        }
        "status" => {
            let store = open_store(&o)?;
            println!("{}", serde_json::to_string_pretty(&report(&o, &store)?)?);
        }
        "run" => {
            let server = o.req("--server")?;
            let base = server.trim_end_matches('/').to_string();
            // hale-server serves the TUF metadata at its root and contents under /targets
            let murl = o.opt("--metadata-url").unwrap_or_else(|| base.clone());
            let turl = o.opt("--target-base-url").unwrap_or_else(|| format!("{base}/targets"));
            let interval: u64 = o.opt("--interval").map_or(Ok(60), |s| s.parse()).context("--interval")?;
            let jit: u64 = o.opt("--jitter").map_or(Ok(interval / 4), |s| s.parse()).context("--jitter")?;
            let mut store = open_store(&o)?;
            // the process start is a power-on
            power_on(&o, &mut store)?;
            let mut http = HttpTransport::new(&murl, &turl);
            loop {
                poll(&o, &mut store, &server, &mut http)?;
                if o.flag("--once") {
                    break;
                }
                std::thread::sleep(Duration::from_secs(interval + jitter(jit)));
            }
        }
        _ => bail!("usage: hale-agent --state DIR provision|run|therapy|health|crash|reboot|status (see --help in the source header)"),
    }
    Ok(())
}
