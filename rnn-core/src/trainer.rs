//! One object that owns a model, its gradients, workspace and optimizer, and trains it.
//!
//! Memory that is not there is an error, not the end of the process: every pass (training
//! step, evaluation, outputs, final states) makes room for a batch's activations before it
//! computes anything, and refuses a batch whose buffers cannot be allocated with
//! [`RnnError::OutOfMemory`], leaving weights, gradients and optimizer state as they were
//! and giving back the activations' memory it held (a smaller batch, shorter sequences or a
//! [`Memory`] setting that keeps less may fit).

use std::sync::Arc;

use faer::Par;
use kernels::Float;
use kernels::aligned::AlignedVec;

use crate::accumulate::Accumulator;
use crate::batch::Batch;
use crate::config::{LossSpec, Reduction, RnnConfig};
use crate::dropout::Dropout;
use crate::error::{Result, RnnError, out_of_memory};
use crate::io::Extras;
use crate::network::{
    self, Exec, PassOptions, TimeChunks, UnitSplit, forward_backward_checkpointed,
};
use crate::optim::{self, Clip, Optimizer, OptimizerKind, TensorRule};
use crate::params::{Layout, init_params_into};
use crate::schedule::LrSchedule;
use crate::workspace::Workspace;

mod final_states;
mod longest_first;
mod rules;

use longest_first::{Check, PerSequence, Reordered};

/// How much of the forward pass a training step keeps for its backward pass. A
/// bidirectional model keeps everything: its steps run as whole sequences, and a step with a
/// segment shorter than the batch is refused ([`crate::RnnError::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Memory {
    /// Every step's activations: the fastest, memory grows with `T`.
    #[default]
    Full,
    /// Only every layer's state at the start of each `segment`-step stretch; each stretch
    /// is recomputed during backward (one extra forward pass; `segment ≈ √T` minimises memory).
    /// Gradients equal full BPTT's up to summation order.
    Checkpointed {
        /// Steps per stretch.
        segment: usize,
    },
    /// [`Memory::Full`] when the step's activations fit in `bytes`, else checkpointing with
    /// the longest stretch that fits (or the least memory when none does). A bidirectional
    /// model, which cannot run in segments, runs whole sequences whatever the budget.
    ///
    /// The budget counts what a pass sizes by its batch: the activations and their
    /// gradients, the room for products over live rows, `dL/dx`, a loss of one's own's
    /// outputs, a batch with lengths' copy in longest-first order (its inputs, targets,
    /// initial states and weights once more), and in segments the saved states and the
    /// segments' gradient buffer. It does not count what the trainer holds whatever the
    /// batch (parameters, gradients, optimizer state).
    Budget {
        /// Bytes for activations and checkpoints.
        bytes: usize,
    },
}

impl Memory {
    /// The stretch length for a batch of `seq_len` steps (`seq_len` for full BPTT), for a
    /// trainer with the default [`UnitSplit::Auto`] and no dropout.
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, trainer::Memory};
    /// let cfg = RnnConfig::lstm(8, 64, 8);
    /// assert_eq!(Memory::Full.segment_for::<f32>(&cfg, 1000, 4, false), 1000);
    /// // 1 MiB cannot hold 1000 steps of activations (~4 MiB): checkpoint instead.
    /// let s = Memory::Budget { bytes: 1 << 20 }.segment_for::<f32>(&cfg, 1000, 4, false);
    /// assert!(s < 1000 && s > 1);
    /// ```
    pub fn segment_for<T: Float>(
        self,
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
    ) -> usize {
        let params = match self {
            Memory::Budget { .. } => Layout::new(config).len,
            _ => 0,
        };
        let split = UnitSplit::Auto;
        let kept = Kept::default();
        self.segment_with::<T>(config, seq_len, batch, many_to_one, split, kept, params)
    }

    /// [`Memory::segment_for`] for a model of `params` parameters, known to the caller (a
    /// trainer asks every step, and building the model's [`Layout`] allocates), with steps
    /// split as `split` decides and room for what the pass keeps besides (`kept`).
    fn segment_with<T: Float>(
        self,
        config: &RnnConfig,
        seq_len: usize,
        batch: usize,
        many_to_one: bool,
        split: UnitSplit,
        kept: Kept,
        params: usize,
    ) -> usize {
        match self {
            Memory::Full => seq_len,
            Memory::Checkpointed { segment } => segment.max(1),
            Memory::Budget { .. } if config.bidirectional => seq_len,
            Memory::Budget { bytes } => {
                let cost =
                    budget_cost::<T>(config, seq_len, batch, many_to_one, split, kept, params);
                longest_within(seq_len, bytes, cost)
            }
        }
    }
}

/// The bytes a pass over `seq_len` steps holds in segments of `s` steps ([`Memory::Budget`]):
/// a workspace for `s` steps, and below `seq_len` checkpoints of the state at each segment's
/// start (with the parameters' snapshot and what `kept` adds).
fn budget_cost<T: Float>(
    config: &RnnConfig,
    seq_len: usize,
    batch: usize,
    many_to_one: bool,
    split: UnitSplit,
    kept: Kept,
    params: usize,
) -> impl Fn(usize) -> usize {
    let cell_state = if config.cell.has_cell_state() {
        config.hidden_size
    } else {
        0
    };
    let state = config.num_layers * batch * (config.state_size() + cell_state) * T::BYTES;
    let params = params * T::BYTES;
    let dropout = kept.dropout;
    let rows = seq_len * batch;
    // `dL/dx` of every step, whole or in segments.
    let dx = if kept.input_grad {
        rows * config.input_size * T::BYTES
    } else {
        0
    };
    // A loss of one's own at every step reads all outputs at once: segments keep
    // them and their gradients (a whole pass has them in its workspace).
    let outputs = if kept.own_loss && !many_to_one {
        2 * rows * config.output_size * T::BYTES
    } else {
        0
    };
    let config = *config;
    move |s: usize| {
        let mut ws = Workspace::<T>::bytes_for(&config, s, batch, many_to_one, split, dropout);
        if kept.ragged {
            let room = Workspace::<T>::gather_room(&config, s, batch);
            let head = Workspace::<T>::head_gather_room(&config, s, batch, many_to_one);
            ws += (config.passes() * room + head) * T::BYTES;
        }
        let ws = ws + kept.copy;
        if s >= seq_len {
            ws + dx
        } else {
            ws + dx + outputs + seq_len.div_ceil(s) * state + params
        }
    }
}

/// The longest segment `s` in `1..=seq_len` whose `cost(s)` is at most `bytes`, else the
/// cheapest (the shortest of equal costs): what a scan of every `s` from `seq_len` down finds,
/// for a cost that grows with `s` but for a term that depends on `s` only through the
/// segment count `⌈seq_len / s⌉` (a workspace for `s` steps, and checkpoints of the state
/// at each segment's start). Within a run of `s` of one segment count the cost then grows
/// with `s`, so each run is searched by halving: `O(√T log T)` costs, not `T` (an LSTM of
/// H = 64 at `T = 10⁶` under a 1 MiB budget: 0.04 ms a step, against 30 ms for the scan).
fn longest_within(seq_len: usize, bytes: usize, cost: impl Fn(usize) -> usize) -> usize {
    let mut cheapest = (cost(seq_len), seq_len);
    if cheapest.0 <= bytes {
        return seq_len;
    }
    // Runs of one segment count, from the longest segments down: `hi` the run's longest
    // segment, `lo` its shortest (`⌈T / k⌉` for `k = ⌈T / hi⌉` segments).
    let mut hi = seq_len - 1;
    while hi >= 1 {
        let lo = seq_len.div_ceil(seq_len.div_ceil(hi));
        let shortest = cost(lo);
        if shortest <= bytes {
            // The longest `s` in `lo..=hi` that fits: cost(lo) fits, and cost grows with s.
            let (mut fits, mut over) = (lo, hi + 1);
            while over - fits > 1 {
                let mid = fits + (over - fits) / 2;
                if cost(mid) <= bytes {
                    fits = mid;
                } else {
                    over = mid;
                }
            }
            return fits;
        }
        // The run's cheapest is its shortest, and of equal costs the shortest wins.
        if shortest <= cheapest.0 {
            cheapest = (shortest, lo);
        }
        hi = lo - 1;
    }
    cheapest.1
}

