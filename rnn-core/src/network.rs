//! The full-BPTT engine: forward over all steps, loss, backward, for a stack of RNN layers
//! and a linear head.
//!
//! Per layer `k` (PyTorch's `nn.RNN`): `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`;
//! head: `y_t = W_hy h_t + b_y`.
//!
//! The known-fast schedule (see the crate docs): the input projection of all `T·B` rows is
//! one GEMM; each step does only the recurrent product and one fused bias + activation pass;
//! the reverse loop does only `dZ_t = G_t ⊙ act'(h_t)` and `G_{t-1} += dZ_t W_hh`; weight
//! gradients are then a few GEMMs over all steps at once.

use faer::{Accum, Par};
use kernels::gemm::{GemmShape, gemm_nn, gemm_nt, gemm_tn, transpose};
use kernels::{Float, activation, loss as kloss, reduce};

use crate::batch::{Batch, Target};
use crate::config::{LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig};
use crate::error::Result;
use crate::params::Layout;
use crate::workspace::{LayerBuffers, Workspace};

/// All-steps products smaller than this many flops run sequentially even when threads are
/// allowed: a fork-join costs more than it saves there (tiny at 2 threads ran 3x slower).
const PARALLEL_MIN_FLOPS: f64 = 16e6;

/// The parallelism for an all-steps product: `par`, unless the product is small, or has a
/// single row (where faer's result depends on the thread count).
fn split(par: Par, s: GemmShape) -> Par {
    if s.m < 2 || s.flops() < PARALLEL_MIN_FLOPS {
        Par::Seq
    } else {
        par
    }
}

/// The signature every `kernels::gemm` product shares.
type Product<T> = fn(&mut [T], Accum, &[T], &[T], GemmShape, Par);

/// An all-steps product, run with the parallelism [`split`] allows for its shape.
fn all_steps<T: Float>(
    product: Product<T>,
    dst: &mut [T],
    accum: Accum,
    a: &[T],
    b: &[T],
    s: GemmShape,
    par: Par,
) {
    product(dst, accum, a, b, s, split(par, s));
}

/// Options of one forward + backward pass.
#[derive(Clone, Copy, Debug)]
pub struct PassOptions {
    /// Parallelism of the big all-steps GEMMs (per-step products always run sequentially,
    /// so results are bitwise identical for any value).
    pub par: Par,
    /// Also compute `dL/dx` into `Workspace::dx`.
    pub input_grad: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self {
            par: Par::Seq,
            input_grad: false,
        }
    }
}

/// Forward over the whole batch: fills every layer's `hs` and the head outputs `ws.y`.
///
/// `params` has [`Layout::new`]`(config)`'s layout. The batch must be validated
/// ([`Batch::validate`]); [`forward_backward`] does that.
pub fn forward<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    many_to_one: bool,
    par: Par,
) {
    ws.ensure(config, batch.seq_len, batch.batch, many_to_one);
    let (b, h, o) = (batch.batch, config.hidden_size, config.output_size);
    let t_len = batch.seq_len;
    for k in 0..config.num_layers {
        let (below, rest) = ws.layers.split_at_mut(k);
        let input = if k == 0 {
            batch.x
        } else {
            &below[k - 1].hs[b * h..]
        };
        let h0 = match (batch.h0, &layout.h0) {
            (Some(h0), _) => InitialState::PerSequence(&h0[k * b * h..(k + 1) * b * h]),
            (None, Some(learned)) => {
                InitialState::Broadcast(&params[learned.start + k * h..learned.start + (k + 1) * h])
            }
            (None, None) => InitialState::Zeros,
        };
        layer_forward(
            config,
            layout,
            params,
            k,
            &mut rest[0],
            input,
            h0,
            batch,
            par,
        );
    }
    // Head: y = H W_hyᵀ + b_y over all steps (or the final state only).
    let top = &ws.layers[config.num_layers - 1];
    let (w_hy, b_y) = (&params[layout.w_hy.clone()], &params[layout.b_y.clone()]);
    let states = if many_to_one {
        &top.hs[t_len * b * h..]
    } else {
        &top.hs[b * h..]
    };
    let rows = states.len() / h;
    for row in ws.y.chunks_exact_mut(o) {
        row.copy_from_slice(b_y);
    }
    all_steps(
        gemm_nt,
        &mut ws.y,
        Accum::Add,
        states,
        w_hy,
        GemmShape::new(rows, o, h),
        par,
    );
    if !many_to_one {
        // PyTorch pads finished sequences' outputs with zeros, so their head output is b_y.
        for t in 0..t_len {
            for bb in batch.finished(t) {
                ws.y[(t * b + bb) * o..(t * b + bb + 1) * o].copy_from_slice(b_y);
            }
        }
    }
}

