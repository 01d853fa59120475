//! Enrollment tokens: single-use, expiring, bound to one device serial, stored only as a hash.
//!
//! The secret is 32 random bytes (base64url, prefixed `hale-et-`), shown once to whoever
//! provisions the device. The server stores a [`TokenRecord`] keyed by [`token_hash`]: a database
//! leak gives no usable token. Redeeming marks the record used; the caller must persist that
//! atomically with issuing the certificate (compare-and-swap in sled).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::x509::{check_name, from_unix_secs, unix_secs};
use crate::PkiError;

const PREFIX: &str = "hale-et-";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The secret does not hash to this record (or no record has its hash).
    #[error("unknown enrollment token")]
    Unknown,
    /// The token was already redeemed.
    #[error("enrollment token already used at {redeemed_at} (unix seconds)")]
    Reused { redeemed_at: u64 },
    /// The token is bound to another serial.
    #[error("enrollment token is for serial {bound:?}, not {presented:?}")]
    WrongSerial { bound: String, presented: String },
    /// The token expired.
    #[error("enrollment token expired at {expired_at} (unix seconds)")]
    Expired { expired_at: u64 },
}

/// Making tokens.
#[derive(Debug)]
pub struct Token;

/// What the server stores for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Lower-case hex sha256 of the secret (also the lookup key).
    pub hash: String,
    pub serial: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix seconds of the redemption, once redeemed.
    pub redeemed_at: Option<u64>,
}

impl Token {
    /// A new token for `serial`, valid for `ttl` from `now`: the secret (show once, never store)
    /// and the record (store).
    // the secret is only a string the caller hands on: no `Token` value outlives this call
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        serial: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(Zeroizing<String>, TokenRecord), PkiError> {
        check_name("serial", serial)?;
        if ttl.as_secs() == 0 {
            return Err(PkiError::InvalidValidity { secs: 0 });
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(raw.as_mut()).map_err(|e| PkiError::Randomness(e.to_string()))?;
        let secret = Zeroizing::new(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
        ));
        let record = TokenRecord {
            hash: token_hash(&secret),
            serial: serial.to_string(),
            expires_at: unix_secs(now).saturating_add(ttl.as_secs()),
            redeemed_at: None,
        };
        Ok((secret, record))
    }
}

/// The hash a token is stored and looked up under.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl TokenRecord {
    /// Redeem: the secret must hash to this record, not be used, be for `serial` and not be
    /// expired. Checked in that order; on success the record is marked used at `now`.
    pub fn redeem(
        &mut self,
        secret: &str,
        serial: &str,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        if !constant_time_eq(token_hash(secret).as_bytes(), self.hash.as_bytes()) {
            return Err(TokenError::Unknown);
        }
        if let Some(redeemed_at) = self.redeemed_at {
            return Err(TokenError::Reused { redeemed_at });
        }
        // an expired token is refused as expired whatever it is presented for: it is no
        // enrollment right for any serial, and the refusal says what the holder must do (ask
        // for a new one)
        if unix_secs(now) >= self.expires_at {
            return Err(TokenError::Expired {
                expired_at: self.expires_at,
            });
        }
        if serial != self.serial {
            return Err(TokenError::WrongSerial {
                bound: self.serial.clone(),
                presented: serial.to_string(),
            });
        }
        self.redeemed_at = Some(unix_secs(now));
        Ok(())
    }

    pub fn expires(&self) -> SystemTime {
        from_unix_secs(self.expires_at)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
