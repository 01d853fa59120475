//! The pump's whole update path (`device_agent::check_for_update`, `no_std` as on a device) from
//! a provisioned flash (1.0.0, counter 1) to installed images, driven by a script: checks, boots,
//! confirms, rejects, and the release of 3.0.0; a transport that serves the fixture repository
//! (`fixtures/install.bin`: firmware 2.0.0, counter 7, 3000 bytes, for pump-a r2; after the
//! release `fixtures/install-v3.bin`: 3.0.0, counter 9, 3500 bytes) or fails a request, truncates
//! metadata or flips a byte of a target block; and the power cut at a chosen flash operation, on
//! NOR flash (the operation done halfway) or on flash behind a write-back cache
//! (`device_agent::cachedflash`: any subset of the writes held back since the last sync reaches
//! the medium). 3.0.0 is staged into the slot that held 1.0.0 (or 2.0.0): an update that erases
//! an image the previous state listed as good.
//!
//! Input: `flags` (bit 0 cached flash, bit 1 cut the power, bit 2 a checkpoint every two
//! sectors, bit 3 cached: cut instead of a sync), `cut:u16` (the flash operation, or the sync
//! `% 64`), `keep` (cached, `% 5`: 0 none of the held-back pieces, 1 all, 2 all but a stretch,
//! 3 only a stretch, 4 one input bit per piece; the stretch is two input bytes read after the
//! steps, as fractions of the held pieces), then step bytes (`% 5`: check, boot, confirm,
//! reject, release 3.0.0), each check reading one byte per request it makes (metadata: 0xFF
//! fails, 0xFE serves half the file; target blocks: `% 8 == 6` flips the byte the next input
//! byte points at, `% 8 == 7` fails). Input that runs out reads as zeros: honest answers, checks.
//!
//! Checked after the script (cut or not), on the flash as it would be found at power-up:
//! - a valid state record exists and claims nothing that is not on the flash: every bootable
//!   slot's bytes hash to its image, a staging slot holds the first `download_offset` bytes of
//!   the image it lists (as served: unless a block was corrupted, which the image's hash catches
//!   at the end);
//! - the boot step runs 1.0.0, 2.0.0 or 3.0.0, byte for byte, and the security counter is 1, 7
//!   or 9, never above the running image's;
//! - then, with an honest transport and the pump confirming its trials, it settles on the newest
//!   release with its counter, or, only when that release failed a trial and is refused, on an
//!   older one; the only error on the way is one hash mismatch after a corrupted block (the
//!   staging abandoned), after which the pump waits `RETRY_WRONG_BYTES` before it downloads that
//!   image from the server again (`WrongBytes`, the day after the fixed clock; it then runs an
//!   older release, as it ran); a download the script broke off before its next checkpoint
//!   makes it wait (`DownloadBroken`), and the settling check runs again at the end of the wait.
#![no_main]
use std::collections::BTreeMap;
use std::sync::OnceLock;

use device_agent::cachedflash::{CachedFlash, Cut};
use device_agent::memflash::MemFlash;
use device_agent::{
    check_for_update, AgentError, Application, DeferReason, DeviceInfo, Durable, FirmwareStore,
    Image, Layout, NoRollback, Outcome, Slot, SlotState, Transport,
};
use hale_core::Version;
use hale_fuzz::fixture::unpack;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const ERASE: usize = 1024;
const LAYOUT: Layout = Layout::contiguous(0, 8 * 1024, 16 * 1024);
const TARGET: &str = "pump-a/firmware.bin";
const NOW: i64 = hale_fuzz::fixture::NOW;
const V1_LEN: usize = 2500;
const V2_LEN: usize = 3000;
const V3_LEN: usize = 3500;

/// The repository before and after 3.0.0 is released (its served files), and the images.
struct Fixture {
    files: [BTreeMap<String, Vec<u8>>; 2],
    v1: Vec<u8>,
    v2: Vec<u8>,
    v3: Vec<u8>,
}

