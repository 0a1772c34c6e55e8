//! Minibatches of a data set of sequences, epoch after epoch: PyTorch's `DataLoader` with
//! `shuffle`, `drop_last` and a `pad_sequence` collate, and batches of like lengths
//! (bucketing, as fastai's `SortishSampler`), which spend fewer steps on padding.
//!
//! A [`Loader`] deals in indices: each epoch is a list of batches of sequence indices, a
//! function of the lengths, the options, the seed and the epoch's number alone, so a run
//! resumed at epoch `e` sees the batches it would have seen. [`pad_batch`] gathers a batch's
//! sequences into one padded time-major buffer, [`gather_rows`] their per-sequence targets.
//!
//! A step computes every position of its padded `[T, B]` grid, each batch's `T` being its
//! longest sequence's length: [`Loader::padding_share`] is the share of an epoch's positions
//! that are padding, the compute that bucketing saves.
//!
//! ```
//! use rnn_core::loader::{Loader, gather_rows, pad_batch};
//! use rnn_core::prelude::*;
//! // Six sequences of 1-wide inputs, 2 to 7 steps long, one class each.
//! let xs: Vec<Vec<f32>> = (2..8).map(|n| (0..n).map(|t| t as f32 / 8.0).collect()).collect();
//! let labels = [0usize, 1, 0, 1, 1, 0];
//! let lengths: Vec<usize> = xs.iter().map(Vec::len).collect();
//! let loader = Loader::new(&lengths, 2)?.shuffled(7).bucketed(3)?;
//! let spec = LossSpec::last_step(LossKind::CrossEntropy); // at each sequence's own last step
//! let mut tr = Trainer::new(RnnConfig::gru(1, 8, 2), spec, OptimizerKind::adam(1e-2), 0)?;
//! for epoch in 0..3 {
//!     for indices in loader.epoch(epoch) {
//!         let x = pad_batch(&xs, &indices, 1, 0.0)?;
//!         let y = gather_rows(&labels, &indices, 1)?;
//!         let target = Target::Classes(&y);
//!         let batch = Batch::new(x.seq_len, indices.len(), &x.values, target);
//!         tr.step(&Batch { lengths: Some(&x.lengths), ..batch })?;
//!     }
//! }
//! // Pools of three batches sorted by length pair 2 with 3 steps, 4 with 5, 6 with 7.
//! assert_eq!(loader.padding_share(0), 3.0 / 30.0);
//! # Ok::<(), RnnError>(())
//! ```

use kernels::dropout::mix64;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{Result, RnnError, shape};
use crate::padding::{Padded, pad};

/// How a data set of sequences is cut into minibatches each epoch ([module docs](self)).
///
/// ```
/// use rnn_core::loader::Loader;
/// let lengths = [5, 3, 8, 2, 6];
/// // In order, the last batch short (PyTorch's DataLoader(batch_size=2)).
/// let plain = Loader::new(&lengths, 2)?;
/// assert_eq!(plain.epoch(0), [vec![0, 1], vec![2, 3], vec![4]]);
/// assert_eq!(plain.drop_last().epoch(0), [vec![0, 1], vec![2, 3]]);
/// // Shuffled: a new order each epoch, the same order for the same seed and epoch.
/// let shuffled = Loader::new(&lengths, 2)?.shuffled(42);
/// assert_eq!(shuffled.epoch(3), shuffled.epoch(3));
/// assert_ne!(shuffled.epoch(0), shuffled.epoch(1));
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loader {
    lengths: Vec<usize>,
    batch_size: usize,
    /// The seed of every epoch's order, when shuffled.
    seed: Option<u64>,
    drop_last: bool,
    /// Batches per pool sorted by length, when bucketed.
    pool: Option<usize>,
    /// Whether each batch lists its sequences longest first.
    longest_first: bool,
}

impl Loader {
    /// Batches of `batch_size` sequences, in order, out of sequences of `lengths` steps
    /// (one per sequence; the lengths are what [`Loader::bucketed`] sorts by and what
    /// [`Loader::padding_share`] counts).
    ///
    /// # Errors
    /// [`RnnError::Empty`] for no sequences or a `batch_size` of 0;
    /// [`RnnError::LengthOutOfRange`] for a sequence of length 0, which no batch can hold.
    pub fn new(lengths: &[usize], batch_size: usize) -> Result<Self> {
        if lengths.is_empty() {
            return Err(RnnError::Empty { what: "sequences" });
        }
        if batch_size == 0 {
            return Err(RnnError::Empty { what: "batch_size" });
        }
        if let Some(index) = lengths.iter().position(|&len| len == 0) {
            return Err(RnnError::LengthOutOfRange {
                index,
                length: 0,
                seq_len: lengths.iter().copied().max().unwrap_or(0),
            });
        }
        Ok(Self {
            lengths: lengths.to_vec(),
            batch_size,
            seed: None,
            drop_last: false,
            pool: None,
            longest_first: false,
        })
    }

