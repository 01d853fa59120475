//! The pump's firmware store (`device_agent::FirmwareStore`, `no_std` as on a device) opened from
//! whatever its flash holds: two state records built from the input, each sealed with its SHA-256
//! (or torn), so the fuzzer gets past the digest into every field (slot states, versions, image
//! lengths, metadata lengths, the last-check record), and slot bytes that match their records or
//! not. Then the boot step, a confirm or a reject, with the power cut at a chosen flash operation.
//! Checked:
//! - opening, reading the metadata and the boot step never panic, whatever the records say;
//! - a boot that succeeds runs a slot whose state is good or trial and whose bytes hash to its
//!   record, and the decision is on the flash (a reopened store has the same slots);
//! - a power cut during a boot, confirm or reject leaves the state before or the state after it,
//!   never a third one, and never loses the stored metadata.
#![no_main]
use device_agent::memflash::MemFlash;
use device_agent::{FirmwareStore, Layout, SlotState, Slots, StoreError};
use hale_core::Role;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const ERASE: usize = 1024;
const STATE_LEN: u32 = 4096;
const SLOT_LEN: u32 = 8192;
const LAYOUT: Layout = Layout::contiguous(0, STATE_LEN, SLOT_LEN);
const HEADER_LEN: usize = 256;
const SLOT_INFO_LEN: usize = 100;
const VERSIONS: [&[u8]; 4] = [
    b"1.0.0",
    b"2.0.0",
    b"2.0.0-rc.1+build.5",
    b"18446744073709551615.0.0",
];

type Flash<'a> = MemFlash<'a, ERASE>;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|_| self.byte()))
    }
    /// `n` bytes of input, zero-padded when it runs out.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        let mut v = head.to_vec();
        v.resize(n, 0);
        v
    }
}

/// One slot's 100-byte record field: state, has_image, version (one of `VERSIONS` or raw bytes),
/// security counter, length and SHA-256 (of the slot's bytes, or from the input).
fn slot_info(input: &mut Input<'_>, slot_bytes: &[u8]) -> [u8; SLOT_INFO_LEN] {
    let mut f = [0u8; SLOT_INFO_LEN];
    let flags = input.byte();
    f[0] = flags % 8; // 0..=5 are states, 6 and 7 are not
    f[1] = u8::from(flags & 0x08 == 0);
    let version: Vec<u8> = if flags & 0x10 == 0 {
        VERSIONS[usize::from(input.byte()) % VERSIONS.len()].to_vec()
    } else {
        let n = usize::from(input.byte() % 64);
        input.bytes(n)
    };
    f[2] = version.len() as u8;
    let n = version.len().min(48);
    f[4..4 + n].copy_from_slice(&version[..n]);
    f[52..60].copy_from_slice(&input.u64().to_le_bytes());
    // an image length within the slot, or anything
    let length = if flags & 0x20 == 0 {
        u64::from(input.u16()) % (u64::from(SLOT_LEN) + 1)
    } else {
        input.u64()
    };
    f[60..68].copy_from_slice(&length.to_le_bytes());
    let sha: [u8; 32] = match slot_bytes.get(..length as usize) {
        Some(image) if flags & 0x40 == 0 => Sha256::digest(image).into(),
        _ => input.bytes(32).try_into().unwrap_or([0; 32]),
    };
    f[68..100].copy_from_slice(&sha);
    f
}

