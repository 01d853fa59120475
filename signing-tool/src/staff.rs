//! The staff listener's mTLS client, for every command that talks to hale-server with TLS on:
//! a staff certificate chain from `hale-sign ca staff` (operator or technician), its key sealed at
//! rest and opened with a passphrase from the environment, a file or a prompt (never argv), and
//! the server checked against the Server CA certificate only (not the system's roots: a
//! certificate a public CA issued for the same name is not the fleet's server).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hale_repo::Passphrase;

/// A staff certificate and what opens it. `flags` names the options they came from, for
/// messages (`push` says `--cert`, the `--from-server` readers `--staff-cert`).
pub struct Credentials<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca_cert: &'a Path,
    pub passphrase_env: Option<&'a str>,
    pub passphrase_file: Option<&'a PathBuf>,
    pub flags: Flags,
}

/// The option names of one command's credentials.
#[derive(Clone, Copy)]
pub struct Flags {
    pub url: &'static str,
    pub cert: &'static str,
}

/// Every certificate of a PEM chain, in order.
pub fn pem_chain(pem: &str) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let certs = pem
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(hale_pki::tls::certificate_from_pem)
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("no certificate");
    }
    Ok(certs)
}

/// An HTTP/1.1 client (what ureq speaks) of the staff listener at `url` with `c`.
pub fn agent(
    url: &str,
    c: &Credentials<'_>,
    timeout: Duration,
) -> anyhow::Result<ureq::AgentBuilder> {
    if !url.starts_with("https://") {
        bail!(
            "{} {url}: with {}, give the staff listener's https:// URL",
            c.flags.url,
            c.flags.cert
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let chain = pem_chain(&read(c.cert)?).with_context(|| c.cert.display().to_string())?;
    let server_ca = hale_pki::tls::certificate_from_pem(&read(c.ca_cert)?)
        .with_context(|| c.ca_cert.display().to_string())?;
    let sealed = std::fs::read(c.key).with_context(|| format!("reading {}", c.key.display()))?;
    let source = match (c.passphrase_env, c.passphrase_file) {
        (Some(v), _) => Passphrase::Env(v.to_string()),
        (None, Some(p)) => Passphrase::File(p.clone()),
        (None, None) => Passphrase::Prompt(format!("passphrase for {}: ", c.key.display())),
    };
    let pass = source
        .read()
        .with_context(|| format!("passphrase for {}", c.key.display()))?;
    let key_der = hale_pki::tls::open_private_key(&sealed, &pass)
        .with_context(|| format!("opening {}", c.key.display()))?;
    let config = hale_pki::tls::client_config(server_ca, chain, key_der)
        .with_context(|| format!("{}: certificate and key", c.cert.display()))?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .tls_config(Arc::new(config)))
}

/// `e` in ureq's words without the URL its transport errors start with (the message names the
/// URL first already).
pub fn without_url(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Transport(t) => {
            let mut m = t.kind().to_string();
            for part in [
                t.message().map(str::to_string),
                std::error::Error::source(t).map(ToString::to_string),
            ]
            .into_iter()
            .flatten()
            {
                // ureq's I/O errors repeat their kind
                m = if part.starts_with(&m) {
                    part
                } else {
                    format!("{m}: {part}")
                };
            }
            m
        }
        other => other.to_string(),
    }
}
