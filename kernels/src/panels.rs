//! A matrix packed once into column panels, for many products `C (+)= A · B` with a
//! few-row `A`: the recurrent step `Z_t (+)= h_{t-1} W_hhᵀ`, one product per time step
//! against the same weights.
//!
//! faer packs its right-hand operand again on every call, and at a step's shape (`A` of
//! 32-64 rows, `B` of 0.25-8 MiB) that repacking costs. [`Panels`] packs `B` once per pass
//! instead, into column panels of 192 bytes (three AVX-512 registers) stored `k`-row after
//! `k`-row, so a product streams each panel front to back while a tile of up to 8 x 3
//! registers of `C` accumulates in registers.
//!
//! Measured against faer on the same products (`cargo bench -p kernels -- panels`, one
//! thread, f32, GFLOP/s; `B` a column block of a wider weight, as in the engine's two-block
//! steps): 32x256x512 103.7 → 109.4, 32x256x2048 103.6 → 106.7, 64x512x1024 106.6 → 109.1,
//! 64x512x4096 87.3 → 101.5, 32x128x256 105.6 → 106.0. With fewer rows or a whole small
//! weight faer is as fast or faster (4-8 rows: 110-115 against 100-111), so the engine uses
//! panels for split steps only.
//!
//! The packed data starts on a cache line (the allocator gives large blocks 16-byte
//! alignment, so each 64-byte load of a panel row straddled two lines): the LSTM and GRU
//! char backward step's shape, 32x256x2048, ran 107-109 → 112-113 GFLOP/s, the others within
//! ±2 % (the same bench, alternating).
//!
//! Each element of `C` is summed over `k` in order, in blocks of [`K_BLOCK`] rows of `B`
//! added to `C` one after another: the result depends on the shape only, never on how
//! the columns are split between calls or threads.

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use pulp::{Simd, WithSimd};

use crate::aligned::AlignedVec;
use crate::float::Float;

/// Rows of `B` (and columns of `A`) summed in registers before the tile is added to `C`.
/// A tile's 8 rows of `A` then take 16 KiB (f32), which stays in L1 while the panel's
/// block (96 KiB) comes from L2.
pub const K_BLOCK: usize = 512;

/// `B[k, n]` packed into column panels of [`Panels::WIDTH_BYTES`] bytes.
///
/// ```
/// use faer::{Accum, MatMut, MatRef};
/// use kernels::panels::Panels;
/// let b = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
/// let mut packed = Panels::new(2, 3);
/// packed.pack(MatRef::from_row_major_slice(&b, 2, 3));
/// let a = [1.0f32, 1.0, 0.0, 1.0]; // [2, 2]
/// let mut c = [0.0f32; 6];
/// packed.product(
///     MatMut::from_row_major_slice_mut(&mut c, 2, 3),
///     Accum::Replace,
///     MatRef::from_row_major_slice(&a, 2, 2),
/// );
/// assert_eq!(c, [5.0, 7.0, 9.0, 4.0, 5.0, 6.0]);
/// ```
#[derive(Clone, Debug)]
pub struct Panels<T> {
    /// The packed matrix, `k * n` elements starting on a cache line.
    data: AlignedVec<T>,
    k: usize,
    n: usize,
}

impl<T: Float> Panels<T> {
    /// Bytes of one full panel's row: three AVX-512 registers, six AVX2 ones.
    pub const WIDTH_BYTES: usize = 192;

    /// Columns of a full panel.
    pub fn width() -> usize {
        Self::WIDTH_BYTES / T::BYTES
    }

    /// Room for a `[k, n]` matrix (zeros until [`Panels::pack`]). This is the only
    /// allocation: packing and products reuse it.
    pub fn new(k: usize, n: usize) -> Self {
        // The allocator aligns large blocks to 16 bytes: every 64-byte load of a panel row
        // would then straddle two cache lines.
        let data = AlignedVec::zeros(k * n);
        Self { data, k, n }
    }

