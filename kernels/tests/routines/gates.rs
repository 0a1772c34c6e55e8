//! The LSTM and GRU step kernels against a scalar f64 transcription of PyTorch's equations,
//! at hidden sizes that straddle the register widths, on every instruction set, in f32 and
//! f64; and the backward kernels against finite differences of the forward ones.

use crate::common::{close, f64s, random};
use std::ops::Range;

use faer::{Accum, MatMut, MatRef};
use kernels::arch::{Isa, with_isa};
use kernels::{Float, gates};
use rand::{SeedableRng, rngs::StdRng};

const HIDDEN: [usize; 9] = [1, 7, 15, 16, 17, 31, 33, 64, 100];
const ROWS: [usize; 2] = [1, 3];

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Scalar LSTM step: returns (activated gates, c, h).
fn lstm_ref(pre: &[f64], bias: &[f64], c_prev: &[f64], h: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = c_prev.len() / h;
    let (mut gates, mut c, mut hs) = (
        vec![0.0; rows * 4 * h],
        vec![0.0; rows * h],
        vec![0.0; rows * h],
    );
    for r in 0..rows {
        for j in 0..h {
            let a = |k: usize| pre[r * 4 * h + k * h + j] + bias[k * h + j];
            let (i, f, g, o) = (sig(a(0)), sig(a(1)), a(2).tanh(), sig(a(3)));
            let cv = f * c_prev[r * h + j] + i * g;
            for (k, v) in [i, f, g, o].into_iter().enumerate() {
                gates[r * 4 * h + k * h + j] = v;
            }
            c[r * h + j] = cv;
            hs[r * h + j] = o * cv.tanh();
        }
    }
    (gates, c, hs)
}

/// Scalar GRU step: returns (r z n, hn + b_hn, h).
fn gru_ref(
    gx: &[f64],
    gh: &[f64],
    b_ih: &[f64],
    b_hh: &[f64],
    h_prev: &[f64],
    h: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = h_prev.len() / h;
    let (mut gates, mut hn, mut out) = (
        vec![0.0; rows * 3 * h],
        vec![0.0; rows * h],
        vec![0.0; rows * h],
    );
    for row in 0..rows {
        for j in 0..h {
            let x = |k: usize| gx[row * 3 * h + k * h + j] + b_ih[k * h + j];
            let hh = |k: usize| gh[row * 3 * h + k * h + j] + b_hh[k * h + j];
            let r = sig(x(0) + hh(0));
            let z = sig(x(1) + hh(1));
            let n = (x(2) + r * hh(2)).tanh();
            gates[row * 3 * h + j] = r;
            gates[row * 3 * h + h + j] = z;
            gates[row * 3 * h + 2 * h + j] = n;
            hn[row * h + j] = hh(2);
            out[row * h + j] = (1.0 - z) * n + z * h_prev[row * h + j];
        }
    }
    (gates, hn, out)
}

fn sweep(mut check: impl FnMut(Isa, usize, usize, &mut StdRng)) {
    let mut rng = StdRng::seed_from_u64(7);
    for isa in Isa::available() {
        for h in HIDDEN {
            for rows in ROWS {
                with_isa(isa, || check(isa, h, rows, &mut rng));
            }
        }
    }
}

fn lstm_forward_matches<T: Float>() {
    let tol = T::EPSILON.f64() * 8.0;
    sweep(|isa, h, rows, rng| {
        let pre: Vec<T> = random(rng, rows * 4 * h, 4.0);
        let bias: Vec<T> = random(rng, 4 * h, 1.0);
        let c_prev: Vec<T> = random(rng, rows * h, 3.0);
        let (want_g, want_c, want_h) = lstm_ref(&f64s(&pre), &f64s(&bias), &f64s(&c_prev), h);
        let mut g = pre.clone();
        let (mut c, mut hs) = (vec![T::zero(); rows * h], vec![T::zero(); rows * h]);
        gates::lstm_forward(&mut g, &bias, &c_prev, &mut c, &mut hs, h);
        let what = format!("lstm_forward {isa:?} H={h} B={rows}");
        close(&g, &want_g, tol, &format!("{what} gates"));
        close(&c, &want_c, tol, &format!("{what} c"));
        close(&hs, &want_h, tol, &format!("{what} h"));
    });
}

