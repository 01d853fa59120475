//! The link over real byte streams: a Unix socket pair, one thread per end.

// The harness helpers below are not `#[test]` functions, so clippy.toml's allow-unwrap-in-tests
// does not reach them; the same reasoning applies (a panic here is a failing test).
#![allow(clippy::unwrap_used)]

use hale_core::bundle::Bundle;
use hale_link::device::{
    BundleSink, Config, Error, Event, Receiver, ServeError, DEFAULT_MIN_RESTART_INTERVAL_MS,
};
use hale_link::host::{push, PushError, PushOptions, Pushed};
use hale_link::wire::{max_frame_len, Command, Outcome, Refusal, Report};
use hale_link::BundleId;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

const MTU: u32 = 256;
const FRAME: usize = max_frame_len(MTU);
const RUNNING: &[u8] = b"pump-a 4.1.0";

// ---------------------------------------------------------------- device side

#[derive(Debug, Clone, PartialEq, Eq)]
struct SinkFault;

/// A bundle store in RAM that logs every call the receiver makes.
#[derive(Debug, Default)]
struct VecSink {
    capacity: u32,
    data: Vec<u8>,
    id: Option<BundleId>,
    begins: Vec<BundleId>,
    writes: Vec<(u32, usize)>,
}

impl VecSink {
    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }
}

impl BundleSink for VecSink {
    type Error = SinkFault;
    fn capacity(&self) -> u32 {
        self.capacity
    }
    fn persisted_id(&mut self) -> Result<Option<BundleId>, SinkFault> {
        Ok(self.id)
    }
    fn persisted_offset(&mut self) -> Result<u32, SinkFault> {
        Ok(self.data.len() as u32)
    }
    fn begin(&mut self, id: &BundleId, _at_ms: u64) -> Result<(), SinkFault> {
        self.data.clear();
        self.id = Some(*id);
        self.begins.push(*id);
        Ok(())
    }
    fn write_at(&mut self, offset: u32, data: &[u8]) -> Result<(), SinkFault> {
        // the receiver promises to append only
        assert_eq!(offset as usize, self.data.len(), "write out of order");
        assert!(self.data.len() + data.len() <= self.capacity as usize);
        self.data.extend_from_slice(data);
        self.writes.push((offset, data.len()));
        Ok(())
    }
    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), SinkFault> {
        let o = offset as usize;
        buf.copy_from_slice(self.data.get(o..o + buf.len()).ok_or(SinkFault)?);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), SinkFault> {
        self.data.clear();
        self.id = None;
        Ok(())
    }
}

/// `embedded_io` over a std stream, as a serial driver would provide.
struct Port(UnixStream);

impl embedded_io::ErrorType for Port {
    type Error = std::io::Error;
}
impl embedded_io::Read for Port {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        self.0.read(buf)
    }
}
impl embedded_io::Write for Port {
    fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> Result<(), std::io::Error> {
        self.0.flush()
    }
}

type Outcomes = Vec<Result<Event, Error<SinkFault>>>;

struct DeviceRun {
    sink: VecSink,
    result: Result<(BundleId, u32), ServeError<std::io::Error>>,
    events: Outcomes,
}

/// Boot a device (a receiver resuming from `sink`) on `stream` and serve until done.
fn spawn_device(sink: VecSink, max_bundle_len: u32, stream: UnixStream) -> JoinHandle<DeviceRun> {
    spawn_device_with(
        sink,
        max_bundle_len,
        stream,
        DEFAULT_MIN_RESTART_INTERVAL_MS,
    )
}

/// [`spawn_device`] with another least time between two transfers begun.
fn spawn_device_with(
    sink: VecSink,
    max_bundle_len: u32,
    stream: UnixStream,
    min_restart_interval_ms: u32,
) -> JoinHandle<DeviceRun> {
    thread::spawn(move || {
        let config = Config {
            running_version: RUNNING,
            mtu: MTU,
            max_bundle_len,
            min_restart_interval_ms,
        };
        let mut receiver = Receiver::<_, FRAME>::new(sink, config).unwrap();
        let mut events = Vec::new();
        let start = std::time::Instant::now();
        let clock = || start.elapsed().as_millis() as u64;
        let result = receiver.serve(&mut Port(stream), clock, |e| events.push(e.clone()));
        DeviceRun {
            sink: receiver.into_sink(),
            result,
            events,
        }
    })
}