    /// Rows of the packed matrix (the inner dimension of a product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The panels, in order: `(first column, width, packed [k, width] data)`.
    fn panels(&self) -> impl Iterator<Item = (usize, usize, &[T])> {
        let (k, n, w) = (self.k, self.n, Self::width());
        (0..n.div_ceil(w)).map(move |p| {
            let (col, width) = (p * w, w.min(n - p * w));
            (col, width, &self.data[col * k..(col + width) * k])
        })
    }

    /// Copies `src` (`[k, n]`, any strides: a transposed view packs `Wᵀ` straight from
    /// `W`) into the panels.
    ///
    /// # Panics
    /// If `src` is not `k x n`.
    #[track_caller]
    pub fn pack(&mut self, src: MatRef<'_, T>) {
        assert!(
            src.nrows() == self.k && src.ncols() == self.n,
            "Panels::pack: source is {}x{}, panels hold {}x{}",
            src.nrows(),
            src.ncols(),
            self.k,
            self.n
        );
        let (k, n, w) = (self.k, self.n, Self::width());
        for col in (0..n).step_by(w.max(1)) {
            let width = w.min(n - col);
            let panel = &mut self.data[col * k..(col + width) * k];
            if let Some(cols) = src.subcols(col, width).try_as_col_major() {
                // Columns of `src` are contiguous (a transposed row-major `W`): read each
                // once, writing it down the panel.
                for j in 0..width {
                    let column = cols.col(j).try_as_col_major().expect("unit row stride");
                    for (kk, &x) in column.as_slice().iter().enumerate() {
                        panel[kk * width + j] = x;
                    }
                }
            } else if let Some(rows) = src.subcols(col, width).try_as_row_major() {
                for (kk, dst) in panel.chunks_exact_mut(width).enumerate() {
                    dst.copy_from_slice(
                        rows.row(kk)
                            .try_as_row_major()
                            .expect("unit column stride")
                            .as_slice(),
                    );
                }
            } else {
                for (kk, dst) in panel.chunks_exact_mut(width).enumerate() {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = src[(kk, col + j)];
                    }
                }
            }
        }
    }

    /// `C[m, n] (+)= A[m, k] · B`, where `B` is the packed matrix. `C` and `A` need unit
    /// column stride (contiguous rows; any row stride). Sequential: the engine splits a
    /// step's columns between threads itself.
    ///
    /// # Panics
    /// If the shapes disagree or a row of `C` or `A` is not contiguous.
    #[track_caller]
    pub fn product(&self, dst: MatMut<'_, T>, accum: Accum, a: MatRef<'_, T>) {
        self.product_cols(dst, accum, a, 0..self.n);
    }

    /// [`Panels::product`] restricted to columns `cols` of `B` (and `C`, whose `dst` has
    /// `cols.len()` columns): whole panels, so `cols.start` is a multiple of
    /// [`Panels::width`] and `cols.end` one too or `n`. Each element comes out bitwise as in
    /// the whole product, which lets threads share a product by panels.
    ///
    /// # Panics
    /// As [`Panels::product`], and if `cols` does not start and end at panel edges.
    #[track_caller]
    pub fn product_cols(
        &self,
        dst: MatMut<'_, T>,
        accum: Accum,
        a: MatRef<'_, T>,
        cols: std::ops::Range<usize>,
    ) {
        let w = Self::width();
        assert!(
            cols.start <= cols.end
                && cols.end <= self.n
                && cols.start.is_multiple_of(w)
                && (cols.end.is_multiple_of(w) || cols.end == self.n),
            "Panels::product_cols: columns {cols:?} are not whole panels of {w} out of {}",
            self.n
        );
        assert!(
            a.ncols() == self.k && dst.ncols() == cols.len() && dst.nrows() == a.nrows(),
            "Panels::product: C is {}x{}, A is {}x{}, B is {}x{} (columns {cols:?})",
            dst.nrows(),
            dst.ncols(),
            a.nrows(),
            a.ncols(),
            self.k,
            self.n
        );
        assert!(
            a.col_stride() == 1 || a.ncols() <= 1,
            "Panels::product: rows of A must be contiguous"
        );
        assert!(
            dst.col_stride() == 1 || dst.ncols() <= 1,
            "Panels::product: rows of C must be contiguous"
        );
        crate::arch::dispatch(Product {
            panels: self,
            dst,
            accum,
            a,
            cols,
        });
    }
}

