//! The agent's identity client (`device_agent::identity`) against a small in-test EST server over
//! real rustls (the enrollment listener's configuration from hale-pki): factory enrollment,
//! renewal at 2/3 of the lifetime, re-enrollment after expiry, token refusal, and a misissued
//! certificate that must not be stored. Time is a parameter: `ensure(now)`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use device_agent::identity::{Action, DeviceSecret, Identity, IdentityError};
use hale_pki::tls::TrustDomain;
use hale_pki::{Hierarchy, KeyAlgorithm, PeerIdentity, PeerKind};

const SECRET: &[u8] = b"device secret of the simulated secure element";
const DAY: u64 = 86_400;

/// How the test server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Issue,
    /// Issue, but for another device id.
    IssueForOther,
    /// Refuse renewals as hale-server does a superseded certificate (its answer was lost).
    RevokedForRenewal,
    /// Refuse renewals as hale-server does a certificate younger than its minimum age.
    TooEarlyForRenewal,
    /// Refuse enrollments with the factory certificate as hale-server does while the current
    /// certificate is younger than the factory minimum age.
    TooEarlyForFactory,
}

struct Est {
    url: String,
    server_ca_pem: String,
    hierarchy: Arc<Hierarchy>,
    /// (path, how the client authenticated) per request
    log: Arc<Mutex<Vec<(String, String)>>>,
    mode: Arc<Mutex<Mode>>,
    tls: Arc<hale_pki::tls::ListenerTls>,
    /// the listener's configuration, replaced when a CRL changes
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    /// the listener's certificate chain and key (for a TLS 1.2 configuration)
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key_pem: String,
}

impl Est {
    /// Load CRLs listing these factory and operational certificates (hex serials), as
    /// hale-server does when it supersedes a certificate: new handshakes with them end in a
    /// `certificate_revoked` alert.
    fn revoke(&self, factory: &[&str], operational: &[&str], crl_number: u64) {
        let crls = self.crls(factory, operational, crl_number);
        *self.config.lock().unwrap() = self.tls.server_config(&crls).unwrap();
    }

    /// As [`revoke`](Self::revoke), on a listener that speaks TLS 1.2 only (the enrollment
    /// listener's client verification otherwise): there the server judges the client
    /// certificate during the handshake, so its alert ends the handshake itself.
    fn revoke_over_tls12(&self, factory: &[&str], operational: &[&str], crl_number: u64) {
        let crls = self.crls(factory, operational, crl_number);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.hierarchy.manufacturing.certificate_der().clone())
            .unwrap();
        roots
            .add(self.hierarchy.device_issuing.certificate_der().clone())
            .unwrap();
        let provider = hale_pki::tls::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration()
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.server_chain.clone(),
                hale_pki::tls::private_key_from_pem(&self.server_key_pem).unwrap(),
            )
            .unwrap();
        *self.config.lock().unwrap() = Arc::new(config);
    }

    /// CRLs of the Manufacturing and Device Issuing CAs listing these serials.
    fn crls(
        &self,
        factory: &[&str],
        operational: &[&str],
        crl_number: u64,
    ) -> [rustls::pki_types::CertificateRevocationListDer<'static>; 2] {
        let now = SystemTime::now();
        let crl = |ca: &hale_pki::Ca, serials: &[&str]| {
            let revoked: Vec<_> = serials
                .iter()
                .map(|s| hale_pki::crl::RevokedCertificate {
                    serial_hex: s.to_string(),
                    revoked_at: now,
                    reason: Some(hale_pki::crl::RevocationReason::Superseded),
                })
                .collect();
            ca.crl(&revoked, crl_number, now, Duration::from_secs(DAY))
                .unwrap()
                .der
        };
        [
            crl(&self.hierarchy.manufacturing, factory),
            crl(&self.hierarchy.device_issuing, operational),
        ]
    }
}

/// A fresh test EST server, and an empty directory for the device's identity files (`dir`,
/// inside the returned temporary directory, which must outlive the test's use of it).
fn est_and_identity_dir() -> (Est, tempfile::TempDir, std::path::PathBuf) {
    let est = start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("identity");
    (est, tmp, dir)
}

fn start() -> Est {
    std::env::set_var("HALE_AGENT_INSECURE_TEST_SCRYPT_LOG_N", "10");
    let now = SystemTime::now();
    let h = Arc::new(Hierarchy::create(Duration::from_secs(365 * DAY), now).unwrap());
    let kc = hale_pki::generate_key_and_csr(KeyAlgorithm::P256, "localhost").unwrap();
    let server = h
        .server
        .issue_server_certificate(
            &kc.csr_pem,
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(DAY),
            now,
        )
        .unwrap();
    let server_chain = vec![server.der.clone(), h.server.certificate_der().clone()];
    let tls = hale_pki::tls::ListenerTls::new(
        TrustDomain::Enrollment,
        &[
            h.manufacturing.certificate_der().clone(),
            h.device_issuing.certificate_der().clone(),
        ],
        server_chain.clone(),
        hale_pki::tls::private_key_from_pem(&kc.private_key_pem).unwrap(),
    )
    .unwrap();
    let crls = [
        h.manufacturing
            .crl(&[], 1, now, Duration::from_secs(DAY))
            .unwrap()
            .der,
        h.device_issuing
            .crl(&[], 1, now, Duration::from_secs(DAY))
            .unwrap()
            .der,
    ];
    let config = Arc::new(Mutex::new(tls.server_config(&crls).unwrap()));
    let tls = Arc::new(tls);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(Mutex::new(Mode::Issue));
    let (h2, log2, mode2, config2) = (h.clone(), log.clone(), mode.clone(), config.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config2.lock().unwrap().clone();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            // a refused handshake ends this connection (rustls has written its alert)
            let _ = serve_one(&mut tls, &h2, &log2, *mode2.lock().unwrap());
            linger(&mut tls.sock);
        }
    });
    Est {
        url,
        server_ca_pem: h.server.certificate_pem().unwrap(),
        hierarchy: h,
        log,
        mode,
        tls,
        config,
        server_chain,
        server_key_pem: kc.private_key_pem.to_string(),
    }
}

