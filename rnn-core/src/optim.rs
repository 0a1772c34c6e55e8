//! Optimizers over the flat parameter buffer, and gradient clipping.

use std::ops::Range;

use kernels::optim::{AdagradStep, AdamStep, RmsPropStep, SgdStep, adagrad, adam, rmsprop, sgd};
use kernels::{Float, reduce};

use crate::error::{Result, RnnError, filled_vec, shape};

/// An optimizer and its hyper-parameters (PyTorch's defaults where it has them).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum OptimizerKind<T> {
    /// `torch.optim.SGD` (`dampening = 0`).
    Sgd {
        /// Learning rate.
        lr: T,
        /// Momentum (0: plain SGD).
        momentum: T,
        /// L2 weight decay.
        weight_decay: T,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.Adam`, or `AdamW` when `decoupled`.
    Adam {
        /// Learning rate.
        lr: T,
        /// First-moment decay.
        beta1: T,
        /// Second-moment decay.
        beta2: T,
        /// Denominator guard.
        eps: T,
        /// Weight decay (L2 for Adam, decoupled for AdamW).
        weight_decay: T,
        /// AdamW.
        decoupled: bool,
    },
    /// `torch.optim.RMSprop`.
    RmsProp {
        /// Learning rate.
        lr: T,
        /// Decay of the squared-gradient average.
        alpha: T,
        /// Denominator guard.
        eps: T,
        /// L2 weight decay.
        weight_decay: T,
        /// Momentum (0: none, and no momentum buffer).
        momentum: T,
        /// Divide by the gradient's variance estimate (`sq - avg²`) instead of `sq`.
        centered: bool,
    },
    /// `torch.optim.Adagrad`.
    Adagrad {
        /// Learning rate.
        lr: T,
        /// Rate decay: step `t` runs at `lr / (1 + (t - 1) lr_decay)`.
        lr_decay: T,
        /// L2 weight decay.
        weight_decay: T,
        /// Denominator guard.
        eps: T,
        /// The squared-gradient sum's starting value.
        initial_accumulator_value: T,
    },
}

impl<T: Float> OptimizerKind<T> {
    /// Plain SGD.
    pub fn sgd(lr: f64) -> Self {
        Self::Sgd {
            lr: T::of(lr),
            momentum: T::zero(),
            weight_decay: T::zero(),
            nesterov: false,
        }
    }

    /// Adam with PyTorch's defaults (`betas = (0.9, 0.999)`, `eps = 1e-8`).
    pub fn adam(lr: f64) -> Self {
        Self::Adam {
            lr: T::of(lr),
            beta1: T::of(0.9),
            beta2: T::of(0.999),
            eps: T::of(1e-8),
            weight_decay: T::zero(),
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults (`weight_decay = 0.01`).
    pub fn adamw(lr: f64) -> Self {
        Self::Adam {
            lr: T::of(lr),
            beta1: T::of(0.9),
            beta2: T::of(0.999),
            eps: T::of(1e-8),
            weight_decay: T::of(0.01),
            decoupled: true,
        }
    }

    /// RMSprop with PyTorch's defaults (`alpha = 0.99`, `eps = 1e-8`, no momentum, not
    /// centered).
    pub fn rmsprop(lr: f64) -> Self {
        Self::RmsProp {
            lr: T::of(lr),
            alpha: T::of(0.99),
            eps: T::of(1e-8),
            weight_decay: T::zero(),
            momentum: T::zero(),
            centered: false,
        }
    }

    /// Adagrad with PyTorch's defaults (`lr_decay = 0`, `eps = 1e-10`, sums from 0).
    pub fn adagrad(lr: f64) -> Self {
        Self::Adagrad {
            lr: T::of(lr),
            lr_decay: T::zero(),
            weight_decay: T::zero(),
            eps: T::of(1e-10),
            initial_accumulator_value: T::zero(),
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> T {
        match *self {
            Self::Sgd { lr, .. }
            | Self::Adam { lr, .. }
            | Self::RmsProp { lr, .. }
            | Self::Adagrad { lr, .. } => lr,
        }
    }

    /// Sets the learning rate (between steps, for schedules).
    pub fn set_lr(&mut self, new: T) {
        match self {
            Self::Sgd { lr, .. }
            | Self::Adam { lr, .. }
            | Self::RmsProp { lr, .. }
            | Self::Adagrad { lr, .. } => *lr = new,
        }
    }

    /// The weight decay (L2, or decoupled for AdamW).
    pub fn weight_decay(&self) -> T {
        match *self {
            Self::Sgd { weight_decay, .. }
            | Self::Adam { weight_decay, .. }
            | Self::RmsProp { weight_decay, .. }
            | Self::Adagrad { weight_decay, .. } => weight_decay,
        }
    }

    /// Sets the weight decay (L2, or decoupled for AdamW).
    pub fn set_weight_decay(&mut self, new: T) {
        match self {
            Self::Sgd { weight_decay, .. }
            | Self::Adam { weight_decay, .. }
            | Self::RmsProp { weight_decay, .. }
            | Self::Adagrad { weight_decay, .. } => *weight_decay = new,
        }
    }

    /// The momentum a one-cycle schedule moves ([`crate::schedule::OneCycle`]): SGD's and
    /// RMSprop's `momentum`, Adam's and AdamW's `beta1`, as PyTorch's
    /// `OneCycleLR(cycle_momentum=True)` picks it; `None` for Adagrad, which has none.
    ///
    /// ```
    /// use rnn_core::optim::OptimizerKind;
    /// assert_eq!(OptimizerKind::<f64>::adam(1e-3).momentum(), Some(0.9));
    /// assert_eq!(OptimizerKind::<f64>::adagrad(1e-2).momentum(), None);
    /// ```
    pub fn momentum(&self) -> Option<T> {
        match *self {
            Self::Sgd { momentum, .. } | Self::RmsProp { momentum, .. } => Some(momentum),
            Self::Adam { beta1, .. } => Some(beta1),
            Self::Adagrad { .. } => None,
        }
    }

    /// Sets the momentum [`Self::momentum`] names (between steps, for schedules).
    ///
    /// # Errors
    /// [`RnnError::Config`] for Adagrad, which has no momentum (PyTorch's `OneCycleLR`
    /// refuses it too); nothing changes.
    pub fn set_momentum(&mut self, new: T) -> Result<()> {
        match self {
            Self::Sgd { momentum, .. } | Self::RmsProp { momentum, .. } => *momentum = new,
            Self::Adam { beta1, .. } => *beta1 = new,
            Self::Adagrad { .. } => {
                return Err(RnnError::Config(
                    "Adagrad has no momentum to cycle: build the one-cycle schedule \
                     without_momentum()"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The family's name as checkpoints record it: `"sgd"`, `"adam"` (Adam and AdamW),
    /// `"rmsprop"` or `"adagrad"`.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "sgd",
            Self::Adam { .. } => "adam",
            Self::RmsProp { .. } => "rmsprop",
            Self::Adagrad { .. } => "adagrad",
        }
    }

    /// What the first state buffer starts at: Adagrad's initial accumulator, else 0.
    fn initial_state1(&self) -> T {
        match *self {
            Self::Adagrad {
                initial_accumulator_value,
                ..
            } => initial_accumulator_value,
            _ => T::zero(),
        }
    }

    /// PyTorch's names for the state buffers this optimizer's update uses (its keys in
    /// `optimizer.state_dict()["state"][i]`), in the order of [`Optimizer::state1`],
    /// `state2` and `state3`; `None` for a buffer it does not use. Plain SGD (no momentum)
    /// has none, as in PyTorch.
    ///
    /// ```
    /// use rnn_core::optim::OptimizerKind;
    /// let adam = OptimizerKind::<f32>::adam(1e-3);
    /// assert_eq!(adam.state_names(), [Some("exp_avg"), Some("exp_avg_sq"), None]);
    /// assert_eq!(OptimizerKind::<f32>::sgd(0.1).state_names(), [None; 3]);
    /// ```
    pub fn state_names(&self) -> [Option<&'static str>; 3] {
        let names = match *self {
            Self::Sgd { momentum, .. } if momentum == T::zero() => return [None; 3],
            Self::Sgd { .. } => ["momentum_buffer", "", ""],
            Self::Adam { .. } => ["exp_avg", "exp_avg_sq", ""],
            Self::RmsProp { .. } => ["square_avg", "momentum_buffer", "grad_avg"],
            Self::Adagrad { .. } => ["sum", "", ""],
        };
        let mut named = [None; 3];
        for ((slot, name), used) in named.iter_mut().zip(names).zip(self.uses_state()) {
            if used {
                *slot = Some(name);
            }
        }
        named
    }

    /// Which of the three state buffers hold sums or averages of squares, which no update
    /// makes negative (and whose square roots the update takes): Adam's `exp_avg_sq`,
    /// RMSprop's `square_avg`, Adagrad's `sum`.
    pub(crate) fn squares_state(&self) -> [bool; 3] {
        match self {
            Self::Sgd { .. } => [false, false, false],
            Self::Adam { .. } => [false, true, false],
            Self::RmsProp { .. } | Self::Adagrad { .. } => [true, false, false],
        }
    }

    /// The first negative value, with its index, in state buffer `slot` when that buffer
    /// holds sums or averages of squares ([`Self::squares_state`]): corrupt state, whose
    /// square root the next update would take.
    pub(crate) fn negative_square(&self, slot: usize, state: &[T]) -> Option<(usize, T)> {
        if !self.squares_state()[slot] {
            return None;
        }
        let i = state.iter().position(|&v| v < T::zero())?;
        Some((i, state[i]))
    }

    /// Which of the three state buffers this optimizer's update reads and writes.
    pub(crate) fn uses_state(&self) -> [bool; 3] {
        match *self {
            Self::Sgd { .. } | Self::Adagrad { .. } => [true, false, false],
            Self::Adam { .. } => [true, true, false],
            Self::RmsProp {
                momentum, centered, ..
            } => [true, momentum != T::zero(), centered],
        }
    }
}

/// An optimizer with its state buffers, mirroring the parameter layout. A buffer the
/// optimizer does not use is empty.
#[derive(Clone, Debug)]
pub struct Optimizer<T> {
    /// Hyper-parameters. They may change between updates: within a family the state
    /// carries over (a buffer newly needed starts at zero), and a change to another family
    /// starts the state over at the next update ([`Self::state_is_current`]).
    pub kind: OptimizerKind<T>,
    /// SGD: momentum buffer; Adam: first moment; RMSprop: squared-gradient average;
    /// Adagrad: squared-gradient sum. [`Self::named_state`] and [`Self::state`] give the
    /// buffers by PyTorch's names instead.
    pub state1: Vec<T>,
    /// Adam: second moment; RMSprop: momentum buffer (with momentum). Empty for SGD.
    pub state2: Vec<T>,
    /// RMSprop: gradient average (centered). Empty otherwise.
    pub state3: Vec<T>,
    /// Updates applied so far (learning-rate schedules count these). A program may set it
    /// (to restart a schedule); set below [`Self::state_start`], the state's own update
    /// count (Adam's bias correction, Adagrad's rate decay) restarts from there too.
    pub steps: u64,
    /// The family whose state the buffers hold ([`OptimizerKind::family`]). When
    /// [`Self::kind`] changes to another family, the buffers mean something else (Adam's
    /// signed first moment is no squared average), so the state starts over at the next
    /// update, as a new PyTorch optimizer's would.
    state_family: &'static str,
    /// [`Self::steps`] when the state last started over: the update formulas count their
    /// steps (Adam's bias correction, Adagrad's rate decay) from here, as a new optimizer
    /// would, while a schedule keeps counting all of them.
    state_start: u64,
    /// Each range of parameters that sat out updates since the state started (a frozen
    /// tensor, [`crate::trainer::Trainer::freeze`]) and how many: its state has seen that
    /// many fewer, as a PyTorch parameter without a gradient keeps its own `step`. Sorted,
    /// disjoint; empty when nothing was ever frozen.
    skipped: Vec<(Range<usize>, u64)>,
}

impl<T: Float> Optimizer<T> {
    /// A fresh optimizer for `n` parameters.
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let kind = OptimizerKind::RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-8, weight_decay: 0.0,
    ///                                     momentum: 0.9, centered: false };
    /// let opt = Optimizer::<f32>::new(kind, 10);
    /// assert_eq!((opt.state1.len(), opt.state2.len(), opt.state3.len()), (10, 10, 0));
    /// ```
    ///
    /// # Panics
    /// When the memory for the state is not there ([`Optimizer::try_new`] reports it).
    pub fn new(kind: OptimizerKind<T>, n: usize) -> Self {
        Self::try_new(kind, n).unwrap_or_else(|failed| panic!("optimizer state: {failed}"))
    }

    /// [`Optimizer::new`], reporting an allocation of its state that failed.
    ///
    /// # Errors
    /// [`RnnError::OutOfMemory`] when the memory for the state is not there.
    pub fn try_new(kind: OptimizerKind<T>, n: usize) -> Result<Self> {
        let [len1, len2, len3] = kind.uses_state().map(|used| if used { n } else { 0 });
        let filled = |len: usize, value: T| filled_vec(&[len], value, "the optimizer state");
        Ok(Self {
            kind,
            state1: filled(len1, kind.initial_state1())?,
            state2: filled(len2, T::zero())?,
            state3: filled(len3, T::zero())?,
            steps: 0,
            state_family: kind.family(),
            state_start: 0,
            skipped: Vec::new(),
        })
    }

    /// Whether the state buffers belong to [`Self::kind`]'s family: false after `kind`
    /// changed to another family (SGD, Adam/AdamW, RMSprop, Adagrad) until the next update
    /// starts the state over.
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let mut opt = Optimizer::<f32>::new(OptimizerKind::adam(1e-3), 4);
    /// opt.kind = OptimizerKind::adamw(1e-3); // the same family: the moments carry over
    /// assert!(opt.state_is_current());
    /// opt.kind = OptimizerKind::rmsprop(1e-3);
    /// assert!(!opt.state_is_current());
    /// opt.update(&mut [0.0; 4], &[1.0; 4], 1.0);
    /// assert!(opt.state_is_current());
    /// assert_eq!((opt.steps, opt.state_start()), (1, 0));
    /// ```
    pub fn state_is_current(&self) -> bool {
        self.state_family == self.kind.family()
    }

    /// The update count at which the state last started over (0 unless [`Self::kind`]
    /// changed family): the update formulas count their steps from here.
    pub fn state_start(&self) -> u64 {
        self.state_start
    }

    /// Takes loaded buffers as [`Self::kind`]'s, started at update `state_start`.
    pub(crate) fn mark_state_current(&mut self, state_start: u64) {
        self.state_family = self.kind.family();
        self.state_start = state_start;
    }

    /// After a change of [`Self::kind`] to another family, a fresh optimizer's buffers for
    /// `n` parameters, its steps counted from now; the buffers as they are otherwise.
    fn start_over_if_family_changed(&mut self, n: usize) -> Result<()> {
        if !self.state_is_current() {
            *self = Self {
                steps: self.steps,
                state_start: self.steps,
                ..Self::try_new(self.kind, n)?
            };
        }
        Ok(())
    }

    /// Readies the state for an update of `n` parameters as the update would (started over
    /// after a change of family, a buffer the kind uses but lacks sized), reporting memory
    /// that is not there as [`RnnError::OutOfMemory`] rather than ending the process: for a
    /// caller that must refuse an update before anything changes.
    pub(crate) fn try_prepare_state(&mut self, n: usize) -> Result<()> {
        self.start_over_if_family_changed(n)?;
        self.fill_missing_state(n)
    }

    /// [`Optimizer::try_prepare_state`] for the infallible public API, which panics (as
    /// [`Optimizer::new`] does) when the memory is not there.
    fn prepare_state(&mut self, n: usize) {
        (self.try_prepare_state(n)).unwrap_or_else(|failed| panic!("optimizer state: {failed}"));
    }

    /// The state buffers this optimizer's update uses, each with PyTorch's name for it
    /// ([`OptimizerKind::state_names`]). Each buffer mirrors the flat parameter buffer, so
    /// the slice of a parameter's weights is also the slice of its state. A buffer the
    /// update uses but has not yet been sized (after [`Self::kind`] changed, before the
    /// next update) is listed empty, and so is every buffer after a change to another
    /// family ([`Self::state_is_current`]).
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let mut opt = Optimizer::<f64>::new(OptimizerKind::adam(0.1), 2);
    /// let mut params = [1.0, -1.0];
    /// opt.update(&mut params, &[0.5, 2.0], 1.0);
    /// let state = opt.named_state();
    /// let (name, exp_avg) = state[0];
    /// assert_eq!(name, "exp_avg");
    /// assert!((exp_avg[0] - 0.05).abs() < 1e-12 && (exp_avg[1] - 0.2).abs() < 1e-12);
    /// assert_eq!(state[1].0, "exp_avg_sq");
    /// assert_eq!(opt.state("exp_avg_sq").unwrap().len(), 2);
    /// assert!(opt.state("momentum_buffer").is_none());
    /// ```
    pub fn named_state(&self) -> Vec<(&'static str, &[T])> {
        let current = self.state_is_current();
        let buffers = [&self.state1, &self.state2, &self.state3];
        self.kind
            .state_names()
            .into_iter()
            .zip(buffers)
            .filter_map(|(name, buffer)| Some((name?, if current { buffer } else { &[][..] })))
            .collect()
    }

    /// The state buffer PyTorch calls `name` (`"exp_avg"`, `"square_avg"`, `"sum"`, ...), if
    /// this optimizer's update uses one ([`Self::named_state`]).
    pub fn state(&self, name: &str) -> Option<&[T]> {
        self.named_state()
            .into_iter()
            .find_map(|(n, buffer)| (n == name).then_some(buffer))
    }

    /// [`Self::state`], writable and unchecked: [`Self::set_state`] checks what it writes,
    /// while a negative squared average written here makes the next update's weights NaN. A
    /// buffer the update uses but that is not yet sized (after [`Self::kind`] changed) is
    /// sized first, at its starting value, and after a change to another family the state
    /// starts over first, as the next update would do (panicking, as [`Self::update`], when
    /// the memory for it is not there).
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let mut opt = Optimizer::<f32>::new(OptimizerKind::sgd(0.1), 3);
    /// opt.kind = OptimizerKind::rmsprop(0.1);
    /// opt.state_mut("square_avg").unwrap().copy_from_slice(&[1.0, 2.0, 3.0]);
    /// assert_eq!(opt.state("square_avg"), Some(&[1.0, 2.0, 3.0][..]));
    /// assert!(opt.state_mut("grad_avg").is_none()); // only when centered
    /// ```
    pub fn state_mut(&mut self, name: &str) -> Option<&mut [T]> {
        let slot = self
            .kind
            .state_names()
            .iter()
            .position(|&s| s == Some(name))?;
        self.prepare_state(self.parameter_count());
        let buffers = [&mut self.state1, &mut self.state2, &mut self.state3];
        buffers.into_iter().nth(slot).map(Vec::as_mut_slice)
    }

    /// Sets the state buffer PyTorch calls `name` to `values` (one per parameter, in the
    /// flat parameter layout), checked as a checkpoint's state is: the way to start from
    /// state saved elsewhere, such as PyTorch's, without risking the weights. As
    /// [`Self::state_mut`], a buffer not yet sized is sized first, and after a change to
    /// another family the state starts over first.
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let mut opt = Optimizer::<f64>::new(OptimizerKind::adam(0.1), 2);
    /// opt.set_state("exp_avg_sq", &[0.25, 1.0])?;
    /// assert_eq!(opt.state("exp_avg_sq"), Some(&[0.25, 1.0][..]));
    /// assert!(opt.set_state("exp_avg_sq", &[0.25, -1.0]).is_err()); // a square is never negative
    /// assert!(opt.set_state("square_avg", &[0.0, 0.0]).is_err()); // RMSprop's, not Adam's
    /// assert_eq!(opt.state("exp_avg_sq"), Some(&[0.25, 1.0][..])); // unchanged
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// Nothing changes on any of them. [`RnnError::Config`] for a name this optimizer's
    /// update does not use ([`Self::named_state`]) or a negative value in a buffer of
    /// squares (Adam's `exp_avg_sq`, RMSprop's `square_avg`, Adagrad's `sum`);
    /// [`RnnError::ShapeMismatch`] unless there is one value per parameter;
    /// [`RnnError::NonFiniteInput`] for a NaN or an infinity.
    pub fn set_state(&mut self, name: &str, values: &[T]) -> Result<()> {
        let names = self.kind.state_names();
        let Some(slot) = names.iter().position(|&s| s == Some(name)) else {
            let used: Vec<&str> = names.into_iter().flatten().collect();
            return Err(RnnError::Config(format!(
                "this {} optimizer keeps no state {name:?} (it keeps {used:?})",
                self.kind.family()
            )));
        };
        // Every kind uses the first buffer, sized for the parameter count from `new` on.
        let n = self.parameter_count();
        if values.len() != n {
            return Err(shape(name, n, values.len()));
        }
        crate::batch::finite("optimizer state", values)?;
        if let Some((i, v)) = self.kind.negative_square(slot, values) {
            return Err(RnnError::Config(format!(
                "{name}[{i}] is {}: a sum of squares is never negative",
                v.f64()
            )));
        }
        self.state_mut(name)
            .expect("a name the kind uses")
            .copy_from_slice(values);
        Ok(())
    }

    /// The number of parameters the state buffers mirror: the longest buffer's length
    /// (every kind uses the first, so it is sized from [`Self::new`] on).
    fn parameter_count(&self) -> usize {
        [&self.state1, &self.state2, &self.state3]
            .map(Vec::len)
            .into_iter()
            .max()
            .unwrap_or(0)
    }

    /// Gives every buffer the update will use, but is empty, `n` zeros: after [`Self::kind`]
    /// changes to one of its family with more state (RMSprop gaining momentum), as PyTorch
    /// starts a missing state at zero.
    fn fill_missing_state(&mut self, n: usize) -> Result<()> {
        let buffers = [&mut self.state1, &mut self.state2, &mut self.state3];
        let starts = [self.kind.initial_state1(), T::zero(), T::zero()];
        for ((used, buffer), start) in self.kind.uses_state().into_iter().zip(buffers).zip(starts) {
            if used && buffer.is_empty() {
                *buffer = filled_vec(&[n], start, "the optimizer state")?;
            }
        }
        Ok(())
    }

    /// Applies one update with every gradient element multiplied by `grad_scale`.
    ///
    /// # Panics
    /// When the state a change of [`Self::kind`] needs cannot be allocated (a
    /// [`crate::trainer::Trainer`] refuses such an update with
    /// [`RnnError::OutOfMemory`] instead).
    pub fn update(&mut self, params: &mut [T], grads: &[T], grad_scale: T) {
        self.update_on(params, grads, grad_scale, false);
    }

    /// [`Optimizer::update`], in two halves on two threads of the current rayon pool when
    /// `two_threads` and there are at least [`SPLIT_MIN_PARAMS`] parameters. Every element's
    /// update reads only that element, so the result is bitwise that of one thread.
    ///
    /// ```
    /// use rnn_core::optim::{Optimizer, OptimizerKind};
    /// let n = 1 << 18;
    /// let grads: Vec<f32> = (0..n).map(|k| (k % 7) as f32 - 3.0).collect();
    /// let mut one = (vec![1.0f32; n], Optimizer::new(OptimizerKind::adam(1e-2), n));
    /// let mut two = one.clone();
    /// one.1.update(&mut one.0, &grads, 0.5);
    /// two.1.update_on(&mut two.0, &grads, 0.5, true);
    /// assert_eq!(one.0, two.0);
    /// assert_eq!((one.1.state1, one.1.state2), (two.1.state1, two.1.state2));
    /// ```
    pub fn update_on(&mut self, params: &mut [T], grads: &[T], grad_scale: T, two_threads: bool) {
        self.update_with_rules(params, grads, grad_scale, &[], two_threads);
    }

    /// [`Optimizer::update_on`] with each of `rules` (sorted, disjoint ranges) applied to its
    /// range, PyTorch's parameter groups: a frozen range and its state are left as they are,
    /// as PyTorch's optimizers pass over a parameter without a gradient (no weight decay, no
    /// momentum, and the range's own update count, Adam's bias correction and Adagrad's rate
    /// decay, stands still until it takes part again); the others update with their own
    /// learning rate and weight decay.
    pub(crate) fn update_with_rules(
        &mut self,
        params: &mut [T],
        grads: &[T],
        grad_scale: T,
        rules: &[TensorRule],
        two_threads: bool,
    ) {
        let n = params.len();
        // A trainer readied the state already ([`Optimizer::try_prepare_state`]).
        self.prepare_state(n);
        if self.steps < self.state_start {
            // The program moved `steps` back (to restart a schedule, say) past where the
            // state started: the state counts its updates from here on.
            self.state_start = self.steps;
        }
        self.steps += 1;
        for rule in rules.iter().filter(|r| r.frozen) {
            self.sit_out(rule.range.clone());
        }
        let all_updates = self.steps - self.state_start;
        // A buffer a former kind of the family left behind (RMSprop's momentum buffer, with
        // momentum turned off) is kept, for a change back, but not passed on.
        let [_, use2, use3] = self.kind.uses_state();
        let mut all = Elements {
            params,
            state1: &mut self.state1,
            state2: if use2 { &mut self.state2 } else { &mut [] },
            state3: if use3 { &mut self.state3 } else { &mut [] },
            grads,
        };
        // Runs of elements updated alike: the ranges with a rule or that ever sat out, and
        // the stretches between them, which have seen every update under the optimizer's
        // own settings.
        let kind = self.kind;
        let mut apply = |range: Range<usize>, steps: u64, rule: Option<&TensorRule>| {
            if range.is_empty() {
                return;
            }
            let step = Step {
                kind: rule.map_or(kind, |r| r.applied_to(kind)),
                steps,
                grad_scale,
            };
            let e = all.range(range);
            if on_two_threads(two_threads, e.params.len()) {
                let (first, second) = e.halves();
                rayon::join(|| step.apply(first), || step.apply(second));
            } else {
                step.apply(e);
            }
        };
        let mut at = 0;
        for (range, skipped, rule) in special_ranges(&self.skipped, rules) {
            apply(at..range.start, all_updates, None);
            if !rule.is_some_and(|r| r.frozen) {
                apply(range.clone(), all_updates - skipped, rule);
            }
            at = range.end;
        }
        apply(at..n, all_updates, None);
    }

    /// Counts one update that the parameters in `range` sat out.
    fn sit_out(&mut self, range: Range<usize>) {
        match self
            .skipped
            .binary_search_by_key(&range.start, |(r, _)| r.start)
        {
            Ok(i) => {
                debug_assert_eq!(self.skipped[i].0, range, "frozen ranges are whole tensors");
                self.skipped[i].1 += 1;
            }
            Err(i) => self.skipped.insert(i, (range, 1)),
        }
    }

    /// The updates the state of the parameters in `range` has seen since it started: fewer
    /// than [`Self::steps`] after a change of family ([`Self::state_start`]) or while the
    /// range was frozen (PyTorch's per-parameter `step`).
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::new(2, 4, 1);
    /// let mut tr = Trainer::<f64>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-2), 0)?;
    /// let (x, y) = (vec![0.5; 3 * 2], vec![0.25; 3]);
    /// tr.freeze("head.bias")?;
    /// tr.step(&Batch::new(3, 1, &x, Target::Values(&y)))?;
    /// tr.unfreeze("head.bias")?;
    /// tr.step(&Batch::new(3, 1, &x, Target::Values(&y)))?;
    /// let bias = tr.layout.find("head.bias").unwrap().range.clone();
    /// assert_eq!(tr.optimizer.updates_seen(bias), 1);
    /// assert_eq!(tr.optimizer.steps, 2);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn updates_seen(&self, range: Range<usize>) -> u64 {
        let skipped = self.skipped.iter().find(|(r, _)| *r == range);
        (self.steps.saturating_sub(self.state_start)).saturating_sub(skipped.map_or(0, |(_, k)| *k))
    }

    /// Each range of parameters that sat out updates since the state started, and how many
    /// (for a checkpoint).
    pub(crate) fn skipped(&self) -> &[(Range<usize>, u64)] {
        &self.skipped
    }

    /// Sets what [`Self::skipped`] returns (from a checkpoint): sorted, disjoint ranges.
    pub(crate) fn set_skipped(&mut self, skipped: Vec<(Range<usize>, u64)>) {
        self.skipped = skipped;
    }
}

/// How one tensor's update differs from the optimizer's: PyTorch's parameter groups
/// ([`crate::trainer::Trainer::freeze`], [`crate::trainer::Trainer::set_lr_scale`],
/// [`crate::trainer::Trainer::set_weight_decay`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRule {
    /// The tensor's elements.
    pub range: Range<usize>,
    /// No update at all.
    pub frozen: bool,
    /// Its learning rate over the optimizer's (schedules included).
    pub lr_scale: f64,
    /// Its own weight decay, instead of the optimizer's.
    pub weight_decay: Option<f64>,
}

impl TensorRule {
    /// A rule for `range` that changes nothing yet.
    pub fn new(range: Range<usize>) -> Self {
        Self {
            range,
            frozen: false,
            lr_scale: 1.0,
            weight_decay: None,
        }
    }

    /// Whether the rule changes nothing.
    pub fn is_default(&self) -> bool {
        *self == Self::new(self.range.clone())
    }

    /// `kind` with this tensor's learning rate and weight decay.
    fn applied_to<T: Float>(&self, mut kind: OptimizerKind<T>) -> OptimizerKind<T> {
        if self.lr_scale != 1.0 {
            kind.set_lr(kind.lr() * T::of(self.lr_scale));
        }
        if let Some(wd) = self.weight_decay {
            kind.set_weight_decay(T::of(wd));
        }
        kind
    }
}

/// The ranges that ever sat out (with how many updates) and the ranges with a rule, merged
/// in order; both are sorted lists of whole tensors, so a range in both is the same range.
fn special_ranges<'a>(
    skipped: &'a [(Range<usize>, u64)],
    rules: &'a [TensorRule],
) -> impl Iterator<Item = (Range<usize>, u64, Option<&'a TensorRule>)> {
    let (mut s, mut r) = (0, 0);
    std::iter::from_fn(move || {
        let next_skip = skipped.get(s);
        let next_rule = rules.get(r);
        let start = |x: Option<usize>| x.unwrap_or(usize::MAX);
        let (skip_start, rule_start) = (
            start(next_skip.map(|(range, _)| range.start)),
            start(next_rule.map(|rule| rule.range.start)),
        );
        let at = skip_start.min(rule_start);
        if at == usize::MAX {
            return None;
        }
        let skip = next_skip.filter(|_| skip_start == at);
        let rule = next_rule.filter(|_| rule_start == at);
        s += usize::from(skip.is_some());
        r += usize::from(rule.is_some());
        let range = rule.map_or_else(
            || skip.expect("a range starts at `at`").0.clone(),
            |r| r.range.clone(),
        );
        Some((range, skip.map_or(0, |(_, k)| *k), rule))
    })
}

