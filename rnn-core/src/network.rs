//! The full-BPTT engine: forward over all steps, loss, backward, for a stack of RNN layers
//! and a linear head.
//!
//! Per layer `k` (PyTorch's `nn.RNN`): `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`;
//! head: `y_t = W_hy h_t + b_y`.
//!
//! The known-fast schedule (see the crate docs): the input projection of many steps' rows is
//! one GEMM; each step does only the recurrent product and one fused bias + activation pass;
//! the reverse loop does only `dZ_t = G_t ⊙ act'(h_t)` and `G_{t-1} += dZ_t W_hh`; weight
//! gradients are then a few GEMMs over many steps at once.
//!
//! "Many steps" is a time chunk ([`TimeChunks`]): forward, each chunk runs every layer and
//! then the head; backward, last chunk first, the head's `dL/dh` of the chunk, then every
//! layer top down with its weight gradients. What one phase writes is still in cache when the
//! next reads it, where whole-sequence phases would stream `[T·B, G·H]` buffers from memory.
//!
//! Every pass makes room in its workspace for the batch before it computes anything (the
//! activations of a stretch, the live-row rooms, `dL/dx`, embedded tokens, checkpoints), so
//! memory that is not there refuses the pass with [`crate::RnnError::OutOfMemory`] (the
//! workspace then empty) instead of ending the process where a buffer grows.

use std::ops::Range;

use faer::{Accum, Par};
use kernels::aligned::AlignedVec;
use kernels::dropout::{drop_rows, drop_rows_backward};
use kernels::gemm::{gemm_nn, gemm_nt};
use kernels::{Float, reduce};

use crate::batch::{Batch, Target};
use crate::config::{LossSpec, RnnConfig};
use crate::dropout::Dropout;
use crate::error::{Result, vec_room};
use crate::layer::{
    self, ChunkRows, InitialState, LayerGrads, LayerPass, Padding, PassThreads, share_accum, spans,
    unless_frozen,
};
pub use crate::layer::{TimeChunks, UnitSplit};
use crate::params::Layout;
use crate::workspace::{BidiBuffers, LayerBuffers, Room, Workspace};

mod bidi;
pub(crate) mod final_states;
mod frozen;
mod scoring;

pub use frozen::{Frozen, FrozenTensors};

pub(crate) use scoring::{accuracy, mean_divisor};
use scoring::{loss_forward_backward, loss_scale};

/// Options of one forward + backward pass.
#[derive(Clone, Copy, Debug)]
pub struct PassOptions {
    /// Threads for the big GEMMs and the per-step unit blocks (results are bitwise identical
    /// for any value).
    pub par: Par,
    /// Also compute `dL/dx` into `Workspace::dx` (for a batch of tokens, `dL/d` their
    /// embedded rows, which the embedding's gradient always needs).
    pub input_grad: bool,
    /// Gradient-flow telemetry: record `‖dL/dh_t‖` per layer and step into
    /// `Workspace::grad_h_norms` (`[L, T]`). Costs one pass over each step's gradient.
    pub telemetry: bool,
    /// How each step's hidden units are split between per-step workers (results depend on
    /// it, never on `par`).
    pub split: UnitSplit,
    /// How many steps run at a time (results depend on it within rounding, never on `par`).
    pub chunks: TimeChunks,
    /// Dropout between stacked layers (training only; `None`: none).
    pub dropout: Option<Dropout>,
    /// Parts whose gradients nothing will read (frozen tensors,
    /// [`crate::trainer::Trainer::freeze`]): the pass may leave them out, skipping the work
    /// only they need ([`Frozen`] says when).
    pub frozen: Frozen,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self {
            par: Par::Seq,
            input_grad: false,
            telemetry: false,
            split: UnitSplit::Auto,
            chunks: TimeChunks::Auto,
            dropout: None,
            frozen: Frozen::default(),
        }
    }
}

impl From<Exec> for PassOptions {
    /// A pass that runs as `exec` says and computes only what every pass does (no input
    /// gradient, telemetry or dropout).
    fn from(Exec { par, split, chunks }: Exec) -> Self {
        Self {
            par,
            split,
            chunks,
            ..Self::default()
        }
    }
}

impl PassOptions {
    /// The threads, per-step split and time chunks of the pass.
    pub fn exec(&self) -> Exec {
        Exec {
            par: self.par,
            split: self.split,
            chunks: self.chunks,
        }
    }

    /// How many of a model's `layers`, from the bottom, the backward pass skips
    /// ([`Frozen::bottom_layers`]).
    fn skipped_layers(&self, layers: usize) -> usize {
        if self.input_grad || self.telemetry {
            0
        } else {
            self.frozen.bottom_layers.min(layers)
        }
    }
}

/// How a pass runs: the threads it may use, how each step's units are split between them
/// and how many steps run at a time. A bare [`Par`] converts with [`UnitSplit::Auto`] and
/// [`TimeChunks::Auto`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exec {
    /// Threads for the big GEMMs and the per-step blocks (`Par::Seq`: one).
    pub par: Par,
    /// The per-step unit blocks.
    pub split: UnitSplit,
    /// The time chunks.
    pub chunks: TimeChunks,
}

impl From<Par> for Exec {
    fn from(par: Par) -> Self {
        Self {
            par,
            split: UnitSplit::Auto,
            chunks: TimeChunks::Auto,
        }
    }
}

impl Exec {
    /// The steps per chunk for `batch` under `config`.
    fn chunk_steps<T>(&self, config: &RnnConfig, batch: &Batch<T>) -> usize {
        let (h, gh) = (config.hidden_size, config.gate_rows());
        self.chunks.steps(batch.seq_len, batch.batch, h, gh / h)
    }
}

/// Which head outputs a forward pass computes.
#[derive(Clone, Copy, PartialEq)]
enum Head {
    /// None (a checkpointed pass's first sweep, or an unscored segment).
    Skip,
    /// `y_t` at every step.
    EveryStep,
    /// `y` of the final state only.
    LastStep,
}

impl Head {
    fn of(many_to_one: bool) -> Self {
        if many_to_one {
            Self::LastStep
        } else {
            Self::EveryStep
        }
    }
}

/// The top layer's states one call of the head reads, and where their outputs go.
struct HeadRows {
    /// The steps whose states feed the head.
    steps: Range<usize>,
    /// Outputs kept per step (`ws.y`, `ws.dy` `[T, B, O]`), or the final state's alone
    /// (`[B, O]`).
    every_step: bool,
}

impl HeadRows {
    /// The outputs of the chunk `steps`.
    fn chunk(steps: Range<usize>) -> Self {
        Self {
            steps,
            every_step: true,
        }
    }

    /// The output of the final state of `seq_len` steps.
    fn final_state(seq_len: usize) -> Self {
        Self {
            steps: seq_len - 1..seq_len,
            every_step: false,
        }
    }

    /// The states in `hs` (`h_{-1}` first), in steps.
    fn states(&self) -> Range<usize> {
        self.steps.start + 1..self.steps.end + 1
    }

    /// The outputs in `ws.y` / `ws.dy`, in steps.
    fn outputs(&self) -> Range<usize> {
        if self.every_step {
            self.steps.clone()
        } else {
            0..1
        }
    }
}

/// The elements of the rows of `steps` in a time-major buffer of `width` per row.
fn rows_of(steps: Range<usize>, batch: usize, width: usize) -> Range<usize> {
    steps.start * batch * width..steps.end * batch * width
}

