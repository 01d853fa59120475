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

use crate::store::{Store, StoreError};

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

impl From<StoreError> for RolloutError {
    fn from(e: StoreError) -> Self {
        RolloutError::Store(e.to_string())
    }
}

/// The rollouts in force: read on every image request (in memory), changed through the store.
#[derive(Debug, Default)]
pub struct Rollouts {
    current: RwLock<BTreeMap<String, Rollout>>,
}

impl Rollouts {
    /// The rollouts `store` holds.
    pub fn load(store: &dyn Store) -> Result<Rollouts, StoreError> {
        let mut map = BTreeMap::new();
        for (sha, bytes) in store.rollouts()? {
            let r: Rollout = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Db(format!("rollout {sha}: {e}")))?;
            map.insert(sha, r);
        }
        Ok(Rollouts {
            current: RwLock::new(map),
        })
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

    /// Set the rollout of `sha256` to `percent` (stored, then in force).
    pub fn set(
        &self,
        store: &dyn Store,
        sha256: &str,
        percent: u64,
        target: Option<&str>,
        by: &str,
        now: i64,
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
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let target = target
            .map(str::to_string)
            .or_else(|| current.get(sha256).and_then(|r| r.target.clone()));
        let r = Rollout {
            sha256: sha256.to_string(),
            percent,
            target,
            by: by.to_string(),
            updated_at: now,
        };
        let bytes = serde_json::to_vec(&r).map_err(|e| RolloutError::Store(e.to_string()))?;
        store.rollout_put(sha256, &bytes)?;
        current.insert(sha256.to_string(), r.clone());
        Ok(r)
    }

    /// End the rollout of `sha256`: the image goes to everyone.
    pub fn end(&self, store: &dyn Store, sha256: &str) -> Result<Rollout, RolloutError> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let r = current
            .get(sha256)
            .cloned()
            .ok_or_else(|| RolloutError::Unknown(sha256.to_string()))?;
        store.rollout_remove(sha256)?;
        current.remove(sha256);
        Ok(r)
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
        let store = crate::store::SledStore::open(tempfile::tempdir().unwrap().path()).unwrap();
        let r = Rollouts::default();
        r.set(&store, &sha, 10, Some("pump-a/fw.bin"), "operator:olga", 1)
            .unwrap();
        let admitted = |r: &Rollouts| {
            (0..1000)
                .filter(|i| r.admits(&sha, Reader::Device(&format!("pump-{i}"))).is_ok())
                .collect::<Vec<_>>()
        };
        let at_10 = admitted(&r);
        r.set(&store, &sha, 50, None, "operator:olga", 2).unwrap();
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
        assert_eq!(Rollouts::load(&store).unwrap().list(), r.list());
        r.end(&store, &sha).unwrap();
        assert!(r.admits(&sha, Reader::Anonymous).is_ok());
        assert_eq!(Rollouts::load(&store).unwrap().list(), vec![]);
        // refusals
        assert_eq!(
            r.set(&store, "AB", 5, None, "x", 0).unwrap_err(),
            RolloutError::BadHash("AB".into())
        );
        assert_eq!(
            r.set(&store, &sha, 101, None, "x", 0).unwrap_err(),
            RolloutError::BadPercent(101)
        );
        assert_eq!(
            r.end(&store, &sha).unwrap_err(),
            RolloutError::Unknown(sha.clone())
        );
        assert_eq!(r.list(), vec![]);
    }
}
