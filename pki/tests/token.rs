//! Enrollment tokens: single use, expiring, bound to a serial, stored as a hash.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::time::{Duration, SystemTime};

use hale_pki::token::token_hash;
use hale_pki::{Token, TokenError};

const TTL: Duration = Duration::from_secs(3600);

#[test]
fn token_is_stored_only_as_its_hash_and_redeems_once() {
    let now = SystemTime::now();
    let (secret, mut rec) = Token::new("SN0001", TTL, now).unwrap();
    assert!(secret.starts_with("hale-et-"));
    let stored = serde_json::to_string(&rec).unwrap();
    assert!(!stored.contains(secret.as_str()));
    assert!(!stored.contains(&secret["hale-et-".len()..]));
    assert_eq!(rec.hash, token_hash(&secret));
    rec.redeem(&secret, "SN0001", now + Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        rec.redeem(&secret, "SN0001", now + Duration::from_secs(20)),
        Err(TokenError::Reused {
            redeemed_at: hale_secs(now) + 10
        })
    );
}

fn hale_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn token_for_another_serial_is_refused_and_not_spent() {
    let now = SystemTime::now();
    let (secret, mut rec) = Token::new("SN0001", TTL, now).unwrap();
    assert_eq!(
        rec.redeem(&secret, "SN0002", now),
        Err(TokenError::WrongSerial {
            bound: "SN0001".into(),
            presented: "SN0002".into()
        })
    );
    assert_eq!(rec.redeemed_at, None);
    rec.redeem(&secret, "SN0001", now).unwrap();
}

#[test]
fn expired_token_is_refused() {
    let now = SystemTime::now();
    let (secret, mut rec) = Token::new("SN0001", TTL, now).unwrap();
    let expired = Err(TokenError::Expired {
        expired_at: hale_secs(now) + 3600,
    });
    assert_eq!(rec.redeem(&secret, "SN0001", now + TTL), expired);
    // presented for another serial, it is refused as expired too (not as another serial's)
    assert_eq!(rec.redeem(&secret, "SN0002", now + TTL), expired);
    assert_eq!(rec.redeemed_at, None);
}

#[test]
fn unknown_token_is_refused() {
    let now = SystemTime::now();
    let (_secret, mut rec) = Token::new("SN0001", TTL, now).unwrap();
    let (other, _) = Token::new("SN0001", TTL, now).unwrap();
    assert_eq!(rec.redeem(&other, "SN0001", now), Err(TokenError::Unknown));
    assert_eq!(rec.redeem("", "SN0001", now), Err(TokenError::Unknown));
}

#[test]
fn tokens_are_distinct() {
    let now = SystemTime::now();
    let (a, _) = Token::new("SN1", TTL, now).unwrap();
    let (b, _) = Token::new("SN1", TTL, now).unwrap();
    assert_ne!(*a, *b);
    assert!(matches!(
        Token::new("bad serial", TTL, now),
        Err(hale_pki::PkiError::InvalidName {
            field: "serial",
            ..
        })
    ));
}
