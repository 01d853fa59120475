//! Shared fixtures: a hierarchy and certificates issued from it, valid around the real clock
//! (TLS verification reads the system clock).
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use hale_pki::{generate_key_and_csr, Hierarchy, KeyAlgorithm, KeyAndCsr};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};
use x509_cert::Certificate;

pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);
pub const HOUR: Duration = Duration::from_secs(3600);

pub fn hierarchy() -> Hierarchy {
    Hierarchy::create(10 * YEAR, SystemTime::now() - DAY).unwrap()
}

pub fn key(alg: KeyAlgorithm) -> KeyAndCsr {
    generate_key_and_csr(alg, "whatever the requester likes").unwrap()
}

/// What a certificate says, parsed with x509-cert.
#[derive(Debug)]
pub struct Parsed {
    pub cert: Certificate,
    pub is_ca: Option<bool>,
    pub path_len: Option<u8>,
    pub ekus: Vec<String>,
    pub sans: Vec<String>,
    pub critical: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: Vec<u8>,
}

pub fn parse(der: &[u8]) -> Parsed {
    let cert = Certificate::from_der(der).unwrap();
    let tbs = &cert.tbs_certificate;
    let exts = tbs.extensions.clone().unwrap_or_default();
    let mut p = Parsed {
        is_ca: None,
        path_len: None,
        ekus: vec![],
        sans: vec![],
        critical: vec![],
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        serial: tbs.serial_number.as_bytes().to_vec(),
        cert: cert.clone(),
    };
    for e in &exts {
        if e.critical {
            p.critical.push(e.extn_id.to_string());
        }
        match e.extn_id.to_string().as_str() {
            "2.5.29.19" => {
                let bc = BasicConstraints::from_der(e.extn_value.as_bytes()).unwrap();
                p.is_ca = Some(bc.ca);
                p.path_len = bc.path_len_constraint;
            }
            "2.5.29.37" => {
                let eku = ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).unwrap();
                p.ekus = eku.0.iter().map(|o| o.to_string()).collect();
            }
            "2.5.29.17" => {
                let san = SubjectAltName::from_der(e.extn_value.as_bytes()).unwrap();
                p.sans = san
                    .0
                    .iter()
                    .map(|g| match g {
                        GeneralName::UniformResourceIdentifier(u) => format!("URI:{}", u.as_str()),
                        GeneralName::DnsName(d) => format!("DNS:{}", d.as_str()),
                        GeneralName::IpAddress(ip) => format!("IP:{}", hex::encode(ip.as_bytes())),
                        other => format!("{other:?}"),
                    })
                    .collect();
            }
            _ => {}
        }
    }
    p
}

pub const CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
pub const SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
