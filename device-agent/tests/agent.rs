//! The agent end to end over an in-memory repository and simulated flash: every rejection test
//! asserts the exact error and that nothing persisted changed (trusted metadata, slots).
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
use device_agent::{AgentError, Boot, DeferReason, FirmwareStore, Outcome, Slot, SlotState};
use hale_core::policy::PolicyError;
use hale_core::{Error, Name, Version};

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

#[test]
fn full_update_stages_trials_and_confirms_raising_the_counter_at_confirmation() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let mut t = MapTransport::new(&sim.files);
    let mut store = open_store(&mut mem);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    let s = store.slots();
    assert_eq!(s.info(Slot::B).state, SlotState::Pending);
    assert_eq!(s.security_counter(), 1);
    // workflow requests only: root chain probe, timestamp, snapshot, targets, then the image
    assert_eq!(
        &t.requests[..4],
        &[
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ]
    );
    // a second check before the reboot changes nothing
    let before = persisted(&mut store);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::AwaitingReboot {
            version: v("2.0.0")
        }
    );
    assert_eq!(persisted(&mut store), before);
    drop(store);

    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    assert_eq!(
        store.slots().security_counter(),
        1,
        "not raised at the swap"
    );
    store.confirm().unwrap();
    assert_eq!(store.slots().security_counter(), 7);
    assert_eq!(store.slots().running().unwrap().version, v("2.0.0"));
    drop(store);
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::B });
    // the slot holds exactly the published bytes
    let mut buf = vec![0u8; 9000];
    store.read_slot(Slot::B, 0, &mut buf).unwrap();
    assert_eq!(buf, image_bytes("2.0.0", 9000));
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::UpToDate {
            running: v("2.0.0")
        }
    );
    // metadata was kept: no snapshot or targets download when nothing changed
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
}

/// A server (or CDN, proxy) that serves other bytes for the image: each try would erase and
/// write the slot, so the pump waits a day, or for a new snapshot, before it downloads that image
/// again; within the wait the check stops after the timestamp, fetches nothing more and writes
/// nothing.
#[test]
fn wrong_image_bytes_are_not_downloaded_again_for_a_day_unless_a_new_snapshot_comes() {
    use device_agent::agent::RETRY_WRONG_BYTES;
    let mut sim = repo_with("2.0.0", 7, 3000);
    let (mut mem, last, first) = waiting_for_wrong_bytes(&sim);
    let slots = first.slots;
    assert_eq!(last.snapshot_version, sim.snapshot.version);
    assert_eq!(last.running_sha256, slots.running().unwrap().sha256);
    assert_eq!(last.valid_until, NOW + RETRY_WRONG_BYTES);
    let refused = AgentError::WrongBytes {
        retry_at: NOW + RETRY_WRONG_BYTES,
    };

    // within the day, even after a power cycle and with the right bytes back on the server:
    // root probe and timestamp only, no record but the time floor's (an hour on), the exact
    // error
    let mut store = open_store(&mut mem);
    let (seq, kept) = (store.sequence(), persisted(&mut store));
    for (at, records) in [(NOW + 1, 0), (NOW + RETRY_WRONG_BYTES - 1, 1)] {
        let mut t = MapTransport::new(&sim.files);
        assert_eq!(
            check_at(&mut store, &mut t, &mut Pump::default(), at).unwrap_err(),
            refused
        );
        assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
        assert_eq!(
            store.sequence(),
            seq + records,
            "no other flash write while it waits"
        );
        assert_eq!(persisted(&mut store), kept);
        assert_eq!(store.time_floor(), at);
    }
    // a new timestamp naming the same snapshot (the repository re-signs it daily) is verified
    // and stored, and the wait goes on
    sim.timestamp.version += 1;
    sim.timestamp.expires = NOW + 10 * 86_400;
    sim.write_timestamp();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 3600).unwrap_err(),
        refused
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    assert_eq!(
        persisted(&mut store).metadata[1].as_deref(),
        Some(&sim.files["timestamp.json"][..])
    );
    assert_eq!(store.last_check(), Some(last));

    // a day after the failure it is downloaded again: the server's bytes are right now
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(
            &mut store,
            &mut t,
            &mut Pump::default(),
            NOW + RETRY_WRONG_BYTES
        )
        .unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(store.last_check(), None);
}

/// Flash that refuses one write or erase (an error, nothing written) and then works again, as a
/// part whose program step fails once.
struct RefusesOnce<'a> {
    flash: Flash<'a>,
    /// writes and erases to let through before the refused one
    before: Option<u32>,
}

impl RefusesOnce<'_> {
    fn refuse(&mut self) -> Result<(), device_agent::memflash::MemFlashError> {
        match self.before {
            Some(0) => {
                self.before = None;
                Err(device_agent::memflash::MemFlashError::PowerLoss)
            }
            Some(n) => {
                self.before = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl embedded_storage::nor_flash::ErrorType for RefusesOnce<'_> {
    type Error = device_agent::memflash::MemFlashError;
}

impl embedded_storage::nor_flash::ReadNorFlash for RefusesOnce<'_> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.flash.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.flash.capacity()
    }
}

impl device_agent::NorFlash for RefusesOnce<'_> {
    const WRITE_SIZE: usize = <Flash<'static> as device_agent::NorFlash>::WRITE_SIZE;
    const ERASE_SIZE: usize = <Flash<'static> as device_agent::NorFlash>::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.refuse()?;
        self.flash.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.refuse()?;
        self.flash.write(offset, bytes)
    }
}

impl device_agent::Durable for RefusesOnce<'_> {}

/// The flash of a pump provisioned against `sim` whose first check downloaded the image once
/// and found the served bytes wrong (the exact error asserted, the slots as they were), with
/// the `WrongBytes` conclusion it recorded and everything it persists then.
fn waiting_for_wrong_bytes(
    sim: &hale_tests::RepoSim,
) -> (Vec<u8>, device_agent::LastCheck, Persisted) {
    let mut wrong = sim.files.clone();
    wrong.get_mut(&sim.target_file_name(TARGET)).unwrap()[2000] ^= 1;
    let mut mem = provisioned(sim);
    let mut store = open_store(&mut mem);
    let slots = store.slots();
    let mut t = MapTransport::new(&wrong);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW).unwrap_err(),
        AgentError::Trust(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256"
        })
    );
    assert!(t.target_bytes > 0, "the image was downloaded once");
    assert_eq!(store.slots(), slots, "the slots are as they were");
    let last = store.last_check().unwrap();
    assert_eq!(last.conclusion, device_agent::Conclusion::WrongBytes);
    let kept = persisted(&mut store);
    drop(store);
    (mem, last, kept)
}

/// A check in the wait for wrong bytes verifies a new timestamp (same snapshot), and the flash
/// refuses the record that would store it: the check fails with that flash error, and the record
/// its error path writes keeps the new timestamp and the wait, so the next check still does not
/// download the image again.
#[test]
fn a_flash_error_while_the_wait_for_wrong_bytes_goes_on_keeps_the_wait() {
    use device_agent::agent::RETRY_WRONG_BYTES;
    use device_agent::memflash::MemFlashError;
    let mut sim = repo_with("2.0.0", 7, 3000);
    let (mut mem, last, before) = waiting_for_wrong_bytes(&sim);
    let slots = before.slots;

    // the repository re-signs its timestamp (same snapshot); the check's first flash
    // operation (the erase of the state region its record goes to) is refused
    sim.timestamp.version += 1;
    sim.timestamp.expires = NOW + 10 * 86_400;
    sim.write_timestamp();
    let flash = RefusesOnce {
        flash: Flash::new(&mut mem),
        before: Some(0),
    };
    let mut store = FirmwareStore::open(flash, LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    let mut bufs = Bufs::new();
    let r = device_agent::check_for_update(
        &mut store,
        &device(),
        &mut t,
        &mut Pump::default(),
        &mut device_agent::NoRollback,
        NOW + 3600,
        bufs.ws(),
    );
    assert_eq!(
        r.unwrap_err(),
        AgentError::Store(device_agent::StoreError::Flash(MemFlashError::PowerLoss))
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    assert_eq!(store.flash_mut().before, None, "the refused operation came");
    assert_eq!(store.last_check(), Some(last));
    drop(store);

    // after a power cycle: the new timestamp is stored, the wait goes on, nothing is fetched
    // past the timestamp even with the right bytes back on the server
    let mut store = open_store(&mut mem);
    assert_eq!(store.last_check(), Some(last));
    let kept = persisted(&mut store);
    let mut expected = before.clone();
    expected.metadata[1] = Some(sim.files["timestamp.json"].clone());
    assert_eq!(kept, expected, "only the new timestamp is new");
    assert_eq!(kept.slots, slots);
    let seq = store.sequence();
    let mut t = MapTransport::new(&sim.files);
    // (within an hour of the time floor the timestamp's record carries: no record for it)
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 7000).unwrap_err(),
        AgentError::WrongBytes {
            retry_at: NOW + RETRY_WRONG_BYTES
        }
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    assert_eq!(store.sequence(), seq, "no flash write while it waits");
    assert_eq!(persisted(&mut store), kept);

    // a new root verifies and the check then fails (no timestamp to be had): the root is kept,
    // the wait is not (the new root's keys may revoke what it relied on)
    sim.rotate_root(|_| {});
    let mut files = sim.files.clone();
    files.remove("timestamp.json");
    let mut t = MapTransport::new(&files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 7200).unwrap_err(),
        AgentError::Missing {
            what: Name::new("timestamp.json")
        }
    );
    assert_eq!(t.requests, ["2.root.json", "3.root.json", "timestamp.json"]);
    assert_eq!(
        persisted(&mut store).metadata[0].as_deref(),
        Some(&sim.files["2.root.json"][..])
    );
    assert_eq!(store.last_check(), None);
    assert_eq!(store.slots(), slots);
}

