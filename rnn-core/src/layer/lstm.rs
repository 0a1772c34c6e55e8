//! The LSTM cell (PyTorch's `nn.LSTM`, gates `i, f, g, o`):
//! `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`.

use faer::Accum;
use kernels::gemm::transpose;
use kernels::{Float, gates, reduce};

use super::{InitialState, LayerGrads, LayerPass};
use crate::workspace::LayerBuffers;

/// `Z = X W_ihᵀ` (one GEMM), then per step `Z_t += h_{t-1} W_hhᵀ` (all four gates in one
/// product) and one fused pass: gates, `c_t`, `h_t`. `buf.z` keeps the activated gates.
pub(super) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    h0: InitialState<'_, T>,
    c0: InitialState<'_, T>,
) {
    let (t_len, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    p.summed_bias(&mut buf.bias);
    transpose(&mut buf.w_hh_t, p.w_hh(), gh, h);
    p.input_projection(&mut buf.z);
    h0.write(&mut buf.hs[..step], h);
    c0.write(&mut buf.cs[..step], h);
    for t in 0..t_len {
        let z_t = &mut buf.z[t * gate_step..(t + 1) * gate_step];
        let (h_past, h_future) = buf.hs.split_at_mut((t + 1) * step);
        let (c_past, c_future) = buf.cs.split_at_mut((t + 1) * step);
        let (h_prev, h_t) = (&h_past[t * step..], &mut h_future[..step]);
        let (c_prev, c_t) = (&c_past[t * step..], &mut c_future[..step]);
        p.recurrent(z_t, Accum::Add, h_prev, &buf.w_hh_t);
        gates::lstm_forward(z_t, &buf.bias, c_prev, c_t, h_t, h);
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
    let (t_len, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    match out.dc_end {
        Some(carry) => buf.dc.copy_from_slice(carry),
        None => buf.dc.fill(T::zero()),
    }
    for t in (0..t_len).rev() {
        let dz_t = &mut buf.z[t * gate_step..(t + 1) * gate_step];
        let (c_prev, c_t) = (
            &buf.cs[t * step..(t + 1) * step],
            &buf.cs[(t + 1) * step..(t + 2) * step],
        );
        let (before, rest) = buf.dh.split_at_mut(t * step);
        let dh_t = &rest[..step];
        out.record(t, dh_t);
        let dh_prev = if t > 0 {
            &mut before[(t - 1) * step..]
        } else {
            &mut out.dh0[..]
        };
        if p.batch.all_active(t) {
            gates::lstm_backward(dz_t, c_prev, c_t, dh_t, &mut buf.dc, h);
        } else {
            for bb in 0..b {
                let (r, g) = (bb * h..(bb + 1) * h, bb * gh..(bb + 1) * gh);
                if p.batch.active(t, bb) {
                    let (cp, c, dh) = (&c_prev[r.clone()], &c_t[r.clone()], &dh_t[r.clone()]);
                    gates::lstm_backward(&mut dz_t[g], cp, c, dh, &mut buf.dc[r], h);
                } else {
                    // The state passed through unchanged, and so do both gradients (dc
                    // stays in the carry).
                    dz_t[g].fill(T::zero());
                    reduce::axpy(&mut dh_prev[r.clone()], T::one(), &dh_t[r]);
                }
            }
        }
        p.recurrent_backward(dh_prev, Accum::Add, dz_t);
    }
    out.dc0.copy_from_slice(&buf.dc);
    let rows = t_len * b;
    p.weight_grads(out.grads, &buf.z[..rows * gh], None, &buf.hs, out.dinput);
}
