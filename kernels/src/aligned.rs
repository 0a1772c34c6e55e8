//! A growable buffer whose elements start on a cache line.
//!
//! The system allocator aligns a `Vec<f32>` to 16 bytes only. A buffer that starts off a
//! cache line makes every 64-byte (AVX-512) load or store of a row touch two lines, and
//! how much that costs depends on where each buffer happened to land: two identical
//! trainers measured 2-4 % apart on the `tiny` LSTM, the gap following which one allocated
//! its workspace first (0.95-0.99x in ten `bench-runner tiny 2 2 lstm` runs). With the
//! workspace on cache lines the same runs measured 0.99-1.05x, and one-thread `char` steps
//! ran 1-4 % faster for LSTM (`profile_step`, three alternations); two-thread steps moved
//! within the noise. The parameters and gradients were left as plain `Vec`s of the public
//! API, and they were the rest of the spread: two identical one-thread RNN `tiny` trainers
//! (batch 1, the recurrent weights read in place every step) ran 57 µs per step with the
//! parameters at 0 or 32 bytes past a cache line and 62 µs at 16 or 48, wherever the
//! allocator put them, so the bench's first-made trainer read 0.93x the second in three
//! full runs. With `Trainer::params` and `grads` in this buffer too, the same pairs measure
//! 0.99-1.00 (RNN, LSTM, GRU `tiny`, 40 alternating rounds each).
//!
//! A large buffer also asks the kernel for transparent huge pages (Linux `madvise` with
//! `MADV_HUGEPAGE`, before its memory is first written), which most distributions grant
//! only on request (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, as on the
//! project's VM). A training step streams its activations row by row, and with 4 KiB pages
//! every few rows cost a TLB miss. Where the kernel has no transparent huge pages, or they
//! are switched off, the advice is declined and nothing else changes. The gain is small:
//! two trainers in one process, one whose workspace was allocated without the advice,
//! taking turns (f32, median over rounds of the per-round ratio): LSTM `large` one thread
//! +2.9 % (every round faster), LSTM `char` +2.0 %, GRU `char` +1.0 %, RNN `large` none;
//! two threads between -1 % and +2.5 %, within their rounds' spread.
//!
//! ```
//! use kernels::aligned::AlignedVec;
//! let mut v = AlignedVec::<f32>::zeros(3);
//! v[1] = 2.0;
//! v.resize(5);
//! assert_eq!(&v[..], &[0.0, 2.0, 0.0, 0.0, 0.0]);
//! assert_eq!(v.as_ptr() as usize % kernels::aligned::CACHE_LINE, 0);
//! ```

use core::fmt;
use core::ops::{Deref, DerefMut};

/// Bytes of a cache line, the alignment of an [`AlignedVec`]'s elements.
pub const CACHE_LINE: usize = 64;

/// Bytes of a transparent huge page on x86-64 (and on aarch64 with 4 KiB base pages):
/// each whole, aligned range of this size inside a new [`AlignedVec`] is advised to be
/// backed by one.
pub const HUGE_PAGE: usize = 2 << 20;

/// A `Vec`-like buffer of numbers whose first element starts on a [`CACHE_LINE`]; it
/// dereferences to the slice of its elements. New elements are `T::default()` (zero for
/// `f32` and `f64`).
///
/// It holds a `Vec` with one cache line of slack and starts its elements at the first
/// aligned offset, so no `unsafe` is needed. Only the length changes after creation, by
/// [`AlignedVec::resize`].
pub struct AlignedVec<T> {
    /// The elements are `data[start..start + len]`.
    data: Vec<T>,
    start: usize,
    len: usize,
}

impl<T> AlignedVec<T> {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        Self {
            data: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// Elements to skip from `first` to the next cache line (0 when it is on one). An
    /// allocation of numbers is aligned to their size, so this is a whole number.
    fn offset(first: *const T) -> usize {
        (first as usize).wrapping_neg() % CACHE_LINE / Self::size()
    }

    /// Elements in a cache line's worth of slack.
    fn slack() -> usize {
        CACHE_LINE / Self::size()
    }

    fn size() -> usize {
        core::mem::size_of::<T>().max(1)
    }
}

impl<T: Copy + Default> AlignedVec<T> {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let mut v = Self::new();
        v.resize(len);
        v
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        let mut v = Self::zeros(values.len());
        v.copy_from_slice(values);
        v
    }

    /// [`AlignedVec::zeros`] that reports an allocation failure instead of aborting: for
    /// buffers whose size comes from a caller's shapes, which may not fit in memory.
    ///
    /// ```
    /// use kernels::aligned::AlignedVec;
    /// assert_eq!(AlignedVec::<f32>::try_zeros(3).unwrap(), [0.0; 3]);
    /// // More bytes than an address space holds.
    /// assert!(AlignedVec::<f32>::try_zeros(1 << 60).is_err());
    /// ```
    ///
    /// # Errors
    /// [`AllocError`] when the memory is not there.
    pub fn try_zeros(len: usize) -> Result<Self, AllocError> {
        let mut v = Self::new();
        v.try_reserve(len)?;
        v.resize(len);
        Ok(v)
    }

