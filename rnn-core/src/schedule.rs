//! Learning-rate schedules: PyTorch's `torch.optim.lr_scheduler` rules, stepped once per
//! update, as closed forms of the update count (the one-cycle policy, [`OneCycle`], gives
//! the momentum of each update too); and [`Plateau`], which follows a
//! validation metric instead, as [`EarlyStopping`] does to end a run.
//!
//! A schedule gives the rate of update `n` (the updates applied before it, which a
//! checkpoint keeps as the optimizer's step count) from the base rate, so a resumed run
//! continues the schedule exactly. [`Trainer::with_lr_schedule`](crate::trainer::Trainer::with_lr_schedule)
//! applies one before every update.
//!
//! ```
//! use rnn_core::schedule::{Decay, LrSchedule};
//! // Linear warm-up from 0.2 of the rate over 3 updates, then cosine decay to 0 over 6
//! // (PyTorch: SequentialLR([LinearLR(opt, 0.2, total_iters=3), CosineAnnealingLR(opt, 6)],
//! // milestones=[3])).
//! let s = LrSchedule::new(Decay::cosine(6, 0.0)?).with_warmup(3, 0.2)?;
//! let rates: Vec<f64> = (0..7).map(|n| s.rate(0.1, n)).collect();
//! assert!((rates[0] - 0.02).abs() < 1e-15 && (rates[3] - 0.1).abs() < 1e-15);
//! assert!((rates[6] - 0.05).abs() < 1e-15); // half-way down the cosine
//! # Ok::<(), rnn_core::error::RnnError>(())
//! ```

use std::f64::consts::PI;

use crate::error::{Result, RnnError};

mod early_stopping;
mod one_cycle;
mod plateau;
pub use early_stopping::{EarlyStopping, Verdict};
pub use one_cycle::{Anneal, MomentumCycle, OneCycle};
pub use plateau::{Plateau, PlateauMode, Threshold};

/// How the rate decays after any warm-up, as a function of the updates since its start.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Decay {
    /// The base rate throughout (PyTorch: no scheduler).
    Constant,
    /// `base · gamma^⌊n / every⌋` (`StepLR(step_size=every, gamma)`).
    Step {
        /// Updates between decays (positive).
        every: u64,
        /// The factor of each decay (finite and positive).
        gamma: f64,
    },
    /// `base · gamma^n` (`ExponentialLR(gamma)`).
    Exponential {
        /// The factor per update (finite and positive).
        gamma: f64,
    },
    /// `eta_min + (base - eta_min) (1 + cos(π n / t_max)) / 2` (`CosineAnnealingLR(T_max,
    /// eta_min)`): down to `eta_min` at `t_max`, and back up after it, as PyTorch's.
    Cosine {
        /// Updates from the base rate to `eta_min` (positive).
        t_max: u64,
        /// The lowest rate (finite and non-negative).
        eta_min: f64,
    },
    /// Cosine decay restarted at the base rate after every cycle, cycle `i` lasting
    /// `t_0 · t_mult^i` updates: `eta_min + (base - eta_min) (1 + cos(π t_cur / t_i)) / 2`,
    /// `t_cur` the updates into the current cycle and `t_i` its length
    /// (`CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`, SGDR: Loshchilov and Hutter,
    /// 2017).
    CosineRestarts {
        /// The first cycle's updates (positive).
        t_0: u64,
        /// The factor each cycle's length grows by (positive; 1 repeats `t_0`).
        t_mult: u64,
        /// The lowest rate (finite and non-negative).
        eta_min: f64,
    },
    /// The one-cycle policy with the base rate as its peak, which also moves the
    /// optimizer's momentum ([`OneCycle`], `OneCycleLR`).
    OneCycle(OneCycle),
}

impl Decay {
    /// [`Decay::Step`].
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `every > 0` and `gamma` is finite and positive.
    pub fn step(every: u64, gamma: f64) -> Result<Self> {
        positive_count("step decay every", every)?;
        positive_factor("step decay gamma", gamma)?;
        Ok(Self::Step { every, gamma })
    }

    /// [`Decay::Exponential`].
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `gamma` is finite and positive.
    pub fn exponential(gamma: f64) -> Result<Self> {
        positive_factor("exponential decay gamma", gamma)?;
        Ok(Self::Exponential { gamma })
    }

    /// [`Decay::Cosine`].
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `t_max > 0` and `eta_min` is finite and non-negative.
    pub fn cosine(t_max: u64, eta_min: f64) -> Result<Self> {
        positive_count("cosine t_max", t_max)?;
        lowest_rate("cosine eta_min", eta_min)?;
        Ok(Self::Cosine { t_max, eta_min })
    }

    /// [`Decay::CosineRestarts`].
    ///
    /// ```
    /// use rnn_core::schedule::Decay;
    /// // Cycles of 2, 4, 8, ... updates, each from 0.1 down towards 0.
    /// let d = Decay::cosine_restarts(2, 2, 0.0)?;
    /// let rates: Vec<f64> = (0..7).map(|n| rnn_core::schedule::LrSchedule::new(d).rate(0.1, n)).collect();
    /// assert_eq!([rates[0], rates[2], rates[6]], [0.1, 0.1, 0.1]); // cycles start at 0, 2, 6
    /// assert!((rates[1] - 0.05).abs() < 1e-15 && (rates[4] - 0.05).abs() < 1e-15);
    /// # Ok::<(), rnn_core::error::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `t_0 > 0`, `t_mult > 0` and `eta_min` is finite and
    /// non-negative.
    pub fn cosine_restarts(t_0: u64, t_mult: u64, eta_min: f64) -> Result<Self> {
        positive_count("cosine restarts t_0", t_0)?;
        positive_count("cosine restarts t_mult", t_mult)?;
        lowest_rate("cosine restarts eta_min", eta_min)?;
        Ok(Self::CosineRestarts {
            t_0,
            t_mult,
            eta_min,
        })
    }

