//! Host shells (`std`): an HTTP(S) transport, file-backed flash for the simulated pump, the
//! device report, and the TUF conformance client. Trust decisions stay in hale-core.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use hale_core::metadata::{FileDigest, MetaFile};
use hale_core::trusted::{RoleSource, SearchError};
use hale_core::{Freshness, HeapBuffer, Role, Storage, TrustedSet, UnixTime, Update};
use serde_json::{json, Value};

use crate::agent::target_file_name;
use crate::store::{Durable, FirmwareStore};
use crate::transport::Transport;
use crate::{Slot, SlotState};

/// The update start time from the C library's clock (`faketime` moves it).
pub fn now() -> UnixTime {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as UnixTime,
        Err(e) => -(e.duration().as_secs() as UnixTime),
    }
}

// --- HTTP ------------------------------------------------------------------------------------

/// Why an HTTP fetch failed.
#[derive(Debug)]
pub enum HttpError {
    /// A status other than success or 404.
    Status { url: String, code: u16 },
    /// Connection, TLS or read failure.
    Io { url: String, message: String },
    /// The body is longer than allowed (endless data).
    TooLarge { url: String, limit: usize },
    /// The body is shorter than the range asked for.
    Short {
        url: String,
        wanted: usize,
        got: usize,
    },
    /// The server refused with its JSON error (`{"error": CODE, "message": TEXT}`), e.g.
    /// `device_decommissioned` or `certificate_revoked` on the device listener.
    Refused {
        url: String,
        code: u16,
        error: String,
        message: String,
    },
}

/// A non-success status: [`HttpError::Refused`] when the body is the server's JSON error (read
/// up to 4 KiB), else [`HttpError::Status`].
fn status_error(url: &str, code: u16, r: ureq::Response) -> HttpError {
    let mut body = Vec::new();
    let _ = r.into_reader().take(4096).read_to_end(&mut body);
    HttpError::from_status(url, code, &body)
}

impl HttpError {
    /// A non-success `code` with its (short) `body`: [`HttpError::Refused`] when the body is the
    /// server's JSON error, else [`HttpError::Status`].
    pub fn from_status(url: &str, code: u16, body: &[u8]) -> Self {
        match crate::identity::error_body(body) {
            (error, message) if !error.is_empty() => HttpError::Refused {
                url: url.into(),
                code,
                error,
                message,
            },
            _ => HttpError::Status {
                url: url.into(),
                code,
            },
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Status { url, code } => write!(f, "{url}: HTTP {code}"),
            HttpError::Io { url, message } => write!(f, "{url}: {message}"),
            HttpError::TooLarge { url, limit } => write!(f, "{url}: longer than {limit} bytes"),
            HttpError::Short { url, wanted, got } => write!(f, "{url}: {got} of {wanted} bytes"),
            HttpError::Refused {
                url,
                code,
                error,
                message,
            } => write!(f, "{url}: refused (HTTP {code} {error}): {message}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// How a request the server did not answer in time reads ([`HttpError::is_timeout`]).
pub const TIMED_OUT: &str = "timed out";

impl HttpError {
    /// The server did not answer in time (as opposed to refusing, or a broken answer).
    pub fn is_timeout(&self) -> bool {
        matches!(self, HttpError::Io { message, .. }
            if message == TIMED_OUT || message.ends_with(&format!(": {TIMED_OUT}")))
    }
}

/// A blocking HTTP(S) transport (rustls). `metadata_url` and `target_url` are base URLs.
///
/// A target is read as one stream: the first block opens `Range: bytes=OFFSET-` and the blocks
/// that follow it read on from the same response, so a download costs one request, not one per
/// block (256 per MiB in 4 KiB blocks, each waiting a round trip). A request may last 60 s; a
/// stream that fails after it delivered at least a block since it was opened (its 60 s ran out
/// on a slow link, the connection dropped) is opened again where it stopped, so a download
/// needs at least a block per 60 s, as one request per block did. Over plain `http://` the
/// stream goes on the connection the metadata came over; over `https://` through the agent.
///
/// Kept connections serve a request only after less than [`http1::MAX_IDLE`] of quiet, through
/// either client: the agent's pool is dropped once it has been idle that long (a connection a
/// NAT forgot would swallow the request, a report's POST included, and hold it for the whole 60 s).
///
/// [`http1::MAX_IDLE`]: crate::http1::MAX_IDLE
#[derive(Debug)]
pub struct HttpTransport {
    agent: ureq::Agent,
    /// the TLS configuration the agent is built with (`None`: ureq's default, server-auth only)
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// when the agent's connections were last used
    agent_used: Option<Instant>,
    max_idle: Duration,
    /// `http://` requests: metadata, and targets streamed on the same connection
    /// ([`Http1::open`](crate::http1::Http1::open)), with a system call or two per request
    /// where the agent makes about twenty (it sets the socket's timeouts before every read and
    /// write).
    plain: crate::http1::Http1,
    metadata_url: String,
    target_url: String,
    /// The target response being read, if any.
    target: Option<TargetStream>,
    /// The metadata requests sent ahead ([`Transport::ask_ahead`]), their answers not read
    /// yet, oldest first.
    ahead: std::collections::VecDeque<AskedAhead>,
    /// An answer asked for ahead that a fetch of another file read past (see
    /// [`Transport::ask_ahead`]), kept for its own fetch.
    read_past: Option<ReadPast>,
    /// a request timed out ([`timed_out`](Self::timed_out))
    timed_out: bool,
    /// the server refused the client certificate ([`take_certificate_refusal`](Self::take_certificate_refusal))
    certificate_refused: Option<String>,
    request_timeout: Duration,
    /// Every URL requested, in order (tests and the conformance suite count them).
    pub requests: Vec<String>,
}

/// A metadata request sent ahead: its URL, when it was sent, and whether sending it failed
/// (the fetch that was to take its answer returns that error instead of trying again).
#[derive(Debug)]
struct AskedAhead {
    url: String,
    sent: Instant,
    sending: Result<(), HttpError>,
}

/// An answer asked for ahead, read before the one a fetch wanted: its URL, when it was asked,
/// the body (`None`: 404).
#[derive(Debug)]
struct ReadPast {
    url: String,
    sent: Instant,
    body: Option<Vec<u8>>,
}

/// An open target response: what it delivers next.
struct TargetStream {
    url: String,
    /// The file offset of its next byte.
    next: u64,
    /// Bytes delivered since it was opened.
    delivered: u64,
    body: TargetBody,
}

/// Where a target response's body is read from.
enum TargetBody {
    /// the agent's (`https://`)
    Agent(Box<dyn Read + Send + Sync + 'static>),
    /// the plain client's open body ([`Http1::read`](crate::http1::Http1::read)), on the
    /// connection the metadata came over
    Plain,
}

impl fmt::Debug for TargetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetStream")
            .field("url", &self.url)
            .field("next", &self.next)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

fn join(base: &str, name: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), name)
}

impl HttpTransport {
    pub fn new(metadata_url: &str, target_url: &str) -> Self {
        Self::build(metadata_url, target_url, None)
    }

    /// Every request over this TLS configuration (mTLS with the device's operational
    /// certificate, the server verified against the Server CA only: [`crate::identity`]).
    pub fn with_tls(
        metadata_url: &str,
        target_url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        Self::build(metadata_url, target_url, Some(tls))
    }

    fn build(
        metadata_url: &str,
        target_url: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Self {
        HttpTransport {
            agent: new_agent(tls.as_ref(), crate::http1::REQUEST_DEADLINE),
            tls,
            agent_used: None,
            max_idle: crate::http1::MAX_IDLE,
            plain: crate::http1::Http1::default(),
            metadata_url: metadata_url.into(),
            target_url: target_url.into(),
            target: None,
            ahead: Default::default(),
            read_past: None,
            timed_out: false,
            certificate_refused: None,
            request_timeout: crate::http1::REQUEST_DEADLINE,
            requests: vec![],
        }
    }

    /// The same transport with kept connections reused after at most `max_idle` of quiet
    /// ([`http1::MAX_IDLE`](crate::http1::MAX_IDLE) by default).
    #[must_use]
    pub fn with_max_idle(mut self, max_idle: Duration) -> Self {
        // (a request asked ahead goes with the client it was sent on)
        self.ahead.clear();
        self.read_past = None;
        self.max_idle = max_idle;
        self.plain = crate::http1::Http1::with_max_idle(max_idle)
            .with_request_deadline(self.request_timeout);
        self
    }

    /// Give each request at most `timeout` (60 s by default): how long a silent server holds
    /// a check.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.ahead.clear();
        self.read_past = None;
        self.request_timeout = timeout;
        self.plain =
            crate::http1::Http1::with_max_idle(self.max_idle).with_request_deadline(timeout);
        self.agent = new_agent(self.tls.as_ref(), timeout);
        self
    }

    /// The HTTP agent (reports go through it, so they use the same TLS identity), its idle
    /// connections let go first if they sat longer than the limit.
    pub fn agent(&mut self) -> &ureq::Agent {
        if self
            .agent_used
            .is_some_and(|t| t.elapsed() >= self.max_idle)
        {
            self.agent = new_agent(self.tls.as_ref(), self.request_timeout);
        }
        self.agent_used = Some(Instant::now());
        &self.agent
    }

    /// GET `url`: `None` on 404, otherwise at most `limit` bytes (more is an error). Requests
    /// asked ahead and not fetched yet are dropped first, their answers unread.
    pub fn get(&mut self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
        self.drop_ahead();
        self.get_now(url, limit)
    }

    /// [`get`](Self::get), with nothing asked ahead on the way.
    fn get_now(&mut self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
        self.requests.push(url.to_string());
        if crate::http1::Http1::handles(url) {
            return self.plain.get(url, limit);
        }
        let resp = match self.agent().get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(404, r)) => {
                // read the (short) answer to its end, so the connection goes back to the pool:
                // every check asks for the next root and usually gets a 404
                let _ = std::io::copy(&mut r.into_reader().take(4096), &mut std::io::sink());
                return Ok(None);
            }
            Err(ureq::Error::Status(code, r)) => return Err(status_error(url, code, r)),
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(url, &t)),
        };
        let mut body = Vec::new();
        resp.into_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| HttpError::Io {
                url: url.into(),
                message: e.to_string(),
            })?;
        self.agent_used = Some(Instant::now());
        if body.len() > limit {
            return Err(HttpError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        Ok(Some(body))
    }
}

/// What went wrong in `t`, in ureq's words but without the URL they start with (the errors
/// that carry it put it first already; ureq writes it normalised, `https://h:443/p` as
/// `https://h/p`, so it cannot be cut off as a prefix), and without a part the next one starts
/// with (ureq's I/O errors repeat their kind: "Network Error: Network Error: …").
pub fn transport_message(t: &ureq::Transport) -> String {
    // a socket timeout reaches rustls as EAGAIN ("Resource temporarily unavailable")
    let source = std::error::Error::source(t).map(|e| {
        match e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                TIMED_OUT.to_string()
            }
            _ => e.to_string(),
        }
    });
    let parts = [
        Some(t.kind().to_string()),
        t.message().map(str::to_string),
        source,
    ];
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    let kept: Vec<&str> = parts
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            !parts
                .get(i + 1)
                .is_some_and(|next| next.starts_with(p.as_str()))
        })
        .map(|(_, p)| p.as_str())
        .collect();
    kept.join(": ")
}

