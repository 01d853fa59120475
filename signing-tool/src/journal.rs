//! The publish journal, `DIR/publishing.json`: a redo journal. `publish` verifies the repository
//! as it would be (hale-core's client workflow over the new files laid over `repository/` in
//! memory), then makes the journal durable — every file it is about to write, with the verified
//! bytes — and only then writes them: the metadata and the snapshot as one durable batch, then the
//! timestamp that points at them. A publish killed (or failing: a full disk) in between leaves
//! the journal, and the next `publish` *finishes* it: it writes what the journal lists in the
//! same order, then removes it.
//!
//! Finished, never undone: part of the publish may have been served for a moment, and a device
//! that fetched a root (or a timestamp) then keeps it. Taking it back would leave that device on
//! a root the repository no longer has, and a different root of the same version, published
//! later, forks the fleet (a published root can never be replaced on a device). Everything the
//! journal lists was verified as a whole before the first write, so writing the rest is what
//! every device that saw a part of it expects.
//!
//! The journal is written by hale-sign but read back from the disk: it is read bounded
//! ([`MAX_JOURNAL`]), every file's bytes carry their sha256, names are metadata file names of
//! `repository/` alone, and a journal that fails any check is refused before anything is written.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable::Batch;
use crate::state::{split_versioned, version_of};

/// The journal's file name in the working directory.
pub const JOURNAL: &str = "publishing.json";

/// What a journal says it is (its `journal` field).
const FORMAT: &str = "hale-sign publish: verified files to write";

/// Largest journal written or read (1 GiB). It holds metadata only — the staged roles, `root.json`,
/// the snapshot and the timestamp; target contents are written by `target add`, never by
/// `publish` — in hex, twice their size: 65,536 hashed bins listing half a million targets fit. A
/// publish whose journal would be larger is refused before anything is written.
pub const MAX_JOURNAL: u64 = 1 << 30;

/// The journal as a file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    journal: String,
    /// Written first, as one durable batch: the new metadata, `root.json`, the snapshot.
    metadata: Vec<DocFile>,
    /// Written last, once the metadata it points at is on the disk (none: no timestamp signed).
    timestamp: Option<DocFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocFile {
    /// The name in `repository/`.
    file: String,
    /// sha256 of the bytes, in hex.
    sha256: String,
    /// The bytes, in hex.
    bytes: String,
}

/// One file to write: its name in `repository/` and its verified bytes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What [`Journal::write`] did: every file listed, and how many already held their bytes.
#[derive(Debug)]
pub struct Written {
    pub already: usize,
}

/// The files of one publish, in the order they are written.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub metadata: Vec<Entry>,
    pub timestamp: Option<Entry>,
}

/// Is `name` a file `publish` writes in `repository/`: `root.json`, `timestamp.json` or
/// `N.ROLE.json` for a role name hale-core accepts (no `/`, no `..`: never outside the
/// directory)?
fn is_metadata_name(name: &str) -> bool {
    name == "root.json"
        || name == "timestamp.json"
        || split_versioned(name)
            .is_some_and(|(_, role)| hale_core::metadata::check_role_name(role).is_ok())
}

/// The refusal of every command but `publish` while a journal is there: the repository holds part
/// of a publish (a new snapshot without the timestamp that points at it, a new root whose
/// timestamp is not written yet), and a change, a push or a bundle would build on it.
pub fn refuse_if_interrupted(dir: &Path) -> crate::error::Result<()> {
    let journal = dir.join(JOURNAL);
    if journal.exists() {
        return Err(crate::error::invalid(format!(
            "{}: a publish was interrupted ({} is there) and the repository holds part of it: \
             run `hale-sign publish {}` to finish the interrupted publish, then this again; \
             nothing done",
            dir.display(),
            journal.display(),
            dir.display()
        )));
    }
    Ok(())
}

