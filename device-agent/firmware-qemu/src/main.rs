//! Hale test firmware for a Cortex-M4 (QEMU `mps2-an386`).
//!
//! Provisions a simulated flash with firmware 1.0.0 and a trusted root, opens it as every
//! power-up does, then runs one whole update check — root chain, timestamp, snapshot, targets,
//! policy, streaming the image into the inactive slot — from an in-memory transport, boots the
//! trial and confirms it, and polls with nothing new (after a reset, and again in the same boot).
//! Exits 0 only if 2.0.0 ends up confirmed and the polls find it up to date. With `--features tampered` the targets metadata is altered and the
//! firmware exits 1 after checking that the exact trust error came back and nothing changed.
//! With `--features rollback` the pump runs 2.0.0 and the repository lists 1.0.0: an
//! authorization for another device must be refused (exact error, slots unchanged), then the
//! authorization for this device (signed by the `rollback` role that targets delegates to) lets
//! the agent stage 1.0.0; exits 0 only if 1.0.0 ends up confirmed.
//!
//! Prints the stack high-water mark and the instructions executed by the update check and the
//! polls (SysTick under `-icount shift=0`: instructions = ticks × 40 at 25 MHz).
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use cortex_m_semihosting::hio;
use device_agent::memflash::{MemFlash, MemFlashError};
#[cfg(not(feature = "rollback"))]
use device_agent::NoRollback;
#[cfg(feature = "rollback")]
use device_agent::RollbackAuthorization;
use device_agent::{
    check_for_update, AgentError, Application, Boot, DeferReason, DeviceInfo, FirmwareStore, Image,
    Layout, Outcome, RollbackHook, Slot, SlotState, Slots, Transport, Workspace,
};
use hale_core::{Error, Storage, Version};
// linked for its memcpy/memset/memcmp symbols alone
use hale_mem as _;

#[cfg(not(feature = "rollback"))]
mod fixtures {
    pub const ROOT: &[u8] = include_bytes!("../fixtures/root.json");
    pub const TIMESTAMP: &[u8] = include_bytes!("../fixtures/timestamp.json");
    pub const SNAPSHOT: &[u8] = include_bytes!("../fixtures/snapshot.json");
    #[cfg(not(feature = "tampered"))]
    pub const TARGETS: &[u8] = include_bytes!("../fixtures/targets.json");
    #[cfg(feature = "tampered")]
    pub const TARGETS: &[u8] = include_bytes!("../fixtures/targets-tampered.json");
    pub const NAMES: &str = include_str!("../fixtures/names.txt");
    /// Provisioned: 1.0.0. Served: 2.0.0.
    pub const RUNNING: &[u8] = include_bytes!("../fixtures/firmware-v1.bin");
    pub const SERVED: &[u8] = include_bytes!("../fixtures/firmware-v2.bin");
}

/// The pump runs 2.0.0 and the repository lists 1.0.0 again: only a rollback authorization for
/// this device lets it go back.
#[cfg(feature = "rollback")]
mod fixtures {
    pub const ROOT: &[u8] = include_bytes!("../fixtures/rollback-root.json");
    pub const TIMESTAMP: &[u8] = include_bytes!("../fixtures/rollback-timestamp.json");
    pub const SNAPSHOT: &[u8] = include_bytes!("../fixtures/rollback-snapshot.json");
    pub const TARGETS: &[u8] = include_bytes!("../fixtures/rollback-targets.json");
    pub const NAMES: &str = include_str!("../fixtures/rollback-names.txt");
    pub const AUTHORIZATION: &[u8] = include_bytes!("../fixtures/rollback-authorization.json");
    pub const AUTHORIZATION_OTHER: &[u8] =
        include_bytes!("../fixtures/rollback-authorization-other-device.json");
    /// Provisioned: 2.0.0. Served: 1.0.0.
    pub const RUNNING: &[u8] = include_bytes!("../fixtures/firmware-v2.bin");
    pub const SERVED: &[u8] = include_bytes!("../fixtures/firmware-v1.bin");
}

use fixtures::{NAMES, ROOT, RUNNING, SERVED, SNAPSHOT, TARGETS, TIMESTAMP};

