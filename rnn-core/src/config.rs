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
    /// Each layer runs in both directions (PyTorch's `bidirectional`): a second set of
    /// weights (`*_reverse`) reads every sequence from its last step to its first, and the
    /// layer's output at step `t` is both directions' states side by side (`2H` wide), as
    /// the layer above and the head read it.
    pub bidirectional: bool,
    /// Token input through an embedding of this many tokens (PyTorch's `nn.Embedding(V, I)`
    /// before the first layer, `num_embeddings = V`): batches give token ids `[T, B]`
    /// ([`crate::batch::Batch::of_tokens`]) and the first layer reads their rows of the
    /// table `embedding.weight` `[V, I]`. `None`: dense inputs `[T, B, I]`.
    pub num_embeddings: Option<usize>,
    /// LSTM projections of this width `P < H` (PyTorch's `proj_size`): each layer's state is
    /// `h_t = W_hr (o_t ⊙ tanh(c_t))`, `P` wide, with `weight_hr_l{k}` `[P, H]`; that state
    /// feeds the recurrent product (`weight_hh` is `[4H, P]`), the layer above and the head,
    /// while the cell state stays `H` wide. `None`: no projection.
    pub proj_size: Option<usize>,
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
            bidirectional: false,
            num_embeddings: None,
            proj_size: None,
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

    /// Runs every layer in both directions (PyTorch's `bidirectional=True`).
    ///
    /// Full BPTT over whole sequences only: a bidirectional model's step needs every step of
    /// a sequence before its first output, so truncated BPTT ([`crate::tbptt::Tbptt`]),
    /// step-by-step prediction ([`crate::predict::Predictor`]) and checkpointed segments
    /// ([`crate::trainer::Memory`]) refuse it with a typed error.
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::Layout};
    /// let cfg = RnnConfig::lstm(3, 4, 2).layers(2).bidirectional();
    /// let layout = Layout::new(&cfg);
    /// assert_eq!(layout.find("rnn.weight_ih_l1_reverse").unwrap().shape, [16, 8]); // [4H, 2H]
    /// assert_eq!(layout.find("head.weight").unwrap().shape, [2, 8]); // [O, 2H]
    /// assert_eq!(cfg.directions(), 2);
    /// ```
    pub fn bidirectional(mut self) -> Self {
        self.bidirectional = true;
        self
    }

    /// Reads token ids in `0..num_embeddings` through an embedding table
    /// (`embedding.weight` `[num_embeddings, I]`, PyTorch's `nn.Embedding(num_embeddings,
    /// I)`) instead of dense inputs: `I` is the embedding's width.
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::Layout};
    /// let cfg = RnnConfig::lstm(16, 32, 100).embedding(100); // 100 tokens in, 100 classes out
    /// assert_eq!(Layout::new(&cfg).find("embedding.weight").unwrap().shape, [100, 16]);
    /// ```
    pub fn embedding(mut self, num_embeddings: usize) -> Self {
        self.num_embeddings = Some(num_embeddings);
        self
    }

    /// Projects each LSTM layer's state to `proj_size` units (PyTorch's `nn.LSTM(...,
    /// proj_size=P)`, LSTMP): [`RnnConfig::proj_size`](field@RnnConfig::proj_size).
    ///
    /// ```
    /// use rnn_core::{config::RnnConfig, params::Layout};
    /// let cfg = RnnConfig::lstm(3, 8, 2).layers(2).projection(5);
    /// let layout = Layout::new(&cfg);
    /// assert_eq!(layout.find("rnn.weight_hr_l0").unwrap().shape, [5, 8]); // [P, H]
    /// assert_eq!(layout.find("rnn.weight_hh_l0").unwrap().shape, [32, 5]); // [4H, P]
    /// assert_eq!(layout.find("rnn.weight_ih_l1").unwrap().shape, [32, 5]); // reads P
    /// assert_eq!(layout.find("head.weight").unwrap().shape, [2, 5]);
    /// assert_eq!(cfg.state_size(), 5);
    /// ```
    pub fn projection(mut self, proj_size: usize) -> Self {
        self.proj_size = Some(proj_size);
        self
    }

    /// Width of a layer's state `h` in one direction: `P` with projections, else `H`.
    pub fn state_size(&self) -> usize {
        self.proj_size.unwrap_or(self.hidden_size)
    }

    /// `D`: 2 for a bidirectional model, else 1.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// `L · D`: the recurrent passes of a model, which its states (`h0`, `[L·D, B, H]`) and
    /// layer buffers are indexed by (`2k + d` for layer `k`, direction `d`, as in PyTorch).
    pub fn passes(&self) -> usize {
        self.num_layers * self.directions()
    }

    /// Width of each layer's output, which the layer above and the head read: `D · H` (or
    /// `D · P` with projections).
    pub fn output_width(&self) -> usize {
        self.directions() * self.state_size()
    }

    /// The number of parameters ([`crate::params::Layout::new`]'s `len`), or `None` when it
    /// is past `usize`: a model no memory could hold.
    ///
    /// ```
    /// use rnn_core::config::RnnConfig;
    /// // weight_ih 4·16·3, weight_hh 4·16·16, two biases 4·16, head 2·16 + 2.
    /// assert_eq!(RnnConfig::lstm(3, 16, 2).parameter_count(), Some(1378));
    /// assert_eq!(RnnConfig::lstm(1 << 40, 1 << 40, 2).parameter_count(), None);
    /// ```
    pub fn parameter_count(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let (h, s, o) = (self.hidden_size, self.state_size(), self.output_size);
        let gh = mul(self.cell.gates(), h)?;
        let width = mul(self.directions(), s)?;
        let mut count = mul(self.num_embeddings.unwrap_or(0), self.input_size)?;
        let biases = if self.bias { mul(2, gh)? } else { 0 };
        let projection = self.proj_size.map_or(Some(0), |p| mul(p, h))?;
        for k in 0..self.num_layers.min(2) {
            let input = if k == 0 { self.input_size } else { width };
            let weights = mul(gh, input)?.checked_add(mul(gh, s)?)?;
            let pass = weights.checked_add(biases)?.checked_add(projection)?;
            // Layer 0's passes, or those of every layer above it (all alike).
            let layers = if k == 0 { 1 } else { self.num_layers - 1 };
            count = count.checked_add(mul(mul(layers, self.directions())?, pass)?)?;
        }
        count = count.checked_add(mul(o, width)?.checked_add(o)?)?;
        if self.learn_h0 {
            let cell_state = if self.cell.has_cell_state() { h } else { 0 };
            let passes = mul(self.num_layers, self.directions())?;
            count = count.checked_add(mul(passes, s.checked_add(cell_state)?)?)?;
        }
        Some(count)
    }

    /// Checks every size is positive, the activation fits the cell and the parameters can
    /// be counted.
    ///
    /// # Errors
    /// [`RnnError::Empty`] naming the zero size; [`RnnError::Config`] for a ReLU LSTM or GRU
    /// (their activations are fixed, as in PyTorch) or more parameters than `usize` counts.
    pub fn validate(&self) -> Result<()> {
        if self.cell != Cell::Rnn && self.nonlinearity != Nonlinearity::Tanh {
            return Err(RnnError::Config(format!(
                "nonlinearity {} applies to the rnn cell only, not {}",
                self.nonlinearity.as_str(),
                self.cell.as_str()
            )));
        }
        for (what, v) in [
            ("num_embeddings", self.num_embeddings.unwrap_or(1)),
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("output_size", self.output_size),
        ] {
            if v == 0 {
                return Err(RnnError::Empty { what });
            }
        }
        if let Some(p) = self.proj_size {
            if self.cell != Cell::Lstm {
                return Err(RnnError::Config(format!(
                    "proj_size applies to the lstm cell only, not {}",
                    self.cell.as_str()
                )));
            }
            if p == 0 || p >= self.hidden_size {
                return Err(RnnError::Config(format!(
                    "proj_size {p} must be in 1..hidden_size ({}), as PyTorch requires",
                    self.hidden_size
                )));
            }
        }
        if self.parameter_count().is_none() {
            return Err(RnnError::Config(format!(
                "a model of input {}, hidden {}, {} layers and output {} has more parameters \
                 than usize counts",
                self.input_size, self.hidden_size, self.num_layers, self.output_size
            )));
        }
        Ok(())
    }

    /// Rows of `weight_ih` / `weight_hh`: `gates · H`.
    pub fn gate_rows(&self) -> usize {
        self.cell.gates() * self.hidden_size
    }

    /// Input width of layer `k` (`I` for the first, `D · H` above, or `D · P` with
    /// projections).
    pub fn layer_input(&self, k: usize) -> usize {
        if k == 0 {
            self.input_size
        } else {
            self.output_width()
        }
    }
}

