//! Parameters in one flat buffer with an offset table, under PyTorch's names.
//!
//! Gradients and optimizer state mirror the same layout, so global-norm clipping and the
//! optimizer update are single passes over flat slices.

use std::ops::Range;

use kernels::Float;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::config::RnnConfig;
use crate::error::{Result, shape};

/// Where one recurrent layer's tensors live in the flat buffer (`G` gates: 1 for RNN, 4 for
/// LSTM, 3 for GRU, stacked in PyTorch's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSlots {
    /// `weight_ih_l{k}`: `[G·H, I]` (layer 0) or `[G·H, D·H]` (`D·P` with projections).
    pub w_ih: Range<usize>,
    /// `weight_hh_l{k}`: `[G·H, H]` (`[G·H, P]` with projections).
    pub w_hh: Range<usize>,
    /// `bias_ih_l{k}`: `[G·H]` (`None` without biases, [`RnnConfig::bias`](method@RnnConfig::bias)).
    pub b_ih: Option<Range<usize>>,
    /// `bias_hh_l{k}`: `[G·H]` (`None` without biases).
    pub b_hh: Option<Range<usize>>,
    /// `weight_hr_l{k}`: `[P, H]`, an LSTM's projection (`None` without one,
    /// [`RnnConfig::proj_size`](field@RnnConfig::proj_size)).
    pub w_hr: Option<Range<usize>>,
}

impl LayerSlots {
    /// Every tensor's elements: `w_ih`, `w_hh`, then the biases and projection it has.
    pub fn ranges(&self) -> impl Iterator<Item = &Range<usize>> {
        let optional = [&self.b_ih, &self.b_hh, &self.w_hr].map(Option::as_ref);
        [&self.w_ih, &self.w_hh]
            .into_iter()
            .chain(optional.into_iter().flatten())
    }
}

/// One named tensor of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// State-dict name: `rnn.weight_ih_l0`, ..., `head.weight`, `head.bias`.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Elements in the flat buffer.
    pub range: Range<usize>,
}

/// The offset table of a model's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `embedding.weight`: `[V, I]`, the token embedding (when the config has one).
    pub embedding: Option<Range<usize>>,
    /// Recurrent passes, bottom first (`k·D + d` for layer `k`, direction `d`).
    pub layers: Vec<LayerSlots>,
    /// `head.weight`: `[O, D·H]` (`[O, D·P]` with projections).
    pub w_hy: Range<usize>,
    /// `head.bias`: `[O]`.
    pub b_y: Range<usize>,
    /// `rnn.h0`: `[L·D, H]` (`[L·D, P]` with projections), the learned initial state (when
    /// the config asks for one).
    pub h0: Option<Range<usize>>,
    /// `rnn.c0`: `[L·D, H]`, the learned initial cell state of a learned-state LSTM.
    pub c0: Option<Range<usize>>,
    /// Every tensor in state-dict order.
    pub tensors: Vec<Tensor>,
    /// Total number of scalars.
    pub len: usize,
}

impl Layout {
    /// The layout of `config`.
    pub fn new(config: &RnnConfig) -> Self {
        let (h, s, gh) = (config.hidden_size, config.state_size(), config.gate_rows());
        let mut tensors = Vec::new();
        let mut at = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let n: usize = shape.iter().product();
            let range = at..at + n;
            at += n;
            tensors.push(Tensor {
                name,
                shape,
                range: range.clone(),
            });
            range
        };
        let embedding = config
            .num_embeddings
            .map(|v| push("embedding.weight".into(), vec![v, config.input_size]));
        // Pass `j = k·D + d`: layer k, direction d, with PyTorch's `_reverse` suffix.
        let layers = (0..config.passes())
            .map(|j| {
                let (k, d) = (j / config.directions(), j % config.directions());
                let sfx = if d == 1 { "_reverse" } else { "" };
                LayerSlots {
                    w_ih: push(
                        format!("rnn.weight_ih_l{k}{sfx}"),
                        vec![gh, config.layer_input(k)],
                    ),
                    w_hh: push(format!("rnn.weight_hh_l{k}{sfx}"), vec![gh, s]),
                    b_ih: config
                        .bias
                        .then(|| push(format!("rnn.bias_ih_l{k}{sfx}"), vec![gh])),
                    b_hh: config
                        .bias
                        .then(|| push(format!("rnn.bias_hh_l{k}{sfx}"), vec![gh])),
                    w_hr: config
                        .proj_size
                        .map(|p| push(format!("rnn.weight_hr_l{k}{sfx}"), vec![p, h])),
                }
            })
            .collect();
        let w_hy = push(
            "head.weight".into(),
            vec![config.output_size, config.output_width()],
        );
        let b_y = push("head.bias".into(), vec![config.output_size]);
        let h0 = config
            .learn_h0
            .then(|| push("rnn.h0".into(), vec![config.passes(), s]));
        let c0 = (config.learn_h0 && config.cell.has_cell_state())
            .then(|| push("rnn.c0".into(), vec![config.passes(), h]));
        Self {
            embedding,
            layers,
            w_hy,
            b_y,
            h0,
            c0,
            tensors,
            len: at,
        }
    }

    /// The tensor called `name`, if any.
    pub fn find(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The layout of `config` once `params` are known to be a model of it: a valid config,
    /// one value per parameter, every value finite. Whatever takes a caller's parameters
    /// (a trainer, a predictor, a save) checks them here, so none holds or writes a model
    /// that could not be loaded back.
    ///
    /// # Errors
    /// The config's own error, [`RnnError::ShapeMismatch`](crate::error::RnnError) for a
    /// wrong length, [`RnnError::NonFiniteInput`](crate::error::RnnError) naming the first
    /// NaN or infinity.
    pub(crate) fn of_params<T: Float>(config: &RnnConfig, params: &[T]) -> Result<Self> {
        config.validate()?;
        let layout = Self::new(config);
        if params.len() != layout.len {
            return Err(shape("params", layout.len, params.len()));
        }
        crate::batch::finite("params", params)?;
        Ok(layout)
    }
}

