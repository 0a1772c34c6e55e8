//! What a model is and how it is scored: sizes, activation, loss.
//!
//! Shape legend used across the crate: `T` steps, `B` sequences, `I` input features,
//! `H` hidden units, `O` outputs, `L` layers. Buffers are time-major and row-major:
//! `x` is `[T, B, I]`.

use crate::error::{Result, RnnError};

/// The recurrent activation (`nn.RNN(nonlinearity=...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    /// `tanh` (PyTorch's default).
    #[default]
    Tanh,
    /// `max(0, x)`.
    Relu,
}

impl Nonlinearity {
    /// PyTorch's spelling: `"tanh"` or `"relu"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tanh => "tanh",
            Self::Relu => "relu",
        }
    }

    /// Parses PyTorch's spelling.
    ///
    /// # Errors
    /// [`RnnError::Config`] for anything else.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tanh" => Ok(Self::Tanh),
            "relu" => Ok(Self::Relu),
            _ => Err(RnnError::Config(format!(
                "nonlinearity must be tanh or relu, got {s:?}"
            ))),
        }
    }
}

/// The architecture: a stack of `L` recurrent layers and a linear head.
///
/// Equivalent to PyTorch's `nn.RNN(I, H, num_layers=L, nonlinearity=...)` followed by
/// `nn.Linear(H, O)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RnnConfig {
    /// `I`, features per input step.
    pub input_size: usize,
    /// `H`, hidden units per layer.
    pub hidden_size: usize,
    /// `L`, stacked layers (layer k+1 reads layer k's hidden states).
    pub num_layers: usize,
    /// `O`, head outputs per step (classes, for cross-entropy).
    pub output_size: usize,
    /// The recurrent activation.
    pub nonlinearity: Nonlinearity,
    /// Learn the initial state: a parameter `rnn.h0` `[L, H]` (zeros at first) broadcast over the
    /// batch whenever a batch gives no `h0` of its own.
    pub learn_h0: bool,
}

impl RnnConfig {
    /// A one-layer tanh RNN.
    pub fn new(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            output_size,
            nonlinearity: Nonlinearity::Tanh,
            learn_h0: false,
        }
    }

    /// Sets the number of layers.
    pub fn layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }

    /// Sets the activation.
    pub fn nonlinearity(mut self, nonlinearity: Nonlinearity) -> Self {
        self.nonlinearity = nonlinearity;
        self
    }

    /// Makes the initial state a learned parameter.
    pub fn learned_h0(mut self) -> Self {
        self.learn_h0 = true;
        self
    }

    /// Checks every size is positive.
    ///
    /// # Errors
    /// [`RnnError::Empty`] naming the zero size.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("output_size", self.output_size),
        ] {
            if v == 0 {
                return Err(RnnError::Empty { what });
            }
        }
        Ok(())
    }

    /// Input width of layer `k` (`I` for the first, `H` above).
    pub fn layer_input(&self, k: usize) -> usize {
        if k == 0 {
            self.input_size
        } else {
            self.hidden_size
        }
    }
}

/// The loss function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// Mean squared error against float targets (`nn.MSELoss`).
    Mse,
    /// Softmax cross-entropy against class labels (`nn.CrossEntropyLoss`).
    CrossEntropy,
}

/// How per-element losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Average over the scored positions (MSE: also over `O`).
    #[default]
    Mean,
    /// Sum.
    Sum,
}

/// Where the loss is taken and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossSpec {
    /// The loss function.
    pub kind: LossKind,
    /// The reduction.
    pub reduction: Reduction,
    /// Score only the final hidden state (`[B, O]` outputs) instead of every step.
    pub many_to_one: bool,
}

impl LossSpec {
    /// A loss at every step with reduction `mean`.
    pub fn every_step(kind: LossKind) -> Self {
        Self {
            kind,
            reduction: Reduction::Mean,
            many_to_one: false,
        }
    }

    /// A loss at the last step only with reduction `mean`.
    pub fn last_step(kind: LossKind) -> Self {
        Self {
            kind,
            reduction: Reduction::Mean,
            many_to_one: true,
        }
    }
}
