//! The firmware store: two image slots and a state area on one [`NorFlash`].
//!
//! ## State records
//! The state area holds two records; each change of state writes a complete new record into the
//! region that does *not* hold the current one, so the current record is never touched while the
//! next is written. A record is valid when its magic, lengths and trailing sha256 check out; the
//! valid record with the highest sequence number is the state. A power cut during erase or write
//! leaves an invalid record and the previous state stands.
//!
//! ```text
//! 0    "HALS" format(1) active(1) floor(1) pad(1) seq:u32 authorization:u32
//! 16   security_counter:u64
//! 24   slot A: state, has_image, version_len, pad, version[48], counter:u64, length:u64, sha256[32]
//! 124  slot B: (same, 100 bytes)
//! 224  download_offset:u64
//! 232  metadata lengths: root, timestamp, snapshot, targets (u32 each)
//! 248  length of the last-check record: 0 (none) or 49 (u32)
//! 252  length of the refused list: 0 to 4 sha256 values, 32 bytes each (u32)
//! 256  metadata bytes, concatenated, exactly as verified; then the last-check record:
//!      snapshot_version:u64 running_sha256[32] valid_until:i64 conclusion:u8 (1 up to date,
//!      2 wrong bytes, 3 + n a download broken off n + 1 times in a row)
//! ...  sha256 over everything before it
//! ...  when 252 is not 0: the refused list, sha256[32] each, oldest first, and a sha256 over
//!      the record's digest and the list
//! ...  when bit 0 of 6 is set: the time floor (Unix seconds, i64) and a sha256 over the digest
//!      before it and the floor
//! ```
//!
//! The time floor is the latest time an update check showed to be past
//! ([`hale_core::TrustedSet::time_passed`]): the device's checks never run at an earlier time
//! ([`hale_core::time::check_time`]), whatever its clock says. Every record carries the floor the
//! store holds in RAM; a check writes a record for it alone once it is
//! [`FLOOR_RECORD_STEP`] past the recorded one. It comes last, for the reason the refused list
//! comes after the digest; a record written before it existed has 0 at 6 (pad then): floor 0.
//!
//! The refused list holds the images that failed their trial here (a reset or a failed health
//! check before confirmation) and the one an authorized rollback took the device back from:
//! never installed again, even once their slot holds another image. The newest
//! [`REFUSED_MAX`] are kept. An image found damaged in its slot before it ran is not listed
//! (its slot's `Rejected` state refuses it while the slot holds it). A record written before the
//! list existed has 0 at 252: none (the slots' own `Rejected` states still say theirs). The list
//! comes after the record's digest so that an agent built before it (firmware an authorized
//! rollback may go back to) reads the record as it always did, without the list; this agent
//! takes a record whose list does not verify for a torn one (the previous record stands).
//!
//! A record written before the last-check field existed has 0 at 248: no last check. One written
//! before the authorization field existed has 0 at 12 (then reserved, always 0): no rollback
//! authorization used. `authorization` is the `issued` time (Unix seconds) of the last rollback
//! authorization an image was staged by; the agent accepts only a later one.

use embedded_storage::nor_flash::NorFlash;
use hale_core::crypto::{sha256_finish, sha256_update};
use hale_core::slots::{Boot, Image, Slot, SlotInfo, SlotState, Slots};
use hale_core::{Role, Seal, UnixTime, Version};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"HALS";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 256;
const SLOT_INFO_LEN: usize = 100;
/// Longest printed version a slot record holds.
pub const VERSION_MAX: usize = 48;
const DIGEST_LEN: usize = 32;
const LAST_CHECK_LEN: usize = 49;
/// The time floor and its digest.
const FLOOR_LEN: usize = 8 + DIGEST_LEN;
/// A time floor this far past the recorded one is recorded by itself (seconds): a pump polling
/// every minute writes at most one record an hour for it (a new timestamp, about twice a day,
/// carries it anyway), and after a reset its floor is at most this much behind.
pub const FLOOR_RECORD_STEP: UnixTime = 3600;
/// Images refused for good that a record remembers (newest kept).
pub const REFUSED_MAX: usize = 4;
/// Bytes a state record region must hold for `metadata` bytes of trusted metadata in all: the
/// header, a last check, a full refused list and the digests. A layout whose `state_len` is at
/// least this for the most metadata its check's buffers take never refuses a record for its
/// size ([`StoreError::RecordTooSmall`]).
pub const fn record_len(metadata: usize) -> usize {
    HEADER_LEN + metadata + LAST_CHECK_LEN + DIGEST_LEN + REFUSED_MAX * 32 + DIGEST_LEN + FLOOR_LEN
}
/// Bytes moved per flash read or write when copying (stack buffer).
const COPY_CHUNK: usize = 64;

/// Where things are on the flash. Every offset and length must be a multiple of the erase size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Offsets of the two state records.
    pub state: [u32; 2],
    /// Size of each state record region.
    pub state_len: u32,
    /// Offsets of slots A and B.
    pub slots: [u32; 2],
    /// Size of each slot.
    pub slot_len: u32,
    /// Bytes of a download between two checkpoints (state records saying how far it got): a
    /// multiple of the erase size, or 0 for every erase sector. Each checkpoint writes a whole
    /// record, the trusted metadata included, erasing the sectors it spans: a larger interval
    /// spares the state sectors and install time, and costs at most this many bytes downloaded
    /// again after a power cut (a download the network breaks off commits a checkpoint at its
    /// last whole sector).
    pub checkpoint: u32,
}

impl Layout {
    /// State records first, then slot A, then slot B, each region a whole number of sectors; a
    /// download checkpointed every erase sector.
    pub const fn contiguous(base: u32, state_len: u32, slot_len: u32) -> Layout {
        Layout {
            state: [base, base + state_len],
            state_len,
            slots: [base + 2 * state_len, base + 2 * state_len + slot_len],
            slot_len,
            checkpoint: 0,
        }
    }

    /// The same layout, a download checkpointed every `bytes` (a multiple of the erase size).
    pub const fn with_checkpoint(self, bytes: u32) -> Layout {
        Layout {
            checkpoint: bytes,
            ..self
        }
    }

    /// Bytes of flash the layout covers from offset 0.
    pub const fn end(&self) -> u32 {
        let a = self.state[0] + self.state_len;
        let b = self.state[1] + self.state_len;
        let c = self.slots[0] + self.slot_len;
        let d = self.slots[1] + self.slot_len;
        let ab = if a > b { a } else { b };
        let cd = if c > d { c } else { d };
        if ab > cd {
            ab
        } else {
            cd
        }
    }

    fn slot(&self, s: Slot) -> u32 {
        match s {
            Slot::A => self.slots[0],
            Slot::B => self.slots[1],
        }
    }
}

/// What the store refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The flash failed (or lost power).
    Flash(E),
    /// The layout does not fit this flash (alignment, overlap, capacity).
    Layout { reason: &'static str },
    /// Neither state record is valid: the device was never provisioned.
    NoValidState,
    /// The metadata does not fit a state record.
    RecordTooSmall { needed: usize, capacity: usize },
    /// A caller's buffer is too small for a stored document.
    BufferTooSmall { needed: usize, capacity: usize },
    /// No slot holds an image whose bytes match its record.
    NoBootableImage,
    /// The slot transition is not allowed.
    Slot(hale_core::slots::SlotError),
}

impl<E: core::fmt::Debug> core::fmt::Display for StoreError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Flash(e) => write!(f, "flash: {e:?}"),
            StoreError::Layout { reason } => write!(f, "flash layout: {reason}"),
            StoreError::NoValidState => write!(f, "no valid state record (device not provisioned)"),
            StoreError::RecordTooSmall { needed, capacity } => {
                write!(
                    f,
                    "state record needs {needed} bytes, region holds {capacity}"
                )
            }
            StoreError::BufferTooSmall { needed, capacity } => {
                write!(f, "buffer needs {needed} bytes, has {capacity}")
            }
            StoreError::NoBootableImage => write!(f, "no slot holds a verified image"),
            StoreError::Slot(e) => write!(f, "{e}"),
        }
    }
}

/// Metadata to put in the next record.
#[derive(Debug, Clone, Copy)]
pub enum Meta<'a> {
    /// What the current record holds.
    Keep,
    /// These bytes (empty: none).
    Set(&'a [u8]),
}