/// Close as hale-server does (`server/src/linger.rs`): end our side, then read what the client
/// still sends until it closes, so that no reset throws away the answer (or the alert) waiting
/// in its receive buffer.
fn linger(sock: &mut std::net::TcpStream) {
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0; 4096];
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
}

fn serve_one(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
    h: &Hierarchy,
    log: &Mutex<Vec<(String, String)>>,
    mode: Mode,
) -> std::io::Result<()> {
    let mut r = BufReader::new(&mut *tls);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let csr = String::from_utf8(body).unwrap();
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .map(|c| PeerIdentity::from_der(&c).unwrap());
    let auth = match (headers.get("authorization"), &peer) {
        (Some(a), _) => a.clone(),
        (None, Some(p)) => format!("{}:{}:{}", p.kind, p.name, p.certificate_serial),
        (None, None) => "none".into(),
    };
    log.lock().unwrap().push((path.clone(), auth.clone()));
    // `Retry-After` with the 429 (as hale-server sends it)
    let mut extra = String::new();
    let (status, ctype, out) = match (path.as_str(), auth.as_str(), &peer) {
        ("/.well-known/est/simplereenroll", _, Some(p)) if mode == Mode::RevokedForRenewal => (
            "403 Forbidden",
            "application/json",
            format!(
                r#"{{"error":"certificate_revoked","message":"certificate {} is revoked"}}"#,
                p.certificate_serial
            ),
        ),
        ("/.well-known/est/simplereenroll", _, Some(_)) if mode == Mode::TooEarlyForRenewal => {
            extra = "Retry-After: 600\r\n".into();
            (
                "429 Too Many Requests",
                "application/json",
                r#"{"error":"renewal_too_early","message":"the certificate is too young to be replaced"}"#
                    .to_string(),
            )
        }
        (
            "/.well-known/est/simpleenroll",
            _,
            Some(PeerIdentity {
                kind: PeerKind::Factory,
                ..
            }),
        ) if mode == Mode::TooEarlyForFactory => {
            extra = "Retry-After: 600\r\n".into();
            (
                "429 Too Many Requests",
                "application/json",
                r#"{"error":"renewal_too_early","message":"the certificate is too young to be replaced"}"#
                    .to_string(),
            )
        }
        (_, "Bearer used-token", _) => (
            "401 Unauthorized",
            "application/json",
            r#"{"error":"token_used","message":"token already redeemed"}"#.to_string(),
        ),
        ("/.well-known/est/simpleenroll", "Bearer good-token", _)
        | (
            "/.well-known/est/simpleenroll",
            _,
            Some(PeerIdentity {
                kind: PeerKind::Factory,
                ..
            }),
        )
        | (
            "/.well-known/est/simplereenroll",
            _,
            Some(PeerIdentity {
                kind: PeerKind::Device,
                ..
            }),
        ) => {
            let summary = hale_pki::csr::CsrSummary::from_pem(&csr).unwrap();
            let mut cn = summary.common_name.unwrap();
            if mode == Mode::IssueForOther {
                cn = "SOMEONE-ELSE".into();
            }
            let cert = h
                .device_issuing
                .issue_device_certificate(
                    &csr,
                    &cn,
                    "pump-x",
                    &cn,
                    Duration::from_secs(30 * DAY),
                    SystemTime::now(),
                )
                .unwrap();
            (
                "200 OK",
                "application/pem-certificate-chain",
                format!(
                    "{}{}",
                    cert.pem,
                    h.device_issuing.certificate_pem().unwrap()
                ),
            )
        }
        _ => (
            "401 Unauthorized",
            "application/json",
            r#"{"error":"client_certificate_required","message":"no usable credential"}"#.into(),
        ),
    };
    write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{out}",
        out.len()
    )?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            m.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    m
}

/// A device made at the factory: key + CSR, certificate from the Manufacturing CA installed.
fn factory_device(est: &Est, dir: &Path, serial: &str) -> Identity {
    let id = Identity::new(dir, DeviceSecret::from_bytes(SECRET));
    let csr = id.factory_csr(serial, KeyAlgorithm::P256).unwrap();
    let cert = est
        .hierarchy
        .manufacturing
        .issue_factory_certificate(
            &csr,
            serial,
            "pump-x",
            Duration::from_secs(3650 * DAY),
            SystemTime::now(),
        )
        .unwrap();
    id.install_factory_certificate(&cert.pem).unwrap();
    id.configure(&est.url, &est.server_ca_pem).unwrap();
    id
}

