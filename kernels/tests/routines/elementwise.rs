//! Every elementwise kernel against a scalar `std` reference, at lengths that straddle the
//! register widths, on every instruction set this CPU has, in f32 and f64.

use crate::common::{close, random};
use approx::assert_relative_eq;
use faer::Accum;
use kernels::arch::{Isa, with_isa};
use kernels::{Float, activation, loss, optim, reduce};
use rand::{Rng, SeedableRng, rngs::StdRng};

const LENGTHS: [usize; 10] = [0, 1, 7, 15, 16, 17, 31, 33, 1000, 1023];

/// Runs `check` for every instruction set and length.
fn sweep(mut check: impl FnMut(Isa, usize, &mut StdRng)) {
    let mut rng = StdRng::seed_from_u64(0);
    for isa in Isa::available() {
        for n in LENGTHS {
            with_isa(isa, || check(isa, n, &mut rng));
        }
    }
}

fn activations_match<T: Float>() {
    let tol = T::EPSILON.f64() * 4.0;
    sweep(|isa, n, rng| {
        let z: Vec<T> = random(rng, n, 6.0);
        let mut out = vec![T::zero(); n];
        activation::tanh(&mut out, &z);
        close(
            &out,
            &z.iter().map(|x| x.f64().tanh()).collect::<Vec<_>>(),
            tol,
            &format!("tanh {isa:?}"),
        );
        activation::sigmoid(&mut out, &z);
        let sig: Vec<f64> = z.iter().map(|x| 1.0 / (1.0 + (-x.f64()).exp())).collect();
        close(&out, &sig, tol, &format!("sigmoid {isa:?}"));

        // Bias broadcast over rows: 3 rows of n/3 (or one row).
        for rows in [1, 3] {
            if n % rows != 0 || n == 0 {
                continue;
            }
            let bias: Vec<T> = random(rng, n / rows, 1.0);
            let b = |i: usize| bias[i % bias.len()].f64();
            activation::bias_tanh(&mut out, &z, &bias);
            let want: Vec<f64> = z
                .iter()
                .enumerate()
                .map(|(i, x)| (x.f64() + b(i)).tanh())
                .collect();
            close(&out, &want, tol, "bias_tanh");
            activation::bias_relu(&mut out, &z, &bias);
            let want: Vec<f64> = z
                .iter()
                .enumerate()
                .map(|(i, x)| (x.f64() + b(i)).max(0.0))
                .collect();
            close(&out, &want, tol, "bias_relu");
        }

        let (dy, y): (Vec<T>, Vec<T>) = (random(rng, n, 2.0), random(rng, n, 1.0));
        let init: Vec<T> = random(rng, n, 1.0);
        for accum in [Accum::Replace, Accum::Add] {
            let base = |i: usize| {
                if matches!(accum, Accum::Add) {
                    init[i].f64()
                } else {
                    0.0
                }
            };
            let mut d = init.clone();
            activation::tanh_backward(&mut d, accum, &dy, &y);
            let want: Vec<f64> = (0..n)
                .map(|i| base(i) + dy[i].f64() * (1.0 - y[i].f64() * y[i].f64()))
                .collect();
            close(&d, &want, tol, "tanh_backward");
            let mut d = init.clone();
            activation::relu_backward(&mut d, accum, &dy, &y);
            let want: Vec<f64> = (0..n)
                .map(|i| base(i) + if y[i].f64() > 0.0 { dy[i].f64() } else { 0.0 })
                .collect();
            close(&d, &want, tol, "relu_backward");
            if matches!(accum, Accum::Replace) {
                // In place must equal out of place, bitwise.
                let mut out = init.clone();
                activation::tanh_backward(&mut out, accum, &dy, &y);
                let mut g = dy.clone();
                activation::tanh_backward_in_place(&mut g, &y);
                assert_eq!(g, out, "tanh_backward_in_place {isa:?}");
                activation::relu_backward(&mut out, accum, &dy, &y);
                let mut g = dy.clone();
                activation::relu_backward_in_place(&mut g, &y);
                assert_eq!(g, out, "relu_backward_in_place {isa:?}");
            }
            let mut d = init.clone();
            activation::sigmoid_backward(&mut d, accum, &dy, &y);
            let want: Vec<f64> = (0..n)
                .map(|i| base(i) + dy[i].f64() * y[i].f64() * (1.0 - y[i].f64()))
                .collect();
            close(&d, &want, tol, "sigmoid_backward");
        }
    });
}