/// What a pass keeps besides its workspace and checkpoints, for [`Memory::Budget`].
#[derive(Clone, Copy, Debug, Default)]
struct Kept {
    /// Dropout's buffers.
    dropout: bool,
    /// `dL/dx` (`[T, B, I]`, [`Trainer::with_input_grads`]).
    input_grad: bool,
    /// A loss of the caller's own, which reads every output at once ([`Trainer::step_with`]).
    own_loss: bool,
    /// The room of products over live rows only (a batch with lengths).
    ragged: bool,
    /// The bytes of the batch's copy in longest-first order (a batch with lengths):
    /// [`longest_first::copy_bytes`].
    copy: usize,
    /// A pass to the final states ([`Trainer::final_states`]), which runs no head: its
    /// workspace holds the outputs of one step whatever the loss.
    final_states: bool,
}

/// Restores the calling thread's flush-to-zero mode when dropped.
struct FlushScope(bool);

impl Drop for FlushScope {
    fn drop(&mut self) {
        kernels::arch::set_flush_denormals(self.0);
    }
}

/// What one training step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport<T> {
    /// The loss before the update.
    pub loss: T,
    /// The global gradient norm before clipping.
    pub grad_norm: T,
    /// The factor clipping applied (1 when it did nothing).
    pub clip_scale: T,
    /// The learning rate of the update.
    pub lr: T,
}

/// A model with everything needed to train it.
///
/// ```
/// use rnn_core::prelude::*;
/// let cfg = RnnConfig::new(2, 8, 1);
/// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0).unwrap();
/// let (x, y) = (vec![0.5f32; 4 * 3 * 2], vec![0.25f32; 4 * 3]);
/// let batch = Batch::new(4, 3, &x, Target::Values(&y));
/// let first = tr.step(&batch).unwrap().loss;
/// for _ in 0..20 { tr.step(&batch).unwrap(); }
/// assert!(tr.step(&batch).unwrap().loss < first);
/// ```
#[derive(Clone, Debug)]
pub struct Trainer<T: Float> {
    /// The architecture.
    pub config: RnnConfig,
    /// The parameter layout.
    pub layout: Layout,
    /// Parameters, flat, starting on a cache line ([`AlignedVec`]).
    pub params: AlignedVec<T>,
    /// Gradients of the last step, flat, starting on a cache line.
    pub grads: AlignedVec<T>,
    /// Activations and temporaries.
    pub workspace: Workspace<T>,
    /// The loss.
    pub loss: LossSpec,
    /// The optimizer and its state.
    pub optimizer: Optimizer<T>,
    /// Gradient clipping.
    pub clip: Clip<T>,
    /// Threads of a step: the big GEMMs and the per-step unit blocks.
    pub par: Par,
    /// How each step's hidden units are split between per-step workers.
    pub split: UnitSplit,
    /// How many steps a pass runs at a time.
    pub chunks: TimeChunks,
    /// Record gradient-flow telemetry in every step (see [`Trainer::grad_h_norms`]).
    pub telemetry: bool,
    /// Compute the gradients of the batch's inputs in every training pass
    /// ([`Trainer::with_input_grads`]).
    pub input_grad: bool,
    /// Full or checkpointed BPTT.
    pub memory: Memory,
    /// Dropout between stacked layers ([`Trainer::with_dropout`]).
    pub dropout: Option<Dropout>,
    /// Flush subnormal floats to zero during steps ([`Trainer::with_flush_denormals`]).
    pub flush_denormals: bool,
    /// A learning-rate schedule and the base rate it scales ([`Trainer::with_lr_schedule`]).
    pub lr_schedule: Option<(LrSchedule, f64)>,
    /// The thread pool steps run in ([`Trainer::with_thread_pool`]); `None`: rayon's global
    /// pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Micro-batches waiting for their update ([`Trainer::accumulate`]).
    pub accumulated: Accumulator<T>,
    /// How single tensors update unlike the rest ([`Trainer::freeze`],
    /// [`Trainer::set_lr_scale`], [`Trainer::set_weight_decay`]): sorted, none that changes
    /// nothing.
    rules: Vec<TensorRule>,
    /// A batch copied longest first for a training pass ([`longest_first`]).
    reordered: Reordered<T>,
}

/// The cores this process may use (1 if unknown).
fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs `f` in `pool` when given, else here (rayon's global pool then serves its joins).
fn in_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// faer's parallelism for `threads` threads.
fn par_for(threads: usize) -> Par {
    if threads <= 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    }
}

impl<T: Float> Trainer<T> {
    /// A trainer with PyTorch-style initial weights from `seed`.
    ///
    /// # Errors
    /// [`RnnError::Empty`] if a size in `config` is zero, [`RnnConfig::validate`]'s other
    /// errors; [`LossSpec::validate`]'s errors; [`RnnError::OutOfMemory`] when the
    /// parameters, their gradients or the optimizer's state do not fit in memory.
    pub fn new(
        config: RnnConfig,
        loss: LossSpec,
        optimizer: OptimizerKind<T>,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let layout = Layout::new(&config);
        let mut params =
            AlignedVec::try_zeros(layout.len).map_err(out_of_memory("the parameters"))?;
        init_params_into(&config, seed, &mut params);
        Self::with_aligned_params(config, layout, loss, optimizer, params)
    }

