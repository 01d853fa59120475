//! Server-side state that is not the repository: operator tokens, device reports and the audit
//! chain, behind the [`Store`] trait so a scale-out backend (PostgreSQL) can replace sled later.
//!
//! The TUF repository itself is not in here: it is a set of content-addressed files plus one
//! pointer (see [`crate::repo`]), so it can be exported to any static host as it is.

use std::path::Path;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("audit record {0} already exists (concurrent writer?)")]
    AuditConflict(u64),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// The sled tree of the audit chain: records keyed by their `seq` (8 bytes, big-endian).
pub const AUDIT_TREE: &str = "audit";

/// How [`Store::device_update`] makes a device's next record from its previous one, and the
/// audit records (`seq`, bytes: [`crate::audit::Staged`]) that go with it. `None` leaves
/// everything as it is.
pub type RecordUpdate<'a> =
    dyn FnMut(Option<&[u8]>) -> Result<Option<DeviceUpdate>, StoreError> + 'a;

/// How [`Store::device_replace`] makes a device's next record (`None`: not this way).
pub type RecordReplace<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// A device's next record and the audit records of the change.
pub type DeviceUpdate = (Vec<u8>, Vec<(u64, Vec<u8>)>);

/// Everything the server keeps besides the repository files.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Record an operator token by the sha256 (hex) of the token (`Some(operator)`), or remove it
    /// (`None`), with its audit record (`seq`, bytes: [`crate::audit::Audit::append_with`]), in
    /// one transaction, flushed. The token itself is never stored.
    fn token_set(
        &self,
        token_sha256: &str,
        operator: Option<&str>,
        audit: (u64, &[u8]),
    ) -> Result<(), StoreError>;
    /// The operator whose token hashes to `token_sha256`.
    fn token_operator(&self, token_sha256: &str) -> Result<Option<String>, StoreError>;
    /// Operators with a token.
    fn token_operators(&self) -> Result<Vec<String>, StoreError>;
    /// Every token as `(sha256 hex, operator)`, in hash order.
    fn tokens(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Replace a device's latest report.
    fn device_put(&self, id: &str, record: &[u8]) -> Result<(), StoreError>;
    /// Replace a device's record with what `next` makes of the previous one, and append the
    /// audit records it made, in one transaction: both or neither (`next` may run more than
    /// once when reports of the same device race). Flushed when it made audit records (a report
    /// that says nothing new is not worth a sync per poll). An audit `seq` already taken
    /// refuses the whole update ([`StoreError::AuditConflict`]).
    fn device_update(&self, id: &str, next: &mut RecordUpdate<'_>) -> Result<(), StoreError>;
    /// Replace a device's record with what `next` makes of the previous one, atomically, without
    /// audit records or a sync; `None` leaves it as it is. Whether it was replaced.
    fn device_replace(&self, id: &str, next: &mut RecordReplace<'_>) -> Result<bool, StoreError>;
    /// Devices in id order, after `after`, at most `limit`.
    fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The last audit record (sequence number and bytes).
    fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Append audit record `seq`; refused if it exists.
    fn audit_append(&self, seq: u64, record: &[u8]) -> Result<(), StoreError>;
    /// The newest audit record whose `kind` is one of `kinds` (searching backwards).
    fn audit_last_of(&self, kinds: &[&str]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The last audit record whose `kind` is one of `kinds` and that `matches` (parsed), newest first.
    fn audit_last_where(
        &self,
        kinds: &[&str],
        matches: &dyn Fn(&serde_json::Value) -> bool,
    ) -> Result<Option<serde_json::Value>, StoreError>;
    /// All audit records in sequence order.
    fn audit_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Audit records from sequence number `from` on, in order, at most `limit` (a page: never
    /// more of the log in memory than the caller asked for).
    fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// sled, in `DATA/db`. One process at a time: sled locks the directory, so CLI commands that open
/// the store (`token add`, `audit verify`) need the server stopped.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    tokens: sled::Tree,
    devices: sled::Tree,
    audit: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            StoreError::Db(match e {
                // the lock another process holds (sled words it with the OS error's Debug form)
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().starts_with("could not acquire lock") =>
                {
                    format!(
                        "{}: in use by another process (a running hale-server? stop it first)",
                        dir.display()
                    )
                }
                sled::Error::Io(io) => format!("{}: {io}", dir.display()),
                e => format!("{}: {e}", dir.display()),
            })
        })?;
        Ok(SledStore {
            tokens: db.open_tree("tokens")?,
            devices: db.open_tree("devices")?,
            audit: db.open_tree(AUDIT_TREE)?,
            db,
        })
    }
}

impl SledStore {
    /// Another tree of the same database (device identity keeps its own trees, see
    /// [`crate::identity`]).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The database (for multi-tree transactions and flushes).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

impl Store for SledStore {
    fn token_set(
        &self,
        token_sha256: &str,
        operator: Option<&str>,
        (seq, record): (u64, &[u8]),
    ) -> Result<(), StoreError> {
        use sled::transaction::{abort, TransactionError};
        use sled::Transactional;
        let key = seq.to_be_bytes();
        (&self.tokens, &self.audit)
            .transaction(|(tokens, audit)| {
                if audit.get(key)?.is_some() {
                    return abort(StoreError::AuditConflict(seq));
                }
                match operator {
                    Some(op) => tokens.insert(token_sha256.as_bytes(), op.as_bytes())?,
                    None => tokens.remove(token_sha256.as_bytes())?,
                };
                audit.insert(&key, record)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        self.db.flush()?;
        Ok(())
    }

    fn token_operator(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tokens
            .get(token_sha256.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn token_operators(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = self.tokens()?.into_iter().map(|(_, op)| op).collect();
        out.sort();
        Ok(out)
    }

    fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    fn device_put(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.devices.insert(id.as_bytes(), record)?;
        Ok(())
    }

    fn device_update(&self, id: &str, next: &mut RecordUpdate<'_>) -> Result<(), StoreError> {
        use sled::transaction::{abort, TransactionError};
        use sled::Transactional;
        let next = std::cell::RefCell::new(next);
        let audited = (&self.devices, &self.audit)
            .transaction(|(devices, audit)| {
                let old = devices.get(id.as_bytes())?;
                let update = (next.borrow_mut())(old.as_deref());
                let (record, records) = match update {
                    Ok(Some(u)) => u,
                    Ok(None) => return Ok(false),
                    Err(e) => return abort(e),
                };
                for (seq, bytes) in &records {
                    let key = seq.to_be_bytes();
                    if audit.get(key)?.is_some() {
                        return abort(StoreError::AuditConflict(*seq));
                    }
                    audit.insert(&key, bytes.as_slice())?;
                }
                devices.insert(id.as_bytes(), record)?;
                Ok(!records.is_empty())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        if audited {
            self.db.flush()?;
        }
        Ok(())
    }

    fn device_replace(&self, id: &str, next: &mut RecordReplace<'_>) -> Result<bool, StoreError> {
        let mut replaced = false;
        self.devices.fetch_and_update(id.as_bytes(), |old| {
            // runs again when another write came first: the last run decides
            replaced = false;
            match next(old) {
                Some(v) => {
                    replaced = true;
                    Some(sled::IVec::from(v))
                }
                None => old.map(sled::IVec::from),
            }
        })?;
        Ok(replaced)
    }

    fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let iter = match after {
            Some(a) => self.devices.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.devices.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.audit.last()?.map(|(k, v)| (seq_of(&k), v.to_vec())))
    }

    fn audit_append(&self, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.audit
            .compare_and_swap(seq.to_be_bytes(), None as Option<&[u8]>, Some(record))?
            .map_err(|_| StoreError::AuditConflict(seq))
    }

    fn audit_last_of(&self, kinds: &[&str]) -> Result<Option<Vec<u8>>, StoreError> {
        for kv in self.audit.iter().rev() {
            let (_, v) = kv?;
            let kind = serde_json::from_slice::<serde_json::Value>(&v)
                .ok()
                .and_then(|r| r.get("kind").and_then(|k| k.as_str()).map(str::to_string));
            if kind.is_some_and(|k| kinds.contains(&k.as_str())) {
                return Ok(Some(v.to_vec()));
            }
        }
        Ok(None)
    }

    fn audit_last_where(
        &self,
        kinds: &[&str],
        matches: &dyn Fn(&serde_json::Value) -> bool,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        for kv in self.audit.iter().rev() {
            let (_, v) = kv?;
            let Ok(r) = serde_json::from_slice::<serde_json::Value>(&v) else {
                continue;
            };
            let kind = r.get("kind").and_then(|k| k.as_str());
            if kind.is_some_and(|k| kinds.contains(&k)) && matches(&r) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn audit_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.audit.range(from.to_be_bytes()..).take(limit) {
            let (k, v) = kv?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn seq_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = k.get(..8) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}
