//! Writes a small signed repository (RepoSim, hale-repo) for client benchmarks: metadata at the
//! top, targets under `targets/`, one 64 KiB firmware image at `pump-a/firmware.bin`.
//! `cargo run -p device-agent --example bench_repo -- DIR`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::json;

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "bench-repo".into()),
    );
    let mut sim = hale_tests::RepoSim::new();
    // expiry relative to the real clock, so python-tuf (which reads it) accepts the repository
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (st, days) in [
        (&mut sim.root, 365),
        (&mut sim.timestamp, 1),
        (&mut sim.snapshot, 7),
        (&mut sim.targets, 90),
    ] {
        st.expires = now + days * 86_400;
    }
    sim.write_root();
    let image: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let custom = json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}], "version": "2.0.0", "security_counter": 1});
    sim.add_target("targets", "pump-a/firmware.bin", &image, Some(custom));
    sim.publish();
    sim.write_to(&dir);
    println!("{}", dir.display());
}