impl Journal {
    /// The journal of a publish about to write `metadata`, then `timestamp`, in `dir`.
    pub fn new(dir: &Path, metadata: Vec<Entry>, timestamp: Option<Entry>) -> Self {
        Journal {
            path: dir.join(JOURNAL),
            metadata,
            timestamp,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every file, in the order written.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.metadata.iter().chain(&self.timestamp)
    }

    /// Make the journal durable (one atomic write: it is there whole or not at all). Refused,
    /// with nothing written, when it would be larger than [`MAX_JOURNAL`].
    pub fn save(&self) -> anyhow::Result<()> {
        let size: u64 = self
            .entries()
            .map(|e| 2 * e.bytes.len() as u64 + e.name.len() as u64 + 128)
            .sum();
        if size > MAX_JOURNAL {
            bail!(
                "the publish writes {size} bytes of journal, more than {MAX_JOURNAL} (the most a \
                 journal holds): publish fewer roles at once"
            );
        }
        let file = |e: &Entry| DocFile {
            file: e.name.clone(),
            sha256: hex::encode(Sha256::digest(&e.bytes)),
            bytes: hex::encode(&e.bytes),
        };
        let doc = Doc {
            journal: FORMAT.into(),
            metadata: self.metadata.iter().map(file).collect(),
            timestamp: self.timestamp.as_ref().map(file),
        };
        let bytes = serde_json::to_vec(&doc)?;
        crate::durable::write_one(&self.path, &bytes)?;
        Ok(())
    }

    /// The journal an interrupted publish left in `dir`, if any, checked whole: a journal that
    /// is too large, not one of hale-sign's, names a file that is not metadata of `repository/`,
    /// or holds bytes that are not the ones it recorded (their sha256) is refused, and nothing is
    /// written.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(JOURNAL);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let damaged = |why: String| {
            anyhow::anyhow!(
                "{}: damaged ({why}): refusing to finish the interrupted publish from it; nothing \
                 written, the journal kept. {} may hold part of that publish: check it against \
                 staged/, and remove the journal by hand only once the repository is as it \
                 should be",
                path.display(),
                crate::config::repository_dir(dir).display()
            )
        };
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len > MAX_JOURNAL {
            return Err(damaged(format!(
                "{len} bytes, more than {MAX_JOURNAL} (the most a journal holds)"
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_JOURNAL + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > MAX_JOURNAL {
            return Err(damaged(format!(
                "more than {MAX_JOURNAL} bytes (the most a journal holds)"
            )));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not JSON: {e}")))?;
        // the undo journal of hale-sign before 2026-11-25: what each file held before, not the
        // files to write
        if value.get("files").is_some() && value.get("journal").is_none() {
            bail!(
                "{}: an undo journal of an older hale-sign (what each file held before the \
                 publish, not what to write), which this one does not act on; nothing written. \
                 Run `hale-sign publish {}` with the hale-sign that wrote it, then publish with \
                 this one",
                path.display(),
                dir.display()
            );
        }
        let doc: Doc = serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?;
        if doc.journal != FORMAT {
            return Err(damaged(format!(
                "its `journal` is {:?}, not {FORMAT:?}",
                doc.journal
            )));
        }
        let entry = |f: DocFile, timestamp: bool| -> anyhow::Result<Entry> {
            if !is_metadata_name(&f.file) {
                return Err(damaged(format!(
                    "{:?} is not a metadata file of the repository",
                    f.file
                )));
            }
            if timestamp && f.file != "timestamp.json" {
                return Err(damaged(format!("its timestamp is {:?}", f.file)));
            }
            if !timestamp && f.file == "timestamp.json" {
                return Err(damaged(
                    "timestamp.json is listed with the metadata it points at, written before it"
                        .into(),
                ));
            }
            let bytes = hex::decode(&f.bytes)
                .map_err(|e| damaged(format!("the bytes of {} are not hex: {e}", f.file)))?;
            if hex::encode(Sha256::digest(&bytes)) != f.sha256 {
                return Err(damaged(format!(
                    "the bytes of {} are not the ones it recorded (their sha256 differs)",
                    f.file
                )));
            }
            Ok(Entry {
                name: f.file,
                bytes,
            })
        };
        let metadata = doc
            .metadata
            .into_iter()
            .map(|f| entry(f, false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let timestamp = doc.timestamp.map(|f| entry(f, true)).transpose()?;
        if metadata.is_empty() && timestamp.is_none() {
            return Err(damaged("it lists no file".into()));
        }
        Ok(Some(Journal {
            path,
            metadata,
            timestamp,
        }))
    }

    /// Refuse to finish over a repository changed since the journal was written (by hand, or by
    /// another tool: hale-sign changes nothing while it is there): a versioned file that holds
    /// other bytes (versions are immutable, and a device may hold the one there), or a
    /// `root.json` or `timestamp.json` newer than the one to write (writing it would be a
    /// rollback devices refuse).
    pub fn check_repository(&self, repo: &Path) -> anyhow::Result<()> {
        for e in self.entries() {
            let p = repo.join(&e.name);
            let Ok(there) = std::fs::read(&p) else {
                continue;
            };
            if there == e.bytes {
                continue;
            }
            let changed = if split_versioned(&e.name).is_some() {
                Some(
                    "holds other bytes than the interrupted publish verified for it (versions are \
                      immutable)"
                        .to_string(),
                )
            } else {
                match (version_of(&there), version_of(&e.bytes)) {
                    (Some(now), Some(to_write)) if now > to_write => Some(format!(
                        "holds version {now}, newer than the version {to_write} the interrupted \
                         publish verified for it"
                    )),
                    _ => None,
                }
            };
            if let Some(why) = changed {
                bail!(
                    "refusing to finish the interrupted publish of {}: {} {why}: it was changed \
                     since, by hand or by another tool. Nothing written, {} kept: find out which \
                     of the two devices may hold before anything else is published",
                    self.path.parent().unwrap_or(repo).display(),
                    p.display(),
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Write every file into `repo`: the metadata as one durable batch, `between()`, then the
    /// timestamp. A file that already holds its bytes (written before a kill) is left as it is.
    pub fn write(&self, repo: &Path, between: impl FnOnce()) -> anyhow::Result<Written> {
        let mut already = 0;
        let mut batch_of = |entries: &[Entry]| -> anyhow::Result<()> {
            let mut batch = Batch::new();
            for e in entries {
                let p = repo.join(&e.name);
                if std::fs::read(&p).is_ok_and(|there| there == e.bytes) {
                    already += 1;
                    continue;
                }
                batch.add(&p, &e.bytes)?;
            }
            batch.commit()?;
            Ok(())
        };
        batch_of(&self.metadata)?;
        between();
        batch_of(self.timestamp.as_slice())?;
        Ok(Written { already })
    }

    /// Remove the journal once every file it lists is written, durably (the directory is
    /// flushed: a journal that came back after a power cut would only be finished again, writing
    /// nothing, but is not left to do so).
    pub fn remove(&self) -> anyhow::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let removed = match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        };
        removed.map_err(|e| {
            anyhow::anyhow!(
                "{}: every file of the publish is written, but removing {} failed: {e}; run \
                 `hale-sign publish {}` to remove it (it writes nothing again)",
                dir.display(),
                self.path.display(),
                dir.display()
            )
        })
    }

    /// The roles and versions written, as a device sees them (`targets v2, snapshot v2,
    /// timestamp v2`; `root.json`, the copy of the newest root, is not named again), or the
    /// number of files when there are many.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .entries()
            .filter_map(|e| match split_versioned(&e.name) {
                Some((v, role)) => Some(format!("{role} v{v}")),
                None if e.name == "timestamp.json" => Some(match version_of(&e.bytes) {
                    Some(v) => format!("timestamp v{v}"),
                    None => "timestamp".into(),
                }),
                None => None,
            })
            .collect();
        if names.len() > 8 {
            format!("{} files", self.entries().count())
        } else {
            names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A publish whose journal would be larger than [`MAX_JOURNAL`] is refused before anything
    /// is written, counting every file it lists, the timestamp too (each file's bytes twice, in
    /// hex, its name and 128 bytes for the rest of its entry). The bytes are never read: the
    /// large one is a zeroed allocation the test never touches.
    #[test]
    fn a_journal_larger_than_the_most_a_journal_holds_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |name: &str, len: usize| Entry {
            name: name.into(),
            bytes: vec![0; len],
        };
        let small = entry("2.targets.json", 1000);
        let small_size = 2 * 1000 + "2.targets.json".len() as u64 + 128;
        // the timestamp's share that takes the journal one byte past the cap
        let over = MAX_JOURNAL + 1 - small_size - "timestamp.json".len() as u64 - 128;
        let journal = Journal::new(
            dir.path(),
            vec![small.clone()],
            Some(entry("timestamp.json", over.div_ceil(2) as usize)),
        );
        let size = small_size + 2 * over.div_ceil(2) + "timestamp.json".len() as u64 + 128;
        assert!(size > MAX_JOURNAL && size <= MAX_JOURNAL + 2);
        assert_eq!(
            journal.save().unwrap_err().to_string(),
            format!(
                "the publish writes {size} bytes of journal, more than 1073741824 (the most a \
                 journal holds): publish fewer roles at once"
            )
        );
        assert!(!dir.path().join(JOURNAL).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // the same files without the large one: written, and read back as they were
        let journal = Journal::new(dir.path(), vec![small], None);
        journal.save().unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.metadata.len(), 1);
        assert_eq!(back.metadata[0].name, "2.targets.json");
        assert_eq!(back.metadata[0].bytes, vec![0; 1000]);
        assert!(back.timestamp.is_none());
    }
}
