//! Certificate profiles. A certificate is built from the profile of its kind; from the CSR only
//! the public key is taken ([`RequestedKey`]). Every certificate: random serial, `CA:FALSE`,
//! key usage digitalSignature, one EKU, a CRL distribution point equal to the issuing CA's CRL
//! URL, subject `O=Hale, CN=<name>`, and one identity URI in the SAN:
//!
//! | kind        | CA               | CN           | SAN URI                         | EKU        | extra subject       |
//! |-------------|------------------|--------------|---------------------------------|------------|---------------------|
//! | device      | Device Issuing   | device id    | `urn:hale:device:<id>`          | clientAuth | serialNumber, OU=model |
//! | factory     | Manufacturing    | hw serial    | `urn:hale:factory:<serial>`     | clientAuth | serialNumber, OU=model |
//! | technician  | Technician       | person       | `urn:hale:technician:<name>`    | clientAuth | OU=technician       |
//! | operator    | Technician       | person       | `urn:hale:operator:<name>`      | clientAuth | OU=operator         |
//! | server      | Server           | first name   | DNS / IP names                  | serverAuth |                     |
//!
//! No custom extensions are used; if one is ever added it must be non-critical (a critical
//! unknown extension makes every verifier refuse the certificate).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use crate::ca::{Ca, CaRole, ORGANIZATION};
use crate::csr::RequestedKey;
use crate::x509::{self, check_name, random_serial, validity_window};
use crate::PkiError;

/// URI prefixes of the identities in SANs.
pub const DEVICE_URI_PREFIX: &str = "urn:hale:device:";
pub const FACTORY_URI_PREFIX: &str = "urn:hale:factory:";
pub const TECHNICIAN_URI_PREFIX: &str = "urn:hale:technician:";
pub const OPERATOR_URI_PREFIX: &str = "urn:hale:operator:";

/// The longest a technician or operator certificate may live: one shift.
pub const MAX_STAFF_VALIDITY: Duration = Duration::from_secs(12 * 3600);

/// Certificates are valid from this long before `now` (clock skew between CA and verifier).
pub const BACKDATE: Duration = Duration::from_secs(300);

/// People who authenticate with certificates from the Technician CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaffRole {
    /// Field technician: service operations on devices, rollback requests.
    Technician,
    /// Operator: administration endpoints (fleet, revocation, rollouts).
    Operator,
}

impl StaffRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Technician => "technician",
            StaffRole::Operator => "operator",
        }
    }
    fn uri_prefix(self) -> &'static str {
        match self {
            StaffRole::Technician => TECHNICIAN_URI_PREFIX,
            StaffRole::Operator => OPERATOR_URI_PREFIX,
        }
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// Lower-case hex of the serial number (what revocation takes).
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// sha256 of the subject public key info (the manufacturing manifest's key hash).
    pub spki_sha256: [u8; 32],
}

fn base_params(
    ca: &Ca,
    common_name: &str,
    subject_extra: &[(DnType, &str)],
    validity: Duration,
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let start = now.checked_sub(BACKDATE).unwrap_or(now);
    let (not_before, _) = validity_window(start, validity)?;
    let (_, mut not_after) = validity_window(now, validity)?;
    // never past the issuer's own end: a chain is valid only while every certificate in it is
    // (the certificate says when it really ends: `IssuedCertificate::not_after`)
    let ca_end = ca.not_after()?;
    if ca_end <= now {
        return Err(PkiError::IssuerExpired {
            ca: ca.role(),
            ca_end: x509::utc(ca_end),
        });
    }
    not_after = not_after.min(x509::to_offset(ca_end)?);
    let mut p = CertificateParams::default();
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    for (ty, v) in subject_extra {
        dn.push(ty.clone(), *v);
    }
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![ca.crl_url().to_string()],
    }];
    Ok(p)
}

fn uri(s: String) -> Result<SanType, PkiError> {
    Ok(SanType::URI(s.try_into()?))
}

fn sign(
    ca: &Ca,
    params: &CertificateParams,
    key: &RequestedKey,
) -> Result<IssuedCertificate, PkiError> {
    let cert = params.signed_by(key, &ca.issuer())?;
    let der = cert.der().clone();
    let serial_hex = params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default();
    Ok(IssuedCertificate {
        pem: cert.pem(),
        spki_sha256: x509::spki_sha256_of_certificate(&der)?,
        der,
        serial_hex,
        not_before: x509::from_unix_secs(params.not_before.unix_timestamp().max(0) as u64),
        not_after: x509::from_unix_secs(params.not_after.unix_timestamp().max(0) as u64),
    })
}

