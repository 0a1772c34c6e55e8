//! A step computes only its live rows (`Batch::live_rows`): the rows past the last running
//! sequence are carried, not computed, forward and backward. The same sequences ordered
//! longest first (each step then skips its finished rows) and longest last (nothing to skip)
//! must give the engine the same loss, outputs, parameter gradients, input gradients and
//! final states, row for row, for every cell and every way a step runs: whole or in unit
//! halves, one or two threads, pulled pieces, row blocks of a projected LSTM, stacked and
//! bidirectional layers, time chunks, and checkpointed segments (whose later segments see
//! sequences that ended in an earlier one as length 0, so even a segment's first step skips
//! rows). The trainer runs a batch in any order longest first and reports per sequence in
//! the batch's order; a random ragged batch's summed loss, gradients and `dL/dx` are its
//! sequences' own, each run alone (a property test).

use std::num::NonZeroUsize;

use faer::Par;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::batch::Batch;
use rnn_core::config::{Cell, Nonlinearity, Reduction};
use rnn_core::network::{
    Exec, PassOptions, TimeChunks, forward, forward_backward_checkpointed, forward_backward_with,
    sequence_losses,
};
use rnn_core::prelude::*;
use rnn_core::workspace::Workspace;

use crate::common::Data;

/// One configuration of the model and of how its steps run.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    cfg: RnnConfig,
    /// `T`, `B`.
    t: usize,
    b: usize,
    split: UnitSplit,
    threads: usize,
    chunks: TimeChunks,
    /// Checkpointed segments of this many steps.
    segment: Option<usize>,
}

fn cases() -> Vec<Case> {
    let base = |name, cfg, split, threads| Case {
        name,
        cfg,
        t: 7,
        b: 6,
        split,
        threads,
        chunks: TimeChunks::Auto,
        segment: None,
    };
    let mut out = Vec::new();
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let cfg = RnnConfig::new(3, 9, 4).cell(cell);
        out.push(base("whole", cfg, UnitSplit::Whole, 1));
        out.push(base("whole, two threads", cfg, UnitSplit::Whole, 2));
        out.push(base("halves", cfg, UnitSplit::Halves, 1));
        out.push(base("halves, two threads", cfg, UnitSplit::Halves, 2));
        out.push(Case {
            segment: Some(3),
            ..base("checkpointed halves", cfg, UnitSplit::Halves, 2)
        });
        out.push(Case {
            segment: Some(2),
            ..base("checkpointed whole steps", cfg, UnitSplit::Whole, 1)
        });
        out.push(Case {
            chunks: TimeChunks::Steps(NonZeroUsize::new(3).unwrap()),
            ..base("time chunks", cfg, UnitSplit::Halves, 1)
        });
        let stacked = cfg.layers(2).bidirectional();
        out.push(base(
            "two bidirectional layers",
            stacked,
            UnitSplit::Halves,
            2,
        ));
        // More live rows than one gathered block holds (`GATHER_ROWS`, 256).
        out.push(Case {
            t: 40,
            b: 12,
            ..base("gathered in blocks", cfg, UnitSplit::Halves, 2)
        });
        // 2·B·G·H² past `Sharing::PIECES_MIN_FLOPS`: two threads pull pieces of each step.
        out.push(Case {
            t: 3,
            b: 72 / cell.gates(),
            ..base(
                "pieces",
                RnnConfig::new(3, 256, 4).cell(cell),
                UnitSplit::Halves,
                2,
            )
        });
    }
    let relu = RnnConfig::new(3, 9, 4).nonlinearity(Nonlinearity::Relu);
    out.push(base("relu halves", relu, UnitSplit::Halves, 2));
    let projected = RnnConfig::lstm(3, 9, 4).projection(5);
    out.push(base("projected", projected, UnitSplit::Whole, 1));
    out.push(base(
        "projected row blocks",
        projected,
        UnitSplit::Halves,
        2,
    ));
    out
}

impl Case {
    fn spec() -> LossSpec {
        LossSpec::every_step(LossKind::CrossEntropy)
    }

    fn batch<'a>(&self, data: &'a Data) -> Batch<'a, f64> {
        data.batch(self.t, self.b, LossKind::CrossEntropy, true, true)
    }

    fn trainer(&self) -> Trainer<f64> {
        let tr = Trainer::new(self.cfg, Self::spec(), OptimizerKind::sgd(0.1), 3).unwrap();
        let tr = (tr.with_unit_split(self.split).with_threads(self.threads))
            .with_time_chunks(self.chunks);
        match self.segment {
            Some(segment) => tr.with_memory(Memory::Checkpointed { segment }),
            None => tr,
        }
    }
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
    /// `[B]`: each sequence's loss.
    sequence_losses: Vec<f64>,
}

