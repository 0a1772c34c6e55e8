//! Training through the final states: the model's `h_n` (and `c_n`) handed on to a model of
//! the caller's, as an encoder's are to a decoder (PyTorch's `_, (h_n, c_n) = encoder(x)`,
//! then `decoder(y, (h_n, c_n))`), and `dL/dh_n` handed back.

use std::fmt::Write;

use kernels::Float;

use super::longest_first::{Check, PerSequence};
use super::{Kept, Trainer};
use crate::batch::Batch;
use crate::error::Result;
use crate::network::PassOptions;
use crate::network::final_states::{backward_from_final_states, forward_final_states};

impl<T: Float> Trainer<T> {
    /// The final states of a training forward pass over `batch`: `h_n` (`[L·D, B, S]`, each
    /// sequence's state after its own last step, a reverse direction's after its first; `S`
    /// is `P` with projections) and `c_n` (`[L·D, B, H]`, LSTM; empty otherwise), PyTorch's
    /// `_, (h_n, c_n) = encoder(x)`. The head is not run. Pass them on (a decoder's
    /// [`Batch::h0`] and [`Batch::c0`], a head of your own), then hand their gradients back
    /// with [`Trainer::grads_from_final_states`] on the same batch, and [`Trainer::update`].
    ///
    /// The pass drops units as the coming update's step does ([`Trainer::with_dropout`]),
    /// and keeps memory as a training step does ([`Trainer::with_memory`]): whole, or in
    /// checkpointed segments, of which the starting states and the last one's activations
    /// stay. What it keeps serves the backward pass, which reuses it when nothing else ran
    /// on this trainer in between and the batch and parameters are as they were (checked by
    /// a CRC-32 of them: 0.33 ms for 16 MiB of parameters on the AMD kind), and runs the
    /// forward pass again otherwise. A
    /// batch with lengths in any order runs longest first, as a packed sequence does (each
    /// step computes only the sequences still running), its states given back in its order.
    ///
    /// A sequence-to-sequence model, trained as one (an encoder GRU's final state starts a
    /// decoder, which learns to give back the sum of the encoder's inputs):
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let (t_in, t_out, b) = (6, 2, 4);
    /// let spec = LossSpec::every_step(LossKind::Mse);
    /// let mut encoder = Trainer::<f64>::new(RnnConfig::gru(1, 8, 1), spec.clone(), OptimizerKind::adam(1e-2), 0)?;
    /// encoder.freeze_where(|name| name.starts_with("head.")); // its head takes no part
    /// let mut decoder = Trainer::new(RnnConfig::gru(1, 8, 1), spec, OptimizerKind::adam(1e-2), 1)?
    ///     .with_input_grads(); // for dL/dh0, the gradient of the encoder's final state
    /// let x: Vec<f64> = (0..t_in * b).map(|k| ((k * 7 % 11) as f64 - 5.0) / 10.0).collect();
    /// let sums: Vec<f64> = (0..b).map(|s| (0..t_in).map(|t| x[t * b + s]).sum()).collect();
    /// let target: Vec<f64> = (0..t_out).flat_map(|_| sums.iter().copied()).collect();
    /// let zeros = vec![0.0; t_out * b];
    /// let (mut first, mut last) = (0.0, 0.0);
    /// for step in 0..200 {
    ///     let source = Batch::new(t_in, b, &x, Target::None);
    ///     let (h_n, _) = encoder.final_states(&source)?;
    ///     let h_n = h_n.to_vec();
    ///     let reply = Batch { h0: Some(&h_n), ..Batch::new(t_out, b, &zeros, Target::Values(&target)) };
    ///     let loss = decoder.loss_and_grads(&reply)?;
    ///     encoder.grads_from_final_states(&source, decoder.initial_state_grads().0, &[])?;
    ///     encoder.update(loss)?;
    ///     decoder.update(loss)?;
    ///     if step == 0 { first = loss } else { last = loss }
    /// }
    /// assert!(last < first / 10.0, "{first} -> {last}");
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// The batch's input errors ([`Batch::validate_own_loss`]: targets and sequence weights
    /// are refused, as nothing here reads them); [`crate::RnnError::Config`] for a
    /// bidirectional model under [`Memory::Checkpointed`](super::Memory::Checkpointed)
    /// segments shorter than the batch, as [`Trainer::step`]. Nothing is computed then.
    pub fn final_states(&mut self, batch: &Batch<T>) -> Result<(&[T], &[T])> {
        let _flush = self.flush_scope();
        let fingerprint = self.final_state_fingerprint(batch);
        // A ragged batch runs longest first: the same copy, the same pass, in
        // `grads_from_final_states`, which the fingerprint of the batch as given lets reuse it.
        let gives = PerSequence::FinalStates;
        self.longest_first(batch, Check::NoTargets, gives, |tr, batch| {
            let segment = tr.segment_for(batch, tr.final_state_kept(true));
            tr.in_step_threads(batch, |tr, par| {
                let opts = tr.pass_options(par, 0);
                let model = (&tr.config, &tr.layout, &tr.params[..]);
                let ws = &mut tr.workspace;
                forward_final_states(model, ws, batch, opts, Some(fingerprint), segment)
            })
        })?;
        Ok((&self.workspace.final_h, &self.workspace.final_c))
    }

