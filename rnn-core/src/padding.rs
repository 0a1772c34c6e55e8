//! Sequences of different lengths into one time-major batch and back: PyTorch's
//! `pad_sequence` with the lengths `pack_padded_sequence` takes, `unpad_sequence`, and
//! `batch_first` buffers turned time-major.
//!
//! ```
//! use rnn_core::padding::{pad, unpad};
//! use rnn_core::prelude::*;
//! // Two sequences of 2-wide inputs, 3 steps and 1 step long, labelled at every step.
//! let (a, b) = ([0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7f32, 0.8]);
//! let x = pad(&[&a[..], &b[..]], 2, 0.0)?;
//! let labels = pad(&[&[0usize, 1, 2][..], &[1][..]], 1, IGNORED_LABEL)?;
//! assert_eq!((x.seq_len, &x.lengths[..]), (3, &[3, 1][..]));
//! assert_eq!(x.values[..4], [0.1, 0.2, 0.7, 0.8]); // step 0 of both, then step 1 ...
//! let batch = Batch { lengths: Some(&x.lengths), ..Batch::new(x.seq_len, 2, &x.values, Target::Classes(&labels.values)) };
//! let mut tr = Trainer::new(RnnConfig::gru(2, 8, 3), LossSpec::every_step(LossKind::CrossEntropy), OptimizerKind::adam(1e-2), 0)?;
//! tr.step(&batch)?;
//! // Each sequence's own outputs, [len, O], from the model's [T, B, O].
//! let outputs = unpad(tr.outputs(&batch)?, x.seq_len, 2, 3, &x.lengths)?;
//! assert_eq!((outputs[0].len(), outputs[1].len()), (3 * 3, 3));
//! # Ok::<(), RnnError>(())
//! ```

use crate::error::{Result, RnnError, shape};

/// Sequences padded into one time-major buffer ([`pad`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Padded<V> {
    /// `[T, B, width]`: step `t` of sequence `b` at `(t·B + b)·width`, the fill value past
    /// the sequence's length.
    pub values: Vec<V>,
    /// Each sequence's length in steps, for [`crate::batch::Batch::lengths`].
    pub lengths: Vec<usize>,
    /// `T`, the longest length.
    pub seq_len: usize,
}

/// Pads `sequences`, each `[len, width]` row-major with `len` of at least 1, into one
/// time-major buffer `[T, B, width]` (`T` the longest `len`, `B` the number of sequences),
/// `fill` past each sequence's end: inputs (`width` = I), float targets (O), token ids or
/// class labels (1; labels padded with [`crate::batch::IGNORED_LABEL`]). PyTorch's
/// `pad_sequence`, time-major, with the lengths `pack_padded_sequence` takes.
///
/// # Errors
/// [`RnnError::Empty`] for no sequences or a `width` of 0;
/// [`RnnError::LengthOutOfRange`] for an empty sequence; [`RnnError::ShapeMismatch`] for a
/// sequence that is not whole steps of `width`.
pub fn pad<V: Copy>(sequences: &[&[V]], width: usize, fill: V) -> Result<Padded<V>> {
    if sequences.is_empty() {
        return Err(RnnError::Empty { what: "sequences" });
    }
    if width == 0 {
        return Err(RnnError::Empty { what: "width" });
    }
    if let Some((b, s)) = (sequences.iter().enumerate()).find(|(_, s)| s.len() % width != 0) {
        let want = format!("whole steps of {width}");
        return Err(shape(format!("sequence {b}"), want, s.len()));
    }
    let lengths: Vec<usize> = sequences.iter().map(|s| s.len() / width).collect();
    let seq_len = lengths.iter().copied().max().unwrap_or(0);
    if let Some(index) = lengths.iter().position(|&len| len == 0) {
        return Err(RnnError::LengthOutOfRange {
            index,
            length: 0,
            seq_len,
        });
    }
    let batch = sequences.len();
    let mut values = vec![fill; seq_len * batch * width];
    for (b, sequence) in sequences.iter().enumerate() {
        for (t, step) in sequence.chunks_exact(width).enumerate() {
            let at = (t * batch + b) * width;
            values[at..at + width].copy_from_slice(step);
        }
    }
    Ok(Padded {
        values,
        lengths,
        seq_len,
    })
}

/// Each sequence's first `lengths[b]` steps out of a time-major `[T, B, width]` buffer (the
/// model's outputs, [`crate::trainer::Trainer::outputs`]), `[len, width]` each: the inverse
/// of [`pad`], PyTorch's `unpad_sequence`.
///
/// # Errors
/// [`RnnError::ShapeMismatch`] unless `values` holds `T·B·width` values and `lengths` `B`;
/// [`RnnError::LengthOutOfRange`] for a length outside `1..=T`.
pub fn unpad<V: Copy>(
    values: &[V],
    seq_len: usize,
    batch: usize,
    width: usize,
    lengths: &[usize],
) -> Result<Vec<Vec<V>>> {
    check_len("values", values, seq_len * batch * width)?;
    check_len("lengths", lengths, batch)?;
    if let Some((index, &length)) =
        (lengths.iter().enumerate()).find(|&(_, &len)| len == 0 || len > seq_len)
    {
        return Err(RnnError::LengthOutOfRange {
            index,
            length,
            seq_len,
        });
    }
    let sequence = |b: usize| {
        (0..lengths[b])
            .flat_map(|t| &values[(t * batch + b) * width..(t * batch + b + 1) * width])
            .copied()
            .collect()
    };
    Ok((0..batch).map(sequence).collect())
}

