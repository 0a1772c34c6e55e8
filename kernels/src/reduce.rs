//! Reductions and vector updates: sums of squares (gradient norms), column sums (bias
//! gradients), `axpy`, `scale` and value clamping.
//!
//! Reductions use four independent accumulators per lane to hide FMA latency, combined in a
//! fixed order: the result is the same on every call for the same input and instruction set.

use faer::Accum;
use pulp::{Simd, WithSimd};

use crate::float::Float;
use crate::lanewise::{Lanewise, zip_rows};

struct SumSquares<'a, T>(&'a [T]);

impl<T: Float> WithSimd for SumSquares<'_, T> {
    type Output = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> T {
        let (body, tail) = T::as_simd::<S>(self.0);
        let zero = T::splat(s, T::zero());
        let mut acc = [zero; 4];
        let (quads, rest) = body.as_chunks::<4>();
        for q in quads {
            for j in 0..4 {
                acc[j] = T::vmul_add(s, q[j], q[j], acc[j]);
            }
        }
        for (j, v) in rest.iter().enumerate() {
            acc[j] = T::vmul_add(s, *v, *v, acc[j]);
        }
        let t = T::partial_load(s, tail);
        acc[0] = T::vmul_add(s, t, t, acc[0]);
        let sum = T::vadd(s, T::vadd(s, acc[0], acc[1]), T::vadd(s, acc[2], acc[3]));
        T::vreduce_sum(s, sum)
    }
}

/// `Σ x²` (the square of the global gradient norm when `x` is the flat gradient buffer).
///
/// Any NaN or infinity in `x` makes the result non-finite, so one call also checks a gradient.
///
/// ```
/// assert_eq!(kernels::reduce::sum_squares(&[3.0f32, 4.0]), 25.0);
/// assert!(kernels::reduce::sum_squares(&[1.0f64, f64::NAN]).is_nan());
/// ```
pub fn sum_squares<T: Float>(x: &[T]) -> T {
    crate::arch::dispatch(SumSquares(x))
}

#[derive(Clone, Copy)]
struct AddRow;
impl<T: Float> Lanewise<T, 0> for AddRow {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        old: T::Lanes<S>,
        _: [T::Lanes<S>; 0],
        row: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vadd(s, old, row)
    }
}

/// `dst[j] (+)= Σ_r src[r, j]` over the rows of `src` (`[rows, dst.len()]`, row-major): the
/// bias gradient of a layer from its pre-activation gradients of all steps.
///
/// Rows are added in order, so the result does not depend on how callers batch them.
///
/// # Panics
/// If `src.len()` is not a multiple of `dst.len()`.
///
/// ```
/// use faer::Accum;
/// let mut db = [0.0f32; 2];
/// kernels::reduce::col_sums(&mut db, Accum::Replace, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// assert_eq!(db, [9.0, 12.0]);
/// ```
#[track_caller]
pub fn col_sums<T: Float>(dst: &mut [T], accum: Accum, src: &[T]) {
    let cols = dst.len();
    assert!(
        (cols == 0 && src.is_empty()) || (cols > 0 && src.len().is_multiple_of(cols)),
        "col_sums: src length {} is not a multiple of {cols}",
        src.len()
    );
    col_sums_of(dst, accum, src, cols, 0);
}

/// [`col_sums`] of the columns `first..first + dst.len()` of `src` `[rows, width]`, each column
/// summed exactly as [`col_sums`] sums it: callers can split the columns between threads and
/// get the same bits.
///
/// # Panics
/// If `src.len()` is not a multiple of `width` or the columns run past `width`.
///
/// ```
/// use faer::Accum;
/// let mut db = [0.0f32; 1];
/// kernels::reduce::col_sums_of(&mut db, Accum::Replace, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 1);
/// assert_eq!(db, [12.0]);
/// ```
#[track_caller]
pub fn col_sums_of<T: Float>(dst: &mut [T], accum: Accum, src: &[T], width: usize, first: usize) {
    assert!(
        first + dst.len() <= width && (width == 0 || src.len().is_multiple_of(width)),
        "col_sums_of: columns {first}..{} of rows of {width} ({} elements)",
        first + dst.len(),
        src.len()
    );
    if matches!(accum, Accum::Replace) {
        dst.fill(T::zero());
    }
    if dst.is_empty() {
        return;
    }
    let cols = first..first + dst.len();
    for row in src.chunks_exact(width) {
        zip_rows(AddRow, dst, [], Some(&row[cols.clone()]));
    }
}