/// What the last completed update check concluded, so the next one can skip the target search
/// when nothing changed (see [`crate::agent::check_for_update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastCheck {
    /// The snapshot version (as the timestamp named it) the check searched.
    pub snapshot_version: u64,
    /// The running image it concluded about.
    pub running_sha256: [u8; 32],
    /// The earliest expiry of the snapshot, targets and delegated roles it relied on.
    pub valid_until: UnixTime,
    /// What it concluded.
    pub conclusion: Conclusion,
}

/// A conclusion worth remembering: "up to date", an image whose bytes failed their hashes (the
/// server is likely to serve the same bytes again), and a download that keeps breaking off
/// before its next checkpoint (each try erases the same sectors). A deferred or otherwise
/// refused update is evaluated again at the next check.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    /// The running image is what the repository offers.
    UpToDate,
    /// The image the snapshot offers was downloaded from a server and its bytes did not match
    /// the trusted hashes; `valid_until` is when it may be downloaded again
    /// ([`crate::agent::RETRY_WRONG_BYTES`] after the failure, or when the snapshot or targets
    /// expire if that is sooner). An agent that predates this value reads no last check.
    WrongBytes,
    /// The download of the image the snapshot offers broke off (a transport error) after it had
    /// erased slot sectors and before it reached a new checkpoint, for the `tries + 1`-th time
    /// in a row: the next try erases the same sectors again, so it waits until `valid_until`
    /// ([`crate::agent::retry_broken`]). An agent that predates this value reads no last check.
    Broken { tries: u8 },
}

impl LastCheck {
    fn encode(&self) -> [u8; LAST_CHECK_LEN] {
        let mut b = [0u8; LAST_CHECK_LEN];
        let (v, rest) = b.split_at_mut(8);
        v.copy_from_slice(&self.snapshot_version.to_le_bytes());
        let (sha, rest) = rest.split_at_mut(32);
        sha.copy_from_slice(&self.running_sha256);
        let (until, rest) = rest.split_at_mut(8);
        until.copy_from_slice(&self.valid_until.to_le_bytes());
        if let Some(c) = rest.first_mut() {
            *c = match self.conclusion {
                Conclusion::UpToDate => 1,
                Conclusion::WrongBytes => 2,
                Conclusion::Broken { tries } => 3u8.saturating_add(tries),
            };
        }
        b
    }

    fn decode(b: &[u8; LAST_CHECK_LEN]) -> Option<LastCheck> {
        let (v, rest) = b.split_first_chunk::<8>()?;
        let (sha, rest) = rest.split_first_chunk::<32>()?;
        let (until, rest) = rest.split_first_chunk::<8>()?;
        let conclusion = match rest.first()? {
            1 => Conclusion::UpToDate,
            2 => Conclusion::WrongBytes,
            b @ 3.. if b - 3 <= crate::agent::BROKEN_TRIES_MAX => {
                Conclusion::Broken { tries: b - 3 }
            }
            _ => return None,
        };
        Some(LastCheck {
            snapshot_version: u64::from_le_bytes(*v),
            running_sha256: *sha,
            valid_until: i64::from_le_bytes(*until),
            conclusion,
        })
    }
}

/// The state in RAM (mirrors the current record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    seq: u32,
    region: usize,
    slots: Slots,
    download_offset: u64,
    meta_lens: [u32; 4],
    last_check: Option<LastCheck>,
    /// `issued` of the last rollback authorization an image was staged by (0: none)
    authorization: u32,
    /// images refused for good, oldest first
    refused: Refused,
    /// the time floor (0: none)
    floor: UnixTime,
}

/// The sha256 values of images never to be installed again (see the module's documentation): a
/// ring, the oldest overwritten when full (no shifting: `memmove` alone is ~1.5 KB of firmware).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Refused {
    list: [[u8; 32]; REFUSED_MAX],
    len: u8,
    /// where the next one goes (the oldest, when full)
    next: u8,
}

