//! The repository on disk, in the layout any static web server can serve (consistent snapshots):
//!
//! ```text
//! root.json  1.root.json  2.root.json …     every root version, kept forever
//! timestamp.json                             never versioned
//! N.snapshot.json  N.targets.json  N.<role>.json
//! targets/<dir>/<sha256>.<basename>           python-tuf's and rust-tuf's consistent-target names
//! ```
//!
//! Files are written atomically (temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves the old file or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::RepoError;

/// Would a case-insensitive file system keep files named `a` and `b` (two different names) as
/// one? ASCII case, and Unicode case both ways: NTFS compares names upper-cased (`ſ`, U+017F,
/// is `S`), APFS folds them (`K`, U+212A KELVIN SIGN, is `k`). Role names become file names
/// (`N.role.json`) in a signer's staged directory and in an export.
pub fn same_file_name(a: &str, b: &str) -> bool {
    a != b && (a.to_lowercase() == b.to_lowercase() || a.to_uppercase() == b.to_uppercase())
}

/// `N.role.json`, or `role.json` for timestamp (and without consistent snapshots).
pub fn metadata_name(role: &str, version: u64, consistent: bool) -> String {
    if role == "timestamp" || !consistent {
        format!("{role}.json")
    } else {
        format!("{version}.{role}.json")
    }
}

/// `targets/<dir>/<sha256>.<basename>` (or `targets/<path>` without consistent snapshots).
pub fn target_path(target: &str, sha256_hex: &str, consistent: bool) -> Result<String, RepoError> {
    hale_core::metadata::check_target_path(target)?;
    if !consistent {
        return Ok(format!("targets/{target}"));
    }
    Ok(match target.rsplit_once('/') {
        Some((dir, base)) => format!("targets/{dir}/{sha256_hex}.{base}"),
        None => format!("targets/{sha256_hex}.{target}"),
    })
}

/// Write `bytes` to `path` atomically (a new file gets `0666` less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    write_with_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a key or passphrase file: readable and writable by its owner only
/// (`0600`) from the moment the file exists, not after a window as the umask left it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    write_with_mode(path, bytes, 0o600)
}

/// Create `path` for writing with permission bits `mode` (less the umask; ignored off Unix). A
/// file already there (a temporary file a crashed run left under the same name) is removed
/// first: opening an existing file would keep its mode, perhaps readable by all.
pub fn create_new_with_mode(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RepoError> {
    let io = |e| RepoError::Io(path.display().to_string(), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = create_new_with_mode(&tmp, mode).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_private_file_is_its_owners_alone_even_over_a_readable_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("online.key");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        // a stale temporary file of this process, readable by all, is not reused
        let stale = tmp
            .path()
            .join(format!(".online.key.tmp{}", std::process::id()));
        fs::write(&stale, b"stale").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"sealed").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"sealed");
        assert_eq!(mode(&p), 0o600);
        assert!(!stale.exists());
    }
}

#[cfg(test)]
mod case_tests {
    use super::same_file_name;

    #[test]
    fn names_a_case_insensitive_file_system_keeps_as_one() {
        for (a, b) in [
            ("Snapshot", "snapshot"),
            ("\u{17f}napshot", "snapshot"),
            ("pump-\u{212a}", "pump-k"),
            ("ÉCLAIR", "éclair"),
        ] {
            assert!(same_file_name(a, b), "{a} {b}");
        }
        for (a, b) in [("snapshot", "snapshot"), ("pump-a", "pump-b"), ("é", "e")] {
            assert!(!same_file_name(a, b), "{a} {b}");
        }
    }
}
