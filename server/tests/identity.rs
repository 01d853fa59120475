//! Device identity over real TLS handshakes on loopback: EST enrollment (factory certificate and
//! token), the device API behind mTLS with a per-request record check, the staff API with roles,
//! revocation with CRL hot reload, and the audit trail. Every refusal asserts the exact error (a
//! handshake alert or a JSON code) and that nothing was stored.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use hale_pki::manifest::{Manifest, ManifestEntry};
use hale_pki::tls::{client_config, client_config_without_certificate, private_key_from_pem};
use hale_pki::{generate_key_and_csr, Ca, Hierarchy, IssuedCertificate, KeyAlgorithm, StaffRole};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use serde_json::{json, Value};
use sha2::Digest;

const CA_PASS: &str = "ca passphrase for tests";
const MODEL: &str = "pump-x1";

struct Pki {
    h: Hierarchy,
    server_ca: CertificateDer<'static>,
}

fn write(p: &Path, b: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b).unwrap();
}

/// A hierarchy and the TLS directory the server reads (docs/pki.md).
fn tls_dir(dir: &Path) -> Pki {
    tls_dir_valid(dir, 365, 90)
}

/// [`tls_dir`] with CA certificates valid for `ca_days` and the server's for `server_days`.
fn tls_dir_valid(dir: &Path, ca_days: u64, server_days: u64) -> Pki {
    let now = SystemTime::now();
    let h = Hierarchy::create(Duration::from_secs(ca_days * 86_400), now).unwrap();
    for ca in [
        &h.root,
        &h.manufacturing,
        &h.device_issuing,
        &h.technician,
        &h.server,
    ] {
        write(
            &dir.join("ca").join(format!("{}.crt", ca.role().slug())),
            ca.certificate_pem().unwrap().as_bytes(),
        );
    }
    write(
        &dir.join("ca/device-issuing.key"),
        &h.device_issuing
            .to_file_with_cost(CA_PASS.as_bytes(), 10)
            .unwrap(),
    );
    put_server_certificate_at(dir, &h.server, &["localhost"], server_days, now);
    for ca in [&h.manufacturing, &h.technician] {
        let crl = ca
            .crl(&[], 1, now, Duration::from_secs(7 * 86_400))
            .unwrap();
        write(
            &dir.join("crl").join(format!("{}.crl", ca.role().slug())),
            crl.pem.as_bytes(),
        );
    }
    Pki {
        server_ca: h.server.certificate_der().clone(),
        h,
    }
}

struct TlsServer {
    child: Child,
    device: String,
    enroll: String,
    staff: String,
    plain: String,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls(f: &Fixture, tls: &Path) -> TlsServer {
    let mut child = tls_command(f, tls).spawn().unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let (mut device, mut enroll, mut staff, mut plain) = (None, None, None, None);
    let mut line = String::new();
    while device.is_none() || enroll.is_none() || staff.is_none() || plain.is_none() {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!(
                "server did not start: {}",
                std::fs::read_to_string(f.data.join("server.log")).unwrap_or_default()
            );
        }
        let l = line.trim();
        let addr = |p: &str| l.strip_prefix(p).map(str::to_string);
        device = device.or(addr("device listening on https://"));
        enroll = enroll.or(addr("enroll listening on https://"));
        staff = staff.or(addr("staff listening on https://"));
        plain = plain.or(l.strip_prefix("listening on ").map(str::to_string));
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = r.read_to_string(&mut sink);
    });
    TlsServer {
        child,
        device: device.unwrap(),
        enroll: enroll.unwrap(),
        staff: staff.unwrap(),
        plain: plain.unwrap(),
    }
}

/// `hale-server serve` with the TLS listeners, as [`start_tls`] runs it, expected to refuse to
/// start: its last line of error output (a server that starts is stopped after 20 s, and this
/// fails).
fn tls_start_refused(f: &Fixture, tls: &Path) -> String {
    let mut child = tls_command(f, tls).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    log.lines().last().unwrap_or_default().to_string()
}

/// The command [`start_tls`] runs (its log appended to DATA/server.log).
fn tls_command(f: &Fixture, tls: &Path) -> Command {
    tls_command_on(f, tls, "127.0.0.1:0")
}

/// [`tls_command`] with the staff listener on `staff`.
fn tls_command_on(f: &Fixture, tls: &Path, staff: &str) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(f.data.join("server.log"))
        .unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "serve",
        "--data",
        f.data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--tls-dir", tls.to_str().unwrap()])
    .args([
        "--device-listen",
        "127.0.0.1:0",
        "--enroll-listen",
        "127.0.0.1:0",
    ])
    .args(["--staff-listen", staff])
    .env("HALE_PASSPHRASE_FILE", &f.pass_file)
    .env("HALE_CA_PASSPHRASE", CA_PASS)
    .env("HALE_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::from(log));
    c
}

// --- a minimal HTTP/1.1 client over rustls -----------------------------------------------------

struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: &str, cfg: Arc<ClientConfig>) -> Conn {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    Conn(rustls::StreamOwned::new(conn, sock))
}

impl Conn {
    /// A GET with no headers and no body on this connection.
    fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, &[], b"")
    }

    /// One request on this connection (kept alive). Err: the TLS or transport error.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut all = req.into_bytes();
        all.extend_from_slice(body);
        self.0.write_all(&all).map_err(|e| e.to_string())?;
        self.0.flush().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(&mut self.0);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().unwrap());
        let mut body = Vec::new();
        if method != "HEAD" && status != 204 && status != 304 {
            match len {
                Some(n) => {
                    body.resize(n, 0);
                    r.read_exact(&mut body).map_err(|e| e.to_string())?;
                }
                None => loop {
                    // chunked
                    line.clear();
                    r.read_line(&mut line).map_err(|e| e.to_string())?;
                    let n = usize::from_str_radix(line.trim(), 16).unwrap();
                    let mut c = vec![0; n + 2];
                    r.read_exact(&mut c).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&c[..n]);
                },
            }
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

fn once(
    addr: &str,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    connect(addr, cfg).send(method, path, headers, body)
}

/// A GET with no headers and no body on a new connection to `addr`.
fn get_on(addr: &str, cfg: &Arc<ClientConfig>, path: &str) -> Result<Reply, String> {
    once(addr, cfg.clone(), "GET", path, &[], b"")
}

/// A POST of `body` with no headers on a new connection to `addr`.
fn post_on(addr: &str, cfg: &Arc<ClientConfig>, path: &str, body: &[u8]) -> Result<Reply, String> {
    once(addr, cfg.clone(), "POST", path, &[], body)
}

/// An EST `simpleenroll` of `csr_pem` on the enroll listener, with an `Authorization` header
/// (`Bearer <enrollment token>`) when one is given.
fn enroll(
    t: &TlsServer,
    cfg: &Arc<ClientConfig>,
    authorization: Option<&str>,
    csr_pem: &str,
) -> Result<Reply, String> {
    let mut headers = vec![PKCS10];
    headers.extend(authorization.map(|a| ("Authorization", a)));
    once(
        &t.enroll,
        cfg.clone(),
        "POST",
        "/.well-known/est/simpleenroll",
        &headers,
        csr_pem.as_bytes(),
    )
}

/// An enrollment token from the staff API for `request` (serial, model, optional ttl).
fn enroll_token(t: &TlsServer, cfg: &Arc<ClientConfig>, request: Value) -> String {
    let r = assert_status(
        post_on(
            &t.staff,
            cfg,
            "/api/v1/staff/enroll-tokens",
            request.to_string().as_bytes(),
        ),
        200,
    );
    r.json()["token"].as_str().unwrap().to_string()
}

// --- identities --------------------------------------------------------------------------------

struct Holder {
    key_pem: String,
    cert: IssuedCertificate,
}

fn cfg_for(p: &Pki, chain: Vec<CertificateDer<'static>>, key_pem: &str) -> Arc<ClientConfig> {
    client_config(
        p.server_ca.clone(),
        chain,
        private_key_from_pem(key_pem).unwrap(),
    )
    .unwrap()
}

fn holder_cfg(p: &Pki, h: &Holder) -> Arc<ClientConfig> {
    cfg_for(p, vec![h.cert.der.clone()], &h.key_pem)
}

/// A staff certificate for `name` in `role` from the Technician CA, valid for an hour.
fn staff_holder(p: &Pki, name: &str, role: StaffRole) -> Holder {
    let k = generate_key_and_csr(KeyAlgorithm::P256, name).unwrap();
    let cert =
        p.h.technician
            .issue_staff_certificate(
                &k.csr_pem,
                name,
                role,
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
    Holder {
        key_pem: k.private_key_pem.to_string(),
        cert,
    }
}

/// A client configuration with a fresh staff certificate (see [`staff_holder`]).
fn staff(p: &Pki, name: &str, role: StaffRole) -> Arc<ClientConfig> {
    holder_cfg(p, &staff_holder(p, name, role))
}

fn factory(p: &Pki, serial: &str) -> Holder {
    let k = generate_key_and_csr(KeyAlgorithm::P256, serial).unwrap();
    let cert =
        p.h.manufacturing
            .issue_factory_certificate(
                &k.csr_pem,
                serial,
                MODEL,
                Duration::from_secs(86_400),
                SystemTime::now(),
            )
            .unwrap();
    Holder {
        key_pem: k.private_key_pem.to_string(),
        cert,
    }
}

/// A device certificate for `serial` (model [`MODEL`]) from `ca` on a fresh P-256 key, valid for
/// `validity` from `not_before`: one the server did not issue through EST.
fn issued_device(ca: &Ca, serial: &str, validity: Duration, not_before: SystemTime) -> Holder {
    let k = generate_key_and_csr(KeyAlgorithm::P256, serial).unwrap();
    let cert = ca
        .issue_device_certificate(&k.csr_pem, serial, MODEL, serial, validity, not_before)
        .unwrap();
    Holder {
        key_pem: k.private_key_pem.to_string(),
        cert,
    }
}

/// The operational certificate in an EST answer (first PEM block).
fn operational(chain_pem: &[u8], key_pem: &str) -> Holder {
    let text = std::str::from_utf8(chain_pem).unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let der = hale_pki::tls::certificate_from_pem(&text[..end]).unwrap();
    let id = hale_pki::PeerIdentity::from_der(&der).unwrap();
    Holder {
        key_pem: key_pem.to_string(),
        cert: IssuedCertificate {
            pem: text[..end].to_string(),
            serial_hex: id.certificate_serial,
            not_before: id.not_before,
            not_after: id.not_after,
            spki_sha256: id.spki_sha256,
            der,
        },
    }
}

/// Staff `action` (quarantine, reactivate, decommission) of pump-1 with `reason` is refused
/// for its reason: 400, `bad_request`, the rule for reasons.
fn reason_refused(t: &TlsServer, op: &Arc<ClientConfig>, action: &str, reason: &str) {
    let r = post_on(
        &t.staff,
        op,
        &format!("/api/v1/staff/devices/pump-1/{action}"),
        json!({ "reason": reason }).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "bad_request", "message": REASON_RULE})),
        "{action} {reason:?}"
    );
}

/// The server's state as staff see it: device records and the number of audit records.
fn state(t: &TlsServer, op: &Arc<ClientConfig>) -> (Value, usize) {
    let d = get_on(&t.staff, op, "/api/v1/staff/devices").unwrap();
    assert_eq!(d.status, 200, "{:?}", String::from_utf8_lossy(&d.body));
    let a = get_on(&t.staff, op, "/api/v1/staff/audit").unwrap();
    assert_eq!(a.status, 200);
    (
        d.json()["devices"].clone(),
        a.json()["records"].as_array().unwrap().len(),
    )
}

/// Since `before` ([`state`]) the devices did not change and the audit log gained exactly these
/// refusal records, `(kind, actor, error)` in order: a refusal stores nothing else.
fn only_refusals_recorded(
    t: &TlsServer,
    op: &Arc<ClientConfig>,
    before: &(Value, usize),
    want: &[(&str, &str, &str)],
) {
    let (devices, _) = state(t, op);
    assert_eq!(devices, before.0, "devices");
    let a = assert_status(get_on(&t.staff, op, "/api/v1/staff/audit"), 200).json();
    let got: Vec<(String, String, String)> = a["records"].as_array().unwrap()[before.1..]
        .iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&r["kind"]), s(&r["actor"]), s(&r["detail"]["error"]))
        })
        .collect();
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(k, a, e)| (k.to_string(), a.to_string(), e.to_string()))
        .collect();
    assert_eq!(got, want, "audit records since");
}

/// [`only_refusals_recorded`], the Device Issuing CA's CRL unchanged too ([`stored`]).
fn only_refusals_stored(
    t: &TlsServer,
    p: &Pki,
    op: &Arc<ClientConfig>,
    before: &(Value, usize, Vec<u8>),
    want: &[(&str, &str, &str)],
) {
    assert_eq!(stored(t, p, op).2, before.2, "the CRL");
    only_refusals_recorded(t, op, &(before.0.clone(), before.1), want);
}

fn assert_alert(r: Result<Reply, String>, alert: &str) {
    match r {
        Err(e) => assert!(e.contains(alert), "expected alert {alert}, got {e}"),
        Ok(r) => panic!(
            "expected a refused handshake ({alert}), got HTTP {}",
            r.status
        ),
    }
}

