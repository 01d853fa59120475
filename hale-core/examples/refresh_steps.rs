//! The trust work of one warm refresh, without the network or the disk: the steps a client runs
//! when nothing changed on the server (root checked, stored timestamp, the same timestamp again,
//! stored snapshot and targets), timed each. A repository written by
//! `cargo run -p device-agent --example bench_repo -- DIR` gives the files.
//!
//! `cargo run --release -p hale-core --features std --example refresh_steps -- DIR [ITERS]`
//!
//! Under `valgrind --tool=callgrind` (ITERS small) it counts instructions, which the shared machine's
//! noise does not move: the figure to compare JSON or crypto changes by.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Instant;

use hale_core::trusted::{Freshness, Storage, TrustedSet, Update};

fn newest(dir: &Path, role: &str) -> Vec<u8> {
    // the highest N.role.json, else role.json
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(v) = name
            .strip_suffix(&format!(".{role}.json"))
            .and_then(|v| v.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, p));
            }
        }
    }
    std::fs::read(best.map_or_else(|| dir.join(format!("{role}.json")), |(_, p)| p)).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).expect("usage: refresh_steps DIR [ITERS]"));
    let iters: usize = args.get(2).map_or(2000, |s| s.parse().unwrap());
    let root = newest(dir, "root");
    let ts = std::fs::read(dir.join("timestamp.json")).unwrap();
    let snap = newest(dir, "snapshot");
    let targets = newest(dir, "targets");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let names = [
        "new (root)",
        "stored timestamp",
        "same timestamp",
        "stored snapshot",
        "targets",
    ];
    let mut t = vec![Vec::with_capacity(iters); names.len()];
    for _ in 0..iters {
        let mut lap = Instant::now();
        let mut step = |i: usize| {
            t[i].push(lap.elapsed().as_secs_f64() * 1e6);
            lap = Instant::now();
        };
        let mut set = TrustedSet::new(Storage::with_capacity(64 * 1024), &root, now).unwrap();
        step(0);
        set.load_trusted_timestamp(&ts).unwrap();
        step(1);
        assert!(matches!(
            set.update_timestamp(&ts).unwrap(),
            Update::Unchanged { .. }
        ));
        step(2);
        assert_eq!(
            set.load_trusted_snapshot(&snap).unwrap(),
            Freshness::Current
        );
        step(3);
        set.update_targets(&targets).unwrap();
        step(4);
    }
    let mut total = 0.0;
    for (name, mut v) in names.iter().zip(t) {
        v.sort_by(f64::total_cmp);
        let med = v[v.len() / 2];
        total += med;
        println!("{name:<18} {med:8.1} µs");
    }
    println!(
        "{:<18} {total:8.1} µs (sum of medians, {iters} iterations)",
        "all"
    );
}
