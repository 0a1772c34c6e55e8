//! Connectionist temporal classification: PyTorch's `nn.CTCLoss`, for training a model whose
//! steps outnumber its labels and are not aligned with them (speech to characters,
//! handwriting, a sensor stream to events), and decoding of its outputs (greedy or by
//! prefix beam search).
//!
//! The model's head gives `C` logits per step, class `blank` among them; a target is a
//! sequence of labels (none of them the blank) at most as long as the sequence. Its loss is
//! `-ln Σ_π Π_t softmax(y_t)[π_t]`, over every path `π` of one class per step that reads as
//! the target once repeats are merged and blanks dropped (a blank must part two equal labels),
//! summed by the forward-backward recursions in f64 whatever `T` is: on probabilities
//! rescaled at every step (a multiply-add per state and step), or in log space for a
//! sequence whose rescaled values would leave f64's range or where a path far behind the
//! others could matter beyond 10^-12 of the result (an `exp` and a `ln` each: an order of
//! magnitude slower, exact at any probability). Sequences run in parallel on the
//! current rayon pool (a trainer's threads in [`Ctc::step`]), with the same bits on any
//! number of threads. CTC scores whole sequences: not [`crate::tbptt::Tbptt`]'s chunks.
//! Reductions as PyTorch's: `mean` divides each sequence's loss by its target's length (at
//! least 1) and averages over the batch, `sum` adds them up; [`Ctc::sequence_losses`] gives
//! each one (`reduction="none"`). A target that no path of its sequence's steps can read
//! (more labels and repeats than steps) costs `+∞`, which a trainer rejects as a non-finite
//! loss, unless [`Ctc::zero_infinity`] counts it as 0 with no gradient (PyTorch's
//! `zero_infinity=True`).
//!
//! PyTorch takes `log_softmax` outputs; here the loss takes the logits and applies the
//! softmax itself, so its gradient is `dL/dy = softmax(y) - γ` per step (times the
//! reduction's scale), `γ_t(k)` being the posterior share of the paths through class `k` at
//! step `t`: PyTorch's gradient through its `log_softmax`.
//!
//! ```
//! use rnn_core::ctc::{Ctc, greedy_decode};
//! use rnn_core::prelude::*;
//! // Four classes (0 the blank), sequences of 8 steps read as [1, 2] and [3, 3].
//! let cfg = RnnConfig::gru(2, 16, 4).bidirectional();
//! let spec = LossSpec::every_step(LossKind::CrossEntropy); // only `every_step` is read
//! let mut tr = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(3e-2), 0)?;
//! let ctc = Ctc::new(&[vec![1, 2], vec![3, 3]], 4, 0)?;
//! let (t, b) = (8, 2);
//! let x: Vec<f32> = (0..t * b * 2).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
//! let batch = Batch::new(t, b, &x, Target::None);
//! let first = ctc.step(&mut tr, &batch)?.loss;
//! for _ in 0..150 { ctc.step(&mut tr, &batch)?; }
//! assert!(ctc.evaluate(&mut tr, &batch)? < first / 10.0);
//! let logits = tr.outputs(&batch)?;
//! assert_eq!(greedy_decode(logits, t, b, 4, 0, None)?, [vec![1, 2], vec![3, 3]]);
//! # Ok::<(), RnnError>(())
//! ```

mod decode;
mod log_space;
mod scaled;

pub use decode::{beam_decode, greedy_decode};

use std::sync::Arc;

use kernels::Float;
use rayon::prelude::*;

use crate::batch::{Batch, check_lengths};
use crate::config::Reduction;
use crate::error::{Result, RnnError, shape};
use crate::trainer::{StepReport, Trainer};

/// The CTC loss of a batch's targets: its labels, classes, blank, reduction and what an
/// impossible target costs. Built once per batch of targets ([`Ctc::new`]), it trains a
/// [`Trainer`] ([`Ctc::step`], [`Ctc::accumulate`]), scores one ([`Ctc::evaluate`]), or
/// computes the loss and its gradient of any logits ([`Ctc::loss_and_grads`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Ctc {
    classes: usize,
    blank: usize,
    reduction: Reduction,
    zero_infinity: bool,
    /// Every target's labels, one after another.
    labels: Vec<usize>,
    /// Where target `b` starts in `labels` (`B + 1` entries).
    starts: Vec<usize>,
}

