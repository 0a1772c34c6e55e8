//! The loss of the head's outputs `ws.y` against a batch's targets: its gradient `dL/dy`
//! for the backward pass, the reduction's divisor, and each sequence's own loss.

use std::ops::Range;

use kernels::{Float, loss as kloss};

use super::Pass;
use crate::batch::{Batch, Target};
use crate::config::{LossKind, LossSpec, Reduction, RnnConfig};
use crate::workspace::Workspace;

/// The factor of the reduction: `1 / mean_divisor` for `mean`, 1 for `sum`.
pub(super) fn loss_scale<T: Float>(config: &RnnConfig, batch: &Batch<T>, spec: &LossSpec) -> T {
    if spec.reduction == Reduction::Sum {
        return T::one();
    }
    T::one() / T::of(mean_divisor(config, batch, spec))
}

/// What a `mean` divides the batch's summed loss by: its scored positions, times `O` for
/// float targets. A position whose label is ignored is not scored; with class weights a
/// position counts its label's weight instead of 1, and with sequence weights its
/// sequence's weight times that.
pub(crate) fn mean_divisor<T: Float>(config: &RnnConfig, batch: &Batch<T>, spec: &LossSpec) -> f64 {
    divisor_of(config, batch, spec, 0..batch.batch)
}

/// [`mean_divisor`] of the sequences `sequences` alone.
fn divisor_of<T: Float>(
    config: &RnnConfig,
    batch: &Batch<T>,
    spec: &LossSpec,
    sequences: Range<usize>,
) -> f64 {
    let (steps, b) = (scored_steps(batch, spec), batch.batch);
    let class_weight = |t: usize, bb: usize| match (&spec.class_weights, batch.target) {
        (Some(w), Target::Classes(labels)) => w.get()[labels[t * b + bb]],
        _ => 1.0,
    };
    let weight_of = |t: usize, bb: usize| class_weight(t, bb) * sequence_weight(batch, bb).f64();
    let count: f64 = (0..steps)
        .flat_map(|t| sequences.clone().map(move |bb| (t, bb)))
        .filter(|&(t, bb)| batch.scores(spec.many_to_one, t, bb))
        .map(|(t, bb)| weight_of(t, bb))
        .sum();
    let per_position = if spec.kind.takes_values() {
        config.output_size
    } else {
        1
    };
    count * per_position as f64
}

/// Loss of the head outputs `ws.y` for the pass's batch and its gradient into `ws.dy`, each
/// position weighted by `scale`. Returns the reduced loss.
///
/// The steps are scored in two halves, on the pass's two workers when it has them (outside
/// a pair session the halves run in turn), and the halves' sums are added: the same sums
/// either way, so the loss does not depend on the thread count. Serial, this was the
/// largest part of a two-thread step that did not shrink: 1.1 of 147 ms for RNN large (0.6
/// ms in halves), 0.2 of 39 for RNN char (0.1).
pub(super) fn loss_forward_backward<T: Float>(
    p: &Pass<'_, '_, T>,
    ws: &mut Workspace<T>,
    spec: &LossSpec,
    scale: T,
) -> T {
    let (batch, o) = (p.batch, p.config.output_size);
    let b = batch.batch;
    let steps = scored_steps(batch, spec);
    let mid = steps / 2;
    set_class_weights(ws, spec);
    let (dy0, dy1) = ws.dy[..steps * b * o].split_at_mut(mid * b * o);
    let y = &ws.y[..steps * b * o];
    let scoring = Scoring {
        spec,
        class_weights: &ws.class_weights,
        pos_weights: &ws.pos_weights,
        scale,
    };
    let (mut first, mut second) = (T::zero(), T::zero());
    let halves = |lo: usize, hi: usize, dy: &mut [T], sum: &mut T| {
        *sum = loss_steps(lo..hi, dy, y, batch, &scoring, o);
    };
    p.threads.pair.join(
        || halves(0, mid, dy0, &mut first),
        || halves(mid, steps, dy1, &mut second),
    );
    (first + second) * scale
}

