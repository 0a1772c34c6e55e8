//! Losses with their gradients in the same pass: softmax cross-entropy, and the squared,
//! absolute and Huber errors of float targets.
//!
//! Each returns the *sum* of the per-element losses and write the gradient multiplied by the
//! caller's `scale` (the reduction: `1 / count` for a mean, `1` for a sum), so the backward pass
//! starts from `dlogits` directly.

use pulp::{Simd, WithSimd};

use crate::float::Float;
use crate::lanewise::{Lanewise, zip_rows};

struct SoftmaxCeRow<'a, T> {
    dlogits: &'a mut [T],
    logits: &'a [T],
    label: usize,
    scale: T,
}

impl<T: Float> WithSimd for SoftmaxCeRow<'_, T> {
    type Output = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> T {
        let Self {
            dlogits,
            logits,
            label,
            scale,
        } = self;
        // Pass 1: the row maximum, so exp never overflows (logits of ±1e4 are fine).
        let (xv, xt) = T::as_simd::<S>(logits);
        let neg_inf = T::splat(s, T::neg_infinity());
        let mut m = neg_inf;
        for v in xv {
            m = T::vmax(s, m, *v);
        }
        // The tail is folded in as scalars, so zero-filled missing lanes never win.
        let max = xt.iter().fold(T::vreduce_max(s, m), |a, &b| {
            if b > a || b.is_nan() { b } else { a }
        });
        // Pass 2: e = exp(x - max) into dlogits, and its sum.
        let mv = T::splat(s, max);
        let (ev, et) = T::as_mut_simd::<S>(dlogits);
        let mut sum = T::splat(s, T::zero());
        for (e, x) in ev.iter_mut().zip(xv) {
            *e = T::vexp(s, T::vsub(s, *x, mv));
            sum = T::vadd(s, sum, *e);
        }
        let mut total = T::vreduce_sum(s, sum);
        if !et.is_empty() {
            let e = T::vexp(s, T::vsub(s, T::partial_load(s, xt), mv));
            T::partial_store(s, et, e);
            total += et.iter().fold(T::zero(), |a, &b| a + b);
        }
        // Pass 3: softmax * scale, then subtract scale at the label.
        let k = T::splat(s, scale / total);
        for e in ev.iter_mut() {
            *e = T::vmul(s, *e, k);
        }
        if !et.is_empty() {
            let e = T::vmul(s, T::partial_load(s, et), k);
            T::partial_store(s, et, e);
        }
        dlogits[label] -= scale;
        // loss = log Σ exp(x) - x[label] = log(total) + max - x[label]
        total.ln() + max - logits[label]
    }
}

/// Softmax cross-entropy of each row of `logits` (`[rows, classes]`) against `labels`
/// (`[rows]`): returns `Σ_rows -log softmax(logits_r)[label_r]` and writes
/// `dlogits = (softmax(logits) - onehot(labels)) * scale`.
///
/// Numerically stable: the row maximum is subtracted before `exp`, so logits of ±1e4 give a
/// finite loss and an exact one-hot gradient.
///
/// # Panics
/// If the lengths do not match `[rows, classes]` or a label is `>= classes` (the engine
/// validates labels with a typed error before it gets here).
///
/// ```
/// let mut d = [0.0f32; 2];
/// let loss = kernels::loss::softmax_cross_entropy(&mut d, &[0.0, 0.0], &[1], 2, 1.0);
/// assert!((loss - 2f32.ln()).abs() < 1e-7);
/// assert_eq!(d, [0.5, -0.5]);
/// ```
#[track_caller]
pub fn softmax_cross_entropy<T: Float>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[usize],
    classes: usize,
    scale: T,
) -> T {
    softmax_cross_entropy_smoothed(dlogits, logits, labels, classes, T::zero(), scale)
}

