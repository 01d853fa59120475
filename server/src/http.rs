//! HTTP: the accept loop, the read path and the API.
//!
//! ```text
//! TcpListener (TCP_NODELAY) ─▶ hyper_util auto (HTTP/1.1 + h2) ─▶ front service
//!        (TLS slots in here, later)                                 │
//!    GET/HEAD /timestamp.json, /N.role.json ◀── from memory ────────┤
//!    GET/HEAD /targets/…                    ◀── streamed from disk ─┤
//!    everything else                        ◀── warp filter ────────┘  (/api/v1/…, /healthz, /metrics)
//! ```
//!
//! The read path is answered before warp's filter chain: it is what fleets poll, and warp 0.4 has
//! no public streaming body besides `fs::dir` (measured at 0.1–0.3× nginx). Metadata comes from
//! memory with a strong ETag (sha256 of the bytes); targets are content-addressed files streamed in
//! large chunks with single-range support (RFC 9110 §14) for resumable downloads.
//!
//! Bounds on untrusted input: request heads are bounded by hyper; publish, report and upload
//! bodies by configured limits (counted as they stream, not only by Content-Length); device ids,
//! inventory pages and report fields by fixed limits.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use warp::{Filter, Rejection, Reply};

use crate::app::{inc, App, ApplyError};
use crate::linger::Lingering;
use crate::publish::Upload;
use crate::repo::{Entry, TargetRef};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Read size when streaming a target from disk over HTTP/1: hyper reads the next piece once the
/// last is written, so a connection whose client stops reading holds at most one (at most
/// `max_connections` of them a listener). Large pieces keep the blocking pool's round trips
/// few (`server/bench/server-vs-nginx.sh`: 64 KiB pieces served the 1 MiB target 27 % slower).
const CHUNK: usize = 1 << 20;
/// The same over HTTP/2, where hyper reads a stream's next piece before the client's window has
/// room for it: a connection holds up to [`MAX_STREAMS`] × this while its client does not read.
const CHUNK_H2: usize = 64 << 10;
/// Most HTTP/2 streams a connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS), and
/// most bytes one stream may queue for sending. A pump asks for one file at a time; hyper's
/// default of 200 streams let one client that never read make the server hold 200 target
/// pieces per connection (1 MiB each then: about 200 MiB a connection).
const MAX_STREAMS: u32 = 8;
const MAX_SEND_BUF: usize = 64 << 10;
/// Devices per inventory page.
const MAX_PAGE: usize = 1000;
/// Offline installs and rollbacks kept in a device's record (older ones stay in the audit log).
const MAX_INSTALL_HISTORY: usize = 32;

fn full(b: Bytes) -> Body {
    Full::new(b)
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}
fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}

/// A JSON answer on the read path.
fn json_body(status: StatusCode, v: &Value) -> Response<Body> {
    let bytes = Bytes::from(v.to_string());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, bytes.len())
        // a refusal of an image URL (immutable when served) must not be cached in its place
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(bytes))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

// --- accept loop -----------------------------------------------------------------------------

/// HTTP/1.1 and HTTP/2 on one port; a client that never finishes its request head holds a
/// connection at most 15 s. Shared by the plain and the TLS listeners.
pub(crate) fn connection_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(15));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(MAX_SEND_BUF);
    builder
}

/// What one listener allows its connections: how many at once, and how long one may be silent
/// (`max_connections`, `idle_timeout_secs` in the configuration).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    idle: Duration,
    /// when the listener last said it was full (said at most once a minute)
    warned: Option<std::time::Instant>,
}

impl ConnLimits {
    pub fn new(max_connections: usize, idle: Duration) -> Self {
        ConnLimits {
            permits: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max: max_connections,
            idle,
            warned: None,
        }
    }

    /// Each listener gets its own: one flooded cannot starve another.
    pub fn of(config: &crate::config::Config) -> Self {
        Self::new(
            config.max_connections,
            Duration::from_secs(config.idle_timeout_secs),
        )
    }
}

/// An accepted connection's place under its listener's [`ConnLimits`], given back when it ends.
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    activity: crate::linger::Activity,
    idle: Duration,
}

impl Admitted {
    /// Serve `conn` until it ends, or until nothing went either way for the idle timeout.
    pub(crate) async fn run<E: std::fmt::Display>(
        self,
        conn: impl Future<Output = Result<(), E>>,
        peer: std::net::SocketAddr,
    ) {
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = self.activity.silent_for(self.idle) => {
                tracing::debug!(%peer, idle_s = self.idle.as_secs(), "connection silent too long: closed");
            }
        }
    }
}

/// The next accepted connection (Nagle off: small responses must not wait ~40 ms; closed with
/// a lingering close, so an answer given before a body was read is not lost to a reset), or
/// `None` once `shutdown` completes. A listener holding its `max_connections` accepts again only
/// as one closes (said in the log at most once a minute). A failed accept (e.g. out of file
/// descriptors) is logged and retried after 50 ms.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    limits: &mut ConnLimits,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(
    Lingering<tokio::net::TcpStream>,
    std::net::SocketAddr,
    Admitted,
)> {
    if limits.permits.available_permits() == 0
        && limits
            .warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
    {
        limits.warned = Some(std::time::Instant::now());
        let addr = listener.local_addr().ok();
        tracing::warn!(
            listener = ?addr,
            max_connections = limits.max,
            "listener holds its max_connections: new connections wait until one closes"
        );
    }
    let permit = tokio::select! {
        p = limits.permits.clone().acquire_owned() => p.ok()?,
        _ = &mut shutdown => return None,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = Lingering::new(stream);
                    let admitted = Admitted {
                        _permit: permit,
                        activity: stream.activity(),
                        idle: limits.idle,
                    };
                    return Some((stream, peer, admitted));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => return None,
        }
    }
}

