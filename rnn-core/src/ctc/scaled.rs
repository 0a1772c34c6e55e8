//! The CTC recursions on probabilities rescaled at every step (Graves et al., 2006, section
//! 4.1): a multiply-add per state and step where log space pays an `exp` and a `ln`. The
//! loss is the sum of the logarithms of the scales. A sequence whose scaled values fall out
//! of f64's range ([`TINY`]) goes to [`super::log_space`] instead.
//!
//! Each step visits only the states a path through it can be in ([`Lattice::window`]):
//! after `t + 1` steps, one of the first `2(t + 1)`, and one from which the end is within
//! reach in the steps left (a window never empty for a target its steps can read). Rows are
//! padded with two zeros before (`α`) or after (`β`) so the recursions run without a branch
//! per state.
//!
//! Scaling keeps each step's sum in range but not every state's value: a path far less
//! likely than the others at a step falls below f64's normal range, and if the others die
//! out later it was the one that mattered (logits drawn from -100..100: a loss 95 nats too
//! high). So
//! no value is let fall: each gets [`UNDERFLOW`] added, more than underflow can take from
//! it, and both recursions compute upper bounds of their probabilities, a path far behind
//! kept at its bound rather than lost. What the additions may add is bounded in the
//! backward pass ([`backward`]), which knows what each state's probability is worth to
//! the target, and the sequence goes to log space when the bound reaches [`TOLERANCE`] of
//! it. (So the backward recursion runs for a loss without gradients too.)
//!
//! The buffers are each thread's own ([`Scratch`]), kept from sequence to sequence and call
//! to call: a sequence's `α̂` and emissions are about a megabyte each at 500 steps and 100
//! labels, and allocated afresh they came back from the allocator as pages the kernel
//! faulted in and zeroed at every call.

use std::cell::RefCell;

use kernels::Float;

use super::{Extended, GradRows, Rows};

/// The smallest sum of a step's scaled values (and overlap of `α̂` and `β̂`) trusted. A value
/// below f64's normal range (2.2e-308) has lost precision, but it can weigh more than
/// rounding only in a sum below 2.2e-308 / ε ≈ 1e-292; every sum is checked against this
/// bound, well above that.
const TINY: f64 = 1e-280;

/// Added to each state's value at each step, before the step's division: more than
/// underflow can take from it, whatever the rounding mode (an emission probability below
/// f64's normal range, a product landing there, a subnormal operand: each loses less than
/// the smallest normal f64 with flush-to-zero set, far less with gradual underflow).
/// Values in the normal range keep their relative rounding, bounded apart.
const UNDERFLOW: f64 = 8.0 * f64::MIN_POSITIVE;

/// The largest share of the target's probability the additions of [`UNDERFLOW`] may make
/// up for the scaled recursions to be trusted: the loss off by at most this many nats, each
/// gradient entry by about twice this. (Their rounding is of order `length` times f64's
/// epsilon, below this for a sequence under a million steps.)
const TOLERANCE: f64 = 1e-12;

/// The CTC loss of one sequence's first `length` steps through `path` (and its gradient,
/// `[length, C]`, into `grads` when given), or `None` when a scaled sum falls below
/// [`TINY`] or the bounds may be more than [`TOLERANCE`] off (some of the gradient's rows
/// may be written by then). The target must be readable in `length` steps.
pub(super) fn sequence_loss<T: Float>(
    rows: &Rows<'_, T>,
    length: usize,
    path: &Extended<'_>,
    grads: Option<&mut GradRows<'_, T>>,
) -> Option<f64> {
    SCRATCH.with(|kept| match kept.try_borrow_mut() {
        Ok(mut scratch) => {
            let loss = scratch.sequence_loss(rows, length, path, grads);
            scratch.let_go_of_large();
            loss
        }
        // (Not reached: nothing in here runs another sequence on this thread.)
        Err(_) => Scratch::default().sequence_loss(rows, length, path, grads),
    })
}

