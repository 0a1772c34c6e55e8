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

/// The recurrent cell of every layer, with PyTorch's equations and gate order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Cell {
    /// Elman RNN (`nn.RNN`): `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.
    #[default]
    Rnn,
    /// `nn.LSTM`, gates `i, f, g, o`: `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`.
    Lstm,
    /// `nn.GRU`, gates `r, z, n`: `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`,
    /// `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`.
    Gru,
}

impl Cell {
    /// Gates stacked in `weight_ih` / `weight_hh` (rows are `gates() · H`): 1, 4 or 3.
    pub fn gates(self) -> usize {
        match self {
            Self::Rnn => 1,
            Self::Lstm => 4,
            Self::Gru => 3,
        }
    }

    /// The name used in file metadata: `"rnn"`, `"lstm"` or `"gru"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rnn => "rnn",
            Self::Lstm => "lstm",
            Self::Gru => "gru",
        }
    }

    /// Parses [`Cell::as_str`]'s names.
    ///
    /// # Errors
    /// [`RnnError::Config`] for anything else.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "rnn" => Ok(Self::Rnn),
            "lstm" => Ok(Self::Lstm),
            "gru" => Ok(Self::Gru),
            _ => Err(RnnError::Config(format!(
                "cell must be rnn, lstm or gru, got {s:?}"
            ))),
        }
    }

    /// Whether the cell carries a second state (the LSTM's `c`).
    pub fn has_cell_state(self) -> bool {
        self == Self::Lstm
    }
}

/// The architecture: a stack of `L` recurrent layers and a linear head.
///
/// Equivalent to PyTorch's `nn.RNN(I, H, num_layers=L, nonlinearity=..., bias=...)` (or
/// `nn.LSTM`, `nn.GRU`) followed by `nn.Linear(H, O)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RnnConfig {
    /// The recurrent cell.
    pub cell: Cell,
    /// `I`, features per input step.
    pub input_size: usize,
    /// `H`, hidden units per layer.
    pub hidden_size: usize,
    /// `L`, stacked layers (layer k+1 reads layer k's hidden states).
    pub num_layers: usize,
    /// `O`, head outputs per step (classes, for cross-entropy).
    pub output_size: usize,
    /// The recurrent activation of an Elman cell ([`Cell::Rnn`] only).
    pub nonlinearity: Nonlinearity,
    /// Learn the initial state: a parameter `rnn.h0` `[L, H]` (and for LSTM `rnn.c0`), zeros
    /// at first, broadcast over the batch whenever a batch gives no state of its own.
    pub learn_h0: bool,
    /// Whether the recurrent layers have biases `b_ih`, `b_hh` (PyTorch's `bias`, default
    /// true). Without them the layers compute their equations with both biases zero and hold
    /// no bias tensors; the head keeps its bias either way.
    pub bias: bool,
}

impl RnnConfig {
    /// A one-layer tanh RNN.
    pub fn new(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        Self {
            cell: Cell::Rnn,
            input_size,
            hidden_size,
            num_layers: 1,
            output_size,
            nonlinearity: Nonlinearity::Tanh,
            learn_h0: false,
            bias: true,
        }
    }

    /// A one-layer LSTM.
    ///
    /// ```
    /// use rnn_core::config::{Cell, RnnConfig};
    /// assert_eq!(RnnConfig::lstm(3, 8, 2), RnnConfig::new(3, 8, 2).cell(Cell::Lstm));
    /// ```
    pub fn lstm(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        Self::new(input_size, hidden_size, output_size).cell(Cell::Lstm)
    }

    /// A one-layer GRU.
    pub fn gru(input_size: usize, hidden_size: usize, output_size: usize) -> Self {
        Self::new(input_size, hidden_size, output_size).cell(Cell::Gru)
    }

    /// Sets the cell.
    pub fn cell(mut self, cell: Cell) -> Self {
        self.cell = cell;
        self
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

    /// Sets whether the recurrent layers have biases (PyTorch's `bias=False` is
    /// `.bias(false)`).
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::Layout};
    /// let with = Layout::new(&RnnConfig::gru(3, 4, 2));
    /// let without = Layout::new(&RnnConfig::gru(3, 4, 2).bias(false));
    /// assert_eq!(with.len - without.len, 2 * 3 * 4); // b_ih and b_hh, [3H] each
    /// assert!(without.find("rnn.bias_ih_l0").is_none());
    /// assert!(without.find("head.bias").is_some());
    /// ```
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Checks every size is positive and the activation fits the cell.
    ///
    /// # Errors
    /// [`RnnError::Empty`] naming the zero size; [`RnnError::Config`] for a ReLU LSTM or GRU
    /// (their activations are fixed, as in PyTorch).
    pub fn validate(&self) -> Result<()> {
        if self.cell != Cell::Rnn && self.nonlinearity != Nonlinearity::Tanh {
            return Err(RnnError::Config(format!(
                "nonlinearity {} applies to the rnn cell only, not {}",
                self.nonlinearity.as_str(),
                self.cell.as_str()
            )));
        }
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

    /// Rows of `weight_ih` / `weight_hh`: `gates · H`.
    pub fn gate_rows(&self) -> usize {
        self.cell.gates() * self.hidden_size
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
