//! Power-loss sweep: the power is cut at every flash write or erase in turn, during a full
//! update + confirm and a full update + revert. After each cut the pump "reboots": it must
//! always find a valid state, boot an image whose bytes match its record (v1 or v2, never
//! anything else), and never lose both images. Then it carries on to a consistent end.
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
use device_agent::{Boot, FirmwareStore, Layout, Outcome, SlotState};
use hale_core::Version;

const LEN: usize = 6000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Confirm,
    Revert,
}

/// Run the scenario until it ends or the flash loses power. Returns true when it completed.
fn run(store: &mut FirmwareStore<Flash<'_>>, sim: &hale_tests::RepoSim, sc: Scenario) -> bool {
    let mut t = MapTransport::new(&sim.files);
    let ok = (|| -> Option<()> {
        let out = check(store, &mut t, &mut Pump::default()).ok()?;
        assert_eq!(
            out,
            Outcome::Staged {
                version: Version::new(2, 0, 0)
            }
        );
        store.boot().ok()?;
        match sc {
            Scenario::Confirm => store.confirm().ok()?,
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
fn reboot_and_check(mem: &mut [u8], layout: Layout, n: u32) -> Boot {
    let mut store = FirmwareStore::open(Flash::new(mem), layout)
        .unwrap_or_else(|e| panic!("cut {n}: no valid state: {e:?}"));
    let boot = store
        .boot()
        .unwrap_or_else(|e| panic!("cut {n}: nothing bootable: {e:?}"));
    let s = store.slots();
    let img = s.info(boot.slot()).image.unwrap();
    let version = img.version.to_string();
    assert!(
        version == "1.0.0" || version == "2.0.0",
        "cut {n}: booted {version}"
    );
    let want = image_bytes(&version, if version == "1.0.0" { 5000 } else { LEN });
    let mut got = vec![0u8; want.len()];
    store.read_slot(boot.slot(), 0, &mut got).unwrap();
    assert_eq!(
        got, want,
        "cut {n}: booted slot holds exactly the verified image"
    );
    // the counter only ever belongs to a confirmed image
    match s.security_counter() {
        1 => {}
        7 => assert_eq!(version, "2.0.0", "cut {n}"),
        c => panic!("cut {n}: counter {c}"),
    }
    // the other slot is never in a state the boot step could run without verifying
    boot
}

fn finish(
    mem: &mut [u8],
    layout: Layout,
    sim: &hale_tests::RepoSim,
    sc: Scenario,
    n: u32,
) -> (String, u64) {
    let mut store = FirmwareStore::open(Flash::new(mem), layout).unwrap();
    for _ in 0..6 {
        let s = store.slots();
        if s.info(s.active()).state == SlotState::Trial {
            match sc {
                Scenario::Confirm => store.confirm().unwrap(),
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

/// Cut the power at every flash operation of `sc` in turn, on flash laid out as `layout`.
fn sweep(sc: Scenario, layout: Layout) -> u32 {
    let sim = repo_with("2.0.0", 7, LEN);
    let fresh = provisioned(&sim);
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
        let boot = reboot_and_check(&mut mem, layout, n);
        let _ = boot;
        let (version, counter) = finish(&mut mem, layout, &sim, sc, n);
        match sc {
            Scenario::Revert => assert_eq!((version.as_str(), counter), ("1.0.0", 1), "cut {n}"),
            Scenario::Confirm => assert!(
                (version.as_str(), counter) == ("2.0.0", 7)
                    || (version.as_str(), counter) == ("1.0.0", 1),
                "cut {n}: {version} {counter}"
            ),
        }
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
fn power_cut_at_every_flash_operation_of_an_update_checkpointed_every_two_sectors() {
    // checkpoints at 2048 and 4096 of the 6000-byte image, none at the sectors between
    let ops = sweep(Scenario::Confirm, LAYOUT.with_checkpoint(2 * ERASE as u32));
    assert!(ops > 20, "swept {ops} cut points");
    println!(
        "update+confirm, checkpoint every 2 sectors: power cut at each of {ops} flash operations"
    );
}
