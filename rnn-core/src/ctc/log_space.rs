//! The CTC recursions in log space: exact whatever the probabilities (a path of
//! probability `e^-10000` is a finite loss), at the cost of an `exp` and a `ln` per state and
//! step. The fast path ([`super::scaled`]) hands a sequence here when its scaled
//! probabilities would lose precision.

use kernels::Float;

use super::{Extended, Rows, SequenceLoss};

/// The CTC loss of one sequence's first `length` steps against `target` (and its gradient,
/// `[length, C]`, when asked), by the forward-backward recursions in log space.
pub(super) fn sequence_loss<T: Float>(
    rows: &Rows<'_, T>,
    length: usize,
    path: &Extended<'_>,
    with_grads: bool,
) -> SequenceLoss {
    let log_probs = log_softmax(rows, length);
    let alpha = forward(&log_probs, rows.classes, path);
    let states = path.states();
    let last = &alpha[(length - 1) * states..];
    let log_likelihood = match states {
        1 => last[0],
        _ => log_add(last[states - 1], last[states - 2]),
    };
    let loss = -log_likelihood;
    let mut grads = Vec::new();
    if with_grads {
        grads = vec![0.0; length * rows.classes];
        // A target no path reads takes no gradient (zero_infinity's; a trainer rejects its
        // step otherwise).
        if loss.is_finite() {
            let beta = backward(&log_probs, rows.classes, path);
            gradient(
                &mut grads,
                rows.classes,
                &log_probs,
                &alpha,
                &beta,
                path,
                loss,
            );
        }
    }
    SequenceLoss { loss, grads }
}

/// `log softmax` of each of the sequence's first `length` steps' logits, `[length, C]`, in
/// f64.
fn log_softmax<T: Float>(rows: &Rows<'_, T>, length: usize) -> Vec<f64> {
    let mut log_probs = vec![0.0; length * rows.classes];
    for (t, lp) in log_probs.chunks_exact_mut(rows.classes).enumerate() {
        let y = rows.at(t);
        let max = y.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
        let sum: f64 = y.iter().map(|v| (v.f64() - max).exp()).sum();
        let norm = max + sum.ln();
        for (lp, v) in lp.iter_mut().zip(y) {
            *lp = v.f64() - norm;
        }
    }
    log_probs
}

/// `α_t(s)`, `[length, states]`: the log probability of the paths through steps `0..=t`
/// that end in state `s` having read the target's labels up to it.
fn forward(log_probs: &[f64], c: usize, path: &Extended<'_>) -> Vec<f64> {
    let (length, states) = (log_probs.len() / c, path.states());
    let lp = |t: usize, state: usize| log_probs[t * c + path.class(state)];
    let mut alpha = vec![f64::NEG_INFINITY; length * states];
    // A path starts at the leading blank or the first label.
    for state in 0..states.min(2) {
        alpha[state] = lp(0, state);
    }
    for t in 1..length {
        let (before, now) = alpha.split_at_mut(t * states);
        let prev = &before[(t - 1) * states..];
        for state in 0..states {
            let mut a = prev[state];
            if state >= 1 {
                a = log_add(a, prev[state - 1]);
            }
            if path.skips_to(state) {
                a = log_add(a, prev[state - 2]);
            }
            now[state] = a + lp(t, state);
        }
    }
    alpha
}

/// `β_t(s)`, `[length, states]`: the log probability of the paths through steps
/// `t..length` that start in state `s` and read the rest of the target.
fn backward(log_probs: &[f64], c: usize, path: &Extended<'_>) -> Vec<f64> {
    let (length, states) = (log_probs.len() / c, path.states());
    let lp = |t: usize, state: usize| log_probs[t * c + path.class(state)];
    let mut beta = vec![f64::NEG_INFINITY; length * states];
    // A path ends at the trailing blank or the last label.
    for state in states.saturating_sub(2)..states {
        beta[(length - 1) * states + state] = lp(length - 1, state);
    }
    for t in (0..length - 1).rev() {
        let (now, after) = beta.split_at_mut((t + 1) * states);
        let next = &after[..states];
        let now = &mut now[t * states..];
        for state in 0..states {
            let mut b = next[state];
            if state + 1 < states {
                b = log_add(b, next[state + 1]);
            }
            if state + 2 < states && path.skips_to(state + 2) {
                b = log_add(b, next[state + 2]);
            }
            now[state] = b + lp(t, state);
        }
    }
    beta
}

/// `dL/dy_t(k) = softmax_t(k) - γ_t(k)`, `γ_t(k) = Σ_{class(s) = k} α_t(s) β_t(s) / (p_t(k)
/// p(target))` the posterior share of the paths through class `k` at step `t` (`α` and `β`
/// both hold step `t`'s probability, hence the division), into `grads` `[length, C]`.
fn gradient(
    grads: &mut [f64],
    c: usize,
    log_probs: &[f64],
    alpha: &[f64],
    beta: &[f64],
    path: &Extended<'_>,
    loss: f64,
) {
    let states = path.states();
    let mut through = vec![f64::NEG_INFINITY; c];
    for (t, row) in grads.chunks_exact_mut(c).enumerate() {
        through.fill(f64::NEG_INFINITY);
        for state in 0..states {
            let k = path.class(state);
            let both = alpha[t * states + state] + beta[t * states + state];
            through[k] = log_add(through[k], both);
        }
        for (k, g) in row.iter_mut().enumerate() {
            let lp = log_probs[t * c + k];
            *g = lp.exp() - (through[k] + loss - lp).exp();
        }
    }
}

/// `ln(e^a + e^b)`, exact at `-∞`.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}