/// A check in the wait for wrong bytes that verifies a new timestamp naming a new snapshot and
/// then cannot fetch that snapshot keeps the wait's conclusion, which names the old snapshot: the
/// next check searches the new release and stages it.
#[test]
fn a_failed_check_that_verified_a_newer_snapshot_leaves_the_wait_behind() {
    let sim = repo_with("2.0.0", 7, 3000);
    let (mut mem, last, before) = waiting_for_wrong_bytes(&sim);
    let mut store = open_store(&mut mem);

    // a new release whose snapshot cannot be had yet
    let mut next = sim.clone();
    publish(&mut next, "2.0.1", 7, 3000, "pump-a");
    let snapshot = format!("{}.snapshot.json", next.snapshot.version);
    let mut files = next.files.clone();
    files.remove(&snapshot);
    let mut t = MapTransport::new(&files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 60).unwrap_err(),
        AgentError::Missing {
            what: Name::new(&snapshot)
        }
    );
    assert_eq!(
        t.requests,
        ["2.root.json", "timestamp.json", snapshot.as_str()]
    );
    assert_eq!(store.last_check(), Some(last));
    let mut expected = before;
    expected.metadata[1] = Some(next.files["timestamp.json"].clone());
    assert_eq!(
        persisted(&mut store),
        expected,
        "only the new timestamp is new"
    );

    // the snapshot is there now: searched and staged at once, within the old wait
    let mut t = MapTransport::new(&next.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 120).unwrap(),
        Outcome::Staged {
            version: v("2.0.1")
        }
    );
    assert_eq!(store.last_check(), None);
}

#[test]
fn wrong_image_bytes_are_tried_again_at_once_from_a_new_snapshot_not_after_the_clock_went_back() {
    use device_agent::agent::RETRY_WRONG_BYTES;
    let sim = repo_with("2.0.0", 7, 3000);
    let file = sim.target_file_name(TARGET);
    let mut wrong = sim.files.clone();
    wrong.get_mut(&file).unwrap()[10] ^= 1;
    let hash_mismatch = AgentError::Trust(Error::HashMismatch {
        what: Name::new(TARGET),
        algorithm: "sha256",
    });
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let refuse = |store: &mut FirmwareStore<Flash<'_>>, at: i64| {
        let mut t = MapTransport::new(&wrong);
        let err = check_at(store, &mut t, &mut Pump::default(), at).unwrap_err();
        (err, t.target_bytes)
    };
    assert_eq!(refuse(&mut store, NOW), (hash_mismatch, 3000));
    assert_eq!(
        refuse(&mut store, NOW + 60),
        (
            AgentError::WrongBytes {
                retry_at: NOW + RETRY_WRONG_BYTES
            },
            0
        )
    );
    // a clock set back by more than the wait (a reset real-time clock, or time spoofed): the
    // check runs at the time floor, the last check's time, and the wait goes on (it ended
    // before the time floor: the same server could be made to wear the slot's sectors out)
    let back = NOW - RETRY_WRONG_BYTES - 1;
    assert_eq!(
        refuse(&mut store, back),
        (
            AgentError::WrongBytes {
                retry_at: NOW + RETRY_WRONG_BYTES
            },
            0
        )
    );
    assert_eq!(store.time_floor(), NOW + 60);
    let soon = back + 60;
    // a new release (a new snapshot) is tried at once, within the wait
    let mut next = sim.clone();
    publish(&mut next, "2.0.1", 7, 3000, "pump-a");
    let mut t = MapTransport::new(&next.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), soon).unwrap(),
        Outcome::Staged {
            version: v("2.0.1")
        }
    );
    assert_eq!(store.last_check(), None);
}

#[test]
fn reset_before_confirmation_reverts_and_the_image_is_not_retried() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    // nothing is staged while the trial runs, and nothing is even fetched
    let mut t2 = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t2, &mut Pump::default()).unwrap(),
        Outcome::TrialRunning {
            version: v("2.0.0")
        }
    );
    assert!(t2.requests.is_empty());
    assert!(t2.asked.is_empty(), "nor asked for ahead");
    // crash before confirmation
    drop(store);
    let mut store = open_store(&mut mem);
    assert_eq!(
        store.boot().unwrap(),
        Boot::Reverted {
            slot: Slot::A,
            rejected: Slot::B
        }
    );
    assert_eq!(store.slots().security_counter(), 1);
    assert_eq!(
        store.boot().unwrap(),
        Boot::Normal { slot: Slot::A },
        "no revert loop"
    );
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(
        err,
        AgentError::PreviouslyReverted {
            version: v("2.0.0")
        }
    );
    assert_eq!(persisted(&mut store), before);
}

#[test]
fn failing_health_check_reverts_immediately() {
    let sim = repo_with("2.0.0", 7, 3000);
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    store.boot().unwrap();
    assert_eq!(
        store.reject().unwrap(),
        Boot::Reverted {
            slot: Slot::A,
            rejected: Slot::B
        }
    );
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
    assert_eq!(store.slots().info(Slot::B).state, SlotState::Rejected);
}

/// A transport serving `files` whose target reads fail past `bytes` in all.
fn cut_after(files: &std::collections::BTreeMap<String, Vec<u8>>, bytes: u64) -> MapTransport {
    let mut t = MapTransport::new(files);
    t.fail_target_after = Some(bytes);
    t
}

/// A download that breaks off before its next checkpoint after erasing slot sectors (a proxy
/// that cuts every answer at the same byte) is not tried again at every poll, as each try erases
/// the same sectors: it waits five minutes, then twice as long after each such break in a row.
/// A break after a new checkpoint waits for nothing, and the download resumes there.
#[test]
fn a_download_that_keeps_breaking_off_before_its_next_checkpoint_waits_longer_each_time() {
    use device_agent::agent::{retry_broken, BROKEN_TRIES_MAX, RETRY_BROKEN_FIRST};
    use device_agent::Conclusion;
    assert_eq!(
        [0, 1, 2, 8, 9, 10, 255].map(retry_broken),
        [300, 600, 1200, 76_800, 86_400, 86_400, 86_400]
    );
    assert_eq!(BROKEN_TRIES_MAX, 9);
    let sim = repo_with("2.0.0", 7, 3000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    // 1 KiB sectors, a checkpoint at each, 256-byte blocks: a cut after 512 bytes erased the
    // first sector and reached no checkpoint
    let cut_at = |bytes: u64| cut_after(&sim.files, bytes);
    let cut = AgentError::Transport {
        what: Name::new(TARGET),
        error: MapError::Cut,
    };
    assert_eq!(
        check_at(&mut store, &mut cut_at(512), &mut Pump::default(), NOW).unwrap_err(),
        cut
    );
    let last = store.last_check().unwrap();
    assert_eq!(last.conclusion, Conclusion::Broken { tries: 0 });
    assert_eq!(last.valid_until, NOW + RETRY_BROKEN_FIRST);
    assert_eq!(last.snapshot_version, sim.snapshot.version);
    // within the wait, even with the server mended: the check stops after the timestamp and
    // writes nothing
    let before = persisted(&mut store);
    let ops = store.flash_mut().operations();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(
            &mut store,
            &mut t,
            &mut Pump::default(),
            NOW + RETRY_BROKEN_FIRST - 1
        )
        .unwrap_err(),
        AgentError::DownloadBroken {
            retry_at: NOW + RETRY_BROKEN_FIRST
        }
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    assert_eq!(persisted(&mut store), before);
    assert_eq!(store.flash_mut().operations(), ops, "nothing written");
    // each break in a row at the end of the wait doubles it
    for tries in 1..=4u8 {
        let at = store.last_check().unwrap().valid_until;
        assert_eq!(
            check_at(&mut store, &mut cut_at(512), &mut Pump::default(), at).unwrap_err(),
            cut
        );
        let last = store.last_check().unwrap();
        assert_eq!(last.conclusion, Conclusion::Broken { tries });
        assert_eq!(last.valid_until, at + retry_broken(tries));
    }
    // a break after a new checkpoint (1 KiB in): progress, no wait
    let at = store.last_check().unwrap().valid_until;
    assert_eq!(
        check_at(&mut store, &mut cut_at(1536), &mut Pump::default(), at).unwrap_err(),
        cut
    );
    assert_eq!(store.last_check(), None);
    assert_eq!(store.download_offset(), 1024);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), at).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    let first = t.requests.iter().find(|r| r.starts_with("targets/"));
    assert!(
        first.is_some_and(|r| r.ends_with("firmware.bin@1024")),
        "resumed at the checkpoint: {first:?}"
    );
    // a server that fails before the first block erased nothing: no wait
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    assert_eq!(
        check_at(&mut store, &mut cut_at(0), &mut Pump::default(), NOW).unwrap_err(),
        cut
    );
    assert_eq!(store.last_check(), None);
    // a new snapshot is tried at once, and its breaks are counted from the first again
    let mut sim2 = repo_with("2.0.0", 7, 3000);
    let mut mem2 = provisioned(&sim2);
    let mut store2 = open_store(&mut mem2);
    check_at(
        &mut store2,
        &mut cut_after(&sim2.files, 512),
        &mut Pump::default(),
        NOW,
    )
    .unwrap_err();
    let later = NOW + RETRY_BROKEN_FIRST;
    check_at(
        &mut store2,
        &mut cut_after(&sim2.files, 512),
        &mut Pump::default(),
        later,
    )
    .unwrap_err();
    assert_eq!(
        store2.last_check().unwrap().conclusion,
        Conclusion::Broken { tries: 1 }
    );
    publish(&mut sim2, "2.0.1", 7, 3000, "pump-a");
    assert_eq!(
        check_at(
            &mut store2,
            &mut cut_after(&sim2.files, 512),
            &mut Pump::default(),
            later + 1
        )
        .unwrap_err(),
        cut
    );
    let last = store2.last_check().unwrap();
    assert_eq!(last.conclusion, Conclusion::Broken { tries: 0 });
    assert_eq!(last.snapshot_version, sim2.snapshot.version);
    assert_eq!(last.valid_until, later + 1 + RETRY_BROKEN_FIRST);
    drop(store2);
    // a clock set back to before the break: the check runs at the time floor (the break's
    // time), and the wait goes on
    assert_eq!(
        check_at(&mut store, &mut cut_at(512), &mut Pump::default(), NOW).unwrap_err(),
        cut
    );
    assert!(store.last_check().is_some());
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW - 10).unwrap_err(),
        AgentError::DownloadBroken {
            retry_at: NOW + RETRY_BROKEN_FIRST
        }
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
}

