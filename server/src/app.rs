//! The running server's state and the operations that change it. Every change goes through
//! [`App::apply`]: one at a time, verified, committed to disk, then swapped in for readers and
//! recorded in the audit log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};

use crate::audit::Audit;
use crate::config::Config;
use crate::publish::{Lifetimes, OnlineKeys, PublishError, Upload};
use crate::repo::{Current, RepoDir, Served, State};
use crate::store::Store;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub metadata_requests: AtomicU64,
    pub target_requests: AtomicU64,
    pub not_modified: AtomicU64,
    pub partial: AtomicU64,
    pub range_not_satisfiable: AtomicU64,
    pub not_found: AtomicU64,
    pub target_bytes: AtomicU64,
    pub publishes_accepted: AtomicU64,
    pub publishes_rejected: AtomicU64,
    pub resigns: AtomicU64,
    pub resign_failures: AtomicU64,
    pub uploads: AtomicU64,
    pub reports: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rollout_held: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct App {
    pub current: Current,
    pub repo: RepoDir,
    pub store: Arc<dyn Store>,
    pub audit: Audit,
    pub keys: OnlineKeys,
    pub life: Lifetimes,
    pub config: Config,
    pub metrics: Metrics,
    /// Serialises changes of the repository (publish, re-sign).
    pub write_lock: Mutex<()>,
    pub started: std::time::Instant,
    pub data: PathBuf,
    /// Device identity (EST, mTLS listeners), when `--tls-dir` is given.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// Staged rollouts in force (the image downloads they hold back).
    pub rollouts: crate::rollout::Rollouts,
    /// The mTLS listeners (their offline CRLs, for `/healthz`), when `--tls-dir` is given.
    pub listeners: Option<Arc<crate::tls::Listeners>>,
    /// `(role, version, expired)` already logged by [`log_expiries`](Self::log_expiries)
    pub expiry_logged: Mutex<std::collections::BTreeSet<(String, u64, bool)>>,
    /// The audit records each device's reports made this hour
    /// ([`crate::http::ReportBudget`]).
    pub report_budget: crate::http::ReportBudget,
}

/// A change that failed: a refusal (the caller's fault) or an internal error.
#[derive(Debug)]
pub enum ApplyError {
    Refused(Box<PublishError>),
    Internal(String),
}

impl App {
    pub fn served(&self) -> Arc<Served> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Verify, commit and serve one change. Blocking: call from `spawn_blocking`.
    fn apply<F>(&self, kind: &str, actor: &str, f: F) -> Result<Option<Value>, ApplyError>
    where
        F: FnOnce(&State, i64) -> Result<Option<State>, PublishError>,
    {
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| ApplyError::Internal("write lock poisoned".into()))?;
        let prev = self.served();
        let now = crate::now();
        let new = match f(&prev.state, now) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(PublishError::Internal(e)) => return Err(ApplyError::Internal(e)),
            Err(e) => return Err(ApplyError::Refused(Box::new(e))),
        };
        self.repo
            .commit(&prev.state, &new)
            .map_err(|e| ApplyError::Internal(e.to_string()))?;
        let mut detail = crate::publish::summary(&new);
        if kind == "publish" {
            let (added, removed) = crate::publish::listing_changes(&prev.state, &new);
            detail["targets"] = crate::publish::changes_json(&added, &removed);
            let warnings = crate::publish::rollout_warnings(&added, &self.rollouts.list());
            for w in &warnings {
                tracing::warn!(warning = %w, "release not held back by a rollout");
            }
            if !warnings.is_empty() {
                detail["warnings"] = json!(warnings);
            }
        }
        // every root of the change that lists other online keys than the root before it: a
        // chain that rotates them and rotates them back still says so
        let key_changes =
            online_key_changes(&new.roots, prev.state.root_version(), new.root_version());
        let served = Arc::new(Served::build(new, Some(&prev), &self.repo));
        match self.current.write() {
            Ok(mut g) => *g = served,
            Err(p) => *p.into_inner() = served,
        }
        // the change is committed and served: an audit failure cannot undo it, so it is reported
        // (logged, and in the response and the change's own record) rather than turned into a
        // failed publish
        for (root, keys) in key_changes {
            let record = json!({"root": root, "online_keys": keys});
            if let Err(e) = self.audit.append("key-change", actor, record) {
                tracing::error!(error = %e, root, "online key change not recorded in the audit log");
                if let Some(o) = detail.as_object_mut() {
                    o.insert("key_change_audit".into(), json!({"error": e.to_string()}));
                }
            }
        }
        let audit = match self.audit.append(kind, actor, detail.clone()) {
            Ok(hash) => Value::String(hash),
            Err(e) => {
                tracing::error!(error = %e, "committed change not recorded in the audit log");
                json!({"error": e.to_string()})
            }
        };
        if let Some(o) = detail.as_object_mut() {
            o.insert("audit".into(), audit);
        }
        Ok(Some(detail))
    }

    /// Publish `upload` for `actor`. `offered` names what was sent, for the audit record of a
    /// refusal ([`crate::http::offered`]: the body's sha256 and length, never its content).
    pub fn publish(
        &self,
        actor: &str,
        upload: Upload,
        offered: Value,
    ) -> Result<Value, ApplyError> {
        let r = self.apply("publish", actor, |old, now| {
            crate::publish::prepare(old, &upload, &self.keys, &self.life, now, &self.repo).map(Some)
        });
        match &r {
            Ok(_) => inc(&self.metrics.publishes_accepted),
            Err(e) => {
                inc(&self.metrics.publishes_rejected);
                // an authenticated operator's release that did not verify: who tried what
                if let ApplyError::Refused(e) = e {
                    self.refused_publish(actor, e.code(), offered, e.to_string());
                }
            }
        }
        r.map(|v| v.unwrap_or(Value::Null))
    }

    /// Record that the publish API refused `actor`'s request (`publish-refused`): `offered`
    /// says which request ([`crate::http::offered`]) and `code` why; `message` is kept cut, out
    /// of what makes a repeat ([`Audit::refusal`]: a body refused again within the hour is
    /// recorded once, and an actor's refusals at most
    /// [`crate::audit::REFUSALS_PER_ACTOR_PER_HOUR`] an hour). Blocking (a synced write).
    pub fn refused_publish(&self, actor: &str, code: &str, offered: Value, message: String) {
        self.audit
            .refusal("publish-refused", actor, code, offered, Some(message));
    }

    /// Re-sign timestamp (and snapshot) if they expire soon. `Ok(None)`: nothing was due.
    pub fn resign(&self) -> Result<Option<Value>, ApplyError> {
        let r = self.apply("resign", "scheduler", |old, now| {
            crate::publish::resign(old, &self.keys, &self.life, now, &self.repo)
        });
        match &r {
            Ok(Some(_)) => inc(&self.metrics.resigns),
            Ok(None) => {}
            Err(_) => inc(&self.metrics.resign_failures),
        }
        r
    }
}