// ---------------------------------------------------------------- host side

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Wait,
    Write { offset: u32, len: usize },
    Swap,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    /// flip the last data byte of a `Write`
    Corrupt,
    /// drop the connection instead of sending this frame
    Cut,
}

/// The host's writer, seen frame by frame: logs each command and may corrupt it or cut the line.
struct Line<F> {
    inner: UnixStream,
    pending: Vec<u8>,
    log: Arc<Mutex<Vec<Sent>>>,
    policy: F,
    cut: bool,
}

impl<F: FnMut(&Sent) -> Action> Write for Line<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            if self.cut {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            if *b != 0 {
                self.pending.push(*b);
                continue;
            }
            let mut frame = std::mem::take(&mut self.pending);
            if frame.is_empty() {
                self.inner.write_all(&[0])?;
                continue;
            }
            let mut copy = frame.clone();
            let cmd: Command<'_> = postcard::from_bytes_cobs(&mut copy).unwrap();
            let sent = match &cmd {
                Command::Wait { .. } => Sent::Wait,
                Command::Write { offset, data, .. } => Sent::Write {
                    offset: *offset,
                    len: data.len(),
                },
                Command::Swap { .. } => Sent::Swap,
                Command::Sync { .. } => Sent::Other,
            };
            match (self.policy)(&sent) {
                Action::Forward => {}
                Action::Corrupt => {
                    if let Command::Write {
                        version,
                        offset,
                        data,
                        correlation_id,
                    } = &cmd
                    {
                        let mut bad = data.to_vec();
                        *bad.last_mut().unwrap() ^= 0x01;
                        frame = postcard::to_allocvec_cobs(&Command::new_write(
                            version,
                            *offset,
                            &bad,
                            *correlation_id,
                        ))
                        .unwrap();
                        frame.pop(); // the delimiter is added below
                    }
                }
                Action::Cut => {
                    self.cut = true;
                    let _ = self.inner.shutdown(Shutdown::Both);
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
            self.log.lock().unwrap().push(sent);
            frame.push(0);
            self.inner.write_all(&frame)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Push `bundle` through a [`Line`] with `policy`; returns the push result and what was sent.
fn push_through(
    bundle: &[u8],
    stream: UnixStream,
    opts: &PushOptions,
    policy: impl FnMut(&Sent) -> Action,
) -> (Result<Pushed, PushError>, Vec<Sent>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let line = Line {
        inner: stream.try_clone().unwrap(),
        pending: Vec::new(),
        log: log.clone(),
        policy,
        cut: false,
    };
    let result = push(bundle, stream, line, opts);
    let sent = log.lock().unwrap().clone();
    (result, sent)
}

fn forward(_: &Sent) -> Action {
    Action::Forward
}

/// Cut the line instead of sending `Write` number `n + 1`.
fn cut_after_writes(n: usize) -> impl FnMut(&Sent) -> Action {
    let mut writes = 0;
    move |s| {
        if matches!(s, Sent::Write { .. }) {
            writes += 1;
            if writes > n {
                return Action::Cut;
            }
        }
        Action::Forward
    }
}

fn writes(sent: &[Sent]) -> Vec<(u32, usize)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Write { offset, len } => Some((*offset, *len)),
            _ => None,
        })
        .collect()
}

/// Offsets must run contiguously from `from` to `to`.
fn assert_contiguous(w: &[(u32, usize)], from: u32, to: u32) {
    let mut at = from;
    for (offset, len) in w {
        assert_eq!(*offset, at);
        at += *len as u32;
    }
    assert_eq!(at, to);
}

// ---------------------------------------------------------------- fixtures