/// The engine's passes over `data` as it is (the trainer's would run a batch longest
/// first): loss and gradients straight from `forward_backward_checkpointed`, outputs from
/// `forward`; the final states from the trainer (which runs a ragged batch longest first and
/// puts them back in its order: [`each_alone`] checks them against each sequence's own).
fn pass(case: &Case, data: &Data) -> Pass {
    let mut tr = case.trainer();
    let batch = case.batch(data);
    let inputs = Batch {
        target: Target::None,
        ..batch
    };
    let (h_n, c_n) = tr.eval_final_states(&inputs).unwrap();
    let (h_n, c_n) = (h_n.to_vec(), c_n.to_vec());
    let par = if case.threads > 1 {
        Par::rayon(case.threads)
    } else {
        Par::Seq
    };
    let exec = Exec {
        par,
        split: case.split,
        chunks: case.chunks,
    };
    let mut ws = Workspace::new();
    let model = (&tr.config, &tr.layout, &tr.params[..]);
    forward(model.0, model.1, model.2, &mut ws, &batch, false, exec).unwrap();
    let outputs = ws.y[..case.t * case.b * case.cfg.output_size].to_vec();
    sequence_losses(
        model.0,
        model.1,
        model.2,
        &mut ws,
        &batch,
        &Case::spec(),
        exec,
    )
    .unwrap();
    let sequence_losses = ws.sequence_losses.clone();
    let opts = PassOptions {
        par,
        input_grad: true,
        split: case.split,
        chunks: case.chunks,
        ..Default::default()
    };
    let mut grads = vec![0.0; tr.layout.len];
    let loss = forward_backward_checkpointed(
        model.0,
        model.1,
        model.2,
        &mut grads,
        &mut ws,
        &batch,
        &Case::spec(),
        opts,
        case.segment.unwrap_or(usize::MAX),
    )
    .unwrap();
    Pass {
        loss,
        outputs,
        grads,
        dx: ws.dx.to_vec(),
        dh0: ws.dh0.to_vec(),
        h_n,
        c_n,
        sequence_losses,
    }
}

/// What the final-state passes give for each sequence run alone (a batch of one, which
/// nothing reorders), stacked in the batch's order: `h_n`, `c_n`, and from `dL/dh_n` and
/// `dL/dc_n` the parameter gradients (summed over the sequences), `dL/dx` and `dL/dh0`.
struct Alone {
    h_n: Vec<f64>,
    c_n: Vec<f64>,
    grads: Vec<f64>,
    dx: Vec<f64>,
    dh0: Vec<f64>,
}

fn each_alone(case: &Case, data: &Data, dh_n: &[f64], dc_n: &[f64]) -> Alone {
    let (t, b, cfg) = (case.t, case.b, &case.cfg);
    let passes = cfg.passes();
    let mut out = Alone {
        h_n: vec![0.0; dh_n.len()],
        c_n: vec![0.0; dc_n.len()],
        grads: Vec::new(),
        dx: vec![0.0; t * b * cfg.input_size],
        dh0: vec![0.0; dh_n.len()],
    };
    // Row `k` of each of the `blocks` blocks of a `[blocks, B, width]` buffer.
    let put = |dst: &mut [f64], src: &[f64], blocks: usize, k: usize| {
        let width = src.len() / blocks;
        for (p, row) in src.chunks_exact(width.max(1)).enumerate() {
            dst[(p * b + k) * width..][..width].copy_from_slice(row);
        }
    };
    for k in 0..b {
        let one = data.pick(cfg, t, b, false, &[k]);
        let batch = Batch {
            target: Target::None,
            ..one.batch(t, 1, LossKind::CrossEntropy, true, true)
        };
        let mut tr = case.trainer().with_input_grads();
        let (h, c) = tr.final_states(&batch).unwrap();
        put(&mut out.h_n, h, passes, k);
        put(&mut out.c_n, c, passes, k);
        let (dh, dc) = (
            rows_in(dh_n, passes, b, &[k]),
            rows_in(dc_n, passes, b, &[k]),
        );
        tr.grads_from_final_states(&batch, &dh, &dc).unwrap();
        out.grads.resize(tr.grads.len(), 0.0);
        for (sum, g) in out.grads.iter_mut().zip(tr.grads.iter()) {
            *sum += g;
        }
        put(&mut out.dx, tr.input_grads(), t, k);
        put(&mut out.dh0, tr.initial_state_grads().0, passes, k);
    }
    out
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

/// Random data for `case` in sequences of lengths in no order: 3, 7, 1, 7, 5, 2, ...
fn ragged(case: &Case, rng: &mut StdRng) -> Data {
    let mut data = Data::random(rng, &case.cfg, case.t, case.b, false);
    let lengths = [3, 7, 1, 7, 5, 2];
    data.lengths = (0..case.b).map(|k| lengths[k % lengths.len()]).collect();
    data
}

/// The trainer runs a batch with lengths in any order longest first (copying it so), and
/// hands back what it reports per sequence in the batch's order: its loss, gradients,
/// `dL/dx`, `dL/dh0`, `evaluate`, outputs and sequence losses agree with the engine's passes
/// over the batch as it is, and a step with input gradients changes the weights exactly as
/// one without.
#[test]
fn the_trainer_runs_batches_longest_first() {
    for case in cases().into_iter().filter(|c| c.t >= 7) {
        let data = ragged(&case, &mut StdRng::seed_from_u64(12));
        let want = pass(&case, &data);
        let batch = case.batch(&data);
        let mut tr = case.trainer().with_input_grads();
        let loss = tr.loss_and_grads(&batch).unwrap();
        assert_close("loss", &case, &[loss], &[want.loss]);
        assert_close("grads", &case, &tr.grads, &want.grads);
        assert_close("dL/dx", &case, tr.input_grads(), &want.dx);
        assert_close("dL/dh0", &case, tr.initial_state_grads().0, &want.dh0);
        let evaluated = tr.evaluate(&batch).unwrap();
        assert_close("evaluate", &case, &[evaluated], &[want.loss]);
        assert_close("outputs", &case, tr.outputs(&batch).unwrap(), &want.outputs);
        let each = tr.sequence_losses(&batch).unwrap();
        assert_close("sequence losses", &case, each, &want.sequence_losses);
        let mut plain = case.trainer();
        plain.step(&batch).unwrap();
        tr.step(&batch).unwrap();
        let bits = |v: &[f64]| v.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&tr.params), bits(&plain.params), "{}", case.name);
    }
}