impl Refused {
    fn entries(&self) -> &[[u8; 32]] {
        self.list.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The entries, oldest first (as a record keeps them).
    fn oldest_first(&self) -> impl Iterator<Item = &[u8; 32]> {
        let (len, next) = (usize::from(self.len), usize::from(self.next));
        let start = if len == REFUSED_MAX { next } else { 0 };
        (0..len).filter_map(move |k| self.list.get((start + k) % REFUSED_MAX))
    }

    /// With `sha256` (when given and not listed yet), the oldest dropped when full.
    fn with(mut self, sha256: Option<[u8; 32]>) -> Refused {
        let Some(d) = sha256 else { return self };
        if self.entries().contains(&d) {
            return self;
        }
        if let Some(e) = self.list.get_mut(usize::from(self.next)) {
            *e = d;
        }
        self.next = ((usize::from(self.next) + 1) % REFUSED_MAX) as u8;
        self.len = (usize::from(self.len) + 1).min(REFUSED_MAX) as u8;
        self
    }

    fn byte_len(&self) -> usize {
        self.entries().len() * 32
    }
}

/// The one thing a [`FirmwareStore`] needs from its flash beyond [`NorFlash`]: a way to put
/// earlier writes on the medium before later ones.
///
/// A NOR part's write or erase is on the medium when it returns, in order: implement this with
/// the default, `impl Durable for MyFlash {}`. A flash kept behind a cache (a file in the
/// operating system's page cache, a managed part with a write cache) may hold writes back and
/// put them on the medium in any order; its `sync` must return only when every earlier write and
/// erase is there. The store calls it around every state record, where its power-loss argument
/// needs an order:
/// - before the record: the slot bytes a record claims (a download checkpoint, a staged image)
///   reach the medium before the claim does;
/// - after it: the record reaches the medium before anything it allows, such as erasing the
///   slot the previous record still listed, and before the store reports the change done.
///
/// Between two records nothing needs an order: slot writes and erases are claimed by no record
/// yet, and a record that reached the medium only in part fails its digest, so the previous one
/// stands. `tests/power_loss.rs` cuts the power at every operation with the held-back writes
/// lost or kept in 12 patterns, the `install` fuzz target anywhere with any of them kept.
pub trait Durable: NorFlash {
    /// Put every earlier write and erase on the medium.
    fn sync(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A/B slots and persisted state on a [`NorFlash`].
#[derive(Debug)]
pub struct FirmwareStore<F> {
    flash: F,
    layout: Layout,
    state: State,
    /// What the last update check verified of the root and timestamp it left (hale-core's
    /// [`Seal`]): the next check in this boot does not check their signatures again when it
    /// reads the same bytes back. In memory only: after a reset they are verified again.
    seal: Option<Seal>,
    /// The time floor: the recorded one, or later checks' (recorded with the next record).
    floor: UnixTime,
    /// The last record had no room for the floor: a record for it alone would not take it.
    floor_unfit: bool,
    /// The highest clock an update check had since the store was opened (0: none yet, or none
    /// after 1970), and what it was when the remembered wait began, or when a check first met
    /// that wait since (0: not met yet). A wait ends once the clock has gone its length
    /// past that, though a clock behind the time floor leaves the checks' own time standing
    /// ([`waited_out`](Self::waited_out)). In memory only: after a reset a wait counts from
    /// the first check.
    clock_max: UnixTime,
    wait_from: UnixTime,
}

fn role_idx(r: Role) -> usize {
    match r {
        Role::Root => 0,
        Role::Timestamp => 1,
        Role::Snapshot => 2,
        Role::Targets => 3,
    }
}

fn check_layout<F: NorFlash>(flash: &F, l: &Layout) -> Result<(), &'static str> {
    let erase = F::ERASE_SIZE as u32;
    if F::READ_SIZE != 1 {
        return Err("READ_SIZE must be 1");
    }
    if F::WRITE_SIZE == 0 || COPY_CHUNK % F::WRITE_SIZE != 0 {
        return Err("WRITE_SIZE must divide 64");
    }
    if erase == 0 {
        return Err("ERASE_SIZE is 0");
    }
    let all = [
        l.state[0],
        l.state[1],
        l.slots[0],
        l.slots[1],
        l.state_len,
        l.slot_len,
    ];
    if all.iter().any(|v| v % erase != 0) {
        return Err("offsets and lengths must be multiples of the erase size");
    }
    if l.checkpoint % erase != 0 {
        return Err("the checkpoint interval must be a multiple of the erase size");
    }
    if (l.state_len as usize) < HEADER_LEN + DIGEST_LEN || l.slot_len == 0 {
        return Err("regions too small");
    }
    let regions = [
        (l.state[0], l.state_len),
        (l.state[1], l.state_len),
        (l.slots[0], l.slot_len),
        (l.slots[1], l.slot_len),
    ];
    for (i, (a, alen)) in regions.iter().enumerate() {
        let a_end = a.checked_add(*alen).ok_or("region past 4 GiB")?;
        if a_end as usize > flash.capacity() {
            return Err("region past the end of the flash");
        }
        for (b, blen) in regions.iter().skip(i + 1) {
            if *a < b.saturating_add(*blen) && *b < a_end {
                return Err("regions overlap");
            }
        }
    }
    Ok(())
}

// --- record encoding -------------------------------------------------------------------------

fn put_u32(h: &mut [u8; HEADER_LEN], at: usize, v: u32) {
    if let Some(d) = h.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u64(h: &mut [u8; HEADER_LEN], at: usize, v: u64) {
    if let Some(d) = h.get_mut(at..at + 8) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u32(h: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = h.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn get_u64(h: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = h.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn state_code(s: SlotState) -> u8 {
    match s {
        SlotState::Empty => 0,
        SlotState::Staging => 1,
        SlotState::Pending => 2,
        SlotState::Trial => 3,
        SlotState::Good => 4,
        SlotState::Rejected => 5,
    }
}

fn state_from(c: u8) -> Option<SlotState> {
    Some(match c {
        0 => SlotState::Empty,
        1 => SlotState::Staging,
        2 => SlotState::Pending,
        3 => SlotState::Trial,
        4 => SlotState::Good,
        5 => SlotState::Rejected,
        _ => return None,
    })
}

struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedStr<N> {
    fn push(&mut self, s: &str) -> Option<()> {
        let end = self.len.checked_add(s.len())?;
        self.buf
            .get_mut(self.len..end)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Some(())
    }

    /// `MAJOR.MINOR.PATCH[-PRE]`, without `core::fmt` (it costs kilobytes of flash).
    fn push_version(&mut self, v: &Version) -> Option<()> {
        let mut d = [0u8; 20];
        self.push(decimal(v.major, &mut d))?;
        self.push(".")?;
        self.push(decimal(v.minor, &mut d))?;
        self.push(".")?;
        self.push(decimal(v.patch, &mut d))?;
        if !v.pre_release().is_empty() {
            self.push("-")?;
            self.push(v.pre_release())?;
        }
        Some(())
    }
}

/// `v` in decimal, written into `buf`.
pub fn decimal(v: u64, buf: &mut [u8; 20]) -> &str {
    hale_core::canonical::decimal(v, buf)
}

fn encode_slot(h: &mut [u8; HEADER_LEN], at: usize, info: &SlotInfo) {
    let Some(d) = h.get_mut(at..at + SLOT_INFO_LEN) else {
        return;
    };
    d.fill(0);
    if let Some(b) = d.get_mut(0) {
        *b = state_code(info.state);
    }
    let Some(img) = info.image else { return };
    let mut v = FixedStr::<VERSION_MAX> {
        buf: [0; VERSION_MAX],
        len: 0,
    };
    // a version longer than the field cannot be recorded: the agent refuses such targets first
    let _ = v.push_version(&img.version);
    if let Some(b) = d.get_mut(1) {
        *b = 1;
    }
    if let Some(b) = d.get_mut(2) {
        *b = v.len as u8;
    }
    if let (Some(dst), Some(src)) = (d.get_mut(4..4 + v.len), v.buf.get(..v.len)) {
        dst.copy_from_slice(src);
    }
    let o = 4 + VERSION_MAX;
    put_u64(h, at + o, img.security_counter);
    put_u64(h, at + o + 8, img.length);
    if let Some(dst) = h.get_mut(at + o + 16..at + o + 48) {
        dst.copy_from_slice(&img.sha256);
    }
}

fn decode_slot(h: &[u8; HEADER_LEN], at: usize) -> Option<SlotInfo> {
    let d = h.get(at..at + SLOT_INFO_LEN)?;
    let state = state_from(*d.first()?)?;
    if *d.get(1)? == 0 {
        return Some(SlotInfo { state, image: None });
    }
    let vlen = usize::from(*d.get(2)?);
    let version = Version::parse(core::str::from_utf8(d.get(4..4 + vlen)?).ok()?)?;
    let o = 4 + VERSION_MAX;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(h.get(at + o + 16..at + o + 48)?);
    let image = Image {
        version,
        security_counter: get_u64(h, at + o),
        length: get_u64(h, at + o + 8),
        sha256,
    };
    Some(SlotInfo {
        state,
        image: Some(image),
    })
}

/// The printed version of an image fits its field in a record.
pub fn version_fits(v: &Version) -> bool {
    let mut s = FixedStr::<VERSION_MAX> {
        buf: [0; VERSION_MAX],
        len: 0,
    };
    s.push_version(v).is_some()
}

fn encode_header(st: &State) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    if let Some(d) = h.get_mut(0..4) {
        d.copy_from_slice(MAGIC);
    }
    if let Some(b) = h.get_mut(4) {
        *b = FORMAT;
    }
    if let Some(b) = h.get_mut(5) {
        *b = st.slots.active().index() as u8;
    }
    if let Some(b) = h.get_mut(6) {
        *b = u8::from(st.floor > 0);
    }
    put_u32(&mut h, 8, st.seq);
    put_u32(&mut h, 12, st.authorization);
    put_u64(&mut h, 16, st.slots.security_counter());
    encode_slot(&mut h, 24, &st.slots.info(Slot::A));
    encode_slot(&mut h, 24 + SLOT_INFO_LEN, &st.slots.info(Slot::B));
    put_u64(&mut h, 224, st.download_offset);
    for (i, l) in st.meta_lens.iter().enumerate() {
        put_u32(&mut h, 232 + 4 * i, *l);
    }
    if st.last_check.is_some() {
        put_u32(&mut h, 248, LAST_CHECK_LEN as u32);
    }
    put_u32(&mut h, 252, st.refused.byte_len() as u32);
    h
}

fn decode_header(h: &[u8; HEADER_LEN], region: usize) -> Option<State> {
    if h.get(0..4)? != MAGIC || *h.get(4)? != FORMAT {
        return None;
    }
    let active = match *h.get(5)? {
        0 => Slot::A,
        1 => Slot::B,
        _ => return None,
    };
    let a = decode_slot(h, 24)?;
    let b = decode_slot(h, 24 + SLOT_INFO_LEN)?;
    let slots = Slots::from_parts(active, a, b, get_u64(h, 16));
    let mut meta_lens = [0u32; 4];
    for (i, l) in meta_lens.iter_mut().enumerate() {
        *l = get_u32(h, 232 + 4 * i);
    }
    Some(State {
        seq: get_u32(h, 8),
        region,
        slots,
        download_offset: get_u64(h, 224),
        meta_lens,
        // filled in by `read_record` once the record's digest checks out
        last_check: None,
        authorization: get_u32(h, 12),
        refused: Refused::default(),
        floor: 0,
    })
}

/// Sequential, write-size-aligned writer into an erased region, hashing what it writes.
struct RecordWriter {
    base: u32,
    pos: u32,
    /// Only pushed bytes and the erased-byte padding `flush` adds are ever written from it: it
    /// starts zeroed (an aligned 0xFF fill would pull in another memset, ~0.2 KB of firmware).
    buf: [u8; COPY_CHUNK],
    fill: usize,
    hash: Sha256,
}

impl RecordWriter {
    fn push<F: NorFlash>(
        &mut self,
        flash: &mut F,
        mut data: &[u8],
        hash: bool,
    ) -> Result<(), F::Error> {
        if hash {
            sha256_update(&mut self.hash, data);
        }
        while !data.is_empty() {
            let room = COPY_CHUNK - self.fill;
            let n = room.min(data.len());
            let (head, rest) = data.split_at(n);
            if let Some(d) = self.buf.get_mut(self.fill..self.fill + n) {
                d.copy_from_slice(head);
            }
            self.fill += n;
            data = rest;
            if self.fill == COPY_CHUNK {
                flash.write(self.base + self.pos, &self.buf)?;
                self.pos += COPY_CHUNK as u32;
                self.fill = 0;
            }
        }
        Ok(())
    }

    fn finish<F: NorFlash>(mut self, flash: &mut F) -> Result<(), F::Error> {
        self.seal(flash)?;
        self.flush(flash)
    }

    /// Write the digest of what was pushed so far; what follows is hashed from that digest on.
    fn seal<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), F::Error> {
        let digest = sha256_finish(core::mem::take(&mut self.hash));
        self.push(flash, &digest, false)?;
        sha256_update(&mut self.hash, &digest);
        Ok(())
    }

    /// Write what is buffered, padded with erased bytes to the write size.
    fn flush<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), F::Error> {
        if self.fill > 0 {
            let n = self.fill.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
            if let Some(rest) = self.buf.get_mut(self.fill..n) {
                rest.fill(0xFF);
            }
            if let Some(b) = self.buf.get(..n) {
                flash.write(self.base + self.pos, b)?;
            }
        }
        Ok(())
    }
}

impl<F: Durable> FirmwareStore<F> {
    /// Open a provisioned store: the newest valid state record.
    pub fn open(mut flash: F, layout: Layout) -> Result<Self, StoreError<F::Error>> {
        check_layout(&flash, &layout).map_err(|reason| StoreError::Layout { reason })?;
        let mut best: Option<State> = None;
        for region in 0..2 {
            if let Some(st) = read_record(&mut flash, &layout, region).map_err(StoreError::Flash)? {
                if best.is_none_or(|b| st.seq > b.seq) {
                    best = Some(st);
                }
            }
        }
        let state = best.ok_or_else(|| StoreError::NoValidState)?;
        Ok(FirmwareStore {
            flash,
            layout,
            state,
            seal: None,
            floor: state.floor,
            floor_unfit: false,
            clock_max: 0,
            wait_from: 0,
        })
    }

    /// Factory provisioning: the whole layout erased, `image` written to slot A and recorded as
    /// good, `root` as the trusted root.
    pub fn provision(
        mut flash: F,
        layout: Layout,
        root: &[u8],
        image: &[u8],
        meta: Image,
    ) -> Result<Self, StoreError<F::Error>> {
        check_layout(&flash, &layout).map_err(|reason| StoreError::Layout { reason })?;
        if image.len() as u64 != meta.length || image.len() > layout.slot_len as usize {
            return Err(StoreError::Layout {
                reason: "image does not match its record or does not fit slot A",
            });
        }
        for (off, len) in [
            (layout.state[0], layout.state_len),
            (layout.state[1], layout.state_len),
            (layout.slots[0], layout.slot_len),
            (layout.slots[1], layout.slot_len),
        ] {
            flash.erase(off, off + len).map_err(StoreError::Flash)?;
        }
        let mut w = RecordWriter {
            base: layout.slots[0],
            pos: 0,
            buf: [0; COPY_CHUNK],
            fill: 0,
            hash: Sha256::new(),
        };
        // the tail padded, without the writer's digest (not wanted here)
        w.push(&mut flash, image, false)
            .and_then(|()| w.flush(&mut flash))
            .map_err(StoreError::Flash)?;
        let slots = Slots::factory(meta);
        let state = State {
            seq: 0,
            region: 1,
            slots,
            download_offset: 0,
            meta_lens: [0; 4],
            last_check: None,
            authorization: 0,
            refused: Refused::default(),
            floor: 0,
        };
        let mut store = FirmwareStore {
            flash,
            layout,
            state,
            seal: None,
            floor: 0,
            floor_unfit: false,
            clock_max: 0,
            wait_from: 0,
        };
        store.commit(
            slots,
            0,
            [
                Meta::Set(root),
                Meta::Set(&[]),
                Meta::Set(&[]),
                Meta::Set(&[]),
            ],
        )?;
        Ok(store)
    }

    /// Give the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn slots(&self) -> Slots {
        self.state.slots
    }

    /// Bytes of a download between two checkpoints ([`Layout::checkpoint`]).
    pub fn checkpoint_interval(&self) -> u32 {
        match self.layout.checkpoint {
            0 => F::ERASE_SIZE as u32,
            n => n,
        }
    }

    /// Bytes of the staging image already written and checkpointed.
    pub fn download_offset(&self) -> u64 {
        self.state.download_offset
    }

    /// Sequence number of the current record (grows with every change of state).
    pub fn sequence(&self) -> u32 {
        self.state.seq
    }

    fn meta_offset(&self, idx: usize) -> u32 {
        let before: u32 = self.state.meta_lens.iter().take(idx).sum();
        self.layout
            .state
            .get(self.state.region)
            .copied()
            .unwrap_or(0)
            + HEADER_LEN as u32
            + before
    }

    /// The seal the last update check in this boot left, if any.
    pub(crate) fn seal(&self) -> Option<&Seal> {
        self.seal.as_ref()
    }

    /// Keep `seal` for the next update check.
    pub(crate) fn keep_seal(&mut self, seal: Option<Seal>) {
        self.seal = seal;
    }

    /// The time floor: no update check runs at an earlier time (see the module's documentation).
    pub fn time_floor(&self) -> UnixTime {
        self.floor
    }

    /// Raise the time floor to `t` (what a check showed to be past); recorded with the next
    /// record.
    pub(crate) fn raise_time_floor(&mut self, t: UnixTime) {
        self.floor = self.floor.max(t);
    }

    /// The time an update check that starts at `clock` runs at: hale-core's
    /// [`check_time`](hale_core::time::check_time) over the time floor. The clock is noted for
    /// waits: the highest since the store was opened is kept.
    pub(crate) fn check_time(&mut self, clock: UnixTime) -> UnixTime {
        self.clock_max = self.clock_max.max(clock);
        hale_core::time::check_time(clock, self.floor)
    }

    /// The remembered wait begins now (a check concluded one).
    pub(crate) fn start_wait(&mut self) {
        self.wait_from = self.clock_max;
    }

    /// Has the clock gone `length` past where it was when the remembered wait began (or when a
    /// check first met it since the store was opened)? Only a clock that rises past its highest
    /// counts: one set back and forward again does not end a wait twice.
    pub(crate) fn waited_out(&mut self, length: UnixTime) -> bool {
        if self.wait_from == 0 {
            self.wait_from = self.clock_max;
        }
        self.clock_max.saturating_sub(self.wait_from) >= length
    }

    /// Record the time floor by itself once it is [`FLOOR_RECORD_STEP`] past the recorded one
    /// (unless the last record had no room for it).
    pub(crate) fn record_time_floor_when_due(&mut self) -> Result<(), StoreError<F::Error>> {
        if !self.floor_unfit && self.floor.saturating_sub(self.state.floor) >= FLOOR_RECORD_STEP {
            return self.set_slots_refusing(self.state.slots, None);
        }
        Ok(())
    }

    /// Read the stored metadata of `role` into `buf`; `None` when none is stored.
    pub fn read_metadata<'b>(
        &mut self,
        role: Role,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, StoreError<F::Error>> {
        let i = role_idx(role);
        let len = self.state.meta_lens.get(i).copied().unwrap_or(0) as usize;
        if len == 0 {
            return Ok(None);
        }
        let capacity = buf.len();
        let dst = buf
            .get_mut(..len)
            .ok_or_else(|| StoreError::BufferTooSmall {
                needed: len,
                capacity,
            })?;
        self.flash
            .read(self.meta_offset(i), dst)
            .map_err(StoreError::Flash)?;
        Ok(Some(dst))
    }

    /// Did an image with this sha256 fail its trial here, or did an authorized rollback take
    /// the device back from it (the newest [`REFUSED_MAX`] such images, and the slots' own
    /// `Rejected` records)? It is never installed again.
    pub fn refused(&self, sha256: &[u8; 32]) -> bool {
        self.state.refused.entries().contains(sha256)
            || [Slot::A, Slot::B].into_iter().any(|s| {
                let i = self.state.slots.info(s);
                i.state == SlotState::Rejected && i.image.is_some_and(|i| i.sha256 == *sha256)
            })
    }

    /// What the last completed update check concluded (`None`: search in full).
    pub fn last_check(&self) -> Option<LastCheck> {
        self.state.last_check
    }

    /// `issued` (Unix seconds) of the last rollback authorization an image was staged by; 0 when
    /// none was. Only a later one is accepted ([`hale_core::rollback::Request::last_used`]).
    pub fn last_authorization(&self) -> UnixTime {
        UnixTime::from(self.state.authorization)
    }

    /// Commit new slot states (keeping metadata and the download offset) and, with `issued`,
    /// record it as the last rollback authorization used, in one record: the staged image and
    /// the spent authorization survive a power cut together or not at all. `issued` is kept in
    /// 32 bits (Unix seconds up to 2106); outside that range it is clamped.
    pub fn commit_authorized(
        &mut self,
        slots: Slots,
        issued: Option<UnixTime>,
    ) -> Result<(), StoreError<F::Error>> {
        let (off, last) = (self.state.download_offset, self.state.last_check);
        let auth = issued.map_or(self.state.authorization, |i| {
            u32::try_from(i.max(0)).unwrap_or(u32::MAX)
        });
        self.commit_with(slots, off, [Meta::Keep; 4], last, auth, None)
    }

    /// Write a new state record (the power-loss-safe step every change of state goes through),
    /// keeping the last-check record. On error the previous record is still the state.
    pub fn commit(
        &mut self,
        slots: Slots,
        download_offset: u64,
        meta: [Meta<'_>; 4],
    ) -> Result<(), StoreError<F::Error>> {
        let (last, auth) = (self.state.last_check, self.state.authorization);
        self.commit_with(slots, download_offset, meta, last, auth, None)
    }

    /// Record what an update check concluded, with the metadata it verified (one record: both
    /// or neither survive a power cut).
    pub fn record_check(
        &mut self,
        last_check: Option<LastCheck>,
        meta: [Meta<'_>; 4],
    ) -> Result<(), StoreError<F::Error>> {
        let (slots, off) = (self.state.slots, self.state.download_offset);
        self.commit_with(slots, off, meta, last_check, self.state.authorization, None)
    }

    /// The one way a record is written; `refuse`: an image to add to the refused list.
    fn commit_with(
        &mut self,
        slots: Slots,
        download_offset: u64,
        meta: [Meta<'_>; 4],
        last_check: Option<LastCheck>,
        authorization: u32,
        refuse: Option<[u8; 32]>,
    ) -> Result<(), StoreError<F::Error>> {
        let mut refused = self.state.refused.with(refuse);
        let mut lens = [0u32; 4];
        for (i, (m, l)) in meta.iter().zip(lens.iter_mut()).enumerate() {
            *l = match m {
                Meta::Keep => self.state.meta_lens.get(i).copied().unwrap_or(0),
                Meta::Set(b) => b.len() as u32,
            };
        }
        let check_len = if last_check.is_some() {
            LAST_CHECK_LEN
        } else {
            0
        };
        let fixed: usize =
            lens.iter().map(|l| *l as usize).sum::<usize>() + check_len + HEADER_LEN + DIGEST_LEN;
        let list_len = |r: &Refused| match r.byte_len() {
            0 => 0,
            n => n + DIGEST_LEN,
        };
        let capacity = self.layout.state_len as usize;
        // a slot change (a revert, a confirmation) must not fail for want of room for the list:
        // then it goes without the new entry; nor for the time floor (then kept in RAM only)
        if fixed + list_len(&refused) > capacity {
            refused = self.state.refused;
        }
        let unfit = fixed + list_len(&refused) + FLOOR_LEN > capacity;
        let floor = if unfit { 0 } else { self.floor };
        let total = fixed + list_len(&refused) + if floor > 0 { FLOOR_LEN } else { 0 };
        if total > capacity {
            return Err(StoreError::RecordTooSmall {
                needed: total,
                capacity,
            });
        }
        let region = 1 - self.state.region.min(1);
        let base = self.layout.state.get(region).copied().unwrap_or(0);
        let next = State {
            seq: self.state.seq.wrapping_add(1),
            region,
            slots,
            download_offset,
            meta_lens: lens,
            last_check,
            authorization,
            refused,
            floor,
        };
        let header = encode_header(&next);
        // erase only the sectors the record's writes reach (64-byte pieces): what lies beyond
        // is never read (lengths and the digest bound a record) and keeps its wear
        let erase = F::ERASE_SIZE.max(1);
        let span = (total.div_ceil(COPY_CHUNK) * COPY_CHUNK).div_ceil(erase) * erase;
        let span = span.min(capacity) as u32;
        let f = &mut self.flash;
        // the slot bytes this record may claim are on the medium before it (see `Durable`)
        f.sync().map_err(StoreError::Flash)?;
        f.erase(base, base + span).map_err(StoreError::Flash)?;
        let mut w = RecordWriter {
            base,
            pos: 0,
            buf: [0; COPY_CHUNK],
            fill: 0,
            hash: Sha256::new(),
        };
        w.push(f, &header, true).map_err(StoreError::Flash)?;
        for (i, m) in meta.iter().enumerate() {
            match m {
                Meta::Set(b) => w.push(f, b, true).map_err(StoreError::Flash)?,
                Meta::Keep => {
                    let before: u32 = self.state.meta_lens.iter().take(i).sum();
                    let mut src = self
                        .layout
                        .state
                        .get(self.state.region)
                        .copied()
                        .unwrap_or(0)
                        + HEADER_LEN as u32
                        + before;
                    let mut left = self.state.meta_lens.get(i).copied().unwrap_or(0) as usize;
                    let mut tmp = [0u8; COPY_CHUNK];
                    while left > 0 {
                        let n = left.min(COPY_CHUNK);
                        let t = tmp.get_mut(..n).unwrap_or(&mut []);
                        f.read(src, t).map_err(StoreError::Flash)?;
                        w.push(f, t, true).map_err(StoreError::Flash)?;
                        src += n as u32;
                        left -= n;
                    }
                }
            }
        }
        if let Some(c) = &last_check {
            w.push(f, &c.encode(), true).map_err(StoreError::Flash)?;
        }
        if refused.len > 0 {
            w.seal(f).map_err(StoreError::Flash)?;
            for d in refused.oldest_first() {
                w.push(f, d, true).map_err(StoreError::Flash)?;
            }
        }
        if floor > 0 {
            w.seal(f).map_err(StoreError::Flash)?;
            w.push(f, &floor.to_le_bytes(), true)
                .map_err(StoreError::Flash)?;
        }
        w.finish(f).map_err(StoreError::Flash)?;
        // and the record is on the medium before anything it allows
        f.sync().map_err(StoreError::Flash)?;
        self.state = next;
        self.floor_unfit = unfit;
        Ok(())
    }

    /// Commit new slot states, keeping metadata and the download offset.
    pub fn set_slots(&mut self, slots: Slots) -> Result<(), StoreError<F::Error>> {
        self.set_slots_refusing(slots, None)
    }

    /// [`set_slots`](Self::set_slots), adding `refuse` to the refused list in the same record.
    fn set_slots_refusing(
        &mut self,
        slots: Slots,
        refuse: Option<[u8; 32]>,
    ) -> Result<(), StoreError<F::Error>> {
        let st = self.state;
        self.commit_with(
            slots,
            st.download_offset,
            [Meta::Keep; 4],
            st.last_check,
            st.authorization,
            refuse,
        )
    }

    // --- slots -----------------------------------------------------------------------------

    fn slot_range(&self, slot: Slot, offset: u64, len: usize) -> Result<u32, StoreError<F::Error>> {
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| StoreError::Layout {
                reason: "offset overflow",
            })?;
        if end > u64::from(self.layout.slot_len) {
            return Err(StoreError::Layout {
                reason: "past the end of the slot",
            });
        }
        Ok(self.layout.slot(slot) + offset as u32)
    }

    /// Erase the sector of `slot` that starts at `offset`.
    pub fn erase_slot_sector(
        &mut self,
        slot: Slot,
        offset: u64,
    ) -> Result<(), StoreError<F::Error>> {
        let at = self.slot_range(slot, offset, F::ERASE_SIZE)?;
        self.flash
            .erase(at, at + F::ERASE_SIZE as u32)
            .map_err(StoreError::Flash)
    }

    /// Write `data` (a multiple of the write size, into erased flash) at `offset` of `slot`.
    pub fn write_slot(
        &mut self,
        slot: Slot,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError<F::Error>> {
        let at = self.slot_range(slot, offset, data.len())?;
        self.flash.write(at, data).map_err(StoreError::Flash)
    }

    pub fn read_slot(
        &mut self,
        slot: Slot,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError<F::Error>> {
        let at = self.slot_range(slot, offset, buf.len())?;
        self.flash.read(at, buf).map_err(StoreError::Flash)
    }

    /// Whether `slot` holds bytes matching its recorded image (length and sha256).
    pub fn image_matches(&mut self, slot: Slot) -> Result<bool, StoreError<F::Error>> {
        let Some(img) = self.state.slots.info(slot).image else {
            return Ok(false);
        };
        if img.length > u64::from(self.layout.slot_len) {
            return Ok(false);
        }
        let mut h = Sha256::new();
        let mut tmp = [0u8; COPY_CHUNK];
        let mut off = 0u64;
        while off < img.length {
            let n = (img.length - off).min(COPY_CHUNK as u64) as usize;
            let t = tmp.get_mut(..n).unwrap_or(&mut []);
            self.read_slot(slot, off, t)?;
            sha256_update(&mut h, t);
            off += n as u64;
        }
        let d = sha256_finish(h);
        Ok(d == img.sha256)
    }

    /// The boot step (what a bootloader does after every reset): pending becomes trial, an
    /// unconfirmed trial reverts, and the chosen image's bytes are checked against its record
    /// before it may run: a damaged one gives way to the good image in the other slot
    /// ([`Boot::Damaged`]; a good image only to one the security counter allows), else
    /// [`StoreError::NoBootableImage`]. The decision is committed before it is returned.
    /// A reset clears RAM: the seal the last update check left goes (the next check verifies
    /// the stored root and timestamp again), also when one process simulates the reset. (The
    /// clock a wait is measured by stays: counted from the store's opening, a wait only lasts
    /// longer.)
    pub fn boot(&mut self) -> Result<Boot, StoreError<F::Error>> {
        self.seal = None;
        // decided on a copy: the current state changes only by committing the next record
        let mut next = self.state.slots;
        let mut boot = next.boot_in_place();
        // a trial that ended without confirmation failed: refused for good (an image found
        // damaged below never ran, and is not)
        let failed = match boot {
            Boot::Reverted { rejected, .. } => next.info(rejected).image.map(|i| i.sha256),
            _ => None,
        };
        let slot = boot.slot();
        let state_ok = matches!(next.info(slot).state, SlotState::Good | SlotState::Trial);
        if !state_ok || !self.image_matches(slot)? {
            // a pending or trial image is rejected; a good one gives way to a good image in the
            // other slot (`image_damaged_in_place` says when)
            next.image_damaged_in_place(slot);
            let s = next.boot_in_place().slot();
            if s == slot || next.info(s).state != SlotState::Good || !self.image_matches(s)? {
                return Err(StoreError::NoBootableImage);
            }
            boot = Boot::Damaged {
                slot: s,
                damaged: slot,
            };
        }
        if next != self.state.slots {
            self.set_slots_refusing(next, failed)?;
        }
        Ok(boot)
    }

    /// The application's health checks passed: the trial image becomes good and the security
    /// counter rises to its value.
    pub fn confirm(&mut self) -> Result<(), StoreError<F::Error>> {
        let mut next = self.state.slots;
        next.confirm_in_place().map_err(StoreError::Slot)?;
        // an authorized rollback confirmed: the image it replaced is refused for good
        let other = next.info(next.active().other());
        let replaced = (other.state == SlotState::Rejected).then_some(other.image);
        self.set_slots_refusing(next, replaced.flatten().map(|i| i.sha256))
    }

    /// The application's health checks failed: revert now. Returns the slot that is good.
    pub fn reject(&mut self) -> Result<Boot, StoreError<F::Error>> {
        let mut next = self.state.slots;
        let failed = next.info(next.active()).image.map(|i| i.sha256);
        let boot = next.reject_in_place().map_err(StoreError::Slot)?;
        self.set_slots_refusing(next, failed)?;
        Ok(boot)
    }
}

fn read_record<F: NorFlash>(
    flash: &mut F,
    layout: &Layout,
    region: usize,
) -> Result<Option<State>, F::Error> {
    let base = layout.state.get(region).copied().unwrap_or(0);
    let mut h = [0u8; HEADER_LEN];
    flash.read(base, &mut h)?;
    let Some(mut st) = decode_header(&h, region) else {
        return Ok(None);
    };
    let check_len = match get_u32(&h, 248) {
        0 => 0,
        n if n as usize == LAST_CHECK_LEN => LAST_CHECK_LEN,
        _ => return Ok(None),
    };
    let refused_len = get_u32(&h, 252) as usize;
    if refused_len % 32 != 0 || refused_len > REFUSED_MAX * 32 {
        return Ok(None);
    }
    let list_len = match refused_len {
        0 => 0,
        n => n + DIGEST_LEN,
    };
    // (bit 0; other bits are left to later sections, which come after it)
    let (floor_len, floor_section) = match h.get(6) {
        Some(b) if b & 1 == 1 => (8, FLOOR_LEN),
        _ => (0, 0),
    };
    let meta: u64 = st.meta_lens.iter().map(|l| u64::from(*l)).sum();
    if meta + (check_len + list_len + floor_section + HEADER_LEN + DIGEST_LEN) as u64
        > u64::from(layout.state_len)
    {
        return Ok(None);
    }
    let mut hash = Sha256::new();
    sha256_update(&mut hash, &h);
    let mut off = base + HEADER_LEN as u32;
    let mut left = meta as usize;
    let mut tmp = [0u8; COPY_CHUNK];
    while left > 0 {
        let n = left.min(COPY_CHUNK);
        let t = tmp.get_mut(..n).unwrap_or(&mut []);
        flash.read(off, t)?;
        sha256_update(&mut hash, t);
        off += n as u32;
        left -= n;
    }
    let mut check = [0u8; LAST_CHECK_LEN];
    if check_len > 0 {
        flash.read(off, &mut check)?;
        sha256_update(&mut hash, &check);
        off += LAST_CHECK_LEN as u32;
    }
    let mut stored = [0u8; DIGEST_LEN];
    flash.read(off, &mut stored)?;
    if sha256_finish(hash) != stored {
        return Ok(None);
    }
    // the refused list after the digest, hashed from it: a torn list is a torn record
    // then the refused list and the time floor, each hashed from the digest before it: a torn
    // one is a torn record
    let mut refused = Refused::default();
    let mut floor = [0u8; 8];
    let sections = [
        refused
            .list
            .as_flattened_mut()
            .get_mut(..refused_len)
            .unwrap_or(&mut []),
        floor.get_mut(..floor_len).unwrap_or(&mut []),
    ];
    for data in sections {
        if data.is_empty() {
            continue;
        }
        let mut hash = Sha256::new();
        sha256_update(&mut hash, &stored);
        off += DIGEST_LEN as u32;
        flash.read(off, data)?;
        sha256_update(&mut hash, data);
        off += data.len() as u32;
        flash.read(off, &mut stored)?;
        if sha256_finish(hash) != stored {
            return Ok(None);
        }
    }
    refused.len = (refused_len / 32) as u8;
    // read oldest first: the next one overwrites the oldest once the ring is full
    refused.next = (usize::from(refused.len) % REFUSED_MAX) as u8;
    st.floor = i64::from_le_bytes(floor);
    if check_len > 0 {
        // an unknown conclusion (a newer format) is dropped: the next check searches in full
        st.last_check = LastCheck::decode(&check);
    }
    st.refused = refused;
    Ok(Some(st))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::drop_non_drop)]
mod tests {
    extern crate std;
    use super::*;
    use crate::memflash::MemFlash;
    use hale_core::crypto::sha256;
    use std::vec;

    const L: Layout = Layout::contiguous(0, 4096, 8192);

    type MemStore<'a> = FirmwareStore<MemFlash<'a, 1024>>;

    /// `change` on a copy of `mem` with the power cut after 0, 1, 2… flash operations, until
    /// one completes; `after` gets each time the store opened again, and whether `change`
    /// completed. The flash the completed change left, and the cuts before it.
    fn every_cut(
        mem: &[u8],
        change: impl Fn(&mut MemStore<'_>) -> Result<(), StoreError<crate::memflash::MemFlashError>>,
        mut after: impl FnMut(&mut MemStore<'_>, bool),
    ) -> (Vec<u8>, u32) {
        let mut cut = 0;
        loop {
            let mut m2 = mem.to_vec();
            let mut s =
                FirmwareStore::open(MemFlash::<1024>::new(&mut m2).fail_after(cut), L).unwrap();
            let done = change(&mut s).is_ok();
            drop(s);
            let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut m2), L).unwrap();
            after(&mut s, done);
            drop(s);
            if done {
                return (m2, cut);
            }
            cut += 1;
        }
    }

    fn img(bytes: &[u8], v: u64) -> Image {
        Image {
            version: Version::new(v, 0, 0),
            security_counter: v,
            length: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        }
    }

    /// A flash provisioned with `{}` as the root and a small image in slot A.
    fn provisioned() -> Vec<u8> {
        let mut mem = vec![0u8; L.end() as usize];
        let fw = b"firmware-1".as_slice();
        drop(
            FirmwareStore::provision(MemFlash::<1024>::new(&mut mem), L, b"{}", fw, img(fw, 1))
                .unwrap(),
        );
        mem
    }

    #[test]
    fn records_round_trip_and_a_torn_record_leaves_the_previous_state() {
        let mut mem = vec![0u8; L.end() as usize];
        let fw = b"firmware-1".as_slice();
        let root = b"{\"root\":1}".as_slice();
        {
            let s =
                FirmwareStore::provision(MemFlash::<1024>::new(&mut mem), L, root, fw, img(fw, 1))
                    .unwrap();
            assert_eq!(s.sequence(), 1);
        }
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read_metadata(Role::Root, &mut buf).unwrap(), Some(root));
        assert_eq!(s.read_metadata(Role::Timestamp, &mut buf).unwrap(), None);
        assert!(s.image_matches(Slot::A).unwrap());
        let before = s.slots();
        drop(s);
        // cut the power in every operation of the next commit: the old record stands or the new one
        for cut in 0..20 {
            let mut m2 = mem.clone();
            let mut s =
                FirmwareStore::open(MemFlash::<1024>::new(&mut m2).fail_after(cut), L).unwrap();
            let r = s.commit(
                before,
                0,
                [Meta::Keep, Meta::Set(b"ts"), Meta::Keep, Meta::Keep],
            );
            drop(s);
            let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut m2), L).unwrap();
            let ts = s
                .read_metadata(Role::Timestamp, &mut buf)
                .unwrap()
                .map(<[u8]>::to_vec);
            assert_eq!(s.read_metadata(Role::Root, &mut buf).unwrap(), Some(root));
            if r.is_ok() {
                assert_eq!(ts.as_deref(), Some(b"ts".as_slice()));
                assert_eq!(s.sequence(), 2);
            } else {
                assert!(ts.is_none() || ts.as_deref() == Some(b"ts".as_slice()));
            }
        }
    }

    #[test]
    fn a_record_erases_only_the_sectors_it_spans_and_a_longer_records_rest_is_ignored() {
        let mut mem = vec![0u8; L.end() as usize];
        let fw = b"firmware-1".as_slice();
        let mut s =
            FirmwareStore::provision(MemFlash::<1024>::new(&mut mem), L, b"{}", fw, img(fw, 1))
                .unwrap();
        let slots = s.slots();
        // a record of four sectors, then one in the other region, then a one-sector record
        // where the long one was
        let long = vec![b'x'; 3000];
        s.commit(
            slots,
            0,
            [Meta::Keep, Meta::Set(&long), Meta::Keep, Meta::Keep],
        )
        .unwrap();
        let long_region = s.state.region;
        s.commit(
            slots,
            0,
            [Meta::Keep, Meta::Set(b""), Meta::Keep, Meta::Keep],
        )
        .unwrap();
        drop(s);
        let tail = |mem: &[u8]| {
            let base = L.state[long_region] as usize;
            mem[base + 1024..base + 4096].to_vec()
        };
        let before = tail(&mem);
        assert!(
            before.contains(&b'x'),
            "the long record reaches past its first sector"
        );
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        s.commit(
            slots,
            0,
            [Meta::Keep, Meta::Set(b"ts"), Meta::Keep, Meta::Keep],
        )
        .unwrap();
        assert_eq!(s.state.region, long_region);
        drop(s);
        assert_eq!(
            tail(&mem),
            before,
            "sectors past the new record were not erased"
        );
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(s.sequence(), 4);
        assert_eq!(
            s.read_metadata(Role::Timestamp, &mut buf).unwrap(),
            Some(b"ts".as_slice())
        );
        assert_eq!(
            s.read_metadata(Role::Root, &mut buf).unwrap(),
            Some(b"{}".as_slice())
        );
    }

    #[test]
    fn the_last_check_persists_survives_other_commits_and_a_torn_write() {
        let mut mem = provisioned();
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert_eq!(
            s.last_check(),
            None,
            "a record without the field: no last check"
        );
        let check = LastCheck {
            snapshot_version: 7,
            running_sha256: [0xAB; 32],
            valid_until: 1_900_000_000,
            conclusion: Conclusion::UpToDate,
        };
        s.record_check(Some(check), [Meta::Keep; 4]).unwrap();
        let slots = s.slots();
        s.commit(
            slots,
            0,
            [Meta::Keep, Meta::Set(b"ts"), Meta::Keep, Meta::Keep],
        )
        .unwrap();
        drop(s);
        let s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert_eq!(s.last_check(), Some(check));
        drop(s);
        // a power cut in every operation of clearing it: the old record or the new one stands
        for cut in 0..20 {
            let mut m2 = mem.clone();
            let mut s =
                FirmwareStore::open(MemFlash::<1024>::new(&mut m2).fail_after(cut), L).unwrap();
            let r = s.record_check(None, [Meta::Keep; 4]);
            drop(s);
            let s = FirmwareStore::open(MemFlash::<1024>::new(&mut m2), L).unwrap();
            if r.is_ok() {
                assert_eq!(s.last_check(), None);
            } else {
                assert!(s.last_check().is_none() || s.last_check() == Some(check));
            }
        }
    }

    #[test]
    fn refused_images_persist_keep_the_newest_and_survive_a_torn_write() {
        let mut mem = provisioned();
        let open = |mem: &mut [u8]| {
            let flash = MemFlash::<1024>::new(mem);
            // the borrow ends with the store: the caller drops it before reopening
            FirmwareStore::open(flash, L).unwrap().state.refused
        };
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert!(!s.refused(&[1; 32]), "a record without the list: none");
        for i in 1..=5u8 {
            let slots = s.slots();
            s.set_slots_refusing(slots, Some([i; 32])).unwrap();
        }
        // listed once however often refused
        let slots = s.slots();
        s.set_slots_refusing(slots, Some([5; 32])).unwrap();
        // other records keep it
        s.record_check(
            None,
            [Meta::Set(b"{\"r\":1}"), Meta::Keep, Meta::Keep, Meta::Keep],
        )
        .unwrap();
        drop(s);
        let kept = open(&mut mem);
        let order = |r: &Refused| r.oldest_first().copied().collect::<std::vec::Vec<_>>();
        assert_eq!(order(&kept), [[2; 32], [3; 32], [4; 32], [5; 32]]);
        let s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert!(!s.refused(&[1; 32]), "the oldest left when a fifth came");
        assert!((2..=5u8).all(|i| s.refused(&[i; 32])));
        drop(s);

        // a power cut in every operation of refusing a sixth: the old list or the new one
        let six = [[3; 32], [4; 32], [5; 32], [6; 32]];
        let (_, cuts) = every_cut(
            &mem,
            |s| {
                let slots = s.slots();
                s.set_slots_refusing(slots, Some([6; 32]))
            },
            |s, done| {
                let after = order(&s.state.refused);
                assert!(after == six || !done && after == order(&kept));
            },
        );
        assert!(cuts > 3, "only {cuts} cuts");

        // an agent built before the list reads the record as it always did: the header, the
        // metadata, then the digest over them (the list follows it)
        let s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        let st = s.state;
        drop(s);
        assert_eq!(st.refused.len, 4);
        let base = L.state[st.region] as usize;
        let body = HEADER_LEN + st.meta_lens.iter().sum::<u32>() as usize;
        assert_eq!(
            &mem[base + body..base + body + DIGEST_LEN],
            &sha256(&mem[base..base + body])[..]
        );

        // a slot change never fails for want of room for the list: without room (a state region
        // its metadata nearly fills, as on a small part), it is written without the new entry
        let mut mem = provisioned();
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        let big = vec![b' '; L.state_len as usize - HEADER_LEN - DIGEST_LEN - 60];
        s.record_check(
            None,
            [
                Meta::Set(&big),
                Meta::Set(b""),
                Meta::Set(b""),
                Meta::Set(b""),
            ],
        )
        .unwrap();
        let (seq, slots) = (s.state.seq, s.slots());
        s.set_slots_refusing(slots, Some([9; 32])).unwrap();
        assert_eq!(s.state.seq, seq + 1, "the slot change was written");
        assert!(!s.refused(&[9; 32]));
        assert_eq!(s.state.refused, Refused::default());
    }

    #[test]
    fn a_region_of_record_len_holds_the_fullest_record_and_a_byte_less_does_not() {
        let mut mem = provisioned();
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        for i in 1..=REFUSED_MAX as u8 {
            let slots = s.slots();
            s.set_slots_refusing(slots, Some([i; 32])).unwrap();
        }
        let check = LastCheck {
            snapshot_version: 7,
            running_sha256: [3; 32],
            valid_until: 1_900_000_000,
            conclusion: Conclusion::UpToDate,
        };
        // the most metadata a region of exactly record_len bytes takes, in four roles
        let most = L.state_len as usize - record_len(0);
        assert_eq!(record_len(most), L.state_len as usize);
        let root = vec![b'r'; most - 30];
        fn meta<'a>(root: &'a [u8], extra: &'a [u8]) -> [Meta<'a>; 4] {
            [
                Meta::Set(root),
                Meta::Set(b"timestamp"),
                Meta::Set(b"snapshot"),
                Meta::Set(extra),
            ]
        }
        const FLOOR: UnixTime = 1_900_000_000;
        s.raise_time_floor(FLOOR);
        let extra = vec![b't'; 13 + FLOOR_LEN + 1];
        // more than the floor's length more: refused before anything is erased or written
        let (seq, ops) = (s.sequence(), s.flash_mut().operations());
        assert_eq!(
            s.record_check(Some(check), meta(&root, &extra)),
            Err(StoreError::RecordTooSmall {
                needed: L.state_len as usize + 1,
                capacity: L.state_len as usize
            })
        );
        assert_eq!(s.sequence(), seq);
        assert_eq!(s.flash_mut().operations(), ops, "the flash was written");
        // one byte more: written without the floor, which stays in RAM, and is not recorded
        // by itself (it would not fit either)
        s.record_check(Some(check), meta(&root, &extra[..14]))
            .unwrap();
        assert_eq!(s.time_floor(), FLOOR);
        s.record_time_floor_when_due().unwrap();
        assert_eq!(s.sequence(), seq + 1);
        // the fullest record holds it
        s.record_check(Some(check), meta(&root, &extra[..13]))
            .unwrap();
        s.record_time_floor_when_due().unwrap();
        assert_eq!(s.sequence(), seq + 2);
        drop(s);
        // read back whole: the metadata, the last check, the full refused list and the floor
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert_eq!(s.sequence(), seq + 2);
        assert_eq!(s.time_floor(), FLOOR);
        let mut buf = vec![0u8; L.state_len as usize];
        assert_eq!(
            s.read_metadata(Role::Root, &mut buf).unwrap(),
            Some(root.as_slice())
        );
        assert_eq!(
            s.read_metadata(Role::Targets, &mut buf).unwrap(),
            Some(&extra[..13])
        );
        assert_eq!(s.last_check(), Some(check));
        for i in 1..=REFUSED_MAX as u8 {
            assert!(s.refused(&[i; 32]), "refused entry {i}");
        }
    }

