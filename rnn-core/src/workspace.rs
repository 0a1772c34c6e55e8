//! Every activation and temporary of a training pass, allocated once per shape.
//!
//! [`Workspace::ensure`] sizes all buffers for `(T, B)` in this one function; their capacity
//! only grows, so after the first pass at the largest shape nothing allocates again, and the
//! step loops never allocate.
//!
//! Every activation and gradient buffer is an [`AlignedVec`] whose elements start on a cache
//! line, so a step's speed does not depend on where the allocator placed them
//! (`kernels::aligned`). The telemetry norms and checkpointed BPTT's saved states stay plain
//! `Vec`s: they are written a row per step or per segment, not streamed by the kernels.

use std::ops::Range;

use kernels::Float;
use kernels::aligned::AlignedVec;
use kernels::panels::Panels;

use crate::batch::Batch;
use crate::config::{Cell, RnnConfig};
use crate::error::{Result, out_of_memory};
use crate::network::UnitSplit;

/// Buffers of one recurrent layer (`G` gates per unit: 1 RNN, 4 LSTM, 3 GRU).
#[derive(Clone, Debug, Default)]
pub struct LayerBuffers<T> {
    /// `[T+1, B, H]` (`P` wide with projections, as every state and its gradient below);
    /// `hs[0] = h0`, `hs[t+1] = h_t`. `hs[0..T]` and `hs[1..=T]` are both `[T·B, H]` views
    /// with no copy.
    pub hs: AlignedVec<T>,
    /// `[T, B, G·H]`, the gate buffer. Forward: the pre-activations (input projection plus
    /// recurrent product), which LSTM and GRU turn into their activated gates in place.
    /// Backward: the pre-activation gradients `dZ_t`, in place. An RNN also parks `dL/dh_t`
    /// here before it becomes `dZ_t`: one buffer instead of three.
    pub z: AlignedVec<T>,
    /// GRU only, `[T, B, 3H]`: the recurrent product `h_{t-1} W_hhᵀ` (its `n` slice biased,
    /// as `r` multiplies it), then its gradient. GRU keeps the two sides apart because
    /// `r` gates only the hidden side of `n`.
    pub zh: AlignedVec<T>,
    /// LSTM only, `[T+1, B, H]`: cell states, `cs[0] = c0`.
    pub cs: AlignedVec<T>,
    /// LSTM and GRU, `[T, B, H]`: `dL/dh_t` from above, to which the recurrent term is added.
    /// (An RNN uses `z` for this.)
    pub dh: AlignedVec<T>,
    /// LSTM only, `[B, H]`: `dL/dc` carried from step `t+1` to `t` in the reverse loop.
    pub dc: AlignedVec<T>,
    /// LSTM with projections only, `[T, B, H]`: `m_t = o_t ⊙ tanh(c_t)`, which `W_hr`
    /// projects to the state `h_t` (zero where a finished sequence's state carries over).
    pub ms: AlignedVec<T>,
    /// LSTM with projections only, `[B, H]`: one step's `dL/dm_t = dL/dh_t W_hr`.
    pub dm: AlignedVec<T>,
    /// LSTM with projections only, `[H, P]`: `W_hrᵀ`, packed once per pass as `w_hh_t` is
    /// (empty in a one-step pass, which reads `W_hr` as it is). faer ran the step's
    /// projection `m_t W_hrᵀ` from the packed copy 1.3-1.5x as fast.
    pub w_hr_t: AlignedVec<T>,
    /// `[H, G·H]`: `W_hhᵀ`, packed once per pass so the recurrent product streams rows
    /// (steps run whole; empty when they run as unit blocks, or in a one-step pass, which
    /// reads `W_hh` as it is).
    pub w_hh_t: AlignedVec<T>,
    /// The unit blocks of steps split between two workers, each with its recurrent weights
    /// packed once per pass (empty when steps run whole).
    pub blocks: Vec<UnitBlock<T>>,
    /// `[G·H]`: `b_ih + b_hh` (RNN and LSTM add both biases to every gate; GRU reads them
    /// apart, and zeros here stand in for both in a layer without biases).
    pub bias: AlignedVec<T>,
    /// Room for a chunk's all-step products over its live rows only, when finished
    /// sequences leave padding (`crate::layer::gather`).
    pub gather: AlignedVec<T>,
}