/// Where a layer's `h_{-1}` comes from.
enum InitialState<'a, T> {
    Zeros,
    /// `[B, H]`, given with the batch.
    PerSequence(&'a [T]),
    /// `[H]`, a learned state shared by every sequence.
    Broadcast(&'a [T]),
}

/// One layer forward: `Z = X W_ihᵀ` (one GEMM), then per step `Z_t += h_{t-1} W_hhᵀ` and
/// `h_t = act(Z_t + b_ih + b_hh)`. Sequences past their length keep their state.
///
/// Reads `input` `[T, B, I_k]`; writes `buf.hs`, `buf.z`, `buf.w_hh_t`, `buf.bias`.
fn layer_forward<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    k: usize,
    buf: &mut LayerBuffers<T>,
    input: &[T],
    h0: InitialState<'_, T>,
    batch: &Batch<T>,
    par: Par,
) {
    let slots = &layout.layers[k];
    let (t_len, b, h, i) = (
        batch.seq_len,
        batch.batch,
        config.hidden_size,
        config.layer_input(k),
    );
    let step = b * h;
    for ((dst, x), y) in buf
        .bias
        .iter_mut()
        .zip(&params[slots.b_ih.clone()])
        .zip(&params[slots.b_hh.clone()])
    {
        *dst = *x + *y;
    }
    transpose(&mut buf.w_hh_t, &params[slots.w_hh.clone()], h, h);
    all_steps(
        gemm_nt,
        &mut buf.z,
        Accum::Replace,
        &input[..t_len * b * i],
        &params[slots.w_ih.clone()],
        GemmShape::new(t_len * b, h, i),
        par,
    );
    match h0 {
        InitialState::PerSequence(h0) => buf.hs[..step].copy_from_slice(h0),
        InitialState::Broadcast(h0) => buf.hs[..step]
            .chunks_exact_mut(h)
            .for_each(|row| row.copy_from_slice(h0)),
        InitialState::Zeros => buf.hs[..step].fill(T::zero()),
    }
    let recurrent = GemmShape::new(b, h, h);
    for t in 0..t_len {
        let z_t = &mut buf.z[t * step..(t + 1) * step];
        let (past, future) = buf.hs.split_at_mut((t + 1) * step);
        let h_prev = &past[t * step..];
        let h_t = &mut future[..step];
        gemm_nn(z_t, Accum::Add, h_prev, &buf.w_hh_t, recurrent, Par::Seq);
        match config.nonlinearity {
            Nonlinearity::Tanh => activation::bias_tanh(h_t, z_t, &buf.bias),
            Nonlinearity::Relu => activation::bias_relu(h_t, z_t, &buf.bias),
        }
        for bb in batch.finished(t) {
            h_t[bb * h..(bb + 1) * h].copy_from_slice(&h_prev[bb * h..(bb + 1) * h]);
        }
    }
}