/// A clock behind the time floor leaves the checks' time standing at the floor, and a wait
/// measured by it alone would never end (a download broken just before the real-time clock's
/// battery failed: the pump would not try again until the next snapshot, days later). A wait
/// also ends once the clock has gone its length past the highest it had in this boot when the
/// wait began (after a reset, at the boot's first check); a clock set back and forward again
/// within one boot does not end it (a server that serves broken downloads and sets the time
/// would otherwise wear the slot out).
#[test]
fn a_wait_ends_when_the_clock_moves_its_length_though_it_is_behind_the_time_floor() {
    use device_agent::agent::{retry_broken, RETRY_BROKEN_FIRST};
    use device_agent::Conclusion;
    const DAY: i64 = 86_400;
    let sim = repo_with("2.0.0", 7, 3000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    // a check at `at` against a server that breaks the download off after one sector
    let breaks = |store: &mut FirmwareStore<Flash<'_>>, at: i64| {
        let err = check_at(
            store,
            &mut cut_after(&sim.files, 512),
            &mut Pump::default(),
            at,
        );
        assert_eq!(
            err.unwrap_err(),
            AgentError::Transport {
                what: Name::new(TARGET),
                error: MapError::Cut,
            },
            "at {at}"
        );
    };
    // checks at each of `ats` against the mended server still wait, fetching nothing
    let waits = |store: &mut FirmwareStore<Flash<'_>>, ats: &[i64], retry_at: i64| {
        for &at in ats {
            let mut t = MapTransport::new(&sim.files);
            assert_eq!(
                check_at(store, &mut t, &mut Pump::default(), at).unwrap_err(),
                AgentError::DownloadBroken { retry_at },
                "at {at}"
            );
            assert_eq!(t.target_bytes, 0, "at {at}");
        }
    };
    // a break at NOW after erasing a sector: a five-minute wait
    breaks(&mut store, NOW);
    assert_eq!(store.time_floor(), NOW);
    // in the same boot, the clock set a year back and moving on: the wait holds until the
    // clock passes the highest it had (NOW) by the wait's length
    let back = NOW - 365 * DAY;
    let retry_at = NOW + RETRY_BROKEN_FIRST;
    waits(
        &mut store,
        &[
            back,
            back + RETRY_BROKEN_FIRST,
            back + 2 * DAY,
            retry_at - 1,
        ],
        retry_at,
    );
    // the real-time clock resets a year back with the power: the wait counts from the boot's
    // first check, though the checks run at the time floor
    let before = persisted(&mut store);
    drop(store);
    let mut store = open_store(&mut mem);
    let first = back + 600;
    waits(
        &mut store,
        &[first, first + RETRY_BROKEN_FIRST - 1],
        retry_at,
    );
    assert_eq!(persisted(&mut store), before, "waiting wrote nothing");
    // the wait's length later by the clock: tried again (and broken again: the next wait,
    // twice as long, set at the checks' time, the floor)
    let ended = first + RETRY_BROKEN_FIRST;
    breaks(&mut store, ended);
    let last = store.last_check().unwrap();
    assert_eq!(last.conclusion, Conclusion::Broken { tries: 1 });
    assert_eq!(last.valid_until, NOW + retry_broken(1));
    assert_eq!(store.time_floor(), NOW);
    // set back and forward again within the boot: the highest clock (`ended`) counts
    let retry_at = NOW + retry_broken(1);
    waits(
        &mut store,
        &[first, ended, ended + retry_broken(1) - 1],
        retry_at,
    );
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(
            &mut store,
            &mut t,
            &mut Pump::default(),
            ended + retry_broken(1)
        )
        .unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(store.time_floor(), NOW);
}

/// A pump that updated to 2.0.0 and confirmed it, so slot A still holds 1.0.0 (good); `counter`
/// is 2.0.0's security counter (1.0.0's is 1).
fn updated_and_confirmed(sim: &hale_tests::RepoSim) -> Vec<u8> {
    let mut mem = provisioned(sim);
    let mut store = open_checked(&mut mem, sim);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    drop(store);
    mem
}

/// Flip one byte of `slot`'s image on the flash (bit rot).
fn damage(mem: &mut [u8], slot: Slot) {
    let at = LAYOUT.slots[slot as usize] as usize + 100;
    mem[at] ^= 0x40;
}

/// Bit rot in the running image, with the image before it intact in the other slot: the pump
/// boots that one instead of refusing to boot at all, forgets the damaged one (it never failed:
/// not refused) and installs it again at the next check.
#[test]
fn a_damaged_running_image_gives_way_to_the_good_image_in_the_other_slot_and_is_installed_again() {
    let sim = repo_with("2.0.0", 1, 9000);
    let mut mem = updated_and_confirmed(&sim);
    damage(&mut mem, Slot::B);
    // a power cut at any flash operation of that boot leaves the decision to the next one
    for n in 0.. {
        let mut copy = mem.clone();
        let mut store = FirmwareStore::open(Flash::new(&mut copy).fail_after(n), LAYOUT).unwrap();
        let done = store.boot();
        if !store.into_flash().power_lost() {
            assert!(done.is_ok());
            break;
        }
        let mut store = open_store(&mut copy);
        let boot = store.boot().unwrap();
        assert!(
            boot == Boot::Normal { slot: Slot::A }
                || boot
                    == Boot::Damaged {
                        slot: Slot::A,
                        damaged: Slot::B
                    },
            "cut at {n}: {boot:?}"
        );
        assert_eq!(store.slots().info(Slot::B), device_agent::SlotInfo::EMPTY);
        assert!(n < 100, "the boot never finished");
    }
    let mut store = open_store(&mut mem);
    let sha2 = store.slots().info(Slot::B).image.unwrap().sha256;
    assert_eq!(
        store.boot().unwrap(),
        Boot::Damaged {
            slot: Slot::A,
            damaged: Slot::B
        }
    );
    let s = store.slots();
    assert_eq!(s.running().unwrap().version, v("1.0.0"));
    assert_eq!(s.info(Slot::B), device_agent::SlotInfo::EMPTY);
    assert_eq!(s.security_counter(), 1);
    assert!(
        !store.refused(&sha2),
        "a damaged image did not fail: not refused"
    );
    drop(store);
    // the decision was committed: the next reset boots 1.0.0 as usual
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    drop(store);
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    assert_eq!(store.slots().running().unwrap().version, v("2.0.0"));
    assert_eq!(store.slots().running().unwrap().sha256, sha2);
    assert!(store.image_matches(Slot::B).unwrap());
}