/// Parameter count from which an update runs in two halves on two threads
/// ([`Optimizer::update_on`], with [`Clip::apply_on`]'s clamp) and the global gradient norm
/// is summed in two halves ([`grad_sum_squares`]). Both stream every parameter from memory;
/// on two threads RNN large's update (1.1 M parameters, with the norm) took 0.8 ms against
/// 1.15, GRU large's (4.2 M) 2.2 against 3.2, but RNN char's (330 k) only 0.17 against 0.19:
/// smaller updates stay on one thread, where a wake-up of the second would cost about what
/// it could save.
pub const SPLIT_MIN_PARAMS: usize = 1 << 17;

/// Whether an elementwise pass over `len` elements runs in halves on two threads.
fn on_two_threads(two_threads: bool, len: usize) -> bool {
    two_threads && len >= SPLIT_MIN_PARAMS
}

/// `Σ g²` over `grads`, for the global norm: in two halves added from [`SPLIT_MIN_PARAMS`]
/// elements on (the halves on two threads of the current rayon pool when `two_threads`),
/// so the value depends on the length, never on the thread count.
///
/// ```
/// let g: Vec<f64> = (0..300_000).map(|k| (k % 5) as f64).collect();
/// let want: f64 = g.iter().map(|x| x * x).sum();
/// let got = rnn_core::optim::grad_sum_squares(&g, true);
/// assert!((got - want).abs() <= 1e-12 * want);
/// assert_eq!(got, rnn_core::optim::grad_sum_squares(&g, false));
/// ```
pub fn grad_sum_squares<T: Float>(grads: &[T], two_threads: bool) -> T {
    if grads.len() < SPLIT_MIN_PARAMS {
        return reduce::sum_squares(grads);
    }
    let (first, second) = grads.split_at(grads.len() / 2);
    let (a, b) = if two_threads {
        rayon::join(
            || reduce::sum_squares(first),
            || reduce::sum_squares(second),
        )
    } else {
        (reduce::sum_squares(first), reduce::sum_squares(second))
    };
    a + b
}

