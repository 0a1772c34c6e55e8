//! Running a pass a chunk of steps at a time gives the unchunked pass's loss, outputs and
//! every gradient (up to the order the weight gradients are summed in): every cell, chunk
//! length, option, with checkpointed segments, and in f32.

use crate::common::Data;

use std::num::NonZeroUsize;

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::Batch;
use rnn_core::config::{Cell, LossKind, LossSpec, RnnConfig};
use rnn_core::dropout::Dropout;
use rnn_core::network::{
    PassOptions, TimeChunks, UnitSplit, forward_backward, forward_backward_checkpointed,
};
use rnn_core::params::{Layout, init_params};
use rnn_core::workspace::Workspace;

const CELLS: [Cell; 3] = [Cell::Rnn, Cell::Lstm, Cell::Gru];
const T: usize = 7;
const B: usize = 4;

/// Everything a pass reports.
#[derive(Debug)]
struct Run {
    loss: f64,
    grads: Vec<f64>,
    y: Vec<f64>,
    dx: Vec<f64>,
    dh0: Vec<f64>,
    dc0: Vec<f64>,
    norms: Vec<f64>,
}

impl Run {
    fn fields(&self) -> [(&str, &[f64]); 7] {
        [
            ("loss", std::slice::from_ref(&self.loss)),
            ("grads", &self.grads),
            ("y", &self.y),
            ("dx", &self.dx),
            ("dh0", &self.dh0),
            ("dc0", &self.dc0),
            ("grad_h_norms", &self.norms),
        ]
    }

    /// Asserts every field within `tol` of `want`'s, relative to the field's largest value.
    fn assert_close(&self, want: &Run, tol: f64, what: &str) {
        for ((name, got), (_, want)) in self.fields().into_iter().zip(want.fields()) {
            assert_eq!(got.len(), want.len(), "{what}: {name} length");
            let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= tol * scale,
                    "{what}: {name}[{k}]: {g} vs {w}"
                );
            }
        }
    }
}

struct Setup {
    cfg: RnnConfig,
    spec: LossSpec,
    lengths: bool,
    split: UnitSplit,
    dropout: Option<Dropout>,
}

fn steps(n: usize) -> TimeChunks {
    TimeChunks::Steps(NonZeroUsize::new(n).expect("a positive chunk length"))
}

fn run(s: &Setup, d: &Data, chunks: TimeChunks, segment: Option<usize>) -> Run {
    let layout = Layout::new(&s.cfg);
    let params: Vec<f64> = init_params::<f64>(&s.cfg, 5)
        .iter()
        .map(|p| 1.5 * p)
        .collect();
    let mut grads = vec![0.0; layout.len];
    let mut ws = Workspace::new();
    let batch = d.batch(T, B, s.spec.kind, s.lengths, true);
    let opts = PassOptions {
        input_grad: true,
        telemetry: true,
        split: s.split,
        chunks,
        dropout: s.dropout,
        ..Default::default()
    };
    let loss = forward_backward_checkpointed(
        &s.cfg,
        &layout,
        &params,
        &mut grads,
        &mut ws,
        &batch,
        &s.spec,
        opts,
        segment.unwrap_or(usize::MAX),
    )
    .expect("a valid batch");
    Run {
        loss,
        grads,
        // After a checkpointed pass `y` holds the first segment's outputs only.
        y: if segment.is_some() {
            Vec::new()
        } else {
            ws.y.to_vec()
        },
        dx: ws.dx.to_vec(),
        dh0: ws.dh0.to_vec(),
        dc0: ws.dc0.to_vec(),
        norms: ws.grad_h_norms,
    }
}

fn setups() -> impl Iterator<Item = Setup> {
    CELLS.into_iter().flat_map(|cell| {
        // Dropout masks are numbered by step, whatever chunk the step falls in.
        [
            (LossKind::Mse, false, true, UnitSplit::Whole, 0.0),
            (LossKind::CrossEntropy, false, true, UnitSplit::Halves, 0.3),
            (LossKind::CrossEntropy, true, true, UnitSplit::Whole, 0.0),
            // The last step reads the states finished sequences carried across chunks.
            (LossKind::Mse, true, true, UnitSplit::Halves, 0.5),
            (LossKind::Mse, true, false, UnitSplit::Halves, 0.0),
        ]
        .into_iter()
        .map(move |(kind, many_to_one, lengths, split, p)| Setup {
            cfg: RnnConfig::new(3, 6, 4).cell(cell).layers(2),
            spec: LossSpec {
                many_to_one,
                ..LossSpec::every_step(kind)
            },
            lengths,
            split,
            dropout: (p > 0.0).then(|| Dropout::new(p, 8).unwrap()),
        })
    })
}

