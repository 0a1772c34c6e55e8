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

use std::ops::Range;

use faer::{Accum, Par};
use kernels::gemm::{GemmShape, gemm_nn, gemm_nt, gemm_tn};
use kernels::{Float, loss as kloss, reduce};

use crate::batch::{Batch, Target};
use crate::config::{LossKind, LossSpec, Reduction, RnnConfig};
use crate::error::Result;
use crate::layer::{self, InitialState, LayerGrads, LayerPass, all_steps};
use crate::params::Layout;
use crate::workspace::Workspace;

/// Options of one forward + backward pass.
#[derive(Clone, Copy, Debug)]
pub struct PassOptions {
    /// Parallelism of the big all-steps GEMMs (per-step products always run sequentially,
    /// so results are bitwise identical for any value).
    pub par: Par,
    /// Also compute `dL/dx` into `Workspace::dx`.
    pub input_grad: bool,
    /// Gradient-flow telemetry: record `‖dL/dh_t‖` per layer and step into
    /// `Workspace::grad_h_norms` (`[L, T]`). Costs one pass over each step's gradient.
    pub telemetry: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self {
            par: Par::Seq,
            input_grad: false,
            telemetry: false,
        }
    }
}

/// Forward over the whole batch: fills every layer's `hs` and the head outputs `ws.y`.
///
/// `params` has [`Layout::new`]`(config)`'s layout. The batch must be validated
/// ([`Batch::validate`]); [`forward_backward`] does that.
pub fn forward<'s, T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &'s [T],
    ws: &mut Workspace<T>,
    batch: &Batch<'s, T>,
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
        let initial =
            |given: Option<&'s [T]>, learned: Option<&Range<usize>>| match (given, learned) {
                (Some(s), _) => InitialState::PerSequence(&s[k * b * h..(k + 1) * b * h]),
                (None, Some(l)) => {
                    InitialState::Broadcast(&params[l.start + k * h..l.start + (k + 1) * h])
                }
                (None, None) => InitialState::Zeros,
            };
        let pass = layer_pass(config, layout, params, batch, k, input, par);
        layer::forward(
            &pass,
            &mut rest[0],
            initial(batch.h0, layout.h0.as_ref()),
            initial(batch.c0, layout.c0.as_ref()),
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

/// The arguments of layer `k`'s pass.
fn layer_pass<'a, T: Float>(
    config: &'a RnnConfig,
    layout: &'a Layout,
    params: &'a [T],
    batch: &'a Batch<'a, T>,
    k: usize,
    input: &'a [T],
    par: Par,
) -> LayerPass<'a, T> {
    LayerPass {
        config,
        slots: &layout.layers[k],
        params,
        batch,
        input,
        input_size: config.layer_input(k),
        par,
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
        let from = batch.score_from;
        batch.lengths.map_or((batch.seq_len - from) * b, |l| {
            l.iter().map(|&n| n.saturating_sub(from)).sum()
        })
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
        let all = spec.many_to_one || (t >= batch.score_from && batch.all_active(t));
        // Whole step at once when every sequence is scored, else row by row.
        let rows: &mut dyn Iterator<Item = (usize, usize)> = if all {
            &mut std::iter::once((0, b))
        } else {
            &mut (0..b)
                .filter(|&bb| batch.scored(t, bb))
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
    let cell = config.cell;
    {
        let (hs, grad_h) = ws.layers[top].states_and_grad_h(cell);
        let states = if many_to_one {
            &hs[t_len * b * h..(t_len + 1) * b * h]
        } else {
            &hs[b * h..(t_len + 1) * b * h]
        };
        let g_rows = if many_to_one {
            &mut grad_h[(t_len - 1) * b * h..t_len * b * h]
        } else {
            &mut grad_h[..t_len * b * h]
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
            grad_h[..(t_len - 1) * b * h].fill(T::zero());
        }
    }
    let layer_state = k_rows(b * h);
    if opts.telemetry {
        ws.grad_h_norms.resize(config.num_layers * t_len, T::zero());
    }
    let mut norms = opts
        .telemetry
        .then(|| &mut ws.grad_h_norms[..config.num_layers * t_len]);
    for k in (0..config.num_layers).rev() {
        let (below, rest) = ws.layers.split_at_mut(k);
        let buf = &mut rest[0];
        let dh0 = &mut ws.dh0[layer_state(k)];
        let dc0 = if cell.has_cell_state() {
            &mut ws.dc0[layer_state(k)]
        } else {
            &mut []
        };
        let (input, dinput) = if k == 0 {
            // dL/dx costs a [T, B, I] buffer and a GEMM: only when asked for.
            if opts.input_grad {
                ws.dx.resize(t_len * b * config.input_size, T::zero());
            }
            (batch.x, opts.input_grad.then_some(&mut ws.dx[..]))
        } else {
            let (states, grad_h) = below[k - 1].states_and_grad_h(cell);
            (&states[b * h..], Some(grad_h))
        };
        let pass = layer_pass(config, layout, params, batch, k, input, opts.par);
        let out = LayerGrads {
            grads: &mut *grads,
            dh0,
            dc0,
            dinput,
            grad_h_norms: norms
                .as_deref_mut()
                .map(|n| &mut n[k * t_len..(k + 1) * t_len]),
        };
        layer::backward(&pass, buf, out);
    }
    // A broadcast state's gradient is the sum over the sequences that used it; a batch that
    // brings its own state does not use it.
    for (learned, given, dstate) in [
        (&layout.h0, batch.h0.is_some(), &ws.dh0),
        (&layout.c0, batch.c0.is_some(), &ws.dc0),
    ] {
        let Some(learned) = learned else { continue };
        let dst = &mut grads[learned.clone()];
        if given {
            dst.fill(T::zero());
        } else {
            for (k, row) in dst.chunks_exact_mut(h).enumerate() {
                reduce::col_sums(row, Accum::Replace, &dstate[layer_state(k)]);
            }
        }
    }
}

/// The range of layer `k`'s block in an `[L, n]` buffer.
fn k_rows(n: usize) -> impl Fn(usize) -> Range<usize> {
    move |k| k * n..(k + 1) * n
}