#[test]
fn activations_match_reference_f32() {
    activations_match::<f32>();
}

#[test]
fn activations_match_reference_f64() {
    activations_match::<f64>();
}

/// tanh within `tol` absolute of std over a dense sweep of [-20, 20]. f32's rational fit
/// erred by at most 2.45 eps over every f32 in `(0, 9.5]` (AVX-512, measured once
/// exhaustively), and by 2.72 eps in this sweep on the scalar path.
fn tanh_dense_sweep<T: Float>(tol: f64) {
    let n = 400_001;
    let x: Vec<T> = (0..n)
        .map(|i| T::of(-20.0 + 40.0 * i as f64 / (n - 1) as f64))
        .collect();
    for isa in Isa::available() {
        let mut y = vec![T::zero(); n];
        with_isa(isa, || activation::tanh(&mut y, &x));
        let worst = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a.f64().tanh() - b.f64()).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= tol,
            "{isa:?} {}: worst tanh error {worst:e}",
            T::NAME
        );
    }
}

#[test]
fn tanh_is_accurate_f32() {
    tanh_dense_sweep::<f32>(3.0 * f64::from(f32::EPSILON));
}

#[test]
fn tanh_is_accurate_f64() {
    tanh_dense_sweep::<f64>(1e-14);
}

fn tanh_edges<T: Float>() {
    let inf = T::infinity();
    let x = [
        T::zero(),
        -T::zero(),
        T::of(4e-4),
        T::of(8.0),
        T::of(-8.0),
        T::of(25.0),
        T::of(-25.0),
        inf,
        -inf,
        T::nan(),
    ];
    for isa in Isa::available() {
        let mut y = [T::zero(); 10];
        with_isa(isa, || activation::tanh(&mut y, &x));
        assert_eq!(y[0], T::zero());
        assert!(
            y[1] == T::zero() && y[1].is_sign_negative(),
            "tanh(-0) = -0"
        );
        assert_relative_eq!(
            y[2].f64(),
            (4e-4f64).tanh(),
            max_relative = 4.0 * T::EPSILON.f64()
        );
        assert_relative_eq!(y[3].f64(), 8f64.tanh(), epsilon = 2.0 * T::EPSILON.f64());
        assert_eq!(y[4], -y[3], "tanh is odd");
        assert_eq!(
            &y[5..9],
            &[T::one(), -T::one(), T::one(), -T::one()],
            "exactly ±1 past saturation"
        );
        assert!(y[9].is_nan(), "NaN in, NaN out");
        let mut s = [T::zero(); 10];
        with_isa(isa, || activation::sigmoid(&mut s, &x));
        assert_eq!(s[7], T::one());
        assert_eq!(s[8], T::zero());
        assert!(s[9].is_nan());
        let mut r = [T::zero(); 10];
        with_isa(isa, || activation::bias_relu(&mut r, &x, &[T::zero()]));
        assert!(r[9].is_nan(), "relu keeps NaN");
    }
}

#[test]
fn tanh_sigmoid_edges() {
    tanh_edges::<f32>();
    tanh_edges::<f64>();
}

