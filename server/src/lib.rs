//! # hale-server
//!
//! Publishes signed releases, signs timestamp and snapshot online, serves fleets, records device
//! reports and keeps a hash-chained audit log. Trust decisions are hale-core's; this crate is the
//! shell around them.
//!
//! | module | what it does |
//! |---|---|
//! | [`publish`] | verifies an upload with hale-core, signs snapshot + timestamp, re-checks as a client |
//! | [`repo`] | the repository on disk: content-addressed files + one pointer flipped last |
//! | [`app`] | one change at a time: verify → commit → swap in for readers → audit |
//! | [`http`] | accept loop, read path from memory / disk, the API (warp) |
//! | [`store`] | tokens, device reports, audit records behind the `Store` trait (sled) |
//! | [`identity`] | device records, EST enrollment/renewal, tokens, manifests, revocation, the Device Issuing CA CRL |
//! | [`identity_http`] | routes of the enrollment, device and staff listeners |
//! | [`tls`] | TLS directory, per-trust-domain rustls configs with CRL hot reload, the mTLS accept loop |
//! | [`audit`] | the hash chain and its verification |
//! | [`config`] | defaults, config file, environment |
//!
//! ## Threats
//! - *The server publishes something devices reject* (bricked fleet, or a freeze): every change
//!   runs hale-core's full client workflow before it is committed ([`repo::verify_as_client`]).
//! - *Stolen operator token*: tokens can only offer metadata signed offline; they are stored as
//!   sha256 hashes, never in clear, and printed once.
//! - *Online key theft*: key files are encrypted at rest; those keys sign only snapshot and
//!   timestamp, which cannot add or change targets (root and targets keys stay offline).
//! - *Crash during publish*: write new files first, flip `repo/CURRENT` last ([`repo`]).
//! - *Freeze*: scheduled re-signing before expiry ([`publish::resign`]); `/healthz` fails when the
//!   served timestamp has expired.
//! - *Resource exhaustion*: every request body is bounded (see [`http`]).

pub mod app;
pub mod audit;
pub mod config;
pub mod http;
pub mod identity;
pub mod identity_http;
pub mod linger;
pub mod publish;
pub mod repo;
pub mod rollout;
pub mod store;
pub mod tls;

/// Seconds since the Unix epoch (the one clock read of the server; hale-core takes it as input).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Test hook: abort the process at a named point of a commit when `HALE_CRASH_POINT` names it
/// (crash-safety tests). Without the variable this does nothing.
pub fn crash_point(name: &str) {
    if std::env::var("HALE_CRASH_POINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}
