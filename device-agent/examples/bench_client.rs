//! In-process timing of the host client, shaped like `../shared/bench/tuf-client.py` so the two
//! compare step for step (benchmark, not a test; `device-agent/bench/client-bench.sh` runs both):
//!
//! - cold: a fresh metadata dir holding only the trusted root → refresh + target search +
//!   download into a fresh target dir;
//! - warm: the metadata dir of a first cold run, nothing new on the server → refresh + target
//!   search + the cached target's hashes checked (no download).
//!
//! - floor: what any client has to do, each part alone and as fast as it goes here, so the
//!   ratios can be read against the most that is possible (one JSON line, medians in seconds):
//!   - `transfer_cold`, `transfer_warm`: the requests of a cold and of a warm run (URLs taken
//!     from real runs), in order over one kept-alive connection, bodies read and dropped;
//!   - `crypto`: the four signature checks of a refresh (root, timestamp, snapshot, targets: one
//!     signature each here) on already-canonical bytes with already-parsed keys, and the SHA-256
//!     of the target: the same checks python-tuf makes, with the fastest verifiers we have;
//!   - `files`: writing the five files a cold run keeps (same sizes; temporary file and rename,
//!     as both clients do) in a fresh directory of the work directory's file system.
//!
//! Each iteration builds a new client (its own HTTP connection), as python-tuf's builds a new
//! `Updater`. Prints one JSON line: median/min/max seconds of the whole iteration.
//!
//! ```text
//! cargo run --release -p device-agent --features std --example bench_client -- \
//!     --root ROOT_JSON --url BASE_URL --target PATH --mode cold|warm|floor [--iters N]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use device_agent::host::{now, ConformanceClient};

