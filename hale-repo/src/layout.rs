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

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let io = |e| RepoError::Io(path.display().to_string(), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