fn losses_match<T: Float>() {
    let tol = T::EPSILON.f64() * 16.0;
    sweep(|isa, n, rng| {
        // Softmax CE over 3 rows of n classes (n > 0).
        if n > 0 {
            let rows = 3;
            let logits: Vec<T> = random(rng, rows * n, 8.0);
            let labels: Vec<usize> = (0..rows).map(|_| rng.random_range(0..n)).collect();
            let mut d = vec![T::zero(); rows * n];
            let l = loss::softmax_cross_entropy(&mut d, &logits, &labels, n, T::of(0.5));
            let (mut want_l, mut want_d) = (0.0, vec![0.0; rows * n]);
            for r in 0..rows {
                let row: Vec<f64> = logits[r * n..(r + 1) * n].iter().map(|x| x.f64()).collect();
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
                want_l += z.ln() + m - row[labels[r]];
                for j in 0..n {
                    want_d[r * n + j] =
                        0.5 * ((row[j] - m).exp() / z - if j == labels[r] { 1.0 } else { 0.0 });
                }
            }
            close(&d, &want_d, tol, &format!("ce grad {isa:?}"));
            assert_relative_eq!(l.f64(), want_l, max_relative = tol * 10.0);
            // Label smoothing: target (1 - ε) onehot + ε/n, loss -Σ target log p.
            let eps = 0.3;
            let mut ds = vec![T::zero(); rows * n];
            let ls = loss::softmax_cross_entropy_smoothed(
                &mut ds,
                &logits,
                &labels,
                n,
                T::of(eps),
                T::of(0.5),
            );
            let (mut want_l, mut want_d) = (0.0, vec![0.0; rows * n]);
            for r in 0..rows {
                let row: Vec<f64> = logits[r * n..(r + 1) * n].iter().map(|x| x.f64()).collect();
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                for j in 0..n {
                    let hot = if j == labels[r] { 1.0 } else { 0.0 };
                    let target = (1.0 - eps) * hot + eps / n as f64;
                    want_l += target * (lse - row[j]);
                    want_d[r * n + j] = 0.5 * ((row[j] - lse).exp() - target);
                }
            }
            close(&ds, &want_d, tol, &format!("smoothed ce grad {isa:?}"));
            assert_relative_eq!(ls.f64(), want_l, max_relative = tol * 10.0, epsilon = tol);
            // ε = 0 is the one-hot loss, bit for bit.
            let mut d0 = vec![T::zero(); rows * n];
            let l0 = loss::softmax_cross_entropy_smoothed(
                &mut d0,
                &logits,
                &labels,
                n,
                T::zero(),
                T::of(0.5),
            );
            assert!(l0 == l && d0 == d, "ε = 0 differs from the one-hot loss");
            // Class weights, with and without smoothing: row loss
            // Σ_c target_c w_c (lse - x_c), gradient (Σ_c target_c w_c) p - target ⊙ w.
            let weights: Vec<T> = (0..n).map(|_| T::of(rng.random_range(0.0..3.0))).collect();
            for eps in [0.0, 0.3] {
                let mut dw = vec![T::zero(); rows * n];
                let lw = loss::softmax_cross_entropy_weighted(
                    &mut dw,
                    &logits,
                    &labels,
                    &weights,
                    T::of(eps),
                    T::of(0.5),
                );
                let (mut want_l, mut want_d) = (0.0, vec![0.0; rows * n]);
                for r in 0..rows {
                    let row: Vec<f64> =
                        logits[r * n..(r + 1) * n].iter().map(|x| x.f64()).collect();
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                    let target = |j: usize| {
                        let hot = if j == labels[r] { 1.0 } else { 0.0 };
                        (1.0 - eps) * hot + eps / n as f64
                    };
                    let mass: f64 = (0..n).map(|j| target(j) * weights[j].f64()).sum();
                    for j in 0..n {
                        let tw = target(j) * weights[j].f64();
                        want_l += tw * (lse - row[j]);
                        want_d[r * n + j] = 0.5 * (mass * (row[j] - lse).exp() - tw);
                    }
                }
                let what = format!("weighted ce (ε = {eps}) grad {isa:?}");
                close(&dw, &want_d, tol * 4.0, &what);
                assert_relative_eq!(lw.f64(), want_l, max_relative = tol * 10.0, epsilon = tol);
            }
            // Unit weights are the unweighted loss, to rounding.
            let ones = vec![T::one(); n];
            let mut d1 = vec![T::zero(); rows * n];
            let l1 = loss::softmax_cross_entropy_weighted(
                &mut d1,
                &logits,
                &labels,
                &ones,
                T::of(eps),
                T::of(0.5),
            );
            let unweighted: Vec<f64> = ds.iter().map(|g| g.f64()).collect();
            close(
                &d1,
                &unweighted,
                tol * 4.0,
                &format!("unit weights {isa:?}"),
            );
            assert_relative_eq!(l1.f64(), ls.f64(), max_relative = tol * 10.0, epsilon = tol);
        }
        let (y, t): (Vec<T>, Vec<T>) = (random(rng, n, 3.0), random(rng, n, 3.0));
        let mut dy = vec![T::zero(); n];
        let sse = loss::squared_error(&mut dy, &y, &t, T::of(0.25));
        let want: f64 = y
            .iter()
            .zip(&t)
            .map(|(a, b)| (a.f64() - b.f64()).powi(2))
            .sum();
        assert_relative_eq!(sse.f64(), want, max_relative = tol * 10.0, epsilon = tol);
        let want_d: Vec<f64> = y
            .iter()
            .zip(&t)
            .map(|(a, b)| 0.5 * (a.f64() - b.f64()))
            .collect();
        close(&dy, &want_d, tol, "mse grad");
    });
}

