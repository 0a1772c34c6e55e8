//! One recurrent layer over one time chunk ([`TimeChunks`]), forward and backward, for each
//! cell. Buffers span the whole sequence and are indexed by the step.
//!
//! Every cell runs the same schedule (the crate docs' known-fast design):
//!
//! - forward: the input projection of the chunk's rows is one GEMM into the gate buffer `z`;
//!   each step does one recurrent product for all gates at once and one fused elementwise
//!   pass (`kernels::activation` or `kernels::gates`);
//! - backward: the reverse loop does only the elementwise backward pass and the recurrent
//!   product `dh_{t-1} += dZ_t W_hh`; the chunk's weight gradients are then a few GEMMs over
//!   its steps.
//!
//! Sequences past their length keep their state, and their gradient passes straight through.
//! A step computes only its live rows (those up to the last running sequence, all of a
//! batch ordered longest first); the all-step products skip the rest too when they are
//! enough to pay for gathering the live ones ([`gather`]).

mod blocks;
mod chunks;
mod gather;
mod gru;
mod lstm;
mod lstmp;
mod rnn;

pub use blocks::UnitSplit;
pub(crate) use blocks::halves;
pub use chunks::TimeChunks;
pub(crate) use chunks::{share_accum, spans};
pub(crate) use gather::{ChunkRows, Padding, gather_len};

use std::ops::Range;

use faer::{Accum, Par};
use kernels::Float;
use kernels::gemm::{GemmShape, Threads, gemm_nn, gemm_nt, transpose};
use kernels::pair::Pair;
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

/// Within a pass that uses threads, the products of one time chunk with fewer flops than
/// this run on one thread. The crate's own split forks once per product (a few
/// microseconds), so a product of 4 MFLOP (about 40 µs) still gains.
const CHUNK_MIN_FLOPS: f64 = 4e6;

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
/// all-steps products big enough to split ([`PARALLEL_MIN_FLOPS`]). When it is not, the caller runs the
/// pass as on one thread, without entering the thread pool (which would cost more than a
/// tiny step). The estimate counts the products of a pass scored at every step.
pub(crate) fn pass_uses_threads(
    config: &RnnConfig,
    seq_len: usize,
    batch: usize,
    split_steps: UnitSplit,
) -> bool {
    let (h, gh, o) = (config.hidden_size, config.gate_rows(), config.output_size);
    let s = config.state_size();
    // (A bidirectional pass runs its unit blocks in turn, its directions side by side.)
    if PassThreads::split_steps(config, batch, split_steps.for_steps(seq_len))
        && !config.bidirectional
    {
        return true;
    }
    let rows = seq_len * batch;
    let (mut total, mut parallel) = (0.0, 0.0);
    // `side_by_side`: the product belongs to a direction that runs whole on its own thread.
    let mut product = |s: GemmShape, all_steps: bool, side_by_side: bool| {
        total += s.flops();
        if side_by_side || (all_steps && worth_splitting(s, PARALLEL_MIN_FLOPS)) {
            parallel += s.flops();
        }
    };
    // Every pass: each layer's, in each direction.
    for j in 0..config.passes() {
        let k = j / config.directions();
        let i = config.layer_input(k);
        let below = (k > 0).then(|| (GemmShape::new(rows, i, gh), true)); // dL/dh below
        let layer = [
            (GemmShape::new(rows, gh, i), true),  // input projection
            (GemmShape::new(rows, gh, s), false), // the steps' products, forward
            (GemmShape::new(rows, s, gh), false), // and backward
            (GemmShape::new(gh, s, rows), true),  // dW_hh
            (GemmShape::new(gh, i, rows), true),  // dW_ih
        ];
        // With projections: each step's `h_t = m_t W_hrᵀ` and `dm_t = dh_t W_hr`, then dW_hr.
        let projection = config.proj_size.into_iter().flat_map(|p| {
            [
                (GemmShape::new(rows, p, h), false),
                (GemmShape::new(rows, h, p), false),
                (GemmShape::new(p, h, rows), true),
            ]
        });
        let layer = layer.into_iter().chain(projection).chain(below);
        // A bidirectional layer's directions run side by side, each whole on one thread
        // (`network::bidi`): all of a direction's work is parallel once it is big enough to
        // pay for the join. Side by side, bidirectional small (RNN, LSTM, GRU: 197-900
        // MFLOP per direction) ran 1.34-1.70x one thread; tiny (3-12 MFLOP) 0.56-1.11x.
        let direction_flops: f64 = layer.clone().map(|(s, _)| s.flops()).sum();
        let side_by_side = config.bidirectional && direction_flops >= PARALLEL_MIN_FLOPS;
        for (s, all_steps) in layer {
            product(s, all_steps, side_by_side);
        }
    }
    let w = config.output_width();
    product(GemmShape::new(rows, o, w), true, false); // head
    product(GemmShape::new(o, w, rows), true, false); // dW_hy
    product(GemmShape::new(rows, w, o), true, false); // dL/dh from the head
    parallel >= PARALLEL_MIN_SHARE * total
}

