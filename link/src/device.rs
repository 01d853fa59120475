//! The device end: a [`Receiver`] that takes blocks only in order, persists progress through a
//! [`BundleSink`], and hands a complete, checksum-verified bundle to the agent.
//!
//! The receiver does no I/O of its own: bytes from the serial port go in ([`Receiver::push`]),
//! one reply frame and an [`Event`] or typed [`Error`] come out. [`Receiver::serve`] is a thin
//! loop over an `embedded_io` port for agents that want one.
//!
//! What it guarantees whatever the host sends:
//! - memory stays bounded: a frame longer than `max_frame_len(mtu)` is dropped (up to the next
//!   `0x00`) without being decoded;
//! - nothing is written out of order: a block is stored only at exactly the offset the device
//!   expects (its persisted offset), and never past the bundle's declared length, which may not
//!   exceed `min(Config::max_bundle_len, sink capacity)`;
//! - nothing is handed off unless the SHA-256 of the whole **stored** bundle (read back from the
//!   sink) equals both `Swap`'s checksum and the bundle id; otherwise the transfer is discarded;
//! - a command that is refused changes nothing, except a checksum mismatch (discards the
//!   transfer) and a new bundle id (discards the old transfer, reported as `Event::Started`);
//! - the store is begun again (an erase on a NOR part) at most once per
//!   `Config::min_restart_interval_ms` of the receiver's clock: bundle ids that alternate at frame
//!   rate cannot wear it out (`Error::RestartTooSoon`). The first transfer of a new receiver
//!   begins at once unless the sink keeps the time of the last begin
//!   ([`BundleSink::last_begin_ms`]), which carries the bound across sessions.
//!
//! A `BundleComplete` bundle is still untrusted: the agent installs it through hale-core's
//! verified path (`hale_core::bundle::Bundle::parse`, then the trusted set from the device's own
//! root), exactly as an online update.

use crate::id::BundleId;
use crate::wire::{max_frame_len, Command, Outcome, Refusal, Report, Status, MAX_REPORT_FRAME};
use sha2::{Digest, Sha256};

pub use crate::wire::MAX_VERSION_LEN;

/// Durable storage for the bundle being received (a flash partition on a pump).
///
/// Contract (what makes resumption after a reset or a dropped cable safe): after `begin(id)`
/// returns, `persisted_id()` is `Some(id)` and `persisted_offset()` is 0; after
/// `write_at(offset, data)` returns `Ok`, the bytes are durable and `persisted_offset()` is
/// `offset + data.len()`. A power cut during a call may leave the old or the new state, never an
/// offset covering bytes that were not written.
pub trait BundleSink {
    type Error: core::fmt::Debug;
    /// Most bytes the store can hold.
    fn capacity(&self) -> u32;
    /// The bundle the store holds bytes of, if any.
    fn persisted_id(&mut self) -> Result<Option<BundleId>, Self::Error>;
    /// How many leading bytes of that bundle are durably stored.
    fn persisted_offset(&mut self) -> Result<u32, Self::Error>;
    /// Discard what is stored and start holding `id`, at offset 0. `at_ms` is the receiver's
    /// clock at this begin; a store that keeps it returns it from
    /// [`last_begin_ms`](Self::last_begin_ms).
    fn begin(&mut self, id: &BundleId, at_ms: u64) -> Result<(), Self::Error>;
    /// Append `data` at `offset`; the receiver only calls this with `offset ==
    /// persisted_offset()`.
    fn write_at(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
    /// Fill `buf` with the stored bytes at `offset` (read-back for the checksum).
    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Discard what is stored; afterwards `persisted_id()` is `None`.
    fn reset(&mut self) -> Result<(), Self::Error>;
    /// `at_ms` of the last [`begin`](Self::begin), if the store keeps it (durably, and through
    /// [`reset`](Self::reset)). A new receiver then holds its first transfer to the restart
    /// bound too, so the bound outlives a session (an agent started anew for every reconnect),
    /// as long as every receiver is given the same clock: a tick counter since boot on a
    /// device, the wall clock on a host. Default: not kept, and a new receiver's first
    /// transfer begins at once.
    fn last_begin_ms(&mut self) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
}

/// How the receiver presents itself and what it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Config<'v> {
    /// The running firmware's version, reported in every `Status` (at most [`MAX_VERSION_LEN`]).
    pub running_version: &'v [u8],
    /// Largest block the host may send.
    pub mtu: u32,
    /// Largest bundle accepted (further capped by the sink's capacity).
    pub max_bundle_len: u32,
    /// Least time between two transfers begun, by the clock given to
    /// [`Receiver::set_clock_ms`] (each begin discards the store: an erase on a NOR part), in
    /// this session, or across sessions when the sink keeps the last begin
    /// ([`BundleSink::last_begin_ms`]). 0: no bound (tests). [`DEFAULT_MIN_RESTART_INTERVAL_MS`]
    /// is what the pump uses.
    pub min_restart_interval_ms: u32,
}

