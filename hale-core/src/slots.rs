//! The A/B slot state machine: which image boots, which one is on trial, when the security
//! counter rises. Pure: a [`Slots`] value goes in, the next one (or a typed [`SlotError`]) comes
//! out; the caller persists it atomically before acting on it. Each transition also has an
//! `_in_place` form that changes a copy the caller owns (and leaves it unchanged on `Err`): a
//! device's store works on a copy of its current state and commits it as the next record, which
//! moves a few hundred bytes less per transition than returning a new `Slots`.
//!
//! The rules follow MCUboot's, which a decade of power-loss and anti-rollback bugs shaped:
//!
//! ```text
//!            begin_staging          finish_staging           boot                 confirm
//! inactive: Empty/Good/Rejected ──> Staging ──────────> Pending ──(swap)──> Trial ───────────> Good
//!                                                                              │ boot before confirm,
//!                                                                              │ or reject()
//!                                                                              v
//!                                                      the other (Good) slot is active again,
//!                                                      the trial slot is Rejected (never booted again)
//! ```
//!
//! - An image is verified *before* it is staged (the agent's job); the slot machine only records it.
//! - Nothing is staged while an image is on trial ([`SlotError::TrialRunning`]).
//! - The previously good image stays `Good` during the whole trial, so a reset at any moment
//!   leaves one bootable image: a revert restores it and it is not tried again (no revert loop).
//! - The security counter rises at [`Slots::confirm`], never at the swap: a trial that fails must
//!   not lock the device out of the image it falls back to.

use core::fmt;

use crate::policy::Version;

/// One of the two image slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `0` for A, `1` for B.
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing bootable.
    Empty,
    /// A verified target is being written; not bootable until finished.
    Staging,
    /// Completely written and verified; boots once as a trial at the next reset.
    Pending,
    /// Booted once, not yet confirmed by the application.
    Trial,
    /// Confirmed (or shipped from the factory): bootable.
    Good,
    /// Failed its trial: never booted again.
    Rejected,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Staging => "staging",
            SlotState::Pending => "pending",
            SlotState::Trial => "trial",
            SlotState::Good => "good",
            SlotState::Rejected => "rejected",
        }
    }
}

/// What was written into a slot: enough to re-verify it at boot and to apply policy to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub version: Version,
    pub security_counter: u64,
    pub length: u64,
    pub sha256: [u8; 32],
}

/// A slot's state and the image it holds (`None` when [`SlotState::Empty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub state: SlotState,
    pub image: Option<Image>,
}

impl SlotInfo {
    pub const EMPTY: SlotInfo = SlotInfo {
        state: SlotState::Empty,
        image: None,
    };
}

/// Why a transition is refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    /// An image is on trial (or pending its trial boot): confirm or revert it first.
    TrialRunning { slot: Slot },
    /// The operation needs the slot in another state.
    WrongState {
        slot: Slot,
        state: SlotState,
        operation: &'static str,
    },
    /// The running image is not `Good`: there would be nothing to fall back to.
    NoFallback { slot: Slot, state: SlotState },
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::TrialRunning { slot } => write!(
                f,
                "slot {} is on trial: confirm or revert first",
                slot.as_str()
            ),
            SlotError::WrongState {
                slot,
                state,
                operation,
            } => {
                write!(
                    f,
                    "{operation}: slot {} is {}",
                    slot.as_str(),
                    state.as_str()
                )
            }
            SlotError::NoFallback { slot, state } => {
                write!(
                    f,
                    "running slot {} is {}, not good: nothing to fall back to",
                    slot.as_str(),
                    state.as_str()
                )
            }
        }
    }
}

/// What the boot step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Boot the confirmed image in `slot`.
    Normal { slot: Slot },
    /// Boot the new image in `slot` for the first time; the application must confirm it.
    Trial { slot: Slot },
    /// The trial of `rejected` ended without confirmation: boot the good image in `slot`.
    Reverted { slot: Slot, rejected: Slot },
    /// The bytes of `damaged` no longer match its recorded image (flash damage), so it did not
    /// run: boot the good image in `slot`. A pending or trial image there was rejected; a good
    /// one was forgotten (its slot emptied), so a check installs it again. (Also an active slot
    /// that held nothing to run, empty or rejected: no transition leaves one, a record might.)
    Damaged { slot: Slot, damaged: Slot },
}