/// A real bundle: metadata entries plus an image of `image_len` deterministic bytes.
fn bundle(image_len: usize, seed: u8) -> Vec<u8> {
    let image: Vec<u8> = (0..image_len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let root = br#"{"signed":{"_type":"root","version":3},"signatures":[]}"#;
    let entries: [(&str, &[u8]); 3] = [
        ("3.root.json", root),
        ("timestamp.json", b"{\"signed\":{\"_type\":\"timestamp\"}}"),
        ("targets/pump-a/image.fw.bin", &image),
    ];
    let mut out = vec![0u8; hale_core::bundle::encoded_len(&entries)];
    let n = hale_core::bundle::write(&entries, &mut out).unwrap().len();
    out.truncate(n);
    out
}

fn received(run: &DeviceRun) -> &[u8] {
    &run.sink.data
}

// ---------------------------------------------------------------- tests

#[test]
fn full_transfer_delivers_a_bundle_hale_core_parses() {
    let bundle = bundle(20_000, 1);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let (pushed, sent) = push_through(&bundle, host, &PushOptions::default(), forward);
    let pushed = pushed.unwrap();
    let run = dev.join().unwrap();

    let id = BundleId::of(&bundle).unwrap();
    assert_eq!(run.result.as_ref().unwrap(), &(id, bundle.len() as u32));
    assert_eq!(pushed.resumed_from, 0);
    assert_eq!(pushed.bytes_sent, bundle.len() as u64);
    assert_eq!(sent.first(), Some(&Sent::Wait));
    assert_eq!(sent.last(), Some(&Sent::Swap));
    // blocks of min(device mtu 256, configured 1024)
    let w = writes(&sent);
    assert!(w.iter().all(|(_, len)| *len <= MTU as usize));
    assert_contiguous(&w, 0, bundle.len() as u32);
    assert!(matches!(
        run.events.last(),
        Some(Ok(Event::BundleComplete { .. }))
    ));

    // the device installs from what it received, through hale-core
    let parsed = Bundle::parse(received(&run)).unwrap();
    let original = Bundle::parse(&bundle).unwrap();
    assert_eq!(parsed.len(), 3);
    assert_eq!(
        parsed.get("targets/pump-a/image.fw.bin"),
        original.get("targets/pump-a/image.fw.bin")
    );
}

#[test]
fn blocks_are_capped_by_the_configured_block_len_below_the_mtu() {
    let bundle = bundle(3_000, 2);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let opts = PushOptions {
        block_len: 100,
        ..PushOptions::default()
    };
    let (pushed, sent) = push_through(&bundle, host, &opts, forward);
    pushed.unwrap();
    let run = dev.join().unwrap();
    let w = writes(&sent);
    assert!(w.iter().all(|(_, len)| *len <= 100));
    assert_contiguous(&w, 0, bundle.len() as u32);
    assert_eq!(received(&run), &bundle[..]);
}

#[test]
fn interrupted_push_resumes_from_the_offset_the_device_reports() {
    let bundle = bundle(20_000, 3);

    // first session: the cable comes out before the 11th block
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let (first, _) = push_through(&bundle, host, &PushOptions::default(), cut_after_writes(10));
    assert!(
        matches!(first, Err(PushError::Io(_)) | Err(PushError::Closed)),
        "{first:?}"
    );
    let run = dev.join().unwrap();
    assert!(run.result.is_err(), "nothing handed off");
    let persisted = run.sink.data.len() as u32;
    assert_eq!(persisted, 10 * MTU);
    assert!(!run
        .events
        .iter()
        .any(|e| matches!(e, Ok(Event::BundleComplete { .. }))));

    // second session: the device rebooted (a new receiver over the same store)
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(run.sink, 64 * 1024, device);
    let (second, sent) = push_through(&bundle, host, &PushOptions::default(), forward);
    let second = second.unwrap();
    let run = dev.join().unwrap();

    assert_eq!(second.resumed_from, persisted);
    assert_eq!(
        second.bytes_sent,
        u64::from(bundle.len() as u32 - persisted)
    );
    let w = writes(&sent);
    assert_eq!(w.first().map(|(offset, _)| *offset), Some(persisted));
    assert_contiguous(&w, persisted, bundle.len() as u32);
    assert_eq!(run.sink.begins.len(), 1, "the transfer was not restarted");
    assert!(run.result.is_ok());
    assert_eq!(received(&run), &bundle[..]);
    Bundle::parse(received(&run)).unwrap();
}

#[test]
fn corrupted_block_fails_the_swap_and_nothing_is_handed_off() {
    let bundle = bundle(5_000, 4);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let mut n = 0;
    let (result, _) = push_through(&bundle, host, &PushOptions::default(), move |s| {
        if matches!(s, Sent::Write { .. }) {
            n += 1;
            if n == 3 {
                return Action::Corrupt;
            }
        }
        Action::Forward
    });
    assert!(
        matches!(result, Err(PushError::Refused(Refusal::ChecksumMismatch))),
        "{result:?}"
    );
    let run = dev.join().unwrap();
    assert!(matches!(run.result, Err(ServeError::Closed)), "no hand-off");
    let expected: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&bundle).into()
    };
    assert!(run.events.iter().any(|e| matches!(
        e,
        Err(Error::ChecksumMismatch { expected: x, computed }) if *x == expected && *computed != expected
    )));
    assert!(!run
        .events
        .iter()
        .any(|e| matches!(e, Ok(Event::BundleComplete { .. }))));
    // the transfer was discarded
    assert_eq!(run.sink.id, None);
    assert!(run.sink.data.is_empty());
}