/// Forward over the whole batch (inference: no dropout, no loss): fills every layer's `hs`
/// (`[T+1, B, H]`, the initial state first) and the head outputs `ws.y` (`[T, B, O]`, or
/// `[B, O]` from each sequence's last state when `many_to_one`). The batch's target is not
/// read ([`Target::None`] will do).
///
/// `params` has [`Layout::new`]`(config)`'s layout.
///
/// # Errors
/// The batch's input errors ([`Batch::validate_inputs`]); nothing is computed then.
/// [`crate::RnnError::ShapeMismatch`] when `params` does not have `layout.len` elements;
/// [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
pub fn forward<'s, T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &'s [T],
    ws: &mut Workspace<T>,
    batch: &Batch<'s, T>,
    many_to_one: bool,
    exec: impl Into<Exec>,
) -> Result<()> {
    check_lengths(layout, params, None)?;
    batch.validate_inputs(config)?;
    let opts = PassOptions::from(exec.into());
    let stretch = Stretch::whole(many_to_one, false);
    with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        p.size_workspace(ws, many_to_one);
        forward_chunks(&p, ws, Head::of(many_to_one))
    })
}

/// `batch` with dense inputs: a batch of tokens as one whose `x` is their rows of
/// `embedding.weight`, gathered into `buf` (`[T, B, I]`; its capacity is kept between
/// passes); any other batch as it is. The engine runs on that batch, so every pass,
/// direction and segment reads embedded tokens as it reads `x`.
fn embed<'b, T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    batch: &Batch<'b, T>,
    buf: &'b mut AlignedVec<T>,
) -> Batch<'b, T> {
    let (Some(tokens), Some(table)) = (batch.tokens, &layout.embedding) else {
        return *batch;
    };
    let i = config.input_size;
    buf.resize(tokens.len() * i);
    for (row, &token) in buf.chunks_exact_mut(i).zip(tokens) {
        row.copy_from_slice(&params[table.start + token * i..][..i]);
    }
    Batch {
        x: &buf[..],
        tokens: None,
        ..*batch
    }
}

/// What of a pass decides its room besides the batch and its options.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    /// Steps at a time (the batch's `seq_len` or more: whole).
    segment: usize,
    /// Outputs of the last step only (`[B, O]`).
    many_to_one: bool,
    /// A loss of the caller's own (in segments, every step's outputs kept).
    own_loss: bool,
    /// A backward pass (in segments, a segment's gradient buffer).
    backward: bool,
}

impl Stretch {
    /// A pass over the whole batch.
    fn whole(many_to_one: bool, backward: bool) -> Self {
        Self {
            segment: usize::MAX,
            many_to_one,
            own_loss: false,
            backward,
        }
    }
}

/// [`with_pass`] over `batch` with dense inputs ([`embed`], into `ws.embedded`, which
/// `body` gets back empty and must not touch), after making room in `ws` for the pass
/// (`stretch`, [`Workspace::try_reserve`]): memory that is not there refuses the pass
/// before it computes anything.
///
/// # Errors
/// [`crate::RnnError::OutOfMemory`]; the workspace is then empty.
#[allow(clippy::too_many_arguments)]
fn with_embedded_pass<T: Float, R: Send>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    opts: PassOptions,
    stretch: Stretch,
    body: impl FnOnce(Pass<'_, '_, T>, &mut Workspace<T>) -> R + Send,
) -> Result<R> {
    // Whatever the pass, it overwrites the activations a final-state pass kept.
    ws.kept_forward = None;
    let room = Room {
        segment: stretch.segment,
        many_to_one: stretch.many_to_one,
        split: opts.split,
        dropout: opts.dropout.is_some_and(|d| d.applies_to(config)),
        input_grad: opts.input_grad,
        own_loss: stretch.own_loss,
        params: if stretch.backward { layout.len } else { 0 },
    };
    ws.try_reserve(config, batch, room)?;
    let mut embedded = std::mem::take(&mut ws.embedded);
    let dense = &embed(config, layout, params, batch, &mut embedded);
    let result = with_pass(config, layout, params, dense, opts, |p| body(p, ws));
    ws.embedded = embedded;
    Ok(result)
}

/// The embedding table's gradient from `dL/dx` of the embedded batch (`dx`, `[T, B, I]`):
/// each token's row is the sum of its positions' rows, in order (no sum split by threads).
fn embedding_grads<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    grads: &mut [T],
    tokens: &[usize],
    dx: &[T],
) {
    let (Some(table), i) = (&layout.embedding, config.input_size) else {
        return;
    };
    let table = &mut grads[table.clone()];
    table.fill(T::zero());
    for (row, &token) in dx.chunks_exact(i).zip(tokens) {
        reduce::axpy(&mut table[token * i..(token + 1) * i], T::one(), row);
    }
}

/// The loss of `batch` under `spec` without its gradients (evaluation: a validation set, a
/// model's score): a forward pass and the loss, no dropout, nothing but the workspace written.
/// With `segment` shorter than the batch, the pass runs `segment` steps at a time, each from
/// the state the one before ended in, and holds one segment's activations (as
/// [`forward_backward_checkpointed`] does, without its second pass). Equal bitwise to
/// [`forward_backward`]'s loss with the same `exec` for a whole pass; within rounding in
/// segments (the segments' losses are summed in another order).
///
/// # Errors
/// The batch's validation errors ([`Batch::validate`]); [`crate::RnnError::Config`] for
/// `segment = 0`. Nothing is computed then.
/// [`crate::RnnError::ShapeMismatch`] when `params` does not have `layout.len` elements;
/// [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
pub fn loss<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    spec: &LossSpec,
    exec: impl Into<Exec>,
    segment: usize,
) -> Result<T> {
    check_inputs(
        config,
        layout,
        params,
        batch,
        spec,
        segment,
        "a segmented loss",
    )?;
    let opts = PassOptions::from(exec.into());
    let stretch = Stretch {
        segment,
        ..Stretch::whole(spec.many_to_one, false)
    };
    let loss = with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        let batch = p.batch;
        if segment >= batch.seq_len {
            return forward_and_loss(&p, ws, spec);
        }
        let seg = SegmentOf::new(config, batch, spec, segment);
        let mut ck = std::mem::take(&mut ws.checkpoints);
        ck.size_states(&seg);
        let states = (&mut ck.h[..], &mut ck.c[..]);
        let scale = SegmentsRun::Loss(loss_scale(config, batch, spec));
        let total = forward_segments(&p, ws, &seg, states, &mut ck.lengths, scale);
        ws.checkpoints = ck;
        total
    })?;
    Ok(loss)
}

/// Each sequence's own loss as the model stands, into `ws.sequence_losses` (`[B]`): what
/// [`loss`] returns for a batch holding that sequence alone (within rounding; 0 under
/// `mean` for a sequence that scores nothing). Under `sum` they add up to the batch's loss.
/// Runs the whole sequence at once (as [`forward`]) and overwrites `ws.y` and `ws.dy`.
///
/// # Errors
/// The batch's validation errors ([`Batch::validate`]); nothing is computed then.
/// [`crate::RnnError::ShapeMismatch`] when `params` does not have `layout.len` elements;
/// [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
pub fn sequence_losses<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    spec: &LossSpec,
    exec: impl Into<Exec>,
) -> Result<()> {
    check_inputs(config, layout, params, batch, spec, usize::MAX, "")?;
    let opts = PassOptions::from(exec.into());
    let stretch = Stretch::whole(spec.many_to_one, false);
    with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        p.size_workspace(ws, spec.many_to_one);
        forward_chunks(&p, ws, Head::of(spec.many_to_one));
        scoring::sequence_losses(&p, ws, spec);
    })
}

/// The checks every pass makes before it computes anything: `params` of the layout's
/// length, a valid batch, and a segment of at least one step (`pass` names what needs it in
/// the error).
fn check_inputs<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    batch: &Batch<T>,
    spec: &LossSpec,
    segment: usize,
    pass: &str,
) -> Result<()> {
    check_lengths(layout, params, None)?;
    batch.validate(config, spec)?;
    check_segment(config, batch, segment, pass)
}

/// [`crate::RnnError::ShapeMismatch`] unless `params` (and `grads`, when given) hold
/// `layout`'s parameters.
fn check_lengths<T>(layout: &Layout, params: &[T], grads: Option<&[T]>) -> Result<()> {
    let named = [("params", Some(params)), ("grads", grads)];
    for (what, buffer) in named.into_iter().filter_map(|(w, b)| Some((w, b?))) {
        if buffer.len() != layout.len {
            return Err(crate::error::shape(what, layout.len, buffer.len()));
        }
    }
    Ok(())
}