/// The loss function. With `d = y - target` per output element:
///
/// | kind | per element | `dL/dy` | PyTorch |
/// |---|---|---|---|
/// | [`Mse`](LossKind::Mse) | `d²` | `2d` | `nn.MSELoss` |
/// | [`L1`](LossKind::L1) | `abs(d)` | `sign(d)` (0 at 0) | `nn.L1Loss` |
/// | [`Huber`](LossKind::Huber) | `d²/2` where `abs(d) < δ`, else `δ (abs(d) - δ/2)` | `clamp(d, -δ, δ)` | `nn.HuberLoss(delta=δ)` |
/// | [`SmoothL1`](LossKind::SmoothL1) | `d²/(2β)` where `abs(d) < β`, else `abs(d) - β/2` | `clamp(d/β, -1, 1)` | `nn.SmoothL1Loss(beta=β)` |
/// | [`BceWithLogits`](LossKind::BceWithLogits) | `max(y, 0) - y·target + ln(1 + e^(-abs(y)))` | `σ(y) - target` | `nn.BCEWithLogitsLoss` |
///
/// The five compare float targets element by element, and `mean` averages over every
/// element of the scored positions (`O` per position), as PyTorch does. L1, Huber and
/// smooth L1 grow only linearly with large errors, so outliers in a series pull on the
/// weights no harder than a bounded amount (Huber and smooth L1 stay quadratic, and smooth,
/// near the target; smooth L1 is Huber divided by its threshold, so its slope far from the
/// target is 1 whatever `β`).
/// Cross-entropy scores class labels instead, optionally against smoothed labels
/// ([`LossKind::cross_entropy`], PyTorch's `label_smoothing`).
///
/// ```
/// use rnn_core::config::LossKind;
/// let huber = LossKind::huber(0.5)?;
/// assert_eq!(huber, LossKind::Huber(rnn_core::config::HuberDelta::new(0.5)?));
/// assert!(huber.takes_values() && !LossKind::CrossEntropy.takes_values());
/// assert!(LossKind::huber(0.0).is_err() && LossKind::huber(f64::NAN).is_err());
/// # Ok::<(), rnn_core::error::RnnError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossKind {
    /// Mean squared error against float targets (`nn.MSELoss`).
    Mse,
    /// Softmax cross-entropy against class labels (`nn.CrossEntropyLoss`).
    CrossEntropy,
    /// Mean absolute error against float targets (`nn.L1Loss`).
    L1,
    /// Huber loss against float targets with threshold `δ` (`nn.HuberLoss(delta=δ)`).
    Huber(HuberDelta),
    /// Softmax cross-entropy against class labels smoothed by `ε`
    /// (`nn.CrossEntropyLoss(label_smoothing=ε)`): each scored position's target is
    /// `(1 - ε) onehot(label) + ε / O`, and the loss `-Σ_c target_c log softmax(y)_c`.
    /// Ignored labels and reductions are as for [`LossKind::CrossEntropy`].
    SmoothedCrossEntropy(LabelSmoothing),
    /// Smooth L1 loss against float targets with threshold `β`
    /// (`nn.SmoothL1Loss(beta=β)`): the Huber loss of threshold `β`, divided by `β`. `β` is
    /// held as a [`HuberDelta`] (finite and positive); [`LossKind::smooth_l1`] gives
    /// [`LossKind::L1`] at `β = 0`, as PyTorch does.
    SmoothL1(HuberDelta),
    /// Binary cross-entropy on logits against float targets in `[0, 1]`, one independent
    /// yes/no (or probability) per output (`nn.BCEWithLogitsLoss`): multi-label
    /// classification, event detection at every step.
    BceWithLogits,
}

