//! The one loop every elementwise kernel shares: whole registers, then a partial tail.
//!
//! A kernel is a small `Copy` struct implementing [`Lanewise`]; [`zip_rows`] walks `dst` and
//! up to a few same-length inputs register by register, optionally broadcasting a row vector
//! (a bias) over rows of `row_len` elements. The tail goes through `partial_load` /
//! `partial_store` and the same `apply`, so it rounds exactly like the body: results do not
//! depend on where a buffer is split.

use pulp::{Simd, WithSimd};

use crate::float::Float;

/// A lane-wise operation `dst = apply(dst_old, inputs, row_vec)`.
pub(crate) trait Lanewise<T: Float, const N: usize>: Copy {
    /// The new value of one register of `dst`; `row` is the broadcast row vector's register
    /// (zero when there is none).
    fn apply<S: Simd>(
        self,
        s: S,
        old: T::Lanes<S>,
        inputs: [T::Lanes<S>; N],
        row: T::Lanes<S>,
    ) -> T::Lanes<S>;
}

struct ZipRows<'a, T, F, const N: usize> {
    f: F,
    dst: &'a mut [T],
    inputs: [&'a [T]; N],
    row_vec: Option<&'a [T]>,
}

impl<T: Float, F: Lanewise<T, N>, const N: usize> WithSimd for ZipRows<'_, T, F, N> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            f,
            dst,
            inputs,
            row_vec,
        } = self;
        let row_len = row_vec.map_or(dst.len(), <[T]>::len).max(1);
        let zero = T::splat(s, T::zero());
        for (r, out_row) in dst.chunks_mut(row_len).enumerate() {
            let at = r * row_len;
            let ins: [&[T]; N] = core::array::from_fn(|j| &inputs[j][at..at + out_row.len()]);
            let (out_v, out_t) = T::as_mut_simd::<S>(out_row);
            let split: [crate::float::Split<'_, T, S>; N] =
                core::array::from_fn(|j| T::as_simd::<S>(ins[j]));
            let (row_v, row_t) = match row_vec {
                Some(v) => T::as_simd::<S>(v),
                None => (&[][..], &[][..]),
            };
            for (i, o) in out_v.iter_mut().enumerate() {
                let x = core::array::from_fn(|j| split[j].0[i]);
                let rv = if row_vec.is_some() { row_v[i] } else { zero };
                *o = f.apply(s, *o, x, rv);
            }
            if !out_t.is_empty() {
                let x = core::array::from_fn(|j| T::partial_load(s, split[j].1));
                let rv = if row_vec.is_some() {
                    T::partial_load(s, row_t)
                } else {
                    zero
                };
                let old = T::partial_load(s, out_t);
                T::partial_store(s, out_t, f.apply(s, old, x, rv));
            }
        }
    }
}

/// Applies `f` over `dst` and `inputs` (all the same length), broadcasting `row_vec` over
/// consecutive rows of `row_vec.len()` elements when given.
#[track_caller]
pub(crate) fn zip_rows<T: Float, F: Lanewise<T, N>, const N: usize>(
    f: F,
    dst: &mut [T],
    inputs: [&[T]; N],
    row_vec: Option<&[T]>,
) {
    for (j, x) in inputs.iter().enumerate() {
        assert_eq!(
            x.len(),
            dst.len(),
            "input {j} has length {} but dst has {}",
            x.len(),
            dst.len()
        );
    }
    if let Some(v) = row_vec {
        assert!(
            (v.is_empty() && dst.is_empty())
                || (!v.is_empty() && dst.len().is_multiple_of(v.len())),
            "dst length {} is not a whole number of rows of {}",
            dst.len(),
            v.len()
        );
    }
    crate::arch::dispatch(ZipRows {
        f,
        dst,
        inputs,
        row_vec,
    });
}