/// A ureq agent with the transport's timeouts, over `tls` when given.
fn new_agent(tls: Option<&std::sync::Arc<rustls::ClientConfig>>, timeout: Duration) -> ureq::Agent {
    match tls {
        Some(tls) => crate::identity::agent_with_timeout(tls.clone(), timeout),
        None => ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .build(),
    }
}

impl Transport for HttpTransport {
    type Error = HttpError;

    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, HttpError> {
        let r = self.metadata_into(name, buf);
        self.note(r)
    }

    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), HttpError> {
        let r = self.target_into(name, offset, buf);
        self.note(r)
    }

    /// Plain `http://` metadata only: over TLS (ureq) a request cannot be sent apart from
    /// reading its answer. Not with a `max_idle` of zero either: an answer asked for ahead is
    /// taken only within that time.
    fn asks_ahead(&self) -> bool {
        !self.max_idle.is_zero() && crate::http1::Http1::handles(&self.metadata_url)
    }

    /// At most [`MAX_PIPELINED`](crate::http1::MAX_PIPELINED) requests, pipelined on one
    /// connection and written together ([`send_all`](crate::http1::Http1::send_all)); if they
    /// cannot be sent, that is the first one's fetch's error, and the names after it are not
    /// asked. Each answer is taken by a [`fetch_metadata`](Transport::fetch_metadata) of
    /// its file within `max_idle` (10 s by default). A fetch of another file first reads the
    /// answers asked before it and keeps the last, bounded by that fetch's buffer, for its own
    /// fetch (a server that does not answer one in time fails that fetch). A fetch of a target,
    /// another ask, or a [`get`](Self::get) first drops the answers unread (their connection is
    /// closed) and any kept.
    fn ask_ahead(&mut self, names: &[&str]) {
        if !self.asks_ahead() {
            return;
        }
        self.drop_ahead();
        self.target = None;
        let urls: Vec<String> = names
            .iter()
            .take(crate::http1::MAX_PIPELINED)
            .map(|name| join(&self.metadata_url, name))
            .take_while(|url| crate::http1::Http1::handles(url))
            .collect();
        // written together (one segment for the server, not one each): all sent, or none, and
        // then the first one's fetch fails with the error and the others are not asked
        let mut sending = self
            .plain
            .send_all(&urls.iter().map(String::as_str).collect::<Vec<_>>());
        let sent = Instant::now();
        for url in urls {
            self.requests.push(url.clone());
            let sending = std::mem::replace(&mut sending, Ok(()));
            let failed = sending.is_err();
            self.ahead.push_back(AskedAhead { url, sent, sending });
            if failed {
                return;
            }
        }
    }
}

impl HttpTransport {
    /// Remember whether `r` is a request the server did not answer in time ([`timed_out`](Self::timed_out)),
    /// or one it refused for the client certificate on a kept connection (the device listener
    /// checks every request against the device's record: `403 certificate_revoked`, or
    /// `certificate_expired` by the server's clock). Only an answer over this transport's TLS
    /// (`https://`, the server verified) counts: over plain `http://` (a metadata mirror, say)
    /// anyone in the path could write it.
    fn note<T>(&mut self, r: Result<T, HttpError>) -> Result<T, HttpError> {
        match &r {
            Err(e) if e.is_timeout() => self.timed_out = true,
            Err(
                e @ HttpError::Refused {
                    url,
                    code: 403,
                    error,
                    ..
                },
            ) if self.tls.is_some()
                && url.starts_with("https://")
                && matches!(
                    error.as_str(),
                    "certificate_revoked" | "certificate_expired"
                ) =>
            {
                self.certificate_refused = Some(e.to_string());
            }
            _ => {}
        }
        r
    }