impl Boot {
    /// The slot that runs.
    pub fn slot(&self) -> Slot {
        match *self {
            Boot::Normal { slot }
            | Boot::Trial { slot }
            | Boot::Reverted { slot, .. }
            | Boot::Damaged { slot, .. } => slot,
        }
    }
}

/// The state of both slots, the active one, and the security counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    active: Slot,
    slots: [SlotInfo; 2],
    security_counter: u64,
}

impl Slots {
    /// A factory-fresh device: `image` in slot A, good; B empty; counter from the image.
    pub fn factory(image: Image) -> Slots {
        Slots {
            active: Slot::A,
            slots: [
                SlotInfo {
                    state: SlotState::Good,
                    image: Some(image),
                },
                SlotInfo::EMPTY,
            ],
            security_counter: image.security_counter,
        }
    }

    /// Rebuild from persisted parts (the caller checked their integrity).
    pub fn from_parts(active: Slot, a: SlotInfo, b: SlotInfo, security_counter: u64) -> Slots {
        Slots {
            active,
            slots: [a, b],
            security_counter,
        }
    }

    pub fn active(&self) -> Slot {
        self.active
    }

    pub fn inactive(&self) -> Slot {
        self.active.other()
    }

    pub fn info(&self, slot: Slot) -> SlotInfo {
        match slot {
            Slot::A => self.slots[0],
            Slot::B => self.slots[1],
        }
    }

    fn info_mut(&mut self, slot: Slot) -> &mut SlotInfo {
        match slot {
            Slot::A => &mut self.slots[0],
            Slot::B => &mut self.slots[1],
        }
    }

    /// The highest security counter ever confirmed.
    pub fn security_counter(&self) -> u64 {
        self.security_counter
    }

    /// The image of the active slot.
    pub fn running(&self) -> Option<Image> {
        self.info(self.active).image
    }

    /// An image is on trial, or waits for its trial boot.
    pub fn in_trial(&self) -> Option<Slot> {
        [self.active, self.active.other()]
            .into_iter()
            .find(|s| matches!(self.info(*s).state, SlotState::Trial | SlotState::Pending))
    }

    /// Start writing a verified `image` into the inactive slot (whatever it held is given up).
    /// Resuming the same image is `begin_staging` again with the same `image`.
    pub fn begin_staging(&self, image: Image) -> Result<Slots, SlotError> {
        let mut next = *self;
        next.begin_staging_in_place(image)?;
        Ok(next)
    }

    /// The inactive slot is completely written and its bytes verified: boot it as a trial next.
    pub fn finish_staging(&self) -> Result<Slots, SlotError> {
        let mut next = *self;
        next.finish_staging_in_place()?;
        Ok(next)
    }

    /// Give up a download in the inactive slot (its bytes did not verify): the slot is empty.
    pub fn abandon_staging(&self) -> Result<Slots, SlotError> {
        let mut next = *self;
        next.abandon_staging_in_place()?;
        Ok(next)
    }

    /// Decide what boots after a reset. Persist the returned `Slots` before running the image.
    pub fn boot(&self) -> (Slots, Boot) {
        let mut next = *self;
        let boot = next.boot_in_place();
        (next, boot)
    }

    /// The application's health checks passed: the trial image becomes good and its security
    /// counter becomes the floor (never lowered).
    ///
    /// Confirming an image *older* than the good one it replaced (an authorized rollback: the
    /// agent stages a downgrade only with a verified authorization) marks the replaced image
    /// `Rejected`, like a revert does: the device was taken back because that release
    /// misbehaved on it, so the same bytes are not installed again at the next check. A newer
    /// release installs as usual.
    pub fn confirm(&self) -> Result<Slots, SlotError> {
        let mut next = *self;
        next.confirm_in_place()?;
        Ok(next)
    }

    /// The application's health checks failed: give the trial up now (same result as a reset
    /// before confirmation). Returns the new state and the slot to boot.
    pub fn reject(&self) -> Result<(Slots, Boot), SlotError> {
        let mut next = *self;
        let boot = next.reject_in_place()?;
        Ok((next, boot))
    }

    /// The boot step found the bytes of `slot` do not match its recorded image (flash damage):
    /// a pending or trial image is rejected so the good one boots. A good image is forgotten (its
    /// slot emptied, so a check installs it again) when the other slot holds a good image at or
    /// above the security counter, which becomes the active one (the caller checks that image's
    /// bytes too); so does an empty or rejected active slot. Otherwise it stays as it is: there
    /// is nothing better to boot.
    pub fn image_damaged(&self, slot: Slot) -> Slots {
        let mut next = *self;
        next.image_damaged_in_place(slot);
        next
    }

