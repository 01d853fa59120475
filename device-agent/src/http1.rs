//! Plain HTTP/1.1 GETs over one kept-alive connection, with the request sent and the answer read
//! as two calls ([`Http1::send`], [`Http1::receive`]), so that a client can do its own work while
//! the server answers (the conformance client checks the stored metadata then: see
//! `host::ConformanceClient::refresh`). Up to [`MAX_PIPELINED`] requests may wait for their
//! answers, which come in the order they were sent (HTTP/1.1 pipelining: the pump asks for the
//! next root and the timestamp together). Only `http://`; HTTPS goes through
//! `host::HttpTransport`.
//!
//! Bounded like the rest of the shells: a response head of at most [`MAX_HEAD`] bytes, a body of
//! at most the caller's limit (refused as soon as the length says more, or once more arrives),
//! chunk-size lines of at most 64 bytes, and one deadline per request, [`REQUEST_DEADLINE`], for
//! everything from the connect to the last byte (a server that drips bytes gets no longer).
//!
//! A kept connection serves the next request only if it has been idle less than
//! [`MAX_IDLE`]: the requests of one check follow each other within milliseconds, while a pump
//! polls once a minute or less often, and a connection left that long may be gone without either
//! end being told.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::host::HttpError;

/// Longest response head (status line and headers) accepted.
pub const MAX_HEAD: usize = 64 << 10;
/// Everything one request may take, connect included (as the HTTPS transport's).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The connect alone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
use crate::host::TIMED_OUT;
/// How a connection the server reset reads ([`Http1::receive`] asks again a request that had
/// another pipelined behind it).
const RESET: &str = "connection reset by the server";
/// Largest error or 404 body read to its end to keep the connection (longer: closed instead).
const DRAIN_LIMIT: usize = 4096;
/// A kept connection idle longer than this is closed and a new one opened for the next request.
///
/// A connection a NAT or a firewall forgot (they do, after minutes of quiet, and tell neither
/// end) swallows the request: nothing answers it, and the poll would wait out its whole
/// [`REQUEST_DEADLINE`]. One the server closed costs a retry (see [`Http1::receive`]). 10 s is
/// below hale-server's own idle close (15 s, its header-read timeout) and nginx's (75 s), and
/// far above the gaps between the requests of one check.
pub const MAX_IDLE: Duration = Duration::from_secs(10);
/// Most requests sent and not answered yet.
pub const MAX_PIPELINED: usize = 2;

/// A plain-HTTP client keeping one connection (to the origin of the last request).
#[derive(Debug)]
pub struct Http1 {
    conn: Option<Conn>,
    /// connections opened so far (a connection's number: which one a request was written on)
    opened: u64,
    /// the requests sent and not yet answered, oldest first
    pending: VecDeque<Pending>,
    /// how long a kept connection may have been idle and still serve a request
    max_idle: Duration,
    /// how long one request may take, answer included ([`REQUEST_DEADLINE`] by default)
    deadline: Duration,
    /// the body [`open`](Http1::open) began, read by [`read`](Http1::read)
    body: Option<Body>,
}

impl Default for Http1 {
    fn default() -> Self {
        Http1::with_max_idle(MAX_IDLE)
    }
}

/// A body being read a piece at a time ([`Http1::read`]).
#[derive(Debug)]
struct Body {
    url: String,
    deadline: Instant,
    framing: Framing,
    /// whether the connection serves another request once the body is read to its end
    keep: bool,
}

/// How a body's end is told.
#[derive(Debug)]
enum Framing {
    /// by its length: this many bytes are left
    Length(u64),
    /// by chunks: this many bytes are left of the current one; `started`: a chunk was read, so
    /// its CRLF comes before the next size line
    Chunked { left: u64, started: bool },
    /// by the end of the stream
    ToEnd,
}

/// A request sent and not answered yet.
#[derive(Debug)]
struct Pending {
    url: String,
    deadline: Instant,
    /// the connection it was written on ([`Conn::number`])
    conn: u64,
    /// whether that connection had served a request before
    reused: bool,
}

#[derive(Debug)]
struct Conn {
    /// which connection of this client it is (1, 2, …)
    number: u64,
    origin: String,
    stream: TcpStream,
    /// bytes read past the last response
    buf: Vec<u8>,
    /// the read timeout now set on the socket
    timeout: Duration,
    /// when its last answer was read (or when it was opened)
    idle_since: Instant,
}