#[test]
fn bundle_larger_than_the_device_maximum_is_refused_before_any_write() {
    let bundle = bundle(20_000, 5);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 4096, device);
    let (result, _) = push_through(&bundle, host, &PushOptions::default(), forward);
    match result {
        Err(PushError::Refused(Refusal::BundleTooLarge { declared, max })) => {
            assert_eq!(declared, bundle.len() as u32);
            assert_eq!(max, 4096);
        }
        other => panic!("{other:?}"),
    }
    let run = dev.join().unwrap();
    assert!(run.sink.begins.is_empty());
    assert!(run.sink.writes.is_empty());
}

#[test]
fn sink_capacity_caps_the_device_maximum() {
    let bundle = bundle(20_000, 6);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(8192), u32::MAX, device);
    let (result, _) = push_through(&bundle, host, &PushOptions::default(), forward);
    assert!(matches!(
        result,
        Err(PushError::Refused(Refusal::BundleTooLarge {
            max: 8192,
            ..
        }))
    ));
    assert!(dev.join().unwrap().sink.writes.is_empty());
}

#[test]
fn another_bundle_restarts_the_transfer_and_says_so() {
    let a = bundle(6_000, 7);
    let b = bundle(7_000, 8);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let _ = push_through(&a, host, &PushOptions::default(), cut_after_writes(3));
    let run = dev.join().unwrap();
    assert_eq!(run.sink.data.len(), 3 * MTU as usize);

    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(run.sink, 64 * 1024, device);
    let (pushed, sent) = push_through(&b, host, &PushOptions::default(), forward);
    let pushed = pushed.unwrap();
    let run = dev.join().unwrap();
    assert_eq!(pushed.resumed_from, 0);
    assert_contiguous(&writes(&sent), 0, b.len() as u32);
    let (ida, idb) = (BundleId::of(&a).unwrap(), BundleId::of(&b).unwrap());
    assert!(run.events.contains(&Ok(Event::Started {
        id: idb,
        replaced: Some(ida),
        offset: MTU,
    })));
    assert_eq!(received(&run), &b[..]);
}

#[test]
fn a_new_bundle_right_after_another_waits_as_the_device_asks_then_goes_through() {
    let a = bundle(3_000, 11);
    let b = bundle(4_000, 12);
    let (ida, idb) = (BundleId::of(&a).unwrap(), BundleId::of(&b).unwrap());
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device_with(VecSink::new(64 * 1024), 64 * 1024, device, 400);
    // one session: the first block of A, then at once a push of B
    let mut c = Client {
        stream: host,
        buf: Vec::new(),
    };
    let wire_a = ida.to_wire();
    let seen = c.send(&Command::new_write(&wire_a, 0, &a[..MTU as usize], None));
    assert_eq!(seen.outcome, Outcome::Started);
    let started = std::time::Instant::now();
    let (pushed, sent) = push_through(&b, c.stream, &PushOptions::default(), forward);
    let pushed = pushed.unwrap();
    let run = dev.join().unwrap();
    // the device refused B's first block until 400 ms after it began A; the host waited that
    // long once and sent it again
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    assert!(
        (300..=401).contains(&pushed.waited_ms),
        "waited {} ms",
        pushed.waited_ms
    );
    let refused: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Err(Error::RestartTooSoon { wait_ms }) => Some(*wait_ms),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0] <= 400 && u64::from(refused[0]) + 1 == pushed.waited_ms);
    assert!(run.events.contains(&Ok(Event::Started {
        id: idb,
        replaced: Some(ida),
        offset: MTU,
    })));
    assert_eq!(writes(&sent).first(), Some(&(0, MTU as usize)));
    assert_eq!(received(&run), &b[..]);
}