    /// Room for `len` elements without changing the length or the values: a later
    /// [`AlignedVec::resize`] up to `len` allocates nothing. Reports an allocation failure
    /// instead of aborting (the buffer is then as it was).
    ///
    /// ```
    /// use kernels::aligned::AlignedVec;
    /// let mut v = AlignedVec::from_slice(&[1.0f32, 2.0]);
    /// v.try_reserve(1000).unwrap();
    /// let at = v.as_ptr();
    /// assert_eq!(v, [1.0, 2.0]);
    /// v.resize(1000);
    /// assert_eq!(v.as_ptr(), at);
    /// ```
    ///
    /// # Errors
    /// [`AllocError`] when the memory is not there.
    pub fn try_reserve(&mut self, len: usize) -> Result<(), AllocError> {
        if self.start + len <= self.data.len() {
            return Ok(());
        }
        let mut grown = Self::try_allocate(len)?;
        grown.data[grown.start..][..self.len].copy_from_slice(self);
        grown.len = self.len;
        *self = grown;
        Ok(())
    }

    /// Sets the length to `len`, like `Vec::resize(len, 0)`: the first `min(len, old len)`
    /// elements keep their values and new ones are zero. Allocates only when `len` exceeds
    /// every length held before.
    pub fn resize(&mut self, len: usize) {
        if self.start + len > self.data.len() {
            let mut grown = Self::allocate(len);
            grown.data[grown.start..][..self.len].copy_from_slice(self);
            *self = grown;
        }
        if len > self.len {
            self.data[self.start + self.len..self.start + len].fill(T::default());
        }
        self.len = len;
    }

    /// Room for `len` zeros, starting on a cache line. The memory is advised onto huge
    /// pages ([`HUGE_PAGE`]) before it is first written, so that the kernel backs it with
    /// them as it faults in, rather than later, if ever, by collapsing small pages.
    fn allocate(len: usize) -> Self {
        Self::try_allocate(len).unwrap_or_else(|failed| failed.abort::<T>())
    }

    /// [`AlignedVec::allocate`], reporting a failure.
    fn try_allocate(len: usize) -> Result<Self, AllocError> {
        let mut data = Self::try_room(len)?;
        data.resize(len + Self::slack(), T::default());
        let start = Self::offset(data.as_ptr());
        Ok(Self { data, start, len })
    }
}

/// An allocation of an [`AlignedVec`] that failed: the memory was not there, or the size
/// asked for was past what one allocation can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError {
    /// The bytes asked for (`usize::MAX` when their count overflows).
    pub bytes: usize,
}

impl AllocError {
    /// What an infallible allocation does on failure, as `Vec` does: panics on a size past
    /// what one allocation can be, else aborts through the allocation error handler.
    fn abort<T>(self) -> ! {
        match core::alloc::Layout::from_size_align(self.bytes, core::mem::align_of::<T>()) {
            Ok(layout) if self.bytes <= isize::MAX as usize => {
                std::alloc::handle_alloc_error(layout)
            }
            _ => panic!("capacity overflow"),
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not allocate {} bytes", self.bytes)
    }
}

impl std::error::Error for AllocError {}

/// Asks the kernel to back the whole [`HUGE_PAGE`]s inside `memory` with huge pages. Only
/// those can be: the kernel maps a huge page at an aligned address, wholly inside one
/// mapping. No-op for memory smaller than that, and off Linux.
fn advise_huge_pages<T>(memory: &mut [core::mem::MaybeUninit<T>]) {
    let first = memory.as_ptr() as usize;
    let start = first.next_multiple_of(HUGE_PAGE);
    let end = (first + core::mem::size_of_val(memory)) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        advise(start, end - start);
    }
}

#[cfg(all(target_os = "linux", not(miri)))]
fn advise(start: usize, len: usize) {
    // SAFETY: `start..start + len` lies inside an allocation this buffer owns (the caller
    // holds it as `&mut`), and is aligned to a huge page, so to any base page size up to
    // it. MADV_HUGEPAGE only marks the range as eligible for huge pages: it changes neither
    // the contents nor the validity of the memory, whatever the kernel decides.
    // A kernel without transparent huge pages declines (EINVAL): small pages, as before.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

// Miri cannot call into the kernel; the advice changes no value it could check.
#[cfg(any(not(target_os = "linux"), miri))]
fn advise(_start: usize, _len: usize) {}

impl<T> AlignedVec<T> {
    /// An empty `Vec` with room for `len` elements and the slack to align them, its memory
    /// advised onto huge pages and not yet written.
    fn reserve(len: usize) -> Vec<T> {
        Self::try_room(len).unwrap_or_else(|failed| failed.abort::<T>())
    }

    /// [`AlignedVec::reserve`], reporting a failure.
    fn try_room(len: usize) -> Result<Vec<T>, AllocError> {
        let failed = || AllocError {
            bytes: len
                .saturating_add(Self::slack())
                .saturating_mul(Self::size()),
        };
        let cap = len.checked_add(Self::slack()).ok_or_else(failed)?;
        let mut data = Vec::new();
        data.try_reserve_exact(cap).map_err(|_| failed())?;
        advise_huge_pages(data.spare_capacity_mut());
        Ok(data)
    }
}

impl<T> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Clone for AlignedVec<T> {
    /// A copy on a cache line of its own (copying the `Vec` would keep the offset, not the
    /// alignment).
    fn clone(&self) -> Self {
        let Some(first) = self.first() else {
            return Self::new();
        };
        let mut data = Self::reserve(self.len);
        // The allocation is made: only the padding before the line is left to fill (with
        // any value; it is never read).
        let start = Self::offset(data.as_ptr());
        data.extend(core::iter::repeat_n(first.clone(), start));
        data.extend_from_slice(self);
        Self {
            data,
            start,
            len: self.len,
        }
    }
}

impl<T> Deref for AlignedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.data[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data[self.start..self.start + self.len]
    }
}

