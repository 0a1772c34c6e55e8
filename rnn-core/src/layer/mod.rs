//! One recurrent layer over all steps, forward and backward, for each cell.
//!
//! Every cell runs the same schedule (the crate docs' known-fast design):
//!
//! - forward: the input projection of all `T·B` rows is one GEMM into the gate buffer `z`;
//!   each step does one recurrent product for all gates at once and one fused elementwise
//!   pass (`kernels::activation` or `kernels::gates`);
//! - backward: the reverse loop does only the elementwise backward pass and the recurrent
//!   product `dh_{t-1} += dZ_t W_hh`; the weight gradients are then a few GEMMs over all steps.
//!
//! Sequences past their length keep their state, and their gradient passes straight through.

mod blocks;
mod gru;
mod lstm;
mod rnn;

pub use blocks::UnitSplit;
pub(crate) use blocks::halves;

use faer::{Accum, Par};
use kernels::Float;
use kernels::gemm::{GemmShape, gemm_nn, gemm_tn};
use kernels::reduce;

use crate::batch::Batch;
use crate::config::{Cell, RnnConfig};
use crate::params::LayerSlots;
use crate::workspace::LayerBuffers;

/// All-steps products smaller than this many flops run sequentially even when threads are
/// allowed: a fork-join costs more than it saves there (tiny at 2 threads ran 3x slower; the
/// small workload's 52 MFLOP products 5 % slower at 16e6). Medium's 105 MFLOP products
/// gain: at 200e6 RNN medium ran 25-35 % slower on two threads.
const PARALLEL_MIN_FLOPS: f64 = 100e6;

/// Column sums over fewer elements than this stay on one thread: 256 Ki elements take about
/// 0.1 ms, against a few microseconds for the fork.
const PARALLEL_MIN_SUM: usize = 1 << 18;

/// The share of a pass's matrix-multiply flops that must be able to run on two threads for
/// a pass without split steps to use them. Below it, what the second thread saves is less
/// than the fork-joins and wake-ups cost: GRU small, whose only parallel product (dW_hh)
/// is 27 % of its flops, ran 0.90-1.05x on two threads across four full bench runs.
const PARALLEL_MIN_SHARE: f64 = 0.4;

/// Whether a pass over `seq_len` steps of `batch` rows is worth a second thread: its steps
/// are split into unit blocks, or enough of its flops ([`PARALLEL_MIN_SHARE`]) are in
/// all-steps products big enough to split ([`worth_splitting`]). When it is not, the caller runs the
/// pass as on one thread, without entering the thread pool (which would cost more than a
/// tiny step). The estimate counts the products of a pass scored at every step.
pub(crate) fn pass_uses_threads(
    config: &RnnConfig,
    seq_len: usize,
    batch: usize,
    split_steps: UnitSplit,
) -> bool {
    let (h, gh, o) = (config.hidden_size, config.gate_rows(), config.output_size);
    if split_steps.blocks(batch, h, gh / h) == 2 {
        return true;
    }
    let rows = seq_len * batch;
    let (mut total, mut parallel) = (0.0, 0.0);
    let mut product = |s: GemmShape, all_steps: bool| {
        total += s.flops();
        if all_steps && worth_splitting(s) {
            parallel += s.flops();
        }
    };
    for k in 0..config.num_layers {
        let i = config.layer_input(k);
        product(GemmShape::new(rows, gh, i), true); // input projection
        product(GemmShape::new(rows, gh, h), false); // the steps' products, forward
        product(GemmShape::new(rows, h, gh), false); // and backward
        product(GemmShape::new(gh, h, rows), true); // dW_hh
        product(GemmShape::new(gh, i, rows), true); // dW_ih
        if k > 0 {
            product(GemmShape::new(rows, i, gh), true); // dL/dh of the layer below
        }
    }
    product(GemmShape::new(rows, o, h), true); // head
    product(GemmShape::new(o, h, rows), true); // dW_hy
    product(GemmShape::new(rows, h, o), true); // dL/dh from the head
    parallel >= PARALLEL_MIN_SHARE * total
}

/// Whether an all-steps product is worth splitting between threads: not when it is small,
/// or has a single row (where faer's result depends on the thread count).
fn worth_splitting(s: GemmShape) -> bool {
    s.m >= 2 && s.flops() >= PARALLEL_MIN_FLOPS
}

