//! Instruction-set dispatch: detected once per process, overridable per thread.
//!
//! Every kernel dispatches through [`dispatch`]. Normally that runs the best instruction set
//! the CPU has (AVX-512 on Zen 4, AVX2+FMA, else scalar). [`with_isa`] forces one for the
//! duration of a closure on the current thread, so tests can check every path against the
//! scalar reference on one machine, and users can pin the scalar path for bit-reproducibility
//! across machines.

use std::cell::Cell;
use std::sync::OnceLock;

use pulp::{Arch, Simd, WithSimd};

/// An instruction set the kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain scalar code (one lane).
    Scalar,
    /// x86-64-v3: AVX2 + FMA, 256-bit registers.
    V3,
    /// x86-64-v4: AVX-512, 512-bit registers.
    V4,
}

impl Isa {
    /// The instruction sets this CPU can run, scalar first.
    ///
    /// ```
    /// assert_eq!(kernels::arch::Isa::available()[0], kernels::arch::Isa::Scalar);
    /// ```
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V3::try_new().is_some() {
                out.push(Isa::V3);
            }
            if pulp::x86::V4::try_new().is_some() {
                out.push(Isa::V4);
            }
        }
        out
    }
}

thread_local! {
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

fn detected() -> Arch {
    static ARCH: OnceLock<Arch> = OnceLock::new();
    *ARCH.get_or_init(Arch::new)
}

/// Runs `f` with every kernel on this thread forced to `isa`.
///
/// # Panics
/// If the CPU cannot run `isa` (see [`Isa::available`]).
///
/// ```
/// use kernels::arch::{with_isa, Isa};
/// let mut y = [0.0f32; 3];
/// with_isa(Isa::Scalar, || kernels::activation::tanh(&mut y, &[0.0, 100.0, -100.0]));
/// assert_eq!(y, [0.0, 1.0, -1.0]);
/// ```
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not available on this CPU"
    );
    let previous = FORCED.with(|c| c.replace(Some(isa)));
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Runs a pulp kernel on the forced instruction set, or the best one detected.
#[inline]
pub fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    match FORCED.with(Cell::get) {
        None => detected().dispatch(op),
        Some(Isa::Scalar) => Simd::vectorize(pulp::Scalar::new(), op),
        #[cfg(target_arch = "x86_64")]
        Some(Isa::V3) => Simd::vectorize(pulp::x86::V3::try_new().expect("checked"), op),
        #[cfg(target_arch = "x86_64")]
        Some(Isa::V4) => Simd::vectorize(pulp::x86::V4::try_new().expect("checked"), op),
        #[cfg(not(target_arch = "x86_64"))]
        Some(_) => detected().dispatch(op),
    }
}

/// Clears the upper bits of the calling thread's vector registers (`vzeroupper`) when the
/// CPU has AVX; nothing otherwise.
///
/// faer's AVX-512 kernels return with those bits set. Until something clears them, every
/// SSE-encoded instruction on the thread runs with a dependency on them: the scalar `f64`
/// code of a crate built for baseline x86-64 and libm's `exp` wrapper ran 2.5x slower on
/// Zen 5 (the CTC loss of a 500-step batch: 9 ms on a clean thread, 23 ms after a GEMM), and
/// threads created afterwards inherit the state. The GEMMs of [`crate::gemm`] call this after
/// each of faer's products, on the thread that ran it.
///
/// ```
/// kernels::arch::clear_upper_registers(); // (no visible effect but speed)
/// ```
#[inline]
pub fn clear_upper_registers() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn vzeroupper() {
            core::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX, which `vzeroupper` needs (checked just above). It
            // zeroes only bits above 127 of the vector registers, which hold no value across
            // this call: the compiler keeps none live over a call to a function it does not
            // inline (a `target_feature` function into one without the feature).
            unsafe { vzeroupper() };
        }
    }
}

