//! In-process timing of the pump's own update check (`hale-agent run`'s poll: `check_for_update`
//! over HTTP into the file-backed flash), against a served repository (benchmark, not a test;
//! `device-agent/bench/client-bench.sh` runs it beside python-tuf):
//!
//! - cold: a pump provisioned with the trusted root and an older image (outside the timing, as
//!   the factory does it) → one check: the whole metadata chain, the target search, the image
//!   downloaded, hashed and written into the inactive slot of the flash file (`Staged`);
//! - refresh: a pump provisioned with the trusted root and already running the served version
//!   → one check: the whole metadata chain verified and stored, the target found not newer
//!   (`UpToDate`): a cold metadata refresh, python-tuf's `refresh()` + `get_targetinfo()`;
//! - warm: the same pump after it booted and confirmed that image, nothing new on the server →
//!   one check (`UpToDate`), as every later poll of a running pump.
//!
//! Each check builds a new HTTP client (its own connection; closed after the timing stops, as the
//! shared python-tuf client's `Updater` is dropped after its timing and `bench_client`'s client
//! after its), so nothing is carried between iterations that `hale-agent` would not carry between
//! polls: the flash (the pump's trusted metadata, slots and last check) is, and so is the store's
//! seal in RAM (the root and timestamp the last check verified are not checked again while they are
//! what the flash holds; `docs/decisions.md`). The buffers a check works in are made with the pump,
//! outside the timing, as `hale-agent run` makes them once at its start (a device's are static
//! RAM). The flash file is synced (`fdatasync`) where the store asks, around every state record, as
//! `hale-agent`'s is.
//!
//! ```text
//! cargo run --release -p device-agent --features std --example bench_agent -- \
//!     --root ROOT_JSON --url BASE_URL --target PATH --model M --revision R \
//!     --mode cold|refresh|warm [--running VERSION] [--iters N]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use device_agent::host::{now, CheckBuffers, FileFlash, HttpTransport};
use device_agent::{
    check_for_update, Application, Boot, DeferReason, DeviceInfo, FirmwareStore, Image, Layout,
    NoRollback, Outcome,
};
use hale_core::Version;
use sha2::{Digest, Sha256};

/// `hale-agent`'s flash layout and per-check buffer size.
const LAYOUT: Layout = device_agent::host::PUMP_LAYOUT;
const BUF: usize = device_agent::host::PUMP_ROLE_MAX;

/// Therapy is never running here: every offered image installs.
struct Idle;

impl Application for Idle {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        Ok(())
    }
}

/// A pump in `dir` with `root` trusted and `version` of an image running.
fn provision(dir: &Path, root: &[u8], version: Version) -> Result<FirmwareStore<FileFlash>> {
    std::fs::create_dir_all(dir)?;
    let image = vec![0x5a; 4096];
    let record = Image {
        version,
        security_counter: 0,
        length: image.len() as u64,
        sha256: Sha256::digest(&image).into(),
    };
    let flash = FileFlash::open(&dir.join("flash.bin"), LAYOUT.end() as usize)?;
    FirmwareStore::provision(flash, LAYOUT, root, &image, record)
        .map_err(|e| anyhow::anyhow!("provision: {e}"))
}

/// The buffers `hale-agent run` makes at its start.
fn buffers() -> CheckBuffers {
    CheckBuffers::new(BUF, 4096, 4 * BUF)
}

/// One check as `hale-agent`'s poll makes it: a new HTTP client, the pump's buffers. The client
/// is handed back, to be dropped (its connection closed) after the timing stops, as the shared
/// python-tuf client's `Updater` and `bench_client`'s client are.
fn check(
    store: &mut FirmwareStore<FileFlash>,
    buffers: &mut CheckBuffers,
    url: &str,
    device: &DeviceInfo,
) -> Result<(Outcome, HttpTransport)> {
    let mut http = HttpTransport::new(url, &format!("{url}/targets"));
    let outcome = check_for_update(
        store,
        device,
        &mut http,
        &mut Idle,
        &mut NoRollback,
        now(),
        buffers.workspace(),
    )
    .map_err(|e| anyhow::anyhow!("check: {e}"))?;
    Ok((outcome, http))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root_path = PathBuf::from(common::arg(&args, "--root").context("--root is required")?);
    let url = common::arg(&args, "--url").context("--url is required")?;
    let target = common::arg(&args, "--target").context("--target is required")?;
    let model = common::arg(&args, "--model").context("--model is required")?;
    let revision = common::arg(&args, "--revision").context("--revision is required")?;
    let mode = common::arg(&args, "--mode").context("--mode cold|refresh|warm is required")?;
    let iters: usize = common::arg(&args, "--iters").map_or(Ok(50), |s| s.parse())?;
    ensure!(iters >= 1, "--iters must be at least 1");
    let root = std::fs::read(&root_path).with_context(|| root_path.display().to_string())?;
    let device = DeviceInfo {
        model: &model,
        revision: &revision,
        bootloader: Version::new(1, 0, 0),
        target: &target,
        rollback_target: None,
    };
    let work = tempfile::tempdir()?;
    let mut runs = Vec::with_capacity(iters);
    match mode.as_str() {
        "cold" | "refresh" => {
            // cold: an older image runs, the check stages the served one; refresh: the served
            // version runs, the check verifies and stores the chain and finds nothing newer
            let (running, staged) = if mode == "cold" {
                (Version::new(1, 0, 0), true)
            } else {
                let v = common::arg(&args, "--running").context(
                    "--mode refresh needs --running VERSION (the served target's version)",
                )?;
                (
                    Version::parse(&v).context("--running: not a version")?,
                    false,
                )
            };
            for i in 0..iters {
                let dir = work.path().join(format!("pump{i}"));
                let mut store = provision(&dir, &root, running)?;
                let mut buffers = buffers();
                let t0 = Instant::now();
                let (outcome, http) = check(&mut store, &mut buffers, &url, &device)?;
                runs.push(t0.elapsed().as_secs_f64());
                drop(http);
                ensure!(
                    matches!(
                        (staged, outcome),
                        (true, Outcome::Staged { .. }) | (false, Outcome::UpToDate { .. })
                    ),
                    "a {mode} check should {}, got {outcome:?}",
                    if staged {
                        "stage the served image"
                    } else {
                        "find nothing new"
                    }
                );
            }
        }
        "warm" => {
            let mut store = provision(&work.path().join("pump"), &root, Version::new(1, 0, 0))?;
            let mut buffers = buffers();
            let (outcome, _) = check(&mut store, &mut buffers, &url, &device)?;
            ensure!(
                matches!(outcome, Outcome::Staged { .. }),
                "the first check should stage the served image, got {outcome:?}"
            );
            let boot = store.boot().map_err(|e| anyhow::anyhow!("boot: {e}"))?;
            ensure!(matches!(boot, Boot::Trial { .. }), "boot: {boot:?}");
            store
                .confirm()
                .map_err(|e| anyhow::anyhow!("confirm: {e}"))?;
            // the first check after the install concludes "up to date" and remembers it
            check(&mut store, &mut buffers, &url, &device)?;
            for _ in 0..iters {
                let t0 = Instant::now();
                let (outcome, http) = check(&mut store, &mut buffers, &url, &device)?;
                runs.push(t0.elapsed().as_secs_f64());
                drop(http);
                ensure!(
                    matches!(outcome, Outcome::UpToDate { .. }),
                    "a warm check should find nothing new, got {outcome:?}"
                );
            }
        }
        m => bail!("--mode {m}: cold, refresh or warm"),
    }
    common::print_summary("hale-agent check (in process)", &mode, &target, runs);
    Ok(())
}
