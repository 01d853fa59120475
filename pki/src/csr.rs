//! Certificate signing requests: what we take from them (the public key, after checking the
//! requester holds its private key) and how a device or server makes one.
//!
//! A CSR is untrusted input. Everything in it besides the key — subject, requested extensions
//! (`CA:TRUE`, `serverAuth`, other names) — is ignored: certificates are built from our profiles
//! ([`crate::profile`]).

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SignatureAlgorithm};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::request::CertReq;
use zeroize::Zeroizing;

use crate::x509::{OID_ECDSA_SHA256, OID_EC_PUBLIC_KEY, OID_ED25519, OID_SECP256R1};
use crate::PkiError;

/// Key algorithms devices, people and servers may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256: the default (secure elements).
    P256,
    Ed25519,
}

/// The public key of a verified CSR: the only thing a certificate takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedKey {
    algorithm: KeyAlgorithm,
    /// Uncompressed SEC1 point (P-256) or the 32 key bytes (ed25519).
    raw: Vec<u8>,
}

impl RequestedKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Parse a PEM CSR and verify its self-signature (proof of possession).
    pub fn from_csr_pem(csr_pem: &str) -> Result<RequestedKey, PkiError> {
        let req = CertReq::from_pem(csr_pem.as_bytes())
            .map_err(|e| PkiError::CsrMalformed(e.to_string()))?;
        Self::from_req(&req)
    }

    /// As [`from_csr_pem`](Self::from_csr_pem) for a DER CSR (EST sends base64 DER).
    pub fn from_csr_der(csr_der: &[u8]) -> Result<RequestedKey, PkiError> {
        use x509_cert::der::Decode;
        let req = CertReq::from_der(csr_der).map_err(|e| PkiError::CsrMalformed(e.to_string()))?;
        Self::from_req(&req)
    }

    fn from_req(req: &CertReq) -> Result<RequestedKey, PkiError> {
        let spki = &req.info.public_key;
        let key_oid = spki.algorithm.oid;
        let sig_oid = req.algorithm.oid;
        // the signature covers the DER of CertificationRequestInfo; the der crate decodes DER
        // strictly, so re-encoding gives back the signed bytes
        let signed = req
            .info
            .to_der()
            .map_err(|e| PkiError::CsrMalformed(e.to_string()))?;
        let sig = req
            .signature
            .as_bytes()
            .ok_or_else(|| PkiError::CsrMalformed("signature is not whole bytes".into()))?;
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| PkiError::CsrMalformed("public key is not whole bytes".into()))?;
        if key_oid == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<x509_cert::der::oid::ObjectIdentifier>().ok());
            if curve != Some(OID_SECP256R1) {
                return Err(PkiError::UnsupportedKeyAlgorithm {
                    oid: format!("{key_oid} with curve {curve:?}"),
                });
            }
            if sig_oid != OID_ECDSA_SHA256 || req.algorithm.parameters.is_some() {
                return Err(PkiError::UnsupportedSignatureAlgorithm {
                    oid: sig_oid.to_string(),
                });
            }
            use p256::ecdsa::signature::Verifier;
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
                .map_err(|_| PkiError::CsrMalformed("invalid P-256 public key".into()))?;
            let sig =
                p256::ecdsa::Signature::from_der(sig).map_err(|_| PkiError::CsrSignatureInvalid)?;
            vk.verify(&signed, &sig)
                .map_err(|_| PkiError::CsrSignatureInvalid)?;
            Ok(RequestedKey {
                algorithm: KeyAlgorithm::P256,
                // normalised: a compressed point in the CSR becomes uncompressed in the cert
                raw: vk.to_encoded_point(false).as_bytes().to_vec(),
            })
        } else if key_oid == OID_ED25519 {
            if sig_oid != OID_ED25519 {
                return Err(PkiError::UnsupportedSignatureAlgorithm {
                    oid: sig_oid.to_string(),
                });
            }
            let pk: [u8; 32] = key_bytes
                .try_into()
                .map_err(|_| PkiError::CsrMalformed("ed25519 key is not 32 bytes".into()))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk)
                .map_err(|_| PkiError::CsrMalformed("invalid ed25519 public key".into()))?;
            let sig = ed25519_dalek::Signature::from_slice(sig)
                .map_err(|_| PkiError::CsrSignatureInvalid)?;
            vk.verify_strict(&signed, &sig)
                .map_err(|_| PkiError::CsrSignatureInvalid)?;
            Ok(RequestedKey {
                algorithm: KeyAlgorithm::Ed25519,
                raw: pk.to_vec(),
            })
        } else {
            Err(PkiError::UnsupportedKeyAlgorithm {
                oid: key_oid.to_string(),
            })
        }
    }
}

