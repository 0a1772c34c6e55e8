//! Running a trained model one step (or a run of steps) at a time, carrying its state:
//! sampling text, autoregressive forecasting, online inference.

use faer::Par;
use kernels::Float;

use crate::batch::{Batch, Target};
use crate::config::RnnConfig;
use crate::error::{Result, RnnError, filled_vec, shape};
use crate::network::forward;
use crate::params::Layout;
use crate::workspace::Workspace;

/// A model's forward pass, one step of `B` sequences at a time ([`Predictor::step`]) or
/// many ([`Predictor::run`]), carrying the state between calls.
///
/// ```
/// use rnn_core::{config::RnnConfig, params::init_params, predict::Predictor};
/// let cfg = RnnConfig::gru(2, 8, 3);
/// let params: Vec<f64> = init_params(&cfg, 0);
/// let mut p = Predictor::new(cfg, &params, 1)?;
/// let y1 = p.step(&[0.5, -0.5])?.to_vec();
/// let y2 = p.step(&[0.5, -0.5])?.to_vec(); // same input, new state: new output
/// assert_eq!(y1.len(), 3);
/// assert_ne!(y1, y2);
/// p.reset();
/// assert_eq!(p.step(&[0.5, -0.5])?, &y1[..]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Predictor<'a, T: Float> {
    config: RnnConfig,
    layout: Layout,
    params: &'a [T],
    batch: usize,
    ws: Workspace<T>,
    /// `[L, B, H]` and, for an LSTM, the cell state.
    h: Vec<T>,
    c: Vec<T>,
}

impl<'a, T: Float> Predictor<'a, T> {
    /// A predictor of `batch` sequences from a zero state.
    ///
    /// # Errors
    /// An invalid `config`, `batch = 0`, `params` of the wrong length or with a NaN or
    /// infinity ([`RnnError::NonFiniteInput`]); [`RnnError::Config`] for a bidirectional
    /// model, whose outputs need whole sequences (run [`crate::network::forward`] on them);
    /// [`RnnError::OutOfMemory`] when the states of `batch` sequences do not fit in memory.
    pub fn new(config: RnnConfig, params: &'a [T], batch: usize) -> Result<Self> {
        let layout = Layout::of_params(&config, params)?;
        if config.bidirectional {
            return Err(RnnError::Config(
                "a bidirectional model's outputs need whole sequences: it cannot run a step \
                 at a time (run rnn_core::network::forward on whole sequences)"
                    .into(),
            ));
        }
        if batch == 0 {
            return Err(RnnError::Empty {
                what: "batch size B",
            });
        }
        // With projections the state `h` is `P` wide, the cell state `H`.
        let (l, h) = (config.num_layers, config.hidden_size);
        let cell_state = if config.cell.has_cell_state() { h } else { 0 };
        Ok(Self {
            config,
            layout,
            params,
            batch,
            ws: Workspace::new(),
            h: filled_vec(&[l, batch, config.state_size()], T::zero(), "the states")?,
            c: filled_vec(&[l, batch, cell_state], T::zero(), "the cell states")?,
        })
    }

    /// Feeds one step `x` `[B, I]` and returns the head outputs `[B, O]`.
    ///
    /// # Errors
    /// A wrong length or non-finite value in `x`; the state is left as it was.
    pub fn step(&mut self, x: &[T]) -> Result<&[T]> {
        self.run(x, 1)
    }