/// A factory device ([`factory_device`]) that enrolled with its factory certificate, and the
/// serial of the operational certificate it got.
fn enrolled(est: &Est, dir: &Path, serial: &str) -> (Identity, String) {
    let id = factory_device(est, dir, serial);
    let Action::Enrolled { serial_hex } = id.ensure(SystemTime::now()).unwrap() else {
        panic!("{serial} did not enroll")
    };
    (id, serial_hex)
}

/// Unix seconds of `t`.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The identity files `before` with the renewal wait until `until` kept beside them.
fn with_wait(before: &BTreeMap<String, Vec<u8>>, until: SystemTime) -> BTreeMap<String, Vec<u8>> {
    let mut waiting = before.clone();
    waiting.insert(
        "renew-not-before".into(),
        secs(until).to_string().into_bytes(),
    );
    waiting
}

/// The serial of the operational certificate `id` holds.
fn serial(id: &Identity) -> String {
    id.operational()
        .unwrap()
        .unwrap()
        .identity
        .certificate_serial
}

/// When renewal of the operational certificate `id` holds falls due (2/3 of its lifetime).
fn renewal_due(id: &Identity) -> SystemTime {
    let op = id.operational().unwrap().unwrap();
    let (nb, na) = (op.identity.not_before, op.identity.not_after);
    nb + na.duration_since(nb).unwrap() / 3 * 2
}

