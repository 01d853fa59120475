//! Compact memory routines for Hale's microcontroller firmware.
//!
//! compiler-builtins' `memcpy`, `memset` and `memcmp` are unrolled for speed: ~1.2 KB of a
//! Cortex-M4 firmware whose budget is 64 KiB. These are plain loops (word by word when both
//! ends are word-aligned, else byte by byte), ~0.2 KB. On a bare-metal target (`target_os =
//! "none"`) the crate exports them under the C and ARM EABI names, which take precedence over
//! compiler-builtins' weak ones; on a host it exports nothing, and the tests compare each
//! routine with `core`'s over every length and alignment that matters.
//!
//! `#![no_builtins]`: LLVM must not turn these loops back into calls of the routines they are.
#![no_std]
#![no_builtins]
#![allow(clippy::missing_safety_doc)]

const W: usize = core::mem::size_of::<usize>();

/// Copy `n` bytes from `src` to `dst`, lowest address first (so `dst` may overlap `src` from
/// below). Both must be valid for `n` bytes.
#[inline(always)]
pub unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = 0;
    if (dst as usize | src as usize) % W == 0 {
        while i + W <= n {
            (dst.add(i) as *mut usize).write((src.add(i) as *const usize).read());
            i += W;
        }
    }
    while i < n {
        dst.add(i).write(src.add(i).read());
        i += 1;
    }
}

/// Copy `n` bytes from `src` to `dst`, highest address first (so `dst` may overlap `src` from
/// above). Both must be valid for `n` bytes.
#[inline(always)]
pub unsafe fn copy_backward(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = n;
    while i > 0 {
        i -= 1;
        dst.add(i).write(src.add(i).read());
    }
}

/// `memmove`: either direction, overlapping or not.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    if (dst as usize) <= (src as usize) {
        copy_forward(dst, src, n)
    } else {
        copy_backward(dst, src, n)
    }
}

/// Set `n` bytes at `dst` to `c`.
#[inline(always)]
pub unsafe fn set(dst: *mut u8, c: u8, n: usize) {
    let mut i = 0;
    if (dst as usize) % W == 0 {
        let word = usize::from_ne_bytes([c; W]);
        while i + W <= n {
            (dst.add(i) as *mut usize).write(word);
            i += W;
        }
    }
    while i < n {
        dst.add(i).write(c);
        i += 1;
    }
}

/// `memcmp`: the difference of the first unequal bytes (as unsigned), or 0.
#[inline(always)]
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (a.add(i).read(), b.add(i).read());
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// The exported symbols, on bare metal only (on a host they would replace the C library's).
#[cfg(target_os = "none")]
mod symbols {
    use super::*;

    #[no_mangle]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        copy_forward(dst, src, n);
        dst
    }
    #[no_mangle]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        copy(dst, src, n);
        dst
    }
    #[no_mangle]
    pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
        set(dst, c as u8, n);
        dst
    }
    #[no_mangle]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        compare(a, b, n)
    }
    #[no_mangle]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        compare(a, b, n)
    }

    // ARM run-time ABI names (note `__aeabi_memset`'s argument order: destination, length,
    // value); the 4/8 forms only promise alignment, which the loops find for themselves
    #[cfg(target_arch = "arm")]
    mod aeabi {
        use super::super::*;
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memcpy(dst: *mut u8, src: *const u8, n: usize) {
            copy_forward(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memcpy4(dst: *mut u8, src: *const u8, n: usize) {
            copy_forward(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memcpy8(dst: *mut u8, src: *const u8, n: usize) {
            copy_forward(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memmove(dst: *mut u8, src: *const u8, n: usize) {
            copy(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memmove4(dst: *mut u8, src: *const u8, n: usize) {
            copy(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memmove8(dst: *mut u8, src: *const u8, n: usize) {
            copy(dst, src, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memset(dst: *mut u8, n: usize, c: i32) {
            set(dst, c as u8, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memset4(dst: *mut u8, n: usize, c: i32) {
            set(dst, c as u8, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memset8(dst: *mut u8, n: usize, c: i32) {
            set(dst, c as u8, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memclr(dst: *mut u8, n: usize) {
            set(dst, 0, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memclr4(dst: *mut u8, n: usize) {
            set(dst, 0, n)
        }
        #[no_mangle]
        pub unsafe extern "aapcs" fn __aeabi_memclr8(dst: *mut u8, n: usize) {
            set(dst, 0, n)
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A buffer of distinct bytes, word-aligned at index 0 (a `usize` array seen as bytes).
    fn buf(len: usize, seed: u8) -> Vec<usize> {
        let mut words = std::vec![0usize; len.div_ceil(W) + 2];
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * W)
        };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
        }
        words
    }

    fn bytes(words: &mut [usize]) -> &mut [u8] {
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * W) }
    }

    const LENS: core::ops::RangeInclusive<usize> = 0..=3 * W * 4 + 3;

    #[test]
    fn copies_every_length_at_every_alignment_and_nothing_more() {
        for n in LENS {
            for d in 0..W {
                for s in 0..W {
                    let mut src = buf(n + W, 1);
                    let mut dst = buf(n + W, 100);
                    let mut want = dst.clone();
                    let (sb, db, wb) = (bytes(&mut src), bytes(&mut dst), bytes(&mut want));
                    wb[d..d + n].copy_from_slice(&sb[s..s + n]);
                    unsafe { copy_forward(db.as_mut_ptr().add(d), sb.as_ptr().add(s), n) };
                    assert_eq!(db, wb, "n {n}, dst +{d}, src +{s}");
                }
            }
        }
    }

    #[test]
    fn moves_overlapping_ranges_either_way_as_core_does() {
        for n in LENS {
            for from in 0..2 * W {
                for to in 0..2 * W {
                    let mut got = buf(n + 2 * W, 3);
                    let mut want = got.clone();
                    bytes(&mut want).copy_within(from..from + n, to);
                    let g = bytes(&mut got);
                    let p = g.as_mut_ptr();
                    unsafe { copy(p.add(to), p.add(from), n) };
                    assert_eq!(g, bytes(&mut want), "n {n}, {from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn sets_every_length_at_every_alignment_and_nothing_more() {
        for n in LENS {
            for d in 0..W {
                for c in [0u8, 0xFF, 0x5A] {
                    let mut got = buf(n + W, 9);
                    let mut want = got.clone();
                    bytes(&mut want)[d..d + n].fill(c);
                    let g = bytes(&mut got);
                    unsafe { set(g.as_mut_ptr().add(d), c, n) };
                    assert_eq!(g, bytes(&mut want), "n {n}, +{d}, {c}");
                }
            }
        }
    }

    #[test]
    fn compares_as_memcmp_does() {
        let a = [1u8, 2, 3, 0x80, 5];
        for (b, n, want) in [
            ([1u8, 2, 3, 0x80, 5], 5, 0),
            ([1, 2, 4, 0x80, 5], 5, -1),
            ([1, 2, 2, 0x80, 5], 5, 1),
            // unsigned: 0x80 is greater than 0x7F
            ([1, 2, 3, 0x7F, 5], 5, 1),
            ([1, 2, 3, 0x81, 5], 5, -1),
            // only the first n bytes count
            ([1, 2, 9, 9, 9], 2, 0),
            ([9, 9, 9, 9, 9], 0, 0),
        ] {
            let got = unsafe { compare(a.as_ptr(), b.as_ptr(), n) };
            assert_eq!(got.signum(), want, "{b:?} over {n}");
            assert_eq!(got.signum(), a[..n].cmp(&b[..n]) as i32);
        }
    }
}
