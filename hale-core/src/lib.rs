//! # hale-core: the only code in Hale that decides trust
//!
//! Bytes and the current time go in; a verified value or a typed [`Error`] comes out. No clock,
//! file, socket or flash is touched here, and nothing is allocated in the default build: a
//! microcontroller runs exactly the checks the server and the signing tool run.
//!
//! | module | what it decides |
//! |---|---|
//! | [`bundle`] | an offline bundle is well formed (its contents are then verified like a repository) |
//! | [`json`] | a document is well-formed JSON with integers only and unambiguous keys |
//! | [`canonical`] | the OLPC canonical bytes that signatures cover |
//! | [`crypto`] | a key is usable; a signature verifies (ed25519, ECDSA P-256, RSA-PSS with `std`) |
//! | [`metadata`] | a document has the shape of its TUF role; a file matches its length and hashes |
//! | [`verify`] | a threshold of distinct authorised keys signed |
//! | [`trusted`] | the client workflow of TUF spec §5: root chain, timestamp, snapshot, targets, delegations |
//! | [`policy`] | a verified firmware target fits this device (model, revision, version, security counter, bootloader) |
//! | [`rollback`] | a signed rollback authorization lets this device go back to exactly this image |
//! | [`slots`] | which A/B image boots, trial, confirm, revert; when the security counter rises |
//!
//! ## Threats and where each is stopped
//! - *Arbitrary software*: [`verify::verify_threshold`] on every role; target hashes and length in
//!   [`metadata::TargetFile::hasher`].
//! - *Rollback*: [`Error::Rollback`] for timestamp, snapshot and every role the snapshot lists;
//!   [`policy::PolicyError::NotNewer`] and the security counter for firmware.
//! - *Indefinite freeze*: [`Error::Expired`] / [`Error::ExpiredRoot`] against the fixed start time.
//! - *Mix-and-match*: versions and hashes must match what the referencing role names
//!   ([`Error::VersionMismatch`], [`Error::HashMismatch`]).
//! - *Endless data*: [`Error::TooLarge`] as soon as a target passes its listed length; every parser
//!   bounded by [`limits`].
//! - *Fast-forward*: a rotated timestamp/snapshot key drops the stored copy
//!   ([`trusted::TrustedSet::load_trusted_timestamp`]).
//! - *Key compromise below threshold*: distinct key material only; duplicates count once.
//! - *Path traversal*: [`metadata::check_role_name`] / [`metadata::check_target_path`].
//! - *Diamond delegation*: delegated roles are verified against the delegator that led to them,
//!   never cached by name ([`trusted::TrustedSet::verify_delegated`]).
//!
//! ## Features
//! - default: `no_std`, no heap.
//! - `alloc`: sorts large objects when canonicalising instead of selecting (faster on big catalogs).
//! - `std`: `alloc`, RSA-PSS keys, `std::error::Error`, and ECDSA P-256 verified with ring (faster
//!   on hosts; the device build uses `p256`, and `tests/p256_backends.rs` holds the two equal).
#![no_std]
// Errors are built only when they are returned: `ok_or_else(|| Error::…)`, not `ok_or(Error::…)`.
// An eager error (up to 136 bytes) is constructed on the success path too; lazily, the Cortex-M4
// firmware is ~0.6 KB smaller. Clippy calls these closures unnecessary.
#![allow(clippy::unnecessary_lazy_evaluations)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod bundle;
pub mod canonical;
pub mod crypto;
mod error;
pub mod json;
pub mod limits;
pub mod metadata;
pub mod policy;
pub mod report;
pub mod rollback;
pub mod slots;
pub mod time;
pub mod trusted;
pub mod verify;

pub use error::{Date, Error, Name, Role, RoleName};
pub use policy::{Device, Firmware, PolicyError, Version};
pub use time::UnixTime;
#[cfg(feature = "alloc")]
pub use trusted::HeapBuffer;
pub use trusted::{
    Found, Freshness, RoleBuffer, RoleSource, Seal, SearchError, Storage, TrustedSet, Update,
};