thread_local! {
    /// This thread's buffers for the recursions.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The buffers of one sequence's recursions, kept by a thread between sequences.
#[derive(Default)]
struct Scratch {
    /// The lattice's state classes ([`Lattice::class`]).
    class: Vec<usize>,
    /// The lattice's skips ([`Lattice::skip`]).
    skip: Vec<f64>,
    /// `softmax` of the logits, `[length, C]`.
    probs: Vec<f64>,
    /// [`Lattice::emissions`].
    emit: Vec<f64>,
    /// `α̂` ([`forward`]).
    alpha: Vec<f64>,
    /// Each step's sum `α̂` was divided by.
    sums: Vec<f64>,
    /// [`backward`]'s rows.
    backward: Backward,
}

/// [`backward`]'s buffers: a step's `β̂`, the same times the next step's
/// probabilities and each state's `α̂ β̂`, and [`put_gradient`]'s.
#[derive(Default)]
struct Backward {
    beta: Vec<f64>,
    emitted: Vec<f64>,
    both: Vec<f64>,
    gradient: GradientRows,
}

/// [`put_gradient`]'s buffers: each class's share of a step's `α̂ β̂`, and the step's
/// gradient.
#[derive(Default)]
struct GradientRows {
    through: Vec<f64>,
    row: Vec<f64>,
}

/// A buffer a thread keeps after a sequence holds at most this many values: a longer one (a
/// very long sequence's lattice) goes back to the allocator rather than stay with the
/// thread.
const KEEP_VALUES: usize = 1 << 21;

impl Scratch {
    /// [`sequence_loss`] in these buffers.
    fn sequence_loss<T: Float>(
        &mut self,
        rows: &Rows<'_, T>,
        length: usize,
        path: &Extended<'_>,
        grads: Option<&mut GradRows<'_, T>>,
    ) -> Option<f64> {
        let lattice = Lattice::new(path, length, &mut self.class, &mut self.skip);
        softmax_into(&mut self.probs, rows, length);
        lattice.emissions(&self.probs, &mut self.emit);
        forward(&mut self.alpha, &mut self.sums, &self.emit, &lattice)?;
        // A path ends at the trailing blank or the last label (the row's last two values).
        let end: f64 = self.alpha[length * lattice.width() - 2..].iter().sum();
        if end < TINY {
            return None;
        }
        let forward = Forward {
            probs: &self.probs,
            emit: &self.emit,
            alpha: &self.alpha,
            sums: &self.sums,
        };
        backward(grads, &mut self.backward, &forward, &lattice)?;
        let log_scale: f64 = self.sums.iter().map(|sum| sum.ln()).sum();
        Some(-(log_scale + end.ln()))
    }

    /// Drops the buffers longer than [`KEEP_VALUES`].
    fn let_go_of_large(&mut self) {
        fn trim<V>(buffer: &mut Vec<V>) {
            if buffer.capacity() > KEEP_VALUES {
                *buffer = Vec::new();
            }
        }
        trim(&mut self.class);
        let b = &mut self.backward;
        for buffer in [
            &mut self.skip,
            &mut self.probs,
            &mut self.emit,
            &mut self.alpha,
            &mut self.sums,
            &mut b.beta,
            &mut b.emitted,
            &mut b.both,
            &mut b.gradient.through,
            &mut b.gradient.row,
        ] {
            trim(buffer);
        }
    }
}

/// `buffer` as `n` zeros, its memory reused.
fn zeros(buffer: &mut Vec<f64>, n: usize) -> &mut [f64] {
    buffer.clear();
    buffer.resize(n, 0.0);
    buffer
}

/// A target's states laid out for the recursions.
struct Lattice<'a> {
    /// Each state's class.
    class: &'a [usize],
    /// 1 where a path may reach the state from two states back (skipping a blank between
    /// different labels), else 0; two more zeros after the last state.
    skip: &'a [f64],
    /// The sequence's steps.
    length: usize,
}

impl<'a> Lattice<'a> {
    /// The lattice of `path` over `length` steps, laid out in `class` and `skip`.
    fn new(
        path: &Extended<'_>,
        length: usize,
        class: &'a mut Vec<usize>,
        skip: &'a mut Vec<f64>,
    ) -> Self {
        let states = path.states();
        class.clear();
        class.extend((0..states).map(|s| path.class(s)));
        skip.clear();
        skip.extend((0..states + 2).map(|s| {
            if s < states && path.skips_to(s) {
                1.0
            } else {
                0.0
            }
        }));
        Self {
            class,
            skip,
            length,
        }
    }

    fn states(&self) -> usize {
        self.class.len()
    }

    /// A row of `α̂` or `β̂`: the states and two zeros of padding.
    fn width(&self) -> usize {
        self.states() + 2
    }

    /// Each state's probability at each step, `[length, states]`, into `emit`: `probs`
    /// (`[length, C]`) at the state's class, gathered once for both recursions, which then
    /// stream.
    fn emissions(&self, probs: &[f64], emit: &mut Vec<f64>) {
        let c = probs.len() / self.length;
        emit.clear();
        for p in probs.chunks_exact(c) {
            emit.extend(self.class.iter().map(|&k| p[k]));
        }
    }

    /// The states a path reading the target can be in at step `t`: those it reaches in
    /// `t + 1` steps (two states a step at most) from which the end is reachable in the
    /// steps left. Outside it `α̂` or `β̂` is 0, or the state takes no part.
    fn window(&self, t: usize) -> (usize, usize) {
        let states = self.states();
        let from = states.saturating_sub(2 * (self.length - t));
        (from, states.min(2 * (t + 1)))
    }
}

