//! The technician's end: [`push`] a bundle to a device over any byte stream.

use crate::id::BundleId;
use crate::wire::{Command, Outcome, Refusal, Report, MAX_REPORT_FRAME};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// How to push.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Largest block to send; the device's MTU caps it further.
    pub block_len: u32,
    /// Consecutive replies without progress (resyncs, dropped frames) before giving up.
    pub max_stalls: u32,
    /// Longest wait the device may ask for before it begins a new transfer
    /// (`Refusal::RestartTooSoon`); a longer one is an error.
    pub max_restart_wait_ms: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            block_len: 1024,
            max_stalls: 8,
            max_restart_wait_ms: 120_000,
        }
    }
}

/// A finished push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub id: BundleId,
    /// The offset the device reported holding when this push began (0 for a fresh transfer).
    pub resumed_from: u32,
    /// Bundle bytes sent in `Write` blocks by this push.
    pub bytes_sent: u64,
    pub blocks: u32,
    /// Replies that moved the offset elsewhere than the next block (resyncs, restarts).
    pub resyncs: u32,
    /// Time spent waiting for the device to allow a new transfer (`Refusal::RestartTooSoon`).
    pub waited_ms: u64,
}

/// Why a push failed. Transport failures ([`Io`](PushError::Io), [`Closed`](PushError::Closed))
/// leave the device's progress in place: push again to resume.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("bundle of {len} bytes exceeds the link's 4 GiB limit")]
    BundleTooLarge { len: usize },
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("device closed the link")]
    Closed,
    #[error("device refused: {0}")]
    Refused(Refusal),
    #[error("device sent a reply longer than {max} bytes")]
    ReplyTooLong { max: usize },
    #[error("device sent a reply that is not a report")]
    BadReply,
    #[error("could not encode a command")]
    Encode,
    #[error("device reports offset {offset} past the bundle's end {len}")]
    OffsetPastEnd { offset: u32, len: u32 },
    #[error("no progress at offset {offset} after {stalls} replies")]
    Stalled { offset: u32, stalls: u32 },
    #[error("the line sent {bytes} bytes without one frame: is it the pump's port, in raw mode?")]
    Noise { bytes: usize },
}

/// Empty frames (bare `0x00` bytes) taken in a row before the line counts as noise: a frame is
/// never empty, and a line that only says zeros (an unplugged port, `/dev/zero`) would otherwise
/// be read for ever.
const MAX_EMPTY_FRAMES: usize = 4096;

/// Reads `0x00`-ended frames from a byte stream.
struct Frames<R> {
    reader: R,
    buf: Vec<u8>,
    /// empty frames since the last frame
    empty: usize,
}

impl<R: Read> Frames<R> {
    fn next(&mut self) -> Result<Vec<u8>, PushError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let mut frame: Vec<u8> = self.buf.drain(..=end).collect();
                frame.pop();
                if frame.is_empty() {
                    self.empty += 1;
                    if self.empty > MAX_EMPTY_FRAMES {
                        return Err(PushError::Noise { bytes: self.empty });
                    }
                    continue;
                }
                self.empty = 0;
                return Ok(frame);
            }
            if self.buf.len() > MAX_REPORT_FRAME {
                return Err(PushError::ReplyTooLong {
                    max: MAX_REPORT_FRAME,
                });
            }
            let mut chunk = [0u8; 256];
            let n = match self.reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(PushError::Closed)
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(PushError::Closed);
            }
            self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        }
    }
}

/// What the host needs from a report.
struct Reply {
    outcome: Outcome,
    mtu: Option<u32>,
    /// The device's next offset for **our** bundle (0 if it holds another or none).
    offset: u32,
    /// The command it answers (the device echoes it; `None` for a frame that was no command,
    /// and from devices that do not echo).
    correlation: Option<u32>,
}

fn decode_reply(mut frame: Vec<u8>, id: &[u8]) -> Result<Reply, PushError> {
    let report: Report<'_> =
        postcard::from_bytes_cobs(&mut frame).map_err(|_| PushError::BadReply)?;
    let offset = match &report.status.update {
        Some(update) if *update.version == *id => update.offset,
        _ => 0,
    };
    Ok(Reply {
        outcome: report.outcome,
        mtu: report.status.mtu,
        offset,
        correlation: report.status.correlation_id,
    })
}