    // The same transitions on a copy the caller owns (the store's working copy, committed only
    // when the transition succeeded): a `Slots` is a few hundred bytes, and every move of one
    // costs flash on a device. On `Err` the value is unchanged.

    /// [`begin_staging`](Self::begin_staging), in place.
    pub fn begin_staging_in_place(&mut self, image: Image) -> Result<(), SlotError> {
        let active = self.info(self.active);
        if active.state == SlotState::Trial {
            return Err(SlotError::TrialRunning { slot: self.active });
        }
        if active.state != SlotState::Good {
            return Err(SlotError::NoFallback {
                slot: self.active,
                state: active.state,
            });
        }
        *self.info_mut(self.inactive()) = SlotInfo {
            state: SlotState::Staging,
            image: Some(image),
        };
        Ok(())
    }

    /// [`finish_staging`](Self::finish_staging), in place.
    pub fn finish_staging_in_place(&mut self) -> Result<(), SlotError> {
        let slot = self.inactive();
        let info = self.info_mut(slot);
        if info.state != SlotState::Staging || info.image.is_none() {
            return Err(SlotError::WrongState {
                slot,
                state: info.state,
                operation: "finish_staging",
            });
        }
        info.state = SlotState::Pending;
        Ok(())
    }

    /// [`abandon_staging`](Self::abandon_staging), in place.
    pub fn abandon_staging_in_place(&mut self) -> Result<(), SlotError> {
        let slot = self.inactive();
        let info = self.info_mut(slot);
        if info.state != SlotState::Staging {
            return Err(SlotError::WrongState {
                slot,
                state: info.state,
                operation: "abandon_staging",
            });
        }
        *info = SlotInfo::EMPTY;
        Ok(())
    }

    /// [`boot`](Self::boot), in place.
    pub fn boot_in_place(&mut self) -> Boot {
        let active = self.active;
        let inactive = active.other();
        if self.info(active).state == SlotState::Trial {
            // reset before confirmation: go back to the image that was good
            self.info_mut(active).state = SlotState::Rejected;
            self.active = inactive;
            return Boot::Reverted {
                slot: inactive,
                rejected: active,
            };
        }
        if self.info(inactive).state == SlotState::Pending
            && self.info(active).state == SlotState::Good
        {
            self.info_mut(inactive).state = SlotState::Trial;
            self.active = inactive;
            return Boot::Trial { slot: inactive };
        }
        Boot::Normal { slot: active }
    }

    /// [`confirm`](Self::confirm), in place.
    pub fn confirm_in_place(&mut self) -> Result<(), SlotError> {
        let slot = self.active;
        let [a, b] = &mut self.slots;
        let (info, replaced) = match slot {
            Slot::A => (a, b),
            Slot::B => (b, a),
        };
        let Some(image) = info
            .image
            .as_ref()
            .filter(|_| info.state == SlotState::Trial)
        else {
            return Err(SlotError::WrongState {
                slot,
                state: info.state,
                operation: "confirm",
            });
        };
        info.state = SlotState::Good;
        self.security_counter = self.security_counter.max(image.security_counter);
        if replaced.state == SlotState::Good
            && replaced
                .image
                .as_ref()
                .is_some_and(|r| r.version > image.version)
        {
            replaced.state = SlotState::Rejected;
        }
        Ok(())
    }

    /// [`reject`](Self::reject), in place; returns the slot to boot.
    pub fn reject_in_place(&mut self) -> Result<Boot, SlotError> {
        let info = self.info(self.active);
        if info.state != SlotState::Trial {
            return Err(SlotError::WrongState {
                slot: self.active,
                state: info.state,
                operation: "reject",
            });
        }
        Ok(self.boot_in_place())
    }