/// The parallelism for an all-steps product: `par` when it is [`worth_splitting`].
fn split(par: Par, s: GemmShape) -> Par {
    if worth_splitting(s) { par } else { Par::Seq }
}

/// The signature every `kernels::gemm` product shares.
type Product<T> = fn(&mut [T], Accum, &[T], &[T], GemmShape, Par);

/// An all-steps product, run with the parallelism [`split`] allows for its shape.
pub(crate) fn all_steps<T: Float>(
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

/// Step `t`'s slice of a time-major gradient buffer (`step` elements per step) and the
/// slice its recurrent term flows into: step `t - 1`'s, or `dh0` at `t = 0`.
fn this_and_previous<'a, T>(
    steps: &'a mut [T],
    dh0: &'a mut [T],
    t: usize,
    step: usize,
) -> (&'a mut [T], &'a mut [T]) {
    let (before, rest) = steps.split_at_mut(t * step);
    let previous = if t > 0 {
        &mut before[(t - 1) * step..]
    } else {
        dh0
    };
    (&mut rest[..step], previous)
}

/// Where a layer's `h_{-1}` (or LSTM `c_{-1}`) comes from.
#[derive(Clone, Copy)]
pub(crate) enum InitialState<'a, T> {
    Zeros,
    /// `[B, H]`, given with the batch.
    PerSequence(&'a [T]),
    /// `[H]`, a learned state shared by every sequence.
    Broadcast(&'a [T]),
}

impl<T: Float> InitialState<'_, T> {
    /// Writes the state into `dst` `[B, H]`.
    fn write(self, dst: &mut [T], h: usize) {
        match self {
            Self::PerSequence(s) => dst.copy_from_slice(s),
            Self::Broadcast(s) => dst
                .chunks_exact_mut(h)
                .for_each(|row| row.copy_from_slice(s)),
            Self::Zeros => dst.fill(T::zero()),
        }
    }
}

/// What one layer's pass reads.
pub(crate) struct LayerPass<'a, T> {
    pub config: &'a RnnConfig,
    pub slots: &'a LayerSlots,
    pub params: &'a [T],
    pub batch: &'a Batch<'a, T>,
    /// `[T, B, I_k]`: the batch's `x` or the hidden states of the layer below.
    pub input: &'a [T],
    /// `I_k`.
    pub input_size: usize,
    /// Parallelism of the all-steps products and of the per-step unit blocks.
    pub par: Par,
    /// How each step's units are split into blocks.
    pub split: UnitSplit,
}

