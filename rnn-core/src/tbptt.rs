//! Truncated BPTT over endless streams: TBPTT(k1, k2) (Williams & Peng 1990).
//!
//! `B` parallel streams (PyTorch's word-language-model batching: one long text cut into `B`
//! rows) arrive `k1` steps at a time. After each chunk the model is updated with the loss of
//! those `k1` new steps, backpropagated through the last `k2 >= k1` steps; the hidden state
//! is carried across chunks with no gradient across the cut. `k1 = k2` (the common case,
//! "detach every chunk") replays nothing and is the fastest; `k2 > k1` re-runs the last
//! `k2 - k1` steps from the state saved at the window's start, with the current weights.
//!
//! Memory is the window's: a `k2`-step workspace, whatever the total length. The windows
//! keep every activation whatever the trainer's [`crate::trainer::Memory`] setting (the
//! streams carry on from the window's states, which a checkpointed pass does not keep).
//!
//! [`Tbptt::accumulate`] trains on a chunk without updating: the gradients of several chunks
//! (each backpropagated through its own window, all with the same weights) add up to one
//! [`Tbptt::apply_accumulated`] update, for fewer updates than chunks.

use kernels::Float;

use crate::batch::{Batch, Target};
use crate::config::RnnConfig;
use crate::error::{Result, RnnError, filled_vec, shape};
use crate::trainer::{Memory, StepReport, Trainer};

/// A trainer fed one chunk of `k1` steps of `B` streams at a time.
///
/// ```
/// use rnn_core::prelude::*;
/// use rnn_core::tbptt::Tbptt;
/// let cfg = RnnConfig::lstm(1, 8, 1);
/// let tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-2), 0)?;
/// let (k, b) = (10, 2);
/// let mut stream = Tbptt::new(tr, k, k, b)?;
/// for chunk in 0..5 {
///     // Two streams of a sine wave; predict the next value.
///     let x: Vec<f32> = (0..k * b).map(|i| ((chunk * k + i / b) as f32 * 0.3 + (i % b) as f32).sin()).collect();
///     let y: Vec<f32> = (0..k * b).map(|i| ((chunk * k + i / b + 1) as f32 * 0.3 + (i % b) as f32).sin()).collect();
///     stream.step(&x, Target::Values(&y))?;
/// }
/// stream.reset_stream(1)?; // stream 1 starts a new episode
/// assert!(stream.state()[8..16].iter().all(|&v| v == 0.0));
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tbptt<T: Float> {
    /// The model, optimizer and workspace.
    pub trainer: Trainer<T>,
    k1: usize,
    k2: usize,
    batch: usize,
    /// `[k2, B, I]`: the window's inputs; the first `held` steps are replayed history
    /// (empty for a model with an embedding, whose inputs are `tokens`).
    x: Vec<T>,
    /// `[k2, B]`: the window's token ids (a model with an embedding; else empty).
    tokens: Vec<usize>,
    /// The window's targets (`[k2, B, O]` values or `[k2, B]` labels).
    values: Vec<T>,
    classes: Vec<usize>,
    held: usize,
    /// `[L, B, H]`: the state at the window's first step (`c` for an LSTM, else empty).
    h_start: Vec<T>,
    c_start: Vec<T>,
    /// `[L, B, H]`: the state after the last chunk, which the streams carry.
    h_end: Vec<T>,
    c_end: Vec<T>,
    /// `[B]`: each stream's loss weight (empty: every stream weighs 1).
    weights: Vec<T>,
}