/// A segment of at least one step, and whole sequences for a bidirectional model.
fn check_segment<T>(
    config: &RnnConfig,
    batch: &Batch<T>,
    segment: usize,
    pass: &str,
) -> Result<()> {
    if segment == 0 {
        return Err(crate::RnnError::Config(format!(
            "{pass} needs a segment of at least one step"
        )));
    }
    if config.bidirectional && segment < batch.seq_len {
        return Err(crate::RnnError::Config(format!(
            "{pass} runs segments of {segment} steps, but a bidirectional model needs whole \
             sequences of {} (its reverse direction starts at the end)",
            batch.seq_len
        )));
    }
    Ok(())
}

/// What every phase of one pass reads: the network, the batch (one segment of it, in
/// checkpointed BPTT), the options and the threads.
#[derive(Clone, Copy)]
struct Pass<'a, 's, T> {
    config: &'a RnnConfig,
    layout: &'a Layout,
    params: &'s [T],
    batch: &'a Batch<'s, T>,
    /// Where the batch's step 0 is in the whole sequence (a checkpointed segment's start):
    /// dropout masks are numbered from the sequence's first step.
    first_step: usize,
    opts: PassOptions,
    threads: PassThreads<'a>,
}

/// Runs `body` with the pass of the network (`config`, `layout`, `params`) over `batch`:
/// inside one pair session for the whole pass when its steps are split and threads allowed
/// ([`PassThreads`]).
fn with_pass<'s, T: Float, R: Send>(
    config: &RnnConfig,
    layout: &Layout,
    params: &'s [T],
    batch: &Batch<'s, T>,
    opts: PassOptions,
    body: impl FnOnce(Pass<'_, 's, T>) -> R + Send,
) -> R {
    // Decided once for the whole pass: its segments and chunks all run with this split.
    let opts = PassOptions {
        split: opts.split.for_steps(batch.seq_len),
        ..opts
    };
    // A bidirectional pass runs its two directions side by side instead, each whole on
    // one thread ([`bidi`]): no pair session then.
    let split_steps =
        PassThreads::split_steps(config, batch.batch, opts.split) && !config.bidirectional;
    kernels::pair::with_pair(opts.par != Par::Seq && split_steps, |pair| {
        body(Pass {
            config,
            layout,
            params,
            batch,
            first_step: 0,
            opts,
            threads: PassThreads {
                par: opts.par,
                pair,
            },
        })
    })
}

impl<'a, 's, T: Float> Pass<'a, 's, T> {
    /// The same pass over `batch`, the segment of this pass's batch from `first_step` on.
    fn over<'b>(&self, batch: &'b Batch<'b, T>, first_step: usize) -> Pass<'b, 'b, T>
    where
        'a: 'b,
        's: 'b,
    {
        Pass {
            batch,
            first_step,
            ..*self
        }
    }

    /// The dropout between layers, when it drops anything (never with one layer).
    fn dropout(&self) -> Option<Dropout> {
        (self.opts.dropout).filter(|d| d.applies_to(self.config))
    }

    /// Sizes `ws` for this pass's batch.
    fn size_workspace(&self, ws: &mut Workspace<T>, many_to_one: bool) {
        let (config, batch) = (self.config, self.batch);
        let split = self.opts.split;
        let dropout = self.dropout().is_some();
        ws.ensure(
            config,
            batch.seq_len,
            batch.batch,
            many_to_one,
            split,
            dropout,
        );
        if batch.lengths.is_some() {
            ws.ensure_gather(config, batch.seq_len, batch.batch, many_to_one);
        }
    }

    /// What layer `k` reads (`[T, B, I_k]`): the batch's inputs, the outputs of the layer
    /// below (`below_hs`, its `hs`), or with dropout their dropped copy.
    fn layer_input<'w>(&self, k: usize, below_hs: Option<&'w [T]>, dropped: &'w [T]) -> &'w [T]
    where
        's: 'w,
    {
        match below_hs {
            None => self.batch.x,
            Some(_) if self.dropout().is_some() => &dropped[self.dropped_block(k - 1)],
            Some(hs) => &hs[self.batch.batch * self.config.state_size()..],
        }
    }

    /// Layer `k`'s dropped outputs in `Workspace::dropped` (`[L-1, T, B, H]`, `P` wide with
    /// projections).
    fn dropped_block(&self, k: usize) -> Range<usize> {
        k_rows(self.batch.seq_len * self.batch.batch * self.config.state_size())(k)
    }

    /// The dropout mask's number of the first row of the chunk `steps`: rows are numbered
    /// `t · B + b` from the whole sequence's first step, so chunks and segments draw the
    /// masks the whole pass would.
    fn mask_row(&self, steps: &Range<usize>) -> usize {
        (self.first_step + steps.start) * self.batch.batch
    }

    /// The time chunks of the pass, first to last.
    fn chunks(&self) -> impl DoubleEndedIterator<Item = Range<usize>> + use<T> {
        let steps = if self.config.bidirectional {
            self.batch.seq_len // the reverse direction starts at the end
        } else {
            self.opts.exec().chunk_steps(self.config, self.batch)
        };
        spans(self.batch.seq_len, steps)
    }

    /// The initial states of pass `j` (layer `j / D`, direction `j % D`): the batch's,
    /// the learned ones, or zeros.
    fn initial_states(&self, j: usize) -> (InitialState<'s, T>, InitialState<'s, T>) {
        let b = self.batch.batch;
        // `h` is `P` wide with projections, `c` always `H`.
        let initial = |given: Option<&'s [T]>, learned: Option<&Range<usize>>, h: usize| match (
            given, learned,
        ) {
            (Some(s), _) => InitialState::PerSequence(&s[j * b * h..(j + 1) * b * h]),
            (None, Some(l)) => {
                InitialState::Broadcast(&self.params[l.start + j * h..l.start + (j + 1) * h])
            }
            (None, None) => InitialState::Zeros,
        };
        (
            initial(
                self.batch.h0,
                self.layout.h0.as_ref(),
                self.config.state_size(),
            ),
            initial(
                self.batch.c0,
                self.layout.c0.as_ref(),
                self.config.hidden_size,
            ),
        )
    }

    /// The arguments of pass `j`'s run over the chunk `steps` (layer `j / D`, direction
    /// `j % D`), reading `input`.
    fn layer<'l>(&'l self, j: usize, input: &'l [T], steps: &Range<usize>) -> LayerPass<'l, T> {
        LayerPass {
            config: self.config,
            slots: &self.layout.layers[j],
            params: self.params,
            batch: self.batch,
            input,
            input_size: self.config.layer_input(j / self.config.directions()),
            threads: self.threads,
            split: self.opts.split,
            steps: steps.clone(),
            frozen: self.opts.frozen.tensors.pass(j),
        }
    }
}

/// Every layer's forward pass and the `head` outputs, chunk by chunk (the workspace must be
/// sized).
fn forward_chunks<T: Float>(p: &Pass<'_, '_, T>, ws: &mut Workspace<T>, head: Head) {
    if p.config.bidirectional {
        return bidi::forward(p, ws, head);
    }
    for steps in p.chunks() {
        forward_layers(p, ws, &steps);
        if head == Head::EveryStep {
            head_forward(p, ws, HeadRows::chunk(steps));
        }
    }
    if head == Head::LastStep {
        head_forward(p, ws, HeadRows::final_state(p.batch.seq_len));
    }
}

