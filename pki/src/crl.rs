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