impl<T: Float> Tbptt<T> {
    /// Streams of `batch` rows, updated every `k1` steps through the last `k2` steps, from a
    /// zero state.
    ///
    /// # Errors
    /// [`RnnError::Config`] if `k1 = 0`, `k2 < k1`, `batch = 0`, the trainer's loss is
    /// many-to-one (a stream has no last step), or the model is bidirectional (a stream has
    /// no end for its reverse direction to start from); [`RnnError::OutOfMemory`] when the
    /// window of `k2` steps of `batch` streams does not fit in memory.
    pub fn new(trainer: Trainer<T>, k1: usize, k2: usize, batch: usize) -> Result<Self> {
        if k1 == 0 || k2 < k1 || batch == 0 {
            return Err(RnnError::Config(format!(
                "TBPTT needs 1 <= k1 <= k2 and B >= 1, got k1 = {k1}, k2 = {k2}, B = {batch}"
            )));
        }
        if trainer.config.bidirectional {
            return Err(RnnError::Config(
                "TBPTT carries state forward through a stream: a bidirectional model's reverse \
                 direction has no end to start from"
                    .into(),
            ));
        }
        if trainer.loss.many_to_one {
            return Err(RnnError::Config(
                "TBPTT scores every step: a many-to-one loss has no place in a stream".into(),
            ));
        }
        let cfg = trainer.config;
        // With projections the state `h` is `P` wide, the cell state `H`.
        let (l, h) = (cfg.num_layers, cfg.hidden_size);
        let state = [l, batch, cfg.state_size()];
        let cell_state = [l, batch, if cfg.cell.has_cell_state() { h } else { 0 }];
        let (values, classes) = if trainer.loss.kind.takes_values() {
            (cfg.output_size, 0)
        } else {
            (0, 1)
        };
        let tokens = usize::from(cfg.num_embeddings.is_some());
        let window = |width: usize| [k2, batch, width];
        let zero = T::zero();
        Ok(Self {
            k1,
            k2,
            batch,
            x: filled_vec(&window(dense_width(&cfg)), zero, "the window's inputs")?,
            tokens: filled_vec(&window(tokens), 0, "the window's tokens")?,
            values: filled_vec(&window(values), zero, "the window's targets")?,
            classes: filled_vec(&window(classes), 0, "the window's labels")?,
            held: 0,
            h_start: filled_vec(&state, zero, "the streams' states")?,
            c_start: filled_vec(&cell_state, zero, "the streams' cell states")?,
            h_end: filled_vec(&state, zero, "the streams' states")?,
            c_end: filled_vec(&cell_state, zero, "the streams' cell states")?,
            weights: Vec::new(),
            trainer,
        })
    }