    /// [`image_damaged`](Self::image_damaged), in place.
    pub fn image_damaged_in_place(&mut self, slot: Slot) {
        let other = slot.other();
        let fallback = self.info(other);
        // a good image in the other slot that the security counter still allows
        let good_fallback = fallback.state == SlotState::Good
            && fallback
                .image
                .is_some_and(|i| i.security_counter >= self.security_counter);
        let info = self.info_mut(slot);
        match info.state {
            SlotState::Pending | SlotState::Trial | SlotState::Staging => {
                info.state = SlotState::Rejected
            }
            SlotState::Good if good_fallback => *info = SlotInfo::EMPTY,
            // nothing there to run or forget
            SlotState::Empty | SlotState::Rejected if good_fallback => {}
            _ => return,
        }
        if self.active == slot {
            self.active = other;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn img(v: u64, counter: u64) -> Image {
        Image {
            version: Version::new(v, 0, 0),
            security_counter: counter,
            length: 10,
            sha256: [v as u8; 32],
        }
    }

    fn staged(s: &Slots, i: Image) -> Slots {
        s.begin_staging(i).unwrap().finish_staging().unwrap()
    }

    #[test]
    fn update_trial_confirm_raises_counter_at_confirmation() {
        let s = Slots::factory(img(1, 1));
        let s = staged(&s, img(2, 5));
        assert_eq!(s.security_counter(), 1);
        let (s, boot) = s.boot();
        assert_eq!(boot, Boot::Trial { slot: Slot::B });
        // not at swap
        assert_eq!(s.security_counter(), 1);
        assert_eq!(s.info(Slot::A).state, SlotState::Good);
        let s = s.confirm().unwrap();
        assert_eq!(s.security_counter(), 5);
        assert_eq!(s.active(), Slot::B);
        assert_eq!(s.running(), Some(img(2, 5)));
        assert_eq!(s.boot().1, Boot::Normal { slot: Slot::B });
    }

    #[test]
    fn confirming_a_rollback_rejects_the_image_it_replaced() {
        let s = Slots::factory(img(2, 1));
        let s = staged(&s, img(1, 1));
        let (s, boot) = s.boot();
        assert_eq!(boot, Boot::Trial { slot: Slot::B });
        // during the trial the newer image stays good: a reset falls back to it
        assert_eq!(s.info(Slot::A).state, SlotState::Good);
        let s = s.confirm().unwrap();
        assert_eq!(s.running(), Some(img(1, 1)));
        assert_eq!(s.info(Slot::A).state, SlotState::Rejected);
        assert_eq!(s.info(Slot::A).image, Some(img(2, 1)));
        assert_eq!(s.security_counter(), 1);
        // an upgrade after that leaves the replaced image good
        let s = staged(&s, img(3, 1));
        let s = s.boot().0.confirm().unwrap();
        assert_eq!(s.info(Slot::B).state, SlotState::Good);
    }

    #[test]
    fn reset_before_confirmation_reverts_once_and_never_loops() {
        let s = staged(&Slots::factory(img(1, 1)), img(2, 5));
        let (s, _) = s.boot();
        let (s, boot) = s.boot();
        assert_eq!(
            boot,
            Boot::Reverted {
                slot: Slot::A,
                rejected: Slot::B
            }
        );
        assert_eq!(s.info(Slot::B).state, SlotState::Rejected);
        assert_eq!(s.info(Slot::A).state, SlotState::Good);
        assert_eq!(s.security_counter(), 1);
        // further resets keep booting the good image
        for _ in 0..3 {
            let (n, b) = s.boot();
            assert_eq!(b, Boot::Normal { slot: Slot::A });
            assert_eq!(n, s);
        }
    }

    #[test]
    fn failed_health_check_rejects_the_trial() {
        let s = staged(&Slots::factory(img(1, 1)), img(2, 5));
        let (s, _) = s.boot();
        let (s, boot) = s.reject().unwrap();
        assert_eq!(
            boot,
            Boot::Reverted {
                slot: Slot::A,
                rejected: Slot::B
            }
        );
        assert_eq!(
            s.reject(),
            Err(SlotError::WrongState {
                slot: Slot::A,
                state: SlotState::Good,
                operation: "reject"
            })
        );
    }

    #[test]
    fn refuses_staging_while_a_trial_runs() {
        let s = staged(&Slots::factory(img(1, 1)), img(2, 5));
        let (s, _) = s.boot();
        assert_eq!(
            s.begin_staging(img(3, 5)),
            Err(SlotError::TrialRunning { slot: Slot::B })
        );
        assert_eq!(s.in_trial(), Some(Slot::B));
    }

    #[test]
    fn confirm_outside_a_trial_is_refused() {
        let s = Slots::factory(img(1, 1));
        assert_eq!(
            s.confirm(),
            Err(SlotError::WrongState {
                slot: Slot::A,
                state: SlotState::Good,
                operation: "confirm"
            })
        );
        assert_eq!(
            s.finish_staging(),
            Err(SlotError::WrongState {
                slot: Slot::B,
                state: SlotState::Empty,
                operation: "finish_staging"
            })
        );
    }

    #[test]
    fn a_damaged_pending_image_is_rejected_and_the_good_one_boots() {
        let s = staged(&Slots::factory(img(1, 1)), img(2, 5));
        let s = s.image_damaged(Slot::B);
        assert_eq!(s.boot().1, Boot::Normal { slot: Slot::A });
        assert_eq!(s.info(Slot::B).state, SlotState::Rejected);
    }

    /// Both slots good (an update confirmed, the image before it kept): the damaged one gives way
    /// to the other only when the security counter allows the other, and is forgotten so a
    /// check installs it again; with nothing good to fall back to it stays.
    #[test]
    fn a_damaged_good_image_gives_way_to_the_other_good_one_the_counter_allows() {
        let updated = |counter| {
            let s = staged(&Slots::factory(img(1, 1)), img(2, counter));
            let (mut s, boot) = s.boot();
            assert_eq!(boot, Boot::Trial { slot: Slot::B });
            s.confirm_in_place().unwrap();
            s
        };
        // same counter: slot A's 1.0.0 runs, slot B is emptied
        let s = updated(1).image_damaged(Slot::B);
        assert_eq!(s.active(), Slot::A);
        assert_eq!(s.info(Slot::B), SlotInfo::EMPTY);
        assert_eq!(s.info(Slot::A).state, SlotState::Good);
        assert_eq!(s.security_counter(), 1);
        assert_eq!(s.boot().1, Boot::Normal { slot: Slot::A });
        // 2.0.0 raised the counter above 1.0.0's: nothing changes
        let raised = updated(5);
        assert_eq!(raised.image_damaged(Slot::B), raised);
        // the only good image: nothing changes
        let factory = Slots::factory(img(1, 1));
        assert_eq!(factory.image_damaged(Slot::A), factory);
        // the other slot rejected (a failed trial): nothing changes
        let s = staged(&Slots::factory(img(1, 1)), img(2, 1));
        let (s, _) = s.boot();
        let (reverted, _) = s.reject().unwrap();
        assert_eq!(reverted.info(Slot::B).state, SlotState::Rejected);
        assert_eq!(reverted.image_damaged(Slot::A), reverted);
        // an active slot with nothing to run (a record no transition writes) and a good image
        // in the other slot: that one becomes active
        let good = SlotInfo {
            state: SlotState::Good,
            image: Some(img(1, 1)),
        };
        let s = Slots::from_parts(Slot::B, good, SlotInfo::EMPTY, 1).image_damaged(Slot::B);
        assert_eq!((s.active(), s.info(Slot::B)), (Slot::A, SlotInfo::EMPTY));
    }

    #[test]
    fn in_place_transitions_match_and_leave_the_copy_unchanged_when_refused() {
        let s = Slots::factory(img(1, 1));
        let mut m = s;
        m.begin_staging_in_place(img(2, 5)).unwrap();
        assert_eq!(m, s.begin_staging(img(2, 5)).unwrap());
        let before = m;
        assert_eq!(
            m.confirm_in_place(),
            Err(SlotError::WrongState {
                slot: Slot::A,
                state: SlotState::Good,
                operation: "confirm"
            })
        );
        assert_eq!(m, before);
        m.finish_staging_in_place().unwrap();
        assert_eq!(m, before.finish_staging().unwrap());
        let (n, b) = m.boot();
        assert_eq!(m.boot_in_place(), b);
        assert_eq!(m, n);
        let mut r = m;
        assert_eq!(r.reject_in_place(), m.reject().map(|(_, b)| b));
        assert_eq!(Ok(r), m.reject().map(|(n, _)| n));
        m.confirm_in_place().unwrap();
        assert_eq!(Ok(m), n.confirm());
    }

    #[test]
    fn staging_over_a_rejected_or_older_image_is_allowed() {
        let s = staged(&Slots::factory(img(1, 1)), img(2, 5));
        let (s, _) = s.boot();
        let (s, _) = s.boot();
        let s = staged(&s, img(3, 5));
        assert_eq!(s.info(Slot::B).state, SlotState::Pending);
        assert_eq!(s.info(Slot::B).image, Some(img(3, 5)));
    }
}