/// The firmware image of `len` bytes the repository `files` serves.
fn served_image(files: &BTreeMap<String, Vec<u8>>, len: usize) -> Vec<u8> {
    files
        .iter()
        .find(|(k, v)| {
            k.starts_with("targets/pump-a/") && k.ends_with(".firmware.bin") && v.len() == len
        })
        .map(|(_, v)| v.clone())
        .expect("the fixture serves the firmware")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let before = unpack(include_bytes!("../fixtures/install.bin"));
        let after = unpack(include_bytes!("../fixtures/install-v3.bin"));
        let v2 = served_image(&before, V2_LEN);
        let v3 = served_image(&after, V3_LEN);
        let v1 = (0..V1_LEN).map(|i| (i % 251) as u8).collect();
        Fixture {
            files: [before, after],
            v1,
            v2,
            v3,
        }
    })
}

fn device() -> DeviceInfo<'static> {
    DeviceInfo {
        model: "pump-a",
        revision: "r2",
        bootloader: Version::new(1, 2, 0),
        target: TARGET,
        rollback_target: None,
    }
}

/// The script, and whether a target block was served corrupted (its bytes may then sit in a
/// staging slot: a checkpoint claims bytes written, not verified; the whole image's hash, taken
/// over what is read back from flash, decides at the end).
struct Input<'a>(&'a [u8], bool, Served);

/// Which repository the transport serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Served {
    Before,
    /// 3.0.0 released
    After,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
}

#[derive(Debug)]
struct Failed;

/// The fixture repository, with the failures the script asks for. It takes requests asked
/// ahead, as the pump's HTTP transport does, and holds the agent to their contract: the files
/// asked for are fetched in the order asked (a fetch of another may come between), none is
/// left when a target is fetched, and none when a check ends well ([`scripted_check`]).
struct Scripted<'i, 'a> {
    input: &'i mut Input<'a>,
    asked: Vec<String>,
}

impl Transport for Scripted<'_, '_> {
    type Error = Failed;
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, Failed> {
        if let Some(at) = self.asked.iter().position(|a| a == name) {
            assert_eq!(at, 0, "asked ahead for {:?}, then fetched {name}", self.asked);
            self.asked.remove(0);
        }
        let action = self.input.byte();
        let Some(f) = fixture().files[self.input.2 as usize].get(name) else {
            return Ok(None);
        };
        let f = match action {
            0xFF => return Err(Failed),
            0xFE => &f[..f.len() / 2],
            _ => &f[..],
        };
        let dst = buf.get_mut(..f.len()).ok_or(Failed)?;
        dst.copy_from_slice(f);
        Ok(Some(f.len()))
    }
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), Failed> {
        assert!(
            self.asked.is_empty(),
            "asked ahead for {:?}, then fetched target {name}",
            self.asked
        );
        let action = self.input.byte() % 8;
        let f = fixture().files[self.input.2 as usize]
            .get(&format!("targets/{name}"))
            .ok_or(Failed)?;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| f.get(o..o.checked_add(buf.len())?))
            .ok_or(Failed)?;
        buf.copy_from_slice(src);
        match action {
            6 if !buf.is_empty() => {
                let at = usize::from(self.input.byte()) % buf.len();
                buf[at] ^= 0x20;
                self.input.1 = true;
            }
            7 => return Err(Failed),
            _ => {}
        }
        Ok(())
    }
    fn asks_ahead(&self) -> bool {
        true
    }
    fn ask_ahead(&mut self, names: &[&str]) {
        self.asked = names.iter().map(|n| n.to_string()).collect();
    }
}

struct Idle;

impl Application for Idle {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        Ok(())
    }
}

/// A check over the script's transport; one that ends well has fetched every file it asked
/// for ahead (else it made a request its workflow does not make).
fn scripted_check<F: Durable>(
    store: &mut FirmwareStore<F>,
    input: &mut Input<'_>,
    now: hale_core::UnixTime,
) -> Result<Outcome, AgentError<Failed, F::Error>> {
    let mut t = Scripted {
        input,
        asked: Vec::new(),
    };
    let r = check_at(store, &mut t, now);
    if r.is_ok() {
        assert!(
            t.asked.is_empty(),
            "a check that ended well ({r:?}) left {:?} asked ahead and unread",
            t.asked
        );
    }
    r
}

