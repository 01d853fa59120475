//! `hale-sign ca` and `hale-sign factory`: the real binary on real files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{snapshot_tree, Env, PW, PW_ENV};
use hale_pki::tls::certificate_from_pem;
use hale_pki::{Ca, CaRole, Manifest, PeerIdentity, PeerKind, PkiError};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_cert::der::Decode;

const PW_ARGS: [&str; 2] = ["--passphrase-env", PW_ENV];
const KEY_PW: [&str; 2] = ["--key-passphrase-env", PW_ENV];

fn ca_init(env: &Env) {
    let out = env.p("ca");
    env.ok(&["ca", "init", "--out", &out, PW_ARGS[0], PW_ARGS[1]]);
}

/// `factory issue` with the CA in ca/: CSR issued as SERIAL for model pump-x to OUT (names in the
/// temporary directory, passed as absolute paths), then `extra` options verbatim, then the CA
/// passphrase from the environment. For `Env::run` or `Env::ok`; on success OUT is written (and the
/// manifest, if `extra` names one, is extended).
fn factory_issue_args(
    env: &Env,
    csr: &str,
    serial: &str,
    out: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "factory".to_string(),
        "issue".into(),
        "--ca-dir".into(),
        env.p("ca"),
        "--csr".into(),
        env.p(csr),
        "--serial".into(),
        serial.into(),
        "--model".into(),
        "pump-x".into(),
        "--out".into(),
        env.p(out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(PW_ARGS.map(String::from));
    args
}

/// `ca staff` with the CA in ca/: a ROLE certificate for NAME valid for HOURS, written to OUT.crt
/// and OUT.key (OUT a name in the temporary directory); the CA passphrase and the new key's
/// passphrase come from the environment. For `Env::run` or `Env::ok`.
fn ca_staff_args(env: &Env, role: &str, name: &str, hours: &str, out: &str) -> Vec<String> {
    let mut args = vec![
        "ca".to_string(),
        "staff".into(),
        "--ca-dir".into(),
        env.p("ca"),
        "--role".into(),
        role.into(),
        "--name".into(),
        name.into(),
        "--hours".into(),
        hours.into(),
        "--out".into(),
        env.p(out),
    ];
    args.extend(PW_ARGS.into_iter().chain(KEY_PW).map(String::from));
    args
}

/// Runs `args`, expecting a refusal: exit 2, `error` as the last line of stderr, and every file
/// under `dir` byte for byte as before the run.
#[track_caller]
fn assert_refused_unchanged(env: &Env, dir: &Path, args: &[String], error: &str) {
    let before = snapshot_tree(dir);
    let r = env.run(args);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.lines().last().unwrap(), error);
    assert_eq!(snapshot_tree(dir), before);
}

fn cert(env: &Env, p: &str) -> CertificateDer<'static> {
    certificate_from_pem(&std::fs::read_to_string(env.path(p)).unwrap()).unwrap()
}

/// All PEM certificates of a chain file, in order.
fn chain(env: &Env, p: &str) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read_to_string(env.path(p)).unwrap();
    text.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| certificate_from_pem(b).unwrap())
        .collect()
}

/// Whether the sealed P-256 key in `key` (opened with `pass`) is the key of the first
/// certificate of the chain file `crt`.
fn key_is_the_certificates(env: &Env, crt: &str, key: &str, pass: &str) -> bool {
    let sealed = std::fs::read(env.path(key)).unwrap();
    // what hale-server opens
    hale_pki::tls::open_private_key(&sealed, pass.as_bytes()).unwrap();
    let sk = hale_repo::SigningKey::from_encrypted_file(&sealed, pass.as_bytes()).unwrap();
    let hale_repo::SigningKey::EcdsaP256(sk) = sk else {
        panic!("P-256 expected")
    };
    let parsed = x509_cert::Certificate::from_der(&chain(env, crt)[0]).unwrap();
    parsed
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        == sk.verifying_key().to_encoded_point(false).as_bytes()
}

fn roots(env: &Env) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(cert(env, "ca/root.crt")).unwrap();
    Arc::new(r)
}

/// Verify a client certificate chain up to the Device Root CA with webpki (no revocation).
fn verify_client_to_root(env: &Env, leaf: &CertificateDer<'_>, intermediate: &str) {
    let v = WebPkiClientVerifier::builder_with_provider(roots(env), hale_pki::tls::provider())
        .build()
        .unwrap();
    v.verify_client_cert(leaf, &[cert(env, intermediate)], UnixTime::now())
        .unwrap();
}

