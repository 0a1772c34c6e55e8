//! The GRU cell (PyTorch's `nn.GRU`, gates `r, z, n`):
//! `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`, `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`.
//!
//! Because `r` gates only the hidden side of `n`, the input side (`buf.z`) and the hidden
//! side (`buf.zh`) of the pre-activations are kept apart, and so are their gradients.

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use kernels::{Float, gates, reduce};

use super::blocks::{self, Piece, Sharing, Step, row_mut, view};
use super::{LayerGrads, LayerPass, record, this_and_previous};
use crate::workspace::{LayerBuffers, UnitBlock};

/// `Zx = X W_ihᵀ` for the chunk's rows (one GEMM), then per step `Zh_t = h_{t-1} W_hhᵀ`
/// (all three gates in one product) and one fused pass: gates and `h_t`.
pub(super) fn forward<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>) {
    let (_, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    p.input_projection(&mut buf.z, &mut buf.gather);
    if p.halves() {
        return forward_halves(p, buf);
    }
    let (b_ih, b_hh) = p.separate_biases(&mut buf.bias);
    for t in p.steps.clone() {
        let gates = t * gate_step..(t + 1) * gate_step;
        let (zx_t, zh_t) = (&mut buf.z[gates.clone()], &mut buf.zh[gates]);
        let (past, future) = buf.hs.split_at_mut((t + 1) * step);
        let (h_prev, h_t) = (&past[t * step..], &mut future[..step]);
        // The rows past the live ones have all finished: carried, not computed.
        let live = p.batch.live_rows(t);
        p.recurrent(live, zh_t, Accum::Replace, h_prev, &buf.w_hh_t);
        let (n, g) = (live * h, live * gh);
        let (zx_live, zh_live) = (&mut zx_t[..g], &mut zh_t[..g]);
        gates::gru_forward(zx_live, zh_live, b_ih, b_hh, &h_prev[..n], &mut h_t[..n], h);
        p.carry_finished(t, h_t, h_prev);
    }
}

/// The mirror of [`forward`]: per step the fused gate backward (both sides become their
/// gradients in place, the direct `z ⊙ dh` path goes into `dh_{t-1}`) and
/// `dh_{t-1} += dZh_t W_hh`; then the weight gradients over all steps.
pub(super) fn backward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    mut out: LayerGrads<'_, T>,
) {
    if p.halves() {
        backward_halves(p, buf, &mut out);
    } else {
        backward_steps(p, buf, &mut out);
    }
    p.weight_grads(out.grads, buf, out.dinput);
}

/// [`backward`]'s step loop, each step whole.
fn backward_steps<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: &mut LayerGrads<'_, T>,
) {
    let (_, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    for t in p.steps.clone().rev() {
        let gates = t * gate_step..(t + 1) * gate_step;
        let (dzx_t, dzh_t) = (&mut buf.z[gates.clone()], &mut buf.zh[gates]);
        let h_prev = &buf.hs[t * step..(t + 1) * step];
        let (dh_t, dh_prev) = this_and_previous(&mut buf.dh, out.dh0, t, p.steps.start, step);
        record(&mut out.grad_h_norms, t, dh_t);
        for (rows, active) in blocks::row_runs(b, |r| p.batch.active(t, r)) {
            let (r, g) = (rows.start * h..rows.end * h, rows.start * gh..rows.end * gh);
            if active {
                gates::gru_backward(
                    &mut dzx_t[g.clone()],
                    &mut dzh_t[g],
                    &h_prev[r.clone()],
                    &dh_t[r.clone()],
                    &mut dh_prev[r],
                    Accum::Add,
                    h,
                );
            } else {
                // The state passed through unchanged: so does its gradient.
                dzx_t[g.clone()].fill(T::zero());
                dzh_t[g].fill(T::zero());
                reduce::axpy(&mut dh_prev[r.clone()], T::one(), &dh_t[r]);
            }
        }
        p.recurrent_backward(p.batch.live_rows(t), dh_prev, Accum::Add, dzh_t);
    }
}

/// [`forward`]'s step loop with each step split into two unit blocks
/// ([`blocks::forward_step`]: whole blocks on one thread, pulled pieces of them on two).
fn forward_halves<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>) {
    let (_, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    let LayerBuffers {
        hs,
        z,
        zh,
        blocks: unit_blocks,
        bias,
        ..
    } = buf;
    let [u0, u1] = blocks::two(unit_blocks);
    let biases = p.separate_biases(bias);
    let sharing = Sharing::for_step::<T>(b, h, 3);
    for t in p.steps.clone() {
        // The rows past the live ones have all finished: carried, not computed.
        let live = p.batch.live_rows(t);
        let gates = t * gate_step..t * gate_step + live * gh;
        let [x0, x1] = blocks::split_gates::<T, 3>(view(&mut z[gates.clone()], live, gh), h);
        let [y0, y1] = blocks::split_gates::<T, 3>(view(&mut zh[gates], live, gh), h);
        let (past, future) = hs.split_at_mut((t + 1) * step);
        let h_prev = &past[t * step..];
        let h_t = blocks::carry_past_live(&mut future[..step], h_prev, live, h);
        let [h0, h1] = blocks::split_units(view(h_t, live, h), h);
        let halves = [(u0, both(x0, y0), [h0]), (u1, both(x1, y1), [h1])];
        blocks::forward_step(p.pair(), live, sharing, halves, |piece| {
            forward_piece(Step { p, t }, piece, h_prev, biases);
        });
    }
}

/// The input side's three gate views, then the hidden side's: a GRU piece's gates.
fn both<'a, T>([a, b, c]: [MatMut<'a, T>; 3], [d, e, f]: [MatMut<'a, T>; 3]) -> [MatMut<'a, T>; 6] {
    [a, b, c, d, e, f]
}

