//! The LSTM with projections (PyTorch's `proj_size`): `m_t = o ⊙ tanh(c_t)`,
//! `h_t = m_t W_hrᵀ`, `P` wide, the state the recurrent product reads.
//!
//! Per step, forward: `Z_t += h_{t-1} W_hhᵀ`, the fused gate pass into `c_t` and `m_t`,
//! then `h_t = m_t W_hrᵀ`. Backward: `dL/dm_t = dL/dh_t W_hr`, the fused gate backward,
//! `dL/dh_{t-1} += dZ_t W_hh`; after the loop `dW_hr = Σ_t dL/dh_tᵀ m_t` is one more
//! all-steps product ([`LayerPass::projection_grads`]).
//!
//! Every product of a step needs all of the step before it (the projection mixes every unit
//! into every state), so a unit split would meet twice per step. The batch's sequences are
//! independent, though: a split step runs as two blocks of sequences (batch rows), each of
//! which runs the whole chunk's steps for its rows without meeting the other. Each block
//! reads all of `W_hh` and `W_hr`, which are small beside the unprojected `W_hh` (`P < H`).
//! The blocks depend on the split only, so one thread runs the same two blocks one after the
//! other and the weights do not depend on the thread count.

use std::ops::Range;

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, Par};
use kernels::gemm::{GemmShape, gemm_nn, gemm_nt, transpose};
use kernels::{Float, gates, reduce};

use super::blocks::{self, row_mut, view};
use super::{LayerGrads, LayerPass, record};
use crate::workspace::LayerBuffers;

/// The batch rows each block of a step runs: all of them, or two halves.
fn row_blocks(p: &LayerPass<'_, impl Float>) -> [Range<usize>; 2] {
    let b = p.batch.batch;
    if p.row_halves() {
        [0..b / 2, b / 2..b]
    } else {
        [0..b, b..b]
    }
}

/// Runs `run` on each block's work: on the pass's two workers, or in turn on one thread (a
/// block without rows returns at once).
fn each_block<W: Send>(p: &LayerPass<'_, impl Float>, [w0, w1]: [W; 2], run: impl Fn(W) + Sync) {
    p.pair().join(|| run(w0), || run(w1));
}

/// `[n, rows · width]` time-major views of `buf` (`n` steps of `B` rows of `width`), split
/// at row `cut`: each block's rows of every step.
fn split_rows<T>(
    buf: &mut [T],
    n: usize,
    b: usize,
    width: usize,
    cut: usize,
) -> [MatMut<'_, T>; 2] {
    let (lo, hi) = view(&mut buf[..n * b * width], n, b * width).split_at_col_mut(cut * width);
    [lo, hi]
}

/// How many of the block `rows`' first rows step `t` computes: those before the step's
/// [`crate::batch::Batch::live_rows`] end.
fn live_in(p: &LayerPass<'_, impl Float>, t: usize, rows: &Range<usize>) -> usize {
    p.batch
        .live_rows(t)
        .saturating_sub(rows.start)
        .min(rows.len())
}

/// One block's rows: the step product and gate pass for its sequences.
struct Rows<'a, T> {
    /// The block's batch rows.
    rows: Range<usize>,
    z: MatMut<'a, T>,
    hs: MatMut<'a, T>,
    cs: MatMut<'a, T>,
    ms: MatMut<'a, T>,
}

/// [`super::lstm::forward`]'s step loop for a projected LSTM, in blocks of rows.
pub(super) fn forward<T: Float>(p: &LayerPass<'_, T>, buf: &mut LayerBuffers<T>, w_hr: &[T]) {
    let (t_len, b, h, gh) = p.dims();
    let s = p.state();
    if p.first_chunk() && p.packs_w_hh() {
        transpose(&mut buf.w_hr_t, w_hr, s, h);
    }
    let [r0, r1] = row_blocks(p);
    let cut = r0.end;
    let [z0, z1] = split_rows(&mut buf.z, t_len, b, gh, cut);
    let [h0, h1] = split_rows(&mut buf.hs, t_len + 1, b, s, cut);
    let [c0, c1] = split_rows(&mut buf.cs, t_len + 1, b, h, cut);
    let [m0, m1] = split_rows(&mut buf.ms, t_len, b, h, cut);
    let blocks = [
        Rows {
            rows: r0,
            z: z0,
            hs: h0,
            cs: c0,
            ms: m0,
        },
        Rows {
            rows: r1,
            z: z1,
            hs: h1,
            cs: c1,
            ms: m1,
        },
    ];
    let weights = StepWeights {
        bias: &buf.bias,
        w_hh_t: &buf.w_hh_t,
        w_hr,
        w_hr_t: &buf.w_hr_t,
    };
    each_block(p, blocks, |block| forward_rows(p, block, &weights));
}