/// Serve until `shutdown` completes, then stop accepting and let open requests finish (up to 10 s).
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let routes = api(app.clone());
    let warp_svc = warp::service(routes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = connection_builder();
    let mut limits = ConnLimits::of(&app.config);
    tokio::pin!(shutdown);
    loop {
        let Some((stream, peer, admitted)) =
            next_connection(&listener, &mut limits, shutdown.as_mut()).await
        else {
            break;
        };
        let app = app.clone();
        let warp_svc = warp_svc.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let mut warp_svc = warp_svc.clone();
            async move {
                // with device identity configured, reports and the inventory exist only on the
                // mTLS listeners, and publishing only on the staff listener (docs/pki.md)
                if app.identity.is_some() {
                    let path = req.uri().path();
                    if path.starts_with("/api/v1/devices") {
                        return Ok(crate::identity_http::plain_refused());
                    }
                    if is_publish_path(path) {
                        return Ok(crate::identity_http::plain_publish_refused());
                    }
                }
                if let Some(resp) = read_path(&app, &req, crate::rollout::Reader::Anonymous).await {
                    return Ok::<_, Infallible>(resp);
                }
                let resp = match tower_service::Service::call(&mut warp_svc, req).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(admitted.run(conn, peer));
    }
    drop(listener);
    tracing::info!("shutting down: waiting for open connections");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("connections still open after 10 s; closing"),
    }
}

/// Bind with the listener options the server needs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

// --- read path -------------------------------------------------------------------------------

/// GET/HEAD of repository files; `None` for anything else (handed to warp).
pub(crate) async fn read_path(
    app: &App,
    req: &Request<Incoming>,
    reader: crate::rollout::Reader<'_>,
) -> Option<Response<Body>> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => return None,
    };
    let path = req.uri().path().strip_prefix('/')?;
    if path == "__empty" {
        return Some(status_only(StatusCode::NO_CONTENT));
    }
    if path.starts_with("targets/") {
        inc(&app.metrics.target_requests);
        let name = percent_decode(path)?;
        let served = app.served();
        let Some(t) = served.targets.get(&name) else {
            inc(&app.metrics.not_found);
            return Some(status_only(StatusCode::NOT_FOUND));
        };
        let t = t.clone();
        drop(served);
        // a staged rollout holds the image back from devices outside its share
        let sha = t
            .blob
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Err(r) = app.rollouts.admits(sha, reader) {
            inc(&app.metrics.rollout_held);
            return Some(json_body(
                StatusCode::FORBIDDEN,
                &json!({"error": "rollout_pending", "message": format!(
                    "this image is in a staged rollout at {} %: {}; it is offered again at the next poll",
                    r.percent,
                    match reader {
                        crate::rollout::Reader::Anonymous =>
                            "it is served without a device certificate only at 100 %",
                        _ => "this device is not in it yet",
                    }
                )}),
            ));
        }
        let chunk = match req.version() {
            hyper::Version::HTTP_2 => CHUNK_H2,
            _ => CHUNK,
        };
        return Some(serve_target(app, &t, head, req.headers(), chunk).await);
    }
    if path.contains('/') || !path.ends_with(".json") {
        return None;
    }
    inc(&app.metrics.metadata_requests);
    let name = percent_decode(path)?;
    let served = app.served();
    let Some(e) = served.metadata.get(&name) else {
        inc(&app.metrics.not_found);
        return Some(status_only(StatusCode::NOT_FOUND));
    };
    Some(serve_metadata(app, e, head, req.headers()))
}

fn serve_metadata(app: &App, e: &Entry, head: bool, h: &HeaderMap) -> Response<Body> {
    let mut b = Response::builder()
        .header(header::ETAG, e.etag.clone())
        .header(header::CACHE_CONTROL, e.cache);
    if none_match(h, &e.etag) {
        inc(&app.metrics.not_modified);
        return b
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR));
    }
    b = b
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, e.bytes.len());
    let body = if head { empty() } else { full(e.bytes.clone()) };
    b.body(body)
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

/// If-None-Match (RFC 9110 §13.1.2): weak comparison; `*` matches any current representation.
fn none_match(h: &HeaderMap, etag: &HeaderValue) -> bool {
    let tag = etag.as_bytes();
    h.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            let t = t.strip_prefix(b"W/").unwrap_or(t);
            t == b"*" || t == tag
        })
    })
}

/// A satisfiable single byte range, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable Range: send the whole representation.
    Full,
    /// first..=last
    Part(u64, u64),
    /// 416
    Unsatisfiable,
}

/// Parse `Range` for a representation of `len` bytes (RFC 9110 §14.1.2, §14.2). Only one range is
/// served; several ranges, other units or bad syntax are ignored (answered with 200), as the RFC
/// allows.
pub fn parse_range(value: Option<&[u8]>, len: u64) -> RangeSpec {
    let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return RangeSpec::Full;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // suffix range: the last N bytes
        if !digits(b) {
            return RangeSpec::Full;
        }
        let n: u64 = b.parse().unwrap_or(0);
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Part(len.saturating_sub(n), len - 1);
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return RangeSpec::Full;
    }
    let first: u64 = a.parse().unwrap_or(u64::MAX);
    let last: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().unwrap_or(u64::MAX)
    };
    if last < first {
        return RangeSpec::Full; // invalid range-spec: ignore the header
    }
    if first >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(first, last.min(len - 1))
}