/// Whether whole steps of a pass of `seq_len` steps read a packed `W_hhᵀ`
/// (`LayerBuffers::w_hh_t`, and a projected LSTM's `w_hr_t`): not in a one-step pass (a [`crate::predict::Predictor`] step),
/// where packing would cost more than the one product it serves.
pub(crate) fn packs_w_hh(seq_len: usize) -> bool {
    seq_len > 1
}

/// Whether a product is worth splitting between threads: not when it has fewer than
/// `min_flops`, or a single row (where faer's result depends on the thread count).
fn worth_splitting(s: GemmShape, min_flops: f64) -> bool {
    s.m >= 2 && s.flops() >= min_flops
}

/// The threads of one pass.
///
/// When the pass's steps are split into unit blocks ([`UnitSplit`]) and threads are
/// allowed, the pass runs inside one [`Pair`] session: its helper runs the second block of
/// every step and takes the second share of every product and column sum big enough to
/// split, so between the phases of a pass nothing goes back to rayon's pool to be woken
/// again. Otherwise the pair is not parallel, and the all-steps products split over `par`.
#[derive(Clone, Copy)]
pub(crate) struct PassThreads<'a> {
    /// rayon's threads for the products of a pass whose steps are whole (and, past two
    /// threads, for each of the pair's shares).
    pub par: Par,
    /// The pass's two workers: parallel when the steps are split and threads allowed.
    pub pair: &'a Pair,
}

impl<'a> PassThreads<'a> {
    /// Whether the pass's steps of `batch` rows run as two blocks (what makes its [`Pair`]
    /// parallel when `par` allows threads): of units ([`blocks`]), or for an LSTM with
    /// projections of sequences (batch rows, [`lstmp`]), whose projection needs every unit.
    pub fn split_steps(config: &RnnConfig, batch: usize, split: UnitSplit) -> bool {
        let (h, gh) = (config.hidden_size, config.gate_rows());
        let rows = config.proj_size.is_none() || batch >= 2;
        rows && split.blocks(batch, h, gh / h) == 2
    }

    /// Whether the pass's steps run as two blocks of units ([`blocks`]), with their packed
    /// weights.
    pub fn unit_halves(config: &RnnConfig, batch: usize, split: UnitSplit) -> bool {
        config.proj_size.is_none() && Self::split_steps(config, batch, split)
    }

    /// The threads for one product of the pass: the pass as a whole was judged by
    /// [`pass_uses_threads`], so only products too short to gain from a fork
    /// ([`CHUNK_MIN_FLOPS`]), or with a single row, stay on one thread.
    pub fn product(&self, s: GemmShape) -> Threads<'a> {
        if !worth_splitting(s, CHUNK_MIN_FLOPS) {
            Par::Seq.into()
        } else if self.pair.is_parallel() {
            // Past two threads each of the pair's shares splits again.
            let each = self.par.degree() / 2;
            Threads::Pair(
                self.pair,
                if each >= 2 {
                    Par::rayon(each)
                } else {
                    Par::Seq
                },
            )
        } else {
            self.par.into()
        }
    }

    /// Whether work outside the steps may run on two threads.
    fn parallel(&self) -> bool {
        self.pair.is_parallel() || self.par != Par::Seq
    }

    /// Runs `a` and `b` on the pair's two workers, else on rayon's when the pass may use
    /// threads, else one after the other. Must not be called inside one of the pair's joins.
    fn join(&self, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
        if self.pair.is_parallel() {
            self.pair.join(a, b);
        } else if self.par != Par::Seq {
            rayon::join(a, b);
        } else {
            a();
            b();
        }
    }
}

/// The signature every `kernels::gemm` product shares.
type Product<'a, T> = fn(&mut [T], Accum, &[T], &[T], GemmShape, Threads<'a>);