/// One layer backward, the mirror of [`layer_forward`]. Reads `buf.hs`, and `buf.z` holding
/// `dL/dh_t` from above (the pre-activations are dead by then); leaves `dZ` in `buf.z`;
/// writes this layer's gradients into `grads`, `dL/dh0` into `dh0` and, when given,
/// `dL/d input` into `dinput`.
fn layer_backward<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    grads: &mut [T],
    k: usize,
    buf: &mut LayerBuffers<T>,
    input: &[T],
    dh0: &mut [T],
    dinput: Option<&mut [T]>,
    batch: &Batch<T>,
    par: Par,
) {
    let slots = &layout.layers[k];
    let (t_len, b, h, i) = (
        batch.seq_len,
        batch.batch,
        config.hidden_size,
        config.layer_input(k),
    );
    let step = b * h;
    let w_hh = &params[slots.w_hh.clone()];
    let recurrent = GemmShape::new(b, h, h);
    for t in (0..t_len).rev() {
        // z holds G_t = dL/dh_t on entry and becomes dZ_t in place.
        let (before, rest) = buf.z.split_at_mut(t * step);
        let dz_t = &mut rest[..step];
        let h_t = &buf.hs[(t + 1) * step..(t + 2) * step];
        let dh_prev = if t > 0 {
            &mut before[(t - 1) * step..]
        } else {
            &mut dh0[..]
        };
        // Every sequence is active at t = 0 (lengths are >= 1), so the carry below never
        // touches dh0, which the product then overwrites.
        // A finished sequence's state passed through unchanged: so does its gradient.
        for bb in batch.finished(t) {
            let rows = bb * h..(bb + 1) * h;
            for (d, g) in dh_prev[rows.clone()].iter_mut().zip(&dz_t[rows]) {
                *d += *g;
            }
        }
        match config.nonlinearity {
            Nonlinearity::Tanh => activation::tanh_backward_in_place(dz_t, h_t),
            Nonlinearity::Relu => activation::relu_backward_in_place(dz_t, h_t),
        }
        for bb in batch.finished(t) {
            dz_t[bb * h..(bb + 1) * h].fill(T::zero());
        }
        // dh_{t-1} = dZ_t W_hh, added into G_{t-1} (or written to dh0 at t = 0).
        let accum = if t > 0 { Accum::Add } else { Accum::Replace };
        gemm_nn(dh_prev, accum, dz_t, w_hh, recurrent, Par::Seq);
    }
    let rows = t_len * b;
    let dz = &buf.z[..rows * h];
    all_steps(
        gemm_tn,
        &mut grads[slots.w_hh.clone()],
        Accum::Replace,
        dz,
        &buf.hs[..rows * h],
        GemmShape::new(h, h, rows),
        par,
    );
    all_steps(
        gemm_tn,
        &mut grads[slots.w_ih.clone()],
        Accum::Replace,
        dz,
        &input[..rows * i],
        GemmShape::new(h, i, rows),
        par,
    );
    reduce::col_sums(&mut grads[slots.b_ih.clone()], Accum::Replace, dz);
    grads.copy_within(slots.b_ih.clone(), slots.b_hh.start);
    if let Some(dinput) = dinput {
        all_steps(
            gemm_nn,
            dinput,
            Accum::Replace,
            dz,
            &params[slots.w_ih.clone()],
            GemmShape::new(rows, i, h),
            par,
        );
    }
}

/// Loss of the head outputs `ws.y` and its gradient into `ws.dy`. Returns the reduced loss.
fn loss_forward_backward<T: Float>(
    config: &RnnConfig,
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    spec: &LossSpec,
) -> T {
    let (b, o) = (batch.batch, config.output_size);
    let steps = if spec.many_to_one { 1 } else { batch.seq_len };
    let count = if spec.many_to_one {
        b
    } else {
        batch.lengths.map_or(batch.seq_len * b, |l| l.iter().sum())
    };
    let per_position = match spec.kind {
        LossKind::Mse => o,
        LossKind::CrossEntropy => 1,
    };
    let scale = match spec.reduction {
        Reduction::Mean => T::one() / T::of((count * per_position) as f64),
        Reduction::Sum => T::one(),
    };
    let mut total = T::zero();
    for t in 0..steps {
        let block = t * b * o..(t + 1) * b * o;
        let all = spec.many_to_one || batch.all_active(t);
        // Whole step at once when every sequence is scored, else row by row.
        let rows: &mut dyn Iterator<Item = (usize, usize)> = if all {
            &mut std::iter::once((0, b))
        } else {
            &mut (0..b)
                .filter(|&bb| batch.active(t, bb))
                .map(|bb| (bb, bb + 1))
        };
        if !all {
            ws.dy[block.clone()].fill(T::zero());
        }
        for (lo, hi) in rows {
            let r = block.start + lo * o..block.start + hi * o;
            total += match batch.target {
                Target::Values(v) => {
                    kloss::squared_error(&mut ws.dy[r.clone()], &ws.y[r.clone()], &v[r], scale)
                }
                Target::Classes(c) => {
                    let labels = &c[t * b + lo..t * b + hi];
                    kloss::softmax_cross_entropy(&mut ws.dy[r.clone()], &ws.y[r], labels, o, scale)
                }
            };
        }
    }
    total * scale
}