/// What one update applies to every element: the hyper-parameters, the update's number
/// (counted from the state's start) and the gradient scale.
#[derive(Clone, Copy)]
struct Step<T> {
    kind: OptimizerKind<T>,
    steps: u64,
    grad_scale: T,
}

/// The elements an update touches: a range of the parameters with their state and gradients
/// (a state buffer the optimizer does not use is empty).
struct Elements<'a, T> {
    params: &'a mut [T],
    state1: &'a mut [T],
    state2: &'a mut [T],
    state3: &'a mut [T],
    grads: &'a [T],
}

impl<'a, T> Elements<'a, T> {
    /// The elements in `range` (borrowed from these).
    fn range(&mut self, range: Range<usize>) -> Elements<'_, T> {
        fn part<T>(state: &mut [T], range: Range<usize>) -> &mut [T] {
            if state.is_empty() {
                state
            } else {
                &mut state[range]
            }
        }
        Elements {
            params: &mut self.params[range.clone()],
            state1: part(self.state1, range.clone()),
            state2: part(self.state2, range.clone()),
            state3: part(self.state3, range.clone()),
            grads: &self.grads[range],
        }
    }

    /// The first and second halves of the elements.
    fn halves(self) -> (Self, Self) {
        let mid = self.params.len() / 2;
        let split = |state: &'a mut [T]| match state.len() {
            0 => (&mut [][..], &mut [][..]),
            _ => state.split_at_mut(mid),
        };
        let (p0, p1) = self.params.split_at_mut(mid);
        let (a0, a1) = self.state1.split_at_mut(mid);
        let (b0, b1) = split(self.state2);
        let (c0, c1) = split(self.state3);
        let (g0, g1) = self.grads.split_at(mid);
        let half = |params, state1, state2, state3, grads| Elements {
            params,
            state1,
            state2,
            state3,
            grads,
        };
        (half(p0, a0, b0, c0, g0), half(p1, a1, b1, c1, g1))
    }
}