/// `http://host[:port]/path` → (`host:port` to connect to, `Host` header, path with query).
fn split_url(url: &str) -> Option<(String, &str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    // a bracketed IPv6 literal keeps its colons; a port after it or after a name
    let has_port = match authority.rfind(']') {
        Some(b) => authority[b..].contains(':'),
        None => authority.contains(':'),
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Some((addr, authority, path))
}

fn io(url: &str, message: impl std::fmt::Display) -> HttpError {
    HttpError::Io {
        url: url.into(),
        message: message.to_string(),
    }
}

impl Http1 {
    /// A client that reuses a kept connection only if it has been idle less than `max_idle`
    /// ([`MAX_IDLE`] by default; zero: a new connection for every request).
    pub fn with_max_idle(max_idle: Duration) -> Self {
        Http1 {
            conn: None,
            opened: 0,
            pending: VecDeque::new(),
            max_idle,
            deadline: REQUEST_DEADLINE,
            body: None,
        }
    }

    /// The same, each request given at most `deadline` (a silent server costs that long).
    pub fn with_request_deadline(self, deadline: Duration) -> Self {
        Http1 { deadline, ..self }
    }

    /// Whether this client can fetch `url` (plain `http://`).
    pub fn handles(url: &str) -> bool {
        split_url(url).is_some()
    }

    /// Send a GET for `url` (connecting first if needed), behind the requests sent before it
    /// (at most [`MAX_PIPELINED`] wait for their answers). Its answer is taken with
    /// [`receive`](Self::receive), after theirs.
    pub fn send(&mut self, url: &str) -> Result<(), HttpError> {
        self.send_all(&[url])
    }

    /// [`send`](Self::send) for each of `urls` (one origin), in order, written together: one
    /// write, one segment for the server to read, instead of one each. All are sent or none:
    /// an error (another origin, too many waiting, the connect or the write failed) sends none
    /// of them (a write that failed part way closed the connection: no answer comes).
    pub fn send_all(&mut self, urls: &[&str]) -> Result<(), HttpError> {
        let Some(first) = urls.first() else {
            return Ok(());
        };
        let waiting = self.pending.len();
        if waiting + urls.len() > MAX_PIPELINED {
            return Err(io(
                first,
                if waiting >= MAX_PIPELINED {
                    format!("{MAX_PIPELINED} requests already wait for their answers")
                } else {
                    format!(
                        "{} requests and the {waiting} waiting are more than the \
                         {MAX_PIPELINED} that may wait for their answers",
                        urls.len()
                    )
                },
            ));
        }
        let deadline = Instant::now() + self.deadline;
        let reused = self.write(urls, deadline, "")?;
        for (i, url) in urls.iter().enumerate() {
            self.pending.push_back(Pending {
                url: url.to_string(),
                deadline,
                conn: self.opened,
                // each after the first was written on a connection that serves one before it
                // (a server may close after that one's answer: asked again then), as when sent
                // one by one
                reused: reused || i > 0,
            });
        }
        Ok(())
    }

    /// The answer to the oldest request [`send`](Self::send) sent and not answered: `None` on
    /// 404, else the body of at most `limit` bytes (more: [`HttpError::TooLarge`]); other
    /// statuses are errors. A kept-alive connection the server had closed before the request is
    /// retried once, fresh; so is a request whose connection an earlier answer closed (an
    /// error, `Connection: close`) before this one's answer came, and one with another
    /// pipelined behind it whose connection was closed or reset before its answer was whole.
    pub fn receive(&mut self, limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(Pending {
            url,
            deadline,
            conn,
            mut reused,
        }) = self.pending.pop_front()
        else {
            return Err(io("", "no request sent"));
        };
        if self.conn_number() != Some(conn) {
            // its connection is gone: asked again, on a connection that carries no later
            // request (that one's answer would come first)
            if self
                .pending
                .iter()
                .any(|p| Some(p.conn) == self.conn_number())
            {
                self.conn = None;
            }
            reused = self.write_request(&url, deadline)?;
        }
        // another request written behind this one: a server that closes after this answer, with
        // that request unread, resets the connection (RFC 9112 §9.6), and the reset may take
        // this answer with it; asked again then (§9.3.2)
        let behind = self
            .pending
            .iter()
            .any(|p| Some(p.conn) == self.conn_number());
        let first = self.read_response(&url, limit, deadline);
        let again = match &first {
            Err(Fresh::Closed) => reused || behind,
            Err(Fresh::Err(HttpError::Io { message, .. })) => behind && message == RESET,
            _ => false,
        };
        let result = if again {
            self.conn = None;
            self.write_request(&url, deadline)?;
            self.read_response(&url, limit, deadline)
        } else {
            first
        };
        let behind = self
            .pending
            .iter()
            .any(|p| Some(p.conn) == self.conn_number());
        if let Some(c) = self.conn.as_mut() {
            c.idle_since = Instant::now();
            // bytes past the answer with no request behind it: not an answer to anything
            if !behind && !c.buf.is_empty() {
                self.conn = None;
            }
        }
        result.map_err(|e| {
            self.conn = None;
            match e {
                Fresh::Closed => io(&url, "connection closed before an answer"),
                Fresh::Err(e) => e,
            }
        })
    }

    /// Forget the requests [`send`](Self::send) sent, their answers unread: the connection
    /// they would arrive on is closed, so no later request can take one for its own.
    pub fn abandon(&mut self) {
        if !self.pending.is_empty() {
            self.pending.clear();
            self.conn = None;
        }
    }

    /// How many requests wait for their answers.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// GET `url` (send, then receive).
    pub fn get(&mut self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
        self.send(url)?;
        self.receive(limit)
    }

    /// GET `url` from byte `from` on (`Range: bytes=FROM-`) and read the answer's
    /// head; the body is then read with [`read`](Self::read). Requests sent and not answered
    /// are dropped first ([`abandon`](Self::abandon)). Returns the file offset the body starts
    /// at: `from` for a `206` whose `Content-Range` starts there, 0 for a `200` (a server
    /// without ranges sends the whole file: the caller skips to `from`). Another status is an
    /// error (a `404` too: [`HttpError::Status`]), and so is a `206` from elsewhere. A kept
    /// connection the server had closed before the request is retried once, fresh.
    pub fn open(&mut self, url: &str, from: u64) -> Result<u64, HttpError> {
        self.abandon();
        let deadline = Instant::now() + self.deadline;
        let range = format!("Range: bytes={from}-\r\n");
        let reused = self.write(&[url], deadline, &range)?;
        let result = match self.open_response(url, from, deadline) {
            Err(Fresh::Closed) if reused => {
                self.conn = None;
                self.write(&[url], deadline, &range)?;
                self.open_response(url, from, deadline)
            }
            other => other,
        };
        // (a refusal read to its end keeps its connection: `open_response` closes the others)
        result.map_err(|e| match e {
            Fresh::Closed => {
                self.conn = None;
                io(url, "connection closed before an answer")
            }
            Fresh::Err(e) => e,
        })
    }

    /// Read the next bytes of the body [`open`](Self::open) began into `into`: how many (at
    /// least one while `into` is not empty), 0 at the body's end or with no body open. A
    /// failure ends the body and closes its connection; so does a request sent before the body
    /// was read to its end.
    pub fn read(&mut self, into: &mut [u8]) -> Result<usize, HttpError> {
        if into.is_empty() {
            return Ok(0);
        }
        let r = self.read_open(into);
        match &r {
            Ok(0) => self.end_body(),
            Ok(_) => {
                // a length-delimited body read whole ends here, so that the connection serves
                // the next request (the caller reads no further than it needs)
                if matches!(
                    self.body,
                    Some(Body {
                        framing: Framing::Length(0),
                        ..
                    })
                ) {
                    self.end_body();
                }
            }
            Err(_) => {
                self.body = None;
                self.conn = None;
            }
        }
        r
    }

    /// The URL of the body [`open`](Self::open) began, while it is not read to its end.
    pub fn reading(&self) -> Option<&str> {
        self.body.as_ref().map(|b| b.url.as_str())
    }

    /// A body read to its end: its connection kept for the next request, or closed.
    fn end_body(&mut self) {
        if let Some(body) = self.body.take() {
            match self.conn.as_mut() {
                // (bytes past the body: not an answer to anything, see `Conn::quiet`)
                Some(c) if body.keep && c.buf.is_empty() => c.idle_since = Instant::now(),
                _ => self.conn = None,
            }
        }
    }

    fn read_open(&mut self, into: &mut [u8]) -> Result<usize, HttpError> {
        let (Some(body), Some(conn)) = (self.body.as_mut(), self.conn.as_mut()) else {
            return Ok(0);
        };
        let (url, deadline) = (body.url.as_str(), body.deadline);
        let left = match &mut body.framing {
            Framing::Length(left) => left,
            Framing::ToEnd => return conn.read_into(url, deadline, into),
            Framing::Chunked { left, started } => {
                if *left == 0 {
                    if *started && !conn.read_line(url, deadline)?.is_empty() {
                        return Err(io(url, "bad chunk end"));
                    }
                    let line = conn.read_line(url, deadline)?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    *left = u64::from_str_radix(size, 16).map_err(|_| io(url, "bad chunk size"))?;
                    *started = true;
                    if *left == 0 {
                        // trailers, up to the blank line
                        while !conn.read_line(url, deadline)?.is_empty() {}
                        return Ok(0);
                    }
                }
                left
            }
        };
        if *left == 0 {
            return Ok(0);
        }
        let n = into.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        let got = match conn.read_into(url, deadline, into.get_mut(..n).unwrap_or_default())? {
            0 => return Err(io(url, "connection closed in the body")),
            got => got,
        };
        *left -= got as u64;
        Ok(got)
    }

    /// The head of the answer to a ranged request, its body made the one [`read`](Self::read)
    /// reads; returns the offset the body starts at.
    fn open_response(&mut self, url: &str, from: u64, deadline: Instant) -> Result<u64, Fresh> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Fresh::Err(io(url, "no connection")))?;
        let head = conn.read_head(url, deadline).and_then(|head| {
            Head::parse(&head).ok_or_else(|| Fresh::Err(io(url, "malformed response")))
        });
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(Fresh::Err(io(url, "no connection")));
        };
        let start = match head.status {
            200 => 0,
            206 if head.range_start == Some(from) => from,
            206 => {
                self.conn = None;
                return Err(Fresh::Err(io(
                    url,
                    format_args!(
                        "asked for bytes from {from}, the server sent Content-Range {}",
                        head.range.as_deref().unwrap_or("(none)")
                    ),
                )));
            }
            code => {
                let small = head.length.is_none_or(|n| n <= DRAIN_LIMIT as u64) && !head.chunked;
                let body = if small {
                    conn.read_body(url, &head, DRAIN_LIMIT, deadline, false)
                        .ok()
                } else {
                    None
                };
                let keep = head.keep_alive && (head.length.is_some() || head.chunked);
                if !(keep && body.is_some()) {
                    self.conn = None;
                }
                return Err(Fresh::Err(HttpError::from_status(
                    url,
                    code,
                    &body.unwrap_or_default(),
                )));
            }
        };
        let framing = match head.length {
            _ if head.chunked => Framing::Chunked {
                left: 0,
                started: false,
            },
            Some(n) => Framing::Length(n),
            None => Framing::ToEnd,
        };
        self.body = Some(Body {
            url: url.to_string(),
            deadline,
            keep: head.keep_alive && !matches!(framing, Framing::ToEnd),
            framing,
        });
        Ok(start)
    }

    /// Write the request on the kept connection to `url`'s origin, or on a new one; returns
    /// whether the connection was reused.
    fn write_request(&mut self, url: &str, deadline: Instant) -> Result<bool, HttpError> {
        self.write(&[url], deadline, "")
    }

    /// [`write_request`](Self::write_request) for each of `urls` (one origin: the first's; none
    /// is written if another's differs), in one write, each with `extra` header lines (each
    /// ending in CRLF). A body [`open`](Self::open) began and not read to its end is dropped
    /// with its connection.
    fn write(&mut self, urls: &[&str], deadline: Instant, extra: &str) -> Result<bool, HttpError> {
        let url = *urls.first().ok_or_else(|| io("", "no request"))?;
        let (addr, _, _) = split_url(url).ok_or_else(|| io(url, "not an http:// URL"))?;
        let mut req = String::new();
        for u in urls {
            let (a, host, path) = split_url(u).ok_or_else(|| io(u, "not an http:// URL"))?;
            if a != addr {
                return Err(io(
                    u,
                    format_args!("not on {addr}, with the requests before it"),
                ));
            }
            req.push_str(&format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hale/{}\r\nAccept: */*\r\n{extra}\r\n",
                env!("CARGO_PKG_VERSION")
            ));
        }
        if self.body.take().is_some() {
            self.conn = None;
        }
        // (a connection with answers on their way is not idle)
        let waiting = self
            .pending
            .iter()
            .any(|p| Some(p.conn) == self.conn_number());
        if self.conn.as_ref().is_some_and(|c| {
            c.origin != addr
                || (!waiting && (c.idle_since.elapsed() >= self.max_idle || !c.quiet()))
        }) {
            self.conn = None;
        }
        let reused = self.conn.is_some();
        if self.conn.is_none() {
            let sock = addr
                .to_socket_addrs()
                .map_err(|e| io(url, format_args!("resolve {addr}: {e}")))?
                .next()
                .ok_or_else(|| io(url, format_args!("resolve {addr}: no address")))?;
            // within what is left of the request's deadline (a request asked again late in it)
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| io(url, TIMED_OUT))?;
            let stream = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT.min(left)).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                        io(url, TIMED_OUT)
                    }
                    _ => io(url, format_args!("connect: {e}")),
                },
            )?;
            stream
                .set_nodelay(true)
                .and_then(|()| stream.set_write_timeout(Some(self.deadline)))
                .and_then(|()| stream.set_read_timeout(Some(self.deadline)))
                .map_err(|e| io(url, e))?;
            self.opened += 1;
            self.conn = Some(Conn {
                number: self.opened,
                origin: addr,
                stream,
                buf: Vec::new(),
                timeout: self.deadline,
                idle_since: Instant::now(),
            });
        }
        let conn = self.conn.as_mut().ok_or_else(|| io(url, "no connection"))?;
        conn.set_deadline(url, deadline)?;
        if let Err(e) = conn.stream.write_all(req.as_bytes()) {
            self.conn = None;
            return Err(io(url, format_args!("send: {e}")));
        }
        Ok(reused)
    }

    fn conn_number(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.number)
    }

    fn read_response(
        &mut self,
        url: &str,
        limit: usize,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Fresh> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Fresh::Err(io(url, "no connection")))?;
        let head = conn.read_head(url, deadline)?;
        let head = Head::parse(&head).ok_or_else(|| Fresh::Err(io(url, "malformed response")))?;
        // without a length or chunks the body runs to the end of the stream
        let keep = head.keep_alive && (head.length.is_some() || head.chunked);
        let (body, complete) = match head.status {
            200 => {
                let body = conn.read_body(url, &head, limit, deadline, true)?;
                (Some(body), true)
            }
            code => {
                // read a short answer to its end so the connection can serve the next request
                let small = head.length.is_none_or(|n| n <= DRAIN_LIMIT as u64) && !head.chunked;
                let body = if small {
                    conn.read_body(url, &head, DRAIN_LIMIT, deadline, false)
                        .ok()
                } else {
                    None
                };
                if code == 404 {
                    let drained = body.is_some();
                    if !(keep && drained) {
                        self.conn = None;
                    }
                    return Ok(None);
                }
                self.conn = None;
                let body = body.unwrap_or_default();
                return Err(Fresh::Err(HttpError::from_status(url, code, &body)));
            }
        };
        if !(keep && complete) {
            self.conn = None;
        }
        Ok(body)
    }
}

/// A failure, or a connection that was closed before any answer (worth one retry when reused).
enum Fresh {
    Closed,
    Err(HttpError),
}

impl From<HttpError> for Fresh {
    fn from(e: HttpError) -> Self {
        Fresh::Err(e)
    }
}

/// What a response head says.
#[derive(Debug)]
struct Head {
    status: u16,
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    /// `Content-Range` (at most [`MAX_RANGE`] bytes kept, for the error that quotes it) and
    /// its first byte
    range: Option<String>,
    range_start: Option<u64>,
}

/// Most of a `Content-Range` quoted in an error.
const MAX_RANGE: usize = 80;

impl Head {
    fn parse(bytes: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next()?;
        let status: u16 = parts.next()?.parse().ok()?;
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return None,
        };
        let mut head = Head {
            status,
            length: None,
            chunked: false,
            keep_alive: http11,
            range: None,
            range_start: None,
        };
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value.parse().ok()?;
                // two different lengths: a smuggling attempt, not an answer
                if head.length.is_some_and(|m| m != n) {
                    return None;
                }
                head.length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // only chunked is understood (and must come last)
                let last = value.rsplit(',').next()?.trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return None;
                }
                head.chunked = true;
            } else if name.eq_ignore_ascii_case("content-range") {
                // `bytes FIRST-LAST/TOTAL`: only the first byte is used
                head.range_start = value
                    .strip_prefix("bytes ")
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(a, _)| a.trim().parse().ok());
                head.range = Some(value.chars().take(MAX_RANGE).collect());
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
        }
        if head.chunked {
            // RFC 9112 §6.3: chunked wins over a length, but the two together (or chunked in
            // HTTP/1.0, §6.1) may be framed otherwise by something on the way: the connection
            // is closed after the answer, so what follows it is never another's answer
            if head.length.is_some() || !http11 {
                head.keep_alive = false;
            }
            head.length = None;
        }
        // no body whatever the headers say (RFC 9112 §6.3 rule 1)
        if matches!(status, 100..=199 | 204 | 304) {
            head.chunked = false;
            head.length = Some(0);
        }
        Some(head)
    }
}

impl Conn {
    /// Whether an idle connection holds nothing: no byte past the last answer, buffered or on
    /// its way, and no close. Anything there was not asked for, and must not be read as the
    /// next request's answer (RFC 9112 §6.3: extra data after a response is not a response);
    /// a close would cost the request a retry.
    fn quiet(&self) -> bool {
        if !self.buf.is_empty() || self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let quiet = matches!(self.stream.peek(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).is_ok() && quiet
    }

    /// Keep the socket's read timeout within the request's deadline: set again only when the
    /// time left is a second or more below it, so a fast answer costs no system call.
    fn set_deadline(&mut self, url: &str, deadline: Instant) -> Result<(), HttpError> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io(url, TIMED_OUT))?;
        if left + Duration::from_secs(1) < self.timeout
            || left > self.timeout + Duration::from_secs(1)
        {
            self.stream
                .set_read_timeout(Some(left))
                .and_then(|()| self.stream.set_write_timeout(Some(left)))
                .map_err(|e| io(url, e))?;
            self.timeout = left;
        }
        Ok(())
    }

    /// Read more bytes into `buf`; `Ok(0)` at the end of the stream.
    fn fill(&mut self, url: &str, deadline: Instant) -> Result<usize, HttpError> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.read_some(url, deadline, &mut chunk)?;
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        Ok(n)
    }

    /// One read from the stream into `into`, within the deadline; `Ok(0)` at its end.
    fn read_some(
        &mut self,
        url: &str,
        deadline: Instant,
        into: &mut [u8],
    ) -> Result<usize, HttpError> {
        self.set_deadline(url, deadline)?;
        loop {
            match self.stream.read(into) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io(url, TIMED_OUT))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(io(url, RESET))
                }
                Err(e) => return Err(io(url, e)),
            }
        }
    }

    /// Bytes of the stream into `into`: those buffered first, else one read from the socket;
    /// `Ok(0)` at the stream's end.
    fn read_into(
        &mut self,
        url: &str,
        deadline: Instant,
        into: &mut [u8],
    ) -> Result<usize, HttpError> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(into.len());
            into.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(self.buf.get(..n).unwrap_or_default());
            self.buf.drain(..n);
            return Ok(n);
        }
        self.read_some(url, deadline, into)
    }

    /// The final response head (interim `1xx` answers before it skipped, RFC 9110 §15.2; a
    /// `101` is no answer to a GET), taken out of the buffer.
    fn read_head(&mut self, url: &str, deadline: Instant) -> Result<Vec<u8>, Fresh> {
        // each interim head is bounded, and all come within the request's deadline
        loop {
            let head = self.read_one_head(url, deadline)?;
            let status = head.get(9..12).and_then(|s| std::str::from_utf8(s).ok());
            match status {
                Some("101") => return Err(Fresh::Err(io(url, "101 Switching Protocols"))),
                Some(s) if s.starts_with('1') && head.starts_with(b"HTTP/1.") => continue,
                _ => return Ok(head),
            }
        }
    }

    /// One response head, taken out of the buffer (without its final blank line).
    fn read_one_head(&mut self, url: &str, deadline: Instant) -> Result<Vec<u8>, Fresh> {
        let mut scanned = 0usize;
        loop {
            if let Some(i) = self
                .buf
                .get(scanned.saturating_sub(3)..)
                .and_then(|b| b.windows(4).position(|w| w == b"\r\n\r\n"))
            {
                let end = scanned.saturating_sub(3) + i;
                let head = self.buf.get(..end).unwrap_or_default().to_vec();
                self.buf.drain(..end + 4);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Fresh::Err(io(url, "response head too long")));
            }
            scanned = self.buf.len();
            let n = match self.fill(url, deadline) {
                // closed or reset before any byte of the answer (not a timeout): the server
                // dropped the idle connection
                Ok(0) if self.buf.is_empty() => return Err(Fresh::Closed),
                Err(HttpError::Io { message, .. })
                    if self.buf.is_empty() && message != TIMED_OUT =>
                {
                    let _ = message;
                    return Err(Fresh::Closed);
                }
                Err(e) => return Err(Fresh::Err(e)),
                Ok(n) => n,
            };
            if n == 0 {
                return Err(Fresh::Err(io(
                    url,
                    "connection closed in the response head",
                )));
            }
        }
    }

    /// The body as the head describes it, at most `limit` bytes (`too_large`: more is
    /// [`HttpError::TooLarge`]; otherwise a failure to read it whole).
    fn read_body(
        &mut self,
        url: &str,
        head: &Head,
        limit: usize,
        deadline: Instant,
        too_large: bool,
    ) -> Result<Vec<u8>, HttpError> {
        let over = || {
            if too_large {
                HttpError::TooLarge {
                    url: url.into(),
                    limit,
                }
            } else {
                io(url, "answer too long")
            }
        };
        if head.chunked {
            let mut body = Vec::new();
            loop {
                let line = self.read_line(url, deadline)?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size, 16).map_err(|_| io(url, "bad chunk size"))?;
                if size == 0 {
                    // trailers, up to the blank line
                    while !self.read_line(url, deadline)?.is_empty() {}
                    return Ok(body);
                }
                if body.len().saturating_add(size) > limit {
                    return Err(over());
                }
                self.take_exact(url, size, deadline, &mut body)?;
                if !self.read_line(url, deadline)?.is_empty() {
                    return Err(io(url, "bad chunk end"));
                }
            }
        }
        match head.length {
            Some(n) => {
                if n > limit as u64 {
                    return Err(over());
                }
                let mut body = Vec::with_capacity(n as usize);
                self.take_exact(url, n as usize, deadline, &mut body)?;
                Ok(body)
            }
            None => {
                // no length: the body runs to the end of the stream (not kept alive)
                while self.buf.len() <= limit {
                    if self.fill(url, deadline)? == 0 {
                        return Ok(std::mem::take(&mut self.buf));
                    }
                }
                Err(over())
            }
        }
    }

    /// Move exactly `n` bytes from the stream into `out` (what is buffered first, then straight
    /// from the socket: a large body is not held twice).
    fn take_exact(
        &mut self,
        url: &str,
        n: usize,
        deadline: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), HttpError> {
        let buffered = self.buf.len().min(n);
        out.extend(self.buf.drain(..buffered));
        // the rest is read into its place in `out` (the callers bound `n`), as much per read as
        // the socket holds
        let mut have = out.len();
        let end = have + (n - buffered);
        out.resize(end, 0);
        while have < end {
            let got =
                match self.read_some(url, deadline, out.get_mut(have..end).unwrap_or_default()) {
                    Ok(0) => Err(io(url, "connection closed in the body")),
                    other => other,
                };
            match got {
                Ok(got) => have += got,
                Err(e) => {
                    out.truncate(have);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line (at most 64 bytes, for chunk sizes and trailers: a longer one is
    /// refused).
    fn read_line(&mut self, url: &str, deadline: Instant) -> Result<String, HttpError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line =
                    String::from_utf8_lossy(self.buf.get(..i).unwrap_or_default()).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 {
                return Err(io(url, "chunk line too long"));
            }
            if self.fill(url, deadline)? == 0 {
                return Err(io(url, "connection closed in a chunk line"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A server on loopback that answers the n-th request with `answers[n]` (raw bytes) and
    /// closes the connection after it when `close[n]`; counts connections and requests.
    /// Connections accepted, and the request lines seen.
    type Seen = Arc<Mutex<(usize, Vec<String>)>>;

    fn server(answers: Vec<(&'static [u8], bool)>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new((0usize, Vec::new())));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                log.lock().unwrap().0 += 1;
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut line = line.trim().to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        // a range asked for is logged with its request line
                        if h.starts_with("Range:") {
                            line = format!("{line} [{}]", h.trim());
                        }
                    }
                    log.lock().unwrap().1.push(line);
                    let Some((answer, close)) = answers.next() else {
                        return;
                    };
                    let _ = conn.write_all(answer);
                    if close {
                        break;
                    }
                }
            }
        });
        (base, seen)
    }

    /// The server saw `/a`, `/b` and `/c`, in order, on one connection.
    fn abc_on_one_connection(seen: &Seen) {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, 1, "one connection for all three");
        assert_eq!(
            seen.1,
            ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
        );
    }

    #[test]
    fn keeps_one_connection_and_reads_lengths_chunks_and_404s() {
        let (base, seen) = server(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", false),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
                false,
            ),
        ]);
        let mut h = Http1::default();
        assert_eq!(
            h.get(&format!("{base}/a"), 100).unwrap(),
            Some(b"hello".to_vec())
        );
        assert_eq!(h.get(&format!("{base}/b"), 100).unwrap(), None);
        // the request goes out before its answer is read
        h.send(&format!("{base}/c")).unwrap();
        assert_eq!(h.receive(100).unwrap(), Some(b"wikipedia".to_vec()));
        abc_on_one_connection(&seen);
    }

    /// Read an open body to its end in pieces of at most `piece` bytes.
    fn read_all(h: &mut Http1, piece: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            match h.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// A ranged GET: the `Range` asked, the body read in pieces (a length and chunks), and the
    /// connection kept for the next request once a body is read to its end; a 200 (a server
    /// without ranges) starts at 0, for the caller to skip.
    #[test]
    fn opens_a_range_reads_its_body_in_pieces_and_keeps_the_connection() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 3-9/10\r\nContent-Length: 7\r\n\r\n3456789",
                false,
            ),
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-9/10\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n234\r\n5;x=y\r\n56789\r\n0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        ]);
        let mut h = Http1::default();
        let url = format!("{base}/fw");
        assert_eq!(h.open(&url, 3).unwrap(), 3);
        assert_eq!(h.reading(), Some(url.as_str()));
        assert_eq!(read_all(&mut h, 2).unwrap(), b"3456789");
        assert_eq!(h.reading(), None);
        assert_eq!(h.open(&url, 2).unwrap(), 2);
        assert_eq!(read_all(&mut h, 4).unwrap(), b"23456789");
        assert_eq!(h.open(&url, 5).unwrap(), 0);
        assert_eq!(read_all(&mut h, 4).unwrap(), b"0123456789");
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"ok".to_vec())
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, 1, "one connection for all four");
        assert_eq!(
            seen.1,
            [
                "GET /fw HTTP/1.1 [Range: bytes=3-]",
                "GET /fw HTTP/1.1 [Range: bytes=2-]",
                "GET /fw HTTP/1.1 [Range: bytes=5-]",
                "GET /a HTTP/1.1",
            ]
        );
    }

    /// What ends an open body early: another request (its connection closed with the rest
    /// unread, the request on a new one), a connection that closes in it, a bad chunk; and
    /// what is refused at the head: a range from elsewhere, a 404, another status.
    #[test]
    fn an_open_body_ends_on_another_request_or_a_break_and_wrong_ranges_are_refused() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\r\n0123456789",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\r\n0123",
                true,
            ),
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4-9/10\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n45XX\r\n",
                true,
            ),
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\r\n0123456789",
                true,
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
                false,
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 52\r\n\r\n{\"error\": \"rollout_pending\", \"message\": \"held back\"}",
                false,
            ),
        ]);
        let mut h = Http1::default();
        let url = format!("{base}/fw");
        // read in part, then another request
        assert_eq!(h.open(&url, 0).unwrap(), 0);
        let mut four = [0u8; 4];
        assert_eq!(h.read(&mut four).unwrap(), 4);
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"ok".to_vec())
        );
        assert_eq!(h.reading(), None);
        assert_eq!(h.read(&mut four).unwrap(), 0, "nothing is open");
        // closed in the body: an error, the body ended
        assert_eq!(h.open(&url, 0).unwrap(), 0);
        let err = read_all(&mut h, 3).unwrap_err();
        assert!(
            matches!(&err, HttpError::Io { message, .. } if message == "connection closed in the body"),
            "{err:?}"
        );
        assert_eq!(h.reading(), None);
        // a chunk that does not end in CRLF
        assert_eq!(h.open(&url, 4).unwrap(), 4);
        let err = read_all(&mut h, 8).unwrap_err();
        assert!(
            matches!(&err, HttpError::Io { message, .. } if message == "bad chunk end"),
            "{err:?}"
        );
        // a 206 that starts elsewhere than asked
        match h.open(&url, 6) {
            Err(HttpError::Io { message, .. }) => assert_eq!(
                message,
                "asked for bytes from 6, the server sent Content-Range bytes 0-9/10"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.reading(), None);
        // a 404 is an error here (a target the repository lists is missing), and a refusal
        // is the server's
        match h.open(&url, 0) {
            Err(HttpError::Status { code: 404, url: u }) => assert_eq!(u, url),
            other => panic!("{other:?}"),
        }
        match h.open(&url, 0) {
            Err(HttpError::Refused {
                code: 403, error, ..
            }) => assert_eq!(error, "rollout_pending"),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        // the first body's connection closed for /a; the break, the bad chunk and the wrong
        // range each closed theirs; the 404's was kept for the 403
        assert_eq!(seen.0, 5);
        assert_eq!(seen.1.len(), 7);
    }

    /// A kept connection the server closed while idle: the ranged request is asked again, once,
    /// on a new connection.
    #[test]
    fn a_range_on_a_kept_connection_the_server_closed_is_asked_again() {
        let (base, seen) = server(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
            (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 8-9/10\r\nContent-Length: 2\r\n\r\n89",
                false,
            ),
        ]);
        let mut h = Http1::default();
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"ok".to_vec())
        );
        // (the server's close has arrived)
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.open(&format!("{base}/fw"), 8).unwrap(), 8);
        assert_eq!(read_all(&mut h, 10).unwrap(), b"89");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, 2);
        assert_eq!(
            seen.1,
            ["GET /a HTTP/1.1", "GET /fw HTTP/1.1 [Range: bytes=8-]"]
        );
    }

    /// Bytes past a whole answer are no answer (RFC 9112 §6.3): a 404 written after /a's
    /// answer, with nothing asked behind it, is never /b's; nor is one behind an answer framed
    /// both by a length and by chunks (something on the way may frame it by the length): the
    /// connection is closed after such an answer and the request behind it asked again.
    #[test]
    fn bytes_past_an_answer_are_never_the_next_requests_answer() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nc\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            // /d on the connection closed after /c's answer (never read), then again
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd", false),
        ]);
        let mut h = Http1::default();
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"a".to_vec())
        );
        assert_eq!(
            h.get(&format!("{base}/b"), 10).unwrap(),
            Some(b"b".to_vec())
        );
        h.send(&format!("{base}/c")).unwrap();
        h.send(&format!("{base}/d")).unwrap();
        assert_eq!(h.receive(10).unwrap(), Some(b"c".to_vec()));
        assert_eq!(h.receive(10).unwrap(), Some(b"d".to_vec()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, 3);
        assert_eq!(
            seen.1,
            [
                "GET /a HTTP/1.1",
                "GET /b HTTP/1.1",
                "GET /c HTTP/1.1",
                "GET /d HTTP/1.1",
                "GET /d HTTP/1.1"
            ]
        );
    }

    /// Bytes an idle kept connection receives after its answer was read (a server's late
    /// extra bytes) are not the next request's answer either: the next request goes on a new
    /// connection.
    #[test]
    fn bytes_an_idle_connection_receives_are_no_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    if !line.starts_with("GET") {
                        line.clear();
                        continue;
                    }
                    log.lock().unwrap().push(format!("{n} {}", line.trim()));
                    line.clear();
                    if n == 0 {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
                        std::thread::sleep(Duration::from_millis(100));
                        let _ =
                            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    } else {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
                    }
                }
            }
        });
        let mut h = Http1::default();
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"a".to_vec())
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            h.get(&format!("{base}/b"), 10).unwrap(),
            Some(b"b".to_vec())
        );
        assert_eq!(
            *requests.lock().unwrap(),
            ["0 GET /a HTTP/1.1", "1 GET /b HTTP/1.1"]
        );
    }

    /// An answer with no body whatever its headers say (204, 304) is read at once, and interim
    /// 1xx answers before the final one are skipped (RFC 9110 §15.2).
    #[test]
    fn interim_answers_are_skipped_and_bodyless_ones_read_at_once() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                false,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        ]);
        let mut h = Http1::default().with_request_deadline(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(
            h.get(&format!("{base}/a"), 10).unwrap(),
            Some(b"hello".to_vec())
        );
        for (path, code) in [("/b", 204), ("/c", 304)] {
            match h.get(&format!("{base}{path}"), 10) {
                Err(HttpError::Status { code: c, .. }) => assert_eq!(c, code),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            h.get(&format!("{base}/d"), 10).unwrap(),
            Some(b"ok".to_vec())
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.1.len(), 4);
    }

    /// A connect is given at most what is left of the request's deadline, and one that runs out
    /// reads as a timeout (`HttpError::is_timeout`), as a silent answer does.
    #[test]
    fn a_connect_stays_within_the_request_deadline_and_reads_as_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // the accept queue filled: later connects hang, as to a black hole
        let mut held = Vec::new();
        for _ in 0..4096 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        let mut h = Http1::default().with_request_deadline(Duration::from_secs(1));
        let t = Instant::now();
        let err = h.get(&format!("http://{addr}/a"), 100).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(err.is_timeout(), "{err:?}");
        drop(held);
    }

    /// A request sent and then abandoned: its answer is never read, not even by the next
    /// request, which goes on a new connection (the kept one is closed with the answer in it).
    #[test]
    fn an_abandoned_request_closes_its_connection_and_its_answer_is_never_read() {
        let (base, seen) = server(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile a", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile b", false),
        ]);
        let mut h = Http1::default();
        h.send(&format!("{base}/a")).unwrap();
        // the answer to /a is on its way (or there) when the request is abandoned
        std::thread::sleep(Duration::from_millis(50));
        h.abandon();
        assert_eq!(
            h.get(&format!("{base}/b"), 100).unwrap(),
            Some(b"file b".to_vec())
        );
        // nothing is waiting any more
        assert!(h.receive(100).is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, 2, "the abandoned connection is not used again");
        assert_eq!(seen.1, ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]);
    }

    /// Two requests sent before either answer is read: one connection, the answers in the
    /// order of the requests; a third waits for no answer to be read, and is refused.
    #[test]
    fn pipelines_two_requests_on_one_connection_and_answers_them_in_order() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile b", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile c", false),
        ]);
        let mut h = Http1::default();
        h.send(&format!("{base}/a")).unwrap();
        h.send(&format!("{base}/b")).unwrap();
        assert_eq!(h.waiting(), 2);
        match h.send(&format!("{base}/c")) {
            Err(HttpError::Io { url, message }) => assert_eq!(
                (url.as_str(), message.as_str()),
                (
                    format!("{base}/c").as_str(),
                    "2 requests already wait for their answers"
                )
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.receive(100).unwrap(), None);
        assert_eq!(h.receive(100).unwrap(), Some(b"file b".to_vec()));
        assert_eq!(h.waiting(), 0);
        assert_eq!(
            h.get(&format!("{base}/c"), 100).unwrap(),
            Some(b"file c".to_vec())
        );
        abc_on_one_connection(&seen);
    }

    /// Requests sent together are pipelined as sent one by one; a batch that another origin's
    /// URL or too many requests refuse sends none of its requests.
    #[test]
    fn sends_requests_together_or_none_of_them() {
        let (base, seen) = server(vec![
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile b", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfile c", false),
        ]);
        let (a, b, c) = (
            format!("{base}/a"),
            format!("{base}/b"),
            format!("{base}/c"),
        );
        let refused = |r: Result<(), HttpError>| match r {
            Err(HttpError::Io { url, message }) => (url, message),
            other => panic!("{other:?}"),
        };
        let mut h = Http1::default();
        h.send_all(&[]).unwrap();
        assert_eq!(h.waiting(), 0);
        h.send_all(&[&a, &b]).unwrap();
        assert_eq!(h.waiting(), 2);
        assert_eq!(
            refused(h.send_all(&[&c])),
            (
                c.clone(),
                "2 requests already wait for their answers".into()
            )
        );
        assert_eq!(h.receive(100).unwrap(), None);
        assert_eq!(h.receive(100).unwrap(), Some(b"file b".to_vec()));
        let elsewhere = "http://127.0.0.1:1/d";
        let origin = base.trim_start_matches("http://");
        assert_eq!(
            refused(h.send_all(&[&c, elsewhere])),
            (
                elsewhere.into(),
                format!("not on {origin}, with the requests before it")
            )
        );
        assert_eq!(
            refused(h.send_all(&[&c, &c, &c])),
            (
                c.clone(),
                "3 requests and the 0 waiting are more than the 2 that may wait for their answers"
                    .into()
            )
        );
        assert_eq!(h.waiting(), 0);
        assert_eq!(h.get(&c, 100).unwrap(), Some(b"file c".to_vec()));
        // (the refused batches wrote nothing: the server read /c once)
        abc_on_one_connection(&seen);
    }

    /// A server that resets the connection in the middle of the first of two pipelined answers
    /// (it closes with the second request unread, RFC 9112 §9.6: the reset can take an answer
    /// already sent with it). Both requests are asked again, each once, on new connections
    /// (§9.3.2), and each answer is the one read.
    #[test]
    fn a_reset_in_an_answer_with_a_request_behind_it_is_asked_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                // the first request's head, byte by byte: what follows stays in the socket
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head);
                let line = line.lines().next().unwrap_or("").to_string();
                let body = ["a", "b", "c"]
                    .into_iter()
                    .find(|b| line.contains(&format!("/{b} ")))
                    .unwrap_or("?");
                log.lock().unwrap().push(line);
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes());
                if i > 0 && body != "c" {
                    let _ = conn.write_all(body.as_bytes());
                }
                // the first connection: the second request is there, unread, when it closes
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut h = Http1::default();
        h.send(&format!("{base}/a")).unwrap();
        h.send(&format!("{base}/b")).unwrap();
        assert_eq!(h.receive(100).unwrap(), Some(b"a".to_vec()));
        assert_eq!(h.receive(100).unwrap(), Some(b"b".to_vec()));
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            ["GET /a HTTP/1.1", "GET /a HTTP/1.1", "GET /b HTTP/1.1"],
            "a, a again on a new connection, then b on another"
        );
        // without a request behind it, an answer cut short is the answer's error
        drop(seen);
        let mut h = Http1::default();
        match h.get(&format!("{base}/c"), 100) {
            Ok(answer) => panic!("{answer:?}"),
            Err(e) => assert!(e.to_string().starts_with(&format!("{base}/c: ")), "{e}"),
        }
    }

    /// The server closes the connection after the first of two pipelined answers (it said so,
    /// or it did not): the second request is asked again on a new connection, once, and its
    /// answer is the one read.
    #[test]
    fn a_request_behind_an_answer_that_closes_is_asked_again_on_a_new_connection() {
        for (said, together) in [(true, false), (false, false), (true, true), (false, true)] {
            let first: &'static [u8] = if said {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
            };
            let (base, seen) = server(vec![
                (first, true),
                (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
            ]);
            let mut h = Http1::default();
            let (a, b) = (format!("{base}/a"), format!("{base}/b"));
            // sent one by one, or together (`send_all`, as the pump asks ahead)
            if together {
                h.send_all(&[&a, &b]).unwrap();
            } else {
                h.send(&a).unwrap();
                h.send(&b).unwrap();
            }
            let case = format!("said {said}, together {together}");
            assert_eq!(h.receive(100).unwrap(), Some(b"a".to_vec()), "{case}");
            assert_eq!(h.receive(100).unwrap(), Some(b"b".to_vec()), "{case}");
            let seen = seen.lock().unwrap();
            // (the server read only the first request of the first connection)
            assert_eq!(seen.0, 2, "{case}: b asked again on a second connection");
            assert_eq!(seen.1, ["GET /a HTTP/1.1", "GET /b HTTP/1.1"], "{case}");
        }
    }

    #[test]
    fn reconnects_after_close_and_retries_a_dropped_idle_connection_once() {
        let (base, seen) = server(vec![
            // said it closes
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na",
                true,
            ),
            // closes without saying so: the next request finds the connection dropped
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", false),
            // HTTP/1.0 without a length: the body runs to the end of the stream
            (b"HTTP/1.0 200 OK\r\n\r\nto the end", true),
        ]);
        let mut h = Http1::default();
        for (path, body) in [("/1", "a"), ("/2", "b"), ("/3", "c"), ("/4", "to the end")] {
            // give the server time to close, so the retry path is the one taken
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                h.get(&format!("{base}{path}"), 100).unwrap(),
                Some(body.as_bytes().to_vec()),
                "{path}"
            );
        }
        let seen = seen.lock().unwrap();
        // /1 on the first; /2 on a second, which the server then drops; /3 finds that out and
        // goes again on a third, which /4 shares
        assert_eq!(seen.0, 3, "a new connection after each close");
        assert_eq!(
            seen.1.len(),
            4,
            "{:?}: the dropped request sent again, once",
            seen.1
        );
    }

    #[test]
    fn refuses_too_long_bodies_bad_heads_and_error_statuses() {
        let (base, _) = server(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", true),
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 41\r\n\r\n{\"error\":\"role_forbidden\",\"message\":\"no\"}", true),
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true),
        ]);
        let mut h = Http1::default();
        let u = |p: &str| format!("{base}{p}");
        assert!(matches!(
            h.get(&u("/len"), 10),
            Err(HttpError::TooLarge { limit: 10, .. })
        ));
        assert!(matches!(
            h.get(&u("/chunks"), 10),
            Err(HttpError::TooLarge { limit: 10, .. })
        ));
        assert!(matches!(h.get(&u("/two"), 10), Err(HttpError::Io { .. })));
        match h.get(&u("/refused"), 10) {
            Err(HttpError::Refused { code, error, .. }) => {
                assert_eq!((code, error.as_str()), (403, "role_forbidden"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.get(&u("/500"), 10),
            Err(HttpError::Status { code: 500, .. })
        ));
        assert!(matches!(h.get(&u("/short"), 10), Err(HttpError::Io { .. })));
        // a receive without a send (a third send before an answer: see the pipelining test)
        assert!(Http1::default().receive(1).is_err());
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/metadata/1.root.json"),
            Some((
                "127.0.0.1:8080".into(),
                "127.0.0.1:8080",
                "/metadata/1.root.json"
            ))
        );
        assert_eq!(
            split_url("http://example.org/a?b"),
            Some(("example.org:80".into(), "example.org", "/a?b"))
        );
        assert_eq!(
            split_url("http://[::1]/x"),
            Some(("[::1]:80".into(), "[::1]", "/x"))
        );
        assert_eq!(
            split_url("http://[::1]:9/x"),
            Some(("[::1]:9".into(), "[::1]:9", "/x"))
        );
        assert_eq!(split_url("https://example.org/"), None);
        assert_eq!(split_url("http://user@example.org/"), None);
        assert_eq!(split_url("http:///x"), None);
        assert_eq!(split_url("http://h/a b"), None);
    }

    #[test]
    fn reads_heads() {
        let h = Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n").unwrap();
        assert_eq!(
            (h.status, h.length, h.chunked, h.keep_alive),
            (200, Some(5), false, true)
        );
        let h = Head::parse(b"HTTP/1.0 404 Not Found\r\nconnection: Keep-Alive").unwrap();
        assert_eq!((h.status, h.length, h.keep_alive), (404, None, true));
        let h = Head::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: close",
        )
        .unwrap();
        assert_eq!((h.length, h.chunked, h.keep_alive), (None, true, false));
        // refused: two lengths, an encoding other than chunked last, another protocol, junk
        assert!(
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6").is_none()
        );
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip").is_none());
        assert!(Head::parse(b"HTTP/2 200 OK").is_none());
        assert!(Head::parse(b"HTTP/1.1 2x0 OK").is_none());
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nno colon").is_none());
    }

    /// Mangled answers (bytes replaced, cut short, hostile tokens put in: huge lengths and
    /// chunk sizes, long lines, a second encoding) never panic, never hang and never hand back
    /// more than the limit: each ends as a body within it, a 404 or an error. Deterministic.
    #[test]
    fn mangled_answers_end_in_a_bounded_body_or_an_error() {
        const BASE: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nto the end",
        ];
        const TOKENS: [&[u8]; 8] = [
            b"ffffffffffffffff",
            b"\r\n",
            b"Content-Length: 99999999999999999999\r\n",
            b"Content-Length: 2000\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"800\r\n",
            b";",
            b"0\r\n\r\n",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut answers: Vec<(&'static [u8], bool)> = Vec::new();
        for _ in 0..600 {
            let mut a = BASE[next(BASE.len())].to_vec();
            for _ in 0..1 + next(3) {
                let at = next(a.len() + 1);
                match next(5) {
                    0 if !a.is_empty() => {
                        let i = at.min(a.len() - 1);
                        a[i] = b"0f:; \r\n\xff"[next(8)];
                    }
                    1 => a.truncate(at),
                    2 => {
                        let t = TOKENS[next(TOKENS.len())];
                        a.splice(at..at, t.iter().copied());
                    }
                    3 => {
                        a.splice(at..at, std::iter::repeat_n(b'a', 20_000));
                    }
                    _ => {
                        let end = (at + next(16)).min(a.len());
                        let copy = a[at..end].to_vec();
                        a.splice(at..at, copy);
                    }
                }
            }
            answers.push((Box::leak(a.into_boxed_slice()), true));
        }
        let n = answers.len();
        let (base, _) = server(answers);
        for i in 0..n {
            // a 404 or an error is an answer too; a body must be within the limit
            if let Ok(Some(body)) = Http1::default().get(&format!("{base}/{i}"), 1024) {
                assert!(body.len() <= 1024, "answer {i}: {} bytes", body.len());
            }
        }
    }
}