/// PyTorch's default initialisation: every recurrent tensor (projections included) uniform in `±1/sqrt(H)`
/// (`nn.RNN` / `nn.LSTM` / `nn.GRU`'s `reset_parameters`), the head's weight and bias uniform
/// in `±1/sqrt(H)` (`nn.Linear`: Kaiming-uniform with `a = sqrt(5)` gives the same bound). A
/// learned `h0` (and `c0`) starts at zero. An embedding table is drawn from `N(0, 1)`
/// (`nn.Embedding`'s).
///
/// ```
/// use rnn_core::{config::RnnConfig, params::{init_params, Layout}};
/// let cfg = RnnConfig::new(3, 4, 2);
/// let p: Vec<f32> = init_params(&cfg, 0);
/// assert_eq!(p.len(), Layout::new(&cfg).len);
/// assert!(p.iter().all(|x| x.abs() <= 0.5));
/// let learned: Vec<f32> = init_params(&cfg.learned_h0(), 0);
/// assert_eq!(&learned[..p.len()], &p[..]); // same draw for the shared tensors
/// assert!(learned[p.len()..].iter().all(|&x| x == 0.0));
/// ```
pub fn init_params<T: Float>(config: &RnnConfig, seed: u64) -> Vec<T> {
    let mut params = vec![T::zero(); Layout::new(config).len];
    init_params_into(config, seed, &mut params);
    params
}

/// [`init_params`] into `params`, of [`Layout::new`]'s length: for a buffer the caller
/// allocated (one whose allocation may fail).
pub(crate) fn init_params_into<T: Float>(config: &RnnConfig, seed: u64, params: &mut [T]) {
    let layout = Layout::new(config);
    assert_eq!(params.len(), layout.len, "params length");
    let bound = 1.0 / (config.hidden_size as f64).sqrt();
    let mut rng = StdRng::seed_from_u64(seed);
    for p in params.iter_mut() {
        *p = T::of(rng.random_range(-bound..=bound));
    }
    for state in [layout.h0, layout.c0].into_iter().flatten() {
        params[state].fill(T::zero());
    }
    if let Some(table) = layout.embedding {
        // Box-Muller: pairs of uniforms to pairs of standard normals.
        for pair in params[table].chunks_mut(2) {
            let (u, v): (f64, f64) = (rng.random(), rng.random());
            let r = (-2.0 * (1.0 - u).ln()).sqrt();
            let angle = std::f64::consts::TAU * v;
            for (p, z) in pair.iter_mut().zip([r * angle.cos(), r * angle.sin()]) {
                *p = T::of(z);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cell;
    use proptest::prelude::*;

    proptest! {
        /// Any mix of the options: the count is the layout's.
        #[test]
        fn any_config_counts_its_layouts_parameters(
            cell in 0usize..3,
            (input, hidden, output) in (1usize..40, 2usize..40, 1usize..40),
            layers in 1usize..5,
            (bidirectional, bias, learned, embedded, projected) in
                (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        ) {
            let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
            let mut cfg = RnnConfig::new(input, hidden, output).cell(cell).layers(layers).bias(bias);
            if bidirectional {
                cfg = cfg.bidirectional();
            }
            if learned {
                cfg = cfg.learned_h0();
            }
            if embedded {
                cfg = cfg.embedding(input + 3);
            }
            if projected && cell == Cell::Lstm {
                cfg = cfg.projection(hidden / 2);
            }
            prop_assert_eq!(cfg.parameter_count(), Some(Layout::new(&cfg).len));
        }
    }

    /// The count a config gives before any layout is built is the layout's, for every cell
    /// and option.
    #[test]
    fn a_config_counts_its_layouts_parameters() {
        for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
            for layers in 1..=3 {
                for option in 0..6 {
                    let mut cfg = RnnConfig::new(3, 7, 5).cell(cell).layers(layers);
                    cfg = match option {
                        1 => cfg.bidirectional(),
                        2 => cfg.bias(false),
                        3 => cfg.embedding(11),
                        4 => cfg.learned_h0().bidirectional(),
                        5 if cell == Cell::Lstm => cfg.projection(4).bidirectional().learned_h0(),
                        _ => cfg,
                    };
                    let count = cfg.parameter_count();
                    assert_eq!(count, Some(Layout::new(&cfg).len), "{cfg:?}");
                }
            }
        }
    }
}
