//! The register tile that both few-row product kernels ([`crate::gemm::small_m_gemm_nn`]
//! and [`crate::panels`]) run: `MR` rows of `C` times `NR` registers of columns held in
//! registers while rows of `B` stream past, each output summed over `k` in order with one
//! accumulator, then added to (or written into) `C` once.

use faer::Accum;
use pulp::Simd;

use crate::float::Float;

/// `Σ_i A[0..MR, i] · B[i, off..off + cols]` for `B` stored with row stride `stride`
/// (`cols <= NR * lanes`), and `a_rows` the tile's rows of `A`, all of the same length
/// (the number of rows of `B` summed).
#[inline(always)]
pub(crate) fn accumulate<T: Float, S: Simd, const MR: usize, const NR: usize>(
    simd: S,
    b: &[T],
    stride: usize,
    off: usize,
    cols: usize,
    a_rows: [&[T]; MR],
) -> [[T::Lanes<S>; NR]; MR] {
    // Two loops, so the hot full-width one has no branch and no partial loads (whose calls
    // would spill the accumulators).
    if cols == NR * T::lanes::<S>() {
        sum_rows::<T, S, MR, NR, true>(simd, b, stride, off, cols, a_rows)
    } else {
        sum_rows::<T, S, MR, NR, false>(simd, b, stride, off, cols, a_rows)
    }
}

/// Adds (or writes) a tile's accumulators to its rows of `C` (`outs`, `cols` columns each).
/// A partial last register goes through partial loads and stores, so it rounds exactly like
/// a full one.
#[inline(always)]
pub(crate) fn store<T: Float, S: Simd, const MR: usize, const NR: usize>(
    simd: S,
    outs: [&mut [T]; MR],
    acc: [[T::Lanes<S>; NR]; MR],
    accum: Accum,
    cols: usize,
) {
    let lanes = T::lanes::<S>();
    for (out, acc_r) in outs.into_iter().zip(acc) {
        for (c, v) in acc_r.into_iter().enumerate() {
            let chunk = &mut out[(c * lanes).min(cols)..((c + 1) * lanes).min(cols)];
            let v = match accum {
                Accum::Replace => v,
                Accum::Add => T::vadd(simd, T::partial_load(simd, chunk), v),
            };
            T::partial_store(simd, chunk, v);
        }
    }
}

/// [`accumulate`]'s loop; `FULL` when `cols == NR * lanes`.
#[inline(always)]
fn sum_rows<T: Float, S: Simd, const MR: usize, const NR: usize, const FULL: bool>(
    simd: S,
    b: &[T],
    stride: usize,
    off: usize,
    cols: usize,
    a_rows: [&[T]; MR],
) -> [[T::Lanes<S>; NR]; MR] {
    let lanes = T::lanes::<S>();
    let zero = T::splat(simd, T::zero());
    let mut acc = [[zero; NR]; MR];
    let nk = a_rows[0].len();
    let a_rows: [&[T]; MR] = core::array::from_fn(|r| &a_rows[r][..nk]);
    for i in 0..nk {
        let b_row = &b[i * stride + off..i * stride + off + cols];
        let bv: [T::Lanes<S>; NR] = if FULL {
            let (regs, _) = T::as_simd::<S>(b_row);
            core::array::from_fn(|c| regs[c])
        } else {
            core::array::from_fn(|c| T::partial_load(simd, &b_row[(c * lanes).min(cols)..]))
        };
        for r in 0..MR {
            let av = T::splat(simd, a_rows[r][i]);
            for c in 0..NR {
                acc[r][c] = T::vmul_add(simd, av, bv[c], acc[r][c]);
            }
        }
    }
    acc
}