/// A target's answer, its body read from disk `chunk` bytes at a time.
async fn serve_target(
    app: &App,
    t: &TargetRef,
    head: bool,
    h: &HeaderMap,
    chunk: usize,
) -> Response<Body> {
    let base = || {
        Response::builder()
            .header(header::ETAG, t.etag.clone())
            .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
            .header(header::ACCEPT_RANGES, "bytes")
    };
    let err = |_| status_only(StatusCode::INTERNAL_SERVER_ERROR);
    if none_match(h, &t.etag) {
        inc(&app.metrics.not_modified);
        return base()
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .unwrap_or_else(err);
    }
    // Range applies to GET only; If-Range (strong comparison) must match our ETag to honour it
    let if_range_ok = h
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == t.etag.as_bytes());
    let range = if head || !if_range_ok {
        RangeSpec::Full
    } else {
        parse_range(h.get(header::RANGE).map(|v| v.as_bytes()), t.length)
    };
    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, t.length),
        RangeSpec::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeSpec::Unsatisfiable => {
            inc(&app.metrics.range_not_satisfiable);
            return base()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", t.length))
                .body(empty())
                .unwrap_or_else(err);
        }
    };
    let mut b = base()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count);
    if status == StatusCode::PARTIAL_CONTENT {
        inc(&app.metrics.partial);
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", start, start + count - 1, t.length),
        );
    }
    if head {
        return b.body(empty()).unwrap_or_else(err);
    }
    let blob = t.blob.clone();
    let file = match tokio::task::spawn_blocking(move || std::fs::File::open(blob)).await {
        Ok(Ok(f)) => Arc::new(f),
        Ok(Err(e)) => {
            tracing::error!(blob = %t.blob.display(), error = %e, "published target content missing");
            return status_only(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Err(_) => return status_only(StatusCode::INTERNAL_SERVER_ERROR),
    };
    app.metrics
        .target_bytes
        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    b.body(StreamBody::new(file_chunks(file, start, count, chunk)).boxed_unsync())
        .unwrap_or_else(err)
}

/// `count` bytes of `file` from `offset`, read on the blocking pool in chunks of up to `chunk`
/// bytes, each handed to hyper without another copy. A file shorter than its metadata says
/// (damaged store) ends the response with an error rather than sending other bytes.
fn file_chunks(
    file: Arc<std::fs::File>,
    offset: u64,
    count: u64,
    chunk: usize,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    futures_util::stream::try_unfold(
        (file, offset, count),
        move |(file, offset, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let n = usize::try_from(left).unwrap_or(chunk).min(chunk);
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || read_at(&f, offset, n))
                .await
                .map_err(|e| -> BoxError { Box::new(e) })?
                .map_err(|e| -> BoxError { Box::new(e) })?;
            Ok(Some((
                Frame::data(chunk),
                (file, offset + n as u64, left - n as u64),
            )))
        },
    )
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, offset: u64, n: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

#[cfg(not(unix))]
fn read_at(f: &std::fs::File, offset: u64, n: usize) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek};
    let mut f = f.try_clone()?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Decode %XX escapes; `None` for bad escapes or non-UTF-8 (answered by warp: 404).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let h = b.get(i + 1..i + 3)?;
            let h = std::str::from_utf8(h).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// --- API ---------------------------------------------------------------------------------------

/// An API error: status, machine-readable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}
impl warp::reject::Reject for ApiError {}

pub(crate) fn api_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Rejection {
    warp::reject::custom(ApiError {
        status,
        code,
        message: message.into(),
    })
}

pub(crate) fn json_reply(status: StatusCode, v: &Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// `Authorization: Bearer <token>` → the operator's name. Tokens are compared by their sha256,
/// the only form stored.
fn operator(app: Arc<App>) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_app(app))
        .and_then(|h: Option<String>, app: Arc<App>| async move {
            let unauthorized = |app: &App| {
                inc(&app.metrics.auth_failures);
                api_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid operator token is required (Authorization: Bearer …)",
                )
            };
            let Some(token) = h
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
            else {
                return Err(unauthorized(&app));
            };
            if token.is_empty() || token.len() > 256 {
                return Err(unauthorized(&app));
            }
            let hash = hex::encode(Sha256::digest(token.as_bytes()));
            let store = app.store.clone();
            match tokio::task::spawn_blocking(move || store.token_operator(&hash)).await {
                Ok(Ok(Some(name))) => Ok(name),
                Ok(Ok(None)) => Err(unauthorized(&app)),
                _ => Err(api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "token store unavailable",
                )),
            }
        })
}

/// The paths of the publish API (target upload and publish).
pub(crate) fn is_publish_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/api/v1/targets" || path == "/api/v1/publish"
}

/// The publish API — `POST /api/v1/targets` (content upload) and `POST /api/v1/publish` — behind
/// `auth`, which yields the actor recorded in the audit log or rejects. The plain listener
/// authorizes with operator tokens ([`operator`]), the staff listener with an operator
/// certificate (`identity_http::staff_routes`).
pub(crate) fn publish_routes<A>(
    app: Arc<App>,
    auth: A,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone
where
    A: Filter<Extract = (String,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    let max_publish = app.config.max_publish_bytes;
    let publish = warp::post()
        .and(warp::path!("api" / "v1" / "publish"))
        .and(auth.clone())
        .and(warp::header::optional::<u64>("content-length"))
        .and(with_app(app.clone()))
        .and_then(move |actor, declared, app| publish_length(actor, declared, max_publish, app))
        .and(warp::body::content_length_limit(max_publish))
        .and(warp::body::bytes())
        .and(with_app(app.clone()))
        .and_then(publish_handler);
    let upload = warp::post()
        .and(warp::path!("api" / "v1" / "targets"))
        .and(auth.clone())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_app(app))
        .and_then(upload_handler);
    // `GET /api/v1/publish`: the same authorization without a body, so a publisher learns of a
    // refusal before uploading an image for nothing
    let check = warp::get()
        .and(warp::path!("api" / "v1" / "publish"))
        .and(auth)
        .map(|actor: String| {
            // `root_chain`: the publish body's `roots` is understood (an older server ignores
            // the field, and a chain sent to it would lose its roots)
            json_reply(
                StatusCode::OK,
                &json!({"publisher": actor, "root_chain": true}),
            )
        });
    publish.or(upload).unify().or(check).unify()
}

pub fn api(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let max_report = app.config.max_report_bytes;
    let publish = publish_routes(app.clone(), operator(app.clone()));
    let report = warp::post()
        .and(warp::path!("api" / "v1" / "devices" / String / "report"))
        .and(warp::body::content_length_limit(max_report))
        .and(warp::body::bytes())
        .and(with_app(app.clone()))
        .and_then(report_handler);
    let inventory = warp::get()
        .and(warp::path!("api" / "v1" / "devices"))
        .and(warp::query::<InventoryQuery>())
        .and(with_app(app.clone()))
        .and_then(inventory_handler);
    let health = warp::get()
        .and(warp::path!("healthz"))
        .and(with_app(app.clone()))
        .map(health_handler);
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(with_app(app.clone()))
        .map(metrics_handler);
    publish
        .or(report)
        .unify()
        .or(inventory)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .recover(recover)
        .unify()
}

pub(crate) async fn recover(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, code, message) = if let Some(e) = r.find::<ApiError>() {
        if e.status == StatusCode::INTERNAL_SERVER_ERROR {
            // the client sees "internal"; the operator needs the cause
            tracing::error!(code = e.code, error = %e.message, "internal error answered 500");
        }
        (e.status, e.code, e.message.clone())
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body is larger than the configured limit".to_string(),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "Content-Length is required".to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        // checked before "method not allowed": another route's method says nothing here
        (
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("{e}: `after` is an identifier (a number for the audit log), `limit` a whole number"),
        )
    } else if r.is_not_found() || r.find::<warp::reject::MethodNotAllowed>().is_some() {
        // warp reports "method not allowed" for any path when some route has another method
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    Ok(json_reply(
        status,
        &json!({"error": code, "message": message}),
    ))
}

