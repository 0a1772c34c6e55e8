//! A batch of sequences and its validation at the API boundary.

use kernels::Float;

use crate::config::{LossSpec, Reduction, RnnConfig};
use crate::error::{Result, RnnError, shape};

/// A class label that scores nothing (PyTorch's `ignore_index`): a position labelled so
/// adds no loss and no gradient, and a `mean` averages over the other positions only.
///
/// ```
/// use rnn_core::prelude::*;
/// let loss_of = |reduction| -> Result<f64, rnn_core::error::RnnError> {
///     let spec = LossSpec { reduction, ..LossSpec::every_step(LossKind::CrossEntropy) };
///     let mut tr = Trainer::<f64>::new(RnnConfig::new(2, 4, 3), spec, OptimizerKind::sgd(0.1), 0)?;
///     let x = [0.5; 2 * 2 * 2]; // T = 2, B = 2, I = 2
///     tr.evaluate(&Batch::new(2, 2, &x, Target::Classes(&[1, 2, IGNORED_LABEL, 0])))
/// };
/// // Three labelled positions: the mean is their sum over 3, not 4.
/// assert!((loss_of(Reduction::Mean)? - loss_of(Reduction::Sum)? / 3.0).abs() < 1e-12);
/// # Ok::<(), rnn_core::error::RnnError>(())
/// ```
pub const IGNORED_LABEL: usize = usize::MAX;

/// What the head's outputs are scored against.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a, T> {
    /// Float targets for MSE, L1, Huber and smooth L1: `[T, B, O]`, or `[B, O]` when
    /// many-to-one.
    Values(&'a [T]),
    /// Class labels for cross-entropy: `[T, B]`, or `[B]` when many-to-one; a label may be
    /// [`IGNORED_LABEL`].
    Classes(&'a [usize]),
    /// No targets: for a batch that is only run forward ([`crate::trainer::Trainer::outputs`])
    /// or scored by a loss of the caller's own ([`crate::trainer::Trainer::step_with`]). The
    /// built-in losses refuse it.
    None,
}

impl<T> Target<'_, T> {
    /// Whether position `p` (`t · B + b`, or `b` when many-to-one) has a target: float
    /// targets always do, a label unless it is [`IGNORED_LABEL`].
    fn labelled(&self, p: usize) -> bool {
        match self {
            Self::Values(_) | Self::None => true,
            Self::Classes(c) => c[p] != IGNORED_LABEL,
        }
    }
}

/// A time-major batch of `B` sequences of `T` steps.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a, T> {
    /// `T`, steps.
    pub seq_len: usize,
    /// `B`, sequences.
    pub batch: usize,
    /// `[T, B, I]` inputs (empty with `tokens`).
    pub x: &'a [T],
    /// `[T, B]` token ids, the input of a model with an embedding
    /// ([`RnnConfig::embedding`](method@RnnConfig::embedding)) instead of `x`.
    pub tokens: Option<&'a [usize]>,
    /// The targets.
    pub target: Target<'a, T>,
    /// Optional per-sequence lengths in `1..=T` (PyTorch's packed-sequence semantics):
    /// positions at or past a sequence's length score no loss and leave its state unchanged.
    /// Sequences listed longest first cost each step only the running ones
    /// ([`Batch::live_rows`]); a trainer runs a batch in any other order longest first, on a
    /// copy, as PyTorch's `enforce_sorted=False` sorts it (what it gives per sequence comes
    /// back in the batch's order).
    pub lengths: Option<&'a [usize]>,
    /// Optional initial state `[L·D, B, H]`, `2k + d` for layer `k` and direction `d` (zeros,
    /// or the learned state, when `None`).
    pub h0: Option<&'a [T]>,
    /// Optional initial cell state `[L·D, B, H]` of an LSTM (zeros, or the learned state, when
    /// `None`).
    pub c0: Option<&'a [T]>,
    /// Steps before this one score no loss (0: all do), for a loss at every step. Truncated
    /// BPTT with `k2 > k1` replays steps it has already scored to carry gradient through them.
    pub score_from: usize,
    /// Optional weight per sequence `[B]` (finite, non-negative; Keras' `sample_weight`):
    /// each of a sequence's loss terms counts its weight times, and a `mean` divides by the
    /// scored positions' total weight, as it does with class weights
    /// ([`Batch::with_sequence_weights`]).
    pub sequence_weights: Option<&'a [T]>,
}