impl Ctc {
    /// The loss of `targets` (one per sequence of the batch, in its order; an empty one is
    /// all blanks) over `classes` logits per step, class `blank` the blank (PyTorch's
    /// `blank`, 0 by default there), reduced by `mean`.
    ///
    /// # Errors
    /// [`RnnError::Empty`] for no targets or no classes; [`RnnError::Config`] for a blank
    /// `>= classes`; [`RnnError::LabelOutOfRange`] for a label `>= classes` (`t` its
    /// position in the target, `b` the target); [`RnnError::Config`] for a label equal to the
    /// blank.
    pub fn new<L: AsRef<[usize]>>(targets: &[L], classes: usize, blank: usize) -> Result<Self> {
        if targets.is_empty() {
            return Err(RnnError::Empty { what: "targets" });
        }
        if classes == 0 {
            return Err(RnnError::Empty { what: "classes" });
        }
        if blank >= classes {
            return Err(blank_not_a_class(blank, classes));
        }
        let mut labels = Vec::new();
        let mut starts = vec![0];
        for target in targets {
            labels.extend_from_slice(target.as_ref());
            starts.push(labels.len());
        }
        let ctc = Self {
            classes,
            blank,
            reduction: Reduction::Mean,
            zero_infinity: false,
            labels,
            starts,
        };
        ctc.check_labels()?;
        Ok(ctc)
    }

    /// The same loss reduced by `reduction` (`Sum` adds the sequences' losses up).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The same loss counting a target no path can read as 0, with no gradient, instead of
    /// `+∞` (PyTorch's `zero_infinity=True`): a batch with a few impossible targets (labels
    /// longer than their audio) still trains on the others.
    pub fn zero_infinity(mut self) -> Self {
        self.zero_infinity = true;
        self
    }

    /// The number of targets (the batch's `B`).
    pub fn sequences(&self) -> usize {
        self.starts.len() - 1
    }

    /// Target `b`'s labels.
    ///
    /// # Panics
    /// For `b >= self.sequences()`.
    pub fn target(&self, b: usize) -> &[usize] {
        &self.labels[self.starts[b]..self.starts[b + 1]]
    }

