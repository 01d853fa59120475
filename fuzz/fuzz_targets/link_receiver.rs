//! The technician link's device end (`hale_link::Receiver`): whoever holds the cable can send any
//! bytes. The input is a script of raw bytes and well-formed commands (blocks of a few bundles at
//! chosen offsets, swaps with right and wrong checksums, resets, a failing store), so the fuzzer
//! reaches past the framing into the transfer rules. After every frame:
//! - the reply is one report frame that decodes, and reports the receiver's transfer;
//! - the store is written only at its persisted offset, never past the bundle's declared length,
//!   the device's maximum or its capacity (the store asserts it);
//! - the receiver's transfer is what the store persisted, so a reset resumes it;
//! - a refused command changes nothing, except a checksum mismatch (the transfer is discarded) and
//!   a store failure (the transfer is what the store holds);
//! - a bundle is handed off only when the SHA-256 of the stored bytes matches its id and the
//!   `Swap`'s checksum;
//! - a transfer begins at most once per `min_restart_interval_ms` of the receiver's clock (the
//!   script moves it on), and a `RestartTooSoon` names the exact wait. The first of a session
//!   begins at once, unless the store keeps the last begin (`last_begin_ms`, chosen by the
//!   input): then the bound holds across sessions too.
#![no_main]
use hale_link::wire::{Command, Report, MAX_REPORT_FRAME};
use hale_link::{max_frame_len, BundleId, BundleSink, Config, Error, Event, Receiver};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const MAX_MTU: u32 = 64;
const N: usize = max_frame_len(MAX_MTU);
const VERSION: &[u8] = b"4.1.0";

/// A store that checks the receiver's side of the `BundleSink` contract.
#[derive(Debug, Clone, PartialEq)]
struct Store {
    data: Vec<u8>,
    id: Option<BundleId>,
    offset: u32,
    /// The device's maximum (`min(max_bundle_len, capacity)`): nothing is stored past it.
    max: u32,
    fail_writes: bool,
    /// transfers begun
    begins: u32,
    /// whether it keeps the last begin across receivers, and what it kept
    keeps_begin: bool,
    begun: Option<u64>,
}

