//! A step computes only its live rows (`Batch::live_rows`): the rows past the last running
//! sequence are carried, not computed, forward and backward. The same sequences ordered
//! longest first (each step then skips its finished rows) and longest last (nothing to skip)
//! must give the same loss, outputs, parameter gradients and input gradients, row for row,
//! for every cell and every way a step runs: whole or in unit halves, one or two threads,
//! pulled pieces, row blocks of a projected LSTM, stacked and bidirectional layers, time
//! chunks, and checkpointed segments (whose later segments see sequences that ended in an
//! earlier one as length 0, so even a segment's first step skips rows).

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::Batch;
use rnn_core::config::{Cell, Nonlinearity};
use rnn_core::network::TimeChunks;
use rnn_core::prelude::*;

use crate::common::Data;

/// One configuration of the model and its trainer.
struct Case {
    name: &'static str,
    cfg: RnnConfig,
    /// `T`, `B`.
    t: usize,
    b: usize,
    setup: fn(Trainer<f64>) -> Trainer<f64>,
}

fn cases() -> Vec<Case> {
    let halves = |tr: Trainer<f64>| tr.with_unit_split(UnitSplit::Halves);
    let halves_two = |tr: Trainer<f64>| tr.with_unit_split(UnitSplit::Halves).with_threads(2);
    let whole_two = |tr: Trainer<f64>| tr.with_unit_split(UnitSplit::Whole).with_threads(2);
    let segments = |tr: Trainer<f64>| {
        (tr.with_unit_split(UnitSplit::Halves).with_threads(2))
            .with_memory(Memory::Checkpointed { segment: 3 })
    };
    let whole_segments = |tr: Trainer<f64>| {
        (tr.with_unit_split(UnitSplit::Whole)).with_memory(Memory::Checkpointed { segment: 2 })
    };
    let chunks = |tr: Trainer<f64>| {
        let steps = TimeChunks::Steps(std::num::NonZeroUsize::new(3).unwrap());
        tr.with_unit_split(UnitSplit::Halves)
            .with_time_chunks(steps)
    };
    let mut out = Vec::new();
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let cfg = RnnConfig::new(3, 9, 4).cell(cell);
        for (name, setup) in [
            ("whole", (|tr| tr) as fn(Trainer<f64>) -> Trainer<f64>),
            ("whole, two threads", whole_two),
            ("halves", halves),
            ("halves, two threads", halves_two),
            ("checkpointed halves", segments),
            ("checkpointed whole steps", whole_segments),
            ("time chunks", chunks),
        ] {
            out.push(Case {
                name,
                cfg,
                t: 7,
                b: 6,
                setup,
            });
        }
        out.push(Case {
            name: "two bidirectional layers, two threads",
            cfg: cfg.layers(2).bidirectional(),
            t: 7,
            b: 6,
            setup: halves_two,
        });
        // 2·B·G·H² past `Sharing::PIECES_MIN_FLOPS`: two threads pull pieces of each step.
        out.push(Case {
            name: "pieces, two threads",
            cfg: RnnConfig::new(3, 256, 4).cell(cell),
            t: 3,
            b: 72 / cell.gates(),
            setup: halves_two,
        });
    }
    let relu = RnnConfig::new(3, 9, 4).nonlinearity(Nonlinearity::Relu);
    out.push(Case {
        name: "relu halves",
        cfg: relu,
        t: 7,
        b: 6,
        setup: halves_two,
    });
    let projected = RnnConfig::lstm(3, 9, 4).projection(5);
    for (name, setup) in [
        ("projected", (|tr| tr) as fn(Trainer<f64>) -> Trainer<f64>),
        ("projected, row blocks on two threads", halves_two),
    ] {
        out.push(Case {
            name,
            cfg: projected,
            t: 7,
            b: 6,
            setup,
        });
    }
    out
}

/// What a pass gives for one batch: loss, outputs `[T, B, O]`, parameter gradients,
/// `dL/dx` `[T, B, I]`, `dL/dh0`, and the final states `h_n`, `c_n` (`[L·D, B, ..]`, each
/// sequence's state at its own last step: carried through the steps it was not live).
struct Pass {
    loss: f64,
    outputs: Vec<f64>,
    grads: Vec<f64>,
    dx: Vec<f64>,
    dh0: Vec<f64>,
    h_n: Vec<f64>,
    c_n: Vec<f64>,
}

