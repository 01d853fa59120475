//! Who is at the other end of a verified mTLS connection.
//!
//! [`PeerIdentity::from_der`] is meant for the end-entity certificate that rustls has already
//! verified against the listener's anchor ([`crate::tls`]). It re-checks the profile anyway: the
//! identity URI must agree with the issuing CA (a device URI from the Technician CA is refused),
//! the certificate must be `CA:FALSE` with clientAuth, and the subject CN must equal the name in
//! the URI.

use std::fmt;
use std::time::SystemTime;

use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};

use crate::ca::CaRole;
use crate::profile::{
    DEVICE_URI_PREFIX, FACTORY_URI_PREFIX, OPERATOR_URI_PREFIX, TECHNICIAN_URI_PREFIX,
};
use crate::x509::{
    self, attribute, check_name, common_name, OID_BASIC_CONSTRAINTS, OID_EKU, OID_KP_CLIENT_AUTH,
    OID_OU, OID_SAN, OID_SERIAL_NUMBER,
};
use crate::PkiError;

/// What kind of peer a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// An operational device certificate (Device Issuing CA).
    Device,
    /// A factory certificate (Manufacturing CA): may only enroll.
    Factory,
    /// A field technician (Technician CA).
    Technician,
    /// An operator (Technician CA, operator role).
    Operator,
}

impl PeerKind {
    /// The CA that issues this kind.
    pub fn issuing_ca(self) -> CaRole {
        match self {
            PeerKind::Device => CaRole::DeviceIssuing,
            PeerKind::Factory => CaRole::Manufacturing,
            PeerKind::Technician | PeerKind::Operator => CaRole::Technician,
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerKind::Device => "device",
            PeerKind::Factory => "factory",
            PeerKind::Technician => "technician",
            PeerKind::Operator => "operator",
        })
    }
}

/// The identity in a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub kind: PeerKind,
    /// Device id (device), hardware serial (factory), or person (technician, operator).
    pub name: String,
    /// Device model (device and factory certificates).
    pub model: Option<String>,
    /// Hardware serial (device and factory certificates).
    pub hardware_serial: Option<String>,
    /// Lower-case hex of the certificate serial number (what revocation takes).
    pub certificate_serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// sha256 of the subject public key info (compare with the manufacturing manifest).
    pub spki_sha256: [u8; 32],
}

fn not_ours(reason: impl Into<String>) -> PkiError {
    PkiError::NotOurProfile {
        reason: reason.into(),
    }
}