/// [`softmax_cross_entropy`] against smoothed labels (PyTorch's `label_smoothing = ε`): each
/// row's target is `(1 - ε) onehot(label) + ε / classes` everywhere. Returns
/// `Σ_rows [(1 - ε) (-log p_label) + ε/classes Σ_c (-log p_c)]` and writes
/// `dlogits = (softmax(logits) - target) * scale`. At `ε = 0` it is [`softmax_cross_entropy`],
/// bit for bit.
///
/// # Panics
/// As [`softmax_cross_entropy`].
///
/// ```
/// let mut d = [0.0f64; 2];
/// let loss = kernels::loss::softmax_cross_entropy_smoothed(&mut d, &[0.0, 0.0], &[1], 2, 0.2, 1.0);
/// // Uniform softmax: every class costs ln 2, whatever the target.
/// assert!((loss - 2f64.ln()).abs() < 1e-15);
/// // Target (0.1, 0.9): the gradient is 0.5 - 0.1 and 0.5 - 0.9.
/// assert!((d[0] - 0.4).abs() < 1e-15 && (d[1] + 0.4).abs() < 1e-15);
/// ```
#[track_caller]
pub fn softmax_cross_entropy_smoothed<T: Float>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[usize],
    classes: usize,
    smoothing: T,
    scale: T,
) -> T {
    ce_rows(dlogits, logits, labels, classes, |d, x, label| {
        // `log Σ exp(x) - x[label]`, the row's loss against its one-hot label.
        let hard = crate::arch::dispatch(SoftmaxCeRow {
            dlogits: d,
            logits: x,
            label,
            scale,
        });
        if smoothing == T::zero() {
            hard
        } else {
            smooth_row(d, x, label, smoothing, scale, hard)
        }
    })
}

/// Runs `row(dlogits_r, logits_r, label_r)` over the rows of a cross-entropy and sums what
/// it returns, after checking the shapes and each label.
#[track_caller]
fn ce_rows<T: Float>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[usize],
    classes: usize,
    mut row: impl FnMut(&mut [T], &[T], usize) -> T,
) -> T {
    assert!(
        logits.len() == labels.len() * classes && dlogits.len() == logits.len() && classes > 0,
        "softmax_cross_entropy: logits {} and dlogits {} must be labels {} x classes {classes}",
        logits.len(),
        dlogits.len(),
        labels.len()
    );
    let mut loss = T::zero();
    for ((d, x), &label) in dlogits
        .chunks_exact_mut(classes)
        .zip(logits.chunks_exact(classes))
        .zip(labels)
    {
        assert!(label < classes, "label {label} >= classes {classes}");
        loss += row(d, x, label);
    }
    loss
}

/// Turns one row's one-hot loss and gradient into the smoothed ones: the target moves
/// `ε` of its weight from the label to all classes evenly, so the gradient gains
/// `ε · scale` at the label and loses `ε/classes · scale` everywhere, and since
/// `-log p_c = lse - x_c`, the loss is `hard + ε (x_label - mean(x))`.
fn smooth_row<T: Float>(d: &mut [T], x: &[T], label: usize, eps: T, scale: T, hard: T) -> T {
    let classes = T::of(x.len() as f64);
    let spread = eps * scale / classes;
    d[label] += eps * scale;
    for g in d.iter_mut() {
        *g -= spread;
    }
    let mean = x.iter().fold(T::zero(), |a, &b| a + b) / classes;
    hard + eps * (x[label] - mean)
}

/// [`softmax_cross_entropy_smoothed`] with a weight per class (PyTorch's `weight`, with
/// `classes = weights.len()`): row `r`'s loss is
/// `(1 - ε) w[label_r] (-log p_label) + ε/classes Σ_c w_c (-log p_c)`, and
/// `dlogits = scale (Σ_c target_c w_c) softmax - scale (target ⊙ w)`, the gradient of that
/// loss times `scale`. Returns the sum over rows; a mean divides it by `Σ_rows w[label_r]`,
/// which is the caller's `scale`.
///
/// # Panics
/// As [`softmax_cross_entropy`], with `weights.len()` as the number of classes.
///
/// ```
/// let mut d = [0.0f64; 2];
/// let w = [1.0, 3.0];
/// let loss = kernels::loss::softmax_cross_entropy_weighted(&mut d, &[0.0, 0.0], &[1], &w, 0.0, 1.0);
/// // Uniform softmax: the label's weight times ln 2, and 3 (softmax - onehot).
/// assert!((loss - 3.0 * 2f64.ln()).abs() < 1e-15);
/// assert_eq!(d, [1.5, -1.5]);
/// ```
#[track_caller]
pub fn softmax_cross_entropy_weighted<T: Float>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[usize],
    weights: &[T],
    smoothing: T,
    scale: T,
) -> T {
    let classes = weights.len();
    let spread = smoothing / T::of(classes as f64);
    let total_weight = weights.iter().fold(T::zero(), |a, &w| a + w);
    ce_rows(dlogits, logits, labels, classes, |d, x, label| {
        let hot = (T::one() - smoothing) * weights[label];
        // The softmax's coefficient is the target's weighted mass, `Σ_c target_c w_c`.
        let hard = crate::arch::dispatch(SoftmaxCeRow {
            dlogits: d,
            logits: x,
            label,
            scale: scale * (hot + spread * total_weight),
        });
        let mut loss = hot * hard;
        if spread != T::zero() {
            let class_weights = (weights, total_weight);
            loss += weighted_spread_row(d, x, label, class_weights, (spread, scale), hard);
        }
        loss
    })
}