/// Forward, loss and full backward in one call: returns the loss and writes the gradient of
/// every parameter into `grads` (same layout as `params`, overwritten), `dL/dh0` into
/// `ws.dh0` and, with `opts.input_grad`, `dL/dx` into `ws.dx`.
///
/// # Errors
/// The batch's validation errors ([`Batch::validate`]); nothing is computed then.
///
/// # Panics
/// If `params` or `grads` do not have `layout.len` elements.
pub fn forward_backward<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    spec: &LossSpec,
    opts: PassOptions,
) -> Result<T> {
    assert_eq!(params.len(), layout.len, "params length");
    assert_eq!(grads.len(), layout.len, "grads length");
    batch.validate(config, spec)?;
    forward(
        config,
        layout,
        params,
        ws,
        batch,
        spec.many_to_one,
        opts.par,
    );
    let loss = loss_forward_backward(config, ws, batch, spec);
    backward(
        config,
        layout,
        params,
        grads,
        ws,
        batch,
        spec.many_to_one,
        opts,
    );
    Ok(loss)
}

/// Backward from `ws.dy` (set by the loss) through the head and every layer.
fn backward<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    many_to_one: bool,
    opts: PassOptions,
) {
    let (t_len, b, h, o) = (
        batch.seq_len,
        batch.batch,
        config.hidden_size,
        config.output_size,
    );
    let top = config.num_layers - 1;
    let w_hy = &params[layout.w_hy.clone()];
    {
        let buf = &mut ws.layers[top];
        let (states, g_rows) = if many_to_one {
            (&buf.hs[t_len * b * h..], &mut buf.z[(t_len - 1) * b * h..])
        } else {
            (&buf.hs[b * h..], &mut buf.z[..])
        };
        let rows = states.len() / h;
        all_steps(
            gemm_tn,
            &mut grads[layout.w_hy.clone()],
            Accum::Replace,
            &ws.dy,
            states,
            GemmShape::new(o, h, rows),
            opts.par,
        );
        reduce::col_sums(&mut grads[layout.b_y.clone()], Accum::Replace, &ws.dy);
        all_steps(
            gemm_nn,
            g_rows,
            Accum::Replace,
            &ws.dy,
            w_hy,
            GemmShape::new(rows, h, o),
            opts.par,
        );
        if many_to_one {
            buf.z[..(t_len - 1) * b * h].fill(T::zero());
        }
    }
    for k in (0..config.num_layers).rev() {
        let (below, rest) = ws.layers.split_at_mut(k);
        let buf = &mut rest[0];
        let dh0 = &mut ws.dh0[k * b * h..(k + 1) * b * h];
        if k == 0 {
            // dL/dx costs a [T, B, I] buffer and a GEMM: only when asked for.
            if opts.input_grad {
                ws.dx.resize(t_len * b * config.input_size, T::zero());
            }
            let dx = opts.input_grad.then_some(&mut ws.dx[..]);
            layer_backward(
                config, layout, params, grads, k, buf, batch.x, dh0, dx, batch, opts.par,
            );
        } else {
            let prev = &mut below[k - 1];
            layer_backward(
                config,
                layout,
                params,
                grads,
                k,
                buf,
                &prev.hs[b * h..],
                dh0,
                Some(&mut prev.z),
                batch,
                opts.par,
            );
        }
    }
    if let Some(learned) = &layout.h0 {
        // A broadcast state's gradient is the sum over the sequences that used it; a batch
        // that brings its own h0 does not use it.
        let dh0 = &mut grads[learned.clone()];
        if batch.h0.is_some() {
            dh0.fill(T::zero());
        } else {
            for (k, dst) in dh0.chunks_exact_mut(h).enumerate() {
                reduce::col_sums(dst, Accum::Replace, &ws.dh0[k * b * h..(k + 1) * b * h]);
            }
        }
    }
}
