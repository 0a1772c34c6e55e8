//! Optimizers over the flat parameter buffer, and gradient clipping.

use kernels::optim::{AdamStep, SgdStep, adam, sgd};
use kernels::{Float, reduce};

/// An optimizer and its hyper-parameters (PyTorch's defaults where it has them).
#[derive(Clone, Copy, Debug, PartialEq)]
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

    /// The learning rate.
    pub fn lr(&self) -> T {
        match *self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } => lr,
        }
    }

    /// Sets the learning rate (between steps, for schedules).
    pub fn set_lr(&mut self, new: T) {
        match self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } => *lr = new,
        }
    }
}

/// An optimizer with its state buffers, mirroring the parameter layout.
#[derive(Clone, Debug)]
pub struct Optimizer<T> {
    /// Hyper-parameters.
    pub kind: OptimizerKind<T>,
    /// SGD: momentum buffer; Adam: first moment. Empty until the first step.
    pub state1: Vec<T>,
    /// Adam: second moment. Empty for SGD.
    pub state2: Vec<T>,
    /// Updates applied so far.
    pub steps: u64,
}

impl<T: Float> Optimizer<T> {
    /// A fresh optimizer for `n` parameters.
    pub fn new(kind: OptimizerKind<T>, n: usize) -> Self {
        let state2 = if matches!(kind, OptimizerKind::Adam { .. }) {
            vec![T::zero(); n]
        } else {
            Vec::new()
        };
        Self {
            kind,
            state1: vec![T::zero(); n],
            state2,
            steps: 0,
        }
    }

    /// Applies one update with every gradient element multiplied by `grad_scale`.
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
        self.steps += 1;
        let step = Step {
            kind: self.kind,
            steps: self.steps,
            grad_scale,
        };
        let all = Elements {
            params,
            state1: &mut self.state1,
            state2: &mut self.state2,
            grads,
        };
        if on_two_threads(two_threads, all.params.len()) {
            let (first, second) = all.halves();
            rayon::join(|| step.apply(first), || step.apply(second));
        } else {
            step.apply(all);
        }
    }
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

/// What one update applies to every element: the hyper-parameters, the update's number and
/// the gradient scale.
#[derive(Clone, Copy)]
struct Step<T> {
    kind: OptimizerKind<T>,
    steps: u64,
    grad_scale: T,
}

/// The elements an update touches: a range of the parameters with their state and gradients
/// (`state2` empty for SGD).
struct Elements<'a, T> {
    params: &'a mut [T],
    state1: &'a mut [T],
    state2: &'a mut [T],
    grads: &'a [T],
}

impl<'a, T> Elements<'a, T> {
    /// The first and second halves of the elements.
    fn halves(self) -> (Self, Self) {
        let mid = self.params.len() / 2;
        let (p0, p1) = self.params.split_at_mut(mid);
        let (a0, a1) = self.state1.split_at_mut(mid);
        let (b0, b1) = match self.state2.len() {
            0 => (&mut [][..], &mut [][..]),
            _ => self.state2.split_at_mut(mid),
        };
        let (g0, g1) = self.grads.split_at(mid);
        let half = |params, state1, state2, grads| Elements {
            params,
            state1,
            state2,
            grads,
        };
        (half(p0, a0, b0, g0), half(p1, a1, b1, g1))
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
        }
    }
}

/// Gradient clipping, applied before the update.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
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