    /// Feeds `steps` steps at once, `x` `[steps, B, I]`, and returns the head outputs of
    /// every step `[steps, B, O]`; the state moves to the last step's. Equal to `steps`
    /// calls of [`Predictor::step`] (within rounding: the input projection of all steps is one
    /// matrix product), and faster: a forecaster warms up on a long history this way, then
    /// continues a step at a time.
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::init_params, predict::Predictor};
    /// let cfg = RnnConfig::lstm(1, 8, 1);
    /// let params: Vec<f64> = init_params(&cfg, 0);
    /// let history = [0.1, 0.4, 0.9, 0.4, 0.1];
    /// let mut whole = Predictor::new(cfg, &params, 1)?;
    /// let ys = whole.run(&history, 5)?.to_vec();
    /// let mut stepped = Predictor::new(cfg, &params, 1)?;
    /// for (x, y) in history.iter().zip(&ys) {
    ///     assert!((stepped.step(&[*x])?[0] - y).abs() < 1e-12);
    /// }
    /// assert!(whole.state().iter().zip(stepped.state()).all(|(a, b)| (a - b).abs() < 1e-12));
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// `steps = 0`, a wrong length or a non-finite value in `x`; the state is left as it was.
    pub fn run(&mut self, x: &[T], steps: usize) -> Result<&[T]> {
        self.run_batch(Batch::new(steps, self.batch, x, Target::None))
    }

    /// [`Predictor::step`] for a model with an embedding: one token id per sequence `[B]`.
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::init_params, predict::Predictor};
    /// let cfg = RnnConfig::gru(4, 8, 3).embedding(3);
    /// let params: Vec<f32> = init_params(&cfg, 0);
    /// let mut whole = Predictor::new(cfg, &params, 1)?;
    /// let ys = whole.run_tokens(&[2, 0, 1], 3)?.to_vec();
    /// let mut stepped = Predictor::new(cfg, &params, 1)?;
    /// for (token, y) in [2, 0, 1].iter().zip(ys.chunks(3)) {
    ///     let got = stepped.step_tokens(&[*token])?;
    ///     assert!(got.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-6));
    /// }
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// A wrong length, or a token past the embedding ([`crate::RnnError::TokenOutOfRange`]);
    /// the state is left as it was.
    pub fn step_tokens(&mut self, tokens: &[usize]) -> Result<&[T]> {
        self.run_tokens(tokens, 1)
    }

    /// [`Predictor::run`] for a model with an embedding: token ids `[steps, B]`.
    ///
    /// # Errors
    /// As [`Predictor::step_tokens`], and `steps = 0`.
    pub fn run_tokens(&mut self, tokens: &[usize], steps: usize) -> Result<&[T]> {
        self.run_batch(Batch::of_tokens(steps, self.batch, tokens, Target::None))
    }

    /// Runs `input` (dense or tokens) from the current state and moves the state to its end.
    fn run_batch(&mut self, input: Batch<'_, T>) -> Result<&[T]> {
        let (b, steps) = (self.batch, input.seq_len);
        let batch = Batch {
            h0: Some(&self.h),
            c0: self.config.cell.has_cell_state().then_some(&self.c[..]),
            ..input
        };
        forward(
            &self.config,
            &self.layout,
            self.params,
            &mut self.ws,
            &batch,
            false,
            Par::Seq,
        )?;
        self.ws
            .states_at(&self.config, b, steps, &mut self.h, &mut self.c);
        Ok(&self.ws.y)
    }

    /// `[L, B, H]` (`[L, B, P]` with projections): the current hidden state.
    pub fn state(&self) -> &[T] {
        &self.h
    }

    /// `[L, B, H]`: the current LSTM cell state (empty for other cells).
    pub fn cell_state(&self) -> &[T] {
        &self.c
    }

    /// Sets the hidden state `[L, B, H]` (`[L, B, P]` with projections) and an LSTM's cell
    /// state `[L, B, H]` (empty for other cells), e.g. from a [`crate::tbptt::Tbptt`]
    /// stream.
    ///
    /// # Errors
    /// A wrong length.
    pub fn set_state(&mut self, h: &[T], c: &[T]) -> Result<()> {
        if h.len() != self.h.len() {
            return Err(shape("h", self.h.len(), h.len()));
        }
        if c.len() != self.c.len() {
            return Err(shape("c", self.c.len(), c.len()));
        }
        self.h.copy_from_slice(h);
        self.c.copy_from_slice(c);
        Ok(())
    }

    /// Back to the zero state.
    pub fn reset(&mut self) {
        self.h.fill(T::zero());
        self.c.fill(T::zero());
    }
}