impl LossKind {
    /// `nn.HuberLoss(delta=delta)`.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `delta` is finite and positive (PyTorch refuses the
    /// rest too).
    pub fn huber(delta: f64) -> Result<Self> {
        HuberDelta::new(delta).map(Self::Huber)
    }

    /// `nn.SmoothL1Loss(beta=beta)`: plain [`LossKind::L1`] at 0.
    ///
    /// ```
    /// use rnn_core::config::LossKind;
    /// assert_eq!(LossKind::smooth_l1(0.0)?, LossKind::L1);
    /// assert!(matches!(LossKind::smooth_l1(0.5)?, LossKind::SmoothL1(b) if b.get() == 0.5));
    /// assert!(LossKind::smooth_l1(-1.0).is_err() && LossKind::smooth_l1(f64::NAN).is_err());
    /// # Ok::<(), rnn_core::error::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `beta` is finite and non-negative (PyTorch refuses a
    /// negative one).
    pub fn smooth_l1(beta: f64) -> Result<Self> {
        if beta == 0.0 {
            return Ok(Self::L1);
        }
        HuberDelta::new(beta).map(Self::SmoothL1).map_err(|_| {
            RnnError::Config(format!(
                "smooth L1 beta = {beta}: it must be finite and non-negative"
            ))
        })
    }