    /// The error of a request that got no answer, and, when the server answered with an alert
    /// refusing the client certificate ([`refuses_certificate`]), that refusal remembered
    /// ([`take_certificate_refusal`](Self::take_certificate_refusal)).
    ///
    /// [`refuses_certificate`]: crate::identity::refuses_certificate
    fn transport_error(&mut self, url: &str, t: &ureq::Transport) -> HttpError {
        let e = HttpError::Io {
            url: url.into(),
            message: transport_message(t),
        };
        if crate::identity::refuses_certificate(t) {
            self.certificate_refused = Some(e.to_string());
        }
        e
    }

    /// The server's last refusal of the client certificate (an alert after the handshake in
    /// place of an answer, or `403 certificate_revoked`/`certificate_expired`) since the last call, as the request met
    /// it; `None` if there was none. The pump then enrolls again with its factory certificate
    /// ([`Identity::replace_refused`](crate::identity::Identity::replace_refused)).
    pub fn take_certificate_refusal(&mut self) -> Option<String> {
        self.certificate_refused.take()
    }

    /// Did a request of a check time out since [`new`](Self::new) or the last
    /// [`clear_timed_out`](Self::clear_timed_out)? A report to the same server would most
    /// likely wait as long again, for nothing.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    pub fn clear_timed_out(&mut self) {
        self.timed_out = false;
    }

    /// Forget the requests sent ahead whose answers were not taken (their connection is
    /// closed), and an answer kept.
    fn drop_ahead(&mut self) {
        self.read_past = None;
        self.ahead.clear();
        // (only requests asked ahead wait for their answers there)
        self.plain.abandon();
    }

    fn metadata_into(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, HttpError> {
        // metadata comes before a target's blocks: a target response still open belongs to an
        // earlier check, and its connection is let go
        self.target = None;
        let url = join(&self.metadata_url, name);
        // (within the time a kept connection is trusted: the agent reads an answer asked for
        // ahead after a signature check or two; one older than that was left by a check that
        // ended early, and is not taken for the answer of now)
        let max_idle = self.max_idle;
        let fresh = move |sent: Instant| sent.elapsed() < max_idle;
        let kept = self.read_past.take_if(|p| p.url == url);
        let answer = match kept {
            Some(p) if fresh(p.sent) => p.body,
            _ => loop {
                match self.ahead.pop_front() {
                    // the answer to the request sent ahead for this very file
                    Some(a) if a.url == url && fresh(a.sent) => {
                        a.sending?;
                        break self.plain.receive(buf.len())?;
                    }
                    // one asked before it, for a file fetched later (the timestamp, after a
                    // rotation's next root): read, and kept for that fetch
                    Some(a) if a.sending.is_ok() && fresh(a.sent) => {
                        match self.plain.receive(buf.len()) {
                            Ok(body) => {
                                self.read_past = Some(ReadPast {
                                    url: a.url,
                                    sent: a.sent,
                                    body,
                                })
                            }
                            // a server that did not answer that in time would not answer this
                            Err(e) if e.is_timeout() => {
                                self.drop_ahead();
                                return Err(e);
                            }
                            // (its own fetch asks again)
                            Err(_) => {}
                        }
                    }
                    // a stale answer, or one that could not be asked: dropped with the rest
                    Some(_) => {
                        let kept = self.read_past.take();
                        self.drop_ahead();
                        self.read_past = kept;
                    }
                    None => break self.get_now(&url, buf.len())?,
                }
            },
        };
        let Some(body) = answer else {
            return Ok(None);
        };
        let limit = buf.len();
        let dst = buf
            .get_mut(..body.len())
            .ok_or(HttpError::TooLarge { url, limit })?;
        dst.copy_from_slice(&body);
        Ok(Some(body.len()))
    }

    fn target_into(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), HttpError> {
        // (a request asked ahead is for metadata: a target read means the check went elsewhere)
        self.drop_ahead();
        if buf.is_empty() {
            return Ok(());
        }
        let url = join(&self.target_url, name);
        // the open response goes on from here, or a new one starts here
        // (a plain stream goes on only while its body is still the plain client's open one:
        // another request on that connection ends it)
        let mut stream = match self.target.take() {
            Some(s)
                if s.url == url
                    && s.next == offset
                    && (matches!(s.body, TargetBody::Agent(_))
                        || self.plain.reading() == Some(url.as_str())) =>
            {
                s
            }
            _ => self.open_target(&url, offset)?,
        };
        let mut got = 0;
        while got < buf.len() {
            let dst = buf.get_mut(got..).unwrap_or(&mut []);
            let read = match &mut stream.body {
                TargetBody::Plain => self.plain.read(dst),
                TargetBody::Agent(body) => loop {
                    match body.read(dst) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        r => {
                            break r.map_err(|e| HttpError::Io {
                                url: url.clone(),
                                message: e.to_string(),
                            })
                        }
                    }
                },
            };
            match read {
                Ok(0) => {
                    return Err(HttpError::Short {
                        url,
                        wanted: buf.len(),
                        got,
                    })
                }
                Ok(n) => {
                    got += n;
                    stream.next += n as u64;
                    stream.delivered += n as u64;
                }
                Err(_) if stream.delivered >= buf.len() as u64 => {
                    // it made progress: go on from where it stopped, on a new request
                    stream = self.open_target(&url, stream.next)?;
                }
                Err(e) => return Err(e),
            }
        }
        if matches!(stream.body, TargetBody::Agent(_)) {
            // the stream's connection goes back to the agent's pool once its body has been read
            self.agent_used = Some(Instant::now());
        }
        self.target = Some(stream);
        Ok(())
    }
}