fn gru_forward_matches<T: Float>() {
    let tol = T::EPSILON.f64() * 8.0;
    sweep(|isa, h, rows, rng| {
        let gx: Vec<T> = random(rng, rows * 3 * h, 3.0);
        let gh: Vec<T> = random(rng, rows * 3 * h, 3.0);
        let (b_ih, b_hh): (Vec<T>, Vec<T>) = (random(rng, 3 * h, 1.0), random(rng, 3 * h, 1.0));
        let h_prev: Vec<T> = random(rng, rows * h, 1.0);
        let (want_g, want_hn, want_h) = gru_ref(
            &f64s(&gx),
            &f64s(&gh),
            &f64s(&b_ih),
            &f64s(&b_hh),
            &f64s(&h_prev),
            h,
        );
        let (mut x, mut hh) = (gx.clone(), gh.clone());
        let mut out = vec![T::zero(); rows * h];
        gates::gru_forward(&mut x, &mut hh, &b_ih, &b_hh, &h_prev, &mut out, h);
        let what = format!("gru_forward {isa:?} H={h} B={rows}");
        close(&x, &want_g, tol, &format!("{what} gates"));
        close(&out, &want_h, tol, &format!("{what} h"));
        let hn: Vec<T> = hh
            .chunks_exact(3 * h)
            .flat_map(|row| row[2 * h..].to_vec())
            .collect();
        close(&hn, &want_hn, tol, &format!("{what} hn"));
        // r and z slices of gh are left as they were.
        for (row_out, row_in) in hh.chunks_exact(3 * h).zip(gh.chunks_exact(3 * h)) {
            assert_eq!(row_out[..2 * h], row_in[..2 * h], "{what}: gh r/z changed");
        }
    });
}

#[test]
fn lstm_forward_matches_reference() {
    lstm_forward_matches::<f32>();
    lstm_forward_matches::<f64>();
}

#[test]
fn gru_forward_matches_reference() {
    gru_forward_matches::<f32>();
    gru_forward_matches::<f64>();
}

/// `Σ w ⊙ output` of an LSTM step as a function of (pre-activations, c_prev): the scalar loss
/// whose gradient the backward kernel must produce, with weights `wh` on h and `wc` on c.
fn lstm_loss(pre: &[f64], bias: &[f64], c_prev: &[f64], wh: &[f64], wc: &[f64], h: usize) -> f64 {
    let (_, c, hs) = lstm_ref(pre, bias, c_prev, h);
    hs.iter().zip(wh).map(|(a, b)| a * b).sum::<f64>()
        + c.iter().zip(wc).map(|(a, b)| a * b).sum::<f64>()
}

fn gru_loss(
    gx: &[f64],
    gh: &[f64],
    b_ih: &[f64],
    b_hh: &[f64],
    h_prev: &[f64],
    w: &[f64],
    h: usize,
) -> f64 {
    let (_, _, out) = gru_ref(gx, gh, b_ih, b_hh, h_prev, h);
    out.iter().zip(w).map(|(a, b)| a * b).sum()
}

fn central(f: impl Fn(&[f64]) -> f64, x: &[f64], i: usize) -> f64 {
    let eps = 1e-6;
    let (mut p, mut m) = (x.to_vec(), x.to_vec());
    p[i] += eps;
    m[i] -= eps;
    (f(&p) - f(&m)) / (2.0 * eps)
}

#[test]
fn lstm_backward_matches_finite_differences() {
    for isa in Isa::available() {
        with_isa(isa, || {
            let mut rng = StdRng::seed_from_u64(11);
            for h in [1, 7, 17, 33] {
                let rows = 2;
                let pre: Vec<f64> = random(&mut rng, rows * 4 * h, 2.0);
                let bias: Vec<f64> = random(&mut rng, 4 * h, 1.0);
                let c_prev: Vec<f64> = random(&mut rng, rows * h, 2.0);
                let (wh, wc): (Vec<f64>, Vec<f64>) = (
                    random(&mut rng, rows * h, 1.0),
                    random(&mut rng, rows * h, 1.0),
                );
                let mut g = pre.clone();
                let (mut c, mut hs) = (vec![0.0; rows * h], vec![0.0; rows * h]);
                gates::lstm_forward(&mut g, &bias, &c_prev, &mut c, &mut hs, h);
                let mut dc = wc.clone();
                gates::lstm_backward(&mut g, &c_prev, &c, &wh, &mut dc, h);
                let what = format!("lstm_backward {isa:?} H={h}");
                let want_pre: Vec<f64> = (0..pre.len())
                    .map(|i| central(|p| lstm_loss(p, &bias, &c_prev, &wh, &wc, h), &pre, i))
                    .collect();
                close(&g, &want_pre, 1e-8, &format!("{what} d pre"));
                let want_c: Vec<f64> = (0..c_prev.len())
                    .map(|i| central(|cp| lstm_loss(&pre, &bias, cp, &wh, &wc, h), &c_prev, i))
                    .collect();
                close(&dc, &want_c, 1e-8, &format!("{what} d c_prev"));
            }
        });
    }
}

