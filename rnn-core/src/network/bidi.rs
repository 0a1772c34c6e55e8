//! Bidirectional layers (PyTorch's `bidirectional=True`) on the unidirectional engine.
//!
//! A layer's reverse direction is an ordinary forward pass over its input with each
//! sequence's steps reversed (`t → len_b - 1 - t`; padding past a sequence's length stays
//! where it is, after the real steps, as in PyTorch's packed sequences). So the reverse
//! pass's step `t'` is the sequence's step `rev_b(t')`, its final state is PyTorch's
//! `h_n[2k + 1]`, and every cell, thread split and kernel of the forward engine serves it
//! unchanged. The layer's output in time order is both directions' states side by side
//! (`[T, B, 2H]`); the layer above reads that (its forward pass) and its reversal (its
//! reverse pass), dropped alike in training.
//!
//! Backward mirrors it: `dL/d output = dL/d fwd input + reversed(dL/d rev input)`, back
//! through the dropout, split into each direction's `dL/dh`, the reverse one in its own
//! (reversed) step order. A bidirectional pass runs whole sequences as one chunk: its first
//! output needs every step.

use faer::Accum;
use kernels::Float;
use kernels::dropout::{drop_rows, drop_rows_backward};

use std::ops::Range;

use faer::Par;
use kernels::pair::with_pair;

use super::{Head, HeadRows, Pass, head_backward, head_forward, k_rows, rows_of};
use crate::batch::Batch;
use crate::layer::{self, LayerGrads, LayerPass, PassThreads};
use crate::params::LayerSlots;
use crate::workspace::Workspace;

/// Where step `t` of a sequence of `len` steps lands when the sequence is reversed
/// (its own inverse).
#[inline]
fn reversed_step(t: usize, len: usize) -> usize {
    if t < len { len - 1 - t } else { t }
}

/// Calls `f(row, reversed)` for every step of every sequence: `row` is `(t, b)`'s row in a
/// time-major buffer (`t · B + b`), `reversed` the row of `(rev_b(t), b)`.
fn each_step<T>(batch: &Batch<'_, T>, mut f: impl FnMut(usize, usize)) {
    let b_len = batch.batch;
    for b in 0..b_len {
        let len = batch.lengths.map_or(batch.seq_len, |l| l[b]);
        for t in 0..batch.seq_len {
            f(t * b_len + b, reversed_step(t, len) * b_len + b);
        }
    }
}

/// `dst[(t, b)] = src[(rev_b(t), b)]` for time-major rows of `width` (`accum`: or `+=`).
fn reverse_rows<T: Float>(
    dst: &mut [T],
    src: &[T],
    width: usize,
    batch: &Batch<'_, T>,
    accum: Accum,
) {
    each_step(batch, |row, reversed| {
        let d = &mut dst[row * width..(row + 1) * width];
        let s = &src[reversed * width..(reversed + 1) * width];
        match accum {
            Accum::Replace => d.copy_from_slice(s),
            Accum::Add => d.iter_mut().zip(s).for_each(|(d, s)| *d += *s),
        }
    });
}

/// A layer's output in time order, `[T, B, 2H]`: `[h_fwd(t), h_rev(t)]`, from the forward
/// pass's states `f_hs` and the reverse pass's `r_hs` (`[T+1, B, H]`, `h_{-1}` first, the
/// reverse one in reversed order).
fn join_directions<T: Float>(
    out: &mut [T],
    f_hs: &[T],
    r_hs: &[T],
    h: usize,
    batch: &Batch<'_, T>,
) {
    // `hs[t + 1]` is `h_t`: one step of rows past `h_{-1}`.
    let (f_hs, r_hs) = (&f_hs[batch.batch * h..], &r_hs[batch.batch * h..]);
    each_step(batch, |row, reversed| {
        let out = &mut out[row * 2 * h..(row + 1) * 2 * h];
        out[..h].copy_from_slice(&f_hs[row * h..(row + 1) * h]);
        out[h..].copy_from_slice(&r_hs[reversed * h..(reversed + 1) * h]);
    });
}

/// Splits `dL/d output` (`[T, B, 2H]`, time order) into each direction's `dL/dh_t`: the
/// forward half as it is, the reverse half in the reverse pass's step order.
fn split_directions<T: Float>(
    g_fwd: &mut [T],
    g_rev: &mut [T],
    d_out: &[T],
    h: usize,
    batch: &Batch<'_, T>,
) {
    each_step(batch, |row, reversed| {
        let d = &d_out[row * 2 * h..(row + 1) * 2 * h];
        g_fwd[row * h..(row + 1) * h].copy_from_slice(&d[..h]);
        g_rev[reversed * h..(reversed + 1) * h].copy_from_slice(&d[h..]);
    });
}