fn pass(case: &Case, data: &Data) -> Pass {
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    let tr = Trainer::new(case.cfg, spec, OptimizerKind::sgd(0.1), 3).unwrap();
    let mut tr = (case.setup)(tr).with_input_grads();
    let batch = data.batch(case.t, case.b, LossKind::CrossEntropy, true, true);
    let loss = tr.loss_and_grads(&batch).unwrap();
    let (dx, dh0) = (
        tr.input_grads().to_vec(),
        tr.initial_state_grads().0.to_vec(),
    );
    let grads = tr.grads.to_vec();
    let outputs = tr.outputs(&batch).unwrap().to_vec();
    let inputs = Batch {
        target: Target::None,
        ..batch
    };
    let (h_n, c_n) = tr.eval_final_states(&inputs).unwrap();
    Pass {
        loss,
        outputs,
        grads,
        dx,
        dh0,
        h_n: h_n.to_vec(),
        c_n: c_n.to_vec(),
    }
}

/// Sequence `order[k]`'s rows of a `[steps, B, width]` buffer, in `order`.
fn rows_in(buf: &[f64], steps: usize, b: usize, order: &[usize]) -> Vec<f64> {
    let width = buf.len() / (steps * b);
    (0..steps)
        .flat_map(|t| {
            order
                .iter()
                .flat_map(move |&k| &buf[(t * b + k) * width..][..width])
        })
        .copied()
        .collect()
}

fn assert_close(what: &str, case: &Case, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{}: {what} lengths", case.name);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + x.abs()),
            "{} ({:?}): {what}[{i}] {x} sorted, {y} unsorted",
            case.name,
            case.cfg.cell
        );
    }
}

/// Lengths longest first with ties, the last sequence one step long, and (`short`) every
/// sequence shorter than `T`, so the last steps have no live row at all.
fn lengths(t: usize, b: usize, short: bool) -> Vec<usize> {
    let longest = if short { t - 1 } else { t };
    (0..b).map(|k| (longest - k * longest / b).max(1)).collect()
}

#[test]
fn skipping_finished_rows_changes_nothing() {
    for case in cases() {
        for short in [false, true] {
            let mut rng = StdRng::seed_from_u64(11);
            let mut sorted = Data::random(&mut rng, &case.cfg, case.t, case.b, false);
            sorted.lengths = lengths(case.t, case.b, short);
            let batch = sorted.batch(case.t, case.b, LossKind::CrossEntropy, true, true);
            let live: Vec<usize> = (0..case.t).map(|t| batch.live_rows(t)).collect();
            assert!(live.windows(2).all(|w| w[1] <= w[0]) && live[case.t - 1] < case.b);
            // Longest last: every row is live at every step, nothing is skipped.
            let reversed: Vec<usize> = (0..case.b).rev().collect();
            let unsorted = sorted.pick(&case.cfg, case.t, case.b, false, &reversed);
            let batch = unsorted.batch(case.t, case.b, LossKind::CrossEntropy, true, true);
            let longest = unsorted.lengths[case.b - 1];
            let all_or_none = |t| if t < longest { case.b } else { 0 };
            assert!((0..case.t).all(|t| batch.live_rows(t) == all_or_none(t)));

            let (a, b) = (pass(&case, &sorted), pass(&case, &unsorted));
            assert_close("loss", &case, &[a.loss], &[b.loss]);
            assert_close("grads", &case, &a.grads, &b.grads);
            let (t, n) = (case.t, case.b);
            let outputs = rows_in(&a.outputs, t, n, &reversed);
            assert_close("outputs", &case, &outputs, &b.outputs);
            assert_close("dL/dx", &case, &rows_in(&a.dx, t, n, &reversed), &b.dx);
            let passes = case.cfg.passes();
            let dh0 = rows_in(&a.dh0, passes, n, &reversed);
            assert_close("dL/dh0", &case, &dh0, &b.dh0);
            let h_n = rows_in(&a.h_n, passes, n, &reversed);
            assert_close("h_n", &case, &h_n, &b.h_n);
            if !a.c_n.is_empty() {
                let c_n = rows_in(&a.c_n, passes, n, &reversed);
                assert_close("c_n", &case, &c_n, &b.c_n);
            }
        }
    }
}