#[test]
fn gru_backward_matches_finite_differences() {
    for isa in Isa::available() {
        with_isa(isa, || {
            let mut rng = StdRng::seed_from_u64(12);
            for h in [1, 7, 17, 33] {
                let rows = 2;
                let gx: Vec<f64> = random(&mut rng, rows * 3 * h, 2.0);
                let gh: Vec<f64> = random(&mut rng, rows * 3 * h, 2.0);
                let (b_ih, b_hh): (Vec<f64>, Vec<f64>) =
                    (random(&mut rng, 3 * h, 1.0), random(&mut rng, 3 * h, 1.0));
                let h_prev: Vec<f64> = random(&mut rng, rows * h, 1.0);
                let w: Vec<f64> = random(&mut rng, rows * h, 1.0);
                let (mut x, mut hh) = (gx.clone(), gh.clone());
                let mut out = vec![0.0; rows * h];
                gates::gru_forward(&mut x, &mut hh, &b_ih, &b_hh, &h_prev, &mut out, h);
                for accum in [Accum::Replace, Accum::Add] {
                    let (mut dx, mut dhh) = (x.clone(), hh.clone());
                    let base: Vec<f64> = random(&mut rng, rows * h, 1.0);
                    let mut dh_prev = base.clone();
                    gates::gru_backward(&mut dx, &mut dhh, &h_prev, &w, &mut dh_prev, accum, h);
                    let what = format!("gru_backward {isa:?} H={h} {accum:?}");
                    let loss =
                        |a: &[f64], b: &[f64], hp: &[f64]| gru_loss(a, b, &b_ih, &b_hh, hp, &w, h);
                    let want_x: Vec<f64> = (0..gx.len())
                        .map(|i| central(|p| loss(p, &gh, &h_prev), &gx, i))
                        .collect();
                    close(&dx, &want_x, 1e-8, &format!("{what} d gx"));
                    let want_h: Vec<f64> = (0..gh.len())
                        .map(|i| central(|p| loss(&gx, p, &h_prev), &gh, i))
                        .collect();
                    close(&dhh, &want_h, 1e-8, &format!("{what} d gh"));
                    // Only the direct path z ⊙ dh: the recurrent product adds the rest.
                    let want_direct: Vec<f64> = (0..rows * h)
                        .map(|i| {
                            let z = x[(i / h) * 3 * h + h + i % h];
                            let add = if matches!(accum, Accum::Add) {
                                base[i]
                            } else {
                                0.0
                            };
                            add + w[i] * z
                        })
                        .collect();
                    close(&dh_prev, &want_direct, 1e-14, &format!("{what} dh_prev"));
                }
            }
        });
    }
}

#[test]
#[should_panic(expected = "not a whole number of rows")]
fn lstm_forward_rejects_ragged_gates() {
    let mut g = [0.0f32; 7];
    gates::lstm_forward(&mut g, &[0.0; 4], &[0.0], &mut [0.0], &mut [0.0], 1);
}

/// Gate `k`'s `rows` by `units` tile of a row-major `[B, G·H]` buffer, for every `k`.
fn gate_tiles<const G: usize, T>(
    buf: &mut [T],
    h: usize,
    rows: Range<usize>,
    units: Range<usize>,
) -> [MatMut<'_, T>; G] {
    let b = buf.len() / (G * h);
    let mut rest = Some(MatMut::from_row_major_slice_mut(buf, b, G * h));
    core::array::from_fn(|_| {
        let (gate, tail) = rest.take().expect("a gate").split_at_col_mut(h);
        rest = Some(tail);
        gate.subrows_mut(rows.start, rows.len())
            .subcols_mut(units.start, units.len())
    })
}

/// The `rows` by `units` tile of a row-major `[B, H]` buffer.
fn tile_mut<T>(buf: &mut [T], h: usize, rows: Range<usize>, units: Range<usize>) -> MatMut<'_, T> {
    MatMut::from_row_major_slice_mut(buf, buf.len() / h, h)
        .subrows_mut(rows.start, rows.len())
        .subcols_mut(units.start, units.len())
}

