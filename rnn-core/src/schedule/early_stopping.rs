//! Early stopping on a validation metric: Keras' `EarlyStopping` (and Lightning's), the
//! companion of [`Plateau`](super::Plateau) that ends training instead of lowering the rate.
//! It tells the program when a metric reached a new best (the weights to keep, Keras'
//! `restore_best_weights`) and when it has not for `patience` observations in a row (stop);
//! a checkpoint carries its state in its [`Extras`].

use kernels::Float;

use super::{PlateauMode, Threshold};
use crate::error::{Result, RnnError};
use crate::io::Extras;

/// What an observation means for the run ([`EarlyStopping::observe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: the weights now are the ones to keep.
    Improved,
    /// No new best; training goes on for at most `left` more observations without one.
    Wait {
        /// Observations without a new best still tolerated.
        left: u64,
    },
    /// `patience` observations in a row without a new best: stop (and restore the best
    /// weights, when kept).
    Stop,
}

/// Stops training when a metric has not improved for `patience` observations in a row:
/// Keras' `EarlyStopping(patience, min_delta, mode)`, its first observation always a new
/// best, and an improvement a metric below `best - min_delta` ([`Threshold::Absolute`],
/// lower being better; above `best + min_delta` when [`EarlyStopping::maximizing`]).
/// [`Threshold::Relative`] asks for a share of the best instead, as [`super::Plateau`] can.
///
/// ```
/// use rnn_core::schedule::{EarlyStopping, Verdict};
/// // Keras: EarlyStopping(patience=2, min_delta=0.01).
/// let mut stop = EarlyStopping::new(2).with_min_delta(0.01)?;
/// let verdicts: Vec<Verdict> = [1.0, 0.8, 0.795, 0.7, 0.71, 0.705]
///     .iter()
///     .map(|&loss| stop.observe(loss))
///     .collect::<Result<_, _>>()?;
/// use Verdict::*;
/// assert_eq!(verdicts, [Improved, Improved, Wait { left: 1 }, Improved, Wait { left: 1 }, Stop]);
/// assert_eq!(stop.best(), 0.7);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Lower or higher is better.
    pub mode: PlateauMode,
    /// Observations without a new best before [`Verdict::Stop`] (0: the first
    /// observation without one stops).
    pub patience: u64,
    /// What counts as an improvement.
    pub threshold: Threshold,
    best: f64,
    waited: u64,
}

/// The names under which [`EarlyStopping::save`] keeps its state in a checkpoint's extras.
const KEYS: [&str; 2] = ["early_stopping.best", "early_stopping.waited"];

impl EarlyStopping {
    /// Stops after `patience` observations in a row without a lower metric (Keras'
    /// defaults otherwise: `min_delta = 0`, `mode="min"`).
    pub fn new(patience: u64) -> Self {
        Self {
            mode: PlateauMode::Min,
            patience,
            threshold: Threshold::Absolute(0.0),
            best: f64::INFINITY,
            waited: 0,
        }
    }

    /// This rule watching a metric that should rise (an accuracy).
    pub fn maximizing(mut self) -> Self {
        self.mode = PlateauMode::Max;
        self.best = f64::NEG_INFINITY;
        self
    }

    /// This rule counting only improvements by more than `min_delta` (Keras' `min_delta`).
    ///
    /// # Errors
    /// [`RnnError::Config`] for a `min_delta` that is negative or not finite.
    pub fn with_min_delta(self, min_delta: f64) -> Result<Self> {
        self.with_threshold(Threshold::Absolute(min_delta))
    }

    /// This rule with `threshold` (absolute, as `min_delta`, or relative to the best).
    ///
    /// # Errors
    /// [`RnnError::Config`] for a threshold that is negative or not finite.
    pub fn with_threshold(mut self, threshold: Threshold) -> Result<Self> {
        let (Threshold::Relative(v) | Threshold::Absolute(v)) = threshold;
        super::plateau::non_negative("early-stopping threshold", v)?;
        self.threshold = threshold;
        Ok(self)
    }

    /// The best metric observed so far (infinite before the first).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Observations since the last new best.
    pub fn waited(&self) -> u64 {
        self.waited
    }

    /// Takes one observation of the metric (once per epoch, say).
    ///
    /// # Errors
    /// [`RnnError::NonFiniteInput`] for a NaN or infinite metric (a diverged validation:
    /// the program decides, where Lightning's `check_finite` stops); the state is unchanged
    /// then.
    pub fn observe(&mut self, metric: f64) -> Result<Verdict> {
        super::plateau::finite_metric("early-stopping metric", metric)?;
        if super::plateau::improves(self.mode, self.threshold, metric, self.best) {
            self.best = metric;
            self.waited = 0;
            return Ok(Verdict::Improved);
        }
        self.waited += 1;
        Ok(if self.waited >= self.patience {
            Verdict::Stop
        } else {
            Verdict::Wait {
                left: self.patience - self.waited,
            }
        })
    }

    /// Writes the state (best metric, observations since) into `extras`' metadata, exactly,
    /// for [`crate::io::save_checkpoint_with`].
    pub fn save<T: Float>(&self, extras: &mut Extras<T>) {
        let values = [self.best.to_string(), self.waited.to_string()];
        for (key, value) in KEYS.into_iter().zip(values) {
            extras.metadata.insert(key.into(), value);
        }
    }

    /// Restores the state [`EarlyStopping::save`] wrote; the settings stay as this rule has
    /// them.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming an entry that is missing, malformed or out of range; the
    /// state is unchanged then.
    pub fn restore<T: Float>(&mut self, extras: &Extras<T>) -> Result<()> {
        let best: f64 = extras.value(KEYS[0])?;
        let waited: u64 = extras.value(KEYS[1])?;
        if best.is_nan() {
            return Err(RnnError::Format(format!(
                "checkpoint's early-stopping best metric is {best}"
            )));
        }
        (self.best, self.waited) = (best, waited);
        Ok(())
    }
}
