//! Running a trained model one step at a time, carrying its state: sampling text,
//! autoregressive forecasting, online inference.

use faer::Par;
use kernels::Float;

use crate::batch::{Batch, Target};
use crate::config::RnnConfig;
use crate::error::{Result, RnnError, shape};
use crate::network::forward;
use crate::params::Layout;
use crate::workspace::Workspace;

/// A model's forward pass, one step of `B` sequences at a time.
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
    y: Vec<T>,
}

impl<'a, T: Float> Predictor<'a, T> {
    /// A predictor of `batch` sequences from a zero state.
    ///
    /// # Errors
    /// An invalid `config`, `batch = 0`, `params` of the wrong length or with a NaN or
    /// infinity ([`RnnError::NonFiniteInput`]).
    pub fn new(config: RnnConfig, params: &'a [T], batch: usize) -> Result<Self> {
        let layout = Layout::of_params(&config, params)?;
        if batch == 0 {
            return Err(RnnError::Empty {
                what: "batch size B",
            });
        }
        let state = config.num_layers * batch * config.hidden_size;
        Ok(Self {
            config,
            layout,
            params,
            batch,
            ws: Workspace::new(),
            h: vec![T::zero(); state],
            c: vec![
                T::zero();
                if config.cell.has_cell_state() {
                    state
                } else {
                    0
                }
            ],
            y: vec![T::zero(); batch * config.output_size],
        })
    }

    /// Feeds one step `x` `[B, I]` and returns the head outputs `[B, O]`.
    ///
    /// # Errors
    /// A wrong length or non-finite value in `x`.
    pub fn step(&mut self, x: &[T]) -> Result<&[T]> {
        let (b, h) = (self.batch, self.config.hidden_size);
        let batch = Batch {
            h0: Some(&self.h),
            c0: self.config.cell.has_cell_state().then_some(&self.c[..]),
            ..Batch::new(1, b, x, Target::Values(&[]))
        };
        let want = b * self.config.input_size;
        if x.len() != want {
            return Err(shape(
                "x",
                format!("[B={b}, I={}]", self.config.input_size),
                x.len(),
            ));
        }
        crate::batch::finite("x", x)?;
        forward(
            &self.config,
            &self.layout,
            self.params,
            &mut self.ws,
            &batch,
            true,
            Par::Seq,
        );
        for (k, layer) in self.ws.layers.iter().enumerate() {
            let dst = k * b * h..(k + 1) * b * h;
            self.h[dst.clone()].copy_from_slice(&layer.hs[b * h..2 * b * h]);
            if !self.c.is_empty() {
                self.c[dst].copy_from_slice(&layer.cs[b * h..2 * b * h]);
            }
        }
        self.y.copy_from_slice(&self.ws.y);
        Ok(&self.y)
    }

    /// `[L, B, H]`: the current hidden state.
    pub fn state(&self) -> &[T] {
        &self.h
    }

    /// Sets the hidden state (and an LSTM's cell state) `[L, B, H]`, e.g. from a
    /// [`crate::tbptt::Tbptt`] stream.
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