impl PeerIdentity {
    /// Read the identity of a (verified) client certificate.
    pub fn from_der(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
        let cert = x509::parse_certificate(cert_der)?;
        let tbs = &cert.tbs_certificate;
        let exts = tbs.extensions.as_deref().unwrap_or(&[]);
        let ext = |oid| exts.iter().find(|e| e.extn_id == oid);

        // CA:FALSE (absent basic constraints is also an end entity)
        if let Some(e) = ext(OID_BASIC_CONSTRAINTS) {
            let bc = BasicConstraints::from_der(e.extn_value.as_bytes())
                .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
            if bc.ca {
                return Err(not_ours("a CA certificate is not a peer"));
            }
        }
        let eku = ext(OID_EKU).ok_or_else(|| not_ours("no extended key usage"))?;
        let eku = ExtendedKeyUsage::from_der(eku.extn_value.as_bytes())
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
        if !eku.0.contains(&OID_KP_CLIENT_AUTH) {
            return Err(not_ours("no clientAuth extended key usage"));
        }

        let san = ext(OID_SAN).ok_or_else(|| not_ours("no subject alternative name"))?;
        let san = SubjectAltName::from_der(san.extn_value.as_bytes())
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
        let mut uris = san.0.iter().filter_map(|g| match g {
            GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("urn:hale:") => {
                Some(u.as_str())
            }
            _ => None,
        });
        let uri = uris
            .next()
            .ok_or_else(|| not_ours("no urn:hale: identity"))?;
        if uris.next().is_some() {
            return Err(not_ours("more than one urn:hale: identity"));
        }
        let (kind, name) = [
            (PeerKind::Device, DEVICE_URI_PREFIX),
            (PeerKind::Factory, FACTORY_URI_PREFIX),
            (PeerKind::Technician, TECHNICIAN_URI_PREFIX),
            (PeerKind::Operator, OPERATOR_URI_PREFIX),
        ]
        .into_iter()
        .find_map(|(k, p)| uri.strip_prefix(p).map(|n| (k, n)))
        .ok_or_else(|| not_ours(format!("unknown identity {uri:?}")))?;
        check_name("name", name)?;

        let issuer = common_name(&tbs.issuer).unwrap_or_default();
        if CaRole::from_common_name(&issuer) != Some(kind.issuing_ca()) {
            return Err(PkiError::IssuerMismatch {
                uri: uri.to_string(),
                issuer,
            });
        }
        if common_name(&tbs.subject).as_deref() != Some(name) {
            return Err(not_ours("subject CN differs from the identity URI"));
        }
        let (model, hardware_serial) = match kind {
            PeerKind::Device | PeerKind::Factory => (
                attribute(&tbs.subject, OID_OU),
                attribute(&tbs.subject, OID_SERIAL_NUMBER),
            ),
            PeerKind::Technician | PeerKind::Operator => (None, None),
        };
        Ok(PeerIdentity {
            kind,
            name: name.to_string(),
            model,
            hardware_serial,
            certificate_serial: hex::encode(tbs.serial_number.as_bytes()),
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
            spki_sha256: x509::spki_sha256_of_certificate(cert_der)?,
        })
    }

    /// Is the certificate valid at `now`? webpki's rule, the one the handshake applied:
    /// `not_before <= now <= not_after`. Every request a certificate authorizes asks again, so a
    /// kept-alive connection does not outlive its certificate.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// The device id, if this is an operational device certificate.
    pub fn device_id(&self) -> Option<&str> {
        (self.kind == PeerKind::Device).then_some(self.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, SanType};

    use super::*;
    use crate::{generate_key_and_csr, Hierarchy, KeyAlgorithm, RequestedKey};

    /// A certificate our profiles never make: a device URI signed by the Technician CA (as a
    /// compromised or misused Technician CA would).
    #[test]
    fn device_uri_from_the_technician_ca_is_refused() {
        let now = SystemTime::now();
        let h = Hierarchy::create(Duration::from_secs(86_400), now).unwrap();
        let k = generate_key_and_csr(KeyAlgorithm::P256, "x").unwrap();
        let key = RequestedKey::from_csr_pem(&k.csr_pem).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "pump-1");
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.subject_alt_names = vec![SanType::URI("urn:hale:device:pump-1".try_into().unwrap())];
        let cert = p.signed_by(&key, &h.technician.issuer()).unwrap();
        let err = PeerIdentity::from_der(cert.der()).unwrap_err();
        assert!(
            matches!(&err, PkiError::IssuerMismatch { uri, issuer }
                if uri == "urn:hale:device:pump-1" && issuer == "Hale Technician CA"),
            "{err}"
        );
    }

    /// Valid from `not_before` to `not_after`, both included (webpki's rule), and at no other time.
    #[test]
    fn a_certificate_is_valid_from_its_start_to_its_end_both_included() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let end = start + Duration::from_secs(3600);
        let peer = PeerIdentity {
            kind: PeerKind::Device,
            name: "pump-1".into(),
            model: None,
            hardware_serial: None,
            certificate_serial: "01".into(),
            not_before: start,
            not_after: end,
            spki_sha256: [0; 32],
        };
        let s = Duration::from_secs(1);
        assert!(!peer.valid_at(start - s));
        assert!(peer.valid_at(start));
        assert!(peer.valid_at(end));
        assert!(!peer.valid_at(end + s));
    }
}
