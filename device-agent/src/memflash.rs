//! NOR flash over a byte slice: the simulated flash of tests, the QEMU firmware and (behind a
//! file) the simulated pump. It keeps NOR rules — erase sets a whole sector to `0xFF`, a write
//! needs erased, aligned bytes — and can cut the power after a number of operations: the write
//! or erase that hits the cut is done only halfway, and every later operation fails.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Why the simulated flash refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemFlashError {
    OutOfBounds,
    NotAligned,
    /// A write to bytes that were not erased (a bug in the caller on real NOR).
    NotErased {
        offset: u32,
    },
    /// The simulated power cut.
    PowerLoss,
}

impl NorFlashError for MemFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            MemFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            MemFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            MemFlashError::NotErased { .. } | MemFlashError::PowerLoss => NorFlashErrorKind::Other,
        }
    }
}

/// Simulated NOR flash with `ERASE`-byte sectors and 4-byte writes.
#[derive(Debug)]
pub struct MemFlash<'a, const ERASE: usize> {
    mem: &'a mut [u8],
    /// operations (writes and erases) left before the power is cut; `None`: never
    budget: Option<u32>,
    ops: u32,
}

impl<'a, const ERASE: usize> MemFlash<'a, ERASE> {
    pub fn new(mem: &'a mut [u8]) -> Self {
        MemFlash {
            mem,
            budget: None,
            ops: 0,
        }
    }

    /// Cut the power during operation number `n` (0-based) of writes and erases.
    pub fn fail_after(mut self, n: u32) -> Self {
        self.budget = Some(n);
        self
    }

    /// Writes and erases attempted so far.
    pub fn operations(&self) -> u32 {
        self.ops
    }

    /// Whether the simulated power is cut.
    pub fn power_lost(&self) -> bool {
        self.budget.is_some_and(|b| self.ops > b)
    }

    fn tick(&mut self) -> bool {
        let cut = self.budget.is_some_and(|b| self.ops >= b);
        self.ops = self.ops.saturating_add(1);
        cut
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, MemFlashError> {
        range(self.mem.len(), offset, len)
    }
}

/// The bytes `len` bytes at `offset` occupy in a flash of `capacity` bytes, if within it.
pub(crate) fn range(
    capacity: usize,
    offset: u32,
    len: usize,
) -> Result<core::ops::Range<usize>, MemFlashError> {
    let start = offset as usize;
    let end = start.checked_add(len).ok_or(MemFlashError::OutOfBounds)?;
    if end > capacity {
        return Err(MemFlashError::OutOfBounds);
    }
    Ok(start..end)
}

impl<const ERASE: usize> ErrorType for MemFlash<'_, ERASE> {
    type Error = MemFlashError;
}

impl<const ERASE: usize> ReadNorFlash for MemFlash<'_, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.mem.get(r).ok_or(MemFlashError::OutOfBounds)?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

/// Like a NOR part, every write and erase is on the medium when it returns.
impl<const ERASE: usize> crate::Durable for MemFlash<'_, ERASE> {}

impl<const ERASE: usize> NorFlash for MemFlash<'_, ERASE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if from > to || from as usize % ERASE != 0 || to as usize % ERASE != 0 {
            return Err(MemFlashError::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        let cut = self.tick();
        if self.power_lost() && !cut {
            return Err(MemFlashError::PowerLoss);
        }
        let dst = self.mem.get_mut(r).ok_or(MemFlashError::OutOfBounds)?;
        if cut {
            // interrupted halfway through
            let half = dst.len() / 2;
            dst.iter_mut().take(half).for_each(|b| *b = 0xFF);
            return Err(MemFlashError::PowerLoss);
        }
        dst.fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if offset as usize % Self::WRITE_SIZE != 0 || bytes.len() % Self::WRITE_SIZE != 0 {
            return Err(MemFlashError::NotAligned);
        }
        let r = self.range(offset, bytes.len())?;
        let cut = self.tick();
        if self.power_lost() && !cut {
            return Err(MemFlashError::PowerLoss);
        }
        let dst = self.mem.get_mut(r).ok_or(MemFlashError::OutOfBounds)?;
        if let Some(i) = dst.iter().position(|b| *b != 0xFF) {
            return Err(MemFlashError::NotErased {
                offset: offset.saturating_add(i as u32),
            });
        }
        let n = if cut { bytes.len() / 2 } else { bytes.len() };
        for (d, s) in dst.iter_mut().zip(bytes).take(n) {
            *d = *s;
        }
        if cut {
            return Err(MemFlashError::PowerLoss);
        }
        Ok(())
    }
}
