//! Writes the QEMU firmware's fixtures:
//! `cargo run -p device-agent --example qemu_fixtures -- device-agent/firmware-qemu/fixtures`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

#[path = "../tests/common/qemu_fixtures.rs"]
mod qemu_fixtures;
use qemu_fixtures::fixtures;

fn main() {
    let out: PathBuf = std::env::args().nth(1).map_or_else(
        || Path::new("device-agent/firmware-qemu/fixtures").into(),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out).unwrap();
    for (name, bytes) in fixtures() {
        std::fs::write(out.join(&name), bytes).unwrap();
        println!("wrote {}", out.join(&name).display());
    }
}