#[derive(Clone, Copy)]
struct Axpy<T>(T);
impl<T: Float> Lanewise<T, 1> for Axpy<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        y: T::Lanes<S>,
        [x]: [T::Lanes<S>; 1],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vmul_add(s, T::splat(s, self.0), x, y)
    }
}

/// `y += alpha * x`.
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut y = [1.0f32, 1.0];
/// kernels::reduce::axpy(&mut y, 2.0, &[1.0, 2.0]);
/// assert_eq!(y, [3.0, 5.0]);
/// ```
#[track_caller]
pub fn axpy<T: Float>(y: &mut [T], alpha: T, x: &[T]) {
    zip_rows(Axpy(alpha), y, [x], None);
}

#[derive(Clone, Copy)]
struct Lerp<T> {
    coeff: T,
    from_end: bool,
}
impl<T: Float> Lanewise<T, 1> for Lerp<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        a: T::Lanes<S>,
        [w]: [T::Lanes<S>; 1],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let base = if self.from_end { w } else { a };
        T::vmul_add(s, T::splat(s, self.coeff), T::vsub(s, w, a), base)
    }
}

/// `a ← lerp(a, w, weight)` as PyTorch's vectorised `torch.lerp` computes it, so that
/// averages of weights match its bits: `a + weight · (w - a)` for `|weight| < ½`, else
/// `w + (weight - 1) · (w - a)`, each one fused multiply-add.
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut a = [0.0f32, 4.0];
/// kernels::reduce::lerp(&mut a, &[1.0, 0.0], 0.25);
/// assert_eq!(a, [0.25, 3.0]);
/// ```
#[track_caller]
pub fn lerp<T: Float>(a: &mut [T], w: &[T], weight: T) {
    let small = weight.abs() < T::of(0.5);
    let coeff = if small { weight } else { weight - T::one() };
    let from_end = !small;
    zip_rows(Lerp { coeff, from_end }, a, [w], None);
}

#[derive(Clone, Copy)]
struct Scale<T>(T);
impl<T: Float> Lanewise<T, 0> for Scale<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        x: T::Lanes<S>,
        _: [T::Lanes<S>; 0],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vmul(s, x, T::splat(s, self.0))
    }
}

/// `x *= alpha`.
///
/// ```
/// let mut x = [1.0f64, -2.0];
/// kernels::reduce::scale(&mut x, 0.5);
/// assert_eq!(x, [0.5, -1.0]);
/// ```
pub fn scale<T: Float>(x: &mut [T], alpha: T) {
    zip_rows(Scale(alpha), x, [], None);
}

#[derive(Clone, Copy)]
struct Clamp<T>(T, T);
impl<T: Float> Lanewise<T, 0> for Clamp<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        x: T::Lanes<S>,
        _: [T::Lanes<S>; 0],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let c = T::vmin(s, T::vmax(s, x, T::splat(s, self.0)), T::splat(s, self.1));
        T::vkeep_nan(s, x, c)
    }
}

/// `x = clamp(x, lo, hi)` element-wise (gradient clipping by value); NaN stays NaN.
///
/// ```
/// let mut g = [-3.0f32, 0.5, 9.0];
/// kernels::reduce::clamp(&mut g, -1.0, 1.0);
/// assert_eq!(g, [-1.0, 0.5, 1.0]);
/// ```
pub fn clamp<T: Float>(x: &mut [T], lo: T, hi: T) {
    zip_rows(Clamp(lo, hi), x, [], None);
}