#[test]
fn a_device_that_asks_for_a_longer_wait_than_the_host_allows_is_an_error() {
    let a = bundle(3_000, 13);
    let b = bundle(4_000, 14);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let mut c = Client {
        stream: host,
        buf: Vec::new(),
    };
    let wire_a = BundleId::of(&a).unwrap().to_wire();
    c.send(&Command::new_write(&wire_a, 0, &a[..MTU as usize], None));
    let opts = PushOptions {
        max_restart_wait_ms: 1_000,
        ..PushOptions::default()
    };
    let (pushed, _) = push_through(&b, c.stream, &opts, forward);
    match pushed {
        Err(PushError::Refused(Refusal::RestartTooSoon { wait_ms })) => {
            assert!(wait_ms > 29_000 && wait_ms <= DEFAULT_MIN_RESTART_INTERVAL_MS)
        }
        other => panic!("{other:?}"),
    }
    // the device still holds A's first block
    let run = dev.join().unwrap();
    assert_eq!(run.sink.data, a[..MTU as usize]);
}

// ------------------------------------------- a hand-driven host: bad frames and offsets

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    outcome: Outcome,
    /// (bundle id, next offset) the device reports
    update: Option<(String, u32)>,
    /// the correlation id the report echoes
    correlation: Option<u32>,
}

impl Client {
    fn send_raw(&mut self, bytes: &[u8]) -> Seen {
        self.stream.write_all(bytes).unwrap();
        self.recv()
    }
    fn send(&mut self, cmd: &Command<'_>) -> Seen {
        let frame = postcard::to_allocvec_cobs(cmd).unwrap();
        self.send_raw(&frame)
    }
    fn recv(&mut self) -> Seen {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let mut frame: Vec<u8> = self.buf.drain(..=end).collect();
                let report: Report<'_> = postcard::from_bytes_cobs(&mut frame).unwrap();
                assert_eq!(&*report.status.version, RUNNING);
                assert_eq!(report.status.mtu, Some(MTU));
                return Seen {
                    outcome: report.outcome,
                    correlation: report.status.correlation_id,
                    update: report
                        .status
                        .update
                        .map(|u| (String::from_utf8(u.version.to_vec()).unwrap(), u.offset)),
                };
            }
            let mut chunk = [0u8; 256];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "device closed the link");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn client_and_device() -> (Client, JoinHandle<DeviceRun>) {
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    (
        Client {
            stream: host,
            buf: Vec::new(),
        },
        dev,
    )
}