/// One piece of one forward step (a whole block, or a tile of one): its hidden-side
/// product, then the gates and its units of `h_t`. `piece.gates` holds the input side's
/// three gate columns, then the hidden side's; `(b_ih, b_hh)` are the layer's biases.
fn forward_piece<T: Float>(
    step: Step<'_, T>,
    piece: &mut Piece<'_, T, 6, 1>,
    h_prev: &[T],
    (b_ih, b_hh): (&[T], &[T]),
) {
    let Step { p, t } = step;
    let (_, b, h, _) = p.dims();
    let prev = MatRef::from_row_major_slice(h_prev, b, h);
    piece.forward_product(3, Accum::Replace, prev);
    let units = piece.units();
    let [xr, xz, xn, hr, hz, hn] = blocks::reborrow(&mut piece.gates);
    let [h_t] = &mut piece.states;
    gates::gru_forward_tile(
        [xr, xz, xn],
        [hr, hz, hn],
        blocks::gate_units(b_ih, h, &units),
        blocks::gate_units(b_hh, h, &units),
        blocks::state_tile(h_prev, h, piece.rows.clone(), units),
        h_t.rb_mut(),
    );
    piece.carry_finished(p.batch.finished(t), h, [h_prev]);
}

/// [`backward`]'s step loop with each step split into two unit blocks; as for the RNN, a
/// block's product for step `t+1` and its gate backward for step `t` share one fork.
fn backward_halves<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: &mut LayerGrads<'_, T>,
) {
    let (t_len, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    let LayerBuffers {
        z,
        zh,
        hs,
        dh,
        blocks: unit_blocks,
        ..
    } = buf;
    let [u0, u1] = blocks::two(unit_blocks);
    let telemetry = out.telemetry();
    let pair = p.pair();
    for t in p.steps.clone().rev() {
        let gates = t * gate_step..(t + 1) * gate_step;
        let [x0, x1] = blocks::split_gates::<T, 3>(view(&mut z[gates], b, gh), h);
        let (done, later) = zh.split_at_mut((t + 1) * gate_step);
        let dzh_next = (t + 1 < t_len).then(|| blocks::live_grads(p.batch, t + 1, later, gh));
        let [y0, y1] = blocks::split_gates::<T, 3>(view(&mut done[t * gate_step..], b, gh), h);
        let (dh_t, dh_prev) = this_and_previous(dh, out.dh0, t, p.steps.start, step);
        let [d0, d1] = blocks::split_units(view(dh_t, b, h), h);
        let [p0, p1] = blocks::split_units(view(dh_prev, b, h), h);
        let h_prev = &hs[t * step..(t + 1) * step];
        let block = |dz, grads, unit, sq: &mut T| {
            let sq = telemetry.then_some(sq);
            backward_block(Step { p, t }, dz, grads, dzh_next, h_prev, unit, sq)
        };
        let squares = blocks::join_summed(
            pair,
            |sq| block([x0, y0], [d0, p0], u0, sq),
            |sq| block([x1, y1], [d1, p1], u1, sq),
        );
        out.record_squares(t, || squares);
    }
    if p.first_chunk() {
        let dzh0 = MatRef::from_row_major_slice(&zh[..gate_step], b, gh);
        blocks::initial_state_product(pair, out.dh0, dzh0, unit_blocks);
    }
}

/// One block of one backward step: both sides' gate columns become their gradients; `grads`
/// are the block's units of `dL/dh_t` (without the recurrent term yet) and `dL/dh_{t-1}`.
fn backward_block<T: Float>(
    step: Step<'_, T>,
    [mut dzx, mut dzh]: [[MatMut<'_, T>; 3]; 2],
    [mut dh_t, dh_prev]: [MatMut<'_, T>; 2],
    dzh_next: Option<MatRef<'_, T>>,
    h_prev: &[T],
    block: &UnitBlock<T>,
    squares: Option<&mut T>,
) {
    let Step { p, t } = step;
    let (_, b, h, _) = p.dims();
    let units = &block.units;
    if let Some(next) = dzh_next {
        blocks::backward_product(dh_t.rb_mut(), next, block);
    }
    if let Some(sq) = squares {
        *sq = blocks::sum_squares(&mut dh_t);
    }
    let mut grads = [dh_t, dh_prev];
    for (rows, active) in blocks::row_runs(b, |r| p.batch.active(t, r)) {
        let [dh_t, dh_prev] = blocks::subrows_mut(&mut grads, rows.clone());
        let [xr, xz, xn] = blocks::subrows_mut(&mut dzx, rows.clone());
        let [hr, hz, hn] = blocks::subrows_mut(&mut dzh, rows.clone());
        if active {
            gates::gru_backward_tile(
                [xr, xz, xn],
                [hr, hz, hn],
                blocks::state_tile(h_prev, h, rows, units.clone()),
                dh_t.as_ref(),
                dh_prev,
                Accum::Add,
            );
        } else {
            // The state passed through unchanged: so does its gradient.
            for mut g in [xr, xz, xn, hr, hz, hn] {
                g.fill(T::zero());
            }
            let (mut dh_t, mut dh_prev) = (dh_t, dh_prev);
            for r in 0..rows.len() {
                reduce::axpy(row_mut(&mut dh_prev, r), T::one(), row_mut(&mut dh_t, r));
            }
        }
    }
}
