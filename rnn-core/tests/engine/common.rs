//! Random batches shared by the gradient tests (`gradcheck`, `properties`, `checkpointed`,
//! `time_chunks`) and those that split a batch by sequences (`accumulate`,
//! `sequence_losses`), the scratch folders of the tests that write files, and the tensors of
//! a file to rewrite edited.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use rand::{Rng, rngs::StdRng};
use rnn_core::batch::IGNORED_LABEL;
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{Cell, LossKind, LossSpec, Reduction, RnnConfig};
use rnn_core::io;

/// Inputs, both kinds of target, lengths and an initial state for one batch, in f64.
#[derive(Clone)]
pub struct Data {
    pub x: Vec<f64>,
    pub values: Vec<f64>,
    pub classes: Vec<usize>,
    pub lengths: Vec<usize>,
    pub h0: Vec<f64>,
    /// The LSTM cell state `[L, B, H]` (empty for other cells).
    pub c0: Vec<f64>,
    pub cell: Cell,
    /// `[T, B]` token ids, the input of a model with an embedding (empty otherwise, and
    /// then the batch reads `x`).
    pub tokens: Vec<usize>,
    /// `[B]` sequence weights (empty: none).
    pub weights: Vec<f64>,
}

impl Data {
    /// A random batch of `t` steps and `b` sequences for `cfg`; the first sequence always
    /// has full length. Targets are `[B, ..]` when `many_to_one`, else `[T, B, ..]`.
    pub fn random(
        rng: &mut StdRng,
        cfg: &RnnConfig,
        t: usize,
        b: usize,
        many_to_one: bool,
    ) -> Self {
        let positions = if many_to_one { b } else { t * b };
        let mut lengths: Vec<usize> = (0..b).map(|_| rng.random_range(1..=t)).collect();
        lengths[0] = t;
        let mut data = Data {
            x: (0..t * b * cfg.input_size)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
            values: (0..positions * cfg.output_size)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
            classes: (0..positions)
                .map(|_| rng.random_range(0..cfg.output_size))
                .collect(),
            lengths,
            h0: (0..cfg.passes() * b * cfg.state_size())
                .map(|_| rng.random_range(-0.5..0.5))
                .collect(),
            c0: if cfg.cell == Cell::Lstm {
                (0..cfg.passes() * b * cfg.hidden_size)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            } else {
                Vec::new()
            },
            cell: cfg.cell,
            tokens: Vec::new(),
            weights: Vec::new(),
        };
        // Drawn last, so a model without an embedding sees the draws it always did.
        if let Some(v) = cfg.num_embeddings {
            data.tokens = (0..t * b).map(|_| rng.random_range(0..v)).collect();
        }
        data
    }

    /// The batch over this data, scored by `kind`, with or without lengths and a given
    /// initial state (h0, and c0 for an LSTM).
    pub fn batch(
        &self,
        t: usize,
        b: usize,
        kind: LossKind,
        lengths: bool,
        h0: bool,
    ) -> Batch<'_, f64> {
        let target = if kind.takes_values() {
            Target::Values(&self.values)
        } else {
            Target::Classes(&self.classes)
        };
        let tokens = (!self.tokens.is_empty()).then_some(&self.tokens[..]);
        Batch {
            seq_len: t,
            batch: b,
            x: if tokens.is_some() { &[] } else { &self.x },
            tokens,
            target,
            lengths: lengths.then_some(&self.lengths[..]),
            h0: h0.then_some(&self.h0[..]),
            c0: (h0 && self.cell == Cell::Lstm).then_some(&self.c0[..]),
            score_from: 0,
            sequence_weights: (!self.weights.is_empty()).then_some(&self.weights[..]),
        }
    }

    /// This data with sequence weights: `b`'s is `(b · 5 % 7) / 2`, so the first sequence
    /// weighs 0 and the others 0.5 to 3, unevenly.
    pub fn weighted(self) -> Self {
        let b = self.lengths.len();
        Data {
            weights: (0..b).map(|k| (k * 5 % 7) as f64 / 2.0).collect(),
            ..self
        }
    }

    /// The sequences `cols` of this data (`t` steps, `b` sequences) as data of their own.
    pub fn sequences(
        &self,
        cfg: &RnnConfig,
        t: usize,
        b: usize,
        many_to_one: bool,
        cols: &Range<usize>,
    ) -> Data {
        self.pick(cfg, t, b, many_to_one, &cols.clone().collect::<Vec<_>>())
    }

    /// The sequences `cols` of this data, in that order and as often as listed, as data of
    /// their own.
    pub fn pick(
        &self,
        cfg: &RnnConfig,
        t: usize,
        b: usize,
        many_to_one: bool,
        cols: &[usize],
    ) -> Data {
        let positions = if many_to_one { 1 } else { t };
        let (h, passes) = (cfg.hidden_size, cfg.passes());
        let of = |v: &[usize]| cols.iter().map(|&c| v[c]).collect::<Vec<_>>();
        Data {
            x: columns(&self.x, t, b, cfg.input_size, cols),
            values: columns(&self.values, positions, b, cfg.output_size, cols),
            classes: columns(&self.classes, positions, b, 1, cols),
            lengths: of(&self.lengths),
            h0: columns(&self.h0, passes, b, cfg.state_size(), cols),
            c0: columns(&self.c0, passes, b, h, cols),
            cell: self.cell,
            tokens: columns(&self.tokens, t, b, 1, cols),
            weights: columns(&self.weights, 1, b, 1, cols),
        }
    }
}