    /// The rate `n` updates into the decay, from `base`.
    fn rate(self, base: f64, n: u64) -> f64 {
        match self {
            Self::Constant => base,
            Self::Step { every, gamma } => base * gamma.powf((n / every) as f64),
            Self::Exponential { gamma } => base * gamma.powf(n as f64),
            Self::Cosine { t_max, eta_min } => cosine(base, eta_min, n, t_max),
            Self::CosineRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                // The cycle update n falls in, as PyTorch steps through them.
                let (mut t_cur, mut t_i) = (n, t_0);
                if t_mult == 1 {
                    t_cur %= t_0;
                }
                while t_cur >= t_i {
                    t_cur -= t_i;
                    // (Cycles grow geometrically: at most 64 turns before t_i saturates.)
                    t_i = t_i.saturating_mul(t_mult);
                }
                cosine(base, eta_min, t_cur, t_i)
            }
            Self::OneCycle(cycle) => cycle.rate(base, n),
        }
    }

    /// The momentum `n` updates into the decay, for a decay that moves it.
    fn momentum(self, n: u64) -> Option<f64> {
        match self {
            Self::OneCycle(cycle) => cycle.momentum(n),
            _ => None,
        }
    }
}

/// `eta_min + (base - eta_min) (1 + cos(π n / t)) / 2`, in PyTorch's order of operations.
fn cosine(base: f64, eta_min: f64, n: u64, t: u64) -> f64 {
    let phase = PI * n as f64 / t as f64;
    eta_min + (base - eta_min) * (1.0 + phase.cos()) / 2.0
}

/// A linear warm-up: the rate climbs from `start_factor · base` to `base` over `steps`
/// updates (`LinearLR(start_factor, end_factor=1, total_iters=steps)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    /// Updates the warm-up lasts.
    pub steps: u64,
    /// The factor on the base rate at the first update, in `(0, 1]`.
    pub start_factor: f64,
}

/// A schedule: an optional [`Warmup`], then a [`Decay`] counted from the warm-up's end
/// (PyTorch's `SequentialLR` with one milestone).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The warm-up, if any.
    pub warmup: Option<Warmup>,
    /// The decay after it.
    pub decay: Decay,
}

impl LrSchedule {
    /// `decay` from the first update, with no warm-up.
    pub fn new(decay: Decay) -> Self {
        Self {
            warmup: None,
            decay,
        }
    }

    /// This schedule after a linear warm-up of `steps` updates from `start_factor` of the
    /// base rate.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `steps > 0` and `0 < start_factor <= 1`.
    pub fn with_warmup(self, steps: u64, start_factor: f64) -> Result<Self> {
        positive_count("warm-up steps", steps)?;
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(RnnError::Config(format!(
                "warm-up start factor = {start_factor}: it must be in (0, 1]"
            )));
        }
        Ok(Self {
            warmup: Some(Warmup {
                steps,
                start_factor,
            }),
            ..self
        })
    }

    /// The rate of update `n` (counted from 0) for the base rate `base`.
    pub fn rate(&self, base: f64, n: u64) -> f64 {
        match self.warmup {
            Some(Warmup {
                steps,
                start_factor,
            }) if n < steps => {
                base * (start_factor + (1.0 - start_factor) * n as f64 / steps as f64)
            }
            Some(Warmup { steps, .. }) => self.decay.rate(base, n - steps),
            None => self.decay.rate(base, n),
        }
    }

    /// The momentum of update `n` (counted from 0), for a schedule that moves it
    /// ([`Decay::OneCycle`]): SGD's and RMSprop's `momentum`, Adam's `beta1`
    /// ([`OptimizerKind::set_momentum`](crate::optim::OptimizerKind::set_momentum)). A
    /// warm-up holds the decay's first momentum. `None` for a schedule that leaves the
    /// momentum alone.
    pub fn momentum(&self, n: u64) -> Option<f64> {
        let since_warmup = self.warmup.map_or(0, |w| w.steps);
        self.decay.momentum(n.saturating_sub(since_warmup))
    }
}

fn positive_count(what: &str, n: u64) -> Result<()> {
    if n == 0 {
        return Err(RnnError::Config(format!("{what} = 0: it must be positive")));
    }
    Ok(())
}

fn lowest_rate(what: &str, eta_min: f64) -> Result<()> {
    if !(eta_min.is_finite() && eta_min >= 0.0) {
        return Err(RnnError::Config(format!(
            "{what} = {eta_min}: it must be finite and non-negative"
        )));
    }
    Ok(())
}

fn positive_factor(what: &str, gamma: f64) -> Result<()> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(RnnError::Config(format!(
            "{what} = {gamma}: it must be finite and positive"
        )));
    }
    Ok(())
}