/// The pump's least time between two transfers begun: 30 s. A technician who
/// started the wrong bundle waits at most that long; a rogue adapter gets at most 2,880 erases a
/// day instead of one a frame.
pub const DEFAULT_MIN_RESTART_INTERVAL_MS: u32 = 30_000;

/// What a handled command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A `Wait` or `Sync`: status reported, nothing changed.
    Status,
    /// A block was stored; `offset` is the next one expected.
    Stored { offset: u32 },
    /// A block at `received` was ignored; the device expects `expected`.
    Resync { expected: u32, received: u32 },
    /// A new transfer began; `replaced` is the one it discarded, `offset` the next expected.
    Started {
        id: BundleId,
        replaced: Option<BundleId>,
        offset: u32,
    },
    /// The whole bundle is stored and its SHA-256 checks out: install it from the sink through
    /// hale-core (it is still unverified), then call [`Receiver::discard`].
    BundleComplete { id: BundleId, len: u32 },
}

/// A frame or command the receiver refused, or a storage failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// Frame content longer than `max` bytes; dropped undecoded.
    FrameTooLong { len: usize, max: usize },
    /// Not a COBS-framed postcard `Command` (or bytes left over after one).
    Undecodable,
    /// `version` is not a bundle id.
    BadBundleId,
    /// The bundle's declared length exceeds what this device accepts.
    BundleTooLarge { declared: u32, max: u32 },
    /// A block larger than the MTU.
    BlockTooLarge { len: usize, mtu: u32 },
    /// A block ending past the bundle's declared length.
    PastEnd {
        offset: u32,
        len: usize,
        declared: u32,
    },
    /// `Swap` for a bundle other than the one being received.
    NotInProgress,
    /// `Swap` before the whole bundle is stored.
    Incomplete { offset: u32, declared: u32 },
    /// `Swap`'s checksum is not 32 bytes.
    ChecksumLength { len: usize },
    /// The stored bundle's SHA-256 (`computed`) is not `Swap`'s (`expected`) or does not start
    /// with the id's prefix. The transfer was discarded.
    ChecksumMismatch {
        expected: [u8; 32],
        computed: [u8; 32],
    },
    /// A new transfer within `Config::min_restart_interval_ms` of the last one begun; nothing
    /// changed. It can begin in `wait_ms`.
    RestartTooSoon { wait_ms: u32 },
    /// The configuration cannot work (checked by [`Receiver::new`]).
    Config { reason: &'static str },
    /// The sink failed.
    Sink(E),
}

impl<E> Error<E> {
    /// How the host hears about it.
    pub fn refusal(&self) -> Refusal {
        match self {
            Error::FrameTooLong { .. } | Error::Undecodable | Error::ChecksumLength { .. } => {
                Refusal::BadFrame
            }
            Error::BadBundleId => Refusal::BadBundleId,
            Error::BundleTooLarge { declared, max } => Refusal::BundleTooLarge {
                declared: *declared,
                max: *max,
            },
            Error::BlockTooLarge { len, mtu } => Refusal::BlockTooLarge {
                len: u32::try_from(*len).unwrap_or(u32::MAX),
                mtu: *mtu,
            },
            Error::PastEnd {
                offset,
                len,
                declared,
            } => Refusal::PastEnd {
                offset: *offset,
                len: u32::try_from(*len).unwrap_or(u32::MAX),
                declared: *declared,
            },
            Error::NotInProgress => Refusal::NotInProgress,
            Error::Incomplete { offset, declared } => Refusal::Incomplete {
                offset: *offset,
                declared: *declared,
            },
            Error::ChecksumMismatch { .. } => Refusal::ChecksumMismatch,
            Error::RestartTooSoon { wait_ms } => Refusal::RestartTooSoon { wait_ms: *wait_ms },
            Error::Config { .. } | Error::Sink(_) => Refusal::Storage,
        }
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds {max}; dropped")
            }
            Error::Undecodable => write!(f, "frame is not a link command"),
            Error::ChecksumLength { len } => write!(f, "checksum of {len} bytes, not 32"),
            Error::ChecksumMismatch { .. } => write!(
                f,
                "stored bundle does not match the swap checksum; transfer discarded"
            ),
            Error::Config { reason } => write!(f, "link configuration: {reason}"),
            Error::Sink(e) => write!(f, "bundle storage: {e:?}"),
            other => write!(f, "{}", other.refusal()),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug> std::error::Error for Error<E> {}

/// The result of one frame: what it did, and the report frame to send back (COBS-encoded with
/// its delimiter; empty only if encoding failed, which the bounds in `wire` rule out).
#[derive(Debug)]
pub struct Handled<'r, E> {
    pub outcome: Result<Event, Error<E>>,
    pub reply: &'r [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transfer {
    id: BundleId,
    offset: u32,
}