    /// These streams with a loss weight each (`[B]`, finite and non-negative), as
    /// [`Batch::with_sequence_weights`] weighs sequences: a stream of weight 2 trains as two
    /// copies of it would, one of weight 0 not at all (its state is still carried).
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] unless there is one weight per stream;
    /// [`RnnError::NonFiniteInput`] or [`RnnError::Config`] for a weight that is not finite
    /// or is negative. (Weights that leave a `mean` nothing to divide by are refused at the
    /// step, as for a batch.)
    pub fn with_stream_weights(mut self, weights: &[T]) -> Result<Self> {
        crate::batch::check_weights("stream weights", "stream weight", weights, self.batch)?;
        self.weights = weights.to_vec();
        Ok(self)
    }

    /// `(k1, k2)`.
    pub fn window(&self) -> (usize, usize) {
        (self.k1, self.k2)
    }

    /// `[L, B, H]` (`[L, B, P]` with projections): the hidden state the streams carry into
    /// the next chunk.
    pub fn state(&self) -> &[T] {
        &self.h_end
    }

    /// `[L, B, H]`: the LSTM cell state the streams carry (empty for other cells).
    pub fn cell_state(&self) -> &[T] {
        &self.c_end
    }

    /// Trains on the next `k1` steps of every stream: `x` `[k1, B, I]`, targets `[k1, B, O]`
    /// (MSE) or labels `[k1, B]` (cross-entropy).
    ///
    /// # Errors
    /// Shape and value errors naming the input; [`RnnError::NonFinite`] when the step is
    /// rejected — then the weights, optimizer state and stream state are as before, and the
    /// chunk is dropped; [`RnnError::Accumulation`] while accumulated chunks wait for
    /// [`Tbptt::apply_accumulated`].
    pub fn step(&mut self, x: &[T], target: Target<'_, T>) -> Result<StepReport<T>> {
        self.place_inputs(x)?;
        self.run_window(target, |trainer, batch| trainer.step(batch))
    }

    /// [`Tbptt::step`] with a loss of your own ([`Trainer::step_with`]): `loss(outputs, dy)`
    /// reads the outputs of the `k1` new steps (`[k1, B, O]`; not those of the history a
    /// window with `k2 > k1` replays), writes `dL/d outputs` into `dy` and returns the loss.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// use rnn_core::tbptt::Tbptt;
    /// let cfg = RnnConfig::lstm(1, 8, 1);
    /// let tr = Trainer::<f64>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-2), 0)?;
    /// let (k1, k2, b) = (4, 6, 2);
    /// let mut stream = Tbptt::new(tr, k1, k2, b)?;
    /// for chunk in 0..5 {
    ///     let value = |i: usize| ((chunk * k1 + i / b) as f64 * 0.3).sin();
    ///     let x: Vec<f64> = (0..k1 * b).map(value).collect();
    ///     let next: Vec<f64> = (b..(k1 + 1) * b).map(value).collect();
    ///     // Half the absolute error's gradient for an overshoot: a forecast that errs low.
    ///     stream.step_with(&x, |y, dy| {
    ///         let mut sum = 0.0;
    ///         for ((y, dy), z) in y.iter().zip(dy.iter_mut()).zip(&next) {
    ///             let w = if y > z { 0.5 } else { 1.0 };
    ///             sum += w * (y - z).abs();
    ///             *dy = w * (y - z).signum() / next.len() as f64;
    ///         }
    ///         sum / next.len() as f64
    ///     })?;
    /// }
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Tbptt::step`] and [`Trainer::step_with`] (no stream weights: the loss weighs its
    /// own).
    pub fn step_with(
        &mut self,
        x: &[T],
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<StepReport<T>> {
        self.place_inputs(x)?;
        self.run_window(Target::None, |trainer, batch| {
            trainer.step_with(batch, loss)
        })
    }

    /// [`Tbptt::step_with`] for a model with an embedding: the next `k1` token ids of every
    /// stream `[k1, B]`.
    ///
    /// # Errors
    /// As [`Tbptt::step_with`]; [`RnnError::TokenOutOfRange`] for a token past the embedding.
    pub fn step_tokens_with(
        &mut self,
        tokens: &[usize],
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<StepReport<T>> {
        self.place_tokens(tokens)?;
        self.run_window(Target::None, |trainer, batch| {
            trainer.step_with(batch, loss)
        })
    }

    /// [`Tbptt::step`] for a model with an embedding: the next `k1` token ids of every stream
    /// `[k1, B]`.
    ///
    /// # Errors
    /// As [`Tbptt::step`]; [`RnnError::TokenOutOfRange`] for a token past the embedding.
    pub fn step_tokens(
        &mut self,
        tokens: &[usize],
        target: Target<'_, T>,
    ) -> Result<StepReport<T>> {
        self.place_tokens(tokens)?;
        self.run_window(target, |trainer, batch| trainer.step(batch))
    }

    /// Gradient accumulation over chunks: the gradients of the next `k1` steps of every
    /// stream (as [`Tbptt::step`] would compute them) are added to those waiting, and the
    /// streams move on, but the weights stay until [`Tbptt::apply_accumulated`]. So `n`
    /// chunks make one update with the same weights throughout, each chunk still
    /// backpropagated through its own window only: an update every `n·k1` steps at the
    /// memory of `k2`, or a larger batch for streams that must stay few. The update is
    /// [`Trainer::apply_accumulated`]'s: a `mean` divides by the scored positions of all the
    /// chunks. Returns this chunk's loss under the trainer's reduction.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// use rnn_core::tbptt::Tbptt;
    /// let cfg = RnnConfig::gru(1, 8, 1);
    /// let tr = Trainer::<f64>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0)?;
    /// let (k, b) = (5, 2);
    /// let mut stream = Tbptt::new(tr, k, k, b)?;
    /// let before = stream.trainer.params.clone();
    /// for chunk in 0..3 {
    ///     let x: Vec<f64> = (0..k * b).map(|i| ((chunk * k + i / b) as f64 * 0.3).sin()).collect();
    ///     let y: Vec<f64> = (0..k * b).map(|i| ((chunk * k + i / b + 1) as f64 * 0.3).sin()).collect();
    ///     stream.accumulate(&x, Target::Values(&y))?;
    /// }
    /// assert_eq!(stream.accumulated(), 3);
    /// assert_eq!(stream.trainer.params, before); // no update yet
    /// stream.apply_accumulated()?; // one update for the three chunks
    /// assert_ne!(stream.trainer.params, before);
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Tbptt::step`]. A chunk whose loss is NaN or infinite drops every chunk
    /// accumulated for this update ([`Trainer::accumulate`]); the streams keep the state of
    /// the chunks before it.
    pub fn accumulate(&mut self, x: &[T], target: Target<'_, T>) -> Result<T> {
        self.place_inputs(x)?;
        self.run_window(target, |trainer, batch| trainer.accumulate(batch))
    }

    /// [`Tbptt::accumulate`] for a model with an embedding: the next `k1` token ids of every
    /// stream `[k1, B]`.
    ///
    /// # Errors
    /// As [`Tbptt::accumulate`]; [`RnnError::TokenOutOfRange`] for a token past the
    /// embedding.
    pub fn accumulate_tokens(&mut self, tokens: &[usize], target: Target<'_, T>) -> Result<T> {
        self.place_tokens(tokens)?;
        self.run_window(target, |trainer, batch| trainer.accumulate(batch))
    }

    /// [`Tbptt::accumulate`] with a loss of your own ([`Tbptt::step_with`]: the closure sees
    /// the `k1` new steps' outputs): each chunk counts as one in the update's mean
    /// ([`Trainer::accumulate_with`]).
    ///
    /// # Errors
    /// As [`Tbptt::accumulate`] and [`Trainer::accumulate_with`].
    pub fn accumulate_with(
        &mut self,
        x: &[T],
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<T> {
        self.place_inputs(x)?;
        self.run_window(Target::None, |trainer, batch| {
            trainer.accumulate_with(batch, loss)
        })
    }

    /// [`Tbptt::accumulate_with`] for a model with an embedding: the next `k1` token ids of
    /// every stream `[k1, B]`.
    ///
    /// # Errors
    /// As [`Tbptt::accumulate_with`]; [`RnnError::TokenOutOfRange`] for a token past the
    /// embedding.
    pub fn accumulate_tokens_with(
        &mut self,
        tokens: &[usize],
        loss: impl FnOnce(&[T], &mut [T]) -> T + Send,
    ) -> Result<T> {
        self.place_tokens(tokens)?;
        self.run_window(Target::None, |trainer, batch| {
            trainer.accumulate_with(batch, loss)
        })
    }

    /// The update of the chunks accumulated since the last one ([`Tbptt::accumulate`]).
    ///
    /// # Errors
    /// As [`Trainer::apply_accumulated`]; weights and optimizer state are untouched by any
    /// of them, and the streams keep their state either way.
    pub fn apply_accumulated(&mut self) -> Result<StepReport<T>> {
        self.trainer.apply_accumulated()
    }

    /// How many chunks wait for [`Tbptt::apply_accumulated`].
    pub fn accumulated(&self) -> u64 {
        self.trainer.accumulated.micro_batches()
    }

    /// Puts the next `k1` steps' inputs `[k1, B, I]` after the held ones.
    fn place_inputs(&mut self, x: &[T]) -> Result<()> {
        let (k1, b) = (self.k1, self.batch);
        let cfg = self.trainer.config;
        if cfg.num_embeddings.is_some() {
            return Err(RnnError::Config(
                "the model reads tokens through an embedding: give them to Tbptt::step_tokens \
                 or Tbptt::accumulate_tokens"
                    .into(),
            ));
        }
        let per_step_x = b * dense_width(&cfg);
        if x.len() != k1 * per_step_x {
            return Err(shape(
                "x",
                format!("[k1={k1}, B={b}, I={}]", dense_width(&cfg)),
                x.len(),
            ));
        }
        let at = self.held;
        self.x[at * per_step_x..(at + k1) * per_step_x].copy_from_slice(x);
        Ok(())
    }

    /// Puts the next `k1` steps' token ids `[k1, B]` after the held ones.
    fn place_tokens(&mut self, tokens: &[usize]) -> Result<()> {
        let (k1, b) = (self.k1, self.batch);
        if self.tokens.is_empty() {
            return Err(RnnError::Config(
                "tokens given, but the model has no embedding (RnnConfig::embedding): give its \
                 inputs to Tbptt::step or Tbptt::accumulate"
                    .into(),
            ));
        }
        if tokens.len() != k1 * b {
            return Err(shape("tokens", format!("[k1={k1}, B={b}]"), tokens.len()));
        }
        let at = self.held;
        self.tokens[at * b..(at + k1) * b].copy_from_slice(tokens);
        Ok(())
    }

    /// Token ids per step of the window: `B` for a model with an embedding, else 0.
    fn tokens_per_step(&self) -> usize {
        self.tokens.len() / self.k2
    }

    /// Runs `pass` (a step or an accumulation) over the window: the held steps and the `k1`
    /// new ones, whose inputs are in place; `target` holds the new steps' targets. After a
    /// pass that succeeded the streams move on by `k1` steps.
    fn run_window<R>(
        &mut self,
        target: Target<'_, T>,
        pass: impl FnOnce(&mut Trainer<T>, &Batch<'_, T>) -> Result<R>,
    ) -> Result<R> {
        let (k1, b) = (self.k1, self.batch);
        let cfg = self.trainer.config;
        let per_step_x = b * dense_width(&cfg);
        let at = self.held;
        let window_target = match target {
            Target::Values(v) => {
                let per = b * cfg.output_size;
                if v.len() != k1 * per || self.values.is_empty() {
                    return Err(shape(
                        "target",
                        format!("[k1={k1}, B={b}, O={}]", cfg.output_size),
                        v.len(),
                    ));
                }
                self.values[at * per..(at + k1) * per].copy_from_slice(v);
                Target::Values(&self.values[..(at + k1) * per])
            }
            Target::Classes(c) => {
                if c.len() != k1 * b || self.classes.is_empty() {
                    return Err(shape("target labels", format!("[k1={k1}, B={b}]"), c.len()));
                }
                self.classes[at * b..(at + k1) * b].copy_from_slice(c);
                Target::Classes(&self.classes[..(at + k1) * b])
            }
            // A loss of the caller's own (`Tbptt::step_with`); the built-in ones refuse it.
            Target::None => Target::None,
        };
        let w = at + k1;
        let batch = Batch {
            seq_len: w,
            batch: b,
            x: &self.x[..w * per_step_x],
            tokens: (!self.tokens.is_empty()).then(|| &self.tokens[..w * b]),
            target: window_target,
            lengths: None,
            h0: Some(&self.h_start),
            c0: cfg.cell.has_cell_state().then_some(&self.c_start[..]),
            score_from: at,
            sequence_weights: (!self.weights.is_empty()).then_some(&self.weights[..]),
        };
        // The window's states are read back below: its pass keeps every activation, as a
        // checkpointing pass would not (the window bounds the memory already).
        let memory = std::mem::replace(&mut self.trainer.memory, Memory::Full);
        let report = pass(&mut self.trainer, &batch);
        self.trainer.memory = memory;
        let report = report?;
        // The next window replays the last `held` steps of this one, from the state before
        // them; the states come from this step's forward pass (the weights before the update).
        let held = w.min(self.k2 - k1);
        let start = w - held;
        self.save_state(start, w);
        let per_step_target = |len: usize| len / self.k2;
        let (tv, tc) = (
            per_step_target(self.values.len()),
            per_step_target(self.classes.len()),
        );
        self.x.copy_within(start * per_step_x..w * per_step_x, 0);
        if !self.tokens.is_empty() {
            self.tokens.copy_within(start * b..w * b, 0);
        }
        self.values.copy_within(start * tv..w * tv, 0);
        self.classes.copy_within(start * tc..w * tc, 0);
        self.held = held;
        Ok(report)
    }

    /// Copies the workspace's states after `start` and `end` steps of the window into
    /// `h_start` / `c_start` and `h_end` / `c_end`.
    fn save_state(&mut self, start: usize, end: usize) {
        let (cfg, ws) = (&self.trainer.config, &self.trainer.workspace);
        ws.states_at(cfg, self.batch, start, &mut self.h_start, &mut self.c_start);
        ws.states_at(cfg, self.batch, end, &mut self.h_end, &mut self.c_end);
    }

    /// Starts stream `b` afresh (an episode boundary): its state becomes zero.
    ///
    /// With `k2 > k1` the replayed history is dropped for every stream, so the next update
    /// backpropagates through its own `k1` steps only (no stream's old episode leaks in).
    ///
    /// # Errors
    /// [`RnnError::Config`] if `b >= B`.
    pub fn reset_stream(&mut self, b: usize) -> Result<()> {
        if b >= self.batch {
            return Err(RnnError::Config(format!(
                "stream {b} does not exist (B = {})",
                self.batch
            )));
        }
        let cfg = &self.trainer.config;
        let (h, hc) = (cfg.state_size(), cfg.hidden_size);
        for layer in 0..cfg.num_layers {
            let stream = layer * self.batch + b;
            self.h_end[stream * h..(stream + 1) * h].fill(T::zero());
            if !self.c_end.is_empty() {
                self.c_end[stream * hc..(stream + 1) * hc].fill(T::zero());
            }
        }
        self.h_start.copy_from_slice(&self.h_end);
        self.c_start.copy_from_slice(&self.c_end);
        self.held = 0;
        Ok(())
    }

    /// Sets the carried state (`[L, B, H]`, and the LSTM cell state or an empty slice), e.g.
    /// from a checkpoint's copy of [`Tbptt::state`] and [`Tbptt::cell_state`]. With
    /// `k2 > k1` the replayed history restarts empty, as after [`Tbptt::reset_stream`].
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] for a wrong length.
    pub fn restore(&mut self, h: &[T], c: &[T]) -> Result<()> {
        if h.len() != self.h_end.len() {
            return Err(shape("h", self.h_end.len(), h.len()));
        }
        if c.len() != self.c_end.len() {
            return Err(shape("c", self.c_end.len(), c.len()));
        }
        self.h_end.copy_from_slice(h);
        self.c_end.copy_from_slice(c);
        self.h_start.copy_from_slice(h);
        self.c_start.copy_from_slice(c);
        self.held = 0;
        Ok(())
    }

    /// Everything the streams carry between chunks, as named tensors for a checkpoint
    /// ([`crate::io::Extras`]): both states, the replayed window (labels as floats) and its
    /// length. [`Tbptt::restore_snapshot`] makes the next chunk train exactly as it would
    /// have without the stop. Chunks waiting for [`Tbptt::apply_accumulated`] are the
    /// trainer's to save ([`Trainer::save_accumulated`]).
    pub fn snapshot(&self) -> Vec<(String, Vec<T>)> {
        let cfg = self.trainer.config;
        let b = self.batch;
        let held = self.held;
        let per_o = self.values.len() / self.k2;
        vec![
            ("tbptt.held".into(), vec![T::of(held as f64)]),
            ("tbptt.h_start".into(), self.h_start.clone()),
            ("tbptt.c_start".into(), self.c_start.clone()),
            ("tbptt.h_end".into(), self.h_end.clone()),
            ("tbptt.c_end".into(), self.c_end.clone()),
            (
                "tbptt.x".into(),
                self.x[..held * b * dense_width(&cfg)].to_vec(),
            ),
            (
                "tbptt.tokens".into(),
                self.tokens[..held * self.tokens_per_step()]
                    .iter()
                    .map(|&t| T::of(t as f64))
                    .collect(),
            ),
            ("tbptt.values".into(), self.values[..held * per_o].to_vec()),
            (
                "tbptt.classes".into(),
                self.classes[..held * (self.classes.len() / self.k2)]
                    .iter()
                    .map(|&c| T::of(c as f64))
                    .collect(),
            ),
        ]
    }

    /// Restores what [`Tbptt::snapshot`] saved (for the same model, `k1`, `k2` and `B`).
    ///
    /// # Errors
    /// [`RnnError::Format`] naming a missing or misshapen part.
    pub fn restore_snapshot(&mut self, tensors: &[(String, Vec<T>)]) -> Result<()> {
        let get = |name: &str| -> Result<&[T]> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| &v[..])
                .ok_or_else(|| RnnError::Format(format!("stream snapshot has no {name:?}")))
        };
        let held = get("tbptt.held")?
            .first()
            .map(|v| v.f64())
            .filter(|&v| v >= 0.0 && v.fract() == 0.0 && v as usize <= self.k2 - self.k1)
            .ok_or_else(|| RnnError::Format("stream snapshot: bad tbptt.held".into()))?
            as usize;
        let b = self.batch;
        let cfg = self.trainer.config;
        let per_o = self.values.len() / self.k2;
        let per_c = self.classes.len() / self.k2;
        let fits = |name: &str, want: usize| -> Result<&[T]> {
            let v = get(name)?;
            if v.len() == want {
                Ok(v)
            } else {
                Err(RnnError::Format(format!(
                    "stream snapshot: {name} has {} values, this stream needs {want}",
                    v.len()
                )))
            }
        };
        let (hs, cs) = (self.h_start.len(), self.c_start.len());
        let parts = [
            fits("tbptt.h_start", hs)?,
            fits("tbptt.c_start", cs)?,
            fits("tbptt.h_end", hs)?,
            fits("tbptt.c_end", cs)?,
            fits("tbptt.x", held * b * dense_width(&cfg))?,
            fits("tbptt.values", held * per_o)?,
            fits("tbptt.classes", held * per_c)?,
        ];
        // Snapshots of dense streams from before token input have no tokens to restore.
        let tokens = match held * self.tokens_per_step() {
            0 => &[][..],
            want => fits("tbptt.tokens", want)?,
        };
        let vocab = cfg.num_embeddings.unwrap_or(0) as f64;
        if let Some(bad) =
            (tokens.iter()).find(|v| !(v.f64() >= 0.0 && v.f64() < vocab && v.f64().fract() == 0.0))
        {
            return Err(RnnError::Format(format!(
                "stream snapshot: tbptt.tokens holds {bad}, not a token of the embedding"
            )));
        }
        self.h_start.copy_from_slice(parts[0]);
        self.c_start.copy_from_slice(parts[1]);
        self.h_end.copy_from_slice(parts[2]);
        self.c_end.copy_from_slice(parts[3]);
        self.x[..parts[4].len()].copy_from_slice(parts[4]);
        self.values[..parts[5].len()].copy_from_slice(parts[5]);
        for (dst, v) in self.classes.iter_mut().zip(parts[6]) {
            *dst = v.f64() as usize;
        }
        for (dst, v) in self.tokens.iter_mut().zip(tokens) {
            *dst = v.f64() as usize;
        }
        self.held = held;
        Ok(())
    }

    /// Starts every stream afresh.
    pub fn reset(&mut self) {
        for v in [
            &mut self.h_start,
            &mut self.c_start,
            &mut self.h_end,
            &mut self.c_end,
        ] {
            v.fill(T::zero());
        }
        self.held = 0;
    }
}

/// Width of one stream's input per step in the window's `x`: `I` for dense inputs, 0 for a
/// model with an embedding (its window holds token ids).
fn dense_width(cfg: &RnnConfig) -> usize {
    if cfg.num_embeddings.is_some() {
        0
    } else {
        cfg.input_size
    }
}