/// Forward over every layer of a bidirectional model and the head's outputs.
pub(super) fn forward<T: Float>(p: &Pass<'_, '_, T>, ws: &mut Workspace<T>, head: Head) {
    let (config, batch) = (p.config, p.batch);
    // `h`: a direction's state width (`P` with projections).
    let (l, h, i) = (config.num_layers, config.state_size(), config.input_size);
    let rows = batch.seq_len * batch.batch;
    let w = 2 * h;
    let block = k_rows(rows * w);
    let steps = 0..batch.seq_len;
    let Workspace { layers, bidi, .. } = ws;
    reverse_rows(
        &mut bidi.rev_x[..rows * i],
        batch.x,
        i,
        batch,
        Accum::Replace,
    );
    for k in 0..l {
        let inputs: [&[T]; 2] = if k == 0 {
            [batch.x, &bidi.rev_x[..rows * i]]
        } else {
            [&bidi.fwd_in[block(k - 1)], &bidi.rev_in[block(k - 1)]]
        };
        let (lo, hi) = layers.split_at_mut(2 * k + 1);
        let bufs = [&mut lo[2 * k], &mut hi[0]];
        let runs = both_directions(p, k, inputs);
        side_by_side(p, &runs, &steps, bufs, |j, pass, buf| {
            let (h0, c0) = p.initial_states(j);
            layer::forward(pass, buf, h0, c0);
        });
        let (f_hs, r_hs) = (&layers[2 * k].hs, &layers[2 * k + 1].hs);
        if k + 1 < l {
            let (fwd_in, rev_in) = (&mut bidi.fwd_in[block(k)], &mut bidi.rev_in[block(k)]);
            match p.dropout() {
                Some(dropout) => {
                    // Joined into the reversed buffer first, which is rewritten below.
                    join_directions(rev_in, f_hs, r_hs, h, batch);
                    drop_rows(
                        fwd_in,
                        rev_in,
                        w,
                        p.mask_row(&steps),
                        &dropout.layer_mask(k),
                    );
                }
                None => join_directions(fwd_in, f_hs, r_hs, h, batch),
            }
            reverse_rows(rev_in, fwd_in, w, batch, Accum::Replace);
        } else if head == Head::EveryStep {
            join_directions(&mut bidi.fwd_in[block(k)], f_hs, r_hs, h, batch);
        } else if head == Head::LastStep {
            // Both directions' final states: PyTorch's `h_n[-2]` and `h_n[-1]` side by side.
            let end = batch.seq_len * batch.batch * h..(batch.seq_len + 1) * batch.batch * h;
            for (b, row) in bidi.last.chunks_exact_mut(w).enumerate() {
                row[..h].copy_from_slice(&f_hs[end.clone()][b * h..(b + 1) * h]);
                row[h..].copy_from_slice(&r_hs[end.clone()][b * h..(b + 1) * h]);
            }
        }
    }
    match head {
        Head::EveryStep => head_forward(p, ws, HeadRows::chunk(steps)),
        Head::LastStep => head_forward(p, ws, HeadRows::final_state(batch.seq_len)),
        Head::Skip => {}
    }
}