#[test]
fn losses_match_reference() {
    losses_match::<f32>();
    losses_match::<f64>();
}

/// L1 and Huber against f64 references, on every ISA and length, with exact ties planted:
/// `y == target` (L1's and Huber's gradient 0) and `|y - target| == delta` (Huber's seam,
/// where both branches give `delta² / 2` and the gradient is `±delta`).
fn robust_losses_match<T: Float>() {
    let tol = T::EPSILON.f64() * 16.0;
    let delta = 0.75;
    sweep(|isa, n, rng| {
        let (mut y, mut t): (Vec<T>, Vec<T>) = (random(rng, n, 3.0), random(rng, n, 3.0));
        for i in 0..n {
            match i % 7 {
                0 => t[i] = y[i],
                3 => (y[i], t[i]) = (T::of(-delta), T::zero()),
                _ => {}
            }
        }
        let diffs: Vec<f64> = y.iter().zip(&t).map(|(a, b)| a.f64() - b.f64()).collect();
        let mut dy = vec![T::zero(); n];

        let sae = loss::absolute_error(&mut dy, &y, &t, T::of(0.25));
        let want: f64 = diffs.iter().map(|d| d.abs()).sum();
        assert_relative_eq!(sae.f64(), want, max_relative = tol * 10.0, epsilon = tol);
        let want_d: Vec<f64> = diffs
            .iter()
            .map(|&d| if d == 0.0 { 0.0 } else { 0.25 * d.signum() })
            .collect();
        close(&dy, &want_d, 0.0, &format!("l1 grad {isa:?}"));

        let loss = loss::huber_error(&mut dy, &y, &t, T::of(delta), T::of(0.5));
        let huber = |d: f64| {
            if d.abs() < delta {
                0.5 * d * d
            } else {
                delta * (d.abs() - 0.5 * delta)
            }
        };
        let want: f64 = diffs.iter().map(|&d| huber(d)).sum();
        assert_relative_eq!(loss.f64(), want, max_relative = tol * 10.0, epsilon = tol);
        let want_d: Vec<f64> = diffs
            .iter()
            .map(|&d| 0.5 * d.clamp(-delta, delta))
            .collect();
        close(&dy, &want_d, tol, &format!("huber grad {isa:?}"));
    });
    // NaN stays NaN in both gradients (a diverged model must not look converged).
    let mut dy = [T::zero(); 3];
    loss::absolute_error(
        &mut dy,
        &[T::nan(), T::one(), T::one()],
        &[T::zero(); 3],
        T::one(),
    );
    assert!(dy[0].is_nan() && dy[1] == T::one());
    loss::huber_error(
        &mut dy,
        &[T::nan(), T::one(), T::one()],
        &[T::zero(); 3],
        T::one(),
        T::one(),
    );
    assert!(dy[0].is_nan() && dy[1] == T::one());
}

