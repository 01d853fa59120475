//! Power-loss sweep: the power is cut at every flash write or erase in turn, during a full
//! update + confirm, a full update + revert, and an update over the slot of the previous good
//! image. After each cut the pump "reboots": it must always find a valid state whose record
//! claims nothing that is not on the flash, boot an image whose bytes match its record (the old
//! or the new release, never anything else), and never lose both images. Then it carries on to a
//! consistent end.
//!
//! Twice: on NOR flash (every write on the medium when it returns, the cut operation done
//! halfway), and on flash behind a write-back cache as the simulated pump's file is behind the
//! page cache (`device_agent::cachedflash`: writes reach the medium only at `Durable::sync`, and
//! at a cut any subset of the 512-byte pieces held back since the last sync may have reached it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// `drop(store)` is the power going off: it ends the borrow of the flash memory
#![allow(clippy::drop_non_drop)]

mod common;

use common::*;
use device_agent::cachedflash::{CachedFlash, Cut};
use device_agent::{AgentError, Boot, Durable, FirmwareStore, Layout, Outcome, Slot, SlotState};
use hale_core::Version;
use sha2::Digest;

const LEN: usize = 6000;

/// A firmware release in the sweeps' repository.
#[derive(Clone, Copy, Debug)]
struct Release {
    version: &'static str,
    len: usize,
    counter: u64,
}

/// Provisioned at the factory.
const V1: Release = Release {
    version: "1.0.0",
    len: 5000,
    counter: 1,
};
const V2: Release = Release {
    version: "2.0.0",
    len: LEN,
    counter: 7,
};
const V3: Release = Release {
    version: "3.0.0",
    len: LEN + 1500,
    counter: 9,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// v1 → v2, confirmed.
    Confirm,
    /// v1 → v2, reset before confirmation: back to v1.
    Revert,
    /// v2 confirmed, v1 kept in the other slot → v3 over v1, confirmed: the staging erases a
    /// slot the previous state listed as good.
    Replace,
}

impl Scenario {
    fn from(self) -> Release {
        match self {
            Scenario::Replace => V2,
            _ => V1,
        }
    }
    fn to(self) -> Release {
        match self {
            Scenario::Replace => V3,
            _ => V2,
        }
    }
}

/// The repository and the flash `sc` starts from.
fn start(sc: Scenario) -> (hale_tests::RepoSim, Vec<u8>) {
    let mut sim = repo_with(V2.version, V2.counter, V2.len);
    let mut mem = provisioned(&sim);
    if sc == Scenario::Replace {
        let mut store = open_store(&mut mem);
        assert_eq!(
            check_fresh(&mut store, &sim.files),
            Ok(Outcome::Staged {
                version: Version::new(2, 0, 0)
            })
        );
        store.boot().unwrap();
        store.confirm().unwrap();
        assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::B });
        let s = store.slots();
        assert_eq!(s.info(Slot::A).state, SlotState::Good, "v1 kept in slot A");
        drop(store);
        publish(&mut sim, V3.version, V3.counter, V3.len, "pump-a");
    }
    (sim, mem)
}

/// A flash whose power can be cut.
trait PowerCut: Durable {
    fn power_lost(&self) -> bool;
}

impl PowerCut for Flash<'_> {
    fn power_lost(&self) -> bool {
        Flash::power_lost(self)
    }
}

/// One check at `NOW` by an idle pump, on any flash.
fn check_on<F: Durable>(
    store: &mut FirmwareStore<F>,
    t: &mut MapTransport,
) -> Result<Outcome, AgentError<MapError, F::Error>> {
    let mut bufs = Bufs::new();
    device_agent::check_for_update(
        store,
        &device(),
        t,
        &mut Pump::default(),
        &mut device_agent::NoRollback,
        NOW,
        bufs.ws(),
    )
}

/// Run the scenario until it ends or the flash loses power. Returns true when it completed.
fn run<F: PowerCut>(store: &mut FirmwareStore<F>, sim: &hale_tests::RepoSim, sc: Scenario) -> bool {
    let mut t = MapTransport::new(&sim.files);
    let ok = (|| -> Option<()> {
        let out = check_on(store, &mut t).ok()?;
        assert_eq!(
            out,
            Outcome::Staged {
                version: Version::parse(sc.to().version).unwrap()
            }
        );
        store.boot().ok()?;
        match sc {
            Scenario::Confirm | Scenario::Replace => store.confirm().ok()?,
            Scenario::Revert => {
                // reset before confirmation
                store.boot().ok()?;
            }
        }
        store.boot().ok()?;
        Some(())
    })();
    if ok.is_none() {
        assert!(
            store.flash_mut().power_lost(),
            "only a power cut may stop the scenario"
        );
    }
    ok.is_some()
}

