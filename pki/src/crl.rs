//! CRLs, one per CA, for interop and for the handshake (the device record is the immediate
//! revocation; a CRL is how the TLS layer learns it).
//!
//! Each CRL carries an issuing distribution point equal to the CRL distribution point of the
//! certificates its CA issued ([`Ca::crl_url`]). webpki considers a CRL authoritative for a
//! certificate only if one of the certificate's distribution-point URIs equals one of the CRL's
//! IDP URIs; with a mismatch, no CRL covers the certificate, the status is "unknown" and — since
//! listeners deny unknown status — every device of that CA is locked out. Issuing CAs' CRLs are
//! scoped to end-entity certificates, the root's to CA certificates.

use std::time::{Duration, SystemTime};

pub use rcgen::RevocationReason;
use rcgen::{
    CertificateRevocationListParams, CrlDistributionPoint, CrlIssuingDistributionPoint, CrlScope,
    KeyIdMethod, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateRevocationListDer;

use crate::ca::{Ca, CaRole};
use crate::x509::{self, to_offset};
use crate::PkiError;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Hex of the certificate serial ([`crate::IssuedCertificate::serial_hex`],
    /// [`crate::PeerIdentity::certificate_serial`]).
    pub serial_hex: String,
    pub revoked_at: SystemTime,
    pub reason: Option<RevocationReason>,
}

/// A signed CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    pub der: CertificateRevocationListDer<'static>,
    pub pem: String,
    pub this_update: SystemTime,
    pub next_update: SystemTime,
}

impl Ca {
    /// Sign this CA's CRL: valid from `now` to `now + next_update_in`, number `crl_number`
    /// (monotonic per CA: the caller keeps the counter). The listener refuses every certificate of
    /// this CA once `next_update` has passed, so reissue well before it.
    pub fn crl(
        &self,
        revoked: &[RevokedCertificate],
        crl_number: u64,
        now: SystemTime,
        next_update_in: Duration,
    ) -> Result<Crl, PkiError> {
        let (this_update, next_update) = x509::validity_window(now, next_update_in)?;
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = hex::decode(&r.serial_hex).map_err(|_| PkiError::InvalidName {
                field: "certificate serial",
                value: r.serial_hex.clone(),
            })?;
            if serial.is_empty() || serial.len() > 20 {
                return Err(PkiError::InvalidName {
                    field: "certificate serial",
                    value: r.serial_hex.clone(),
                });
            }
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: to_offset(r.revoked_at)?,
                reason_code: r.reason,
                invalidity_date: None,
            });
        }
        let mut number = crl_number.to_be_bytes().to_vec();
        // minimal positive INTEGER content
        while number.len() > 1 && number[0] == 0 && number[1] < 0x80 {
            number.remove(0);
        }
        if number[0] >= 0x80 {
            number.insert(0, 0);
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number),
            issuing_distribution_point: Some(CrlIssuingDistributionPoint {
                distribution_point: CrlDistributionPoint {
                    uris: vec![self.crl_url().to_string()],
                },
                scope: Some(if self.role() == CaRole::Root {
                    CrlScope::CaCertsOnly
                } else {
                    CrlScope::UserCertsOnly
                }),
            }),
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer())?;
        Ok(Crl {
            pem: crl.pem()?,
            der: crl.der().clone(),
            this_update: x509::from_unix_secs(this_update.unix_timestamp().max(0) as u64),
            next_update: x509::from_unix_secs(next_update.unix_timestamp().max(0) as u64),
        })
    }

    /// As [`crl`](Self::crl) with a CRL whose issuing distribution point is `idp_uri` instead of
    /// this CA's URL. Only for tests that show what a mismatched IDP does.
    #[doc(hidden)]
    pub fn crl_with_idp_for_tests(
        &self,
        idp_uri: &str,
        now: SystemTime,
        next_update_in: Duration,
    ) -> Result<Crl, PkiError> {
        let (this_update, next_update) = x509::validity_window(now, next_update_in)?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: Some(CrlIssuingDistributionPoint {
                distribution_point: CrlDistributionPoint {
                    uris: vec![idp_uri.to_string()],
                },
                scope: Some(CrlScope::UserCertsOnly),
            }),
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer())?;
        Ok(Crl {
            pem: crl.pem()?,
            der: crl.der().clone(),
            this_update: now,
            next_update: now + next_update_in,
        })
    }
}

