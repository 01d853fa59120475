//! Hash-chained audit log of every change of state (publish, key change, re-sign, device report,
//! token added).
//!
//! Each record holds the sha256 of the previous record; its own `hash` is the sha256 of its
//! canonical JSON without `hash`. Deleting, reordering or editing any record breaks the chain at
//! that record, and `hale-server audit verify` names it. The chain detects tampering by someone
//! who can write the database but does not make it impossible: anchor the latest hash elsewhere
//! (`/metrics` has it as the `hash` label of `hale_audit_head_info`, beside the record count
//! `hale_audit_records`, and every publish response carries it).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit record {seq} is broken: {reason}")]
    Broken { seq: u64, reason: String },
    #[error("audit record: {0}")]
    Encode(String),
    /// The record is in the chain (the head moved past it) but the flush failed: whether it
    /// survives a crash is not known.
    #[error("audit record written but not synced: {0}")]
    NotSynced(StoreError),
}

/// The appending side of the chain. Appends are serialised; each one is flushed before it returns.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Arc<dyn Store>,
    head: Arc<Mutex<(u64, String)>>,
    /// `(kind, actor, code and detail)` of refusals recorded lately, and when ([`Audit::refusal`])
    refusals: Arc<Mutex<RecentRefusals>>,
    /// Refusals recorded per actor in its current window ([`REFUSALS_PER_ACTOR_PER_HOUR`])
    refusal_budget: Arc<crate::http::HourlyBudget>,
}

/// Records made on top of the chain's head, not written yet ([`Audit::commit_with`]).
#[derive(Debug, Clone)]
pub struct Staged {
    /// the next record's `seq`
    seq: u64,
    /// the last record's hash
    prev: String,
    /// `(seq, bytes)` of each record made, in order
    pub records: Vec<(u64, Vec<u8>)>,
}

impl Staged {
    /// Make the next record.
    pub fn push(&mut self, kind: &str, actor: &str, detail: Value) -> Result<(), AuditError> {
        let (seq, time) = (self.seq, crate::now());
        let mut rec = json!({"seq": seq, "time": time, "kind": kind, "actor": actor, "detail": detail, "prev": self.prev});
        let hash = record_hash(&rec)?;
        if let Some(o) = rec.as_object_mut() {
            o.insert("hash".into(), Value::String(hash.clone()));
        }
        let bytes = serde_json::to_vec(&rec).map_err(|e| AuditError::Encode(e.to_string()))?;
        self.records.push((seq, bytes));
        self.seq += 1;
        self.prev = hash;
        Ok(())
    }
}

/// `(kind, actor, code and detail)` → when it was last recorded.
type RecentRefusals = std::collections::HashMap<(String, String, String), std::time::Instant>;

/// A refusal repeated by the same actor for the same request and reason is recorded once in this
/// window: a device retrying on every poll would otherwise grow the log without bound.
pub const REFUSAL_REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
/// At most this many refusals of one actor are recorded in an hour (a window from the first),
/// whatever they say: one whose request differs each time (a publish body, a device id in a
/// staff request's path, a CSR) is not a repeat, and a holder of one certificate or token
/// sending them in a loop grew the log without bound. The last one recorded says so
/// (`"more_refusals_not_recorded": true`); the ones after it are logged.
pub const REFUSALS_PER_ACTOR_PER_HOUR: u32 = 60;
/// At most this many distinct recent refusals are remembered (then the memory starts afresh).
const REFUSALS_REMEMBERED: usize = 10_000;
/// Longest refusal message recorded, in characters (the rest is cut, marked `…`).
pub const REFUSAL_MESSAGE_MAX: usize = 512;

impl Audit {
    /// Open the chain and find its head (the chain is verified by [`verify`], not here).
    pub fn open(store: Arc<dyn Store>) -> Result<Self, AuditError> {
        let head = head_of(&*store)?;
        Ok(Audit {
            store,
            head: Arc::new(Mutex::new(head)),
            refusals: Arc::default(),
            refusal_budget: Arc::new(crate::http::HourlyBudget::new(REFUSALS_REMEMBERED)),
        })
    }

    /// Append one record and flush it. Returns the record's hash.
    pub fn append(&self, kind: &str, actor: &str, detail: Value) -> Result<String, AuditError> {
        self.append_with(kind, actor, detail, |seq, bytes| {
            self.store.audit_append(seq, bytes)?;
            self.store.flush().map_err(AuditError::NotSynced)
        })
    }

