//! Matrix products against a naive triple loop, at edge sizes and random shapes.

use crate::common::random;
use faer::{Accum, Par};
use kernels::Float;
use kernels::arch::{Isa, with_isa};
use kernels::gemm::{self, GemmShape, Threads};
use kernels::pair::with_pair;
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

/// `C = beta C + A B` in f64 with explicit strides: a(i, p) and b(p, j) index functions.
fn naive(
    c0: &[f64],
    add: bool,
    s: GemmShape,
    a: impl Fn(usize, usize) -> f64,
    b: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    let mut c = vec![0.0; s.m * s.n];
    for i in 0..s.m {
        for j in 0..s.n {
            let dot: f64 = (0..s.k).map(|p| a(i, p) * b(p, j)).sum();
            c[i * s.n + j] = if add { c0[i * s.n + j] } else { 0.0 } + dot;
        }
    }
    c
}

fn check_all<T: Float>(s: GemmShape, rng: &mut StdRng) {
    let GemmShape { m, n, k } = s;
    let tol = T::EPSILON.f64() * (k as f64 + 2.0) * 2.0;
    let c0: Vec<T> = random(rng, m * n, 1.0);
    let c0f: Vec<f64> = c0.iter().map(|x| x.f64()).collect();
    let a: Vec<T> = random(rng, m * k, 1.0);
    let b: Vec<T> = random(rng, k * n, 1.0);
    let at = |x: &[T], i: usize| x[i].f64();
    let assert_close = |got: &[T], want: &[f64], what: &str| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g.f64() - w).abs() <= tol,
                "{what} {s:?} {} at {i}: {g} vs {w}",
                T::NAME
            );
        }
    };
    for accum in [Accum::Replace, Accum::Add] {
        let add = matches!(accum, Accum::Add);
        // nn: A[m,k] B[k,n]
        let want = naive(
            &c0f,
            add,
            s,
            |i, p| at(&a, i * k + p),
            |p, j| at(&b, p * n + j),
        );
        for isa in Isa::available() {
            let mut c = c0.clone();
            with_isa(isa, || gemm::gemm_nn(&mut c, accum, &a, &b, s, Par::Seq));
            assert_close(&c, &want, &format!("gemm_nn {isa:?} {accum:?}"));
            let mut c = c0.clone();
            with_isa(isa, || gemm::small_m_gemm_nn(&mut c, accum, &a, &b, s));
            assert_close(&c, &want, &format!("small_m {isa:?} {accum:?}"));
        }
        let mut c = c0.clone();
        gemm::faer_nn(&mut c, accum, &a, &b, s, Par::rayon(2));
        assert_close(&c, &want, "faer_nn");
        // nt: A[m,k] B[n,k]^T (reuse b's storage as [n,k])
        let want = naive(
            &c0f,
            add,
            s,
            |i, p| at(&a, i * k + p),
            |p, j| at(&b, j * k + p),
        );
        let mut c = c0.clone();
        gemm::gemm_nt(&mut c, accum, &a, &b, s, Par::Seq);
        assert_close(&c, &want, "gemm_nt");
        // tn: A[k,m]^T B[k,n] (reuse a's storage as [k,m])
        let want = naive(
            &c0f,
            add,
            s,
            |i, p| at(&a, p * m + i),
            |p, j| at(&b, p * n + j),
        );
        let mut c = c0.clone();
        gemm::gemm_tn(&mut c, accum, &a, &b, s, Par::Seq);
        assert_close(&c, &want, "gemm_tn");
    }
}

#[test]
fn products_at_edge_sizes() {
    let mut rng = StdRng::seed_from_u64(0);
    for m in [1, 2, 3, 4, 5, 15, 16, 17, 33] {
        for n in [1, 7, 15, 16, 17, 31, 33, 64, 129] {
            for k in [0, 1, 7, 17, 64] {
                check_all::<f32>(GemmShape::new(m, n, k), &mut rng);
                check_all::<f64>(GemmShape::new(m, n, k), &mut rng);
            }
        }
    }
}