    /// A trainer starting from given parameters (layout of [`Layout::new`]).
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] if `params` has the wrong length,
    /// [`RnnError::NonFiniteInput`] if it holds a NaN or infinity; [`LossSpec::validate`]'s
    /// errors; [`RnnError::OutOfMemory`] as [`Trainer::new`].
    pub fn with_params(
        config: RnnConfig,
        loss: LossSpec,
        optimizer: OptimizerKind<T>,
        params: Vec<T>,
    ) -> Result<Self> {
        let layout = Layout::of_params(&config, &params)?;
        let mut aligned =
            AlignedVec::try_zeros(params.len()).map_err(out_of_memory("the parameters"))?;
        aligned.copy_from_slice(&params);
        drop(params);
        Self::with_aligned_params(config, layout, loss, optimizer, aligned)
    }

    /// [`Trainer::with_params`] for valid parameters of `layout`, already on a cache line.
    /// The gradients and optimizer state are allocated here, a failure reported as
    /// [`RnnError::OutOfMemory`].
    fn with_aligned_params(
        config: RnnConfig,
        layout: Layout,
        loss: LossSpec,
        optimizer: OptimizerKind<T>,
        params: AlignedVec<T>,
    ) -> Result<Self> {
        loss.validate(&config)?;
        let n = layout.len;
        Ok(Self {
            config,
            layout,
            params,
            grads: AlignedVec::try_zeros(n).map_err(out_of_memory("the gradients"))?,
            workspace: Workspace::new(),
            loss,
            optimizer: Optimizer::try_new(optimizer, n)?,
            clip: Clip::None,
            par: par_for(available_threads()),
            split: UnitSplit::Auto,
            chunks: TimeChunks::Auto,
            telemetry: false,
            input_grad: false,
            memory: Memory::Full,
            dropout: None,
            flush_denormals: false,
            lr_schedule: None,
            pool: None,
            accumulated: Accumulator::default(),
            rules: Vec::new(),
            reordered: Reordered::default(),
        })
    }

    /// Sets gradient clipping.
    pub fn with_clip(mut self, clip: Clip<T>) -> Self {
        self.clip = clip;
        self
    }

    /// Sets the number of threads a step may use (1: sequential; default: the available
    /// cores). Results are bitwise identical for any count. A step whose shape gives a
    /// second thread too little work runs on one by itself ([`Trainer::threads_for`]), so a
    /// batch-1 or tiny model runs exactly as on one thread.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.par = par_for(threads);
        self
    }

    /// Runs every step in `pool` with as many threads as it has, instead of rayon's global
    /// pool (for a program that keeps its own pools, or pins training to some cores).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rnn_core::prelude::*;
    /// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
    /// let trainer = Trainer::<f32>::new(
    ///     RnnConfig::new(4, 8, 2),
    ///     LossSpec::every_step(LossKind::Mse),
    ///     OptimizerKind::sgd(0.1),
    ///     0,
    /// )
    /// .unwrap()
    /// .with_thread_pool(pool);
    /// assert_eq!(trainer.threads(), 2);
    /// ```
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.par = par_for(pool.current_num_threads());
        self.pool = Some(pool);
        self
    }

    /// The number of threads a step may use.
    pub fn threads(&self) -> usize {
        self.par.degree()
    }

    /// The pool given by [`Trainer::with_thread_pool`], if any.
    pub(crate) fn thread_pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        self.pool.clone()
    }

    /// The number of threads a step of `batch` sequences of `seq_len` steps will use:
    /// [`Trainer::threads`] when the shape gives a second thread enough work (its steps are
    /// split between two workers, or at least 40 % of its flops are in products big enough
    /// to split), otherwise 1, and the step then runs exactly the one-thread code.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let trainer = |h, threads| {
    ///     let loss = LossSpec::every_step(LossKind::Mse);
    ///     Trainer::<f32>::new(RnnConfig::lstm(16, h, 16), loss, OptimizerKind::sgd(0.1), 0)
    ///         .unwrap()
    ///         .with_threads(threads)
    /// };
    /// assert_eq!(trainer(64, 2).threads_for(100, 1), 1); // batch 1, H = 64: too small
    /// assert_eq!(trainer(512, 2).threads_for(100, 32), 2);
    /// assert_eq!(trainer(512, 1).threads_for(100, 32), 1);
    /// ```
    pub fn threads_for(&self, seq_len: usize, batch: usize) -> usize {
        let worth_it = self.par != Par::Seq
            && crate::layer::pass_uses_threads(&self.config, seq_len, batch, self.split);
        if worth_it { self.threads() } else { 1 }
    }

    /// Sets how each step's hidden units are split between per-step workers
    /// ([`UnitSplit`]; default `Auto`). Results depend on the split, never on the thread
    /// count: pin it to reproduce a run bitwise on machines where `Auto` could choose
    /// differently.
    pub fn with_unit_split(mut self, split: UnitSplit) -> Self {
        self.split = split;
        self
    }

    /// Sets how many steps a pass runs at a time ([`TimeChunks`]; default `Auto`). Results
    /// depend on it within rounding (the weight gradients are summed chunk by chunk), never
    /// on the thread count.
    pub fn with_time_chunks(mut self, chunks: TimeChunks) -> Self {
        self.chunks = chunks;
        self
    }

    /// Flushes subnormal floats to zero during each step (`kernels::arch::set_flush_denormals`):
    /// on the calling thread for the step's duration (its previous mode is restored), and on
    /// the rayon threads the step uses (left on). Subnormals can slow arithmetic on some CPUs
    /// when saturated gates or decaying gradients produce them; results change only below
    /// ~1.2e-38 (f32).
    pub fn with_flush_denormals(mut self) -> Self {
        self.flush_denormals = true;
        self
    }

    /// Drops the outputs of every layer but the top during training steps, as PyTorch's
    /// `dropout` argument does ([`Dropout`]; no effect on a one-layer model). Each step
    /// draws new masks from the dropout's seed and the optimizer's step count, so a resumed
    /// run continues bitwise, and the thread count changes nothing.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::lstm(3, 16, 3).layers(2);
    /// let loss = LossSpec::every_step(LossKind::Mse);
    /// let trainer = Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-3), 0)?
    ///     .with_dropout(Dropout::new(0.2, 1)?);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn with_dropout(mut self, dropout: Dropout) -> Self {
        self.dropout = Some(dropout);
        self
    }

    /// Sets the learning rate of every update by `schedule`, from the optimizer's rate now
    /// as the base rate (PyTorch's `lr_scheduler` stepped after each `optimizer.step()`).
    /// The rate of an update depends only on the updates before it (the optimizer's
    /// `steps`, which checkpoints keep), so a run resumed from a checkpoint, with a trainer
    /// built the same way, continues the schedule exactly. A rejected step changes nothing,
    /// the count included. The schedule sets the rate before each update: a rate set by hand
    /// ([`crate::optim::OptimizerKind::set_lr`]) lasts only until the next. A schedule that
    /// moves the momentum too ([`crate::schedule::OneCycle`]) sets it the same way
    /// ([`crate::optim::OptimizerKind::set_momentum`]); with an optimizer that has none
    /// (Adagrad) the step is refused with [`RnnError::Config`] before anything changes.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// use rnn_core::schedule::{Decay, LrSchedule};
    /// let cfg = RnnConfig::new(2, 8, 1);
    /// let loss = LossSpec::every_step(LossKind::Mse);
    /// let mut tr = Trainer::<f64>::new(cfg, loss, OptimizerKind::sgd(0.1), 0)?
    ///     .with_lr_schedule(LrSchedule::new(Decay::step(2, 0.5)?));
    /// let (x, y) = (vec![0.5; 4 * 3 * 2], vec![0.25; 4 * 3]);
    /// let batch = Batch::new(4, 3, &x, Target::Values(&y));
    /// let rates: Vec<f64> = (0..5).map(|_| tr.step(&batch).map(|r| r.lr)).collect::<Result<_>>()?;
    /// assert_eq!(rates, [0.1, 0.1, 0.05, 0.05, 0.025]);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn with_lr_schedule(mut self, schedule: LrSchedule) -> Self {
        self.lr_schedule = Some((schedule, self.optimizer.kind.lr().f64()));
        self
    }

    /// The base learning rate: the one a schedule ([`Trainer::with_lr_schedule`]) scales,
    /// or without one the optimizer's rate.
    pub fn base_lr(&self) -> f64 {
        match self.lr_schedule {
            Some((_, base)) => base,
            None => self.optimizer.kind.lr().f64(),
        }
    }

    /// Sets the base learning rate from the next update on: a schedule goes on from it (a
    /// warm-up climbs to it), or without one the optimizer runs at it. For rates that
    /// follow a validation metric ([`crate::schedule::Plateau`]), or set by hand.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// use rnn_core::schedule::Plateau;
    /// let loss = LossSpec::every_step(LossKind::Mse);
    /// let mut tr = Trainer::<f32>::new(RnnConfig::new(2, 8, 1), loss, OptimizerKind::adam(1e-2), 0)?;
    /// let mut plateau = Plateau::new(tr.base_lr(), 0.5, 0)?;
    /// for val_loss in [0.9, 0.8, 0.85] {
    ///     // ... an epoch of tr.step(..), then the validation loss ...
    ///     tr.set_base_lr(plateau.observe(val_loss)?);
    /// }
    /// assert!((tr.base_lr() - 5e-3).abs() < 1e-9);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn set_base_lr(&mut self, lr: f64) {
        match &mut self.lr_schedule {
            Some((_, base)) => *base = lr,
            None => self.optimizer.kind.set_lr(T::of(lr)),
        }
    }

    /// Sets how much a step keeps for backward ([`Memory`]).
    pub fn with_memory(mut self, memory: Memory) -> Self {
        self.memory = memory;
        self
    }

    /// Turns on gradient-flow telemetry: every step records `‖dL/dh_t‖` per layer and step.
    pub fn with_telemetry(mut self) -> Self {
        self.telemetry = true;
        self
    }

    /// `[L·D, T]`: the norm of `dL/dh_t` for every layer (and direction) and step of the last
    /// step's batch (the gradient reaching each hidden state: vanishing or exploding
    /// gradients show as a decay or growth towards `t = 0`); empty without telemetry. A
    /// reverse direction's row is in its own step order, from each sequence's last step. The pre-clip global norm is
    /// in [`StepReport::grad_norm`].
    pub fn grad_h_norms(&self) -> &[T] {
        if self.telemetry {
            &self.workspace.grad_h_norms
        } else {
            &[]
        }
    }

    /// Also computes, in every training pass, the gradients of the loss with respect to the
    /// batch's inputs and given initial states ([`Trainer::input_grads`],
    /// [`Trainer::initial_state_grads`]; PyTorch's `x.requires_grad_(True)` and `x.grad`):
    /// to train layers of your own that feed the model (their backward starts from
    /// `dL/dx`), or an encoder whose final state is the batch's `h0`, or to see which steps
    /// of a sequence a prediction rests on (saliency). Costs one product as big as the
    /// input projection and a `[T, B, I]` buffer, and a frozen bottom of the stack then runs
    /// its backward pass (its gradient is wanted below it).
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let spec = LossSpec::last_step(LossKind::Mse);
    /// let mut tr = Trainer::<f64>::new(RnnConfig::gru(2, 8, 1), spec, OptimizerKind::sgd(0.1), 0)?
    ///     .with_input_grads();
    /// let (x, y) = (vec![0.5; 4 * 3 * 2], vec![1.0; 3]); // T = 4, B = 3, I = 2
    /// let lengths = [4, 2, 3];
    /// let batch = Batch { lengths: Some(&lengths), ..Batch::new(4, 3, &x, Target::Values(&y)) };
    /// tr.loss_and_grads(&batch)?;
    /// let dx = tr.input_grads(); // [T, B, I]
    /// assert_eq!(dx.len(), 4 * 3 * 2);
    /// assert!(dx[..2].iter().all(|&g| g != 0.0));
    /// assert_eq!(dx[(3 * 3 + 1) * 2..][..2], [0.0, 0.0]); // step 3 of a 2-step sequence
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn with_input_grads(mut self) -> Self {
        self.input_grad = true;
        self
    }

    /// `[T, B, I]`: `dL/dx` of the last training pass's batch ([`Trainer::step`],
    /// [`Trainer::loss_and_grads`], [`Trainer::step_with`], and the last micro-batch of
    /// [`Trainer::accumulate`]), zero at steps past a sequence's length; for a batch of
    /// tokens, the gradient of their embedded rows. Empty without
    /// [`Trainer::with_input_grads`]. The loss is the one the pass computed (a mean over the
    /// scored positions, unless [`crate::config::Reduction::Sum`]), before clipping.
    pub fn input_grads(&self) -> &[T] {
        if self.input_grad {
            &self.workspace.dx
        } else {
            &[]
        }
    }

    /// `dL/dh0` (`[L·D, B, H]`, `P` wide with projections) and `dL/dc0` (`[L·D, B, H]`,
    /// LSTM; empty otherwise) of the last training pass's batch, whether its initial state
    /// was given ([`crate::batch::Batch::h0`]), zero or learned (then summed over the batch,
    /// they are the learned state's gradient). Empty without [`Trainer::with_input_grads`].
    pub fn initial_state_grads(&self) -> (&[T], &[T]) {
        if self.input_grad {
            (&self.workspace.dh0, &self.workspace.dc0)
        } else {
            (&[], &[])
        }
    }

    /// Forward, backward, clipping and one optimizer update.
    ///
    /// # Errors
    /// Validation errors of the batch; [`RnnError::NonFinite`] if the loss or the gradient
    /// is NaN or infinite — then parameters and optimizer state are exactly as before;
    /// [`RnnError::Accumulation`] while micro-batches wait for
    /// [`Trainer::apply_accumulated`].
    pub fn step(&mut self, batch: &Batch<T>) -> Result<StepReport<T>> {
        self.check_nothing_waits()?;
        let _flush = self.flush_scope();
        let loss = self.loss_and_grads(batch)?;
        self.update_with(loss)
    }

    /// Turns flush-to-zero on for a step when asked, and back to the caller's mode after.
    fn flush_scope(&self) -> Option<FlushScope> {
        if !self.flush_denormals {
            return None;
        }
        if self.par != Par::Seq {
            let flush = |_: rayon::BroadcastContext<'_>| kernels::arch::set_flush_denormals(true);
            match &self.pool {
                Some(pool) => pool.broadcast(flush),
                None => rayon::broadcast(flush),
            };
        }
        Some(FlushScope(kernels::arch::set_flush_denormals(true)))
    }

    /// Clips the gradients in [`Trainer::grads`] and applies one optimizer update; `loss` is
    /// the loss they came from. [`Trainer::step`] is [`Trainer::loss_and_grads`] then this; call
    /// them apart to look at or change the gradients in between. The gradients of frozen
    /// tensors ([`Trainer::freeze`]) are zeroed first.
    ///
    /// # Errors
    /// [`RnnError::NonFinite`] naming the loss, the first non-finite gradient (tensor and
    /// index) or an overflowing norm, with the step number; nothing is changed then.
    ///
    /// [`RnnError::Accumulation`] while micro-batches wait for
    /// [`Trainer::apply_accumulated`]: an update of one batch's gradients would leave them
    /// behind.
    pub fn update(&mut self, loss: T) -> Result<StepReport<T>> {
        self.check_nothing_waits()?;
        self.update_with(loss)
    }

    /// [`RnnError::Accumulation`] while micro-batches wait for their update.
    fn check_nothing_waits(&self) -> Result<()> {
        match self.accumulated.micro_batches() {
            0 => Ok(()),
            waiting => Err(RnnError::Accumulation(format!(
                "{waiting} accumulated micro-batches wait for apply_accumulated(): a plain \
                 update would leave them behind"
            ))),
        }
    }

    /// [`Trainer::update`] without the accumulation check.
    fn update_with(&mut self, loss: T) -> Result<StepReport<T>> {
        let step = self.optimizer.steps;
        if !loss.is_finite() {
            return Err(RnnError::NonFinite {
                what: format!("loss ({})", loss.f64()),
                step,
            });
        }
        // Past `optim::SPLIT_MIN_PARAMS` the norm, the clamp and the update run in halves, on
        // two threads when the trainer has them (the same bits either way), inside one visit
        // to the trainer's pool. Smaller models stay on this thread: a visit costs about
        // 10 us, as much as all of a 33 k-parameter Adam update.
        let two_threads = self.par != Par::Seq && self.params.len() >= optim::SPLIT_MIN_PARAMS;
        let pool = self.pool.clone().filter(|_| two_threads);
        in_pool(pool.as_deref(), || self.clip_and_update(loss, two_threads))
    }

    /// [`Trainer::update`] after the loss's check, run where its joins should go.
    fn clip_and_update(&mut self, loss: T, two_threads: bool) -> Result<StepReport<T>> {
        let step = self.optimizer.steps;
        // A frozen tensor has no gradient in PyTorch: none to check, count or clip (zeroed
        // again here: the caller may have written to the gradients since).
        self.zero_frozen_grads();
        let grad_norm = optim::grad_sum_squares(&self.grads, two_threads).sqrt();
        if !grad_norm.is_finite() {
            let what = match self.grads.iter().position(|g| !g.is_finite()) {
                Some(i) => {
                    let t = self
                        .layout
                        .tensors
                        .iter()
                        .find(|t| t.range.contains(&i))
                        .expect("every index is in a tensor");
                    format!(
                        "gradient of {}[{}] ({})",
                        t.name,
                        i - t.range.start,
                        self.grads[i].f64()
                    )
                }
                None => "gradient norm (its square overflows)".to_string(),
            };
            return Err(RnnError::NonFinite { what, step });
        }
        let unscheduled = self.optimizer.kind;
        if let Some((schedule, base)) = self.lr_schedule {
            let n = self.optimizer.steps;
            if let Some(momentum) = schedule.momentum(n) {
                self.optimizer.kind.set_momentum(T::of(momentum))?;
            }
            self.optimizer.kind.set_lr(T::of(schedule.rate(base, n)));
        }
        // The state a change of optimizer family (or momentum a schedule turned on) needs,
        // made before anything changes.
        if let Err(no_memory) = self.optimizer.try_prepare_state(self.params.len()) {
            self.optimizer.kind = unscheduled;
            return Err(no_memory);
        }
        let clip_scale = self.clip.apply_on(&mut self.grads, grad_norm, two_threads);
        self.optimizer.update_with_rules(
            &mut self.params,
            &self.grads,
            clip_scale,
            &self.rules,
            two_threads,
        );
        Ok(StepReport {
            loss,
            grad_norm,
            clip_scale,
            lr: self.optimizer.kind.lr(),
        })
    }

    /// The head's outputs for `batch` as the model stands (inference: no dropout, no loss,
    /// parameters and gradients untouched): `[T, B, O]`, every step's, or `[B, O]` from each
    /// sequence's final state when the trainer's loss is many-to-one. The batch's target is
    /// not read ([`Target::None`](crate::batch::Target::None) will do). A finished sequence's outputs past its
    /// length are `b_y` (PyTorch pads its states with zeros). Every model runs here,
    /// bidirectional ones included, which [`crate::predict::Predictor`] cannot run.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::gru(2, 8, 3).bidirectional();
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::last_step(LossKind::CrossEntropy), OptimizerKind::adam(1e-2), 0)?;
    /// let x = vec![0.5f32; 4 * 2 * 2]; // T = 4, B = 2
    /// let logits = tr.outputs(&Batch::new(4, 2, &x, Target::None))?;
    /// assert_eq!(logits.len(), 2 * 3); // [B, O]
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// The batch's input errors ([`Batch::validate_inputs`]).
    pub fn outputs(&mut self, batch: &Batch<T>) -> Result<&[T]> {
        let _flush = self.flush_scope();
        let many_to_one = self.loss.many_to_one;
        let gives = PerSequence::Outputs { many_to_one };
        self.longest_first(batch, Check::Inputs, gives, |tr, batch| {
            tr.in_step_threads(batch, |tr, par| {
                let exec = tr.exec(par);
                let (config, layout, ws) = (&tr.config, &tr.layout, &mut tr.workspace);
                network::forward(config, layout, &tr.params, ws, batch, many_to_one, exec)
            })
        })?;
        let rows = if many_to_one { 1 } else { batch.seq_len } * batch.batch;
        Ok(&self.workspace.y[..rows * self.config.output_size])
    }

    /// The loss of `batch` as the model stands, without gradients or dropout: for a
    /// validation set or a score between steps. Parameters, gradients and optimizer state are
    /// untouched; the step's threads and [`Memory`] setting are used as in [`Trainer::step`]
    /// (a checkpointing trainer evaluates in its segments, holding one segment's
    /// activations). Equals the loss [`Trainer::loss_and_grads`] reports for the same batch
    /// without dropout (bitwise when the step keeps every activation, [`Memory::Full`]; within
    /// rounding otherwise).
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::lstm(2, 8, 1).layers(2);
    /// let loss = LossSpec::every_step(LossKind::Mse);
    /// let mut tr = Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-2), 0)?
    ///     .with_dropout(Dropout::new(0.5, 1)?);
    /// let (x, y) = (vec![0.5f32; 4 * 3 * 2], vec![0.25f32; 4 * 3]);
    /// let batch = Batch::new(4, 3, &x, Target::Values(&y));
    /// let before = tr.evaluate(&batch)?;
    /// for _ in 0..30 { tr.step(&batch)?; }
    /// assert!(tr.evaluate(&batch)? < before);
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// Validation errors of the batch.
    pub fn evaluate(&mut self, batch: &Batch<T>) -> Result<T> {
        let _flush = self.flush_scope();
        self.longest_first(
            batch,
            Check::TrainerLoss,
            PerSequence::Nothing,
            |tr, batch| {
                let segment = tr.segment_for(batch, Kept::default());
                tr.in_step_threads(batch, |tr, par| {
                    let exec = tr.exec(par);
                    let (config, layout, ws) = (&tr.config, &tr.layout, &mut tr.workspace);
                    network::loss(
                        config, layout, &tr.params, ws, batch, &tr.loss, exec, segment,
                    )
                })
            },
        )
    }

    /// Each sequence's own loss as the model stands, without gradients or dropout
    /// (PyTorch's `reduction='none'`, added up per sequence): for scoring sequences one by
    /// one, such as an anomaly score per time series or a perplexity per document.
    /// Element `b` is what [`Trainer::evaluate`] returns for a batch holding sequence `b`
    /// alone (within rounding): under `sum` the loss of its scored positions, so the
    /// elements add up to the batch's loss; under `mean` that over its own scored positions
    /// (times `O` for float targets, or their class weights), and 0 for a sequence that
    /// scores nothing. With [`Batch::sequence_weights`], a sequence's weight multiplies its
    /// `sum` and cancels from its `mean`. Parameters, gradients and optimizer state are
    /// untouched. Runs whole
    /// sequences, as [`Trainer::outputs`] does, whatever the [`Memory`] setting.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let loss = LossSpec { reduction: Reduction::Sum, ..LossSpec::every_step(LossKind::Mse) };
    /// let mut tr = Trainer::<f64>::new(RnnConfig::gru(1, 8, 1), loss, OptimizerKind::adam(2e-2), 0)?;
    /// // Next-value prediction of a sine (time-major `[T, B, 1]`, two copies per batch).
    /// let wave = |t: usize| (0.6 * t as f64).sin();
    /// let x: Vec<f64> = (0..12).flat_map(|t| [wave(t), wave(t)]).collect();
    /// let y: Vec<f64> = (0..12).flat_map(|t| [wave(t + 1), wave(t + 1)]).collect();
    /// for _ in 0..150 { tr.step(&Batch::new(12, 2, &x, Target::Values(&y)))?; }
    /// // Score the sine against a series that jumps to 3.
    /// let odd: Vec<f64> = (0..12).flat_map(|t| [wave(t + 1), if t < 6 { wave(t + 1) } else { 3.0 }]).collect();
    /// let batch = Batch::new(12, 2, &x, Target::Values(&odd));
    /// let total = tr.evaluate(&batch)?;
    /// let each = tr.sequence_losses(&batch)?.to_vec();
    /// assert!((each[0] + each[1] - total).abs() < 1e-9);
    /// assert!(each[1] > 10.0 * each[0]);
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// Validation errors of the batch.
    pub fn sequence_losses(&mut self, batch: &Batch<T>) -> Result<&[T]> {
        let _flush = self.flush_scope();
        let gives = PerSequence::SequenceLosses;
        self.longest_first(batch, Check::TrainerLoss, gives, |tr, batch| {
            tr.in_step_threads(batch, |tr, par| {
                let exec = tr.exec(par);
                let (config, layout, ws) = (&tr.config, &tr.layout, &mut tr.workspace);
                network::sequence_losses(config, layout, &tr.params, ws, batch, &tr.loss, exec)
            })
        })?;
        Ok(&self.workspace.sequence_losses)
    }

    /// The share of `batch`'s scored positions whose likeliest class is their label, as the
    /// model stands (no dropout; nothing changes): the accuracy of a classifier, every step's
    /// or each sequence's last (many-to-one). Positions past a sequence's length or labelled
    /// [`crate::batch::IGNORED_LABEL`] do not count; with
    /// [`Batch::sequence_weights`] a position counts its sequence's weight. Of equally
    /// likely classes the first is the prediction.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let loss = LossSpec::last_step(LossKind::CrossEntropy);
    /// let mut tr = Trainer::<f32>::new(RnnConfig::gru(1, 8, 2), loss, OptimizerKind::adam(2e-2), 0)?;
    /// // Is the sum of a sequence of 5 values positive? (Time-major [T, B, 1].)
    /// let x: Vec<f32> = (0..5 * 8).map(|k| ((k * 7 % 11) as f32 - 5.0) / 5.0).collect();
    /// let labels: Vec<usize> = (0..8)
    ///     .map(|b| usize::from((0..5).map(|t| x[t * 8 + b]).sum::<f32>() > 0.0))
    ///     .collect();
    /// let batch = Batch::new(5, 8, &x, Target::Classes(&labels));
    /// for _ in 0..200 { tr.step(&batch)?; }
    /// assert_eq!(tr.accuracy(&batch)?, 1.0);
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] when the loss takes float targets or no position is scored
    /// (with a weight above 0); validation errors of the batch.
    pub fn accuracy(&mut self, batch: &Batch<T>) -> Result<f64> {
        if self.loss.kind.takes_values() {
            return Err(RnnError::Config(format!(
                "accuracy needs class labels: the loss is {}",
                self.loss.kind.name()
            )));
        }
        batch.validate(&self.config, &self.loss)?;
        self.outputs(batch)?;
        let o = self.config.output_size;
        let y = &self.workspace.y[..];
        network::accuracy(batch, &self.loss, y, o).ok_or_else(|| {
            RnnError::Config("accuracy over no scored position (or none of weight above 0)".into())
        })
    }

    /// The loss and gradients of `batch` without updating (gradients land in `self.grads`).
    ///
    /// # Errors
    /// Validation errors of the batch.
    pub fn loss_and_grads(&mut self, batch: &Batch<T>) -> Result<T> {
        let _flush = self.flush_scope();
        let spec = self.loss.clone();
        self.grads_of(batch, &spec, 0)
    }

    /// Adds the gradients of `batch` to those waiting for the next update, without updating:
    /// gradient accumulation, for a batch too big to run at once, fed here as micro-batches
    /// (of any shapes) before one [`Trainer::apply_accumulated`]. That update is the one
    /// [`Trainer::step`] would make on a single batch holding all the micro-batches'
    /// sequences (equal within rounding): a `mean` divides by the scored positions of all of
    /// them, not micro-batch by micro-batch (see [`crate::accumulate`]). Returns this
    /// micro-batch's own loss under the trainer's reduction (0 for a `mean` over a
    /// micro-batch that scores nothing, which an accumulation allows).
    ///
    /// Dropout draws fresh masks for each micro-batch ([`Dropout::for_micro_batch`]);
    /// telemetry reports the last micro-batch. A checkpoint holds the waiting micro-batches
    /// only when asked to ([`Trainer::save_accumulated`]): apply before saving, or save them.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::gru(2, 8, 1);
    /// let mut tr = Trainer::<f64>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0)?;
    /// let (x, y) = (vec![0.5; 4 * 6 * 2], vec![0.25; 4 * 6]); // T = 4, B = 6
    /// let mut whole = tr.clone();
    /// whole.step(&Batch::new(4, 6, &x, Target::Values(&y)))?;
    /// // The same six sequences as micro-batches of 2 (each [4, 2, _] buffer: every sequence's
    /// // rows are the same here, so any slice of them will do).
    /// for _ in 0..3 {
    ///     tr.accumulate(&Batch::new(4, 2, &x[..4 * 2 * 2], Target::Values(&y[..4 * 2])))?;
    /// }
    /// tr.apply_accumulated()?;
    /// let most = (tr.params.iter().zip(whole.params.iter()))
    ///     .map(|(a, b)| (a - b).abs())
    ///     .fold(0.0, f64::max);
    /// assert!(most < 1e-12);
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// Validation errors of the batch; [`RnnError::NonFinite`] if its loss is NaN or
    /// infinite: then every micro-batch accumulated for this update is dropped (the step is
    /// rejected, as [`Trainer::step`] would reject it), and weights and optimizer state are
    /// untouched; [`RnnError::Accumulation`] while micro-batches of a loss of your own
    /// ([`Trainer::accumulate_with`]) wait.
    pub fn accumulate(&mut self, batch: &Batch<T>) -> Result<T> {
        let _flush = self.flush_scope();
        self.accumulated.admits(false)?;
        self.accumulated.reserve(self.layout.len)?;
        let micro = self.accumulated.micro_batches();
        let sum = LossSpec {
            reduction: Reduction::Sum,
            ..self.loss.clone()
        };
        let loss = self.grads_of(batch, &sum, micro)?;
        self.refuse_non_finite(loss, micro)?;
        let divisor = network::mean_divisor(&self.config, batch, &self.loss);
        self.accumulated.add(loss, &self.grads, divisor, false);
        Ok(match self.loss.reduction {
            Reduction::Sum => loss,
            Reduction::Mean if divisor > 0.0 => loss / T::of(divisor),
            Reduction::Mean => T::zero(),
        })
    }

    /// Clips the gradients accumulated since the last update ([`Trainer::accumulate`]) and
    /// applies one optimizer update, as [`Trainer::update`] does; the report's loss is that
    /// of all the micro-batches together. The accumulation starts afresh after it, whether
    /// the update was made or rejected.
    ///
    /// # Errors
    /// [`RnnError::Accumulation`] if no micro-batch was accumulated; [`RnnError::Config`]
    /// for a `mean` over micro-batches that together score nothing; [`Trainer::update`]'s
    /// errors. Weights and optimizer state are untouched by any of them.
    pub fn apply_accumulated(&mut self) -> Result<StepReport<T>> {
        if self.accumulated.micro_batches() == 0 {
            return Err(RnnError::Accumulation(
                "apply_accumulated() with no micro-batch accumulated".into(),
            ));
        }
        let _flush = self.flush_scope();
        let (loss, divisor) = self.accumulated.take_into(&mut self.grads);
        let loss = match self.loss.reduction {
            Reduction::Sum => loss,
            Reduction::Mean if divisor > 0.0 => {
                kernels::reduce::scale(&mut self.grads, T::of(1.0 / divisor));
                loss * (1.0 / divisor)
            }
            Reduction::Mean => {
                return Err(RnnError::Config(
                    "the accumulated micro-batches score no position (every label \
                     IGNORED_LABEL or of class weight 0): a mean over none is undefined"
                        .into(),
                ));
            }
        };
        self.update_with(T::of(loss))
    }

    /// Writes the micro-batches waiting for [`Trainer::apply_accumulated`] into a
    /// checkpoint's `extras` (tensor `accumulated.grads`, metadata `accumulated.*`), so a run
    /// stopped between an accumulation and its update resumes bitwise: save them beside the
    /// optimizer ([`crate::io::save_checkpoint_with`]) and load them back with
    /// [`Trainer::restore_accumulated`]. With none waiting it records that none waits.
    ///
    /// ```
    /// use rnn_core::io::Extras;
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::new(2, 4, 1);
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0)?;
    /// let (x, y) = (vec![0.5f32; 3 * 2 * 2], vec![0.25f32; 3 * 2]);
    /// tr.accumulate(&Batch::new(3, 2, &x, Target::Values(&y)))?;
    /// let mut extras = Extras::default();
    /// tr.save_accumulated(&mut extras);
    /// let mut resumed = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0)?;
    /// resumed.restore_accumulated(&extras)?;
    /// assert_eq!(resumed.accumulated.micro_batches(), 1);
    /// assert_eq!(resumed.apply_accumulated()?.loss, tr.apply_accumulated()?.loss);
    /// assert_eq!(resumed.params, tr.params);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn save_accumulated(&self, extras: &mut Extras<T>) {
        self.accumulated.save(extras);
    }

    /// Takes the waiting micro-batches [`Trainer::save_accumulated`] wrote, in place of any
    /// waiting here.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming an entry that is missing, malformed, or saved for a model
    /// of another parameter count; nothing changes then.
    pub fn restore_accumulated(&mut self, extras: &Extras<T>) -> Result<()> {
        self.accumulated.restore(extras, self.params.len())
    }

    /// [`Trainer::step`] with a loss of your own in place of the trainer's, as PyTorch's
    /// autograd takes any function of a model's outputs (a Gaussian or quantile loss for a
    /// probabilistic forecast, a policy gradient, several losses over parts of the outputs):
    /// `loss(outputs, dy)` reads the head's outputs, writes `dL/d outputs` into `dy` and
    /// returns the loss; the step then runs backward from `dy`, clips and updates as
    /// [`Trainer::step`] does (a non-finite loss or gradient rejects it, leaving weights and
    /// optimizer state as they were).
    ///
    /// The outputs are `[T, B, O]`, time-major, or `[B, O]`, each sequence's output from its
    /// last state, when the trainer's loss spec is many-to-one ([`LossSpec::last_step`]):
    /// that is all of the trainer's spec this step reads (not its kind, reduction or class
    /// weights). With [`Batch::score_from`] they are those of the steps from it on. `dy` has
    /// the same shape and comes zeroed. Rows past a sequence's length
    /// hold `b_y` and take no gradient ([`crate::network::forward_backward_with`]): leave
    /// them out of the loss. A batch with lengths in any order runs longest first (each step
    /// then computes only the sequences still running), and the closure still reads the
    /// outputs and writes `dy` in the batch's order. Under a [`Memory`] setting that checkpoints, the loss still
    /// reads every output at once: the first forward pass keeps them (`[T, B, O]` more), and
    /// the gradients equal the whole pass's within rounding. The batch carries no targets ([`Target::None`](crate::batch::Target::None)): the loss reads
    /// its own.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// // One output per step, trained to the 90th percentile of its target (pinball loss).
    /// let cfg = RnnConfig::lstm(2, 8, 1);
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-2), 0)?;
    /// let (x, target) = (vec![0.5f32; 6 * 4 * 2], vec![0.25f32; 6 * 4]); // T = 6, B = 4
    /// let q = 0.9;
    /// let pinball = |y: &[f32], dy: &mut [f32]| {
    ///     let n = y.len() as f32;
    ///     let mut sum = 0.0;
    ///     for ((y, dy), z) in y.iter().zip(dy.iter_mut()).zip(&target) {
    ///         let err = z - y;
    ///         sum += if err >= 0.0 { q * err } else { (q - 1.0) * err };
    ///         *dy = if err >= 0.0 { -q } else { 1.0 - q } / n;
    ///     }
    ///     sum / n
    /// };
    /// let report = tr.step_with(&Batch::new(6, 4, &x, Target::None), pinball)?;
    /// assert!(report.loss > 0.0);
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// The batch's errors ([`Batch::validate_own_loss`]: it must carry no targets or
    /// sequence weights); [`Trainer::step`]'s errors otherwise. Nothing changes on any
    /// of them.
    pub fn step_with(
        &mut self,
        batch: &Batch<T>,
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<StepReport<T>> {
        self.check_nothing_waits()?;
        let _flush = self.flush_scope();
        let loss = self.loss_and_grads_with(batch, loss)?;
        self.update_with(loss)
    }

    /// [`Trainer::loss_and_grads`] with a loss of your own ([`Trainer::step_with`]): the
    /// gradients land in `self.grads`, nothing is updated.
    ///
    /// # Errors
    /// As [`Trainer::step_with`], but for the update's.
    pub fn loss_and_grads_with(
        &mut self,
        batch: &Batch<T>,
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<T> {
        let _flush = self.flush_scope();
        self.own_grads_of(batch, loss, 0)
    }

    /// [`Trainer::accumulate`] with a loss of your own ([`Trainer::step_with`]): adds the
    /// gradients of the closure's loss on `batch` to those waiting for the next
    /// [`Trainer::apply_accumulated`], and returns that loss. Having no positions to count,
    /// each micro-batch counts as one: under the trainer's `mean` reduction the update is the
    /// mean of the micro-batches' gradients and its loss the mean of theirs (PyTorch's
    /// `(loss / n).backward()` over `n` micro-batches), under `sum` their sum. Micro-batches
    /// of the built-in loss cannot join the same update.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let spec = LossSpec::every_step(LossKind::Mse); // only its `mean` reduction counts here
    /// let mut tr = Trainer::<f64>::new(RnnConfig::gru(2, 8, 1), spec, OptimizerKind::sgd(0.1), 0)?;
    /// let x = vec![0.5; 4 * 2 * 2]; // T = 4, B = 2
    /// let half_square = |y: &[f64], dy: &mut [f64]| {
    ///     dy.copy_from_slice(y);
    ///     y.iter().map(|v| v * v).sum::<f64>() / 2.0
    /// };
    /// let batch = Batch::new(4, 2, &x, Target::None);
    /// let mut once = tr.clone();
    /// let want = once.step_with(&batch, half_square)?;
    /// tr.accumulate_with(&batch, half_square)?;
    /// tr.accumulate_with(&batch, half_square)?;
    /// let got = tr.apply_accumulated()?; // the mean of two equal micro-batches
    /// assert_eq!((got.loss, &tr.params[..]), (want.loss, &once.params[..]));
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Trainer::step_with`], but for the update's; [`RnnError::NonFinite`] for a NaN or
    /// infinite loss, then every waiting micro-batch is dropped, as [`Trainer::accumulate`]
    /// drops them; [`RnnError::Accumulation`] while micro-batches of the built-in loss wait.
    pub fn accumulate_with(
        &mut self,
        batch: &Batch<T>,
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<T> {
        let _flush = self.flush_scope();
        self.accumulated.admits(true)?;
        self.accumulated.reserve(self.layout.len)?;
        let micro = self.accumulated.micro_batches();
        let value = self.own_grads_of(batch, loss, micro)?;
        self.refuse_non_finite(value, micro)?;
        self.accumulated.add(value, &self.grads, 1.0, true);
        Ok(value)
    }

    /// A micro-batch whose loss is NaN or infinite rejects the whole update it was to join:
    /// every waiting micro-batch is dropped, and [`RnnError::NonFinite`] names it.
    fn refuse_non_finite(&mut self, loss: T, micro: u64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        self.accumulated.clear();
        Err(RnnError::NonFinite {
            what: format!("loss ({}) of micro-batch {micro}", loss.f64()),
            step: self.optimizer.steps,
        })
    }

    /// The loss of your own of `batch` and its gradients into `self.grads`, dropping as
    /// micro-batch `micro` of the coming update.
    fn own_grads_of(
        &mut self,
        batch: &Batch<T>,
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
        micro: u64,
    ) -> Result<T> {
        let many_to_one = self.loss.many_to_one;
        let o = self.config.output_size;
        let (gives, no_states) = (self.grads_given(), (&[][..], &[][..]));
        self.longest_first_from(
            batch,
            no_states,
            Check::NoTargets,
            gives,
            |tr, batch, mut sorted| {
                // Sized by the batch once it is checked.
                let kept = Kept {
                    own_loss: true,
                    ..tr.training_kept()
                };
                let segment = tr.segment_for(batch, kept);
                if batch.lengths.is_some() {
                    let steps = if many_to_one { 1 } else { batch.seq_len };
                    sorted.reserve_own_loss(steps * batch.batch * o)?;
                }
                // The closure sees the outputs, and writes their gradient, in the batch's order.
                let loss = sorted.own_loss(o, loss);
                tr.in_step_threads(batch, |tr, par| {
                    let opts = tr.pass_options(par, micro);
                    let value = network::forward_backward_with_segments(
                        (&tr.config, &tr.layout, &tr.params),
                        &mut tr.grads,
                        &mut tr.workspace,
                        batch,
                        many_to_one,
                        opts,
                        loss,
                        segment,
                    )?;
                    tr.zero_frozen_grads();
                    Ok(value)
                })
            },
        )
    }

    /// The options of a training pass on `par`, dropping as micro-batch `micro` of the
    /// coming update.
    fn pass_options(&self, par: Par, micro: u64) -> PassOptions {
        PassOptions {
            par,
            input_grad: self.input_grad,
            telemetry: self.telemetry,
            split: self.split,
            chunks: self.chunks,
            dropout: self
                .dropout
                .map(|d| d.for_micro_batch(self.optimizer.steps, micro)),
            frozen: self.frozen_parts(),
        }
    }

    /// The loss of `batch` under `spec` and its gradients into `self.grads`, dropping as
    /// micro-batch `micro` of the coming update.
    fn grads_of(&mut self, batch: &Batch<T>, spec: &LossSpec, micro: u64) -> Result<T> {
        self.longest_first(batch, Check::Loss(spec), self.grads_given(), |tr, batch| {
            tr.grads_in_order(batch, spec, micro)
        })
    }

    /// What a training pass gives per sequence: its input gradients when asked for.
    fn grads_given(&self) -> PerSequence {
        if self.input_grad {
            PerSequence::InputGrads
        } else {
            PerSequence::Nothing
        }
    }

    /// [`Trainer::grads_of`] with the batch's sequences in the order given.
    fn grads_in_order(&mut self, batch: &Batch<T>, spec: &LossSpec, micro: u64) -> Result<T> {
        let segment = self.segment_for(batch, self.training_kept());
        self.in_step_threads(batch, |tr, par| {
            let opts = tr.pass_options(par, micro);
            let loss = forward_backward_checkpointed(
                &tr.config,
                &tr.layout,
                &tr.params,
                &mut tr.grads,
                &mut tr.workspace,
                batch,
                spec,
                opts,
                segment,
            )?;
            tr.zero_frozen_grads();
            Ok(loss)
        })
    }

    /// What a training pass keeps besides its workspace: dropout's buffers when it drops
    /// and its input gradients when asked for.
    fn training_kept(&self) -> Kept {
        Kept {
            dropout: self.dropout.is_some_and(|d| d.applies_to(&self.config)),
            input_grad: self.input_grad,
            ..Kept::default()
        }
    }

    /// The stretch a pass over `batch` runs at a time under [`Trainer::memory`] (`seq_len`:
    /// the whole batch), with room for what it keeps besides (`kept`).
    fn segment_for(&self, batch: &Batch<T>, kept: Kept) -> usize {
        if !batch.holds_its_rows(&self.config) {
            // Not sized by a claim its inputs do not hold (it could overflow): the pass
            // refuses the batch before it reads the segment.
            return batch.seq_len;
        }
        let ragged = batch.lengths.is_some();
        let kept = Kept {
            ragged,
            copy: if ragged {
                longest_first::copy_bytes(batch)
            } else {
                0
            },
            ..kept
        };
        // The outputs of the last step only under a many-to-one loss, and in a pass to the
        // final states, which runs no head.
        let many_to_one = self.loss.many_to_one || kept.final_states;
        self.memory.segment_with::<T>(
            &self.config,
            batch.seq_len,
            batch.batch,
            many_to_one,
            self.split,
            kept,
            self.layout.len,
        )
    }

    /// How a pass of this trainer runs on `par`: its unit split and time chunks.
    fn exec(&self, par: Par) -> Exec {
        Exec {
            par,
            split: self.split,
            chunks: self.chunks,
        }
    }

    /// Runs `pass` with the threads a step of `batch` uses: inside the trainer's pool when it
    /// has one, or here, exactly as on one thread, with `Par::Seq` when a second thread has
    /// nothing to do (entering the pool costs more than a tiny step).
    fn in_step_threads<R: Send>(
        &mut self,
        batch: &Batch<T>,
        pass: impl FnOnce(&mut Self, Par) -> R + Send,
    ) -> R {
        let threads = self.threads_for(batch.seq_len, batch.batch) > 1;
        let par = if threads { self.par } else { Par::Seq };
        let pool = self.pool.clone().filter(|_| threads);
        in_pool(pool.as_deref(), || pass(self, par))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Target;
    use crate::config::LossKind;

    /// A bidirectional model cannot run in segments: a budget it does not fit leaves it
    /// whole sequences (it used to pick segments the pass then refused).
    #[test]
    fn a_budget_runs_bidirectional_models_whole() {
        let cfg = RnnConfig::gru(4, 32, 2).bidirectional();
        for bytes in [1, 1 << 20, usize::MAX] {
            let s = Memory::Budget { bytes }.segment_for::<f32>(&cfg, 300, 8, false);
            assert_eq!(s, 300, "budget {bytes}");
        }
        let one_way = RnnConfig::gru(4, 32, 2);
        assert!(Memory::Budget { bytes: 1 }.segment_for::<f32>(&one_way, 300, 8, false) < 300);
    }

    /// A memory budget counts what a pass keeps besides its workspace: with a loss of one's
    /// own (every output kept across segments) or input gradients, the segments it picks
    /// are never longer, and shorter once the budget is tight.
    #[test]
    fn a_budget_counts_the_longest_first_copy() {
        let cfg = RnnConfig::lstm(64, 32, 8);
        let (t, b) = (64, 8);
        let (x, labels, lengths) = (vec![0.5f32; t * b * 64], vec![1; t * b], vec![t; b]);
        let batch = Batch {
            lengths: Some(&lengths),
            ..Batch::new(t, b, &x, Target::Classes(&labels))
        };
        let copy = longest_first::copy_bytes(&batch);
        assert_eq!(copy, t * b * 64 * 4 + (t * b + 2 * b) * 8);
        let params = Layout::new(&cfg).len;
        let segment = |bytes, copy| {
            let kept = Kept {
                ragged: true,
                copy,
                ..Kept::default()
            };
            let memory = Memory::Budget { bytes };
            memory.segment_with::<f32>(&cfg, t, b, false, UnitSplit::Auto, kept, params)
        };
        // The least budget that holds a whole pass without the copy runs segments with it.
        let fits = (1..)
            .map(|k| k << 12)
            .find(|&bytes| segment(bytes, 0) == t)
            .unwrap();
        assert!(segment(fits, copy) < t);
        assert_eq!(segment(fits + copy, copy), t);
        // The trainer counts it for a batch with lengths.
        let loss = LossSpec::every_step(LossKind::CrossEntropy);
        let tr = Trainer::<f32>::new(cfg, loss, OptimizerKind::sgd(0.1), 0)
            .unwrap()
            .with_memory(Memory::Budget { bytes: fits });
        let dense = Batch {
            lengths: None,
            ..batch
        };
        assert_eq!(tr.segment_for(&dense, Kept::default()), t);
        assert!(tr.segment_for(&batch, Kept::default()) < t);
    }

    #[test]
    fn a_budget_counts_own_outputs_and_input_gradients() {
        let cfg = RnnConfig::lstm(64, 32, 256);
        let (t, b) = (64, 8);
        let params = Layout::new(&cfg).len;
        let segment = |bytes, kept| {
            let memory = Memory::Budget { bytes };
            memory.segment_with::<f32>(&cfg, t, b, false, UnitSplit::Auto, kept, params)
        };
        let own = Kept {
            own_loss: true,
            ..Kept::default()
        };
        let dx = Kept {
            input_grad: true,
            ..Kept::default()
        };
        let mut shorter = [false; 2];
        for bytes in (1..40).map(|k| (k * 100) << 10) {
            let plain = segment(bytes, Kept::default());
            for (k, kept) in [own, dx].into_iter().enumerate() {
                let s = segment(bytes, kept);
                assert!(
                    s <= plain,
                    "{bytes} bytes, {kept:?}: {s} steps against {plain}"
                );
                shorter[k] |= s < plain;
            }
        }
        assert_eq!(shorter, [true, true]);
    }

    /// What `longest_within` replaces: every segment length tried, from the longest down.
    fn scan(seq_len: usize, bytes: usize, cost: impl Fn(usize) -> usize) -> usize {
        (1..=seq_len)
            .rev()
            .find(|&s| cost(s) <= bytes)
            .unwrap_or_else(|| {
                (1..=seq_len)
                    .min_by_key(|&s| cost(s))
                    .expect("seq_len >= 1")
            })
    }

    /// Costs of the shape `longest_within` relies on (growing with `s` but for a term of the
    /// segment count alone; any cost at `seq_len`), drawn at random, with budgets from none
    /// to all: the same segment as the scan, the fallback's ties included.
    #[test]
    fn longest_within_finds_what_a_scan_finds() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..400 {
            let t = [1, 2, 3, 7, 10, 64, 97, 1000][case % 8];
            // Steps of 0 make ties; a per-count term that may fall or rise.
            let mut grows = vec![0usize; t + 1];
            for s in 1..=t {
                grows[s] = grows[s - 1] + rng.random_range(0..3);
            }
            let per_count: Vec<usize> = (0..=t).map(|_| rng.random_range(0..40)).collect();
            let whole = rng.random_range(0..60);
            let cost = |s: usize| match s == t {
                true => whole,
                false => grows[s] + per_count[t.div_ceil(s)],
            };
            let most = (1..=t).map(cost).max().unwrap_or(0);
            for bytes in (0..=most + 1).step_by(1 + most / 25) {
                assert_eq!(
                    longest_within(t, bytes, cost),
                    scan(t, bytes, cost),
                    "case {case}: T {t}, budget {bytes}"
                );
            }
        }
    }

    /// The trainer's own costs have that shape: for every cell, stacked or not, with each
    /// of what a pass may keep besides, the grouped search picks the segment the scan does.
    #[test]
    fn budgets_pick_the_segment_a_scan_picks() {
        let kinds = [
            Kept::default(),
            Kept {
                dropout: true,
                input_grad: true,
                ..Kept::default()
            },
            Kept {
                own_loss: true,
                ragged: true,
                copy: 1 << 12,
                ..Kept::default()
            },
        ];
        for cfg in [
            RnnConfig::new(3, 16, 2),
            RnnConfig::lstm(5, 32, 4).layers(2),
            RnnConfig::gru(8, 64, 3),
            RnnConfig::lstm(4, 24, 2).projection(8),
        ] {
            let params = Layout::new(&cfg).len;
            for (t, b) in [(1, 1), (5, 3), (64, 4), (300, 2), (1000, 1)] {
                for (k, kept) in kinds.iter().enumerate() {
                    for many_to_one in [false, true] {
                        let split = UnitSplit::Auto;
                        let cost =
                            budget_cost::<f32>(&cfg, t, b, many_to_one, split, *kept, params);
                        let most = (1..=t).map(&cost).max().unwrap();
                        let least = (1..=t).map(&cost).min().unwrap();
                        for bytes in (least / 2..=most).step_by(1 + (most - least / 2) / 30) {
                            assert_eq!(
                                longest_within(t, bytes, &cost),
                                scan(t, bytes, &cost),
                                "{cfg:?} T {t} B {b} kept {k} many-to-one {many_to_one}: {bytes}"
                            );
                        }
                    }
                }
            }
        }
    }
}