/// What a publish request sent, for the audit record of its refusal: the endpoint, the sha256
/// and the length of its body. Never the body (its signer keeps it, and can match it by its
/// hash): a record holds a fixed amount whatever was sent.
pub(crate) fn offered(body: &[u8]) -> Value {
    json!({"endpoint": "/api/v1/publish", "sha256": hex::encode(Sha256::digest(body)),
           "bytes": body.len()})
}

/// Record a refusal of the publish API to an authenticated `actor` (`publish-refused`, see
/// [`App::refused_publish`]) off the async runtime (a synced write), and answer with it.
async fn refuse_publish(app: &Arc<App>, actor: &str, detail: Value, e: ApiError) -> Rejection {
    let (app, actor, code, message) = (app.clone(), actor.to_string(), e.code, e.message.clone());
    tracing::warn!(%actor, code, message = %e.message, "publish API request refused");
    let _ = tokio::task::spawn_blocking(move || {
        app.refused_publish(&actor, code, detail, message);
    })
    .await;
    warp::reject::custom(e)
}

/// A publish body must say its length, and not pass `max`, before it is read (warp's
/// `content_length_limit` checks the same after this, and answers the same): checked here
/// first so that the refusal of an authenticated `actor` is audited.
async fn publish_length(
    actor: String,
    declared: Option<u64>,
    max: u64,
    app: Arc<App>,
) -> Result<String, Rejection> {
    let refusal = match declared {
        None => ApiError {
            status: StatusCode::LENGTH_REQUIRED,
            code: "length_required",
            message: "Content-Length is required".into(),
        },
        Some(n) if n > max => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: "request body is larger than the configured limit".into(),
        },
        Some(_) => return Ok(actor),
    };
    let detail = json!({"endpoint": "/api/v1/publish", "declared_bytes": declared});
    Err(refuse_publish(&app, &actor, detail, refusal).await)
}

/// `{"root": <envelope>?, "roles": {"targets": <envelope>, "<delegated>": <envelope>}}`, or
/// `"roots": [<envelope>, …]` for several root versions in order (N+1, N+2… after the served N),
/// applied in one publish. Each envelope is kept byte for byte as sent (RawValue): signatures
/// cover its canonical form, and the served bytes are exactly what was signed and verified.
#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    root: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    roots: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    roles: std::collections::BTreeMap<String, &'a serde_json::value::RawValue>,
}

async fn publish_handler(
    operator: String,
    body: Bytes,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection> {
    let bad = |message: String| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
    };
    let parsed: PublishBody<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let e = bad(format!("publish body: {e}"));
            return Err(refuse_publish(&app, &operator, offered(&body), e).await);
        }
    };
    if parsed.root.is_some() && !parsed.roots.is_empty() {
        let e = bad(
            "publish body: give one root as `root` or several, in order, as `roots`, not both"
                .into(),
        );
        return Err(refuse_publish(&app, &operator, offered(&body), e).await);
    }
    let upload = Upload {
        roots: parsed
            .root
            .into_iter()
            .chain(parsed.roots)
            .map(|r| Bytes::copy_from_slice(r.get().as_bytes()))
            .collect(),
        roles: parsed
            .roles
            .iter()
            .map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v.get().as_bytes())))
            .collect(),
    };
    let who = operator.clone();
    let app2 = app.clone();
    let what = offered(&body);
    let r = tokio::task::spawn_blocking(move || app2.publish(&who, upload, what))
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(match r {
        Ok(summary) => {
            tracing::info!(%operator, %summary, "publish accepted");
            json_reply(StatusCode::OK, &json!({"published": summary}))
        }
        Err(ApplyError::Refused(e)) => {
            tracing::warn!(%operator, error = %e, "publish refused");
            json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": e.code(), "message": e.to_string()}),
            )
        }
        Err(ApplyError::Internal(e)) => {
            tracing::error!(%operator, error = %e, "publish failed");
            json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "internal", "message": e}),
            )
        }
    })
}

/// Target content upload, streamed to a temporary file while sha256/sha512 are computed, then
/// moved to `blobs/<sha256>`. Refused (413) as soon as it passes the configured size, whatever
/// Content-Length said. Content becomes visible only when published metadata names it. A
/// refusal (too large, a body that broke off) is audited as `publish-refused` with the lengths
/// declared and received; an accepted upload is not (it changes nothing served: the publish
/// that names it is recorded, by its sha256).
async fn upload_handler<S, B>(
    operator: String,
    declared: Option<u64>,
    mut body: S,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let limit = app.config.max_target_bytes;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: format!("target upload larger than {limit} bytes"),
    };
    let refused = |received: u64| {
        json!({"endpoint": "/api/v1/targets", "declared_bytes": declared,
               "received_bytes": received})
    };
    if declared.is_some_and(|d| d > limit) {
        return Err(refuse_publish(&app, &operator, refused(0), too_large()).await);
    }
    let internal = |e: std::io::Error| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: e.to_string(),
    };
    let dir = app.repo.upload_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| warp::reject::custom(internal(e)))?;
    let mut rnd = [0u8; 16];
    getrandom::getrandom(&mut rnd)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let tmp = dir.join(format!("{}.part", hex::encode(rnd)));
    let mut n: u64 = 0;
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(internal)?;
        let mut s256 = Sha256::new();
        let mut s512 = sha2::Sha512::new();
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "bad_request",
                message: e.to_string(),
            })?;
            while chunk.has_remaining() {
                let c = chunk.chunk();
                n += c.len() as u64;
                if n > limit {
                    return Err(too_large());
                }
                s256.update(c);
                s512.update(c);
                f.write_all(c).await.map_err(internal)?;
                let l = c.len();
                chunk.advance(l);
            }
        }
        f.sync_all().await.map_err(internal)?;
        Ok((
            hex::encode(s256.finalize()),
            hex::encode(s512.finalize()),
            n,
        ))
    }
    .await;
    let (sha256, sha512, length) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            // the server's own failure is not the requester's refusal
            if e.status == StatusCode::INTERNAL_SERVER_ERROR {
                return Err(warp::reject::custom(e));
            }
            return Err(refuse_publish(&app, &operator, refused(n), e).await);
        }
    };
    let internal = |e: std::io::Error| warp::reject::custom(internal(e));
    let dst = app.repo.blob_path(&sha256);
    tokio::fs::create_dir_all(app.repo.blobs_dir())
        .await
        .map_err(internal)?;
    tokio::fs::rename(&tmp, &dst).await.map_err(internal)?;
    if let Ok(d) = std::fs::File::open(app.repo.blobs_dir()) {
        let _ = d.sync_all();
    }
    inc(&app.metrics.uploads);
    tracing::info!(%operator, %sha256, length, "target content uploaded");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"length": length, "hashes": {"sha256": sha256, "sha512": sha512}}),
    ))
}

