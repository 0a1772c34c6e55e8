//! The one error type of the public API.

use std::path::PathBuf;

use kernels::aligned::AllocError;

/// Everything that can go wrong in `rnn-core`, each naming the offending thing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RnnError {
    /// A buffer or tensor has the wrong size or shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// What was checked (`"x"`, `"target"`, `"rnn.weight_hh_l0"`, ...).
        what: String,
        /// The expected shape or length.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A dimension that must be positive is zero (`T`, `B`, a layer size).
    #[error("{what} must be at least 1, got 0")]
    Empty {
        /// The dimension's name.
        what: &'static str,
    },
    /// A per-sequence length outside `1..=T`.
    #[error("sequence {index} has length {length}, outside 1..={seq_len}")]
    LengthOutOfRange {
        /// The sequence (batch row).
        index: usize,
        /// Its length.
        length: usize,
        /// The batch's `T`.
        seq_len: usize,
    },
    /// A class label `>= O`.
    #[error("label {label} at step {t}, sequence {b} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// Time step (0 for many-to-one targets).
        t: usize,
        /// Sequence.
        b: usize,
        /// The label.
        label: usize,
        /// The number of classes `O`.
        classes: usize,
    },
    /// A token `>=` the embedding's vocabulary.
    #[error(
        "token {token} at step {t}, sequence {b} is out of range for an embedding of {num_embeddings}"
    )]
    TokenOutOfRange {
        /// Time step.
        t: usize,
        /// Sequence.
        b: usize,
        /// The token.
        token: usize,
        /// The vocabulary size (`nn.Embedding`'s `num_embeddings`).
        num_embeddings: usize,
    },
    /// A NaN or infinity in an input.
    #[error("non-finite value {value} in {what} at flat index {index}")]
    NonFiniteInput {
        /// Which input.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The value (as f64).
        value: f64,
    },
    /// A NaN or infinite loss or gradient: the step was rejected, weights and optimizer state
    /// are exactly as they were.
    #[error("non-finite {what} at training step {step}: update rejected, weights unchanged")]
    NonFinite {
        /// `loss`, `gradient of <tensor>[<index>]`, or `gradient norm` (finite gradients whose
        /// squares overflow).
        what: String,
        /// The step number that was rejected (0-based count of completed steps).
        step: u64,
    },
    /// Gradient accumulation used out of order: an update with no micro-batch accumulated,
    /// or a plain update while micro-batches wait for theirs.
    #[error("gradient accumulation: {0}")]
    Accumulation(String),
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The memory for a model or a batch's activations is not there: a step whose buffers
    /// would not fit is refused before it computes anything (weights, optimizer state and
    /// the trainer's buffers as they were), as PyTorch raises on a failed allocation instead
    /// of ending the process. A smaller batch, shorter sequences or a memory setting that
    /// keeps less ([`crate::trainer::Memory`]) may fit.
    ///
    /// ```
    /// use rnn_core::prelude::*;
    /// let spec = LossSpec::every_step(LossKind::Mse);
    /// let too_big = RnnConfig::gru(1, 1 << 24, 1); // 3 PiB of parameters
    /// match Trainer::<f32>::new(too_big, spec, OptimizerKind::adam(1e-3), 0) {
    ///     Err(RnnError::OutOfMemory { what, bytes }) => {
    ///         assert!(what == "the parameters" && bytes > 1 << 50)
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    #[error("out of memory: {bytes} bytes for {what} could not be allocated")]
    OutOfMemory {
        /// What needed the memory (`"the parameters"`, `"layer 0's gate buffer"`, ...).
        what: String,
        /// The bytes asked for (`usize::MAX` when their count overflows).
        bytes: usize,
    },
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weight or checkpoint file is malformed, or misses or misshapes a tensor.
    #[error("bad weight file: {0}")]
    Format(String),
}

/// [`RnnError::OutOfMemory`] for `what`, from the allocation that failed.
pub(crate) fn out_of_memory(what: impl Into<String>) -> impl FnOnce(AllocError) -> RnnError {
    move |failed| RnnError::OutOfMemory {
        what: what.into(),
        bytes: failed.bytes,
    }
}

/// A `Vec` of `len` copies of `value`, `len` the product of `dims`, or
/// [`RnnError::OutOfMemory`] for `what` when the memory is not there (a product past `usize`
/// included): for buffers sized by a caller's counts, where `vec!` would end the process.
pub(crate) fn filled_vec<V: Clone>(dims: &[usize], value: V, what: &str) -> Result<Vec<V>> {
    let Some(len) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
        return Err(RnnError::OutOfMemory {
            what: what.into(),
            bytes: usize::MAX,
        });
    };
    let mut v = Vec::new();
    vec_room(&mut v, len, what)?;
    v.resize(len, value);
    Ok(v)
}

/// Grows `v` to hold `n` elements, unless it can, keeping its values; memory that is not
/// there is [`RnnError::OutOfMemory`] for `what` (`v` then as it was).
pub(crate) fn vec_room<V>(v: &mut Vec<V>, n: usize, what: &str) -> Result<()> {
    v.try_reserve(n.saturating_sub(v.len()))
        .map_err(|_| RnnError::OutOfMemory {
            what: what.into(),
            bytes: n.saturating_mul(size_of::<V>()),
        })
}

/// `Result` with [`RnnError`].
pub type Result<T, E = RnnError> = std::result::Result<T, E>;

pub(crate) fn shape(
    what: impl Into<String>,
    expected: impl ToString,
    got: impl ToString,
) -> RnnError {
    RnnError::ShapeMismatch {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}