/// The smoothing part of one weighted row, after the row kernel wrote
/// `scale (hot + ε/C W) (p - onehot)` (`W`: `total_weight`, `spread`: `ε/C`): gives the
/// label its `ε/C W` back and takes `ε/C w_c` from every class, and returns
/// `ε/C Σ_c w_c (lse - x_c)`, with `lse = hard + x_label`.
fn weighted_spread_row<T: Float>(
    d: &mut [T],
    x: &[T],
    label: usize,
    (weights, total_weight): (&[T], T),
    (spread, scale): (T, T),
    hard: T,
) -> T {
    let lse = hard + x[label];
    let scaled = spread * scale;
    d[label] += scaled * total_weight;
    let mut weighted = T::zero();
    for ((g, &xc), &w) in d.iter_mut().zip(x).zip(weights) {
        *g -= scaled * w;
        weighted += w * (lse - xc);
    }
    spread * weighted
}

#[derive(Clone, Copy)]
struct SquaredErrorGrad<T>(T);
impl<T: Float> Lanewise<T, 2> for SquaredErrorGrad<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [y, t]: [T::Lanes<S>; 2],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vmul(s, T::vsub(s, y, t), T::splat(s, self.0))
    }
}

/// Squared error: returns `Σ (y - target)²` and writes `dy = 2 (y - target) * scale`.
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut dy = [0.0f64; 2];
/// let sse = kernels::loss::squared_error(&mut dy, &[1.0, 3.0], &[0.0, 1.0], 0.5);
/// assert_eq!(sse, 5.0);
/// assert_eq!(dy, [1.0, 2.0]);
/// ```
#[track_caller]
pub fn squared_error<T: Float>(dy: &mut [T], y: &[T], target: &[T], scale: T) -> T {
    let two_scale = scale + scale;
    elementwise_error(SquaredErrorGrad(two_scale), dy, y, target, |d| d * d)
}

/// The shape every float-target loss shares: writes `dy` through `grad` and returns
/// `Σ loss(y - target)`, summed in order from the differences themselves (not from `dy`,
/// which is scaled, and inexact for a tiny scale, or clamped).
#[track_caller]
fn elementwise_error<T: Float, G: Lanewise<T, 2>>(
    grad: G,
    dy: &mut [T],
    y: &[T],
    target: &[T],
    loss: impl Fn(T) -> T,
) -> T {
    zip_rows(grad, dy, [y, target], None);
    y.iter()
        .zip(target)
        .fold(T::zero(), |sum, (&a, &b)| sum + loss(a - b))
}

#[derive(Clone, Copy)]
struct AbsoluteErrorGrad<T>(T);
impl<T: Float> Lanewise<T, 2> for AbsoluteErrorGrad<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [y, t]: [T::Lanes<S>; 2],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let d = T::vsub(s, y, t);
        let zero = T::splat(s, T::zero());
        let (up, down) = (T::splat(s, self.0), T::splat(s, -self.0));
        let sign = T::vselect_gt(s, d, zero, up, T::vselect_lt(s, d, zero, down, zero));
        T::vkeep_nan(s, d, sign)
    }
}