#[test]
fn chunked_passes_equal_the_unchunked_pass() {
    for (n, s) in setups().enumerate() {
        let d = Data::random(
            &mut StdRng::seed_from_u64(n as u64),
            &s.cfg,
            T,
            B,
            s.spec.many_to_one,
        );
        let whole = run(&s, &d, TimeChunks::Whole, None);
        for len in [1, 2, 3, 4, 6, 7, 50] {
            let what = format!("{:?} {:?} chunks of {len}", s.cfg.cell, s.spec);
            run(&s, &d, steps(len), None).assert_close(&whole, 1e-12, &what);
        }
        // Chunks inside checkpointed segments: the segment's carry enters its last chunk.
        for (segment, len) in [(3, 2), (4, 1), (2, 3)] {
            let what = format!("{:?} segments of {segment}, chunks of {len}", s.cfg.cell);
            run(&s, &d, steps(len), Some(segment)).assert_close(
                &run(&s, &d, TimeChunks::Whole, Some(segment)),
                1e-12,
                &what,
            );
        }
    }
}

/// The chunks really change the order of the sums (so the comparisons above could fail):
/// chunked and unchunked weight gradients differ in their last bits somewhere.
#[test]
fn chunked_weight_gradients_are_summed_per_chunk() {
    let s = setups().next().expect("a setup");
    let d = Data::random(&mut StdRng::seed_from_u64(3), &s.cfg, T, B, false);
    let whole = run(&s, &d, TimeChunks::Whole, None);
    let chunked = run(&s, &d, steps(2), None);
    assert!(
        whole
            .grads
            .iter()
            .zip(&chunked.grads)
            .any(|(a, b)| a.to_bits() != b.to_bits())
    );
}

/// f32 in chunks agrees with f64 unchunked to f32 precision.
#[test]
fn chunked_f32_agrees_with_unchunked_f64() {
    for s in setups().filter(|s| !s.spec.many_to_one) {
        let d = Data::random(&mut StdRng::seed_from_u64(9), &s.cfg, T, B, false);
        let want = run(&s, &d, TimeChunks::Whole, None);
        let layout = Layout::new(&s.cfg);
        let params: Vec<f32> = init_params::<f64>(&s.cfg, 5)
            .iter()
            .map(|p| (1.5 * p) as f32)
            .collect();
        let x: Vec<f32> = d.x.iter().map(|&v| v as f32).collect();
        let values: Vec<f32> = d.values.iter().map(|&v| v as f32).collect();
        let h0: Vec<f32> = d.h0.iter().map(|&v| v as f32).collect();
        let c0: Vec<f32> = d.c0.iter().map(|&v| v as f32).collect();
        let b64 = d.batch(T, B, s.spec.kind, s.lengths, true);
        let target = if s.spec.kind.takes_values() {
            rnn_core::batch::Target::Values(&values)
        } else {
            rnn_core::batch::Target::Classes(&d.classes)
        };
        let batch = Batch {
            seq_len: T,
            batch: B,
            x: &x,
            tokens: None,
            target,
            lengths: b64.lengths,
            h0: Some(&h0),
            c0: (s.cfg.cell == Cell::Lstm).then_some(&c0[..]),
            score_from: 0,
            sequence_weights: None,
        };
        let mut grads = vec![0.0f32; layout.len];
        let opts = PassOptions {
            split: s.split,
            chunks: steps(3),
            dropout: s.dropout,
            ..Default::default()
        };
        let loss = forward_backward(
            &s.cfg,
            &layout,
            &params,
            &mut grads,
            &mut Workspace::new(),
            &batch,
            &s.spec,
            opts,
        )
        .expect("a valid batch");
        assert!((loss as f64 - want.loss).abs() <= 1e-5 * (1.0 + want.loss.abs()));
        let scale = want.grads.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (k, (g, w)) in grads.iter().zip(&want.grads).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 2e-5 * scale,
                "{:?} grad {k}: {g} vs {w}",
                s.cfg.cell
            );
        }
    }
}
