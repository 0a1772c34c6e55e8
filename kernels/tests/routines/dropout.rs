//! Dropout against a scalar reference built from [`DropMask::keeps`], on every instruction
//! set, at widths that straddle the register widths; and the mask's statistics.

use crate::common::random;
use kernels::Float;
use kernels::arch::{Isa, with_isa};
use kernels::dropout::{DropMask, drop_rows, drop_rows_backward};
use rand::{SeedableRng, rngs::StdRng};

const WIDTHS: [usize; 8] = [1, 7, 15, 16, 17, 33, 64, 1023];

/// `src · scale` where `mask` keeps the element, else 0, one element at a time.
fn reference<T: Float>(src: &[T], width: usize, first_row: usize, mask: &DropMask<T>) -> Vec<T> {
    src.iter()
        .enumerate()
        .map(|(i, &s)| {
            if mask.keeps(first_row + i / width, i % width) {
                s * mask.scale()
            } else {
                T::zero()
            }
        })
        .collect()
}

fn forward_and_backward_match<T: Float>() {
    let mut rng = StdRng::seed_from_u64(3);
    for isa in Isa::available() {
        for width in WIDTHS {
            for (p, first_row) in [(0.0, 0), (0.3, 5), (0.9, 1 << 40)] {
                let mask = DropMask::<T>::new(p, 11);
                let src = random::<T>(&mut rng, 3 * width, 2.0);
                let want = reference(&src, width, first_row, &mask);
                let mut dst = vec![T::of(9.0); src.len()];
                with_isa(isa, || drop_rows(&mut dst, &src, width, first_row, &mask));
                assert_eq!(dst, want, "{isa:?} {} width {width} p {p}", T::NAME);
                // The backward pass multiplies by the same mask, in place.
                let mut grad = src.clone();
                with_isa(isa, || {
                    drop_rows_backward(&mut grad, width, first_row, &mask)
                });
                assert_eq!(
                    grad,
                    want,
                    "{isa:?} {} backward width {width} p {p}",
                    T::NAME
                );
            }
        }
    }
}

#[test]
fn dropout_matches_reference_f32() {
    forward_and_backward_match::<f32>();
}

#[test]
fn dropout_matches_reference_f64() {
    forward_and_backward_match::<f64>();
}

#[test]
fn zero_probability_copies_exactly() {
    let mut rng = StdRng::seed_from_u64(4);
    let src = random::<f32>(&mut rng, 5 * 37, 1e3);
    let mut dst = vec![0.0; src.len()];
    drop_rows(&mut dst, &src, 37, 0, &DropMask::new(0.0, 1));
    assert_eq!(dst, src);
}

#[test]
fn rows_are_the_same_however_the_buffer_is_cut() {
    let mask = DropMask::<f64>::new(0.5, 99);
    let src = vec![1.0; 10 * 24];
    let mut whole = vec![0.0; src.len()];
    drop_rows(&mut whole, &src, 24, 100, &mask);
    let mut pieces = vec![0.0; src.len()];
    let (a, b) = pieces.split_at_mut(3 * 24);
    drop_rows(a, &src[..3 * 24], 24, 100, &mask);
    drop_rows(b, &src[3 * 24..], 24, 103, &mask);
    assert_eq!(whole, pieces);
}

/// The share of elements kept is `1 - p` (within five standard deviations), for whole rows,
/// for one column down many rows, and for the pairs of neighbours (row to row, column to
/// column, seed to seed) agreeing as often as independent draws would.
#[test]
fn masks_look_independent_with_the_right_rate() {
    let (rows, width) = (2000, 500);
    for p in [0.1, 0.5, 0.8] {
        let mask = DropMask::<f32>::new(p, 12345);
        let other_seed = DropMask::<f32>::new(p, 12346);
        let n = (rows * width) as f64;
        let within = |count: usize, of: f64, rate: f64, what: &str| {
            let sd = (of * rate * (1.0 - rate)).sqrt();
            let got = count as f64;
            assert!(
                (got - of * rate).abs() <= 5.0 * sd,
                "p {p}, {what}: {got} of {of}, expected {}",
                of * rate
            );
        };
        let keep = 1.0 - p;
        let all = |f: &dyn Fn(usize, usize) -> bool| {
            (0..rows)
                .flat_map(|r| (0..width).map(move |j| (r, j)))
                .filter(|&(r, j)| f(r, j))
                .count()
        };
        within(all(&|r, j| mask.keeps(r, j)), n, keep, "kept");
        let column = (0..rows * 50).filter(|&r| mask.keeps(r, 7)).count();
        within(column, (rows * 50) as f64, keep, "column 7");
        let agree = keep * keep + p * p;
        within(
            all(&|r, j| mask.keeps(r, j) == mask.keeps(r + 1, j)),
            n,
            agree,
            "next row",
        );
        within(
            all(&|r, j| mask.keeps(r, j) == mask.keeps(r, j + 1)),
            n,
            agree,
            "next column",
        );
        within(
            all(&|r, j| mask.keeps(r, j) == other_seed.keeps(r, j)),
            n,
            agree,
            "next seed",
        );
    }
}

#[test]
#[should_panic(expected = "not in [0, 1)")]
fn probability_one_is_refused() {
    DropMask::<f32>::new(1.0, 0);
}