fn one(root: &Path, url: &str, target: &str, md: &Path, tg: &Path, cold: bool) -> Result<f64> {
    let t0 = Instant::now();
    if cold {
        ConformanceClient::init(md, root).map_err(|e| anyhow::anyhow!("init: {e}"))?;
    }
    let mut c = ConformanceClient::new(md, url, &format!("{url}/targets"));
    c.download(now(), &[target.to_string()], tg)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Median of `iters` timings.
fn median(iters: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut v = (0..iters).map(|_| f()).collect::<Result<Vec<_>>>()?;
    Ok(common::median(&mut v))
}

/// The signature checks of the stored metadata in `md` and the SHA-256 of `target_file`, alone.
fn crypto_floor(md: &Path, target_file: &Path, iters: usize) -> Result<f64> {
    use hale_core::crypto::{hex_decode, PublicKey};
    use hale_core::metadata::{Envelope, Root};
    let root_bytes = std::fs::read(md.join("root.json"))?;
    let root_env = Envelope::parse(&root_bytes, "root")?;
    let root = Root::parse(&root_env.signed)?;
    let mut checks = Vec::new();
    for role in ["root", "timestamp", "snapshot", "targets"] {
        let bytes = std::fs::read(md.join(format!("{role}.json")))?;
        let env = Envelope::parse(&bytes, role)?;
        let mut msg = Vec::new();
        hale_core::canonical::write_canonical(
            &hale_core::json::Value::Object(env.signed),
            &mut msg,
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let sig = env
            .signatures
            .iter()
            .next()
            .and_then(|s| s.as_object())
            .context("a signature")?;
        let field = |k: &str| {
            sig.get(k)
                .ok()
                .flatten()
                .and_then(|v| v.as_str())
                .map(|s| s.to_owned_string())
        };
        let (kid, hex) = (
            field("keyid").context("keyid")?,
            field("sig").context("sig")?,
        );
        let key = root
            .keys
            .get(&kid)
            .ok()
            .flatten()
            .and_then(|v| v.as_object())
            .context("key")?;
        let key = PublicKey::from_tuf(&key).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut raw = vec![0u8; hex.len() / 2];
        let n = hex_decode(hex.as_bytes(), &mut raw).context("hex")?;
        raw.truncate(n);
        checks.push((key, raw, msg));
    }
    let image = std::fs::read(target_file)?;
    median(iters, || {
        let t0 = Instant::now();
        for (key, sig, msg) in &checks {
            let ok = key
                .verify(sig, |sink| {
                    sink.write(msg);
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            anyhow::ensure!(ok, "a signature of the repository does not verify");
        }
        std::hint::black_box(hale_core::crypto::sha256(&image));
        Ok(t0.elapsed().as_secs_f64())
    })
}

/// Writing the five files a cold run keeps (the sizes of those in `md` and of `target_file`),
/// each as a temporary file renamed into place, in a fresh directory under `work`.
fn files_floor(md: &Path, target_file: &Path, work: &Path, iters: usize) -> Result<f64> {
    let mut files = Vec::new();
    for role in ["root", "timestamp", "snapshot", "targets"] {
        files.push((
            format!("{role}.json"),
            std::fs::read(md.join(format!("{role}.json")))?,
        ));
    }
    files.push(("target".into(), std::fs::read(target_file)?));
    let mut n = 0;
    median(iters, || {
        n += 1;
        let dir = work.join(format!("files{n}"));
        std::fs::create_dir_all(&dir)?;
        let t0 = Instant::now();
        for (name, bytes) in &files {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(t0.elapsed().as_secs_f64())
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(common::arg(&args, "--root").context("--root is required")?);
    let url = common::arg(&args, "--url").context("--url is required")?;
    let target = common::arg(&args, "--target").context("--target is required")?;
    let mode = common::arg(&args, "--mode").context("--mode cold|warm is required")?;
    let iters: usize = common::arg(&args, "--iters").map_or(Ok(50), |s| s.parse())?;
    let cold = match mode.as_str() {
        "cold" | "floor" => true,
        "warm" => false,
        m => bail!("--mode {m}: cold, warm or floor"),
    };
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let work = tempfile::tempdir()?;
    let dirs = |i: usize| -> Result<(PathBuf, PathBuf)> {
        let (md, tg) = (
            work.path().join(format!("md{i}")),
            work.path().join(format!("tg{i}")),
        );
        std::fs::create_dir_all(&md)?;
        std::fs::create_dir_all(&tg)?;
        Ok((md, tg))
    };
    let mut runs = Vec::with_capacity(iters);
    if mode == "floor" {
        let (md, tg) = dirs(0)?;
        ConformanceClient::init(&md, &root).map_err(|e| anyhow::anyhow!("init: {e}"))?;
        let run = |md: &Path, tg: &Path| -> Result<Vec<String>> {
            let mut c = ConformanceClient::new(md, &url, &format!("{url}/targets"));
            c.download(now(), &[target.to_string()], tg)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(c.http.requests.clone())
        };
        let cold_urls = run(&md, &tg)?;
        let warm_urls = run(&md, &tg)?;
        let target_file = tg.join(device_agent::host::encode_target_name(&target));
        let transfer = |urls: &[String]| -> Result<f64> {
            median(iters, || {
                let t0 = Instant::now();
                let mut h = device_agent::http1::Http1::default();
                for u in urls {
                    std::hint::black_box(h.get(u, 64 << 20).map_err(|e| anyhow::anyhow!("{e}"))?);
                }
                Ok(t0.elapsed().as_secs_f64())
            })
        };
        let (cold_t, warm_t) = (transfer(&cold_urls)?, transfer(&warm_urls)?);
        let crypto = crypto_floor(&md, &target_file, iters)?;
        let files = files_floor(&md, &target_file, work.path(), iters)?;
        println!(
            "{{\"client\": \"floor\", \"iters\": {iters}, \"seconds\": {{\"transfer_cold\": {cold_t:.6}, \"transfer_warm\": {warm_t:.6}, \"crypto\": {crypto:.6}, \"files\": {files:.6}}}}}"
        );
        return Ok(());
    } else if cold {
        for i in 0..iters {
            let (md, tg) = dirs(i)?;
            runs.push(one(&root, &url, &target, &md, &tg, true)?);
        }
    } else {
        let (md, tg) = dirs(0)?;
        one(&root, &url, &target, &md, &tg, true)?; // prime the cache once
        for _ in 0..iters {
            runs.push(one(&root, &url, &target, &md, &tg, false)?);
        }
    }
    common::print_summary("hale (in process)", &mode, &target, runs);
    Ok(())
}