/// A CSR as a hostile device would send it: asking for CA:TRUE, serverAuth and extra names.
fn hostile_csr() -> String {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["evil.example".to_string(), "hale.example".to_string()])
            .unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.subject_alt_names.push(rcgen::SanType::URI(
        "urn:hale:device:someone-else".try_into().unwrap(),
    ));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Hale Device Root CA");
    p.serialize_request(&kp).unwrap().pem().unwrap()
}

fn device_csr(cn: &str) -> String {
    hale_pki::generate_key_and_csr(hale_pki::KeyAlgorithm::P256, cn)
        .unwrap()
        .csr_pem
}

#[test]
fn ca_init_writes_a_hierarchy_that_verifies_with_sealed_keys() {
    let env = Env::new();
    ca_init(&env);
    for role in CaRole::ALL {
        let key = std::fs::read(env.path(&format!("ca/{}.key", role.slug()))).unwrap();
        let text = String::from_utf8(key.clone()).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{role}: key in the clear");
        // the CA file opens with the passphrase, not without
        let ca = Ca::from_file(&key, PW.as_bytes()).unwrap();
        assert_eq!(ca.role(), role);
        assert_eq!(
            ca.certificate_der(),
            &cert(&env, &format!("ca/{}.crt", role.slug()))
        );
        let err = Ca::from_file(&key, b"wrong passphrase").unwrap_err();
        assert_eq!(
            err.to_string(),
            "key file: wrong passphrase or damaged key file"
        );
    }

    // a factory certificate chains to the root through the Manufacturing CA ...
    env.write("dev.csr", device_csr("pump-0001").as_bytes());
    env.ok(&factory_issue_args(
        &env,
        "dev.csr",
        "SN-0001",
        "dev-factory.crt",
        &[],
    ));
    verify_client_to_root(&env, &cert(&env, "dev-factory.crt"), "ca/manufacturing.crt");

    // ... a staff certificate through the Technician CA ...
    env.ok(&ca_staff_args(&env, "technician", "alice", "8", "alice"));
    let alice = chain(&env, "alice.crt");
    assert_eq!(alice.len(), 2, "certificate then Technician CA");
    assert_eq!(alice[1], cert(&env, "ca/technician.crt"));
    verify_client_to_root(&env, &alice[0], "ca/technician.crt");
    let id = PeerIdentity::from_der(&alice[0]).unwrap();
    assert_eq!((id.kind, id.name.as_str()), (PeerKind::Technician, "alice"));
    let life = id
        .not_after
        .duration_since(id.not_before)
        .unwrap()
        .as_secs();
    assert_eq!(life, 8 * 3600 + hale_pki::profile::BACKDATE.as_secs());
    let sealed = std::fs::read(env.path("alice.key")).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
    let key = hale_repo::SigningKey::from_encrypted_file(&sealed, PW.as_bytes()).unwrap();
    assert_eq!(key.kind(), hale_repo::KeyKind::EcdsaP256);

    // ... and a server certificate through the Server CA, for its names only
    env.ok(&[
        "ca",
        "server-cert",
        "--ca-dir",
        &env.p("ca"),
        "--dns",
        "updates.hale.example",
        "--ip",
        "127.0.0.1",
        "--out",
        &env.p("server"),
        PW_ARGS[0],
        PW_ARGS[1],
        KEY_PW[0],
        KEY_PW[1],
    ]);
    let server = chain(&env, "server.crt");
    assert_eq!(server[1], cert(&env, "ca/server.crt"));
    // every private key (sealed) is its owner's alone, from the moment it exists
    for key in [
        "ca/root.key",
        "ca/manufacturing.key",
        "ca/device-issuing.key",
        "ca/technician.key",
        "ca/server.key",
        "alice.key",
        "server.key",
    ] {
        assert_eq!(env.mode(key), 0o600, "{key}");
    }
    let sv = WebPkiServerVerifier::builder_with_provider(roots(&env), hale_pki::tls::provider())
        .build()
        .unwrap();
    for name in ["updates.hale.example", "127.0.0.1"] {
        sv.verify_server_cert(
            &server[0],
            &server[1..],
            &ServerName::try_from(name).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap();
    }
    let wrong = sv
        .verify_server_cert(
            &server[0],
            &server[1..],
            &ServerName::try_from("evil.example").unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_err();
    assert!(
        matches!(
            wrong,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{wrong:?}"
    );
    // the sealed server key is the key of the certificate
    assert!(key_is_the_certificates(
        &env,
        "server.crt",
        "server.key",
        PW
    ));
}

#[test]
fn ca_init_refuses_to_overwrite_and_changes_nothing() {
    let env = Env::new();
    ca_init(&env);
    let args = ["ca", "init", "--out", &env.p("ca"), PW_ARGS[0], PW_ARGS[1]].map(String::from);
    assert_refused_unchanged(
        &env,
        &env.path("ca"),
        &args,
        &format!(
            "error: {}: exists; refusing to overwrite",
            env.path("ca/root.crt").display()
        ),
    );
}

#[test]
fn server_files_get_their_own_passphrase() {
    let env = Env::new();
    env.write("server-pass", b"the server's own passphrase\n");
    let warning = "WARNING: the Device Issuing CA file the server holds is sealed with the \
                   offline CA passphrase";
    let r = env.ok(&[
        "ca",
        "init",
        "--out",
        &env.p("ca"),
        PW_ARGS[0],
        PW_ARGS[1],
        "--server-passphrase-file",
        &env.p("server-pass"),
    ]);
    assert!(!r.stderr.contains(warning), "{}", r.stderr);
    // the Technician and Server CA files share the server's passphrase: allowed (as before the
    // operations passphrase), and said loudly
    assert!(
        r.stderr.contains(
            "WARNING: the Technician and Server CA files, which issue operator (release \
             publishing) and server certificates, are sealed with the server's passphrase, so \
             anyone who reads it on the server can open them wherever they are copied; give \
             --operations-passphrase-env or --operations-passphrase-file to seal them with their \
             own"
        ),
        "{}",
        r.stderr
    );
    // one passphrase for all: allowed, and said loudly
    let r = env.ok(&["ca", "init", "--out", &env.p("ca1"), PW_ARGS[0], PW_ARGS[1]]);
    assert!(r.stderr.contains(warning), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "WARNING: the Technician and Server CA files, which issue operator (release \
             publishing) and server certificates, are sealed with the offline CA passphrase, so \
             whoever issues staff and server certificates holds the root's passphrase; give \
             --operations-passphrase-env or --operations-passphrase-file"
        ),
        "{}",
        r.stderr
    );
    // what goes to the server, and what never does (review: it named the technician and server
    // CA keys, with which anyone who breaks into the server would mint operator certificates)
    assert!(
        r.stderr.contains(
            "the server needs the five CA certificates (*.crt) and device-issuing.key, and \
             nothing else of this directory"
        ),
        "{}",
        r.stderr
    );
    for (role, pass) in [
        (CaRole::Root, PW),
        (CaRole::Manufacturing, PW),
        (CaRole::DeviceIssuing, "the server's own passphrase"),
        (CaRole::Technician, "the server's own passphrase"),
        (CaRole::Server, "the server's own passphrase"),
    ] {
        let file = std::fs::read(env.path(&format!("ca/{}.key", role.slug()))).unwrap();
        Ca::from_file(&file, pass.as_bytes()).unwrap();
        let other = if pass == PW {
            "the server's own passphrase"
        } else {
            PW
        };
        let err = Ca::from_file(&file, other.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key file: wrong passphrase or damaged key file",
            "{role} with the other passphrase"
        );
    }
}

const SERVER_PASS: &str = "the server's own passphrase";
const OPS_PASS: &str = "the operations' own passphrase";

/// `ca init` of ca/ with its three passphrases: the offline one (`PW`, from the environment), the
/// server's (`SERVER_PASS`, file server-pass) and the operations one (file ops-pass, holding
/// `ops`), for `Env::run` or `Env::ok`.
fn ca_init_apart_args(env: &Env, ops: &str) -> Vec<String> {
    env.write("server-pass", format!("{SERVER_PASS}\n").as_bytes());
    env.write("ops-pass", format!("{ops}\n").as_bytes());
    let mut a = vec!["ca".to_string(), "init".into(), "--out".into(), env.p("ca")];
    a.extend(PW_ARGS.map(String::from));
    a.extend([
        "--server-passphrase-file".to_string(),
        env.p("server-pass"),
        "--operations-passphrase-file".into(),
        env.p("ops-pass"),
    ]);
    a
}

/// The server's passphrase opened the Technician and Server CA files wherever they were copied:
/// whoever read it on the server minted operator certificates (which publish releases). Now they
/// open with the operations passphrase only, and the commands that use them take it.
#[test]
fn technician_and_server_ca_files_open_with_the_operations_passphrase_only() {
    let env = Env::new();
    let r = env.ok(&ca_init_apart_args(&env, OPS_PASS));
    assert!(!r.stderr.contains("WARNING"), "{}", r.stderr);
    let wrong = "key file: wrong passphrase or damaged key file";
    for (role, pass) in [
        (CaRole::Root, PW),
        (CaRole::Manufacturing, PW),
        (CaRole::DeviceIssuing, SERVER_PASS),
        (CaRole::Technician, OPS_PASS),
        (CaRole::Server, OPS_PASS),
    ] {
        let file = std::fs::read(env.path(&format!("ca/{}.key", role.slug()))).unwrap();
        assert_eq!(Ca::from_file(&file, pass.as_bytes()).unwrap().role(), role);
        for other in [PW, SERVER_PASS, OPS_PASS]
            .into_iter()
            .filter(|p| *p != pass)
        {
            let err = Ca::from_file(&file, other.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), wrong, "{role} with {other:?}");
        }
    }

    // the commands open them with the operations passphrase ...
    let ops = ["--passphrase-file".to_string(), env.p("ops-pass")];
    let server_key = ["--key-passphrase-file".to_string(), env.p("server-pass")];
    let staff = |pass: &[String]| {
        let mut a = ca_staff_args(&env, "operator", "olga", "8", "olga");
        a.truncate(a.len() - 4); // the CA and key passphrases from the environment
        a.extend(pass.iter().cloned());
        a.extend(KEY_PW.map(String::from));
        a
    };
    let server_cert = |pass: &[String]| {
        let mut a = server_cert_args(&env);
        a.extend(["--out".to_string(), env.p("tls/server")]);
        a.extend(pass.iter().cloned());
        a.extend(server_key.iter().cloned());
        a
    };
    let crl = |pass: &[String]| {
        let mut a = ["ca", "crl", "--ca-dir", &env.p("ca"), "--ca", "technician"]
            .map(String::from)
            .to_vec();
        a.extend(["--out".to_string(), env.p("tls/technician.crl")]);
        a.extend(pass.iter().cloned());
        a
    };
    // ... and not with the server's, naming the file and the passphrase it takes; nothing written
    let server = ["--passphrase-file".to_string(), env.p("server-pass")];
    let refusal = |file: &str| {
        format!(
            "error: {}: {wrong}; `ca init` seals it with the operations passphrase \
             (--operations-passphrase-*; without it, the server's, or without that the offline \
             one)",
            env.path(file).display()
        )
    };
    let root = env.path("");
    assert_refused_unchanged(&env, &root, &staff(&server), &refusal("ca/technician.key"));
    assert_refused_unchanged(
        &env,
        &root,
        &server_cert(&server),
        &refusal("ca/server.key"),
    );
    assert_refused_unchanged(&env, &root, &crl(&server), &refusal("ca/technician.key"));
    assert!(!env.path("olga.crt").exists() && !env.path("tls").exists());

    env.ok(&staff(&ops));
    env.ok(&server_cert(&ops));
    env.ok(&crl(&ops));
    assert!(key_is_the_certificates(&env, "olga.crt", "olga.key", PW));
    // the server's TLS key is sealed with the server's passphrase: the server opens it
    assert!(key_is_the_certificates(
        &env,
        "tls/server.crt",
        "tls/server.key",
        SERVER_PASS
    ));
}

#[test]
fn ca_init_refuses_an_operations_passphrase_equal_to_the_offline_or_the_servers() {
    let env = Env::new();
    let root = env.path("");
    let offline = "error: the operations passphrase (Technician and Server CA files) must differ \
                   from the offline CA files' passphrase";
    assert_refused_unchanged(&env, &root, &ca_init_apart_args(&env, PW), offline);
    assert_refused_unchanged(
        &env,
        &root,
        &ca_init_apart_args(&env, SERVER_PASS),
        "error: the operations passphrase (Technician and Server CA files) must differ from the \
         server's passphrase: the server holds that one",
    );
    // without a server's passphrase the Device Issuing CA file takes the offline one: same rule
    let mut args = ca_init_apart_args(&env, PW);
    args.drain(6..8);
    assert!(!args.iter().any(|a| a.contains("server-pass")), "{args:?}");
    assert_refused_unchanged(&env, &root, &args, offline);
    // as short as no new key's may be
    assert_refused_unchanged(
        &env,
        &root,
        &ca_init_apart_args(&env, "short"),
        "error: passphrase for the operations CA files: 5 bytes; a new key's needs at least 12",
    );
    assert!(!env.path("ca").exists());
}

/// Renewing the server's TLS certificate into the TLS directory (`--out TLS/server`, which
/// hale-server reloads) was refused: "exists; refusing to overwrite". Now `--force` replaces
/// the certificate and its key together, for `server-cert` and for `staff` (the next shift's
/// certificate); without it the refusal says so and changes nothing.
#[test]
fn server_cert_and_staff_replace_their_pair_with_force_only() {
    let env = Env::new();
    ca_init(&env);
    let root = env.path("");
    let server_cert = |days: &str, extra: &[&str]| {
        let mut a = server_cert_args(&env);
        a.extend(["--days", days, "--out", &env.p("tls/server")].map(String::from));
        a.extend(PW_ARGS.into_iter().chain(KEY_PW).map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let staff = |hours: &str, extra: &[&str]| {
        let mut a = ca_staff_args(&env, "operator", "olga", hours, "tls/olga");
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    type Args<'a> = &'a dyn Fn(&str, &[&str]) -> Vec<String>;
    let cases: [(&str, Args, &str, &str); 2] = [
        (
            "server",
            &server_cert,
            "397",
            "error: invalid validity of 0 days",
        ),
        ("olga", &staff, "8", "error: --hours 0: invalid"),
    ];
    for (prefix, args, good, invalid) in cases {
        let (crt, key) = (format!("tls/{prefix}.crt"), format!("tls/{prefix}.key"));
        env.ok(&args(good, &[]));
        let before = snapshot_tree(&env.path("tls"));
        assert_refused_unchanged(
            &env,
            &root,
            &args(good, &[]),
            &format!(
                "error: {}: exists (use --force to overwrite)",
                env.path(&crt).display()
            ),
        );
        // a refusal with --force leaves the old pair too
        assert_refused_unchanged(&env, &root, &args("0", &["--force"]), invalid);

        let old_leaf = chain(&env, &crt)[0].clone();
        env.ok(&args(good, &["--force"]));
        let new = |p: &str| std::fs::read(env.path(p)).unwrap();
        let old = |p: &str| before[&env.path(p)].clone();
        assert_ne!(new(&crt), old(&crt), "{prefix}: a new certificate");
        let new_leaf = chain(&env, &crt)[0].clone();
        assert_ne!(
            hale_pki::tls::certificate_serial(&new_leaf).unwrap(),
            hale_pki::tls::certificate_serial(&old_leaf).unwrap(),
            "{prefix}"
        );
        assert_ne!(new(&key), old(&key), "{prefix}: a new key");
        assert!(key_is_the_certificates(&env, &crt, &key, PW), "{prefix}");
        assert_eq!(env.mode(&key), 0o600, "{prefix}");
    }
    // the new pair replaced the old, nothing left beside them
    let mut names: Vec<String> = std::fs::read_dir(env.path("tls"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["olga.crt", "olga.key", "server.crt", "server.key"]);
}

#[test]
fn factory_certificate_from_a_hostile_csr_carries_only_our_profile() {
    let env = Env::new();
    ca_init(&env);
    env.write("evil.csr", hostile_csr().as_bytes());
    let manifest = env.p("manifest.json");
    env.ok(&factory_issue_args(
        &env,
        "evil.csr",
        "SN-0002",
        "f.crt",
        &["--manifest", &manifest],
    ));
    let der = cert(&env, "f.crt");
    // PeerIdentity refuses CA certificates and checks the issuer against the URI
    let id = PeerIdentity::from_der(&der).unwrap();
    assert_eq!(id.kind, PeerKind::Factory);
    assert_eq!(id.name, "SN-0002");
    assert_eq!(id.hardware_serial.as_deref(), Some("SN-0002"));
    assert_eq!(id.model.as_deref(), Some("pump-x"));

    let c = x509_cert::Certificate::from_der(&der).unwrap();
    let exts = c.tbs_certificate.extensions.unwrap();
    let san = exts
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.17")
        .unwrap();
    let san = x509_cert::ext::pkix::SubjectAltName::from_der(san.extn_value.as_bytes()).unwrap();
    assert_eq!(san.0.len(), 1, "only our identity URI: {san:?}");
    match &san.0[0] {
        x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) => {
            assert_eq!(u.as_str(), "urn:hale:factory:SN-0002")
        }
        other => panic!("unexpected SAN {other:?}"),
    }
    let bc = exts
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.19")
        .unwrap();
    let bc = x509_cert::ext::pkix::BasicConstraints::from_der(bc.extn_value.as_bytes()).unwrap();
    assert!(!bc.ca);
    let eku = exts
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.37")
        .unwrap();
    let eku = x509_cert::ext::pkix::ExtendedKeyUsage::from_der(eku.extn_value.as_bytes()).unwrap();
    assert_eq!(
        eku.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["1.3.6.1.5.5.7.3.2"],
        "clientAuth only"
    );
    assert!(hale_pki::tls::certificate_from_pem(
        &std::fs::read_to_string(env.path("f.crt")).unwrap()
    )
    .is_ok());
}

#[test]
fn manifest_verifies_with_the_manufacturing_ca_and_a_tampered_one_does_not() {
    let env = Env::new();
    ca_init(&env);
    let manifest = env.p("manifest.json");
    for (i, sn) in ["SN-1", "SN-2"].iter().enumerate() {
        let csr = format!("d{i}.csr");
        env.write(&csr, device_csr("x").as_bytes());
        let out = format!("d{i}.crt");
        let extra = ["--manifest", &manifest, "--batch", "line-7"];
        env.ok(&factory_issue_args(&env, &csr, sn, &out, &extra));
    }
    let bytes = std::fs::read(env.path("manifest.json")).unwrap();
    let mfg = cert(&env, "ca/manufacturing.crt");
    let m = Manifest::verify(&bytes, &mfg).unwrap();
    assert_eq!(m.batch(), "line-7");
    assert_eq!(m.entries().len(), 2);
    for i in 0..2 {
        let id = PeerIdentity::from_der(&cert(&env, &format!("d{i}.crt"))).unwrap();
        m.check_factory_identity(&id).unwrap();
    }

    // another CA's certificate is not the Manufacturing CA
    let err = Manifest::verify(&bytes, &cert(&env, "ca/device-issuing.crt")).unwrap_err();
    assert!(
        matches!(&err, PkiError::NotACaCertificate { subject } if subject == "Hale Device Issuing CA"),
        "{err}"
    );

    // a tampered manifest (model changed) does not verify ...
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["signed"]["entries"][0]["model"] = "pump-y".into();
    let tampered = serde_json::to_vec_pretty(&doc).unwrap();
    let err = Manifest::verify(&tampered, &mfg).unwrap_err();
    assert!(matches!(err, PkiError::ManifestSignatureInvalid), "{err}");

    // ... and the factory refuses to add to it (nothing written)
    env.write("manifest.json", &tampered);
    env.write("d9.csr", device_csr("x").as_bytes());
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &factory_issue_args(&env, "d9.csr", "SN-9", "d9.crt", &["--manifest", &manifest]),
        &format!(
            "error: {}: manufacturing manifest signature does not verify with the Manufacturing CA key",
            env.path("manifest.json").display()
        ),
    );
}

#[test]
fn factory_refuses_a_serial_already_in_the_manifest_and_changes_nothing() {
    let env = Env::new();
    ca_init(&env);
    env.write("a.csr", device_csr("x").as_bytes());
    env.write("b.csr", device_csr("x").as_bytes());
    let manifest = env.p("manifest.json");
    let issue = |csr: &str, out: &str| {
        factory_issue_args(&env, csr, "SN-1", out, &["--manifest", &manifest])
    };
    assert_eq!(env.run(&issue("a.csr", "a.crt")).code, 0);
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &issue("b.csr", "b.crt"),
        &format!(
            "error: {}: serial \"SN-1\" is already listed",
            env.path("manifest.json").display()
        ),
    );
    // a serial outside the charset: the error is the serial's, not the CSR's
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &factory_issue_args(&env, "b.csr", "bad serial", "b.crt", &[]),
        "error: invalid serial \"bad serial\": 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -",
    );
}

#[test]
fn factory_refuses_a_csr_whose_signature_does_not_verify() {
    let env = Env::new();
    ca_init(&env);
    // flip a byte of the signature (the last bytes of the DER)
    let pem = device_csr("x");
    let (label, mut der) = x509_cert::der::pem::decode_vec(pem.as_bytes()).unwrap();
    let n = der.len();
    der[n - 3] ^= 0x01;
    let bad = x509_cert::der::pem::encode_string(label, x509_cert::der::pem::LineEnding::LF, &der)
        .unwrap();
    env.write("bad.csr", bad.as_bytes());
    let manifest = env.p("manifest.json");
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &factory_issue_args(
            &env,
            "bad.csr",
            "SN-1",
            "bad.crt",
            &["--manifest", &manifest],
        ),
        &format!(
            "error: {}: certificate signing request signature does not verify",
            env.path("bad.csr").display()
        ),
    );
}