/// Every layer's forward pass over the chunk `steps` (the workspace must be sized).
fn forward_layers<T: Float>(p: &Pass<'_, '_, T>, ws: &mut Workspace<T>, steps: &Range<usize>) {
    let (config, batch) = (p.config, p.batch);
    let (b, h) = (batch.batch, config.state_size());
    let dropout = p.dropout();
    for k in 0..config.num_layers {
        let (below, rest) = ws.layers.split_at_mut(k);
        let input = p.layer_input(k, below.last().map(|l| &l.hs[..]), &ws.dropped);
        let (h0, c0) = p.initial_states(k);
        layer::forward(&p.layer(k, input, steps), &mut rest[0], h0, c0);
        if let Some(d) = dropout.filter(|_| k + 1 < config.num_layers) {
            // The chunk's outputs, dropped for the layer above: `hs[t + 1]` is `h_t`.
            let rows = rows_of(steps.clone(), b, h);
            drop_rows(
                &mut ws.dropped[p.dropped_block(k)][rows.clone()],
                &rest[0].hs[b * h..][rows],
                h,
                p.mask_row(steps),
                &d.layer_mask(k),
            );
        }
    }
}

/// Where the head reads the states of `rows` (`[n, D·H]`) and writes their gradient: the
/// top layer's states and `dL/dh` buffer, or a bidirectional model's joined directions
/// ([`bidi`]) and the gradient that it splits between them.
fn head_io<'w, T: Float>(
    p: &Pass<'_, '_, T>,
    layers: &'w mut [LayerBuffers<T>],
    bidi: &'w mut BidiBuffers<T>,
    rows: &HeadRows,
) -> (&'w [T], &'w mut [T]) {
    let (config, batch) = (p.config, p.batch);
    let (b, h) = (batch.batch, config.state_size());
    if !config.bidirectional {
        let (hs, grad_h) = layers[config.num_layers - 1].states_and_grad_h(config.cell);
        return (
            &hs[rows_of(rows.states(), b, h)],
            &mut grad_h[rows_of(rows.steps.clone(), b, h)],
        );
    }
    let w = config.output_width();
    if rows.every_step {
        let top = (config.num_layers - 1) * batch.seq_len * b * w;
        (
            &bidi.fwd_in[top..][rows_of(rows.steps.clone(), b, w)],
            &mut bidi.d_fwd[rows_of(rows.steps.clone(), b, w)],
        )
    } else {
        (&bidi.last[..b * w], &mut bidi.d_fwd[..b * w])
    }
}

/// The head over the top layer's states `rows`: `y = H W_hyᵀ + b_y`.
fn head_forward<T: Float>(p: &Pass<'_, '_, T>, ws: &mut Workspace<T>, rows: HeadRows) {
    let (config, batch) = (p.config, p.batch);
    let (b, w, o) = (batch.batch, config.output_width(), config.output_size);
    let (w_hy, b_y) = (
        &p.params[p.layout.w_hy.clone()],
        &p.params[p.layout.b_y.clone()],
    );
    let states = head_io(p, &mut ws.layers, &mut ws.bidi, &rows).0;
    let y = &mut ws.y[rows_of(rows.outputs(), b, o)];
    for row in y.chunks_exact_mut(o) {
        row.copy_from_slice(b_y);
    }
    let scratch = &mut ws.head_gather;
    let chunk = head_chunk(p, &rows, scratch);
    chunk.product(
        gemm_nt,
        (y, o),
        Accum::Add,
        (states, w),
        w_hy,
        scratch,
        Padding::Keep,
    );
    if rows.every_step {
        // PyTorch pads finished sequences' outputs with zeros, so their head output is b_y.
        for t in rows.steps {
            for bb in batch.finished(t) {
                ws.y[(t * b + bb) * o..(t * b + bb + 1) * o].copy_from_slice(b_y);
            }
        }
    }
}

/// The head's rows `rows` for its products: at every step, the live ones gathered when
/// enough are padding (into `scratch`, `ws.head_gather`); the final states are all live.
fn head_chunk<'c, T: Float>(
    p: &Pass<'c, '_, T>,
    rows: &HeadRows,
    scratch: &[T],
) -> ChunkRows<'c, T> {
    let scratch = if rows.every_step { scratch } else { &[] };
    ChunkRows::new(p.batch, rows.steps.clone(), p.threads, scratch)
}

/// Forward, loss and full backward in one call: returns the loss and writes the gradient of
/// every parameter into `grads` (same layout as `params`, overwritten), `dL/dh0` into
/// `ws.dh0` and, with `opts.input_grad`, `dL/dx` into `ws.dx`.
///
/// # Errors
/// The batch's validation errors ([`Batch::validate`]); nothing is computed then.
/// [`crate::RnnError::ShapeMismatch`] when `params` or `grads` do not have `layout.len`
/// elements; [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
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
    // One stretch as long as the batch: plain full BPTT, with the same checks.
    forward_backward_checkpointed(
        config,
        layout,
        params,
        grads,
        ws,
        batch,
        spec,
        opts,
        usize::MAX,
    )
}

/// [`forward_backward`] of a validated batch.
fn full_pass<T: Float>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    spec: &LossSpec,
) -> T {
    let loss = forward_and_loss(p, ws, spec);
    backward(p, grads, ws, spec.many_to_one, true, None);
    loss
}

/// The forward pass over the whole batch and its loss, `dL/dy` left in `ws.dy`.
fn forward_and_loss<T: Float>(p: &Pass<'_, '_, T>, ws: &mut Workspace<T>, spec: &LossSpec) -> T {
    let (config, batch) = (p.config, p.batch);
    p.size_workspace(ws, spec.many_to_one);
    forward_chunks(p, ws, Head::of(spec.many_to_one));
    loss_forward_backward(p, ws, spec, loss_scale(config, batch, spec))
}

/// Backward from `ws.dy` (set by the loss) through the head and every layer, chunk by
/// chunk, last first. Without `head` no step of this batch is scored (a segment before the
/// scored ones): the head's gradients are zero and nothing comes from above. `carry`
/// (`dL/dh`, `dL/dc` `[L, B, H]`) arrives at the last step from the steps after this batch
/// (checkpointed BPTT).
fn backward<T: Float>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    many_to_one: bool,
    head: bool,
    carry: Option<(&[T], &[T])>,
) {
    let (config, layout, batch, opts) = (p.config, p.layout, p.batch, p.opts);
    // `h`: the state's width (`P` with projections); the cell state's is `H`.
    let (t_len, b, h) = (batch.seq_len, batch.batch, config.state_size());
    let top = config.num_layers - 1;
    let cell = config.cell;
    if config.bidirectional {
        // Whole sequences only (checkpointed segments are refused before any pass): a carry
        // is the gradient of the final states, from a model they were handed on to.
        bidi::backward(p, grads, ws, many_to_one, head, carry);
        return initial_state_grads(p, grads, ws);
    }
    if !head {
        grads[layout.w_hy.clone()].fill(T::zero());
        grads[layout.b_y.clone()].fill(T::zero());
        ws.layers[top].grad_h(cell)[..t_len * b * h].fill(T::zero());
    } else if many_to_one {
        head_backward(p, grads, ws, HeadRows::final_state(t_len));
        ws.layers[top].grad_h(cell)[..(t_len - 1) * b * h].fill(T::zero());
    }
    let (layer_state, layer_cell_state) = (k_rows(b * h), k_rows(b * config.hidden_size));
    if opts.telemetry {
        ws.grad_h_norms.resize(config.num_layers * t_len, T::zero());
    }
    if opts.input_grad {
        // dL/dx costs a [T, B, I] buffer and a GEMM: only when asked for.
        ws.dx.resize(t_len * b * config.input_size);
    }
    // Frozen bottom layers: nothing below needs their dL/dh, so their backward never runs.
    let skipped = opts.skipped_layers(config.num_layers);
    zero_skipped_passes(p, grads, ws, skipped);
    for steps in p.chunks().rev() {
        if head && !many_to_one {
            head_backward(p, grads, ws, HeadRows::chunk(steps.clone()));
        }
        let mut norms = opts
            .telemetry
            .then(|| &mut ws.grad_h_norms[..config.num_layers * t_len]);
        for k in (skipped..config.num_layers).rev() {
            let (below, rest) = ws.layers.split_at_mut(k);
            let buf = &mut rest[0];
            let dh0 = &mut ws.dh0[layer_state(k)];
            let dc0 = if cell.has_cell_state() {
                &mut ws.dc0[layer_cell_state(k)]
            } else {
                &mut []
            };
            let (below_hs, dinput) = match below.last_mut() {
                None => (None, opts.input_grad.then_some(&mut ws.dx[..])),
                Some(l) => {
                    let (states, grad_h) = l.states_and_grad_h(cell);
                    (Some(states), (k > skipped).then_some(grad_h))
                }
            };
            let input = p.layer_input(k, below_hs, &ws.dropped);
            let out = LayerGrads {
                grads: &mut *grads,
                dh0,
                dc0,
                dinput,
                grad_h_norms: norms
                    .as_deref_mut()
                    .map(|n| &mut n[k * t_len..(k + 1) * t_len]),
                dh_end: carry.map(|(h_end, _)| &h_end[layer_state(k)]),
                dc_end: carry
                    .filter(|_| cell.has_cell_state())
                    .map(|(_, c_end)| &c_end[layer_cell_state(k)]),
            };
            layer::backward(&p.layer(k, input, &steps), buf, out);
            if let Some(d) = p.dropout().filter(|_| k > skipped) {
                // dL/dh of the layer below, back through its dropout.
                let grad_h = &mut below[k - 1].grad_h(cell)[rows_of(steps.clone(), b, h)];
                drop_rows_backward(grad_h, h, p.mask_row(&steps), &d.layer_mask(k - 1));
            }
        }
    }
    initial_state_grads(p, grads, ws);
}