/// Binary cross-entropy on logits against its f64 reference, on every ISA and length, with
/// logits far out on both sides (where a naive `ln σ(y)` would overflow) and soft targets.
fn bce_matches<T: Float>() {
    let tol = T::EPSILON.f64() * 16.0;
    sweep(|isa, n, rng| {
        let mut y: Vec<T> = random(rng, n, 4.0);
        let t: Vec<T> = random::<T>(rng, n, 0.5)
            .iter()
            .map(|&v| v + T::of(0.5))
            .collect();
        for i in (0..n).step_by(5) {
            y[i] = T::of(if i % 2 == 0 { 60.0 } else { -60.0 });
        }
        let mut dy = vec![T::zero(); n];
        let loss = loss::bce_with_logits(&mut dy, &y, &t, T::of(0.5));
        let reference = |y: f64, t: f64| y.max(0.0) - y * t + (-y.abs()).exp().ln_1p();
        let want: f64 = y
            .iter()
            .zip(&t)
            .map(|(a, b)| reference(a.f64(), b.f64()))
            .sum();
        assert_relative_eq!(loss.f64(), want, max_relative = tol * 10.0, epsilon = tol);
        let sigmoid = |y: f64| 1.0 / (1.0 + (-y).exp());
        let want_d: Vec<f64> = y
            .iter()
            .zip(&t)
            .map(|(a, b)| 0.5 * (sigmoid(a.f64()) - b.f64()))
            .collect();
        close(&dy, &want_d, tol, &format!("bce grad {isa:?}"));
        // Positive weights per output (rows of 3, the last row partial when n is not a
        // multiple: only whole rows here).
        let whole = n - n % 3;
        let w = [T::of(0.5), T::of(3.0), T::one()];
        let mut dy = vec![T::zero(); whole];
        let loss =
            loss::bce_with_logits_weighted(&mut dy, &y[..whole], &t[..whole], &w, T::of(0.5));
        let (mut want, mut want_d) = (0.0, Vec::new());
        for (k, (a, b)) in y[..whole].iter().zip(&t[..whole]).enumerate() {
            let (y, t, w) = (a.f64(), b.f64(), w[k % 3].f64());
            let log_weight = 1.0 + (w - 1.0) * t;
            want += (1.0 - t) * y + log_weight * ((-y.abs()).exp().ln_1p() + (-y).max(0.0));
            want_d.push(0.5 * (log_weight * sigmoid(y) - w * t));
        }
        assert_relative_eq!(loss.f64(), want, max_relative = tol * 10.0, epsilon = tol);
        close(
            &dy,
            &want_d,
            tol * 4.0,
            &format!("weighted bce grad {isa:?}"),
        );
        // Each output's terms rescaled (PyTorch's `weight`), with and without those positive
        // weights.
        let rescale = [T::of(2.0), T::of(0.25), T::of(1.5)];
        for pos in [&[][..], &w[..]] {
            let mut dy = vec![T::zero(); whole];
            let (y, t) = (&y[..whole], &t[..whole]);
            let loss = loss::bce_with_logits_rescaled(&mut dy, y, t, pos, &rescale, T::of(0.5));
            let (mut want, mut want_d) = (0.0, Vec::new());
            for (k, (a, b)) in y.iter().zip(t).enumerate() {
                let (y, t, r) = (a.f64(), b.f64(), rescale[k % 3].f64());
                let w = pos.get(k % 3).map_or(1.0, |w| w.f64());
                let log_weight = 1.0 + (w - 1.0) * t;
                let term = (1.0 - t) * y + log_weight * ((-y.abs()).exp().ln_1p() + (-y).max(0.0));
                want += r * term;
                want_d.push(0.5 * r * (log_weight * sigmoid(y) - w * t));
            }
            assert_relative_eq!(loss.f64(), want, max_relative = tol * 10.0, epsilon = tol);
            let what = format!("rescaled bce grad {isa:?}, {} pos weights", pos.len());
            close(&dy, &want_d, tol * 4.0, &what);
        }
    });
}

#[test]
fn bce_matches_reference() {
    bce_matches::<f32>();
    bce_matches::<f64>();
}

#[test]
fn robust_losses_match_reference() {
    robust_losses_match::<f32>();
    robust_losses_match::<f64>();
}