struct Product<'a, 'd, T> {
    panels: &'a Panels<T>,
    dst: MatMut<'d, T>,
    accum: Accum,
    a: MatRef<'a, T>,
    /// The columns of `B` to multiply by; `dst` holds just these.
    cols: std::ops::Range<usize>,
}

impl<T: Float> WithSimd for Product<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            panels,
            mut dst,
            accum,
            a,
            cols: wanted,
        } = self;
        let (m, k) = (a.nrows(), panels.k);
        if m == 0 || wanted.is_empty() {
            return;
        }
        if k == 0 {
            if matches!(accum, Accum::Replace) {
                dst.fill(T::zero());
            }
            return;
        }
        let lanes = T::lanes::<S>();
        // AVX-512's 32 registers hold an 8 x 3 tile of C (24 accumulators); AVX2's 16 a
        // 4 x 2 one.
        let (tall, regs_max) = if lanes * T::BYTES >= 64 {
            (8, 3)
        } else {
            (4, 2)
        };
        for k0 in (0..k).step_by(K_BLOCK) {
            let ks = k0..(k0 + K_BLOCK).min(k);
            // Later blocks add to what the first block wrote.
            let accum = if k0 == 0 { accum } else { Accum::Add };
            let chosen = panels.panels().filter(|(col, ..)| wanted.contains(col));
            for (col, width, panel) in chosen {
                let col = col - wanted.start;
                let mut off = 0;
                while off < width {
                    let regs = (width - off).div_ceil(lanes).min(regs_max);
                    let cols = (regs * lanes).min(width - off);
                    let tile = Tile {
                        panel,
                        panel_width: width,
                        off,
                        cols,
                        ks: ks.clone(),
                        accum,
                    };
                    let mut row = 0;
                    while row < m {
                        // The tallest tile the rows left fill: 8 (AVX-512), else 4, 3, 2, 1.
                        let rows = if m - row >= tall {
                            tall
                        } else {
                            (m - row).min(4)
                        };
                        let d = dst
                            .rb_mut()
                            .subrows_mut(row, rows)
                            .subcols_mut(col + off, cols);
                        let a = a.subrows(row, rows);
                        match (rows, regs) {
                            (8, 3) => tile.run::<S, 8, 3>(simd, d, a),
                            (8, 2) => tile.run::<S, 8, 2>(simd, d, a),
                            (8, _) => tile.run::<S, 8, 1>(simd, d, a),
                            (4, 3) => tile.run::<S, 4, 3>(simd, d, a),
                            (4, 2) => tile.run::<S, 4, 2>(simd, d, a),
                            (4, _) => tile.run::<S, 4, 1>(simd, d, a),
                            (3, 3) => tile.run::<S, 3, 3>(simd, d, a),
                            (3, 2) => tile.run::<S, 3, 2>(simd, d, a),
                            (3, _) => tile.run::<S, 3, 1>(simd, d, a),
                            (2, 3) => tile.run::<S, 2, 3>(simd, d, a),
                            (2, 2) => tile.run::<S, 2, 2>(simd, d, a),
                            (2, _) => tile.run::<S, 2, 1>(simd, d, a),
                            (_, 3) => tile.run::<S, 1, 3>(simd, d, a),
                            (_, 2) => tile.run::<S, 1, 2>(simd, d, a),
                            _ => tile.run::<S, 1, 1>(simd, d, a),
                        }
                        row += rows;
                    }
                    off += cols;
                }
            }
        }
    }
}

/// Columns `off..off + cols` of one panel, over rows `ks` of `B`.
struct Tile<'a, T> {
    panel: &'a [T],
    panel_width: usize,
    off: usize,
    cols: usize,
    ks: std::ops::Range<usize>,
    accum: Accum,
}