impl<T: Float> LayerPass<'_, T> {
    fn w_ih(&self) -> &[T] {
        &self.params[self.slots.w_ih.clone()]
    }

    fn w_hh(&self) -> &[T] {
        &self.params[self.slots.w_hh.clone()]
    }

    /// `(T, B, H, G·H)`.
    fn dims(&self) -> (usize, usize, usize, usize) {
        (
            self.batch.seq_len,
            self.batch.batch,
            self.config.hidden_size,
            self.config.gate_rows(),
        )
    }

    /// Whether each step runs as two unit blocks ([`blocks`]).
    fn halves(&self) -> bool {
        let (_, b, h, gh) = self.dims();
        self.split.blocks(b, h, gh / h) == 2
    }

    /// Whether the two unit blocks of a step run on two threads.
    fn parallel(&self) -> bool {
        self.par != Par::Seq
    }

    /// `dst = b_ih + b_hh`: one bias for cells that add both to every gate (RNN, LSTM).
    fn summed_bias(&self, dst: &mut [T]) {
        let s = self.slots;
        for ((d, x), y) in dst
            .iter_mut()
            .zip(&self.params[s.b_ih.clone()])
            .zip(&self.params[s.b_hh.clone()])
        {
            *d = *x + *y;
        }
    }

    /// `z = input W_ihᵀ` for all `T·B` rows at once (no bias).
    fn input_projection(&self, z: &mut [T]) {
        let (t, b, _, gh) = self.dims();
        all_steps(
            kernels::gemm::gemm_nt,
            &mut z[..t * b * gh],
            Accum::Replace,
            &self.input[..t * b * self.input_size],
            self.w_ih(),
            GemmShape::new(t * b, gh, self.input_size),
            self.par,
        );
    }

    /// `[B, H] → [B, G·H]`: one step's recurrent product `dst (+)= h W_hhᵀ`, with `w_hh_t`
    /// the packed `W_hhᵀ`.
    fn recurrent(&self, dst: &mut [T], accum: Accum, h: &[T], w_hh_t: &[T]) {
        let (_, b, hd, gh) = self.dims();
        gemm_nn(dst, accum, h, w_hh_t, GemmShape::new(b, gh, hd), Par::Seq);
    }

    /// `[B, G·H] → [B, H]`: one step's `dh_prev (+)= dZ W_hh`.
    fn recurrent_backward(&self, dh_prev: &mut [T], accum: Accum, dz: &[T]) {
        let (_, b, hd, gh) = self.dims();
        gemm_nn(
            dh_prev,
            accum,
            dz,
            self.w_hh(),
            GemmShape::new(b, hd, gh),
            Par::Seq,
        );
    }

    /// Copies the rows of sequences finished by step `t` from `prev` into `cur` (`[B, H]`):
    /// their state does not change.
    fn carry_finished(&self, t: usize, cur: &mut [T], prev: &[T]) {
        let h = self.config.hidden_size;
        for bb in self.batch.finished(t) {
            cur[bb * h..(bb + 1) * h].copy_from_slice(&prev[bb * h..(bb + 1) * h]);
        }
    }

    /// `dst = Σ_rows src` (`src` `[T·B, dst.len()]`): a bias gradient, its two column halves on
    /// two threads when allowed (each column is summed the same way either way).
    fn bias_grad(&self, dst: &mut [T], src: &[T]) {
        let width = dst.len();
        if !self.parallel() || src.len() < PARALLEL_MIN_SUM {
            return reduce::col_sums(dst, Accum::Replace, src);
        }
        let (lo, hi) = dst.split_at_mut(width / 2);
        rayon::join(
            || reduce::col_sums_of(lo, Accum::Replace, src, width, 0),
            || reduce::col_sums_of(hi, Accum::Replace, src, width, width / 2),
        );
    }

    /// The weight, bias and input gradients from the pre-activation gradients of all steps:
    /// `dx_side` `[T·B, G·H]` (for `W_ih`, `b_ih`, the input) and `dh_side` (for `W_hh`,
    /// `b_hh`; `None` when it equals `dx_side`, as for RNN and LSTM), against the states
    /// `hs_prev` `[T·B, H]` that fed the recurrent products.
    fn weight_grads(
        &self,
        grads: &mut [T],
        dx_side: &[T],
        dh_side: Option<&[T]>,
        hs_prev: &[T],
        dinput: Option<&mut [T]>,
    ) {
        let (t, b, h, gh) = self.dims();
        let (rows, i) = (t * b, self.input_size);
        let s = self.slots;
        let dh = dh_side.unwrap_or(dx_side);
        all_steps(
            gemm_tn,
            &mut grads[s.w_hh.clone()],
            Accum::Replace,
            dh,
            &hs_prev[..rows * h],
            GemmShape::new(gh, h, rows),
            self.par,
        );
        all_steps(
            gemm_tn,
            &mut grads[s.w_ih.clone()],
            Accum::Replace,
            dx_side,
            &self.input[..rows * i],
            GemmShape::new(gh, i, rows),
            self.par,
        );
        self.bias_grad(&mut grads[s.b_ih.clone()], dx_side);
        match dh_side {
            Some(dh) => self.bias_grad(&mut grads[s.b_hh.clone()], dh),
            None => grads.copy_within(s.b_ih.clone(), s.b_hh.start),
        }
        if let Some(dinput) = dinput {
            all_steps(
                gemm_nn,
                dinput,
                Accum::Replace,
                dx_side,
                self.w_ih(),
                GemmShape::new(rows, i, gh),
                self.par,
            );
        }
    }
}

