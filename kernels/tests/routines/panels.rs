//! Packed-panel products against a naive triple loop in f64: every instruction set, both
//! accumulation modes, tile edges in every dimension (rows around 8 and 4, columns around
//! the register and panel widths, `k` around the block size), every source layout, and
//! views with row strides wider than their rows.

use crate::common::{f64s, random};
use faer::{Accum, Mat, MatMut, MatRef};
use kernels::Float;
use kernels::arch::{Isa, with_isa};
use kernels::panels::{K_BLOCK, Panels};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

/// How the packed matrix `B[k, n]` is stored before packing.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// Row-major, rows wider than `n` (a column block of a weight matrix).
    RowMajor,
    /// A transposed row-major `W[n, k]` (what the forward pass packs).
    Transposed,
    /// Neither rows nor columns contiguous (reversed columns of a row-major matrix).
    Strided,
}

const SOURCES: [Source; 3] = [Source::RowMajor, Source::Transposed, Source::Strided];

/// `B` (`[k, n]`, element `(p, j)` = `values[p * n + j]`) stored as `source` in `store`.
fn source_view<'a, T: Float>(
    store: &'a mut Vec<T>,
    values: &[T],
    k: usize,
    n: usize,
    source: Source,
) -> MatRef<'a, T> {
    let pad = 3; // extra columns, so no view is a whole matrix
    match source {
        Source::RowMajor => {
            *store = vec![T::zero(); k * (n + pad)];
            for p in 0..k {
                store[p * (n + pad)..p * (n + pad) + n]
                    .copy_from_slice(&values[p * n..(p + 1) * n]);
            }
            MatRef::from_row_major_slice(store, k, n + pad).subcols(0, n)
        }
        Source::Transposed => {
            *store = vec![T::zero(); (n + pad) * k];
            for p in 0..k {
                for j in 0..n {
                    store[j * k + p] = values[p * n + j];
                }
            }
            MatRef::from_row_major_slice(store, n + pad, k)
                .subrows(0, n)
                .transpose()
        }
        Source::Strided => {
            *store = vec![T::zero(); k * n];
            for p in 0..k {
                for j in 0..n {
                    store[p * n + (n - 1 - j)] = values[p * n + j];
                }
            }
            MatRef::from_row_major_slice(store, k, n).reverse_cols()
        }
    }
}

fn naive(c0: &[f64], add: bool, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            c[i * n + j] = if add { c0[i * n + j] } else { 0.0 } + dot;
        }
    }
    c
}

