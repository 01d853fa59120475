//! `tls-bench`: what mTLS costs a polling fleet, against one running hale-server (a benchmark,
//! not a test; `server/bench/tls-bench.sh` sets everything up and runs it).
//!
//! ```text
//! tls-bench --device https://HOST:PORT --plain http://HOST:PORT --server-ca SERVER_CA.crt
//!           --device-state DIR [--device-secret-env VAR] [--conns N] [--secs S] [--rounds R]
//!           [--path /timestamp.json] [--server-pid PID] [--clk-tck HZ]
//! ```
//!
//! Four ways to poll, each with N concurrent clients for S seconds, alternated R times in one run
//! (the machine is noisy: compare the ratios, not the absolute figures):
//!
//! - `fresh-mtls`: new TCP connection + full TLS handshake with the device certificate + one GET
//!   per poll (client-side resumption disabled);
//! - `resumed-mtls`: new TCP connection per poll, TLS 1.3 session resumption from the tickets the
//!   server sent on earlier connections (checked with `handshake_kind()`, counted);
//! - `keepalive-mtls`: one TLS connection per client, many GETs;
//! - `keepalive-plain`: the same client on the plain HTTP listener.
//!
//! The device certificate is a real enrolled pump's (`hale-agent enroll`): its chain and sealed
//! key are read from `DIR/identity/operational.json` (hale-agent's file), the key opened with the
//! device secret from the environment (default `HALE_DEVICE_SECRET`). Every response must be
//! `200`: anything else is counted as an error and makes the run fail. With `--server-pid`, the
//! server's CPU time (utime + stime from `/proc/PID/stat`) per poll is printed too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fresh,
    Resumed,
    KeepAliveTls,
    KeepAlivePlain,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Fresh,
        Mode::Resumed,
        Mode::KeepAliveTls,
        Mode::KeepAlivePlain,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Fresh => "fresh-mtls",
            Mode::Resumed => "resumed-mtls",
            Mode::KeepAliveTls => "keepalive-mtls",
            Mode::KeepAlivePlain => "keepalive-plain",
        }
    }
}

#[derive(Debug)]
struct Args {
    device: (SocketAddr, String),
    plain: SocketAddr,
    server_ca: String,
    device_state: String,
    secret_env: String,
    conns: usize,
    secs: f64,
    rounds: usize,
    path: String,
    server_pid: Option<u32>,
    clk_tck: f64,
}

/// `scheme://HOST:PORT` → (address, host).
fn parse_url(url: &str, scheme: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix(scheme)
        .with_context(|| format!("{url}: expected {scheme}HOST:PORT"))?
        .trim_end_matches('/');
    let addr: SocketAddr = rest
        .parse()
        .with_context(|| format!("{url}: expected an IP address and a port"))?;
    Ok((addr, addr.ip().to_string()))
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        device: ("0.0.0.0:0".parse()?, String::new()),
        plain: "0.0.0.0:0".parse()?,
        server_ca: String::new(),
        device_state: String::new(),
        secret_env: "HALE_DEVICE_SECRET".into(),
        conns: 16,
        secs: 3.0,
        rounds: 2,
        path: "/timestamp.json".into(),
        server_pid: None,
        clk_tck: 100.0,
    };
    let (mut device, mut plain) = (false, false);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--device" => {
                a.device = parse_url(&v, "https://")?;
                device = true;
            }
            "--plain" => {
                a.plain = parse_url(&v, "http://")?.0;
                plain = true;
            }
            "--server-ca" => a.server_ca = v,
            "--device-state" => a.device_state = v,
            "--device-secret-env" => a.secret_env = v,
            "--conns" => a.conns = v.parse().context("--conns")?,
            "--secs" => a.secs = v.parse().context("--secs")?,
            "--rounds" => a.rounds = v.parse().context("--rounds")?,
            "--path" => a.path = v,
            "--server-pid" => a.server_pid = Some(v.parse().context("--server-pid")?),
            "--clk-tck" => a.clk_tck = v.parse().context("--clk-tck")?,
            _ => bail!("unknown option {k}"),
        }
    }
    if !device || !plain || a.server_ca.is_empty() || a.device_state.is_empty() {
        bail!("--device, --plain, --server-ca and --device-state are required");
    }
    if a.conns == 0 || a.rounds == 0 || a.secs <= 0.0 {
        bail!("--conns, --rounds and --secs must be positive");
    }
    Ok(a)
}