/// Tall products with a narrow, odd-width output (`dW_ih` at `I = 65`): `gemm_tn` computes
/// them in transposed blocks of 64 rows, including a partial last block.
#[test]
fn narrow_weight_gradients_match() {
    let mut rng = StdRng::seed_from_u64(5);
    for (m, n, k) in [
        (256, 65, 256),
        (300, 65, 300),
        (513, 100, 260),
        (256, 127, 256),
    ] {
        check_all::<f32>(GemmShape::new(m, n, k), &mut rng);
        check_all::<f64>(GemmShape::new(m, n, k), &mut rng);
    }
}

/// Products deeper than a block (`gemm::depth_block`, this CPU's blocking): `gemm_tn` sums
/// them in evened-out blocks (just past one block, several whole ones, a short last one; the
/// longest blocks at narrow `A`, the shortest at wide), the first block replacing or adding to
/// `C` as asked and the others adding.
#[test]
fn deep_weight_gradients_match() {
    let mut rng = StdRng::seed_from_u64(6);
    // `k = blocks · depth_block + extra`.
    for (m, n, blocks, extra) in [
        (40, 50, 1, 1),
        (17, 33, 2, 0),
        (96, 64, 3, 5),
        (300, 200, 0, 700),
        (4096, 20, 0, 150),
        (4096, 32, 2, 1),
    ] {
        let k = blocks * gemm::depth_block(m * 4) + extra;
        check_all::<f32>(GemmShape::new(m, n, k), &mut rng);
        check_all::<f64>(GemmShape::new(m, n, k), &mut rng);
    }
}

/// Each CPU's blocking gives the rows measured best there, the same for any thread count.
#[test]
fn depth_blocks_follow_the_cpu() {
    use gemm::DepthBlocking::{BoundedSpan, FixedRows};
    let (fewest, most) = (*gemm::TN_BLOCK_ROWS.start(), *gemm::TN_BLOCK_ROWS.end());
    assert_eq!(BoundedSpan.rows(40 * 4), most);
    assert_eq!(BoundedSpan.rows(4096 * 4), fewest);
    assert_eq!(BoundedSpan.rows(2048 * 4), gemm::TN_BLOCK_SPAN / (2048 * 4));
    assert_eq!(BoundedSpan.rows(0), most);
    for row_bytes in [4, 40 * 4, 4096 * 4, 1 << 20] {
        assert_eq!(FixedRows.rows(row_bytes), gemm::FIXED_TN_BLOCK_ROWS);
    }
    let here = gemm::DepthBlocking::of_this_cpu();
    let amd = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("AuthenticAMD"));
    if std::path::Path::new("/proc/cpuinfo").exists() {
        assert_eq!(here == FixedRows, amd);
    }
    assert_eq!(gemm::depth_block(1024 * 4), here.rows(1024 * 4));
}

#[test]
fn small_m_kernel_is_deterministic_and_matches_for_large_k() {
    let mut rng = StdRng::seed_from_u64(3);
    // One row: register tiles up to 128 KiB of B (181 x 181 f32), streamed rows beyond.
    let one_row = [(1, 127), (1, 128), (1, 129), (1, 181), (1, 182), (1, 300)];
    for (m, h) in one_row.into_iter().chain([(4, 512), (16, 256)]) {
        check_all::<f32>(GemmShape::new(m, h, h), &mut rng);
    }
}

#[test]
fn empty_products() {
    let mut c: Vec<f32> = vec![];
    gemm::gemm_nn(
        &mut c,
        Accum::Replace,
        &[],
        &[1.0, 2.0],
        GemmShape::new(0, 2, 1),
        Par::Seq,
    );
    let mut c = vec![5.0f32; 2];
    gemm::gemm_nn(
        &mut c,
        Accum::Replace,
        &[],
        &[],
        GemmShape::new(1, 2, 0),
        Par::Seq,
    );
    assert_eq!(c, [0.0, 0.0]);
}

#[test]
#[should_panic(expected = "gemm shape")]
fn mismatched_lengths_panic_with_shape() {
    let mut c = vec![0.0f32; 3];
    gemm::gemm_nn(
        &mut c,
        Accum::Replace,
        &[1.0],
        &[1.0, 2.0],
        GemmShape::new(1, 2, 1),
        Par::Seq,
    );
}