/// One block of hidden units of a split step, and `W_hh` packed for its two per-step
/// products ([`kernels::panels`]: packed once per pass, where faer would repack the weight
/// at every step).
#[derive(Clone, Debug)]
pub struct UnitBlock<T> {
    /// The block's hidden units.
    pub units: Range<usize>,
    /// Per gate `k`: `W_hhᵀ[:, k·H + units]` `[H, |units|]`, for `Z_t (+)= h_{t-1} W_hhᵀ`.
    pub forward: Vec<Panels<T>>,
    /// `W_hh[:, units]` `[G·H, |units|]`, for `dh_{t-1}[:, units] += dZ_t W_hh[:, units]`.
    pub backward: Panels<T>,
}

impl<T: Float> UnitBlock<T> {
    fn new(units: Range<usize>, hidden: usize, gates: usize) -> Self {
        let n = units.len();
        Self {
            units,
            forward: (0..gates).map(|_| Panels::new(hidden, n)).collect(),
            backward: Panels::new(gates * hidden, n),
        }
    }

    fn len(&self) -> usize {
        self.forward
            .iter()
            .chain([&self.backward])
            .map(|p| p.k() * p.n())
            .sum()
    }
}

impl<T> LayerBuffers<T> {
    /// `[T, B, H]`: where `dL/dh_t` from above (head or next layer) goes before the layer's
    /// backward pass.
    pub fn grad_h(&mut self, cell: Cell) -> &mut [T] {
        self.states_and_grad_h(cell).1
    }

    /// The hidden states `hs` and [`LayerBuffers::grad_h`] at once (the layer above reads
    /// one and writes the other).
    pub fn states_and_grad_h(&mut self, cell: Cell) -> (&[T], &mut [T]) {
        match cell {
            Cell::Rnn => (&self.hs, &mut self.z),
            Cell::Lstm | Cell::Gru => (&self.hs, &mut self.dh),
        }
    }
}

/// All buffers of a forward + backward pass.
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    /// Recurrent layers, bottom first.
    pub layers: Vec<LayerBuffers<T>>,
    /// Head outputs: `[T, B, O]`, or `[B, O]` when the loss is many-to-one.
    pub y: AlignedVec<T>,
    /// `dL/dy`, same shape as `y`.
    pub dy: AlignedVec<T>,
    /// Room for the head's every-step products over live rows only, when finished sequences
    /// leave padding (`crate::layer::gather`).
    pub head_gather: AlignedVec<T>,
    /// `[T, B, I]`: `dL/dx`, allocated and filled only when asked for.
    pub dx: AlignedVec<T>,
    /// `[L·D, B, H]` (`P` wide with projections): `dL/dh0`.
    pub dh0: AlignedVec<T>,
    /// `[L·D, B, H]`: `dL/dc0` (LSTM; empty otherwise).
    pub dc0: AlignedVec<T>,
    /// `[L-1, T, B, H]`: with dropout, the dropped outputs of every layer but the top, which
    /// the layer above reads (its `hs` stay as they are for its own backward pass).
    pub dropped: AlignedVec<T>,
    /// `[L, T]`: `‖dL/dh_t‖` per layer and step, filled only when telemetry is asked for.
    pub grad_h_norms: Vec<T>,
    /// `[O]`: a weighted cross-entropy's class weights, or a binary cross-entropy's weight
    /// per output, in the pass's float type (empty when the loss has none).
    pub class_weights: Vec<T>,
    /// `[O]`: a binary cross-entropy's positive weights in the pass's float type (empty when
    /// it has none).
    pub pos_weights: Vec<T>,
    /// `[B]`: each sequence's own loss, from [`crate::network::sequence_losses`].
    pub sequence_losses: Vec<T>,
    /// A bidirectional model's layer inputs and their gradients (empty otherwise).
    pub bidi: BidiBuffers<T>,
    /// `[T, B, I]`: a batch of tokens' rows of the embedding table, which the first layer
    /// reads as `x` (empty without an embedding).
    pub embedded: AlignedVec<T>,
    /// Checkpointed BPTT's saved states and carries (empty unless it is used).
    pub checkpoints: crate::network::Checkpoints<T>,
    /// `[L·D, B, S]`: the final states `h_n` of the last pass that ended at them
    /// ([`crate::trainer::Trainer::final_states`]; empty before one).
    pub final_h: AlignedVec<T>,
    /// `[L·D, B, H]`: its final cell states `c_n` (LSTM; empty otherwise).
    pub final_c: AlignedVec<T>,
    /// The mark of the forward pass these buffers hold for a backward pass from its final
    /// states to reuse; any other pass clears it.
    pub(crate) kept_forward: Option<u32>,
    shape: Option<(RnnConfig, usize, usize, bool, UnitSplit, bool)>,
}