    /// Draws a new order of the sequences each epoch from `seed` and the epoch's number
    /// (`DataLoader(shuffle=True)`; with [`Loader::bucketed`], the order of the batches too).
    /// The orders come from `rand`'s `StdRng`: the same for a given version of `rand`.
    #[must_use]
    pub fn shuffled(self, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            ..self
        }
    }

    /// Leaves out a last batch shorter than `batch_size` (`DataLoader(drop_last=True)`):
    /// every step then has the same batch size, and with a shuffled loader each epoch
    /// leaves out other sequences.
    #[must_use]
    pub fn drop_last(self) -> Self {
        Self {
            drop_last: true,
            ..self
        }
    }

    /// Batches of like lengths: the epoch's order is cut into pools of `pool` batches, each
    /// pool sorted by length (longest first; equal lengths keep their order) and cut into
    /// its batches, and, when shuffled, the epoch's batches are then shuffled, so that long
    /// and short batches mix. With `pool` = 1 the batches hold what they would unbucketed;
    /// a pool of every batch sorts the whole set (each epoch then has batches of the same
    /// lengths, only sequences of equal length trading places). Larger pools leave less
    /// padding and less randomness in which sequences share a batch: on 1024 sequences of
    /// 16-256 steps in batches of 32, pools of 1, 4, 8, 16 and all 32 batches left 47, 18,
    /// 10, 5 and 3 % of the computed positions padding.
    ///
    /// ```
    /// use rnn_core::loader::Loader;
    /// let lengths = [1, 9, 2, 8, 3, 7];
    /// let plain = Loader::new(&lengths, 2)?;
    /// let bucketed = plain.clone().bucketed(3)?; // one pool of three batches
    /// assert_eq!(bucketed.epoch(0), [vec![1, 3], vec![5, 4], vec![2, 0]]);
    /// // Positions computed: 2 · (9 + 8 + 7) = 48 in order, 2 · (9 + 7 + 2) = 36 bucketed,
    /// // 30 of them the sequences' own.
    /// assert_eq!(plain.padding_share(0), 18.0 / 48.0);
    /// assert_eq!(bucketed.padding_share(0), 6.0 / 36.0);
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    ///
    /// # Errors
    /// [`RnnError::Empty`] for a `pool` of 0.
    pub fn bucketed(self, pool: usize) -> Result<Self> {
        if pool == 0 {
            return Err(RnnError::Empty { what: "pool" });
        }
        Ok(Self {
            pool: Some(pool),
            ..self
        })
    }

    /// Lists each batch's sequences longest first (equal lengths keep their order), which
    /// changes no batch's members, only their rows. A pass then computes, at each time step,
    /// only the rows of the sequences still running ([`crate::batch::Batch::live_rows`]),
    /// as PyTorch's packed sequences do: the padding of a shuffled epoch costs the step
    /// loops nothing. A trainer copies a batch in another order longest first itself;
    /// listing it so spares it the copy, and lets the passes that keep a batch's order (the
    /// final states, a loss of one's own) skip too. [`Loader::bucketed`] batches are
    /// longest first already.
    ///
    /// Measured (`BENCH_WORKLOADS=loader cargo bench -p bench-suite --bench train_step --
    /// loader`, one thread, an LSTM of 128 units in batches of 32 sequences of 16-256
    /// steps): an epoch of shuffled batches, 45 % of whose positions are padding, took
    /// 383 ms when every step computed every row, 269 ms computing only the running rows
    /// step by step, 211 ms with the all-step products gathering them too; bucketed in
    /// pools of 8 batches (9 % padding), 188 ms.
    ///
    /// ```
    /// use rnn_core::loader::Loader;
    /// let lengths = [5, 3, 8, 2, 6];
    /// let loader = Loader::new(&lengths, 2)?.longest_first();
    /// assert_eq!(loader.epoch(0), [vec![0, 1], vec![2, 3], vec![4]]);
    /// let shuffled = Loader::new(&lengths, 2)?.shuffled(42);
    /// for (batch, sorted) in shuffled.epoch(1).iter().zip(shuffled.clone().longest_first().epoch(1)) {
    ///     let mut members = batch.clone();
    ///     members.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    ///     assert_eq!(members, sorted); // the same sequences, longest first
    /// }
    /// # Ok::<(), rnn_core::RnnError>(())
    /// ```
    #[must_use]
    pub fn longest_first(self) -> Self {
        Self {
            longest_first: true,
            ..self
        }
    }

    /// The number of sequences.
    pub fn sequences(&self) -> usize {
        self.lengths.len()
    }

    /// The number of batches each epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.lengths.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Epoch `epoch`'s batches, each a list of sequence indices (at most `batch_size`, the
    /// last one shorter unless [`Loader::drop_last`]); every sequence is in one batch but
    /// those a dropped last batch would have held.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = self
            .seed
            .map(|seed| StdRng::seed_from_u64(mix64(seed ^ mix64(epoch))));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        if let Some(rng) = &mut rng {
            order.shuffle(rng);
        }
        if let Some(pool) = self.pool {
            for members in order.chunks_mut(pool * self.batch_size) {
                // Stable: equal lengths keep the epoch's (shuffled) order.
                members.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            }
        }
        let mut batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < self.batch_size) {
            batches.pop();
        }
        if let (Some(_), Some(rng)) = (self.pool, &mut rng) {
            batches.shuffle(rng);
        }
        if self.longest_first {
            for batch in &mut batches {
                batch.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            }
        }
        batches
    }

    /// The share of epoch `epoch`'s padded positions that are padding: each batch pads to
    /// `T · B` positions (`T` its longest length, `B` its size) of which its lengths' sum
    /// are the sequences' own. What [`Loader::bucketed`] brings down. Every position costs
    /// the all-step products (the input projection, the weight gradients, the output
    /// head); the step loops skip the padding of a batch ordered longest first
    /// ([`Loader::longest_first`]).
    pub fn padding_share(&self, epoch: u64) -> f64 {
        let (mut computed, mut own) = (0usize, 0usize);
        for batch in self.epoch(epoch) {
            let lengths = batch.iter().map(|&i| self.lengths[i]);
            computed += lengths.clone().max().unwrap_or(0) * batch.len();
            own += lengths.sum::<usize>();
        }
        if computed == 0 {
            return 0.0;
        }
        (computed - own) as f64 / computed as f64
    }
}