/// notAfter of the certificate in the PEM file `p`, in Unix seconds.
fn not_after(env: &Env, p: &str) -> u64 {
    let c = x509_cert::Certificate::from_der(&cert(env, p)).unwrap();
    c.tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs()
}

/// A factory certificate asked to outlive the Manufacturing CA ends with it, and the station is
/// told so on stderr with the days it really lasts; one within the CA's life is as asked, with no
/// note. Before, the default (7,300 days against the CA's 3,650) was cut without a word.
#[test]
fn a_factory_certificate_past_its_ca_ends_with_it_and_the_station_is_told() {
    let env = Env::new();
    ca_init(&env);
    let ca_end = not_after(&env, "ca/manufacturing.crt");
    env.write("dev.csr", device_csr("pump-0001").as_bytes());
    let r = env.ok(&factory_issue_args(
        &env,
        "dev.csr",
        "SN-1",
        "long.crt",
        &[],
    ));
    assert_eq!(not_after(&env, "long.crt"), ca_end);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // the days left, whole ones: the CA's 3,650 less the seconds since `ca init`
    let days = (ca_end - now) / 86_400;
    let note = |d: u64| {
        format!(
            "note: --days 7300: the certificate ends with the Manufacturing CA, {d} days from \
             now; after that the device enrolls again only with an enrollment token (renewal of \
             its operational certificate does not need this one)"
        )
    };
    let err = r.stderr.trim_end();
    assert!(err == note(days) || err == note(days - 1), "{err}");
    assert!(r.stdout.contains(" valid until "), "{}", r.stdout);

    let r = env.ok(&factory_issue_args(
        &env,
        "dev.csr",
        "SN-2",
        "short.crt",
        &["--days", "365"],
    ));
    assert_eq!(r.stderr, "");
    let end = not_after(&env, "short.crt");
    assert!(
        end < ca_end && end.abs_diff(now + 365 * 86_400) < 120,
        "{end}"
    );
}