impl BundleSink for Store {
    type Error = &'static str;
    fn capacity(&self) -> u32 {
        self.data.len() as u32
    }
    fn persisted_id(&mut self) -> Result<Option<BundleId>, Self::Error> {
        Ok(self.id)
    }
    fn persisted_offset(&mut self) -> Result<u32, Self::Error> {
        Ok(self.offset)
    }
    fn begin(&mut self, id: &BundleId, at_ms: u64) -> Result<(), Self::Error> {
        assert!(
            id.bundle_len() <= self.max,
            "began a bundle above the maximum"
        );
        self.id = Some(*id);
        self.offset = 0;
        self.begins += 1;
        self.begun = self.keeps_begin.then_some(at_ms);
        Ok(())
    }
    fn write_at(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        let id = self.id.expect("a block stored before begin");
        assert_eq!(
            offset, self.offset,
            "a block stored away from the persisted offset"
        );
        let end = offset as usize + data.len();
        assert!(
            end <= id.bundle_len() as usize,
            "a block past the declared length"
        );
        assert!(
            end <= self.max as usize,
            "a block past the device's maximum"
        );
        if self.fail_writes {
            return Err("flash write failed");
        }
        self.data[offset as usize..end].copy_from_slice(data);
        self.offset = end as u32;
        Ok(())
    }
    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        let end = offset as usize + buf.len();
        assert!(
            end <= self.offset as usize,
            "read back past what was stored"
        );
        buf.copy_from_slice(&self.data[offset as usize..end]);
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

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

fn transfer(s: &Store) -> Option<(BundleId, u32)> {
    s.id.map(|id| (id, s.offset))
}

/// The receiver's clock as the script moves it, and when the session last began a transfer.
struct Clock {
    now: u64,
    interval: u64,
    last_begin: Option<u64>,
}

/// Push `frame` byte by byte and check what the receiver did with it against the state before.
/// `swap_checksum`: the checksum of the `Swap` the frame carries, if the script built one.
fn push(
    rx: &mut Receiver<Store, N>,
    clock: &mut Clock,
    frame: &[u8],
    swap_checksum: Option<&[u8]>,
) {
    for &byte in frame {
        let before = (rx.transfer(), rx.sink().clone());
        let Some((outcome, mut reply)) =
            rx.push(byte).map(|h| (h.outcome.clone(), h.reply.to_vec()))
        else {
            assert_eq!(
                rx.transfer(),
                before.0,
                "a partial frame changed the transfer"
            );
            continue;
        };
        // the reply: one report frame, with the device's status
        assert!(!reply.is_empty() && reply.len() <= MAX_REPORT_FRAME);
        assert_eq!(reply.last(), Some(&0));
        let report: Report<'_> =
            postcard::from_bytes_cobs(&mut reply).expect("a report that decodes");
        assert_eq!(&*report.status.version, VERSION);
        let reported = report.status.update.map(|u| (u.version.to_vec(), u.offset));
        assert_eq!(
            reported,
            rx.transfer().map(|(id, off)| (id.to_wire().to_vec(), off))
        );

        let after = rx.sink().clone();
        assert_eq!(
            rx.transfer(),
            transfer(&after),
            "the receiver's transfer is not the store's"
        );
        // whatever the outcome (a store failure after the begin included): no two begins closer
        // than the interval
        if after.begins > before.1.begins {
            assert_eq!(after.begins, before.1.begins + 1, "two begins in one frame");
            if let Some(last) = clock.last_begin {
                assert!(
                    clock.now - last >= clock.interval,
                    "began a transfer {} ms after the last one (interval {})",
                    clock.now - last,
                    clock.interval
                );
            }
            clock.last_begin = Some(clock.now);
        }
        match outcome {
            Ok(Event::Status) | Ok(Event::Resync { .. }) => {
                assert_eq!(after, before.1, "{outcome:?} changed the store")
            }
            Ok(Event::Stored { offset }) => {
                assert_eq!(rx.transfer().map(|t| t.1), Some(offset));
                assert_eq!(before.0.map(|t| t.0), rx.transfer().map(|t| t.0));
            }
            Ok(Event::Started {
                id,
                replaced,
                offset,
            }) => {
                assert_eq!(rx.transfer(), Some((id, offset)));
                assert_eq!(replaced, before.0.map(|t| t.0));
                assert_eq!(after.begins, before.1.begins + 1, "started without a begin");
            }
            Ok(Event::BundleComplete { id, len }) => {
                assert_eq!(rx.transfer(), Some((id, len)));
                assert_eq!(after, before.1, "a swap changed the store");
                let digest: [u8; 32] = Sha256::digest(&after.data[..len as usize]).into();
                assert!(
                    id.matches_digest(&digest),
                    "handed off bytes that are not the id's"
                );
                if let Some(sum) = swap_checksum {
                    assert_eq!(
                        sum, digest,
                        "handed off bytes that are not the swap's checksum"
                    );
                }
            }
            Err(Error::ChecksumMismatch { computed, .. }) => {
                let (id, len) = before.0.expect("a mismatch without a transfer");
                assert_eq!(
                    id.bundle_len(),
                    len,
                    "a swap checked before the bundle was complete"
                );
                let digest: [u8; 32] = Sha256::digest(&before.1.data[..len as usize]).into();
                assert_eq!(computed, digest);
                assert_eq!(rx.transfer(), None, "a mismatched bundle was kept");
            }
            Err(Error::Sink(_)) => {} // the transfer is what the store holds (checked above)
            Err(Error::RestartTooSoon { wait_ms }) => {
                let last = clock.last_begin.expect("refused a restart with none begun");
                let since = clock.now - last;
                assert!(since < clock.interval);
                assert_eq!(u64::from(wait_ms), clock.interval - since);
                assert_eq!(
                    rx.transfer(),
                    before.0,
                    "a refused restart changed the transfer"
                );
                assert_eq!(after, before.1, "a refused restart changed the store");
            }
            Err(e) => {
                assert_eq!(
                    rx.transfer(),
                    before.0,
                    "refused ({e:?}) but the transfer changed"
                );
                assert_eq!(after, before.1, "refused ({e:?}) but the store changed");
            }
        }
    }
}

/// A command's frame (blocks of up to 255 bytes: longer than any MTU here, on purpose).
fn frame(cmd: &Command<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    postcard::to_slice_cobs(cmd, &mut buf)
        .expect("encodes")
        .to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(mtu), Some(max_len), Some(capacity)) = (input.byte(), input.u16(), input.u16())
    else {
        return;
    };
    let capacity = usize::from(capacity % 2048);
    let config = Config {
        running_version: VERSION,
        mtu: u32::from(mtu) % MAX_MTU + 1,
        max_bundle_len: u32::from(max_len % 2048),
        // none, or up to about a second
        min_restart_interval_ms: u32::from(input.byte().unwrap_or(0)) * 4,
    };
    let keeps_begin = input.byte().unwrap_or(0) & 1 == 1;
    let mut clock = Clock {
        now: 0,
        interval: u64::from(config.min_restart_interval_ms),
        last_begin: None,
    };
    // what a script sends: two bundles named by their digests, and an id no content matches
    let mut bundles = Vec::new();
    for _ in 0..2 {
        let len = input.u16().unwrap_or(0) % 1200;
        let content = input.take(usize::from(len)).to_vec();
        let id = BundleId::of(&content).expect("a short bundle has an id");
        bundles.push((content, id));
    }
    let forged_len = input.u16().unwrap_or(0) % 1200;
    let mut digest = [0u8; 32];
    for (d, s) in digest.iter_mut().zip(input.take(32)) {
        *d = *s;
    }
    let forged = input.take(usize::from(forged_len)).to_vec();
    bundles.push((
        forged,
        BundleId::from_digest(&digest, u32::from(forged_len)),
    ));