impl<T: Float> Step<T> {
    /// The update of `e`.
    fn apply(self, e: Elements<'_, T>) {
        let grad_scale = self.grad_scale;
        match self.kind {
            OptimizerKind::Sgd {
                lr,
                momentum,
                weight_decay,
                nesterov,
            } => sgd(
                e.params,
                e.state1,
                e.grads,
                SgdStep {
                    lr,
                    momentum,
                    weight_decay,
                    nesterov,
                    grad_scale,
                },
            ),
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => adam(
                e.params,
                e.state1,
                e.state2,
                e.grads,
                AdamStep {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                    step: self.steps,
                    grad_scale,
                },
            ),
            OptimizerKind::RmsProp {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => rmsprop(
                e.params,
                e.state1,
                e.state2,
                e.state3,
                e.grads,
                RmsPropStep {
                    lr,
                    alpha,
                    eps,
                    weight_decay,
                    momentum,
                    centered,
                    grad_scale,
                },
            ),
            OptimizerKind::Adagrad {
                lr,
                lr_decay,
                weight_decay,
                eps,
                ..
            } => adagrad(
                e.params,
                e.state1,
                e.grads,
                AdagradStep {
                    // PyTorch: clr = lr / (1 + (step - 1) * lr_decay).
                    lr: lr / (T::one() + T::of(self.steps.saturating_sub(1) as f64) * lr_decay),
                    eps,
                    weight_decay,
                    grad_scale,
                },
            ),
        }
    }
}

/// Gradient clipping, applied before the update.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum Clip<T> {
    /// No clipping.
    #[default]
    None,
    /// Scale the whole gradient so its global L2 norm is at most this
    /// (`torch.nn.utils.clip_grad_norm_`, including its `1e-6` guard).
    Norm(T),
    /// Clamp every element to `±value` (`clip_grad_value_`).
    Value(T),
}