#[test]
fn softmax_survives_huge_logits() {
    for isa in Isa::available() {
        let logits = [1e4f32, -1e4, 0.0, 1e4 - 1.0];
        let mut d = [0.0f32; 4];
        let l = with_isa(isa, || {
            loss::softmax_cross_entropy(&mut d, &logits, &[1], 4, 1.0)
        });
        assert!(l.is_finite());
        assert_relative_eq!(
            l,
            2e4 + (1.0f32 + (-1.0f32).exp()).ln(),
            max_relative = 1e-6
        );
        assert!(d.iter().all(|x| x.is_finite()));
        assert_eq!(d[1], -1.0);
    }
}

fn reductions_match<T: Float>() {
    let tol = T::EPSILON.f64() * 64.0;
    sweep(|isa, n, rng| {
        let x: Vec<T> = random(rng, n, 2.0);
        let ss = reduce::sum_squares(&x).f64();
        let want: f64 = x.iter().map(|v| v.f64().powi(2)).sum();
        assert_relative_eq!(ss, want, max_relative = tol, epsilon = tol);

        for cols in [1, 7, 17] {
            let rows = n / cols;
            let src = &x[..rows * cols];
            let init: Vec<T> = random(rng, cols, 1.0);
            for accum in [Accum::Replace, Accum::Add] {
                let mut dst = init.clone();
                reduce::col_sums(&mut dst, accum, src);
                let want: Vec<f64> = (0..cols)
                    .map(|j| {
                        let b = if matches!(accum, Accum::Add) {
                            init[j].f64()
                        } else {
                            0.0
                        };
                        b + (0..rows).map(|r| src[r * cols + j].f64()).sum::<f64>()
                    })
                    .collect();
                close(&dst, &want, tol, "col_sums");
                // Any split of the columns gives the same bits.
                for cut in [0, cols / 2, cols] {
                    let mut parts = init.clone();
                    let (lo, hi) = parts.split_at_mut(cut);
                    reduce::col_sums_of(lo, accum, src, cols, 0);
                    reduce::col_sums_of(hi, accum, src, cols, cut);
                    assert_eq!(parts, dst, "col_sums_of split at {cut} of {cols}");
                }
            }
        }
        let y0: Vec<T> = random(rng, n, 1.0);
        let mut y = y0.clone();
        reduce::axpy(&mut y, T::of(-1.5), &x);
        close(
            &y,
            &(0..n)
                .map(|i| y0[i].f64() - 1.5 * x[i].f64())
                .collect::<Vec<_>>(),
            tol,
            "axpy",
        );
        // lerp against the scalar formula (PyTorch's), both sides of ½: bit for bit where
        // the instruction set fuses multiply-adds (the scalar code does not).
        for weight in [0.001, 0.25, 0.5, 0.7, 1.0] {
            let mut a = y0.clone();
            reduce::lerp(&mut a, &x, T::of(weight));
            let w = T::of(weight);
            for (i, &got) in a.iter().enumerate() {
                let d = x[i] - y0[i];
                let want = match weight < 0.5 {
                    true => w.mul_add(d, y0[i]),
                    false => (w - T::one()).mul_add(d, x[i]),
                };
                match isa {
                    Isa::Scalar => {
                        assert!((got - want).abs() <= T::of(tol) * want.abs().max(T::one()))
                    }
                    _ => assert_eq!(got, want, "lerp({weight}) at {i} of {n} ({isa:?})"),
                }
            }
        }
        reduce::scale(&mut y, T::of(2.0));
        close(
            &y,
            &(0..n)
                .map(|i| 2.0 * (y0[i].f64() - 1.5 * x[i].f64()))
                .collect::<Vec<_>>(),
            tol,
            "scale",
        );
        let mut c = x.clone();
        reduce::clamp(&mut c, T::of(-1.0), T::of(0.5));
        close(
            &c,
            &x.iter()
                .map(|v| v.f64().clamp(-1.0, 0.5))
                .collect::<Vec<_>>(),
            0.0,
            "clamp",
        );
    });
}

#[test]
fn reductions_match_reference() {
    reductions_match::<f32>();
    reductions_match::<f64>();
}