/// Sequences `cols` (in that order, repeats allowed) of a `[T, B, ..]` (or `[B, ..]` when
/// `steps` is 1) buffer of rows of `width`, as a buffer of their own.
fn columns<V: Copy>(buf: &[V], steps: usize, b: usize, width: usize, cols: &[usize]) -> Vec<V> {
    if buf.is_empty() {
        return Vec::new();
    }
    (0..steps)
        .flat_map(|t| {
            cols.iter()
                .flat_map(move |&c| &buf[(t * b + c) * width..][..width])
        })
        .copied()
        .collect()
}

/// A safetensors file's tensors, owned, and its metadata: to rewrite it edited.
pub fn owned_tensors(bytes: &[u8]) -> (Vec<(String, io::OwnedTensor)>, HashMap<String, String>) {
    let (st, meta) = io::parse_with_metadata(bytes).unwrap();
    let tensors = (st.tensors().into_iter())
        .map(|(name, v)| {
            let (dtype, shape, bytes) = (v.dtype(), v.shape().to_vec(), v.data().to_vec());
            let tensor = io::OwnedTensor {
                dtype,
                shape,
                bytes,
            };
            (name, tensor)
        })
        .collect();
    (tensors, meta)
}

/// A fresh folder for one test's files, `rnn-core-<name>-<pid>` under the system's temporary
/// folder: the process id keeps concurrent test runs apart, `name` the tests of one run.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnn-core-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A model, its loss and a batch shape: what the tests that split a batch by sequences
/// (`accumulate`, `sequence_losses`) run, for every option that decides what a sequence
/// scores and how a mean is taken.
pub struct ScoringCase {
    pub cfg: RnnConfig,
    pub loss: LossSpec,
    pub kind: LossKind,
    pub t: usize,
    pub b: usize,
}

impl ScoringCase {
    /// Every cell × {2 layers with cross-entropy, MSE, bidirectional many-to-one, embedded
    /// tokens with class weights and label smoothing at T = 1, Huber with `sum`}.
    pub fn all() -> Vec<Self> {
        let ce = LossKind::CrossEntropy;
        let smoothed = LossKind::cross_entropy(0.1).unwrap();
        let huber = LossKind::huber(0.3).unwrap();
        let case = |cfg, loss, kind, t, b| ScoringCase {
            cfg,
            loss,
            kind,
            t,
            b,
        };
        let mut cases = Vec::new();
        for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
            let base = RnnConfig::new(3, 5, 4).cell(cell);
            let weighted = LossSpec::every_step(smoothed)
                .with_class_weights(&[0.5, 2.0, 1.0, 3.0])
                .unwrap();
            let summed = LossSpec {
                reduction: Reduction::Sum,
                ..LossSpec::every_step(huber)
            };
            cases.extend([
                case(base.layers(2), LossSpec::every_step(ce), ce, 4, 7),
                case(
                    base,
                    LossSpec::every_step(LossKind::Mse),
                    LossKind::Mse,
                    3,
                    5,
                ),
                case(base.bidirectional(), LossSpec::last_step(ce), ce, 3, 6),
                case(base.embedding(6), weighted, smoothed, 1, 5),
                case(base, summed, huber, 5, 4),
            ]);
        }
        cases
    }

    /// Random data for the case, lengths and initial states included. Class labels are
    /// ignored at every fifth position and throughout the last sequence, so sequences score
    /// unevenly and some score nothing.
    pub fn data(&self, rng: &mut StdRng) -> Data {
        let (t, b) = (self.t, self.b);
        let mut data = Data::random(rng, &self.cfg, t, b, self.loss.many_to_one);
        if !self.kind.takes_values() {
            for (k, c) in data.classes.iter_mut().enumerate() {
                if k % 5 == 2 || k % b == b - 1 {
                    *c = IGNORED_LABEL;
                }
            }
        }
        data
    }
}
