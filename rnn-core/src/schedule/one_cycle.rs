//! The one-cycle policy (Smith and Topin, 2019; PyTorch's `OneCycleLR`): the rate climbs
//! from `max / div_factor` to the base rate `max`, then anneals far below the start, while
//! the momentum (SGD's and RMSprop's `momentum`, Adam's `beta1`) moves the opposite way.

use std::f64::consts::PI;

use crate::error::{Result, RnnError};

/// How a phase moves from its start value to its end value (`anneal_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// Half a cosine: `end + (start - end) (1 + cos(π p)) / 2` at fraction `p` of the phase
    /// (`"cos"`, PyTorch's default).
    Cos,
    /// A straight line: `start + (end - start) p` (`"linear"`).
    Linear,
}

impl Anneal {
    /// The value at fraction `pct` of the way from `start` to `end`, in PyTorch's order of
    /// operations (`_annealing_cos`, `_annealing_linear`).
    fn at(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            Self::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
            Self::Linear => (end - start) * pct + start,
        }
    }
}

/// The momentum range a one-cycle schedule moves the optimizer's momentum through
/// (`base_momentum`, `max_momentum`): at `max` while the rate is lowest, at `base` at the
/// rate's peak.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MomentumCycle {
    /// The momentum at the rate's peak.
    pub base: f64,
    /// The momentum at the start and the end.
    pub max: f64,
}

/// PyTorch's `OneCycleLR`, the base rate being its `max_lr`: `total_steps` updates in two
/// phases (or three with [`OneCycle::three_phase`]), and after them the last rate held
/// (where PyTorch raises). Built with PyTorch's defaults by [`OneCycle::new`] and changed by
/// the `with_*` methods, which check what they set; used as
/// [`Decay::OneCycle`](super::Decay::OneCycle).
///
/// ```
/// use rnn_core::schedule::{Decay, LrSchedule, OneCycle};
/// // OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=0.3) on SGD with momentum.
/// let s = LrSchedule::new(Decay::OneCycle(OneCycle::new(10)?));
/// assert!((s.rate(0.1, 0) - 0.004).abs() < 1e-15); // max_lr / 25
/// assert_eq!(s.rate(0.1, 2), 0.1); // the peak, at update pct_start * 10 - 1
/// assert!((s.rate(0.1, 9) - 4e-7).abs() < 1e-18); // initial / 1e4
/// assert_eq!(s.momentum(0), Some(0.95));
/// assert_eq!(s.momentum(2), Some(0.85));
/// # Ok::<(), rnn_core::error::RnnError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneCycle {
    /// Updates in the cycle (positive).
    pub total_steps: u64,
    /// The fraction of the cycle spent climbing, in `[0, 1]` (`pct_start`).
    pub pct_start: f64,
    /// How each phase moves.
    pub anneal: Anneal,
    /// The first rate is the base over this (`div_factor`, finite and positive).
    pub div_factor: f64,
    /// The last rate is the first over this (`final_div_factor`, finite and positive).
    pub final_div_factor: f64,
    /// Three phases: up, back down to the first rate over as long, then down to the last
    /// (`three_phase`); else up, then down to the last.
    pub three_phase: bool,
    /// The momentum cycle, or `None` to leave the momentum alone (`cycle_momentum`).
    pub momentum: Option<MomentumCycle>,
}

impl OneCycle {
    /// `total_steps` updates with PyTorch's defaults: `pct_start = 0.3`, cosine annealing,
    /// `div_factor = 25`, `final_div_factor = 1e4`, two phases, momentum cycled between 0.85
    /// and 0.95.
    ///
    /// # Errors
    /// [`RnnError::Config`] when `total_steps` is 0.
    pub fn new(total_steps: u64) -> Result<Self> {
        if total_steps == 0 {
            return Err(RnnError::Config(
                "one-cycle total_steps = 0: it must be positive".into(),
            ));
        }
        Ok(Self {
            total_steps,
            pct_start: 0.3,
            anneal: Anneal::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            momentum: Some(MomentumCycle {
                base: 0.85,
                max: 0.95,
            }),
        })
    }