fn send<W: Write>(writer: &mut W, command: &Command<'_>) -> Result<(), PushError> {
    let frame = postcard::to_allocvec_cobs(command).map_err(|_| PushError::Encode)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Replies read for one command before the line counts as out of step: stale answers come one
/// per frame the device saw, and a few at most follow a cut.
const MAX_STALE_REPLIES: u32 = 64;

/// Waits sent to open a session (each answered or refused as a bad frame) before giving up.
const MAX_OPENING_WAITS: u32 = 4;

/// Commands and their answers, matched by `correlation_id`. A device that echoes it (`strict`)
/// has every answer checked against the command sent: an answer to an earlier command (the
/// device answered a partial frame a lone `0x00` ended, or one our command was split into by
/// line noise) is passed over, never read as this command's. A device that does not echo (older
/// firmware) is read in order, as before.
struct Exchange<R, W> {
    frames: Frames<R>,
    writer: W,
    next: u32,
    strict: bool,
}

impl<R: Read, W: Write> Exchange<R, W> {
    fn id(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1);
        self.next
    }

    /// Open the session: a lone delimiter, then `Wait`s until the device answers one. Answers to
    /// frames that were no command (the partial frame the delimiter ended) are passed over; a
    /// `Wait` the line garbled is sent again.
    fn open(&mut self, bundle_id: &[u8]) -> Result<Reply, PushError> {
        // a lone delimiter ends whatever partial frame the device may hold from an earlier
        // session (the device answers that frame too: a bad frame, with no correlation id)
        self.writer.write_all(&[0])?;
        let first = self.next.wrapping_add(1);
        for _ in 0..MAX_OPENING_WAITS {
            let id = self.id();
            send(&mut self.writer, &Command::new_wait(None, Some(id)))?;
            for _ in 0..MAX_STALE_REPLIES {
                let reply = decode_reply(self.frames.next()?, bundle_id)?;
                match reply.correlation {
                    // an answer to one of our Waits (all ask the same)
                    Some(c) if c.wrapping_sub(first) <= id.wrapping_sub(first) => {
                        self.strict = true;
                        return Ok(reply);
                    }
                    Some(_) => continue,
                    // a frame that was no command: the partial one, or our Wait garbled
                    None if reply.outcome == Outcome::Refused(Refusal::BadFrame) => break,
                    // a device that does not echo: read in order from here on
                    None => return Ok(reply),
                }
            }
        }
        Err(PushError::BadReply)
    }

    /// Send the command `build` makes with a new correlation id; its answer.
    fn ask<'c>(
        &mut self,
        bundle_id: &[u8],
        build: impl FnOnce(Option<u32>) -> Command<'c>,
    ) -> Result<Reply, PushError> {
        let id = self.id();
        send(&mut self.writer, &build(Some(id)))?;
        if !self.strict {
            return decode_reply(self.frames.next()?, bundle_id);
        }
        for _ in 0..MAX_STALE_REPLIES {
            let reply = decode_reply(self.frames.next()?, bundle_id)?;
            match reply.correlation {
                Some(c) if c == id => return Ok(reply),
                // the bundle handed off, in answer to an earlier Swap (line noise made the host
                // send it again): the device's session is over, no later answer comes
                Some(_) if reply.outcome == Outcome::Complete => return Ok(reply),
                // an answer to an earlier command
                Some(_) => continue,
                // a frame that was no command: ours garbled on the line (or part of one): sent
                // again by the caller, under a new id, from the offset this report gives
                None => return Ok(reply),
            }
        }
        Err(PushError::BadReply)
    }
}

