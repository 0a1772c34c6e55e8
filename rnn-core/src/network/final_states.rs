//! Passes that end at the final states instead of the head: PyTorch's `h_n` (and `c_n`)
//! passed on to a model of their own (a decoder, a head of the caller's), whose gradient
//! comes back as `dL/dh_n`. The backward pass takes it where checkpointed BPTT takes the
//! carry from a later segment: at the last step, from beyond it (a sequence that ended
//! earlier passes it straight back to its own last step, as its state was carried on). In
//! checkpointed segments, the carry into the last segment is `dL/dh_n` itself.

use kernels::Float;

use super::{
    Head, NoClosure, Stretch, backward, check_lengths, check_segment, checkpointed_pass,
    final_state_spec, forward_to_final_states, table_grads, with_embedded_pass,
    with_table_input_grad,
};
use crate::batch::{Batch, check_state};
use crate::config::RnnConfig;
use crate::error::{Result, shape};
use crate::network::PassOptions;
use crate::params::Layout;
use crate::workspace::Workspace;

/// A training forward pass over `batch` without the head (dropout as `opts` says), its
/// final states left in `ws.final_h` (`[L·D, B, S]`, `S` = `P` with projections; a
/// reverse direction's after its own last step, the sequence's first) and `ws.final_c`
/// (`[L·D, B, H]`, LSTM; empty otherwise), PyTorch's `h_n` and `c_n`. The activations stay in `ws`, marked
/// with `fingerprint` when given, for [`backward_from_final_states`] to reuse (an inference
/// pass, without the training step's dropout, gives none). In segments of `segment` steps
/// when that is fewer than the batch's, as checkpointed BPTT runs them: only the last
/// segment's activations and each segment's starting states stay.
///
/// # Errors
/// [`Batch::validate_own_loss`]'s; a bidirectional model in segments
/// ([`crate::RnnError::Config`]). Nothing is computed then.
pub(crate) fn forward_final_states<T: Float>(
    (config, layout, params): (&RnnConfig, &Layout, &[T]),
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    opts: PassOptions,
    fingerprint: Option<u32>,
    segment: usize,
) -> Result<()> {
    // No targets or sequence weights: nothing here reads them.
    batch.validate_own_loss(config)?;
    check_segment(config, batch, segment, "a pass to the final states")?;
    // Sized as a many-to-one pass: the head is not run, and `[B, O]` is the least room
    // the outputs take (every step's would be `[T, B, O]`, and as much for `dy`).
    let stretch = Stretch {
        segment,
        ..Stretch::whole(true, false)
    };
    let end = with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        if segment < batch.seq_len {
            return forward_to_final_states(&p, ws, segment);
        }
        p.size_workspace(ws, true);
        super::forward_chunks(&p, ws, Head::Skip);
        batch.seq_len
    })?;
    let (l, b) = (config.passes(), batch.batch);
    let lstm = config.cell.has_cell_state();
    let mut h = std::mem::take(&mut ws.final_h);
    let mut c = std::mem::take(&mut ws.final_c);
    h.resize(l * b * config.state_size());
    c.resize(if lstm { l * b * config.hidden_size } else { 0 });
    ws.states_at(config, b, end, &mut h, &mut c);
    (ws.final_h, ws.final_c) = (h, c);
    ws.kept_forward = fingerprint;
    Ok(())
}

/// The gradients of `params` (into `grads`) from `dL/dh_n` (`dh_n`, `[L·D, B, S]`) and
/// `dL/dc_n` (`dc_n`, `[L·D, B, H]`, LSTM; empty otherwise) of `batch`'s final states: its
/// backward pass with no loss of its own (the head's gradients are zero), `dL/dh0`,
/// `dL/dc0` and, when asked, `dL/dx` left in `ws`. Reuses the forward pass of
/// [`forward_final_states`] when `ws` still holds the one marked `fingerprint`, else runs it
/// again (the same masks, the same states). In segments of `segment` steps when that is
/// fewer than the batch's, as checkpointed BPTT (the forward pass given the same).
///
/// # Errors
/// [`Batch::validate_own_loss`]'s; [`crate::RnnError::ShapeMismatch`] for a `dh_n` or `dc_n` of another length,
/// [`crate::RnnError::NonFiniteInput`] for a NaN or infinity in them; a bidirectional model
/// in segments ([`crate::RnnError::Config`]). Nothing is computed then.
pub(crate) fn backward_from_final_states<T: Float>(
    (config, layout, params): (&RnnConfig, &Layout, &[T]),
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    opts: PassOptions,
    (dh_n, dc_n): (&[T], &[T]),
    (fingerprint, segment): (u32, usize),
) -> Result<()> {
    check_lengths(layout, params, Some(grads))?;
    // No targets or sequence weights: nothing here reads them.
    batch.validate_own_loss(config)?;
    check_final_state_grads(config, batch.batch, (dh_n, dc_n))?;
    check_segment(config, batch, segment, "a pass to the final states")?;
    let kept = ws.kept_forward == Some(fingerprint);
    let opts = with_table_input_grad(batch, opts);
    let stretch = Stretch {
        segment,
        ..Stretch::whole(true, true)
    };
    with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        if segment < batch.seq_len {
            let scorer = NoClosure::FinalStates {
                grads: (dh_n, dc_n),
                kept,
            };
            checkpointed_pass(&p, grads, ws, &final_state_spec(), segment, scorer);
            return;
        }
        if !kept {
            p.size_workspace(ws, true);
            super::forward_chunks(&p, ws, Head::Skip);
        }
        backward(&p, grads, ws, false, false, Some((dh_n, dc_n)));
    })?;
    ws.kept_forward = None;
    table_grads(config, layout, grads, ws, batch, opts);
    Ok(())
}

/// Checks the gradients of the final states of a batch of `b` sequences: `dh_n` `[L·D, B, S]`
/// and, for an LSTM, `dc_n` `[L·D, B, H]` (else empty), every value finite.
///
/// # Errors
/// [`crate::RnnError::ShapeMismatch`] for another length, [`crate::RnnError::NonFiniteInput`]
/// for a NaN or infinity.
pub(crate) fn check_final_state_grads<T: Float>(
    config: &RnnConfig,
    b: usize,
    (dh_n, dc_n): (&[T], &[T]),
) -> Result<()> {
    check_state("dh_n", dh_n, config, b, false)?;
    if config.cell.has_cell_state() {
        check_state("dc_n", dc_n, config, b, true)
    } else if dc_n.is_empty() {
        Ok(())
    } else {
        Err(shape("dc_n", "[] (the cell has no cell state)", dc_n.len()))
    }
}