#[test]
fn enrolls_with_the_factory_certificate_renews_at_two_thirds_and_reenrolls_after_expiry() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = factory_device(&est, &dir, "SN-100");
    let now = SystemTime::now();

    let Action::Enrolled { serial_hex: first } = id.ensure(now).unwrap() else {
        panic!()
    };
    let op = id.operational().unwrap().unwrap();
    assert_eq!(
        (op.identity.kind, op.identity.name.as_str()),
        (PeerKind::Device, "SN-100")
    );
    assert_eq!(op.identity.certificate_serial, first);
    assert_eq!(op.chain[1], *est.hierarchy.device_issuing.certificate_der());
    {
        let log = est.log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, "/.well-known/est/simpleenroll");
        assert!(log[0].1.starts_with("factory:SN-100:"), "{:?}", log[0]);
    }
    // no key is stored in the clear
    for (name, bytes) in tree(&dir) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{name}"
        );
    }
    // the sealed keys are the device's alone, from the moment they exist
    for name in ["factory.key", "operational.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // the wrong device secret opens nothing
    let wrong = Identity::new(
        &dir,
        DeviceSecret::from_bytes(b"not the device secret at all"),
    );
    let stored = tree(&dir);
    let e = wrong.operational().unwrap_err();
    assert!(matches!(e, IdentityError::Pki(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "key file: wrong passphrase or damaged key file"
    );
    assert_eq!(tree(&dir), stored, "nothing written");

    // current: no request
    let (nb, na) = (op.identity.not_before, op.identity.not_after);
    let life = na.duration_since(nb).unwrap();
    assert_eq!(id.ensure(nb + life / 2).unwrap(), Action::Current);
    assert_eq!(est.log.lock().unwrap().len(), 1);

    // 2/3 through: simplereenroll, authenticated by the current certificate
    let Action::Renewed { serial_hex: second } = id.ensure(nb + life / 3 * 2).unwrap() else {
        panic!()
    };
    assert_ne!(second, first);
    {
        let log = est.log.lock().unwrap();
        assert_eq!(log[1].0, "/.well-known/est/simplereenroll");
        assert_eq!(log[1].1, format!("device:SN-100:{first}"));
    }
    let renewed = id.operational().unwrap().unwrap();
    assert_eq!(renewed.identity.certificate_serial, second);
    assert_ne!(
        renewed.identity.spki_sha256, op.identity.spki_sha256,
        "a new key at each renewal"
    );

    // back from storage past expiry: simpleenroll with the factory certificate
    let Action::ReEnrolled { serial_hex: third } = id
        .ensure(renewed.identity.not_after + Duration::from_secs(1))
        .unwrap()
    else {
        panic!()
    };
    let log = est.log.lock().unwrap();
    assert_eq!(log[2].0, "/.well-known/est/simpleenroll");
    assert!(log[2].1.starts_with("factory:SN-100:"), "{:?}", log[2]);
    assert_eq!(serial(&id), third);
}

#[test]
fn token_refusal_shows_the_servers_error_and_changes_nothing() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = Identity::new(&dir, DeviceSecret::from_bytes(SECRET));
    id.factory_csr("SN-200", KeyAlgorithm::P256).unwrap();
    id.configure(&est.url, &est.server_ca_pem).unwrap();
    let before = tree(&dir);
    let err = id.enroll_with_token("used-token").unwrap_err();
    match &err {
        IdentityError::Refused {
            url,
            status,
            code,
            message,
            retry_after,
        } => {
            assert_eq!(url, &format!("{}/.well-known/est/simpleenroll", est.url));
            assert_eq!(*retry_after, None);
            assert_eq!(
                (*status, code.as_str(), message.as_str()),
                (401, "token_used", "token already redeemed")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("{}/.well-known/est/simpleenroll: refused (HTTP 401 token_used): token already redeemed", est.url)
    );
    assert_eq!(tree(&dir), before);
    assert!(id.operational().unwrap().is_none());

    // a good token enrolls (no client certificate on the connection)
    assert!(matches!(
        id.enroll_with_token("good-token").unwrap(),
        Action::Enrolled { .. }
    ));
    assert_eq!(
        est.log.lock().unwrap().last().unwrap().1,
        "Bearer good-token"
    );
}

#[test]
fn a_certificate_for_another_device_is_not_stored() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = factory_device(&est, &dir, "SN-300");
    *est.mode.lock().unwrap() = Mode::IssueForOther;
    let before = tree(&dir);
    let err = id.ensure(SystemTime::now()).unwrap_err();
    match &err {
        IdentityError::BadResponse { reason, .. } => assert_eq!(
            reason,
            "a device certificate for \"SOMEONE-ELSE\", expected a device certificate for \"SN-300\""
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(tree(&dir), before);
}

#[test]
fn a_server_not_under_the_server_ca_is_refused_at_the_handshake() {
    let est = start();
    let other = start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("identity");
    let id = factory_device(&est, &dir, "SN-400");
    // trust the other hierarchy's Server CA: the handshake must fail, nothing stored
    id.configure(&est.url, &other.server_ca_pem).unwrap();
    let before = tree(&dir);
    let err = id.ensure(SystemTime::now()).unwrap_err();
    match &err {
        IdentityError::Transport { message, .. } => {
            // same CA name, another key: the signature check fails
            assert!(
                message.ends_with("invalid peer certificate: BadSignature"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tree(&dir), before);
    assert!(
        est.log.lock().unwrap().is_empty(),
        "no request reached the server"
    );
}

#[test]
fn a_factory_certificate_for_another_key_is_not_installed() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = Identity::new(&dir, DeviceSecret::from_bytes(SECRET));
    id.factory_csr("SN-500", KeyAlgorithm::Ed25519).unwrap();
    let stranger = hale_pki::generate_key_and_csr(KeyAlgorithm::P256, "SN-500").unwrap();
    let cert = est
        .hierarchy
        .manufacturing
        .issue_factory_certificate(
            &stranger.csr_pem,
            "SN-500",
            "pump-x",
            Duration::from_secs(DAY),
            SystemTime::now(),
        )
        .unwrap();
    let before = tree(&dir);
    let err = id.install_factory_certificate(&cert.pem).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the factory certificate is not for this device's factory key"
    );
    assert_eq!(tree(&dir), before);
}

#[test]
fn no_identity_change_while_another_process_makes_one() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = factory_device(&est, &dir, "SN-300");
    let Action::Enrolled { .. } = id.ensure(SystemTime::now()).unwrap() else {
        panic!()
    };
    let due = renewal_due(&id);
    let factory_pem = String::from_utf8(std::fs::read(dir.join("factory.crt")).unwrap()).unwrap();

    // another process is changing the identity (a flock belongs to the open file, so a second
    // open of the lock file in this process contends like another process would)
    let other = std::fs::File::open(dir.join(".lock")).unwrap();
    fs2::FileExt::try_lock_exclusive(&other).unwrap();
    let before = tree(&dir);
    let busy = format!(
        "{}: another process is changing the device identity; nothing changed, try again",
        dir.display()
    );
    let refused = |r: Result<(), IdentityError>| match r {
        Err(e @ IdentityError::Busy(_)) => assert_eq!(e.to_string(), busy),
        other => panic!("expected Busy, got {other:?}"),
    };
    // the running pump's renewal: failed for now, the current certificate still in use
    assert_eq!(
        id.ensure(due).unwrap(),
        Action::RenewalFailed {
            reason: busy.clone()
        }
    );
    refused(id.enroll_with_token("t-1").map(drop));
    refused(id.configure(&est.url, &est.server_ca_pem));
    refused(id.install_factory_certificate(&factory_pem));
    refused(id.factory_csr("SN-300", KeyAlgorithm::P256).map(drop));
    assert_eq!(tree(&dir), before, "nothing changed");
    assert_eq!(est.log.lock().unwrap().len(), 1, "no request was sent");

    // released: the renewal goes through
    drop(other);
    let Action::Renewed { serial_hex } = id.ensure(due).unwrap() else {
        panic!()
    };
    assert_eq!(serial(&id), serial_hex);
}

#[test]
fn a_renewal_the_server_finds_too_early_is_not_retried_with_the_factory_certificate() {
    // a 429 refuses the timing, not the certificate (a clock ahead of the server's): the
    // current certificate stays, and the factory path (with its shorter minimum age) is not
    // a way around the renewal's
    let (est, _tmp, dir) = est_and_identity_dir();
    let (id, first) = enrolled(&est, &dir, "SN-429");
    let before = tree(&dir);
    *est.mode.lock().unwrap() = Mode::TooEarlyForRenewal;
    let due = renewal_due(&id);
    let too_early = Action::RenewalFailed {
        reason: format!(
            "{}/.well-known/est/simplereenroll: refused (HTTP 429 renewal_too_early): the certificate is too young to be replaced (asked to wait 600 s)",
            est.url
        ),
    };
    assert_eq!(id.ensure(due).unwrap(), too_early);
    let log = est.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].0, "/.well-known/est/simplereenroll");
    // nothing changed but the wait, kept beside the identity
    let until = due + Duration::from_secs(600);
    let waiting = with_wait(&before, until);
    assert_eq!(tree(&dir), waiting);
    assert_eq!(serial(&id), first);

    // the polls within the wait the server asked for ask nothing, the pump started again too
    let restarted = Identity::new(&dir, DeviceSecret::from_bytes(SECRET));
    for (id, later) in [(&id, 1), (&restarted, 1), (&id, 599)] {
        assert_eq!(
            id.ensure(due + Duration::from_secs(later)).unwrap(),
            Action::RenewalWaiting { until }
        );
    }
    assert_eq!(est.log.lock().unwrap().len(), 2, "no request while waiting");
    assert_eq!(tree(&dir), waiting);
    // a kept wait longer than the server may ask for (a day: the clock was set back, or the
    // file is not what this pump wrote) is void: asked at once, and the server's answer kept
    let far = due + Duration::from_secs(2 * 86_400);
    std::fs::write(dir.join("renew-not-before"), secs(far).to_string()).unwrap();
    let restarted = Identity::new(&dir, DeviceSecret::from_bytes(SECRET));
    let later = due + Duration::from_secs(1);
    assert_eq!(restarted.ensure(later).unwrap(), too_early.clone());
    assert_eq!(est.log.lock().unwrap().len(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.join("renew-not-before")).unwrap(),
        secs(later + Duration::from_secs(600)).to_string()
    );
    drop(restarted);
    // the first poll after it asks again; once the server agrees, the renewal goes through
    assert_eq!(id.ensure(until).unwrap(), too_early);
    assert_eq!(est.log.lock().unwrap().len(), 4);
    *est.mode.lock().unwrap() = Mode::Issue;
    assert_eq!(
        id.ensure(until + Duration::from_secs(1)).unwrap(),
        Action::RenewalWaiting {
            until: until + Duration::from_secs(600)
        }
    );
    let Action::Renewed { serial_hex } = id.ensure(until + Duration::from_secs(600)).unwrap()
    else {
        panic!()
    };
    assert_eq!(serial(&id), serial_hex);
    assert_ne!(serial_hex, first);
    assert!(
        !tree(&dir).contains_key("renew-not-before"),
        "the wait is over"
    );
}

/// The device listener refused a certificate the pump holds young (an operator revoked it): the
/// factory certificate enrolls the device again at once, with no renewal asked first (the server
/// would refuse the certificate there too). A refusal of a certificate the pump no longer holds
/// asks nothing; a wait the server asks for is kept as a renewal's is.
#[test]
fn a_young_certificate_the_server_refused_is_replaced_with_the_factory_certificate() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let (id, first) = enrolled(&est, &dir, "SN-REVOKED");
    let now = SystemTime::now();
    assert_eq!(
        id.ensure(now).unwrap(),
        Action::Current,
        "young by its lifetime"
    );
    let requests = || est.log.lock().unwrap().clone();
    let refusal = "https://pumps.example:8443/2.root.json: Network Error: received fatal alert: CertificateRevoked";
    let before = tree(&dir);

    // the refused requests were made with another certificate (replaced since): nothing asked
    assert_eq!(
        id.replace_refused("0badc0de", refusal, now).unwrap(),
        Action::Current
    );
    assert_eq!((requests().len(), tree(&dir)), (1, before.clone()));

    // the server asks for a wait: nothing changes but the wait, and nothing is asked before it
    *est.mode.lock().unwrap() = Mode::TooEarlyForFactory;
    assert_eq!(
        id.replace_refused(&first, refusal, now).unwrap(),
        Action::ReplacementFailed {
            reason: format!(
                "{refusal}; with the factory certificate: {}/.well-known/est/simpleenroll: refused (HTTP 429 renewal_too_early): the certificate is too young to be replaced (asked to wait 600 s)",
                est.url
            )
        }
    );
    let log = requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].0, "/.well-known/est/simpleenroll");
    assert!(log[1].1.starts_with("factory:SN-REVOKED:"), "{:?}", log[1]);
    let until = now + Duration::from_secs(600);
    let waiting = with_wait(&before, until);
    assert_eq!(tree(&dir), waiting);
    assert_eq!(
        id.replace_refused(&first, refusal, now + Duration::from_secs(599))
            .unwrap(),
        Action::RenewalWaiting { until }
    );
    assert_eq!((requests().len(), tree(&dir)), (2, waiting));

    // once the wait is over and the server agrees: a new certificate, the wait forgotten
    *est.mode.lock().unwrap() = Mode::Issue;
    let Action::ReplacedRefused {
        serial_hex,
        refusal: said,
    } = id.replace_refused(&first, refusal, until).unwrap()
    else {
        panic!()
    };
    assert_eq!(said, refusal);
    assert_ne!(serial_hex, first);
    assert_eq!(serial(&id), serial_hex);
    let log = requests();
    assert_eq!(log.len(), 3, "no renewal asked: {log:?}");
    assert_eq!(log[2].0, "/.well-known/est/simpleenroll");
    assert!(log[2].1.starts_with("factory:SN-REVOKED:"), "{:?}", log[2]);
    assert!(!tree(&dir).contains_key("renew-not-before"));
    // the refusal of the certificate replaced, met again (a request still under way): nothing
    assert_eq!(
        id.replace_refused(&first, refusal, until).unwrap(),
        Action::Current
    );
    assert_eq!(requests().len(), 3);
}