/// What a forward step reads besides the states: the packed copies are empty in a one-step
/// pass, which reads the weights as they are ([`LayerPass::packs_w_hh`]).
struct StepWeights<'a, T> {
    /// `b_ih + b_hh`.
    bias: &'a [T],
    /// `[P, 4H]`.
    w_hh_t: &'a [T],
    /// `[P, H]`.
    w_hr: &'a [T],
    /// `[H, P]`.
    w_hr_t: &'a [T],
}

/// The chunk's steps for one block of rows.
fn forward_rows<T: Float>(p: &LayerPass<'_, T>, mut block: Rows<'_, T>, w: &StepWeights<'_, T>) {
    let rows = block.rows.clone();
    if rows.is_empty() {
        return;
    }
    let (_, _, h, gh) = p.dims();
    let s = p.state();
    for t in p.steps.clone() {
        let z_t = row_mut(&mut block.z, t);
        let (mut h_past, mut h_future) = block.hs.rb_mut().split_at_row_mut(t + 1);
        let (mut c_past, mut c_future) = block.cs.rb_mut().split_at_row_mut(t + 1);
        let (h_prev, h_t) = (&*row_mut(&mut h_past, t), row_mut(&mut h_future, 0));
        let (c_prev, c_t) = (&*row_mut(&mut c_past, t), row_mut(&mut c_future, 0));
        let m_t = row_mut(&mut block.ms, t);
        // The block's rows past the step's live ones have all finished: carried below.
        let k = live_in(p, t, &rows);
        let (z_k, h_prev_k, h_k) = (&mut z_t[..k * gh], &h_prev[..k * s], &mut h_t[..k * s]);
        let (c_prev_k, c_k, m_k) = (&c_prev[..k * h], &mut c_t[..k * h], &mut m_t[..k * h]);
        let (shape, projection) = (GemmShape::new(k, gh, s), GemmShape::new(k, s, h));
        if p.packs_w_hh() {
            gemm_nn(z_k, Accum::Add, h_prev_k, w.w_hh_t, shape, Par::Seq);
        } else {
            gemm_nt(z_k, Accum::Add, h_prev_k, p.w_hh(), shape, Par::Seq);
        }
        gates::lstm_forward(z_k, w.bias, c_prev_k, c_k, m_k, h);
        if p.packs_w_hh() {
            gemm_nn(h_k, Accum::Replace, m_k, w.w_hr_t, projection, Par::Seq);
        } else {
            gemm_nt(h_k, Accum::Replace, m_k, w.w_hr, projection, Par::Seq);
        }
        // A finished sequence keeps its states, and its `m_t` (zeroed) takes no part in
        // `dW_hr`.
        for r in p.batch.finished(t).filter(|r| rows.contains(r)) {
            let r = r - rows.start;
            h_t[r * s..(r + 1) * s].copy_from_slice(&h_prev[r * s..(r + 1) * s]);
            c_t[r * h..(r + 1) * h].copy_from_slice(&c_prev[r * h..(r + 1) * h]);
            m_t[r * h..(r + 1) * h].fill(T::zero());
        }
    }
}

/// One block's rows of the backward pass.
struct GradRows<'a, T> {
    rows: Range<usize>,
    /// The gates, then their pre-activation gradients.
    z: MatMut<'a, T>,
    cs: MatMut<'a, T>,
    /// `dL/dh_t`, to which the step after adds its recurrent term.
    dh: MatMut<'a, T>,
    /// `[rows, P]`: the carry into the step before the chunk.
    dh0: &'a mut [T],
    /// `[rows, H]`: `dL/dc`, carried from step to step.
    dc: &'a mut [T],
    /// `[rows, H]`: one step's `dL/dm_t`.
    dm: &'a mut [T],
}

