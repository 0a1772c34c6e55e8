//! Dropout between stacked layers: PyTorch's `dropout` argument of `nn.RNN` / `nn.LSTM` /
//! `nn.GRU`. In training, the outputs of every layer but the last are zeroed with
//! probability `p` and the rest scaled by `1 / (1 - p)` before the layer above reads them;
//! the head reads the top layer undropped, and inference ([`crate::network::forward`],
//! [`crate::predict::Predictor`]) never drops.
//!
//! Which elements a pass drops is a function of the seed, the layer, the step, the sequence
//! and the unit alone (`kernels::dropout`): the backward pass recomputes the mask, and the
//! result is the same for any thread count, time chunking or checkpointing. PyTorch draws its
//! masks from its own generator, so a run matches PyTorch's in distribution, not bitwise.

use kernels::Float;
use kernels::dropout::{DropMask, mix64};

use crate::config::RnnConfig;
use crate::error::{Result, RnnError};

/// The dropout of one pass (or, through [`Dropout::for_step`], of a run of training steps).
///
/// ```
/// use rnn_core::dropout::Dropout;
/// let d = Dropout::new(0.25, 7).unwrap();
/// assert_eq!(d.p(), 0.25);
/// assert_ne!(d.for_step(1), d.for_step(2)); // a new mask every step
/// assert!(Dropout::new(1.0, 7).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f64,
    seed: u64,
}

impl Dropout {
    /// Drops each element between layers with probability `p`, masks drawn from `seed`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `0 ≤ p < 1` (PyTorch's range; `p = 1` would leave the
    /// layers above nothing to learn from).
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(RnnError::Config(format!(
                "dropout probability {p} is not in [0, 1)"
            )));
        }
        Ok(Self { p, seed })
    }

    /// The probability of dropping an element.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The dropout of training step `step`: the same probability, masks from a seed of its
    /// own (what [`crate::trainer::Trainer`] uses, with its optimizer's step count, so a
    /// resumed run draws the masks it would have drawn).
    pub fn for_step(&self, step: u64) -> Self {
        Self {
            p: self.p,
            seed: mix64(self.seed ^ mix64(step)),
        }
    }

    /// The dropout of micro-batch `m` of training step `step` (gradient accumulation,
    /// [`crate::trainer::Trainer::accumulate`]): the step's own masks ([`Dropout::for_step`])
    /// for the first micro-batch, fresh ones for each further one, so that no two
    /// micro-batches of an update drop the same units of their rows.
    ///
    /// ```
    /// use rnn_core::dropout::Dropout;
    /// let d = Dropout::new(0.25, 7).unwrap();
    /// assert_eq!(d.for_micro_batch(3, 0), d.for_step(3));
    /// assert_ne!(d.for_micro_batch(3, 1), d.for_step(3));
    /// assert_ne!(d.for_micro_batch(3, 1), d.for_micro_batch(3, 2));
    /// ```
    pub fn for_micro_batch(&self, step: u64, m: u64) -> Self {
        let of_step = self.for_step(step);
        if m == 0 {
            return of_step;
        }
        Self {
            p: self.p,
            seed: mix64(of_step.seed ^ mix64(m)),
        }
    }

    /// Whether a pass of `config` drops anything: `p > 0` and more than one layer.
    pub(crate) fn applies_to(&self, config: &RnnConfig) -> bool {
        self.p > 0.0 && config.num_layers > 1
    }

    /// The mask of layer `k`'s outputs, rows numbered `t · B + b` from the pass's first step.
    pub(crate) fn layer_mask<T: Float>(&self, k: usize) -> DropMask<T> {
        DropMask::new(self.p, mix64(self.seed.wrapping_add(k as u64)))
    }
}