/// The sequences `indices` of a data set, each `[len, width]` row-major, padded into one
/// time-major buffer `[T, B, width]` with `fill` (a [`Loader`] batch's inputs, or its
/// per-step targets: [`crate::batch::IGNORED_LABEL`] pads labels): [`pad`] of the chosen
/// sequences, in the batch's order.
///
/// # Errors
/// [`RnnError::ShapeMismatch`] for an index past the data set; those of [`pad`] (no
/// indices, an empty sequence, a sequence that is not whole steps of `width`).
pub fn pad_batch<V: Copy, S: AsRef<[V]>>(
    sequences: &[S],
    indices: &[usize],
    width: usize,
    fill: V,
) -> Result<Padded<V>> {
    check_indices(indices, sequences.len())?;
    let chosen: Vec<&[V]> = indices.iter().map(|&i| sequences[i].as_ref()).collect();
    pad(&chosen, width, fill)
}

/// Rows `indices` of a data set's `[N, width]` row-major values, in the batch's order: a
/// [`Loader`] batch's one-per-sequence targets (`[B]` labels with `width` 1, `[B, O]` float
/// targets of a last-step loss, sequence weights).
///
/// ```
/// let targets = [0.0f32, 0.5, 1.0, 1.5, 2.0, 2.5]; // N = 3 sequences, width 2
/// assert_eq!(rnn_core::loader::gather_rows(&targets, &[2, 0], 2)?, [2.0, 2.5, 0.0, 0.5]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
///
/// # Errors
/// [`RnnError::Empty`] for a `width` of 0; [`RnnError::ShapeMismatch`] unless `values`
/// holds whole rows of `width`, or for an index past them.
pub fn gather_rows<V: Copy>(values: &[V], indices: &[usize], width: usize) -> Result<Vec<V>> {
    if width == 0 {
        return Err(RnnError::Empty { what: "width" });
    }
    if !values.len().is_multiple_of(width) {
        return Err(shape(
            "values",
            format!("whole rows of {width}"),
            values.len(),
        ));
    }
    check_indices(indices, values.len() / width)?;
    let row = |&i: &usize| &values[i * width..(i + 1) * width];
    Ok(indices.iter().flat_map(row).copied().collect())
}

/// [`RnnError::ShapeMismatch`] for the first index not below `len`.
fn check_indices(indices: &[usize], len: usize) -> Result<()> {
    match indices.iter().enumerate().find(|&(_, &i)| i >= len) {
        Some((at, &i)) => Err(shape(format!("indices[{at}]"), format!("below {len}"), i)),
        None => Ok(()),
    }
}
