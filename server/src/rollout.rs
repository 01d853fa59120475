//! Staged rollouts: an image reaches a share of the fleet first.
//!
//! A rollout is keyed by the sha256 of one target's content and holds a percentage. A device
//! belongs to it when its bucket, taken from the sha256 of the image and its device id (0 to 99,
//! stable: a device admitted stays admitted as the share grows), is below the percentage. The
//! gate is on the image download: every device still sees the signed metadata (TUF decides
//! nothing here, and no check is weakened), and a device outside the share gets
//! `403 rollout_pending` for the image, which the pump reports as a deferral and asks again at
//! its next poll. Who may download: a device (mTLS) by its bucket; staff always; a request
//! without a device identity (the plain listener) only once the share is 100 %.
//!
//! A rollout can be set before the release is published (the image starts at 0 % or a few
//! percent and is never offered to the whole fleet at once), raised, lowered to hold it (devices
//! that installed keep their image; withdrawing it takes a new release), and ended (the gate is
//! gone: everyone). Each change is an audit record (`rollout`, `rollout-end`): a change whose
//! record cannot be written is undone and refused, and one that a crash left without its record
//! is recorded at the next start ([`Rollouts::reconcile`]).

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::path::{Path, PathBuf};

/// One rollout, as stored and as the staff API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// sha256 (lower-case hex) of the image it gates
    pub sha256: String,
    /// the share of devices admitted, 0 to 100
    pub percent: u8,
    /// the target path, as the operator named it (for people; the gate goes by the hash)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// who set it last, and when (unix seconds)
    pub by: String,
    pub updated_at: i64,
}

/// Who asks for an image.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// a device on the device listener, by its id (the certificate's)
    Device(&'a str),
    /// a technician or operator on the staff listener
    Staff,
    /// no identity (the plain listener)
    Anonymous,
}

/// A device's place in the rollout of `sha256`: 0 to 99.
pub fn bucket(sha256: &str, device: &str) -> u8 {
    let h = Sha256::digest(format!("hale-rollout\0{sha256}\0{device}").as_bytes());
    (u16::from_be_bytes([h[0], h[1]]) % 100) as u8
}

/// Why a rollout change is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("sha256 {0:?}: 64 lower-case hex digits of the image's sha256")]
    BadHash(String),
    #[error("percent {0}: 0 to 100")]
    BadPercent(u64),
    #[error("target {0:?}: a target path of at most 256 bytes")]
    BadTarget(String),
    #[error("no rollout for {0}")]
    Unknown(String),
    #[error("{0}")]
    Store(String),
    #[error("the change is not made: its audit record could not be written: {0}")]
    NotRecorded(String),
    /// A note of an earlier change is left (its undo failed, or a recorded change could not
    /// remove it): the file may hold that change without its record, so changes wait for the
    /// start that settles it.
    #[error("the change is not made: an earlier change ({kind} of {sha256} by {by}) may lack its audit record; rollout changes wait for a restart of the server, which records it if the audit log lost it")]
    EarlierUnsettled {
        kind: String,
        sha256: String,
        by: String,
    },
    /// The change is in force and its record reached the audit log, which could not be synced
    /// (or the change could not be undone): the next start records it if the log lost it, and
    /// further changes wait for that start.
    #[error("the change is in force, but {0}; rollout changes wait for a restart of the server, which records it if the audit log lost it")]
    InForceUnsettled(String),
}

/// Why a change's audit record failed ([`Rollouts::set`], [`Rollouts::end`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailed {
    pub message: String,
    /// it reached the audit log, which was not synced: the change stands
    pub written: bool,
}

impl From<crate::audit::AuditError> for RecordFailed {
    fn from(e: crate::audit::AuditError) -> Self {
        RecordFailed {
            written: matches!(e, crate::audit::AuditError::NotSynced(_)),
            message: e.to_string(),
        }
    }
}

/// A change on its way: written before the rollouts file changes, removed once the change is in
/// the audit log. Found at start, it says which change may lack its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    /// `rollout` or `rollout-end`: the audit record's kind
    kind: String,
    /// who made the change
    by: String,
    /// the audit record's detail: the rollout set, or the one ended
    rollout: Rollout,
}