/// Turns flush-to-zero and denormals-are-zero on or off for the calling thread's SSE/AVX
/// arithmetic, and returns whether they were on. Subnormal numbers (below ~1.2e-38 in f32)
/// can cost tens of cycles per operation on some CPUs; with this on they are read and
/// written as zero. Threads created afterwards inherit the mode (Linux copies it); threads
/// already running keep theirs. Off x86-64 it does nothing and returns `false`.
///
/// ```
/// use std::hint::black_box;
/// let was = kernels::arch::set_flush_denormals(true);
/// let tiny = black_box(f32::MIN_POSITIVE) * black_box(0.5); // subnormal when not flushed
/// kernels::arch::set_flush_denormals(was);
/// # #[cfg(target_arch = "x86_64")]
/// assert_eq!(tiny, 0.0);
/// ```
pub fn set_flush_denormals(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // MXCSR bit 15: flush-to-zero (results); bit 6: denormals-are-zero (inputs).
        const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores this thread's MXCSR into `csr`, a live, aligned u32 that
        // the pointer refers to; nothing else is read or written.
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        }
        let new = if on { csr | FTZ_DAZ } else { csr & !FTZ_DAZ };
        // SAFETY: `ldmxcsr` loads a control word that differs from the current one only in
        // FTZ/DAZ, which change how subnormal floats round, not what memory is touched; all
        // reserved bits keep the values the CPU gave them.
        unsafe {
            core::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly, preserves_flags));
        }
        csr & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = on;
        false
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use faer::{Accum, MatMut, MatRef, Par};

    use crate::gemm::{GemmShape, gemm_nn};

    /// Whether the upper halves of ymm0-15 are in use (bit 2 of XINUSE, which `XGETBV` with
    /// ECX = 1 reads), on a CPU that reports it.
    fn upper_halves_in_use() -> Option<bool> {
        #[target_feature(enable = "xsave")]
        fn xinuse() -> u64 {
            // SAFETY: the caller checked that the CPU has XGETBV with ECX = 1.
            unsafe { core::arch::x86_64::_xgetbv(1) }
        }
        let reports = core::arch::x86_64::__cpuid_count(0xd, 1).eax & (1 << 2) != 0;
        if !(reports && is_x86_feature_detected!("xsave") && is_x86_feature_detected!("avx")) {
            return None;
        }
        // SAFETY: the CPU has XSAVE (checked above), the feature `xinuse` is built for.
        Some(unsafe { xinuse() } & (1 << 2) != 0)
    }

    /// faer's product leaves the upper halves set (on this machine's AVX-512 kernels); the
    /// crate's GEMM clears them after it, and so does `clear_upper_registers`.
    #[test]
    fn a_gemm_leaves_the_upper_registers_clear() {
        if upper_halves_in_use().is_none() {
            return; // (not observable on this CPU)
        }
        let n = 96;
        let (a, b) = (vec![0.5f32; n * n], vec![0.25f32; n * n]);
        let mut c = vec![0.0f32; n * n];
        let faer_alone = |c: &mut [f32]| {
            let lhs = MatRef::from_row_major_slice(&a, n, n);
            let rhs = MatRef::from_row_major_slice(&b, n, n);
            let dst = MatMut::from_row_major_slice_mut(c, n, n);
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0, Par::Seq);
        };
        faer_alone(&mut c);
        let faer_dirty = upper_halves_in_use() == Some(true);
        gemm_nn(
            &mut c,
            Accum::Replace,
            &a,
            &b,
            GemmShape::new(n, n, n),
            Par::Seq,
        );
        assert_eq!(upper_halves_in_use(), Some(false), "after gemm_nn");
        assert!(c.iter().all(|&v| v == 0.5 * 0.25 * n as f32));
        if faer_dirty {
            faer_alone(&mut c);
            assert_eq!(upper_halves_in_use(), Some(true));
            super::clear_upper_registers();
            assert_eq!(upper_halves_in_use(), Some(false), "after clearing");
        }
    }
}
