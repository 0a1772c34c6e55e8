//! The Elman cell: `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.

use faer::Accum;
use kernels::gemm::transpose;
use kernels::{Float, activation, reduce};

use super::{InitialState, LayerGrads, LayerPass};
use crate::config::Nonlinearity;
use crate::workspace::LayerBuffers;

/// `Z = X W_ihᵀ` (one GEMM), then per step `Z_t += h_{t-1} W_hhᵀ` and
/// `h_t = act(Z_t + b_ih + b_hh)`.
pub(super) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    h0: InitialState<'_, T>,
) {
    let (t_len, b, h, _) = p.dims();
    let step = b * h;
    p.summed_bias(&mut buf.bias);
    transpose(&mut buf.w_hh_t, p.w_hh(), h, h);
    p.input_projection(&mut buf.z);
    h0.write(&mut buf.hs[..step], h);
    for t in 0..t_len {
        let z_t = &mut buf.z[t * step..(t + 1) * step];
        let (past, future) = buf.hs.split_at_mut((t + 1) * step);
        let h_prev = &past[t * step..];
        let h_t = &mut future[..step];
        p.recurrent(z_t, Accum::Add, h_prev, &buf.w_hh_t);
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::bias_tanh(h_t, z_t, &buf.bias),
            Nonlinearity::Relu => activation::bias_relu(h_t, z_t, &buf.bias),
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
    let (t_len, b, h, _) = p.dims();
    let step = b * h;
    for t in (0..t_len).rev() {
        // z holds G_t = dL/dh_t on entry and becomes dZ_t in place.
        let (before, rest) = buf.z.split_at_mut(t * step);
        let dz_t = &mut rest[..step];
        out.record(t, dz_t);
        let h_t = &buf.hs[(t + 1) * step..(t + 2) * step];
        let dh_prev = if t > 0 {
            &mut before[(t - 1) * step..]
        } else {
            &mut out.dh0[..]
        };
        // A finished sequence's state passed through unchanged: so does its gradient.
        for bb in p.batch.finished(t) {
            let rows = bb * h..(bb + 1) * h;
            reduce::axpy(&mut dh_prev[rows.clone()], T::one(), &dz_t[rows]);
        }
        match p.config.nonlinearity {
            Nonlinearity::Tanh => activation::tanh_backward_in_place(dz_t, h_t),
            Nonlinearity::Relu => activation::relu_backward_in_place(dz_t, h_t),
        }
        for bb in p.batch.finished(t) {
            dz_t[bb * h..(bb + 1) * h].fill(T::zero());
        }
        // dh_{t-1} += dZ_t W_hh, into G_{t-1} (or dh0, zeroed by the caller, at t = 0).
        p.recurrent_backward(dh_prev, Accum::Add, dz_t);
    }
    let rows = t_len * b;
    p.weight_grads(out.grads, &buf.z[..rows * h], None, &buf.hs, out.dinput);
}