/// A state record region (erased when the input says so): header, metadata, last check, SHA-256.
fn record(input: &mut Input<'_>, slots: [&[u8]; 2]) -> Vec<u8> {
    let mut region = vec![0xFFu8; STATE_LEN as usize];
    let flags = input.byte();
    if flags & 0x01 != 0 {
        return region; // erased
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(if flags & 0x02 == 0 { b"HALS" } else { b"HALT" });
    h[4] = if flags & 0x04 == 0 { 1 } else { 2 };
    h[5] = input.byte() % 3; // active slot: A, B or neither
    h[8..12].copy_from_slice(&u32::from(input.byte()).to_le_bytes()); // sequence
    h[16..24].copy_from_slice(&input.u64().to_le_bytes()); // security counter
    h[24..124].copy_from_slice(&slot_info(input, slots[0]));
    h[124..224].copy_from_slice(&slot_info(input, slots[1]));
    h[224..232].copy_from_slice(&input.u64().to_le_bytes()); // download offset
    let mut meta_len = 0usize;
    for i in 0..4 {
        // lengths that fit the region, or anything
        let l = if flags & 0x08 == 0 {
            u32::from(input.u16() % 1000)
        } else {
            u32::from_le_bytes(core::array::from_fn(|_| input.byte()))
        };
        h[232 + 4 * i..236 + 4 * i].copy_from_slice(&l.to_le_bytes());
        meta_len = meta_len.saturating_add(l as usize);
    }
    let check_len: u32 = match flags >> 4 & 3 {
        0 => 0,
        1 | 2 => 49,
        _ => u32::from(input.byte()),
    };
    h[248..252].copy_from_slice(&check_len.to_le_bytes());
    let mut body = h.to_vec();
    let room = region.len() - HEADER_LEN - 32;
    body.extend(input.bytes(meta_len.min(room)));
    body.extend(input.bytes((check_len as usize).min(room)));
    let digest: [u8; 32] = if flags & 0x40 == 0 {
        Sha256::digest(&body).into()
    } else {
        input.bytes(32).try_into().unwrap_or([0; 32]) // torn
    };
    body.extend(digest);
    let n = body.len().min(region.len());
    region[..n].copy_from_slice(&body[..n]);
    region
}

/// What a reopened store says: its slots and every role's stored metadata.
fn snapshot(mem: &mut [u8]) -> Option<(Slots, Vec<Option<Vec<u8>>>)> {
    let mut store = FirmwareStore::open(Flash::new(mem), LAYOUT).ok()?;
    let mut buf = vec![0u8; STATE_LEN as usize];
    let meta = [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets]
        .into_iter()
        .map(|r| {
            store
                .read_metadata(r, &mut buf)
                .expect("the open record's metadata reads back")
                .map(<[u8]>::to_vec)
        })
        .collect();
    Some((store.slots(), meta))
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Boot,
    Confirm,
    Reject,
}

/// Run `op` on a store opened from `mem` with the power cut at flash operation `cut` (`None`:
/// never). Returns whether it completed.
fn run(mem: &mut [u8], op: Op, cut: Option<u32>) -> bool {
    let flash = Flash::new(mem);
    let flash = match cut {
        Some(n) => flash.fail_after(n),
        None => flash,
    };
    let Ok(mut store) = FirmwareStore::open(flash, LAYOUT) else {
        return false;
    };
    let done = match op {
        Op::Boot => match (store.slots(), store.boot()) {
            (before, Ok(boot)) => {
                let slot = boot.slot();
                // a damaged good image gives way only to an image the security counter allows
                if let device_agent::Boot::Damaged { damaged, .. } = boot {
                    if before.info(damaged).state == SlotState::Good {
                        let counter = store.slots().info(slot).image.map(|i| i.security_counter);
                        assert!(
                            counter >= Some(before.security_counter()),
                            "fell back to {slot:?} below the security counter"
                        );
                    }
                }
                let state = store.slots().info(slot).state;
                assert!(
                    matches!(state, SlotState::Good | SlotState::Trial),
                    "booted {slot:?} in state {state:?}"
                );
                assert!(
                    store.image_matches(slot).expect("reads back"),
                    "booted {slot:?}, whose bytes do not match its record"
                );
                true
            }
            (_, Err(StoreError::NoBootableImage)) => {
                // nothing was bootable: no good image the security counter allows is intact
                let s = store.slots();
                for slot in [device_agent::Slot::A, device_agent::Slot::B] {
                    let info = s.info(slot);
                    let allowed = info.state == SlotState::Good
                        && info
                            .image
                            .is_some_and(|i| i.security_counter >= s.security_counter());
                    if allowed && !store.flash_mut().power_lost() {
                        assert!(
                            !store.image_matches(slot).expect("reads back"),
                            "no bootable image, but {slot:?} holds an intact good one"
                        );
                    }
                }
                true
            }
            (_, Err(StoreError::Slot(_))) => true,
            (_, Err(_)) => false,
        },
        Op::Confirm => store.confirm().is_ok(),
        Op::Reject => store.reject().is_ok(),
    };
    let lost = store.into_flash().power_lost();
    done && !lost
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    // slot bytes: a pattern from the input (the records' lengths and hashes refer to it)
    let (seed_a, seed_b) = (input.byte(), input.byte());
    let slot = |seed: u8| -> Vec<u8> {
        (0..SLOT_LEN as usize)
            .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
            .collect()
    };
    let (a, b) = (slot(seed_a), slot(seed_b));
    let r0 = record(&mut input, [&a, &b]);
    let r1 = record(&mut input, [&a, &b]);
    let mut mem = Vec::with_capacity(LAYOUT.end() as usize);
    for part in [&r0, &r1, &a, &b] {
        mem.extend_from_slice(part);
    }
    assert_eq!(mem.len(), LAYOUT.end() as usize);

    let Some(before) = snapshot(&mut mem) else {
        return; // no valid record: the pump reports it, nothing to boot
    };
    let ops = [Op::Boot, Op::Confirm, Op::Reject];
    let op = ops[usize::from(input.byte()) % ops.len()];
    // the state after the operation, uncut
    let mut uncut = mem.clone();
    let completed = run(&mut uncut, op, None);
    let after =
        snapshot(&mut uncut).expect("a completed or refused operation leaves a valid record");
    if !completed {
        assert_eq!(after, before, "{op:?} failed but changed the state");
    }
    // the same operation with the power cut at a chosen flash operation, then a reboot
    let cut = u32::from(input.byte() % 16);
    run(&mut mem, op, Some(cut));
    let rebooted =
        snapshot(&mut mem).expect("a power cut never leaves the pump without a valid record");
    assert!(
        rebooted == before || rebooted == after,
        "a power cut during {op:?} left a third state:\nbefore {before:?}\nafter {after:?}\nrebooted {rebooted:?}"
    );
});