/// What a bidirectional model adds: each layer's input in time order (the layer below's two
/// directions side by side, dropped in training) and in each sequence's reverse order, for
/// the reverse pass, and their gradients. Every buffer is time-major, `2H` wide unless said.
#[derive(Clone, Debug, Default)]
pub struct BidiBuffers<T> {
    /// `[T, B, I]`: `x` with each sequence's steps reversed (its padding stays in place).
    pub rev_x: AlignedVec<T>,
    /// `[L, T, B, 2H]`: block `k - 1` is layer `k`'s input; block `L - 1` the head's.
    pub fwd_in: AlignedVec<T>,
    /// `[L - 1, T, B, 2H]`: block `k - 1` is layer `k`'s input, each sequence reversed.
    pub rev_in: AlignedVec<T>,
    /// `[B, 2H]`: a many-to-one head's input, both directions' final states.
    pub last: AlignedVec<T>,
    /// `[T, B, 2H]`: `dL/d` the layer's input from its forward pass (or from the head).
    pub d_fwd: AlignedVec<T>,
    /// `[T, B, max(I, 2H)]`: `dL/d` the reversed input, from the reverse pass.
    pub d_rev: AlignedVec<T>,
}

impl<T: Float> BidiBuffers<T> {
    /// Element counts: rev_x, fwd_in, rev_in, last, d_fwd, d_rev (all 0 unless `config` is
    /// bidirectional).
    fn sizes(config: &RnnConfig, seq_len: usize, batch: usize, many_to_one: bool) -> [usize; 6] {
        if !config.bidirectional {
            return [0; 6];
        }
        let (rows, i, l) = (seq_len * batch, config.input_size, config.num_layers);
        let w = config.output_width();
        [
            rows * i,
            l * rows * w,
            (l - 1) * rows * w,
            if many_to_one { batch * w } else { 0 },
            rows * w,
            rows * i.max(w),
        ]
    }

    fn len(&self) -> usize {
        self.rev_x.len()
            + self.fwd_in.len()
            + self.rev_in.len()
            + self.last.len()
            + self.d_fwd.len()
            + self.d_rev.len()
    }
}

/// What a pass over a batch needs room for besides the batch's shape
/// ([`Workspace::try_reserve`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    /// The steps of a stretch (the batch's `seq_len` or more: the whole batch).
    pub segment: usize,
    /// Outputs of the last step only (`[B, O]`), or of every step.
    pub many_to_one: bool,
    /// How steps split between threads.
    pub split: UnitSplit,
    /// Dropout's buffers.
    pub dropout: bool,
    /// `dL/dx`.
    pub input_grad: bool,
    /// A loss of the caller's own, which in segments keeps every step's outputs.
    pub own_loss: bool,
    /// The model's parameter count (a segment's gradient buffer).
    pub params: usize,
}

/// Element counts of every buffer for one shape: the one place they are decided.
struct Sizes {
    /// Per layer: hs, z, zh, cs, dh, dc, w_hh_t, bias, unit blocks' packed weights, ms, dm,
    /// w_hr_t.
    layer: [usize; 12],
    /// The hidden units of the two blocks of a split step (`None` when steps run whole).
    blocks: Option<[Range<usize>; 2]>,
    /// y (and dy), dh0, dc0, dropped.
    shared: [usize; 4],
}

