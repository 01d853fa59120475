//! Small shared pieces: random serials, time conversion, name checks and x509-cert parsing helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::SerialNumber;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::PkiError;

pub(crate) const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub(crate) const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
pub(crate) const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
pub(crate) const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
pub(crate) const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
pub(crate) const OID_BASIC_CONSTRAINTS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.5.29.19");
pub(crate) const OID_KP_CLIENT_AUTH: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const OID_SECP256R1: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const OID_ECDSA_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
pub(crate) const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A fresh positive 16-byte serial from the OS random source (never rcgen's key-derived default,
/// which gives a re-issue for the same key the same serial).
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| PkiError::Randomness(e.to_string()))?;
    // positive, and no leading zero byte: a 16-byte minimal DER INTEGER
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `t` truncated to whole seconds, as X.509 stores it.
pub(crate) fn to_offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = i64::try_from(unix_secs(t)).map_err(|_| PkiError::InvalidValidity { secs: 0 })?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::InvalidValidity { secs: 0 })
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (what the TUF commands print).
pub fn utc(t: SystemTime) -> String {
    let secs = i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    let mut out = [0u8; 20];
    hale_core::time::format_expires(secs, &mut out)
        .map_or_else(|| format!("{secs} (unix seconds)"), str::to_string)
}

/// `now` .. `now + validity`, refusing zero and unrepresentable validities.
pub(crate) fn validity_window(
    now: SystemTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let secs = validity.as_secs();
    if secs == 0 {
        return Err(PkiError::InvalidValidity { secs });
    }
    let end = now
        .checked_add(validity)
        .ok_or(PkiError::InvalidValidity { secs })?;
    let too_long = |_| PkiError::InvalidValidity { secs };
    let (a, b) = (to_offset(now)?, to_offset(end).map_err(too_long)?);
    // X.509 GeneralizedTime stops at 9999
    if b.year() > 9999 {
        return Err(PkiError::InvalidValidity { secs });
    }
    Ok((a, b))
}

/// Names that go into subjects and URIs: `[A-Za-z0-9._-]{1,64}`, not starting with `.` or `-`.
/// The one rule for device ids, serials, models and staff names wherever they are taken: the
/// CA issues no certificate for a name outside it, so the server and the agent refuse such a
/// name with it rather than with a rule of their own.
pub fn check_name(field: &'static str, value: &str) -> Result<(), PkiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            field,
            value: value.to_string(),
        })
    }
}

pub(crate) fn parse_certificate(der: &[u8]) -> Result<Certificate, PkiError> {
    Certificate::from_der(der).map_err(|e| PkiError::CertificateMalformed(e.to_string()))
}

/// The first common name of a distinguished name (UTF8String or PrintableString).
pub(crate) fn common_name(name: &Name) -> Option<String> {
    attribute(name, OID_CN)
}

/// The first value of attribute `oid` in a distinguished name (UTF8String or PrintableString).
pub(crate) fn attribute(name: &Name, oid: ObjectIdentifier) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid)
        .and_then(|atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}

/// sha256 of the DER SubjectPublicKeyInfo of a certificate: what the manufacturing manifest
/// records for each device.
pub fn spki_sha256_of_certificate(cert_der: &[u8]) -> Result<[u8; 32], PkiError> {
    let cert = parse_certificate(cert_der)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
    Ok(Sha256::digest(&spki).into())
}

/// The DER bytes of a PEM block with the given label.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> Result<Vec<u8>, PkiError> {
    let (found, der) = x509_cert::der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
    if found != label {
        return Err(PkiError::CertificateMalformed(format!(
            "PEM label {found:?}, expected {label:?}"
        )));
    }
    Ok(der)
}

pub(crate) fn der_to_pem(der: &[u8], label: &'static str) -> Result<String, PkiError> {
    x509_cert::der::pem::encode_string(label, x509_cert::der::pem::LineEnding::LF, der)
        .map_err(|e| PkiError::CertificateMalformed(e.to_string()))
}