impl HttpTransport {
    /// `GET url` from byte `offset` to the end. A server without Range support answers 200 with
    /// the whole file: the first `offset` bytes are skipped. A 206 must start at `offset`.
    fn open_target(&mut self, url: &str, offset: u64) -> Result<TargetStream, HttpError> {
        self.requests.push(format!("{url} bytes={offset}-"));
        if crate::http1::Http1::handles(url) {
            return self.open_plain_target(url, offset);
        }
        let io = |message: String| HttpError::Io {
            url: url.into(),
            message,
        };
        let resp = match self
            .agent()
            .get(url)
            .set("Range", &format!("bytes={offset}-"))
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => return Err(status_error(url, code, r)),
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(url, &t)),
        };
        let partial = resp.status() == 206;
        if partial {
            let start = resp
                .header("Content-Range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, _)| a.trim().parse::<u64>().ok());
            if start != Some(offset) {
                return Err(io(format!(
                    "asked for bytes from {offset}, the server sent Content-Range {:?}",
                    resp.header("Content-Range").unwrap_or("(none)")
                )));
            }
        }
        let mut body = resp.into_reader();
        if !partial {
            let skipped = std::io::copy(&mut (&mut body).take(offset), &mut std::io::sink())
                .map_err(|e| io(e.to_string()))?;
            if skipped < offset {
                return Err(HttpError::Short {
                    url: url.into(),
                    wanted: usize::try_from(offset).unwrap_or(usize::MAX),
                    got: usize::try_from(skipped).unwrap_or(usize::MAX),
                });
            }
        }
        Ok(TargetStream {
            url: url.into(),
            next: offset,
            delivered: 0,
            body: TargetBody::Agent(body),
        })
    }

    /// [`open_target`](Self::open_target) over plain `http://`: on the plain client's kept
    /// connection, the one the check's metadata came over (a new connection through the agent
    /// cost a handshake, and the agent about twenty system calls per read).
    fn open_plain_target(&mut self, url: &str, offset: u64) -> Result<TargetStream, HttpError> {
        let start = self.plain.open(url, offset)?;
        // a whole file (no ranges): the bytes before `offset` are skipped
        let mut skipped = start;
        let mut sink = [0u8; 4096];
        while skipped < offset {
            let n = (offset - skipped).min(sink.len() as u64) as usize;
            match self.plain.read(sink.get_mut(..n).unwrap_or_default())? {
                0 => {
                    return Err(HttpError::Short {
                        url: url.into(),
                        wanted: usize::try_from(offset).unwrap_or(usize::MAX),
                        got: usize::try_from(skipped).unwrap_or(usize::MAX),
                    })
                }
                got => skipped += got as u64,
            }
        }
        Ok(TargetStream {
            url: url.into(),
            next: offset,
            delivered: 0,
            body: TargetBody::Plain,
        })
    }
}

// --- buffers for one check ------------------------------------------------------------------

/// The buffers one [`crate::check_for_update`] works in, on the heap (a device gives static
/// ones): the trusted set's four role buffers and the incoming metadata, `role` bytes each; a
/// target block of `chunk` bytes; `delegations` bytes for delegated roles during a search.
#[derive(Debug)]
pub struct CheckBuffers {
    roles: [Vec<u8>; 4],
    scratch: Vec<u8>,
    chunk: Vec<u8>,
    delegations: Vec<u8>,
}

impl CheckBuffers {
    pub fn new(role: usize, chunk: usize, delegations: usize) -> Self {
        CheckBuffers {
            roles: std::array::from_fn(|_| vec![0; role]),
            scratch: vec![0; role],
            chunk: vec![0; chunk],
            delegations: vec![0; delegations],
        }
    }

    pub fn workspace(&mut self) -> crate::Workspace<'_> {
        let [root, timestamp, snapshot, targets] = &mut self.roles;
        crate::Workspace {
            metadata: Storage {
                root,
                timestamp,
                snapshot,
                targets,
            },
            scratch: &mut self.scratch,
            chunk: &mut self.chunk,
            delegations: &mut self.delegations,
        }
    }
}

// --- file-backed flash -----------------------------------------------------------------------

/// Why the file-backed flash failed.
#[derive(Debug)]
pub enum FileFlashError {
    Io(String),
    OutOfBounds,
    NotAligned,
    NotErased {
        offset: u32,
    },
    /// A write or erase on a flash opened read-only ([`FileFlash::open_read_only`],
    /// [`FileFlash::open_pump`]).
    ReadOnly,
}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FileFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// NOR flash kept in a file (the simulated pump's flash survives the process, like a real one
/// survives a reset), with a write-back cache in front of it: writes and erases change the
/// memory copy and mark their sectors; [`Durable::sync`] writes the marked sectors to the file
/// and `fdatasync`s it. The store syncs around every state record, so whatever a record claims
/// is on the disk before the record, and a killed process, or a crash of the machine, leaves the
/// state of the last record (or of the one being written) with the bytes it claims. Writes not
/// yet synced are lost then, as `cachedflash::CachedFlash` models for the tests.
///
/// One process writes a flash: [`open`](Self::open) and [`open_pump`](Self::open_pump) lock the
/// file (`flock`) and refuse one that another process holds, since each keeps its own copy and
/// they would overwrite each other's records. [`open_read_only`](Self::open_read_only) (and
/// `open_pump` read-only) read what was last synced.
#[derive(Debug)]
pub struct FileFlash {
    file: fs::File,
    mem: Vec<u8>,
    /// one flag per erase sector: written or erased since the last sync
    dirty: Vec<bool>,
    read_only: bool,
}

/// Take `file`'s exclusive lock, or say who holds it.
pub(crate) fn lock(file: &fs::File, path: &Path) -> std::io::Result<()> {
    fs2::FileExt::try_lock_exclusive(file).map_err(|e| {
        if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{}: in use by another process (a hale-agent on this state directory?)",
                    path.display()
                ),
            )
        } else {
            e
        }
    })
}

/// Sector size of the simulated pump's flash.
pub const FILE_FLASH_ERASE: usize = 4096;

/// The largest document of each top-level role (root, timestamp, snapshot, targets) the
/// simulated pump's check takes: the size of its role buffers ([`CheckBuffers`]).
pub const PUMP_ROLE_MAX: usize = 64 << 10;

/// Each state region of [`PUMP_LAYOUT`]: whole sectors holding a record with all four roles at
/// [`PUMP_ROLE_MAX`] ([`crate::store::record_len`]), so that whatever metadata the check
/// verifies can be recorded (262,641 bytes: 65 sectors, 260 KiB).
pub const PUMP_STATE_LEN: u32 = (crate::store::record_len(4 * PUMP_ROLE_MAX)
    .div_ceil(FILE_FLASH_ERASE)
    * FILE_FLASH_ERASE) as u32;

/// The simulated pump's flash: two state regions of [`PUMP_STATE_LEN`], two 1 MiB slots, and a
/// download checkpointed every 64 KiB (16 sectors): a power cut costs at most 64 KiB downloaded
/// again (a download the network breaks off, a sector), and a 1 MiB image writes 16 checkpoint
/// records instead of 256. A record erases only the sectors it spans, so the larger regions
/// cost nothing until the metadata grows.
pub const PUMP_LAYOUT: crate::Layout =
    crate::Layout::contiguous(0, PUMP_STATE_LEN, 1 << 20).with_checkpoint(64 << 10);

/// The simulated pump's flash as provisioned before 2026-11-24: state regions of 64 KiB, which
/// hold about 65,000 bytes of metadata in all (less than the check verifies: past it, every
/// check ends in [`crate::StoreError::RecordTooSmall`]). Such a flash is still opened with it
/// ([`pump_layout`]); `hale-agent provision` makes the current one.
pub const PUMP_LAYOUT_64K: crate::Layout =
    crate::Layout::contiguous(0, 64 << 10, 1 << 20).with_checkpoint(64 << 10);

/// The layout of a simulated pump's flash file `len` bytes long: [`PUMP_LAYOUT`], or
/// [`PUMP_LAYOUT_64K`] for a flash provisioned with it; `None` for any other length, an empty
/// file's included (not a flash `hale-agent` provisioned).
pub fn pump_layout(len: u64) -> Option<crate::Layout> {
    [PUMP_LAYOUT, PUMP_LAYOUT_64K]
        .into_iter()
        .find(|l| u64::from(l.end()) == len)
}