    /// [`Trainer::final_states`] for inference: the model as it stands, no dropout (as
    /// [`Trainer::outputs`]), nothing kept for a backward pass. What a trained encoder hands
    /// a decoder that then writes its output a step at a time
    /// ([`crate::predict::Predictor::set_state`]).
    ///
    /// # Errors
    /// As [`Trainer::final_states`].
    pub fn eval_final_states(&mut self, batch: &Batch<T>) -> Result<(&[T], &[T])> {
        let _flush = self.flush_scope();
        let gives = PerSequence::FinalStates;
        self.longest_first(batch, Check::NoTargets, gives, |tr, batch| {
            let segment = tr.segment_for(batch, tr.final_state_kept(false));
            tr.in_step_threads(batch, |tr, par| {
                let opts = PassOptions::from(tr.exec(par));
                let model = (&tr.config, &tr.layout, &tr.params[..]);
                forward_final_states(model, &mut tr.workspace, batch, opts, None, segment)
            })
        })?;
        Ok((&self.workspace.final_h, &self.workspace.final_c))
    }

    /// The gradients of the parameters (into [`Trainer::grads`]) from `dh_n`, `dL/dh_n`
    /// (`[L·D, B, S]`), and `dc_n`, `dL/dc_n` (`[L·D, B, H]` for an LSTM, empty otherwise), of
    /// the final states [`Trainer::final_states`] gave for `batch`: its backward pass with no
    /// loss of its own (PyTorch's `h_n.backward(dh_n)`, or the decoder's `loss.backward()`
    /// reaching the encoder). The head's gradients are zero: freeze `head.weight` and
    /// `head.bias` to keep weight decay and momentum off them too. Frozen tensors, input
    /// gradients ([`Trainer::with_input_grads`]) and dropout as in any training pass; then
    /// [`Trainer::update`] with the loss the gradients are of.
    ///
    /// # Errors
    /// Those of [`Trainer::final_states`]; [`crate::RnnError::ShapeMismatch`] for a `dh_n` or
    /// `dc_n` of another length, [`crate::RnnError::NonFiniteInput`] for a NaN or infinity
    /// in them. Nothing is computed then.
    pub fn grads_from_final_states(
        &mut self,
        batch: &Batch<T>,
        dh_n: &[T],
        dc_n: &[T],
    ) -> Result<()> {
        let _flush = self.flush_scope();
        let fingerprint = self.final_state_fingerprint(batch);
        let (check, gives) = (Check::NoTargets, PerSequence::InputGrads);
        self.longest_first_from(batch, (dh_n, dc_n), check, gives, |tr, batch, sorted| {
            let states = sorted.states;
            let segment = tr.segment_for(batch, tr.final_state_kept(true));
            tr.in_step_threads(batch, |tr, par| {
                let opts = tr.pass_options(par, 0);
                let model = (&tr.config, &tr.layout, &tr.params[..]);
                let (grads, ws) = (&mut tr.grads[..], &mut tr.workspace);
                let marks = (fingerprint, segment);
                backward_from_final_states(model, grads, ws, batch, opts, states, marks)
            })
        })?;
        self.zero_frozen_grads();
        Ok(())
    }