/// Zeroes what the backward pass of the bottom `passes` passes would have written: their
/// tensors' gradients and their `dL/dh0` (and `dL/dc0`) rows ([`Frozen::bottom_layers`]).
fn zero_skipped_passes<T: Float>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    passes: usize,
) {
    let (config, b) = (p.config, p.batch.batch);
    for slots in &p.layout.layers[..passes] {
        for range in slots.ranges() {
            grads[range.clone()].fill(T::zero());
        }
    }
    ws.dh0[..passes * b * config.state_size()].fill(T::zero());
    if config.cell.has_cell_state() {
        ws.dc0[..passes * b * config.hidden_size].fill(T::zero());
    }
}

/// The gradients of learned initial states from `ws.dh0` (and `ws.dc0`): a broadcast state's
/// gradient is the sum over the sequences that used it; a batch that brings its own state
/// does not use it.
fn initial_state_grads<T: Float>(p: &Pass<'_, '_, T>, grads: &mut [T], ws: &Workspace<T>) {
    let (layout, batch, config) = (p.layout, p.batch, p.config);
    for (learned, given, dstate, h) in [
        (&layout.h0, batch.h0.is_some(), &ws.dh0, config.state_size()),
        (&layout.c0, batch.c0.is_some(), &ws.dc0, config.hidden_size),
    ] {
        let layer_state = k_rows(batch.batch * h);
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

/// The head's backward over the top layer's states `rows`: its weight gradients from
/// `ws.dy` (overwritten by the sequence's last chunk, added to by the others) and `dL/dh`
/// of those states.
fn head_backward<T: Float>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    rows: HeadRows,
) {
    let (config, layout, batch) = (p.config, p.layout, p.batch);
    let (b, w, o) = (batch.batch, config.output_width(), config.output_size);
    let dy = &ws.dy[rows_of(rows.outputs(), b, o)];
    let (states, g_rows) = head_io(p, &mut ws.layers, &mut ws.bidi, &rows);
    let scratch = &mut ws.head_gather;
    let chunk = head_chunk(p, &rows, scratch);
    let accum = share_accum(&rows.steps, batch.seq_len);
    let w_hy = &p.params[layout.w_hy.clone()];
    let frozen = &p.opts.frozen.tensors;
    let dw_hy = &mut grads[layout.w_hy.clone()];
    unless_frozen(frozen.head_weight(), dw_hy, accum, |dst| {
        chunk.tn(dst, accum, (dy, o), (states, w), scratch)
    });
    // Padding rows of dL/dy are zero: the column sums run over every row.
    let db_y = &mut grads[layout.b_y.clone()];
    unless_frozen(frozen.head_bias(), db_y, accum, |dst| {
        reduce::col_sums(dst, accum, dy)
    });
    // dL/dh of the top layer, unless the backward pass skips every layer (all frozen).
    if p.opts.skipped_layers(p.config.num_layers) < p.config.num_layers {
        let (g_rows, dy) = ((g_rows, w), (dy, o));
        chunk.product(
            gemm_nn,
            g_rows,
            Accum::Replace,
            dy,
            w_hy,
            scratch,
            Padding::Zero,
        );
    }
}

/// The range of layer `k`'s block in an `[L, n]` buffer.
fn k_rows(n: usize) -> impl Fn(usize) -> Range<usize> {
    move |k| k * n..(k + 1) * n
}

/// What checkpointed BPTT keeps besides one segment's workspace.
#[derive(Clone, Debug, Default)]
pub struct Checkpoints<T> {
    /// `[n, L, B, H]`: every layer's state at the start of segments `1..n` (slot 0 unused).
    h: Vec<T>,
    /// The same for an LSTM's cell state.
    c: Vec<T>,
    /// One segment's parameter gradients, summed into the caller's.
    grads: Vec<T>,
    /// `[L, B, H]`: `dL/dh` (and `dL/dc`) flowing from a segment into the one before.
    carry_h: Vec<T>,
    carry_c: Vec<T>,
    /// `[B]`: a segment's sequence lengths.
    lengths: Vec<usize>,
    /// `[T, B, I]` and `[L, T]`: `dL/dx` and telemetry gathered over segments, when asked.
    dx: Vec<T>,
    norms: Vec<T>,
    /// `[T, B, O]`: every step's outputs and their gradient, for a loss of the caller's own
    /// ([`forward_backward_with`]), which reads them all at once.
    y: Vec<T>,
    dy: Vec<T>,
}

impl<T: Float> Checkpoints<T> {
    /// Sizes the saved states (`[n, L, B, H]`, hidden and cell) and the lengths (`[B]`) for
    /// the segments of `seg`.
    fn size_states(&mut self, seg: &SegmentOf<'_, '_, T>) {
        let n = seg.count();
        self.h.resize(n * seg.block, T::zero());
        self.c.resize(n * seg.block_c, T::zero());
        self.lengths.resize(seg.dims.0, 0);
    }

    /// Room for the segments of a batch of `(seq_len, b)` in stretches of `segment` steps
    /// (fewer than `seq_len`) of a model of `params` parameters: the saved states, the
    /// carries, a segment's gradients, and with `input_grad` the whole batch's `dL/dx`, with
    /// `own_outputs` every step's outputs and their gradient. Lengths and values unchanged;
    /// memory that is not there is [`crate::RnnError::OutOfMemory`].
    pub(crate) fn try_reserve(
        &mut self,
        config: &RnnConfig,
        (seq_len, b, segment): (usize, usize, usize),
        params: usize,
        (input_grad, own_outputs): (bool, bool),
    ) -> Result<()> {
        let rows = seq_len * b;
        let (block, block_c) = state_blocks(config, b);
        let n = seq_len.div_ceil(segment);
        let only = |yes: bool, len: usize| if yes { len } else { 0 };
        let outputs = only(own_outputs, rows * config.output_size);
        for (v, len) in [
            (&mut self.h, n * block),
            (&mut self.c, n * block_c),
            (&mut self.grads, params),
            (&mut self.carry_h, block),
            (&mut self.carry_c, block_c),
            (&mut self.dx, only(input_grad, rows * config.input_size)),
            (&mut self.y, outputs),
            (&mut self.dy, outputs),
        ] {
            vec_room(v, len, "the checkpointed segments")?;
        }
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.h.len()
            + self.c.len()
            + self.grads.len()
            + self.carry_h.len()
            + self.carry_c.len()
            + self.dx.len()
            + self.norms.len()
            + self.y.len()
            + self.dy.len())
            * T::BYTES
            + self.lengths.len() * std::mem::size_of::<usize>()
    }
}

