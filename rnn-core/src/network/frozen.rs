//! What a pass may leave out because nothing will read it: the gradients of frozen tensors
//! ([`crate::trainer::Trainer::freeze`]), and the work only they need.

use std::ops::Range;

use crate::layer::LayerFrozen;
use crate::params::Layout;

/// Parts of a model whose gradients a pass may leave out ([`PassOptions::frozen`](super::PassOptions::frozen)): where
/// it does, they come out zero; elsewhere they are computed as always.
///
/// ```
/// use rnn_core::network::{Frozen, FrozenTensors, PassOptions, forward_backward};
/// use rnn_core::params::{Layout, init_params};
/// use rnn_core::prelude::*;
/// use rnn_core::workspace::Workspace;
/// let cfg = RnnConfig::lstm(3, 8, 2).layers(3);
/// let (layout, params) = (Layout::new(&cfg), init_params::<f64>(&cfg, 0));
/// let mut grads = vec![0.0; layout.len];
/// let (x, y) = (vec![0.5; 4 * 2 * 3], vec![0.1; 4 * 2 * 2]); // T = 4, B = 2
/// let batch = Batch::new(4, 2, &x, Target::Values(&y));
/// let w_hh_1 = layout.layers[1].w_hh.clone();
/// let frozen = Frozen {
///     bottom_layers: 1,
///     tensors: FrozenTensors::of(&layout, |range| *range == w_hh_1),
///     ..Frozen::default()
/// };
/// let opts = PassOptions { frozen, ..PassOptions::default() };
/// let spec = LossSpec::every_step(LossKind::Mse);
/// forward_backward(&cfg, &layout, &params, &mut grads, &mut Workspace::new(), &batch, &spec, opts)?;
/// let bottom = layout.layers[0].w_ih.start..layout.layers[1].w_ih.start;
/// assert!(grads[bottom].iter().all(|&g| g == 0.0)); // layer 0's backward never ran
/// assert!(grads[w_hh_1].iter().all(|&g| g == 0.0)); // nor layer 1's dW_hh product
/// assert!(grads[layout.layers[1].w_ih.clone()].iter().any(|&g| g != 0.0));
/// # Ok::<(), RnnError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frozen {
    /// The embedding table, whose gradient then comes out zero: a batch of tokens needs no
    /// `dL/dx` (the table's scatter is its only reader) unless [`PassOptions::input_grad`](super::PassOptions::input_grad)
    /// asks for it.
    pub embedding: bool,
    /// The bottom `n` recurrent layers, both directions of a bidirectional one (their
    /// tensors, and their rows of learned initial states): the backward pass stops above
    /// them, as nothing below needs `dL/dh`. It runs them all the same where something below
    /// does: `dL/dx` (asked for, or a table that is not frozen), or telemetry.
    pub bottom_layers: usize,
    /// Single tensors anywhere in the stack or the head: their own gradient products (and
    /// bias column sums) are left out, while `dL/dh` still flows through them.
    pub tensors: FrozenTensors,
}

/// A set of a model's recurrent and head tensors whose gradient products a pass leaves out
/// ([`Frozen::tensors`]): `dW_ih = dZᵀ X`, `dW_hh = dZᵀ H_prev`, `dW_hr`, the bias column
/// sums, the head's `dW_hy` and `db_y`. Each is a product over all the pass's rows, as big
/// as a forward one. Tensors of passes past [`FrozenTensors::MAX_PASSES`] are not held:
/// their gradients are computed as always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrozenTensors {
    /// Per recurrent pass (`k·D + d`), its frozen slots.
    passes: [LayerFrozen; FrozenTensors::MAX_PASSES],
    head_weight: bool,
    head_bias: bool,
}

impl FrozenTensors {
    /// The recurrent passes (layers times directions) the set can hold.
    pub const MAX_PASSES: usize = 32;

    /// The tensors of `layout` (but the embedding table and learned initial states, which
    /// [`Frozen`] handles otherwise) whose elements `frozen` picks.
    pub fn of(layout: &Layout, frozen: impl Fn(&Range<usize>) -> bool) -> Self {
        let mut set = Self {
            head_weight: frozen(&layout.w_hy),
            head_bias: frozen(&layout.b_y),
            ..Self::default()
        };
        for (pass, slots) in set.passes.iter_mut().zip(&layout.layers) {
            *pass = LayerFrozen::of(slots, &frozen);
        }
        set
    }

    /// Whether the set holds no tensor.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Pass `j`'s frozen tensors.
    pub(crate) fn pass(&self, j: usize) -> LayerFrozen {
        self.passes.get(j).copied().unwrap_or_default()
    }

    /// Whether the head's weight is frozen.
    pub(crate) fn head_weight(&self) -> bool {
        self.head_weight
    }

    /// Whether the head's bias is frozen.
    pub(crate) fn head_bias(&self) -> bool {
        self.head_bias
    }
}