/// Push `bundle` to the device at the other end of `reader`/`writer`.
///
/// Asks the device's status, sends `Write` blocks of `min(device mtu, opts.block_len)` bytes from
/// the offset the device reports for this bundle (so a push after a dropped connection resends
/// nothing the device already holds), follows every re-reported offset, and ends with `Swap`.
/// Returns once the device reports the bundle complete and checksum-verified; installing it is
/// then the device agent's business (hale-core verifies it from the device's own root).
pub fn push<R: Read, W: Write>(
    bundle: &[u8],
    reader: R,
    mut writer: W,
    opts: &PushOptions,
) -> Result<Pushed, PushError> {
    let id = BundleId::of(bundle).ok_or(PushError::BundleTooLarge { len: bundle.len() })?;
    let wire_id = id.to_wire();
    let len = id.bundle_len();
    let checksum: [u8; 32] = Sha256::digest(bundle).into();
    let mut link = Exchange {
        frames: Frames {
            reader,
            buf: Vec::new(),
            empty: 0,
        },
        writer: &mut writer,
        // ids of this session start where another session's (a killed push whose answers are
        // still on the line) are unlikely to be
        next: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32)),
        strict: false,
    };
    let first = link.open(&wire_id)?;
    let block = first
        .mtu
        .unwrap_or(opts.block_len)
        .min(opts.block_len)
        .max(1);
    let mut offset = first.offset;
    let mut pushed = Pushed {
        id,
        resumed_from: offset,
        bytes_sent: 0,
        blocks: 0,
        resyncs: 0,
        waited_ms: 0,
    };
    let mut stalls = 0u32;
    loop {
        if offset > len {
            return Err(PushError::OffsetPastEnd { offset, len });
        }
        let reply = if offset == len {
            let reply = link.ask(&wire_id, |c| Command::new_swap(&wire_id, &checksum, c))?;
            if reply.outcome == Outcome::Complete {
                return Ok(pushed);
            }
            reply
        } else {
            let end = offset.saturating_add(block).min(len);
            let data = bundle
                .get(offset as usize..end as usize)
                .ok_or(PushError::OffsetPastEnd { offset, len })?;
            let reply = link.ask(&wire_id, |c| Command::new_write(&wire_id, offset, data, c))?;
            pushed.bytes_sent += data.len() as u64;
            pushed.blocks += 1;
            if reply.offset != end {
                pushed.resyncs += 1;
            }
            reply
        };
        match reply.outcome {
            // a frame lost or garbled on the line: resend from where the device is
            Outcome::Refused(Refusal::BadFrame) => {}
            // the device began another transfer moments ago: wait as it asks, then send again
            // (at most once: by then the wait is over)
            Outcome::Refused(Refusal::RestartTooSoon { wait_ms })
                if wait_ms <= opts.max_restart_wait_ms && pushed.waited_ms == 0 =>
            {
                std::thread::sleep(std::time::Duration::from_millis(u64::from(wait_ms) + 1));
                pushed.waited_ms += u64::from(wait_ms) + 1;
                continue;
            }
            Outcome::Refused(refusal) => return Err(PushError::Refused(refusal)),
            _ => {}
        }
        if reply.offset > offset {
            stalls = 0;
        } else {
            stalls += 1;
            if stalls > opts.max_stalls {
                return Err(PushError::Stalled { offset, stalls });
            }
        }
        offset = reply.offset;
    }
}

/// Bytes from a reader, read on a thread of their own so that a silent line ends the session: a
/// read that waits longer than the idle time fails with `TimedOut` ("no bytes for N s"). At most
/// four reads are held. Both ends use it: the pump (a silent technician frees the pump) and the
/// technician's tool (a pump that does not answer ends the push).
#[derive(Debug)]
pub struct IdleReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
    idle: Option<std::time::Duration>,
}

impl IdleReader {
    /// Read `reader` on a new thread; a read waits at most `idle`.
    pub fn spawn<R: Read + Send + 'static>(mut reader: R, idle: std::time::Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let sent = match reader.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(n) => tx.send(Ok(buf.get(..n).unwrap_or_default().to_vec())),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        IdleReader {
            rx,
            pending: Vec::new(),
            at: 0,
            idle: Some(idle),
        }
    }

    /// From now on, a read waits as long as it takes (`None`) or at most `idle`.
    pub fn set_idle(&mut self, idle: Option<std::time::Duration>) {
        self.idle = idle;
    }
}

impl Read for IdleReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::mpsc::RecvTimeoutError;
        if self.at >= self.pending.len() {
            let got = match self.idle {
                Some(idle) => self.rx.recv_timeout(idle),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match got {
                Ok(Ok(bytes)) if bytes.is_empty() => return Ok(0),
                Ok(Ok(bytes)) => {
                    self.pending = bytes;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no bytes for {} s", self.idle.unwrap_or_default().as_secs()),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let rest = self.pending.get(self.at..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}