/// [`forward_backward`] in `O(√T)` activation memory (Chen et al. 2016; Gruslys et al. 2016):
/// a first forward pass keeps only every layer's state at the start of each `segment`-step
/// stretch; the backward pass then re-runs each stretch from its saved state, last first,
/// carrying `dL/dh` (and `dL/dc`) from one stretch into the one before. Gradients equal full
/// BPTT's up to summation order (within 1e-12 in f64); the extra cost is one forward pass.
/// A `segment` of `T` or more is plain [`forward_backward`]. About `√T` minimises memory.
///
/// After the call, `ws.dh0` / `ws.dc0` / `ws.dx` / `ws.grad_h_norms` hold the whole batch's
/// values; `ws.y` only the first segment's outputs.
///
/// # Errors
/// The batch's validation errors; [`crate::RnnError::Config`] for `segment = 0`.
/// [`crate::RnnError::ShapeMismatch`] when `params` or `grads` do not have `layout.len`
/// elements; [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
pub fn forward_backward_checkpointed<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    spec: &LossSpec,
    opts: PassOptions,
    segment: usize,
) -> Result<T> {
    check_lengths(layout, params, Some(grads))?;
    check_inputs(
        config,
        layout,
        params,
        batch,
        spec,
        segment,
        "checkpointed BPTT",
    )?;
    let opts = with_table_input_grad(batch, opts);
    let stretch = Stretch {
        segment,
        ..Stretch::whole(spec.many_to_one, true)
    };
    let loss = with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        if segment >= batch.seq_len {
            full_pass(&p, grads, ws, spec)
        } else {
            checkpointed_pass(&p, grads, ws, spec, segment, NoClosure::BuiltIn)
        }
    })?;
    table_grads(config, layout, grads, ws, batch, opts);
    Ok(loss)
}

/// [`forward_backward`] with a loss of the caller's own, as PyTorch's autograd takes any
/// function of the outputs: after the forward pass, `loss(outputs, dy)` reads the head's
/// outputs (`[T, B, O]` time-major, or `[B, O]` from each sequence's last state when
/// `many_to_one`), writes `dL/d outputs` into `dy` (the same shape, zeroed) and returns the
/// loss; the backward pass runs from `dy`. Its reduction, weights and targets are the
/// caller's: the batch carries none ([`Target::None`]). With [`Batch::score_from`] the
/// outputs are those of the steps from it on (`[T - score_from, B, O]`): the steps before
/// are a warm-up, as for the built-in losses (TBPTT's replayed history).
///
/// Rows of steps past a sequence's length hold `b_y` (PyTorch pads the states with zeros)
/// and take no gradient: what `loss` writes there is zeroed. Leave them out of the loss, as
/// the built-in losses do.
///
/// ```
/// use rnn_core::network::{PassOptions, forward_backward_with};
/// use rnn_core::params::{Layout, init_params};
/// use rnn_core::prelude::*;
/// use rnn_core::workspace::Workspace;
/// let cfg = RnnConfig::gru(2, 8, 2); // O = 2: a mean and a log-variance per step
/// let (layout, params) = (Layout::new(&cfg), init_params::<f64>(&cfg, 0));
/// let (x, target) = (vec![0.5; 3 * 4 * 2], vec![0.25; 3 * 4]); // T = 3, B = 4
/// let gaussian_nll = |y: &[f64], dy: &mut [f64]| {
///     let mut sum = 0.0;
///     for ((y, dy), z) in y.chunks_exact(2).zip(dy.chunks_exact_mut(2)).zip(&target) {
///         let (mean, log_var) = (y[0], y[1]);
///         let err = z - mean;
///         sum += 0.5 * (log_var + err * err * (-log_var).exp());
///         dy[0] = -err * (-log_var).exp() / 12.0;
///         dy[1] = 0.5 * (1.0 - err * err * (-log_var).exp()) / 12.0;
///     }
///     sum / 12.0
/// };
/// let mut grads = vec![0.0; layout.len];
/// let batch = Batch::new(3, 4, &x, Target::None);
/// let loss = forward_backward_with(&cfg, &layout, &params, &mut grads, &mut Workspace::new(),
///                                  &batch, false, PassOptions::default(), gaussian_nll)?;
/// assert!(loss.is_finite() && grads.iter().any(|&g| g != 0.0));
/// # Ok::<(), RnnError>(())
/// ```
///
/// # Errors
/// The batch's input errors ([`Batch::validate_own_loss`]); nothing is computed then.
/// [`crate::RnnError::ShapeMismatch`] when `params` or `grads` do not have `layout.len`
/// elements; [`crate::RnnError::OutOfMemory`] when the workspace cannot grow to the batch.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_with<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    params: &[T],
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    many_to_one: bool,
    opts: PassOptions,
    loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
) -> Result<T> {
    let args = (config, layout, params);
    forward_backward_with_segments(args, grads, ws, batch, many_to_one, opts, loss, usize::MAX)
}

/// [`forward_backward_with`] in checkpointed segments of `segment` steps (as
/// [`forward_backward_checkpointed`]; `T` or more: one whole pass). The loss still reads
/// every output at once: the first pass keeps them (`[T, B, O]`) and the second feeds each
/// segment its rows of `dL/dy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_backward_with_segments<T: Float>(
    (config, layout, params): (&RnnConfig, &Layout, &[T]),
    grads: &mut [T],
    ws: &mut Workspace<T>,
    batch: &Batch<T>,
    many_to_one: bool,
    opts: PassOptions,
    loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    segment: usize,
) -> Result<T> {
    check_lengths(layout, params, Some(grads))?;
    batch.validate_own_loss(config)?;
    check_segment(config, batch, segment, "checkpointed BPTT")?;
    let opts = with_table_input_grad(batch, opts);
    let stretch = Stretch {
        segment,
        many_to_one,
        own_loss: true,
        backward: true,
    };
    let loss = with_embedded_pass(config, layout, params, ws, batch, opts, stretch, |p, ws| {
        if segment < batch.seq_len {
            // Where the outputs are read: the segments' only use of a spec here.
            let spec = LossSpec {
                many_to_one,
                ..LossSpec::every_step(crate::config::LossKind::Mse)
            };
            return checkpointed_pass(&p, grads, ws, &spec, segment, Scorer::Own(loss));
        }
        p.size_workspace(ws, many_to_one);
        forward_chunks(&p, ws, Head::of(many_to_one));
        let o = config.output_size;
        let rows = if many_to_one { 1 } else { batch.seq_len } * batch.batch;
        let (y, dy) = (&ws.y[..rows * o], &mut ws.dy[..rows * o]);
        let value = own_loss(batch, many_to_one, o, y, dy, loss);
        backward(&p, grads, ws, many_to_one, true, None);
        value
    })?;
    table_grads(config, layout, grads, ws, batch, opts);
    Ok(loss)
}

/// Calls the caller's `loss` on the scored rows of the outputs `y` of `batch` (`O` = `o`
/// wide: `[T, B, O]`, of which the steps from [`Batch::score_from`] on, or `[B, O]` when
/// `many_to_one`) with `dy` zeroed, then zeroes what it wrote into rows past a sequence's
/// length: those rows do not exist in a packed sequence.
fn own_loss<T: Float>(
    batch: &Batch<T>,
    many_to_one: bool,
    o: usize,
    y: &[T],
    dy: &mut [T],
    loss: impl FnOnce(&[T], &mut [T]) -> T,
) -> T {
    dy.fill(T::zero());
    let first = if many_to_one {
        0
    } else {
        batch.score_from * batch.batch * o
    };
    let value = loss(&y[first..], &mut dy[first..]);
    if !many_to_one {
        let b = batch.batch;
        for t in 0..batch.seq_len {
            for bb in batch.finished(t) {
                dy[(t * b + bb) * o..(t * b + bb + 1) * o].fill(T::zero());
            }
        }
    }
    value
}