/// [`super::lstm::backward`]'s step loop for a projected LSTM, in the blocks of rows the
/// forward pass ran. Leaves `dh` holding every step's whole `dL/dh_t` (for `dW_hr`) and
/// records the telemetry from it.
pub(super) fn backward_steps<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: &mut LayerGrads<'_, T>,
    w_hr: &[T],
) {
    let (t_len, b, h, gh) = p.dims();
    let s = p.state();
    let [r0, r1] = row_blocks(p);
    let cut = r0.end;
    let [z0, z1] = split_rows(&mut buf.z, t_len, b, gh, cut);
    let [c0, c1] = split_rows(&mut buf.cs, t_len + 1, b, h, cut);
    let [d0, d1] = split_rows(&mut buf.dh, t_len, b, s, cut);
    let (dh0_0, dh0_1) = out.dh0.split_at_mut(cut * s);
    let (dc0, dc1) = buf.dc.split_at_mut(cut * h);
    let (dm0, dm1) = buf.dm.split_at_mut(cut * h);
    let blocks = [
        GradRows {
            rows: r0,
            z: z0,
            cs: c0,
            dh: d0,
            dh0: dh0_0,
            dc: dc0,
            dm: dm0,
        },
        GradRows {
            rows: r1,
            z: z1,
            cs: c1,
            dh: d1,
            dh0: dh0_1,
            dc: dc1,
            dm: dm1,
        },
    ];
    each_block(p, blocks, |block| backward_rows(p, block, w_hr));
    if out.telemetry() {
        for t in p.steps.clone() {
            record(
                &mut out.grad_h_norms,
                t,
                &buf.dh[t * b * s..(t + 1) * b * s],
            );
        }
    }
}

/// The chunk's steps, last first, for one block of rows.
fn backward_rows<T: Float>(p: &LayerPass<'_, T>, mut block: GradRows<'_, T>, w_hr: &[T]) {
    let rows = block.rows.clone();
    if rows.is_empty() {
        return;
    }
    let (_, _, h, gh) = p.dims();
    let s = p.state();
    for t in p.steps.clone().rev() {
        let dz_t = row_mut(&mut block.z, t);
        let (mut c_past, mut c_future) = block.cs.rb_mut().split_at_row_mut(t + 1);
        let (c_prev, c_t) = (&*row_mut(&mut c_past, t), &*row_mut(&mut c_future, 0));
        let (mut d_past, mut d_future) = block.dh.rb_mut().split_at_row_mut(t);
        let dh_t = &*row_mut(&mut d_future, 0);
        let dh_prev = if t > p.steps.start {
            row_mut(&mut d_past, t - 1)
        } else {
            &mut *block.dh0
        };
        // Only the live rows compute; past them every row passes its gradient through.
        let k = live_in(p, t, &rows);
        let (dm, dh_k) = (&mut block.dm[..k * h], &dh_t[..k * s]);
        gemm_nn(
            dm,
            Accum::Replace,
            dh_k,
            w_hr,
            GemmShape::new(k, h, s),
            Par::Seq,
        );
        for (run, active) in blocks::row_runs(rows.len(), |r| p.batch.active(t, rows.start + r)) {
            let (u, g) = (run.start * h..run.end * h, run.start * gh..run.end * gh);
            if active {
                let (cp, c, dm) = (&c_prev[u.clone()], &c_t[u.clone()], &block.dm[u.clone()]);
                gates::lstm_backward(&mut dz_t[g], cp, c, dm, &mut block.dc[u], h);
            } else {
                // The state passed through unchanged, and so do both gradients (dc stays
                // in the carry).
                dz_t[g].fill(T::zero());
                let st = run.start * s..run.end * s;
                reduce::axpy(&mut dh_prev[st.clone()], T::one(), &dh_t[st]);
            }
        }
        let (dh_prev_k, dz_k) = (&mut dh_prev[..k * s], &dz_t[..k * gh]);
        gemm_nn(
            dh_prev_k,
            Accum::Add,
            dz_k,
            p.w_hh(),
            GemmShape::new(k, s, gh),
            Par::Seq,
        );
    }
}