/// `softmax` of each of the sequence's first `length` steps' logits, `[length, C]`, in f64.
pub(super) fn softmax<T: Float>(rows: &Rows<'_, T>, length: usize) -> Vec<f64> {
    let mut probs = Vec::new();
    softmax_into(&mut probs, rows, length);
    probs
}

/// [`softmax`] into `probs`.
fn softmax_into<T: Float>(probs: &mut Vec<f64>, rows: &Rows<'_, T>, length: usize) {
    let probs = zeros(probs, length * rows.classes);
    for (t, p) in probs.chunks_exact_mut(rows.classes).enumerate() {
        let y = rows.at(t);
        let max = y.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
        for (p, v) in p.iter_mut().zip(y) {
            *p = (v.f64() - max).exp();
        }
        let scale = 1.0 / p.iter().sum::<f64>();
        p.iter_mut().for_each(|p| *p *= scale);
    }
}

/// The sum of `values`, in four running sums: one running sum is a chain of dependent adds,
/// four latencies a value, and the recursions take several sums of a few hundred values
/// each step.
fn sum(values: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let chunks = values.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + rest
}

/// Divides `values` by their sum and returns it, or `None` for a sum below [`TINY`].
fn normalize(values: &mut [f64]) -> Option<f64> {
    let sum = sum(values);
    if sum < TINY {
        return None;
    }
    let scale = 1.0 / sum;
    values.iter_mut().for_each(|v| *v *= scale);
    Some(sum)
}

/// `α̂_t(s)` into `alpha`, `[length, 2 + states]` (two zeros, then the states): the
/// probability of the paths through steps `0..=t` that end in state `s` (a bound above it:
/// [`UNDERFLOW`] added at each step), divided by the sum over the step's window, each
/// step's sum into `sums`; the log probability of the target is `ln Π_t` of the sums plus
/// that of the last step's scaled end states.
fn forward(
    alpha: &mut Vec<f64>,
    sums: &mut Vec<f64>,
    emit: &[f64],
    lattice: &Lattice,
) -> Option<()> {
    let (length, w, states) = (lattice.length, lattice.width(), lattice.states());
    // Zeros outside each step's window, which the next step reads.
    let alpha = zeros(alpha, length * w);
    sums.clear();
    for t in 0..length {
        let (from, to) = lattice.window(t);
        let (before, now) = alpha.split_at_mut(t * w);
        let e = &emit[t * states..][from..to];
        let now = &mut now[2 + from..2 + to];
        if t == 0 {
            // A path starts at the leading blank or the first label.
            let starts = to.min(2).saturating_sub(from);
            for (now, e) in now[..starts].iter_mut().zip(e) {
                *now = e + UNDERFLOW;
            }
        } else {
            // State s at `2 + s`: from itself, the state before, and two before.
            let prev = &before[(t - 1) * w..];
            let skip = &lattice.skip[from..to];
            let stays = prev[2 + from..2 + to].iter().zip(&prev[1 + from..1 + to]);
            let comes = stays.zip(&prev[from..to]).zip(skip).zip(e);
            for (now, ((((same, before), two_before), skip), e)) in now.iter_mut().zip(comes) {
                *now = (same + before + skip * two_before) * e + UNDERFLOW;
            }
        }
        sums.push(normalize(now)?);
    }
    Some(())
}

/// What [`backward`] reads of the forward pass: the softmax `[length, C]`, the emissions
/// `[length, states]`, `α̂` and the sums it was divided by.
struct Forward<'a> {
    probs: &'a [f64],
    emit: &'a [f64],
    alpha: &'a [f64],
    sums: &'a [f64],
}

