//! Flash behind a write-back cache, for tests and fuzzing (feature `sim`): the model of a flash
//! whose writes reach the medium late and in any order (the simulated pump's file in the page
//! cache, a managed part with a write cache), against which the store's [`Durable::sync`] calls
//! are checked.
//!
//! Reads see every write and erase at once; the medium gets them at `sync`. The power can be cut
//! at a chosen operation (a write or erase, held back like the others) or instead of a chosen
//! sync: from there every operation and sync fails with [`MemFlashError::PowerLoss`], and
//! [`CachedFlash::crash`] decides which of the pieces held back since the last sync reached the
//! medium. A piece is at most
//! [`PIECE`] bytes within one [`PIECE`]-aligned block (a disk sector), and each write or erase
//! holds its own pieces, in order: a crash can leave any of a piece's successive contents.

use alloc::vec::Vec;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};

use crate::memflash::MemFlashError;
use crate::Durable;

/// The unit a held-back write reaches the medium in.
pub const PIECE: usize = 512;

/// NOR flash with `ERASE`-byte sectors and 4-byte writes behind a write-back cache over `medium`.
#[derive(Debug)]
pub struct CachedFlash<'a, const ERASE: usize> {
    medium: &'a mut [u8],
    view: Vec<u8>,
    /// pieces (offset, bytes) written or erased since the last sync, in order
    held: Vec<(usize, Vec<u8>)>,
    cut: Option<Cut>,
    ops: u32,
    syncs: u32,
    lost: bool,
}

/// Where the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// During write or erase number `n` (0-based; it is held back, then fails).
    Operation(u32),
    /// Instead of sync number `n` (0-based): everything since the previous sync is held back.
    Sync(u32),
}

impl<'a, const ERASE: usize> CachedFlash<'a, ERASE> {
    /// A flash whose medium is `medium`, the power cut at `cut` (`None`: never).
    pub fn new(medium: &'a mut [u8], cut: Option<Cut>) -> Self {
        let view = medium.to_vec();
        CachedFlash {
            medium,
            view,
            held: Vec::new(),
            cut,
            ops: 0,
            syncs: 0,
            lost: false,
        }
    }

    /// Whether the power is cut.
    pub fn power_lost(&self) -> bool {
        self.lost
    }

    /// Writes and erases attempted so far.
    pub fn operations(&self) -> u32 {
        self.ops
    }

    /// Pieces held back since the last sync.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The power went off: of the `count` held-back pieces, those `keep(i, count)` selects reached
    /// the medium, in order (a later piece over the same bytes wins); the rest are lost.
    pub fn crash(self, mut keep: impl FnMut(usize, usize) -> bool) {
        let count = self.held.len();
        for (i, (at, bytes)) in self.held.into_iter().enumerate() {
            if keep(i, count) {
                if let Some(dst) = self.medium.get_mut(at..at + bytes.len()) {
                    dst.copy_from_slice(&bytes);
                }
            }
        }
    }

    fn tick(&mut self) -> Result<(), MemFlashError> {
        if self.lost {
            return Err(MemFlashError::PowerLoss);
        }
        if self.cut == Some(Cut::Operation(self.ops)) {
            self.lost = true;
        }
        self.ops = self.ops.saturating_add(1);
        Ok(())
    }

    fn hold(&mut self, from: usize, to: usize) {
        let mut at = from;
        while at < to {
            let end = ((at / PIECE + 1) * PIECE).min(to);
            if let Some(b) = self.view.get(at..end) {
                self.held.push((at, b.to_vec()));
            }
            at = end;
        }
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, MemFlashError> {
        crate::memflash::range(self.view.len(), offset, len)
    }
}

impl<const ERASE: usize> ErrorType for CachedFlash<'_, ERASE> {
    type Error = MemFlashError;
}

impl<const ERASE: usize> ReadNorFlash for CachedFlash<'_, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), MemFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.view.get(r).ok_or(MemFlashError::OutOfBounds)?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.view.len()
    }
}

impl<const ERASE: usize> NorFlash for CachedFlash<'_, ERASE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), MemFlashError> {
        if from > to || from as usize % ERASE != 0 || to as usize % ERASE != 0 {
            return Err(MemFlashError::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        self.tick()?;
        self.view
            .get_mut(r.clone())
            .ok_or(MemFlashError::OutOfBounds)?
            .fill(0xFF);
        self.hold(r.start, r.end);
        if self.power_lost() {
            return Err(MemFlashError::PowerLoss);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), MemFlashError> {
        if offset as usize % Self::WRITE_SIZE != 0 || bytes.len() % Self::WRITE_SIZE != 0 {
            return Err(MemFlashError::NotAligned);
        }
        let r = self.range(offset, bytes.len())?;
        let dst = self.view.get(r.clone()).ok_or(MemFlashError::OutOfBounds)?;
        if let Some(i) = dst.iter().position(|b| *b != 0xFF) {
            return Err(MemFlashError::NotErased {
                offset: offset.saturating_add(i as u32),
            });
        }
        self.tick()?;
        self.view
            .get_mut(r.clone())
            .ok_or(MemFlashError::OutOfBounds)?
            .copy_from_slice(bytes);
        self.hold(r.start, r.end);
        if self.power_lost() {
            return Err(MemFlashError::PowerLoss);
        }
        Ok(())
    }
}

impl<const ERASE: usize> Durable for CachedFlash<'_, ERASE> {
    fn sync(&mut self) -> Result<(), MemFlashError> {
        if self.cut == Some(Cut::Sync(self.syncs)) {
            self.lost = true;
        }
        self.syncs = self.syncs.saturating_add(1);
        if self.lost {
            return Err(MemFlashError::PowerLoss);
        }
        for (at, bytes) in self.held.drain(..) {
            if let Some(dst) = self.medium.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(&bytes);
            }
        }
        Ok(())
    }
}