/// The final-state passes run a ragged batch longest first too: `h_n`, `c_n`, and from
/// `dL/dh_n`, `dL/dc_n` (copied longest first) the gradients, `dL/dx` and `dL/dh0` match each
/// sequence's own, in the batch's order, whether the backward pass reuses the forward pass
/// of `final_states` or runs it again.
#[test]
fn final_states_run_batches_longest_first() {
    for case in cases().into_iter().filter(|c| c.t >= 7) {
        let mut rng = StdRng::seed_from_u64(13);
        let data = ragged(&case, &mut rng);
        let passes = case.cfg.passes();
        let mut state = |width: usize| -> Vec<f64> {
            (0..passes * case.b * width)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        };
        let dh_n = state(case.cfg.state_size());
        let dc_n = if case.cfg.cell == Cell::Lstm {
            state(case.cfg.hidden_size)
        } else {
            Vec::new()
        };
        let want = each_alone(&case, &data, &dh_n, &dc_n);
        let batch = Batch {
            target: Target::None,
            ..case.batch(&data)
        };
        let mut tr = case.trainer().with_input_grads();
        let (h_n, c_n) = tr.eval_final_states(&batch).unwrap();
        assert_close("eval h_n", &case, h_n, &want.h_n);
        assert_close("eval c_n", &case, c_n, &want.c_n);
        for kept in [true, false] {
            if kept {
                let (h_n, c_n) = tr.final_states(&batch).unwrap();
                assert_close("h_n", &case, h_n, &want.h_n);
                assert_close("c_n", &case, c_n, &want.c_n);
            }
            tr.grads_from_final_states(&batch, &dh_n, &dc_n).unwrap();
            assert_close("grads", &case, &tr.grads, &want.grads);
            assert_close("dL/dx", &case, tr.input_grads(), &want.dx);
            assert_close("dL/dh0", &case, tr.initial_state_grads().0, &want.dh0);
        }
    }
}

/// `sum_i w_i y_i² / 2` with `w_i = 1 + i / 100` by the output's place `i`, the outputs it
/// reads appended to `seen`.
fn weighted_squares(seen: &mut Vec<f64>) -> impl FnOnce(&[f64], &mut [f64]) -> f64 + Send + '_ {
    move |y: &[f64], dy: &mut [f64]| {
        seen.extend_from_slice(y);
        let w = |i: usize| 1.0 + i as f64 / 100.0;
        for (i, (d, v)) in dy.iter_mut().zip(y).enumerate() {
            *d = w(i) * v;
        }
        y.iter().enumerate().map(|(i, v)| w(i) * v * v / 2.0).sum()
    }
}