/// [`tile_mut`], read-only.
fn tile<T>(buf: &[T], h: usize, rows: Range<usize>, units: Range<usize>) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(buf, buf.len() / h, h)
        .subrows(rows.start, rows.len())
        .subcols(units.start, units.len())
}

fn unit_bias<const G: usize, T>(v: &[T], h: usize, units: Range<usize>) -> [&[T]; G] {
    core::array::from_fn(|k| &v[k * h + units.start..k * h + units.end])
}

/// The tile kernels, run over a grid of tiles (rows split at `row_cut`, units at `cut`), give
/// bitwise the whole-step kernels' results: a tile's edge is like a row's end, so splitting
/// a step between workers, or into pieces, changes nothing.
fn tiles_match_whole_steps<T: Float>() {
    let mut rng = StdRng::seed_from_u64(11);
    let b = 3;
    for isa in Isa::available() {
        for h in HIDDEN.into_iter().filter(|&h| h > 1) {
            for (cut, row_cut) in [(1, 0), (h / 2, 1), (h - 1, 2), (h / 2, 3)] {
                with_isa(isa, || {
                    let grid: Vec<_> = [0..row_cut, row_cut..b]
                        .into_iter()
                        .flat_map(|r| [(r.clone(), 0..cut), (r, cut..h)])
                        .collect();
                    let what = format!("{isa:?} H={h} cut={cut} row_cut={row_cut} [{}]", T::NAME);
                    // LSTM forward and backward.
                    let pre: Vec<T> = random(&mut rng, b * 4 * h, 4.0);
                    let bias: Vec<T> = random(&mut rng, 4 * h, 1.0);
                    let c_prev: Vec<T> = random(&mut rng, b * h, 3.0);
                    let dh: Vec<T> = random(&mut rng, b * h, 1.0);
                    let dc0: Vec<T> = random(&mut rng, b * h, 1.0);
                    let zeros = || vec![T::zero(); b * h];
                    let (mut g1, mut c1, mut h1) = (pre.clone(), zeros(), zeros());
                    gates::lstm_forward(&mut g1, &bias, &c_prev, &mut c1, &mut h1, h);
                    let (mut g2, mut c2, mut h2) = (pre.clone(), zeros(), zeros());
                    for (r, u) in grid.clone() {
                        gates::lstm_forward_tile(
                            gate_tiles(&mut g2, h, r.clone(), u.clone()),
                            unit_bias(&bias, h, u.clone()),
                            tile(&c_prev, h, r.clone(), u.clone()),
                            tile_mut(&mut c2, h, r.clone(), u.clone()),
                            tile_mut(&mut h2, h, r, u),
                        );
                    }
                    assert_eq!((&g1, &c1, &h1), (&g2, &c2, &h2), "lstm forward {what}");
                    let mut dc1 = dc0.clone();
                    gates::lstm_backward(&mut g1, &c_prev, &c1, &dh, &mut dc1, h);
                    let mut dc2 = dc0.clone();
                    for (r, u) in grid.clone() {
                        gates::lstm_backward_tile(
                            gate_tiles(&mut g2, h, r.clone(), u.clone()),
                            tile(&c_prev, h, r.clone(), u.clone()),
                            tile(&c2, h, r.clone(), u.clone()),
                            tile(&dh, h, r.clone(), u.clone()),
                            tile_mut(&mut dc2, h, r, u),
                        );
                    }
                    assert_eq!((&g1, &dc1), (&g2, &dc2), "lstm backward {what}");
                    // GRU forward and backward.
                    let gx: Vec<T> = random(&mut rng, b * 3 * h, 3.0);
                    let gh: Vec<T> = random(&mut rng, b * 3 * h, 3.0);
                    let (b_ih, b_hh): (Vec<T>, Vec<T>) =
                        (random(&mut rng, 3 * h, 1.0), random(&mut rng, 3 * h, 1.0));
                    let h_prev: Vec<T> = random(&mut rng, b * h, 1.0);
                    let (mut x1, mut y1, mut o1) = (gx.clone(), gh.clone(), zeros());
                    gates::gru_forward(&mut x1, &mut y1, &b_ih, &b_hh, &h_prev, &mut o1, h);
                    let (mut x2, mut y2, mut o2) = (gx.clone(), gh.clone(), zeros());
                    for (r, u) in grid.clone() {
                        gates::gru_forward_tile(
                            gate_tiles(&mut x2, h, r.clone(), u.clone()),
                            gate_tiles(&mut y2, h, r.clone(), u.clone()),
                            unit_bias(&b_ih, h, u.clone()),
                            unit_bias(&b_hh, h, u.clone()),
                            tile(&h_prev, h, r.clone(), u.clone()),
                            tile_mut(&mut o2, h, r, u),
                        );
                    }
                    assert_eq!((&x1, &y1, &o1), (&x2, &y2, &o2), "gru forward {what}");
                    for accum in [Accum::Add, Accum::Replace] {
                        let (mut x1, mut y1, mut x2, mut y2) =
                            (x1.clone(), y1.clone(), x2.clone(), y2.clone());
                        let mut dp1 = dc0.clone();
                        gates::gru_backward(&mut x1, &mut y1, &h_prev, &dh, &mut dp1, accum, h);
                        let mut dp2 = dc0.clone();
                        for (r, u) in grid.clone() {
                            gates::gru_backward_tile(
                                gate_tiles(&mut x2, h, r.clone(), u.clone()),
                                gate_tiles(&mut y2, h, r.clone(), u.clone()),
                                tile(&h_prev, h, r.clone(), u.clone()),
                                tile(&dh, h, r.clone(), u.clone()),
                                tile_mut(&mut dp2, h, r, u),
                                accum,
                            );
                        }
                        assert_eq!(
                            (&x1, &y1, &dp1),
                            (&x2, &y2, &dp2),
                            "gru backward {accum:?} {what}"
                        );
                    }
                });
            }
        }
    }
}