const TARGET: &str = "pump-a/firmware.bin";
/// The trusted set's buffer for top-level targets (the rollback repository's also delegates).
#[cfg(not(feature = "rollback"))]
const TARGETS_BUF: usize = 1024;
#[cfg(feature = "rollback")]
const TARGETS_BUF: usize = 2048;
const ERASE: usize = 1024;
type Store = FirmwareStore<MemFlash<'static, ERASE>>;
const ROOT_BUF: usize = 2048;
const TIMESTAMP_BUF: usize = 1024;
const SNAPSHOT_BUF: usize = 1024;
/// Each state record: 8 KiB, which holds the four roles at their buffers' sizes
/// (`store::record_len`: 6,641 bytes in the rollback variant, 5,617 in the update variant), so
/// whatever the check verifies can be recorded. A power of two: regions of exactly the record's
/// sectors (7 and 6 KiB) took 16 B more code in each variant.
const STATE_LEN: u32 = 8192;
const _: () = assert!(
    device_agent::store::record_len(ROOT_BUF + TIMESTAMP_BUF + SNAPSHOT_BUF + TARGETS_BUF)
        <= STATE_LEN as usize
);
const LAYOUT: Layout = Layout::contiguous(0, STATE_LEN, 8192);
/// The simulated NOR flash: PSRAM, outside the program's 32 KiB RAM budget.
const SIM_FLASH: usize = 0x2100_0000;

/// Serves the fixtures from memory.
struct MemTransport {
    snapshot_name: &'static str,
    targets_name: &'static str,
    image_name: &'static str,
}

#[derive(Debug, PartialEq)]
enum MemError {
    TooLarge,
    NoSuchTarget,
}

impl Transport for MemTransport {
    type Error = MemError;
    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, MemError> {
        let file = if name == "timestamp.json" {
            TIMESTAMP
        } else if name == self.snapshot_name {
            SNAPSHOT
        } else if name == self.targets_name {
            TARGETS
        } else {
            return Ok(None);
        };
        let dst = buf.get_mut(..file.len()).ok_or(MemError::TooLarge)?;
        dst.copy_from_slice(file);
        Ok(Some(file.len()))
    }
    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if name != self.image_name {
            return Err(MemError::NoSuchTarget);
        }
        let start = offset as usize;
        let src = SERVED
            .get(start..start + buf.len())
            .ok_or(MemError::NoSuchTarget)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct Pump;

impl Application for Pump {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        Ok(())
    }
}

extern "C" {
    fn DefaultHandler();
}

/// One interrupt vector (the harness uses no interrupt). cortex-m-rt's generic table holds 240,
/// ~1 KB of flash that belongs to the device application's vector table, not to the agent.
#[link_section = ".vector_table.interrupts"]
#[no_mangle]
static __INTERRUPTS: [unsafe extern "C" fn(); 1] = [DefaultHandler];

// --- measurements ------------------------------------------------------------------------------

static WRAPS: AtomicU32 = AtomicU32::new(0);
const RELOAD: u32 = 0x00FF_FFFF;

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

fn ticks() -> u64 {
    loop {
        let w1 = WRAPS.load(Ordering::Relaxed);
        let cur = SYST::get_current();
        let w2 = WRAPS.load(Ordering::Relaxed);
        if w1 == w2 {
            return u64::from(w1) * u64::from(RELOAD + 1) + u64::from(RELOAD - cur);
        }
    }
}

extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
}

const PAINT: u32 = 0xA5A5_A5A5;

