//! The simulated pump's bundle store for the technician link (`std`): a [`BundleSink`] backed by
//! two files in the state directory, durable across a killed process like a flash partition is
//! across a reset.
//!
//! ```text
//! DIR/bundle.part       the bundle's bytes; only the first `offset` of them count
//! DIR/bundle.progress   "hale-link-progress 1 <40-hex bundle id> <offset>\n", replaced atomically
//! DIR/bundle.begun      "hale-link-begun 1 <ms>\n": the receiver's clock at the last begin,
//!                       replaced atomically, kept through a reset (the restart bound outlives
//!                       the session: `BundleSink::last_begin_ms`)
//! ```
//!
//! What makes resuming safe (the [`BundleSink`] contract): `write_at` writes the block and
//! `fsync`s the data **before** it replaces the progress record (write a temporary file, `fsync`,
//! rename, `fsync` the directory), and the receiver acknowledges the offset only after `write_at`
//! returns. A kill or power cut at any point leaves the old or the new progress record, never an
//! offset covering bytes that are not on disk. `begin` records the new id at offset 0 before it
//! truncates the data; `reset` removes the record before the data.
//!
//! The store holds untrusted bytes: the progress record is read with a bound and anything that
//! does not parse, or claims more bytes than the data file holds, counts as "nothing stored". The
//! capacity bounds the bundle (the receiver refuses larger ones before writing a byte, and
//! `write_at` refuses to grow the file past it).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hale_link::{BundleId, BundleSink};

const DATA: &str = "bundle.part";
const PROGRESS: &str = "bundle.progress";
const PROGRESS_TMP: &str = "bundle.progress.tmp";
const MAGIC: &str = "hale-link-progress 1";
/// Longest progress record read (the real one is about 70 bytes).
const MAX_PROGRESS: u64 = 128;
const BEGUN: &str = "bundle.begun";
const BEGUN_TMP: &str = "bundle.begun.tmp";
const BEGUN_MAGIC: &str = "hale-link-begun 1";

/// A file operation that failed, and on which file.
#[derive(Debug)]
pub struct LinkStoreError {
    pub op: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl core::fmt::Display for LinkStoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.error)
    }
}

impl std::error::Error for LinkStoreError {}

/// Where the bundle is stored and what it holds.
#[derive(Debug)]
pub struct LinkStore {
    dir: PathBuf,
    capacity: u32,
    /// The persisted progress, cached (the files are the truth at `open`).
    progress: Option<(BundleId, u32)>,
}

