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
//! back in the batch's order after the pass. A loss of the caller's own
//! ([`Trainer::step_with`] and the like) is handed the outputs in the batch's order, and the
//! gradient it writes is put in the pass's.
//! Reordering changes the results within rounding only (sums over the batch add in another
//! order), and the same batch always runs the same way, at any thread count.

use std::cmp::Reverse;
use std::ops::Range;

use kernels::Float;

use super::Trainer;
use crate::batch::{Batch, Target};
use crate::config::{LossSpec, RnnConfig};
use crate::error::{Result, vec_room};
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
    /// The outputs a loss of the caller's own reads, and the gradient it writes, in the
    /// batch's order.
    own_y: Vec<T>,
    own_dy: Vec<T>,
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

/// The rows of a `[.., B, width]` buffer of `len` elements taken in `order` within each
/// block of `B = order.len()` rows: the `k`-th of a block is row `order[k]`. The one walk
/// that [`gather`], [`gather_into`] and [`scatter`] copy along.
fn rows_in_order(
    len: usize,
    width: usize,
    order: &[usize],
) -> impl Iterator<Item = Range<usize>> + '_ {
    let block = order.len() * width;
    let blocks = len.checked_div(block).unwrap_or(0);
    (0..blocks).flat_map(move |p| {
        let start = p * block;
        (order.iter()).map(move |&k| start + k * width..start + (k + 1) * width)
    })
}

/// `src` (`[.., B, width]`) with each block's rows in `order`, into `dst`.
fn gather<V: Copy>(dst: &mut Vec<V>, src: &[V], width: usize, order: &[usize]) {
    dst.clear();
    for rows in rows_in_order(src.len(), width, order) {
        dst.extend_from_slice(&src[rows]);
    }
}

/// [`gather`] into a slice of `src`'s length: row `order[k]` of each block of `src` to
/// row `k` of the same block of `dst`.
fn gather_into<V: Copy>(dst: &mut [V], src: &[V], width: usize, order: &[usize]) {
    let dst_rows = dst.chunks_exact_mut(width.max(1));
    for (row, rows) in dst_rows.zip(rows_in_order(src.len(), width, order)) {
        row.copy_from_slice(&src[rows]);
    }
}

/// The inverse of [`gather`]: row `k` of each block of `src` (`order.len()` rows of
/// `width`) to row `order[k]` of the same block of `dst`.
fn scatter<V: Copy>(dst: &mut [V], src: &[V], width: usize, order: &[usize]) {
    let src_rows = src.chunks_exact(width.max(1));
    for (row, rows) in src_rows.zip(rows_in_order(dst.len(), width, order)) {
        dst[rows].copy_from_slice(row);
    }
}

/// Grows `v` to hold `n` elements, unless it can ([`vec_room`], naming the copy).
fn room<V>(v: &mut Vec<V>, n: usize) -> Result<()> {
    vec_room(v, n, "a copy of the batch, longest first")
}

/// The lengths of the copy of a batch's own buffers (its sequences' order and lengths,
/// inputs, tokens, initial states, sequence weights and targets), which
/// [`Reordered::reserve`] makes room for and a [`Memory::Budget`](super::Memory::Budget)
/// counts ([`copy_bytes`]).
struct CopyLens {
    sequences: usize,
    x: usize,
    tokens: usize,
    h0: usize,
    c0: usize,
    weights: usize,
    values: usize,
    classes: usize,
}

impl CopyLens {
    fn of<T: Float>(batch: &Batch<'_, T>) -> Self {
        let (values, classes) = match batch.target {
            Target::Values(v) => (v.len(), 0),
            Target::Classes(c) => (0, c.len()),
            Target::None => (0, 0),
        };
        Self {
            sequences: batch.lengths.map_or(0, <[usize]>::len),
            x: batch.x.len(),
            tokens: batch.tokens.map_or(0, <[usize]>::len),
            h0: batch.h0.map_or(0, <[T]>::len),
            c0: batch.c0.map_or(0, <[T]>::len),
            weights: batch.sequence_weights.map_or(0, <[T]>::len),
            values,
            classes,
        }
    }
}