/// No fallback the pump may take: the image before was below the security counter 2.0.0 raised,
/// or its bytes are damaged too. The boot is refused and nothing changes.
#[test]
fn a_damaged_running_image_with_no_allowed_intact_fallback_boots_nothing_and_changes_nothing() {
    let raised = repo_with("2.0.0", 7, 9000);
    let mut below_counter = updated_and_confirmed(&raised);
    damage(&mut below_counter, Slot::B);
    let same = repo_with("2.0.0", 1, 9000);
    let mut both_damaged = updated_and_confirmed(&same);
    damage(&mut both_damaged, Slot::A);
    damage(&mut both_damaged, Slot::B);
    for mem in [&mut below_counter, &mut both_damaged] {
        let mut store = open_store(mem);
        assert_eq!(store.slots().info(Slot::A).state, SlotState::Good);
        let before = persisted(&mut store);
        assert_eq!(
            store.boot().unwrap_err(),
            device_agent::StoreError::NoBootableImage
        );
        assert_eq!(persisted(&mut store), before);
        drop(store);
        let mut store = open_store(mem);
        assert_eq!(persisted(&mut store), before, "nothing written");
    }
}

/// A pending image whose bytes changed before its trial boot never runs: the good one boots, and
/// the boot says so (it used to say the trial was reset before confirmation).
#[test]
fn a_damaged_pending_image_is_not_booted_and_the_boot_says_it_was_damaged() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    drop(open_checked(&mut mem, &sim));
    damage(&mut mem, Slot::B);
    let mut store = open_store(&mut mem);
    assert_eq!(
        store.boot().unwrap(),
        Boot::Damaged {
            slot: Slot::A,
            damaged: Slot::B
        }
    );
    assert_eq!(store.slots().info(Slot::B).state, SlotState::Rejected);
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
    assert_eq!(store.slots().security_counter(), 1);
}

fn assert_refused(
    sim: &hale_tests::RepoSim,
    want: AgentError<MapError, device_agent::memflash::MemFlashError>,
) {
    let mut mem = provisioned(sim);
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(err, want);
    // the slots are untouched (metadata may have been refreshed: it verified)
    assert_eq!(store.slots(), before.slots);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
}

#[test]
fn refuses_image_for_another_model() {
    let mut sim = hale_tests::RepoSim::new();
    publish(&mut sim, "2.0.0", 1, 100, "monitor-b");
    assert_refused(
        &sim,
        AgentError::Policy(PolicyError::WrongModel {
            model: Name::new("pump-a"),
        }),
    );
}

#[test]
fn refuses_an_image_whose_version_is_longer_than_a_slot_record_holds() {
    // 49 bytes printed: one more than a slot record holds (48 is accepted); a valid version
    // (a pre-release is at most 32 bytes: the length is in the numbers)
    let long = format!("2000000000000000.0.0-{}", "a".repeat(28));
    let fits = format!("2000000000000000.0.0-{}", "a".repeat(27));
    assert_eq!((long.len(), fits.len()), (49, 48));
    let sim = repo_with(&long, 1, 100);
    assert_refused(&sim, AgentError::VersionTooLong { version: v(&long) });
    assert_eq!(
        AgentError::<&str, ()>::VersionTooLong { version: v(&long) }.to_string(),
        format!(
            "version {long} is longer than the 48 bytes a slot record holds: this device cannot \
             install it"
        )
    );
    let sim = repo_with(&fits, 1, 100);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    assert_eq!(
        check_fresh(&mut store, &sim.files),
        Ok(Outcome::Staged { version: v(&fits) })
    );
}

#[test]
fn refuses_older_image() {
    let sim = repo_with("0.9.0", 1, 100);
    assert_refused(
        &sim,
        AgentError::Policy(PolicyError::NotNewer {
            running: v("1.0.0"),
            offered: v("0.9.0"),
        }),
    );
}

#[test]
fn refuses_image_below_security_counter() {
    let sim = repo_with("2.0.0", 0, 100);
    assert_refused(
        &sim,
        AgentError::Policy(PolicyError::BelowSecurityCounter {
            floor: 1,
            offered: 0,
        }),
    );
}

#[test]
fn refuses_when_target_not_listed() {
    let sim = hale_tests::RepoSim::new();
    assert_refused(
        &sim,
        AgentError::TargetNotListed {
            target: Name::new(TARGET),
        },
    );
}

#[test]
fn refuses_tampered_targets_metadata_and_keeps_trusted_state() {
    let mut sim = repo_with("2.0.0", 7, 100);
    let mut mem = provisioned(&sim);
    // a first good refresh so there is trusted metadata to keep
    {
        let mut store = open_store(&mut mem);
        check(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump { therapy: true },
        )
        .unwrap();
    }
    publish(&mut sim, "3.0.0", 7, 100, "pump-a");
    let name = format!("{}.targets.json", sim.targets.version);
    let bytes = sim.files[&name].clone();
    sim.files.insert(
        name,
        hale_tests::tamper_signed(&bytes, |s| s["expires"] = "2099-01-01T00:00:00Z".into()),
    );
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    // the snapshot names the targets file by version only: the signature check catches it
    assert_eq!(
        err,
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("targets"),
            threshold: 1,
            valid: 0
        })
    );
    // the timestamp and snapshot that verified before it are kept (spec 5.4.5, 5.5.7); the
    // trusted targets, root and slots are as they were, and the next check changes nothing
    let mut kept = before.clone();
    kept.metadata[1] = Some(sim.files["timestamp.json"].clone());
    kept.metadata[2] = Some(sim.files[&format!("{}.snapshot.json", sim.snapshot.version)].clone());
    assert_ne!(kept, before);
    assert_eq!(persisted(&mut store), kept);
    check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(persisted(&mut store), kept);
}

#[test]
fn refuses_tampered_image_bytes_and_keeps_the_running_slot() {
    let mut sim = repo_with("2.0.0", 7, 3000);
    let file = sim.target_file_name(TARGET);
    sim.files.get_mut(&file).unwrap()[2000] ^= 1;
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store).slots;
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256"
        })
    );
    assert_eq!(
        store.slots(),
        before,
        "the aborted download leaves the slots as they were"
    );
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
}

#[test]
fn refuses_endless_image_data_beyond_the_listed_length() {
    // the served file is longer than listed: the agent never asks for more than the length
    let mut sim = repo_with("2.0.0", 7, 3000);
    let file = sim.target_file_name(TARGET);
    sim.files
        .get_mut(&file)
        .unwrap()
        .extend_from_slice(&[0u8; 50_000]);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(t.target_bytes, 3000);
}

#[test]
fn install_is_deferred_while_therapy_runs_and_happens_after() {
    let sim = repo_with("2.0.0", 7, 3000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    let before = store.slots();
    let out = check(&mut store, &mut t, &mut Pump { therapy: true }).unwrap();
    assert_eq!(
        out,
        Outcome::Deferred {
            offered: v("2.0.0"),
            reason: DeferReason::TherapyRunning
        }
    );
    assert_eq!(store.slots(), before);
    assert_eq!(t.target_bytes, 0, "nothing downloaded while deferred");
    let out = check(
        &mut store,
        &mut MapTransport::new(&sim.files),
        &mut Pump { therapy: false },
    )
    .unwrap();
    assert_eq!(
        out,
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
}

/// Yes before the download, no once the image is written: therapy began meanwhile.
struct TherapyStartsDuringTheDownload {
    asked: usize,
}

impl device_agent::Application for TherapyStartsDuringTheDownload {
    fn safe_to_install(&mut self) -> Result<(), DeferReason> {
        self.asked += 1;
        match self.asked {
            1 => Ok(()),
            _ => Err(DeferReason::TherapyRunning),
        }
    }
}

#[test]
fn an_image_written_while_therapy_began_is_kept_but_boots_only_after_a_check_that_may_install() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    let mut app = TherapyStartsDuringTheDownload { asked: 0 };
    let deferred = Outcome::Deferred {
        offered: v("2.0.0"),
        reason: DeferReason::TherapyRunning,
    };
    assert_eq!(
        check_at(&mut store, &mut t, &mut app, NOW).unwrap(),
        deferred
    );
    assert_eq!((app.asked, t.target_bytes), (2, 9000));
    // written and verified, not marked to boot
    let b = store.slots().info(Slot::B);
    assert_eq!(
        (b.state, b.image.map(|i| i.version)),
        (SlotState::Staging, Some(v("2.0.0")))
    );
    assert_eq!(store.download_offset(), 9000);

    // a reset now boots the image that was running
    drop(store);
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    // therapy still on: deferred again, nothing read or written
    let before = persisted(&mut store);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump { therapy: true }).unwrap(),
        deferred
    );
    assert_eq!(t.target_bytes, 0);
    assert_eq!(persisted(&mut store), before);

    // therapy over: the image is read back from flash and hashed again, then marked; nothing is
    // downloaded again, and it boots as a trial
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(t.target_bytes, 0);
    assert_eq!(store.slots().info(Slot::B).state, SlotState::Pending);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
}