/// Absolute error: returns `Σ |y - target|` and writes `dy = sign(y - target) * scale`,
/// with `sign(0) = 0` (as PyTorch's `l1_loss` backward) and NaN kept.
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut dy = [0.0f32; 3];
/// let sae = kernels::loss::absolute_error(&mut dy, &[1.0, -3.0, 2.0], &[0.0, 1.0, 2.0], 0.5);
/// assert_eq!(sae, 5.0);
/// assert_eq!(dy, [0.5, -0.5, 0.0]);
/// ```
#[track_caller]
pub fn absolute_error<T: Float>(dy: &mut [T], y: &[T], target: &[T], scale: T) -> T {
    elementwise_error(AbsoluteErrorGrad(scale), dy, y, target, T::abs)
}

#[derive(Clone, Copy)]
struct HuberGrad<T> {
    delta: T,
    scale: T,
}
impl<T: Float> Lanewise<T, 2> for HuberGrad<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [y, t]: [T::Lanes<S>; 2],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let d = T::vsub(s, y, t);
        let (lo, hi) = (T::splat(s, -self.delta), T::splat(s, self.delta));
        let clamped = T::vkeep_nan(s, d, T::vmin(s, T::vmax(s, d, lo), hi));
        T::vmul(s, clamped, T::splat(s, self.scale))
    }
}

/// Huber error with threshold `delta`: returns `Σ huber(y - target)`, where
/// `huber(d) = d² / 2` for `|d| < delta` and `delta (|d| - delta / 2)` beyond, and writes
/// `dy = clamp(y - target, -delta, delta) * scale` (PyTorch's `huber_loss`, NaN kept).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut dy = [0.0f64; 3];
/// let loss = kernels::loss::huber_error(&mut dy, &[0.5, 3.0, -2.0], &[0.0; 3], 1.0, 1.0);
/// assert_eq!(loss, 0.125 + 2.5 + 1.5);
/// assert_eq!(dy, [0.5, 1.0, -1.0]);
/// ```
#[track_caller]
pub fn huber_error<T: Float>(dy: &mut [T], y: &[T], target: &[T], delta: T, scale: T) -> T {
    let half = T::of(0.5);
    elementwise_error(HuberGrad { delta, scale }, dy, y, target, |d| {
        let z = d.abs();
        if z < delta {
            half * z * z
        } else {
            delta * (z - half * delta)
        }
    })
}

#[derive(Clone, Copy)]
struct BceGrad<T>(T);
impl<T: Float> Lanewise<T, 2> for BceGrad<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [y, t]: [T::Lanes<S>; 2],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let p = T::vsigmoid(s, y);
        T::vmul(s, T::vsub(s, p, t), T::splat(s, self.0))
    }
}

/// Binary cross-entropy on logits: returns `Σ max(y, 0) - y·target + ln(1 + e^(-|y|))`
/// (the stable form of `-target ln σ(y) - (1 - target) ln(1 - σ(y))`) and writes
/// `dy = (σ(y) - target) * scale` (PyTorch's `binary_cross_entropy_with_logits`, targets in
/// `[0, 1]` or any real, as it takes them).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut dy = [0.0f64; 2];
/// let loss = kernels::loss::bce_with_logits(&mut dy, &[0.0, 0.0], &[1.0, 0.0], 1.0);
/// assert!((loss - 2.0 * 2f64.ln()).abs() < 1e-15);
/// assert_eq!(dy, [-0.5, 0.5]);
/// ```
#[track_caller]
pub fn bce_with_logits<T: Float>(dy: &mut [T], y: &[T], target: &[T], scale: T) -> T {
    zip_rows(BceGrad(scale), dy, [y, target], None);
    y.iter().zip(target).fold(T::zero(), |sum, (&y, &t)| {
        sum + y.max(T::zero()) - y * t + (-y.abs()).exp().ln_1p()
    })
}

#[derive(Clone, Copy)]
struct WeightedBceGrad<T>(T);
impl<T: Float> Lanewise<T, 2> for WeightedBceGrad<T> {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [y, t]: [T::Lanes<S>; 2],
        pos_weight: T::Lanes<S>,
    ) -> T::Lanes<S> {
        // (1 + (w - 1) t) σ(y) - w t
        let one = T::splat(s, T::one());
        let w_t = T::vmul(s, pos_weight, t);
        let log_weight = T::vadd(s, one, T::vsub(s, w_t, t));
        let g = T::vsub(s, T::vmul(s, log_weight, T::vsigmoid(s, y)), w_t);
        T::vmul(s, g, T::splat(s, self.0))
    }
}