#[test]
fn tiles_match_whole_steps_bitwise() {
    tiles_match_whole_steps::<f32>();
    tiles_match_whole_steps::<f64>();
}

/// Four one-unit LSTM gate tiles of `rows` rows, the last `last_rows` rows tall.
fn lstm_gates(buf: &mut [f32; 16], rows: usize, last_rows: usize) -> [MatMut<'_, f32>; 4] {
    let mut it = buf.chunks_exact_mut(4);
    core::array::from_fn(|k| {
        let n = if k == 3 { last_rows } else { rows };
        MatMut::from_row_major_slice_mut(&mut it.next().expect("a gate")[..n], n, 1)
    })
}

#[test]
#[should_panic(expected = "gate o is [2, 1], want [3, 1] (the tile's rows and units)")]
fn tile_kernels_reject_a_view_of_other_rows() {
    let (mut g, mut c, mut h) = ([0.0f32; 16], [0.0; 3], [0.0; 3]);
    gates::lstm_forward_tile(
        lstm_gates(&mut g, 3, 2),
        [&[0.0]; 4],
        MatRef::from_row_major_slice(&[0.0; 3], 3, 1),
        MatMut::from_row_major_slice_mut(&mut c, 3, 1),
        MatMut::from_row_major_slice_mut(&mut h, 3, 1),
    );
}

#[test]
#[should_panic(expected = "a bias has 2 elements, want 1 (the tile's units)")]
fn tile_kernels_reject_a_bias_of_other_units() {
    let (mut g, mut c, mut h) = ([0.0f32; 16], [0.0; 3], [0.0; 3]);
    gates::lstm_forward_tile(
        lstm_gates(&mut g, 3, 3),
        [&[0.0], &[0.0], &[0.0, 0.0], &[0.0]],
        MatRef::from_row_major_slice(&[0.0; 3], 3, 1),
        MatMut::from_row_major_slice_mut(&mut c, 3, 1),
        MatMut::from_row_major_slice_mut(&mut h, 3, 1),
    );
}

#[test]
#[should_panic(expected = "h has column stride 2: a tile's rows must be contiguous")]
fn tile_kernels_reject_a_strided_row() {
    let (mut x, mut y, mut h) = ([0.0f64; 12], [0.0; 12], [0.0; 4]);
    let h_prev = [0.0; 4];
    gates::gru_forward_tile(
        gate_tiles(&mut x, 2, 0..2, 0..2),
        gate_tiles(&mut y, 2, 0..2, 0..2),
        [&[0.0; 2]; 3],
        [&[0.0; 2]; 3],
        MatRef::from_row_major_slice(&h_prev, 2, 2),
        // Column-major: its rows are strided.
        MatMut::from_column_major_slice_mut(&mut h, 2, 2),
    );
}