    /// This cycle with `pct_start` of it climbing.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `0 <= pct_start <= 1`.
    pub fn with_pct_start(self, pct_start: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&pct_start) {
            return Err(RnnError::Config(format!(
                "one-cycle pct_start = {pct_start}: it must be in [0, 1]"
            )));
        }
        Ok(Self { pct_start, ..self })
    }

    /// This cycle with the first rate `base / div_factor` and the last rate
    /// `base / div_factor / final_div_factor`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless both are finite and positive.
    pub fn with_div_factors(self, div_factor: f64, final_div_factor: f64) -> Result<Self> {
        for (what, v) in [
            ("div_factor", div_factor),
            ("final_div_factor", final_div_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(RnnError::Config(format!(
                    "one-cycle {what} = {v}: it must be finite and positive"
                )));
            }
        }
        Ok(Self {
            div_factor,
            final_div_factor,
            ..self
        })
    }

    /// This cycle with linear phases instead of cosine ones (`anneal_strategy="linear"`).
    pub fn linear(self) -> Self {
        Self {
            anneal: Anneal::Linear,
            ..self
        }
    }

    /// This cycle in three phases (`three_phase=True`).
    pub fn three_phase(self) -> Self {
        Self {
            three_phase: true,
            ..self
        }
    }

    /// This cycle moving the momentum between `base` (at the rate's peak) and `max`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless both are in `[0, 1)`.
    pub fn with_momentum(self, base: f64, max: f64) -> Result<Self> {
        for (what, v) in [("base_momentum", base), ("max_momentum", max)] {
            if !(0.0..1.0).contains(&v) {
                return Err(RnnError::Config(format!(
                    "one-cycle {what} = {v}: it must be in [0, 1)"
                )));
            }
        }
        Ok(Self {
            momentum: Some(MomentumCycle { base, max }),
            ..self
        })
    }

    /// This cycle leaving the optimizer's momentum alone (`cycle_momentum=False`, which
    /// Adagrad, having no momentum, needs).
    pub fn without_momentum(self) -> Self {
        Self {
            momentum: None,
            ..self
        }
    }

    /// The rate of update `n` for the peak rate `max`.
    pub(super) fn rate(&self, max: f64, n: u64) -> f64 {
        let initial = max / self.div_factor;
        let last = initial / self.final_div_factor;
        // Each phase's start and end rate (PyTorch's `_schedule_phases`).
        let rates = if self.three_phase {
            [(initial, max), (max, initial), (initial, last)]
        } else {
            [(initial, max), (max, last), (f64::NAN, f64::NAN)]
        };
        let (phase, pct) = self.phase(n);
        let (start, end) = rates[phase];
        self.anneal.at(start, end, pct)
    }

    /// The momentum of update `n`, if the cycle moves it.
    pub(super) fn momentum(&self, n: u64) -> Option<f64> {
        let MomentumCycle { base, max } = self.momentum?;
        let momenta = [(max, base), (base, max), (max, max)];
        let (phase, pct) = self.phase(n);
        Some(self.anneal.at(momenta[phase].0, momenta[phase].1, pct))
    }

    /// The phase update `n` falls in and the fraction of it done, as PyTorch's `get_lr`
    /// finds them; past the cycle, the end of the last phase.
    fn phase(&self, n: u64) -> (usize, f64) {
        let total = self.total_steps as f64;
        let first_end = self.pct_start * total - 1.0;
        let three = [first_end, 2.0 * self.pct_start * total - 2.0, total - 1.0];
        let two = [first_end, total - 1.0];
        let ends: &[f64] = if self.three_phase { &three } else { &two };
        let step = n.min(self.total_steps - 1) as f64;
        let mut start = 0.0;
        for (i, &end) in ends.iter().enumerate() {
            if step <= end || i == ends.len() - 1 {
                // A phase of no length (PyTorch divides by zero) is over as it starts.
                let pct = if end == start {
                    1.0
                } else {
                    (step - start) / (end - start)
                };
                return (i, pct);
            }
            start = end;
        }
        unreachable!("the last phase takes any update")
    }
}