fn check_at<F: Durable, T: Transport>(
    store: &mut FirmwareStore<F>,
    t: &mut T,
    now: hale_core::UnixTime,
) -> Result<Outcome, AgentError<T::Error, F::Error>> {
    let mut buffers = hale_fuzz::Buffers::new();
    let ws = buffers.workspace(false);
    check_for_update(store, &device(), t, &mut Idle, &mut NoRollback, now, ws)
}

/// The script's steps on `store` until the input runs out, a step count is reached, or the
/// power is cut (a step fails and `lost()` says so).
fn run<F: Durable>(store: &mut FirmwareStore<F>, input: &mut Input<'_>, lost: impl Fn(&F) -> bool) {
    for _ in 0..8 {
        if input.0.is_empty() {
            return;
        }
        let ok = match input.byte() % 5 {
            0 => scripted_check(store, input, NOW).is_ok(),
            1 => store.boot().is_ok(),
            2 => store.confirm().is_ok(),
            3 => store.reject().is_ok(),
            _ => {
                input.2 = Served::After;
                true
            }
        };
        if !ok && lost(store.flash_mut()) {
            return;
        }
    }
}

/// A release's image and security counter.
fn release(version: &str) -> Option<(&'static [u8], u64)> {
    match version {
        "1.0.0" => Some((&fixture().v1, 1)),
        "2.0.0" => Some((&fixture().v2, 7)),
        "3.0.0" => Some((&fixture().v3, 9)),
        _ => None,
    }
}