/// An image kept whole in its slot while therapy ran, whose flash no longer holds the verified
/// bytes when it is read back: the server served nothing in that check, so it is not blamed (no
/// wait): the staging is abandoned and the next check downloads the image again.
#[test]
fn a_kept_image_that_no_longer_verifies_in_flash_is_downloaded_again_at_once() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    let mut app = TherapyStartsDuringTheDownload { asked: 0 };
    assert_eq!(
        check_at(&mut store, &mut t, &mut app, NOW).unwrap(),
        Outcome::Deferred {
            offered: v("2.0.0"),
            reason: DeferReason::TherapyRunning,
        }
    );
    drop(store);
    // a bit of slot B's image flips in flash (slot B starts after the two state regions)
    mem[(LAYOUT.slots[1] + 100) as usize] ^= 1;
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap_err(),
        AgentError::Trust(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256"
        })
    );
    assert_eq!(t.target_bytes, 0, "read back from flash, nothing fetched");
    assert_eq!(store.slots().info(Slot::B).state, SlotState::Empty);
    assert_eq!(store.last_check(), None, "the server is not blamed");
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(t.target_bytes, 9000);
}

#[test]
fn interrupted_download_resumes_from_the_stored_offset() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    t.fail_target_after = Some(5000);
    let err = check(&mut store, &mut t, &mut Pump::default()).unwrap_err();
    assert_eq!(
        err,
        AgentError::Transport {
            what: Name::new(TARGET),
            error: MapError::Cut
        }
    );
    assert_eq!(store.download_offset(), 4096);
    assert_eq!(store.slots().info(Slot::B).state, SlotState::Staging);
    assert_eq!(store.slots().active(), Slot::A);
    drop(store);
    // power cycle, then the next check picks up at the checkpoint
    let mut store = open_store(&mut mem);
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(t.target_bytes, 9000 - 4096);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
}

/// A server that fails (or withholds) every download: each check ends with the transport's
/// error, the slots stay as they were, and the inactive slot's first sector is never erased for
/// it, however often the pump polls (an erase per poll would wear the flash out within months).
#[test]
fn a_download_that_never_starts_erases_nothing() {
    let sim = repo_with("2.0.0", 7, 3000);
    let mut mem = provisioned(&sim);
    // slot B's first sector holds something (an image from before): an erase would show
    let b = LAYOUT.slots[1] as usize;
    mem[b..b + ERASE].fill(0x5A);
    for _ in 0..3 {
        let mut store = open_store(&mut mem);
        let mut t = MapTransport::new(&sim.files);
        t.fail_target_after = Some(0);
        assert_eq!(
            check(&mut store, &mut t, &mut Pump::default()).unwrap_err(),
            AgentError::Transport {
                what: Name::new(TARGET),
                error: MapError::Cut
            }
        );
        assert_eq!(store.slots().active(), Slot::A);
        assert_eq!(store.download_offset(), 0);
        // nothing began: slot B is as it was (not "staging" an image that never came)
        assert_eq!(store.slots().info(Slot::B).state, SlotState::Empty);
    }
    assert!(
        mem[b..b + ERASE].iter().all(|&x| x == 0x5A),
        "slot B erased"
    );
    // the download then goes through
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
}

#[test]
fn a_longer_checkpoint_interval_resumes_from_its_last_boundary_and_writes_fewer_records() {
    // checkpoints every 3 sectors, and one at the last whole sector when a download breaks
    // off: a cut costs at most a sector downloaded again
    let every = LAYOUT.with_checkpoint(3 * ERASE as u32);
    let sim = repo_with("2.0.0", 7, 9000);
    for (cut, checkpointed) in [(3000u64, 2048u64), (5000, 4096), (7000, 6144)] {
        let mut mem = provisioned(&sim);
        let mut store = FirmwareStore::open(Flash::new(&mut mem), every).unwrap();
        let mut t = MapTransport::new(&sim.files);
        t.fail_target_after = Some(cut);
        assert_eq!(
            check(&mut store, &mut t, &mut Pump::default()).unwrap_err(),
            AgentError::Transport {
                what: Name::new(TARGET),
                error: MapError::Cut
            }
        );
        assert_eq!(store.download_offset(), checkpointed, "cut at {cut}");
        assert_eq!(store.slots().info(Slot::B).state, SlotState::Staging);
        // progress: nothing to wait for
        assert_eq!(store.last_check(), None, "cut at {cut}");
        drop(store);
        // power cycle: the next check goes on from the last checkpoint
        let mut store = FirmwareStore::open(Flash::new(&mut mem), every).unwrap();
        assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
        let mut t = MapTransport::new(&sim.files);
        assert_eq!(
            check(&mut store, &mut t, &mut Pump::default()).unwrap(),
            Outcome::Staged {
                version: v("2.0.0")
            }
        );
        assert_eq!(t.target_bytes, 9000 - checkpointed, "cut at {cut}");
        assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    }
    // a break at the same byte after that: the next try starts at the sector the break
    // checkpointed, completes none and waits (one sector erased per try)
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), every).unwrap();
    let mut t = MapTransport::new(&sim.files);
    t.fail_target_after = Some(3000);
    check(&mut store, &mut t, &mut Pump::default()).unwrap_err();
    assert_eq!(store.download_offset(), 2048);
    assert_eq!(store.last_check(), None);
    let mut t = MapTransport::new(&sim.files);
    t.fail_target_after = Some(3000 - 2048);
    check(&mut store, &mut t, &mut Pump::default()).unwrap_err();
    assert_eq!(store.download_offset(), 2048);
    assert_eq!(
        store.last_check().map(|c| c.conclusion),
        Some(device_agent::Conclusion::Broken { tries: 0 })
    );
    drop(store);
    // a whole download: checkpoints at 3072 and 6144 instead of every 1024 up to 8192
    let records = |layout| {
        let mut mem = provisioned(&sim);
        let mut store = FirmwareStore::open(Flash::new(&mut mem), layout).unwrap();
        let before = store.sequence();
        let mut t = MapTransport::new(&sim.files);
        check(&mut store, &mut t, &mut Pump::default()).unwrap();
        store.sequence() - before
    };
    assert_eq!(records(LAYOUT) - records(every), 8 - 2);
}

#[test]
fn a_checkpoint_interval_that_is_not_whole_sectors_is_refused() {
    let sim = repo_with("2.0.0", 7, 9000);
    let mut mem = provisioned(&sim);
    let fresh = mem.clone();
    let err = FirmwareStore::open(Flash::new(&mut mem), LAYOUT.with_checkpoint(1000))
        .err()
        .unwrap();
    assert_eq!(
        err,
        device_agent::StoreError::Layout {
            reason: "the checkpoint interval must be a multiple of the erase size"
        }
    );
    assert_eq!(mem, fresh, "nothing written");
}

#[test]
fn follows_a_root_rotation() {
    let mut sim = repo_with("2.0.0", 7, 100);
    let mut mem = provisioned(&sim);
    sim.rotate_root(|s| {
        s.timestamp.keys = vec![hale_tests::key("timestamp-2", hale_repo::KeyKind::Ed25519)]
    });
    sim.publish();
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(
        &t.requests[..3],
        &["2.root.json", "3.root.json", "timestamp.json"]
    );
    let mut buf = vec![0u8; 4096];
    let root = store
        .read_metadata(hale_core::Role::Root, &mut buf)
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(root, sim.root_bytes(2));
}

#[test]
fn a_running_pump_drops_a_fast_forwarded_timestamp_when_a_new_root_rotates_its_key() {
    // spec 5.3.11 on a pump that keeps polling: its later checks take the root and timestamp
    // the last one verified without their signature checks (hale-core's seal), but not once a
    // new root is applied
    let mut sim = repo_with("1.0.0", 1, 5000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    assert_eq!(check_fresh(&mut store, &sim.files).unwrap(), up_to_date());
    // whoever stole the timestamp key pushes the timestamp version far ahead
    let mut stolen = sim.clone();
    stolen.timestamp.version += 1000;
    stolen.write_timestamp();
    assert_eq!(
        check_fresh(&mut store, &stolen.files).unwrap(),
        up_to_date()
    );
    assert_eq!(
        persisted(&mut store).metadata[1].as_ref(),
        Some(&stolen.files["timestamp.json"])
    );
    // the repository rotates the timestamp key; its own timestamp is far behind the stolen one
    sim.rotate_root(|s| {
        s.timestamp.keys = vec![hale_tests::key("timestamp-2", hale_repo::KeyKind::Ed25519)]
    });
    sim.publish();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(
        t.requests[..3],
        ["2.root.json", "3.root.json", "timestamp.json"]
    );
    let after = persisted(&mut store);
    assert_eq!(after.metadata[0], Some(sim.root_bytes(2)));
    assert_eq!(
        after.metadata[1].as_ref(),
        Some(&sim.files["timestamp.json"])
    );
}

#[test]
fn expired_timestamp_is_refused_and_nothing_changes() {
    let mut sim = repo_with("2.0.0", 7, 100);
    sim.timestamp.expires = NOW - 1;
    sim.write_timestamp();
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW - 1,
            now: NOW
        })
    );
    assert_eq!(persisted(&mut store), before);
}