/// `opts`, asking for `dL/dx` when the batch's tokens index a table that trains: the
/// table's gradient gathers it.
fn with_table_input_grad<T>(batch: &Batch<T>, opts: PassOptions) -> PassOptions {
    PassOptions {
        input_grad: opts.input_grad || (batch.tokens.is_some() && !opts.frozen.embedding),
        ..opts
    }
}

/// The embedding table's gradient after a pass over `batch` (zero when it is frozen).
fn table_grads<T: Float>(
    config: &RnnConfig,
    layout: &Layout,
    grads: &mut [T],
    ws: &Workspace<T>,
    batch: &Batch<T>,
    opts: PassOptions,
) {
    match (batch.tokens, &layout.embedding) {
        (Some(_), Some(table)) if opts.frozen.embedding => grads[table.clone()].fill(T::zero()),
        (Some(tokens), _) => embedding_grads(config, layout, grads, tokens, &ws.dx),
        (None, _) => {}
    }
}

/// Where a pass's gradient comes from.
enum Scorer<'g, T, F> {
    /// The loss spec's built-in loss.
    BuiltIn,
    /// The caller's ([`forward_backward_with`]), called once with all the batch's outputs.
    Own(F),
    /// No loss and no head: the gradients `(dL/dh_n, dL/dc_n)` of the final states, from
    /// beyond the last step ([`final_states`]). `kept`: the forward pass of
    /// [`final_states::forward_final_states`] left the segments' starting states and the
    /// last segment's activations in the workspace.
    FinalStates {
        grads: (&'g [T], &'g [T]),
        kept: bool,
    },
}

/// A [`Scorer`] without a closure of the caller's (its closure type is never used).
type NoClosure<'g, T> = Scorer<'g, T, fn(&[T], &mut [T]) -> T>;

/// [`forward_backward_checkpointed`] of a validated batch, in segments shorter than it, its
/// loss built in or the caller's (`scorer`; then `spec` says only where outputs are read).
fn checkpointed_pass<T: Float, F: FnOnce(&[T], &mut [T]) -> T>(
    p: &Pass<'_, '_, T>,
    grads: &mut [T],
    ws: &mut Workspace<T>,
    spec: &LossSpec,
    segment: usize,
    scorer: Scorer<'_, T, F>,
) -> T {
    let (config, layout, batch, opts) = (p.config, p.layout, p.batch, p.opts);
    let (t_len, b, l) = (batch.seq_len, batch.batch, config.num_layers);
    let i = config.input_size;
    let lstm = config.cell.has_cell_state();
    let seg = SegmentOf::new(config, batch, spec, segment);
    let (block, block_c) = (seg.block, seg.block_c);
    let n = seg.count();
    ws.checkpoints.size_states(&seg);
    let Checkpoints {
        h: mut ck_h,
        c: mut ck_c,
        grads: mut seg_grads,
        mut carry_h,
        mut carry_c,
        mut lengths,
        mut dx,
        mut norms,
        y: mut y_all,
        dy: mut dy_all,
    } = std::mem::take(&mut ws.checkpoints);
    seg_grads.resize(layout.len, T::zero());
    carry_h.resize(block, T::zero());
    carry_c.resize(block_c, T::zero());
    dx.resize(if opts.input_grad { t_len * b * i } else { 0 }, T::zero());
    norms.resize(if opts.telemetry { l * t_len } else { 0 }, T::zero());
    let scale = loss_scale(config, batch, spec);
    let o = config.output_size;
    let mut total = T::zero();
    let (mut own, final_states) = match scorer {
        Scorer::Own(loss) => (Some(loss), None),
        Scorer::BuiltIn => (None, None),
        Scorer::FinalStates { grads, kept } => (None, Some((grads, kept))),
    };
    // The forward pass to the final states is still in the workspace: its segment starts,
    // and the last segment's activations, which the backward pass takes first.
    let kept = final_states.is_some_and(|(_, kept)| kept);
    // A loss of the caller's own at every step reads all outputs at once: the first pass
    // keeps them, and the second feeds each segment its rows of the gradient.
    let own_every_step = own.is_some() && !spec.many_to_one;

    // Pass 1: the states at every segment start (and, for that loss, every output).
    let states = (&mut ck_h[..], &mut ck_c[..]);
    if own_every_step {
        y_all.resize(t_len * b * o, T::zero());
        dy_all.resize(t_len * b * o, T::zero());
        let outputs = SegmentsRun::Outputs(&mut y_all);
        forward_segments(p, ws, &seg, states, &mut lengths, outputs);
        if let Some(loss) = own.take() {
            total = own_loss(batch, false, o, &y_all, &mut dy_all, loss);
        }
    } else if !kept {
        forward_segments(p, ws, &seg, states, &mut lengths, SegmentsRun::States);
    }

    // Pass 2: each segment again, last first, backward with the carried gradient.
    grads.fill(T::zero());
    for s in (0..n).rev() {
        seg.lengths(s, &mut lengths);
        let sub = seg.batch(s, &lengths, &ck_h, &ck_c);
        let r = seg.span(s);
        let seg_pass = p.over(&sub, r.start);
        seg_pass.size_workspace(ws, spec.many_to_one);
        let scored = final_states.is_none() && seg.scored(s);
        let head = if scored && !own_every_step {
            Head::of(spec.many_to_one)
        } else {
            Head::Skip
        };
        if !(kept && s + 1 == n) {
            forward_chunks(&seg_pass, ws, head);
        }
        if own_every_step {
            let rows = rows_of(r.clone(), b, o);
            ws.dy[..rows.len()].copy_from_slice(&dy_all[rows]);
        } else if let (true, Some(loss)) = (scored, own.take()) {
            // Many-to-one: the last segment, the first here, holds every final state.
            let (y, dy) = (&ws.y[..b * o], &mut ws.dy[..b * o]);
            total = own_loss(&sub, true, o, y, dy, loss);
        } else if scored {
            total += loss_forward_backward(&seg_pass, ws, spec, scale);
        }
        // From the next segment, or into the last from beyond it (the final states').
        let carry = match final_states {
            _ if s + 1 < n => Some((&carry_h[..], &carry_c[..])),
            Some((grads, _)) => Some(grads),
            None => None,
        };
        backward(
            &seg_pass,
            &mut seg_grads,
            ws,
            spec.many_to_one,
            scored,
            carry,
        );
        reduce::axpy(grads, T::one(), &seg_grads);
        carry_h.copy_from_slice(&ws.dh0[..block]);
        if lstm {
            carry_c.copy_from_slice(&ws.dc0[..block_c]);
        }
        if opts.input_grad {
            dx[r.start * b * i..r.end * b * i].copy_from_slice(&ws.dx[..r.len() * b * i]);
        }
        if opts.telemetry {
            for k in 0..l {
                norms[k * t_len + r.start..k * t_len + r.end]
                    .copy_from_slice(&ws.grad_h_norms[k * r.len()..(k + 1) * r.len()]);
            }
        }
    }
    if opts.input_grad {
        ws.dx.resize(dx.len());
        ws.dx.copy_from_slice(&dx);
    }
    if opts.telemetry {
        ws.grad_h_norms.resize(norms.len(), T::zero());
        ws.grad_h_norms.copy_from_slice(&norms);
    }
    ws.checkpoints = Checkpoints {
        h: ck_h,
        c: ck_c,
        grads: seg_grads,
        carry_h,
        carry_c,
        lengths,
        dx,
        norms,
        y: y_all,
        dy: dy_all,
    };
    total
}

