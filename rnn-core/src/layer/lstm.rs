//! The LSTM cell (PyTorch's `nn.LSTM`, gates `i, f, g, o`):
//! `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`; with projections, [`super::lstmp`]'s
//! step loops.

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use kernels::{Float, gates, reduce};

use super::blocks::{self, Piece, Sharing, Step, row_mut, view};
use super::{InitialState, LayerGrads, LayerPass, lstmp, record, this_and_previous};
use crate::workspace::{LayerBuffers, UnitBlock};

/// `Z = X W_ihᵀ` for the chunk's rows (one GEMM), then per step `Z_t += h_{t-1} W_hhᵀ`
/// (all four gates in one product) and one fused pass: gates, `c_t`, `h_t`. `buf.z` keeps
/// the activated gates.
pub(super) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    c0: InitialState<'_, T>,
) {
    let (_, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    if p.first_chunk() {
        p.summed_bias(&mut buf.bias);
        c0.write(&mut buf.cs[..step], h);
    }
    p.input_projection(&mut buf.z, &mut buf.gather);
    if let Some(w_hr) = p.w_hr() {
        return lstmp::forward(p, buf, w_hr);
    }
    if p.halves() {
        return forward_halves(p, buf);
    }
    for t in p.steps.clone() {
        let z_t = &mut buf.z[t * gate_step..(t + 1) * gate_step];
        let (h_past, h_future) = buf.hs.split_at_mut((t + 1) * step);
        let (c_past, c_future) = buf.cs.split_at_mut((t + 1) * step);
        let (h_prev, h_t) = (&h_past[t * step..], &mut h_future[..step]);
        let (c_prev, c_t) = (&c_past[t * step..], &mut c_future[..step]);
        // The rows past the live ones have all finished: carried, not computed.
        let live = p.batch.live_rows(t);
        p.recurrent(live, z_t, Accum::Add, h_prev, &buf.w_hh_t);
        let (n, z_live) = (live * h, &mut z_t[..live * gh]);
        let (c_live, h_live) = (&mut c_t[..n], &mut h_t[..n]);
        gates::lstm_forward(z_live, &buf.bias, &c_prev[..n], c_live, h_live, h);
        p.carry_finished(t, h_t, h_prev);
        p.carry_finished(t, c_t, c_prev);
    }
}

/// The mirror of [`forward`]: per step the fused gate backward (the gates become their
/// pre-activation gradients in place, `dL/dc` is carried in `buf.dc`) and
/// `dh_{t-1} += dZ_t W_hh`; then the weight gradients over all steps.
pub(super) fn backward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    mut out: LayerGrads<'_, T>,
) {
    // `buf.dc` carries dL/dc from step to step, and from chunk to chunk.
    if p.last_chunk() {
        match out.dc_end {
            Some(carry) => buf.dc.copy_from_slice(carry),
            None => buf.dc.fill(T::zero()),
        }
    }
    if let Some(w_hr) = p.w_hr() {
        lstmp::backward_steps(p, buf, &mut out, w_hr);
    } else if p.halves() {
        backward_halves(p, buf, &mut out);
    } else {
        backward_steps(p, buf, &mut out);
    }
    if p.first_chunk() {
        out.dc0.copy_from_slice(&buf.dc);
    }
    p.projection_grads(out.grads, &buf.dh, &buf.ms, &mut buf.gather);
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
        let dz_t = &mut buf.z[t * gate_step..(t + 1) * gate_step];
        let (c_prev, c_t) = (
            &buf.cs[t * step..(t + 1) * step],
            &buf.cs[(t + 1) * step..(t + 2) * step],
        );
        let (dh_t, dh_prev) = this_and_previous(&mut buf.dh, out.dh0, t, p.steps.start, step);
        record(&mut out.grad_h_norms, t, dh_t);
        for (rows, active) in blocks::row_runs(b, |r| p.batch.active(t, r)) {
            let (r, g) = (rows.start * h..rows.end * h, rows.start * gh..rows.end * gh);
            if active {
                let (cp, c, dh) = (&c_prev[r.clone()], &c_t[r.clone()], &dh_t[r.clone()]);
                gates::lstm_backward(&mut dz_t[g], cp, c, dh, &mut buf.dc[r], h);
            } else {
                // The state passed through unchanged, and so do both gradients (dc stays
                // in the carry).
                dz_t[g].fill(T::zero());
                reduce::axpy(&mut dh_prev[r.clone()], T::one(), &dh_t[r]);
            }
        }
        p.recurrent_backward(p.batch.live_rows(t), dh_prev, Accum::Add, dz_t);
    }
}

/// [`forward`]'s step loop with each step split into two unit blocks
/// ([`blocks::forward_step`]: whole blocks on one thread, pulled pieces of them on two).
fn forward_halves<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>) {
    let (_, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    let LayerBuffers {
        hs,
        cs,
        z,
        blocks: unit_blocks,
        bias,
        ..
    } = buf;
    let [u0, u1] = blocks::two(unit_blocks);
    let sharing = Sharing::for_step::<T>(b, h, 4);
    for t in p.steps.clone() {
        let (h_past, h_future) = hs.split_at_mut((t + 1) * step);
        let (c_past, c_future) = cs.split_at_mut((t + 1) * step);
        let prev = State {
            h: &h_past[t * step..],
            c: &c_past[t * step..],
        };
        let live = p.batch.live_rows(t);
        let h_t = blocks::carry_past_live(&mut h_future[..step], prev.h, live, h);
        let c_t = blocks::carry_past_live(&mut c_future[..step], prev.c, live, h);
        let z_t = view(&mut z[t * gate_step..t * gate_step + live * gh], live, gh);
        let [z0, z1] = blocks::split_gates::<T, 4>(z_t, h);
        let [h0, h1] = blocks::split_units(view(h_t, live, h), h);
        let [c0, c1] = blocks::split_units(view(c_t, live, h), h);
        let halves = [(u0, z0, [h0, c0]), (u1, z1, [h1, c1])];
        blocks::forward_step(p.pair(), live, sharing, halves, |piece| {
            forward_piece(Step { p, t }, piece, prev, bias);
        });
    }
}

/// A step's whole `[B, H]` states.
#[derive(Clone, Copy)]
struct State<'a, T> {
    h: &'a [T],
    c: &'a [T],
}