/// The signature the three products share.
type Product = fn(&mut [f32], Accum, &[f32], &[f32], GemmShape, Threads<'_>);

/// Split on several threads, rayon's or a pair's, a product is bitwise the one-thread
/// product: each thread computes whole rows (or columns) of `C`, the same way as one thread
/// would. Shapes include narrow sides (split by the long side), uneven cuts and
/// `Accum::Add`.
#[test]
fn threaded_products_are_bitwise_the_sequential_ones() {
    let mut rng = StdRng::seed_from_u64(11);
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for (m, n, k) in [
        (4096, 65, 64),
        (65, 512, 300),
        (600, 65, 300),
        (300, 200, 700),
        (2100, 40, 200),
        (31, 33, 70),
        (200, 7, 129),
        (33, 1, 40),
        (1, 300, 20),
    ] {
        let s = GemmShape::new(m, n, k);
        let (a, b, c0): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            random(&mut rng, m.max(k) * k.max(m), 1.0),
            random(&mut rng, k.max(n) * n.max(k), 1.0),
            random(&mut rng, m * n, 1.0),
        );
        let products: [(&str, Product); 3] = [
            ("nn", |c, acc, a, b, s, t| gemm::gemm_nn(c, acc, a, b, s, t)),
            ("nt", |c, acc, a, b, s, t| gemm::gemm_nt(c, acc, a, b, s, t)),
            ("tn", |c, acc, a, b, s, t| gemm::gemm_tn(c, acc, a, b, s, t)),
        ];
        for (name, product) in products {
            let (a, b) = (&a[..m * k], &b[..k * n]);
            let mut want = c0.clone();
            product(&mut want, Accum::Add, a, b, s, Par::Seq.into());
            for threads in [2, 3, 4] {
                let mut got = c0.clone();
                pool(threads)
                    .install(|| product(&mut got, Accum::Add, a, b, s, Par::rayon(threads).into()));
                assert_eq!(got, want, "{name} {s:?} on {threads} threads");
            }
            // A pair's two shares, each whole or cut again over rayon's threads; and a pair
            // that is not parallel (one thread runs both shares).
            for (threads, parallel, each) in [
                (2, true, Par::Seq),
                (1, true, Par::Seq),
                (2, false, Par::Seq),
                (4, true, Par::rayon(2)),
            ] {
                let mut got = c0.clone();
                pool(threads).install(|| {
                    with_pair(parallel, |pair| {
                        let on = Threads::Pair(pair, each);
                        product(&mut got, Accum::Add, a, b, s, on)
                    })
                });
                assert_eq!(got, want, "{name} {s:?} on a pair ({threads} threads)");
            }
        }
    }
}

#[test]
fn transpose_roundtrip() {
    let src: Vec<f32> = (0..12).map(|x| x as f32).collect();
    let mut t = vec![0.0f32; 12];
    gemm::transpose(&mut t, &src, 3, 4);
    assert_eq!(t[1], 4.0); // t[0][1] = src[1][0]
    let mut back = vec![0.0f32; 12];
    gemm::transpose(&mut back, &t, 4, 3);
    assert_eq!(back, src);
}

#[test]
fn transpose_matches_its_definition_at_many_shapes() {
    // Tile edges (8), partial tiles on either side, and rows a power of two apart.
    let sides = [1, 2, 7, 8, 9, 15, 16, 17, 64, 65, 256];
    for rows in sides {
        for cols in sides {
            let src: Vec<f64> = (0..rows * cols).map(|x| x as f64).collect();
            let mut got = vec![f64::NAN; rows * cols];
            gemm::transpose(&mut got, &src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        got[c * rows + r],
                        src[r * cols + c],
                        "{rows} x {cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes(m in 1usize..40, n in 1usize..70, k in 0usize..70, seed in 0u64..1000) {
        let mut rng = StdRng::seed_from_u64(seed);
        check_all::<f32>(GemmShape::new(m, n, k), &mut rng);
        check_all::<f64>(GemmShape::new(m, n, k), &mut rng);
    }
}
