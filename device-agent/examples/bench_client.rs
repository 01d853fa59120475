//! In-process timing of the host client, shaped like `../shared/bench/tuf-client.py` so the two
//! compare step for step (benchmark, not a test; `device-agent/bench/client-bench.sh` runs both):
//!
//! - cold: a fresh metadata dir holding only the trusted root → refresh + target search +
//!   download into a fresh target dir;
//! - warm: the metadata dir of a first cold run, nothing new on the server → refresh + target
//!   search + the cached target's hashes checked (no download).
//!
//! - floor: the requests of a cold run alone, as fast as they go: the same URLs in the same order
//!   over one kept-alive connection, the bodies read and dropped; no verification, no file. No
//!   client that checks what it fetches can be faster (the URLs are taken from a cold run).
//!
//! Each iteration builds a new client (its own HTTP connection), as python-tuf's builds a new
//! `Updater`. Prints one JSON line: median/min/max seconds of the whole iteration.
//!
//! ```text
//! cargo run --release -p device-agent --features std --example bench_client -- \
//!     --root ROOT_JSON --url BASE_URL --target PATH --mode cold|warm|floor [--iters N]
//! ```

// `runs` holds `iters` ≥ 1 entries (checked), so the median and extremes index within it
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use device_agent::host::{now, ConformanceClient};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(arg(&args, "--root").context("--root is required")?);
    let url = arg(&args, "--url").context("--url is required")?;
    let target = arg(&args, "--target").context("--target is required")?;
    let mode = arg(&args, "--mode").context("--mode cold|warm is required")?;
    let iters: usize = arg(&args, "--iters").map_or(Ok(50), |s| s.parse())?;
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
        // the URLs a cold run requests, in order (taken from one)
        let (md, tg) = dirs(usize::MAX)?;
        ConformanceClient::init(&md, &root).map_err(|e| anyhow::anyhow!("init: {e}"))?;
        let mut c = ConformanceClient::new(&md, &url, &format!("{url}/targets"));
        c.download(now(), &[target.to_string()], &tg)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let urls = c.http.requests.clone();
        for _ in 0..iters {
            let t0 = Instant::now();
            let mut h = device_agent::http1::Http1::default();
            for u in &urls {
                std::hint::black_box(h.get(u, 64 << 20).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            runs.push(t0.elapsed().as_secs_f64());
        }
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
    runs.sort_by(f64::total_cmp);
    let median = if iters % 2 == 1 {
        runs[iters / 2]
    } else {
        (runs[iters / 2 - 1] + runs[iters / 2]) / 2.0
    };
    println!(
        "{{\"client\": \"hale (in process)\", \"mode\": \"{mode}\", \"target\": \"{target}\", \"iters\": {iters}, \"seconds\": {{\"total\": {{\"median\": {median:.6}, \"min\": {:.6}, \"max\": {:.6}}}}}}}",
        runs[0],
        runs[iters - 1]
    );
    Ok(())
}