/// The device's client configuration (its operational certificate), HTTP/1.1.
fn device_config(a: &Args) -> Result<ClientConfig> {
    let server_ca = hale_pki::tls::certificate_from_pem(
        &std::fs::read_to_string(&a.server_ca).with_context(|| a.server_ca.clone())?,
    )
    .with_context(|| a.server_ca.clone())?;
    let path = std::path::Path::new(&a.device_state).join("identity/operational.json");
    let op: Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)
            .with_context(|| path.display().to_string())?;
    let chain: Vec<CertificateDer<'static>> = op
        .get("chain")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no chain", path.display()))?
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(hale_pki::tls::certificate_from_pem)
        .collect::<Result<_, _>>()?;
    let secret = std::env::var(&a.secret_env)
        .with_context(|| format!("the device secret: set {}", a.secret_env))?;
    let sealed = serde_json::to_vec(op.get("key").unwrap_or(&Value::Null))?;
    let key = hale_pki::tls::open_private_key(&sealed, secret.as_bytes())
        .with_context(|| format!("{}: the device key", path.display()))?;
    let mut config = (*hale_pki::tls::client_config(server_ca, chain, key)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One GET on `s`; the status. Reads exactly the response (Content-Length framing).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    close: bool,
    buf: &mut Vec<u8>,
) -> Result<u16> {
    let conn = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").as_bytes(),
    )
    .await?;
    s.flush().await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 << 10 {
            bail!("response head too large");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length (the bench reads framed responses only)")?;
    let total = head_end + length;
    while buf.len() < total {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > total {
        bail!("bytes after the response");
    }
    Ok(status)
}

#[derive(Debug, Default, Clone)]
struct Stats {
    polls: u64,
    errors: u64,
    full: u64,
    resumed: u64,
    first_error: Option<String>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.polls += o.polls;
        self.errors += o.errors;
        self.full += o.full;
        self.resumed += o.resumed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

struct Target {
    device: SocketAddr,
    plain: SocketAddr,
    name: ServerName<'static>,
    host: String,
    path: String,
    fresh: TlsConnector,
    resuming: TlsConnector,
}

async fn tls_connect(
    t: &Target,
    connector: &TlsConnector,
) -> Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<HandshakeKind>,
)> {
    let tcp = TcpStream::connect(t.device).await?;
    tcp.set_nodelay(true)?;
    let tls = connector.connect(t.name.clone(), tcp).await?;
    let kind = tls.get_ref().1.handshake_kind();
    Ok((tls, kind))
}

fn count(st: &mut Stats, kind: Option<HandshakeKind>) {
    match kind {
        Some(HandshakeKind::Resumed) => st.resumed += 1,
        Some(_) => st.full += 1,
        None => st.fail("handshake finished without a kind"),
    }
}

/// One client of `mode` until `deadline`.
async fn client(t: Arc<Target>, mode: Mode, deadline: Instant) -> Stats {
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(16 << 10);
    let ok = |st: &mut Stats, r: Result<u16>| match r {
        Ok(200) => st.polls += 1,
        Ok(s) => st.fail(format!("HTTP {s}")),
        Err(e) => st.fail(e),
    };
    match mode {
        Mode::Fresh | Mode::Resumed => {
            let connector = if mode == Mode::Fresh {
                &t.fresh
            } else {
                &t.resuming
            };
            while Instant::now() < deadline {
                match tls_connect(&t, connector).await {
                    Ok((mut tls, kind)) => {
                        count(&mut st, kind);
                        let r = get(&mut tls, &t.host, &t.path, true, &mut buf).await;
                        ok(&mut st, r);
                    }
                    Err(e) => st.fail(e),
                }
            }
        }
        Mode::KeepAliveTls => match tls_connect(&t, &t.fresh).await {
            Ok((mut tls, kind)) => {
                count(&mut st, kind);
                while Instant::now() < deadline {
                    let r = get(&mut tls, &t.host, &t.path, false, &mut buf).await;
                    let failed = !matches!(r, Ok(200));
                    ok(&mut st, r);
                    if failed {
                        break;
                    }
                }
            }
            Err(e) => st.fail(e),
        },
        Mode::KeepAlivePlain => match TcpStream::connect(t.plain).await {
            Ok(mut tcp) => {
                let _ = tcp.set_nodelay(true);
                while Instant::now() < deadline {
                    let r = get(&mut tcp, &t.host, &t.path, false, &mut buf).await;
                    let failed = !matches!(r, Ok(200));
                    ok(&mut st, r);
                    if failed {
                        break;
                    }
                }
            }
            Err(e) => st.fail(e),
        },
    }
    st
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32, clk_tck: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 of stat(5); `after` starts at field 3
    let ticks = |i: usize| -> Result<f64> {
        f.get(i)
            .context("/proc stat format")?
            .parse::<f64>()
            .context("/proc stat format")
    };
    Ok((ticks(11)? + ticks(12)?) / clk_tck)
}

#[derive(Debug, Default, Clone)]
struct Total {
    stats: Stats,
    secs: f64,
    cpu: Option<f64>,
}

impl Total {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.stats.polls as f64 / self.secs
        } else {
            0.0
        }
    }
    fn cpu_us(&self) -> Option<f64> {
        self.cpu
            .filter(|_| self.stats.polls > 0)
            .map(|c| c * 1e6 / self.stats.polls as f64)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    let resuming = device_config(&a)?;
    let mut fresh = resuming.clone();
    fresh.resumption = Resumption::disabled();
    let t = Arc::new(Target {
        device: a.device.0,
        plain: a.plain,
        name: ServerName::try_from(a.device.1.clone())?,
        host: a.device.1.clone(),
        path: a.path.clone(),
        fresh: TlsConnector::from(Arc::new(fresh)),
        resuming: TlsConnector::from(Arc::new(resuming)),
    });
    println!(
        "tls-bench: {} clients, {} s per phase, {} rounds, GET {} (device {}, plain {})",
        a.conns, a.secs, a.rounds, a.path, a.device.0, a.plain
    );
    println!(
        "{:<16} {:>5} {:>8} {:>10} {:>14} {:>6} {:>8}",
        "mode", "round", "polls", "polls/s", "server µs/poll", "full", "resumed"
    );
    let mut totals: Vec<Total> = vec![Total::default(); Mode::ALL.len()];
    for round in 1..=a.rounds {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let cpu0 = a.server_pid.map(|p| cpu_secs(p, a.clk_tck)).transpose()?;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(a.secs);
            let tasks: Vec<_> = (0..a.conns)
                .map(|_| tokio::spawn(client(t.clone(), mode, deadline)))
                .collect();
            let mut st = Stats::default();
            for task in tasks {
                st.add(&task.await?);
            }
            let secs = start.elapsed().as_secs_f64();
            let cpu1 = a.server_pid.map(|p| cpu_secs(p, a.clk_tck)).transpose()?;
            let cpu = cpu0.zip(cpu1).map(|(x, y)| y - x);
            let phase = Total {
                stats: st.clone(),
                secs,
                cpu,
            };
            println!(
                "{:<16} {:>5} {:>8} {:>10.0} {:>14} {:>6} {:>8}",
                mode.label(),
                round,
                st.polls,
                phase.rate(),
                phase
                    .cpu_us()
                    .map_or_else(|| "-".into(), |c| format!("{c:.0}")),
                st.full,
                st.resumed
            );
            if let Some(e) = &st.first_error {
                println!("  {} errors, first: {e}", st.errors);
            }
            let tot = &mut totals[i];
            tot.stats.add(&st);
            tot.secs += secs;
            tot.cpu = match (tot.cpu, cpu) {
                (Some(x), Some(y)) => Some(x + y),
                (None, y) => y,
                (x, None) => x,
            };
        }
    }

    println!("\nall rounds:");
    for (mode, tot) in Mode::ALL.iter().zip(&totals) {
        println!(
            "  {:<16} {:>10.0} polls/s  server {:>6} µs/poll  handshakes: {} full, {} resumed  errors {}",
            mode.label(),
            tot.rate(),
            tot.cpu_us()
                .map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            tot.stats.full,
            tot.stats.resumed,
            tot.stats.errors
        );
    }
    let [fresh, resumed, keep, plain] = [&totals[0], &totals[1], &totals[2], &totals[3]];
    let ratio = |x: &Total, y: &Total| {
        if y.rate() > 0.0 {
            x.rate() / y.rate()
        } else {
            0.0
        }
    };
    println!("\nratios (polls/s):");
    println!(
        "  resumed-mtls   / fresh-mtls     {:>6.2}x",
        ratio(resumed, fresh)
    );
    println!(
        "  keepalive-mtls / fresh-mtls     {:>6.2}x",
        ratio(keep, fresh)
    );
    println!(
        "  keepalive-mtls / resumed-mtls   {:>6.2}x",
        ratio(keep, resumed)
    );
    println!(
        "  keepalive-plain / keepalive-mtls {:>5.2}x",
        ratio(plain, keep)
    );
    if let (Some(f), Some(r), Some(k), Some(p)) = (
        fresh.cpu_us(),
        resumed.cpu_us(),
        keep.cpu_us(),
        plain.cpu_us(),
    ) {
        println!("server CPU per poll: fresh {f:.0} µs, resumed {r:.0} µs, kept-alive TLS {k:.0} µs, plain {p:.0} µs");
    }
    let resumed_share = if resumed.stats.full + resumed.stats.resumed > 0 {
        resumed.stats.resumed as f64 / (resumed.stats.full + resumed.stats.resumed) as f64
    } else {
        0.0
    };
    println!(
        "resumption: {} of {} handshakes in resumed-mtls were resumed ({:.1}%); fresh-mtls: {} resumed",
        resumed.stats.resumed,
        resumed.stats.full + resumed.stats.resumed,
        resumed_share * 100.0,
        fresh.stats.resumed
    );
    let errors: u64 = totals.iter().map(|t| t.stats.errors).sum();
    if errors > 0 {
        bail!("{errors} failed polls");
    }
    if resumed.stats.resumed == 0 {
        bail!("no TLS session was resumed: the resumed-mtls figure is not what it says");
    }
    if fresh.stats.resumed > 0 {
        bail!("fresh-mtls resumed a session: its figure is not a full handshake");
    }
    Ok(())
}