#[derive(Debug)]
struct Core<S> {
    sink: S,
    version: [u8; MAX_VERSION_LEN],
    version_len: usize,
    mtu: u32,
    max_bundle_len: u32,
    transfer: Option<Transfer>,
    reply: [u8; MAX_REPORT_FRAME],
    min_restart_interval_ms: u32,
    /// the receiver's clock (milliseconds, monotonic), as last set
    now_ms: u64,
    /// when a transfer last began: by this receiver, or as the sink kept it
    last_begin_ms: Option<u64>,
    /// The `correlation_id` of the command being answered, echoed in its report (`None` for a
    /// frame that is not a command): a host that lost sync tells a stale answer from its own.
    correlation: Option<u32>,
}

/// The device's end of the link. `N` is the frame buffer: at least `max_frame_len(mtu) - 1`.
#[derive(Debug)]
pub struct Receiver<S, const N: usize> {
    core: Core<S>,
    frame: [u8; N],
    /// Frame content accepted into `frame` (never above `frame_limit`).
    len: usize,
    /// Bytes of the current frame dropped because it is too long.
    dropped: usize,
    frame_limit: usize,
}

/// Why [`Receiver::serve`] stopped without a complete bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError<P> {
    /// The port failed.
    Port(P),
    /// The port reached its end (the host closed the link).
    Closed,
    /// The port sent [`Receiver::noise_limit`] bytes in a row without one command: empty frames,
    /// frames that do not decode or are too long, or bytes that never end a frame (a line that
    /// only says zeros, a floating input, the wrong baud rate). No host sends that; without this
    /// bound the session would never end, as bytes keep the port from going idle.
    Noise { bytes: u32 },
}

/// Bytes [`Receiver::serve`] takes in a row without a command before it ends the session
/// ([`ServeError::Noise`]): 64 KiB, or 16 of the largest frames the receiver takes when that is
/// more ([`Receiver::noise_limit`]).
pub const MAX_NOISE_BYTES: u32 = 64 << 10;

/// Read the sink's progress: `None` unless it names a bundle this receiver accepts and an offset
/// within it.
fn load<S: BundleSink>(sink: &mut S, max_bundle_len: u32) -> Result<Option<Transfer>, S::Error> {
    let Some(id) = sink.persisted_id()? else {
        return Ok(None);
    };
    let offset = sink.persisted_offset()?;
    if id.bundle_len() > max_bundle_len || offset > id.bundle_len() {
        sink.reset()?;
        return Ok(None);
    }
    Ok(Some(Transfer { id, offset }))
}

impl<S: BundleSink, const N: usize> Receiver<S, N> {
    /// A receiver resuming whatever transfer `sink` holds.
    pub fn new(mut sink: S, config: Config<'_>) -> Result<Self, Error<S::Error>> {
        if config.running_version.len() > MAX_VERSION_LEN {
            return Err(Error::Config {
                reason: "running version longer than MAX_VERSION_LEN",
            });
        }
        if config.mtu == 0 {
            return Err(Error::Config {
                reason: "mtu is zero",
            });
        }
        let frame_limit = max_frame_len(config.mtu).saturating_sub(1);
        if N < frame_limit {
            return Err(Error::Config {
                reason: "frame buffer smaller than max_frame_len(mtu) - 1",
            });
        }
        let max_bundle_len = config.max_bundle_len.min(sink.capacity());
        let transfer = load(&mut sink, max_bundle_len).map_err(Error::Sink)?;
        let last_begin_ms = sink.last_begin_ms().map_err(Error::Sink)?;
        let mut version = [0u8; MAX_VERSION_LEN];
        for (d, s) in version.iter_mut().zip(config.running_version) {
            *d = *s;
        }
        Ok(Self {
            core: Core {
                sink,
                version,
                version_len: config.running_version.len(),
                mtu: config.mtu,
                max_bundle_len,
                transfer,
                reply: [0; MAX_REPORT_FRAME],
                min_restart_interval_ms: config.min_restart_interval_ms,
                now_ms: 0,
                last_begin_ms,
                correlation: None,
            },
            frame: [0; N],
            len: 0,
            dropped: 0,
            frame_limit,
        })
    }

