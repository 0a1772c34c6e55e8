//! PyTorch's `ReduceLROnPlateau`: the learning rate drops by a factor when a validation
//! metric stops improving. Unlike the closed-form [`LrSchedule`](super::LrSchedule)s it
//! is driven by a metric the program measures (once per epoch, say) and keeps state, which
//! a checkpoint carries in its [`Extras`].

use kernels::Float;

use crate::error::{Result, RnnError};
use crate::io::Extras;

/// Whether a lower or a higher metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlateauMode {
    /// Lower is better: a loss (PyTorch's `mode="min"`).
    Min,
    /// Higher is better: an accuracy (`mode="max"`).
    Max,
}

/// How much a metric must beat the best so far to count as an improvement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// By this fraction of the best (`threshold_mode="rel"`): below `best · (1 - r)` under
    /// [`PlateauMode::Min`], above `best · (1 + r)` under [`PlateauMode::Max`].
    Relative(f64),
    /// By this amount (`threshold_mode="abs"`): below `best - a`, or above `best + a`.
    Absolute(f64),
}

/// `ReduceLROnPlateau`: after more than `patience` observations in a row without an
/// improvement, the rate becomes `max(rate · factor, min_lr)` (kept as it was when that
/// would change it by `eps` or less), and the next `cooldown` observations count no bad
/// ones. The rate it manages is the trainer's base rate
/// ([`Trainer::set_base_lr`](crate::trainer::Trainer::set_base_lr)), so it also lowers a
/// warm-up's target.
///
/// ```
/// use rnn_core::schedule::Plateau;
/// // PyTorch: ReduceLROnPlateau(opt, factor=0.5, patience=1) with lr = 0.1.
/// let mut plateau = Plateau::new(0.1, 0.5, 1)?;
/// let rates: Vec<f64> = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.72]
///     .iter()
///     .map(|&loss| plateau.observe(loss))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(rates, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    /// Lower or higher is better.
    pub mode: PlateauMode,
    /// The factor a reduction multiplies the rate by, in `(0, 1)`.
    pub factor: f64,
    /// Observations without improvement tolerated before a reduction.
    pub patience: u64,
    /// What counts as an improvement.
    pub threshold: Threshold,
    /// Observations after a reduction during which none counts as bad.
    pub cooldown: u64,
    /// The lowest rate a reduction goes to.
    pub min_lr: f64,
    /// A reduction smaller than this is skipped.
    pub eps: f64,
    state: PlateauState,
}

/// What a [`Plateau`] has seen: its rate now and the metric history that decides the next
/// reduction. A checkpoint keeps it ([`Plateau::save`]).
#[derive(Clone, Copy, Debug, PartialEq)]
struct PlateauState {
    lr: f64,
    best: f64,
    bad: u64,
    cooldown_left: u64,
}

/// The names under which [`Plateau::save`] keeps its state in a checkpoint's extras.
const KEYS: [&str; 4] = [
    "plateau.lr",
    "plateau.best",
    "plateau.bad",
    "plateau.cooldown_left",
];