/// After a cut: reboot and check the invariants.
fn reboot_and_check(mem: &mut [u8], layout: Layout, sc: Scenario, n: &str) -> Boot {
    let (from, to) = (sc.from(), sc.to());
    let mut store = FirmwareStore::open(Flash::new(mem), layout)
        .unwrap_or_else(|e| panic!("cut {n}: no valid state: {e:?}"));
    // the record claims nothing that is not on the medium: a bootable slot's bytes hash to its
    // image, a staging slot holds the first `download_offset` bytes of the new image
    let s = store.slots();
    for slot in [Slot::A, Slot::B] {
        let state = s.info(slot).state;
        match state {
            SlotState::Pending | SlotState::Trial | SlotState::Good => assert!(
                store.image_matches(slot).unwrap(),
                "cut {n}: slot {slot:?} is {} but holds other bytes",
                state.as_str()
            ),
            SlotState::Staging => {
                let off = store.download_offset() as usize;
                let mut got = vec![0u8; off];
                store.read_slot(slot, 0, &mut got).unwrap();
                assert!(
                    got == image_bytes(to.version, to.len)[..off],
                    "cut {n}: slot {slot:?} is staging at {off} but holds other bytes"
                );
            }
            SlotState::Empty | SlotState::Rejected => {}
        }
    }
    let boot = store
        .boot()
        .unwrap_or_else(|e| panic!("cut {n}: nothing bootable: {e:?}"));
    let s = store.slots();
    let img = s.info(boot.slot()).image.unwrap();
    let version = img.version.to_string();
    let release = [from, to]
        .into_iter()
        .find(|r| r.version == version)
        .unwrap_or_else(|| panic!("cut {n}: booted {version}"));
    let want = image_bytes(release.version, release.len);
    let mut got = vec![0u8; want.len()];
    store.read_slot(boot.slot(), 0, &mut got).unwrap();
    assert_eq!(
        got, want,
        "cut {n}: booted slot holds exactly the verified image"
    );
    // the counter only ever belongs to a confirmed image
    let counter = s.security_counter();
    assert!(
        counter == from.counter || (counter == to.counter && version == to.version),
        "cut {n}: counter {counter} running {version}"
    );
    boot
}

/// After the checks: carry on (confirm or reset a trial, check again) until the pump settles.
/// Returns the version it runs and its security counter.
fn finish(
    mem: &mut [u8],
    layout: Layout,
    sim: &hale_tests::RepoSim,
    sc: Scenario,
    n: &str,
) -> (String, u64) {
    let mut store = FirmwareStore::open(Flash::new(mem), layout).unwrap();
    for _ in 0..6 {
        let s = store.slots();
        if s.info(s.active()).state == SlotState::Trial {
            match sc {
                Scenario::Confirm | Scenario::Replace => store.confirm().unwrap(),
                Scenario::Revert => {
                    store.boot().unwrap();
                }
            }
            continue;
        }
        match check(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
        ) {
            Ok(Outcome::Staged { .. } | Outcome::AwaitingReboot { .. }) => {
                store.boot().unwrap();
            }
            Ok(Outcome::UpToDate { .. })
            | Err(device_agent::AgentError::PreviouslyReverted { .. }) => break,
            other => panic!("cut {n}: {other:?}"),
        }
    }
    let s = store.slots();
    (
        s.running().unwrap().version.to_string(),
        s.security_counter(),
    )
}

/// Check what a cut and a reboot led to: the invariants, then the end the pump settles at.
fn after_cut(mem: &mut [u8], layout: Layout, sim: &hale_tests::RepoSim, sc: Scenario, n: &str) {
    let _ = reboot_and_check(mem, layout, sc, n);
    let (version, counter) = finish(mem, layout, sim, sc, n);
    let (from, to) = (sc.from(), sc.to());
    let end = (version.as_str(), counter);
    match sc {
        Scenario::Revert => assert_eq!(end, (from.version, from.counter), "cut {n}"),
        Scenario::Confirm | Scenario::Replace => assert!(
            end == (to.version, to.counter) || end == (from.version, from.counter),
            "cut {n}: {version} {counter}"
        ),
    }
}

/// Cut the power at every flash operation of `sc` in turn, on NOR flash laid out as `layout`.
fn sweep(sc: Scenario, layout: Layout) -> u32 {
    let (sim, fresh) = start(sc);
    let mut n = 0u32;
    loop {
        let mut mem = fresh.clone();
        let completed = {
            let mut store =
                FirmwareStore::open(Flash::new(&mut mem).fail_after(n), layout).unwrap();
            run(&mut store, &sim, sc)
        };
        if completed {
            return n;
        }
        after_cut(&mut mem, layout, &sim, sc, &n.to_string());
        n += 1;
    }
}