impl<T: Float> Clip<T> {
    /// The factor the update multiplies gradients by, given their pre-clip global `norm`;
    /// value clipping clamps `grads` in place and returns 1.
    pub fn apply(&self, grads: &mut [T], norm: T) -> T {
        self.apply_on(grads, norm, false)
    }

    /// [`Clip::apply`], clamping in two halves on two threads of the current rayon pool when
    /// `two_threads` and there are at least [`SPLIT_MIN_PARAMS`] gradients. A clamp reads
    /// only its own element, so the result is bitwise that of one thread.
    ///
    /// ```
    /// use rnn_core::optim::Clip;
    /// let mut one: Vec<f32> = (0..1 << 18).map(|k| (k % 9) as f32 - 4.0).collect();
    /// let mut two = one.clone();
    /// assert_eq!(Clip::Value(2.5).apply(&mut one, 0.0), 1.0);
    /// assert_eq!(Clip::Value(2.5).apply_on(&mut two, 0.0, true), 1.0);
    /// assert_eq!(one, two);
    /// assert_eq!((one[0], one[4], one[8]), (-2.5, 0.0, 2.5));
    /// ```
    pub fn apply_on(&self, grads: &mut [T], norm: T, two_threads: bool) -> T {
        match *self {
            Clip::None => T::one(),
            Clip::Norm(max) => (max / (norm + T::of(1e-6))).min(T::one()),
            Clip::Value(v) => {
                let clamp = |g: &mut [T]| reduce::clamp(g, -v, v);
                if on_two_threads(two_threads, grads.len()) {
                    let (first, second) = grads.split_at_mut(grads.len() / 2);
                    rayon::join(|| clamp(first), || clamp(second));
                } else {
                    clamp(grads);
                }
                T::one()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State a change of family needs but the memory cannot give is refused before
    /// anything changes: the old state, its family and the step count stay.
    #[test]
    fn state_past_the_memory_is_refused_and_changes_nothing() {
        let mut opt = Optimizer::<f32>::new(OptimizerKind::adam(0.1), 2);
        opt.update(&mut [1.0, 2.0], &[0.5, 0.5], 1.0);
        let (state1, state2) = (opt.state1.clone(), opt.state2.clone());
        opt.kind = OptimizerKind::rmsprop(0.1);
        let err = opt.try_prepare_state(1 << 60).unwrap_err();
        assert!(matches!(err, RnnError::OutOfMemory { .. }), "{err:?}");
        assert_eq!((opt.state1, opt.state2), (state1, state2));
        assert_eq!((opt.steps, opt.state_family), (1, "adam"));
    }

    /// `steps` set back past where the state started over (a change of family) restarts
    /// the state's count from there: no underflow, finite updates, counts that add up.
    #[test]
    fn steps_set_back_restart_the_state_count() {
        let mut opt = Optimizer::new(OptimizerKind::adam(0.1), 2);
        let mut params = [1.0f64, -1.0];
        for _ in 0..3 {
            opt.update(&mut params, &[0.5, -2.0], 1.0);
        }
        opt.kind = OptimizerKind::adagrad(0.1);
        opt.update(&mut params, &[0.5, -2.0], 1.0);
        assert_eq!((opt.steps, opt.state_start()), (4, 3));
        opt.steps = 1;
        assert_eq!(opt.updates_seen(0..2), 0);
        opt.update(&mut params, &[0.5, -2.0], 1.0);
        assert_eq!(
            (opt.steps, opt.state_start(), opt.updates_seen(0..2)),
            (2, 1, 1)
        );
        assert!(params.iter().all(|p| p.is_finite()));
    }

    /// After one update from zero state, each named buffer holds what PyTorch's formula puts
    /// there, so the names sit on the right buffers.
    #[test]
    fn named_state_holds_what_pytorch_names() {
        let g = [0.5f64, -2.0];
        let after_one = |kind: OptimizerKind<f64>| {
            let mut opt = Optimizer::new(kind, 2);
            opt.update(&mut [1.0, -1.0], &g, 1.0);
            opt
        };
        let scaled = |c: f64, f: fn(f64) -> f64| g.map(|x| c * f(x)).to_vec();
        let close = |got: &[f64], want: Vec<f64>| {
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12) && got.len() == want.len()
        };
        let adam = after_one(OptimizerKind::adam(0.1));
        assert!(close(adam.state("exp_avg").unwrap(), scaled(0.1, |x| x)));
        assert!(close(
            adam.state("exp_avg_sq").unwrap(),
            scaled(0.001, |x| x * x)
        ));
        let rms = after_one(OptimizerKind::RmsProp {
            lr: 0.1,
            alpha: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.5,
            centered: true,
        });
        let names: Vec<_> = rms.named_state().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["square_avg", "momentum_buffer", "grad_avg"]);
        assert!(close(
            rms.state("square_avg").unwrap(),
            scaled(0.1, |x| x * x)
        ));
        assert!(close(rms.state("grad_avg").unwrap(), scaled(0.1, |x| x)));
        let sgd = after_one(OptimizerKind::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        });
        assert!(close(
            sgd.state("momentum_buffer").unwrap(),
            scaled(1.0, |x| x)
        ));
        let adagrad = after_one(OptimizerKind::adagrad(0.1));
        assert!(close(adagrad.state("sum").unwrap(), scaled(1.0, |x| x * x)));
        assert_eq!(adagrad.named_state().len(), 1);
        assert!(adagrad.state("exp_avg").is_none());
    }