    /// The receiver's clock: milliseconds from any fixed point, never going back (a tick
    /// counter). What [`push`](Self::push) compares restarts against.
    pub fn set_clock_ms(&mut self, now_ms: u64) {
        self.core.now_ms = now_ms;
    }

    /// Feed one byte from the port. At the end of a frame returns what it did and the reply to
    /// write back; `None` while a frame is incomplete (and for empty frames, which hosts send to
    /// resynchronise).
    pub fn push(&mut self, byte: u8) -> Option<Handled<'_, S::Error>> {
        if byte != 0 {
            match self.frame.get_mut(self.len) {
                Some(slot) if self.len < self.frame_limit && self.dropped == 0 => {
                    *slot = byte;
                    self.len += 1;
                }
                _ => self.dropped = self.dropped.saturating_add(1),
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        let dropped = core::mem::take(&mut self.dropped);
        if len == 0 && dropped == 0 {
            return None;
        }
        self.core.correlation = None;
        let outcome = if dropped > 0 {
            Err(Error::FrameTooLong {
                len: len.saturating_add(dropped),
                max: self.frame_limit,
            })
        } else {
            match self.frame.get_mut(..len) {
                Some(frame) => self.core.handle_frame(frame),
                None => Err(Error::Undecodable),
            }
        };
        let reply = self.core.report(&outcome);
        Some(Handled { outcome, reply })
    }

    /// Serve `port` until a bundle is complete (returns `BundleComplete`'s id and length), the
    /// port ends, it fails, or it sends only noise ([`ServeError::Noise`]). `clock` is read after every read from the port
    /// ([`set_clock_ms`](Self::set_clock_ms)); `on_event` sees every frame's outcome (for the
    /// agent's log).
    pub fn serve<P>(
        &mut self,
        port: &mut P,
        mut clock: impl FnMut() -> u64,
        mut on_event: impl FnMut(&Result<Event, Error<S::Error>>),
    ) -> Result<(BundleId, u32), ServeError<P::Error>>
    where
        P: embedded_io::Read + embedded_io::Write,
    {
        let mut buf = [0u8; 64];
        // bytes since the last frame that decoded to a command
        let (mut noise, limit) = (0u32, self.noise_limit());
        loop {
            let n = port.read(&mut buf).map_err(ServeError::Port)?;
            if n == 0 {
                return Err(ServeError::Closed);
            }
            self.set_clock_ms(clock());
            for byte in buf.iter().take(n) {
                noise = noise.saturating_add(1);
                if let Some(handled) = self.push(*byte) {
                    port.write_all(handled.reply).map_err(ServeError::Port)?;
                    port.flush().map_err(ServeError::Port)?;
                    on_event(&handled.outcome);
                    match handled.outcome {
                        Ok(Event::BundleComplete { id, len }) => return Ok((id, len)),
                        Err(Error::Undecodable | Error::FrameTooLong { .. }) => {}
                        _ => noise = 0,
                    }
                }
                if noise >= limit {
                    return Err(ServeError::Noise { bytes: noise });
                }
            }
        }
    }

    /// Bytes in a row without a command that end [`serve`](Self::serve)'s session:
    /// [`MAX_NOISE_BYTES`], or 16 of the largest frames this receiver takes when that is more.
    pub fn noise_limit(&self) -> u32 {
        let frames = u32::try_from(self.frame_limit.saturating_add(1)).unwrap_or(u32::MAX);
        MAX_NOISE_BYTES.max(frames.saturating_mul(16))
    }

    /// The transfer in progress and the next offset expected.
    pub fn transfer(&self) -> Option<(BundleId, u32)> {
        self.core.transfer.map(|t| (t.id, t.offset))
    }

    /// Largest bundle accepted: `min(Config::max_bundle_len, sink capacity)`.
    pub fn max_bundle_len(&self) -> u32 {
        self.core.max_bundle_len
    }

    /// Discard the stored bundle (after installing it, or to abandon a transfer).
    pub fn discard(&mut self) -> Result<(), Error<S::Error>> {
        self.core.transfer = None;
        self.core.sink.reset().map_err(Error::Sink)
    }

    /// The sink, to read a complete bundle back for installation.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.core.sink
    }

    pub fn sink(&self) -> &S {
        &self.core.sink
    }

    pub fn into_sink(self) -> S {
        self.core.sink
    }
}

