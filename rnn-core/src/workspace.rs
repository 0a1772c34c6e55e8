//! Every activation and temporary of a training pass, allocated once per shape.
//!
//! [`Workspace::ensure`] sizes all buffers for `(T, B)` in this one function; their capacity
//! only grows, so after the first pass at the largest shape nothing allocates again, and the
//! step loops never allocate.

use kernels::Float;

use crate::config::RnnConfig;

/// Buffers of one recurrent layer.
#[derive(Clone, Debug, Default)]
pub struct LayerBuffers<T> {
    /// `[T+1, B, H]`; `hs[0] = h0`, `hs[t+1] = h_t`. `hs[0..T]` and `hs[1..=T]` are both
    /// `[T·B, H]` views with no copy.
    pub hs: Vec<T>,
    /// `[T, B, H]`: pre-activations without bias in the forward pass. The backward pass
    /// reuses it: first `dL/dh_t` from above (head or next layer), to which the recurrent term
    /// `dZ_{t+1} W_hh` is added, then `dZ_t` in place. One buffer instead of three.
    pub z: Vec<T>,
    /// `[H, H]`: `W_hhᵀ`, packed once per pass so the recurrent product streams rows.
    pub w_hh_t: Vec<T>,
    /// `[H]`: `b_ih + b_hh`, added once (both biases get the same gradient).
    pub bias: Vec<T>,
}

/// All buffers of a forward + backward pass.
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    /// Recurrent layers, bottom first.
    pub layers: Vec<LayerBuffers<T>>,
    /// Head outputs: `[T, B, O]`, or `[B, O]` when the loss is many-to-one.
    pub y: Vec<T>,
    /// `dL/dy`, same shape as `y`.
    pub dy: Vec<T>,
    /// `[T, B, I]`: `dL/dx`, allocated and filled only when asked for.
    pub dx: Vec<T>,
    /// `[L, B, H]`: `dL/dh0`.
    pub dh0: Vec<T>,
    shape: (usize, usize, bool),
}

fn grow<T: Float>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::zero());
}

impl<T: Float> Workspace<T> {
    /// An empty workspace; the first pass sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes every buffer for `seq_len` steps of `batch` sequences (no-op when unchanged).
    pub fn ensure(&mut self, config: &RnnConfig, seq_len: usize, batch: usize, many_to_one: bool) {
        if self.shape == (seq_len, batch, many_to_one) && self.layers.len() == config.num_layers {
            return;
        }
        let (h, o) = (config.hidden_size, config.output_size);
        let rows = seq_len * batch;
        self.layers
            .resize_with(config.num_layers, LayerBuffers::default);
        for l in &mut self.layers {
            grow(&mut l.hs, (seq_len + 1) * batch * h);
            grow(&mut l.z, rows * h);
            grow(&mut l.w_hh_t, h * h);
            grow(&mut l.bias, h);
        }
        let y_rows = if many_to_one { batch } else { rows };
        grow(&mut self.y, y_rows * o);
        grow(&mut self.dy, y_rows * o);
        grow(&mut self.dh0, config.num_layers * batch * h);
        self.shape = (seq_len, batch, many_to_one);
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| l.hs.len() + l.z.len() + l.w_hh_t.len() + l.bias.len())
            .sum();
        (per_layer + self.y.len() + self.dy.len() + self.dx.len() + self.dh0.len()) * T::BYTES
    }
}