/// Fill the unused stack (from the end of static data up to below the current frame).
#[inline(never)]
fn paint_stack() {
    let start = addr_of_mut!(__sheap) as usize;
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = start;
    while p + 256 < sp {
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Deepest stack use seen: from the top of RAM down to the first painted word never touched.
fn stack_high_water() -> usize {
    let start = addr_of_mut!(__sheap) as usize;
    let top = addr_of!(_stack_start) as usize;
    let mut p = start;
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    top - p
}

/// Print without `core::fmt` (it would cost flash the agent does not need).
fn out(parts: &[&str]) {
    if let Ok(mut h) = hio::hstdout() {
        for p in parts {
            let _ = h.write_all(p.as_bytes());
        }
        let _ = h.write_all(b"\n");
    }
}

/// Lines of `names.txt` (a byte scan: `str::lines` pulls in a generic searcher).
struct Lines(&'static str);

impl Iterator for Lines {
    type Item = &'static str;
    fn next(&mut self) -> Option<&'static str> {
        let end = self.0.bytes().position(|b| b == b'\n')?;
        // `get`, not `split_at`: no panicking path (core's str slicing failure, ~0.3 KB)
        let line = self.0.get(..end)?;
        self.0 = self.0.get(end + 1..)?;
        Some(line)
    }
}

/// A non-negative decimal Unix time (the fixture's fixed "now").
fn parse_time(s: &str) -> Option<i64> {
    let mut v: i64 = 0;
    for b in s.bytes() {
        v = v
            .checked_mul(10)?
            .checked_add(i64::from(b.checked_sub(b'0').filter(|d| *d < 10)?))?;
    }
    (!s.is_empty()).then_some(v)
}

/// The update check's buffers (one static: one critical section to take them).
struct Buffers {
    root: [u8; ROOT_BUF],
    timestamp: [u8; TIMESTAMP_BUF],
    snapshot: [u8; SNAPSHOT_BUF],
    targets: [u8; TARGETS_BUF],
    scratch: [u8; 2048],
    chunk: [u8; 256],
}

/// Decimal without a 64-bit division (the agent's own formatter).
fn num(n: u64, buf: &mut [u8; 20]) -> &str {
    device_agent::store::decimal(n, buf)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    out(&["panic"]);
    debug::exit(EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

fn fail(msg: &str) -> ! {
    out(&["FAIL: ", msg]);
    debug::exit(EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

fn image(bytes: &[u8], v: Version, counter: u64) -> Image {
    Image {
        version: v,
        security_counter: counter,
        length: bytes.len() as u64,
        sha256: hale_core::crypto::sha256(bytes),
    }
}

#[entry]
fn main() -> ! {
    out(&["hale firmware: start"]);
    paint_stack();
    let Some(cp) = cortex_m::Peripherals::take() else {
        fail("peripherals")
    };
    let mut syst = cp.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();

    let mut lines = Lines(NAMES);
    let (Some(snapshot_name), Some(targets_name), Some(image_name), Some(now)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        fail("names.txt")
    };
    let Some(now) = parse_time(now) else {
        fail("now")
    };
    let mut transport = MemTransport {
        snapshot_name,
        targets_name,
        image_name,
    };

    let Some(b) = cortex_m::singleton!(: Buffers = Buffers {
        root: [0; ROOT_BUF],
        timestamp: [0; TIMESTAMP_BUF],
        snapshot: [0; SNAPSHOT_BUF],
        targets: [0; TARGETS_BUF],
        scratch: [0; 2048],
        chunk: [0; 256],
    }) else {
        fail("buffers")
    };

    // the device's flash, provisioned at the factory with the running image and the trusted root
    let mem: &'static mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(SIM_FLASH as *mut u8, LAYOUT.end() as usize) };
    let flash = MemFlash::<ERASE>::new(mem);
    #[cfg(not(feature = "rollback"))]
    let (running, offered) = (Version::new(1, 0, 0), Version::new(2, 0, 0));
    #[cfg(feature = "rollback")]
    let (running, offered) = (Version::new(2, 0, 0), Version::new(1, 0, 0));
    let flash =
        match FirmwareStore::provision(flash, LAYOUT, ROOT, RUNNING, image(RUNNING, running, 1)) {
            Ok(s) => s.into_flash(),
            Err(_) => fail("provision"),
        };
    // the pump's power-up: the store read back from the flash, as at every boot
    let mut store = match FirmwareStore::open(flash, LAYOUT) {
        Ok(s) => s,
        Err(_) => fail("open"),
    };
    if !boots(&mut store, Boot::Normal { slot: Slot::A }) {
        fail("factory boot");
    }
    let before = store.slots();

    // the negative check first: an authorization for another pump is refused, nothing installed
    #[cfg(feature = "rollback")]
    {
        let device_id = device_id();
        let mut other = RollbackAuthorization::new(fixtures::AUTHORIZATION_OTHER, device_id, None);
        let result = update_check(&mut store, &mut transport, &mut other, now, b);
        let exact = matches!(
            result,
            Err(AgentError::Authorization(Error::NotForThisDevice { device }))
                if device == device_id
        );
        if !refused(
            &mut store,
            &before,
            "authorization for another device refused: NotForThisDevice (exact): ",
            exact,
        ) {
            fail("authorization for another device");
        }
    }

    #[cfg(not(feature = "rollback"))]
    let mut hook = NoRollback;
    #[cfg(feature = "rollback")]
    let mut hook = RollbackAuthorization::new(fixtures::AUTHORIZATION, device_id(), None);
    let t0 = ticks();
    let result = update_check(&mut store, &mut transport, &mut hook, now, b);
    let t1 = ticks();
    let instructions = (t1 - t0) * 40;
    let (mut b1, mut b2) = ([0u8; 20], [0u8; 20]);
    out(&[
        "update check: ",
        num(t1 - t0, &mut b1),
        " SysTick ticks = ",
        num(instructions, &mut b2),
        " instructions",
    ]);

    let code = match result {
        Ok(Outcome::Staged { version }) => {
            if version != offered {
                fail("staged version");
            }
            out(&["staged the offered image"]);
            if !boots(&mut store, Boot::Trial { slot: Slot::B }) {
                fail("trial boot");
            }
            if store.confirm().is_err() {
                fail("confirm");
            }
            let s = store.slots();
            // a confirmed rollback rejects the newer image it replaced (hale-core `Slots::confirm`)
            #[cfg(not(feature = "rollback"))]
            let (counter, replaced) = (2, SlotState::Good);
            #[cfg(feature = "rollback")]
            let (counter, replaced) = (1, SlotState::Rejected);
            let ok = s.running().map(|i| i.version) == Some(offered)
                && s.security_counter() == counter
                && s.info(Slot::A).state == replaced;
            if !ok || !boots(&mut store, Boot::Normal { slot: Slot::B }) {
                fail("state after confirm");
            }
            #[cfg(not(feature = "rollback"))]
            out(&["confirmed 2.0.0 in slot b; security counter 2"]);
            #[cfg(not(any(feature = "rollback", feature = "tampered")))]
            if !polls(store, &mut transport, now, b) {
                fail("polls after the update");
            }
            #[cfg(feature = "rollback")]
            out(&["authorized rollback: confirmed 1.0.0 in slot b; security counter 1"]);
            EXIT_SUCCESS
        }
        Ok(_) => {
            out(&["unexpected outcome"]);
            EXIT_FAILURE
        }
        Err(e) => {
            // the exact error (a pattern, not `==`: no PartialEq code for the whole error type)
            let exact = matches!(
                e,
                AgentError::Trust(Error::ThresholdNotMet { role, threshold: 1, valid: 0 })
                    if role == "targets"
            );
            refused(
                &mut store,
                &before,
                "update refused: ThresholdNotMet for targets (exact): ",
                exact,
            );
            EXIT_FAILURE
        }
    };
    let mut b3 = [0u8; 20];
    out(&[
        "stack high-water mark: ",
        num(stack_high_water() as u64, &mut b3),
        " bytes",
    ]);
    debug::exit(code);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Polls with nothing new after the update (each must find 2.0.0 up to date): the first, which
/// searches and records that conclusion; then, after a reset (the store opened again), one that
/// verifies the stored root and timestamp, and one more in the same boot, where hale-core's seal
/// stands for those signature checks. Prints the instructions of the last two.
#[cfg(not(any(feature = "rollback", feature = "tampered")))]
#[inline(never)]
fn polls(mut store: Store, t: &mut MemTransport, now: i64, b: &mut Buffers) -> bool {
    let mut up = |store: &mut Store| {
        matches!(
            update_check(store, t, &mut NoRollback, now, b),
            Ok(Outcome::UpToDate { running }) if running == Version::new(2, 0, 0)
        )
    };
    if !up(&mut store) {
        return false;
    }
    let Ok(mut store) = FirmwareStore::open(store.into_flash(), LAYOUT) else {
        return false;
    };
    if !boots(&mut store, Boot::Normal { slot: Slot::B }) {
        return false;
    }
    for what in ["after a reset", "in the same boot"] {
        let t0 = ticks();
        let ok = up(&mut store);
        let t1 = ticks();
        let mut n = [0u8; 20];
        out(&[
            "poll with nothing new, ",
            what,
            ": ",
            num((t1 - t0) * 40, &mut n),
            " instructions",
        ]);
        if !ok {
            return false;
        }
    }
    true
}

/// The store's boot step decided `want` (and committed it).
fn boots(store: &mut Store, want: Boot) -> bool {
    store.boot().ok() == Some(want)
}

/// After a refused check: print `what` with whether the error was the exact one and whether the
/// slots are unchanged (and slot A still boots normally); true when both hold.
fn refused(store: &mut Store, before: &Slots, what: &str, exact: bool) -> bool {
    let unchanged = store.slots() == *before && boots(store, Boot::Normal { slot: Slot::A });
    let yn = |b: bool| if b { "yes" } else { "no" };
    out(&[what, yn(exact), "; slots unchanged: ", yn(unchanged)]);
    exact && unchanged
}

/// This pump's device ID (the fifth line of the rollback names file).
#[cfg(feature = "rollback")]
fn device_id() -> &'static str {
    Lines(NAMES).nth(4).unwrap_or("")
}

/// One update check with the static buffers (one copy however many calls).
#[inline(never)]
fn update_check<R: RollbackHook>(
    store: &mut Store,
    transport: &mut MemTransport,
    hook: &mut R,
    now: i64,
    b: &mut Buffers,
) -> Result<Outcome, AgentError<MemError, MemFlashError>> {
    let device = DeviceInfo {
        model: "pump-a",
        revision: "r2",
        bootloader: Version::new(1, 0, 0),
        target: TARGET,
        rollback_target: None,
    };
    let ws = Workspace {
        metadata: Storage {
            root: &mut b.root[..],
            timestamp: &mut b.timestamp[..],
            snapshot: &mut b.snapshot[..],
            targets: &mut b.targets[..],
        },
        scratch: &mut b.scratch[..],
        chunk: &mut b.chunk[..],
        delegations: &mut [],
    };
    check_for_update(store, &device, transport, &mut Pump, hook, now, ws)
}

#[exception]
unsafe fn HardFault(_ef: &cortex_m_rt::ExceptionFrame) -> ! {
    out(&["FAIL: hard fault (stack overflow past the 32 KiB RAM budget?)"]);
    debug::exit(EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
