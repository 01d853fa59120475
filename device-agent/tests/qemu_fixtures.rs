//! The committed QEMU fixtures are exactly what the generator makes (regenerate with
//! `cargo run -p device-agent --example qemu_fixtures -- device-agent/firmware-qemu/fixtures`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "common/qemu_fixtures.rs"]
mod qemu_fixtures;

#[test]
fn committed_qemu_fixtures_match_the_generator() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-qemu/fixtures");
    for (name, bytes) in qemu_fixtures::fixtures() {
        let have = std::fs::read(dir.join(&name)).unwrap_or_default();
        assert!(
            have == bytes,
            "firmware-qemu/fixtures/{name} is stale: regenerate it"
        );
    }
}
