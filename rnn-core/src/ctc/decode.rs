//! Reading a CTC model's outputs back into labels: by best path ([`greedy_decode`]) or by
//! prefix beam search ([`beam_decode`]).

use kernels::Float;
use rayon::prelude::*;

use super::scaled::softmax;
use super::{Rows, blank_not_a_class, check_logits};
use crate::error::{Result, RnnError};

/// The labels of time-major logits `[steps, batch, classes]` read by best path: each step's
/// likeliest class (the first on a tie), repeats merged, blanks dropped; sequence `b` read
/// over its first `lengths[b]` steps, or all of them.
///
/// ```
/// use rnn_core::ctc::greedy_decode;
/// // One sequence, 5 steps, classes {blank, a, b}: likeliest a a blank a b.
/// let y = [0., 1., 0., /**/ 0., 1., 0., /**/ 1., 0., 0., /**/ 0., 1., 0., /**/ 0., 0., 1.];
/// assert_eq!(greedy_decode(&y, 5, 1, 3, 0, None)?, [vec![1, 1, 2]]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
///
/// # Errors
/// [`RnnError::Empty`] for no steps, sequences or classes; [`RnnError::Config`] for a blank
/// `>= classes`; [`RnnError::ShapeMismatch`] for logits not `steps · batch · classes` long or
/// lengths not `batch`; [`RnnError::LengthOutOfRange`] for a length outside `1..=steps`;
/// [`RnnError::NonFiniteInput`] for a NaN or infinite logit at a step read.
pub fn greedy_decode<T: Float>(
    logits: &[T],
    steps: usize,
    batch: usize,
    classes: usize,
    blank: usize,
    lengths: Option<&[usize]>,
) -> Result<Vec<Vec<usize>>> {
    each_sequence(
        logits,
        [steps, batch, classes],
        blank,
        lengths,
        |rows, length| {
            let mut labels = Vec::new();
            let mut previous = blank;
            for t in 0..length {
                let y = rows.at(t);
                let best = (1..classes).fold(0, |best, k| if y[k] > y[best] { k } else { best });
                if best != blank && best != previous {
                    labels.push(best);
                }
                previous = best;
            }
            labels
        },
    )
}

/// The labels of time-major logits `[steps, batch, classes]` read by prefix beam search
/// (Hannun et al., 2014, without a language model): the likeliest labelling among the
/// `width` likeliest prefixes kept at each step, each prefix's probability summed over every
/// path that reads as it (ending in a blank or in its last label, kept apart so that a
/// repeated label merges only without a blank between). Where one labelling has many
/// likely paths and the single likeliest path reads another, it finds the first, which
/// [`greedy_decode`] misses; a width as large as the number of prefixes finds the likeliest
/// labelling outright. Costs `steps · width · classes` per sequence; sequences run in
/// parallel on the current rayon pool.
///
/// ```
/// use rnn_core::ctc::{beam_decode, greedy_decode};
/// // Two steps, classes {blank, a}, each step blank 0.6 and a 0.4: the likeliest path is
/// // blank blank (0.36), but a has three paths (a a, a blank, blank a: 0.64).
/// let y = [0.6f64.ln(), 0.4f64.ln(), 0.6f64.ln(), 0.4f64.ln()];
/// assert_eq!(greedy_decode(&y, 2, 1, 2, 0, None)?, [Vec::<usize>::new()]);
/// assert_eq!(beam_decode(&y, 2, 1, 2, 0, None, 4)?, [vec![1]]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
///
/// # Errors
/// As [`greedy_decode`]; [`RnnError::Config`] for a width of 0.
pub fn beam_decode<T: Float>(
    logits: &[T],
    steps: usize,
    batch: usize,
    classes: usize,
    blank: usize,
    lengths: Option<&[usize]>,
    width: usize,
) -> Result<Vec<Vec<usize>>> {
    if width == 0 {
        return Err(RnnError::Config(
            "a CTC beam's width must be at least 1".into(),
        ));
    }
    each_sequence(
        logits,
        [steps, batch, classes],
        blank,
        lengths,
        |rows, length| beam_search(&softmax(rows, length), classes, blank, width),
    )
}

/// A prefix's probabilities over the paths so far that read as it (relative to the
/// likeliest prefix's at the step before): those ending in a blank, and those ending in its
/// last label.
#[derive(Clone, Copy)]
struct Ends {
    blank: f64,
    label: f64,
}

impl Ends {
    const NONE: Self = Self {
        blank: 0.0,
        label: 0.0,
    };

    fn total(self) -> f64 {
        self.blank + self.label
    }
}

/// The prefixes a beam has held, as a tree: a prefix is its parent and its last label, so
/// growing one by a label is one entry, not a copy of the labels before it.
struct Prefixes {
    /// Each prefix's parent and last label; prefix 0 is the empty one.
    nodes: Vec<(u32, usize)>,
    /// Each prefix's children made so far, by label (a few at most: only prefixes that
    /// entered the beam are made).
    children: Vec<Vec<(usize, u32)>>,
}

impl Prefixes {
    fn new() -> Self {
        Self {
            nodes: vec![(0, usize::MAX)],
            children: vec![Vec::new()],
        }
    }

    fn child(&self, prefix: u32, label: usize) -> Option<u32> {
        let children = &self.children[prefix as usize];
        children
            .iter()
            .find(|&&(l, _)| l == label)
            .map(|&(_, child)| child)
    }