    #[test]
    fn refuses_bad_layouts_and_unprovisioned_flash() {
        let mut mem = vec![0u8; 32768];
        let overlapping = Layout {
            state: [0, 0],
            state_len: 4096,
            slots: [8192, 16384],
            slot_len: 8192,
            checkpoint: 0,
        };
        assert_eq!(
            FirmwareStore::open(MemFlash::<1024>::new(&mut mem), overlapping).unwrap_err(),
            StoreError::Layout {
                reason: "regions overlap"
            }
        );
        assert_eq!(
            FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap_err(),
            StoreError::NoValidState
        );
    }

    #[test]
    fn a_boot_drops_the_seal_the_last_check_left() {
        // a seal made by hale-core from a verified root and timestamp
        let sim = hale_tests::RepoSim::new();
        let root = sim.root_bytes(1);
        let mut set = hale_core::TrustedSet::new(
            hale_core::Storage::on_heap(1 << 16),
            &root,
            hale_tests::NOW,
        )
        .unwrap();
        set.update_timestamp(&sim.files["timestamp.json"]).unwrap();
        let seal = set.seal();
        assert!(seal.is_some());
        let mut mem = provisioned();
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        s.keep_seal(seal);
        assert_eq!(s.seal(), seal.as_ref());
        // a record kept it; the boot step (a reset) does not
        s.set_slots(s.slots()).unwrap();
        assert_eq!(s.seal(), seal.as_ref());
        assert!(matches!(s.boot().unwrap(), Boot::Normal { slot: Slot::A }));
        assert_eq!(s.seal(), None);
    }

