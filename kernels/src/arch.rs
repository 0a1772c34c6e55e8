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
