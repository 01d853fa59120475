//! Interop with rust-tuf 0.3.0-beta14, an example of an older client a repository may have to stay
//! readable by: ed25519 only, `spec_version` "1.0"/"1.0.0" only, and it computes key ids itself.
//! Hale writes such repositories with the `compat` profile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use futures_util::io::AsyncReadExt;
use hale_repo::build::Profile;
use hale_repo::keys::KeyKind;
use hale_tests::peers::now;
use hale_tests::*;
use tuf::client::{Client as TufClient, Config};
use tuf::metadata::{RawSignedMetadata, RootMetadata, TargetPath};
use tuf::pouf::Pouf1;
use tuf::repository::{EphemeralRepository, FileSystemRepository};

/// rust-tuf's FileSystemRepository reads `<dir>/metadata/…` and `<dir>/targets/…`.
fn write_for_rust_tuf(r: &RepoSim, dir: &Path) {
    for (name, bytes) in &r.files {
        let p = if name.starts_with("targets/") {
            dir.join(name)
        } else {
            dir.join("metadata").join(name)
        };
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn fetch(root: &[u8], dir: &Path, target: &str) -> tuf::Result<Vec<u8>> {
    futures_executor::block_on(async {
        let root = RawSignedMetadata::<Pouf1, RootMetadata>::new(root.to_vec());
        let remote = FileSystemRepository::<Pouf1>::new(dir);
        let local = EphemeralRepository::<Pouf1>::new();
        let mut client =
            TufClient::with_trusted_root(Config::default(), &root, local, remote).await?;
        client.update().await?;
        let mut reader = client.fetch_target(&TargetPath::new(target)?).await?;
        let mut buf = Vec::new();
        reader.read_to_end(&mut buf).await?;
        Ok(buf)
    })
}

fn compat_repo() -> RepoSim {
    let mut r = RepoSim::with_profile(Profile::Compat);
    let shift = now() - NOW;
    for st in [
        &mut r.root,
        &mut r.timestamp,
        &mut r.snapshot,
        &mut r.targets,
    ] {
        st.expires += shift;
    }
    r.write_root();
    let custom = serde_json::json!({"hardware": [{"model": "pump-a", "revisions": ["r1", "r2"]}], "version": "2.0.0", "security_counter": 1});
    r.add_target(
        "targets",
        "pump-a/fw-2.0.0.bin",
        b"pump firmware 2.0.0",
        Some(custom),
    );
    r.add_target("targets", "monitor.bin", b"monitor firmware", None);
    r.publish();
    r
}

#[test]
fn rust_tuf_updates_from_a_compat_profile_repository() {
    let r = compat_repo();
    let dir = tempfile::tempdir().unwrap();
    write_for_rust_tuf(&r, dir.path());
    for t in ["pump-a/fw-2.0.0.bin", "monitor.bin"] {
        assert_eq!(
            fetch(&r.initial_root(), dir.path(), t).unwrap(),
            r.contents[t],
            "{t}"
        );
    }
}

#[test]
fn rust_tuf_follows_compat_root_rotations() {
    let mut r = compat_repo();
    r.rotate_root(|r| r.timestamp.keys = vec![key("timestamp-2", KeyKind::Ed25519)]);
    r.publish();
    r.rotate_root(|r| r.root.keys.push(key("root-2", KeyKind::Ed25519)));
    r.publish();
    let dir = tempfile::tempdir().unwrap();
    write_for_rust_tuf(&r, dir.path());
    assert_eq!(
        fetch(&r.initial_root(), dir.path(), "monitor.bin").unwrap(),
        b"monitor firmware"
    );
}

#[test]
fn rust_tuf_rejects_a_tampered_compat_repository() {
    let mut r = compat_repo();
    let name = r.target_file_name("monitor.bin");
    r.files.get_mut(&name).unwrap()[0] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    write_for_rust_tuf(&r, dir.path());
    let err = fetch(&r.initial_root(), dir.path(), "monitor.bin").unwrap_err();
    // the metadata verified; the image's hash is what fails
    assert!(
        matches!(&err, tuf::Error::Io(e)
            if e.kind() == std::io::ErrorKind::InvalidData
                && e.to_string() == "Calculated hash did not match the required hash."),
        "{err:?}"
    );
}

#[test]
fn the_standard_profile_is_not_readable_by_rust_tuf_which_is_why_compat_exists() {
    // python-tuf-era spec_version (and ECDSA keys): rust-tuf refuses the root itself
    let mut r = RepoSim::new();
    let shift = now() - NOW;
    r.root.expires += shift;
    r.write_root();
    let dir = tempfile::tempdir().unwrap();
    write_for_rust_tuf(&r, dir.path());
    // refused as it is parsed, before anything is fetched: its spec_version
    let err = trust_root(&r.initial_root(), dir.path()).unwrap_err();
    assert!(
        matches!(&err, tuf::Error::Json(e)
            if e.to_string() == r#"Encoding("Unknown spec version 1.0.34")"#),
        "{err:?}"
    );
    // the same client takes the compat profile's root
    trust_root(&compat_repo().initial_root(), dir.path()).unwrap();
}

/// rust-tuf's client built on `root` as its trusted root: nothing fetched yet.
fn trust_root(root: &[u8], dir: &Path) -> tuf::Result<()> {
    futures_executor::block_on(async {
        let root = RawSignedMetadata::<Pouf1, RootMetadata>::new(root.to_vec());
        let remote = FileSystemRepository::<Pouf1>::new(dir);
        let local = EphemeralRepository::<Pouf1>::new();
        TufClient::with_trusted_root(Config::default(), &root, local, remote).await?;
        Ok(())
    })
}

#[test]
fn hale_core_reads_the_compat_profile_too() {
    let r = compat_repo();
    let mut c = Client::new(r.initial_root());
    assert_eq!(
        c.download(&r.files, "monitor.bin", now()).unwrap(),
        b"monitor firmware"
    );
}