    /// Append one record through `commit`, which writes it (`seq`, the record's bytes) in one
    /// atomic, durable write with the change it records: the change and its record are stored
    /// both or neither ([`crate::identity::IdentityStore::commit`]). Returns the record's hash.
    pub fn append_with<E: From<AuditError>>(
        &self,
        kind: &str,
        actor: &str,
        detail: Value,
        commit: impl FnOnce(u64, &[u8]) -> Result<(), E>,
    ) -> Result<String, E> {
        self.commit_with(|head| {
            let mut staged = head.clone();
            staged.push(kind, actor, detail)?;
            if let Some((seq, bytes)) = staged.records.first() {
                commit(*seq, bytes)?;
            }
            let hash = staged.prev.clone();
            Ok((hash, staged))
        })
    }

    /// For a writer that builds its records inside its own transaction: `commit` gets the
    /// chain's head, [`Staged::push`]es records onto a clone of it, writes them with its change
    /// in one atomic, durable write, and returns what it wrote. Writers are serialised, so the
    /// chain's order is the order of the commits.
    ///
    /// When `commit` fails, the head is read again from the store: a write that failed after it
    /// was applied (a failed flush) must not leave the next append at a taken `seq`.
    pub fn commit_with<T, E: From<AuditError>>(
        &self,
        commit: impl FnOnce(&Staged) -> Result<(T, Staged), E>,
    ) -> Result<T, E> {
        let mut head = self
            .head
            .lock()
            .map_err(|_| AuditError::Encode("audit lock poisoned".into()))?;
        let start = Staged {
            seq: head.0,
            prev: head.1.clone(),
            records: Vec::new(),
        };
        match commit(&start) {
            Ok((t, done)) => {
                *head = (done.seq, done.prev);
                Ok(t)
            }
            Err(e) => {
                if let Ok(h) = head_of(&*self.store) {
                    *head = h;
                }
                Err(e)
            }
        }
    }

    /// Record a refusal of an authenticated request (`kind` e.g. `enroll-refused`; `detail`
    /// gets `error`: `code`, and `message` when one is given), unless the same actor was
    /// refused for the same reason within [`REFUSAL_REPEAT_WINDOW`]: the same code and detail,
    /// or the actor's refusals of the hour are spent ([`REFUSALS_PER_ACTOR_PER_HOUR`]).
    /// `message` is not part of the reason: it may quote what the requester chose (a CSR's
    /// CN), and one that varied it at will got a record per request. A message, in `detail`
    /// or not, is cut to [`REFUSAL_MESSAGE_MAX`] characters. Anonymous refusals are not for the
    /// audit log (anyone could fill it): callers log them. A failure to record is logged, not
    /// returned: the refusal stands either way.
    pub fn refusal(
        &self,
        kind: &str,
        actor: &str,
        code: &str,
        detail: Value,
        message: Option<String>,
    ) {
        self.refusal_at(
            kind,
            actor,
            code,
            detail,
            message,
            std::time::Instant::now(),
        );
    }

    /// [`refusal`](Self::refusal) at `now`.
    pub fn refusal_at(
        &self,
        kind: &str,
        actor: &str,
        code: &str,
        mut detail: Value,
        message: Option<String>,
        now: std::time::Instant,
    ) {
        // the same request refused again: same kind, actor, reason and detail
        let key = (
            kind.to_string(),
            actor.to_string(),
            format!("{code} {detail}"),
        );
        {
            let mut recent = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) < REFUSAL_REPEAT_WINDOW)
            {
                return;
            }
            if recent.len() >= REFUSALS_REMEMBERED {
                recent.clear();
            }
            recent.insert(key, now);
        }
        // a new refusal: within the actor's budget of the hour (a repeat above spends none)
        let last_of_the_hour =
            match self
                .refusal_budget
                .take(actor, REFUSALS_PER_ACTOR_PER_HOUR, now)
            {
                Ok(left) => left == 0,
                Err(_) => {
                    tracing::warn!(
                    kind,
                    actor,
                    code,
                    "refusal not recorded in the audit log: {REFUSALS_PER_ACTOR_PER_HOUR} of this \
                     actor's were within the hour"
                );
                    return;
                }
            };
        if let Some(o) = detail.as_object_mut() {
            if last_of_the_hour {
                o.insert("more_refusals_not_recorded".into(), Value::Bool(true));
            }
            if let Some(m) = message {
                o.insert("message".into(), Value::String(m));
            }
            if let Some(Value::String(m)) = o.get_mut("message") {
                if let Some((cut, _)) = m.char_indices().nth(REFUSAL_MESSAGE_MAX) {
                    m.truncate(cut);
                    m.push('…');
                }
            }
            o.insert("error".into(), Value::String(code.to_string()));
        }
        if let Err(e) = self.append(kind, actor, detail) {
            tracing::error!(error = %e, kind, "refusal not recorded in the audit log");
        }
    }

    /// The hash of the last record (all zeros before the first): the value to anchor elsewhere.
    pub fn head_hash(&self) -> String {
        self.head
            .lock()
            .map(|h| h.1.clone())
            .unwrap_or_else(|_| GENESIS.to_string())
    }

    /// Records appended so far.
    pub fn len(&self) -> u64 {
        self.head.lock().map(|h| h.0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next record's `seq` and the last record's hash (all zeros before the first).
fn head_of(store: &dyn Store) -> Result<(u64, String), AuditError> {
    Ok(match store.audit_last()? {
        None => (0, GENESIS.to_string()),
        Some((seq, bytes)) => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| AuditError::Broken {
                seq,
                reason: format!("not JSON: {e}"),
            })?;
            let h = v
                .get("hash")
                .and_then(Value::as_str)
                .unwrap_or(GENESIS)
                .to_string();
            (seq + 1, h)
        }
    })
}