/// Each sequence's own loss into `ws.sequence_losses` (`[B]`): the loss its scored
/// positions add up to, divided under `mean` by its own [`mean_divisor`] (0 for a
/// sequence that scores nothing). `ws.dy` is overwritten on the way.
pub(super) fn sequence_losses<T: Float>(
    p: &Pass<'_, '_, T>,
    ws: &mut Workspace<T>,
    spec: &LossSpec,
) {
    let (config, batch, o) = (p.config, p.batch, p.config.output_size);
    let b = batch.batch;
    let steps = scored_steps(batch, spec);
    set_class_weights(ws, spec);
    let scoring = Scoring {
        spec,
        class_weights: &ws.class_weights,
        pos_weights: &ws.pos_weights,
        scale: T::one(),
    };
    let sums = &mut ws.sequence_losses;
    sums.clear();
    sums.resize(b, T::zero());
    for t in 0..steps {
        for (bb, sum) in sums.iter_mut().enumerate() {
            if batch.scores(spec.many_to_one, t, bb) {
                let position = t * b + bb;
                let (y, dy) = (&ws.y[..steps * b * o], &mut ws.dy[..o]);
                let row = row_loss(position..position + 1, dy, y, batch.target, &scoring, o);
                *sum += sequence_weight(batch, bb) * row;
            }
        }
    }
    if spec.reduction == Reduction::Mean {
        for (bb, sum) in sums.iter_mut().enumerate() {
            let divisor = divisor_of(config, batch, spec, bb..bb + 1);
            *sum = if divisor > 0.0 {
                *sum / T::of(divisor)
            } else {
                T::zero()
            };
        }
    }
}

/// The share of the batch's scored, labelled positions whose likeliest class in the head
/// outputs `y` (`[T·B, O]`, or `[B, O]` many-to-one; the first of equals) is the label,
/// each position counting its sequence's weight; `None` when no weight is scored.
pub(crate) fn accuracy<T: Float>(
    batch: &Batch<T>,
    spec: &LossSpec,
    y: &[T],
    o: usize,
) -> Option<f64> {
    let Target::Classes(labels) = batch.target else {
        return None;
    };
    let (steps, b) = (scored_steps(batch, spec), batch.batch);
    let (mut right, mut total) = (0.0, 0.0);
    for t in 0..steps {
        for bb in (0..b).filter(|&bb| batch.scores(spec.many_to_one, t, bb)) {
            let position = t * b + bb;
            let row = &y[position * o..][..o];
            let best = (1..o).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            let weight = sequence_weight(batch, bb).f64();
            total += weight;
            if best == labels[position] {
                right += weight;
            }
        }
    }
    (total > 0.0).then(|| right / total)
}

/// The per-output weights of `spec` (class weights, BCE's positive weights) in the pass's
/// float type into `ws.class_weights` and `ws.pos_weights` (empty when it has none).
fn set_class_weights<T: Float>(ws: &mut Workspace<T>, spec: &LossSpec) {
    for (dst, weights) in [
        (&mut ws.class_weights, &spec.class_weights),
        (&mut ws.pos_weights, &spec.pos_weights),
    ] {
        dst.clear();
        if let Some(w) = weights {
            dst.extend(w.get().iter().map(|&w| T::of(w)));
        }
    }
}

/// How the loss of each scored row is taken: the spec, its class and positive weights in
/// the pass's float type (empty: none) and the reduction's factor.
#[derive(Clone, Copy)]
struct Scoring<'a, T> {
    spec: &'a LossSpec,
    class_weights: &'a [T],
    pos_weights: &'a [T],
    scale: T,
}