#[test]
fn staff_certificates_are_limited_to_one_shift() {
    let env = Env::new();
    ca_init(&env);
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &ca_staff_args(&env, "operator", "bob", "13", "bob"),
        "error: validity of 46800 s exceeds the profile's maximum of 43200 s",
    );
    // its end as a date, as the TUF commands print them
    let r = env.ok(&ca_staff_args(&env, "operator", "bob", "12", "bob"));
    let cert = hale_pki::PeerIdentity::from_der(&chain(&env, "bob.crt")[0]).unwrap();
    assert!(
        r.stdout
            .trim_end()
            .ends_with(&format!("valid until {}", hale_pki::utc(cert.not_after))),
        "{}",
        r.stdout
    );
}

#[test]
fn crl_accumulates_revocations_with_rising_numbers() {
    let env = Env::new();
    ca_init(&env);
    let crl_args = |revoke: &[&str], out: &str| {
        let mut a = vec![
            "ca".to_string(),
            "crl".into(),
            "--ca-dir".into(),
            env.p("ca"),
            "--ca".into(),
            "technician".into(),
            "--out".into(),
            env.p(out),
            PW_ARGS[0].into(),
            PW_ARGS[1].into(),
        ];
        for r in revoke {
            a.push("--revoke".into());
            a.push((*r).into());
        }
        a
    };
    assert_eq!(env.run(&crl_args(&["4a01"], "1.crl")).code, 0);
    assert_eq!(env.run(&crl_args(&["4A:02"], "2.crl")).code, 0);
    let parse = |p: &str| {
        let der =
            hale_pki::tls::crl_from_pem(&std::fs::read_to_string(env.path(p)).unwrap()).unwrap();
        x509_cert::crl::CertificateList::from_der(&der).unwrap()
    };
    let serials = |p: &str| -> Vec<String> {
        parse(p)
            .tbs_cert_list
            .revoked_certificates
            .unwrap_or_default()
            .iter()
            .map(|r| hex::encode(r.serial_number.as_bytes()))
            .collect()
    };
    assert_eq!(serials("1.crl"), ["4a01"]);
    assert_eq!(
        serials("2.crl"),
        ["4a01", "4a02"],
        "a revoked serial stays revoked"
    );
    let issuer = parse("2.crl").tbs_cert_list.issuer.to_string();
    assert!(issuer.contains("Hale Technician CA"), "{issuer}");

    // a malformed serial is refused, nothing changes
    assert_refused_unchanged(
        &env,
        env.tmp.path(),
        &crl_args(&["xyz"], "3.crl"),
        "error: certificate serial \"xyz\": expected 1 to 20 bytes of hex",
    );
    assert_eq!(env.json("ca/technician.crl.json")["number"], 2);
}