#[test]
fn a_clock_set_back_does_not_make_an_expired_timestamp_good_again() {
    // a freeze: the server (or whoever stands in for it) keeps serving the last timestamp, and
    // the pump's clock is set back (time spoofed on the network, a reset real-time clock) to
    // when it was still good
    const DAY: i64 = 86_400;
    let sim = repo_with("1.0.0", 1, 5000);
    assert_eq!(sim.timestamp.expires, NOW + DAY);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let at = |store: &mut FirmwareStore<Flash<'_>>, t: i64| {
        check_at(
            store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
            t,
        )
    };
    assert_eq!(at(&mut store, NOW).unwrap(), up_to_date());
    assert_eq!(store.time_floor(), NOW);
    let expired = |now: i64| {
        AgentError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW + DAY,
            now,
        })
    };
    assert_eq!(
        at(&mut store, NOW + DAY + 5).unwrap_err(),
        expired(NOW + DAY + 5)
    );
    // the timestamp's own expiry is now the floor, recorded at once (a day past the last)
    assert_eq!(store.time_floor(), NOW + DAY);
    let (seq, before) = (store.sequence(), persisted(&mut store));
    drop(store);
    // after a power cycle, with the clock set back to the day before: the same refusal, at the
    // floor, and nothing changes
    let mut store = open_store(&mut mem);
    assert_eq!(store.time_floor(), NOW + DAY);
    for back in [NOW + 10, NOW - 365 * DAY] {
        assert_eq!(at(&mut store, back).unwrap_err(), expired(NOW + DAY));
        assert_eq!(store.sequence(), seq);
        assert_eq!(persisted(&mut store), before);
        assert_eq!(store.time_floor(), NOW + DAY);
    }
}

#[test]
fn a_clock_that_ran_ahead_raises_the_floor_only_to_a_signed_expiry_and_the_next_timestamp_mends_it()
{
    // a clock a month ahead: the timestamp is refused as expired, and the floor goes no
    // further than its expiry (not to the clock's month); a clock past the root's expiry
    // (a year) raises nothing: a root lives long, and the floor would hold every check back
    // until the next root
    const DAY: i64 = 86_400;
    let mut sim = repo_with("1.0.0", 1, 5000);
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let year = NOW + 366 * DAY;
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), year).unwrap_err(),
        AgentError::Trust(Error::ExpiredRoot {
            expires: sim.root.expires,
            now: year,
        })
    );
    assert_eq!(store.time_floor(), 0);
    let month = NOW + 30 * DAY;
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), month).unwrap_err(),
        AgentError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW + DAY,
            now: month,
        })
    );
    assert_eq!(store.time_floor(), NOW + DAY);
    // the clock put right: the checks run at the floor, where that timestamp has expired...
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 60).unwrap_err(),
        AgentError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW + DAY,
            now: NOW + DAY,
        })
    );
    // ...until the repository's next one (re-signed half a day before expiry)
    sim.timestamp.version += 1;
    sim.timestamp.expires = NOW + 2 * DAY;
    sim.write_timestamp();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_at(&mut store, &mut t, &mut Pump::default(), NOW + 120).unwrap(),
        up_to_date()
    );
    assert_eq!(store.time_floor(), NOW + DAY);
}

/// A repository whose targets role delegates `pump-a/*` to role `pump-a` (one ed25519 key);
/// nothing listed or published yet.
fn delegating_repo() -> hale_tests::RepoSim {
    let mut sim = hale_tests::RepoSim::new();
    let k = hale_tests::key("pump-a-team", hale_repo::KeyKind::Ed25519);
    sim.delegate("targets", "pump-a", &["pump-a/*"], true, vec![k], 1);
    sim
}

/// Lists `TARGET` in delegated role `pump-a` as `version` (`len` bytes, built for `model`), then
/// publishes: as `publish`, one role down.
fn publish_delegated(
    sim: &mut hale_tests::RepoSim,
    version: &str,
    counter: u64,
    len: usize,
    model: &str,
) {
    sim.add_target(
        "pump-a",
        TARGET,
        &image_bytes(version, len),
        Some(custom(version, counter, model)),
    );
    sim.publish();
}

#[test]
fn finds_the_image_through_a_delegated_role() {
    let mut sim = delegating_repo();
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-a");
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert!(
        t.requests.iter().any(|r| r.ends_with(".pump-a.json")),
        "{:?}",
        t.requests
    );
}

#[test]
fn refuses_a_delegated_role_signed_by_the_wrong_key() {
    let mut sim = delegating_repo();
    sim.delegated.get_mut("pump-a").unwrap().signers = Some(vec![hale_tests::key(
        "intruder",
        hale_repo::KeyKind::Ed25519,
    )]);
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-a");
    assert_refused(
        &sim,
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("pump-a"),
            threshold: 1,
            valid: 0,
        }),
    );
}

// --- no needless work: a check whose timestamp names the snapshot of a check that concluded
// "up to date" stops after the timestamp ------------------------------------------------------

/// A repository offering the pump's own image (1.0.0, counter 1) through delegated role
/// `pump-a`, so a target search costs a request the counting transport sees.
fn delegated_repo_offering_the_running_image() -> hale_tests::RepoSim {
    let mut sim = delegating_repo();
    publish_delegated(&mut sim, "1.0.0", 1, 5000, "pump-a");
    sim
}

fn up_to_date() -> Outcome {
    Outcome::UpToDate {
        running: v("1.0.0"),
    }
}

#[test]
fn unchanged_snapshot_skips_the_search_but_the_timestamp_is_verified_every_check() {
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    assert_eq!(store.last_check(), None);

    // the first check searches in full and remembers its conclusion
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(
        t.requests,
        [
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json",
            "1.pump-a.json"
        ]
    );
    let last = store.last_check().unwrap();
    assert_eq!(last.snapshot_version, 2);
    assert_eq!(last.running_sha256, store.slots().running().unwrap().sha256);
    assert_eq!(last.conclusion, device_agent::Conclusion::UpToDate);
    drop(store);

    // after a power cycle: root probe and timestamp only, no record written
    let mut store = open_store(&mut mem);
    assert_eq!(store.last_check(), Some(last));
    let (seq, before) = (store.sequence(), persisted(&mut store));
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    assert_eq!(store.sequence(), seq, "no flash write when nothing changed");
    assert_eq!(persisted(&mut store), before);

    // a new timestamp naming the same snapshot: verified and persisted, still no search
    sim.timestamp.version += 1;
    sim.write_timestamp();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);
    let after = persisted(&mut store);
    assert_eq!(
        after.metadata[1].as_deref(),
        Some(&sim.files["timestamp.json"][..])
    );
    assert_eq!(after.metadata[2..], before.metadata[2..]);
    assert_eq!(store.last_check(), Some(last));

    // an expired timestamp is refused even though the snapshot it names is unchanged
    sim.timestamp.version += 1;
    sim.timestamp.expires = NOW - 1;
    sim.write_timestamp();
    let before = persisted(&mut store);
    let err = check_fresh(&mut store, &sim.files).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW - 1,
            now: NOW
        })
    );
    assert_eq!(persisted(&mut store), before);
    assert_eq!(store.last_check(), Some(last));
}

#[test]
fn a_new_snapshot_searches_again() {
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    // a release that changes nothing for this pump still means a new snapshot: search again,
    // then remember the new snapshot
    sim.add_target("pump-a", "pump-a/notes.txt", b"release notes", None);
    sim.publish();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(
        t.requests,
        [
            "2.root.json",
            "timestamp.json",
            "3.snapshot.json",
            "2.pump-a.json"
        ]
    );
    assert_eq!(store.last_check().unwrap().snapshot_version, 3);
    let mut t = MapTransport::new(&sim.files);
    check(&mut store, &mut t, &mut Pump::default()).unwrap();
    assert_eq!(t.requests, ["2.root.json", "timestamp.json"]);

    // a new image behind a new snapshot is found and staged
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-a");
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert!(t.requests.contains(&"3.pump-a.json".to_string()));
    assert_eq!(
        store.last_check(),
        None,
        "a staged update is not remembered"
    );
}

#[test]
fn a_deferred_update_is_evaluated_again_at_the_next_check() {
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-a");
    let deferred = Outcome::Deferred {
        offered: v("2.0.0"),
        reason: DeferReason::TherapyRunning,
    };
    for _ in 0..2 {
        let mut t = MapTransport::new(&sim.files);
        let before = store.slots();
        assert_eq!(
            check(&mut store, &mut t, &mut Pump { therapy: true }).unwrap(),
            deferred
        );
        // the search ran again (the delegated role was fetched), nothing was staged
        assert!(
            t.requests.contains(&"2.pump-a.json".to_string()),
            "{:?}",
            t.requests
        );
        assert_eq!(store.slots(), before);
        assert_eq!(store.last_check(), None);
    }
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
}

