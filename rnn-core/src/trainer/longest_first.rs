//! Training batches run longest first, as PyTorch's `pack_padded_sequence(...,
//! enforce_sorted=False)` sorts a batch: each step then computes only the rows of the
//! sequences still running ([`Batch::live_rows`]). A batch with lengths in any other order is
//! copied longest first into buffers the trainer keeps (grown to the largest batch, then
//! reused: no allocation from step to step), and the pass runs on the copy.
//!
//! The training passes reorder, and so do [`Trainer::evaluate`], [`Trainer::outputs`] (and
//! [`Trainer::accuracy`] through it), [`Trainer::sequence_losses`] and the final-state passes
//! ([`Trainer::final_states`], [`Trainer::eval_final_states`],
//! [`Trainer::grads_from_final_states`], whose `dL/dh_n` is copied longest first too); what
//! they give per sequence (input gradients, outputs, sequence losses, final states) is put
//! back in the batch's order after the pass. A loss of the caller's own runs the batch as it
//! is.
//! Reordering changes the results within rounding only (sums over the batch add in another
//! order), and the same batch always runs the same way, at any thread count.

use std::cmp::Reverse;

use kernels::Float;

use super::Trainer;
use crate::batch::{Batch, Target};
use crate::config::{LossSpec, RnnConfig};
use crate::error::Result;
use crate::network::final_states::check_final_state_grads;

/// What a pass leaves in the workspace per sequence, put back in the batch's order when the
/// pass ran longest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PerSequence {
    /// Nothing (a loss, parameter gradients).
    Nothing,
    /// The input gradients of a pass that computes them: `dL/dx`, `dL/dh0`, `dL/dc0`.
    InputGrads,
    /// The outputs `y`, `[T, B, O]` (`[B, O]` when many-to-one).
    Outputs { many_to_one: bool },
    /// Each sequence's loss, `[B]`.
    SequenceLosses,
    /// The final states `h_n`, `c_n`, `[L·D, B, ..]`.
    FinalStates,
}

/// What a pass checks of its batch, and [`Trainer::longest_first`] before copying it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Check<'s> {
    /// The inputs only ([`Batch::validate_inputs`]): a forward pass.
    Inputs,
    /// Inputs and targets against the trainer's own loss ([`Batch::validate`]).
    TrainerLoss,
    /// Inputs and targets against this loss.
    Loss(&'s LossSpec),
    /// Inputs, and neither targets nor sequence weights ([`Batch::validate_own_loss`]): a pass
    /// to the final states.
    NoTargets,
}

/// A batch's buffers copied longest first, kept from step to step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reordered<T> {
    /// The batch's sequences, longest first: `order[k]` is the one at row `k`.
    order: Vec<usize>,
    x: Vec<T>,
    tokens: Vec<usize>,
    values: Vec<T>,
    classes: Vec<usize>,
    lengths: Vec<usize>,
    h0: Vec<T>,
    c0: Vec<T>,
    weights: Vec<T>,
    /// The gradients of the final states, `dL/dh_n` and `dL/dc_n`.
    dh_n: Vec<T>,
    dc_n: Vec<T>,
    /// A copy of an input gradient, to put back in the batch's order.
    scratch: Vec<T>,
}

/// Whether running `batch` longest first computes fewer rows than as it is: it has lengths
/// and some sequence is longer than one before it.
pub(crate) fn saves_rows<T: Float>(batch: &Batch<'_, T>) -> bool {
    batch
        .lengths
        .is_some_and(|l| l.windows(2).any(|w| w[0] < w[1]))
}

/// `src`, blocks of `b` rows of `width` (`[.., B, width]`), with each block's rows in
/// `order`, into `dst`.
fn gather<V: Copy>(dst: &mut Vec<V>, src: &[V], b: usize, width: usize, order: &[usize]) {
    dst.clear();
    if src.is_empty() {
        return;
    }
    for block in src.chunks_exact(b * width) {
        for &k in order {
            dst.extend_from_slice(&block[k * width..(k + 1) * width]);
        }
    }
}