#[test]
fn ca_init_and_server_cert_refuse_what_no_client_could_use_and_change_nothing() {
    let env = Env::new();
    let root = env.path("");
    let init = |extra: &[&str]| {
        let mut a = vec!["ca".to_string(), "init".into(), "--out".into(), env.p("ca")];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(PW_ARGS.map(String::from));
        a
    };
    // a CRL base URL no client could fetch, a name constraint that is no DNS name: nothing written
    assert_refused_unchanged(
        &env,
        &root,
        &init(&["--crl-base-url", "not a url"]),
        "error: invalid CRL base URL \"not a url\": an absolute http:// or https:// URL without query or fragment, e.g. https://pki.example.com/crl/",
    );
    assert_refused_unchanged(
        &env,
        &root,
        &init(&["--server-dns-constraint", "*.bad.."]),
        "error: invalid server DNS constraint \"*.bad..\": a DNS name such as example.com (it permits the name and every name under it)",
    );
    assert!(!env.path("ca").exists());

    // a base URL without its final slash: the CRLs are under it
    let r = env.ok(&init(&[
        "--crl-base-url",
        "https://pki.example.com/crl",
        "--server-dns-constraint",
        "hale.example",
        "--days",
        "30",
    ]));
    assert!(
        r.stdout.contains(
            "CRLs to publish at https://pki.example.com/crl/root.crl (each CA's beside it: <ca>.crl)"
        ),
        "{}",
        r.stdout
    );
    let server_ca = Ca::from_file(
        &std::fs::read(env.path("ca/server.key")).unwrap(),
        PW.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        server_ca.crl_url(),
        "https://pki.example.com/crl/server.crl"
    );

    let server_cert = |dns: &str, days: &str| {
        let (ca, out) = (env.p("ca"), env.p("server"));
        let a = ["ca", "server-cert", "--ca-dir", &ca, "--dns", dns];
        let b = ["--days", days, "--out", &out];
        a.iter()
            .chain(&b)
            .chain(&PW_ARGS)
            .chain(&KEY_PW)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    assert_refused_unchanged(
        &env,
        &root,
        &server_cert("updates.evil.example", "10"),
        "error: server name \"updates.evil.example\" is outside the Server CA's DNS constraints [\"hale.example\"]",
    );
    let before = snapshot_tree(&root);
    let r = env.run(&server_cert("updates.hale.example", "31"));
    assert_eq!(r.code, 2);
    let end = hale_pki::utc(server_ca.not_after().unwrap());
    let last = r.stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "error: --days 31: the certificate would outlive the Server CA, valid until {end} (at most "
        )),
        "{last}"
    );
    assert_eq!(snapshot_tree(&root), before);
    let r = env.ok(&server_cert("updates.hale.example", "10"));
    assert!(r.stdout.contains(" valid until "), "{}", r.stdout);
}

/// `ca server-cert --ca-dir ENV/ca --dns localhost`, for the caller to add its output and
/// passphrases.
fn server_cert_args(env: &Env) -> Vec<String> {
    [
        "ca",
        "server-cert",
        "--ca-dir",
        &env.p("ca"),
        "--dns",
        "localhost",
    ]
    .map(String::from)
    .to_vec()
}