/// A server on the test EST server's TLS configuration answering each request (one per
/// connection) with `403` and the JSON error its path names, `/<error>` or `/targets/<error>`,
/// as hale-server's device listener refuses on a kept connection; its `https://` base URL.
fn tls_refusing_server(est: &Est) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let config = est.config.lock().unwrap().clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut r = BufReader::new(&mut tls);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut header = String::new();
            while r.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or_default();
            let error = path.rsplit('/').next().unwrap_or_default().to_string();
            let body =
                serde_json::json!({"error": error, "message": format!("{error} here")}).to_string();
            let _ = write!(
                tls,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            linger(&mut tls.sock);
        }
    });
    base
}

/// The device listener's refusal of the client certificate on a kept connection (`403
/// certificate_revoked`, or `certificate_expired` by the server's clock), over TLS, is
/// remembered for the pump to enroll again, once, whether a metadata or a target request met
/// it; its other refusals are not.
#[test]
fn a_refusal_of_the_client_certificate_over_tls_is_remembered_once() {
    use device_agent::host::HttpTransport;
    use device_agent::Transport;
    let est = start();
    let base = tls_refusing_server(&est);
    let ca = device_agent::identity::parse_chain(&est.server_ca_pem)
        .unwrap()
        .remove(0);
    let tls = device_agent::identity::client_config(ca, None).unwrap();
    let mut t = HttpTransport::with_tls(&base, &format!("{base}/targets"), tls);
    let refused = |error: &str| format!("refused (HTTP 403 {error}): {error} here");
    for error in [
        "device_decommissioned",
        "device_quarantined",
        "rollout_pending",
        "client_certificate_required",
    ] {
        let e = t.fetch_metadata(error, &mut [0u8; 256]).unwrap_err();
        assert_eq!(e.to_string(), format!("{base}/{error}: {}", refused(error)));
        let e = t.fetch_target(error, 0, &mut [0u8; 16]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{base}/targets/{error}: {}", refused(error))
        );
        assert_eq!(t.take_certificate_refusal(), None, "{error}");
    }
    for error in ["certificate_revoked", "certificate_expired"] {
        let e = t.fetch_metadata(error, &mut [0u8; 256]).unwrap_err();
        assert_eq!(e.to_string(), format!("{base}/{error}: {}", refused(error)));
        assert_eq!(t.take_certificate_refusal(), Some(e.to_string()));
        assert_eq!(t.take_certificate_refusal(), None, "taken once");
        let e = t.fetch_target(error, 0, &mut [0u8; 16]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{base}/targets/{error}: {}", refused(error))
        );
        assert_eq!(t.take_certificate_refusal(), Some(e.to_string()));
    }
}

