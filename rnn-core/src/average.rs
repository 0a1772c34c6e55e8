//! A running average of a model's weights, PyTorch's `torch.optim.swa_utils.AveragedModel`:
//! an exponential moving average (`get_ema_multi_avg_fn(decay)`) or the plain mean of every
//! set of weights it was given (stochastic weight averaging, SWA's default). The average often
//! generalises better than the last weights (AWD-LSTM's averaged SGD; an EMA in forecasting):
//! evaluate it, save it, predict with it.
//!
//! ```
//! use rnn_core::average::WeightAverage;
//! use rnn_core::prelude::*;
//! let cfg = RnnConfig::gru(1, 8, 1);
//! let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-2), 0)?;
//! let mut ema = WeightAverage::ema(0.9)?;
//! let (x, y) = (vec![0.5f32; 6 * 2], vec![0.25f32; 6 * 2]); // T = 6, B = 2
//! let batch = Batch::new(6, 2, &x, Target::Values(&y));
//! for _ in 0..20 {
//!     tr.step(&batch)?;
//!     ema.update(&tr.params)?;
//! }
//! // Score the average: swap it in, evaluate, swap back.
//! ema.swap(&mut tr.params)?;
//! let averaged_loss = tr.evaluate(&batch)?;
//! ema.swap(&mut tr.params)?;
//! assert!(averaged_loss.is_finite() && ema.count() == 20);
//! # Ok::<(), RnnError>(())
//! ```

use kernels::Float;
use kernels::aligned::AlignedVec;

use crate::batch::finite;
use crate::error::{Result, RnnError, out_of_memory, shape};
use crate::io::Extras;

/// How [`WeightAverage`] weighs the weights it is given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Averaging {
    /// `avg ← decay · avg + (1 - decay) · w`, from the first weights (PyTorch's
    /// `get_ema_multi_avg_fn(decay)`).
    Ema {
        /// In `[0, 1]`: 0 keeps the last weights, 1 the first.
        decay: f64,
    },
    /// The mean of every set of weights given (`avg ← avg + (w - avg) / (n + 1)`, PyTorch's
    /// default `AveragedModel`, as in SWA). As in PyTorch, `1 / (n + 1)` is rounded to f32
    /// before it weighs f64 weights (a relative 1e-8 from the exact mean).
    Uniform,
}

impl Averaging {
    /// The name a checkpoint records: `ema:DECAY` or `uniform`.
    fn name(self) -> String {
        match self {
            Self::Ema { decay } => format!("ema:{decay}"),
            Self::Uniform => "uniform".into(),
        }
    }
}

/// Checkpoint keys of a [`WeightAverage`] (`Extras`).
const PARAMS: &str = "average.params";
const COUNT: &str = "average.count";
const KIND: &str = "average.kind";

/// A running average of a model's parameters ([module docs](self)).
#[derive(Clone, Debug)]
pub struct WeightAverage<T> {
    averaging: Averaging,
    /// The average, empty before the first update.
    params: AlignedVec<T>,
    /// How many sets of weights it has seen (PyTorch's `n_averaged`).
    count: u64,
}

impl<T: Float> WeightAverage<T> {
    /// An exponential moving average with `decay` (PyTorch's default is 0.999).
    ///
    /// # Errors
    /// [`RnnError::Config`] for a decay outside `[0, 1]`.
    pub fn ema(decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(RnnError::Config(format!(
                "an EMA's decay must be in [0, 1], got {decay}"
            )));
        }
        Ok(Self::new(Averaging::Ema { decay }))
    }

    /// The mean of every set of weights given (SWA).
    pub fn uniform() -> Self {
        Self::new(Averaging::Uniform)
    }

    fn new(averaging: Averaging) -> Self {
        Self {
            averaging,
            params: AlignedVec::default(),
            count: 0,
        }
    }

    /// How the weights are weighed.
    pub fn averaging(&self) -> Averaging {
        self.averaging
    }

    /// How many sets of weights the average has seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The average (empty before the first [`WeightAverage::update`]).
    pub fn params(&self) -> &[T] {
        &self.params
    }

    /// Takes `params` into the average (PyTorch's `update_parameters`): the first call
    /// copies them, later ones move the average towards them as its [`Averaging`] says,
    /// `avg + w · (params - avg)` with PyTorch's `lerp` and its weight `w` (`1 - decay`, or
    /// `1 / (n + 1)`).
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] if `params` is not as long as the weights before;
    /// [`RnnError::NonFiniteInput`] if it holds a NaN or infinity;
    /// [`RnnError::OutOfMemory`] when the first call's copy cannot be allocated. The average
    /// is unchanged then.
    pub fn update(&mut self, params: &[T]) -> Result<()> {
        finite("weights to average", params)?;
        if self.count == 0 {
            (self.params.try_reserve(params.len())).map_err(out_of_memory("the weight average"))?;
            self.params.resize(params.len());
            self.params.copy_from_slice(params);
        } else {
            self.check_len(params.len())?;
            let weight = match self.averaging {
                Averaging::Ema { decay } => 1.0 - decay,
                // PyTorch counts in an integer tensor, whose reciprocal is float32 even for
                // float64 weights: rounded so, the averages are its own bit for bit.
                Averaging::Uniform => f64::from(1.0 / (self.count + 1) as f32),
            };
            kernels::reduce::lerp(&mut self.params, params, T::of(weight));
        }
        self.count += 1;
        Ok(())
    }

    /// Swaps the average with `params` (a trainer's, say): evaluate or save with the average
    /// in place, then swap back.
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] if the lengths differ (or nothing was averaged yet).
    pub fn swap(&mut self, params: &mut [T]) -> Result<()> {
        self.check_len(params.len())?;
        self.params.swap_with_slice(params);
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        match self.params.len() == len {
            true => Ok(()),
            false => Err(shape("weights to average", self.params.len(), len)),
        }
    }

    /// Writes the average into a checkpoint's `extras` (tensor `average.params`, metadata
    /// `average.count` and `average.kind`), so a resumed run averages on as if never stopped.
    pub fn save(&self, extras: &mut Extras<T>) {
        extras.tensors.retain(|(name, _)| name != PARAMS);
        extras.tensors.push((PARAMS.into(), self.params.to_vec()));
        extras.metadata.insert(COUNT.into(), self.count.to_string());
        extras.metadata.insert(KIND.into(), self.averaging.name());
    }

    /// Takes the average [`WeightAverage::save`] wrote, in place of this one's.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming an entry that is missing, malformed or inconsistent (an
    /// average of another kind, weights for no count or none for some, a NaN);
    /// [`RnnError::OutOfMemory`] when its copy cannot be allocated; nothing changes then.
    pub fn restore(&mut self, extras: &Extras<T>) -> Result<()> {
        let count: u64 = extras.value(COUNT)?;
        let kind: String = extras.value(KIND)?;
        let params = extras.tensor(PARAMS)?;
        if kind != self.averaging.name() {
            return Err(RnnError::Format(format!(
                "checkpoint's weight average is {kind}, this one {}",
                self.averaging.name()
            )));
        }
        if (count == 0) != params.is_empty() || finite("average.params", params).is_err() {
            return Err(RnnError::Format(format!(
                "checkpoint's weight average ({count} averaged, {} weights) is inconsistent \
                 or not finite",
                params.len()
            )));
        }
        (self.params.try_reserve(params.len())).map_err(out_of_memory("the weight average"))?;
        self.params.resize(params.len());
        self.params.copy_from_slice(params);
        self.count = count;
        Ok(())
    }
}
