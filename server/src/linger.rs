//! Lingering close, as nginx's `lingering_close`.
//!
//! The server often answers before it has read a request's body: a bad token, a declared size
//! over the limit, a publish call on the wrong listener. hyper then closes the connection. If
//! the client is still sending, closing a socket with unread data makes the kernel send a
//! reset, and a reset throws away the answer waiting in the client's receive buffer: the
//! release engineer sees "connection reset" or "broken pipe" instead of "413 too_large".
//!
//! [`Lingering`] wraps an accepted connection. When the server closes it, it ends its own side
//! (FIN, after the answer) and then reads and drops what the client still sends until the
//! client closes, nothing arrives for [`LINGER_IDLE`], or [`LINGER_TOTAL`] has passed. Only then
//! is the socket dropped. Under TLS it sits beneath the TLS layer, so it drains the raw bytes
//! after `close_notify`.
//!
//! The idle time counts from the last bytes the client sent, not from the close: a keep-alive
//! connection closed after idling that long (at a timeout, or at shutdown) is dropped at once,
//! while one closed just after a request (the refused upload) lingers. Whether the server's last
//! read found data is no guide: hyper tries to read the rest of an unread body before it closes,
//! and finds nothing when the body has not arrived yet.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The longest a closing connection keeps reading: a client may not hold it open longer by
/// sending (the same bound as the graceful shutdown's wait).
pub const LINGER_TOTAL: Duration = Duration::from_secs(10);
/// A closing connection on which nothing arrives for this long is dropped.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);

/// An accepted connection that drains what the client still sends before it is dropped.
#[derive(Debug)]
pub struct Lingering<T> {
    io: T,
    /// When a read last returned data (`None`: never, or the client closed).
    last_data: Option<Instant>,
    closing: Option<Closing>,
    /// When bytes last went either way (the idle timeout's clock, [`Activity`]).
    activity: Activity,
}

/// When bytes last went either way on a connection: shared with the task that closes it once it
/// has been silent too long (see `http::ConnLimits`).
#[derive(Debug, Clone)]
pub struct Activity {
    opened: Instant,
    /// milliseconds from `opened` to the last bytes
    last_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: Default::default(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns once nothing has gone either way for `idle`.
    pub async fn silent_for(&self, idle: Duration) {
        loop {
            let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep_until(self.opened + Duration::from_millis(last) + idle).await;
            if self.last_ms.load(std::sync::atomic::Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

#[derive(Debug)]
struct Closing {
    /// `LINGER_TOTAL` after our side was closed.
    end: Instant,
    /// The next deadline: `LINGER_IDLE` after the client's last bytes, never after `end`.
    timer: Pin<Box<Sleep>>,
    /// The client closed, went quiet, failed or ran out of time: nothing more to read.
    done: bool,
}

impl<T> Lingering<T> {
    pub fn new(io: T) -> Self {
        Lingering {
            io,
            last_data: None,
            closing: None,
            activity: Activity::new(),
        }
    }

    /// When bytes last went either way on this connection.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.last_data = (buf.filled().len() > before).then(Instant::now);
            if self.last_data.is_some() {
                self.activity.touch();
            }
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.activity.touch();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.activity.touch();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Close our side, then read and drop until the client is done (see the module docs).
    /// Errors while draining end it quietly: the answer has been sent either way.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let closing = match &mut this.closing {
            Some(c) => c,
            None => {
                ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                let end = Instant::now() + LINGER_TOTAL;
                let idle_end = this.last_data.map_or(end, |t| (t + LINGER_IDLE).min(end));
                this.closing.insert(Closing {
                    end,
                    timer: Box::pin(tokio::time::sleep_until(idle_end)),
                    done: this.last_data.is_none(),
                })
            }
        };
        let mut scratch = [0u8; 8192];
        while !closing.done {
            if closing.timer.as_mut().poll(cx).is_ready() {
                closing.done = true;
                break;
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let next = (Instant::now() + LINGER_IDLE).min(closing.end);
                    closing.timer.as_mut().reset(next);
                }
                // end of stream (the client closed) or an error
                Poll::Ready(_) => closing.done = true,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (tokio::net::TcpStream, Lingering<tokio::net::TcpStream>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, Lingering::new(server))
    }

    /// The answer written before the close reaches a client that first sends 8 MiB the
    /// server never reads; without the drain, the client's writes fail with a reset.
    #[tokio::test]
    async fn an_answer_survives_a_body_the_server_did_not_read() {
        let (mut client, mut server) = pair().await;
        let sender = tokio::spawn(async move {
            let body = vec![1u8; 8 << 20];
            client.write_all(&body).await?;
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        });
        let mut head = [0u8; 1000];
        server.read_exact(&mut head).await.unwrap();
        server
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let answer = sender.await.unwrap().unwrap();
        assert_eq!(answer, b"HTTP/1.1 413 Payload Too Large\r\n\r\n");
    }

    /// A keep-alive connection closed after idling longer than `LINGER_IDLE` (a timeout, a
    /// shutdown) is dropped at once; one closed sooner lingers only what is left of it.
    #[tokio::test(start_paused = true)]
    async fn the_idle_time_counts_from_the_clients_last_bytes() {
        for (idle, lingers) in [
            (Duration::from_secs(3), Duration::ZERO),
            (
                Duration::from_millis(500),
                LINGER_IDLE - Duration::from_millis(500),
            ),
        ] {
            let (mut client, mut server) = pair().await;
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut request = [0u8; 18];
            server.read_exact(&mut request).await.unwrap();
            tokio::time::sleep(idle).await;
            let t0 = Instant::now();
            server.shutdown().await.unwrap();
            assert_eq!(t0.elapsed(), lingers, "idle {idle:?}");
        }
    }

    /// A connection on which the client never sent anything is dropped at once.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_received_closes_at_once() {
        let (_client, mut server) = pair().await;
        let t0 = Instant::now();
        server.shutdown().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    /// A client that was sending and then keeps its side open without sending more holds the
    /// closing connection for `LINGER_IDLE`, not longer.
    #[tokio::test(start_paused = true)]
    async fn a_client_gone_quiet_is_dropped_after_the_idle_time() {
        let (mut client, mut server) = pair().await;
        client.write_all(&[0u8; 4096]).await.unwrap();
        let mut some = [0u8; 100];
        server.read_exact(&mut some).await.unwrap();
        let t0 = Instant::now();
        server.shutdown().await.unwrap();
        assert_eq!(t0.elapsed(), LINGER_IDLE);
    }

    /// A client that never stops sending is dropped after `LINGER_TOTAL`.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_dropped_after_the_total_time() {
        let (mut client, mut server) = pair().await;
        client.write_all(&[0u8; 1024]).await.unwrap();
        let mut some = [0u8; 100];
        server.read_exact(&mut some).await.unwrap();
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            loop {
                if client.write_all(&[0u8; 1024]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        server.shutdown().await.unwrap();
        assert_eq!(t0.elapsed(), LINGER_TOTAL);
        drop(server);
        sender.await.unwrap();
    }
}