/// Grows `v` to hold `n` elements, unless it can.
fn room<V>(v: &mut Vec<V>, n: usize) {
    v.reserve(n.saturating_sub(v.len()));
}

impl<T: Float> Reordered<T> {
    /// Room for a copy of `batch` (with lengths), taken by every such batch, ordered or not:
    /// a trainer then allocates nothing once its largest batch has run, as its workspace.
    fn reserve(
        &mut self,
        batch: &Batch<'_, T>,
        config: &RnnConfig,
        gives: PerSequence,
        (dh_n, dc_n): (&[T], &[T]),
    ) {
        let b = batch.batch;
        let state = config.passes() * config.state_size().max(config.hidden_size);
        let per_sequence = match gives {
            PerSequence::Nothing => 0,
            PerSequence::InputGrads => state.max(batch.seq_len * config.input_size),
            PerSequence::FinalStates => state,
            PerSequence::Outputs { many_to_one } => {
                let steps = if many_to_one { 1 } else { batch.seq_len };
                steps * config.output_size
            }
            PerSequence::SequenceLosses => 1,
        };
        room(&mut self.scratch, b * per_sequence);
        room(&mut self.order, b);
        room(&mut self.lengths, b);
        room(&mut self.dh_n, dh_n.len());
        room(&mut self.dc_n, dc_n.len());
        room(&mut self.x, batch.x.len());
        room(&mut self.tokens, batch.tokens.map_or(0, <[usize]>::len));
        room(&mut self.h0, batch.h0.map_or(0, <[T]>::len));
        room(&mut self.c0, batch.c0.map_or(0, <[T]>::len));
        room(
            &mut self.weights,
            batch.sequence_weights.map_or(0, <[T]>::len),
        );
        match batch.target {
            Target::Values(v) => room(&mut self.values, v.len()),
            Target::Classes(c) => room(&mut self.classes, c.len()),
            Target::None => {}
        }
    }

    /// `batch` longest first (equal lengths in their order) in these buffers, with the
    /// gradients of its final states `(dh_n, dc_n)` (`[L·D, B, ..]`, or empty). `batch` must
    /// have lengths and be valid for `config` ([`Batch::validate`]), and the gradients of
    /// their shapes: the copy reads them by their shapes.
    fn fill<'s>(
        &'s mut self,
        batch: &Batch<'_, T>,
        config: &RnnConfig,
        (dh_n, dc_n): (&[T], &[T]),
    ) -> (Batch<'s, T>, (&'s [T], &'s [T])) {
        let b = batch.batch;
        let lengths = batch.lengths.expect("a batch with lengths");
        self.order.clear();
        self.order.extend(0..b);
        // Unstable with the index as a tie-break: the stable sort would allocate.
        (self.order).sort_unstable_by_key(|&k| (Reverse(lengths[k]), k));
        let order = &self.order[..];
        let passes = config.passes();
        gather(
            &mut self.dh_n,
            dh_n,
            b,
            dh_n.len() / (passes * b).max(1),
            order,
        );
        gather(
            &mut self.dc_n,
            dc_n,
            b,
            dc_n.len() / (passes * b).max(1),
            order,
        );
        gather(&mut self.x, batch.x, b, config.input_size, order);
        gather(&mut self.tokens, batch.tokens.unwrap_or(&[]), b, 1, order);
        gather(&mut self.lengths, lengths, b, 1, order);
        let (s, h) = (config.state_size(), config.hidden_size);
        gather(&mut self.h0, batch.h0.unwrap_or(&[]), b, s, order);
        gather(&mut self.c0, batch.c0.unwrap_or(&[]), b, h, order);
        let weights = batch.sequence_weights.unwrap_or(&[]);
        gather(&mut self.weights, weights, b, 1, order);
        let target = match batch.target {
            Target::Values(v) => {
                gather(&mut self.values, v, b, config.output_size, order);
                Target::Values(&self.values[..])
            }
            Target::Classes(c) => {
                gather(&mut self.classes, c, b, 1, order);
                Target::Classes(&self.classes[..])
            }
            Target::None => Target::None,
        };
        let sorted = Batch {
            x: &self.x,
            tokens: batch.tokens.map(|_| &self.tokens[..]),
            target,
            lengths: Some(&self.lengths),
            h0: batch.h0.map(|_| &self.h0[..]),
            c0: batch.c0.map(|_| &self.c0[..]),
            sequence_weights: batch.sequence_weights.map(|_| &self.weights[..]),
            ..*batch
        };
        (sorted, (&self.dh_n, &self.dc_n))
    }
}

