//! Time chunks: a pass runs its steps a stretch at a time, so what one phase writes is still
//! in cache when the next phase reads it.
//!
//! Forward, each chunk's input projection runs just before the chunk's steps read it, and
//! the head reads the chunk's top states right after the steps wrote them. Backward, the
//! head's `dL/dh` of a chunk is computed just before the chunk's reverse loop, and the
//! weight gradients of the chunk's `dZ` right after it, summed into the pass's gradients.
//! Unchunked, every one of these phases streams `[T·B, G·H]` buffers from memory: at
//! `T = 1024` (32 MiB per buffer) the products reading or writing them ran at 79-98
//! GFLOP/s against 108-116 at `T = 64`.
//!
//! Measured against unchunked passes (alternating runs, tokens/s), one thread: RNN at
//! `T = 1024` +10 %, RNN char +6-10 %, LSTM medium +3-9 %, GRU medium +2-7 %, GRU char
//! flat; two threads: +2-12 % on the same. Where the sequence's buffers stay in cache
//! anyway (RNN medium) or the weight gradients are large (the large shapes), chunks gained
//! nothing or lost, and `Auto` does not use them there.

use std::num::NonZeroUsize;
use std::ops::Range;

use faer::Accum;

/// How many steps a pass runs at a time (see the module docs of `network`).
///
/// The weight gradients are summed chunk by chunk, so results depend on the chunk length
/// (within rounding), never on the thread count. `Auto` picks the length from the shape. A
/// bidirectional model runs whole sequences whatever this says: its reverse direction
/// starts at the last step.
///
/// ```
/// use std::num::NonZeroUsize;
/// use rnn_core::network::TimeChunks;
/// // (T, B, H, gates): LSTM medium runs chunks of 9 steps, GRU char of 16, an RNN of
/// // medium's width at T = 1024 of 16; RNN medium (3.2 MiB of gates, they stay in cache)
/// // and LSTM large (a 16 MiB weight gradient) run all steps at once.
/// assert_eq!(TimeChunks::Auto.steps(100, 32, 256, 4), 9);
/// assert_eq!(TimeChunks::Auto.steps(128, 32, 512, 3), 16);
/// assert_eq!(TimeChunks::Auto.steps(1024, 32, 256, 1), 16);
/// assert_eq!(TimeChunks::Auto.steps(100, 32, 256, 1), 100);
/// assert_eq!(TimeChunks::Auto.steps(50, 64, 1024, 4), 50);
/// assert_eq!(TimeChunks::Steps(NonZeroUsize::new(8).unwrap()).steps(100, 32, 256, 1), 8);
/// assert_eq!(TimeChunks::Whole.steps(100, 32, 256, 1), 100);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeChunks {
    /// A length from the shape: all steps at once when the whole sequence's gates are less
    /// than [`TimeChunks::AUTO_MIN_SEQUENCE_BYTES`] or the recurrent weight gradient is
    /// [`TimeChunks::AUTO_MAX_WEIGHT_BYTES`] or more; otherwise chunks whose gate rows fill
    /// [`TimeChunks::AUTO_BYTES`], but at least `H` rows, evened out over the sequence.
    #[default]
    Auto,
    /// All steps at once.
    Whole,
    /// This many steps at a time (the last chunk may be shorter).
    Steps(NonZeroUsize),
}

impl TimeChunks {
    /// The bytes of one chunk's gate rows (`[steps·B, G·H]` in f32) that `Auto` aims at:
    /// half of one core's L2 on the machines measured, so the chunk's gates, states and
    /// gradients stay near the core between phases.
    pub const AUTO_BYTES: usize = 512 << 10;

    /// The size of the whole sequence's gates (`[T·B, G·H]`, f32) below which `Auto` runs all
    /// steps at once: they stay in the shared cache anyway, and each chunk costs its threads
    /// a few more meetings. RNN medium (3.2 MiB) gained nothing on one thread and ran 7-17 %
    /// slower on two in chunks of 17 steps.
    pub const AUTO_MIN_SEQUENCE_BYTES: usize = 4 << 20;

    /// The size of the `[G·H, H]` weight gradient (f32) from which `Auto` runs all steps at
    /// once: every chunk re-reads and re-writes it, and at the large shapes (4-16 MiB) that
    /// cost what the chunks saved (LSTM large ran 3-7 % slower in chunks of 13 steps).
    pub const AUTO_MAX_WEIGHT_BYTES: usize = 4 << 20;

    /// The steps per chunk for a pass of `seq_len` steps of `batch` rows, `hidden` units and
    /// `gates` gates (at most `seq_len`, at least 1).
    pub fn steps(self, seq_len: usize, batch: usize, hidden: usize, gates: usize) -> usize {
        let seq_len = seq_len.max(1);
        match self {
            Self::Whole => seq_len,
            Self::Steps(n) => n.get().min(seq_len),
            Self::Auto => {
                let gate_row = (gates * hidden * 4).max(1);
                if gate_row * seq_len * batch < Self::AUTO_MIN_SEQUENCE_BYTES
                    || gate_row * hidden >= Self::AUTO_MAX_WEIGHT_BYTES
                {
                    return seq_len;
                }
                // Fewer rows than H re-read the weight gradients more often than the rows
                // they add are worth (LSTM char: 7-10 % slower at 128 rows than 512), and
                // give two threads more meetings than work between them.
                let rows = (Self::AUTO_BYTES / gate_row).max(hidden);
                let steps = rows.div_ceil(batch.max(1)).clamp(1, seq_len);
                // Even chunks, none shorter than `steps`.
                seq_len.div_ceil((seq_len / steps).max(1))
            }
        }
    }
}

/// How the chunk `steps` adds its share of a sum over all steps (a weight gradient) to it:
/// the backward pass's first chunk, the sequence's last, overwrites; the others add.
pub(crate) fn share_accum(steps: &Range<usize>, seq_len: usize) -> Accum {
    if steps.end >= seq_len {
        Accum::Replace
    } else {
        Accum::Add
    }
}

/// The chunks of `0..seq_len`, `len` steps each (the last may be shorter), first to last.
pub(crate) fn spans(seq_len: usize, len: usize) -> impl DoubleEndedIterator<Item = Range<usize>> {
    let len = len.max(1);
    (0..seq_len.div_ceil(len)).map(move |c| c * len..((c + 1) * len).min(seq_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_steps_in_order() {
        let all: Vec<_> = spans(10, 4).collect();
        assert_eq!(all, [0..4, 4..8, 8..10]);
        assert_eq!(spans(3, 5).collect::<Vec<_>>(), vec![0..3]);
        assert_eq!(spans(4, 1).next_back(), Some(3..4));
    }
}
