//! Hale test firmware for a Cortex-M4 (QEMU `mps2-an386`).
//!
//! Provisions a simulated flash with firmware 1.0.0 and a trusted root, then runs one whole
//! update check — root chain, timestamp, snapshot, targets, policy, streaming the image into the
//! inactive slot — from an in-memory transport, boots the trial and confirms it. Exits 0 only if
//! 2.0.0 ends up confirmed. With `--features tampered` the targets metadata is altered and the
//! firmware exits 1 after checking that the exact trust error came back and nothing changed.
//!
//! Prints the stack high-water mark and the instructions executed by the update check (SysTick
//! under `-icount shift=0`: instructions = ticks × 40 at 25 MHz).
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use cortex_m_semihosting::hio;
use device_agent::memflash::MemFlash;
use device_agent::{
    check_for_update, AgentError, Application, Boot, DeferReason, DeviceInfo, FirmwareStore, Image,
    Layout, NoRollback, Outcome, Slot, SlotState, Transport, Workspace,
};
use hale_core::{Error, Name, Storage, Version};
use sha2::{Digest, Sha256};

const ROOT: &[u8] = include_bytes!("../fixtures/root.json");
const TIMESTAMP: &[u8] = include_bytes!("../fixtures/timestamp.json");
const SNAPSHOT: &[u8] = include_bytes!("../fixtures/snapshot.json");
#[cfg(not(feature = "tampered"))]
const TARGETS: &[u8] = include_bytes!("../fixtures/targets.json");
#[cfg(feature = "tampered")]
const TARGETS: &[u8] = include_bytes!("../fixtures/targets-tampered.json");
const FW_V1: &[u8] = include_bytes!("../fixtures/firmware-v1.bin");
const FW_V2: &[u8] = include_bytes!("../fixtures/firmware-v2.bin");
const NAMES: &str = include_str!("../fixtures/names.txt");

const TARGET: &str = "pump-a/firmware.bin";
const ERASE: usize = 1024;
const LAYOUT: Layout = Layout::contiguous(0, 4096, 8192);
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
        let src = FW_V2
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

fn num(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
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
        sha256: Sha256::digest(bytes).into(),
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

    let mut lines = NAMES.lines();
    let (Some(snapshot_name), Some(targets_name), Some(image_name), Some(now)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        fail("names.txt")
    };
    let Ok(now) = now.parse::<i64>() else {
        fail("now")
    };
    let mut transport = MemTransport {
        snapshot_name,
        targets_name,
        image_name,
    };

    let Some(meta_root) = cortex_m::singleton!(: [u8; 2048] = [0; 2048]) else {
        fail("buffers")
    };
    let Some(meta_ts) = cortex_m::singleton!(: [u8; 1024] = [0; 1024]) else {
        fail("buffers")
    };
    let Some(meta_snap) = cortex_m::singleton!(: [u8; 1024] = [0; 1024]) else {
        fail("buffers")
    };
    let Some(meta_targets) = cortex_m::singleton!(: [u8; 1024] = [0; 1024]) else {
        fail("buffers")
    };
    let Some(scratch) = cortex_m::singleton!(: [u8; 2048] = [0; 2048]) else {
        fail("buffers")
    };
    let Some(chunk) = cortex_m::singleton!(: [u8; 256] = [0; 256]) else {
        fail("buffers")
    };

    // the device's flash, provisioned at the factory with 1.0.0 and the trusted root
    let mem: &'static mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(SIM_FLASH as *mut u8, LAYOUT.end() as usize) };
    let flash = MemFlash::<ERASE>::new(mem);
    let v1 = Version::new(1, 0, 0);
    let mut store = match FirmwareStore::provision(flash, LAYOUT, ROOT, FW_V1, image(FW_V1, v1, 1))
    {
        Ok(s) => s,
        Err(_) => fail("provision"),
    };
    if store.boot() != Ok(Boot::Normal { slot: Slot::A }) {
        fail("factory boot");
    }
    let before = store.slots();

    let device = DeviceInfo {
        model: "pump-a",
        revision: "r2",
        bootloader: Version::new(1, 0, 0),
        target: TARGET,
    };
    let ws = Workspace {
        metadata: Storage {
            root: &mut meta_root[..],
            timestamp: &mut meta_ts[..],
            snapshot: &mut meta_snap[..],
            targets: &mut meta_targets[..],
        },
        scratch: &mut scratch[..],
        chunk: &mut chunk[..],
        delegations: &mut [],
    };
    let t0 = ticks();
    let result = check_for_update(
        &mut store,
        &device,
        &mut transport,
        &mut Pump,
        &mut NoRollback,
        now,
        ws,
    );
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
            if version != Version::new(2, 0, 0) {
                fail("staged version");
            }
            out(&["staged 2.0.0"]);
            if store.boot() != Ok(Boot::Trial { slot: Slot::B }) {
                fail("trial boot");
            }
            if store.confirm().is_err() {
                fail("confirm");
            }
            let s = store.slots();
            let ok = s.running().map(|i| i.version) == Some(Version::new(2, 0, 0))
                && s.security_counter() == 2
                && s.info(Slot::A).state == SlotState::Good;
            if !ok || store.boot() != Ok(Boot::Normal { slot: Slot::B }) {
                fail("state after confirm");
            }
            out(&["confirmed 2.0.0 in slot b; security counter 2"]);
            EXIT_SUCCESS
        }
        Ok(_) => {
            out(&["unexpected outcome"]);
            EXIT_FAILURE
        }
        Err(e) => {
            let want = AgentError::Trust(Error::ThresholdNotMet {
                role: Name::new("targets"),
                threshold: 1,
                valid: 0,
            });
            let exact = e == want;
            let unchanged =
                store.slots() == before && store.boot() == Ok(Boot::Normal { slot: Slot::A });
            let yn = |b: bool| if b { "yes" } else { "no" };
            out(&[
                "update refused: ThresholdNotMet for targets (exact): ",
                yn(exact),
                "; slots unchanged: ",
                yn(unchanged),
            ]);
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

#[exception]
unsafe fn HardFault(_ef: &cortex_m_rt::ExceptionFrame) -> ! {
    out(&["FAIL: hard fault (stack overflow past the 32 KiB RAM budget?)"]);
    debug::exit(EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