/// Anyone in the network path can answer the ClientHello with a plaintext alert: an alert that
/// ends the handshake is not taken as the server's refusal of the certificate (the pump would
/// otherwise enroll again at every poll on a stranger's word).
#[test]
fn an_alert_before_the_handshake_is_done_is_not_a_refusal_of_the_certificate() {
    use device_agent::host::HttpTransport;
    use device_agent::Transport;
    let est = start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut hello = [0u8; 5];
            let _ = conn.read_exact(&mut hello);
            // a TLS record: alert (21), TLS 1.2, 2 bytes: fatal (2), certificate_revoked (44)
            let _ = conn.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x2c]);
            linger(&mut conn);
        }
    });
    let ca = device_agent::identity::parse_chain(&est.server_ca_pem)
        .unwrap()
        .remove(0);
    let tls = device_agent::identity::client_config(ca, None).unwrap();
    let mut t = HttpTransport::with_tls(&base, &format!("{base}/targets"), tls);
    let e = t.fetch_metadata("2.root.json", &mut [0u8; 64]).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("received fatal alert: CertificateRevoked"),
        "{e}"
    );
    let e = t.fetch_target("fw.bin", 0, &mut [0u8; 64]).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("received fatal alert: CertificateRevoked"),
        "{e}"
    );
    assert_eq!(t.take_certificate_refusal(), None);
}