impl Sizes {
    fn of(
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
        split: UnitSplit,
        dropout: bool,
    ) -> Self {
        let (h, o, gh) = (config.hidden_size, config.output_size, config.gate_rows());
        // `s`: the state's width (`P` with projections); the cell state stays `H` wide.
        let s = config.state_size();
        // Unit blocks and their packed weights (an LSTM with projections splits its steps
        // by rows, reading the whole packed `W_hhᵀ`).
        let split_steps = crate::layer::PassThreads::unit_halves(config, batch, split);
        let rows = seq_len * batch;
        let cell = config.cell;
        let projected = config.proj_size.is_some();
        let only = |yes: bool, n: usize| if yes { n } else { 0 };
        let (states, cell_states) = ((seq_len + 1) * batch * s, (seq_len + 1) * batch * h);
        let y_rows = if many_to_one { batch } else { rows };
        let per_layer_state = config.passes() * batch;
        Self {
            layer: [
                states,
                rows * gh,
                only(cell == Cell::Gru, rows * gh),
                only(cell == Cell::Lstm, cell_states),
                only(cell != Cell::Rnn, rows * s),
                only(cell == Cell::Lstm, batch * h),
                only(!split_steps && crate::layer::packs_w_hh(seq_len), s * gh),
                gh,
                only(split_steps, 2 * h * gh),
                only(projected, rows * h),
                only(projected, batch * h),
                only(projected && crate::layer::packs_w_hh(seq_len), h * s),
            ],
            blocks: split_steps.then(|| crate::layer::halves(h)),
            shared: [
                y_rows * o,
                per_layer_state * s,
                only(cell == Cell::Lstm, per_layer_state * h),
                // A bidirectional model drops into its own layer inputs.
                only(
                    dropout && !config.bidirectional,
                    (config.num_layers - 1) * rows * s,
                ),
            ],
        }
    }
}

impl<T: Float> Workspace<T> {
    /// Copies every layer's states after `t` steps of the last pass over `batch` rows into
    /// `h` `[L·D, B, H]` (`P` wide with projections) and, unless `c` is empty, the LSTM cell
    /// states into `c` `[L·D, B, H]`: what a stream, a predictor or a segment carries on.
    pub(crate) fn states_at(
        &self,
        config: &RnnConfig,
        batch: usize,
        t: usize,
        h: &mut [T],
        c: &mut [T],
    ) {
        let (hs, cs) = (batch * config.state_size(), batch * config.hidden_size);
        for (k, layer) in self.layers.iter().enumerate() {
            h[k * hs..(k + 1) * hs].copy_from_slice(&layer.hs[t * hs..(t + 1) * hs]);
            if !c.is_empty() {
                c[k * cs..(k + 1) * cs].copy_from_slice(&layer.cs[t * cs..(t + 1) * cs]);
            }
        }
    }

    /// An empty workspace; the first pass sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes every buffer for `seq_len` steps of `batch` sequences of `config`, with steps
    /// split as `split` decides, and room for dropped layer outputs when `dropout` (no-op
    /// when unchanged).
    pub fn ensure(
        &mut self,
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
        split: UnitSplit,
        dropout: bool,
    ) {
        let key = (*config, seq_len, batch, many_to_one, split, dropout);
        if self.shape == Some(key) {
            return;
        }
        let sizes = Sizes::of(config, seq_len, batch, many_to_one, split, dropout);
        let (h, gates) = (config.hidden_size, config.cell.gates());
        let bidi = BidiBuffers::<T>::sizes(config, seq_len, batch, many_to_one);
        for (_, buffer, len) in self.buffers(config, &sizes, bidi) {
            buffer.resize(len);
        }
        for l in &mut self.layers {
            let units = sizes.blocks.as_ref().map_or(&[][..], |b| &b[..]);
            let same_blocks = l.blocks.len() == units.len()
                && l.blocks.iter().zip(units).all(|(b, units)| {
                    b.units == *units && b.forward.len() == gates && b.backward.k() == gates * h
                });
            if !same_blocks {
                l.blocks = (units.iter())
                    .map(|units| UnitBlock::new(units.clone(), h, gates))
                    .collect();
            }
        }
        self.shape = Some(key);
    }