impl<S: BundleSink> Core<S> {
    fn handle_frame(&mut self, frame: &mut [u8]) -> Result<Event, Error<S::Error>> {
        let len = frame.len();
        let report = cobs::decode_in_place_report(frame).map_err(|_| Error::Undecodable)?;
        if report.src_used != len {
            return Err(Error::Undecodable);
        }
        let decoded = frame.get(..report.dst_used).ok_or(Error::Undecodable)?;
        let (command, rest) =
            postcard::take_from_bytes::<Command<'_>>(decoded).map_err(|_| Error::Undecodable)?;
        if !rest.is_empty() {
            return Err(Error::Undecodable);
        }
        self.correlation = match &command {
            Command::Wait { correlation_id, .. }
            | Command::Sync { correlation_id, .. }
            | Command::Write { correlation_id, .. }
            | Command::Swap { correlation_id, .. } => *correlation_id,
        };
        match command {
            Command::Wait { .. } | Command::Sync { .. } => Ok(Event::Status),
            Command::Write {
                version,
                offset,
                data,
                ..
            } => self.write(&version, offset, &data),
            Command::Swap {
                version, checksum, ..
            } => self.swap(&version, &checksum),
        }
    }

    fn write(
        &mut self,
        version: &[u8],
        offset: u32,
        data: &[u8],
    ) -> Result<Event, Error<S::Error>> {
        // Checks that need no state first: a refused block changes nothing.
        let id = BundleId::from_wire(version).ok_or(Error::BadBundleId)?;
        let declared = id.bundle_len();
        if declared > self.max_bundle_len {
            return Err(Error::BundleTooLarge {
                declared,
                max: self.max_bundle_len,
            });
        }
        if data.len() > self.mtu as usize {
            return Err(Error::BlockTooLarge {
                len: data.len(),
                mtu: self.mtu,
            });
        }
        let end = u32::try_from(data.len())
            .ok()
            .and_then(|n| offset.checked_add(n))
            .filter(|end| *end <= declared)
            .ok_or(Error::PastEnd {
                offset,
                len: data.len(),
                declared,
            })?;

        let mut started = None;
        let expected = match self.transfer {
            Some(t) if t.id == id => t.offset,
            previous => {
                // each begin discards the store: at most one per interval (a refusal changes
                // nothing). A last begin after now is from a clock that started again (a
                // reboot, a wall clock set back): it bounds nothing.
                if let Some(last) = self.last_begin_ms.filter(|l| *l <= self.now_ms) {
                    let since = self.now_ms.saturating_sub(last);
                    let min = u64::from(self.min_restart_interval_ms);
                    if since < min {
                        return Err(Error::RestartTooSoon {
                            wait_ms: u32::try_from(min - since).unwrap_or(u32::MAX),
                        });
                    }
                }
                self.last_begin_ms = Some(self.now_ms);
                self.transfer = None;
                self.sink.begin(&id, self.now_ms).map_err(Error::Sink)?;
                self.transfer = Some(Transfer { id, offset: 0 });
                started = Some(previous.map(|t| t.id));
                0
            }
        };
        if offset != expected {
            return Ok(match started {
                Some(replaced) => Event::Started {
                    id,
                    replaced,
                    offset: expected,
                },
                None => Event::Resync {
                    expected,
                    received: offset,
                },
            });
        }
        if !data.is_empty() {
            if let Err(e) = self.sink.write_at(offset, data) {
                // The sink knows how far it got; believe it, or start over.
                let max = self.max_bundle_len;
                self.transfer = load(&mut self.sink, max).ok().flatten();
                return Err(Error::Sink(e));
            }
        }
        self.transfer = Some(Transfer { id, offset: end });
        Ok(match started {
            Some(replaced) => Event::Started {
                id,
                replaced,
                offset: end,
            },
            None => Event::Stored { offset: end },
        })
    }

    fn swap(&mut self, version: &[u8], checksum: &[u8]) -> Result<Event, Error<S::Error>> {
        let id = BundleId::from_wire(version).ok_or(Error::BadBundleId)?;
        let transfer = self
            .transfer
            .filter(|t| t.id == id)
            .ok_or(Error::NotInProgress)?;
        let declared = id.bundle_len();
        if transfer.offset != declared {
            return Err(Error::Incomplete {
                offset: transfer.offset,
                declared,
            });
        }
        let expected: [u8; 32] = checksum.try_into().map_err(|_| Error::ChecksumLength {
            len: checksum.len(),
        })?;
        let computed = self.stored_sha256(declared)?;
        if computed != expected || !id.matches_digest(&computed) {
            self.transfer = None;
            self.sink.reset().map_err(Error::Sink)?;
            return Err(Error::ChecksumMismatch { expected, computed });
        }
        Ok(Event::BundleComplete { id, len: declared })
    }

