use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let _ = std::fs::write(out.join("memory.x"), include_bytes!("memory.x"));
    // cortex-m-rt's `device` feature includes device.x (interrupt handler names): none here
    let _ = std::fs::write(out.join("device.x"), b"/* no device interrupts */\n");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=fixtures");
}