fn err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> LinkStoreError + 'p {
    move |error| LinkStoreError {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// Parse a progress record; `None` for anything but exactly the format above.
fn parse_progress(text: &str) -> Option<(BundleId, u32)> {
    let rest = text.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let rest = rest.strip_suffix('\n')?;
    let (id, offset) = rest.split_once(' ')?;
    let id = BundleId::from_wire(id.as_bytes())?;
    if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let offset: u32 = offset.parse().ok()?;
    (offset <= id.bundle_len()).then_some((id, offset))
}

/// Parse a begin record; `None` for anything but exactly the format above.
fn parse_begun(text: &str) -> Option<u64> {
    let ms = text
        .strip_prefix(BEGUN_MAGIC)?
        .strip_prefix(' ')?
        .strip_suffix('\n')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

/// At most `max` bytes of `path`: `None` when it does not exist or is longer.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, LinkStoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(err("read", path))?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

impl LinkStore {
    /// Open (creating `dir` if needed) the store in `dir`, holding at most `capacity` bytes.
    /// Whatever progress the files record is resumed if it is consistent, discarded otherwise.
    pub fn open(dir: &Path, capacity: u32) -> Result<Self, LinkStoreError> {
        std::fs::create_dir_all(dir).map_err(err("create", dir))?;
        let mut store = LinkStore {
            dir: dir.to_path_buf(),
            capacity,
            progress: None,
        };
        store.progress = store.load()?;
        if store.progress.is_none() {
            // a stale or torn record (or none): start from nothing
            store.clear()?;
        }
        Ok(store)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn load(&self) -> Result<Option<(BundleId, u32)>, LinkStoreError> {
        let Some(bytes) = read_bounded(&self.path(PROGRESS), MAX_PROGRESS)? else {
            return Ok(None);
        };
        let Some((id, offset)) = std::str::from_utf8(&bytes).ok().and_then(parse_progress) else {
            return Ok(None);
        };
        if id.bundle_len() > self.capacity {
            return Ok(None);
        }
        let d = self.path(DATA);
        let held = match std::fs::metadata(&d) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err("stat", &d)(e)),
        };
        Ok((held >= u64::from(offset)).then_some((id, offset)))
    }

    /// Replace file `name` with `text` atomically (through `tmp`); durable once the directory
    /// is synced.
    fn replace(&self, name: &str, tmp: &str, text: &str) -> Result<(), LinkStoreError> {
        let (p, tmp) = (self.path(name), self.path(tmp));
        let mut f = File::create(&tmp).map_err(err("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &p).map_err(err("rename", &p))
    }

    /// Replace the progress record atomically and durably.
    fn record(&mut self, progress: Option<(BundleId, u32)>) -> Result<(), LinkStoreError> {
        let p = self.path(PROGRESS);
        match progress {
            Some((id, offset)) => {
                self.replace(PROGRESS, PROGRESS_TMP, &format!("{MAGIC} {id} {offset}\n"))?;
            }
            None => match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err("remove", &p)(e)),
            },
        }
        self.sync_dir()?;
        self.progress = progress;
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), LinkStoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync", &self.dir))
    }

    fn truncate_data(&self) -> Result<(), LinkStoreError> {
        let d = self.path(DATA);
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&d)
            .map_err(err("truncate", &d))?;
        f.sync_all().map_err(err("fsync", &d))
    }

    fn clear(&mut self) -> Result<(), LinkStoreError> {
        self.record(None)?;
        self.truncate_data()
    }

    /// The transfer the store holds: its id and how many bytes are durable.
    pub fn progress(&self) -> Option<(BundleId, u32)> {
        self.progress
    }

    /// The whole bundle, once `progress()` says every byte is stored (`None` before). The
    /// allocation is bounded by the capacity the store was opened with.
    pub fn read_complete(&mut self) -> Result<Option<Vec<u8>>, LinkStoreError> {
        let Some((id, offset)) = self.progress else {
            return Ok(None);
        };
        if offset != id.bundle_len() || id.bundle_len() > self.capacity {
            return Ok(None);
        }
        let mut out = vec![0u8; offset as usize];
        self.read_at(0, &mut out)?;
        Ok(Some(out))
    }
}

impl BundleSink for LinkStore {
    type Error = LinkStoreError;

    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn persisted_id(&mut self) -> Result<Option<BundleId>, LinkStoreError> {
        Ok(self.progress.map(|(id, _)| id))
    }

    fn persisted_offset(&mut self) -> Result<u32, LinkStoreError> {
        Ok(self.progress.map_or(0, |(_, o)| o))
    }

    fn begin(&mut self, id: &BundleId, at_ms: u64) -> Result<(), LinkStoreError> {
        // the time first: a cut after it leaves the old transfer and a later last begin, which
        // only waits longer
        self.replace(BEGUN, BEGUN_TMP, &format!("{BEGUN_MAGIC} {at_ms}\n"))?;
        // the new id at 0 next (its directory sync covers both): a cut before the truncation
        // leaves an offset of 0
        self.record(Some((*id, 0)))?;
        self.truncate_data()
    }

    /// Kept in its own file, which a reset leaves: a bad swap discards the bundle, not the time.
    /// A record that does not parse counts as none.
    fn last_begin_ms(&mut self) -> Result<Option<u64>, LinkStoreError> {
        let bytes = read_bounded(&self.path(BEGUN), MAX_PROGRESS)?;
        Ok(bytes
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(parse_begun))
    }