/// Backward through the head and every layer of a bidirectional model, from `ws.dy`; or,
/// without `head`, from `carry` alone (`dL/dh_n` and `dL/dc_n`, `[2L, B, H]`: the final
/// states' gradients from a model they were handed on to), the head's gradients zero.
pub(super) fn backward<T: Float>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    many_to_one: bool,
    head: bool,
    carry: Option<(&[T], &[T])>,
) {
    let (config, batch, opts) = (p.config, p.batch, p.opts);
    // `h`: a direction's state width (`P` with projections).
    let (l, h, i) = (config.num_layers, config.state_size(), config.input_size);
    let (t_len, b_len) = (batch.seq_len, batch.batch);
    let rows = t_len * b_len;
    let w = 2 * h;
    let block = k_rows(rows * w);
    let steps = 0..t_len;
    let cell = config.cell;
    let rows_in = if many_to_one {
        HeadRows::final_state(t_len)
    } else {
        HeadRows::chunk(steps.clone())
    };
    if head {
        head_backward(p, grads, ws, rows_in);
    } else {
        grads[p.layout.w_hy.clone()].fill(T::zero());
        grads[p.layout.b_y.clone()].fill(T::zero());
    }
    let top = 2 * (l - 1);
    let (below, above) = ws.layers.split_at_mut(top + 1);
    let (g_fwd, g_rev) = (below[top].grad_h(cell), above[0].grad_h(cell));
    if !head {
        // Nothing from above: the final states' gradients arrive as the carry.
        g_fwd[..rows * h].fill(T::zero());
        g_rev[..rows * h].fill(T::zero());
    } else if many_to_one {
        // Only the final states fed the head: the forward pass's and the reverse pass's last
        // steps (a finished sequence carries its state there).
        let (g_fwd, g_rev) = (&mut g_fwd[..rows * h], &mut g_rev[..rows * h]);
        g_fwd.fill(T::zero());
        g_rev.fill(T::zero());
        let last = rows_of(t_len - 1..t_len, b_len, h);
        for (b, d) in ws.bidi.d_fwd[..b_len * w].chunks_exact(w).enumerate() {
            g_fwd[last.clone()][b * h..(b + 1) * h].copy_from_slice(&d[..h]);
            g_rev[last.clone()][b * h..(b + 1) * h].copy_from_slice(&d[h..]);
        }
    } else {
        split_directions(g_fwd, g_rev, &ws.bidi.d_fwd[..rows * w], h, batch);
    }
    if opts.telemetry {
        ws.grad_h_norms.resize(config.passes() * t_len, T::zero());
    }
    if opts.input_grad {
        ws.dx.resize(rows * i);
    }
    // Frozen bottom layers: nothing below needs their dL/dh, so their backward never runs.
    let skipped = opts.skipped_layers(l);
    super::zero_skipped_passes(p, grads, ws, 2 * skipped);
    for k in (skipped..l).rev() {
        let Workspace {
            layers,
            bidi,
            dx,
            dh0,
            dc0,
            grad_h_norms,
            ..
        } = &mut *ws;
        let inputs: [&[T]; 2] = if k == 0 {
            [batch.x, &bidi.rev_x[..rows * i]]
        } else {
            [&bidi.fwd_in[block(k - 1)], &bidi.rev_in[block(k - 1)]]
        };
        let runs = both_directions(p, k, inputs);
        // dL/d input: the forward pass's into `d_fwd` (`dx` at the bottom), the reverse
        // pass's into `d_rev`, joined below.
        let dinputs = if k == 0 {
            let (dx, d_rev) = (&mut dx[..], &mut bidi.d_rev[..rows * i]);
            [
                opts.input_grad.then_some(dx),
                opts.input_grad.then_some(d_rev),
            ]
        } else if k == skipped {
            [None, None]
        } else {
            [
                Some(&mut bidi.d_fwd[..rows * w]),
                Some(&mut bidi.d_rev[..rows * w]),
            ]
        };
        let [d0, d1] = dinputs;
        let (g0, g1) = grads.split_at_mut(runs[1].offset);
        let (h0s, c0s) = (
            direction_blocks(dh0, k, b_len * h),
            direction_blocks(dc0, k, b_len * config.hidden_size),
        );
        let norms = direction_blocks(grad_h_norms, k, t_len);
        // Each direction's share of the carry: pass `j`'s rows of `[2L, B, ..]`.
        let end = |j: usize| {
            carry.map(|(dh, dc)| {
                let dc = (!dc.is_empty()).then(|| &dc[k_rows(b_len * config.hidden_size)(j)]);
                (&dh[k_rows(b_len * h)(j)], dc)
            })
        };
        let outs = [
            (g0, (h0s.0, c0s.0), d0, norms.0, end(2 * k)),
            (g1, (h0s.1, c0s.1), d1, norms.1, end(2 * k + 1)),
        ]
        .map(|(grads, (dh0, dc0), dinput, norms, end)| LayerGrads {
            grads,
            dh0,
            dc0,
            dinput,
            grad_h_norms: opts.telemetry.then_some(norms),
            dh_end: end.map(|(dh, _)| dh),
            dc_end: end.and_then(|(_, dc)| dc),
        });
        let (lo, hi) = layers.split_at_mut(2 * k + 1);
        let [o0, o1] = outs;
        let work = [(&mut lo[2 * k], o0), (&mut hi[0], o1)];
        side_by_side(p, &runs, &steps, work, |_, pass, (buf, out)| {
            layer::backward(pass, buf, out);
        });
        let bidi = &mut ws.bidi;
        if k > skipped {
            // dL/d output of layer k - 1, back through its dropout, then to each direction.
            let d_out = &mut bidi.d_fwd[..rows * w];
            reverse_rows(d_out, &bidi.d_rev[..rows * w], w, batch, Accum::Add);
            if let Some(dropout) = p.dropout() {
                drop_rows_backward(d_out, w, p.mask_row(&steps), &dropout.layer_mask(k - 1));
            }
            let (below, above) = ws.layers.split_at_mut(2 * k - 1);
            let (g_fwd, g_rev) = (below[2 * k - 2].grad_h(cell), above[0].grad_h(cell));
            split_directions(g_fwd, g_rev, d_out, h, batch);
        } else if opts.input_grad {
            reverse_rows(
                &mut ws.dx[..],
                &bidi.d_rev[..rows * i],
                i,
                batch,
                Accum::Add,
            );
        }
    }
}