/// The forward pass to the final states in segments of `segment` steps (fewer than the
/// batch's; [`final_states::forward_final_states`]): every segment without the head, from
/// the state the one before ended in, those states saved in `ws.checkpoints` as checkpointed
/// BPTT's first pass saves them. Returns the last segment's length: the states it ends in
/// are the batch's.
fn forward_to_final_states<T: Float>(
    p: &Pass<'_, '_, T>,
    ws: &mut Workspace<T>,
    segment: usize,
) -> usize {
    let spec = final_state_spec();
    let seg = SegmentOf::new(p.config, p.batch, &spec, segment);
    ws.checkpoints.size_states(&seg);
    let mut kept = std::mem::take(&mut ws.checkpoints);
    let states = (&mut kept.h[..], &mut kept.c[..]);
    forward_segments(
        p,
        ws,
        &seg,
        states,
        &mut kept.lengths,
        SegmentsRun::FinalStates,
    );
    ws.checkpoints = kept;
    seg.span(seg.count() - 1).len()
}

/// The spec of the segments of a pass to the final states, which score nothing and run no
/// head: many-to-one, so that the outputs take the least room, `[B, O]`, as a whole pass
/// sizes its workspace.
fn final_state_spec() -> LossSpec {
    LossSpec::last_step(crate::config::LossKind::Mse)
}

/// What [`forward_segments`] does besides saving the states.
enum SegmentsRun<'o, T> {
    /// Nothing: checkpointed BPTT's first pass, the last segment left for the second.
    States,
    /// Every segment without the head: the last one's final states are the batch's.
    FinalStates,
    /// The loss of the whole batch, its reduction factor given (every segment run, with the
    /// head and loss where scored, and the sum returned).
    Loss(T),
    /// Every step's outputs into the buffer (`[T, B, O]`; every segment run with the head):
    /// the first pass for a loss of the caller's own.
    Outputs(&'o mut [T]),
}

/// Runs the segments of `seg` forward in order, each from the state the one before ended in,
/// saving every layer's state at the start of segments `1..n` into `ck` (`[n, L, B, H]`, hidden
/// and cell states), and doing what `run` says.
fn forward_segments<T: Float>(
    p: &Pass<'_, '_, T>,
    ws: &mut Workspace<T>,
    seg: &SegmentOf<'_, '_, T>,
    (ck_h, ck_c): (&mut [T], &mut [T]),
    lengths: &mut [usize],
    mut run: SegmentsRun<'_, T>,
) -> T {
    let (b, block, block_c) = (p.batch.batch, seg.block, seg.block_c);
    let o = p.config.output_size;
    let n = seg.count();
    let spec = seg.spec;
    let mut total = T::zero();
    let all = !matches!(run, SegmentsRun::States);
    for s in 0..if all { n } else { n - 1 } {
        seg.lengths(s, lengths);
        let sub = seg.batch(s, lengths, ck_h, ck_c);
        let r = seg.span(s);
        let seg_pass = p.over(&sub, r.start);
        seg_pass.size_workspace(ws, spec.many_to_one);
        let head = match run {
            SegmentsRun::States | SegmentsRun::FinalStates => Head::Skip,
            _ if !seg.scored(s) => Head::Skip,
            _ => Head::of(spec.many_to_one),
        };
        forward_chunks(&seg_pass, ws, head);
        match &mut run {
            SegmentsRun::Loss(scale) if seg.scored(s) => {
                total += loss_forward_backward(&seg_pass, ws, spec, *scale);
            }
            SegmentsRun::Outputs(y) if seg.scored(s) => {
                let rows = rows_of(r.clone(), b, o);
                y[rows.clone()].copy_from_slice(&ws.y[..rows.len()]);
            }
            _ => {}
        }
        if s + 1 == n {
            break;
        }
        // The states this segment ended in: where the next one starts.
        let end = sub.seq_len;
        let h_next = &mut ck_h[(s + 1) * block..(s + 2) * block];
        let c_next = match seg.lstm {
            true => &mut ck_c[(s + 1) * block_c..(s + 2) * block_c],
            false => &mut [],
        };
        ws.states_at(p.config, b, end, h_next, c_next);
    }
    total
}

/// The states a segment starts from, for `b` sequences: `L · B · H` hidden (`L · B · P` with
/// projections) and `L · B · H` cell states (0 for a cell without them).
fn state_blocks(config: &RnnConfig, b: usize) -> (usize, usize) {
    let l = config.num_layers;
    let cell = if config.cell.has_cell_state() {
        config.hidden_size
    } else {
        0
    };
    (l * b * config.state_size(), l * b * cell)
}

/// Cuts a batch into segments for [`forward_backward_checkpointed`].
struct SegmentOf<'a, 'b, T> {
    batch: &'a Batch<'b, T>,
    spec: &'a LossSpec,
    segment: usize,
    /// `L · B · H` (`L · B · P` with projections): one segment's saved states.
    block: usize,
    /// `L · B · H`: one segment's saved cell states (LSTM; 0 for other cells).
    block_c: usize,
    lstm: bool,
    /// `(B, I, O)`.
    dims: (usize, usize, usize),
}

impl<'a, 'b, T: Float> SegmentOf<'a, 'b, T> {
    /// `batch` of `config` in segments of `segment` steps.
    fn new(
        config: &RnnConfig,
        batch: &'a Batch<'b, T>,
        spec: &'a LossSpec,
        segment: usize,
    ) -> Self {
        let b = batch.batch;
        let (block, block_c) = state_blocks(config, b);
        Self {
            batch,
            spec,
            segment,
            block,
            block_c,
            lstm: config.cell.has_cell_state(),
            dims: (b, config.input_size, config.output_size),
        }
    }

    /// How many segments there are.
    fn count(&self) -> usize {
        self.batch.seq_len.div_ceil(self.segment)
    }

    /// Whether the loss scores a step of segment `s` (a many-to-one loss: the last segment).
    fn scored(&self, s: usize) -> bool {
        if self.spec.many_to_one {
            s + 1 == self.count()
        } else {
            self.span(s).end > self.batch.score_from
        }
    }

    fn span(&self, s: usize) -> Range<usize> {
        s * self.segment..((s + 1) * self.segment).min(self.batch.seq_len)
    }

    /// Segment `s`'s lengths: each sequence's steps inside it (0 once it has ended).
    fn lengths(&self, s: usize, dst: &mut [usize]) {
        let r = self.span(s);
        if let Some(all) = self.batch.lengths {
            for (d, &n) in dst.iter_mut().zip(all) {
                *d = n.saturating_sub(r.start).min(r.len());
            }
        }
    }

    /// Segment `s` as a batch of its own, starting from its saved state (`ck_h`, `ck_c`).
    fn batch<'c>(
        &'c self,
        s: usize,
        lengths: &'c [usize],
        ck_h: &'c [T],
        ck_c: &'c [T],
    ) -> Batch<'c, T> {
        let (b, i, o) = self.dims;
        let r = self.span(s);
        let len = r.len();
        let target = match self.batch.target {
            Target::Values(v) if self.spec.many_to_one => Target::Values(v),
            Target::Classes(c) if self.spec.many_to_one => Target::Classes(c),
            Target::Values(v) => Target::Values(&v[r.start * b * o..r.end * b * o]),
            Target::Classes(c) => Target::Classes(&c[r.start * b..r.end * b]),
            Target::None => Target::None,
        };
        let (saved, saved_c) = (
            s * self.block..(s + 1) * self.block,
            s * self.block_c..(s + 1) * self.block_c,
        );
        Batch {
            seq_len: len,
            batch: b,
            x: &self.batch.x[r.start * b * i..r.end * b * i],
            // The pass's batch is dense: tokens are embedded before it (`embed`).
            tokens: None,
            target,
            lengths: self.batch.lengths.map(|_| lengths),
            h0: if s == 0 {
                self.batch.h0
            } else {
                Some(&ck_h[saved.clone()])
            },
            c0: if s == 0 {
                self.batch.c0
            } else {
                self.lstm.then(|| &ck_c[saved_c])
            },
            score_from: self.batch.score_from.saturating_sub(r.start).min(len),
            sequence_weights: self.batch.sequence_weights,
        }
    }
}