    /// `nn.CrossEntropyLoss(label_smoothing=smoothing)`: plain
    /// [`LossKind::CrossEntropy`] at 0.
    ///
    /// ```
    /// use rnn_core::config::LossKind;
    /// assert_eq!(LossKind::cross_entropy(0.0)?, LossKind::CrossEntropy);
    /// assert_eq!(LossKind::cross_entropy(0.1)?.label_smoothing(), Some(0.1));
    /// assert!(LossKind::cross_entropy(1.5).is_err() && LossKind::cross_entropy(-0.1).is_err());
    /// # Ok::<(), rnn_core::error::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `0 <= smoothing <= 1` (PyTorch's range).
    pub fn cross_entropy(smoothing: f64) -> Result<Self> {
        let smoothing = LabelSmoothing::new(smoothing)?;
        Ok(if smoothing.get() == 0.0 {
            Self::CrossEntropy
        } else {
            Self::SmoothedCrossEntropy(smoothing)
        })
    }

    /// Whether the loss compares float targets (`Target::Values`); only cross-entropy
    /// takes class labels.
    pub fn takes_values(self) -> bool {
        self.label_smoothing().is_none()
    }

    /// Whether the loss takes a weight per class or output ([`LossSpec::with_class_weights`]):
    /// the cross-entropies and binary cross-entropy.
    pub fn takes_class_weights(self) -> bool {
        !self.takes_values() || self == Self::BceWithLogits
    }

    /// For the cross-entropy losses, their label smoothing `ε` (0 for
    /// [`LossKind::CrossEntropy`]); `None` for the losses on float targets.
    pub fn label_smoothing(self) -> Option<f64> {
        match self {
            Self::CrossEntropy => Some(0.0),
            Self::SmoothedCrossEntropy(eps) => Some(eps.get()),
            Self::Mse | Self::L1 | Self::Huber(_) | Self::SmoothL1(_) | Self::BceWithLogits => None,
        }
    }

    /// The loss's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mse => "MSE",
            Self::CrossEntropy => "cross-entropy",
            Self::SmoothedCrossEntropy(_) => "cross-entropy with label smoothing",
            Self::L1 => "L1",
            Self::Huber(_) => "Huber",
            Self::SmoothL1(_) => "smooth L1",
            Self::BceWithLogits => "BCE with logits",
        }
    }
}

/// The threshold `δ` of a Huber loss: finite and positive, so never NaN (which is why it can
/// be `Eq`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HuberDelta(f64);

impl Eq for HuberDelta {}

impl HuberDelta {
    /// `delta` as a Huber threshold.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `delta` is finite and positive.
    pub fn new(delta: f64) -> Result<Self> {
        if delta.is_finite() && delta > 0.0 {
            Ok(Self(delta))
        } else {
            Err(RnnError::Config(format!(
                "Huber delta = {delta}: it must be finite and positive"
            )))
        }
    }