    /// Makes the prefix `prefix` and then `label` (not made before).
    fn grow(&mut self, prefix: u32, label: usize) -> u32 {
        let child = self.nodes.len() as u32;
        self.nodes.push((prefix, label));
        self.children.push(Vec::new());
        self.children[prefix as usize].push((label, child));
        child
    }

    fn last(&self, prefix: u32) -> Option<usize> {
        (prefix != 0).then(|| self.nodes[prefix as usize].1)
    }

    fn labels(&self, mut prefix: u32) -> Vec<usize> {
        let mut labels = Vec::new();
        while prefix != 0 {
            let (parent, label) = self.nodes[prefix as usize];
            labels.push(label);
            prefix = parent;
        }
        labels.reverse();
        labels
    }
}

/// A prefix a step reaches: one made before, or a new one, a prefix and a label more.
#[derive(Clone, Copy)]
enum Candidate {
    Made(u32),
    New(u32, usize),
}

/// The prefixes a step reaches, with their probabilities, in the order first reached.
struct Reached {
    candidates: Vec<(Candidate, Ends)>,
    /// Each made prefix's place in `candidates`, `u32::MAX` when not reached this step.
    slot: Vec<u32>,
}

impl Reached {
    /// The probabilities of made prefix `prefix`.
    fn made(&mut self, prefix: u32) -> &mut Ends {
        let p = prefix as usize;
        if p >= self.slot.len() {
            self.slot.resize(p + 1, u32::MAX);
        }
        if self.slot[p] == u32::MAX {
            self.slot[p] = self.candidates.len() as u32;
            self.candidates.push((Candidate::Made(prefix), Ends::NONE));
        }
        &mut self.candidates[self.slot[p] as usize].1
    }

    /// The `width` likeliest candidates, likeliest first (the first reached first among
    /// equals), their new prefixes made; nothing reached after.
    fn likeliest(&mut self, width: usize, prefixes: &mut Prefixes) -> Vec<(u32, Ends)> {
        for &(candidate, _) in &self.candidates {
            if let Candidate::Made(p) = candidate {
                self.slot[p as usize] = u32::MAX;
            }
        }
        let mut order: Vec<u32> = (0..self.candidates.len() as u32).collect();
        let total = |i: &u32| self.candidates[*i as usize].1.total();
        let likelier = |a: &u32, b: &u32| total(b).total_cmp(&total(a)).then(a.cmp(b));
        if order.len() > width {
            order.select_nth_unstable_by(width - 1, likelier);
            order.truncate(width);
        }
        order.sort_unstable_by(likelier);
        let beam = order
            .iter()
            .map(|&i| match self.candidates[i as usize] {
                (Candidate::Made(p), ends) => (p, ends),
                (Candidate::New(p, label), ends) => (prefixes.grow(p, label), ends),
            })
            .collect();
        self.candidates.clear();
        beam
    }
}

/// The likeliest labelling of one sequence's probabilities `probs` (`[length, C]`) kept in a
/// beam of `width` prefixes. Each step's probabilities are divided by the likeliest prefix's,
/// so they stay in range whatever the length (a prefix that falls below f64's range beside
/// the likeliest has no chance of being read anyway).
fn beam_search(probs: &[f64], c: usize, blank: usize, width: usize) -> Vec<usize> {
    let mut prefixes = Prefixes::new();
    let mut reached = Reached {
        candidates: Vec::new(),
        slot: Vec::new(),
    };
    let start = Ends {
        blank: 1.0,
        label: 0.0,
    };
    let mut beam = vec![(0u32, start)];
    for p in probs.chunks_exact(c) {
        for &(prefix, ends) in &beam {
            let total = ends.total();
            // A blank keeps the prefix.
            reached.made(prefix).blank += total * p[blank];
            let last = prefixes.last(prefix);
            for k in (0..c).filter(|&k| k != blank) {
                let repeats = last == Some(k);
                if repeats {
                    // The last label again, no blank between: the same prefix.
                    reached.made(prefix).label += ends.label * p[k];
                }
                // A longer prefix: after a blank, or after another label. One made before
                // may be in the beam too, and the two must add up; a new one is reached
                // from this prefix only.
                let from = if repeats { ends.blank } else { total };
                let label = from * p[k];
                match prefixes.child(prefix, k) {
                    Some(child) => reached.made(child).label += label,
                    None => {
                        let ends = Ends { blank: 0.0, label };
                        reached.candidates.push((Candidate::New(prefix, k), ends));
                    }
                }
            }
        }
        beam = reached.likeliest(width, &mut prefixes);
        let scale = 1.0 / beam[0].1.total();
        for (_, ends) in &mut beam {
            ends.blank *= scale;
            ends.label *= scale;
        }
    }
    prefixes.labels(beam[0].0)
}

/// `decode(rows, length)` of each sequence of checked logits, in parallel.
fn each_sequence<T: Float>(
    logits: &[T],
    [steps, batch, classes]: [usize; 3],
    blank: usize,
    lengths: Option<&[usize]>,
    decode: impl Fn(&Rows<'_, T>, usize) -> Vec<usize> + Sync,
) -> Result<Vec<Vec<usize>>> {
    check_logits(logits, [steps, batch, classes], lengths)?;
    if blank >= classes {
        return Err(blank_not_a_class(blank, classes));
    }
    let decoded = (0..batch)
        .into_par_iter()
        .map(|s| {
            let rows = Rows {
                logits,
                sequences: batch,
                classes,
                s,
            };
            decode(&rows, lengths.map_or(steps, |l| l[s]))
        })
        .collect();
    Ok(decoded)
}