impl<T: Float> Tile<'_, T> {
    /// `C[0..MR, ..] (+)= A[0..MR, ks] · panel[ks, off..off + cols]`, `cols <= NR * lanes`.
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NR: usize>(
        &self,
        simd: S,
        mut dst: MatMut<'_, T>,
        a: MatRef<'_, T>,
    ) {
        let (cols, pw, off) = (self.cols, self.panel_width, self.off);
        let a_rows: [&[T]; MR] = core::array::from_fn(|r| row(a, r, self.ks.clone()));
        let panel = &self.panel[self.ks.start * pw..self.ks.end * pw];
        let acc = accumulate::<T, S, MR, NR>(simd, panel, pw, off, cols, a_rows);
        // Every row of C first, so the stores below index `acc` with constants only (a
        // dynamic index would keep the accumulators in memory during the loop above).
        let mut rest = Some(dst.rb_mut());
        let outs: [&mut [T]; MR] = core::array::from_fn(|_| {
            let (first, tail) = rest.take().expect("MR rows").split_at_row_mut(1);
            rest = Some(tail);
            first
                .row_mut(0)
                .try_as_row_major_mut()
                .expect("unit column stride")
                .as_slice_mut()
        });
        store::<T, S, MR, NR>(simd, outs, acc, self.accum, cols);
    }
}

/// Row `r` of `a`, columns `ks`, as a slice.
#[inline(always)]
fn row<T>(a: MatRef<'_, T>, r: usize, ks: std::ops::Range<usize>) -> &[T] {
    a.row(r)
        .subcols(ks.start, ks.len())
        .try_as_row_major()
        .expect("unit column stride")
        .as_slice()
}

// The register tile. `gemm::small_m_gemm_nn` has its own copy of this loop, with the
// full-width test inside it: run through the one below, its batch-1 products were 12 %
// slower at 1 x 64 x 64 (criterion `gemm_small_b1_h64`), while the panels need the
// split loops (with the test inside, LLVM spilled their 8 x 3 accumulators: 45 GFLOP/s).

/// `Σ_i A[0..MR, i] · B[i, off..off + cols]` for `B` stored with row stride `stride`
/// (`cols <= NR * lanes`), and `a_rows` the tile's rows of `A`, all of the same length
/// (the number of rows of `B` summed).
#[inline(always)]
fn accumulate<T: Float, S: Simd, const MR: usize, const NR: usize>(
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
fn store<T: Float, S: Simd, const MR: usize, const NR: usize>(
    simd: S,
    outs: [&mut [T]; MR],
    acc: [[T::Lanes<S>; NR]; MR],
    accum: Accum,
    cols: usize,
) {
    let lanes = T::lanes::<S>();
    if cols == NR * lanes {
        // Whole registers: plain loads and stores (pulp's partial ones are calls).
        for (out, acc_r) in outs.into_iter().zip(acc) {
            let (regs, _) = T::as_mut_simd::<S>(&mut out[..cols]);
            for (reg, v) in regs.iter_mut().zip(acc_r) {
                *reg = match accum {
                    Accum::Replace => v,
                    Accum::Add => T::vadd(simd, *reg, v),
                };
            }
        }
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed data starts on a cache line whatever the allocator returned, for sizes
    /// that come from the heap and from fresh mappings alike.
    #[test]
    fn packed_data_starts_on_a_cache_line() {
        for (k, n) in [(1, 1), (3, 5), (64, 48), (512, 256), (2048, 256)] {
            let p = Panels::<f32>::new(k, n);
            assert_eq!(
                p.data.as_ptr() as usize % crate::aligned::CACHE_LINE,
                0,
                "{k}x{n} f32"
            );
            assert_eq!(p.data.len(), k * n);
            let p = Panels::<f64>::new(k, n);
            assert_eq!(
                p.data.as_ptr() as usize % crate::aligned::CACHE_LINE,
                0,
                "{k}x{n} f64"
            );
        }
    }
}