/// A loss of the caller's own on a ragged batch in no order: the trainer runs it longest
/// first, yet the closure reads the outputs and writes their gradient in the batch's order,
/// as the engine over the batch as it is hands them. Each position weighs differently, so a
/// row out of place changes the loss and the gradients.
#[test]
fn own_losses_see_the_batch_in_its_order() {
    for case in cases().into_iter().filter(|c| c.t >= 7) {
        let data = ragged(&case, &mut StdRng::seed_from_u64(14));
        let batch = Batch {
            target: Target::None,
            ..case.batch(&data)
        };
        let loss = weighted_squares;
        let mut tr = case.trainer().with_input_grads();
        let (par, mut want_seen) = (Par::rayon(case.threads), Vec::new());
        let opts = PassOptions {
            par: if case.threads > 1 { par } else { Par::Seq },
            input_grad: true,
            split: case.split,
            chunks: case.chunks,
            ..Default::default()
        };
        let (mut grads, mut ws) = (vec![0.0; tr.layout.len], Workspace::new());
        let want = forward_backward_with(
            &tr.config,
            &tr.layout,
            &tr.params,
            &mut grads,
            &mut ws,
            &batch,
            false,
            opts,
            loss(&mut want_seen),
        )
        .unwrap();
        let mut seen = Vec::new();
        let got = tr.loss_and_grads_with(&batch, loss(&mut seen)).unwrap();
        assert_close("outputs seen", &case, &seen, &want_seen);
        assert_close("loss", &case, &[got], &[want]);
        assert_close("grads", &case, &tr.grads, &grads);
        assert_close("dL/dx", &case, tr.input_grads(), &ws.dx);
        assert_close("dL/dh0", &case, tr.initial_state_grads().0, &ws.dh0);
    }
}

/// A random ragged batch (cell, shape, lengths in any order, one or two threads, whole or
/// split steps, loss at every step or the last) summed over: its loss, gradients and `dL/dx`
/// are its sequences' own, each run alone (a batch of one, which nothing skips, gathers or
/// reorders). Whatever the live rows, gathered blocks and longest-first copies do, they may
/// not change what a sequence contributes.
fn ragged_setup() -> impl Strategy<Value = (Case, [bool; 2], Vec<usize>, u64)> {
    (
        (0usize..3, 1usize..13, 1usize..11, 1usize..3, 1usize..10),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (proptest::collection::vec(1usize..=12, 10), 0u64..10_000),
    )
        .prop_map(
            |((cell, t, b, layers, h), (ce, last, two, halves), (lengths, seed))| {
                let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
                let cfg = RnnConfig::new(3, h, 3).cell(cell).layers(layers);
                let case = Case {
                    name: "ragged",
                    cfg,
                    t,
                    b,
                    split: if halves {
                        UnitSplit::Halves
                    } else {
                        UnitSplit::Whole
                    },
                    threads: if two { 2 } else { 1 },
                    chunks: TimeChunks::Auto,
                    segment: None,
                };
                let lengths = lengths[..b].iter().map(|&l| l.min(t)).collect();
                (case, [ce, last], lengths, seed)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_ragged_batch_sums_its_sequences((case, [ce, last], lengths, seed) in ragged_setup()) {
        let kind = if ce { LossKind::CrossEntropy } else { LossKind::Mse };
        let spec = LossSpec {
            reduction: Reduction::Sum,
            many_to_one: last,
            ..LossSpec::every_step(kind)
        };
        let mut data = Data::random(&mut StdRng::seed_from_u64(seed), &case.cfg, case.t, case.b, last);
        data.lengths = lengths;
        let trainer = || {
            Trainer::<f64>::new(case.cfg, spec.clone(), OptimizerKind::sgd(0.1), 5)
                .unwrap()
                .with_unit_split(case.split)
                .with_threads(case.threads)
                .with_input_grads()
        };
        let mut whole = trainer();
        let loss = whole.loss_and_grads(&data.batch(case.t, case.b, kind, true, true)).unwrap();
        let (mut want_loss, mut want_grads) = (0.0, vec![0.0; whole.grads.len()]);
        let mut want_dx = vec![0.0; case.t * case.b * case.cfg.input_size];
        let i = case.cfg.input_size;
        for k in 0..case.b {
            let one = data.pick(&case.cfg, case.t, case.b, last, &[k]);
            let mut alone = trainer();
            want_loss += alone.loss_and_grads(&one.batch(case.t, 1, kind, true, true)).unwrap();
            for (w, g) in want_grads.iter_mut().zip(alone.grads.iter()) {
                *w += g;
            }
            for (t, row) in alone.input_grads().chunks_exact(i).enumerate() {
                want_dx[(t * case.b + k) * i..][..i].copy_from_slice(row);
            }
        }
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-10 * (1.0 + a.abs().max(b.abs()));
        prop_assert!(near(loss, want_loss), "loss {loss} vs {want_loss}");
        for (j, (a, b)) in whole.grads.iter().zip(&want_grads).enumerate() {
            prop_assert!(near(*a, *b), "grad {j}: {a} vs {b}");
        }
        for (j, (a, b)) in whole.input_grads().iter().zip(&want_dx).enumerate() {
            prop_assert!(near(*a, *b), "dL/dx {j}: {a} vs {b}");
        }
    }
}
