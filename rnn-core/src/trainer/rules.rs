//! Rules for single tensors, PyTorch's `requires_grad_(False)` and parameter groups: a
//! frozen tensor (no update, no gradient, work skipped where only it needs it), or one with
//! its own learning rate and weight decay. The trainer keeps one [`TensorRule`] per tensor
//! that has any; the optimizer applies them ([`crate::optim::Optimizer::update_with_rules`]).

use std::ops::Range;

use kernels::Float;

use super::Trainer;
use crate::error::{Result, RnnError};
use crate::network::{Frozen, FrozenTensors};
use crate::optim::TensorRule;

impl<T: Float> Trainer<T> {
    /// Freezes the parameter tensor `name` (a state-dict name: `embedding.weight`,
    /// `rnn.weight_ih_l0`, `head.bias`, ...), as PyTorch's `requires_grad_(False)` does:
    /// updates leave it and its optimizer state as they are. Its gradient is zero (PyTorch's
    /// is `None`), so it takes no part in the non-finite check, the norm or clipping; the
    /// optimizer passes over it (no weight decay, no momentum), and its own update count
    /// (Adam's bias correction, Adagrad's rate decay) stands still until
    /// [`Trainer::unfreeze`], as a PyTorch parameter's `step` does. Freezing a frozen tensor
    /// does nothing.
    ///
    /// Steps skip the work only frozen tensors need, as PyTorch's autograd does: any frozen
    /// weight's gradient product (`dW = dZᵀ X` over all steps, as big as a forward product)
    /// and bias sum, in any layer or the head; a frozen table's gradient scatter and the
    /// `dL/dx` product feeding it; and the whole backward pass of the bottom layers when
    /// they, the table and any learned initial state are all frozen (both directions of a
    /// bidirectional layer; not with telemetry, which reports every layer). On char's data
    /// (`H` = 512, `T` = 128, `B` = 32) through a two-layer LSTM, one thread, a step took
    /// 0.68x the time with layer 0 frozen, 0.90x with `rnn.weight_ih_l1` frozen and 0.36x
    /// with only the head training (`cargo bench -p bench-suite --bench train_step --
    /// fine_tune`).
    ///
    /// Which tensors are frozen is the program's to set, as in PyTorch: a checkpoint keeps
    /// each tensor's update count ([`crate::optim::Optimizer::updates_seen`]), so freeze them again on
    /// resume.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::gru(2, 8, 3).embedding(10);
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::CrossEntropy), OptimizerKind::adamw(1e-2), 0)?;
    /// tr.freeze("embedding.weight")?; // pretrained vectors, kept as they are
    /// let before = tr.params.to_vec();
    /// let (tokens, labels) = ([1usize, 4, 2, 7], [0usize, 2, 1, 1]); // T = 2, B = 2
    /// tr.step(&Batch::of_tokens(2, 2, &tokens, Target::Classes(&labels)))?;
    /// let embedding = tr.layout.find("embedding.weight").unwrap().range.clone();
    /// assert_eq!(tr.params[embedding.clone()], before[embedding]);
    /// assert_ne!(tr.params[..], before[..]);
    /// assert_eq!(tr.frozen(), ["embedding.weight"]);
    /// assert!(tr.freeze("rnn.weight_xx_l0").is_err());
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] naming the model's tensors if it has none called `name`.
    pub fn freeze(&mut self, name: &str) -> Result<()> {
        self.change_rule(name, |rule| rule.frozen = true)
    }

    /// Lets updates change the tensor `name` again after [`Trainer::freeze`] (PyTorch's
    /// `requires_grad_(True)`); its optimizer state and update count go on from where they
    /// stood. Unfreezing a tensor that is not frozen does nothing.
    ///
    /// # Errors
    /// [`RnnError::Config`] naming the model's tensors if it has none called `name`.
    pub fn unfreeze(&mut self, name: &str) -> Result<()> {
        self.change_rule(name, |rule| rule.frozen = false)
    }

    /// Freezes every tensor whose state-dict name `pick` accepts ([`Trainer::freeze`]), as a
    /// PyTorch loop over `named_parameters()` would; returns how many it picked.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::lstm(3, 8, 2).layers(2);
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::Mse), OptimizerKind::adam(1e-3), 0)?;
    /// // A linear probe: everything but the head stays as it is.
    /// assert_eq!(tr.freeze_where(|name| name.starts_with("rnn.")), 8);
    /// assert_eq!(tr.frozen().len(), 8);
    /// assert_eq!(tr.unfreeze_where(|name| name.ends_with("_l1")), 4);
    /// assert_eq!(tr.frozen(), ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn freeze_where(&mut self, pick: impl Fn(&str) -> bool) -> usize {
        self.change_where(pick, |rule| rule.frozen = true)
    }

    /// Unfreezes every tensor whose name `pick` accepts ([`Trainer::unfreeze`]); returns how
    /// many it picked.
    pub fn unfreeze_where(&mut self, pick: impl Fn(&str) -> bool) -> usize {
        self.change_where(pick, |rule| rule.frozen = false)
    }

    /// Changes the rule of every tensor whose name `pick` accepts; returns how many.
    fn change_where(
        &mut self,
        pick: impl Fn(&str) -> bool,
        change: impl Fn(&mut TensorRule),
    ) -> usize {
        let picked: Vec<Range<usize>> = (self.layout.tensors.iter())
            .filter(|t| pick(&t.name))
            .map(|t| t.range.clone())
            .collect();
        for range in &picked {
            self.change_range(range.clone(), &change);
        }
        picked.len()
    }

    /// The frozen tensors' names ([`Trainer::freeze`]), in state-dict order.
    pub fn frozen(&self) -> Vec<&str> {
        let tensors = self.layout.tensors.iter();
        tensors
            .filter(|t| self.is_frozen(&t.range))
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Gives the tensor `name` a learning rate of `scale` times the optimizer's, schedules
    /// included: PyTorch's parameter group with its own `lr` (`scale` = its `lr` over the
    /// optimizer's), as in discriminative fine-tuning, where pretrained lower layers learn
    /// slower. 1 restores the optimizer's rate; 0 updates the tensor's state but not the
    /// tensor (a frozen tensor's state stands still: [`Trainer::freeze`]). PyTorch's
    /// schedules scale each group's rate as here, but share a floor (cosine's `eta_min`,
    /// `ReduceLROnPlateau`'s `min_lr`) that here is scaled too.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::lstm(2, 8, 3).layers(2);
    /// let mut tr = Trainer::<f64>::new(cfg, LossSpec::every_step(LossKind::CrossEntropy), OptimizerKind::adamw(1e-2), 0)?;
    /// for name in ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"] {
    ///     tr.set_lr_scale(name, 0.1)?; // the bottom layer learns at 1e-3
    /// }
    /// tr.set_weight_decay("head.bias", 0.0)?; // no decay on the head's bias
    /// assert_eq!(tr.lr_scale("rnn.bias_hh_l0")?, 0.1);
    /// assert_eq!(tr.weight_decay("head.bias")?, 0.0);
    /// assert_eq!(tr.weight_decay("head.weight")?, 0.01); // AdamW's default
    /// assert!(tr.set_lr_scale("head.bias", -1.0).is_err());
    /// # Ok::<(), RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Config`] for a name the model has no tensor for, or a `scale` that is
    /// negative or not finite; nothing changes then.
    pub fn set_lr_scale(&mut self, name: &str, scale: f64) -> Result<()> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(RnnError::Config(format!(
                "the learning-rate scale of {name:?} is {scale}: it must be finite and not \
                 negative"
            )));
        }
        self.change_rule(name, |rule| rule.lr_scale = scale)
    }

    /// Gives the tensor `name` its own weight decay instead of the optimizer's (L2, or
    /// decoupled for AdamW): PyTorch's parameter group with its own `weight_decay`, as in
    /// the common recipe that decays no bias. [`Trainer::clear_weight_decay`] returns it to
    /// the optimizer's.
    ///
    /// # Errors
    /// [`RnnError::Config`] for a name the model has no tensor for, or a `weight_decay`
    /// that is negative or not finite; nothing changes then.
    pub fn set_weight_decay(&mut self, name: &str, weight_decay: f64) -> Result<()> {
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(RnnError::Config(format!(
                "the weight decay of {name:?} is {weight_decay}: it must be finite and not \
                 negative"
            )));
        }
        self.change_rule(name, |rule| rule.weight_decay = Some(weight_decay))
    }

    /// Returns the tensor `name` to the optimizer's weight decay after
    /// [`Trainer::set_weight_decay`].
    ///
    /// # Errors
    /// [`RnnError::Config`] for a name the model has no tensor for.
    pub fn clear_weight_decay(&mut self, name: &str) -> Result<()> {
        self.change_rule(name, |rule| rule.weight_decay = None)
    }

    /// The tensor `name`'s learning rate over the optimizer's ([`Trainer::set_lr_scale`]).
    ///
    /// # Errors
    /// [`RnnError::Config`] for a name the model has no tensor for.
    pub fn lr_scale(&self, name: &str) -> Result<f64> {
        Ok(self.rule(name)?.map_or(1.0, |r| r.lr_scale))
    }

    /// The weight decay the tensor `name` updates with: its own
    /// ([`Trainer::set_weight_decay`]) or the optimizer's.
    ///
    /// # Errors
    /// [`RnnError::Config`] for a name the model has no tensor for.
    pub fn weight_decay(&self, name: &str) -> Result<f64> {
        let own = self.rule(name)?.and_then(|r| r.weight_decay);
        Ok(own.unwrap_or_else(|| self.optimizer.kind.weight_decay().f64()))
    }

    /// The elements of the tensor `name`.
    fn tensor_range(&self, name: &str) -> Result<Range<usize>> {
        match self.layout.find(name) {
            Some(t) => Ok(t.range.clone()),
            None => {
                let names: Vec<&str> = self.layout.tensors.iter().map(|t| &t.name[..]).collect();
                Err(RnnError::Config(format!(
                    "this model has no parameter tensor {name:?} (it has {names:?})"
                )))
            }
        }
    }

    /// The rule of the tensor `name`, if it has one.
    fn rule(&self, name: &str) -> Result<Option<&TensorRule>> {
        let range = self.tensor_range(name)?;
        Ok(self.rules.iter().find(|r| r.range == range))
    }

    /// Changes the rule of the tensor `name` (a new one, if it has none), keeping the rules
    /// sorted and dropping one that no longer changes anything.
    fn change_rule(&mut self, name: &str, change: impl FnOnce(&mut TensorRule)) -> Result<()> {
        let range = self.tensor_range(name)?;
        self.change_range(range, change);
        Ok(())
    }

    /// Changes the rule of the tensor with elements `range` (dropping a rule left at the
    /// defaults).
    fn change_range(&mut self, range: Range<usize>, change: impl FnOnce(&mut TensorRule)) {
        let i = match self
            .rules
            .binary_search_by_key(&range.start, |r| r.range.start)
        {
            Ok(i) => i,
            Err(i) => {
                self.rules.insert(i, TensorRule::new(range));
                i
            }
        };
        change(&mut self.rules[i]);
        if self.rules[i].is_default() {
            self.rules.remove(i);
        }
    }

    /// Whether the tensor with elements `range` is frozen.
    fn is_frozen(&self, range: &Range<usize>) -> bool {
        self.rules.iter().any(|r| r.frozen && r.range == *range)
    }

    /// What the frozen tensors let a pass leave out ([`Frozen`]): the embedding's scatter,
    /// and the backward pass of the bottom layers when nothing below them trains (no table
    /// or learned initial state that is not frozen).
    pub(super) fn frozen_parts(&self) -> Frozen {
        let frozen = |range: &Range<usize>| self.is_frozen(range);
        let layout = &self.layout;
        // What feeds the bottom layer: nothing of it may train for its backward to be skipped.
        let mut below = layout.embedding.iter().chain(&layout.h0).chain(&layout.c0);
        // A layer is its passes: both directions of a bidirectional one.
        let directions = self.config.passes() / self.config.num_layers;
        let bottom_layers = if below.all(frozen) {
            let layers = layout.layers.chunks(directions);
            layers
                .take_while(|passes| passes.iter().flat_map(|l| l.ranges()).all(frozen))
                .count()
        } else {
            0
        };
        Frozen {
            embedding: layout.embedding.as_ref().is_some_and(frozen),
            bottom_layers,
            tensors: FrozenTensors::of(layout, frozen),
        }
    }

    /// Zeroes the gradients of frozen tensors: in PyTorch they have none.
    pub(super) fn zero_frozen_grads(&mut self) {
        for rule in self.rules.iter().filter(|r| r.frozen) {
            self.grads[rule.range.clone()].fill(T::zero());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LossKind, LossSpec, RnnConfig};
    use crate::optim::OptimizerKind;

    fn trainer(cfg: RnnConfig) -> Trainer<f64> {
        let loss = LossSpec::every_step(LossKind::Mse);
        Trainer::new(cfg, loss, OptimizerKind::sgd(0.1), 0).unwrap()
    }

    /// The bottom layers' backward is left out only when they and everything below them
    /// (table, learned initial states) are frozen; in a bidirectional model, both directions.
    #[test]
    fn frozen_parts_name_what_a_pass_may_leave_out() {
        let parts = |embedding, bottom_layers| (embedding, bottom_layers);
        let left_out = |tr: &Trainer<f64>| {
            let f = tr.frozen_parts();
            (f.embedding, f.bottom_layers)
        };
        let stack = RnnConfig::lstm(3, 4, 2).layers(3);
        let mut tr = trainer(stack.embedding(5));
        tr.freeze_where(|n| n.ends_with("_l0") || n.ends_with("_l1"));
        assert_eq!(left_out(&tr), parts(false, 0)); // the table trains
        tr.freeze("embedding.weight").unwrap();
        assert_eq!(left_out(&tr), parts(true, 2));
        tr.unfreeze("rnn.bias_hh_l0").unwrap();
        assert_eq!(left_out(&tr), parts(true, 0));
        let mut tr = trainer(stack.learned_h0());
        tr.freeze_where(|n| n.ends_with("_l0"));
        assert_eq!(left_out(&tr), parts(false, 0)); // h0 and c0 train
        tr.freeze("rnn.h0").unwrap();
        tr.freeze("rnn.c0").unwrap();
        assert_eq!(left_out(&tr), parts(false, 1));
        let mut tr = trainer(RnnConfig::gru(3, 4, 2).layers(2).bidirectional());
        tr.freeze_where(|n| n.ends_with("_l0"));
        assert_eq!(left_out(&tr), parts(false, 0)); // the reverse direction trains
        tr.freeze_where(|n| n.contains("_l0"));
        assert_eq!(left_out(&tr), parts(false, 1));
    }

    /// Every frozen tensor of the stack and the head is named to the pass, whatever lies
    /// below it; nothing else is.
    #[test]
    fn frozen_parts_name_each_frozen_tensor() {
        use crate::layer::LayerFrozen;
        let mut tr = trainer(RnnConfig::lstm(3, 4, 2).layers(3).projection(2));
        assert!(tr.frozen_parts().tensors.is_empty());
        tr.freeze_where(|n| {
            ["weight_hh_l1", "bias_ih_l1", "weight_hr_l2", "head.bias"]
                .contains(&n.trim_start_matches("rnn."))
        });
        let tensors = tr.frozen_parts().tensors;
        assert_eq!(tensors.pass(0), LayerFrozen::default());
        assert!(tensors.pass(1).has(LayerFrozen::W_HH) && tensors.pass(1).has(LayerFrozen::B_IH));
        assert!(!tensors.pass(1).has(LayerFrozen::W_IH) && !tensors.pass(1).has(LayerFrozen::B_HH));
        assert!(tensors.pass(2).has(LayerFrozen::W_HR) && !tensors.pass(2).has(LayerFrozen::W_HH));
        assert!(tensors.head_bias() && !tensors.head_weight());
        tr.freeze("head.weight").unwrap();
        assert!(tr.frozen_parts().tensors.head_weight());
        assert_eq!(tr.frozen_parts().bottom_layers, 0);
    }
}