/// A device enrolled by token has no factory certificate: a refusal of its certificate is said,
/// nothing is asked and nothing changes (an operator's token enrolls it again).
#[test]
fn a_refused_certificate_without_a_factory_certificate_stays() {
    let (est, _tmp, dir) = est_and_identity_dir();
    let id = Identity::new(&dir, DeviceSecret::from_bytes(SECRET));
    id.factory_csr("SN-TOKEN", KeyAlgorithm::P256).unwrap();
    id.configure(&est.url, &est.server_ca_pem).unwrap();
    let Action::Enrolled { serial_hex } = id.enroll_with_token("good-token").unwrap() else {
        panic!()
    };
    let before = tree(&dir);
    let refusal = "https://pumps.example:8443/2.root.json: refused (HTTP 403 certificate_revoked): certificate is revoked";
    assert_eq!(
        id.replace_refused(&serial_hex, refusal, SystemTime::now())
            .unwrap(),
        Action::ReplacementFailed {
            reason: format!(
                "{refusal}; there is no factory certificate to enroll again with (it needs an \
                 enrollment token from an operator; a decommissioned pump gets none)"
            )
        }
    );
    assert_eq!(tree(&dir), before);
    assert_eq!(est.log.lock().unwrap().len(), 1);
}

#[test]
fn a_refused_renewal_falls_back_to_the_factory_certificate() {
    // the server superseded (and revoked) the certificate with one whose answer never arrived:
    // renewing with it is refused; the factory certificate enrolls the device again
    let (est, tmp, dir) = est_and_identity_dir();
    let (id, first) = enrolled(&est, &dir, "SN-400");
    let due = renewal_due(&id);
    *est.mode.lock().unwrap() = Mode::RevokedForRenewal;
    let refused = format!(
        "{}/.well-known/est/simplereenroll: refused (HTTP 403 certificate_revoked): certificate {first} is revoked",
        est.url
    );
    let Action::RenewedWithFactory {
        serial_hex,
        renewal_error,
    } = id.ensure(due).unwrap()
    else {
        panic!()
    };
    assert_eq!(renewal_error, refused);
    assert_ne!(serial_hex, first);
    let log = est.log.lock().unwrap().clone();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (log[1].0.as_str(), log[1].1.as_str()),
        (
            "/.well-known/est/simplereenroll",
            &*format!("device:SN-400:{first}")
        )
    );
    assert_eq!(log[2].0, "/.well-known/est/simpleenroll");
    assert!(log[2].1.starts_with("factory:SN-400:"), "{:?}", log[2]);
    assert_eq!(serial(&id), serial_hex);

    // a device enrolled by token has no factory certificate: the renewal failure stands and the
    // current certificate stays
    let dir2 = tmp.path().join("identity-2");
    let id2 = Identity::new(&dir2, DeviceSecret::from_bytes(SECRET));
    id2.factory_csr("SN-401", KeyAlgorithm::P256).unwrap();
    id2.configure(&est.url, &est.server_ca_pem).unwrap();
    *est.mode.lock().unwrap() = Mode::Issue;
    let Action::Enrolled {
        serial_hex: token_cert,
    } = id2.enroll_with_token("good-token").unwrap()
    else {
        panic!()
    };
    let before = tree(&dir2);
    *est.mode.lock().unwrap() = Mode::RevokedForRenewal;
    assert_eq!(
        id2.ensure(renewal_due(&id2)).unwrap(),
        Action::RenewalFailed {
            reason: format!(
                "{}/.well-known/est/simplereenroll: refused (HTTP 403 certificate_revoked): certificate {token_cert} is revoked",
                est.url
            )
        }
    );
    assert_eq!(tree(&dir2), before, "nothing changed");
}