impl PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.algorithm {
            KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A fresh private key and a CSR for it, as a device (or a server, or a technician's tool) makes
/// them. The CSR's subject is only a hint: the CA decides the certificate's names.
pub struct KeyAndCsr {
    /// PKCS#8 PEM private key.
    pub private_key_pem: Zeroizing<String>,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("private_key_pem", &"[secret]")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

pub fn generate_key_and_csr(alg: KeyAlgorithm, common_name: &str) -> Result<KeyAndCsr, PkiError> {
    let kp = KeyPair::generate_for(match alg {
        KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&kp)?;
    Ok(KeyAndCsr {
        private_key_pem: Zeroizing::new(kp.serialize_pem()),
        csr_pem: csr.pem()?,
    })
}

/// What a server needs to know about a CSR besides its key: the name it asks for (a hint, or the
/// device id in EST) and whether it asks to be a CA (refused outright: such a request is hostile,
/// even though the profile would ignore it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrSummary {
    /// The verified public key (proof of possession checked).
    pub key: RequestedKey,
    /// The first subject common name, if any.
    pub common_name: Option<String>,
    /// The request carries an extensionRequest with basicConstraints `CA:TRUE`.
    pub requests_ca: bool,
}

/// The OID of the PKCS#9 extensionRequest attribute.
const OID_EXTENSION_REQUEST: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

impl CsrSummary {
    /// Parse a PEM CSR, verify its self-signature, and read its CN and requested CA flag.
    pub fn from_pem(csr_pem: &str) -> Result<CsrSummary, PkiError> {
        let req = CertReq::from_pem(csr_pem.as_bytes())
            .map_err(|e| PkiError::CsrMalformed(e.to_string()))?;
        Self::from_req(&req)
    }

    /// As [`from_pem`](Self::from_pem) for a DER CSR.
    pub fn from_der(csr_der: &[u8]) -> Result<CsrSummary, PkiError> {
        use x509_cert::der::Decode;
        let req = CertReq::from_der(csr_der).map_err(|e| PkiError::CsrMalformed(e.to_string()))?;
        Self::from_req(&req)
    }

    fn from_req(req: &CertReq) -> Result<CsrSummary, PkiError> {
        let key = RequestedKey::from_req(req)?;
        let common_name = crate::x509::common_name(&req.info.subject);
        let mut requests_ca = false;
        for attr in req.info.attributes.iter() {
            if attr.oid != OID_EXTENSION_REQUEST {
                continue;
            }
            for value in attr.values.iter() {
                let exts: x509_cert::request::ExtensionReq = value
                    .decode_as()
                    .map_err(|e| PkiError::CsrMalformed(format!("extensionRequest: {e}")))?;
                for ext in exts.0.iter() {
                    if ext.extn_id != crate::x509::OID_BASIC_CONSTRAINTS {
                        continue;
                    }
                    use x509_cert::der::Decode;
                    let bc =
                        x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                            .map_err(|e| {
                                PkiError::CsrMalformed(format!("basicConstraints: {e}"))
                            })?;
                    requests_ca |= bc.ca;
                }
            }
        }
        Ok(CsrSummary {
            key,
            common_name,
            requests_ca,
        })
    }
}