/// The rollouts in force: read on every image request (in memory), changed through the store.
/// Where the rollouts are kept: `DATA/rollouts.json` (a file, not the database: `export` reads
/// it beside a running server).
pub fn file(data: &Path) -> PathBuf {
    data.join("rollouts.json")
}

#[derive(Debug, Default)]
pub struct Rollouts {
    /// the file they are kept in (none: in memory only, for tests)
    path: Option<PathBuf>,
    current: RwLock<BTreeMap<String, Rollout>>,
    /// serialises changes: store, map and audit record in one order; image requests only take
    /// `current`'s read lock, never wait for the store's sync
    one_change: std::sync::Mutex<()>,
}

impl Rollouts {
    /// The rollouts kept in `path` (none yet: none in force). A file that does not parse stops
    /// the server: starting without its rollouts would release every held image.
    pub fn load(path: &Path) -> Result<Rollouts, RolloutError> {
        let map: BTreeMap<String, Rollout> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Rollout>>(&bytes)
                .map_err(|e| RolloutError::Store(format!("{}: {e}", path.display())))?
                .into_iter()
                .map(|r| (r.sha256.clone(), r))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(RolloutError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(Rollouts {
            path: Some(path.to_path_buf()),
            current: RwLock::new(map),
            one_change: std::sync::Mutex::default(),
        })
    }

    /// Where a change on its way is kept: `DATA/rollouts.pending.json`.
    fn pending_path(&self) -> Option<PathBuf> {
        self.path.as_ref().map(|p| p.with_extension("pending.json"))
    }

    fn read_pending(&self) -> Result<Option<Pending>, RolloutError> {
        let Some(path) = self.pending_path() else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RolloutError::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RolloutError::Store(format!("{}: {e}", path.display()))),
        }
    }

    fn write_pending(&self, p: &Pending) -> Result<(), RolloutError> {
        let Some(path) = self.pending_path() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(p).map_err(|e| RolloutError::Store(e.to_string()))?;
        hale_repo::layout::write_atomic(&path, &bytes)
            .map_err(|e| RolloutError::Store(format!("{}: {e}", path.display())))
    }

    fn remove_pending(&self) -> Result<(), RolloutError> {
        let Some(path) = self.pending_path() else {
            return Ok(());
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RolloutError::Store(format!("{}: {e}", path.display()))),
        }
    }

    /// At start: a change that a crash (or a failed undo) left without its audit record is
    /// recorded now, as `kind` with `"recovered_at_start": true`; one that never reached the
    /// rollouts file is dropped. Returns the change recorded, if one was.
    pub fn reconcile(
        &self,
        audit: &crate::audit::Audit,
        store: &dyn crate::store::Store,
    ) -> Result<Option<Rollout>, RolloutError> {
        let Some(p) = self.read_pending()? else {
            return Ok(None);
        };
        let sha = p.rollout.sha256.as_str();
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sha)
            .cloned();
        let in_force = if p.kind == "rollout-end" {
            current.is_none()
        } else {
            current.as_ref() == Some(&p.rollout)
        };
        let detail =
            serde_json::to_value(&p.rollout).map_err(|e| RolloutError::Store(e.to_string()))?;
        // the change's record, when it was written, is the last rollout record of this image:
        // its note holds every later change back until a start settles it. (The last record of
        // the note's kind alone is not enough: the same change made again within the second,
        // after another, as `PUT 10`, `DELETE`, `PUT 10`, would read as recorded by the first.)
        let recorded = store
            .audit_last_where(&["rollout", "rollout-end"], &|r| {
                r.pointer("/detail/sha256").and_then(|v| v.as_str()) == Some(sha)
            })
            .map_err(|e| RolloutError::Store(e.to_string()))?
            .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some(p.kind.as_str()))
            .is_some_and(|r| {
                // a record made by an earlier start carries the flag
                let mut d = r.get("detail").cloned().unwrap_or_default();
                if let Some(o) = d.as_object_mut() {
                    o.remove("recovered_at_start");
                }
                d == detail
            });
        let mut made = None;
        if in_force && !recorded {
            let mut detail = detail;
            detail["recovered_at_start"] = serde_json::Value::Bool(true);
            audit
                .append(&p.kind, &p.by, detail)
                .map_err(|e| RolloutError::NotRecorded(e.to_string()))?;
            tracing::warn!(kind = %p.kind, sha256 = sha, by = %p.by, "a rollout change had no audit record (the server stopped before it): recorded now");
            made = Some(p.rollout);
        }
        self.remove_pending()?;
        Ok(made)
    }

    /// Write `map` to the file (atomically, synced) before it is in force.
    fn keep(&self, map: &BTreeMap<String, Rollout>) -> Result<(), RolloutError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let list: Vec<&Rollout> = map.values().collect();
        let bytes =
            serde_json::to_vec_pretty(&list).map_err(|e| RolloutError::Store(e.to_string()))?;
        hale_repo::layout::write_atomic(path, &bytes)
            .map_err(|e| RolloutError::Store(format!("{}: {e}", path.display())))
    }

    /// May `reader` download the image whose sha256 is `sha256`?
    pub fn admits(&self, sha256: &str, reader: Reader<'_>) -> Result<(), Rollout> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let Some(r) = current.get(sha256) else {
            return Ok(());
        };
        let admitted = match reader {
            Reader::Staff => true,
            Reader::Device(id) => bucket(sha256, id) < r.percent,
            Reader::Anonymous => r.percent >= 100,
        };
        if admitted {
            Ok(())
        } else {
            Err(r.clone())
        }
    }

    pub fn list(&self) -> Vec<Rollout> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Set the rollout of `sha256` to `percent`, one change at a time (see [`Rollouts::change`]).
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &self,
        sha256: &str,
        percent: u64,
        target: Option<&str>,
        by: &str,
        now: i64,
        record: impl FnOnce(&Rollout) -> Result<(), RecordFailed>,
    ) -> Result<Rollout, RolloutError> {
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RolloutError::BadHash(sha256.to_string()));
        }
        let percent = u8::try_from(percent)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or(RolloutError::BadPercent(percent))?;
        if let Some(t) =
            target.filter(|t| t.is_empty() || t.len() > 256 || t.chars().any(char::is_control))
        {
            return Err(RolloutError::BadTarget(t.to_string()));
        }
        self.change(
            "rollout",
            by,
            |next| {
                let known = next.get(sha256).and_then(|r| r.target.clone());
                let r = Rollout {
                    sha256: sha256.to_string(),
                    percent,
                    target: target.map(str::to_string).or(known),
                    by: by.to_string(),
                    updated_at: now,
                };
                next.insert(sha256.to_string(), r.clone());
                Ok(r)
            },
            record,
        )
    }

    /// One change by `by`: `edit` a copy of the rollouts in force, note the change as pending,
    /// keep the copy in the file, `record` it (the audit record `kind`), put it in force; changes
    /// one at a time, image requests never waiting for the file. A change whose record cannot be
    /// written is undone (the file written back) and refused with [`RolloutError::NotRecorded`].
    /// One whose record was written but not synced, or that cannot be undone, is in force as the
    /// file has it, keeps its note and is [`RolloutError::InForceUnsettled`]; one that a crash
    /// leaves without its record, [`Rollouts::reconcile`] records at the next start.
    fn change(
        &self,
        kind: &str,
        by: &str,
        edit: impl FnOnce(&mut BTreeMap<String, Rollout>) -> Result<Rollout, RolloutError>,
        record: impl FnOnce(&Rollout) -> Result<(), RecordFailed>,
    ) -> Result<Rollout, RolloutError> {
        let _one = self
            .one_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = self.read_pending()? {
            // an earlier change whose undo failed: the file may hold it unrecorded
            return Err(RolloutError::EarlierUnsettled {
                kind: p.kind,
                sha256: p.rollout.sha256,
                by: p.by,
            });
        }
        let prev = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut next = prev.clone();
        let r = edit(&mut next)?;
        self.write_pending(&Pending {
            kind: kind.to_string(),
            by: by.to_string(),
            rollout: r.clone(),
        })?;
        if let Err(e) = self.keep(&next) {
            self.remove_pending()?;
            return Err(e);
        }
        if let Err(e) = record(&r) {
            let in_force = |why: String| {
                // the file holds the change: in force as it is there, the note kept for the
                // next start (which records it if the log has no record of it)
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
                RolloutError::InForceUnsettled(why)
            };
            if e.written {
                return Err(in_force(e.message));
            }
            // not recorded: not made
            if let Err(undo) = self.keep(&prev) {
                return Err(in_force(format!(
                    "its audit record could not be written ({}) and it could not be undone ({undo})",
                    e.message
                )));
            }
            self.remove_pending()?;
            return Err(RolloutError::NotRecorded(e.message));
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        if let Err(e) = self.remove_pending() {
            // recorded and in force: the next start finds the record and drops the note
            tracing::error!(error = %e, "rollout change recorded, its pending note not removed");
        }
        Ok(r)
    }

    /// End the rollout of `sha256` (the image goes to everyone), by `by` (see
    /// [`Rollouts::change`]).
    pub fn end(
        &self,
        sha256: &str,
        by: &str,
        record: impl FnOnce(&Rollout) -> Result<(), RecordFailed>,
    ) -> Result<Rollout, RolloutError> {
        self.change(
            "rollout-end",
            by,
            |next| {
                next.remove(sha256)
                    .ok_or_else(|| RolloutError::Unknown(sha256.to_string()))
            },
            record,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_over_the_fleet_and_a_device_admitted_stays_admitted() {
        let sha = "ab".repeat(32);
        let mut counts = [0u32; 100];
        for i in 0..10_000 {
            counts[bucket(&sha, &format!("pump-{i:05}")) as usize] += 1;
        }
        // 100 per bucket on average: none empty, none over three times its share
        assert!(counts.iter().all(|&c| (1..300).contains(&c)), "{counts:?}");
        // the same device, another image: another place
        let moved = (0..100)
            .filter(|i| {
                let d = format!("pump-{i}");
                bucket(&sha, &d) != bucket(&"cd".repeat(32), &d)
            })
            .count();
        assert!(moved > 80, "{moved}");
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let r = Rollouts::load(&path).unwrap();
        r.set(&sha, 10, Some("pump-a/fw.bin"), "operator:olga", 1, |_| {
            Ok(())
        })
        .unwrap();
        let admitted = |r: &Rollouts| {
            (0..1000)
                .filter(|i| r.admits(&sha, Reader::Device(&format!("pump-{i}"))).is_ok())
                .collect::<Vec<_>>()
        };
        let at_10 = admitted(&r);
        r.set(&sha, 50, None, "operator:olga", 2, |_| Ok(()))
            .unwrap();
        let at_50 = admitted(&r);
        assert!(
            at_10.iter().all(|d| at_50.contains(d)),
            "admitted at 10 % stay admitted"
        );
        assert!((50..200).contains(&at_10.len()), "{}", at_10.len());
        assert!((400..600).contains(&at_50.len()), "{}", at_50.len());
        // the target named once is kept
        assert_eq!(r.list()[0].target.as_deref(), Some("pump-a/fw.bin"));
        assert!(r.admits(&sha, Reader::Staff).is_ok());
        assert_eq!(r.admits(&sha, Reader::Anonymous).unwrap_err().percent, 50);
        // stored: a restart keeps it
        assert_eq!(Rollouts::load(&path).unwrap().list(), r.list());
        r.end(&sha, "operator:olga", |_| Ok(())).unwrap();
        assert!(r.admits(&sha, Reader::Anonymous).is_ok());
        assert_eq!(Rollouts::load(&path).unwrap().list(), vec![]);
        // refusals
        assert_eq!(
            r.set("AB", 5, None, "x", 0, |_| Ok(())).unwrap_err(),
            RolloutError::BadHash("AB".into())
        );
        assert_eq!(
            r.set(&sha, 101, None, "x", 0, |_| Ok(())).unwrap_err(),
            RolloutError::BadPercent(101)
        );
        assert_eq!(
            r.end(&sha, "operator:olga", |_| Ok(())).unwrap_err(),
            RolloutError::Unknown(sha.clone())
        );
        assert_eq!(r.list(), vec![]);
        // a file that does not parse is an error, not "no rollouts" (that would release all)
        std::fs::write(&path, b"[{").unwrap();
        assert!(
            matches!(Rollouts::load(&path), Err(RolloutError::Store(m)) if m.contains("rollouts.json"))
        );
    }

    #[test]
    fn a_rollout_change_is_in_force_only_with_its_audit_record() {
        use crate::audit::{self, Audit};
        use crate::store::{SledStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        let path = file(dir.path());
        let pending = path.with_extension("pending.json");
        let sha = "ab".repeat(32);
        let by = "operator:olga";
        let record = |kind: &'static str| {
            let audit = audit.clone();
            move |r: &Rollout| {
                audit
                    .append(kind, by, serde_json::to_value(r).unwrap())
                    .map(|_| ())
                    .map_err(RecordFailed::from)
            }
        };
        let failed = |m: &str, written| RecordFailed {
            message: m.into(),
            written,
        };
        // the note a change leaves before the rollouts file changes
        let note = |kind: &str, rollout: &Rollout| Pending {
            kind: kind.into(),
            by: by.into(),
            rollout: rollout.clone(),
        };
        let r = Rollouts::load(&path).unwrap();
        let set10 = r.set(&sha, 10, None, by, 1, record("rollout")).unwrap();
        let file_bytes = std::fs::read(&path).unwrap();
        let records = |n| {
            let (len, _) = audit::verify(&*store).unwrap();
            assert_eq!(len, n);
            let (_, b) = store.audit_last().unwrap().unwrap();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        assert_eq!(records(1)["detail"], serde_json::to_value(&set10).unwrap());

        // the record cannot be written: the change is undone and refused
        let e = r
            .set(&sha, 50, None, by, 2, |_| Err(failed("disk full", false)))
            .unwrap_err();
        assert_eq!(e, RolloutError::NotRecorded("disk full".into()));
        let e = r
            .end(&sha, by, |_| Err(failed("disk full", false)))
            .unwrap_err();
        assert_eq!(e, RolloutError::NotRecorded("disk full".into()));
        assert_eq!(r.list(), vec![set10.clone()]);
        assert_eq!(std::fs::read(&path).unwrap(), file_bytes);
        assert!(!pending.exists());
        assert_eq!(records(1)["detail"]["percent"], 10);

        // a crash after the file, before the record: recorded at the next start, once
        let at50 = Rollout {
            percent: 50,
            updated_at: 3,
            ..set10.clone()
        };
        let crashed = |p: Pending, map: BTreeMap<String, Rollout>| {
            r.write_pending(&p).unwrap();
            r.keep(&map).unwrap();
        };
        crashed(
            note("rollout", &at50),
            BTreeMap::from([(sha.clone(), at50.clone())]),
        );
        let restarted = Rollouts::load(&path).unwrap();
        assert_eq!(
            restarted.reconcile(&audit, &*store).unwrap(),
            Some(at50.clone())
        );
        let rec = records(2);
        assert_eq!(rec["kind"], "rollout");
        assert_eq!(rec["actor"], by);
        assert_eq!(rec["detail"]["percent"], 50);
        assert_eq!(rec["detail"]["recovered_at_start"], true);
        assert!(!pending.exists());
        assert_eq!(restarted.reconcile(&audit, &*store).unwrap(), None);
        records(2);
        // that start recorded it and then could not remove the note: the next one finds the
        // record (with its flag) and records nothing more
        restarted.write_pending(&note("rollout", &at50)).unwrap();
        assert_eq!(restarted.reconcile(&audit, &*store).unwrap(), None);
        records(2);
        assert!(!pending.exists());

        // a crash after the record, before the note was removed: nothing more to record
        let ended = restarted.end(&sha, by, record("rollout-end")).unwrap();
        assert_eq!(ended, at50);
        restarted
            .write_pending(&note("rollout-end", &at50))
            .unwrap();
        let restarted = Rollouts::load(&path).unwrap();
        assert_eq!(restarted.reconcile(&audit, &*store).unwrap(), None);
        assert_eq!(records(3)["kind"], "rollout-end");
        assert!(!pending.exists());

        // a crash before the file changed: the change was never made, nothing is recorded
        restarted.write_pending(&note("rollout", &set10)).unwrap();
        let restarted = Rollouts::load(&path).unwrap();
        assert_eq!(restarted.reconcile(&audit, &*store).unwrap(), None);
        records(3);
        assert!(!pending.exists());
        assert_eq!(restarted.list(), vec![]);

        // a note left by a failed undo holds further changes until a start records it
        restarted.write_pending(&note("rollout", &set10)).unwrap();
        let held = restarted
            .set(&sha, 20, None, by, 4, record("rollout"))
            .unwrap_err();
        assert_eq!(
            held,
            RolloutError::EarlierUnsettled {
                kind: "rollout".into(),
                sha256: sha.clone(),
                by: by.into()
            }
        );
        // what the operator reads: no record was tried for this change
        assert_eq!(
            held.to_string(),
            format!(
                "the change is not made: an earlier change (rollout of {sha} by {by}) may lack \
                 its audit record; rollout changes wait for a restart of the server, which \
                 records it if the audit log lost it"
            )
        );
        assert_eq!(restarted.list(), vec![]);
        records(3);
        std::fs::remove_file(&pending).unwrap();

        // a record written but not synced: the change stands (file and memory), its note stays
        // for the next start, which records it if the log lost it (here: it never got it)
        let at60 = Rollout {
            percent: 60,
            updated_at: 5,
            ..set10.clone()
        };
        assert_eq!(
            restarted.set(&sha, 60, None, by, 5, |_| Err(failed("flush: EIO", true))),
            Err(RolloutError::InForceUnsettled("flush: EIO".into()))
        );
        assert_eq!(restarted.list(), vec![at60.clone()]);
        assert_eq!(Rollouts::load(&path).unwrap().list(), vec![at60.clone()]);
        assert!(pending.exists());
        let again = Rollouts::load(&path).unwrap();
        assert_eq!(
            again.reconcile(&audit, &*store).unwrap(),
            Some(at60.clone())
        );
        assert_eq!(records(4)["detail"]["percent"], 60);
        assert!(!pending.exists());

        // the same change made again within the second, after another (`PUT 10`, `DELETE`,
        // `PUT 10`), and a crash before its record: the image's last record is the DELETE's, so
        // the change is recorded at the start (the log would end at the end of a rollout in force)
        let at10 = again.set(&sha, 10, None, by, 6, record("rollout")).unwrap();
        assert_eq!(again.end(&sha, by, record("rollout-end")).unwrap(), at10);
        assert_eq!(records(6)["kind"], "rollout-end");
        crashed(
            note("rollout", &at10),
            BTreeMap::from([(sha.clone(), at10.clone())]),
        );
        let restarted = Rollouts::load(&path).unwrap();
        assert_eq!(restarted.list(), vec![at10.clone()]);
        assert_eq!(
            restarted.reconcile(&audit, &*store).unwrap(),
            Some(at10.clone())
        );
        let rec = records(7);
        assert_eq!(
            (
                &rec["kind"],
                &rec["detail"]["percent"],
                &rec["detail"]["updated_at"]
            ),
            (&"rollout".into(), &10.into(), &6.into())
        );
        assert_eq!(rec["detail"]["recovered_at_start"], true);
        // and the same for an end made again within the second (`DELETE`, `PUT 10`, `DELETE`)
        restarted.end(&sha, by, record("rollout-end")).unwrap();
        restarted
            .set(&sha, 10, None, by, 6, record("rollout"))
            .unwrap();
        records(9);
        crashed(note("rollout-end", &at10), BTreeMap::new());
        let restarted = Rollouts::load(&path).unwrap();
        assert_eq!(
            restarted.reconcile(&audit, &*store).unwrap(),
            Some(at10.clone())
        );
        let rec = records(10);
        assert_eq!(rec["kind"], "rollout-end");
        assert_eq!(rec["detail"]["recovered_at_start"], true);
        assert!(!pending.exists());
    }
}