impl<T: Float> Reordered<T> {
    /// Puts `grads` (`[blocks, B, width]`, its rows in the order of the last
    /// [`Reordered::fill`]) back in the batch's order.
    fn restore_order(&mut self, grads: &mut [T], blocks: usize) {
        let b = self.order.len();
        if grads.is_empty() || blocks == 0 {
            return;
        }
        let width = grads.len() / (blocks * b);
        self.scratch.clear();
        self.scratch.extend_from_slice(grads);
        let rows = grads.chunks_exact_mut(b * width);
        for (block, sorted) in rows.zip(self.scratch.chunks_exact(b * width)) {
            for (row, &k) in sorted.chunks_exact(width).zip(&self.order) {
                block[k * width..(k + 1) * width].copy_from_slice(row);
            }
        }
    }
}

impl<T: Float> Trainer<T> {
    /// Runs `pass` on `batch` longest first when that saves rows (see the [module
    /// docs](self)), else on `batch` as it is, and puts what it `gives` per sequence back in
    /// the batch's order. The batch is checked first as the pass would (`check`): an
    /// invalid batch is refused before anything is copied.
    pub(super) fn longest_first<R>(
        &mut self,
        batch: &Batch<'_, T>,
        check: Check<'_>,
        gives: PerSequence,
        pass: impl FnOnce(&mut Self, &Batch<'_, T>) -> Result<R>,
    ) -> Result<R> {
        let no_states = (&[][..], &[][..]);
        self.longest_first_from(batch, no_states, check, gives, |tr, batch, _| {
            pass(tr, batch)
        })
    }

    /// [`Trainer::longest_first`] for a pass that also takes the gradients of the batch's
    /// final states `(dh_n, dc_n)` (`[L·D, B, ..]`), copied in the batch's order too; they
    /// are checked with the batch.
    pub(super) fn longest_first_from<R>(
        &mut self,
        batch: &Batch<'_, T>,
        states: (&[T], &[T]),
        check: Check<'_>,
        gives: PerSequence,
        pass: impl FnOnce(&mut Self, &Batch<'_, T>, (&[T], &[T])) -> Result<R>,
    ) -> Result<R> {
        if batch.lengths.is_none() {
            return pass(self, batch, states);
        }
        self.reordered.reserve(batch, &self.config, gives, states);
        if !saves_rows(batch) {
            return pass(self, batch, states);
        }
        match check {
            Check::Inputs => batch.validate_inputs(&self.config)?,
            Check::TrainerLoss => batch.validate(&self.config, &self.loss)?,
            Check::Loss(spec) => batch.validate(&self.config, spec)?,
            Check::NoTargets => batch.validate_own_loss(&self.config)?,
        }
        if !states.0.is_empty() {
            check_final_state_grads(&self.config, batch.batch, states)?;
        }
        let mut reordered = std::mem::take(&mut self.reordered);
        let (sorted, sorted_states) = reordered.fill(batch, &self.config, states);
        let result = pass(self, &sorted, sorted_states);
        if result.is_ok() {
            let (ws, passes) = (&mut self.workspace, self.config.passes());
            match gives {
                PerSequence::Nothing => {}
                PerSequence::InputGrads => {
                    reordered.restore_order(&mut ws.dx, batch.seq_len);
                    reordered.restore_order(&mut ws.dh0, passes);
                    reordered.restore_order(&mut ws.dc0, passes);
                }
                PerSequence::Outputs { many_to_one } => {
                    let steps = if many_to_one { 1 } else { batch.seq_len };
                    let len = steps * batch.batch * self.config.output_size;
                    reordered.restore_order(&mut ws.y[..len], steps);
                }
                PerSequence::SequenceLosses => {
                    reordered.restore_order(&mut ws.sequence_losses, 1);
                }
                PerSequence::FinalStates => {
                    reordered.restore_order(&mut ws.final_h, passes);
                    reordered.restore_order(&mut ws.final_c, passes);
                }
            }
        }
        self.reordered = reordered;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LossKind, LossSpec, RnnConfig};

    /// Every buffer of a batch comes out with its rows in the order longest first, ties in
    /// their order, each step's block alike; a batch already longest first saves nothing.
    #[test]
    fn a_batch_is_copied_longest_first() {
        let cfg = RnnConfig::lstm(2, 3, 2);
        let (t, b) = (3, 4);
        let lengths = [1, 3, 2, 3];
        // Element `(p, k, j)` of a `[P, B, width]` buffer is `100·p + 10·k + j`.
        let rows = |outer: usize, width: usize| -> Vec<f64> {
            (0..outer * b * width)
                .map(|e| (100 * (e / (b * width)) + 10 * (e / width % b) + e % width) as f64)
                .collect()
        };
        let (x, y, h0, c0) = (rows(t, 2), rows(t, 2), rows(1, 3), rows(1, 3));
        let weights = [0.5, 1.0, 1.5, 2.0];
        let batch = Batch {
            lengths: Some(&lengths),
            h0: Some(&h0),
            c0: Some(&c0),
            sequence_weights: Some(&weights),
            ..Batch::new(t, b, &x, Target::Values(&y))
        };
        batch
            .validate(&cfg, &LossSpec::every_step(LossKind::Mse))
            .unwrap();
        assert!(saves_rows(&batch));
        let mut reordered = Reordered::default();
        let (sorted, _) = reordered.fill(&batch, &cfg, (&[], &[]));
        let order = [1, 3, 2, 0];
        let want = |outer: usize, width: usize| -> Vec<f64> {
            (0..outer)
                .flat_map(|p| {
                    order
                        .iter()
                        .flat_map(move |&k| (0..width).map(move |j| (100 * p + 10 * k + j) as f64))
                })
                .collect()
        };
        assert_eq!(sorted.lengths, Some(&[3, 3, 2, 1][..]));
        assert_eq!(sorted.x, want(t, 2));
        assert!(matches!(sorted.target, Target::Values(v) if v == want(t, 2)));
        assert_eq!(sorted.h0.unwrap(), want(1, 3));
        assert_eq!(sorted.c0.unwrap(), want(1, 3));
        assert_eq!(sorted.sequence_weights, Some(&[1.0, 2.0, 1.5, 0.5][..]));
        assert_eq!((sorted.seq_len, sorted.batch, sorted.tokens), (t, b, None));
        assert!(!saves_rows(&sorted));
        let labels = [0usize, 1, 0, 1];
        let classes = Batch {
            lengths: Some(&lengths),
            ..Batch::of_tokens(1, b, &[0, 1, 2, 3], Target::Classes(&labels))
        };
        let (sorted, _) = reordered.fill(&classes, &cfg, (&[], &[]));
        assert_eq!(sorted.tokens, Some(&[1, 3, 2, 0][..]));
        assert!(matches!(sorted.target, Target::Classes(c) if c == [1, 1, 0, 0]));
        assert!(sorted.x.is_empty() && sorted.h0.is_none());
    }
}