#[test]
fn write_at_a_wrong_offset_is_ignored_and_the_offset_re_reported() {
    let bundle = bundle(2_000, 9);
    let id = BundleId::of(&bundle).unwrap();
    let wire = id.to_wire();
    let hex = String::from_utf8(wire.to_vec()).unwrap();
    let (mut c, dev) = client_and_device();

    let seen = c.send(&Command::new_wait(None, None));
    assert_eq!(seen.outcome, Outcome::Status);
    assert_eq!(seen.update, None);

    let block = |o: usize| &bundle[o..o + 256];
    let seen = c.send(&Command::new_write(&wire, 0, block(0), None));
    assert_eq!(seen.outcome, Outcome::Started);
    assert_eq!(seen.update, Some((hex.clone(), 256)));

    // ahead of the device, behind it (a retransmission), and one byte off
    for offset in [512u32, 0, 257] {
        let seen = c.send(&Command::new_write(&wire, offset, block(512), None));
        assert_eq!(seen.outcome, Outcome::Resync, "offset {offset}");
        assert_eq!(seen.update, Some((hex.clone(), 256)));
    }
    // swap before the end
    let seen = c.send(&Command::new_swap(&wire, &[0; 32], None));
    assert_eq!(
        seen.outcome,
        Outcome::Refused(Refusal::Incomplete {
            offset: 256,
            declared: bundle.len() as u32
        })
    );
    assert_eq!(id.bundle_len(), bundle.len() as u32);

    let seen = c.send(&Command::new_write(&wire, 256, block(256), None));
    assert_eq!(seen.outcome, Outcome::Stored);
    assert_eq!(seen.update, Some((hex, 512)));

    drop(c);
    let run = dev.join().unwrap();
    assert_eq!(run.sink.writes, vec![(0, 256), (256, 256)]);
    assert!(run.events.contains(&Ok(Event::Resync {
        expected: 256,
        received: 512
    })));
}

#[test]
fn oversize_and_undecodable_frames_are_refused_without_changing_state() {
    let bundle = bundle(2_000, 10);
    let wire = BundleId::of(&bundle).unwrap().to_wire();
    let (mut c, dev) = client_and_device();
    let seen = c.send(&Command::new_write(&wire, 0, &bundle[..256], None));
    assert_eq!(seen.update.as_ref().map(|u| u.1), Some(256));

    // far longer than any frame the device accepts, then its delimiter
    let mut huge = vec![0x01u8; 4 * FRAME];
    huge.push(0);
    let seen = c.send_raw(&huge);
    assert_eq!(seen.outcome, Outcome::Refused(Refusal::BadFrame));
    assert_eq!(seen.update.as_ref().map(|u| u.1), Some(256));

    // valid COBS, not a command; and a command with trailing bytes
    let seen = c.send_raw(&[0x04, 0xff, 0xfe, 0xfd, 0x00]);
    assert_eq!(seen.outcome, Outcome::Refused(Refusal::BadFrame));
    let mut raw = postcard::to_allocvec(&Command::new_wait(None, None)).unwrap();
    raw.push(7);
    let mut framed = vec![0u8; raw.len() + 2];
    let n = cobs_encode(&raw, &mut framed);
    framed.truncate(n);
    framed.push(0);
    let seen = c.send_raw(&framed);
    assert_eq!(seen.outcome, Outcome::Refused(Refusal::BadFrame));

    // a block over the MTU that still fits the frame buffer
    let seen = c.send(&Command::new_write(
        &wire,
        256,
        &bundle[256..256 + 257],
        None,
    ));
    assert_eq!(
        seen.outcome,
        Outcome::Refused(Refusal::BlockTooLarge { len: 257, mtu: MTU })
    );
    // a block past the declared end
    let seen = c.send(&Command::new_write(
        &wire,
        bundle.len() as u32 - 10,
        &bundle[..20],
        None,
    ));
    assert!(matches!(
        seen.outcome,
        Outcome::Refused(Refusal::PastEnd { .. })
    ));
    // not a bundle id
    let seen = c.send(&Command::new_write(b"4.1.1", 256, &bundle[..10], None));
    assert_eq!(seen.outcome, Outcome::Refused(Refusal::BadBundleId));

    // nothing changed: the next block is still expected at 256 and is taken
    let seen = c.send(&Command::new_write(&wire, 256, &bundle[256..512], None));
    assert_eq!(seen.outcome, Outcome::Stored);
    assert_eq!(seen.update.as_ref().map(|u| u.1), Some(512));

    drop(c);
    let run = dev.join().unwrap();
    assert_eq!(run.sink.writes, vec![(0, 256), (256, 256)]);
    assert!(run.events.iter().any(|e| matches!(
        e,
        Err(Error::FrameTooLong { len, max }) if *len == 4 * FRAME && *max == FRAME - 1
    )));
    assert!(run.events.contains(&Err(Error::Undecodable)));
}