/// Step `t`'s slice of a time-major gradient buffer (`step` elements per step) and the
/// slice its recurrent term flows into: step `t - 1`'s, or `carry` at the chunk's first step
/// `start` (`dh0` at `t = 0`; before that, a carry the next chunk adds into step
/// `start - 1`, once the gradient from above has been written there).
fn this_and_previous<'a, T>(
    steps: &'a mut [T],
    carry: &'a mut [T],
    t: usize,
    start: usize,
    step: usize,
) -> (&'a mut [T], &'a mut [T]) {
    let (before, rest) = steps.split_at_mut(t * step);
    let previous = if t > start {
        &mut before[(t - 1) * step..]
    } else {
        carry
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
    /// Writes the state into `dst` `[B, W]` (`w`: its width).
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

/// Which of one pass's tensors are frozen: their gradient products are left out and their
/// gradients come out zero (`network::FrozenTensors`). A bit per slot of [`LayerSlots`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LayerFrozen(u8);

impl LayerFrozen {
    pub const W_IH: u8 = 1;
    pub const W_HH: u8 = 2;
    pub const B_IH: u8 = 4;
    pub const B_HH: u8 = 8;
    pub const W_HR: u8 = 16;

    /// The slots whose `frozen(range)` holds.
    pub fn of(slots: &LayerSlots, frozen: impl Fn(&Range<usize>) -> bool) -> Self {
        let slot = |range: Option<&Range<usize>>, bit| match range {
            Some(r) if frozen(r) => bit,
            _ => 0,
        };
        Self(
            slot(Some(&slots.w_ih), Self::W_IH)
                | slot(Some(&slots.w_hh), Self::W_HH)
                | slot(slots.b_ih.as_ref(), Self::B_IH)
                | slot(slots.b_hh.as_ref(), Self::B_HH)
                | slot(slots.w_hr.as_ref(), Self::W_HR),
        )
    }

    /// Whether the slot `bit` is frozen.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Writes a gradient's share of the chunk with `compute`, unless its tensor is frozen: then
/// the sequence's last chunk (the backward pass's first, `accum` = `Replace`) zeroes it and
/// the others leave it, so it comes out zero.
pub(crate) fn unless_frozen<T: Float>(
    frozen: bool,
    dst: &mut [T],
    accum: Accum,
    compute: impl FnOnce(&mut [T]),
) {
    if !frozen {
        compute(dst);
    } else if matches!(accum, Accum::Replace) {
        dst.fill(T::zero());
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
    /// The threads of the pass.
    pub threads: PassThreads<'a>,
    /// How each step's units are split into blocks.
    pub split: UnitSplit,
    /// The time chunk this call runs (`0..T` unchunked); buffers are indexed by the step.
    pub steps: Range<usize>,
    /// The layer's frozen tensors, whose gradient products the backward pass leaves out.
    pub frozen: LayerFrozen,
}

impl<'a, T: Float> LayerPass<'a, T> {
    fn w_ih(&self) -> &[T] {
        &self.params[self.slots.w_ih.clone()]
    }

    fn w_hh(&self) -> &[T] {
        &self.params[self.slots.w_hh.clone()]
    }

    /// `W_hr` `[P, H]`, an LSTM's projection (`None` without one).
    fn w_hr(&self) -> Option<&[T]> {
        Some(&self.params[self.slots.w_hr.clone()?])
    }

    /// Width of the layer's state `h`: `P` with projections, else `H`.
    fn state(&self) -> usize {
        self.config.state_size()
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

    /// The rows `steps.start·B..steps.end·B` of the chunk in a time-major buffer.
    fn rows(&self) -> Range<usize> {
        let b = self.batch.batch;
        self.steps.start * b..self.steps.end * b
    }

    /// Whether this chunk is the first of the forward pass (it sets up the pass).
    fn first_chunk(&self) -> bool {
        self.steps.start == 0
    }

    /// Whether this chunk is the first of the backward pass, the sequence's last.
    fn last_chunk(&self) -> bool {
        self.steps.end == self.batch.seq_len
    }

    /// Whether each step runs as two unit blocks ([`blocks`]).
    fn halves(&self) -> bool {
        PassThreads::unit_halves(self.config, self.batch.batch, self.split)
    }

    /// Whether a projected LSTM's steps run as two blocks of batch rows ([`lstmp`]).
    fn row_halves(&self) -> bool {
        self.config.proj_size.is_some()
            && PassThreads::split_steps(self.config, self.batch.batch, self.split)
    }

    /// The pass's workers: the unit blocks of a step run as one of its joins.
    fn pair(&self) -> &'a Pair {
        self.threads.pair
    }

    /// `dst = b_ih + b_hh`: one bias for cells that add both to every gate (RNN, LSTM);
    /// zeros for a layer without biases.
    fn summed_bias(&self, dst: &mut [T]) {
        match self.biases() {
            Some((b_ih, b_hh)) => {
                for ((d, x), y) in dst.iter_mut().zip(b_ih).zip(b_hh) {
                    *d = *x + *y;
                }
            }
            None => dst.fill(T::zero()),
        }
    }

    /// `(b_ih, b_hh)`, or `None` for a layer without biases.
    fn biases(&self) -> Option<(&'a [T], &'a [T])> {
        let s = self.slots;
        let params: &'a [T] = self.params;
        Some((&params[s.b_ih.clone()?], &params[s.b_hh.clone()?]))
    }

    /// `(b_ih, b_hh)` for a cell that reads them apart (GRU): the layer's own, or for a layer
    /// without biases both `zeros` after zeroing it (`[G·H]`, the workspace's bias buffer).
    fn separate_biases<'b>(&self, zeros: &'b mut [T]) -> (&'b [T], &'b [T])
    where
        'a: 'b,
    {
        match self.biases() {
            Some(both) => both,
            None => {
                zeros.fill(T::zero());
                (zeros, zeros)
            }
        }
    }

    /// `z = input W_ihᵀ` for all rows of the chunk at once (no bias), or for its live rows
    /// only ([`gather`]: the others are never read).
    fn input_projection(&self, z: &mut [T], scratch: &mut [T]) {
        let (_, _, _, gh) = self.dims();
        let (r, i) = (self.rows(), self.input_size);
        let (z, input) = (
            &mut z[r.start * gh..r.end * gh],
            &self.input[r.start * i..r.end * i],
        );
        let (chunk, w) = (self.chunk_rows(scratch), self.w_ih());
        chunk.product(
            gemm_nt,
            (z, gh),
            Accum::Replace,
            (input, i),
            w,
            scratch,
            Padding::Keep,
        );
    }

    /// The chunk's rows for its all-step products, gathering the live ones when enough are
    /// padding and the layer has room (`scratch`, its `gather`).
    fn chunk_rows(&self, scratch: &[T]) -> ChunkRows<'a, T> {
        ChunkRows::new(self.batch, self.steps.clone(), self.threads, scratch)
    }

    /// `[B, H] → [B, G·H]`: a step's recurrent product `dst (+)= h W_hhᵀ` on its first
    /// `live` rows ([`Batch::live_rows`]; the others are left as they are), with `w_hh_t`
    /// the packed `W_hhᵀ` (whole steps of an unprojected cell; [`lstmp`] runs its own).
    fn recurrent(&self, live: usize, dst: &mut [T], accum: Accum, h: &[T], w_hh_t: &[T]) {
        let (_, _, hd, gh) = self.dims();
        let (dst, h) = (&mut dst[..live * gh], &h[..live * hd]);
        let s = GemmShape::new(live, gh, hd);
        if self.packs_w_hh() {
            gemm_nn(dst, accum, h, w_hh_t, s, Par::Seq);
        } else {
            gemm_nt(dst, accum, h, self.w_hh(), s, Par::Seq);
        }
    }

    /// Whether whole steps read a packed `W_hhᵀ` ([`packs_w_hh`]).
    fn packs_w_hh(&self) -> bool {
        packs_w_hh(self.batch.seq_len)
    }

    /// `[B, G·H] → [B, H]`: a step's `dh_prev (+)= dZ W_hh` on its first `live` rows (past
    /// them `dZ` is zero).
    fn recurrent_backward(&self, live: usize, dh_prev: &mut [T], accum: Accum, dz: &[T]) {
        let (_, _, hd, gh) = self.dims();
        let (dh_prev, dz) = (&mut dh_prev[..live * hd], &dz[..live * gh]);
        let s = GemmShape::new(live, hd, gh);
        gemm_nn(dh_prev, accum, dz, self.w_hh(), s, Par::Seq);
    }

    /// Copies the rows of sequences finished by step `t` from `prev` into `cur` (`[B, H]`):
    /// their state does not change.
    fn carry_finished(&self, t: usize, cur: &mut [T], prev: &[T]) {
        let h = self.config.hidden_size;
        for bb in self.batch.finished(t) {
            cur[bb * h..(bb + 1) * h].copy_from_slice(&prev[bb * h..(bb + 1) * h]);
        }
    }

    /// `dst (+)= Σ_rows src` (`src` `[rows, dst.len()]`): a bias gradient, its two column
    /// halves on two threads when allowed (each column is summed the same way either way).
    fn bias_grad(&self, dst: &mut [T], accum: Accum, src: &[T]) {
        let width = dst.len();
        if !self.threads.parallel() || src.len() < PARALLEL_MIN_SUM {
            return reduce::col_sums(dst, accum, src);
        }
        let (lo, hi) = dst.split_at_mut(width / 2);
        self.threads.join(
            || reduce::col_sums_of(lo, accum, src, width, 0),
            || reduce::col_sums_of(hi, accum, src, width, width / 2),
        );
    }

    /// The chunk's share of `dW_hr = Σ_t dL/dh_tᵀ m_t` (nothing without a projection), from
    /// the whole state gradients `dh` `[T·B, P]` and the projected outputs `ms` `[T·B, H]`.
    /// The sequence's last chunk overwrites the gradient; the others add to it.
    fn projection_grads(&self, grads: &mut [T], dh: &[T], ms: &[T], scratch: &mut [T]) {
        let Some(w_hr) = self.slots.w_hr.clone() else {
            return;
        };
        let (h, s, r) = (self.config.hidden_size, self.state(), self.rows());
        let accum = share_accum(&self.steps, self.batch.seq_len);
        let frozen = self.frozen.has(LayerFrozen::W_HR);
        let (dh, ms) = (&dh[r.start * s..r.end * s], &ms[r.start * h..r.end * h]);
        let chunk = self.chunk_rows(scratch);
        unless_frozen(frozen, &mut grads[w_hr], accum, |dst| {
            chunk.tn(dst, accum, (dh, s), (ms, h), scratch);
        });
    }

    /// The chunk's share of the weight and bias gradients, and its rows of the input
    /// gradient, from the pre-activation gradients in `buf`: `z` `[T·B, G·H]` (for `W_ih`,
    /// `b_ih`, the input) and, for a GRU, `zh` (for `W_hh`, `b_hh`; other cells read `z`
    /// for both), against the states `hs` `[(T+1)·B, H]` (`P` wide with projections;
    /// `h_{-1}` first) that fed the recurrent products. The sequence's last chunk, the
    /// backward pass's first, overwrites the gradients; the others add to them. `gather` is
    /// the layer's room for products over live rows only ([`gather`]).
    fn weight_grads(&self, grads: &mut [T], buf: &mut LayerBuffers<T>, dinput: Option<&mut [T]>) {
        let LayerBuffers {
            z: dx_side,
            zh,
            hs,
            gather: scratch,
            ..
        } = buf;
        let dh_side = (self.config.cell == Cell::Gru).then_some(&zh[..]);
        let (_, _, _, gh) = self.dims();
        let h = self.state();
        let (r, i) = (self.rows(), self.input_size);
        let accum = share_accum(&self.steps, self.batch.seq_len);
        let s = self.slots;
        let dx = &dx_side[r.start * gh..r.end * gh];
        let dh = dh_side.map_or(dx, |d| &d[r.start * gh..r.end * gh]);
        let input = &self.input[r.start * i..r.end * i];
        let frozen = |bit| self.frozen.has(bit);
        // Over the chunk's rows, or its live ones only ([`gather`]).
        let chunk = self.chunk_rows(scratch);
        let hs = &hs[r.start * h..r.end * h];
        let (w_hh, w_ih) = (s.w_hh.clone(), s.w_ih.clone());
        unless_frozen(frozen(LayerFrozen::W_HH), &mut grads[w_hh], accum, |dst| {
            chunk.tn(dst, accum, (dh, gh), (hs, h), scratch);
        });
        unless_frozen(frozen(LayerFrozen::W_IH), &mut grads[w_ih], accum, |dst| {
            chunk.tn(dst, accum, (dx, gh), (input, i), scratch);
        });
        if let (Some(b_ih), Some(b_hh)) = (s.b_ih.clone(), s.b_hh.clone()) {
            // Padding rows of dZ are zero: the column sums run over every row.
            let (ih_frozen, hh_frozen) = (frozen(LayerFrozen::B_IH), frozen(LayerFrozen::B_HH));
            let bias = |dst: &mut [T], src| self.bias_grad(dst, accum, src);
            unless_frozen(ih_frozen, &mut grads[b_ih.clone()], accum, |d| bias(d, dx));
            match dh_side {
                Some(_) => unless_frozen(hh_frozen, &mut grads[b_hh], accum, |d| bias(d, dh)),
                // Both biases have the same gradient: one sum serves both.
                None if !ih_frozen && !hh_frozen => grads.copy_within(b_ih, b_hh.start),
                None => unless_frozen(hh_frozen, &mut grads[b_hh], accum, |d| bias(d, dx)),
            }
        }
        if let Some(dinput) = dinput {
            let (dinput, w) = (&mut dinput[r.start * i..r.end * i], self.w_ih());
            let (dinput, dx) = ((dinput, i), (dx, gh));
            chunk.product(
                gemm_nn,
                dinput,
                Accum::Replace,
                dx,
                w,
                scratch,
                Padding::Zero,
            );
        }
    }
}

/// Where one layer's backward pass writes.
pub(crate) struct LayerGrads<'a, T> {
    /// All parameter gradients: this layer's slots are overwritten by the sequence's last
    /// chunk and added to by the others.
    pub grads: &'a mut [T],
    /// `[B, H]`: `dL/dh0` of this layer after the first chunk; between chunks, the carry
    /// into the step before the chunk (see [`backward`]).
    pub dh0: &'a mut [T],
    /// `[B, H]`: `dL/dc0` of this layer (LSTM; empty otherwise).
    pub dc0: &'a mut [T],
    /// `[T, B, I_k]`: `dL/d input`, when wanted (the chunk's rows are overwritten).
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

/// Forward over the steps of `p.steps` (chunks in order): fills their rows of `buf.hs` (and
/// the cell's saved activations). The first chunk also sets up the pass: the initial state
/// and the packed recurrent weights here, the cell's own (summed bias, `c0`) in the cell.
pub(crate) fn forward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    h0: InitialState<'_, T>,
    c0: InitialState<'_, T>,
) {
    if p.first_chunk() {
        let (_, b, h, gh) = p.dims();
        let s = p.state();
        h0.write(&mut buf.hs[..b * s], s);
        // Packed once per pass, so the per-step products stream the packed weights.
        if p.halves() {
            blocks::pack_forward(p.pair(), &mut buf.blocks, p.w_hh(), h);
        } else if p.packs_w_hh() {
            transpose(&mut buf.w_hh_t, p.w_hh(), gh, s);
        }
    }
    match p.config.cell {
        Cell::Rnn => rnn::forward(p, buf),
        Cell::Lstm => lstm::forward(p, buf, c0),
        Cell::Gru => gru::forward(p, buf),
    }
}

/// Backward over the steps of `p.steps`, the mirror of [`forward`]: reads `dL/dh_t` from
/// [`LayerBuffers::grad_h`] and writes `out`. Chunks run last first; between them,
/// `out.dh0` carries what the chunk's first step sends into the step before it.
pub(crate) fn backward<T: Float>(
    p: &LayerPass<'_, T>,
    buf: &mut LayerBuffers<T>,
    out: LayerGrads<'_, T>,
) {
    let (_, b, h, _) = p.dims();
    if p.halves() && p.last_chunk() {
        // Packed once per pass, by the thread that runs each block.
        blocks::pack_backward(p.pair(), &mut buf.blocks, p.w_hh(), h);
    }
    let (end, s) = (p.steps.end, p.state());
    let last = &mut buf.grad_h(p.config.cell)[(end - 1) * b * s..end * b * s];
    if !p.last_chunk() {
        // The gradient from above reached this chunk's last step after the later chunk had
        // sent its recurrent term: add it now.
        reduce::axpy(last, T::one(), out.dh0);
    } else if let Some(carry) = out.dh_end {
        reduce::axpy(last, T::one(), carry);
    }
    // The cells add into the carry at the chunk's first step (a sequence already finished
    // there passes its gradient straight through).
    out.dh0.fill(T::zero());
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
        // Bidirectional layers run their directions side by side once a direction is big
        // enough: small does, tiny does not.
        assert!(uses(RnnConfig::new(32, 128, 32).bidirectional(), 100, 16));
        assert!(uses(RnnConfig::gru(32, 128, 32).bidirectional(), 100, 16));
        assert!(!uses(RnnConfig::new(16, 64, 16).bidirectional(), 100, 1));
        assert!(!uses(RnnConfig::lstm(16, 64, 16).bidirectional(), 100, 1));
        // Split steps when pinned, whatever their size.
        let small = RnnConfig::new(32, 128, 32);
        assert!(pass_uses_threads(&small, 100, 16, UnitSplit::Halves));
    }
}
