//! The Elman cell: `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use kernels::{Float, activation, reduce};

use super::blocks::{self, Piece, Sharing, Step, row_mut, view};
use super::{LayerGrads, LayerPass, record, this_and_previous};
use crate::config::Nonlinearity;
use crate::workspace::{LayerBuffers, UnitBlock};

/// `Z = X W_ihᵀ` for the chunk's rows (one GEMM), then per step `Z_t += h_{t-1} W_hhᵀ`
/// and `h_t = act(Z_t + b_ih + b_hh)` on the step's live rows ([`Batch::live_rows`]; the
/// rows past them, all finished, are carried).
///
/// [`Batch::live_rows`]: crate::batch::Batch::live_rows
pub(super) fn forward<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>) {
    let (_, b, h, _) = p.dims();
    let step = b * h;
    if p.first_chunk() {
        p.summed_bias(&mut buf.bias);
    }
    p.input_projection(&mut buf.z, &mut buf.gather);
    if p.halves() {
        return forward_halves(p, buf);
    }
    for t in p.steps.clone() {
        let z_t = &mut buf.z[t * step..(t + 1) * step];
        let (past, future) = buf.hs.split_at_mut((t + 1) * step);
        let h_prev = &past[t * step..];
        let h_t = &mut future[..step];
        let live = p.batch.live_rows(t);
        p.recurrent(live, z_t, Accum::Add, h_prev, &buf.w_hh_t);
        let (z_live, h_live) = (&mut z_t[..live * h], &mut h_t[..live * h]);
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::bias_tanh(h_live, z_live, &buf.bias),
            Nonlinearity::Relu => activation::bias_relu(h_live, z_live, &buf.bias),
        }
        p.carry_finished(t, h_t, h_prev);
    }
}

/// The mirror of [`forward`]. `buf.z` holds `dL/dh_t` from above on entry (the
/// pre-activations are dead by then) and becomes `dZ_t` in place.
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
    let (_, b, h, _) = p.dims();
    let step = b * h;
    for t in p.steps.clone().rev() {
        // z holds G_t = dL/dh_t on entry and becomes dZ_t in place.
        let (dz_t, dh_prev) = this_and_previous(&mut buf.z, out.dh0, t, p.steps.start, step);
        record(&mut out.grad_h_norms, t, dz_t);
        let h_t = &buf.hs[(t + 1) * step..(t + 2) * step];
        // A finished sequence's state passed through unchanged: so does its gradient.
        for bb in p.batch.finished(t) {
            let rows = bb * h..(bb + 1) * h;
            reduce::axpy(&mut dh_prev[rows.clone()], T::one(), &dz_t[rows]);
        }
        let live = p.batch.live_rows(t);
        let (dz_live, h_live) = (&mut dz_t[..live * h], &h_t[..live * h]);
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::tanh_backward_in_place(dz_live, h_live),
            Nonlinearity::Relu => activation::relu_backward_in_place(dz_live, h_live),
        }
        for bb in p.batch.finished(t) {
            dz_t[bb * h..(bb + 1) * h].fill(T::zero());
        }
        // dh_{t-1} += dZ_t W_hh, into G_{t-1} (or dh0, zeroed by the caller, at t = 0); the
        // rows past the live ones have a zero dZ_t.
        p.recurrent_backward(live, dh_prev, Accum::Add, dz_t);
    }
}

/// [`forward`]'s step loop with each step split into two unit blocks, whole at two threads
/// too: pulled pieces measured 2-3 % slower on char (42.1-44.1 ms per training step as
/// whole blocks, 44.1-44.8 in pieces, alternating), whose 85 µs steps leave little to
/// balance and whose halves of `W_hh` fit each core's L2, which pieces taken across the
/// middle do not use.
fn forward_halves<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>) {
    let (_, b, h, _) = p.dims();
    let step = b * h;
    let LayerBuffers {
        hs,
        z,
        blocks: unit_blocks,
        bias,
        ..
    } = buf;
    let [u0, u1] = blocks::two(unit_blocks);
    for t in p.steps.clone() {
        let live = p.batch.live_rows(t);
        let (past, future) = hs.split_at_mut((t + 1) * step);
        let h_prev = &past[t * step..];
        let h_t = blocks::carry_past_live(&mut future[..step], h_prev, live, h);
        let z_t = &mut z[t * step..t * step + live * h];
        let [z0, z1] = blocks::split_gates::<T, 1>(view(z_t, live, h), h);
        let [h0, h1] = blocks::split_units(view(h_t, live, h), h);
        let halves = [(u0, z0, [h0]), (u1, z1, [h1])];
        blocks::forward_step(p.pair(), live, Sharing::Blocks, halves, |piece| {
            forward_piece(Step { p, t }, piece, h_prev, bias);
        });
    }
}