#[test]
fn power_cut_at_every_flash_operation_of_update_and_confirm() {
    let ops = sweep(Scenario::Confirm, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    println!("update+confirm: power cut at each of {ops} flash operations");
}

#[test]
fn power_cut_at_every_flash_operation_of_update_and_revert() {
    let ops = sweep(Scenario::Revert, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    println!("update+revert: power cut at each of {ops} flash operations");
}

#[test]
fn power_cut_at_every_flash_operation_of_an_update_over_the_previous_image() {
    let ops = sweep(Scenario::Replace, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    println!("update over the previous image: power cut at each of {ops} flash operations");
}

#[test]
fn power_cut_at_every_flash_operation_of_an_update_checkpointed_every_two_sectors() {
    // checkpoints at 2048 and 4096 of the 6000-byte image, none at the sectors between
    let ops = sweep(Scenario::Confirm, LAYOUT.with_checkpoint(2 * ERASE as u32));
    assert!(ops > 20, "swept {ops} cut points");
    println!(
        "update+confirm, checkpoint every 2 sectors: power cut at each of {ops} flash operations"
    );
}

// --- flash behind a write-back cache ------------------------------------------------------------

type Cached<'a> = CachedFlash<'a, ERASE>;

impl PowerCut for Cached<'_> {
    fn power_lost(&self) -> bool {
        CachedFlash::power_lost(self)
    }
}

/// Which held-back pieces reach the medium at a cut: none; all; orders a cache may choose
/// (alternate pieces, only the last, all but the last, the later half, the earlier half); all
/// but one stretch (the first quarter, the second, one piece a third of the way in: the record
/// written last survives while something before it is lost); a pseudo-random subset.
const PATTERNS: usize = 12;

fn kept(pattern: usize, cut: u32, i: usize, n: usize) -> bool {
    match pattern {
        0 => false,
        1 => true,
        2 => i % 2 == 0,
        3 => i % 2 == 1,
        4 => i + 1 == n,
        5 => i + 1 < n,
        6 => i >= n / 2,
        7 => i < n / 2,
        8 => i >= n / 4,
        9 => !(n / 4..n / 2).contains(&i),
        10 => i != n / 3,
        _ => {
            let x = (u64::from(cut) + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (x >> 61) & 1 == 1
        }
    }
}

/// Cut the power at every flash operation of `sc` in turn with writes held back in a cache, and
/// at each cut lose the held-back pieces in every pattern (each distinct outcome checked once).
/// Returns (cut points, crashes checked, most pieces held back at a cut).
fn sweep_cached(sc: Scenario, layout: Layout) -> (u32, usize, usize) {
    let (sim, fresh) = start(sc);
    let mut seen = std::collections::HashSet::new();
    let (mut n, mut most) = (0u32, 0usize);
    loop {
        for pattern in 0..PATTERNS {
            let mut mem = fresh.clone();
            let cut = Some(Cut::Operation(n));
            let mut store = FirmwareStore::open(Cached::new(&mut mem, cut), layout).unwrap();
            if run(&mut store, &sim, sc) {
                assert_eq!(pattern, 0, "cut {n}: the scenario ran on once and then not");
                return (n, seen.len(), most);
            }
            let flash = store.into_flash();
            most = most.max(flash.held());
            flash.crash(|i, count| kept(pattern, n, i, count));
            if seen.insert(sha2::Sha256::digest(&mem)) {
                after_cut(
                    &mut mem,
                    layout,
                    &sim,
                    sc,
                    &format!("{n}, pattern {pattern}"),
                );
            }
        }
        n += 1;
    }
}

#[test]
fn a_crash_losing_any_unsynced_writes_of_update_and_confirm_leaves_a_verified_image() {
    let (ops, crashes, most) = sweep_cached(Scenario::Confirm, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    assert!(most > 1, "writes were held back ({most} pieces at most)");
    println!("update+confirm behind a cache: {ops} cut points, {crashes} distinct crashes, up to {most} pieces held back");
}

#[test]
fn a_crash_losing_any_unsynced_writes_of_update_and_revert_leaves_a_verified_image() {
    let (ops, crashes, most) = sweep_cached(Scenario::Revert, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    assert!(most > 1, "writes were held back ({most} pieces at most)");
    println!("update+revert behind a cache: {ops} cut points, {crashes} distinct crashes, up to {most} pieces held back");
}

#[test]
fn a_crash_losing_any_unsynced_writes_of_an_update_over_the_previous_image() {
    let (ops, crashes, most) = sweep_cached(Scenario::Replace, LAYOUT);
    assert!(ops > 20, "swept {ops} cut points");
    assert!(most > 1, "writes were held back ({most} pieces at most)");
    println!("update over the previous image behind a cache: {ops} cut points, {crashes} distinct crashes, up to {most} pieces held back");
}

#[test]
fn a_crash_losing_any_unsynced_writes_of_an_update_checkpointed_every_two_sectors() {
    let layout = LAYOUT.with_checkpoint(2 * ERASE as u32);
    let (ops, crashes, most) = sweep_cached(Scenario::Confirm, layout);
    assert!(ops > 20, "swept {ops} cut points");
    assert!(most > 1, "writes were held back ({most} pieces at most)");
    println!(
        "checkpoint every 2 sectors behind a cache: {ops} cut points, {crashes} distinct crashes"
    );
}