    let store = Store {
        data: vec![0; capacity],
        id: None,
        offset: 0,
        max: config.max_bundle_len.min(capacity as u32),
        fail_writes: false,
        begins: 0,
        keeps_begin,
        begun: None,
    };
    let mut rx = Receiver::<Store, N>::new(store, config).expect("a valid configuration");
    while let Some(op) = input.byte() {
        let pick = usize::from(input.byte().unwrap_or(0)) % bundles.len();
        let (content, id) = &bundles[pick];
        let wire = id.to_wire();
        match op % 9 {
            // raw bytes off the cable
            0 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let raw = input.take(n).to_vec();
                push(&mut rx, &mut clock, &raw, None);
            }
            // a block: at the offset the device expects or anywhere, of the bundle or other bytes
            1 | 2 => {
                let how = input.byte().unwrap_or(0);
                let offset = if how & 1 == 0 {
                    rx.transfer().filter(|t| t.0 == *id).map_or(0, |t| t.1)
                } else {
                    input.u32().unwrap_or(0)
                };
                let len = usize::from(input.byte().unwrap_or(0));
                let block = if how & 2 == 0 {
                    let rest = content.get(offset as usize..).unwrap_or(&[]);
                    rest[..len.min(rest.len())].to_vec()
                } else {
                    input.take(len).to_vec()
                };
                push(
                    &mut rx,
                    &mut clock,
                    &frame(&Command::new_write(&wire, offset, &block, None)),
                    None,
                );
            }
            // a swap: with the bundle's SHA-256 or other bytes
            3 => {
                let sum: Vec<u8> = match input.byte().unwrap_or(0) % 3 {
                    0 => Sha256::digest(content).to_vec(),
                    1 => input.take(32).to_vec(),
                    _ => {
                        let n = usize::from(input.byte().unwrap_or(0) % 64);
                        input.take(n).to_vec()
                    }
                };
                push(
                    &mut rx,
                    &mut clock,
                    &frame(&Command::new_swap(&wire, &sum, None)),
                    Some(&sum),
                );
            }
            4 => push(
                &mut rx,
                &mut clock,
                &frame(&Command::new_wait(None, None)),
                None,
            ),
            5 => push(
                &mut rx,
                &mut clock,
                &frame(&Command::new_sync(&wire, None, None)),
                None,
            ),
            // a reset: the receiver resumes what the store persisted
            6 => {
                let before = rx.transfer();
                rx = Receiver::new(rx.into_sink(), config).expect("a valid configuration");
                // a new session: its first transfer may begin at once, unless the store kept
                // the last begin
                if !keeps_begin {
                    clock.last_begin = None;
                }
                rx.set_clock_ms(clock.now);
                assert_eq!(
                    rx.transfer(),
                    before,
                    "a reset lost or changed the transfer"
                );
            }
            // time passes (up to about a second)
            7 => {
                clock.now += u64::from(input.u16().unwrap_or(0) % 1024);
                rx.set_clock_ms(clock.now);
            }
            // the store starts or stops failing its writes
            _ => rx.sink_mut().fail_writes ^= true,
        }
    }
});