/// Where one layer's backward pass writes.
pub(crate) struct LayerGrads<'a, T> {
    /// All parameter gradients (this layer's slots are overwritten).
    pub grads: &'a mut [T],
    /// `[B, H]`: `dL/dh0` of this layer.
    pub dh0: &'a mut [T],
    /// `[B, H]`: `dL/dc0` of this layer (LSTM; empty otherwise).
    pub dc0: &'a mut [T],
    /// `[T, B, I_k]`: `dL/d input`, when wanted (overwritten).
    pub dinput: Option<&'a mut [T]>,
    /// `[T]`: `‖dL/dh_t‖` of this layer per step, when wanted (telemetry).
    pub grad_h_norms: Option<&'a mut [T]>,
    /// `[B, H]`: `dL/dh` and (LSTM) `dL/dc` arriving at the last step from beyond it, when
    /// the pass is one segment of a longer sequence (checkpointed BPTT).
    pub dh_end: Option<&'a [T]>,
    pub dc_end: Option<&'a [T]>,
}

/// Records `‖dL/dh_t‖` (the whole gradient reaching `h_t`) into `norms` (a
/// [`LayerGrads::grad_h_norms`]) when telemetry is on. A function of the field alone, so the
/// step loops can hold `dh0` at the same time.
#[inline]
fn record<T: Float>(norms: &mut Option<&mut [T]>, t: usize, dh_t: &[T]) {
    record_squares(norms, t, || reduce::sum_squares(dh_t));
}

/// Records `‖dL/dh_t‖` from its square, computed only when telemetry is on.
#[inline]
fn record_squares<T: Float>(norms: &mut Option<&mut [T]>, t: usize, squares: impl FnOnce() -> T) {
    if let Some(norms) = norms.as_deref_mut() {
        norms[t] = squares().sqrt();
    }
}

impl<T: Float> LayerGrads<'_, T> {
    /// Records `‖dL/dh_t‖` from its square, computed only when telemetry is on.
    #[inline]
    fn record_squares(&mut self, t: usize, squares: impl FnOnce() -> T) {
        record_squares(&mut self.grad_h_norms, t, squares);
    }

    fn telemetry(&self) -> bool {
        self.grad_h_norms.is_some()
    }
}

/// Forward over all steps: fills `buf.hs` (and the cell's saved activations).
pub(crate) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    h0: InitialState<'_, T>,
    c0: InitialState<'_, T>,
) {
    match p.config.cell {
        Cell::Rnn => rnn::forward(p, buf, h0),
        Cell::Lstm => lstm::forward(p, buf, h0, c0),
        Cell::Gru => gru::forward(p, buf, h0),
    }
}

/// Backward over all steps, the mirror of [`forward`]: reads `dL/dh_t` from
/// [`LayerBuffers::grad_h`] and writes `out`.
pub(crate) fn backward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: LayerGrads<'_, T>,
) {
    // The cells add into dh0 at t = 0 (a sequence of a later segment may already be finished
    // there, passing its gradient straight through).
    out.dh0.fill(T::zero());
    if let Some(carry) = out.dh_end {
        let (t, b, h, _) = p.dims();
        let last = &mut buf.grad_h(p.config.cell)[(t - 1) * b * h..t * b * h];
        reduce::axpy(last, T::one(), carry);
    }
    match p.config.cell {
        Cell::Rnn => rnn::backward(p, buf, out),
        Cell::Lstm => lstm::backward(p, buf, out),
        Cell::Gru => gru::backward(p, buf, out),
    }
}

#[cfg(test)]
mod thread_use_tests {
    use super::*;

    #[test]
    fn only_passes_with_work_for_a_second_thread_use_threads() {
        let uses = |cfg: RnnConfig, t, b| pass_uses_threads(&cfg, t, b, UnitSplit::Auto);
        // The reference workloads: tiny and the RNN's small stay on one thread.
        assert!(!uses(RnnConfig::new(16, 64, 16), 100, 1));
        assert!(!uses(RnnConfig::lstm(16, 64, 16), 100, 1));
        assert!(!uses(RnnConfig::new(32, 128, 32), 100, 16));
        assert!(uses(RnnConfig::lstm(32, 128, 32), 100, 16)); // split steps
        assert!(uses(RnnConfig::new(64, 256, 64), 100, 32));
        // GRU small: whole steps, and only dW_hh (27 % of the flops) is worth splitting.
        assert!(!uses(RnnConfig::gru(32, 128, 32), 100, 16));
        // A long batch-1 sequence: its all-steps products are big enough.
        assert!(uses(RnnConfig::new(512, 512, 512), 4096, 1));
        // Split steps when pinned, whatever their size.
        let small = RnnConfig::new(32, 128, 32);
        assert!(pass_uses_threads(&small, 100, 16, UnitSplit::Halves));
    }
}
