//! The GRU cell (PyTorch's `nn.GRU`, gates `r, z, n`):
//! `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`, `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`.
//!
//! Because `r` gates only the hidden side of `n`, the input side (`buf.z`) and the hidden
//! side (`buf.zh`) of the pre-activations are kept apart, and so are their gradients.

use faer::Accum;
use kernels::gemm::transpose;
use kernels::{Float, gates, reduce};

use super::{InitialState, LayerGrads, LayerPass};
use crate::workspace::LayerBuffers;

/// `Zx = X W_ihᵀ` (one GEMM), then per step `Zh_t = h_{t-1} W_hhᵀ` (all three gates in one
/// product) and one fused pass: gates and `h_t`.
pub(super) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    h0: InitialState<'_, T>,
) {
    let (t_len, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    let s = p.slots;
    let (b_ih, b_hh) = (&p.params[s.b_ih.clone()], &p.params[s.b_hh.clone()]);
    transpose(&mut buf.w_hh_t, p.w_hh(), gh, h);
    p.input_projection(&mut buf.z);
    h0.write(&mut buf.hs[..step], h);
    for t in 0..t_len {
        let gates = t * gate_step..(t + 1) * gate_step;
        let (zx_t, zh_t) = (&mut buf.z[gates.clone()], &mut buf.zh[gates]);
        let (past, future) = buf.hs.split_at_mut((t + 1) * step);
        let (h_prev, h_t) = (&past[t * step..], &mut future[..step]);
        p.recurrent(zh_t, Accum::Replace, h_prev, &buf.w_hh_t);
        gates::gru_forward(zx_t, zh_t, b_ih, b_hh, h_prev, h_t, h);
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
    let (t_len, b, h, gh) = p.dims();
    let (step, gate_step) = (b * h, b * gh);
    for t in (0..t_len).rev() {
        let gates = t * gate_step..(t + 1) * gate_step;
        let (dzx_t, dzh_t) = (&mut buf.z[gates.clone()], &mut buf.zh[gates]);
        let h_prev = &buf.hs[t * step..(t + 1) * step];
        let (before, rest) = buf.dh.split_at_mut(t * step);
        let dh_t = &rest[..step];
        out.record(t, dh_t);
        let dh_prev = if t > 0 {
            &mut before[(t - 1) * step..]
        } else {
            &mut out.dh0[..]
        };
        if p.batch.all_active(t) {
            gates::gru_backward(dzx_t, dzh_t, h_prev, dh_t, dh_prev, Accum::Add, h);
        } else {
            for bb in 0..b {
                let (r, g) = (bb * h..(bb + 1) * h, bb * gh..(bb + 1) * gh);
                if p.batch.active(t, bb) {
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
        }
        p.recurrent_backward(dh_prev, Accum::Add, dzh_t);
    }
    let rows = t_len * b;
    p.weight_grads(
        out.grads,
        &buf.z[..rows * gh],
        Some(&buf.zh[..rows * gh]),
        &buf.hs,
        out.dinput,
    );
}