/// The bytes of the copy a batch with lengths takes, whether or not it runs on it
/// ([`CopyLens`]), for a [`Memory::Budget`](super::Memory::Budget) to count. (The room for
/// putting per-sequence results back is a few rows, or the size of results the budget
/// counts already.)
pub(super) fn copy_bytes<T: Float>(batch: &Batch<'_, T>) -> usize {
    let lens = CopyLens::of(batch);
    let floats = lens.x + lens.h0 + lens.c0 + lens.weights + lens.values;
    let indices = 2 * lens.sequences + lens.tokens + lens.classes;
    floats * T::BYTES + indices * size_of::<usize>()
}

impl<T: Float> Reordered<T> {
    /// Room for a copy of `batch` (with lengths), taken by every such batch, ordered or not:
    /// a trainer then allocates nothing once its largest batch has run, as its workspace.
    /// Sized by what the batch holds (its sequences' lengths, its inputs' rows), not by the
    /// `T` and `B` it claims, which are checked only later: a claim no memory could hold
    /// is then refused by the check, not met by an allocation. Memory that is not there is
    /// [`RnnError::OutOfMemory`], before anything is copied.
    fn reserve(
        &mut self,
        batch: &Batch<'_, T>,
        config: &RnnConfig,
        gives: PerSequence,
        (dh_n, dc_n): (&[T], &[T]),
    ) -> Result<()> {
        let lens = CopyLens::of(batch);
        let b = lens.sequences;
        let rows = match batch.tokens {
            Some(tokens) => tokens.len(),
            None => batch.x.len() / config.input_size,
        };
        let state = config.passes() * config.state_size().max(config.hidden_size);
        let room_for_each = match gives {
            PerSequence::Nothing => 0,
            PerSequence::InputGrads => (b * state).max(rows * config.input_size),
            PerSequence::FinalStates => b * state,
            PerSequence::Outputs { many_to_one: true } => b * config.output_size,
            PerSequence::Outputs { many_to_one: false } => rows * config.output_size,
            PerSequence::SequenceLosses => b,
        };
        room(&mut self.scratch, room_for_each)?;
        room(&mut self.order, b)?;
        room(&mut self.lengths, b)?;
        room(&mut self.dh_n, dh_n.len())?;
        room(&mut self.dc_n, dc_n.len())?;
        room(&mut self.x, lens.x)?;
        room(&mut self.tokens, lens.tokens)?;
        room(&mut self.h0, lens.h0)?;
        room(&mut self.c0, lens.c0)?;
        room(&mut self.weights, lens.weights)?;
        room(&mut self.values, lens.values)?;
        room(&mut self.classes, lens.classes)
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
    ) -> (Batch<'s, T>, Sorted<'s, T>) {
        let b = batch.batch;
        let lengths = batch.lengths.expect("a batch with lengths");
        self.order.clear();
        self.order.extend(0..b);
        // Unstable with the index as a tie-break: the stable sort would allocate.
        (self.order).sort_unstable_by_key(|&k| (Reverse(lengths[k]), k));
        let order = &self.order[..];
        let state_width = |grads: &[T]| grads.len() / (config.passes() * b).max(1);
        gather(&mut self.dh_n, dh_n, state_width(dh_n), order);
        gather(&mut self.dc_n, dc_n, state_width(dc_n), order);
        gather(&mut self.x, batch.x, config.input_size, order);
        gather(&mut self.tokens, batch.tokens.unwrap_or(&[]), 1, order);
        gather(&mut self.lengths, lengths, 1, order);
        let (s, h) = (config.state_size(), config.hidden_size);
        gather(&mut self.h0, batch.h0.unwrap_or(&[]), s, order);
        gather(&mut self.c0, batch.c0.unwrap_or(&[]), h, order);
        let weights = batch.sequence_weights.unwrap_or(&[]);
        gather(&mut self.weights, weights, 1, order);
        match batch.target {
            Target::Values(v) => gather(&mut self.values, v, config.output_size, order),
            Target::Classes(c) => gather(&mut self.classes, c, 1, order),
            Target::None => {}
        }
        let Self {
            order,
            x,
            tokens,
            values,
            classes,
            lengths,
            h0,
            c0,
            weights,
            dh_n,
            dc_n,
            own_y,
            own_dy,
            ..
        } = self;
        let sorted = Batch {
            x,
            tokens: batch.tokens.map(|_| &tokens[..]),
            target: match batch.target {
                Target::Values(_) => Target::Values(values),
                Target::Classes(_) => Target::Classes(classes),
                Target::None => Target::None,
            },
            lengths: Some(lengths),
            h0: batch.h0.map(|_| &h0[..]),
            c0: batch.c0.map(|_| &c0[..]),
            sequence_weights: batch.sequence_weights.map(|_| &weights[..]),
            ..*batch
        };
        let view = Sorted {
            states: (dh_n, dc_n),
            order,
            own_y,
            own_dy,
        };
        (sorted, view)
    }

