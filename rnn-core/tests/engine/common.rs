//! Random batches shared by the gradient tests (`gradcheck`, `properties`, `checkpointed`,
//! `time_chunks`), and the scratch folders of the tests that write files.

use std::path::PathBuf;

use rand::{Rng, rngs::StdRng};
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{Cell, LossKind, RnnConfig};

/// Inputs, both kinds of target, lengths and an initial state for one batch, in f64.
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
            h0: (0..cfg.passes() * b * cfg.hidden_size)
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
        }
    }
}

/// A fresh folder for one test's files, `rnn-core-<name>-<pid>` under the system's temporary
/// folder: the process id keeps concurrent test runs apart, `name` the tests of one run.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnn-core-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