#[test]
fn a_refused_update_is_evaluated_again_at_the_next_check() {
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    // an image for another model: refused, and refused again (not remembered as up to date)
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-b");
    for _ in 0..2 {
        let before = persisted(&mut store);
        let mut t = MapTransport::new(&sim.files);
        let err = check(&mut store, &mut t, &mut Pump::default()).unwrap_err();
        assert_eq!(
            err,
            AgentError::Policy(PolicyError::WrongModel {
                model: Name::new("pump-a"),
            })
        );
        assert!(t.requests.contains(&"2.pump-a.json".to_string()));
        assert_eq!(persisted(&mut store).slots, before.slots);
        assert_eq!(store.last_check(), None);
    }
}

/// The top-level metadata `sim` serves now (root, timestamp, snapshot, targets), as a check
/// that verified it stores it.
fn served(sim: &hale_tests::RepoSim) -> Vec<Option<Vec<u8>>> {
    let snap = format!("{}.snapshot.json", sim.snapshot.version);
    let targets = format!("{}.targets.json", sim.targets.version);
    ["root.json", "timestamp.json", &snap, &targets]
        .iter()
        .map(|f| Some(sim.files[*f].clone()))
        .collect()
}

#[test]
fn a_check_that_stages_nothing_writes_one_record_with_its_metadata() {
    // each outcome of a check that verified new metadata and staged nothing: one record (one
    // flash write, one sync on the simulated pump) holding that metadata and the conclusion
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_store(&mut mem);
    let one_record = |store: &mut FirmwareStore<_>, seq: u32, sim: &hale_tests::RepoSim| {
        assert_eq!(store.sequence(), seq + 1, "exactly one record");
        assert_eq!(persisted(store).metadata, served(sim));
    };

    // up to date: the metadata and the conclusion together
    let seq = store.sequence();
    assert_eq!(check_fresh(&mut store, &sim.files).unwrap(), up_to_date());
    one_record(&mut store, seq, &sim);
    assert_eq!(store.last_check().unwrap().snapshot_version, 2);

    // deferred (therapy running): the new metadata, the last check forgotten
    publish_delegated(&mut sim, "2.0.0", 7, 3000, "pump-a");
    let (seq, slots) = (store.sequence(), store.slots());
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump { therapy: true }).unwrap(),
        Outcome::Deferred {
            offered: v("2.0.0"),
            reason: DeferReason::TherapyRunning,
        }
    );
    one_record(&mut store, seq, &sim);
    assert_eq!((store.slots(), store.last_check()), (slots, None));

    // refused by policy: the metadata it verified is kept all the same
    publish_delegated(&mut sim, "2.0.1", 7, 3000, "pump-b");
    let seq = store.sequence();
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap_err(),
        AgentError::Policy(PolicyError::WrongModel {
            model: Name::new("pump-a"),
        })
    );
    one_record(&mut store, seq, &sim);
    assert_eq!((store.slots(), store.last_check()), (slots, None));

    // the delegated role cannot be fetched after the top-level roles verified: those are kept
    publish_delegated(&mut sim, "2.0.2", 7, 3000, "pump-a");
    let mut files = sim.files.clone();
    files.retain(|name, _| !name.ends_with(".pump-a.json"));
    let seq = store.sequence();
    assert_eq!(
        check_fresh(&mut store, &files).unwrap_err(),
        AgentError::Missing {
            what: Name::new("pump-a"),
        }
    );
    one_record(&mut store, seq, &sim);
    assert_eq!((store.slots(), store.last_check()), (slots, None));

    // staged: the metadata is recorded before the first slot change
    let seq = store.sequence();
    assert_eq!(
        check_fresh(&mut store, &sim.files).unwrap(),
        Outcome::Staged {
            version: v("2.0.2")
        }
    );
    assert_eq!(persisted(&mut store).metadata, served(&sim));
    assert!(store.sequence() > seq + 1);
}

#[test]
fn a_power_cut_during_a_check_keeps_the_metadata_and_its_conclusion_together() {
    // cut the power at every flash operation of a check that concludes "up to date": after
    // the cut the pump holds either what it held before or the new metadata with the
    // conclusion, never the conclusion without the metadata it was drawn from
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    open_checked(&mut mem, &sim);
    sim.add_target("pump-a", "pump-a/notes.txt", b"release notes", None);
    sim.publish();
    let before = {
        let mut store = open_store(&mut mem);
        (persisted(&mut store), store.last_check())
    };
    let mut cuts = 0;
    for n in 0.. {
        let mut copy = mem.clone();
        let mut store = FirmwareStore::open(Flash::new(&mut copy).fail_after(n), LAYOUT).unwrap();
        let done = check_fresh(&mut store, &sim.files).is_ok();
        drop(store);
        let mut store = open_store(&mut copy);
        let after = (persisted(&mut store), store.last_check());
        if done {
            assert_eq!(after.0.metadata, served(&sim));
            assert_eq!(after.1.unwrap().snapshot_version, sim.snapshot.version);
            break;
        }
        cuts += 1;
        let new = after.0.metadata == served(&sim)
            && after
                .1
                .is_some_and(|c| c.snapshot_version == sim.snapshot.version);
        assert!(
            after == before || new,
            "cut after {n} operations: metadata new: {}, last check: {:?}",
            after.0.metadata == served(&sim),
            after.1
        );
    }
    assert!(cuts > 0, "the check wrote to flash");
}

#[test]
fn an_expired_delegated_role_is_not_hidden_by_the_remembered_check() {
    let mut sim = delegated_repo_offering_the_running_image();
    sim.delegated.get_mut("pump-a").unwrap().expires = NOW + 100;
    sim.mark("pump-a");
    sim.publish();
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    assert_eq!(store.last_check().unwrap().valid_until, NOW + 100);
    // past the delegated role's expiry the check searches again and refuses it
    let slots = store.slots();
    let mut t = MapTransport::new(&sim.files);
    let err = check_at(&mut store, &mut t, &mut Pump::default(), NOW + 100).unwrap_err();
    assert_eq!(
        err,
        AgentError::Trust(Error::Expired {
            role: Name::new("pump-a"),
            expires: NOW + 100,
            now: NOW + 100
        })
    );
    assert!(t.requests.contains(&"2.pump-a.json".to_string()));
    assert_eq!(store.slots(), slots);
}

#[test]
fn a_new_root_searches_again_even_with_the_same_snapshot() {
    let mut sim = delegated_repo_offering_the_running_image();
    let mut mem = provisioned(&sim);
    let mut store = open_checked(&mut mem, &sim);
    let last = store.last_check().unwrap();
    // a root rotation alone (timestamp and snapshot unchanged): targets may no longer verify
    // under the new root, so the check is made again in full
    sim.rotate_root(|_| {});
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check(&mut store, &mut t, &mut Pump::default()).unwrap(),
        up_to_date()
    );
    assert_eq!(t.requests.first().map(String::as_str), Some("2.root.json"));
    assert!(
        t.requests.contains(&"1.pump-a.json".to_string()),
        "{:?}",
        t.requests
    );
    assert_eq!(store.last_check(), Some(last));
}