fn assert_refused(r: Result<Reply, String>, status: u16, code: &str) {
    let r = r.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// The reply, after asserting its status (the body in the message).
fn assert_status(r: Result<Reply, String>, status: u16) -> Reply {
    let r = r.unwrap();
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    r
}

/// The `seq` of each audit record in a `records` array.
fn record_seqs(records: &Value) -> Vec<u64> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// Asserts that a run of the binary succeeded (its stderr in the message).
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hale-server audit verify` on the fixture's data, asserted to succeed.
fn audit_verify(f: &Fixture) -> std::process::Output {
    let out = run_bin(
        &["audit", "verify", "--data", f.data.to_str().unwrap()],
        &f.pass_file,
    );
    assert_success(&out);
    out
}

/// `hale-server manifest import` of `file` into the fixture's data, with the CAs in `tls`.
fn import_manifest(f: &Fixture, tls: &Path, file: &Path) -> std::process::Output {
    run_bin(
        &[
            "manifest",
            "import",
            "--data",
            f.data.to_str().unwrap(),
            "--tls-dir",
            tls.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        &f.pass_file,
    )
}

const PKCS10: (&str, &str) = ("Content-Type", "application/pkcs10");

#[test]
fn enrollment_mtls_revocation_and_audit_over_real_handshakes() {
    // a repository with one target; devices may renew at once (this test renews right after
    // enrolling; the minimum age is renewal_and_factory_reenrollment_of_a_young_certificate_…)
    let f = Fixture::with_config(json!({"device_renewal_min_age_secs": 0}));
    let fw: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    {
        let s = f.start();
        assert_eq!(upload(&s, &f.token, &fw).unwrap().status, 200);
        let t = f.targets(1, &[("fw.bin", &fw, None)], None);
        assert_eq!(
            publish(&s, &f.token, None, &[("targets", &t)])
                .unwrap()
                .status,
            200
        );
    }
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let tech = staff(&p, "theo", StaffRole::Technician);

    // cacerts: Device Issuing CA then root, no client certificate needed
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let r = assert_status(get_on(&t.enroll, &anon, "/.well-known/est/cacerts"), 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/pem-certificate-chain")
    );
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!(
            "{}{}",
            p.h.device_issuing.certificate_pem().unwrap(),
            p.h.root.certificate_pem().unwrap()
        )
    );

    // the manifest: pump-1 with its factory key; imported by an operator, not a technician
    let f1 = factory(&p, "pump-1");
    let manifest = Manifest::sign(
        &p.h.manufacturing,
        "batch-7",
        &[ManifestEntry::new("pump-1", MODEL, &f1.cert.spki_sha256)],
        SystemTime::now(),
    )
    .unwrap();
    let before = state(&t, &op);
    assert_refused(
        post_on(&t.staff, &tech, "/api/v1/staff/manifests", &manifest),
        403,
        "role_forbidden",
    );
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden")],
    );
    let r = post_on(&t.staff, &op, "/api/v1/staff/manifests", &manifest).unwrap();
    assert_eq!((r.status, r.json()["entries"].clone()), (200, json!(1)));

    // refused: a factory certificate not in the manifest (valid, from the Manufacturing CA)
    let stranger = factory(&p, "pump-9");
    let k9 = generate_key_and_csr(KeyAlgorithm::P256, "pump-9").unwrap();
    let before = state(&t, &op);
    assert_refused(
        enroll(&t, &holder_cfg(&p, &stranger), None, &k9.csr_pem),
        403,
        "not_in_manifest",
    );
    // refused: a hostile CSR asking for CA:TRUE, with a valid factory certificate
    let hostile_key = rcgen::KeyPair::generate().unwrap();
    let mut hp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    hp.distinguished_name
        .push(rcgen::DnType::CommonName, "pump-1");
    hp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let hostile = hp.serialize_request(&hostile_key).unwrap().pem().unwrap();
    assert_refused(
        enroll(&t, &holder_cfg(&p, &f1), None, &hostile),
        400,
        "csr_requests_ca",
    );
    // refused: no factory certificate and no token
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_refused(
        enroll(&t, &anon, None, &k1.csr_pem),
        401,
        "client_certificate_required",
    );
    // refused: a CSR for another device than the factory certificate
    let other = generate_key_and_csr(KeyAlgorithm::P256, "pump-2").unwrap();
    assert_refused(
        enroll(&t, &holder_cfg(&p, &f1), None, &other.csr_pem),
        403,
        "identity_mismatch",
    );
    // each refusal of a requester who holds one of our certificates is audited; the anonymous
    // one is only logged
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[
            ("enroll-refused", "factory:pump-9", "not_in_manifest"),
            ("enroll-refused", "factory:pump-1", "csr_requests_ca"),
            ("enroll-refused", "factory:pump-1", "identity_mismatch"),
        ],
    );

    // accepted: enroll with the factory certificate
    let r = assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/pem-certificate-chain")
    );
    assert!(
        String::from_utf8_lossy(&r.body).ends_with(&p.h.device_issuing.certificate_pem().unwrap())
    );
    let d1 = operational(&r.body, &k1.private_key_pem);
    let id1 = hale_pki::PeerIdentity::from_der(&d1.cert.der).unwrap();
    assert_eq!(
        (
            id1.kind,
            id1.name.as_str(),
            id1.model.as_deref(),
            id1.hardware_serial.as_deref()
        ),
        (
            hale_pki::PeerKind::Device,
            "pump-1",
            Some(MODEL),
            Some("pump-1")
        )
    );

    // poll metadata, download the target, report — on one kept-alive connection
    let mut c1 = connect(&t.device, holder_cfg(&p, &d1));
    let ts = assert_status(c1.get("/timestamp.json"), 200);
    let etag = ts.header("etag").unwrap().to_string();
    assert_status(
        c1.send("GET", "/timestamp.json", &[("If-None-Match", &etag)], b""),
        304,
    );
    let sha = hex::encode(sha2::Sha256::digest(&fw));
    let tr = c1.get(&format!("/targets/{sha}.fw.bin")).unwrap();
    assert_eq!((tr.status, tr.body == fw), (200, true));
    let report =
        json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}]}).to_string();
    assert_status(
        c1.send(
            "POST",
            "/api/v1/devices/pump-1/report",
            &[("Content-Type", "application/json")],
            report.as_bytes(),
        ),
        204,
    );
    // a report for another device id than the certificate's
    assert_refused(
        c1.send(
            "POST",
            "/api/v1/devices/pump-2/report",
            &[],
            report.as_bytes(),
        ),
        403,
        "identity_mismatch",
    );
    // the plain listener takes no device reports (nor lists devices) when TLS is configured
    let before = state(&t, &op);
    for (m, path) in [
        ("POST", "/api/v1/devices/pump-1/report"),
        ("GET", "/api/v1/devices"),
    ] {
        let r = request(
            m,
            &format!("{}{path}", t.plain),
            &[],
            (m == "POST").then_some(report.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (403, json!("client_certificate_required"))
        );
    }
    only_refusals_recorded(&t, &op, &before, &[]);

    // refused at the handshake: no client certificate, another CA's certificate, a technician
    // certificate, a factory certificate, an expired certificate
    assert_alert(
        get_on(&t.device, &anon, "/timestamp.json"),
        "CertificateRequired",
    );
    // another hierarchy's Device Issuing CA has the same name: webpki finds the anchor by name
    // and the signature does not verify (alert decrypt_error)
    let foreign = Hierarchy::create(Duration::from_secs(86_400), SystemTime::now()).unwrap();
    let fc = issued_device(
        &foreign.device_issuing,
        "pump-1",
        Duration::from_secs(86_400),
        SystemTime::now(),
    );
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &fc), "/timestamp.json"),
        "DecryptError",
    );
    assert_alert(get_on(&t.device, &tech, "/timestamp.json"), "UnknownCA");
    // a refused client that sends a large request at once still reads the alert: the server
    // reads and drops it before closing, so no reset overtakes the alert
    let large = vec![0u8; 2 << 20];
    for _ in 0..5 {
        assert_alert(
            post_on(&t.device, &tech, "/api/v1/devices/pump-1/report", &large),
            "UnknownCA",
        );
    }
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &f1), "/timestamp.json"),
        "UnknownCA",
    );
    let expired = issued_device(
        &p.h.device_issuing,
        "pump-1",
        Duration::from_secs(3600),
        SystemTime::now() - Duration::from_secs(3 * 86_400),
    );
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &expired), "/timestamp.json"),
        "CertificateExpired",
    );
    // a device certificate from the right CA that the server never issued for this record
    let unrecorded = issued_device(
        &p.h.device_issuing,
        "pump-1",
        Duration::from_secs(3600),
        SystemTime::now(),
    );
    assert_refused(
        get_on(&t.device, &holder_cfg(&p, &unrecorded), "/timestamp.json"),
        403,
        "certificate_revoked",
    );
    // staff API: a device certificate is not staff
    assert_alert(
        get_on(&t.staff, &holder_cfg(&p, &d1), "/api/v1/staff/devices"),
        "UnknownCA",
    );

    // token enrollment: issued by a technician for pump-2 (not in the manifest: model given)
    let token = enroll_token(
        &t,
        &tech,
        json!({"serial": "pump-2", "model": MODEL, "ttl_secs": 600}),
    );
    let bearer = format!("Bearer {token}");
    let k2 = generate_key_and_csr(KeyAlgorithm::Ed25519, "pump-2").unwrap();
    let k3 = generate_key_and_csr(KeyAlgorithm::P256, "pump-3").unwrap();
    let before = state(&t, &op);
    // refused: a token for another serial
    assert_refused(
        enroll(&t, &anon, Some(&bearer), &k3.csr_pem),
        403,
        "token_wrong_serial",
    );
    assert_refused(
        enroll(&t, &anon, Some("Bearer hale-et-nope"), &k2.csr_pem),
        401,
        "token_invalid",
    );
    // the token is one the server issued: its refusal is audited; an unknown one is anyone's
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("enroll-refused", "token:pump-2", "token_wrong_serial")],
    );
    let r = assert_status(enroll(&t, &anon, Some(&bearer), &k2.csr_pem), 200);
    let d2 = operational(&r.body, &k2.private_key_pem);
    // refused: the token again
    let before = state(&t, &op);
    assert_refused(
        enroll(&t, &anon, Some(&bearer), &k2.csr_pem),
        401,
        "token_used",
    );
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("enroll-refused", "token:pump-2", "token_used")],
    );
    assert_status(
        get_on(&t.device, &holder_cfg(&p, &d2), "/timestamp.json"),
        200,
    );

    // renew pump-1 with its current certificate; the old one is superseded
    let k1b = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let r = assert_status(
        once(
            &t.enroll,
            holder_cfg(&p, &d1),
            "POST",
            "/.well-known/est/simplereenroll",
            &[PKCS10],
            k1b.csr_pem.as_bytes(),
        ),
        200,
    );
    let d1b = operational(&r.body, &k1b.private_key_pem);
    assert_ne!(d1b.cert.serial_hex, d1.cert.serial_hex);
    // the kept-alive connection with the old certificate: refused per request
    assert_refused(c1.get("/timestamp.json"), 403, "certificate_revoked");
    // a new handshake with the old certificate: on the CRL now
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d1), "/timestamp.json"),
        "CertificateRevoked",
    );
    let mut c1b = connect(&t.device, holder_cfg(&p, &d1b));
    assert_status(c1b.get("/timestamp.json"), 200);

    // quarantine (technician): no metadata, reports still taken; reactivate
    let r = post_on(
        &t.staff,
        &tech,
        "/api/v1/staff/devices/pump-1/quarantine",
        br#"{"reason":"field check"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("quarantined"))
    );
    // the reason is in the record, where staff listing devices see it
    let last = |r: &Reply| {
        let h = r.json()["history"].as_array().unwrap().clone();
        let e = h.last().unwrap().clone();
        (
            e["event"].clone(),
            e["reason"].clone(),
            e["actor"].clone(),
            h.len(),
        )
    };
    let (event, why, who, n) = last(&r);
    assert_eq!(
        (event, why, who),
        (
            json!("quarantine"),
            json!("field check"),
            json!("technician:theo")
        )
    );
    // a second finding while it is held: recorded and audited too; the same one again is not
    let quarantine = |body: &[u8]| {
        assert_status(
            post_on(
                &t.staff,
                &tech,
                "/api/v1/staff/devices/pump-1/quarantine",
                body,
            ),
            200,
        )
    };
    let held = audit_of(&t, &op, "device-quarantine").len();
    let r = quarantine(br#"{"reason":"recall 42"}"#);
    assert_eq!(
        last(&r),
        (
            json!("quarantine"),
            json!("recall 42"),
            json!("technician:theo"),
            n + 1
        )
    );
    let r = quarantine(br#"{"reason":"recall 42"}"#);
    assert_eq!(last(&r).3, n + 1);
    let r = quarantine(b"");
    assert_eq!(last(&r).3, n + 1);
    let audited = audit_of(&t, &op, "device-quarantine");
    assert_eq!(audited.len(), held + 1);
    assert_eq!(audited.last().unwrap()["detail"]["reason"], "recall 42");
    assert_refused(c1b.get("/timestamp.json"), 403, "device_quarantined");
    assert_status(
        c1b.send(
            "POST",
            "/api/v1/devices/pump-1/report",
            &[],
            report.as_bytes(),
        ),
        204,
    );
    assert_status(
        post_on(
            &t.staff,
            &tech,
            "/api/v1/staff/devices/pump-1/reactivate",
            b"",
        ),
        200,
    );
    assert_status(c1b.get("/timestamp.json"), 200);

    // revoke pump-2's certificate: technicians may not; operators may
    let path = format!("/api/v1/staff/certificates/{}/revoke", d2.cert.serial_hex);
    let mut c2 = connect(&t.device, holder_cfg(&p, &d2));
    assert_status(c2.get("/timestamp.json"), 200);
    let before = state(&t, &op);
    assert_refused(post_on(&t.staff, &tech, &path, b""), 403, "role_forbidden");
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden")],
    );
    assert_status(
        post_on(&t.staff, &op, &path, br#"{"reason":"key_compromise"}"#),
        200,
    );
    assert_refused(c2.get("/timestamp.json"), 403, "certificate_revoked");
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d2), "/timestamp.json"),
        "CertificateRevoked",
    );
    // the published CRL lists it
    let crl = get_on(&t.enroll, &anon, "/crl/device-issuing.crl").unwrap();
    assert_eq!(crl.header("content-type"), Some("application/pkix-crl"));
    let v = hale_pki::crl::verify_crl(
        &crl.body,
        p.h.device_issuing.certificate_der(),
        SystemTime::now(),
    )
    .unwrap();
    assert!(v.revoked.contains(&d2.cert.serial_hex) && v.revoked.contains(&d1.cert.serial_hex));

    // decommission pump-1 (operator only): the open connection is refused per request, the
    // certificate fails new handshakes, and it cannot enroll again
    let decommission = "/api/v1/staff/devices/pump-1/decommission";
    assert_refused(
        post_on(&t.staff, &tech, decommission, b""),
        403,
        "role_forbidden",
    );
    assert_status(post_on(&t.staff, &op, decommission, b""), 200);
    assert_refused(c1b.get("/timestamp.json"), 403, "device_decommissioned");
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d1b), "/timestamp.json"),
        "CertificateRevoked",
    );
    let before = state(&t, &op);
    let k1c = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_refused(
        enroll(&t, &holder_cfg(&p, &f1), None, &k1c.csr_pem),
        403,
        "device_decommissioned",
    );
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("enroll-refused", "factory:pump-1", "device_decommissioned")],
    );

    // a technician CRL dropped into the TLS dir revokes the technician without a restart
    let r = get_on(&t.staff, &tech, "/api/v1/staff/devices").unwrap();
    let statuses: Vec<Value> = r.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("decommissioned"), json!("active")]);
    let tom = staff_holder(&p, "tom", StaffRole::Technician);
    let tom_cfg = holder_cfg(&p, &tom);
    assert_status(get_on(&t.staff, &tom_cfg, "/api/v1/staff/devices"), 200);
    // a connection tom opened before the revocation, kept alive across it
    let mut tom_open = connect(&t.staff, tom_cfg.clone());
    assert_status(tom_open.get("/api/v1/staff/devices"), 200);
    let crl =
        p.h.technician
            .crl(
                &[hale_pki::crl::RevokedCertificate {
                    serial_hex: tom.cert.serial_hex.clone(),
                    revoked_at: SystemTime::now(),
                    reason: None,
                }],
                2,
                SystemTime::now(),
                Duration::from_secs(86_400),
            )
            .unwrap();
    write(&tls.join("crl/technician.crl"), crl.pem.as_bytes());
    wait_until("technician CRL reload", Duration::from_secs(20), || {
        get_on(&t.staff, &tom_cfg, "/api/v1/staff/devices").is_err()
    });
    assert_alert(
        get_on(&t.staff, &tom_cfg, "/api/v1/staff/devices"),
        "CertificateRevoked",
    );
    // the connection opened before the CRL is refused on its next request
    assert_refused(
        tom_open.get("/api/v1/staff/devices"),
        403,
        "certificate_revoked",
    );
    // an older CRL pushed through the API is refused: the file keeps its bytes, no crl-load
    // record is written and tom stays revoked; the operator still gets in
    let old =
        p.h.technician
            .crl(&[], 1, SystemTime::now(), Duration::from_secs(86_400))
            .unwrap();
    let crl_file = tls.join("crl/technician.crl");
    let file_before = std::fs::read(&crl_file).unwrap();
    assert_eq!(file_before, crl.pem.as_bytes());
    // the file's load is recorded after the listener takes it: wait for that record
    let file_load = json!({"ca": "technician", "crl_number": 2, "source": "file"});
    wait_until(
        "the file's crl-load record",
        Duration::from_secs(20),
        || {
            audit_of(&t, &op, "crl-load")
                .iter()
                .any(|r| r["detail"] == file_load)
        },
    );
    let loads_before = audit_of(&t, &op, "crl-load");
    let state_before = state(&t, &op);
    let r = once(
        &t.staff,
        op.clone(),
        "PUT",
        "/api/v1/staff/crl/technician",
        &[],
        old.pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"error": "bad_crl",
                   "message": "CRL refused: CRL number 1 is older than the loaded 2"})
        )
    );
    assert_eq!(
        std::fs::read(&crl_file).unwrap(),
        file_before,
        "the technician CRL file"
    );
    assert_eq!(
        audit_of(&t, &op, "crl-load"),
        loads_before,
        "no crl-load record"
    );
    only_refusals_recorded(&t, &op, &state_before, &[]);
    assert_alert(
        get_on(&t.staff, &tom_cfg, "/api/v1/staff/devices"),
        "CertificateRevoked",
    );

    // every step is in the audit log, and the chain verifies
    let a = get_on(&t.staff, &op, "/api/v1/staff/audit").unwrap();
    let kinds: Vec<String> = a.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "manifest-import",
        "enroll",
        "enroll-token",
        "reenroll",
        "device-quarantine",
        "device-reactivate",
        "certificate-revoke",
        "device-decommission",
        "crl-load",
        "report",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    // pages of 3 from the store's range, in order, each `next` continuing where the last stopped
    let all = record_seqs(&a.json()["records"]);
    assert!(all.len() > 6, "{all:?}");
    let mut paged = vec![];
    let mut query = "/api/v1/staff/audit?limit=3".to_string();
    for _ in 0..2 {
        let page = get_on(&t.staff, &op, &query).unwrap().json();
        let seqs = record_seqs(&page["records"]);
        assert_eq!(seqs.len(), 3, "{page}");
        assert_eq!(page["next"].as_u64(), seqs.last().copied());
        paged.extend(seqs);
        query = format!("/api/v1/staff/audit?limit=3&after={}", page["next"]);
    }
    assert_eq!(paged, all[..6]);
    assert_refused(
        get_on(&t.staff, &tech, "/api/v1/staff/audit"),
        403,
        "role_forbidden",
    );
    drop(t);
    audit_verify(&f);

    // a backup restored into the TLS directory (CRL 1, before tom's revocation): the server
    // refuses to start rather than let tom in again; the newest CRL back, it starts
    write(&crl_file, old.pem.as_bytes());
    assert_eq!(
        tls_start_refused(&f, &tls),
        format!(
            "error: {}: CRL number 1 is older than number 2, which this server loaded before (a \
             restored backup?): the revocations since would be undone; put the newest CRL of the \
             Hale Technician CA back",
            crl_file.display()
        )
    );
    write(&crl_file, crl.pem.as_bytes());
    let t = start_tls(&f, &tls);
    assert_alert(
        get_on(&t.staff, &tom_cfg, "/api/v1/staff/devices"),
        "CertificateRevoked",
    );
}

/// What `hale-server audit verify` prints for the fixture's data.
fn audit_records(f: &Fixture) -> String {
    String::from_utf8(audit_verify(f).stdout).unwrap()
}

#[test]
fn cli_imports_manifests_and_issues_tokens_the_server_honours() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let data = f.data.to_str().unwrap();
    let k5 = generate_key_and_csr(KeyAlgorithm::P256, "pump-5").unwrap();
    let spki =
        p.h.manufacturing
            .issue_factory_certificate(
                &k5.csr_pem,
                "pump-5",
                MODEL,
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap()
            .spki_sha256;
    let entries = [ManifestEntry::new("pump-5", MODEL, &spki)];

    // refused: a manifest signed by another Manufacturing CA; nothing recorded
    let foreign = Hierarchy::create(Duration::from_secs(86_400), SystemTime::now()).unwrap();
    let forged = f.dir.path().join("forged.json");
    write(
        &forged,
        &Manifest::sign(&foreign.manufacturing, "b1", &entries, SystemTime::now()).unwrap(),
    );
    let before = audit_records(&f);
    let out = import_manifest(&f, &tls, &forged);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "manufacturing manifest signature does not verify with the Manufacturing CA key"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // refused: a token for a serial in no manifest, without a model
    let out = run_bin(
        &["enroll-token", "--data", data, "--serial", "pump-5"],
        &f.pass_file,
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("\"pump-5\" is in no imported manifest: give the model"));
    assert_eq!(audit_records(&f), before);
    // refused: a model no certificate can carry (hale-pki's rule for names)
    let out = run_bin(
        &[
            "enroll-token",
            "--data",
            data,
            "--serial",
            "pump-5",
            "--model",
            "pump/a",
        ],
        &f.pass_file,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "invalid model \"pump/a\": 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(audit_records(&f), before);

    let good = f.dir.path().join("manifest.json");
    write(
        &good,
        &Manifest::sign(&p.h.manufacturing, "b1", &entries, SystemTime::now()).unwrap(),
    );
    assert_success(&import_manifest(&f, &tls, &good));
    let out = run_bin(
        &[
            "enroll-token",
            "--data",
            data,
            "--serial",
            "pump-5",
            "--ttl",
            "600",
        ],
        &f.pass_file,
    );
    assert_success(&out);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("hale-et-"));
    assert_ne!(audit_records(&f), before);

    // the server takes the token once; the certificate carries the manifest's model
    let t = start_tls(&f, &tls);
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let bearer = format!("Bearer {token}");
    let r = assert_status(enroll(&t, &anon, Some(&bearer), &k5.csr_pem), 200);
    let d5 = operational(&r.body, &k5.private_key_pem);
    let id = hale_pki::PeerIdentity::from_der(&d5.cert.der).unwrap();
    assert_eq!(
        (id.name.as_str(), id.model.as_deref()),
        ("pump-5", Some(MODEL))
    );
    assert_refused(
        enroll(&t, &anon, Some(&bearer), &k5.csr_pem),
        401,
        "token_used",
    );
}

/// Served versions as the plain listener's `/healthz` reports them.
fn served_versions(t: &TlsServer) -> Value {
    let h = get(&format!("{}/healthz", t.plain)).json();
    json!({"timestamp": h["timestamp"], "snapshot": h["snapshot"], "root": h["root"]})
}

#[test]
fn operators_publish_over_the_staff_listener_and_staff_read_device_reports() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let tech = staff(&p, "theo", StaffRole::Technician);
    let fw: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&fw));
    let blob = f.data.join("repo/blobs").join(&sha);
    let targets_v1 = f.targets(1, &[("fw.bin", &fw, None)], None);
    let body = publish_body(None, &[("targets", &targets_v1)]);
    let json_ct = ("Content-Type", "application/json");

    // refused: a technician certificate may neither upload nor publish; nothing changes
    let repo_before = f.repo_digest();
    let versions_before = served_versions(&t);
    let before = state(&t, &op);
    assert_refused(
        post_on(&t.staff, &tech, "/api/v1/targets", &fw),
        403,
        "role_forbidden",
    );
    let r = once(
        &t.staff,
        tech.clone(),
        "POST",
        "/api/v1/publish",
        &[json_ct],
        &body,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.code().as_str(), r.json()["message"].clone()),
        (403, "role_forbidden", json!("a technician may not publish")),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(f.repo_digest(), repo_before);
    assert_eq!(served_versions(&t), versions_before);
    assert!(!blob.exists());
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden")],
    );

    // refused: with TLS on, the plain listener takes no publish API call, even with a valid
    // operator token; nothing changes. The answer also reaches a client still sending a body
    // larger than anything the server reads before refusing.
    let large = vec![9u8; 6 << 20];
    for (path, b, ct) in [
        ("/api/v1/targets", &fw, "application/octet-stream"),
        ("/api/v1/targets", &large, "application/octet-stream"),
        ("/api/v1/publish", &body, "application/json"),
    ] {
        let r = request(
            "POST",
            &format!("{}{path}", t.plain),
            &[
                ("Authorization", &format!("Bearer {}", f.token)),
                ("Content-Type", ct),
            ],
            Some(b),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (403, json!("client_certificate_required")),
            "{path}"
        );
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("staff listener (--staff-listen) with an operator certificate"),
            "{}",
            r.json()
        );
    }
    assert_eq!(f.repo_digest(), repo_before);
    assert_eq!(served_versions(&t), versions_before);
    assert!(!blob.exists());
    only_refusals_recorded(
        &t,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden")],
    );

    // an operator certificate: what `hale-sign push` reads (the read path), then upload and
    // publish on one kept-alive connection
    let mut c = connect(&t.staff, op.clone());
    let ts0 = c.get("/timestamp.json").unwrap();
    assert_eq!(ts0.status, 404, "nothing published yet");
    let root1 = c.get("/1.root.json").unwrap();
    assert_eq!((root1.status, &root1.body), (200, &f.root));
    let r = assert_status(
        c.send(
            "POST",
            "/api/v1/targets",
            &[("Content-Type", "application/octet-stream")],
            &fw,
        ),
        200,
    );
    assert_eq!(
        (
            r.json()["length"].clone(),
            r.json()["hashes"]["sha256"].clone()
        ),
        (json!(fw.len()), json!(sha))
    );
    assert_status(c.send("POST", "/api/v1/publish", &[json_ct], &body), 200);
    assert_ne!(served_versions(&t), versions_before);
    // the audit actor is the operator's certificate
    let a = get_on(&t.staff, &op, "/api/v1/staff/audit").unwrap();
    let last = a.json()["records"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (last["kind"].clone(), last["actor"].clone()),
        (json!("publish"), json!("operator:olivia"))
    );
    let ts = assert_status(c.get("/timestamp.json"), 200);

    // a pump enrolled with a token gets the release on the device listener and reports
    let token = enroll_token(&t, &tech, json!({"serial": "pump-7", "model": MODEL}));
    let bearer = format!("Bearer {token}");
    let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-7").unwrap();
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let r = assert_status(enroll(&t, &anon, Some(&bearer), &k.csr_pem), 200);
    let pump = operational(&r.body, &k.private_key_pem);
    let mut d = connect(&t.device, holder_cfg(&p, &pump));
    let dts = d.get("/timestamp.json").unwrap();
    assert_eq!((dts.status, &dts.body), (200, &ts.body));
    let tr = d.get(&format!("/targets/{sha}.fw.bin")).unwrap();
    assert_eq!((tr.status, tr.body == fw), (200, true));

    // the staff report inventory: empty, then the pump's report, for operators and technicians
    let empty = get_on(&t.staff, &tech, "/api/v1/staff/reports").unwrap();
    assert_eq!(
        (empty.status, empty.json()),
        (200, json!({"reports": [], "next": null}))
    );
    let report = json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}],
                        "last_result": {"result": "installed", "target": "fw.bin", "version": "1.0.0"}});
    assert_status(
        d.send(
            "POST",
            "/api/v1/devices/pump-7/report",
            &[json_ct],
            report.to_string().as_bytes(),
        ),
        204,
    );
    // as stored: the parsed report (absent optional fields as null)
    let mut stored = report.clone();
    stored["last_result"]["reason"] = Value::Null;
    for who in [&op, &tech] {
        let r = assert_status(get_on(&t.staff, who, "/api/v1/staff/reports?limit=1"), 200);
        let v = r.json();
        let rows = v["reports"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0]["device"].clone(),
                rows[0]["report"].clone(),
                rows[0]["history"].clone(),
                v["next"].clone()
            ),
            (json!("pump-7"), stored.clone(), json!([]), json!("pump-7"))
        );
        let after = get_on(&t.staff, who, "/api/v1/staff/reports?after=pump-7").unwrap();
        assert_eq!(after.json(), json!({"reports": [], "next": null}));
    }
}

// --- refusals on connections kept alive across a change, and what they leave stored -----------

/// What a refusal must leave alone: the device records, the length of the audit log and the
/// Device Issuing CA's published CRL (which certificates are revoked).
fn stored(t: &TlsServer, p: &Pki, op: &Arc<ClientConfig>) -> (Value, usize, Vec<u8>) {
    let (devices, audit) = state(t, op);
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let crl = assert_status(get_on(&t.enroll, &anon, "/crl/device-issuing.crl"), 200).body;
    (devices, audit, crl)
}

/// An operator imports a manifest listing these factory certificates (model [`MODEL`]).
fn import_factories(t: &TlsServer, p: &Pki, op: &Arc<ClientConfig>, factories: &[&Holder]) {
    let entries: Vec<ManifestEntry> = factories
        .iter()
        .map(|h| {
            let id = hale_pki::PeerIdentity::from_der(&h.cert.der).unwrap();
            ManifestEntry::new(&id.name, MODEL, &h.cert.spki_sha256)
        })
        .collect();
    let manifest =
        Manifest::sign(&p.h.manufacturing, "batch-1", &entries, SystemTime::now()).unwrap();
    assert_status(
        post_on(&t.staff, op, "/api/v1/staff/manifests", &manifest),
        200,
    );
}

#[test]
fn factory_certificate_revoked_while_its_connection_is_open_cannot_enroll() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let f1 = factory(&p, "pump-1");
    import_factories(&t, &p, &op, &[&f1]);
    // a factory connection opened before the revocation, kept alive across it
    let mut open = connect(&t.enroll, holder_cfg(&p, &f1));
    assert_status(open.get("/.well-known/est/cacerts"), 200);
    let crl =
        p.h.manufacturing
            .crl(
                &[hale_pki::crl::RevokedCertificate {
                    serial_hex: f1.cert.serial_hex.clone(),
                    revoked_at: SystemTime::now(),
                    reason: Some(hale_pki::crl::RevocationReason::KeyCompromise),
                }],
                2,
                SystemTime::now(),
                Duration::from_secs(86_400),
            )
            .unwrap();
    let r = assert_status(
        once(
            &t.staff,
            op.clone(),
            "PUT",
            "/api/v1/staff/crl/manufacturing",
            &[],
            crl.pem.as_bytes(),
        ),
        200,
    );
    assert_eq!(r.json(), json!({"ca": "manufacturing", "crl_number": 2}));
    let before = stored(&t, &p, &op);
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    // the open connection: refused per request, as a revoked staff certificate is
    assert_refused(
        open.send(
            "POST",
            "/.well-known/est/simpleenroll",
            &[PKCS10],
            k1.csr_pem.as_bytes(),
        ),
        403,
        "certificate_revoked",
    );
    // a new connection: refused at the handshake
    assert_alert(
        enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem),
        "CertificateRevoked",
    );
    only_refusals_stored(
        &t,
        &p,
        &op,
        &before,
        &[("enroll-refused", "factory:pump-1", "certificate_revoked")],
    );
}

#[test]
fn certificates_that_expire_on_a_kept_alive_connection_are_refused_per_request() {
    // operational certificates valid for 6 s (the handshake happens well within)
    let f = Fixture::with_config(json!({"device_certificate_validity_secs": 6}));
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let f1 = factory(&p, "pump-1");
    let short = Duration::from_secs(6);
    let kf = generate_key_and_csr(KeyAlgorithm::P256, "pump-2").unwrap();
    let f2 = Holder {
        key_pem: kf.private_key_pem.to_string(),
        cert: p
            .h
            .manufacturing
            .issue_factory_certificate(&kf.csr_pem, "pump-2", MODEL, short, SystemTime::now())
            .unwrap(),
    };
    import_factories(&t, &p, &op, &[&f1, &f2]);
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d1 = operational(
        &assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200).body,
        &k1.private_key_pem,
    );
    let ks = generate_key_and_csr(KeyAlgorithm::P256, "sam").unwrap();
    let sam = Holder {
        key_pem: ks.private_key_pem.to_string(),
        cert: p
            .h
            .technician
            .issue_staff_certificate(
                &ks.csr_pem,
                "sam",
                StaffRole::Operator,
                short,
                SystemTime::now(),
            )
            .unwrap(),
    };
    // connections opened while each certificate is valid, and used once
    let report =
        json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}]}).to_string();
    let report_path = "/api/v1/devices/pump-1/report";
    let mut device = connect(&t.device, holder_cfg(&p, &d1));
    assert_status(
        device.send("POST", report_path, &[], report.as_bytes()),
        204,
    );
    let mut renew = connect(&t.enroll, holder_cfg(&p, &d1));
    assert_status(renew.get("/.well-known/est/cacerts"), 200);
    let mut factory2 = connect(&t.enroll, holder_cfg(&p, &f2));
    assert_status(factory2.get("/.well-known/est/cacerts"), 200);
    let mut staff_open = connect(&t.staff, holder_cfg(&p, &sam));
    assert_status(staff_open.get("/api/v1/staff/devices"), 200);

    let last = [d1.cert.not_after, f2.cert.not_after, sam.cert.not_after]
        .into_iter()
        .max()
        .unwrap();
    std::thread::sleep(
        last.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(1500),
    );
    let before = stored(&t, &p, &op);
    // the device API: no report (no audit record)
    assert_refused(
        device.send("POST", report_path, &[], report.as_bytes()),
        403,
        "certificate_expired",
    );
    assert_refused(device.get("/timestamp.json"), 403, "certificate_expired");
    // EST renewal with the expired certificate: nothing issued
    let k1b = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_refused(
        renew.send(
            "POST",
            "/.well-known/est/simplereenroll",
            &[PKCS10],
            k1b.csr_pem.as_bytes(),
        ),
        403,
        "certificate_expired",
    );
    // EST enrollment with an expired factory certificate
    let k2 = generate_key_and_csr(KeyAlgorithm::P256, "pump-2").unwrap();
    assert_refused(
        factory2.send(
            "POST",
            "/.well-known/est/simpleenroll",
            &[PKCS10],
            k2.csr_pem.as_bytes(),
        ),
        403,
        "certificate_expired",
    );
    // the staff API: an expired operator certificate reads and changes nothing
    assert_refused(
        staff_open.get("/api/v1/staff/devices"),
        403,
        "certificate_expired",
    );
    assert_refused(
        staff_open.send(
            "POST",
            "/api/v1/staff/devices/pump-1/decommission",
            &[],
            b"",
        ),
        403,
        "certificate_expired",
    );
    // new connections: refused at the handshake
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d1), "/timestamp.json"),
        "CertificateExpired",
    );
    assert_alert(
        get_on(&t.staff, &holder_cfg(&p, &sam), "/api/v1/staff/devices"),
        "CertificateExpired",
    );
    // nothing issued or changed; the two EST requests with expired certificates of ours are
    // audited (the staff ones are refused before any route)
    only_refusals_stored(
        &t,
        &p,
        &op,
        &before,
        &[
            ("enroll-refused", "device:pump-1", "certificate_expired"),
            ("enroll-refused", "factory:pump-2", "certificate_expired"),
        ],
    );
}

/// The tag's header length and content length of the DER element at the start of `b`.
fn der_header(b: &[u8]) -> (usize, usize) {
    match b[1] {
        n if n < 0x80 => (2, n as usize),
        0x81 => (3, b[2] as usize),
        0x82 => (4, (b[2] as usize) << 8 | b[3] as usize),
        other => panic!("length form {other:#x}"),
    }
}

/// A DER element: `tag`, its length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// `crl` (signed by `ca`) turned into a version 1 CRL (version field 0) and signed again with
/// `ca`'s key: `verify_crl` takes it (issuer, signature, dates, number), webpki does not (it
/// parses version 2 CRLs only).
fn v1_crl(ca: &Ca, crl: &[u8]) -> String {
    let file: Value = serde_json::from_slice(&ca.to_file_with_cost(b"k", 10).unwrap()).unwrap();
    let key = hale_repo::SigningKey::from_encrypted_file(
        &serde_json::to_vec(&file["key"]).unwrap(),
        b"k",
    )
    .unwrap();
    let (h, _) = der_header(crl);
    let inner = &crl[h..];
    let (th, tl) = der_header(inner);
    let mut tbs = inner[..th + tl].to_vec();
    assert_eq!(&tbs[th..th + 3], &[0x02, 0x01, 0x01], "version 2");
    tbs[th + 2] = 0x00;
    let (ah, al) = der_header(&inner[th + tl..]);
    let alg = &inner[th + tl..th + tl + ah + al];
    let mut bits = vec![0u8];
    bits.extend(key.sign(&tbs));
    let body = [tbs, alg.to_vec(), der(0x03, &bits)].concat();
    let out = der(0x30, &body);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&out);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        lines.join("\n")
    )
}

#[test]
fn a_port_taken_stops_the_server_before_any_listener_is_announced() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    tls_dir(&tls);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let repo_before = snapshot_dir(&f.data.join("repo"));
    let out = tls_command_on(&f, &tls, &addr).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // before, the plain, device and enroll listeners were announced (a script took the server
    // for started) and the re-sign task had begun before the staff port was found taken
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "nothing announced"
    );
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert!(
        log.lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!("error: listening on {addr}: ")),
        "{log}"
    );
    assert!(!log.contains("hale-server listening"), "{log}");
    assert!(!log.contains("listener (TLS)"), "{log}");
    drop(taken);
    assert!(
        snapshot_dir(&f.data.join("repo")) == repo_before,
        "the served repository changed"
    );
}

/// Every file under `dir`, with the SHA-256 of its bytes.
fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, [u8; 32])> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let hash = sha2::Sha256::digest(std::fs::read(&p).unwrap()).into();
                out.push((p, hash));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn crl_refused_by_the_listener_leaves_the_crl_file_and_a_restart_works() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let file = tls.join("crl/manufacturing.crl");
    let on_disk = std::fs::read_to_string(&file).unwrap();
    let good =
        p.h.manufacturing
            .crl(&[], 2, SystemTime::now(), Duration::from_secs(86_400))
            .unwrap();
    let v1 = v1_crl(&p.h.manufacturing, &good.der);
    // the first check takes it: signature, issuer, dates and number are fine
    let v = hale_pki::crl::verify_crl(
        &hale_pki::tls::crl_from_pem(&v1).unwrap(),
        p.h.manufacturing.certificate_der(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(v.number, 2);
    let before = stored(&t, &p, &op);
    let r = once(
        &t.staff,
        op.clone(),
        "PUT",
        "/api/v1/staff/crl/manufacturing",
        &[],
        v1.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"error": "bad_crl",
                   "message": "CRL refused: TLS client verifier: provided CRL could not be parsed: UnsupportedCrlVersion"})
        )
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        on_disk,
        "the CRL file"
    );
    assert_eq!(stored(&t, &p, &op), before, "no crl-load record");
    // the loaded CRL still serves: a factory certificate enrolls
    let f1 = factory(&p, "pump-1");
    import_factories(&t, &p, &op, &[&f1]);
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200);
    // a restart reads the TLS directory as it was
    drop(t);
    let t = start_tls(&f, &tls);
    assert_status(get_on(&t.staff, &op, "/api/v1/staff/devices"), 200);
}

/// The audit records of `kind`, as an operator reads them.
fn audit_of(t: &TlsServer, op: &Arc<ClientConfig>, kind: &str) -> Vec<Value> {
    let a = assert_status(get_on(&t.staff, op, "/api/v1/staff/audit"), 200).json();
    a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn technician_token_cannot_replace_an_enrolled_devices_certificate() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let tech = staff(&p, "theo", StaffRole::Technician);
    let (f1, f2) = (factory(&p, "pump-1"), factory(&p, "pump-2"));
    import_factories(&t, &p, &op, &[&f1, &f2]);
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d1 = operational(
        &assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200).body,
        &k1.private_key_pem,
    );

    // a technician: no token for a device that holds a current certificate
    let before = stored(&t, &p, &op);
    let r = post_on(
        &t.staff,
        &tech,
        "/api/v1/staff/enroll-tokens",
        br#"{"serial": "pump-1"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"error": "role_forbidden",
                   "message": "a technician may not issue an enrollment token for a device that holds a current certificate"})
        )
    );
    only_refusals_stored(
        &t,
        &p,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden")],
    );

    // a technician's token issued before the device enrolled cannot replace its certificate
    let tech_token = enroll_token(&t, &tech, json!({"serial": "pump-2"}));
    let k2 = generate_key_and_csr(KeyAlgorithm::P256, "pump-2").unwrap();
    assert_status(enroll(&t, &holder_cfg(&p, &f2), None, &k2.csr_pem), 200);
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let theirs = generate_key_and_csr(KeyAlgorithm::P256, "pump-2").unwrap();
    let before = stored(&t, &p, &op);
    let r = enroll(
        &t,
        &anon,
        Some(&format!("Bearer {tech_token}")),
        &theirs.csr_pem,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"error": "role_forbidden",
                   "message": "a technician may not replace a device's current certificate with an enrollment token"})
        )
    );
    only_refusals_stored(
        &t,
        &p,
        &op,
        &before,
        &[("enroll-refused", "token:pump-2", "role_forbidden")],
    );

    // an operator may, and the audit log says which certificate the token will replace
    let token = enroll_token(&t, &op, json!({"serial": "pump-1"}));
    let rec = audit_of(&t, &op, "enroll-token").pop().unwrap();
    assert_eq!(
        (rec["actor"].clone(), rec["detail"]["replaces"].clone()),
        (json!("operator:olivia"), json!(d1.cert.serial_hex))
    );
    let k1b = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_status(
        enroll(&t, &anon, Some(&format!("Bearer {token}")), &k1b.csr_pem),
        200,
    );
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d1), "/timestamp.json"),
        "CertificateRevoked",
    );
}

/// A TLS server with `config`, operator olivia, and pump-1 enrolled with its factory
/// certificate (`d1`, notBefore `not_before` in unix seconds).
struct Enrolled {
    _f: Fixture,
    t: TlsServer,
    p: Pki,
    op: Arc<ClientConfig>,
    f1: Holder,
    d1: Holder,
    not_before: u64,
}

fn enrolled_pump_1(config: Value) -> Enrolled {
    let f = Fixture::with_config(config);
    let tls = f.dir.path().join("tls");
    enrolled_pump_1_in(f, &tls)
}

/// [`enrolled_pump_1`] on `f`'s server with a new CA hierarchy in `tls`.
fn enrolled_pump_1_in(f: Fixture, tls: &Path) -> Enrolled {
    let p = tls_dir(tls);
    let t = start_tls(&f, tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let f1 = factory(&p, "pump-1");
    import_factories(&t, &p, &op, &[&f1]);
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d1 = operational(
        &assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200).body,
        &k1.private_key_pem,
    );
    let not_before = d1
        .cert
        .not_before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Enrolled {
        t,
        _f: f,
        p,
        op,
        f1,
        d1,
        not_before,
    }
}

/// Sends `request` just after the clock's next whole second and returns that second (unix
/// seconds) with the answer. The server reads the same clock while it answers, so an answer that
/// arrives within the second was decided at that second: the test knows the server's `now`.
fn within_the_next_second<T>(request: impl FnOnce() -> T) -> (u64, T) {
    let unix_now = || {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    let into_second = unix_now().subsec_nanos();
    std::thread::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
    let second = unix_now().as_secs();
    let answer = request();
    assert_eq!(
        unix_now().as_secs(),
        second,
        "the answer took longer than the rest of its second: the server's clock is not known"
    );
    (second, answer)
}

#[test]
fn renewal_and_factory_reenrollment_of_a_young_certificate_are_refused() {
    // certificates are backdated by 300 s: a minimum age of 308 s ends 8 s after issue, time
    // for four refusals each sent at the start of a second
    // (bound in this order: the server stops before its data directory goes)
    let Enrolled {
        _f,
        t,
        p,
        op,
        f1,
        d1,
        not_before,
    } = enrolled_pump_1(json!({"device_renewal_min_age_secs": 308}));
    let refusal = json!({"error": "renewal_too_early",
        "message": format!("certificate {} may be renewed or replaced from {} (unix seconds) on",
                           d1.cert.serial_hex, not_before + 308)});
    let before = stored(&t, &p, &op);
    // renewal with the current certificate, again and again: refused, with the seconds left
    // until the minimum age in Retry-After
    let renew = |h: &Holder, csr: &str| {
        once(
            &t.enroll,
            holder_cfg(&p, h),
            "POST",
            "/.well-known/est/simplereenroll",
            &[PKCS10],
            csr.as_bytes(),
        )
    };
    for _ in 0..3 {
        let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
        let (now, r) = within_the_next_second(|| renew(&d1, &k.csr_pem).unwrap());
        let retry_after = (not_before + 308 - now).to_string();
        assert_eq!(
            (r.status, r.json(), r.header("retry-after")),
            (429, refusal.clone(), Some(retry_after.as_str()))
        );
    }
    // enrollment with the factory certificate over the young certificate: refused (the factory
    // minimum defaults to the renewal one when that is shorter than a day)
    let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let (now, r) =
        within_the_next_second(|| enroll(&t, &holder_cfg(&p, &f1), None, &k.csr_pem).unwrap());
    let retry_after = (not_before + 308 - now).to_string();
    assert_eq!(
        (r.status, r.json(), r.header("retry-after")),
        (429, refusal, Some(retry_after.as_str()))
    );
    assert_eq!(
        stored(&t, &p, &op),
        before,
        "no certificate issued, none revoked, no audit record"
    );
    // the pump keeps its certificate
    assert_status(
        post_on(
            &t.device,
            &holder_cfg(&p, &d1),
            "/api/v1/devices/pump-1/report",
            br#"{"slots": [{"name": "a", "version": "1.0.0", "state": "active"}]}"#,
        ),
        204,
    );
    // once the certificate is old enough, the renewal goes through
    let earliest = std::time::UNIX_EPOCH + Duration::from_secs(not_before + 308);
    std::thread::sleep(
        earliest
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(1200),
    );
    let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d1b = operational(
        &assert_status(renew(&d1, &k.csr_pem), 200).body,
        &k.private_key_pem,
    );
    assert_ne!(d1b.cert.serial_hex, d1.cert.serial_hex);
}

#[test]
fn a_factory_reenrollment_waits_less_than_a_renewal() {
    // a pump that lost its operational key (or a renewal answer) has only its factory
    // certificate: it waits the shorter factory minimum (303 s from a notBefore backdated by
    // 300 s: 3 s), not the renewal one (an hour)
    let Enrolled {
        _f,
        t,
        p,
        op,
        f1,
        d1,
        not_before,
    } = enrolled_pump_1(json!({
        "device_renewal_min_age_secs": 3600,
        "device_factory_reenroll_min_age_secs": 303
    }));
    let earliest = std::time::UNIX_EPOCH + Duration::from_secs(not_before + 303);
    std::thread::sleep(
        earliest
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(1200),
    );
    // past the factory minimum, short of the renewal one: renewal refused until the renewal
    // minimum (Retry-After), nothing stored ...
    let before = stored(&t, &p, &op);
    let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let (now, r) = within_the_next_second(|| {
        once(
            &t.enroll,
            holder_cfg(&p, &d1),
            "POST",
            "/.well-known/est/simplereenroll",
            &[PKCS10],
            k.csr_pem.as_bytes(),
        )
        .unwrap()
    });
    let retry_after = (not_before + 3600 - now).to_string();
    assert_eq!(
        (r.status, r.json(), r.header("retry-after")),
        (
            429,
            json!({"error": "renewal_too_early",
                "message": format!("certificate {} may be renewed or replaced from {} (unix seconds) on",
                                   d1.cert.serial_hex, not_before + 3600)}),
            Some(retry_after.as_str())
        )
    );
    assert_eq!(stored(&t, &p, &op), before);
    // ... and the factory certificate enrolls the pump again
    let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d2 = operational(
        &assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k.csr_pem), 200).body,
        &k.private_key_pem,
    );
    assert_ne!(d2.cert.serial_hex, d1.cert.serial_hex);
}

#[test]
fn crl_keeps_only_certificates_that_have_not_expired() {
    // 6 s certificates, backdated by 300 s: the default minimum age (3 s) has passed at issue
    let f = Fixture::with_config(json!({"device_certificate_validity_secs": 6}));
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let f1 = factory(&p, "pump-1");
    import_factories(&t, &p, &op, &[&f1]);
    let listed = || {
        let crl = assert_status(get_on(&t.enroll, &anon, "/crl/device-issuing.crl"), 200).body;
        let v = hale_pki::crl::verify_crl(
            &crl,
            p.h.device_issuing.certificate_der(),
            SystemTime::now(),
        )
        .unwrap();
        (v.number, v.revoked)
    };
    let k1 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d1 = operational(
        &assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k1.csr_pem), 200).body,
        &k1.private_key_pem,
    );
    let k2 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    let d2 = operational(
        &assert_status(
            once(
                &t.enroll,
                holder_cfg(&p, &d1),
                "POST",
                "/.well-known/est/simplereenroll",
                &[PKCS10],
                k2.csr_pem.as_bytes(),
            ),
            200,
        )
        .body,
        &k2.private_key_pem,
    );
    let (n1, revoked) = listed();
    assert_eq!(revoked, vec![d1.cert.serial_hex.clone()]);
    // both expired: the pump enrolls again with its factory certificate, at once
    std::thread::sleep(
        d2.cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(1500),
    );
    let k3 = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
    assert_status(enroll(&t, &holder_cfg(&p, &f1), None, &k3.csr_pem), 200);
    // the new CRL lists neither the superseded d1 nor the superseded d2: both expired
    let (n2, revoked) = listed();
    assert_eq!((n2, revoked), (n1 + 1, Vec::<String>::new()));
}

/// A CRL put into `DIR/crl/` by a signer whose clock runs ahead of the server's (thisUpdate a
/// few seconds from now, past the first check) is refused while it is not valid yet, and read
/// again at each check until it is: the revocation it carries takes effect then. It was remembered as refused by its
/// file time and never read again until the file changed or the server restarted, with
/// technician sam let in all along (found by review).
#[test]
fn a_crl_file_signed_ahead_of_the_servers_clock_takes_effect_once_it_is_valid() {
    let e = enrolled_pump_1(json!({}));
    let (f, p, t) = (&e._f, &e.p, &e.t);
    let tls = f.dir.path().join("tls");
    let sam = staff_holder(p, "sam", StaffRole::Technician);
    let sam_cfg = holder_cfg(p, &sam);
    assert_status(get_on(&t.staff, &sam_cfg, "/api/v1/staff/devices"), 200);
    let ahead = SystemTime::now() + Duration::from_secs(12);
    let crl =
        p.h.technician
            .crl(
                &[hale_pki::crl::RevokedCertificate {
                    serial_hex: sam.cert.serial_hex.clone(),
                    revoked_at: ahead,
                    reason: None,
                }],
                2,
                ahead,
                Duration::from_secs(86_400),
            )
            .unwrap();
    write(&tls.join("crl/technician.crl"), crl.pem.as_bytes());
    // refused while not valid yet (the log says why), sam still in ...
    wait_until(
        "the CRL refused as not valid yet",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(f.data.join("server.log"))
                .unwrap()
                .contains("not yet valid")
        },
    );
    if SystemTime::now() + Duration::from_millis(500) < ahead {
        assert_status(get_on(&t.staff, &sam_cfg, "/api/v1/staff/devices"), 200);
    }
    // ... then loaded: sam is out
    wait_until("technician CRL loaded", Duration::from_secs(20), || {
        get_on(&t.staff, &sam_cfg, "/api/v1/staff/devices").is_err()
    });
    assert_alert(
        get_on(&t.staff, &sam_cfg, "/api/v1/staff/devices"),
        "CertificateRevoked",
    );
    let h = get(&format!("{}/healthz", t.plain)).json();
    assert_eq!(h["offline_crls"]["technician"]["crl_number"], 2);
}

/// Once the loaded Technician CA CRL expires, a connection an operator opened before is refused
/// on its next request as a new handshake is (it was served: the per-request check looked only
/// at the serials listed). Found by review.
#[test]
fn an_expired_staff_crl_refuses_a_connection_kept_alive_from_before() {
    let e = enrolled_pump_1(json!({}));
    let (p, t, op) = (&e.p, &e.t, &e.op);
    let now = SystemTime::now();
    let short =
        p.h.technician
            .crl(&[], 2, now, Duration::from_secs(4))
            .unwrap();
    let r = once(
        &t.staff,
        op.clone(),
        "PUT",
        "/api/v1/staff/crl/technician",
        &[],
        short.pem.as_bytes(),
    );
    assert_status(r, 200);
    let mut open = connect(&t.staff, op.clone());
    assert_status(open.get("/api/v1/staff/devices"), 200);
    while SystemTime::now() < short.next_update + Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let expired_at = short
        .next_update
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = open.get("/api/v1/staff/devices").unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            json!({"error": "crl_expired", "message": format!(
                "the Technician CA CRL expired at {expired_at} (unix seconds): its certificates \
                 are refused until a current CRL is loaded"
            )})
        )
    );
}

#[test]
fn an_expired_staff_crl_locks_staff_out_but_not_devices_and_says_so_until_a_new_one_arrives() {
    let e = enrolled_pump_1(json!({}));
    let (f, p) = (&e._f, &e.p);
    let tls = f.dir.path().join("tls");
    drop(e.t);
    // the Technician CA CRL on disk expired a day ago (nobody signed the next one)
    let now = SystemTime::now();
    let stale =
        p.h.technician
            .crl(
                &[],
                2,
                now - Duration::from_secs(8 * 86_400),
                Duration::from_secs(7 * 86_400),
            )
            .unwrap();
    let file = tls.join("crl/technician.crl");
    write(&file, stale.pem.as_bytes());
    let expired_at = hale_pki::utc(stale.next_update);
    let message = format!(
        "Hale Technician CA CRL number 2 expired at {expired_at}: the staff listener refuses every \
         technician and operator certificate; sign a new CRL (`hale-sign ca crl --ca technician …`) \
         and put it at {} (read within seconds)",
        file.display()
    );
    // the server starts: the device API serves, staff are refused at the handshake
    let t = start_tls(f, &tls);
    let report = json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}]});
    assert_status(
        post_on(
            &t.device,
            &holder_cfg(p, &e.d1),
            "/api/v1/devices/pump-1/report",
            report.to_string().as_bytes(),
        ),
        204,
    );
    assert_alert(
        get_on(&t.staff, &e.op, "/api/v1/staff/devices"),
        "UnknownCA",
    );
    let h = get(&format!("{}/healthz", t.plain));
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    assert_eq!(h.json()["warnings"], json!([message]));
    assert_eq!(h.json()["offline_crls"]["technician"]["crl_number"], 2);
    assert!(
        h.json()["offline_crls"]["technician"]["expires_in"]
            .as_i64()
            .unwrap()
            < -86_000
    );
    assert_eq!(h.json()["offline_crls"]["manufacturing"]["crl_number"], 1);
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert_eq!(log.matches(&message).count(), 1, "logged once: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colours in a log file: {log}"
    );
    // a current CRL put in its place is read within seconds: staff are back
    let fresh =
        p.h.technician
            .crl(&[], 3, SystemTime::now(), Duration::from_secs(7 * 86_400))
            .unwrap();
    write(&file, fresh.pem.as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get_on(&t.staff, &e.op, "/api/v1/staff/devices").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new CRL was not loaded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let h = get(&format!("{}/healthz", t.plain)).json();
    assert_eq!(h["warnings"], json!([]));
    assert_eq!(h["offline_crls"]["technician"]["crl_number"], 3);
    // a CRL within two days of its nextUpdate is warned about before it locks anyone out
    let late =
        p.h.technician
            .crl(
                &[],
                4,
                SystemTime::now() - Duration::from_secs(6 * 86_400),
                Duration::from_secs(7 * 86_400 - 3600),
            )
            .unwrap();
    write(&file, late.pem.as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let h = loop {
        let h = get(&format!("{}/healthz", t.plain)).json();
        if h["offline_crls"]["technician"]["crl_number"] == 4 {
            break h;
        }
        assert!(std::time::Instant::now() < deadline, "CRL 4 was not loaded");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        h["warnings"],
        json!([format!(
            "Hale Technician CA CRL number 4 expires at {} (in 22 h): then the staff listener \
             refuses every technician and operator certificate; sign a new CRL (`hale-sign ca crl \
             --ca technician …`) and put it at {} (read within seconds)",
            hale_pki::utc(late.next_update),
            file.display()
        )])
    );
    assert_status(get_on(&t.staff, &e.op, "/api/v1/staff/devices"), 200);
}

/// The server's TLS certificate ten days from its end and a CA certificate within 180 days of
/// its: the log says so once each at start, and `/healthz` warns (status unchanged) with what
/// stops and what to do, and gives every certificate's time left.
#[test]
fn certificates_near_their_end_are_warned_about_at_start_and_in_healthz() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let now = SystemTime::now();
    // a server certificate that ends in ten days
    let k = generate_key_and_csr(KeyAlgorithm::P256, "server").unwrap();
    let cert =
        p.h.server
            .issue_server_certificate(
                &k.csr_pem,
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(10 * 86_400),
                now,
            )
            .unwrap();
    write(
        &tls.join("server.crt"),
        format!("{}{}", cert.pem, p.h.server.certificate_pem().unwrap()).as_bytes(),
    );
    write(
        &tls.join("server.key"),
        &hale_pki::tls::seal_private_key_with_cost(&k.private_key_pem, CA_PASS.as_bytes(), 10)
            .unwrap(),
    );
    let server_end = hale_pki::tls::certificate_not_after(
        &hale_pki::tls::certificate_from_pem(&cert.pem).unwrap(),
    )
    .unwrap();
    let t = start_tls(&f, &tls);
    let server_msg = format!(
        "the server's TLS certificate (server.crt) expires at {} (in 9 days): then devices, \
         technicians, operators and factory enrollment refuse every connection to this server; \
         issue a new one for the same names, its key sealed with the server's passphrase: \
         `hale-sign ca server-cert --ca-dir CA_DIR --dns localhost --ip 127.0.0.1 --out {} \
         --force` (CA_DIR: where the Server CA file is kept; issued elsewhere, put the pair at {} \
         and {}): the server presents it from the next connection (no restart)",
        hale_pki::utc(server_end),
        tls.join("server").display(),
        tls.join("server.crt").display(),
        tls.join("server.key").display()
    );
    let h = get(&format!("{}/healthz", t.plain));
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    // the hierarchy of `tls_dir` is valid for 365 days: no CA is warned about yet
    assert_eq!(h.json()["warnings"], json!([server_msg]));
    let left = |name: &str| {
        h.json()["certificates"][name]["expires_in"]
            .as_i64()
            .unwrap()
    };
    assert!((9 * 86_400..=10 * 86_400).contains(&left("server")));
    for ca in [
        "server-ca",
        "root",
        "device-issuing",
        "manufacturing",
        "technician",
    ] {
        assert!(left(ca) > 364 * 86_400, "{ca}: {}", left(ca));
    }
    let metrics = get(&format!("{}/metrics", t.plain)).body;
    let metrics = String::from_utf8_lossy(&metrics);
    let gauge = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("hale_certificate_expires_in_seconds{certificate=\"server\"} ")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!((9 * 86_400..=10 * 86_400).contains(&gauge.parse::<i64>().unwrap()));
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert_eq!(log.matches(&server_msg).count(), 1, "logged once: {log}");
    drop(t);

    // a hierarchy that ends in 100 days: each CA certificate is warned about, with what stops
    let tls = f.dir.path().join("tls-short");
    let p = tls_dir_valid(&tls, 100, 60);
    let t = start_tls(&f, &tls);
    let h = get(&format!("{}/healthz", t.plain)).json();
    let warnings: Vec<String> = h["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    let root_msg = format!(
        "the root CA certificate (ca/root.crt) expires at {} (in 99 days): then no certificate of \
         the hierarchy verifies: every listener refuses every client; a CA certificate is renewed \
         from the key above it in a key ceremony (hale-sign has no command for it yet); a new \
         hierarchy (`hale-sign ca init`) means enrolling every device again",
        hale_pki::utc(p.h.root.not_after().unwrap())
    );
    assert!(warnings.contains(&root_msg), "{warnings:#?}");
    for (file, stops) in [
        ("server.crt", "every connection to this server"),
        (
            "ca/device-issuing.crt",
            "the device listener refuses every device certificate",
        ),
        (
            "ca/manufacturing.crt",
            "the enrollment listener refuses every factory certificate",
        ),
        (
            "ca/technician.crt",
            "the staff listener refuses every technician and operator",
        ),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("CA certificate") && w.contains(file) && w.contains(stops)),
            "{file}: {warnings:#?}"
        );
    }
    assert_eq!(
        warnings.len(),
        5,
        "five CA certificates, the server's not yet: {warnings:#?}"
    );
    assert_eq!(h["status"], json!("ok"));
}

/// A staged rollout set before the release is published: a device outside its share is refused
/// the image (`rollout_pending`) and sees the metadata as everyone does; a device inside gets
/// it; raising the share admits more, ending it admits all; the plain listener serves the image
/// only at 100 %; staff always; each change is audited and outlives a restart.
#[test]
fn a_staged_rollout_holds_an_image_back_from_devices_outside_its_share() {
    let e = enrolled_pump_1(json!({}));
    let (f, p, op) = (&e._f, &e.p, &e.op);
    let tech = staff(p, "theo", StaffRole::Technician);
    let fw: Vec<u8> = (0..20_000u32).map(|i| (i % 239) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&fw));
    let image = format!("/targets/{sha}.fw.bin");
    // pump-1's place in this rollout; a share just below it and one just above
    let place = hale_server::rollout::bucket(&sha, "pump-1");
    assert!(
        place < 99,
        "the image is fixed: pump-1's place is {place}, below 99"
    );
    // PUT the rollout of this image as operator olivia
    let put = |t: &TlsServer, body: &[u8]| {
        let path = format!("/api/v1/staff/rollouts/{sha}");
        once(
            &t.staff,
            op.clone(),
            "PUT",
            &path,
            &[("Content-Type", "application/json")],
            body,
        )
    };
    let rollout = |t: &TlsServer, percent: u8| {
        let body = json!({"percent": percent, "target": "fw.bin"}).to_string();
        assert_status(put(t, body.as_bytes()), 200).json()
    };
    let t = &e.t;
    // before the release: 0 %, or just below pump-1's place
    let r = rollout(t, place);
    assert_eq!(
        (r["percent"].clone(), r["target"].clone(), r["by"].clone()),
        (json!(place), json!("fw.bin"), json!("operator:olivia"))
    );
    // a technician may look, not change
    assert_eq!(
        assert_status(get_on(&t.staff, &tech, "/api/v1/staff/rollouts"), 200).json()["rollouts"][0]
            ["sha256"],
        sha
    );
    assert_refused(
        once(
            &t.staff,
            tech.clone(),
            "PUT",
            &format!("/api/v1/staff/rollouts/{sha}"),
            &[],
            br#"{"percent": 100}"#,
        ),
        403,
        "role_forbidden",
    );
    for (body, msg) in [
        (&br#"{"percent": 101}"#[..], "percent 101: 0 to 100"),
        (
            &br#"{"percent": 5, "extra": 1}"#[..],
            "unknown field `extra`, expected `percent` or `target` at line 1 column 22",
        ),
    ] {
        let r = put(t, body).unwrap();
        assert_eq!((r.status, r.json()["message"].clone()), (400, json!(msg)));
    }
    let r = once(
        &t.staff,
        op.clone(),
        "PUT",
        "/api/v1/staff/rollouts/ABC",
        &[],
        br#"{"percent": 5}"#,
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // the release
    let json_ct = ("Content-Type", "application/json");
    let targets_v1 = f.targets(1, &[("fw.bin", &fw, None)], None);
    let mut c = connect(&t.staff, op.clone());
    assert_status(c.send("POST", "/api/v1/targets", &[], &fw), 200);
    let body = publish_body(None, &[("targets", &targets_v1)]);
    assert_status(c.send("POST", "/api/v1/publish", &[json_ct], &body), 200);
    let device = holder_cfg(p, &e.d1);
    // outside the share: the metadata as everyone, not the image
    assert_status(get_on(&t.device, &device, "/timestamp.json"), 200);
    let held = get_on(&t.device, &device, &image).unwrap();
    assert_eq!(held.header("cache-control"), Some("no-store"));
    assert_eq!(
        (held.status, held.json()),
        (
            403,
            json!({"error": "rollout_pending", "message": format!(
            "this image is in a staged rollout at {place} %: this device is not in it yet; it is offered again at the next poll")})
        )
    );
    // no device identity: held back until 100 %; staff: always
    let plain = request("GET", &format!("{}{image}", t.plain), &[], None).unwrap();
    assert_eq!(
        (plain.status, plain.json()["error"].clone()),
        (403, json!("rollout_pending"))
    );
    assert_eq!(assert_status(get_on(&t.staff, &tech, &image), 200).body, fw);
    // one point more and pump-1 is in
    rollout(t, place + 1);
    assert_eq!(
        assert_status(get_on(&t.device, &device, &image), 200).body,
        fw
    );
    let plain = request("GET", &format!("{}{image}", t.plain), &[], None).unwrap();
    assert_eq!(plain.status, 403);
    // held back again (lowered), across a restart: stored
    rollout(t, place);
    drop(e.t);
    let t = start_tls(f, &f.dir.path().join("tls"));
    assert_eq!(get_on(&t.device, &device, &image).unwrap().status, 403);
    let m = String::from_utf8(get(&format!("{}/metrics", t.plain)).body).unwrap();
    assert!(m.contains("hale_rollout_held_total 1\n"), "{m}");
    // ended: everyone, the plain listener too
    let end = |t: &TlsServer| {
        once(
            &t.staff,
            op.clone(),
            "DELETE",
            &format!("/api/v1/staff/rollouts/{sha}"),
            &[],
            b"",
        )
    };
    assert_eq!(assert_status(end(&t), 200).json()["percent"], json!(place));
    assert_eq!(
        assert_status(get_on(&t.device, &device, &image), 200).body,
        fw
    );
    assert_eq!(
        request("GET", &format!("{}{image}", t.plain), &[], None)
            .unwrap()
            .status,
        200
    );
    let none = end(&t).unwrap();
    assert_eq!(
        (none.status, none.json()),
        (
            404,
            json!({"error": "rollout_unknown", "message": format!("no rollout for the image {sha}")})
        ),
        "no rollout left to end"
    );
    // a rollout that cannot be kept is not in force, and the operator's log says why
    let kept = f.data.join("rollouts.json");
    std::fs::remove_file(&kept).unwrap();
    std::fs::create_dir(&kept).unwrap();
    let r = put(&t, br#"{"percent": 1}"#).unwrap();
    assert_eq!((r.status, r.code().as_str()), (500, "internal"));
    assert_eq!(
        assert_status(get_on(&t.staff, op, "/api/v1/staff/rollouts"), 200).json(),
        json!({"rollouts": []})
    );
    assert_eq!(
        assert_status(get_on(&t.device, &device, &image), 200).body,
        fw
    );
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert!(log.contains("internal error answered 500"), "{log}");
    std::fs::remove_dir(&kept).unwrap();
    // every change audited, in order
    let changes: Vec<(String, Value)> = audit_of(&t, op, "rollout")
        .into_iter()
        .chain(audit_of(&t, op, "rollout-end"))
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["detail"]["percent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("rollout".to_string(), json!(place)),
            ("rollout".to_string(), json!(place + 1)),
            ("rollout".to_string(), json!(place)),
            ("rollout-end".to_string(), json!(place)),
        ]
    );
}

/// A rollout set on the sha256 of other bytes than the release's (a wrapped or compressed file, a
/// typo) holds nothing back: the publish that releases an image under the path the rollout names
/// says so in its answer, its audit record and the log, as the image goes to every device. A
/// release the rollouts do hold gets no warning.
#[test]
fn a_release_under_a_rollouts_path_that_no_rollout_holds_is_published_with_a_warning() {
    let e = enrolled_pump_1(json!({}));
    let (f, p, op, t) = (&e._f, &e.p, &e.op, &e.t);
    let fw: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&fw));
    let wrong = hex::encode(sha2::Sha256::digest(b"fw.bin.zip"));
    let rollout = |sha: &str| {
        let body = json!({"percent": 0, "target": "fw.bin"}).to_string();
        assert_status(
            once(
                &t.staff,
                op.clone(),
                "PUT",
                &format!("/api/v1/staff/rollouts/{sha}"),
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
            200,
        );
    };
    rollout(&wrong);
    let json_ct = ("Content-Type", "application/json");
    let mut c = connect(&t.staff, op.clone());
    assert_status(c.send("POST", "/api/v1/targets", &[], &fw), 200);
    let body = publish_body(
        None,
        &[("targets", &f.targets(1, &[("fw.bin", &fw, None)], None))],
    );
    let r = assert_status(c.send("POST", "/api/v1/publish", &[json_ct], &body), 200).json();
    let warning = format!(
        "fw.bin is released as sha256 {sha}, which no rollout holds back: every device is \
         offered it. The rollout naming fw.bin (0%, set by operator:olivia) holds sha256 \
         {wrong}: set the rollout on the image's sha256"
    );
    assert_eq!(r["published"]["warnings"], json!([warning]), "{r}");
    // as it says: pump-1 (outside a 0 % share) gets the image
    let device = holder_cfg(p, &e.d1);
    let image = format!("/targets/{sha}.fw.bin");
    assert_eq!(
        assert_status(get_on(&t.device, &device, &image), 200).body,
        fw
    );
    let published = audit_of(t, op, "publish");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["detail"]["warnings"], json!([warning]));
    let log = std::fs::read_to_string(f.data.join("server.log")).unwrap();
    assert!(log.contains("release not held back by a rollout"), "{log}");

    // the next release, its rollout set on its own sha256: held, and no warning
    let fw2: Vec<u8> = (0..20_000u32).map(|i| (i % 233) as u8).collect();
    let sha2 = hex::encode(sha2::Sha256::digest(&fw2));
    rollout(&sha2);
    assert_status(c.send("POST", "/api/v1/targets", &[], &fw2), 200);
    let body = publish_body(
        None,
        &[("targets", &f.targets(2, &[("fw.bin", &fw2, None)], None))],
    );
    let r = assert_status(c.send("POST", "/api/v1/publish", &[json_ct], &body), 200).json();
    assert!(r["published"].get("warnings").is_none(), "{r}");
    let held = get_on(&t.device, &device, &format!("/targets/{sha2}.fw.bin")).unwrap();
    assert_eq!(
        (held.status, held.code().as_str()),
        (403, "rollout_pending")
    );
}

/// A server certificate issued by `ca` for `dns` and 127.0.0.1, valid `days`, with its key, into
/// the TLS directory `tls` (the key first, then the chain); returns its serial.
fn put_server_certificate(tls: &Path, ca: &Ca, dns: &[&str], days: u64) -> String {
    put_server_certificate_at(tls, ca, dns, days, SystemTime::now())
}

/// [`put_server_certificate`] by a signer whose clock says `now`.
fn put_server_certificate_at(
    tls: &Path,
    ca: &Ca,
    dns: &[&str],
    days: u64,
    now: SystemTime,
) -> String {
    let k = generate_key_and_csr(KeyAlgorithm::P256, "server").unwrap();
    let cert = ca
        .issue_server_certificate(
            &k.csr_pem,
            dns,
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(days * 86_400),
            now,
        )
        .unwrap();
    write(
        &tls.join("server.key"),
        &hale_pki::tls::seal_private_key_with_cost(&k.private_key_pem, CA_PASS.as_bytes(), 10)
            .unwrap(),
    );
    write(
        &tls.join("server.crt"),
        format!("{}{}", cert.pem, ca.certificate_pem().unwrap()).as_bytes(),
    );
    cert.serial_hex
}

/// The serial of the certificate a listener at `addr` presents to a new client.
fn presented_serial(addr: &str, server_ca: &CertificateDer<'static>) -> String {
    let mut c = connect(
        addr,
        client_config_without_certificate(server_ca.clone()).unwrap(),
    );
    let _ = c.get("/");
    let leaf = c.0.conn.peer_certificates().unwrap()[0].clone();
    hale_pki::tls::certificate_serial(&leaf).unwrap()
}

/// Wait (20 s at most) until the server's log has `text` `n` times.
fn wait_for_log(f: &Fixture, text: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(f.data.join("server.log")).unwrap_or_default();
        if log.matches(text).count() >= n {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in the log: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_new_server_certificate_is_presented_without_a_restart_and_one_clients_would_refuse_is_not() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    // the server's certificate ends in ten days: warned about
    let p = tls_dir_valid(&tls, 365, 10);
    let first = hale_pki::tls::certificate_serial(
        &hale_server::tls::certificates_from_pem(
            &std::fs::read_to_string(tls.join("server.crt")).unwrap(),
        )
        .unwrap()[0],
    )
    .unwrap();
    let t = start_tls(&f, &tls);
    let operator = staff(&p, "olga", StaffRole::Operator);
    for addr in [&t.device, &t.enroll, &t.staff] {
        assert_eq!(presented_serial(addr, &p.server_ca), first);
    }
    let warnings = || get(&format!("{}/healthz", t.plain)).json()["warnings"].clone();
    assert_eq!(warnings().as_array().unwrap().len(), 1, "{}", warnings());
    let refused = "server.crt and server.key not reloaded";

    // from another hierarchy's Server CA: pumps would refuse it, so it is not presented
    let other = Hierarchy::create(Duration::from_secs(365 * 86_400), SystemTime::now()).unwrap();
    put_server_certificate(&tls, &other.server, &["localhost"], 90);
    let log = wait_for_log(&f, "would refuse it for localhost, 127.0.0.1", 1);
    assert!(log.contains(refused), "{log}");
    // (the same Server CA name with another key: the signature does not verify)
    assert!(
        log.contains(
            "would refuse it for localhost, 127.0.0.1: invalid peer certificate: BadSignature"
        ),
        "{log}"
    );
    assert_eq!(presented_serial(&t.device, &p.server_ca), first);

    // from our Server CA but not for the name clients connect to: refused too
    put_server_certificate(&tls, &p.h.server, &["elsewhere.example"], 90);
    let log = wait_for_log(&f, "would refuse it for localhost, 127.0.0.1", 2);
    assert!(
        log.contains(
            "would refuse it for localhost, 127.0.0.1: invalid peer certificate: certificate not \
             valid for name \"localhost\"; certificate is only valid for \
             DnsName(\"elsewhere.example\") or IpAddress(127.0.0.1)"
        ),
        "{log}"
    );
    assert_eq!(presented_serial(&t.device, &p.server_ca), first);

    // a good one: every listener presents it from the next connection, the warning is gone,
    // and the audit log says when it came
    let second = put_server_certificate(&tls, &p.h.server, &["localhost"], 90);
    wait_for_log(&f, "server certificate reloaded", 1);
    for addr in [&t.device, &t.enroll, &t.staff] {
        assert_eq!(presented_serial(addr, &p.server_ca), second);
    }
    assert_eq!(warnings(), json!([]));
    let loads = audit_of(&t, &operator, "server-certificate-load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(loads[0]["detail"]["certificate"], second);
    assert_eq!(loads[0]["actor"], "tls-dir");

    // from a signer whose clock runs ahead (valid a few seconds from now): refused as not valid
    // yet, then presented once it is, the files untouched since
    let ahead = SystemTime::now() + hale_pki::profile::BACKDATE + Duration::from_secs(8);
    let third = put_server_certificate_at(&tls, &p.h.server, &["localhost"], 90, ahead);
    wait_for_log(&f, "certificate not valid yet", 1);
    assert_eq!(presented_serial(&t.device, &p.server_ca), second);
    wait_for_log(&f, "server certificate reloaded", 2);
    assert_eq!(presented_serial(&t.device, &p.server_ca), third);

    // and a restart takes the same files
    drop(t);
    let t = start_tls(&f, &tls);
    assert_eq!(presented_serial(&t.staff, &p.server_ca), third);
}

// --- review of 2026-11-25: server identity paths ------------------------------------------------

/// A new Device Issuing CA put into the TLS directory (a new hierarchy, its CAs named as the
/// old ones) is taken at the next start: the CRL the server signed with the old CA's key, kept
/// in its database, is signed again with the new key before the listeners load it. Kept, it
/// was found by name for the new CA's certificates and did not verify with the new key, so the
/// device listener refused every device, those enrolled under the new CA included, until the
/// CRL was due (half its lifetime: 3.5 days by default).
#[test]
fn a_new_device_issuing_ca_is_taken_with_a_crl_it_signed() {
    let f = Fixture::new();
    let old_tls = f.dir.path().join("tls-old");
    tls_dir(&old_tls);
    // the first start signs the Device Issuing CA's CRL with the old key and keeps it
    drop(start_tls(&f, &old_tls));

    let tls = f.dir.path().join("tls");
    let Enrolled {
        _f: f, t, p, d1, ..
    } = enrolled_pump_1_in(f, &tls);
    // a device enrolled under it is served
    let r = assert_status(get_on(&t.device, &holder_cfg(&p, &d1), "/1.root.json"), 200);
    assert_eq!(r.body, f.root);
    // the CRL the listeners load and serve verifies with the Device Issuing CA they anchor on
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let crl = assert_status(get_on(&t.enroll, &anon, "/crl/device-issuing.crl"), 200).body;
    hale_pki::crl::verify_crl(
        &crl,
        p.h.device_issuing.certificate_der(),
        SystemTime::now(),
    )
    .unwrap();
}

/// A pump enrolled under a Device Issuing CA that has since been replaced holds a certificate
/// the device listener refuses: it enrolls again with its factory certificate at once, even
/// within a minute of its last enrollment. The minimum age of the certificate it replaces
/// (`device_factory_reenroll_min_age_secs`, a day) held it back with `429 renewal_too_early`:
/// a day without updates or reports. With the CA not replaced, and again once the pump holds
/// the new CA's certificate, the minimum age holds (it bounds how fast a device grows the CRL).
#[test]
fn a_certificate_of_a_replaced_device_issuing_ca_is_replaced_at_once() {
    let Enrolled {
        _f: f,
        t,
        p,
        op,
        f1,
        d1,
        not_before,
    } = enrolled_pump_1(json!({}));
    let day = 86_400;
    let reenroll = |t: &TlsServer| {
        let k = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
        let (now, r) =
            within_the_next_second(|| enroll(t, &holder_cfg(&p, &f1), None, &k.csr_pem).unwrap());
        (now, r, k)
    };
    // a re-enrollment refused: the certificate `serial` (valid from `not_before`) is less than
    // a day old; nothing stored
    let refused_too_early = |t: &TlsServer, serial: &str, not_before: u64| {
        let before = stored(t, &p, &op);
        let (now, r, _) = reenroll(t);
        let wait = (not_before + day - now).to_string();
        assert_eq!(
            (r.status, r.json(), r.header("retry-after")),
            (
                429,
                json!({"error": "renewal_too_early",
                       "message": format!("certificate {serial} may be renewed or replaced from \
                                           {} (unix seconds) on", not_before + day)}),
                Some(wait.as_str())
            )
        );
        assert_eq!(stored(t, &p, &op), before);
    };
    // the CA not replaced: refused, nothing stored
    refused_too_early(&t, &d1.cert.serial_hex, not_before);
    drop(t);

    // a new Device Issuing CA, the rest of the hierarchy as it was
    let tls = f.dir.path().join("tls");
    let new_ca = Hierarchy::create(Duration::from_secs(365 * 86_400), SystemTime::now())
        .unwrap()
        .device_issuing;
    write(
        &tls.join("ca/device-issuing.crt"),
        new_ca.certificate_pem().unwrap().as_bytes(),
    );
    write(
        &tls.join("ca/device-issuing.key"),
        &new_ca.to_file_with_cost(CA_PASS.as_bytes(), 10).unwrap(),
    );
    let t = start_tls(&f, &tls);
    // the pump's certificate is of no use now: its signature does not verify with the new key
    assert_alert(
        get_on(&t.device, &holder_cfg(&p, &d1), "/1.root.json"),
        "DecryptError",
    );
    // its factory certificate enrolls it again at once, within a minute of its last enrollment
    let (now, r, k2) = reenroll(&t);
    assert!(now < not_before + 300 + 60, "{now} {not_before}");
    let r = assert_status(Ok(r), 200);
    let d2 = operational(&r.body, &k2.private_key_pem);
    let r = assert_status(get_on(&t.device, &holder_cfg(&p, &d2), "/1.root.json"), 200);
    assert_eq!(r.body, f.root);
    let enrolled = audit_of(&t, &op, "enroll");
    let last = &enrolled.last().unwrap()["detail"];
    assert_eq!(last["superseded"], d1.cert.serial_hex.as_str());
    let new_key =
        hex::encode(hale_pki::spki_sha256_of_certificate(new_ca.certificate_der()).unwrap());
    assert_eq!(last["certificate"]["issuer_spki_sha256"], new_key.as_str());
    // the new CA's certificate is held to the minimum age again
    let nb2 = d2
        .cert
        .not_before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    refused_too_early(&t, &d2.cert.serial_hex, nb2);
}

/// An enrollment by token says in the audit log which token it redeemed and who issued it,
/// and an enrollment that supersedes a certificate names it (a revocation: a CRL entry). The
/// `enroll` record said `token:<serial>` only: with a technician's and an operator's token out
/// for one device (their powers differ), the log could not tell whose enrolled it, and the
/// certificate the enrollment revoked was named nowhere.
#[test]
fn an_enrollment_by_token_names_the_token_its_issuer_and_the_certificate_it_supersedes() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    let p = tls_dir(&tls);
    let t = start_tls(&f, &tls);
    let op = staff(&p, "olivia", StaffRole::Operator);
    let tech = staff(&p, "theo", StaffRole::Technician);
    let anon = client_config_without_certificate(p.server_ca.clone()).unwrap();
    let request = json!({"serial": "pump-7", "model": MODEL});
    let by_theo = enroll_token(&t, &tech, request.clone());
    let by_olivia = enroll_token(&t, &op, request.clone());
    let id_of = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()))[..16].to_string();
    // each token's record names it
    let issued: Vec<(Value, Value)> = audit_of(&t, &op, "enroll-token")
        .iter()
        .map(|r| (r["actor"].clone(), r["detail"]["token"].clone()))
        .collect();
    assert_eq!(
        issued,
        [
            (json!("technician:theo"), json!(id_of(&by_theo))),
            (json!("operator:olivia"), json!(id_of(&by_olivia))),
        ]
    );

    // the technician's token is redeemed: its record says so
    let k7 = generate_key_and_csr(KeyAlgorithm::P256, "pump-7").unwrap();
    let d7 = operational(
        &assert_status(
            enroll(&t, &anon, Some(&format!("Bearer {by_theo}")), &k7.csr_pem),
            200,
        )
        .body,
        &k7.private_key_pem,
    );
    let enrolled = audit_of(&t, &op, "enroll");
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0]["actor"], "token:pump-7");
    assert_eq!(enrolled[0]["detail"]["token"], id_of(&by_theo));
    assert_eq!(enrolled[0]["detail"]["issued_by"], "technician:theo");
    assert_eq!(enrolled[0]["detail"]["superseded"], Value::Null);

    // the operator's token replaces the certificate: the record names the one it revoked
    let k7b = generate_key_and_csr(KeyAlgorithm::P256, "pump-7").unwrap();
    assert_status(
        enroll(
            &t,
            &anon,
            Some(&format!("Bearer {by_olivia}")),
            &k7b.csr_pem,
        ),
        200,
    );
    let enrolled = audit_of(&t, &op, "enroll");
    assert_eq!(enrolled.len(), 2);
    assert_eq!(enrolled[1]["detail"]["token"], id_of(&by_olivia));
    assert_eq!(enrolled[1]["detail"]["issued_by"], "operator:olivia");
    assert_eq!(
        enrolled[1]["detail"]["superseded"],
        d7.cert.serial_hex.as_str()
    );
    drop(t);
    audit_verify(&f);
}

/// What a status change's reason that breaks [`hale_core::report::one_line`] is answered.
const REASON_RULE: &str = "reason: one line of at most 512 bytes, without control or format \
    characters (line breaks, line separators, bidirectional or zero-width characters)";

/// The reason a staff member gives a status change is one line without control characters, as
/// every text a device reports (`hale_core::report::one_line`): it is kept in the device's
/// history and the audit log, which staff tools print. A reason with a line break and an escape
/// sequence (a forged second line, a console rewritten) was stored as given.
#[test]
fn a_status_reason_with_control_characters_is_refused_and_changes_nothing() {
    let Enrolled { _f, t, op, .. } = enrolled_pump_1(json!({}));
    let before = state(&t, &op);
    for action in ["quarantine", "reactivate", "decommission"] {
        for reason in [
            "battery swollen\n2026-11-25 operator:olivia decommission pump-2: done",
            "\u{1b}[2Jall clear",
            "tab\there",
        ] {
            reason_refused(&t, &op, action, reason);
        }
    }
    // nothing stored, nothing audited
    assert_eq!(state(&t, &op), before);
    // a reason of one line is taken
    let r = assert_status(
        post_on(
            &t.staff,
            &op,
            "/api/v1/staff/devices/pump-1/quarantine",
            br#"{"reason": "battery swollen: returned to the maker"}"#,
        ),
        200,
    );
    assert_eq!(r.json()["status"], "quarantined");
}

/// A status change's reason and a device's report are refused with a line or paragraph
/// separator (U+2028, U+2029: a line break to a browser or an editor showing the audit log),
/// a bidirectional control (U+202E: the text after it shown backwards, "Trojan Source") or a
/// zero-width character, and nothing is stored: they were taken as one line, into the device's
/// history, its stored report and the audit log.
#[test]
fn a_reason_or_report_with_a_line_separator_or_a_bidirectional_control_is_refused() {
    let Enrolled {
        _f, t, p, op, d1, ..
    } = enrolled_pump_1(json!({}));
    let stored_reports = || {
        assert_status(get_on(&t.staff, &op, "/api/v1/staff/reports"), 200).json()["reports"].clone()
    };
    let before = (state(&t, &op), stored_reports());
    let forged = [
        "battery swollen\u{2028}2026-11-25 operator:olivia decommission pump-2: done",
        "battery swollen\u{2029}done",
        "approved by \u{202E}aivilo\u{202C}",
        "all\u{200B}clear",
    ];
    for action in ["quarantine", "decommission"] {
        for reason in forged {
            reason_refused(&t, &op, action, reason);
        }
    }
    let mut pump = connect(&t.device, holder_cfg(&p, &d1));
    let slot = "slot name (1-32) or version (≤95) too long or has control or format characters";
    let result = "last_result: field too long or has control or format characters";
    let mut reports: Vec<(Value, &str)> = forged
        .iter()
        .map(|reason| {
            let r = json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}],
                           "last_result": {"result": "deferred", "reason": reason}});
            (r, result)
        })
        .collect();
    for name in ["a\u{2028}b", "\u{202E}a", "a\u{FEFF}"] {
        let r = json!({"slots": [{"name": name, "version": "1.0.0", "state": "active"}]});
        reports.push((r, slot));
    }
    for (report, message) in reports {
        let r = pump
            .send(
                "POST",
                "/api/v1/devices/pump-1/report",
                &[("Content-Type", "application/json")],
                report.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"error": "bad_report", "message": message})),
            "{report}"
        );
    }
    // nothing stored, nothing audited: the device, its reports and the audit log as they were
    assert_eq!((state(&t, &op), stored_reports()), before);
}

/// A staff request refused for the requester's role names, in its `staff-refused` record, the
/// device it was about: the one in its path, the one a certificate to revoke was issued to (and
/// the certificate), the one a token was asked for. The records named the action alone, so the
/// log could not tell which pump a technician tried to decommission. A name that can be no
/// device's is not copied.
#[test]
fn a_refused_staff_request_names_the_device_it_was_about() {
    let Enrolled {
        _f, t, p, op, d1, ..
    } = enrolled_pump_1(json!({}));
    let tech = staff(&p, "theo", StaffRole::Technician);
    let serial = d1.cert.serial_hex.clone();
    let before = stored(&t, &p, &op);
    let refused = |path: &str, body: &[u8], message: &str| {
        let r = post_on(&t.staff, &tech, path, body).unwrap();
        assert_eq!(
            (r.status, r.json()),
            (403, json!({"error": "role_forbidden", "message": message})),
            "{path}"
        );
    };
    refused(
        "/api/v1/staff/devices/pump-1/decommission",
        b"",
        "a technician may not decommission a device",
    );
    refused(
        &format!(
            "/api/v1/staff/certificates/{}/revoke",
            serial.to_uppercase()
        ),
        b"",
        "a technician may not revoke a certificate",
    );
    refused(
        "/api/v1/staff/enroll-tokens",
        br#"{"serial": "pump-1"}"#,
        "a technician may not issue an enrollment token for a device that holds a current \
         certificate",
    );
    // a path segment that is no device id: the refusal is recorded, without it
    refused(
        "/api/v1/staff/devices/-pump%E2%80%AE1/decommission",
        b"",
        "a technician may not decommission a device",
    );
    let detail = |r: &Value| {
        let mut d = r["detail"].clone();
        d.as_object_mut().unwrap().remove("message");
        d
    };
    let records: Vec<(Value, Value)> = audit_of(&t, &op, "staff-refused")
        .iter()
        .map(|r| (r["actor"].clone(), detail(r)))
        .collect();
    let theo = json!("technician:theo");
    assert_eq!(
        records,
        [
            (
                theo.clone(),
                json!({"action": "decommission a device", "device": "pump-1",
                       "error": "role_forbidden"})
            ),
            (
                theo.clone(),
                json!({"action": "revoke a certificate", "device": "pump-1",
                       "certificate": serial, "error": "role_forbidden"})
            ),
            (
                theo.clone(),
                json!({"action": "issue an enrollment token", "device": "pump-1",
                       "error": "role_forbidden"})
            ),
            (
                theo,
                json!({"action": "decommission a device", "error": "role_forbidden"})
            ),
        ]
    );
    // nothing else changed: the device, its certificate, the CRL
    only_refusals_stored(
        &t,
        &p,
        &op,
        &before,
        &[("staff-refused", "technician:theo", "role_forbidden"); 4],
    );
}

/// One device's reports make at most `max_audited_reports_per_hour` audit records an hour:
/// past it a report that says something new is refused with `429 too_many_reports` and a
/// `Retry-After`, and nothing is stored (the pump keeps it and reports at a later poll); a
/// report that says nothing new is taken as before. Every new report was audited and synced:
/// one stolen pump certificate sending reports that differ each time (any field) grew the
/// database by about 4.7 MB a second here (2,000 reports of 4.7 KB in 28 s, 130 MB), until the
/// disk was full and every audited change failed, its own decommissioning included.
#[test]
fn a_device_makes_a_bounded_number_of_audit_records_an_hour() {
    let Enrolled {
        _f, t, p, op, d1, ..
    } = enrolled_pump_1(json!({"max_audited_reports_per_hour": 3}));
    let report = |i: usize| {
        json!({"slots": [{"name": "a", "version": "1.0.0", "state": "active"}],
               "last_result": {"result": "deferred", "reason": format!("reason {i}")}})
        .to_string()
    };
    let mut pump = connect(&t.device, holder_cfg(&p, &d1));
    let mut post = |i: usize| {
        pump.send(
            "POST",
            "/api/v1/devices/pump-1/report",
            &[("Content-Type", "application/json")],
            report(i).as_bytes(),
        )
    };
    for i in 0..3 {
        assert_status(post(i), 204);
    }
    let stored_reports = || {
        assert_status(get_on(&t.staff, &op, "/api/v1/staff/reports"), 200).json()["reports"].clone()
    };
    let before = (state(&t, &op), stored_reports());
    assert_eq!(
        before.1[0]["report"]["last_result"]["reason"], "reason 2",
        "{}",
        before.1
    );

    // a fourth that says something new: refused, nothing stored or audited
    let r = post(3).unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "too_many_reports"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    assert_eq!((state(&t, &op), stored_reports()), before);

    // the report it has already: taken (a polling pump repeats itself), not audited
    assert_status(post(2), 204);
    assert_eq!(state(&t, &op).1, before.0 .1);
}