    #[test]
    fn the_time_floor_persists_survives_a_torn_write_and_an_older_agent_reads_around_it() {
        const FLOOR: UnixTime = 1_900_000_000;
        let mut mem = provisioned();
        let mut s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert_eq!(s.time_floor(), 0);
        let slots = s.slots();
        s.set_slots_refusing(slots, Some([7; 32])).unwrap();
        // less than an hour past the recorded floor (none): not recorded by itself
        let seq = s.sequence();
        s.raise_time_floor(FLOOR_RECORD_STEP - 1);
        s.record_time_floor_when_due().unwrap();
        assert_eq!(s.sequence(), seq);
        s.raise_time_floor(FLOOR);
        s.raise_time_floor(5);
        assert_eq!(s.time_floor(), FLOOR, "never lowered");
        drop(s);
        // raised in RAM only: a reset before a record loses it
        let s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        assert_eq!(s.time_floor(), 0);
        drop(s);
        // a power cut in every operation of the record for it alone: the old record (no floor)
        // or the new one (the floor), the refused list in both
        let (done, cuts) = every_cut(
            &mem,
            |s| {
                s.raise_time_floor(FLOOR);
                s.record_time_floor_when_due()
            },
            |s, done| {
                assert!(s.refused(&[7; 32]));
                assert!(s.time_floor() == FLOOR || !done && s.time_floor() == 0);
                // recorded: not again
                let seq = s.sequence();
                s.record_time_floor_when_due().unwrap();
                assert_eq!(s.sequence(), seq);
            },
        );
        assert!(cuts > 3, "only {cuts} cuts");
        let mut mem = done;
        // an agent built before the floor reads the record as it always did: the digest over
        // the header and metadata, then the list and the digest over both (the floor follows)
        let s = FirmwareStore::open(MemFlash::<1024>::new(&mut mem), L).unwrap();
        let st = s.state;
        drop(s);
        assert_eq!(st.floor, FLOOR);
        let base = L.state[st.region] as usize;
        let body = base + HEADER_LEN + st.meta_lens.iter().sum::<u32>() as usize;
        let d = sha256(&mem[base..body]);
        assert_eq!(&mem[body..body + DIGEST_LEN], &d[..]);
        let list = body + DIGEST_LEN;
        let mut h = Sha256::new();
        h.update(d);
        h.update([7u8; 32]);
        assert_eq!(&mem[list..list + 32], &[7u8; 32][..]);
        assert_eq!(&mem[list + 32..list + 64], &h.finalize()[..]);
        assert_eq!(&mem[list + 64..list + 72], &FLOOR.to_le_bytes()[..]);
    }
}