/// A transport that takes requests asked ahead (`Transport::ask_ahead`, the pump's HTTP one)
/// is asked for the next root while the agent checks the stored root, for the timestamp while
/// it checks the stored timestamp, for the snapshot while it checks the timestamp that names
/// it, and for the targets while it checks that snapshot: only a file it fetches next
/// (`MapTransport` fails a test whose agent fetches another), so not the snapshot when the
/// stored one is what the new timestamp names, nor the targets when the stored ones are. The
/// checks make the same requests in the same order, end the same and leave the same flash as
/// with a transport that asks nothing ahead (a device's): a first check that stages, a check
/// after a root rotation, an up-to-date check, one after a new timestamp alone, one after a new
/// snapshot with the same targets, and one after a new release.
#[test]
fn requests_asked_ahead_are_the_workflows_next_ones_and_change_nothing() {
    let mut sim = repo_with("2.0.0", 7, 3000);
    let run =
        |files: &std::collections::BTreeMap<String, Vec<u8>>, mem: &mut Vec<u8>, ahead: bool| {
            let mut t = MapTransport::new(files);
            t.no_ahead = !ahead;
            let mut store = open_store(mem);
            let outcome = check(&mut store, &mut t, &mut Pump::default());
            let kept = persisted(&mut store);
            (outcome, t, kept)
        };
    let mut with = provisioned(&sim);
    let mut without = with.clone();

    // the first check stages the image
    let (staged, t, kept) = run(&sim.files, &mut with, true);
    let (staged_too, plain, kept_too) = run(&sim.files, &mut without, false);
    assert_eq!(
        staged.unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(
        staged_too.unwrap(),
        Outcome::Staged {
            version: v("2.0.0")
        }
    );
    assert_eq!(
        t.asked,
        [
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ]
    );
    assert_eq!((t.pending.len(), t.unread.len()), (0, 0));
    assert_eq!(t.requests, plain.requests);
    assert!(plain.asked.is_empty());
    assert_eq!(kept, kept_too);
    assert_eq!(with, without, "the same flash, byte for byte");

    // the root rotates twice: only the first of the chain is asked ahead
    sim.rotate_root(|_| {});
    sim.rotate_root(|_| {});
    for mem in [&mut with, &mut without] {
        let mut store = open_store(mem);
        assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
        store.confirm().unwrap();
    }
    let (done, t, kept) = run(&sim.files, &mut with, true);
    let (done_too, plain, kept_too) = run(&sim.files, &mut without, false);
    assert_eq!(
        done.unwrap(),
        Outcome::UpToDate {
            running: v("2.0.0")
        }
    );
    assert_eq!(
        done_too.unwrap(),
        Outcome::UpToDate {
            running: v("2.0.0")
        }
    );
    assert_eq!(t.asked, ["2.root.json", "timestamp.json"]);
    assert_eq!(
        &t.requests[..4],
        [
            "2.root.json",
            "3.root.json",
            "4.root.json",
            "timestamp.json"
        ]
    );
    assert_eq!((t.pending.len(), t.unread.len()), (0, 0));
    assert_eq!(t.requests, plain.requests);
    assert_eq!(kept, kept_too);
    assert_eq!(
        kept.metadata[0].as_deref(),
        Some(&sim.files["3.root.json"][..])
    );
    assert_eq!(with, without);

    // nothing new: the next root and the timestamp, both asked ahead
    let (up_to_date, t, kept) = run(&sim.files, &mut with, true);
    let (up_to_date_too, plain, kept_too) = run(&sim.files, &mut without, false);
    assert_eq!(up_to_date.unwrap(), up_to_date_too.unwrap());
    assert_eq!(t.asked, ["4.root.json", "timestamp.json"]);
    assert_eq!(t.requests, ["4.root.json", "timestamp.json"]);
    assert_eq!(t.requests, plain.requests);
    assert_eq!(kept, kept_too);
    assert_eq!(with, without);

    // a new timestamp naming the same snapshot: nothing more is fetched, nor asked
    sim.timestamp.version += 1;
    sim.write_timestamp();
    let (up_to_date, t, kept) = run(&sim.files, &mut with, true);
    let (up_to_date_too, plain, kept_too) = run(&sim.files, &mut without, false);
    assert_eq!(up_to_date.unwrap(), up_to_date_too.unwrap());
    assert_eq!(t.asked, ["4.root.json", "timestamp.json"]);
    assert_eq!(t.requests, plain.requests);
    assert_eq!(t.requests, ["4.root.json", "timestamp.json"]);
    assert_eq!(kept, kept_too);
    assert_eq!(with, without);

    // a new snapshot listing the same targets: the snapshot asked ahead, the stored targets kept
    sim.snapshot.version += 1;
    sim.write_snapshot();
    sim.timestamp.version += 1;
    sim.write_timestamp();
    let (up_to_date, t, kept) = run(&sim.files, &mut with, true);
    let (up_to_date_too, plain, kept_too) = run(&sim.files, &mut without, false);
    assert_eq!(up_to_date.unwrap(), up_to_date_too.unwrap());
    assert_eq!(
        t.asked,
        ["4.root.json", "timestamp.json", "3.snapshot.json"]
    );
    assert_eq!(t.requests, plain.requests);
    assert_eq!(
        t.requests,
        ["4.root.json", "timestamp.json", "3.snapshot.json"]
    );
    assert_eq!((t.pending.len(), t.unread.len()), (0, 0));
    assert_eq!(kept, kept_too);
    assert_eq!(with, without);

    // a new release: snapshot and targets asked ahead, the image staged
    publish(&mut sim, "3.0.0", 8, 3000, "pump-a");
    let (staged, t, kept) = run(&sim.files, &mut with, true);
    let (staged_too, plain, kept_too) = run(&sim.files, &mut without, false);
    let three = Outcome::Staged {
        version: v("3.0.0"),
    };
    assert_eq!((staged.unwrap(), staged_too.unwrap()), (three, three));
    assert_eq!(
        t.asked,
        [
            "4.root.json",
            "timestamp.json",
            "4.snapshot.json",
            "3.targets.json"
        ]
    );
    assert_eq!(t.requests, plain.requests);
    assert_eq!((t.pending.len(), t.unread.len()), (0, 0));
    assert_eq!(kept, kept_too);
    assert_eq!(with, without);
}

/// Flip a hex digit of the first signature's value in `bytes` (a metadata file).
fn break_first_signature(bytes: &mut [u8]) {
    let at = bytes
        .windows(6)
        .position(|w| w == b"\"sig\":")
        .expect("a signature")
        + 8;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
}

/// A check of the pump whose flash is `mem` against `files`, with asks and without, that must
/// be refused: both make `requests` and are refused alike; the one with asks asked for `asked`
/// ahead and left the last `unread` of them never read. The refusal, and the flash after each
/// (with asks first; the caller says what may have changed).
fn refused_with_and_without_asks(
    mem: &[u8],
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    requests: &[&str],
    asked: &[&str],
    unread: usize,
) -> (
    AgentError<MapError, device_agent::memflash::MemFlashError>,
    [Vec<u8>; 2],
) {
    let mut refusals = Vec::new();
    let mut flashes = Vec::new();
    for ahead in [true, false] {
        let mut copy = mem.to_vec();
        let mut store = open_store(&mut copy);
        let mut t = MapTransport::new(files);
        t.no_ahead = !ahead;
        refusals.push(check(&mut store, &mut t, &mut Pump::default()).unwrap_err());
        assert_eq!(t.requests, requests);
        if ahead {
            assert_eq!(t.asked, asked);
            assert_eq!(t.pending, asked[asked.len() - unread..], "never read");
        } else {
            assert!(t.asked.is_empty());
        }
        drop(store);
        flashes.push(copy);
    }
    assert_eq!(refusals[0], refusals[1]);
    let [with, without]: [Vec<u8>; 2] = flashes.try_into().unwrap();
    (refusals.swap_remove(0), [with, without])
}

/// A timestamp, or a snapshot, that fails its check ends the check with the trust error, as
/// without asks. The file it names was asked for ahead, while it was checked: the one request
/// the workflow would not have made, its answer never read. Nothing stored changes but what
/// verified before (the timestamp, when the snapshot fails).
#[test]
fn a_file_that_fails_its_check_leaves_the_file_it_named_unread() {
    // (the timestamp lists the snapshot's hash: the snapshot's check fails there)
    for (file, asked, refused) in [
        (
            "timestamp.json",
            &["2.root.json", "timestamp.json", "2.snapshot.json"][..],
            Error::ThresholdNotMet {
                role: Name::new("timestamp"),
                valid: 0,
                threshold: 1,
            },
        ),
        (
            "2.snapshot.json",
            &[
                "2.root.json",
                "timestamp.json",
                "2.snapshot.json",
                "2.targets.json",
            ][..],
            Error::HashMismatch {
                what: Name::new("snapshot.json"),
                algorithm: "sha256",
            },
        ),
    ] {
        let mut sim = repo_with("2.0.0", 7, 3000);
        break_first_signature(sim.files.get_mut(file).unwrap());
        let mem = provisioned(&sim);
        let requests = &asked[..asked.len() - 1];
        let (refusal, [with, without]) =
            refused_with_and_without_asks(&mem, &sim.files, requests, asked, 1);
        assert_eq!(refusal, AgentError::Trust(refused), "{file}");
        assert_eq!(with, without, "{file}: the same flash, byte for byte");
        let mut with = with;
        let kept = persisted(&mut open_store(&mut with));
        if file == "timestamp.json" {
            assert_eq!(with, mem, "{file}: the flash is as it was");
        } else {
            // the timestamp verified before the snapshot failed: it is kept (spec 5.4.5), as
            // without asks
            assert_eq!(
                kept.metadata[1].as_deref(),
                Some(&sim.files["timestamp.json"][..])
            );
        }
    }
}

/// A stored root that fails its check ends the check with the trust error, as without asks;
/// the next root was asked for ahead (the one request the workflow would not have made) and its
/// answer is never read, and nothing stored changes.
#[test]
fn a_stored_root_that_fails_its_check_leaves_the_root_asked_ahead_unread() {
    let sim = repo_with("2.0.0", 7, 3000);
    let mut root = sim.initial_root();
    break_first_signature(&mut root);
    let mut mem = vec![0u8; LAYOUT.end() as usize];
    let fw = image_bytes("1.0.0", 5000);
    FirmwareStore::provision(
        Flash::new(&mut mem),
        LAYOUT,
        &root,
        &fw,
        image_record(&fw, "1.0.0", 1),
    )
    .unwrap();
    let asked = ["2.root.json", "timestamp.json"];
    let (refusal, [with, without]) =
        refused_with_and_without_asks(&mem, &sim.files, &[], &asked, 2);
    assert_eq!((&with, &without), (&mem, &mem), "the flash is as it was");
    assert_eq!(
        refusal,
        AgentError::Trust(Error::ThresholdNotMet {
            role: Name::new("root"),
            valid: 0,
            threshold: 1
        })
    );
}