    /// SHA-256 of the first `len` stored bytes, streamed through the sink's read-back.
    fn stored_sha256(&mut self, len: u32) -> Result<[u8; 32], Error<S::Error>> {
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 256];
        let mut offset = 0u32;
        while offset < len {
            let n = (len - offset).min(buf.len() as u32);
            let chunk = buf.get_mut(..n as usize).ok_or(Error::Undecodable)?;
            self.sink.read_at(offset, chunk).map_err(Error::Sink)?;
            hasher.update(&*chunk);
            offset += n;
        }
        Ok(hasher.finalize().into())
    }

    fn report(&mut self, outcome: &Result<Event, Error<S::Error>>) -> &[u8] {
        let outcome = match outcome {
            Ok(Event::Status) => Outcome::Status,
            Ok(Event::Stored { .. }) => Outcome::Stored,
            Ok(Event::Resync { .. }) => Outcome::Resync,
            Ok(Event::Started { .. }) => Outcome::Started,
            Ok(Event::BundleComplete { .. }) => Outcome::Complete,
            Err(e) => Outcome::Refused(e.refusal()),
        };
        let version = self.version.get(..self.version_len).unwrap_or(&[]);
        let wire_id;
        let status = match self.transfer {
            Some(t) => {
                wire_id = t.id.to_wire();
                Status::update(
                    version,
                    Some(self.mtu),
                    t.offset,
                    &wire_id,
                    self.correlation,
                )
            }
            None => Status::first(version, Some(self.mtu), self.correlation),
        };
        match postcard::to_slice_cobs(&Report { status, outcome }, &mut self.reply) {
            Ok(frame) => frame,
            Err(_) => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Refusal;

    const MTU: u32 = 16;
    const N: usize = max_frame_len(MTU);

    /// A 256-byte store whose `write_at` can be made to fail.
    #[derive(Debug)]
    struct ArraySink {
        data: [u8; 256],
        id: Option<BundleId>,
        offset: u32,
        fail_writes: bool,
        /// whether it keeps the last begin (`last_begin_ms`), and what it kept
        keeps_begin: bool,
        begun: Option<u64>,
    }

    impl ArraySink {
        fn empty() -> Self {
            Self {
                data: [0; 256],
                id: None,
                offset: 0,
                fail_writes: false,
                keeps_begin: false,
                begun: None,
            }
        }
    }

    impl BundleSink for ArraySink {
        type Error = &'static str;
        fn capacity(&self) -> u32 {
            256
        }
        fn persisted_id(&mut self) -> Result<Option<BundleId>, Self::Error> {
            Ok(self.id)
        }
        fn persisted_offset(&mut self) -> Result<u32, Self::Error> {
            Ok(self.offset)
        }
        fn begin(&mut self, id: &BundleId, at_ms: u64) -> Result<(), Self::Error> {
            self.id = Some(*id);
            self.offset = 0;
            self.begun = self.keeps_begin.then_some(at_ms);
            Ok(())
        }
        fn write_at(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
            if self.fail_writes {
                return Err("flash write failed");
            }
            let o = offset as usize;
            self.data[o..o + data.len()].copy_from_slice(data);
            self.offset = offset + data.len() as u32;
            Ok(())
        }
        fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
            let o = offset as usize;
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }
        fn reset(&mut self) -> Result<(), Self::Error> {
            self.id = None;
            self.offset = 0;
            Ok(())
        }
        fn last_begin_ms(&mut self) -> Result<Option<u64>, Self::Error> {
            Ok(self.begun)
        }
    }

    fn config() -> Config<'static> {
        Config {
            running_version: b"4.1.0",
            mtu: MTU,
            max_bundle_len: 200,
            min_restart_interval_ms: 0,
        }
    }

    /// Feed a command's frame byte by byte; return the outcome of the frame.
    fn feed(
        rx: &mut Receiver<ArraySink, N>,
        cmd: &Command<'_>,
    ) -> Result<Event, Error<&'static str>> {
        let mut buf = [0u8; N];
        let frame = postcard::to_slice_cobs(cmd, &mut buf).unwrap();
        let (last, body) = frame.split_last().unwrap();
        for b in body {
            assert!(rx.push(*b).is_none());
        }
        let handled = rx.push(*last).unwrap();
        assert!(!handled.reply.is_empty());
        handled.outcome
    }

    #[test]
    fn resumes_the_transfer_the_sink_holds() {
        let id = BundleId::from_digest(&[7; 32], 100);
        let mut sink = ArraySink::empty();
        sink.id = Some(id);
        sink.offset = 48;
        let rx = Receiver::<_, N>::new(sink, config()).unwrap();
        assert_eq!(rx.transfer(), Some((id, 48)));
    }

    #[test]
    fn discards_progress_past_the_declared_end_or_the_maximum() {
        for (len, offset) in [(100u32, 101u32), (201, 0)] {
            let mut sink = ArraySink::empty();
            sink.id = Some(BundleId::from_digest(&[7; 32], len));
            sink.offset = offset;
            let rx = Receiver::<_, N>::new(sink, config()).unwrap();
            assert_eq!(rx.transfer(), None);
            assert_eq!(rx.sink().id, None);
        }
    }

    #[test]
    fn a_failed_write_keeps_the_offset_the_sink_reports() {
        let data = [0x5au8; 40];
        let id = BundleId::of(&data).unwrap();
        let wire = id.to_wire();
        let mut rx = Receiver::<_, N>::new(ArraySink::empty(), config()).unwrap();
        assert!(feed(&mut rx, &Command::new_write(&wire, 0, &data[..16], None)).is_ok());
        rx.sink_mut().fail_writes = true;
        let outcome = feed(&mut rx, &Command::new_write(&wire, 16, &data[16..32], None));
        assert_eq!(outcome, Err(Error::Sink("flash write failed")));
        assert_eq!(outcome.unwrap_err().refusal(), Refusal::Storage);
        assert_eq!(rx.transfer(), Some((id, 16)));
        rx.sink_mut().fail_writes = false;
        assert_eq!(
            feed(&mut rx, &Command::new_write(&wire, 16, &data[16..32], None)),
            Ok(Event::Stored { offset: 32 })
        );
    }

    #[test]
    fn swap_hands_off_only_a_complete_matching_bundle() {
        let data = [0x11u8; 20];
        let id = BundleId::of(&data).unwrap();
        let wire = id.to_wire();
        let sha: [u8; 32] = Sha256::digest(data).into();
        let mut rx = Receiver::<_, N>::new(ArraySink::empty(), config()).unwrap();
        let other = BundleId::of(b"other").unwrap().to_wire();
        assert_eq!(
            feed(&mut rx, &Command::new_swap(&other, &sha, None)),
            Err(Error::NotInProgress)
        );
        feed(&mut rx, &Command::new_write(&wire, 0, &data[..16], None)).unwrap();
        feed(&mut rx, &Command::new_write(&wire, 16, &data[16..], None)).unwrap();
        assert_eq!(
            feed(&mut rx, &Command::new_swap(&wire, &sha[..31], None)),
            Err(Error::ChecksumLength { len: 31 })
        );
        assert_eq!(
            feed(&mut rx, &Command::new_swap(&wire, &sha, None)),
            Ok(Event::BundleComplete { id, len: 20 })
        );
        // a lost reply: the host swaps again and gets the same answer
        assert_eq!(
            feed(&mut rx, &Command::new_swap(&wire, &sha, None)),
            Ok(Event::BundleComplete { id, len: 20 })
        );
        rx.discard().unwrap();
        assert_eq!(rx.transfer(), None);
    }

    /// Two one-byte bundles (content, id, id on the wire) for the restart tests, and a
    /// configuration that allows a restart every second.
    type OneByte = ([u8; 1], BundleId, [u8; BundleId::WIRE_LEN]);
    fn restart_setup() -> (OneByte, OneByte, Config<'static>) {
        let bundle = |byte: u8| {
            let id = BundleId::of(&[byte]).unwrap();
            ([byte], id, id.to_wire())
        };
        let config = Config {
            min_restart_interval_ms: 1000,
            ..config()
        };
        (bundle(0xa1), bundle(0xb2), config)
    }

    /// The whole one-byte bundle `data` named `w`, in one block.
    fn write(
        rx: &mut Receiver<ArraySink, N>,
        w: &[u8],
        data: &[u8],
    ) -> Result<Event, Error<&'static str>> {
        feed(rx, &Command::new_write(w, 0, data, None))
    }

    #[test]
    fn a_transfer_begins_at_most_once_per_interval_the_first_of_a_session_at_once() {
        let ((a, ida, wa), (b, idb, wb), config) = restart_setup();
        let mut rx = Receiver::<_, N>::new(ArraySink::empty(), config).unwrap();
        rx.set_clock_ms(5_000);
        assert_eq!(
            write(&mut rx, &wa, &a),
            Ok(Event::Started {
                id: ida,
                replaced: None,
                offset: 1
            })
        );
        // another bundle 400 ms later: refused, nothing changed
        rx.set_clock_ms(5_400);
        let refused = write(&mut rx, &wb, &b);
        assert_eq!(refused, Err(Error::RestartTooSoon { wait_ms: 600 }));
        assert_eq!(
            refused.unwrap_err().refusal(),
            Refusal::RestartTooSoon { wait_ms: 600 }
        );
        assert_eq!(rx.transfer(), Some((ida, 1)));
        assert_eq!((rx.sink().id, rx.sink().offset), (Some(ida), 1));
        // the same bundle goes on meanwhile
        assert_eq!(
            feed(&mut rx, &Command::new_sync(&wa, None, None)),
            Ok(Event::Status)
        );
        // a tiny bundle swapped with a wrong checksum discards the store, and the next
        // transfer still waits for the interval: no loop of begin and discard at frame rate
        rx.set_clock_ms(6_000);
        assert_eq!(
            write(&mut rx, &wb, &b),
            Ok(Event::Started {
                id: idb,
                replaced: Some(ida),
                offset: 1
            })
        );
        assert!(matches!(
            feed(&mut rx, &Command::new_swap(&wb, &[0; 32], None)),
            Err(Error::ChecksumMismatch { .. })
        ));
        assert_eq!(rx.transfer(), None);
        rx.set_clock_ms(6_999);
        assert_eq!(
            write(&mut rx, &wa, &a),
            Err(Error::RestartTooSoon { wait_ms: 1 })
        );
        assert_eq!((rx.transfer(), rx.sink().id), (None, None));
        rx.set_clock_ms(7_000);
        assert!(matches!(
            write(&mut rx, &wa, &a),
            Ok(Event::Started { id, .. }) if id == ida
        ));
        // a new session (the agent restarted): its first transfer begins at once
        let mut rx = Receiver::<_, N>::new(rx.into_sink(), config).unwrap();
        rx.set_clock_ms(10);
        assert!(matches!(
            write(&mut rx, &wb, &b),
            Ok(Event::Started { id, replaced: Some(r), .. }) if id == idb && r == ida
        ));
    }

    #[test]
    fn a_sink_that_keeps_the_last_begin_holds_a_new_session_to_the_interval() {
        let ((a, ida, wa), (b, idb, wb), config) = restart_setup();
        let sink = ArraySink {
            keeps_begin: true,
            ..ArraySink::empty()
        };
        let mut rx = Receiver::<_, N>::new(sink, config).unwrap();
        rx.set_clock_ms(5_000);
        assert!(matches!(write(&mut rx, &wa, &a), Ok(Event::Started { .. })));
        assert_eq!(rx.sink().begun, Some(5_000));
        // a new session on the same clock 300 ms later (the agent started again for a
        // reconnect): the kept begin holds it to the interval, and the refusal changes nothing
        let mut rx = Receiver::<_, N>::new(rx.into_sink(), config).unwrap();
        rx.set_clock_ms(5_300);
        assert_eq!(
            write(&mut rx, &wb, &b),
            Err(Error::RestartTooSoon { wait_ms: 700 })
        );
        assert_eq!(rx.transfer(), Some((ida, 1)));
        assert_eq!(
            (rx.sink().id, rx.sink().offset, rx.sink().begun),
            (Some(ida), 1, Some(5_000))
        );
        // the discard of a bad swap does not forget it
        assert!(matches!(
            feed(&mut rx, &Command::new_swap(&wa, &[0; 32], None)),
            Err(Error::ChecksumMismatch { .. })
        ));
        let mut rx = Receiver::<_, N>::new(rx.into_sink(), config).unwrap();
        rx.set_clock_ms(5_999);
        assert_eq!(
            write(&mut rx, &wb, &b),
            Err(Error::RestartTooSoon { wait_ms: 1 })
        );
        rx.set_clock_ms(6_000);
        assert!(matches!(
            write(&mut rx, &wb, &b),
            Ok(Event::Started { id, .. }) if id == idb
        ));
        assert_eq!(rx.sink().begun, Some(6_000));
        // a clock that started again (a reboot): the kept begin is after now and bounds nothing
        let mut rx = Receiver::<_, N>::new(rx.into_sink(), config).unwrap();
        rx.set_clock_ms(40);
        assert!(matches!(
            write(&mut rx, &wa, &a),
            Ok(Event::Started { id, .. }) if id == ida
        ));
        assert_eq!(rx.sink().begun, Some(40));
    }

    #[test]
    fn empty_frames_are_ignored_and_the_config_is_checked() {
        let mut rx = Receiver::<_, N>::new(ArraySink::empty(), config()).unwrap();
        assert!(rx.push(0).is_none());
        assert!(rx.push(0).is_none());
        let long = Config {
            running_version: &[1; MAX_VERSION_LEN + 1],
            ..config()
        };
        assert!(matches!(
            Receiver::<_, N>::new(ArraySink::empty(), long),
            Err(Error::Config { .. })
        ));
        let zero = Config { mtu: 0, ..config() };
        assert!(matches!(
            Receiver::<_, N>::new(ArraySink::empty(), zero),
            Err(Error::Config { .. })
        ));
    }
}