/// The server superseded the certificate with one whose answer never arrived, and its CRL
/// lists it: the renewal's handshake ends in a certificate_revoked alert (the server's refusal),
/// and the factory certificate enrolls the device again. Then, the factory certificate revoked
/// too, back from storage past the new certificate's expiry, the re-enrollment is refused with
/// the alert named and nothing is stored. `tls12`: the server speaks TLS 1.2 only; `message`:
/// what the agent's error says of the alert.
fn refused_at_the_handshake_then_enrolled_with_the_factory_certificate(
    tls12: bool,
    serial_number: &str,
    message: &str,
) {
    let est = start();
    let revoke = |factory: &[&str], operational: &[&str], n: u64| match tls12 {
        true => est.revoke_over_tls12(factory, operational, n),
        false => est.revoke(factory, operational, n),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("identity");
    let (id, first) = enrolled(&est, &dir, serial_number);
    let due = renewal_due(&id);
    revoke(&[], &[&first], 2);
    let Action::RenewedWithFactory {
        serial_hex,
        renewal_error,
    } = id.ensure(due).unwrap()
    else {
        panic!()
    };
    let url = format!("{}/.well-known/est/simplereenroll", est.url);
    assert_eq!(renewal_error, format!("{url}: {message}"));
    assert_ne!(serial_hex, first);
    assert_eq!(serial(&id), serial_hex);
    // the refused renewal never got to HTTP; the factory certificate's request did
    let log = est.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].0, "/.well-known/est/simpleenroll");
    assert!(
        log[1].1.starts_with(&format!("factory:{serial_number}:")),
        "{:?}",
        log[1]
    );

    let factory = PeerIdentity::from_der(
        &device_agent::identity::parse_chain(
            &std::fs::read_to_string(dir.join("factory.crt")).unwrap(),
        )
        .unwrap()[0],
    )
    .unwrap();
    revoke(&[&factory.certificate_serial], &[&first], 3);
    let expired = id.operational().unwrap().unwrap().identity.not_after + Duration::from_secs(1);
    let before = tree(&dir);
    let url = format!("{}/.well-known/est/simpleenroll", est.url);
    match id.ensure(expired).unwrap_err() {
        IdentityError::HandshakeRefused {
            url: u,
            alert,
            message: m,
        } => assert_eq!(
            (u, alert, m),
            (
                url,
                rustls::AlertDescription::CertificateRevoked,
                message.to_string()
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(tree(&dir), before, "nothing changed");
    assert_eq!(est.log.lock().unwrap().len(), 2, "no request got to HTTP");
}

#[test]
fn a_renewal_refused_at_the_handshake_falls_back_to_the_factory_certificate() {
    // TLS 1.3: the server judges the client certificate after the client's handshake is done,
    // so the alert arrives in place of the answer
    refused_at_the_handshake_then_enrolled_with_the_factory_certificate(
        false,
        "SN-410",
        "Network Error: Error encountered in the status line: received fatal alert: CertificateRevoked",
    );
}

#[test]
fn a_renewal_refused_during_a_tls12_handshake_falls_back_to_the_factory_certificate() {
    // TLS 1.2: the server judges it during the handshake, so the alert ends the handshake
    // itself; the agent reads it as the same refusal
    refused_at_the_handshake_then_enrolled_with_the_factory_certificate(
        true,
        "SN-412",
        "Connection Failed: tls connection init failed: received fatal alert: CertificateRevoked",
    );
}

/// A renewal sent to `base` that gets no answer (`error`: what the system said, after ureq's
/// words) fails alone, with nothing stored; with the EST server back, the next poll renews.
fn a_renewal_without_an_answer_fails_alone(serial_no: &str, base: &str, error: &str) {
    let (est, _tmp, dir) = est_and_identity_dir();
    let (id, first) = enrolled(&est, &dir, serial_no);
    let due = renewal_due(&id);
    id.configure(base, &est.server_ca_pem).unwrap();
    let before = tree(&dir);
    // the renewal's error alone: no "; with the factory certificate: …" after it
    let url = format!("{base}/.well-known/est/simplereenroll");
    assert_eq!(
        id.ensure(due).unwrap(),
        Action::RenewalFailed {
            reason: format!("{url}: {error}")
        }
    );
    assert_eq!(tree(&dir), before, "nothing changed");
    assert_eq!(serial(&id), first);

    // the server back: the renewal goes through at the next poll
    id.configure(&est.url, &est.server_ca_pem).unwrap();
    let Action::Renewed { serial_hex } = id.ensure(due).unwrap() else {
        panic!()
    };
    assert_eq!(serial(&id), serial_hex);
    let log = est.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[1].0.as_str(), log[1].1.as_str()),
        (
            "/.well-known/est/simplereenroll",
            &*format!("device:{serial_no}:{first}")
        )
    );
}

#[test]
fn a_renewal_that_cannot_reach_the_server_is_not_retried_with_the_factory_certificate() {
    // the server is down (nothing listens: connects are refused): the factory certificate would
    // fail the same way, so the renewal fails alone and the pump keeps its certificate
    let (down, refused) = common::refused_addr();
    a_renewal_without_an_answer_fails_alone(
        "SN-420",
        &format!("https://{down}"),
        &format!("Connection Failed: Connect error: {refused}"),
    );
}

#[test]
fn a_renewal_to_a_name_that_does_not_resolve_is_not_retried_with_the_factory_certificate() {
    // the EST server's name does not resolve (a DNS outage, a typo in the configuration; `.invalid`
    // never resolves, RFC 6761): no server was asked, so the factory certificate would fare no
    // better
    use std::net::ToSocketAddrs;
    let name = "est.hale.invalid:443";
    // what the system says to a lookup of it
    let lookup = name.to_socket_addrs().map(|_| ()).unwrap_err();
    a_renewal_without_an_answer_fails_alone(
        "SN-421",
        &format!("https://{name}"),
        &format!("Dns Failed: resolve dns name '{name}': {lookup}"),
    );
}

#[test]
fn a_renewal_the_server_hangs_up_on_is_asked_once() {
    // something accepts the connection and closes it without a word (a server going down, a
    // middlebox): no answer, so no refusal to fall back on; one connection, not two
    let (est, _tmp, dir) = est_and_identity_dir();
    let (id, first) = enrolled(&est, &dir, "SN-430");
    let due = renewal_due(&id);
    let hangup = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hangup.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in hangup.incoming() {
            let Ok(mut stream) = stream else { continue };
            *counted.lock().unwrap() += 1;
            linger(&mut stream);
        }
    });
    id.configure(&format!("https://{addr}"), &est.server_ca_pem)
        .unwrap();
    let before = tree(&dir);
    let url = format!("https://{addr}/.well-known/est/simplereenroll");
    let action = id.ensure(due).unwrap();
    assert_eq!(*connections.lock().unwrap(), 1);
    assert_eq!(
        action,
        Action::RenewalFailed {
            reason: format!(
                "{url}: Connection Failed: tls connection init failed: unexpected end of file"
            )
        }
    );
    assert_eq!(tree(&dir), before, "nothing changed");
    assert_eq!(serial(&id), first);
}