// --- device reports --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Active,
    Inactive,
    Trial,
    /// Verified, boots as a trial at the next reset.
    Pending,
    /// Being written, or written and verified and waiting until installing is safe (therapy
    /// began during the download): not bootable.
    Staging,
    Bad,
    Empty,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    Installed,
    Reverted,
    Deferred,
    Rejected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub name: String,
    pub version: String,
    pub state: SlotState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastResult {
    pub result: ResultKind,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a device reports. Unauthenticated until device identity lands: treat it as a claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub slots: Vec<Slot>,
    #[serde(default)]
    pub last_result: Option<LastResult>,
    /// An offline install or authorized rollback since the last report (audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_record: Option<InstallRecord>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstallKind {
    /// Installed from an offline bundle (no network).
    Offline,
    /// A downgrade under a rollback authorization the device verified.
    Rollback,
    /// Not an install: an image the device found damaged in its slot at a boot (its bytes no
    /// longer matched its record), which therefore did not run; `outcome` is `reverted`, `reason`
    /// says what runs instead and `staged` when it was found. A flash fault the maker wants to
    /// hear of even when the next check installed the image again.
    Damaged,
}

/// What the device verified for an offline install or a rollback (a claim, like the report).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRecord {
    pub kind: InstallKind,
    pub target: String,
    pub version: String,
    /// The authorization's reason, issue time and the rollback-role key ids that signed it.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub issued: Option<String>,
    #[serde(default)]
    pub signers: Vec<String>,
    /// How the image's trial ended (absent from agents that record at staging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<InstallOutcome>,
    /// When the pump staged it (absent from older agents): the same install twice is two
    /// records, where a record sent again after a lost answer is the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
}

/// How an installed image's trial boot ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstallOutcome {
    /// Its health checks passed: it runs.
    Confirmed,
    /// It failed its trial (or a reset came first): the device runs the image before it.
    Reverted,
}

impl Report {
    fn check(&self) -> Result<(), String> {
        if self.slots.is_empty() || self.slots.len() > 4 {
            return Err("slots: 1 to 4 entries".into());
        }
        // (the rules devices and hale-sign hold their texts to)
        use hale_core::report::MAX_VERSION as VERSION;
        use hale_core::report::{one_line as short, MAX_REASON as REASON, MAX_TARGET as TARGET};
        for s in &self.slots {
            if s.name.is_empty() || !short(&s.name, 32) || !short(&s.version, VERSION) {
                return Err(format!(
                    "slot name (1-32) or version (≤{VERSION}) too long or has control or format characters"
                ));
            }
        }
        if let Some(r) = &self.last_result {
            if !r.target.as_deref().is_none_or(|t| short(t, TARGET))
                || !r.version.as_deref().is_none_or(|t| short(t, VERSION))
                || !r.reason.as_deref().is_none_or(|t| short(t, REASON))
            {
                return Err(
                    "last_result: field too long or has control or format characters".into(),
                );
            }
        }
        if let Some(r) = &self.install_record {
            if !short(&r.target, TARGET)
                || !short(&r.version, VERSION)
                || !r.reason.as_deref().is_none_or(|t| short(t, REASON))
                || !r.issued.as_deref().is_none_or(|t| short(t, 32))
                || !r.staged.as_deref().is_none_or(|t| short(t, 32))
                || r.signers.len() > 16
                || r.signers.iter().any(|k| k.is_empty() || !short(k, 128))
            {
                return Err(
                    "install_record: field too long or has control or format characters".into(),
                );
            }
        }
        Ok(())
    }
}