impl App {
    /// Log, once per role version, each served role that expired (error) and each
    /// offline-signed one near its expiry (warning): `/healthz` says the same.
    pub fn log_expiries(&self, now: i64) {
        let r = crate::repo::ExpiryReport::of(&self.served().state, now);
        let mut logged = self
            .expiry_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (expired, list) in [(true, &r.expired), (false, &r.expiring)] {
            for (role, v, e) in list {
                if !logged.insert((role.clone(), *v, expired)) {
                    continue;
                }
                let w = crate::repo::expiry_warning(role, *v, *e, expired, now);
                if expired {
                    tracing::error!("{w}");
                } else {
                    tracing::warn!("{w}");
                }
            }
        }
    }
}

impl App {
    /// A crash between a commit and its audit record loses the record. At start, compare the
    /// committed state with the last recorded one and record the difference as `recovered`.
    pub fn reconcile_audit(&self) -> Result<(), String> {
        let st = &self.served().state;
        let last = self
            .store
            .audit_last_of(&["init", "publish", "resign", "recovered"])
            .map_err(|e| e.to_string())?;
        let recorded = last
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|r| {
                (
                    r.pointer("/detail/root")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    r.pointer("/detail/timestamp")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        if (st.root_version(), st.timestamp_version()) != recorded {
            let mut detail = crate::publish::summary(st);
            if let Some(o) = detail.as_object_mut() {
                o.insert(
                    "recorded".into(),
                    json!({"root": recorded.0, "timestamp": recorded.1}),
                );
            }
            tracing::warn!(%detail, "committed state has no audit record (crash after commit): recording it");
            self.audit
                .append("recovered", "startup", detail.clone())
                .map_err(|e| e.to_string())?;
            // and the online key changes it made, as a publish records them: each root after
            // the one the last record names (every root version is kept) against the root before
            // it, unless its key-change record made it (the crash came between the records: a
            // publish writes them in root order, before its own)
            let recorded_change = self
                .store
                .audit_last_of(&["key-change"])
                .map_err(|e| e.to_string())?
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|r| r.pointer("/detail/root").and_then(Value::as_u64))
                .filter(|&root| root > recorded.0)
                .unwrap_or(0);
            let changes = online_key_changes(&st.roots, recorded.0, st.root_version());
            for (root, now) in changes.into_iter().filter(|(v, _)| *v > recorded_change) {
                tracing::warn!(%now, root, "the lost change rotated online keys: recording it");
                self.audit
                    .append(
                        "key-change",
                        "startup",
                        json!({"root": root, "online_keys": now, "recovered_at_start": true}),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Each root in `roots` after version `from` up to `to` that lists other timestamp or snapshot
/// key ids than the root before it: its version and those key ids, oldest first. None when
/// `roots` has no version `from` to compare with.
fn online_key_changes(
    roots: &std::collections::BTreeMap<u64, bytes::Bytes>,
    from: u64,
    to: u64,
) -> Vec<(u64, Value)> {
    let keys = |v: u64| roots.get(&v).map_or(Value::Null, |b| online_keys_of(b));
    if !roots.contains_key(&from) {
        return Vec::new();
    }
    let mut before = keys(from);
    let mut changes = Vec::new();
    for v in from.saturating_add(1)..=to {
        let now = keys(v);
        if now != before {
            changes.push((v, now.clone()));
        }
        before = now;
    }
    changes
}

/// Key ids `root` (a root.json's bytes) lists for timestamp and snapshot.
fn online_keys_of(root: &[u8]) -> Value {
    let Ok(v) = serde_json::from_slice::<Value>(root) else {
        return Value::Null;
    };
    json!({
        "timestamp": v.pointer("/signed/roles/timestamp/keyids"),
        "snapshot": v.pointer("/signed/roles/snapshot/keyids"),
    })
}

/// Load the repository and build what is served.
pub fn load_current(repo: &RepoDir) -> Result<Current, crate::repo::RepoError> {
    let st = repo.load()?;
    Ok(Arc::new(RwLock::new(Arc::new(Served::build(
        st, None, repo,
    )))))
}