/// OU = model, serialNumber = hardware serial (as IEEE 802.1AR DevIDs carry it).
fn device_subject<'a>(model: &'a str, serial: &'a str) -> [(DnType, &'a str); 2] {
    [
        (DnType::OrganizationalUnitName, model),
        (DnType::CustomDnType(vec![2, 5, 4, 5]), serial),
    ]
}

impl Ca {
    /// An operational device certificate (Device Issuing CA) for the key in `csr_pem`:
    /// CN = `device_id`, SAN URI `urn:hale:device:<device_id>`, OU = model, serialNumber =
    /// hardware serial, `CA:FALSE`, clientAuth, valid from `now` for `validity`.
    pub fn issue_device_certificate(
        &self,
        csr_pem: &str,
        device_id: &str,
        model: &str,
        serial: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.require(CaRole::DeviceIssuing)?;
        check_name("device id", device_id)?;
        check_name("model", model)?;
        check_name("serial", serial)?;
        let key = RequestedKey::from_csr_pem(csr_pem)?;
        let mut p = base_params(
            self,
            device_id,
            &device_subject(model, serial),
            validity,
            now,
        )?;
        p.subject_alt_names = vec![uri(format!("{DEVICE_URI_PREFIX}{device_id}"))?];
        sign(self, &p, &key)
    }

    /// A factory certificate (Manufacturing CA), as a factory station issues it: CN = hardware
    /// serial, SAN URI `urn:hale:factory:<serial>`, OU = model, clientAuth. Accepted only by the
    /// enrollment listener, and only for serials in the manufacturing manifest.
    pub fn issue_factory_certificate(
        &self,
        csr_pem: &str,
        serial: &str,
        model: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.require(CaRole::Manufacturing)?;
        check_name("serial", serial)?;
        check_name("model", model)?;
        let key = RequestedKey::from_csr_pem(csr_pem)?;
        let mut p = base_params(self, serial, &device_subject(model, serial), validity, now)?;
        p.subject_alt_names = vec![uri(format!("{FACTORY_URI_PREFIX}{serial}"))?];
        sign(self, &p, &key)
    }

    /// A technician's or operator's certificate (Technician CA): CN = name, OU = role, SAN URI
    /// `urn:hale:<role>:<name>`, clientAuth, at most [`MAX_STAFF_VALIDITY`] (one shift).
    pub fn issue_staff_certificate(
        &self,
        csr_pem: &str,
        name: &str,
        role: StaffRole,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.require(CaRole::Technician)?;
        check_name("name", name)?;
        if validity > MAX_STAFF_VALIDITY {
            return Err(PkiError::ValidityTooLong {
                requested_secs: validity.as_secs(),
                max_secs: MAX_STAFF_VALIDITY.as_secs(),
            });
        }
        let key = RequestedKey::from_csr_pem(csr_pem)?;
        let ou = [(DnType::OrganizationalUnitName, role.as_str())];
        let mut p = base_params(self, name, &ou, validity, now)?;
        p.subject_alt_names = vec![uri(format!("{}{name}", role.uri_prefix()))?];
        sign(self, &p, &key)
    }

    /// A TLS server certificate (Server CA): serverAuth, the given DNS names and IP addresses as
    /// SANs, CN = the first name.
    pub fn issue_server_certificate(
        &self,
        csr_pem: &str,
        dns_names: &[&str],
        ip_addresses: &[IpAddr],
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, PkiError> {
        self.require(CaRole::Server)?;
        let permitted = self.permitted_dns()?;
        let mut sans = Vec::new();
        for d in dns_names {
            match rustls_pki_types::ServerName::try_from(*d) {
                Ok(rustls_pki_types::ServerName::DnsName(_)) => {}
                _ => return Err(PkiError::InvalidServerName(d.to_string())),
            }
            // RFC 5280 §4.2.1.10: a DNS constraint permits the name and every name under it
            let name = d.to_ascii_lowercase();
            let under = |c: &String| {
                let c = c.to_ascii_lowercase();
                name == c || name.ends_with(&format!(".{c}"))
            };
            if !permitted.is_empty() && !permitted.iter().any(under) {
                return Err(PkiError::NameNotPermitted {
                    name: d.to_string(),
                    permitted,
                });
            }
            sans.push(SanType::DnsName(
                d.to_ascii_lowercase()
                    .try_into()
                    .map_err(|_| PkiError::InvalidServerName(d.to_string()))?,
            ));
        }
        sans.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let first = match (dns_names.first(), ip_addresses.first()) {
            (Some(d), _) => d.to_ascii_lowercase(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return Err(PkiError::InvalidServerName(String::new())),
        };
        let key = RequestedKey::from_csr_pem(csr_pem)?;
        let mut p = base_params(self, &first, &[], validity, now)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.subject_alt_names = sans;
        sign(self, &p, &key)
    }
}