    /// The threshold.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// The label smoothing `ε` of a cross-entropy loss: in `[0, 1]`, so never NaN (which is
/// why it can be `Eq`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelSmoothing(f64);

impl Eq for LabelSmoothing {}

impl LabelSmoothing {
    /// `smoothing` as a label smoothing.
    ///
    /// # Errors
    /// [`RnnError::Config`] unless `0 <= smoothing <= 1`.
    pub fn new(smoothing: f64) -> Result<Self> {
        if (0.0..=1.0).contains(&smoothing) {
            Ok(Self(smoothing))
        } else {
            Err(RnnError::Config(format!(
                "label smoothing = {smoothing}: it must be between 0 and 1"
            )))
        }
    }

    /// `ε`.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// How per-element losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Average over the scored positions (the float-target losses: also over `O`).
    #[default]
    Mean,
    /// Sum.
    Sum,
}

/// A weight per class for cross-entropy (PyTorch's `nn.CrossEntropyLoss(weight=w)`): each
/// scored position counts `w[label]` times, and a `mean` divides by the sum of its positions'
/// `w[label]` instead of their number. With label smoothing the spread part weighs every
/// class by its own weight, as PyTorch does. Cheap to clone (the weights are shared).
///
/// ```
/// use rnn_core::config::ClassWeights;
/// let w = ClassWeights::new(&[1.0, 4.0, 0.5])?;
/// assert_eq!(w.get(), &[1.0, 4.0, 0.5]);
/// assert!(ClassWeights::new(&[1.0, -1.0]).is_err());
/// assert!(ClassWeights::new(&[0.0, 0.0]).is_err());
/// # Ok::<(), rnn_core::error::RnnError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ClassWeights(std::sync::Arc<[f64]>);

/// Every weight is finite, so never NaN.
impl Eq for ClassWeights {}

impl ClassWeights {
    /// `weights`, one per class (the model's output size).
    ///
    /// # Errors
    /// [`RnnError::Empty`] for no weights; [`RnnError::Config`] unless every weight is finite
    /// and non-negative and one at least is positive.
    pub fn new(weights: &[f64]) -> Result<Self> {
        if weights.is_empty() {
            return Err(RnnError::Empty {
                what: "class weights",
            });
        }
        if let Some((class, w)) =
            (weights.iter().enumerate()).find(|&(_, w)| !(w.is_finite() && *w >= 0.0))
        {
            return Err(RnnError::Config(format!(
                "class weight {class} = {w}: weights must be finite and non-negative"
            )));
        }
        if weights.iter().all(|&w| w == 0.0) {
            return Err(RnnError::Config(
                "every class weight is 0: no position would count".into(),
            ));
        }
        Ok(Self(weights.into()))
    }

    /// The weights, one per class.
    pub fn get(&self) -> &[f64] {
        &self.0
    }
}

/// Where the loss is taken and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossSpec {
    /// The loss function.
    pub kind: LossKind,
    /// The reduction.
    pub reduction: Reduction,
    /// Score only the final hidden state (`[B, O]` outputs) instead of every step.
    pub many_to_one: bool,
    /// Cross-entropy: a weight per class; binary cross-entropy: a weight per output, each
    /// output's terms rescaled (PyTorch's `weight` of either; `None`: every one weighs 1).
    /// See [`LossSpec::with_class_weights`].
    pub class_weights: Option<ClassWeights>,
    /// [`LossKind::BceWithLogits`] only: a weight per output on its positive targets
    /// (PyTorch's `pos_weight`; `None`: 1 each). See [`LossSpec::with_pos_weights`].
    pub pos_weights: Option<ClassWeights>,
}

impl LossSpec {
    /// A loss at every step with reduction `mean`.
    pub fn every_step(kind: LossKind) -> Self {
        Self {
            kind,
            reduction: Reduction::Mean,
            many_to_one: false,
            class_weights: None,
            pos_weights: None,
        }
    }

    /// A loss at the last step only with reduction `mean`.
    pub fn last_step(kind: LossKind) -> Self {
        Self {
            many_to_one: true,
            ..Self::every_step(kind)
        }
    }