/// [`bce_with_logits`] with a weight per output on positive targets (PyTorch's
/// `pos_weight`, `[O]`, `y` and `target` rows of `O`): returns
/// `Σ (1 - t)·y + (1 + (w - 1)·t)·(ln(1 + e^(-|y|)) + max(-y, 0))` and writes
/// `dy = ((1 + (w - 1)·t)·σ(y) - w·t) * scale`.
///
/// # Panics
/// If the lengths differ, or `y` is not whole rows of `pos_weight`'s length.
///
/// ```
/// let mut dy = [0.0f64; 2];
/// let loss = kernels::loss::bce_with_logits_weighted(&mut dy, &[0.0, 0.0], &[1.0, 0.0], &[3.0, 3.0], 1.0);
/// assert!((loss - 4.0 * 2f64.ln()).abs() < 1e-15); // the positive counts 3 times
/// assert_eq!(dy, [-1.5, 0.5]);
/// ```
#[track_caller]
pub fn bce_with_logits_weighted<T: Float>(
    dy: &mut [T],
    y: &[T],
    target: &[T],
    pos_weight: &[T],
    scale: T,
) -> T {
    zip_rows(WeightedBceGrad(scale), dy, [y, target], Some(pos_weight));
    let weights = pos_weight.iter().cycle();
    (y.iter().zip(target).zip(weights)).fold(T::zero(), |sum, ((&y, &t), &w)| {
        let log_weight = T::one() + (w - T::one()) * t;
        let softplus = (-y.abs()).exp().ln_1p() + (-y).max(T::zero());
        sum + (T::one() - t) * y + log_weight * softplus
    })
}

/// [`bce_with_logits`] (with a `pos_weight`, [`bce_with_logits_weighted`]; empty: none)
/// with each output's terms rescaled by its `weight` (PyTorch's `BCEWithLogitsLoss(weight=w)`
/// of shape `[O]`, `y` and `target` rows of `O`): returns `Σ w·ℓ` and writes `dy` times `w`.
///
/// # Panics
/// If the lengths differ, or `y` is not whole rows of `weight`'s length (and of
/// `pos_weight`'s, when given).
///
/// ```
/// let mut dy = [0.0f64; 2];
/// let loss = kernels::loss::bce_with_logits_rescaled(&mut dy, &[0.0, 0.0], &[1.0, 0.0], &[], &[2.0, 0.5], 1.0);
/// assert!((loss - 2.5 * 2f64.ln()).abs() < 1e-15);
/// assert_eq!(dy, [-1.0, 0.25]);
/// ```
#[track_caller]
pub fn bce_with_logits_rescaled<T: Float>(
    dy: &mut [T],
    y: &[T],
    target: &[T],
    pos_weight: &[T],
    weight: &[T],
    scale: T,
) -> T {
    assert!(
        !weight.is_empty() && y.len().is_multiple_of(weight.len()),
        "{} outputs are not whole rows of {} weights",
        y.len(),
        weight.len()
    );
    if pos_weight.is_empty() {
        zip_rows(BceGrad(scale), dy, [y, target], None);
    } else {
        zip_rows(WeightedBceGrad(scale), dy, [y, target], Some(pos_weight));
    }
    for row in dy.chunks_exact_mut(weight.len()) {
        for (d, &w) in row.iter_mut().zip(weight) {
            *d *= w;
        }
    }
    let one = [T::one()];
    let pos = if pos_weight.is_empty() {
        &one[..]
    } else {
        pos_weight
    };
    let weights = weight.iter().zip(pos.iter().cycle()).cycle();
    (y.iter().zip(target).zip(weights)).fold(T::zero(), |sum, ((&y, &t), (&w, &p))| {
        let log_weight = T::one() + (p - T::one()) * t;
        let softplus = (-y.abs()).exp().ln_1p() + (-y).max(T::zero());
        sum + w * ((T::one() - t) * y + log_weight * softplus)
    })
}