pub(crate) async fn report_handler(
    id: String,
    body: Bytes,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection> {
    // hale-pki's rule for names: the Device Issuing CA issues no certificate to another id, so
    // none is reported under one (on the plain listener too, where nothing else checks the id)
    if let Err(e) = hale_pki::check_name("device id", &id) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "bad_device_id",
            e.to_string(),
        ));
    }
    let report: Report = serde_json::from_slice(&body)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "bad_report", e.to_string()))?;
    report
        .check()
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "bad_report", e))?;
    let received = crate::now();
    let install = report
        .install_record
        .as_ref()
        .map(|r| json!({"device": id, "record": r}));
    let entry = report
        .install_record
        .as_ref()
        .map(|r| json!({"received": received, "record": r}));
    let record = json!({"device": id, "received": received, "report": report});
    let app2 = app.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<Stored, String> {
        let budget = (
            &app2.report_budget,
            app2.config.max_audited_reports_per_hour,
        );
        store_report(
            &*app2.store,
            &app2.audit,
            &id,
            &record,
            entry.as_ref(),
            install.as_ref(),
            Some(budget),
        )
        .map_err(|e| e.to_string())
    })
    .await;
    match r {
        Ok(Ok(Stored::Kept | Stored::Recorded)) => {
            inc(&app.metrics.reports);
            Ok(status_reply(StatusCode::NO_CONTENT))
        }
        Ok(Ok(Stored::OverBudget { retry_after })) => {
            let mut r = json_reply(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": "too_many_reports", "message": format!(
                    "this device's reports made {} audit records within the hour: a report that says something new is taken again in {retry_after} s (one that says nothing new at any time)",
                    app.config.max_audited_reports_per_hour
                )}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(r)
        }
        Ok(Err(e)) => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)),
        Err(e) => Err(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

/// Store device `id`'s report (`record`: the device, the time received, the report) and its
/// install record (`entry` for the history, `install` for the audit log). The latest report
/// replaces the previous one; offline installs and rollbacks are kept in the device's history
/// (the newest [`MAX_INSTALL_HISTORY`]), whatever it reports next.
///
/// A report that says something new (or brings a new install record) is stored in one
/// transaction with its audit records (`report`, `install-record`): one that cannot be audited
/// is not kept either, so the device's retry is new, and audited. An install record equal to the
/// newest in the history was sent again (our answer to it was lost: the device sends each until
/// an answer arrives) and is kept and audited once. The rest of a polling fleet's reports say
/// nothing new: stored without the audit chain's lock, a transaction or a sync.
///
/// `budget` (the budget and the records a device may make an hour) bounds the records one
/// device's reports make: past it a report that would make one is not stored
/// ([`Stored::OverBudget`]).
pub(crate) fn store_report(
    store: &dyn crate::store::Store,
    audit: &crate::audit::Audit,
    id: &str,
    record: &Value,
    entry: Option<&Value>,
    install: Option<&Value>,
    budget: Option<(&ReportBudget, u32)>,
) -> Result<Stored, crate::audit::AuditError> {
    use crate::store::StoreError;
    // the next record, and whether the report and the install record are new
    let next_of = |old: Option<&[u8]>| -> Result<(Vec<u8>, bool, bool), StoreError> {
        let old = old.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let report_new = old.as_ref().and_then(|v| v.get("report")) != record.get("report");
        let mut history = old
            .as_ref()
            .and_then(|v| v.get("history").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let again = |e: &Value| history.last().and_then(|h| h.get("record")) == e.get("record");
        let new_entry = entry.filter(|e| !again(e));
        if let Some(e) = new_entry {
            history.push(e.clone());
        }
        let excess = history.len().saturating_sub(MAX_INSTALL_HISTORY);
        history.drain(..excess);
        let mut next = record.clone();
        next["history"] = Value::Array(history);
        let bytes =
            serde_json::to_vec(&next).map_err(|e| StoreError::Db(format!("device record: {e}")))?;
        Ok((bytes, report_new, new_entry.is_some()))
    };
    let unremarkable = store.device_replace(id, &mut |old| match next_of(old) {
        Ok((bytes, false, false)) => Some(bytes),
        _ => None,
    })?;
    if unremarkable {
        return Ok(Stored::Kept);
    }
    if let Some((budget, per_hour)) = budget {
        if let Err(retry_after) = budget.take(id, per_hour, std::time::Instant::now()) {
            return Ok(Stored::OverBudget { retry_after });
        }
    }
    let encode = |e: crate::audit::AuditError| StoreError::Db(e.to_string());
    audit.commit_with(|head| {
        let mut done = head.clone();
        store.device_update(id, &mut |old| {
            let (bytes, report_new, install_new) = next_of(old)?;
            let mut staged = head.clone();
            if report_new {
                staged.push("report", id, record.clone()).map_err(encode)?;
            }
            if let Some(install) = install.filter(|_| install_new) {
                // its own audit record: what was installed offline or rolled back, and who
                // signed
                staged
                    .push("install-record", id, install.clone())
                    .map_err(encode)?;
            }
            let records = staged.records.clone();
            done = staged;
            Ok(Some((bytes, records)))
        })?;
        Ok((Stored::Recorded, done))
    })
}

/// What [`store_report`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// it says nothing new: stored, no audit record
    Kept,
    /// stored with its audit records
    Recorded,
    /// it would make an audit record and the device has made its hour's: not stored; it may
    /// be sent again in `retry_after` seconds
    OverBudget { retry_after: u64 },
}

/// The audit records each device's reports made, in windows of an hour from the first: a
/// device that changes its report at every request (a stolen certificate, a lying pump) makes
/// a bounded number of records, each synced, rather than as many as it can send.
#[derive(Debug)]
pub struct ReportBudget(pub(crate) HourlyBudget);

impl Default for ReportBudget {
    fn default() -> Self {
        ReportBudget(HourlyBudget::new(REPORT_BUDGETS_REMEMBERED))
    }
}

/// Devices whose windows are remembered at most (past it, those whose window ended are
/// forgotten, then all: memory stays bounded whatever ids the plain listener is sent).
const REPORT_BUDGETS_REMEMBERED: usize = 100_000;

impl ReportBudget {
    /// Take one of `per_hour` records for device `id` at `now`, or the whole seconds (at least
    /// 1) until its window ends.
    pub fn take(&self, id: &str, per_hour: u32, now: std::time::Instant) -> Result<(), u64> {
        self.0.take(id, per_hour, now).map(|_| ())
    }
}

/// A count per key (a device, an actor) in windows of an hour ([`HOURLY_WINDOW`]) from the
/// first taken: at most `per_hour` in each. Keys remembered are bounded: past `remembered`,
/// those whose window ended are forgotten, then all.
#[derive(Debug)]
pub(crate) struct HourlyBudget {
    /// key → (start of its window, taken in it)
    windows: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
    remembered: usize,
}

/// The window of an [`HourlyBudget`].
pub const HOURLY_WINDOW: Duration = Duration::from_secs(3600);

impl HourlyBudget {
    pub(crate) fn new(remembered: usize) -> Self {
        HourlyBudget {
            windows: std::sync::Mutex::default(),
            remembered,
        }
    }

    /// Take one of `per_hour` for `key` at `now`: how many are left in its window after this
    /// one, or, when none was left, the whole seconds (at least 1) until its window ends.
    pub(crate) fn take(
        &self,
        key: &str,
        per_hour: u32,
        now: std::time::Instant,
    ) -> Result<u32, u64> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() >= self.remembered && !windows.contains_key(key) {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < HOURLY_WINDOW);
            if windows.len() >= self.remembered {
                windows.clear();
            }
        }
        let w = windows.entry(key.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(w.0) >= HOURLY_WINDOW {
            *w = (now, 0);
        }
        if w.1 >= per_hour {
            let left = HOURLY_WINDOW.saturating_sub(now.saturating_duration_since(w.0));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        w.1 += 1;
        Ok(per_hour - w.1)
    }
}

fn status_reply(s: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply(), s).into_response()
}