impl<T: fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Element by element, as slices compare: an `AlignedVec` equals a slice, a `Vec` or an
/// array of the same elements.
///
/// ```
/// use kernels::aligned::AlignedVec;
/// let v = AlignedVec::from_slice(&[1.0f32, 2.0]);
/// assert_eq!(v, [1.0, 2.0]);
/// assert_eq!(v, vec![1.0, 2.0]);
/// assert_eq!(vec![1.0, 2.0], v);
/// assert_ne!(v, &[1.0, 3.0][..]);
/// ```
impl<T: PartialEq> PartialEq<[T]> for AlignedVec<T> {
    fn eq(&self, other: &[T]) -> bool {
        **self == *other
    }
}

impl<T: PartialEq> PartialEq<&[T]> for AlignedVec<T> {
    fn eq(&self, other: &&[T]) -> bool {
        **self == **other
    }
}

impl<T: PartialEq, const N: usize> PartialEq<[T; N]> for AlignedVec<T> {
    fn eq(&self, other: &[T; N]) -> bool {
        **self == *other
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for AlignedVec<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

impl<T: PartialEq> PartialEq<AlignedVec<T>> for Vec<T> {
    fn eq(&self, other: &AlignedVec<T>) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned<T>(v: &[T]) -> bool {
        (v.as_ptr() as usize).is_multiple_of(CACHE_LINE)
    }

    /// Lengths from the heap and from fresh mappings, in both float types, start on a line.
    #[test]
    fn elements_start_on_a_cache_line() {
        for len in [1, 3, 17, 1000, 65_536, 1 << 20] {
            let v = AlignedVec::<f32>::zeros(len);
            assert!(aligned(&v), "f32 {len}");
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            let v = AlignedVec::<f64>::zeros(len);
            assert!(aligned(&v), "f64 {len}");
            assert!(aligned(&v.clone()), "clone f64 {len}");
        }
    }

    /// `resize` behaves as `Vec::resize(n, 0)` through growing, shrinking and regrowing,
    /// and stays aligned when it reallocates.
    #[test]
    fn resize_matches_vec() {
        let mut v = AlignedVec::<f32>::new();
        let mut reference: Vec<f32> = Vec::new();
        for (step, len) in [0, 5, 2, 40, 7, 7, 1000, 3, 500].into_iter().enumerate() {
            v.resize(len);
            reference.resize(len, 0.0);
            assert_eq!(&v[..], &reference[..], "step {step}");
            assert!(len == 0 || aligned(&v), "step {step}");
            for (i, (a, b)) in v.iter_mut().zip(&mut reference).enumerate() {
                *a = (step * 1000 + i) as f32;
                *b = *a;
            }
        }
        assert_eq!(v, AlignedVec::from_slice(&reference));
    }

    /// The kernel's flags of the mapping that holds `addr` (`VmFlags` in
    /// `/proc/self/smaps`: `hg` is MADV_HUGEPAGE's mark).
    #[cfg(all(target_os = "linux", not(miri)))]
    fn mapping_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}")
    }

    /// A buffer spanning whole huge pages, new or cloned, sits in memory advised onto them;
    /// the cache-line alignment is kept. (Whether the kernel then has a free huge page to
    /// give depends on the machine; the advice is what this crate controls.)
    #[cfg(all(target_os = "linux", not(miri)))]
    #[test]
    fn large_buffers_are_advised_onto_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let has_hg = |v: &[f32]| {
            let middle = v[v.len() / 2..].as_ptr() as usize;
            mapping_flags(middle).split_whitespace().any(|f| f == "hg")
        };
        let len = 3 * HUGE_PAGE / 4 * 2; // 6 MiB of f32: at least two whole huge pages
        let mut v = AlignedVec::<f32>::zeros(len);
        assert!(aligned(&v) && v.iter().all(|&x| x == 0.0));
        assert!(has_hg(&v), "new buffer");
        v[len - 1] = 1.0;
        assert!(has_hg(&v.clone()), "clone");
        let mut grown = AlignedVec::<f32>::zeros(1);
        grown.resize(len);
        assert!(has_hg(&grown), "grown by resize");
    }
}
