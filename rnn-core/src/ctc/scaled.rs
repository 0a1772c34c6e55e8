//! The CTC recursions on probabilities rescaled at every step (Graves et al., 2006, section
//! 4.1): a multiply-add per state and step where log space pays an `exp` and a `ln`, about
//! ten times faster. The loss is the sum of the logarithms of the scales. A sequence whose
//! scaled values fall out of f64's range ([`TINY`]) goes to [`super::log_space`] instead.

use kernels::Float;

use super::{Extended, Rows, SequenceLoss};

/// The smallest sum of a step's scaled values (and overlap of `α̂` and `β̂`) trusted. A value
/// below f64's normal range (2.2e-308) has lost precision, but it can weigh more than
/// rounding only in a sum below 2.2e-308 / ε ≈ 1e-292; every sum is checked against this
/// bound, well above that.
const TINY: f64 = 1e-280;

/// The CTC loss of one sequence's first `length` steps through `path` (and its gradient,
/// `[length, C]`, when asked), or `None` when a scaled sum falls below [`TINY`]. The target
/// must be readable in `length` steps.
pub(super) fn sequence_loss<T: Float>(
    rows: &Rows<'_, T>,
    length: usize,
    path: &Extended<'_>,
    with_grads: bool,
) -> Option<SequenceLoss> {
    let (c, states) = (rows.classes, path.states());
    let probs = softmax(rows, length);
    let (alpha, log_scale) = forward(&probs, c, path)?;
    let last = &alpha[(length - 1) * states..];
    let end = last[states - 1] + if states > 1 { last[states - 2] } else { 0.0 };
    if end < TINY {
        return None;
    }
    let loss = -(log_scale + end.ln());
    let mut grads = Vec::new();
    if with_grads {
        grads = vec![0.0; length * c];
        backward_gradient(&mut grads, &probs, &alpha, path)?;
    }
    Some(SequenceLoss { loss, grads })
}

/// `softmax` of each of the sequence's first `length` steps' logits, `[length, C]`, in f64.
fn softmax<T: Float>(rows: &Rows<'_, T>, length: usize) -> Vec<f64> {
    let mut probs = vec![0.0; length * rows.classes];
    for (t, p) in probs.chunks_exact_mut(rows.classes).enumerate() {
        let y = rows.at(t);
        let max = y.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
        for (p, v) in p.iter_mut().zip(y) {
            *p = (v.f64() - max).exp();
        }
        let scale = 1.0 / p.iter().sum::<f64>();
        p.iter_mut().for_each(|p| *p *= scale);
    }
    probs
}

/// Divides `values` by their sum and returns it, or `None` for a sum below [`TINY`].
fn normalize(values: &mut [f64]) -> Option<f64> {
    let sum: f64 = values.iter().sum();
    if sum < TINY {
        return None;
    }
    let scale = 1.0 / sum;
    values.iter_mut().for_each(|v| *v *= scale);
    Some(sum)
}

/// `α̂_t(s)`, `[length, states]`: the probability of the paths through steps `0..=t` that
/// end in state `s`, divided by the sum over `s` (each step's sum is 1); and `ln Π_t` of the
/// sums divided by, to which the log probability of the target adds that of the last step's
/// scaled end states.
fn forward(probs: &[f64], c: usize, path: &Extended<'_>) -> Option<(Vec<f64>, f64)> {
    let (length, states) = (probs.len() / c, path.states());
    let p = |t: usize, state: usize| probs[t * c + path.class(state)];
    let mut alpha = vec![0.0; length * states];
    // A path starts at the leading blank or the first label.
    for state in 0..states.min(2) {
        alpha[state] = p(0, state);
    }
    let mut log_scale = normalize(&mut alpha[..states])?.ln();
    for t in 1..length {
        let (before, now) = alpha.split_at_mut(t * states);
        let prev = &before[(t - 1) * states..];
        let now = &mut now[..states];
        for state in 0..states {
            let mut a = prev[state];
            if state >= 1 {
                a += prev[state - 1];
            }
            if path.skips_to(state) {
                a += prev[state - 2];
            }
            now[state] = a * p(t, state);
        }
        log_scale += normalize(now)?.ln();
    }
    Some((alpha, log_scale))
}

/// `β̂_t(s)`, the probability of reading the rest of the target from state `s` after step
/// `t` (scaled as `α̂`), from the last step back, and with it each step's gradient
/// `dL/dy_t(k) = softmax_t(k) - γ_t(k)`, `γ_t(k) = Σ_{class(s) = k} α̂_t(s) β̂_t(s) / Σ_s
/// α̂_t(s) β̂_t(s)` (the posterior share of the paths through class `k` at step `t`), into
/// `grads`, `[length, C]`.
fn backward_gradient(
    grads: &mut [f64],
    probs: &[f64],
    alpha: &[f64],
    path: &Extended<'_>,
) -> Option<()> {
    let states = path.states();
    let length = alpha.len() / states;
    let c = probs.len() / length;
    let mut beta = vec![0.0; states];
    // After the last step a path must be at the trailing blank or the last label.
    for state in states.saturating_sub(2)..states {
        beta[state] = 1.0;
    }
    let mut emitted = vec![0.0; states];
    let mut through = vec![0.0; c];
    for t in (0..length).rev() {
        if t + 1 < length {
            // β̂_t(s) = Σ over the states s' step t + 1 may move to of p_{t+1}(s') β̂_{t+1}(s').
            for state in 0..states {
                emitted[state] = beta[state] * probs[(t + 1) * c + path.class(state)];
            }
            for state in 0..states {
                let mut b = emitted[state];
                if state + 1 < states {
                    b += emitted[state + 1];
                }
                if state + 2 < states && path.skips_to(state + 2) {
                    b += emitted[state + 2];
                }
                beta[state] = b;
            }
            normalize(&mut beta)?;
        }
        through.fill(0.0);
        let mut overlap = 0.0;
        for (state, (a, b)) in alpha[t * states..][..states].iter().zip(&beta).enumerate() {
            let both = a * b;
            through[path.class(state)] += both;
            overlap += both;
        }
        if overlap < TINY {
            return None;
        }
        let share = 1.0 / overlap;
        let row = &mut grads[t * c..][..c];
        for ((g, p), through) in row.iter_mut().zip(&probs[t * c..][..c]).zip(&through) {
            *g = p - through * share;
        }
    }
    Some(())
}