impl FileFlash {
    /// Open `path` for this process alone, creating an erased flash of `size` bytes when it
    /// does not exist or is empty. A file of another size is refused (never silently erased),
    /// and so is one another process has open (`ErrorKind::WouldBlock`).
    pub fn open(path: &Path, size: usize) -> std::io::Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock(&file, path)?;
        Self::load(file, path, size, false)
    }

    /// Open `path` to read what was last synced, beside a process that may hold it; writes
    /// and erases are refused ([`FileFlashError::ReadOnly`]).
    pub fn open_read_only(path: &Path, size: usize) -> std::io::Result<Self> {
        let file = fs::File::open(path)?;
        let flash = Self::load(file, path, size, true)?;
        if flash.mem.len() != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: empty flash image", path.display()),
            ));
        }
        Ok(flash)
    }

    /// Open the simulated pump's flash at `path`, which must exist, with the layout its length
    /// tells ([`pump_layout`]), the length taken from the file opened: for this process alone,
    /// or `read_only` to read what was last synced beside a process that holds it. A length no
    /// pump's flash has is refused (`InvalidData`) before the file is read.
    pub fn open_pump(path: &Path, read_only: bool) -> std::io::Result<(Self, crate::Layout)> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        if !read_only {
            lock(&file, path)?;
        }
        let len = file.metadata()?.len();
        let layout = pump_layout(len).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: flash image is {len} bytes, expected {} (or {}, provisioned before \
                     2026-11-24); run `provision` again",
                    path.display(),
                    PUMP_LAYOUT.end(),
                    PUMP_LAYOUT_64K.end()
                ),
            )
        })?;
        Ok((
            Self::load(file, path, layout.end() as usize, read_only)?,
            layout,
        ))
    }

    fn load(file: fs::File, path: &Path, size: usize, read_only: bool) -> std::io::Result<Self> {
        // the size first: a file of another length is refused before it is read
        let len = file.metadata()?.len();
        if len != 0 && len != size as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: flash image is {len} bytes, expected {size}",
                    path.display()
                ),
            ));
        }
        let mut mem = Vec::with_capacity(size);
        (&file).take(size as u64).read_to_end(&mut mem)?;
        if mem.is_empty() && !read_only {
            mem = vec![0xFF; size];
            file.write_all_at(&mem, 0)?;
            file.sync_data()?;
        } else if !mem.is_empty() && mem.len() != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: flash image changed size while read ({} bytes, expected {size})",
                    path.display(),
                    mem.len()
                ),
            ));
        }
        let sectors = mem.len().div_ceil(FILE_FLASH_ERASE);
        Ok(FileFlash {
            file,
            mem,
            dirty: vec![false; sectors],
            read_only,
        })
    }

    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, FileFlashError> {
        let s = offset as usize;
        let e = s
            .checked_add(len)
            .filter(|e| *e <= self.mem.len())
            .ok_or(FileFlashError::OutOfBounds)?;
        Ok(s..e)
    }

    fn writable(&self) -> Result<(), FileFlashError> {
        if self.read_only {
            return Err(FileFlashError::ReadOnly);
        }
        Ok(())
    }

    /// Mark the sectors `r` touches for the next sync.
    fn mark(&mut self, r: std::ops::Range<usize>) {
        if r.is_empty() {
            return;
        }
        let sectors = r.start / FILE_FLASH_ERASE..=(r.end - 1) / FILE_FLASH_ERASE;
        if let Some(d) = self.dirty.get_mut(sectors) {
            d.fill(true);
        }
    }
}

impl Durable for FileFlash {
    /// Write every run of marked sectors to the file, then `fdatasync` it. On error the sectors
    /// stay marked.
    fn sync(&mut self) -> Result<(), FileFlashError> {
        let io = |e: std::io::Error| FileFlashError::Io(e.to_string());
        let mut any = false;
        let mut i = 0;
        while i < self.dirty.len() {
            if !self.dirty.get(i).copied().unwrap_or(false) {
                i += 1;
                continue;
            }
            let run = self
                .dirty
                .get(i..)
                .unwrap_or(&[])
                .iter()
                .take_while(|d| **d)
                .count();
            let start = i * FILE_FLASH_ERASE;
            let end = ((i + run) * FILE_FLASH_ERASE).min(self.mem.len());
            let bytes = self
                .mem
                .get(start..end)
                .ok_or(FileFlashError::OutOfBounds)?;
            self.file.write_all_at(bytes, start as u64).map_err(io)?;
            any = true;
            i += run;
        }
        if any {
            self.file.sync_data().map_err(io)?;
            self.dirty.fill(false);
        }
        Ok(())
    }
}