fn record_hash(rec: &Value) -> Result<String, AuditError> {
    let mut body = rec.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("hash");
    }
    let canon = hale_repo::sign::canonical(&body).map_err(|e| AuditError::Encode(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&canon)))
}

/// Check the whole chain: sequence numbers from 0 without gaps, each `prev` equal to the previous
/// record's hash, each `hash` recomputed. Returns the number of records and the head hash.
pub fn verify(store: &dyn Store) -> Result<(u64, String), AuditError> {
    let mut expected_seq = 0u64;
    let mut prev = GENESIS.to_string();
    for (seq, bytes) in store.audit_all()? {
        let broken = |reason: String| AuditError::Broken { seq, reason };
        if seq != expected_seq {
            return Err(AuditError::Broken {
                seq: expected_seq,
                reason: format!("missing (next record is {seq})"),
            });
        }
        let rec: Value =
            serde_json::from_slice(&bytes).map_err(|e| broken(format!("not JSON: {e}")))?;
        if rec.get("seq").and_then(Value::as_u64) != Some(seq) {
            return Err(broken("its seq field does not match its position".into()));
        }
        if rec.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(broken(
                "prev does not match the previous record's hash".into(),
            ));
        }
        let stored = rec
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("no hash".into()))?
            .to_string();
        let computed = record_hash(&rec)?;
        if stored != computed {
            return Err(broken("content does not match its hash (edited)".into()));
        }
        prev = stored;
        expected_seq += 1;
    }
    Ok((expected_seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    /// Every record of the chain, parsed.
    fn records(store: &SledStore) -> Vec<Value> {
        store
            .audit_all()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    #[test]
    fn a_refusal_repeated_within_the_hour_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        for _ in 0..5 {
            audit.refusal(
                "enroll-refused",
                "device:pump-1",
                "device_quarantined",
                json!({"endpoint": "simplereenroll"}),
                None,
            );
        }
        // another request, another actor, another reason: each recorded
        audit.refusal(
            "enroll-refused",
            "device:pump-1",
            "device_quarantined",
            json!({"endpoint": "simpleenroll"}),
            None,
        );
        audit.refusal(
            "enroll-refused",
            "device:pump-2",
            "device_quarantined",
            json!({"endpoint": "simplereenroll"}),
            None,
        );
        audit.refusal(
            "enroll-refused",
            "device:pump-1",
            "identity_mismatch",
            json!({"endpoint": "simplereenroll"}),
            None,
        );
        let recs = records(&store);
        let got: Vec<(&str, &str, &str)> = recs
            .iter()
            .map(|r| {
                (
                    r["actor"].as_str().unwrap(),
                    r["detail"]["error"].as_str().unwrap(),
                    r["detail"]["endpoint"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("device:pump-1", "device_quarantined", "simplereenroll"),
                ("device:pump-1", "device_quarantined", "simpleenroll"),
                ("device:pump-2", "device_quarantined", "simplereenroll"),
                ("device:pump-1", "identity_mismatch", "simplereenroll"),
            ]
        );
        assert_eq!(verify(store.as_ref()).unwrap().0, 4);
    }

    /// A requester that varies what its refusal message quotes (a CSR's CN) gets one record,
    /// and a long message is cut (review: one pump appended a record per request).
    #[test]
    fn a_refusal_whose_message_varies_is_recorded_once_and_its_message_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        for cn in ["x1", "x2", &"é".repeat(8000)] {
            audit.refusal(
                "enroll-refused",
                "device:pump-1",
                "identity_mismatch",
                json!({"endpoint": "simplereenroll"}),
                Some(format!("CN {cn} is not pump-1")),
            );
        }
        let long = format!("CN {} is not pump-1", "é".repeat(8000));
        audit.refusal(
            "enroll-refused",
            "device:pump-2",
            "identity_mismatch",
            json!({"endpoint": "simplereenroll"}),
            Some(long.clone()),
        );
        let recs = records(&store);
        let got: Vec<(&str, &str)> = recs
            .iter()
            .map(|r| {
                (
                    r["actor"].as_str().unwrap(),
                    r["detail"]["message"].as_str().unwrap(),
                )
            })
            .collect();
        let cut = format!(
            "{}…",
            long.chars().take(REFUSAL_MESSAGE_MAX).collect::<String>()
        );
        assert_eq!(
            got,
            [
                ("device:pump-1", "CN x1 is not pump-1"),
                ("device:pump-2", cut.as_str()),
            ]
        );
        assert_eq!(verify(store.as_ref()).unwrap().0, 2);
    }

    /// One actor's refusals that each differ (a publish body, a device id in a path) are not
    /// repeats: they made a record each, without bound. At most REFUSALS_PER_ACTOR_PER_HOUR are
    /// recorded an hour, the last saying so; another actor has its own; the next hour, again.
    #[test]
    fn one_actors_refusals_are_recorded_at_most_so_many_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        let start = std::time::Instant::now();
        let refuse = |actor: &str, i: u32, at: std::time::Duration| {
            audit.refusal_at(
                "publish-refused",
                actor,
                "bad_request",
                json!({"sha256": format!("{i:064x}")}),
                Some(format!("body {i}")),
                start + at,
            );
        };
        let per_hour = REFUSALS_PER_ACTOR_PER_HOUR;
        for i in 0..per_hour + 20 {
            refuse("alice", i, std::time::Duration::from_secs(u64::from(i)));
        }
        refuse("bob", 0, std::time::Duration::from_secs(100));
        let recs = records(&store);
        let alice: Vec<&Value> = recs.iter().filter(|r| r["actor"] == "alice").collect();
        assert_eq!(alice.len(), per_hour as usize);
        assert_eq!(recs.len(), per_hour as usize + 1, "bob's is recorded");
        // the last of the hour says so, the others do not
        let marked: Vec<bool> = alice
            .iter()
            .map(|r| r["detail"]["more_refusals_not_recorded"] == json!(true))
            .collect();
        assert_eq!(marked.iter().filter(|m| **m).count(), 1);
        assert_eq!(marked.last(), Some(&true));
        assert_eq!(
            alice.last().unwrap()["detail"]["sha256"],
            format!("{:064x}", per_hour - 1)
        );
        // a refusal in the last second of the window: not recorded; the next hour's is
        refuse("alice", 1000, std::time::Duration::from_secs(3599));
        assert_eq!(records(&store).len(), per_hour as usize + 1);
        refuse("alice", 1001, std::time::Duration::from_secs(3600));
        let recs = records(&store);
        assert_eq!(recs.len(), per_hour as usize + 2);
        assert_eq!(
            recs.last().unwrap()["detail"]["sha256"],
            format!("{:064x}", 1001)
        );
        assert_eq!(verify(store.as_ref()).unwrap().0, u64::from(per_hour) + 2);
    }

    #[test]
    fn chain_verifies_and_names_the_first_broken_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        for i in 0..4 {
            audit.append("report", "dev", json!({"n": i})).unwrap();
        }
        let (n, head) = verify(store.as_ref()).unwrap();
        assert_eq!(n, 4);
        // reopening continues the same chain
        let again = Audit::open(store.clone()).unwrap();
        assert_eq!(
            again.append("publish", "alice", json!({})).unwrap().len(),
            64
        );
        assert_ne!(verify(store.as_ref()).unwrap().1, head);

        // a deleted record: the gap is named
        let dir2 = tempfile::tempdir().unwrap();
        let gap = SledStore::open(dir2.path()).unwrap();
        for (seq, rec) in store.audit_all().unwrap() {
            if seq != 2 {
                gap.audit_append(seq, &rec).unwrap();
            }
        }
        assert_eq!(
            verify(&gap).unwrap_err().to_string(),
            "audit record 2 is broken: missing (next record is 3)"
        );
        // a record replaced by a self-consistent forgery: the next record's prev no longer matches
        let dir3 = tempfile::tempdir().unwrap();
        let forged = SledStore::open(dir3.path()).unwrap();
        for (seq, rec) in store.audit_all().unwrap() {
            let rec = if seq == 1 {
                let mut v: Value = serde_json::from_slice(&rec).unwrap();
                v["detail"] = json!({"n": 99});
                let h = record_hash(&v).unwrap();
                v["hash"] = Value::String(h);
                serde_json::to_vec(&v).unwrap()
            } else {
                rec
            };
            forged.audit_append(seq, &rec).unwrap();
        }
        assert_eq!(
            verify(&forged).unwrap_err().to_string(),
            "audit record 2 is broken: prev does not match the previous record's hash"
        );
    }
}