    /// A buffer written through `state_mut` is the one the next update reads.
    #[test]
    fn state_written_by_name_is_what_the_update_reads() {
        let mut opt = Optimizer::<f64>::new(OptimizerKind::sgd(0.1), 2);
        opt.state1.copy_from_slice(&[7.0, 7.0]);
        opt.kind = OptimizerKind::adagrad(1.0);
        // Another family: nothing of SGD's carries over, the sum starts afresh.
        assert_eq!(opt.state("sum"), Some(&[][..]));
        assert_eq!(opt.state_mut("sum").unwrap(), &[0.0, 0.0]);
        opt.state_mut("sum").unwrap().copy_from_slice(&[3.0, 0.0]);
        let mut params = [0.0, 0.0];
        opt.update(&mut params, &[1.0, 1.0], 1.0);
        // sum = 3 + 1 = 4 and 0 + 1 = 1: steps of 1/2 and 1.
        assert!((params[0] + 0.5).abs() < 1e-9 && (params[1] + 1.0).abs() < 1e-9);
    }

    /// `set_state` writes what `state_mut` would, after the same checks as a checkpoint's
    /// state; a refused value changes nothing.
    #[test]
    fn set_state_checks_what_it_writes() {
        let mut opt = Optimizer::<f64>::new(OptimizerKind::sgd(0.1), 2);
        opt.kind = OptimizerKind::adagrad(1.0);
        opt.set_state("sum", &[3.0, 0.0]).unwrap();
        let mut params = [0.0, 0.0];
        opt.update(&mut params, &[1.0, 1.0], 1.0);
        assert!((params[0] + 0.5).abs() < 1e-9 && (params[1] + 1.0).abs() < 1e-9);
        let before = opt.clone();
        let refused = [
            ("sum", vec![1.0, -0.5], "never negative"),
            ("sum", vec![1.0, f64::NAN], "optimizer state"),
            ("sum", vec![1.0], "sum"),
            ("exp_avg", vec![1.0, 1.0], "keeps [\"sum\"]"),
        ];
        for (name, values, says) in refused {
            let e = opt.set_state(name, &values).unwrap_err();
            assert!(e.to_string().contains(says), "{name} {values:?}: {e}");
            assert_eq!((&opt.state1, opt.steps), (&before.state1, before.steps));
        }
        // Signed state takes negative values.
        let mut adam = Optimizer::<f64>::new(OptimizerKind::adam(0.1), 2);
        adam.set_state("exp_avg", &[-1.0, 2.0]).unwrap();
        assert!(adam.set_state("exp_avg_sq", &[-1.0, 2.0]).is_err());
        assert_eq!(adam.state("exp_avg"), Some(&[-1.0, 2.0][..]));
        assert_eq!(adam.state("exp_avg_sq"), Some(&[0.0, 0.0][..]));
    }
}