/// One direction of a layer: pass `j`'s slots shifted to `offset`, where its parameters and
/// gradients are read from (`params[offset..]`, `grads[offset..]`).
struct DirectionRun<'p, T> {
    j: usize,
    offset: usize,
    slots: LayerSlots,
    input: &'p [T],
}

/// Layer `k`'s two directions reading `inputs`: direction 0 with its slots as they are,
/// direction 1 with its slots shifted to the first of them (see the module docs).
fn both_directions<'p, T: Float>(
    p: &Pass<'_, '_, T>,
    k: usize,
    inputs: [&'p [T]; 2],
) -> [DirectionRun<'p, T>; 2] {
    let [fwd, rev] = inputs;
    let run = |d: usize, input| {
        let j = 2 * k + d;
        let slots = &p.layout.layers[j];
        let offset = if d == 0 { 0 } else { slots.w_ih.start };
        let shift = |r: &Range<usize>| r.start - offset..r.end - offset;
        DirectionRun {
            j,
            offset,
            slots: LayerSlots {
                w_ih: shift(&slots.w_ih),
                w_hh: shift(&slots.w_hh),
                b_ih: slots.b_ih.as_ref().map(shift),
                b_hh: slots.b_hh.as_ref().map(shift),
                w_hr: slots.w_hr.as_ref().map(shift),
            },
            input,
        }
    };
    let runs = [run(0, fwd), run(1, rev)];
    // Direction 0's tensors all come before direction 1's: their gradients split there.
    debug_assert!(p.layout.layers[2 * k].w_ih.start < runs[1].offset);
    debug_assert!(
        [&p.layout.layers[2 * k].w_hh]
            .into_iter()
            .chain(p.layout.layers[2 * k].b_hh.as_ref())
            .chain(p.layout.layers[2 * k].w_hr.as_ref())
            .all(|r| r.end <= runs[1].offset)
    );
    runs
}

/// Runs `f(j, pass, work)` for both directions of `runs` over `steps`, each with its own
/// `work`: side by side on two threads, each direction on one, when the pass has threads;
/// else one after the other on the pass's (one) thread.
fn side_by_side<T: Float, W: Send>(
    p: &Pass<'_, '_, T>,
    runs: &[DirectionRun<'_, T>; 2],
    steps: &Range<usize>,
    work: [W; 2],
    f: impl Fn(usize, &LayerPass<'_, T>, W) + Sync,
) {
    let [w0, w1] = work;
    if p.threads.par == Par::Seq {
        f(
            runs[0].j,
            &direction_pass(p, &runs[0], steps, p.threads),
            w0,
        );
        f(
            runs[1].j,
            &direction_pass(p, &runs[1], steps, p.threads),
            w1,
        );
        return;
    }
    let alone = |run: &DirectionRun<'_, T>, w: W| {
        with_pair(false, |solo| {
            let threads = PassThreads {
                par: Par::Seq,
                pair: solo,
            };
            f(run.j, &direction_pass(p, run, steps, threads), w)
        })
    };
    rayon::join(|| alone(&runs[0], w0), || alone(&runs[1], w1));
}

/// The layer pass of direction `run` over `steps` on `threads`.
fn direction_pass<'l, T: Float>(
    p: &'l Pass<'_, '_, T>,
    run: &'l DirectionRun<'_, T>,
    steps: &Range<usize>,
    threads: PassThreads<'l>,
) -> LayerPass<'l, T> {
    LayerPass {
        config: p.config,
        slots: &run.slots,
        params: &p.params[run.offset..],
        batch: p.batch,
        input: run.input,
        input_size: p.config.layer_input(run.j / 2),
        threads,
        split: p.opts.split,
        steps: steps.clone(),
        frozen: p.opts.frozen.tensors.pass(run.j),
    }
}

/// Layer `k`'s two directions' blocks of `n` in an `[L·D, n]` buffer (an empty buffer, as
/// `dc0` of a cell without cell state or the norms without telemetry, gives empty blocks).
fn direction_blocks<T>(buf: &mut [T], k: usize, n: usize) -> (&mut [T], &mut [T]) {
    if buf.is_empty() {
        return (&mut [], &mut []);
    }
    buf[2 * k * n..(2 * k + 2) * n].split_at_mut(n)
}