fn optimizers_match<T: Float>() {
    let tol = T::EPSILON.f64() * 16.0;
    sweep(|isa, n, rng| {
        let (p0, g): (Vec<T>, Vec<T>) = (random(rng, n, 1.0), random(rng, n, 1.0));
        let v0: Vec<T> = random(rng, n, 0.1);
        for nesterov in [false, true] {
            let h = optim::SgdStep {
                lr: T::of(0.1),
                momentum: T::of(0.9),
                weight_decay: T::of(0.01),
                nesterov,
                grad_scale: T::of(0.5),
            };
            let (mut p, mut v) = (p0.clone(), v0.clone());
            optim::sgd(&mut p, &mut v, &g, h);
            let (mut wp, mut wv) = (vec![0.0; n], vec![0.0; n]);
            for i in 0..n {
                let gi = 0.5 * g[i].f64() + 0.01 * p0[i].f64();
                wv[i] = 0.9 * v0[i].f64() + gi;
                let dir = if nesterov { gi + 0.9 * wv[i] } else { wv[i] };
                wp[i] = p0[i].f64() - 0.1 * dir;
            }
            close(&p, &wp, tol, &format!("sgd p {isa:?}"));
            close(&v, &wv, tol, "sgd v");
        }
        let m0: Vec<T> = random(rng, n, 0.1);
        let s0: Vec<T> = (0..n).map(|_| T::of(rng.random_range(0.0..0.1))).collect();
        for decoupled in [false, true] {
            let h = optim::AdamStep {
                lr: T::of(0.01),
                beta1: T::of(0.9),
                beta2: T::of(0.999),
                eps: T::of(1e-8),
                weight_decay: T::of(0.1),
                decoupled,
                step: 3,
                grad_scale: T::of(0.5),
            };
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), s0.clone());
            optim::adam(&mut p, &mut m, &mut v, &g, h);
            for i in 0..n {
                let mut gi = 0.5 * g[i].f64();
                let mut pi = p0[i].f64();
                if decoupled {
                    pi *= 1.0 - 0.01 * 0.1
                } else {
                    gi += 0.1 * pi
                }
                let mi = 0.9 * m0[i].f64() + 0.1 * gi;
                let vi = 0.999 * s0[i].f64() + 0.001 * gi * gi;
                let denom = vi.sqrt() / (1.0 - 0.999f64.powi(3)).sqrt() + 1e-8;
                pi -= 0.01 / (1.0 - 0.9f64.powi(3)) * mi / denom;
                for (got, want, what) in [(p[i], pi, "p"), (m[i], mi, "m"), (v[i], vi, "v")] {
                    assert!(
                        (got.f64() - want).abs() <= tol * (1.0 + want.abs()) * 8.0,
                        "adam {what} {isa:?} at {i}: {got} vs {want}"
                    );
                }
            }
        }
        {
            let h = optim::AdagradStep {
                lr: T::of(0.05),
                eps: T::of(1e-10),
                weight_decay: T::of(0.1),
                grad_scale: T::of(0.5),
            };
            let (mut p, mut sum) = (p0.clone(), s0.clone());
            optim::adagrad(&mut p, &mut sum, &g, h);
            for i in 0..n {
                let gi = 0.5 * g[i].f64() + 0.1 * p0[i].f64();
                let si = s0[i].f64() + gi * gi;
                let pi = p0[i].f64() - 0.05 * gi / (si.sqrt() + 1e-10);
                for (got, want, what) in [(p[i], pi, "p"), (sum[i], si, "sum")] {
                    assert!(
                        (got.f64() - want).abs() <= tol * (1.0 + want.abs()) * 8.0,
                        "adagrad {what} {isa:?} at {i}: {got} vs {want}"
                    );
                }
            }
        }
        // Square averages well above avg², so the centered variance is far from 0.
        let (b0, sq0): (Vec<T>, Vec<T>) = (
            random(rng, n, 0.1),
            s0.iter().map(|&v| v + T::of(0.05)).collect(),
        );
        for (momentum, centered) in [(0.0, false), (0.0, true), (0.7, false), (0.7, true)] {
            let h = optim::RmsPropStep {
                lr: T::of(0.01),
                alpha: T::of(0.9),
                eps: T::of(1e-8),
                weight_decay: T::of(0.1),
                momentum: T::of(momentum),
                centered,
                grad_scale: T::of(0.5),
            };
            let used = |on: bool, v: &[T]| if on { v.to_vec() } else { Vec::new() };
            let (mut p, mut sq) = (p0.clone(), sq0.clone());
            let (mut buf, mut avg) = (used(momentum > 0.0, &b0), used(centered, &m0));
            optim::rmsprop(&mut p, &mut sq, &mut buf, &mut avg, &g, h);
            for i in 0..n {
                let gi = 0.5 * g[i].f64() + 0.1 * p0[i].f64();
                let si = 0.9 * sq0[i].f64() + 0.1 * gi * gi;
                let ai = m0[i].f64() + 0.1 * (gi - m0[i].f64());
                let var = if centered {
                    (si - ai * ai).max(0.0)
                } else {
                    si
                };
                let di = gi / (var.sqrt() + 1e-8);
                let bi = momentum * b0[i].f64() + di;
                let pi = p0[i].f64() - 0.01 * if momentum > 0.0 { bi } else { di };
                let mut checks = vec![(p[i], pi, "p"), (sq[i], si, "sq")];
                if momentum > 0.0 {
                    checks.push((buf[i], bi, "buf"));
                }
                if centered {
                    checks.push((avg[i], ai, "avg"));
                }
                for (got, want, what) in checks {
                    // sq - avg² cancels: its error is relative to sq, not to the variance.
                    let scale = 1.0 + want.abs() + si / var;
                    assert!(
                        (got.f64() - want).abs() <= tol * scale * 8.0,
                        "rmsprop {what} {isa:?} at {i} (momentum {momentum}, centered \
                         {centered}): {got} vs {want}"
                    );
                }
            }
        }
    });
}