/// One piece of one forward step (a whole block, or a tile of one): its product, the
/// activation and its units of `h_t`.
fn forward_piece<T: Float>(
    step: Step<'_, T>,
    piece: &mut Piece<'_, T, 1, 1>,
    h_prev: &[T],
    bias: &[T],
) {
    let Step { p, t } = step;
    let (_, b, h, _) = p.dims();
    piece.forward_product(0, Accum::Add, MatRef::from_row_major_slice(h_prev, b, h));
    let units = piece.units();
    let bias = &bias[units.clone()];
    let ([z], [h_t]) = (&mut piece.gates, &mut piece.states);
    for i in 0..piece.rows.len() {
        let (z_r, h_r) = (row_mut(z, i), row_mut(h_t, i));
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::bias_tanh(h_r, z_r, bias),
            Nonlinearity::Relu => activation::bias_relu(h_r, z_r, bias),
        }
    }
    piece.carry_finished(p.batch.finished(t), h, [h_prev]);
}

/// [`backward`]'s step loop with each step split into two unit blocks. A block's product
/// for step `t+1` (`dL/dh_t += dZ_{t+1} W_hh`, its units) and its elementwise pass for step
/// `t` run in the same fork: the product completes exactly the units the pass then reads.
/// So the product of a chunk's first step runs with the next chunk's last step, or, for the
/// sequence's first step, after the loop.
fn backward_halves<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: &mut LayerGrads<'_, T>,
) {
    let (t_len, b, h, _) = p.dims();
    let step = b * h;
    let (z, hs, unit_blocks) = (&mut buf.z, &buf.hs, &buf.blocks);
    let [u0, u1] = blocks::two(unit_blocks);
    let telemetry = out.telemetry();
    let pair = p.pair();
    for t in p.steps.clone().rev() {
        let (done, later) = z.split_at_mut((t + 1) * step);
        let dz_next = (t + 1 < t_len).then(|| blocks::live_grads(p.batch, t + 1, later, h));
        let (cur, prev) = this_and_previous(done, out.dh0, t, p.steps.start, step);
        let h_t = &hs[(t + 1) * step..(t + 2) * step];
        let [g0, g1] = blocks::split_units(view(cur, b, h), h);
        let [p0, p1] = blocks::split_units(view(prev, b, h), h);
        let block = |g_t, g_prev, unit, sq: &mut T| {
            let sq = telemetry.then_some(sq);
            backward_block(Step { p, t }, g_t, g_prev, dz_next, h_t, unit, sq)
        };
        let squares =
            blocks::join_summed(pair, |sq| block(g0, p0, u0, sq), |sq| block(g1, p1, u1, sq));
        out.record_squares(t, || squares);
    }
    if p.first_chunk() {
        let dz0 = MatRef::from_row_major_slice(&z[..step], b, h);
        blocks::initial_state_product(pair, out.dh0, dz0, unit_blocks);
    }
}

/// One block of one backward step. `g_t` (its units of `dL/dh_t`, without the recurrent
/// term yet) becomes its units of `dZ_t`; finished sequences pass their gradient on to
/// `g_prev`. `squares` receives the block's share of `‖dL/dh_t‖²`.
fn backward_block<T: Float>(
    step: Step<'_, T>,
    mut g_t: MatMut<'_, T>,
    mut g_prev: MatMut<'_, T>,
    dz_next: Option<MatRef<'_, T>>,
    h_t: &[T],
    block: &UnitBlock<T>,
    squares: Option<&mut T>,
) {
    let Step { p, t } = step;
    let (_, _, h, _) = p.dims();
    let units = &block.units;
    if let Some(dz) = dz_next {
        blocks::backward_product(g_t.rb_mut(), dz, block);
    }
    if let Some(sq) = squares {
        *sq = blocks::sum_squares(&mut g_t);
    }
    for bb in p.batch.finished(t) {
        reduce::axpy(row_mut(&mut g_prev, bb), T::one(), row_mut(&mut g_t, bb));
    }
    for r in 0..p.batch.live_rows(t) {
        let h_r = &h_t[r * h + units.start..r * h + units.end];
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::tanh_backward_in_place(row_mut(&mut g_t, r), h_r),
            Nonlinearity::Relu => activation::relu_backward_in_place(row_mut(&mut g_t, r), h_r),
        }
    }
    for bb in p.batch.finished(t) {
        row_mut(&mut g_t, bb).fill(T::zero());
    }
}