impl ErrorType for FileFlash {
    type Error = FileFlashError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FileFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.mem.get(r).ok_or(FileFlashError::OutOfBounds)?);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = FILE_FLASH_ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), FileFlashError> {
        self.writable()?;
        if from > to || from as usize % FILE_FLASH_ERASE != 0 || to as usize % FILE_FLASH_ERASE != 0
        {
            return Err(FileFlashError::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        self.mem
            .get_mut(r.clone())
            .ok_or(FileFlashError::OutOfBounds)?
            .fill(0xFF);
        self.mark(r);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FileFlashError> {
        self.writable()?;
        if offset as usize % 4 != 0 || bytes.len() % 4 != 0 {
            return Err(FileFlashError::NotAligned);
        }
        let r = self.range(offset, bytes.len())?;
        let dst = self
            .mem
            .get_mut(r.clone())
            .ok_or(FileFlashError::OutOfBounds)?;
        if let Some(i) = dst.iter().position(|b| *b != 0xFF) {
            return Err(FileFlashError::NotErased {
                offset: offset + i as u32,
            });
        }
        dst.copy_from_slice(bytes);
        self.mark(r);
        Ok(())
    }
}

// --- device report ---------------------------------------------------------------------------

/// The report the pump POSTs to `{server}/api/v1/devices/{id}/report`.
pub fn report_json<F: Durable>(
    store: &FirmwareStore<F>,
    device_id: &str,
    model: &str,
    revision: &str,
    result: &str,
    reason: &str,
) -> Value {
    let s = store.slots();
    let slots: Vec<Value> = [Slot::A, Slot::B]
        .iter()
        .map(|slot| {
            let info = s.info(*slot);
            json!({
                "slot": slot.as_str(),
                "version": info.image.map(|i| i.version.to_string()),
                "state": info.state.as_str(),
                "active": *slot == s.active(),
            })
        })
        .collect();
    json!({
        "device_id": device_id,
        "model": model,
        "revision": revision,
        "security_counter": s.security_counter(),
        "slots": slots,
        // none yet, or none standing (as the server's report: absent there)
        "last_result": if result.is_empty() {
            Value::Null
        } else {
            json!({"result": result, "reason": fit_text(reason, MAX_REASON)})
        },
    })
}

/// The body the pump POSTs to hale-server's `{server}/api/v1/devices/{id}/report`, in the
/// server's schema: `{"slots": [{"name", "version", "state"}], "last_result": {"result",
/// "target", "version", "reason"}}`, slot states `active | inactive | trial | pending | bad |
/// empty` (the server refuses unknown fields). The device id is in the URL. `report_json` is
/// the pump's fuller local view (`hale-agent status`).
pub fn server_report_json<F: Durable>(
    store: &FirmwareStore<F>,
    target: &str,
    result: &str,
    reason: &str,
) -> Value {
    let s = store.slots();
    let slots: Vec<Value> = [Slot::A, Slot::B]
        .iter()
        .map(|slot| {
            let info = s.info(*slot);
            let state = match info.state {
                SlotState::Empty => "empty",
                // being written, or written and verified and waiting for the application's yes:
                // not bootable either way
                SlotState::Staging => "staging",
                SlotState::Pending => "pending",
                SlotState::Trial => "trial",
                SlotState::Good if *slot == s.active() => "active",
                SlotState::Good => "inactive",
                SlotState::Rejected => "bad",
            };
            json!({
                "name": slot.as_str(),
                "version": info.image.map(|i| i.version.to_string()).unwrap_or_default(),
                "state": state,
            })
        })
        .collect();
    if result.is_empty() {
        return json!({ "slots": slots });
    }
    let running = s
        .info(s.active())
        .image
        .map(|i| i.version.to_string())
        .unwrap_or_default();
    json!({
        "slots": slots,
        "last_result": {"result": result, "target": target, "version": running, "reason": fit_text(reason, MAX_REASON)},
    })
}

/// Longest `last_result.reason` hale-server takes (bytes, one line).
pub const MAX_REASON: usize = hale_core::report::MAX_REASON;

/// `text` as hale-server takes a report's free text: every character it refuses
/// ([`hale_core::report::refused`]: control characters such as line breaks, line and paragraph
/// separators, bidirectional and other format characters) as a space, at most `max` bytes, cut
/// between characters and ended with "…" when cut (when `max` leaves room for it). A reason is
/// the pump's own words (an error's text may quote a long URL, a file name or a server's
/// answer); one the server refuses would have it refuse every report until the next result.
pub fn fit_text(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if hale_core::report::refused(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    if out.len() > max {
        let mark = if max >= '…'.len_utf8() { "…" } else { "" };
        let mut end = max.saturating_sub(mark.len());
        while !out.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        out.truncate(end);
        out.push_str(mark);
    }
    out
}

/// Whether a slot's state means a trial is under way (for the simulated pump's console).
pub fn trial_running(s: &crate::Slots) -> bool {
    s.info(s.active()).state == SlotState::Trial
}

// --- TUF conformance client ----------------------------------------------------------------

/// Largest metadata document the conformance client accepts.
pub const CONFORMANCE_MAX_METADATA: usize = 4 << 20;
/// Largest timestamp (python-tuf's default).
pub const CONFORMANCE_MAX_TIMESTAMP: usize = 16 << 10;
/// Largest root (python-tuf's default).
pub const CONFORMANCE_MAX_ROOT: usize = 512 << 10;

/// Why the conformance client failed.
#[derive(Debug)]
pub enum ClientError {
    Io(String, std::io::Error),
    Http(HttpError),
    Trust(hale_core::Error),
    Missing(String),
    TargetNotFound(String),
    Usage(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(p, e) => write!(f, "{p}: {e}"),
            ClientError::Http(e) => write!(f, "{e}"),
            ClientError::Trust(e) => write!(f, "{e}"),
            ClientError::Missing(u) => write!(f, "{u}: not found"),
            ClientError::TargetNotFound(t) => write!(f, "target {t} not found"),
            ClientError::Usage(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<hale_core::Error> for ClientError {
    fn from(e: hale_core::Error) -> Self {
        ClientError::Trust(e)
    }
}

impl From<HttpError> for ClientError {
    fn from(e: HttpError) -> Self {
        ClientError::Http(e)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let io = |e| ClientError::Io(path.display().to_string(), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    // the directory usually exists: create it only when the write says it does not
    match fs::write(&tmp, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io)?;
            fs::write(&tmp, bytes).map_err(io)?;
        }
        other => other.map_err(io)?,
    }
    fs::rename(&tmp, path).map_err(io)
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, ClientError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::Io(path.display().to_string(), e)),
    }
}

/// The conformance client: `init`, `refresh` and `download` over a metadata directory that holds
/// exactly the bytes served, under unversioned names.
#[derive(Debug)]
pub struct ConformanceClient {
    pub metadata_dir: PathBuf,
    /// `https://` requests
    pub http: HttpTransport,
    /// `http://` requests, sent and answered apart (see [`refresh`](Self::refresh))
    plain: crate::http1::Http1,
    /// the request sent and not yet answered, when it went through `http` (which has one call)
    pending: Option<String>,
    /// verified files not written yet, in order: written while the server answers the next
    /// request, or at the end ([`flush`](Self::flush))
    unwritten: Vec<(PathBuf, Vec<u8>)>,
}

impl ConformanceClient {
    pub fn new(metadata_dir: &Path, metadata_url: &str, target_url: &str) -> Self {
        ConformanceClient {
            metadata_dir: metadata_dir.into(),
            http: HttpTransport::new(metadata_url, target_url),
            plain: crate::http1::Http1::default(),
            pending: None,
            unwritten: Vec::new(),
        }
    }

    /// Persist `bytes` at `path` (verified: the workflow persists each file at once). The write
    /// happens while the server answers the next request, or at the end of the command: a file
    /// written is never one the workflow would not have written, in the same order; a failing
    /// disk is noticed one request later.
    fn persist(&mut self, path: PathBuf, bytes: Vec<u8>) {
        self.unwritten.push((path, bytes));
    }

    /// Write the files [`persist`](Self::persist) queued, in order; the first failure stops.
    fn flush(&mut self) -> Result<(), ClientError> {
        for (path, bytes) in std::mem::take(&mut self.unwritten) {
            write_file(&path, &bytes)?;
        }
        Ok(())
    }

    /// Send a GET for `url`; its answer comes from [`receive`](Self::receive). Over HTTPS
    /// the whole exchange happens in `receive`.
    fn send(&mut self, url: &str) -> Result<(), ClientError> {
        if crate::http1::Http1::handles(url) {
            // logged with the HTTPS transport's requests (`get` logs its own)
            self.http.requests.push(url.to_string());
            self.plain.send(url)?;
        } else {
            self.pending = Some(url.to_string());
        }
        Ok(())
    }

    /// The answer to the last [`send`](Self::send): `None` on 404, else at most `limit` bytes.
    /// Queued files are written first, while the server works on the answer.
    fn receive(&mut self, limit: usize) -> Result<Option<Vec<u8>>, ClientError> {
        if let Err(e) = self.flush() {
            // the request sent is not answered here: its answer is never another's
            self.pending = None;
            self.plain.abandon();
            return Err(e);
        }
        match self.pending.take() {
            Some(url) => Ok(self.http.get(&url, limit)?),
            None => Ok(self.plain.receive(limit)?),
        }
    }

    fn get(&mut self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, ClientError> {
        self.send(url)?;
        self.receive(limit)
    }

    /// Store the initial trusted root (no request, no check: the protocol says so).
    pub fn init(metadata_dir: &Path, root_file: &Path) -> Result<(), ClientError> {
        let bytes =
            fs::read(root_file).map_err(|e| ClientError::Io(root_file.display().to_string(), e))?;
        write_file(&metadata_dir.join("root.json"), &bytes)
    }

    /// The stored file of a role. Delegated role names are arbitrary strings ("../x", "/x",
    /// "?"), so the name is percent-encoded: it can never leave `metadata_dir`.
    fn path(&self, role: &str) -> PathBuf {
        self.metadata_dir
            .join(format!("{}.json", encode_target_name(role)))
    }

    /// Where the root after `set`'s trusted one would be.
    fn next_root_url(&self, set: &TrustedSet<HeapBuffer>) -> String {
        let next = set.root().header.version + 1;
        join(&self.http.metadata_url, &format!("{next}.root.json"))
    }

    fn fetch(&mut self, name: &str, limit: usize) -> Result<Vec<u8>, ClientError> {
        let url = join(&self.http.metadata_url, name);
        self.get(&url, limit)?.ok_or(ClientError::Missing(url))
    }

    /// The top-level workflow (TUF spec §5.3–5.6); each verified file is persisted at once.
    ///
    /// The requests go out one after another, exactly as the workflow orders them. While the
    /// server answers one, the client runs the workflow's next steps ahead on the stored files
    /// (`look_ahead`): the same hale-core calls, with the same bytes, on a copy of the trusted
    /// set. Their results are used only where the workflow would have made those very calls: the
    /// root did not change (the copy was taken from it) and the server's timestamp is byte for
    /// byte the stored one (the stored bytes are what the workflow would have passed). Otherwise
    /// they are dropped and the steps run again in order. The usual poll, when nothing changed,
    /// so checks the stored metadata in the time the server takes to answer.
    pub fn refresh(&mut self, now: UnixTime) -> Result<TrustedSet<HeapBuffer>, ClientError> {
        let set = self.refresh_ahead(now, Vec::new()).map(|(set, _)| set);
        // what was verified is written whatever came after; a write failure came first
        self.flush().and(set)
    }

    /// [`refresh`](Self::refresh); while the server answers the timestamp request, it also takes
    /// the length and SHA-256 of each file in `cached` (target files a download may find
    /// already there), as they are now.
    fn refresh_ahead(
        &mut self,
        now: UnixTime,
        cached: Vec<PathBuf>,
    ) -> Result<(TrustedSet<HeapBuffer>, Digests), ClientError> {
        let root = read_opt(&self.path("root"))?
            .ok_or_else(|| ClientError::Missing("trusted root.json".into()))?;
        let mut set = TrustedSet::new(Storage::on_heap(CONFORMANCE_MAX_METADATA), &root, now)?;
        let timestamp = read_opt(&self.path("timestamp"))?;
        self.send(&self.next_root_url(&set))?;
        // while the server answers: step 3 (the stored timestamp) on a copy
        let mut loaded = timestamp.as_deref().and_then(|ts| {
            let mut copy = set
                .copy_into(Storage::on_heap(CONFORMANCE_MAX_METADATA))
                .ok()?;
            let _ = copy.load_trusted_timestamp(ts);
            Some(copy)
        });
        while let Some(bytes) = self.receive(CONFORMANCE_MAX_ROOT)? {
            // a new root: the copy was taken from the old one
            loaded = None;
            set.update_root(&bytes)?;
            self.persist(self.path("root"), bytes);
            self.send(&self.next_root_url(&set))?;
        }
        let url = join(&self.http.metadata_url, "timestamp.json");
        self.send(&url)?;
        // while the server answers: the digests of the files a download may find there, and
        // steps 4–7 on the stored files, taken from the stored timestamp (as if the server's were
        // the same bytes)
        let digests = digests_of(cached);
        let ahead = look_ahead(
            loaded.as_ref().zip(timestamp.as_deref()),
            &self.path("snapshot"),
            &self.path("targets"),
        );
        let ts = self
            .receive(CONFORMANCE_MAX_TIMESTAMP)?
            .ok_or(ClientError::Missing(url))?;
        let Ahead { stored, same } = ahead;
        let same_ts = timestamp.as_deref() == Some(ts.as_slice());
        // steps 3 (stored timestamp) and 4 (the server's): taken from the look-ahead when it ran
        // them with these very bytes, else run here
        let (mut set, update, ahead_rest) = match (same, loaded) {
            (Some(same), Some(_)) if same_ts => {
                let same = same?;
                (same.set, same.update, Some((same.fresh, same.targets_ok)))
            }
            (_, Some(mut loaded)) => {
                let update = loaded.update_timestamp(&ts)?;
                (loaded, update, None)
            }
            (_, None) => {
                if let Some(local) = &timestamp {
                    let _ = set.load_trusted_timestamp(local);
                }
                let update = set.update_timestamp(&ts)?;
                (set, update, None)
            }
        };
        if let Update::Updated { .. } = update {
            self.persist(self.path("timestamp"), ts.clone());
        }
        // (the workflow reads the stored snapshot and targets here: a read error counts from here)
        let stored = stored?;
        let consistent = set.root().consistent_snapshot;
        let fresh = match ahead_rest {
            Some((fresh, _)) => fresh,
            None => stored
                .snapshot
                .as_deref()
                .is_some_and(|local| set.load_trusted_snapshot(local) == Ok(Freshness::Current)),
        };
        if !fresh {
            let (v, len) = {
                let t = set.timestamp().ok_or(hale_core::Error::WrongOrder {
                    operation: "snapshot",
                    requires: "timestamp",
                })?;
                (t.snapshot.version, t.snapshot.length)
            };
            let name = if consistent {
                format!("{v}.snapshot.json")
            } else {
                "snapshot.json".into()
            };
            let bytes = self.fetch(&name, len.map_or(CONFORMANCE_MAX_METADATA, |l| l as usize))?;
            set.update_snapshot(&bytes)?;
            self.persist(self.path("snapshot"), bytes);
        }
        // the look-ahead's targets step ran after a current stored snapshot, as here
        let local_ok = match ahead_rest {
            Some((true, Some(ok))) => ok,
            _ => stored
                .targets
                .as_deref()
                .is_some_and(|local| set.update_targets(local).is_ok()),
        };
        if !local_ok {
            let (v, len) = {
                let s = set.snapshot().ok_or(hale_core::Error::WrongOrder {
                    operation: "targets",
                    requires: "snapshot",
                })?;
                let m = s.role("targets")?.ok_or(hale_core::Error::NotInSnapshot {
                    role: hale_core::Name::new("targets"),
                })?;
                (m.version, m.length)
            };
            let name = if consistent {
                format!("{v}.targets.json")
            } else {
                "targets.json".into()
            };
            let bytes = self.fetch(&name, len.map_or(CONFORMANCE_MAX_METADATA, |l| l as usize))?;
            set.update_targets(&bytes)?;
            self.persist(self.path("targets"), bytes);
        }
        Ok((set, digests))
    }

    /// Refresh, then download each target (delegations walked in hale-core) into `target_dir`,
    /// skipping a file already there with the right hashes.
    pub fn download(
        &mut self,
        now: UnixTime,
        targets: &[String],
        target_dir: &Path,
    ) -> Result<(), ClientError> {
        let done = self.download_queued(now, targets, target_dir);
        // what was verified is written whatever came after; a write failure came first
        self.flush().and(done)
    }

    fn download_queued(
        &mut self,
        now: UnixTime,
        targets: &[String],
        target_dir: &Path,
    ) -> Result<(), ClientError> {
        let out_path = |path: &str| target_dir.join(encode_target_name(path));
        let (set, mut digests) =
            self.refresh_ahead(now, targets.iter().map(|p| out_path(p)).collect())?;
        let consistent = set.root().consistent_snapshot;
        for path in targets {
            hale_core::metadata::check_target_path(path)?;
            let mut source = DirSource {
                client: self,
                consistent,
                fetched: vec![],
                error: None,
            };
            let found = match set.find_target(path, &mut source) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    // the search ran to its end, so every role it fetched was verified:
                    // persist them even though no role lists the target (spec 5.6.7.2
                    // updates a delegated role "as in 5.6", persisting included)
                    for (role, bytes) in std::mem::take(&mut source.fetched) {
                        self.persist(self.path(&role), bytes);
                    }
                    return Err(ClientError::TargetNotFound(path.clone()));
                }
                Err(SearchError::Trust(e)) => return Err(ClientError::Trust(e)),
                Err(SearchError::Fetch(())) => {
                    return Err(source
                        .error
                        .unwrap_or_else(|| ClientError::Missing("delegated role".into())))
                }
            };
            // every role fetched during a successful search was verified: persist them
            for (role, bytes) in std::mem::take(&mut source.fetched) {
                self.persist(self.path(&role), bytes);
            }
            let file = found.file(path)?;
            let out = out_path(path);
            let what = hale_core::Name::new(path);
            // a file already there with the right length and hashes is kept: decided from what
            // the look-ahead found (no file, or its digest when that suffices), else from its
            // bytes
            let ahead = match digests.iter().find(|(p, _)| *p == out) {
                Some((_, None)) => Some(false),
                Some((_, Some(d))) => file.verify_digest(d, what).map(|v| v.is_ok()),
                None => None,
            };
            let kept = match ahead {
                Some(kept) => kept,
                None => {
                    // (a file this command wrote is on disk before it is looked at)
                    self.flush()?;
                    read_opt(&out)?.is_some_and(|have| file.verify_bytes(&have, what).is_ok())
                }
            };
            if kept {
                continue;
            }
            let sha = file.sha256();
            let name = match (consistent, sha) {
                (true, Some(sha)) => {
                    target_file_name(path, &sha, true).map(|s| s.as_str().to_string())
                }
                _ => Some(path.clone()),
            }
            .ok_or_else(|| ClientError::Usage(format!("target name too long: {path}")))?;
            let url = join(&self.http.target_url, &name);
            let body = self
                .get(&url, file.length as usize)?
                .ok_or(ClientError::Missing(url))?;
            file.verify_bytes(&body, hale_core::Name::new(path))?;
            // a digest taken before no longer describes the file
            digests.retain(|(p, _)| *p != out);
            self.persist(out, body);
        }
        Ok(())
    }
}

/// A file name for a target path inside the target directory, or for a role name in the
/// metadata directory and in a metadata URL (percent-encoded: only `A-Za-z0-9-_.~` kept).
pub fn encode_target_name(path: &str) -> String {
    let mut s = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Delegated roles: the stored copy when it is the version the snapshot names, else the
/// repository's.
struct DirSource<'c> {
    client: &'c mut ConformanceClient,
    consistent: bool,
    fetched: Vec<(String, Vec<u8>)>,
    error: Option<ClientError>,
}

impl RoleSource for DirSource<'_> {
    type Buf = Vec<u8>;
    type Error = ();

    fn fetch_role(&mut self, name: &str, meta: &MetaFile<'_>) -> Result<Vec<u8>, ()> {
        let local = read_opt(&self.client.path(name)).ok().flatten();
        if let Some(l) = local {
            let ok = hale_core::metadata::peek_header(&l, "targets")
                .is_ok_and(|h| h.version == meta.version)
                && meta.verify_bytes(&l, hale_core::Name::new(name)).is_ok();
            if ok {
                return Ok(l);
            }
        }
        // the role name is one URL path segment: percent-encode it (as python-tuf's
        // `parse.quote(name, "")` does), so "?", "#" and "/" stay part of the name
        let quoted = encode_target_name(name);
        let file = if self.consistent {
            format!("{}.{quoted}.json", meta.version)
        } else {
            format!("{quoted}.json")
        };
        let limit = meta.length.map_or(CONFORMANCE_MAX_METADATA, |l| l as usize);
        match self.client.fetch(&file, limit) {
            Ok(b) => {
                self.fetched.push((name.to_string(), b.clone()));
                Ok(b)
            }
            Err(e) => {
                self.error = Some(e);
                Err(())
            }
        }
    }
}

/// Length and SHA-256 of each of `cached` (a file that cannot be read is left to the download,
/// which says why).
fn digests_of(cached: Vec<PathBuf>) -> Digests {
    cached
        .into_iter()
        .filter_map(|p| match fs::read(&p) {
            Ok(bytes) => Some((p, Some(FileDigest::of(&bytes)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some((p, None)),
            Err(_) => None,
        })
        .collect()
}

/// Length and SHA-256 of the files found where targets would be written, by path; `None`: no
/// file there.
type Digests = Vec<(PathBuf, Option<FileDigest>)>;

/// The stored snapshot and targets as the refresh found them.
#[derive(Debug)]
struct Stored {
    snapshot: Option<Vec<u8>>,
    targets: Option<Vec<u8>>,
}

/// The refresh's steps 4–7 run ahead on the stored files ([`ConformanceClient::refresh`]).
struct Ahead {
    /// The stored snapshot and targets, read here.
    stored: Result<Stored, ClientError>,
    /// For a server timestamp byte-identical to the stored one: step 4 with those bytes (its
    /// error is the workflow's error), then 5 and 7 on the stored snapshot and targets. `None`
    /// when there was nothing to run them on (no stored timestamp, or the root changed).
    same: Option<Result<AheadSame, hale_core::Error>>,
}

struct AheadSame {
    set: TrustedSet<HeapBuffer>,
    update: Update,
    /// step 5: the stored snapshot is the current one
    fresh: bool,
    /// step 7, run only after a current snapshot (as the workflow does): the stored targets
    /// verified
    targets_ok: Option<bool>,
}

/// Read the stored snapshot and targets, and, given `loaded` (a copy of
/// the trusted set after step 3 with the stored `timestamp`), run steps 4–7 on a further copy:
/// every trust decision is hale-core's, with the bytes the workflow would pass.
fn look_ahead(
    loaded: Option<(&TrustedSet<HeapBuffer>, &[u8])>,
    snapshot: &Path,
    targets: &Path,
) -> Ahead {
    let stored = (|| {
        Ok(Stored {
            snapshot: read_opt(snapshot)?,
            targets: read_opt(targets)?,
        })
    })();
    let same = loaded.map(|(loaded, timestamp)| {
        let mut next = loaded.copy_into(Storage::on_heap(CONFORMANCE_MAX_METADATA))?;
        let update = next.update_timestamp(timestamp)?;
        let files = stored.as_ref().ok();
        let fresh = files
            .and_then(|f| f.snapshot.as_deref())
            .is_some_and(|local| next.load_trusted_snapshot(local) == Ok(Freshness::Current));
        let targets_ok = fresh.then(|| {
            files
                .and_then(|f| f.targets.as_deref())
                .is_some_and(|local| next.update_targets(local).is_ok())
        });
        Ok(AheadSame {
            set: next,
            update,
            fresh,
            targets_ok,
        })
    });
    Ahead { stored, same }
}

/// Role names for the stored top-level files.
pub fn role_file(r: Role) -> &'static str {
    match r {
        Role::Root => "root.json",
        Role::Timestamp => "timestamp.json",
        Role::Snapshot => "snapshot.json",
        Role::Targets => "targets.json",
    }
}