    /// Every label is a class and none is the blank.
    fn check_labels(&self) -> Result<()> {
        for b in 0..self.sequences() {
            for (i, &label) in self.target(b).iter().enumerate() {
                if label >= self.classes {
                    let classes = self.classes;
                    return Err(RnnError::LabelOutOfRange {
                        t: i,
                        b,
                        label,
                        classes,
                    });
                }
                if label == self.blank {
                    return Err(RnnError::Config(format!(
                        "CTC target {b} holds the blank ({label}) at position {i}: \
                         targets hold labels only"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The reduced loss of `logits` (`[steps, B, C]`, time-major; sequence `b` scored over its
    /// first `lengths[b]` steps, or all of them) and its gradient in `dlogits` (same shape;
    /// zero at the steps past a sequence's length).
    ///
    /// ```
    /// use rnn_core::ctc::Ctc;
    /// // One step, two classes, target [1]: the loss is -ln softmax(y)[1], here ln 2.
    /// let ctc = Ctc::new(&[[1]], 2, 0)?;
    /// let mut d = [0.0f64; 2];
    /// let loss = ctc.loss_and_grads(&[0.0, 0.0], 1, None, &mut d)?;
    /// assert!((loss - 2f64.ln()).abs() < 1e-15);
    /// assert_eq!(d, [0.5, -0.5]); // softmax - the posterior of the one path
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::ShapeMismatch`] for logits or gradients not `steps · B · C` long or lengths
    /// not `B`; [`RnnError::Empty`] for no steps; [`RnnError::LengthOutOfRange`] for a length
    /// outside `1..=steps`; [`RnnError::NonFiniteInput`] for a NaN or infinite logit at a
    /// scored step. `dlogits` is untouched on any of them.
    pub fn loss_and_grads<T: Float>(
        &self,
        logits: &[T],
        steps: usize,
        lengths: Option<&[usize]>,
        dlogits: &mut [T],
    ) -> Result<T> {
        self.check(logits, steps, lengths)?;
        if dlogits.len() != logits.len() {
            return Err(shape("CTC dlogits", logits.len(), dlogits.len()));
        }
        Ok(self.reduce(logits, steps, lengths, Some(dlogits), &Spread::Current))
    }

    /// The reduced loss of `logits`, as [`Ctc::loss_and_grads`] without the gradient.
    ///
    /// # Errors
    /// As [`Ctc::loss_and_grads`].
    pub fn loss<T: Float>(
        &self,
        logits: &[T],
        steps: usize,
        lengths: Option<&[usize]>,
    ) -> Result<T> {
        self.check(logits, steps, lengths)?;
        Ok(self.reduce(logits, steps, lengths, None, &Spread::Current))
    }

    /// Each sequence's own loss, unreduced (PyTorch's `reduction="none"`: not divided by the
    /// target's length; `+∞` for a target no path can read, 0 under
    /// [`Ctc::zero_infinity`]).
    ///
    /// # Errors
    /// As [`Ctc::loss_and_grads`].
    pub fn sequence_losses<T: Float>(
        &self,
        logits: &[T],
        steps: usize,
        lengths: Option<&[usize]>,
    ) -> Result<Vec<T>> {
        self.check(logits, steps, lengths)?;
        let per = self.per_sequence(logits, steps, lengths, None, &Spread::Current);
        Ok(per.into_iter().map(T::of).collect())
    }

    /// One training step of `trainer` on `batch` under this loss ([`Trainer::step_with`]):
    /// the batch's lengths are the sequences' lengths, and it carries no targets
    /// ([`Target::None`](crate::batch::Target::None)): they are this loss's.
    ///
    /// # Errors
    /// [`RnnError::Config`] for a trainer whose loss spec is many-to-one (CTC reads every
    /// step) or a batch scored from a later step ([`Batch::score_from`]);
    /// [`RnnError::ShapeMismatch`] for a batch of another `B` than the targets, or a head of
    /// another width than `C`; [`Trainer::step_with`]'s errors otherwise (an impossible
    /// target's `+∞` loss is [`RnnError::NonFinite`] without [`Ctc::zero_infinity`]). Nothing
    /// changes on any of them.
    pub fn step<T: Float>(
        &self,
        trainer: &mut Trainer<T>,
        batch: &Batch<T>,
    ) -> Result<StepReport<T>> {
        self.fits(trainer, batch)?;
        let spread = Spread::of(trainer);
        trainer.step_with(batch, |y, dy| {
            self.trainer_loss(y, batch, Some(dy), &spread)
        })
    }

    /// [`Ctc::step`]'s gradients added to those waiting for the trainer's next
    /// [`Trainer::apply_accumulated`] ([`Trainer::accumulate_with`]: under `mean`, each
    /// micro-batch counts as one); returns the micro-batch's loss.
    ///
    /// # Errors
    /// As [`Ctc::step`] and [`Trainer::accumulate_with`].
    pub fn accumulate<T: Float>(&self, trainer: &mut Trainer<T>, batch: &Batch<T>) -> Result<T> {
        self.fits(trainer, batch)?;
        let spread = Spread::of(trainer);
        trainer.accumulate_with(batch, |y, dy| {
            self.trainer_loss(y, batch, Some(dy), &spread)
        })
    }

    /// The loss of `batch` as the model stands ([`Trainer::outputs`]: no dropout, no
    /// gradients, weights untouched).
    ///
    /// # Errors
    /// As [`Ctc::step`], but for the update's.
    pub fn evaluate<T: Float>(&self, trainer: &mut Trainer<T>, batch: &Batch<T>) -> Result<T> {
        self.fits(trainer, batch)?;
        let spread = Spread::of(trainer);
        let y = trainer.outputs(batch)?;
        Ok(self.trainer_loss(y, batch, None, &spread))
    }

    /// The trainer and batch give this loss what it reads: every step's `C` outputs of `B`
    /// sequences.
    fn fits<T: Float>(&self, trainer: &Trainer<T>, batch: &Batch<T>) -> Result<()> {
        if trainer.loss.many_to_one {
            return Err(RnnError::Config(
                "CTC reads every step's outputs: the trainer's loss spec must be every_step".into(),
            ));
        }
        if batch.score_from != 0 {
            return Err(RnnError::Config(format!(
                "CTC scores whole sequences, not from step {}",
                batch.score_from
            )));
        }
        if trainer.config.output_size != self.classes {
            let (want, got) = (self.classes, trainer.config.output_size);
            return Err(shape("the head's outputs (CTC classes)", want, got));
        }
        if batch.batch != self.sequences() {
            return Err(shape(
                "the batch's sequences (CTC targets)",
                self.sequences(),
                batch.batch,
            ));
        }
        // The trainer validates the rest of the batch before the loss reads its outputs.
        Ok(())
    }

    /// The loss of a trainer's outputs of a batch [`Ctc::fits`] and the trainer validated.
    fn trainer_loss<T: Float>(
        &self,
        y: &[T],
        batch: &Batch<T>,
        dy: Option<&mut [T]>,
        spread: &Spread,
    ) -> T {
        self.reduce(y, batch.seq_len, batch.lengths, dy, spread)
    }

    /// Shapes, lengths and scored logits are what [`Ctc::reduce`] reads.
    fn check<T: Float>(&self, logits: &[T], steps: usize, lengths: Option<&[usize]>) -> Result<()> {
        check_logits(logits, [steps, self.sequences(), self.classes], lengths)
    }

    /// The reduced loss of checked logits, and its gradient into `dlogits` when given.
    fn reduce<T: Float>(
        &self,
        logits: &[T],
        steps: usize,
        lengths: Option<&[usize]>,
        dlogits: Option<&mut [T]>,
        spread: &Spread,
    ) -> T {
        let per = self.per_sequence(logits, steps, lengths, dlogits, spread);
        // Summed in the batch's order, whatever the threads.
        T::of(
            per.iter()
                .enumerate()
                .map(|(s, loss)| loss * self.share(s))
                .sum(),
        )
    }

    /// Sequence `s`'s share of the reduced loss (and of its gradient).
    fn share(&self, s: usize) -> f64 {
        match self.reduction {
            Reduction::Mean => 1.0 / (self.target(s).len().max(1) * self.sequences()) as f64,
            Reduction::Sum => 1.0,
        }
    }

    /// Every sequence's unreduced loss, and into `dlogits` (when given) the reduced loss's
    /// gradient, zero at padded steps; one sequence per task, spread over threads as
    /// `spread` says.
    fn per_sequence<T: Float>(
        &self,
        logits: &[T],
        steps: usize,
        lengths: Option<&[usize]>,
        dlogits: Option<&mut [T]>,
        spread: &Spread,
    ) -> Vec<f64> {
        let b = self.sequences();
        // Each sequence's rows of `dlogits`, every `b`-th row from its own: the tasks write
        // their gradients in place.
        let mut sinks: Vec<GradRows<'_, T>> = (0..b)
            .map(|s| GradRows {
                rows: Vec::new(),
                scale: self.share(s),
            })
            .collect();
        let with_grads = dlogits.is_some();
        if let Some(dlogits) = dlogits {
            dlogits.fill(T::zero());
            for (i, row) in dlogits.chunks_exact_mut(self.classes).enumerate() {
                sinks[i % b].rows.push(row);
            }
        }
        let one = |(s, mut sink): (usize, GradRows<'_, T>)| {
            let rows = Rows {
                logits,
                sequences: b,
                classes: self.classes,
                s,
            };
            let length = lengths.map_or(steps, |l| l[s]);
            let grads = with_grads.then_some(&mut sink);
            let loss = sequence_loss(&rows, length, self.target(s), self.blank, grads);
            match self.zero_infinity && loss.is_infinite() {
                true => 0.0, // (an impossible target's gradient is 0 already)
                false => loss,
            }
        };
        match spread {
            Spread::Serial => sinks.into_iter().enumerate().map(one).collect(),
            Spread::Current => sinks.into_par_iter().enumerate().map(one).collect(),
            Spread::Pool(pool) => {
                pool.install(|| sinks.into_par_iter().enumerate().map(one).collect())
            }
        }
    }
}

/// Where the sequences' recursions run. Each sequence's loss and gradient are its own, and
/// the batch's sums run in its order after them, so the result is the same bits on any
/// number of threads.
enum Spread {
    /// On the calling thread.
    Serial,
    /// On the threads of the current rayon pool (the global one outside any other).
    Current,
    /// On a trainer's own pool ([`Trainer::with_thread_pool`]).
    Pool(Arc<rayon::ThreadPool>),
}

impl Spread {
    /// The threads `trainer`'s steps use: one, its own pool's, or the current pool's.
    fn of<T: Float>(trainer: &Trainer<T>) -> Self {
        match (trainer.threads(), trainer.thread_pool()) {
            (1, _) => Spread::Serial,
            (_, Some(pool)) => Spread::Pool(pool),
            (_, None) => Spread::Current,
        }
    }
}

/// One sequence's steps of time-major logits `[T, B, C]`.
struct Rows<'a, T> {
    logits: &'a [T],
    sequences: usize,
    classes: usize,
    s: usize,
}

impl<T: Float> Rows<'_, T> {
    /// The sequence's logits at step `t`.
    fn at(&self, t: usize) -> &[T] {
        &self.logits[(t * self.sequences + self.s) * self.classes..][..self.classes]
    }
}

/// A sequence's unreduced loss, and its gradient `[length, C]` (empty when not asked).
struct SequenceLoss {
    loss: f64,
    grads: Vec<f64>,
}

/// Where a sequence's gradient goes: its rows of the batch's `dlogits` (one a step), each
/// written as the sequence's gradient times its share of the reduced loss.
struct GradRows<'a, T> {
    rows: Vec<&'a mut [T]>,
    scale: f64,
}

impl<T: Float> GradRows<'_, T> {
    /// Writes step `t`'s gradient.
    fn put(&mut self, t: usize, grad: &[f64]) {
        for (d, g) in self.rows[t].iter_mut().zip(grad) {
            *d = T::of(g * self.scale);
        }
    }
}

/// A target with a blank before, between and after its labels (`l'`, `2S + 1` states): the
/// states a path moves through.
struct Extended<'a> {
    target: &'a [usize],
    blank: usize,
}

impl Extended<'_> {
    /// The fewest steps a path reading the target takes: one per label, and one more for
    /// the blank between each two equal neighbours.
    fn fewest_steps(&self) -> usize {
        let repeats = self.target.windows(2).filter(|w| w[0] == w[1]).count();
        self.target.len() + repeats
    }

    fn states(&self) -> usize {
        2 * self.target.len() + 1
    }

    /// The class of `state`: the blank at even states, the labels at odd ones.
    fn class(&self, state: usize) -> usize {
        match state.is_multiple_of(2) {
            true => self.blank,
            false => self.target[state / 2],
        }
    }

    /// A path may reach label state `state` from two states back, skipping the blank
    /// between, only when the two labels differ (a blank must part equal ones).
    fn skips_to(&self, state: usize) -> bool {
        let label = !state.is_multiple_of(2);
        label && state >= 3 && self.target[state / 2] != self.target[state / 2 - 1]
    }
}

/// The CTC loss of one sequence's first `length` steps against `target` (and its gradient,
/// `[length, C]`, into `grads`' rows, zero as they come, when given): by the scaled
/// recursions, or in log space where those could be off by more than 10^-12 of it.
fn sequence_loss<T: Float>(
    rows: &Rows<'_, T>,
    length: usize,
    target: &[usize],
    blank: usize,
    mut grads: Option<&mut GradRows<'_, T>>,
) -> f64 {
    let path = Extended { target, blank };
    if length < path.fewest_steps() {
        // No path reads the target: an infinite loss and no gradient (zero_infinity counts
        // it as 0; a trainer rejects its step otherwise).
        return f64::INFINITY;
    }
    if let Some(loss) = scaled::sequence_loss(rows, length, &path, grads.as_deref_mut()) {
        return loss;
    }
    // Every row of the gradient is written again here.
    let exact = log_space::sequence_loss(rows, length, &path, grads.is_some());
    if let Some(grads) = grads {
        for (t, grad) in exact.grads.chunks_exact(rows.classes).enumerate() {
            grads.put(t, grad);
        }
    }
    exact.loss
}

/// Logits `[steps, batch, classes]`, none of those zero, with `lengths` (when given) one in
/// `1..=steps` per sequence, and finite where read (sequence `b` over its first
/// `lengths[b]` steps).
fn check_logits<T: Float>(
    logits: &[T],
    [steps, b, c]: [usize; 3],
    lengths: Option<&[usize]>,
) -> Result<()> {
    for (what, n) in [("steps", steps), ("batch", b), ("classes", c)] {
        if n == 0 {
            return Err(RnnError::Empty { what });
        }
    }
    if steps.checked_mul(b).and_then(|n| n.checked_mul(c)) != Some(logits.len()) {
        let expected = format!("[T={steps}, B={b}, C={c}]");
        return Err(shape("CTC logits", expected, logits.len()));
    }
    if let Some(lengths) = lengths {
        check_lengths(lengths, steps, b)?;
    }
    let length = |s: usize| lengths.map_or(steps, |l| l[s]);
    for (row, chunk) in logits.chunks_exact(c).enumerate() {
        let (t, s) = (row / b, row % b);
        if t >= length(s) {
            continue;
        }
        if let Some(k) = chunk.iter().position(|v| !v.is_finite()) {
            let (index, value) = (row * c + k, chunk[k].f64());
            return Err(RnnError::NonFiniteInput {
                what: "CTC logits",
                index,
                value,
            });
        }
    }
    Ok(())
}

/// The error of a blank that is not a class.
fn blank_not_a_class(blank: usize, classes: usize) -> RnnError {
    RnnError::Config(format!(
        "CTC blank {blank} is not one of the {classes} classes"
    ))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// Both recursions of one sequence of `y` (`[t, 1, c]`).
    fn both(y: &[f64], c: usize, target: &[usize]) -> (Option<SequenceLoss>, SequenceLoss) {
        let rows = Rows {
            logits: y,
            sequences: 1,
            classes: c,
            s: 0,
        };
        let path = Extended { target, blank: 0 };
        let length = y.len() / c;
        let mut grads = vec![0.0; y.len()];
        let mut sink = GradRows {
            rows: grads.chunks_exact_mut(c).collect(),
            scale: 1.0,
        };
        let fast = scaled::sequence_loss(&rows, length, &path, Some(&mut sink));
        let fast = fast.map(|loss| SequenceLoss { loss, grads });
        (fast, log_space::sequence_loss(&rows, length, &path, true))
    }

    /// Logits up to `spread` from 0: at 30 a path can fall 10^26 behind the others in a
    /// step, past f64's range in a dozen; at 100 within three, and the scaled recursions may
    /// give up (but must not give a wrong answer).
    #[test]
    fn scaled_and_log_space_recursions_agree() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut gave_up = 0;
        for case in 0..400 {
            let (t, c) = (rng.random_range(1..60), rng.random_range(2..12));
            let spread = [1.0, 5.0, 30.0, 100.0][case % 4];
            let y: Vec<f64> = (0..t * c)
                .map(|_| rng.random_range(-spread..spread))
                .collect();
            let n = rng.random_range(0..=t.min(20));
            let target: Vec<usize> = (0..n).map(|_| rng.random_range(1..c)).collect();
            if !readable(&target, t) {
                continue;
            }
            let (fast, exact) = both(&y, c, &target);
            let Some(fast) = fast else {
                assert_eq!(spread, 100.0, "case {case}: scaled gave up");
                gave_up += 1;
                continue;
            };
            let what = format!("case {case}: T {t}, C {c}, spread {spread}, {target:?}");
            assert!(
                (fast.loss - exact.loss).abs() <= 1e-10 * (1.0 + exact.loss),
                "{what}: {} vs {}",
                fast.loss,
                exact.loss
            );
            for (i, (a, b)) in fast.grads.iter().zip(&exact.grads).enumerate() {
                assert!((a - b).abs() <= 1e-10, "{what}: dlogits[{i}] = {a} vs {b}");
            }
        }
        // Some of the widest cases go to log space; most are still the scaled ones'.
        assert!((1..20).contains(&gave_up), "{gave_up} of 100 gave up");
    }

    /// Random sequences of up to 39 steps and 7 classes, logits up to `spread` from 0 and
    /// targets up to as long as the sequence (few paths, often none: those are left out):
    /// `(logits [t, c], c, target)`, in the order of `seed`'s stream.
    fn wide_cases(seed: u64, spread: f64) -> impl Iterator<Item = (Vec<f64>, usize, Vec<usize>)> {
        let mut rng = StdRng::seed_from_u64(seed);
        std::iter::repeat_with(move || {
            let (t, c) = (rng.random_range(1..40), rng.random_range(2..8));
            let y: Vec<f64> = (0..t * c)
                .map(|_| rng.random_range(-spread..spread))
                .collect();
            let n = rng.random_range(0..=t);
            let target: Vec<usize> = (0..n).map(|_| rng.random_range(1..c)).collect();
            (y, c, target)
        })
    }

    /// Whether the scaled recursions answer `(y, c, target)` (a target its steps can read);
    /// where they do, their loss and gradient must be log space's.
    fn answers_as_log_space(y: &[f64], c: usize, target: &[usize], what: &str) -> bool {
        let (Some(fast), exact) = both(y, c, target) else {
            return false;
        };
        let (loss, want) = (fast.loss, exact.loss);
        assert!(
            (loss - want).abs() <= 1e-9 * (1.0 + want),
            "{what}: {loss} vs {want}"
        );
        for (i, (a, b)) in fast.grads.iter().zip(&exact.grads).enumerate() {
            assert!((a - b).abs() <= 1e-9, "{what}: dlogits[{i}] = {a} vs {b}");
        }
        true
    }

    /// Whether some path of `steps` steps reads `target`.
    fn readable(target: &[usize], steps: usize) -> bool {
        Extended { target, blank: 0 }.fewest_steps() <= steps
    }

    /// Logits up to 400 apart, few paths: where the scaled recursions answer, they answer as
    /// log space does. (Without the bound on what the additions make up, about one case in
    /// a hundred here read a loss tens of nats off and gradients off by 1.)
    #[test]
    fn wide_logits_never_give_a_wrong_answer() {
        let mut answered = 0;
        for (case, (y, c, target)) in wide_cases(7, 400.0).take(3000).enumerate() {
            if readable(&target, y.len() / c) {
                let what = format!("case {case}: T {}, C {c}, {target:?}", y.len() / c);
                answered += usize::from(answers_as_log_space(&y, c, &target, &what));
            }
        }
        assert!(answered >= 300, "only {answered} answered");
    }

    /// Paths far behind at both ends of the sequence (each 10^-308 behind the others in its
    /// direction: lost to `α̂` early and to `β̂` late) that are the target's likeliest: where
    /// values were let underflow, their probability was lost from both recursions, and the
    /// bound, which weighs each recursion's losses by the other's values, missed them (a
    /// loss 2-540 nats off, gradients off by 1). Cases of [`wide_cases`] found among
    /// 200 000 at each of spreads 400 and 800.
    #[test]
    fn paths_far_behind_at_both_ends_are_kept() {
        let found = [
            (0, 400.0, 10432),
            (1, 400.0, 6571),
            (2, 400.0, 11130),
            (3, 400.0, 34429),
            (1, 800.0, 32421),
        ];
        for (seed, spread, case) in found {
            let (y, c, target) = wide_cases(seed, spread).nth(case).unwrap();
            assert!(readable(&target, y.len() / c));
            let what = format!("seed {seed}, spread {spread}, case {case}");
            answers_as_log_space(&y, c, &target, &what);
        }
    }

    #[test]
    fn a_blank_parts_equal_neighbours() {
        let fewest = |target: &[usize]| Extended { target, blank: 0 }.fewest_steps();
        assert_eq!(
            [
                fewest(&[]),
                fewest(&[3]),
                fewest(&[1, 2, 1]),
                fewest(&[1, 1, 2, 2, 2])
            ],
            [0, 1, 3, 8]
        );
    }

    #[test]
    fn paths_below_f64s_range_go_to_log_space() {
        // Target [1, 2] in two steps: one path, each of its classes e^-1000 less likely than
        // the others at its step, so its probability (e^-2000) is 0 in f64.
        let y = [0.0, -1000.0, 0.0, /**/ 0.0, 0.0, -1000.0];
        let (fast, exact) = both(&y, 3, &[1, 2]);
        assert!(fast.is_none());
        let want = 2000.0 + 2.0 * 2f64.ln();
        assert!((exact.loss - want).abs() <= 1e-12 * want, "{}", exact.loss);
        let ctc = Ctc::new(&[[1, 2]], 3, 0)
            .unwrap()
            .with_reduction(Reduction::Sum);
        let mut d = [0.0; 6];
        assert_eq!(ctc.loss_and_grads(&y, 2, None, &mut d).unwrap(), exact.loss);
        // softmax - the one path's classes.
        let want = [0.5, -1.0, 0.5, 0.5, 0.5, -1.0];
        assert!(
            d.iter().zip(want).all(|(d, w)| (d - w).abs() <= 1e-12),
            "{d:?}"
        );
    }
}