/// A CRL whose signature verified with its CA ([`verify_crl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The CRL number (0 when absent; at most 8 bytes are accepted).
    pub number: u64,
    pub this_update: SystemTime,
    pub next_update: SystemTime,
    /// Hex serials listed.
    pub revoked: Vec<String>,
}

const OID_CRL_NUMBER: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.20");

/// Check a CRL before a listener trusts it: issued by the CA in `ca_cert_der` (issuer name and an
/// ECDSA P-256 / SHA-256 signature by its key), current at `now` (`this_update <= now <
/// next_update`). A CRL that fails any of these would lock every certificate of that CA out (or
/// let a forged "nothing revoked" list in), so it is refused before it reaches rustls.
pub fn verify_crl(
    crl_der: &[u8],
    ca_cert_der: &[u8],
    now: SystemTime,
) -> Result<VerifiedCrl, PkiError> {
    let v = verify_crl_signature(crl_der, ca_cert_der)?;
    let bad = |m: &str| PkiError::CertificateMalformed(format!("CRL: {m}"));
    if now < v.this_update {
        return Err(bad("not yet valid (thisUpdate in the future)"));
    }
    if now >= v.next_update {
        return Err(bad("expired (nextUpdate has passed)"));
    }
    Ok(v)
}

/// [`verify_crl`] without its time checks: issued by the CA in `ca_cert_der`, its number and
/// list read. For a CRL already trusted that may have expired since (a listener fails closed on
/// an expired one by itself); anything new goes through [`verify_crl`].
pub fn verify_crl_signature(crl_der: &[u8], ca_cert_der: &[u8]) -> Result<VerifiedCrl, PkiError> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use x509_cert::der::{Decode, Encode};
    let bad = |m: String| PkiError::CertificateMalformed(format!("CRL: {m}"));
    let ca = x509::parse_certificate(ca_cert_der)?;
    let crl = x509_cert::crl::CertificateList::from_der(crl_der).map_err(|e| bad(e.to_string()))?;
    let tbs = &crl.tbs_cert_list;
    if tbs.issuer != ca.tbs_certificate.subject {
        return Err(bad("issued by another CA".into()));
    }
    if crl.signature_algorithm.oid != x509::OID_ECDSA_SHA256 {
        return Err(PkiError::UnsupportedSignatureAlgorithm {
            oid: crl.signature_algorithm.oid.to_string(),
        });
    }
    let spki = ca
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| bad(format!("CA key: {e}")))?;
    let signed = tbs.to_der().map_err(|e| bad(e.to_string()))?;
    let sig = crl
        .signature
        .as_bytes()
        .and_then(|b| p256::ecdsa::Signature::from_der(b).ok())
        .ok_or_else(|| bad("signature is not an ECDSA signature".into()))?;
    vk.verify(&signed, &sig)
        .map_err(|_| bad("signature does not verify with the CA key".into()))?;
    let this_update = tbs.this_update.to_system_time();
    let next_update = tbs
        .next_update
        .map(|t| t.to_system_time())
        .ok_or_else(|| bad("no nextUpdate".into()))?;
    let mut number = 0u64;
    for ext in tbs.crl_extensions.as_deref().unwrap_or(&[]) {
        if ext.extn_id == OID_CRL_NUMBER {
            let n = x509_cert::der::asn1::Int::from_der(ext.extn_value.as_bytes())
                .map_err(|e| bad(format!("CRL number: {e}")))?;
            let bytes = n.as_bytes();
            let bytes = bytes.strip_prefix(&[0]).unwrap_or(bytes);
            if bytes.len() > 8 {
                return Err(bad("CRL number longer than 8 bytes".into()));
            }
            number = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        }
    }
    let revoked = tbs
        .revoked_certificates
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|r| hex::encode(r.serial_number.as_bytes()))
        .collect();
    Ok(VerifiedCrl {
        number,
        this_update,
        next_update,
        revoked,
    })
}
