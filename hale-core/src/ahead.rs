//! Signature checks made ahead, on another thread (hosts, `std`).
//!
//! Whether a signature by a key over a message is valid is a fact of those three alone: it is
//! the same at every call, whoever trusts the key and whatever else is checked. A [`Checks`]
//! table lets threads that check the same documents share those facts. A client that polls
//! keeps its trusted metadata: a second thread can check the stored files' signatures while the
//! first checks the trusted root and waits for the server, and the first then finds them
//! checked. Nothing else moves: a [`TrustedSet`](crate::TrustedSet) given the table decides
//! exactly as before, in the same order, with the same errors; only its signature checks are
//! answered from the table when another thread has already made them (or waits for one that is
//! being made, rather than making it twice).
//!
//! The table holds only answers [`PublicKey::verify`] gave for the exact key, signature and
//! message bytes; there is no other way in. At most [`MAX_CHECKS`] answers and
//! [`MAX_KEPT_BYTES`] of messages are kept, and none once [`Checks::stop`] was called: further
//! checks are made without keeping them.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::crypto::PublicKey;
use crate::metadata::{Envelope, Root};
use crate::verify::verify_threshold_with;

/// Answers kept by one [`Checks`] table (one refresh checks a handful of signatures).
pub const MAX_CHECKS: usize = 64;
/// Message bytes kept by one [`Checks`] table (a catalog's targets is ~40 KB).
pub const MAX_KEPT_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Another call is checking it: wait for its answer.
    Checking,
    Answered(bool),
    /// The call that was checking it ended without an answer (it panicked): check it yourself.
    Abandoned,
}

#[derive(Debug)]
struct Entry {
    key: PublicKey,
    sig: Vec<u8>,
    /// one copy per message, shared by its entries (a document signed by several keys)
    msg: Arc<[u8]>,
    state: State,
}

impl Entry {
    fn is(&self, key: &PublicKey, sig: &[u8], msg: &[u8]) -> bool {
        self.sig == sig && *self.msg == *msg && self.key.same_key(key)
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: Vec<Entry>,
    /// message bytes in `entries`
    bytes: usize,
    stopped: bool,
}

/// Signature checks shared between threads (see the [module](self)).
#[derive(Default)]
pub struct Checks {
    table: Mutex<Table>,
    answered: Condvar,
    /// answers given from the table (made, or being made, by another call)
    taken: AtomicUsize,
    /// signatures checked here (not taken)
    checked: AtomicUsize,
}

/// Counts only: the kept messages are whole metadata documents.
impl core::fmt::Debug for Checks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Checks")
            .field("kept", &self.kept())
            .field("taken", &self.taken())
            .field("checked", &self.checked())
            .finish()
    }
}

