//! Reading a CTC model's outputs back into labels: by best path ([`greedy_decode`]) or by
//! prefix beam search ([`beam_decode`]).

use std::collections::HashMap;

use kernels::Float;
use rayon::prelude::*;

use super::log_space::{log_add, log_softmax};
use super::{Rows, blank_not_a_class, check_shape};
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
/// lengths not `batch`; [`RnnError::LengthOutOfRange`] for a length outside `1..=steps`.
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
        |rows, length| beam_search(&log_softmax(rows, length), classes, blank, width),
    )
}

/// A prefix's log probabilities over the paths so far that read as it: those ending in a
/// blank, and those ending in its last label.
#[derive(Clone, Copy)]
struct Ends {
    blank: f64,
    label: f64,
}

impl Ends {
    const NONE: Self = Self {
        blank: f64::NEG_INFINITY,
        label: f64::NEG_INFINITY,
    };

    fn total(self) -> f64 {
        log_add(self.blank, self.label)
    }
}

/// The likeliest labelling of one sequence's `log_probs` (`[length, C]`) kept in a beam of
/// `width` prefixes.
fn beam_search(log_probs: &[f64], c: usize, blank: usize, width: usize) -> Vec<usize> {
    let mut beam = vec![(
        Vec::new(),
        Ends {
            blank: 0.0,
            label: f64::NEG_INFINITY,
        },
    )];
    let mut next: HashMap<Vec<usize>, Ends> = HashMap::new();
    for lp in log_probs.chunks_exact(c) {
        for (prefix, ends) in &beam {
            let total = ends.total();
            // A blank keeps the prefix.
            let kept = next.entry(prefix.clone()).or_insert(Ends::NONE);
            kept.blank = log_add(kept.blank, total + lp[blank]);
            for k in (0..c).filter(|&k| k != blank) {
                let repeats = prefix.last() == Some(&k);
                if repeats {
                    // The last label again, no blank between: the same prefix.
                    let kept = next.entry(prefix.clone()).or_insert(Ends::NONE);
                    kept.label = log_add(kept.label, ends.label + lp[k]);
                }
                // A longer prefix: after a blank, or after another label.
                let from = if repeats { ends.blank } else { total };
                let mut longer = prefix.clone();
                longer.push(k);
                let grown = next.entry(longer).or_insert(Ends::NONE);
                grown.label = log_add(grown.label, from + lp[k]);
            }
        }
        beam = next.drain().collect();
        // Likeliest first; equal ones by prefix, so the hash order never decides.
        beam.sort_by(|(p, a), (q, b)| b.total().total_cmp(&a.total()).then_with(|| p.cmp(q)));
        beam.truncate(width);
    }
    beam.swap_remove(0).0
}

/// `decode(rows, length)` of each sequence of checked logits, in parallel.
fn each_sequence<T: Float>(
    logits: &[T],
    [steps, batch, classes]: [usize; 3],
    blank: usize,
    lengths: Option<&[usize]>,
    decode: impl Fn(&Rows<'_, T>, usize) -> Vec<usize> + Sync,
) -> Result<Vec<Vec<usize>>> {
    check_shape(logits.len(), [steps, batch, classes], lengths)?;
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