#[derive(Debug, Deserialize)]
struct InventoryQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn inventory_handler(
    q: InventoryQuery,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection> {
    let store = app.store.clone();
    let (devices, next) =
        tokio::task::spawn_blocking(move || report_page(&*store, q.after.as_deref(), q.limit))
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"devices": devices, "next": next}),
    ))
}

/// One page of the device reports (each device's latest report and its install history), in
/// device-id order after `after`, at most `limit` (1 to 1000, default 1000) records, and the id to
/// continue after when the page is full. Blocking (sled).
pub(crate) fn report_page(
    store: &dyn crate::store::Store,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<(Vec<Value>, Option<String>), crate::store::StoreError> {
    let limit = limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let rows = store.devices(after, limit)?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.0.clone()))
        .flatten();
    let records = rows
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect();
    Ok((records, next))
}

// --- operations --------------------------------------------------------------------------------

fn health_handler(app: Arc<App>) -> warp::reply::Response {
    let (status, mut v) = health(&app.served().state, crate::now());
    // the offline CAs' CRLs: an expired one locks staff or factory enrollment out, while
    // devices update on (the status stays the device API's)
    if let Some(l) = &app.listeners {
        let now = std::time::SystemTime::now();
        if let Some(w) = v["warnings"].as_array_mut() {
            w.extend(
                l.offline_crl_status(now)
                    .into_iter()
                    .map(|n| json!(n.message)),
            );
            // the server's certificate and the CAs': an expired one refuses clients at the
            // handshake (the status stays the repository's)
            w.extend(
                l.certificate_status(now)
                    .into_iter()
                    .map(|n| json!(n.message)),
            );
        }
        v["certificates"] = l
            .certificate_validity()
            .into_iter()
            .map(|(name, end)| {
                let left = end
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
                    - crate::now();
                (name.to_string(), json!({"expires_in": left}))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        v["offline_crls"] = l
            .offline_crl_validity()
            .into_iter()
            .map(|(ca, number, next)| {
                let left = next
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
                    - crate::now();
                (
                    ca.slug().to_string(),
                    json!({"crl_number": number, "expires_in": left}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    json_reply(status, &v)
}

/// `/healthz` for `st` at `now`: 503 when devices would refuse every update (root, timestamp,
/// snapshot or targets expired; an expired delegated role is reported with a 200),
/// with a warning per role that expired or (offline-signed roles) expires within
/// [`OFFLINE_EXPIRY_WARNING_SECS`](crate::repo::OFFLINE_EXPIRY_WARNING_SECS).
pub fn health(st: &crate::repo::State, now: i64) -> (StatusCode, serde_json::Value) {
    let r = crate::repo::ExpiryReport::of(st, now);
    let ts_exp = r.timestamp;
    // a delegated role that expired stops the targets it holds, not the device API: reported,
    // not a failed health check (a load balancer would take every device's updates away)
    let top_expired = r
        .expired
        .iter()
        .any(|(role, _, _)| crate::repo::is_top_level(role));
    let status = if r.expired.iter().any(|(role, _, _)| role == "timestamp") {
        "timestamp_expired"
    } else if top_expired {
        "metadata_expired"
    } else if r.expired.is_empty() {
        "ok"
    } else {
        "delegated_role_expired"
    };
    let v = json!({
        "status": status,
        "root": st.root_version(),
        "timestamp": st.timestamp_version(),
        "snapshot": st.snapshot_version(),
        "timestamp_expires_in": ts_exp.map(|e| e - now),
        "offline_expires_first": r.offline_first.as_ref().map(|(role, _)| role),
        "offline_expires_in": r.offline_first.as_ref().map(|(_, e)| e - now),
        "expired": r.expired.iter().map(|(role, _, _)| role).collect::<Vec<_>>(),
        "warnings": r.warnings(now),
    });
    let code = if top_expired {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, v)
}

fn metrics_handler(app: Arc<App>) -> warp::reply::Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &app.metrics;
    let served = app.served();
    let mut s = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = write!(
            s,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    counter(
        "hale_metadata_requests_total",
        "GET/HEAD of metadata files",
        m.metadata_requests.load(Relaxed),
    );
    counter(
        "hale_target_requests_total",
        "GET/HEAD of target files",
        m.target_requests.load(Relaxed),
    );
    counter(
        "hale_not_modified_total",
        "304 responses",
        m.not_modified.load(Relaxed),
    );
    counter(
        "hale_partial_content_total",
        "206 responses",
        m.partial.load(Relaxed),
    );
    counter(
        "hale_range_not_satisfiable_total",
        "416 responses",
        m.range_not_satisfiable.load(Relaxed),
    );
    counter(
        "hale_not_found_total",
        "404 responses on the read path",
        m.not_found.load(Relaxed),
    );
    counter(
        "hale_target_bytes_total",
        "target bytes sent",
        m.target_bytes.load(Relaxed),
    );
    counter(
        "hale_publishes_accepted_total",
        "accepted publishes",
        m.publishes_accepted.load(Relaxed),
    );
    counter(
        "hale_publishes_rejected_total",
        "refused publishes",
        m.publishes_rejected.load(Relaxed),
    );
    counter(
        "hale_resigns_total",
        "scheduled re-signs of timestamp/snapshot",
        m.resigns.load(Relaxed),
    );
    counter(
        "hale_resign_failures_total",
        "failed scheduled re-signs",
        m.resign_failures.load(Relaxed),
    );
    counter(
        "hale_uploads_total",
        "target uploads",
        m.uploads.load(Relaxed),
    );
    counter(
        "hale_reports_total",
        "device reports",
        m.reports.load(Relaxed),
    );
    counter(
        "hale_auth_failures_total",
        "requests with a missing or unknown token",
        m.auth_failures.load(Relaxed),
    );
    counter(
        "hale_rollout_held_total",
        "image requests held back by a staged rollout (403 rollout_pending)",
        m.rollout_held.load(Relaxed),
    );
    let mut gauge = |name: &str, help: &str, v: i64| {
        let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge(
        "hale_root_version",
        "current root version",
        served.state.root_version() as i64,
    );
    gauge(
        "hale_timestamp_version",
        "current timestamp version",
        served.state.timestamp_version() as i64,
    );
    gauge(
        "hale_snapshot_version",
        "current snapshot version",
        served.state.snapshot_version() as i64,
    );
    let exp = served
        .state
        .timestamp
        .as_ref()
        .and_then(|t| hale_core::metadata::peek_header(&t.bytes, "timestamp").ok())
        .map(|h| h.expires - crate::now())
        .unwrap_or(0);
    gauge(
        "hale_timestamp_expires_in_seconds",
        "seconds until the served timestamp expires",
        exp,
    );
    let offline = crate::repo::ExpiryReport::of(&served.state, crate::now())
        .offline_first
        .map_or(0, |(_, e)| e - crate::now());
    gauge(
        "hale_offline_metadata_expires_in_seconds",
        "seconds until the first of root, targets and delegated roles expires (renewed only by hale-sign renew)",
        offline,
    );
    gauge(
        "hale_audit_records",
        "records in the audit chain",
        app.audit.len() as i64,
    );
    gauge(
        "hale_uptime_seconds",
        "seconds since start",
        app.started.elapsed().as_secs() as i64,
    );
    if let Some(l) = &app.listeners {
        let _ = write!(
            s,
            "# HELP hale_certificate_expires_in_seconds seconds until a certificate the TLS listeners present or trust expires (the server's own is reloaded when its files change; a new CA certificate takes a restart)\n\
             # TYPE hale_certificate_expires_in_seconds gauge\n"
        );
        for (name, end) in l.certificate_validity() {
            let left = end
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
                - crate::now();
            let _ = writeln!(
                s,
                "hale_certificate_expires_in_seconds{{certificate=\"{name}\"}} {left}"
            );
        }
    }
    let _ = write!(
        s,
        "# HELP hale_audit_head_info the hash of the last audit record (anchor it elsewhere)\n\
         # TYPE hale_audit_head_info gauge\nhale_audit_head_info{{hash=\"{}\"}} 1\n",
        app.audit.head_hash()
    );
    let mut r = warp::reply::Response::new(s.into());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_stored_with_its_audit_records_or_not_at_all() {
        use crate::audit::{self, Audit, AuditError};
        use crate::store::{SledStore, Store, StoreError};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let audit = Audit::open(store.clone()).unwrap();
        let id = "pump-1";
        let report =
            |n: u64, received: u64| json!({"device": id, "received": received, "report": {"n": n}});
        let stored =
            || -> Value { serde_json::from_slice(&store.devices(None, 10).unwrap()[0].1).unwrap() };
        let kinds = || -> Vec<String> {
            store
                .audit_all()
                .unwrap()
                .iter()
                .map(|(_, b)| {
                    let r: Value = serde_json::from_slice(b).unwrap();
                    r["kind"].as_str().unwrap().to_string()
                })
                .collect()
        };
        store_report(&*store, &audit, id, &report(1, 10), None, None, None).unwrap();
        assert_eq!(kinds(), ["report"]);
        // the same report later: stored, not audited
        store_report(&*store, &audit, id, &report(1, 20), None, None, None).unwrap();
        assert_eq!(stored()["received"], 20);
        assert_eq!(kinds(), ["report"]);

        // another writer of the chain takes the next record: a new report is refused whole
        Audit::open(store.clone())
            .unwrap()
            .append("token-add", "cli", json!({}))
            .unwrap();
        let e = store_report(&*store, &audit, id, &report(2, 30), None, None, None).unwrap_err();
        assert!(
            matches!(e, AuditError::Store(StoreError::AuditConflict(1))),
            "{e:?}"
        );
        assert_eq!(stored()["report"]["n"], 1);
        assert_eq!(stored()["received"], 20);
        assert_eq!(audit::verify(&*store).unwrap().0, 2);
        // the head was read again: the device's retry is stored, and audited after that record
        store_report(&*store, &audit, id, &report(2, 40), None, None, None).unwrap();
        assert_eq!(stored()["report"]["n"], 2);
        assert_eq!(kinds(), ["report", "token-add", "report"]);

        // an install record sent twice (the first answer lost): kept and audited once
        let rec = json!({"kind": "offline", "target": "pump-a/fw.bin", "version": "2.0.0"});
        let entry = |t: u64| json!({"received": t, "record": rec});
        let install = json!({"device": id, "record": rec});
        for t in [50, 60] {
            store_report(
                &*store,
                &audit,
                id,
                &report(2, t),
                Some(&entry(t)),
                Some(&install),
                None,
            )
            .unwrap();
        }
        assert_eq!(stored()["history"], json!([entry(50)]));
        assert_eq!(kinds(), ["report", "token-add", "report", "install-record"]);
        assert_eq!(audit::verify(&*store).unwrap().0, 4);
    }

    #[test]
    fn a_devices_report_budget_is_spent_in_its_window_and_renewed_after_it() {
        let b = ReportBudget::default();
        let t0 = std::time::Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(b.take("pump-1", 2, t0), Ok(()));
        assert_eq!(b.take("pump-1", 2, t0 + secs(10)), Ok(()));
        // spent: the whole seconds to the end of the window that began at t0, at least 1
        assert_eq!(b.take("pump-1", 2, t0 + secs(10)), Err(3590));
        assert_eq!(
            b.take("pump-1", 2, t0 + secs(3599) + Duration::from_millis(500)),
            Err(1)
        );
        // another device has its own
        assert_eq!(b.take("pump-2", 2, t0 + secs(10)), Ok(()));
        // a new window once the hour has passed
        assert_eq!(b.take("pump-1", 2, t0 + HOURLY_WINDOW), Ok(()));
        assert_eq!(b.take("pump-1", 2, t0 + HOURLY_WINDOW), Ok(()));
        assert_eq!(b.take("pump-1", 2, t0 + HOURLY_WINDOW), Err(3600));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let p = |s: &str, len| parse_range(Some(s.as_bytes()), len);
        assert_eq!(p("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(p("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(p("bytes=90-500", 100), RangeSpec::Part(90, 99));
        assert_eq!(p("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(p("bytes=-500", 100), RangeSpec::Part(0, 99));
        assert_eq!(p("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(p("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(p("bytes=5-1", 100), RangeSpec::Full);
        assert_eq!(p("bytes=0-1,5-6", 100), RangeSpec::Full);
        assert_eq!(p("items=0-1", 100), RangeSpec::Full);
        assert_eq!(p("bytes=x-1", 100), RangeSpec::Full);
        assert_eq!(parse_range(None, 100), RangeSpec::Full);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2").as_deref(), None);
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    }
}
