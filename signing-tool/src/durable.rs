//! Crash-safe writes of many files at once.
//!
//! Each file goes to a temporary name in its directory; then all temporary files are flushed to
//! disk — in parallel, so the filesystem's journal commits many of them together (~10x faster
//! than one `fsync` after another for hundreds of hashed-bin roles) — renamed over their final
//! names, and every touched directory is flushed. A crash leaves the old file or the new one,
//! never half of one.
//!
//! Target *contents* use [`Batch::contents`]: written and renamed the same way (never half a file
//! under its name) but not flushed one by one — thousands of `fsync`s would dominate a big
//! catalog, and python-tuf, tough and rust-tuf do not flush them either. Content is
//! content-addressed and re-derivable from the release build: after a crash, `hale-sign verify`
//! finds any lost file and `target add` of the same file restores it. Signed metadata is always
//! flushed before it is renamed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, ToolError};

/// Parallel flushes in flight.
const FSYNC_WORKERS: usize = 32;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Wall time spent flushing files and directories to disk, in nanoseconds (for `--timings`).
static FLUSH_NANOS: AtomicU64 = AtomicU64::new(0);

/// Wall time this process has spent waiting for [`Batch::commit`]'s flushes.
pub fn flush_time() -> Duration {
    Duration::from_nanos(FLUSH_NANOS.load(Ordering::Relaxed))
}

fn count_flush(since: Instant) {
    let n = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    FLUSH_NANOS.fetch_add(n, Ordering::Relaxed);
}

/// Files written to temporary names, waiting for [`Batch::commit`]. Dropping an uncommitted batch
/// removes its temporary files.
#[derive(Debug, Default)]
pub struct Batch {
    pending: Vec<(PathBuf, PathBuf)>,
    /// Directories already created by this batch.
    made: BTreeSet<PathBuf>,
    /// Leave flushing to the operating system (target contents).
    unflushed: bool,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// A batch for target contents: atomic renames, no per-file flush (see the module docs).
    pub fn contents() -> Self {
        Batch {
            pending: Vec::new(),
            made: BTreeSet::new(),
            unflushed: true,
        }
    }

    /// Write `bytes` to a temporary file next to `path` (created as `0666` less the umask).
    pub fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.add_mode(path, bytes, 0o666)
    }

    /// [`add`](Self::add) for a private key file: readable and writable by its owner only
    /// (`0600`) from the moment it exists, so no other user can copy it to guess its passphrase
    /// offline. The rename keeps the mode.
    pub fn add_secret(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.add_mode(path, bytes, 0o600)
    }

    fn add_mode(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        let tmp = temp_name(path, &mut self.made)?;
        let io = |e| ToolError::io(&tmp, e);
        let mut f = hale_repo::layout::create_new_with_mode(&tmp, mode).map_err(io)?;
        self.pending.push((tmp.clone(), path.to_path_buf()));
        f.write_all(bytes).map_err(io)?;
        Ok(())
    }

    /// Flush every temporary file, rename each over its final name, flush the directories.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let pending = std::mem::take(&mut self.pending);
        if self.unflushed {
            return finish(pending, true);
        }
        let flush_start = Instant::now();
        let next = AtomicUsize::new(0);
        let failure: std::sync::Mutex<Option<ToolError>> = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..FSYNC_WORKERS.min(pending.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((tmp, _)) = pending.get(i) else {
                        break;
                    };
                    let r = fs::File::open(tmp).and_then(|f| f.sync_all());
                    if let Err(e) = r {
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(ToolError::io(tmp, e));
                        }
                        break;
                    }
                });
            }
        });
        count_flush(flush_start);
        let failed = failure.lock().ok().and_then(|mut f| f.take());
        if let Some(e) = failed {
            for (tmp, _) in &pending {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        finish(pending, false)
    }
}

/// Rename every temporary file over its final name, then flush the directories.
fn finish(pending: Vec<(PathBuf, PathBuf)>, unflushed: bool) -> Result<Vec<PathBuf>> {
    {
        let mut dirs = BTreeSet::new();
        let mut done = Vec::with_capacity(pending.len());
        let mut iter = pending.into_iter();
        while let Some((tmp, path)) = iter.next() {
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                for (t, _) in iter {
                    let _ = fs::remove_file(t);
                }
                return Err(ToolError::io(&path, e));
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
            done.push(path);
        }
        if !unflushed {
            let flush_start = Instant::now();
            for d in dirs {
                if let Ok(f) = fs::File::open(&d) {
                    let _ = f.sync_all();
                }
            }
            count_flush(flush_start);
        }
        Ok(done)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn temp_name(path: &Path, made: &mut BTreeSet<PathBuf>) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !made.contains(&dir) {
        fs::create_dir_all(&dir).map_err(|e| ToolError::io(&dir, e))?;
        made.insert(dir.clone());
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!(".{name}.tmp{}.{n}", std::process::id())))
}

/// Refuse to write over `path` unless `force` (an output file named by the user may hold
/// something they cannot get back: a key, a co-signed authorization).
pub fn refuse_existing(path: &Path, force: bool) -> Result<()> {
    if !force && path.exists() {
        return Err(ToolError::Invalid(format!(
            "{}: exists (use --force to overwrite)",
            path.display()
        )));
    }
    Ok(())
}

/// Write one new file crash-safely, refused with [`refuse_existing`]'s error when `path` exists
/// at the moment it is made, not only when it was checked: the bytes are written and flushed
/// under a temporary name, then hard-linked to `path`, which fails if `path` exists (another
/// command wrote it meanwhile). No window between a check and a write.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut made = BTreeSet::new();
    let tmp = temp_name(path, &mut made)?;
    let written = hale_repo::layout::create_new_with_mode(&tmp, 0o666)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    let linked = written.map_err(|e| ToolError::io(&tmp, e)).and_then(|()| {
        fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ToolError::Invalid(format!(
                "{}: exists (use --force to overwrite)",
                path.display()
            )),
            _ => ToolError::io(path, e),
        })
    });
    let _ = fs::remove_file(&tmp);
    linked?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ToolError::io(dir, e))?;
    }
    Ok(())
}

/// Write one file crash-safely.
pub fn write_one(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut b = Batch::new();
    b.add(path, bytes)?;
    b.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The files of `dir` by name, with their bytes.
    fn files(dir: &Path) -> BTreeSet<(String, Vec<u8>)> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// A new file is written whole; over a file that exists (written by another command after
    /// this one checked) it is refused with refuse_existing's error, the file there is kept byte
    /// for byte and no temporary file is left.
    #[test]
    fn write_new_writes_a_new_file_and_never_one_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("auth.json");
        write_new(&out, b"ours").unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"ours");
        let before = files(dir.path());
        let err = write_new(&out, b"theirs").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: exists (use --force to overwrite)", out.display())
        );
        assert_eq!(files(dir.path()), before);
    }
}
