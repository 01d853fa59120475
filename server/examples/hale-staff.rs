//! `hale-staff`: a minimal client of hale-server's staff API (docs/pki.md, "Staff listener") for
//! scripts and demos: one request over mTLS with a technician or operator certificate from
//! `hale-sign ca staff`.
//!
//! ```text
//! hale-staff --url https://STAFF --ca-cert SERVER_CA.crt --cert PREFIX.crt --key PREFIX.key
//!            [--passphrase-env VAR] METHOD PATH [--json TEXT | --body FILE]
//! ```
//!
//! The key stays sealed at rest; its passphrase comes from the environment variable named by
//! `--passphrase-env` (default `HALE_STAFF_PASSPHRASE`), never from the command line. The server
//! is trusted only through the Server CA certificate given. Prints the response body on success;
//! on an error status prints `refused (HTTP STATUS CODE): MESSAGE` on stderr and exits 1.
//!
//! Example: `hale-staff … POST /api/v1/staff/devices/pump-0001/decommission`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// Largest response read.
const MAX_RESPONSE: usize = 4 << 20;

const USAGE: &str = "\
usage: hale-staff --url https://STAFF --ca-cert SERVER_CA.crt --cert PREFIX.crt --key PREFIX.key
                  [--passphrase-env VAR] METHOD PATH [--json TEXT | --body FILE]

One request to hale-server's staff API over mTLS, with a technician's or operator's certificate
(hale-sign ca staff). The key's passphrase comes from the environment variable VAR (default
HALE_STAFF_PASSPHRASE), never the command line. --json sends TEXT as application/json, --body
sends FILE's bytes as application/octet-stream. Prints the response body; on an error status
prints `refused (HTTP STATUS CODE): MESSAGE` on stderr and exits 1. Endpoints: docs/pki.md and
server/README.md, e.g.
  hale-staff ... GET /api/v1/staff/devices
  hale-staff ... PUT /api/v1/staff/rollouts/SHA256 --json '{\"percent\": 5}'
  hale-staff ... POST /api/v1/staff/devices/SN-0001/decommission
";

struct Args {
    url: String,
    ca_cert: String,
    cert: String,
    key: String,
    passphrase_env: String,
    method: String,
    path: String,
    body: Vec<u8>,
    content_type: &'static str,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut ca_cert, mut cert, mut key) = (None, None, None, None);
    let mut passphrase_env = "HALE_STAFF_PASSPHRASE".to_string();
    let mut body = Vec::new();
    let mut content_type = "application/json";
    let mut positional = Vec::new();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--url" => url = Some(value()?),
            "--ca-cert" => ca_cert = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--passphrase-env" => passphrase_env = value()?,
            "--json" => body = value()?.into_bytes(),
            "--body" => {
                let p = value()?;
                body = std::fs::read(&p).with_context(|| p.clone())?;
                content_type = "application/octet-stream";
            }
            _ if a.starts_with("--") => bail!("unknown option {a}\n{USAGE}"),
            _ => positional.push(a),
        }
    }
    let [method, path]: [String; 2] = positional
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected METHOD PATH\n{USAGE}"))?;
    Ok(Args {
        url: url.context("--url is required")?,
        ca_cert: ca_cert.context("--ca-cert is required")?,
        cert: cert.context("--cert is required")?,
        key: key.context("--key is required")?,
        passphrase_env,
        method: method.to_ascii_uppercase(),
        path,
        body,
        content_type,
    })
}

/// Every certificate of a PEM chain, in order.
fn pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = pem
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(hale_pki::tls::certificate_from_pem)
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        bail!("no certificate");
    }
    Ok(certs)
}

/// (status, body) of one HTTP/1.1 response read to the end of the connection.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete response head")?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let rest = &raw[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, rest.to_vec()));
    }
    let mut body = Vec::new();
    let mut rest = rest;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk")?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .context("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, body));
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).context("truncated chunk")?;
    }
}

fn request(a: &Args) -> Result<(u16, Vec<u8>)> {
    let hostport = a
        .url
        .strip_prefix("https://")
        .context("--url must be https://HOST:PORT")?
        .trim_end_matches('/');
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    };
    let server_ca = hale_pki::tls::certificate_from_pem(
        &std::fs::read_to_string(&a.ca_cert).with_context(|| a.ca_cert.clone())?,
    )
    .with_context(|| a.ca_cert.clone())?;
    let chain = pem_chain(&std::fs::read_to_string(&a.cert).with_context(|| a.cert.clone())?)
        .with_context(|| a.cert.clone())?;
    let pass = std::env::var(&a.passphrase_env)
        .with_context(|| format!("the key's passphrase: set {}", a.passphrase_env))?;
    let sealed = std::fs::read(&a.key).with_context(|| a.key.clone())?;
    let key =
        hale_pki::tls::open_private_key(&sealed, pass.as_bytes()).with_context(|| a.key.clone())?;
    let mut config = (*hale_pki::tls::client_config(server_ca, chain, key)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string()).context("server name")?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect(hostport).with_context(|| a.url.clone())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        a.method,
        a.path,
        a.body.len()
    );
    if !a.body.is_empty() {
        req.push_str(&format!("Content-Type: {}\r\n", a.content_type));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes())
        .and_then(|()| tls.write_all(&a.body))
        .and_then(|()| tls.flush())
        .with_context(|| format!("{}: TLS", a.url))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE {
                    bail!("{}: response larger than {MAX_RESPONSE} bytes", a.url);
                }
            }
            // a peer that closes without close_notify after a complete response
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e).with_context(|| format!("{}: TLS", a.url)),
        }
    }
    parse_response(&raw).with_context(|| a.url.clone())
}

fn main() -> ExitCode {
    let run = || -> Result<bool> {
        let a = parse_args()?;
        let (status, body) = request(&a)?;
        if (200..300).contains(&status) {
            let mut out = std::io::stdout().lock();
            out.write_all(&body)?;
            if !body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            return Ok(true);
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = v.get("error").and_then(Value::as_str).unwrap_or("");
        let message = v.get("message").and_then(Value::as_str).map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_string,
        );
        eprintln!("refused (HTTP {status} {code}): {}", message.trim());
        Ok(false)
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hale-staff: {e:#}");
            ExitCode::FAILURE
        }
    }
}