    fn write_at(&mut self, offset: u32, data: &[u8]) -> Result<(), LinkStoreError> {
        let d = self.path(DATA);
        let too_far = || LinkStoreError {
            op: "write",
            path: d.clone(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "block out of order or past the bundle's end",
            ),
        };
        let (id, held) = self.progress.ok_or_else(too_far)?;
        let end = u32::try_from(data.len())
            .ok()
            .and_then(|n| offset.checked_add(n))
            .filter(|end| offset == held && *end <= id.bundle_len() && *end <= self.capacity)
            .ok_or_else(too_far)?;
        let mut f = OpenOptions::new()
            .write(true)
            .open(&d)
            .map_err(err("open", &d))?;
        f.seek(SeekFrom::Start(u64::from(offset)))
            .map_err(err("seek", &d))?;
        f.write_all(data).map_err(err("write", &d))?;
        // the bytes are durable before any record says they are there
        f.sync_data().map_err(err("fsync", &d))?;
        drop(f);
        self.record(Some((id, end)))
    }

    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), LinkStoreError> {
        let d = self.path(DATA);
        let mut f = File::open(&d).map_err(err("open", &d))?;
        f.seek(SeekFrom::Start(u64::from(offset)))
            .map_err(err("seek", &d))?;
        f.read_exact(buf).map_err(err("read", &d))
    }

    fn reset(&mut self) -> Result<(), LinkStoreError> {
        self.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_reopening_and_only_covers_written_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = [7u8; 100];
        let id = BundleId::of(&bundle).unwrap();
        let mut s = LinkStore::open(tmp.path(), 1000).unwrap();
        assert_eq!(s.progress(), None);
        s.begin(&id, 1_000).unwrap();
        s.write_at(0, &bundle[..40]).unwrap();
        // out of order and past the end are refused, and change nothing
        assert!(s.write_at(50, &bundle[..10]).is_err());
        assert!(s.write_at(40, &[0u8; 61]).is_err());
        drop(s);
        let mut s = LinkStore::open(tmp.path(), 1000).unwrap();
        assert_eq!(s.progress(), Some((id, 40)));
        assert_eq!(s.read_complete().unwrap(), None);
        s.write_at(40, &bundle[40..]).unwrap();
        assert_eq!(s.read_complete().unwrap(), Some(bundle.to_vec()));
        s.reset().unwrap();
        assert_eq!(LinkStore::open(tmp.path(), 1000).unwrap().progress(), None);
    }

    #[test]
    fn the_last_begin_survives_reopening_and_a_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let id = BundleId::of(&[7u8; 100]).unwrap();
        let mut s = LinkStore::open(tmp.path(), 1000).unwrap();
        assert_eq!(s.last_begin_ms().unwrap(), None);
        s.begin(&id, 1_700_000_000_123).unwrap();
        s.reset().unwrap();
        let mut s = LinkStore::open(tmp.path(), 1000).unwrap();
        assert_eq!(s.progress(), None);
        assert_eq!(s.last_begin_ms().unwrap(), Some(1_700_000_000_123));
        s.begin(&id, 1_700_000_031_000).unwrap();
        let mut s = LinkStore::open(tmp.path(), 1000).unwrap();
        assert_eq!(
            (s.progress(), s.last_begin_ms().unwrap()),
            (Some((id, 0)), Some(1_700_000_031_000))
        );
        // a record that does not parse is none
        for bad in [
            format!("{BEGUN_MAGIC} 12"),
            format!("{BEGUN_MAGIC} -1\n"),
            format!("{BEGUN_MAGIC} 99999999999999999999999\n"),
            "hale-link-begun 2 12\n".to_string(),
            "x".repeat(4096),
        ] {
            std::fs::write(tmp.path().join(BEGUN), &bad).unwrap();
            assert_eq!(s.last_begin_ms().unwrap(), None, "{bad:?}");
        }
    }

    #[test]
    fn inconsistent_or_oversize_progress_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let id = BundleId::of(&[1u8; 100]).unwrap();
        let write = |text: &str| std::fs::write(tmp.path().join(PROGRESS), text).unwrap();
        // claims 60 bytes, the data file holds none
        write(&format!("{MAGIC} {id} 60\n"));
        assert_eq!(LinkStore::open(tmp.path(), 1000).unwrap().progress(), None);
        // larger than this store's capacity
        write(&format!("{MAGIC} {id} 0\n"));
        assert_eq!(LinkStore::open(tmp.path(), 99).unwrap().progress(), None);
        for bad in [
            format!("{MAGIC} {id} 101\n"),
            format!("{MAGIC} {id} +1\n"),
            format!("{MAGIC} {id} 0"),
            "x".repeat(4096),
        ] {
            write(&bad);
            assert_eq!(
                LinkStore::open(tmp.path(), 1000).unwrap().progress(),
                None,
                "{bad:?}"
            );
            assert!(!tmp.path().join(PROGRESS).exists());
        }
        write(&format!("{MAGIC} {id} 0\n"));
        assert_eq!(
            LinkStore::open(tmp.path(), 1000).unwrap().progress(),
            Some((id, 0))
        );
    }
}
