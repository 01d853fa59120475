//! # hale-repo: writing TUF repositories
//!
//! The write side shared by `hale-sign` (offline) and `hale-server` (online timestamp and
//! snapshot): keys encrypted at rest ([`keys`]), canonical signing ([`sign`]), metadata bodies
//! ([`build`]) and the on-disk layout ([`layout`]). Nothing here decides trust: every file this
//! crate writes is meant to be checked with `hale-core` before anyone relies on it.

pub mod build;
pub mod bundle;
pub mod keys;
pub mod layout;
pub mod sign;

pub use keys::{KeyKind, Passphrase, SigningKey};

/// Errors of the write side.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    /// hale-core refused what was written (boxed: trust errors carry their names inline).
    #[error(transparent)]
    Trust(Box<hale_core::Error>),
}

impl From<hale_core::Error> for RepoError {
    fn from(e: hale_core::Error) -> Self {
        RepoError::Trust(Box::new(e))
    }
}
