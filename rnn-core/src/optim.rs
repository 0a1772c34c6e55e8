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
        self.steps += 1;
        match self.kind {
            OptimizerKind::Sgd {
                lr,
                momentum,
                weight_decay,
                nesterov,
            } => sgd(
                params,
                &mut self.state1,
                grads,
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
                params,
                &mut self.state1,
                &mut self.state2,
                grads,
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
        match *self {
            Clip::None => T::one(),
            Clip::Norm(max) => (max / (norm + T::of(1e-6))).min(T::one()),
            Clip::Value(v) => {
                reduce::clamp(grads, -v, v);
                T::one()
            }
        }
    }
}