/// `C (+)= A B` through packed panels, `C` and `A` as views with rows wider than the
/// matrix (row strides `n + 2` and `k + 1`), against the naive product.
fn check<T: Float>(m: usize, n: usize, k: usize, rng: &mut StdRng) {
    let tol = T::EPSILON.f64() * (k as f64 + 2.0) * 2.0;
    let a: Vec<T> = random(rng, m * k, 1.0);
    let b: Vec<T> = random(rng, k * n, 1.0);
    let c0: Vec<T> = random(rng, m * n, 1.0);
    let a_wide: Vec<T> = (0..m)
        .flat_map(|i| a[i * k..(i + 1) * k].iter().copied().chain([T::of(9.0)]))
        .collect();
    let a_view = MatRef::from_row_major_slice(&a_wide, m, k + 1).subcols(0, k);
    for source in SOURCES {
        let mut store = Vec::new();
        let src = source_view(&mut store, &b, k, n, source);
        let mut packed = Panels::new(k, n);
        packed.pack(src);
        for accum in [Accum::Replace, Accum::Add] {
            let add = matches!(accum, Accum::Add);
            let want = naive(&f64s(&c0), add, m, n, k, &f64s(&a), &f64s(&b));
            for isa in Isa::available() {
                // C inside a wider buffer whose extra columns must stay untouched.
                let mut c_wide = vec![T::of(7.0); m * (n + 2)];
                for i in 0..m {
                    c_wide[i * (n + 2)..i * (n + 2) + n].copy_from_slice(&c0[i * n..(i + 1) * n]);
                }
                let c = MatMut::from_row_major_slice_mut(&mut c_wide, m, n + 2).subcols_mut(0, n);
                with_isa(isa, || packed.product(c, accum, a_view));
                for i in 0..m {
                    for j in 0..n + 2 {
                        let got = c_wide[i * (n + 2) + j].f64();
                        if j >= n {
                            assert_eq!(got, 7.0, "{isa:?} wrote outside C at ({i}, {j})");
                            continue;
                        }
                        let w = want[i * n + j];
                        assert!(
                            (got - w).abs() <= tol,
                            "{} {m}x{n}x{k} {source:?} {accum:?} {isa:?} at ({i}, {j}): {got} vs {w}",
                            T::NAME
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn products_match_the_naive_product_at_tile_edges() {
    let mut rng = StdRng::seed_from_u64(1);
    let wf32 = Panels::<f32>::width();
    for m in [1, 2, 3, 4, 5, 7, 8, 9, 12, 17] {
        for n in [1, 5, 16, 17, 33, wf32 - 1, wf32, wf32 + 1, 2 * wf32 + 7] {
            for k in [1, 2, 13] {
                check::<f32>(m, n, k, &mut rng);
                check::<f64>(m, n, k, &mut rng);
            }
        }
    }
}

#[test]
fn products_sum_across_k_blocks() {
    let mut rng = StdRng::seed_from_u64(2);
    for k in [K_BLOCK - 1, K_BLOCK, K_BLOCK + 1, 2 * K_BLOCK + 3] {
        check::<f32>(9, 50, k, &mut rng);
        check::<f64>(9, 50, k, &mut rng);
    }
}

#[test]
fn empty_inner_dimension_writes_zeros_or_leaves_c() {
    let packed = Panels::<f32>::new(0, 3);
    let a = Mat::<f32>::zeros(2, 0);
    let mut c = [5.0f32; 6];
    packed.product(
        MatMut::from_row_major_slice_mut(&mut c, 2, 3),
        Accum::Add,
        a.as_ref(),
    );
    assert_eq!(c, [5.0; 6]);
    packed.product(
        MatMut::from_row_major_slice_mut(&mut c, 2, 3),
        Accum::Replace,
        a.as_ref(),
    );
    assert_eq!(c, [0.0; 6]);
}

/// The engine splits a step's columns (hidden units) between threads and packs each part
/// apart: every column must come out bitwise the same however the columns are cut, and
/// every row however the rows are.
#[test]
fn column_and_row_splits_do_not_change_any_bit() {
    let mut rng = StdRng::seed_from_u64(3);
    let (m, n, k) = (19, 131, 700);
    let a: Vec<f32> = random(&mut rng, m * k, 1.0);
    let b: Vec<f32> = random(&mut rng, k * n, 1.0);
    let c0: Vec<f32> = random(&mut rng, m * n, 1.0);
    let a = MatRef::from_row_major_slice(&a, m, k);
    let b = MatRef::from_row_major_slice(&b, k, n);
    let mut whole = c0.clone();
    let mut packed = Panels::new(k, n);
    packed.pack(b);
    packed.product(
        MatMut::from_row_major_slice_mut(&mut whole, m, n),
        Accum::Add,
        a,
    );
    for cut in [1, 7, 16, 48, 65, 130] {
        let mut parts = c0.clone();
        let c = MatMut::from_row_major_slice_mut(&mut parts, m, n);
        let (left, right) = c.split_at_col_mut(cut);
        let mut p = Panels::new(k, cut);
        p.pack(b.subcols(0, cut));
        p.product(left, Accum::Add, a);
        let mut p = Panels::new(k, n - cut);
        p.pack(b.subcols(cut, n - cut));
        p.product(right, Accum::Add, a);
        assert_eq!(parts, whole, "columns cut at {cut}");
    }
    for cut in [1, 3, 8, 11] {
        let mut parts = c0.clone();
        let c = MatMut::from_row_major_slice_mut(&mut parts, m, n);
        let (top, bottom) = c.split_at_row_mut(cut);
        packed.product(top, Accum::Add, a.subrows(0, cut));
        packed.product(bottom, Accum::Add, a.subrows(cut, m - cut));
        assert_eq!(parts, whole, "rows cut at {cut}");
    }
}

/// A product by whole panels of columns (how two threads share a step) gives every element
/// bitwise as the whole product, for f32 and f64 panel widths and a ragged last panel.
#[test]
fn products_by_panel_columns_match_the_whole_product_bitwise() {
    fn check_cols<T: Float>(rng: &mut StdRng) {
        let (m, n, k) = (13, 5 * Panels::<T>::width() + 7, 600);
        let a: Vec<T> = random(rng, m * k, 1.0);
        let b: Vec<T> = random(rng, k * n, 1.0);
        let c0: Vec<T> = random(rng, m * n, 1.0);
        let a = MatRef::from_row_major_slice(&a, m, k);
        let mut packed = Panels::new(k, n);
        packed.pack(MatRef::from_row_major_slice(&b, k, n));
        let mut whole = c0.clone();
        let c = MatMut::from_row_major_slice_mut(&mut whole, m, n);
        packed.product(c, Accum::Add, a);
        let w = Panels::<T>::width();
        for cuts in [
            vec![0, n],
            vec![0, w, n],
            vec![0, 2 * w, 3 * w, n],
            vec![0, 5 * w, n],
        ] {
            let mut parts = c0.clone();
            let mut rest = MatMut::from_row_major_slice_mut(&mut parts, m, n);
            for pair in cuts.windows(2) {
                let (part, tail) = rest.split_at_col_mut(pair[1] - pair[0]);
                // Rows in two calls as well, as pieces of row tiles do.
                let (top, bottom) = part.split_at_row_mut(8);
                packed.product_cols(top, Accum::Add, a.subrows(0, 8), pair[0]..pair[1]);
                let a_low = a.subrows(8, m - 8);
                packed.product_cols(bottom, Accum::Add, a_low, pair[0]..pair[1]);
                rest = tail;
            }
            assert!(
                parts == whole,
                "{} cuts {cuts:?}",
                std::any::type_name::<T>()
            );
        }
    }
    let mut rng = StdRng::seed_from_u64(11);
    check_cols::<f32>(&mut rng);
    check_cols::<f64>(&mut rng);
}

#[test]
#[should_panic(expected = "not whole panels")]
fn product_columns_off_a_panel_edge_panic() {
    let w = Panels::<f32>::width();
    let packed = Panels::<f32>::new(4, 2 * w);
    let (a, mut c) = (vec![0.0f32; 4], vec![0.0f32; w]);
    packed.product_cols(
        MatMut::from_row_major_slice_mut(&mut c, 1, w),
        Accum::Add,
        MatRef::from_row_major_slice(&a, 1, 4),
        1..w + 1,
    );
}

#[test]
fn repacking_replaces_the_old_matrix() {
    let mut packed = Panels::new(2, 2);
    packed.pack(MatRef::from_row_major_slice(&[1.0f64, 2.0, 3.0, 4.0], 2, 2));
    packed.pack(MatRef::from_row_major_slice(&[0.0f64, 1.0, 1.0, 0.0], 2, 2));
    let mut c = [0.0f64; 2];
    let a = [2.0f64, 3.0];
    packed.product(
        MatMut::from_row_major_slice_mut(&mut c, 1, 2),
        Accum::Replace,
        MatRef::from_row_major_slice(&a, 1, 2),
    );
    assert_eq!(c, [3.0, 2.0]);
}

#[test]
#[should_panic(expected = "Panels::pack: source is 3x2, panels hold 2x3")]
fn packing_a_wrong_shape_panics() {
    let mut packed = Panels::<f32>::new(2, 3);
    packed.pack(MatRef::from_row_major_slice(&[0.0; 6], 3, 2));
}

#[test]
#[should_panic(expected = "Panels::product: C is 2x3, A is 2x4, B is 2x3")]
fn a_product_of_mismatched_shapes_panics() {
    let packed = Panels::<f32>::new(2, 3);
    let mut c = [0.0f32; 6];
    packed.product(
        MatMut::from_row_major_slice_mut(&mut c, 2, 3),
        Accum::Replace,
        MatRef::from_row_major_slice(&[0.0; 8], 2, 4),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes_match(m in 1usize..40, n in 1usize..120, k in 1usize..80, seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        check::<f32>(m, n, k, &mut rng);
        check::<f64>(m, n, k, &mut rng);
    }
}