    /// Room for a pass over `batch` as `room` says, without changing a length or a value:
    /// every buffer [`Workspace::ensure`] sizes for a stretch of `room.segment` steps (the
    /// whole batch when that is `seq_len` or more), the room for products over live rows
    /// when the batch has lengths ([`Workspace::ensure_gather`]), the whole batch's
    /// embedded tokens and, as asked, its `dL/dx`, and in segments the checkpoints. The
    /// pass then allocates none of them. Where it would end the process when the memory is
    /// not there, this reports it, and gives back all the workspace holds (an empty
    /// workspace, as a new one: the room grown before the failure would otherwise stay
    /// taken for a batch that never runs, and the next pass sizes what it needs again).
    /// Nothing is sized by a batch whose inputs do not hold its rows (the pass refuses it).
    ///
    /// # Errors
    /// [`crate::RnnError::OutOfMemory`] naming the buffer that could not grow.
    pub(crate) fn try_reserve(
        &mut self,
        config: &RnnConfig,
        batch: &Batch<'_, T>,
        room: Room,
    ) -> Result<()> {
        if !batch.holds_its_rows(config) {
            return Ok(());
        }
        let reserved = self.reserve_or_fail(config, batch, room);
        if reserved.is_err() {
            *self = Self::new();
        }
        reserved
    }