impl Plateau {
    /// A plateau schedule starting at rate `lr`, with PyTorch's other defaults:
    /// [`PlateauMode::Min`], [`Threshold::Relative`]`(1e-4)`, no cooldown, `min_lr = 0`,
    /// `eps = 1e-8`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `lr` is finite and positive and `factor` in `(0, 1)`.
    pub fn new(lr: f64, factor: f64, patience: u64) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(RnnError::Config(format!(
                "plateau learning rate = {lr}: it must be finite and positive"
            )));
        }
        if !(factor > 0.0 && factor < 1.0) {
            return Err(RnnError::Config(format!(
                "plateau factor = {factor}: it must be in (0, 1), or no reduction would lower \
                 the rate"
            )));
        }
        Ok(Self {
            mode: PlateauMode::Min,
            factor,
            patience,
            threshold: Threshold::Relative(1e-4),
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
            state: PlateauState {
                lr,
                best: f64::INFINITY,
                bad: 0,
                cooldown_left: 0,
            },
        })
    }

    /// This schedule watching a metric that should rise (an accuracy).
    pub fn maximizing(mut self) -> Self {
        self.mode = PlateauMode::Max;
        self.state.best = f64::NEG_INFINITY;
        self
    }

    /// This schedule with `threshold`.
    ///
    /// # Errors
    /// [`RnnError::Config`] for a threshold that is negative or not finite.
    pub fn with_threshold(mut self, threshold: Threshold) -> Result<Self> {
        let (Threshold::Relative(v) | Threshold::Absolute(v)) = threshold;
        non_negative("plateau threshold", v)?;
        self.threshold = threshold;
        Ok(self)
    }

    /// This schedule resting `cooldown` observations after each reduction.
    pub fn with_cooldown(mut self, cooldown: u64) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// This schedule never going below `min_lr`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `min_lr` is finite and non-negative.
    pub fn with_min_lr(mut self, min_lr: f64) -> Result<Self> {
        non_negative("plateau min_lr", min_lr)?;
        self.min_lr = min_lr;
        Ok(self)
    }

    /// The rate now.
    pub fn lr(&self) -> f64 {
        self.state.lr
    }

    /// The best metric observed so far (infinite before the first).
    pub fn best(&self) -> f64 {
        self.state.best
    }

    /// Takes one observation of the metric (PyTorch's `scheduler.step(metric)`) and returns
    /// the rate from now on.
    ///
    /// # Errors
    /// [`RnnError::NonFiniteInput`] for a NaN or infinite metric (a diverged validation, which
    /// PyTorch would count as one more bad epoch); the state is unchanged then.
    pub fn observe(&mut self, metric: f64) -> Result<f64> {
        finite_metric("plateau metric", metric)?;
        let improves = improves(self.mode, self.threshold, metric, self.state.best);
        let s = &mut self.state;
        if improves {
            s.best = metric;
            s.bad = 0;
        } else {
            s.bad += 1;
        }
        if s.cooldown_left > 0 {
            s.cooldown_left -= 1;
            s.bad = 0;
        }
        if s.bad > self.patience {
            let lower = (s.lr * self.factor).max(self.min_lr);
            if s.lr - lower > self.eps {
                s.lr = lower;
            }
            s.cooldown_left = self.cooldown;
            s.bad = 0;
        }
        Ok(s.lr)
    }

    /// Writes the state (rate, best metric, counters) into `extras`' metadata, exactly, for
    /// [`crate::io::save_checkpoint_with`].
    pub fn save<T: Float>(&self, extras: &mut Extras<T>) {
        let s = self.state;
        let values = [
            s.lr.to_string(),
            s.best.to_string(),
            s.bad.to_string(),
            s.cooldown_left.to_string(),
        ];
        for (key, value) in KEYS.into_iter().zip(values) {
            extras.metadata.insert(key.into(), value);
        }
    }

    /// Restores the state [`Plateau::save`] wrote, so the run goes on as if never stopped
    /// (set the trainer's rate to [`Plateau::lr`] after it). The settings (factor,
    /// patience, ...) stay as this schedule has them.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming an entry that is missing, malformed or out of range;
    /// the state is unchanged then.
    pub fn restore<T: Float>(&mut self, extras: &Extras<T>) -> Result<()> {
        let lr: f64 = extras.value(KEYS[0])?;
        let best: f64 = extras.value(KEYS[1])?;
        let bad: u64 = extras.value(KEYS[2])?;
        let cooldown_left: u64 = extras.value(KEYS[3])?;
        if !(lr.is_finite() && lr > 0.0) || best.is_nan() {
            return Err(RnnError::Format(format!(
                "checkpoint's plateau state (lr {lr}, best {best}) is out of range"
            )));
        }
        self.state = PlateauState {
            lr,
            best,
            bad,
            cooldown_left,
        };
        Ok(())
    }
}

/// Whether `metric` improves on `best` under `mode` and `threshold` (PyTorch's `is_better`,
/// quirks included: under a relative threshold a negative best is beaten only by a margin of
/// its own sign).
pub(super) fn improves(mode: PlateauMode, threshold: Threshold, metric: f64, best: f64) -> bool {
    match (mode, threshold) {
        (PlateauMode::Min, Threshold::Relative(r)) => metric < best * (1.0 - r),
        (PlateauMode::Min, Threshold::Absolute(a)) => metric < best - a,
        (PlateauMode::Max, Threshold::Relative(r)) => metric > best * (1.0 + r),
        (PlateauMode::Max, Threshold::Absolute(a)) => metric > best + a,
    }
}

/// [`RnnError::Config`] naming `what` unless `v` is finite and non-negative.
pub(super) fn non_negative(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(RnnError::Config(format!(
            "{what} = {v}: it must be finite and non-negative"
        )))
    }
}

/// [`RnnError::NonFiniteInput`] naming `what` for a NaN or infinite metric (a diverged
/// validation), which no rule that follows a metric can take.
pub(super) fn finite_metric(what: &'static str, metric: f64) -> Result<()> {
    if metric.is_finite() {
        Ok(())
    } else {
        Err(RnnError::NonFiniteInput {
            what,
            index: 0,
            value: metric,
        })
    }
}