/// `β̂_t(s)`, the probability of reading the rest of the target from state `s` after step
/// `t` (scaled as `α̂`), from the last step back, and with it each step's gradient
/// `dL/dy_t(k) = softmax_t(k) - γ_t(k)`, `γ_t(k) = Σ_{class(s) = k} α̂_t(s) β̂_t(s) / Σ_s
/// α̂_t(s) β̂_t(s)` (the posterior share of the paths through class `k` at step `t`), into
/// `grads`' rows when given, in the buffers of `rows`. `None` where a sum falls below
/// [`TINY`] or the additions of [`UNDERFLOW`] (to `α̂` and to `β̂`, which is a bound
/// above its probabilities as `α̂` is) may make up more than [`TOLERANCE`] of the
/// target's probability.
///
/// That bound: `Σ_s α_t(s) β_t(s)` is the target's probability at every step `t`, and a
/// value added at step `t` flows on through either recursion like any other, making up
/// the same share of it at every step after (or before). So each step adds what its own
/// additions may make up, weighed by the other recursion's bounds: `α̂_t`'s ([`UNDERFLOW`]
/// a state before the division by the step's sum) by `β̂_t`, which sums to at most 2;
/// `β̂_t`'s (each emitted value reaching up to three states) by `α̂_t`, which sums to 1; as
/// shares of `Σ_s α̂_t(s) β̂_t(s)`. With ordinary logits that share stays below 10^-290;
/// where the likely states at a step have no likely future (the paths that do were
/// 10^-308 behind), `Σ_s α̂_t(s) β̂_t(s)` is tiny and the share large.
fn backward<T: Float>(
    mut grads: Option<&mut GradRows<'_, T>>,
    rows: &mut Backward,
    forward: &Forward<'_>,
    lattice: &Lattice,
) -> Option<()> {
    let (length, w, states) = (lattice.length, lattice.width(), lattice.states());
    let c = forward.probs.len() / length;
    // `β̂` and the same times the next step's probabilities: the states, then two zeros.
    let beta = zeros(&mut rows.beta, w);
    let emitted = zeros(&mut rows.emitted, w);
    // After the last step a path must be at the trailing blank or the last label.
    beta[states.saturating_sub(2)..states].fill(1.0);
    let both = zeros(&mut rows.both, states);
    let mut lost_share = 0.0;
    for t in (0..length).rev() {
        let (from, to) = lattice.window(t);
        // 1 / the sum `β̂_t` was divided by (none at the last step, exact).
        let mut beta_scale = 0.0;
        if t + 1 < length {
            // β̂_t(s) = Σ over the states s' step t + 1 may move to of p_{t+1}(s') β̂_{t+1}(s').
            let e = &forward.emit[(t + 1) * states..][..states];
            let (next_from, next_to) = lattice.window(t + 1);
            emitted.fill(0.0);
            let next = next_from..next_to;
            for ((out, b), e) in emitted[next.clone()]
                .iter_mut()
                .zip(&beta[next.clone()])
                .zip(&e[next])
            {
                *out = b * e + UNDERFLOW;
            }
            let goes = emitted[from..to].iter().zip(&emitted[from + 1..to + 1]);
            let goes = goes
                .zip(&emitted[from + 2..to + 2])
                .zip(&lattice.skip[from + 2..to + 2]);
            for (beta, (((same, after), two_after), skip)) in beta[from..to].iter_mut().zip(goes) {
                *beta = same + after + skip * two_after;
            }
            // (Outside the window `beta` keeps stale values: nothing reads them, as the
            // next step back reads only this window, and so does the gradient.)
            beta_scale = 1.0 / normalize(&mut beta[from..to])?;
        }
        let a = &forward.alpha[t * w + 2..][..states];
        for s in from..to {
            both[s] = a[s] * beta[s];
        }
        let overlap = sum(&both[from..to]);
        if overlap < TINY {
            return None;
        }
        let alpha_scale = 1.0 / forward.sums[t];
        lost_share += UNDERFLOW * (2.0 * alpha_scale + 3.0 * beta_scale) / overlap;
        if let Some(grads) = grads.as_deref_mut() {
            let probs = &forward.probs[t * c..][..c];
            put_gradient(grads, t, &mut rows.gradient, probs, both, overlap, lattice);
        }
    }
    (lost_share <= TOLERANCE).then_some(())
}

/// Step `t`'s gradient, `softmax_t - γ_t`, into `grads` from `both` (`α̂_t β̂_t` over the
/// step's window) and its sum `overlap`, in the buffers of `rows`.
fn put_gradient<T: Float>(
    grads: &mut GradRows<'_, T>,
    t: usize,
    rows: &mut GradientRows,
    probs: &[f64],
    both: &[f64],
    overlap: f64,
    lattice: &Lattice,
) {
    let (from, to) = lattice.window(t);
    let through = zeros(&mut rows.through, probs.len());
    // The blank states (2i) all go to one class: summed apart in two running sums, not
    // added one by one into one slot of `through`, which chains each add to the store
    // before. The label states (2i + 1) go to their labels' classes.
    let blanks = &both[2 * from.div_ceil(2)..to];
    let (mut even, mut odd) = (0.0, 0.0);
    for pair in blanks.chunks(4) {
        even += pair[0];
        odd += pair.get(2).copied().unwrap_or(0.0);
    }
    through[lattice.class[0]] = even + odd;
    for i in from / 2..to / 2 {
        through[lattice.class[2 * i + 1]] += both[2 * i + 1];
    }
    let share = 1.0 / overlap;
    // (Every entry is written below: sized, not zeroed.)
    rows.row.resize(probs.len(), 0.0);
    let row = &mut rows.row[..];
    for ((g, p), through) in row.iter_mut().zip(probs).zip(&*through) {
        *g = p - through * share;
    }
    grads.put(t, row);
}