/// One piece of one forward step (a whole block, or a tile of one): its products, then the
/// gates and its units of `c_t`, `h_t` (`piece.states`).
fn forward_piece<T: Float>(
    step: Step<'_, T>,
    piece: &mut Piece<'_, T, 4, 2>,
    prev: State<'_, T>,
    bias: &[T],
) {
    let Step { p, t } = step;
    let (_, b, h, _) = p.dims();
    piece.forward_product(0, Accum::Add, MatRef::from_row_major_slice(prev.h, b, h));
    let units = piece.units();
    let gates = blocks::reborrow(&mut piece.gates);
    let [h_t, c_t] = &mut piece.states;
    gates::lstm_forward_tile(
        gates,
        blocks::gate_units(bias, h, &units),
        blocks::state_tile(prev.c, h, piece.rows.clone(), units),
        c_t.rb_mut(),
        h_t.rb_mut(),
    );
    piece.carry_finished(p.batch.finished(t), h, [prev.h, prev.c]);
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
        cs,
        dh,
        dc,
        blocks: unit_blocks,
        ..
    } = buf;
    let [u0, u1] = blocks::two(unit_blocks);
    let telemetry = out.telemetry();
    let pair = p.pair();
    for t in p.steps.clone().rev() {
        let (done, later) = z.split_at_mut((t + 1) * gate_step);
        let dz_next = (t + 1 < t_len).then(|| blocks::live_grads(p.batch, t + 1, later, gh));
        let [z0, z1] = blocks::split_gates::<T, 4>(view(&mut done[t * gate_step..], b, gh), h);
        let (dh_t, dh_prev) = this_and_previous(dh, out.dh0, t, p.steps.start, step);
        let [d0, d1] = blocks::split_units(view(dh_t, b, h), h);
        let [p0, p1] = blocks::split_units(view(dh_prev, b, h), h);
        let [c0, c1] = blocks::split_units(view(dc, b, h), h);
        let states = State {
            h: &cs[t * step..(t + 1) * step],
            c: &cs[(t + 1) * step..(t + 2) * step],
        };
        let block = |dz, grads, unit, sq: &mut T| {
            let sq = telemetry.then_some(sq);
            backward_block(Step { p, t }, dz, grads, dz_next, states, unit, sq)
        };
        let squares = blocks::join_summed(
            pair,
            |sq| block(z0, [d0, p0, c0], u0, sq),
            |sq| block(z1, [d1, p1, c1], u1, sq),
        );
        out.record_squares(t, || squares);
    }
    if p.first_chunk() {
        let dz0 = MatRef::from_row_major_slice(&z[..gate_step], b, gh);
        blocks::initial_state_product(pair, out.dh0, dz0, unit_blocks);
    }
}

/// One block of one backward step. `grads` are the block's units of `dL/dh_t` (without the
/// recurrent term yet), `dL/dh_{t-1}` and the `dL/dc` carry; `cells` holds `c_{t-1}` (as
/// `h`) and `c_t` (as `c`).
fn backward_block<T: Float>(
    step: Step<'_, T>,
    mut dz: [MatMut<'_, T>; 4],
    [mut dh_t, dh_prev, dc]: [MatMut<'_, T>; 3],
    dz_next: Option<MatRef<'_, T>>,
    cells: State<'_, T>,
    block: &UnitBlock<T>,
    squares: Option<&mut T>,
) {
    let Step { p, t } = step;
    let (_, b, h, _) = p.dims();
    let units = &block.units;
    if let Some(next) = dz_next {
        blocks::backward_product(dh_t.rb_mut(), next, block);
    }
    if let Some(sq) = squares {
        *sq = blocks::sum_squares(&mut dh_t);
    }
    let mut grads = [dh_t, dh_prev, dc];
    for (rows, active) in blocks::row_runs(b, |r| p.batch.active(t, r)) {
        let [dh_t, dh_prev, dc] = blocks::subrows_mut(&mut grads, rows.clone());
        let dz = blocks::subrows_mut(&mut dz, rows.clone());
        if active {
            gates::lstm_backward_tile(
                dz,
                blocks::state_tile(cells.h, h, rows.clone(), units.clone()),
                blocks::state_tile(cells.c, h, rows, units.clone()),
                dh_t.as_ref(),
                dc,
            );
        } else {
            // The state passed through unchanged, and so do both gradients (dc stays in
            // the carry).
            for mut g in dz {
                g.fill(T::zero());
            }
            let (mut dh_t, mut dh_prev) = (dh_t, dh_prev);
            for r in 0..rows.len() {
                reduce::axpy(row_mut(&mut dh_prev, r), T::one(), row_mut(&mut dh_t, r));
            }
        }
    }
}