/// A batch-first buffer `[B, T, width]` (PyTorch's `batch_first=True`) as the time-major
/// `[T, B, width]` this crate reads.
///
/// ```
/// let x = [1, 2, 3, 4, 5, 6]; // B = 2 sequences of T = 3 steps, width 1
/// assert_eq!(rnn_core::padding::time_major(&x, 2, 3, 1)?, [1, 4, 2, 5, 3, 6]);
/// # Ok::<(), rnn_core::RnnError>(())
/// ```
///
/// # Errors
/// [`RnnError::ShapeMismatch`] unless `values` holds `B·T·width` values.
pub fn time_major<V: Copy>(
    values: &[V],
    batch: usize,
    seq_len: usize,
    width: usize,
) -> Result<Vec<V>> {
    swap_leading(values, batch, seq_len, width)
}

/// A time-major buffer `[T, B, width]` (outputs, gradients) as batch-first `[B, T, width]`:
/// the inverse of [`time_major`].
///
/// # Errors
/// [`RnnError::ShapeMismatch`] unless `values` holds `T·B·width` values.
pub fn batch_major<V: Copy>(
    values: &[V],
    seq_len: usize,
    batch: usize,
    width: usize,
) -> Result<Vec<V>> {
    swap_leading(values, seq_len, batch, width)
}

/// `[m, n, width]` → `[n, m, width]`.
fn swap_leading<V: Copy>(values: &[V], m: usize, n: usize, width: usize) -> Result<Vec<V>> {
    check_len("values", values, m * n * width)?;
    let row = |(j, i): (usize, usize)| &values[(i * n + j) * width..(i * n + j + 1) * width];
    let rows = (0..n).flat_map(|j| (0..m).map(move |i| (j, i)));
    Ok(rows.flat_map(row).copied().collect())
}

/// [`RnnError::ShapeMismatch`] unless `values` has `len` elements.
fn check_len<V>(what: &str, values: &[V], len: usize) -> Result<()> {
    if values.len() == len {
        Ok(())
    } else {
        Err(shape(what, len, values.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_unpads_sequences_of_every_length() {
        let seqs: Vec<Vec<u32>> = (1..=4)
            .map(|len| (0..len * 3).map(|k| 100 * len + k).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| &s[..]).collect();
        let p = pad(&refs, 3, 0).unwrap();
        assert_eq!((p.seq_len, &p.lengths[..]), (4, &[1, 2, 3, 4][..]));
        assert_eq!(p.values.len(), 4 * 4 * 3);
        // Step 1 of sequence 0 is padding; step 1 of sequence 2 is its second step.
        assert_eq!(p.values[4 * 3..5 * 3], [0, 0, 0]); // (t·B + b)·width, t = 1, b = 0
        assert_eq!(p.values[(4 + 2) * 3..(4 + 3) * 3], [303, 304, 305]);
        assert_eq!(unpad(&p.values, 4, 4, 3, &p.lengths).unwrap(), seqs);
    }

    #[test]
    fn bad_sequences_are_refused_by_name() {
        let e = pad::<f32>(&[], 2, 0.0).unwrap_err();
        assert!(matches!(e, RnnError::Empty { what: "sequences" }), "{e}");
        assert!(matches!(
            pad(&[&[1.0f32][..]], 0, 0.0),
            Err(RnnError::Empty { what: "width" })
        ));
        let e = pad(&[&[1.0f32, 2.0][..], &[3.0][..]], 2, 0.0).unwrap_err();
        assert!(e.to_string().contains("sequence 1"), "{e}");
        let e = pad(&[&[1.0f32, 2.0][..], &[][..]], 2, 0.0).unwrap_err();
        assert!(matches!(
            e,
            RnnError::LengthOutOfRange {
                index: 1,
                length: 0,
                seq_len: 1
            }
        ));
        let e = unpad(&[1, 2, 3, 4], 2, 2, 1, &[2, 3]).unwrap_err();
        assert!(matches!(
            e,
            RnnError::LengthOutOfRange {
                index: 1,
                length: 3,
                ..
            }
        ));
        assert!(unpad(&[1, 2, 3], 2, 2, 1, &[2, 2]).is_err());
        assert!(unpad(&[1, 2, 3, 4], 2, 2, 1, &[2]).is_err());
        assert!(time_major(&[1, 2, 3], 2, 2, 1).is_err());
    }

    #[test]
    fn batch_first_round_trips() {
        let (b, t, w) = (3, 5, 2);
        let x: Vec<usize> = (0..b * t * w).collect();
        let tm = time_major(&x, b, t, w).unwrap();
        // Step 1 of sequence 2, batch-first at (2·T + 1)·w, time-major at (1·B + 2)·w.
        assert_eq!(
            tm[(b + 2) * w..(b + 3) * w],
            x[(2 * t + 1) * w..(2 * t + 2) * w]
        );
        assert_eq!(batch_major(&tm, t, b, w).unwrap(), x);
    }
}