    /// [`Workspace::try_reserve`] for a batch that holds its rows, leaving what it grew
    /// when it fails.
    fn reserve_or_fail(
        &mut self,
        config: &RnnConfig,
        batch: &Batch<'_, T>,
        room: Room,
    ) -> Result<()> {
        let (seq_len, b) = (room.segment.min(batch.seq_len), batch.batch);
        let many_to_one = room.many_to_one;
        let sizes = Sizes::of(config, seq_len, b, many_to_one, room.split, room.dropout);
        let bidi = BidiBuffers::<T>::sizes(config, seq_len, b, many_to_one);
        let reserve = |buffer: &mut AlignedVec<T>, len: usize, what: &'static str| {
            buffer.try_reserve(len).map_err(out_of_memory(what))
        };
        for (what, buffer, len) in self.buffers(config, &sizes, bidi) {
            reserve(buffer, len, what)?;
        }
        if batch.lengths.is_some() {
            for (what, buffer, len) in self.gather_buffers(config, seq_len, b, many_to_one) {
                reserve(buffer, len, what)?;
            }
        }
        let inputs = batch.seq_len * b * config.input_size;
        let only = |yes: bool| if yes { inputs } else { 0 };
        reserve(&mut self.dx, only(room.input_grad), "dL/dx")?;
        let tokens = only(batch.tokens.is_some());
        reserve(&mut self.embedded, tokens, "the embedded tokens")?;
        if seq_len < batch.seq_len {
            let own_outputs = room.own_loss && !many_to_one;
            let asked = (room.input_grad, own_outputs);
            let shape = (batch.seq_len, b, seq_len);
            (self.checkpoints).try_reserve(config, shape, room.params, asked)?;
        }
        Ok(())
    }

    /// Every buffer whose length a shape decides (of `config`'s layers, grown to their
    /// number), with its length for `sizes` and `bidi`, and its name: the one list that
    /// [`Workspace::ensure`] sizes and [`Workspace::try_reserve`] grows.
    fn buffers<'w>(
        &'w mut self,
        config: &RnnConfig,
        sizes: &Sizes,
        bidi: [usize; 6],
    ) -> impl Iterator<Item = (&'static str, &'w mut AlignedVec<T>, usize)> {
        self.layers
            .resize_with(config.passes(), LayerBuffers::default);
        let [hs, z, zh, cs, dh, dc, w_hh_t, bias, _, ms, dm, w_hr_t] = sizes.layer;
        let [y, dh0, dc0, dropped] = sizes.shared;
        let [rev_x, fwd_in, rev_in, last, d_fwd, d_rev] = bidi;
        let Self {
            layers,
            y: ys,
            dy,
            dh0: dh0s,
            dc0: dc0s,
            dropped: dropped_rows,
            bidi: b,
            ..
        } = self;
        let per_layer = layers.iter_mut().flat_map(move |l| {
            [
                ("a layer's projection inputs", &mut l.ms, ms),
                ("a layer's projection gradient", &mut l.dm, dm),
                ("a layer's packed W_hr", &mut l.w_hr_t, w_hr_t),
                ("a layer's states", &mut l.hs, hs),
                ("a layer's gate buffer", &mut l.z, z),
                ("a layer's recurrent products", &mut l.zh, zh),
                ("a layer's cell states", &mut l.cs, cs),
                ("a layer's state gradients", &mut l.dh, dh),
                ("a layer's cell state gradient", &mut l.dc, dc),
                ("a layer's packed W_hh", &mut l.w_hh_t, w_hh_t),
                ("a layer's biases", &mut l.bias, bias),
            ]
        });
        per_layer.chain([
            ("the outputs", ys, y),
            ("the output gradients", dy, y),
            ("dL/dh0", dh0s, dh0),
            ("dL/dc0", dc0s, dc0),
            ("the dropped layer outputs", dropped_rows, dropped),
            ("the reversed inputs", &mut b.rev_x, rev_x),
            ("the layer inputs", &mut b.fwd_in, fwd_in),
            ("the reversed layer inputs", &mut b.rev_in, rev_in),
            ("the final states", &mut b.last, last),
            ("the input gradients", &mut b.d_fwd, d_fwd),
            ("the reversed input gradients", &mut b.d_rev, d_rev),
        ])
    }

    /// Elements each layer's `gather` holds for a pass of `seq_len` steps of `batch` rows
    /// with lengths ([`Workspace::ensure_gather`]).
    pub(crate) fn gather_room(config: &RnnConfig, seq_len: usize, batch: usize) -> usize {
        let (h, s) = (config.hidden_size, config.state_size());
        let widest = config.input_size.max(config.directions() * s).max(h);
        crate::layer::gather_len(seq_len * batch, config.gate_rows(), widest)
    }

    /// Elements `head_gather` holds for such a pass: none when the loss is many-to-one (the
    /// head reads the final states, all of them live).
    pub(crate) fn head_gather_room(
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
    ) -> usize {
        let rows = if many_to_one { 0 } else { seq_len * batch };
        crate::layer::gather_len(rows, config.output_size, config.output_width())
    }

    /// Sizes every layer's and the head's room for products over live rows only, which a
    /// pass over a batch with lengths may take (after [`Workspace::ensure`]; allocates only
    /// to grow).
    pub(crate) fn ensure_gather(
        &mut self,
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
    ) {
        for (_, buffer, len) in self.gather_buffers(config, seq_len, batch, many_to_one) {
            buffer.resize(len);
        }
    }

    /// Every layer's and the head's room for products over live rows, with its length for
    /// this shape and its name: the list [`Workspace::ensure_gather`] sizes and
    /// [`Workspace::try_reserve`] grows.
    fn gather_buffers(
        &mut self,
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
    ) -> impl Iterator<Item = (&'static str, &mut AlignedVec<T>, usize)> {
        let room = Self::gather_room(config, seq_len, batch);
        let head = Self::head_gather_room(config, seq_len, batch, many_to_one);
        let layers =
            (self.layers.iter_mut()).map(move |l| ("a layer's live rows", &mut l.gather, room));
        layers.chain([("the head's live rows", &mut self.head_gather, head)])
    }

    /// Bytes [`Workspace::ensure`] would hold for this shape (without `dx`, checkpoints and
    /// the room a batch with lengths adds for products over its live rows only):
    /// what a memory budget is checked against before anything is allocated.
    pub fn bytes_for(
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
        split: UnitSplit,
        dropout: bool,
    ) -> usize {
        let s = Sizes::of(config, seq_len, batch, many_to_one, split, dropout);
        let [y, dh0, dc0, dropped] = s.shared;
        let bidi: usize = BidiBuffers::<T>::sizes(config, seq_len, batch, many_to_one)
            .iter()
            .sum();
        (config.passes() * s.layer.iter().sum::<usize>() + 2 * y + dh0 + dc0 + dropped + bidi)
            * T::BYTES
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.hs.len()
                    + l.z.len()
                    + l.zh.len()
                    + l.cs.len()
                    + l.dh.len()
                    + l.dc.len()
                    + l.w_hh_t.len()
                    + l.bias.len()
                    + l.ms.len()
                    + l.dm.len()
                    + l.w_hr_t.len()
                    + l.gather.len()
                    + l.blocks.iter().map(UnitBlock::len).sum::<usize>()
            })
            .sum();
        let rest = self.y.len()
            + self.dy.len()
            + self.head_gather.len()
            + self.dx.len()
            + self.dh0.len()
            + self.dc0.len()
            + self.dropped.len()
            + self.bidi.len()
            + self.embedded.len();
        (per_layer + rest) * T::BYTES + self.checkpoints.bytes()
    }
}