/// Minimal COBS encoder (no zero bytes in `raw` expected beyond what COBS handles).
fn cobs_encode(raw: &[u8], out: &mut [u8]) -> usize {
    let mut code_at = 0;
    let mut o = 1;
    let mut code = 1u8;
    for b in raw {
        if *b == 0 {
            out[code_at] = code;
            code_at = o;
            o += 1;
            code = 1;
        } else {
            out[o] = *b;
            o += 1;
            code += 1;
        }
    }
    out[code_at] = code;
    o
}

#[test]
fn receiver_refuses_a_frame_buffer_smaller_than_the_mtu_needs() {
    let config = Config {
        running_version: RUNNING,
        mtu: MTU,
        max_bundle_len: 1024,
        min_restart_interval_ms: 0,
    };
    let err = Receiver::<_, 64>::new(VecSink::new(1024), config).unwrap_err();
    assert!(matches!(err, Error::Config { .. }));
}

/// A line that only carries zeros (an unplugged port, `/dev/zero`): the push ends with `Noise`
/// after a bounded amount of it, instead of reading for ever.
#[test]
fn a_line_of_zeros_ends_the_push() {
    let b = bundle(64, 3);
    let zeros = std::io::repeat(0);
    let err = push(&b, zeros, std::io::sink(), &PushOptions::default()).unwrap_err();
    assert!(matches!(err, PushError::Noise { bytes: 4097 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the line sent 4097 bytes without one frame: is it the pump's port, in raw mode?"
    );
}

/// A line that says `script` and then `filler` for ever; the device's replies are counted.
struct NoisyLine {
    script: Vec<u8>,
    at: usize,
    filler: Option<Vec<u8>>,
    replies: usize,
}

impl embedded_io::ErrorType for NoisyLine {
    type Error = std::io::Error;
}
impl embedded_io::Read for NoisyLine {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        if self.at >= self.script.len() {
            match &self.filler {
                Some(f) => {
                    self.script.extend_from_slice(f);
                }
                None => return Ok(0),
            }
        }
        let rest = &self.script[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}
impl embedded_io::Write for NoisyLine {
    fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        self.replies += buf.iter().filter(|b| **b == 0).count();
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

/// A device holding 256 stored bytes of a bundle, served `line`: its result, the sink after,
/// and the frames it answered.
fn serve_line(mut line: NoisyLine) -> (ServeError<std::io::Error>, VecSink, usize, usize) {
    let bundle = bundle(2_000, 10);
    let id = BundleId::of(&bundle).unwrap();
    let mut sink = VecSink::new(64 * 1024);
    sink.begin(&id, 0).unwrap();
    sink.write_at(0, &bundle[..256]).unwrap();
    let config = Config {
        running_version: RUNNING,
        mtu: MTU,
        max_bundle_len: 64 * 1024,
        min_restart_interval_ms: 0,
    };
    let mut receiver = Receiver::<_, FRAME>::new(sink, config).unwrap();
    let limit = receiver.noise_limit() as usize;
    let err = receiver.serve(&mut line, || 0, |_| {}).unwrap_err();
    let sink = receiver.into_sink();
    assert_eq!(sink.data, &bundle[..256], "the stored bytes are untouched");
    assert_eq!(sink.id, Some(id));
    assert_eq!(sink.begins, vec![id], "no transfer began");
    (err, sink, line.replies, limit)
}

fn frame(command: &Command<'_>) -> Vec<u8> {
    let raw = postcard::to_allocvec(command).unwrap();
    let mut framed = vec![0u8; raw.len() + raw.len() / 254 + 2];
    let n = cobs_encode(&raw, &mut framed);
    framed.truncate(n);
    framed.push(0);
    framed
}

#[test]
fn a_line_of_zeros_ends_the_session_as_noise() {
    let line = NoisyLine {
        script: vec![],
        at: 0,
        filler: Some(vec![0; 1000]),
        replies: 0,
    };
    let (err, _, replies, limit) = serve_line(line);
    assert_eq!(limit, hale_link::MAX_NOISE_BYTES as usize);
    assert!(
        matches!(err, ServeError::Noise { bytes } if bytes == hale_link::MAX_NOISE_BYTES),
        "{err:?}"
    );
    assert_eq!(replies, 0, "empty frames are not answered");
}

#[test]
fn bytes_that_never_end_a_frame_end_the_session_as_noise() {
    let line = NoisyLine {
        script: vec![],
        at: 0,
        filler: Some(vec![0x55; 1000]),
        replies: 0,
    };
    let (err, ..) = serve_line(line);
    assert!(
        matches!(err, ServeError::Noise { bytes } if bytes == hale_link::MAX_NOISE_BYTES),
        "{err:?}"
    );
}

#[test]
fn frames_that_never_decode_end_the_session_as_noise() {
    let line = NoisyLine {
        script: vec![],
        at: 0,
        filler: Some([0x04, 0xff, 0xfe, 0xfd, 0x00].repeat(200)),
        replies: 0,
    };
    let (err, _, replies, _) = serve_line(line);
    assert!(
        matches!(err, ServeError::Noise { bytes } if bytes == hale_link::MAX_NOISE_BYTES),
        "{err:?}"
    );
    // every one was refused (answered) on the way
    assert_eq!(replies, hale_link::MAX_NOISE_BYTES as usize / 5);
}

#[test]
fn a_command_between_long_runs_of_zeros_keeps_the_session() {
    // just under the bound in zeros and a command, just under it again, then the host hangs up
    let wait = frame(&Command::new_wait(None, None));
    let under = hale_link::MAX_NOISE_BYTES as usize - 1;
    let mut script = vec![0; under - wait.len()];
    script.extend(wait);
    script.extend(vec![0; under]);
    let line = NoisyLine {
        script,
        at: 0,
        filler: None,
        replies: 0,
    };
    let (err, _, replies, _) = serve_line(line);
    assert!(matches!(err, ServeError::Closed), "{err:?}");
    assert_eq!(replies, 1, "the command was answered");
}

#[test]
fn a_partial_frame_the_device_held_does_not_put_the_host_one_answer_behind() {
    // a cable pulled mid-block while the pump's session stays up: the pump holds part of a frame.
    // The push's lone delimiter ends it, and the pump answers it (a bad frame) before it
    // answers the push's first command. Read in order, every answer was taken for the next
    // command's: each block went twice. Matched by correlation id, each goes once.
    let bundle = bundle(5_000, 9);
    let (host, device) = UnixStream::pair().unwrap();
    let dev = spawn_device(VecSink::new(64 * 1024), 64 * 1024, device);
    let mut raw = host.try_clone().unwrap();
    let wire = BundleId::of(&bundle).unwrap().to_wire();
    let mut partial =
        postcard::to_allocvec_cobs(&Command::new_write(&wire, 0, &bundle[..200], Some(7))).unwrap();
    partial.truncate(partial.len() / 2);
    raw.write_all(&partial).unwrap();
    let (result, sent) = push_through(&bundle, host, &PushOptions::default(), forward);
    let pushed = result.unwrap();
    let w = writes(&sent);
    assert_contiguous(&w, 0, bundle.len() as u32);
    assert_eq!(pushed.resyncs, 0, "{sent:?}");
    assert_eq!(
        sent.iter().filter(|s| matches!(s, Sent::Swap)).count(),
        1,
        "{sent:?}"
    );
    let run = dev.join().unwrap();
    assert_eq!(received(&run), &bundle[..]);
    assert!(
        run.events.contains(&Err(Error::Undecodable)),
        "the partial frame was answered: {:?}",
        run.events
    );
}

#[test]
fn the_device_echoes_the_correlation_id_of_the_command_it_answers() {
    let (mut c, dev) = client_and_device();
    let seen = c.send_raw(&{
        let mut f = postcard::to_allocvec_cobs(&Command::new_wait(None, Some(41))).unwrap();
        f.insert(0, 0);
        f
    });
    assert_eq!(seen.correlation, Some(41));
    // a frame that is no command: no id to echo
    let seen = c.send_raw(&[0x04, 0xff, 0xfe, 0xfd, 0x00]);
    assert_eq!(seen.outcome, Outcome::Refused(Refusal::BadFrame));
    assert_eq!(seen.correlation, None);
    drop(c);
    dev.join().unwrap();
}