/// Marks a check abandoned unless it was answered (a panic while checking).
struct Claim<'a> {
    checks: &'a Checks,
    index: usize,
    answered: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.checks.settle(self.index, State::Abandoned);
        }
    }
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // nothing panics while holding the lock; a poisoned table is still consistent
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn settle(&self, index: usize, state: State) {
        if let Some(e) = self.lock().entries.get_mut(index) {
            e.state = state;
        }
        self.answered.notify_all();
    }

    /// Whether `sig` is `key`'s valid signature over `msg`: [`PublicKey::verify`]'s answer,
    /// taken from the table when a call has given it, waited for when a call is giving it,
    /// else checked here (and kept, while there is room and until [`stop`](Self::stop)).
    pub fn verify(&self, key: &PublicKey, sig: &[u8], msg: &[u8]) -> bool {
        let mut table = self.lock();
        let found = loop {
            let found = table.entries.iter().position(|e| e.is(key, sig, msg));
            match found.and_then(|i| table.entries.get(i)).map(|e| e.state) {
                Some(State::Checking) => {
                    table = self
                        .answered
                        .wait(table)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(State::Answered(valid)) => {
                    self.taken.fetch_add(1, Ordering::Relaxed);
                    return valid;
                }
                Some(State::Abandoned) | None => break found,
            }
        };
        let claim = match found {
            Some(index) => {
                // abandoned: check it again, as the owner of the entry
                if let Some(e) = table.entries.get_mut(index) {
                    e.state = State::Checking;
                }
                Some(index)
            }
            None if !table.stopped && table.entries.len() < MAX_CHECKS => {
                // the message's copy if another key's entry has it (counted once)
                let shared = table
                    .entries
                    .iter()
                    .find(|e| *e.msg == *msg)
                    .map(|e| e.msg.clone());
                let msg = match shared {
                    Some(m) => Some(m),
                    None if table.bytes.saturating_add(msg.len()) <= MAX_KEPT_BYTES => {
                        table.bytes += msg.len();
                        Some(Arc::from(msg))
                    }
                    None => None,
                };
                msg.map(|msg| {
                    table.entries.push(Entry {
                        key: key.clone(),
                        sig: sig.to_vec(),
                        msg,
                        state: State::Checking,
                    });
                    table.entries.len() - 1
                })
            }
            None => None,
        };
        drop(table);
        let mut claim = claim.map(|index| Claim {
            checks: self,
            index,
            answered: false,
        });
        self.checked.fetch_add(1, Ordering::Relaxed);
        // the message is in hand: writing it cannot fail
        let valid = matches!(
            key.verify(sig, |sink| {
                sink.write(msg);
                Ok(())
            }),
            Ok(true)
        );
        if let Some(c) = claim.as_mut() {
            c.answered = true;
            self.settle(c.index, State::Answered(valid));
        }
        valid
    }

    /// Check the signatures over each of `docs` (role name, stored envelope) by the keys
    /// `root` (a root envelope) lists for that role, as a trusted set's threshold check would
    /// make them, and keep the answers. Nothing is decided or refused here: `root` is not
    /// trusted, and a document that does not parse is skipped. Ends early once
    /// [`stop`](Self::stop) was called (between documents).
    pub fn check_ahead(&self, root: &[u8], docs: &[(&'static str, &[u8])]) {
        let Ok(env) = Envelope::parse(root, "root") else {
            return;
        };
        let Ok(root) = Root::parse(&env.signed) else {
            return;
        };
        for (role, bytes) in docs {
            if self.lock().stopped {
                return;
            }
            let (Ok(keys), Ok(env)) = (root.role(role), Envelope::parse(bytes, role)) else {
                continue;
            };
            let _ = verify_threshold_with(&env, &keys, Some(self));
            // work queued behind this thread on its CPU (the server's, on a small machine)
            // waits at most one document
            std::thread::yield_now();
        }
    }

    /// How many answers [`verify`](Self::verify) took from the table instead of checking.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// How many signatures [`verify`](Self::verify) checked itself.
    pub fn checked(&self) -> usize {
        self.checked.load(Ordering::Relaxed)
    }

    /// How many answers the table keeps (at most [`MAX_CHECKS`]).
    pub fn kept(&self) -> usize {
        self.lock().entries.len()
    }

    /// End [`check_ahead`](Self::check_ahead) at its next document: its answers are no longer
    /// wanted. [`verify`](Self::verify) still answers, from the table or by checking, but keeps
    /// no new answers. (Entries are never removed: a claim holds its entry's index.)
    pub fn stop(&self) {
        self.lock().stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signer(n: u8) -> (PublicKey, SigningKey) {
        let sk = SigningKey::from_bytes(&[n; 32]);
        (PublicKey::Ed25519(sk.verifying_key()), sk)
    }

    fn sign(sk: &SigningKey, msg: &[u8]) -> Vec<u8> {
        sk.sign(msg).to_bytes().to_vec()
    }

    #[test]
    fn answers_are_the_verifiers_own_and_a_second_call_takes_them() {
        let (key, sk) = signer(1);
        let (other, _) = signer(2);
        let sig = sign(&sk, b"signed");
        let checks = Checks::new();
        assert!(checks.verify(&key, &sig, b"signed"));
        assert!(!checks.verify(&key, &sig, b"signed, changed"));
        assert!(!checks.verify(&other, &sig, b"signed"));
        assert_eq!((checks.kept(), checks.taken()), (3, 0));
        assert!(checks.verify(&key, &sig, b"signed"));
        assert!(!checks.verify(&key, &sig, b"signed, changed"));
        assert!(!checks.verify(&other, &sig, b"signed"));
        assert_eq!((checks.kept(), checks.taken()), (3, 3));
    }

    #[test]
    fn a_check_being_made_is_waited_for_and_not_made_again() {
        let (key, sk) = signer(1);
        let sig = sign(&sk, b"signed");
        let checks = Checks::new();
        // another call is checking this very signature
        checks.lock().entries.push(Entry {
            key: key.clone(),
            sig: sig.clone(),
            msg: Arc::from(&b"signed"[..]),
            state: State::Checking,
        });
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                started.wait();
                checks.verify(&key, &sig, b"signed")
            });
            started.wait();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "it waits for the answer");
            // the answer that call gives (here "invalid", which verifying would not say: the
            // waiter takes the answer, it does not check again)
            checks.settle(0, State::Answered(false));
            assert!(!waiter.join().unwrap());
        });
        assert_eq!((checks.taken(), checks.checked()), (1, 0));
    }

    #[test]
    fn a_check_abandoned_midway_is_made_again_by_the_next_call() {
        let (key, sk) = signer(1);
        let sig = sign(&sk, b"signed");
        let checks = Checks::new();
        checks.lock().entries.push(Entry {
            key: key.clone(),
            sig: sig.clone(),
            msg: Arc::from(&b"signed"[..]),
            state: State::Checking,
        });
        // the call checking it ends without an answer (a panic)
        drop(Claim {
            checks: &checks,
            index: 0,
            answered: false,
        });
        assert_eq!(checks.lock().entries[0].state, State::Abandoned);
        assert!(checks.verify(&key, &sig, b"signed"));
        assert_eq!(checks.lock().entries[0].state, State::Answered(true));
        assert_eq!((checks.kept(), checks.taken()), (1, 0));
    }

    #[test]
    fn the_table_keeps_within_its_bounds_and_nothing_new_once_stopped() {
        let (key, sk) = signer(1);
        let checks = Checks::new();
        for i in 0..=MAX_CHECKS {
            let msg = [i as u8; 8];
            assert!(checks.verify(&key, &sign(&sk, &msg), &msg));
        }
        assert_eq!(checks.kept(), MAX_CHECKS);
        // past the bound: answered, by checking, and not kept
        let msg = [MAX_CHECKS as u8; 8];
        assert!(checks.verify(&key, &sign(&sk, &msg), &msg));
        assert_eq!((checks.kept(), checks.taken()), (MAX_CHECKS, 0));

        let checks = Checks::new();
        let big = alloc::vec![7u8; MAX_KEPT_BYTES + 1];
        assert!(checks.verify(&key, &sign(&sk, &big), &big));
        assert_eq!(checks.kept(), 0);

        let checks = Checks::new();
        checks.stop();
        assert!(checks.verify(&key, &sign(&sk, b"m"), b"m"));
        assert!(!checks.verify(&key, &sign(&sk, b"m"), b"n"));
        assert_eq!(checks.kept(), 0);
    }

    #[test]
    fn a_message_signed_by_several_keys_is_kept_once() {
        let (a, ska) = signer(1);
        let (b, skb) = signer(2);
        // more than half the bound: two copies would not fit
        let msg = alloc::vec![3u8; MAX_KEPT_BYTES / 2 + 1];
        let checks = Checks::new();
        assert!(checks.verify(&a, &sign(&ska, &msg), &msg));
        assert!(checks.verify(&b, &sign(&skb, &msg), &msg));
        assert_eq!(checks.kept(), 2);
        assert_eq!(checks.lock().bytes, msg.len());
        assert!(checks.verify(&b, &sign(&skb, &msg), &msg));
        assert_eq!((checks.taken(), checks.checked()), (1, 2));
    }
}