/// The unscaled loss sum of the steps `steps` and its gradient into `dy_steps`, those steps'
/// rows of `ws.dy` (`y_all` is all of `ws.y`).
fn loss_steps<T: Float>(
    steps: Range<usize>,
    dy_steps: &mut [T],
    y_all: &[T],
    batch: &Batch<T>,
    scoring: &Scoring<'_, T>,
    o: usize,
) -> T {
    let b = batch.batch;
    let first = steps.start * b * o;
    let mut total = T::zero();
    for t in steps {
        let block = t * b * o..(t + 1) * b * o;
        let scores = |bb| batch.scores(scoring.spec.many_to_one, t, bb);
        let all = batch.sequence_weights.is_none() && (0..b).all(scores);
        // Whole step at once when every sequence is scored and weighs 1, else row by row.
        let rows: &mut dyn Iterator<Item = (usize, usize)> = if all {
            &mut std::iter::once((0, b))
        } else {
            &mut (0..b).filter(|&bb| scores(bb)).map(|bb| (bb, bb + 1))
        };
        if !all {
            dy_steps[block.start - first..block.end - first].fill(T::zero());
        }
        for (lo, hi) in rows {
            let dy = &mut dy_steps[block.start - first + lo * o..block.start - first + hi * o];
            let positions = t * b + lo..t * b + hi;
            total += match batch.sequence_weights {
                // One row: its terms, and their gradient, count its sequence's weight.
                Some(w) => {
                    let weighted = Scoring {
                        scale: scoring.scale * w[lo],
                        ..*scoring
                    };
                    w[lo] * row_loss(positions, dy, y_all, batch.target, &weighted, o)
                }
                None => row_loss(positions, dy, y_all, batch.target, scoring, o),
            };
        }
    }
    total
}

/// The steps the loss reads outputs of: every step, or the one row per sequence of a
/// many-to-one loss.
fn scored_steps<T>(batch: &Batch<T>, spec: &LossSpec) -> usize {
    if spec.many_to_one { 1 } else { batch.seq_len }
}

/// Sequence `b`'s weight (1 without [`Batch::sequence_weights`]).
fn sequence_weight<T: Float>(batch: &Batch<T>, b: usize) -> T {
    batch.sequence_weights.map_or(T::one(), |w| w[b])
}

/// The unscaled loss sum of the consecutive positions (rows of `[T·B, O]`) `positions`, and
/// its gradient, times the scoring's scale, into `dy` (those rows' `dL/dy`).
fn row_loss<T: Float>(
    positions: Range<usize>,
    dy: &mut [T],
    y_all: &[T],
    target: Target<'_, T>,
    scoring: &Scoring<'_, T>,
    o: usize,
) -> T {
    let Scoring {
        spec,
        class_weights,
        pos_weights,
        scale,
    } = *scoring;
    let r = positions.start * o..positions.end * o;
    let y = &y_all[r.clone()];
    match (spec.kind, target) {
        (LossKind::Mse, Target::Values(v)) => kloss::squared_error(dy, y, &v[r], scale),
        (LossKind::L1, Target::Values(v)) => kloss::absolute_error(dy, y, &v[r], scale),
        (LossKind::Huber(delta), Target::Values(v)) => {
            kloss::huber_error(dy, y, &v[r], T::of(delta.get()), scale)
        }
        (LossKind::SmoothL1(beta), Target::Values(v)) => {
            // Huber's loss and gradient of the same threshold, over β.
            let beta = T::of(beta.get());
            kloss::huber_error(dy, y, &v[r], beta, scale / beta) / beta
        }
        (LossKind::BceWithLogits, Target::Values(v)) => match (class_weights, pos_weights) {
            ([], []) => kloss::bce_with_logits(dy, y, &v[r], scale),
            ([], pos) => kloss::bce_with_logits_weighted(dy, y, &v[r], pos, scale),
            (weight, pos) => kloss::bce_with_logits_rescaled(dy, y, &v[r], pos, weight, scale),
        },
        (kind, Target::Classes(c)) if !kind.takes_values() => {
            let labels = &c[positions];
            // ε = 0 (plain cross-entropy) runs the one-hot loss, bit for bit.
            let eps = T::of(kind.label_smoothing().unwrap_or(0.0));
            if class_weights.is_empty() {
                kloss::softmax_cross_entropy_smoothed(dy, y, labels, o, eps, scale)
            } else {
                kloss::softmax_cross_entropy_weighted(dy, y, labels, class_weights, eps, scale)
            }
        }
        (kind, _) => unreachable!("{} against the wrong targets: validated", kind.name()),
    }
}