#[test]
fn optimizers_match_reference() {
    optimizers_match::<f32>();
    optimizers_match::<f64>();
}

/// The vector body and the tail must round identically, so results cannot depend on where a
/// buffer is split: compare a whole-buffer call with element-by-element calls.
#[test]
fn tail_rounds_like_body() {
    let mut rng = StdRng::seed_from_u64(1);
    let x: Vec<f32> = random(&mut rng, 1000, 5.0);
    for isa in Isa::available() {
        with_isa(isa, || {
            let mut whole = vec![0.0f32; 1000];
            activation::tanh(&mut whole, &x);
            for (i, xi) in x.iter().enumerate() {
                let mut one = [0.0f32];
                activation::tanh(&mut one, &[*xi]);
                assert_eq!(one[0].to_bits(), whole[i].to_bits(), "{isa:?} at {i}");
            }
        });
    }
}

/// Flush-to-zero: subnormal results become zero while it is on, and the previous mode comes
/// back when restored (so it can be scoped).
#[cfg(target_arch = "x86_64")]
#[test]
fn flush_denormals_is_scoped_per_thread() {
    use kernels::arch::set_flush_denormals;
    use std::hint::black_box;
    let half_min = || black_box(f32::MIN_POSITIVE) * black_box(0.5f32);
    let was = set_flush_denormals(false);
    assert!(half_min() > 0.0, "subnormals are kept by default");
    // A thread that already runs keeps its own mode (new threads inherit the creator's).
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        wait.recv().unwrap();
        half_min() > 0.0
    });
    assert!(!set_flush_denormals(true));
    assert_eq!(half_min(), 0.0);
    // Vector kernels too: a row of subnormal products.
    let mut out = [1.0f32; 19];
    reduce::scale(&mut out, black_box(f32::MIN_POSITIVE * 0.25));
    let mut tiny = [f32::MIN_POSITIVE; 19];
    reduce::scale(&mut tiny, black_box(0.5));
    assert!(tiny.iter().all(|&v| v == 0.0), "{tiny:?}");
    assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
    go.send(()).unwrap();
    assert!(other.join().unwrap(), "another thread's mode changed");
    assert!(set_flush_denormals(was));
    assert!(half_min() > 0.0);
}