    /// What a pass over a batch as it is gets: `states` as they are.
    fn as_is<'s>(&'s mut self, states: (&'s [T], &'s [T])) -> Sorted<'s, T> {
        Sorted {
            states,
            order: &[],
            own_y: &mut self.own_y,
            own_dy: &mut self.own_dy,
        }
    }
}

/// What a pass run by [`Trainer::longest_first_from`] gets besides its batch: the
/// gradients of the batch's final states and a loss of the caller's own, each in the order
/// of the pass.
pub(super) struct Sorted<'s, T> {
    /// `dL/dh_n`, `dL/dc_n` (empty when not given).
    pub states: (&'s [T], &'s [T]),
    /// `order[k]` is the batch's sequence at the pass's row `k` (empty: the batch's order).
    order: &'s [usize],
    own_y: &'s mut Vec<T>,
    own_dy: &'s mut Vec<T>,
}

impl<T: Float> Sorted<'_, T> {
    /// Room for the outputs a loss of the caller's own reads in a batch of `outputs` of them
    /// (`[T, B, O]` or `[B, O]` elements), and their gradient: taken by every batch with
    /// lengths, ordered or not, as [`Reordered`]'s other buffers.
    pub(super) fn reserve_own_loss(&mut self, outputs: usize) -> Result<()> {
        room(self.own_y, outputs)?;
        room(self.own_dy, outputs)
    }

    /// `loss`, a loss of the caller's own that reads outputs `o` wide (`[.., B, O]`) and
    /// writes their gradient, as the pass calls it: the outputs it reads and the gradient
    /// it writes are in the batch's order.
    pub(super) fn own_loss(
        self,
        o: usize,
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> impl FnOnce(&[T], &mut [T]) -> T + Send {
        let Sorted {
            order,
            own_y,
            own_dy,
            ..
        } = self;
        move |y: &[T], dy: &mut [T]| {
            if order.is_empty() {
                return loss(y, dy);
            }
            own_y.clear();
            own_y.resize(y.len(), T::zero());
            scatter(own_y, y, o, order);
            own_dy.clear();
            own_dy.resize(dy.len(), T::zero());
            let value = loss(own_y, own_dy);
            gather_into(dy, own_dy, o, order);
            value
        }
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
        scatter(grads, &self.scratch, width, &self.order);
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
        pass: impl FnOnce(&mut Self, &Batch<'_, T>, Sorted<'_, T>) -> Result<R>,
    ) -> Result<R> {
        if batch.lengths.is_some() {
            self.reordered.reserve(batch, &self.config, gives, states)?;
        }
        let mut reordered = std::mem::take(&mut self.reordered);
        if !saves_rows(batch) {
            let result = pass(self, batch, reordered.as_is(states));
            self.reordered = reordered;
            return result;
        }
        let checked = match check {
            Check::Inputs => batch.validate_inputs(&self.config),
            Check::TrainerLoss => batch.validate(&self.config, &self.loss),
            Check::Loss(spec) => batch.validate(&self.config, spec),
            Check::NoTargets => batch.validate_own_loss(&self.config),
        }
        .and_then(|()| {
            // Checked before they are copied by the shapes they should have.
            if states.0.is_empty() && states.1.is_empty() {
                Ok(())
            } else {
                check_final_state_grads(&self.config, batch.batch, states)
            }
        });
        let result = checked.and_then(|()| {
            let (sorted, view) = reordered.fill(batch, &self.config, states);
            pass(self, &sorted, view)
        });
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
    use crate::error::RnnError;

    /// Room the memory cannot give is an error naming the copy, not the end of the process;
    /// room there is kept.
    #[test]
    fn room_past_the_memory_is_an_error() {
        let mut v = vec![1.0f32; 3];
        let err = room(&mut v, 1 << 60).unwrap_err();
        assert!(
            matches!(err, RnnError::OutOfMemory { ref what, bytes } if what.contains("copy") && bytes == 1 << 62),
            "{err:?}"
        );
        assert_eq!(v, [1.0; 3]);
        room(&mut v, 1000).unwrap();
        assert!(v.capacity() >= 1000 && v == [1.0; 3]);
    }

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