impl<'a, T: Float> Batch<'a, T> {
    /// A batch with no lengths and a zero initial state.
    pub fn new(seq_len: usize, batch: usize, x: &'a [T], target: Target<'a, T>) -> Self {
        Self {
            seq_len,
            batch,
            x,
            tokens: None,
            target,
            lengths: None,
            h0: None,
            c0: None,
            score_from: 0,
            sequence_weights: None,
        }
    }

    /// A batch of token ids `[T, B]` for a model with an embedding, with no lengths and a zero
    /// initial state.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let cfg = RnnConfig::gru(8, 16, 5).embedding(5); // next-token prediction over 5 tokens
    /// let mut tr = Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::CrossEntropy), OptimizerKind::adam(1e-2), 0)?;
    /// let (tokens, next) = ([0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 1]); // T = 3, B = 2
    /// let first = tr.step(&Batch::of_tokens(3, 2, &tokens, Target::Classes(&next)))?.loss;
    /// for _ in 0..30 { tr.step(&Batch::of_tokens(3, 2, &tokens, Target::Classes(&next)))?; }
    /// assert!(tr.evaluate(&Batch::of_tokens(3, 2, &tokens, Target::Classes(&next)))? < first);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn of_tokens(
        seq_len: usize,
        batch: usize,
        tokens: &'a [usize],
        target: Target<'a, T>,
    ) -> Self {
        Self {
            tokens: Some(tokens),
            ..Self::new(seq_len, batch, &[], target)
        }
    }

    /// This batch with a weight per sequence (`[B]`, finite and non-negative): sequence
    /// `b`'s loss terms count `weights[b]` times, and a `mean` divides by the scored
    /// positions' total weight (times `O` for float targets, times their class weights for
    /// weighted labels). A weight of 2 trains as the sequence twice in the batch would; a
    /// weight of 0 as if it were not there. PyTorch: `(loss(reduction="none") * w).sum() /
    /// (mask * w).sum()`.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let mut tr = Trainer::<f64>::new(RnnConfig::new(1, 4, 1), LossSpec::every_step(LossKind::Mse), OptimizerKind::sgd(0.1), 0)?;
    /// // Two sequences of 3 steps (time-major), the second weighted 3 times the first ...
    /// let (x, y) = ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]);
    /// let weighted = tr.evaluate(&Batch::new(3, 2, &x, Target::Values(&y)).with_sequence_weights(&[1.0, 3.0]))?;
    /// // ... scores as the batch holding the second one three times.
    /// let x4: Vec<f64> = x.chunks(2).flat_map(|s| [s[0], s[1], s[1], s[1]]).collect();
    /// let y4: Vec<f64> = y.chunks(2).flat_map(|s| [s[0], s[1], s[1], s[1]]).collect();
    /// let repeated = tr.evaluate(&Batch::new(3, 4, &x4, Target::Values(&y4)))?;
    /// assert!((weighted - repeated).abs() < 1e-12);
    /// # Ok::<(), RnnError>(())
    /// ```
    pub fn with_sequence_weights(self, weights: &'a [T]) -> Self {
        Self {
            sequence_weights: Some(weights),
            ..self
        }
    }

    /// Whether sequence `b` is still running at step `t`.
    #[inline]
    pub fn active(&self, t: usize, b: usize) -> bool {
        self.lengths.is_none_or(|l| t < l[b])
    }

    /// Whether step `t` of sequence `b` scores a loss (every-step losses): it is running and
    /// not before [`Batch::score_from`].
    #[inline]
    pub fn scored(&self, t: usize, b: usize) -> bool {
        t >= self.score_from && self.active(t, b)
    }

    /// Whether the loss scores position `(t, b)`: a step [`Batch::scored`] (every step of
    /// a many-to-one loss, whose `t` is 0), with a target that is not [`IGNORED_LABEL`].
    #[inline]
    pub fn scores(&self, many_to_one: bool, t: usize, b: usize) -> bool {
        let position = if many_to_one { b } else { t * self.batch + b };
        (many_to_one || self.scored(t, b)) && self.target.labelled(position)
    }

    /// The sequences that have ended by step `t` (none without lengths): their state is
    /// carried unchanged and they score no loss.
    #[inline]
    pub fn finished(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        let lengths = self.lengths.unwrap_or(&[]);
        (0..lengths.len()).filter(move |&b| t >= lengths[b])
    }

    /// Whether every sequence is running at step `t`.
    #[inline]
    pub fn all_active(&self, t: usize) -> bool {
        self.lengths.is_none_or(|l| l.iter().all(|&n| t < n))
    }

    /// The rows `0..n` of step `t` that hold every sequence still running: `B` without
    /// lengths, else one past the last running row. Every row from `n` on has finished, so a
    /// step computes its first `n` rows only and carries the rest. In a batch ordered longest
    /// first `n` is the number of running sequences, and a step costs what its running
    /// sequences do, as with PyTorch's packed sequences: a trainer's training passes copy a
    /// batch in any other order so ([`crate::trainer::Trainer::loss_and_grads`]), and
    /// [`crate::loader::Loader::longest_first`] lists batches so.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let x = [0.0f32; 4 * 3];
    /// let batch = Batch::new(4, 3, &x, Target::Classes(&[0, 0, 0]));
    /// assert_eq!(batch.live_rows(3), 3);
    /// let lengths = [4, 2, 1]; // longest first
    /// let sorted = Batch { lengths: Some(&lengths), ..batch };
    /// assert_eq!([0, 1, 2, 3].map(|t| sorted.live_rows(t)), [3, 2, 1, 1]);
    /// let lengths = [1, 4, 2]; // the longest in the middle: its row and those before it
    /// let unsorted = Batch { lengths: Some(&lengths), ..batch };
    /// assert_eq!([0, 1, 2, 3].map(|t| unsorted.live_rows(t)), [3, 3, 2, 2]);
    /// ```
    #[inline]
    pub fn live_rows(&self, t: usize) -> usize {
        self.lengths.map_or(self.batch, |l| {
            l.iter().rposition(|&n| t < n).map_or(0, |last| last + 1)
        })
    }

    /// Checks what a forward pass reads (the inputs `x`, the initial states, the lengths)
    /// against `config`; the targets are not looked at.
    ///
    /// # Errors
    /// The first problem found, as a typed [`RnnError`] naming it.
    pub fn validate_inputs(&self, config: &RnnConfig) -> Result<()> {
        let (t, b) = (self.seq_len, self.batch);
        if t == 0 {
            return Err(RnnError::Empty {
                what: "sequence length T",
            });
        }
        if b == 0 {
            return Err(RnnError::Empty {
                what: "batch size B",
            });
        }
        let i = config.input_size;
        match (config.num_embeddings, self.tokens) {
            (None, None) => {
                expect_len("x", self.x.len(), &[t, b, i], |n| {
                    format!("[T={t}, B={b}, I={i}] = {n}")
                })?;
                finite("x", self.x)?;
            }
            (Some(v), Some(tokens)) => {
                expect_len("tokens", tokens.len(), &[t, b], |_| {
                    format!("[T={t}, B={b}]")
                })?;
                if !self.x.is_empty() {
                    return Err(RnnError::Config(
                        "a batch of tokens takes no x: the embedding gives the inputs".into(),
                    ));
                }
                if let Some(p) = tokens.iter().position(|&token| token >= v) {
                    return Err(RnnError::TokenOutOfRange {
                        t: p / b,
                        b: p % b,
                        token: tokens[p],
                        num_embeddings: v,
                    });
                }
            }
            (Some(v), None) => {
                return Err(RnnError::Config(format!(
                    "the model reads tokens through an embedding of {v}: give the batch tokens \
                     (Batch::of_tokens), not x"
                )));
            }
            (None, Some(_)) => {
                return Err(RnnError::Config(
                    "tokens given, but the model has no embedding (RnnConfig::embedding)".into(),
                ));
            }
        }
        if self.c0.is_some() && !config.cell.has_cell_state() {
            return Err(RnnError::Config(format!(
                "c0 given, but a {} cell has no cell state",
                config.cell.as_str()
            )));
        }
        for (what, state, cell_state) in [("h0", self.h0, false), ("c0", self.c0, true)] {
            if let Some(state) = state {
                check_state(what, state, config, b, cell_state)?;
            }
        }
        if let Some(lengths) = self.lengths {
            check_lengths(lengths, t, b)?;
        }
        Ok(())
    }

    /// Whether the batch's inputs hold the `[T, B]` rows it claims (`x` or `tokens`, the
    /// one `config` reads): what must be so before anything is sized by `T` and `B`, for a
    /// claim no memory could hold overflows the sizes. Checks nothing else.
    pub(crate) fn holds_its_rows(&self, config: &RnnConfig) -> bool {
        let (t, b) = (self.seq_len, self.batch);
        let rows = t.checked_mul(b);
        match (config.num_embeddings, self.tokens) {
            (Some(_), Some(tokens)) => rows == Some(tokens.len()),
            _ => rows.and_then(|r| r.checked_mul(config.input_size)) == Some(self.x.len()),
        }
    }

    /// Checks every shape, length, label and value against `config` and `loss`.
    ///
    /// # Errors
    /// The first problem found, as a typed [`RnnError`] naming it.
    pub fn validate(&self, config: &RnnConfig, loss: &LossSpec) -> Result<()> {
        self.validate_inputs(config)?;
        loss.validate(config)?;
        let (t, b, o) = (self.seq_len, self.batch, config.output_size);
        if !loss.many_to_one && self.score_from >= t {
            return Err(RnnError::Config(format!(
                "score_from = {} leaves no step of T = {t} to score",
                self.score_from
            )));
        }
        // The inputs' shape checked, `T·B` counts real rows: only `·O` could overflow.
        let positions = if loss.many_to_one { b } else { t * b };
        match (loss.kind, self.target) {
            (kind, Target::Values(v)) if kind.takes_values() => {
                expect_len("target", v.len(), &[positions, o], |_| {
                    if loss.many_to_one {
                        format!("[B={b}, O={o}]")
                    } else {
                        format!("[T={t}, B={b}, O={o}]")
                    }
                })?;
                finite("target", v)?;
            }
            (kind, Target::Classes(c)) if !kind.takes_values() => {
                if c.len() != positions {
                    let want = if loss.many_to_one {
                        format!("[B={b}]")
                    } else {
                        format!("[T={t}, B={b}]")
                    };
                    return Err(shape("target labels", want, c.len()));
                }
                let weights = loss.class_weights.as_ref().map(|w| w.get());
                // The labelled positions' weight: their number when unweighted.
                let mut labelled = 0.0;
                for (p, &label) in c.iter().enumerate() {
                    let (tt, bb) = if loss.many_to_one {
                        (0, p)
                    } else {
                        (p / b, p % b)
                    };
                    if !self.scores(loss.many_to_one, tt, bb) {
                        continue;
                    }
                    if label >= o {
                        return Err(RnnError::LabelOutOfRange {
                            t: tt,
                            b: bb,
                            label,
                            classes: o,
                        });
                    }
                    labelled += weights.map_or(1.0, |w| w[label]);
                }
                if labelled == 0.0 && loss.reduction == Reduction::Mean {
                    return Err(RnnError::Config(if weights.is_some() {
                        "every scored position's label is IGNORED_LABEL or has class weight \
                         0: a mean over no weight is undefined (PyTorch gives NaN)"
                            .into()
                    } else {
                        "every scored position's label is IGNORED_LABEL: a mean over no \
                         position is undefined (PyTorch gives NaN)"
                            .into()
                    }));
                }
            }
            (kind, Target::Classes(_)) => {
                return Err(RnnError::Config(format!(
                    "{} needs float targets, got class labels",
                    kind.name()
                )));
            }
            (kind, Target::None) => {
                return Err(RnnError::Config(format!(
                    "{} needs targets, but the batch has none (Target::None is for a loss of \
                     your own: Trainer::step_with, Tbptt::step_with)",
                    kind.name()
                )));
            }
            (kind, Target::Values(_)) => {
                return Err(RnnError::Config(format!(
                    "{} needs class labels, got float targets",
                    kind.name()
                )));
            }
        }
        if let Some(w) = self.sequence_weights {
            self.validate_sequence_weights(w, config, loss)?;
        }
        Ok(())
    }

    /// Checks a batch for a loss of the caller's own
    /// ([`crate::trainer::Trainer::step_with`]): its inputs, as
    /// [`Batch::validate_inputs`] does, a first scored step inside it, and that it carries
    /// nothing only the built-in losses read (targets, sequence weights), which such a loss
    /// would silently pass over.
    ///
    /// # Errors
    /// The first problem found, as a typed [`RnnError`] naming it.
    pub fn validate_own_loss(&self, config: &RnnConfig) -> Result<()> {
        self.validate_inputs(config)?;
        if self.score_from >= self.seq_len {
            return Err(RnnError::Config(format!(
                "score_from = {} leaves no step of T = {} to score",
                self.score_from, self.seq_len
            )));
        }
        let built_in = if !matches!(self.target, Target::None) {
            Some("targets")
        } else if self.sequence_weights.is_some() {
            Some("sequence weights")
        } else {
            None
        };
        match built_in {
            Some(what) => Err(RnnError::Config(format!(
                "a loss of your own reads the outputs alone, but the batch has {what}, which \
                 only the built-in losses read: build it with Target::None, and weigh or skip \
                 positions in the loss"
            ))),
            None => Ok(()),
        }
    }

    /// Sequence weights: one per sequence, finite and non-negative, and under `mean` some
    /// weight on a scored position.
    fn validate_sequence_weights(
        &self,
        w: &[T],
        config: &RnnConfig,
        loss: &LossSpec,
    ) -> Result<()> {
        check_weights("sequence_weights", "sequence weight", w, self.batch)?;
        if loss.reduction == Reduction::Mean
            && crate::network::mean_divisor(config, self, loss) == 0.0
        {
            return Err(RnnError::Config(
                "every scored position's sequence weight is 0: a mean over no weight is \
                 undefined"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Loss weights, one for each of `count` sequences or streams: [`RnnError::ShapeMismatch`]
/// naming `what` for another count, [`RnnError::NonFiniteInput`] for a NaN or infinity, and
/// [`RnnError::Config`] naming the first negative one as `each` and its index.
pub(crate) fn check_weights<T: Float>(
    what: &'static str,
    each: &str,
    weights: &[T],
    count: usize,
) -> Result<()> {
    if weights.len() != count {
        return Err(shape(what, format!("[B={count}]"), weights.len()));
    }
    finite(what, weights)?;
    if let Some(index) = weights.iter().position(|&v| v < T::zero()) {
        return Err(RnnError::Config(format!(
            "{each} {index} = {}: weights must be non-negative",
            weights[index].f64()
        )));
    }
    Ok(())
}

/// A state of every layer and direction for `b` sequences (`[L·D, B, S]`: an `h0`, or the
/// gradient of final states), or with `cell_state` an LSTM cell state (`[L·D, B, H]`), named
/// `what`: [`RnnError::ShapeMismatch`] for another length, [`RnnError::NonFiniteInput`] for
/// a NaN or infinity.
pub(crate) fn check_state<T: Float>(
    what: &'static str,
    state: &[T],
    config: &RnnConfig,
    b: usize,
    cell_state: bool,
) -> Result<()> {
    // With projections the state `h` is `P` wide, the cell state `H`.
    let (width, named) = match (cell_state, config.proj_size) {
        (false, Some(_)) => (config.state_size(), "P"),
        _ => (config.hidden_size, "H"),
    };
    let l = config.passes();
    expect_len(what, state.len(), &[l, b, width], |n| {
        format!("[L·D={l}, B={b}, {named}={width}] = {n}")
    })?;
    finite(what, state)
}

/// [`RnnError::ShapeMismatch`] for `what` unless its `len` elements are the product of
/// `dims`, described by `expected` given that product's text. A product past `usize` is a
/// mismatch like any other (no buffer holds that many), not an overflow.
fn expect_len(
    what: &'static str,
    len: usize,
    dims: &[usize],
    expected: impl FnOnce(String) -> String,
) -> Result<()> {
    let want = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if want == Some(len) {
        return Ok(());
    }
    let count = want.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
    Err(shape(what, expected(count), len))
}

/// [`RnnError::NonFiniteInput`] naming `what` and the first NaN or infinity in `v`.
pub(crate) fn finite<T: Float>(what: &'static str, v: &[T]) -> Result<()> {
    // One vectorised pass settles the common case: a finite sum of squares means every value
    // is finite. Only a non-finite sum (a NaN or infinity, or finite values whose squares
    // overflow) pays for the scalar scan, which stops at the first culprit but does not
    // vectorise: on char's 266k inputs it took about 0.2 ms of every training step.
    if kernels::reduce::sum_squares(v).is_finite() {
        return Ok(());
    }
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(RnnError::NonFiniteInput {
            what,
            index,
            value: v[index].f64(),
        }),
        None => Ok(()),
    }
}

/// `lengths` holds one length in `1..=t` per sequence of `b`.
pub(crate) fn check_lengths(lengths: &[usize], t: usize, b: usize) -> Result<()> {
    if lengths.len() != b {
        return Err(shape("lengths", format!("[B={b}]"), lengths.len()));
    }
    match lengths.iter().enumerate().find(|&(_, &n)| n == 0 || n > t) {
        Some((index, &length)) => Err(RnnError::LengthOutOfRange {
            index,
            length,
            seq_len: t,
        }),
        None => Ok(()),
    }
}