    /// This cross-entropy weighted per class (PyTorch's `weight`; see [`ClassWeights`]), or
    /// this binary cross-entropy per output (PyTorch's `BCEWithLogitsLoss(weight=w)` with `w`
    /// of shape `[O]`): each output's terms times its weight, a `mean` still dividing by the
    /// number of elements, as PyTorch's does (with [`LossSpec::with_pos_weights`] too, both
    /// apply).
    ///
    /// ```
    /// use rnn_core::config::{LossKind, LossSpec};
    /// let spec = LossSpec::every_step(LossKind::CrossEntropy).with_class_weights(&[1.0, 9.0])?;
    /// assert_eq!(spec.class_weights.unwrap().get(), &[1.0, 9.0]);
    /// let bce = LossSpec::every_step(LossKind::BceWithLogits).with_class_weights(&[0.5, 2.0])?;
    /// assert_eq!(bce.class_weights.unwrap().get(), &[0.5, 2.0]);
    /// assert!(LossSpec::every_step(LossKind::Mse).with_class_weights(&[1.0]).is_err());
    /// # Ok::<(), rnn_core::error::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] for a loss on float targets other than binary cross-entropy,
    /// and [`ClassWeights::new`]'s errors.
    /// The number of weights is checked against the model's output size with each batch
    /// ([`crate::batch::Batch::validate`]).
    pub fn with_class_weights(self, weights: &[f64]) -> Result<Self> {
        if !self.kind.takes_class_weights() {
            return Err(class_weights_need_labels(self.kind));
        }
        Ok(Self {
            class_weights: Some(ClassWeights::new(weights)?),
            ..self
        })
    }

    /// This binary cross-entropy with a weight per output on its positive targets (PyTorch's
    /// `BCEWithLogitsLoss(pos_weight=w)`): an element's loss is
    /// `-w·t·ln σ(y) - (1 - t)·ln(1 - σ(y))`, so `w` above 1 counts a missed positive more (a
    /// rare label of a multi-label task: `w` = negatives / positives). A `mean` still divides
    /// by the number of elements, as PyTorch's does.
    ///
    /// ```
    /// use rnn_core::config::{LossKind, LossSpec};
    /// let spec = LossSpec::every_step(LossKind::BceWithLogits).with_pos_weights(&[1.0, 9.0])?;
    /// assert_eq!(spec.pos_weights.unwrap().get(), &[1.0, 9.0]);
    /// assert!(LossSpec::every_step(LossKind::Mse).with_pos_weights(&[1.0]).is_err());
    /// # Ok::<(), rnn_core::error::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] for another loss, and [`ClassWeights::new`]'s errors. The number
    /// of weights is checked against the model's output size with each batch.
    pub fn with_pos_weights(self, weights: &[f64]) -> Result<Self> {
        if self.kind != LossKind::BceWithLogits {
            return Err(pos_weights_need_bce(self.kind));
        }
        Ok(Self {
            pos_weights: Some(ClassWeights::new(weights)?),
            ..self
        })
    }
}

impl LossSpec {
    /// Checks the spec fits `config`: class weights only on a cross-entropy or a binary
    /// cross-entropy, positive weights only on a binary cross-entropy, one per output.
    ///
    /// # Errors
    /// [`RnnError::Config`] for class weights on another loss of float targets or positive
    /// weights on another loss than [`LossKind::BceWithLogits`],
    /// [`RnnError::ShapeMismatch`] for a number of them other than `config.output_size`.
    pub fn validate(&self, config: &RnnConfig) -> Result<()> {
        if self.class_weights.is_some() && !self.kind.takes_class_weights() {
            return Err(class_weights_need_labels(self.kind));
        }
        if self.pos_weights.is_some() && self.kind != LossKind::BceWithLogits {
            return Err(pos_weights_need_bce(self.kind));
        }
        let o = config.output_size;
        let weights = [
            ("class weights", &self.class_weights),
            ("pos weights", &self.pos_weights),
        ];
        for (what, weights) in weights {
            if let Some(w) = weights.as_ref().filter(|w| w.get().len() != o) {
                return Err(crate::error::shape(what, format!("[O={o}]"), w.get().len()));
            }
        }
        Ok(())
    }
}

/// The error for positive weights on another loss than binary cross-entropy.
fn pos_weights_need_bce(kind: LossKind) -> RnnError {
    RnnError::Config(format!(
        "positive weights apply to BCE with logits only, not {}",
        kind.name()
    ))
}

/// The error for class weights on a loss of float targets other than BCE.
fn class_weights_need_labels(kind: LossKind) -> RnnError {
    RnnError::Config(format!(
        "class weights apply to cross-entropy and BCE with logits only, not {}",
        kind.name()
    ))
}
