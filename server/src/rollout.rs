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
//! gone: everyone). Each change is an audit record (`rollout`, `rollout-end`).

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

    /// Set the rollout of `sha256` to `percent`: stored, in force, then `record`ed (the audit
    /// log), one change at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &self,
        sha256: &str,
        percent: u64,
        target: Option<&str>,
        by: &str,
        now: i64,
        record: impl FnOnce(&Rollout),
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

    /// One change: `edit` a copy of the rollouts in force, keep it in the file, put it in
    /// force, `record` it; changes one at a time, image requests never waiting for the file.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, Rollout>) -> Result<Rollout, RolloutError>,
        record: impl FnOnce(&Rollout),
    ) -> Result<Rollout, RolloutError> {
        let _one = self
            .one_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let r = edit(&mut next)?;
        self.keep(&next)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        record(&r);
        Ok(r)
    }

    /// End the rollout of `sha256` (the image goes to everyone), then `record` it.
    pub fn end(
        &self,
        sha256: &str,
        record: impl FnOnce(&Rollout),
    ) -> Result<Rollout, RolloutError> {
        self.change(
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
        r.set(&sha, 10, Some("pump-a/fw.bin"), "operator:olga", 1, |_| {})
            .unwrap();
        let admitted = |r: &Rollouts| {
            (0..1000)
                .filter(|i| r.admits(&sha, Reader::Device(&format!("pump-{i}"))).is_ok())
                .collect::<Vec<_>>()
        };
        let at_10 = admitted(&r);
        r.set(&sha, 50, None, "operator:olga", 2, |_| {}).unwrap();
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
        r.end(&sha, |_| {}).unwrap();
        assert!(r.admits(&sha, Reader::Anonymous).is_ok());
        assert_eq!(Rollouts::load(&path).unwrap().list(), vec![]);
        // refusals
        assert_eq!(
            r.set("AB", 5, None, "x", 0, |_| {}).unwrap_err(),
            RolloutError::BadHash("AB".into())
        );
        assert_eq!(
            r.set(&sha, 101, None, "x", 0, |_| {}).unwrap_err(),
            RolloutError::BadPercent(101)
        );
        assert_eq!(
            r.end(&sha, |_| {}).unwrap_err(),
            RolloutError::Unknown(sha.clone())
        );
        assert_eq!(r.list(), vec![]);
        // a file that does not parse is an error, not "no rollouts" (that would release all)
        std::fs::write(&path, b"[{").unwrap();
        assert!(
            matches!(Rollouts::load(&path), Err(RolloutError::Store(m)) if m.contains("rollouts.json"))
        );
    }
}