/// Power-up on `mem`: the invariants, then settle with an honest transport serving `served`.
/// `corrupted`: a target block was served corrupted.
fn power_up_and_settle(mem: &mut [u8], layout: Layout, corrupted: bool, served: Served) {
    let mut store = FirmwareStore::open(MemFlash::<ERASE>::new(mem), layout)
        .expect("a valid state record survives everything");
    let s = store.slots();
    for slot in [Slot::A, Slot::B] {
        match s.info(slot).state {
            SlotState::Pending | SlotState::Trial | SlotState::Good => assert!(
                store.image_matches(slot).unwrap(),
                "slot {slot:?} is {:?} but holds other bytes",
                s.info(slot).state
            ),
            SlotState::Staging if !corrupted => {
                let listed = s.info(slot).image.expect("a staging slot lists its image");
                let (image, _) = release(&listed.version.to_string()).expect("a released image");
                let off = store.download_offset() as usize;
                let mut got = vec![0u8; off];
                store.read_slot(slot, 0, &mut got).unwrap();
                assert!(
                    got[..] == image[..off],
                    "slot {slot:?} is staging {} at {off} but holds other bytes",
                    listed.version
                );
            }
            SlotState::Staging | SlotState::Empty | SlotState::Rejected => {}
        }
    }
    let boot = store.boot().expect("a verified image boots");
    let s = store.slots();
    let running = s.info(boot.slot()).image.unwrap().version.to_string();
    let (want, own) = release(&running).unwrap_or_else(|| panic!("booted {running}"));
    let mut got = vec![0u8; want.len()];
    store.read_slot(boot.slot(), 0, &mut got).unwrap();
    assert!(
        got == want,
        "the booted slot holds other bytes than {running}"
    );
    let counter = s.security_counter();
    assert!(
        [1, 7, 9].contains(&counter) && counter <= own,
        "counter {counter} with {running} running"
    );

    let mut honest = Input(&[], false, served);
    let (mut refused, mut mismatched, mut waiting) = (false, false, false);
    let mut now = NOW;
    for _ in 0..8 {
        let s = store.slots();
        if s.info(s.active()).state == SlotState::Trial {
            store.confirm().unwrap();
            continue;
        }
        match scripted_check(&mut store, &mut honest, now) {
            Ok(Outcome::Staged { .. } | Outcome::AwaitingReboot { .. }) => {
                store.boot().unwrap();
            }
            Ok(Outcome::UpToDate { .. }) => break,
            Err(AgentError::PreviouslyReverted { .. }) => {
                refused = true;
                break;
            }
            // the script's download broke off before its next checkpoint after erasing: the
            // pump waits (at most a day, the script's eight breaks in a row under 11 hours),
            // then goes on
            Err(AgentError::DownloadBroken { retry_at })
                if retry_at > now && retry_at - now <= 300 << 7 =>
            {
                now = retry_at;
            }
            // a download resumed over a corrupted block: its hash fails once, the staging is
            // abandoned and the next check starts over
            Err(AgentError::Trust(hale_core::Error::HashMismatch { .. }))
                if corrupted && !mismatched =>
            {
                mismatched = true;
            }
            // the server served wrong bytes (the corrupted block; the hash failed here or in
            // the script's checks): not downloaded again from it for a day from then
            Err(AgentError::WrongBytes { retry_at })
                if corrupted
                    && [NOW, now]
                        .contains(&(retry_at - device_agent::agent::RETRY_WRONG_BYTES)) =>
            {
                waiting = true;
                break;
            }
            other => panic!("settling: {other:?}"),
        }
    }
    let s = store.slots();
    let end = (
        s.running().unwrap().version.to_string(),
        s.security_counter(),
    );
    let newest = match served {
        Served::Before => "2.0.0",
        Served::After => "3.0.0",
    };
    let newest_end = (newest.to_string(), release(newest).unwrap().1);
    let older_end = [("1.0.0".to_string(), 1), ("2.0.0".to_string(), 7)];
    assert!(
        end == newest_end || ((refused || waiting) && end.0 != newest && older_end.contains(&end)),
        "settled on {end:?} with {newest} served (refused: {refused}, waiting: {waiting})"
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Input(data, false, Served::Before);
    let flags = input.byte();
    let cut = u32::from(u16::from_le_bytes([input.byte(), input.byte()]));
    let keep = input.byte();
    let (cached, cutting) = (flags & 1 != 0, flags & 2 != 0);
    let layout = if flags & 4 != 0 {
        LAYOUT.with_checkpoint(2 * ERASE as u32)
    } else {
        LAYOUT
    };

    // the factory: 1.0.0 (counter 1) in slot A, the fixture's root trusted
    let mut mem = vec![0u8; layout.end() as usize];
    let image = Image {
        version: Version::new(1, 0, 0),
        security_counter: 1,
        length: V1_LEN as u64,
        sha256: Sha256::digest(&f.v1).into(),
    };
    FirmwareStore::provision(
        MemFlash::<ERASE>::new(&mut mem),
        layout,
        &f.files[0]["1.root.json"],
        &f.v1,
        image,
    )
    .unwrap();

    let cut = cutting.then_some(cut);
    if cached {
        // bit 3: the power fails instead of a sync (the cache at its fullest)
        let at = cut.map(|n| match flags & 8 {
            0 => Cut::Operation(n),
            _ => Cut::Sync(n % 64),
        });
        let flash = CachedFlash::<ERASE>::new(&mut mem, at);
        let mut store = FirmwareStore::open(flash, layout).unwrap();
        run(&mut store, &mut input, |f| f.power_lost());
        let flash = store.into_flash();
        // which held-back pieces reach the medium: a stretch kept or lost (as fractions of the
        // held pieces, from two input bytes), or one input bit per piece
        let (lo, hi) = (usize::from(input.byte()), usize::from(input.byte()));
        let (mut bits, mut byte) = (0u32, 0u8);
        flash.crash(|i, count| {
            let inside = (lo * count / 256..hi * count / 256 + 1).contains(&i);
            match keep % 5 {
                0 => false,
                1 => true,
                2 => !inside,
                3 => inside,
                _ => {
                    if bits == 0 {
                        byte = input.byte();
                        bits = 8;
                    }
                    bits -= 1;
                    (byte >> bits) & 1 == 1
                }
            }
        });
    } else {
        let flash = MemFlash::<ERASE>::new(&mut mem);
        let flash = match cut {
            Some(n) => flash.fail_after(n),
            None => flash,
        };
        let mut store = FirmwareStore::open(flash, layout).unwrap();
        run(&mut store, &mut input, |f| f.power_lost());
    }
    power_up_and_settle(&mut mem, layout, input.1, input.2);
});