    /// What a pass to the final states keeps besides its workspace: a training pass's
    /// (`training`), or nothing.
    fn final_state_kept(&self, training: bool) -> Kept {
        let kept = if training {
            self.training_kept()
        } else {
            Kept::default()
        };
        Kept {
            final_states: true,
            ..kept
        }
    }

    /// A CRC-32 of what a training forward pass over `batch` reads: the parameters, the
    /// batch, and what decides its dropout masks (the step count) and its rounding (the
    /// unit split and time chunks, and the segments of its memory setting).
    fn final_state_fingerprint(&self, batch: &Batch<T>) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(bytemuck::cast_slice(&self.params[..]));
        crc.update(bytemuck::cast_slice(batch.x));
        // Each optional part behind a byte saying whether it is there. (Nothing here
        // allocates: a training loop calls this every step.)
        for ids in [batch.tokens, batch.lengths] {
            crc.update(&[u8::from(ids.is_some())]);
            crc.update(bytemuck::cast_slice(ids.unwrap_or_default()));
        }
        for state in [batch.h0, batch.c0] {
            crc.update(&[u8::from(state.is_some())]);
            crc.update(bytemuck::cast_slice(state.unwrap_or_default()));
        }
        let shape = [batch.seq_len, batch.batch].map(|v| v as u64);
        crc.update(bytemuck::cast_slice(&shape));
        let how = (
            self.optimizer.steps,
            self.split,
            self.chunks,
            self.dropout,
            self.memory,
        );
        write!(Crc(&mut crc), "{how:?}").expect("a CRC takes any text");
        crc.finalize()
    }
}

/// Text written into a CRC, as [`std::fmt::Write`] (without a `String` between).
struct Crc<'a>(&'a mut crc32fast::Hasher);

impl std::fmt::Write for Crc<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::batch::{Batch, Target};
    use crate::prelude::*;

    /// The forward pass is kept for the backward pass, and no other pass leaves it marked.
    #[test]
    fn the_forward_pass_is_kept_until_another_pass() {
        let spec = LossSpec::every_step(LossKind::Mse);
        let mut tr =
            Trainer::<f64>::new(RnnConfig::gru(2, 3, 1), spec, OptimizerKind::sgd(0.1), 0).unwrap();
        let x = [0.5; 3 * 2 * 2];
        let batch = Batch::new(3, 2, &x, Target::None);
        let dh = [0.1; 2 * 3];
        tr.final_states(&batch).unwrap();
        assert!(tr.workspace.kept_forward.is_some());
        tr.grads_from_final_states(&batch, &dh, &[]).unwrap();
        assert!(tr.workspace.kept_forward.is_none());
        tr.final_states(&batch).unwrap();
        tr.outputs(&batch).unwrap();
        assert!(tr.workspace.kept_forward.is_none());
    }

    /// A pass to the final states runs no head: its workspace holds one step's outputs
    /// and their gradient (`[B, O]`), not every step's, whole or in segments.
    #[test]
    fn final_state_passes_keep_no_room_for_every_steps_outputs() {
        let (t, b, o) = (6, 3, 40);
        let x = [0.5; 6 * 3 * 2];
        let batch = Batch::new(t, b, &x, Target::None);
        let dh = [0.1; 3 * 4];
        for memory in [Memory::Full, Memory::Checkpointed { segment: 2 }] {
            let spec = LossSpec::every_step(LossKind::Mse);
            let cfg = RnnConfig::gru(2, 4, o);
            let mut tr = Trainer::<f64>::new(cfg, spec, OptimizerKind::sgd(0.1), 0)
                .unwrap()
                .with_memory(memory);
            tr.final_states(&batch).unwrap();
            assert_eq!(
                (tr.workspace.y.len(), tr.workspace.dy.len()),
                (b * o, b * o)
            );
            tr.grads_from_final_states(&batch, &dh, &[]).unwrap();
            assert_eq!(tr.workspace.dy.len(), b * o, "{memory:?}");
            tr.eval_final_states(&batch).unwrap();
            assert_eq!(tr.workspace.y.len(), b * o, "{memory:?}");
        }
    }
}
