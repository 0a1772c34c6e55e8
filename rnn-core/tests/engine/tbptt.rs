//! Truncated BPTT and gradient-flow telemetry: TBPTT against PyTorch training loops written
//! the plain way (`tbptt(...)` in scripts/torch_fixtures.py), TBPTT(T, T) against full BPTT,
//! bounded memory, and the telemetry against `dL/dh0` of suffix runs.

use crate::fixtures;
use rnn_core::config::Cell;
use rnn_core::io;
use rnn_core::prelude::*;

fn check_fixture(name: &str) {
    let bytes = io::read_bytes(&fixtures::path(&format!("tbptt_{name}.safetensors"))).unwrap();
    let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
    let num = |k: &str| meta[k].parse::<usize>().unwrap();
    let (k1, k2, chunks) = (num("k1"), num("k2"), num("chunks"));
    let reset: Option<(usize, usize)> = meta["reset"]
        .split_once(',')
        .map(|(c, s)| (c.parse().unwrap(), s.parse().unwrap()));
    let cell = Cell::parse(&meta["cell"]).unwrap();
    let (b, i) = (3, 4);
    let cfg = RnnConfig {
        proj_size: meta.get("proj_size").map(|p| p.parse().unwrap()),
        ..RnnConfig::new(i, 5, 3).layers(2).cell(cell)
    };
    let layout = rnn_core::params::Layout::new(&cfg);
    let sgd = OptimizerKind::Sgd {
        lr: 0.2,
        momentum: 0.5,
        weight_decay: 0.0,
        nesterov: false,
    };
    let tr = Trainer::with_params(
        cfg,
        LossSpec::every_step(LossKind::CrossEntropy),
        sgd,
        fixtures::params(&st, &layout, "init"),
    )
    .unwrap();
    let mut stream = Tbptt::new(tr, k1, k2, b).unwrap();
    let (x, _) = io::float_tensor::<f64>(&st, "x").unwrap();
    let labels = fixtures::classes(&st, "target");
    for c in 0..chunks {
        if let Some((at, s)) = reset
            && at == c
        {
            stream.reset_stream(s).unwrap();
        }
        let xs = &x[c * k1 * b * i..(c + 1) * k1 * b * i];
        let ys = &labels[c * k1 * b..(c + 1) * k1 * b];
        stream.step(xs, Target::Classes(ys)).unwrap();
    }
    let want = fixtures::params(&st, &layout, "final");
    fixtures::assert_weights_match(name, &layout, &stream.trainer.params, &want);
}

#[test]
fn detach_per_chunk_matches_pytorch_with_a_stream_reset() {
    for cell in ["rnn", "lstm", "gru"] {
        check_fixture(&format!("{cell}_chunks"));
    }
}

#[test]
fn overlapping_windows_k2_greater_than_k1_match_pytorch() {
    for cell in ["rnn", "lstm", "gru"] {
        check_fixture(&format!("{cell}_overlap"));
    }
}

/// An LSTM with projections (`proj_size` 3 of 5): its `P`-wide state carried across chunks,
/// replayed in overlapping windows, and reset for one stream.
#[test]
fn projected_lstm_streams_match_pytorch() {
    check_fixture("lstmp_chunks");
    check_fixture("lstmp_overlap");
}

fn trainer(cell: Cell) -> Trainer<f64> {
    trainer_scored_by(cell, LossKind::Mse)
}

fn trainer_scored_by(cell: Cell, kind: LossKind) -> Trainer<f64> {
    Trainer::new(
        RnnConfig::new(3, 6, 4).layers(2).cell(cell),
        LossSpec::every_step(kind),
        OptimizerKind::adam(0.01),
        5,
    )
    .unwrap()
    .with_clip(Clip::Norm(1.0))
}

fn stream_data(t: usize, b: usize) -> (Vec<f64>, Vec<f64>) {
    let x = (0..t * b * 3)
        .map(|k| ((k * 37 % 101) as f64) / 50.0 - 1.0)
        .collect();
    let y = (0..t * b * 4)
        .map(|k| ((k * 53 % 97) as f64) / 48.0 - 1.0)
        .collect();
    (x, y)
}

/// TBPTT(T, T) over one chunk is full BPTT: bitwise the same weights, for every loss of
/// float targets.
#[test]
fn one_full_window_equals_full_bptt() {
    let kinds = [LossKind::Mse, LossKind::L1, LossKind::huber(0.5).unwrap()];
    for (cell, kind) in [Cell::Rnn, Cell::Lstm, Cell::Gru]
        .into_iter()
        .flat_map(|cell| kinds.map(|kind| (cell, kind)))
    {
        let (t, b) = (7, 3);
        let (x, y) = stream_data(t, b);
        let mut full = trainer_scored_by(cell, kind);
        full.step(&Batch::new(t, b, &x, Target::Values(&y)))
            .unwrap();
        let mut stream = Tbptt::new(trainer_scored_by(cell, kind), t, t, b).unwrap();
        stream.step(&x, Target::Values(&y)).unwrap();
        assert_eq!(stream.trainer.params, full.params, "{cell:?} {kind:?}");
        // The carried state is the full run's last state.
        let h = 6;
        for k in 0..2 {
            assert_eq!(
                &stream.state()[k * b * h..(k + 1) * b * h],
                &full.workspace.layers[k].hs[t * b * h..(t + 1) * b * h]
            );
        }
    }
}

/// Memory is the window's, whatever the stream's total length.
#[test]
fn memory_does_not_grow_with_stream_length() {
    let (k1, k2, b) = (4, 6, 2);
    let (x, y) = stream_data(k1, b);
    let mut stream = Tbptt::new(trainer(Cell::Lstm), k1, k2, b).unwrap();
    stream.step(&x, Target::Values(&y)).unwrap();
    stream.step(&x, Target::Values(&y)).unwrap();
    let bytes = stream.trainer.workspace.bytes();
    for _ in 0..50 {
        stream.step(&x, Target::Values(&y)).unwrap();
    }
    assert_eq!(stream.trainer.workspace.bytes(), bytes);
}

#[test]
fn bad_stream_input_is_a_typed_error() {
    assert!(matches!(
        Tbptt::new(trainer(Cell::Rnn), 4, 3, 2).unwrap_err(),
        RnnError::Config(_)
    ));
    assert!(matches!(
        Tbptt::new(trainer(Cell::Rnn), 0, 3, 2).unwrap_err(),
        RnnError::Config(_)
    ));
    let last = Trainer::<f64>::new(
        RnnConfig::new(3, 6, 4),
        LossSpec::last_step(LossKind::Mse),
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap();
    assert!(matches!(
        Tbptt::new(last, 2, 2, 2).unwrap_err(),
        RnnError::Config(_)
    ));
    let mut stream = Tbptt::new(trainer(Cell::Gru), 4, 4, 2).unwrap();
    let (x, y) = stream_data(4, 2);
    let e = stream.step(&x[1..], Target::Values(&y)).unwrap_err();
    assert!(e.to_string().contains("[k1=4, B=2, I=3]"), "{e}");
    let e = stream.step(&x, Target::Values(&y[2..])).unwrap_err();
    assert!(e.to_string().contains("target"), "{e}");
    let e = stream.step(&x, Target::Classes(&[0; 8])).unwrap_err();
    assert!(e.to_string().contains("target labels"), "{e}");
    assert!(matches!(stream.reset_stream(2), Err(RnnError::Config(_))));
    // A rejected chunk leaves the stream as it was.
    stream.step(&x, Target::Values(&y)).unwrap();
    let (params, state) = (stream.trainer.params.clone(), stream.state().to_vec());
    let mut bad = x.clone();
    bad[5] = f64::NAN;
    assert!(matches!(
        stream.step(&bad, Target::Values(&y)).unwrap_err(),
        RnnError::NonFiniteInput { what: "x", .. }
    ));
    assert_eq!(
        (stream.trainer.params.clone(), stream.state().to_vec()),
        (params, state)
    );
}

/// Telemetry's `‖dL/dh_t‖` of the top layer equals `‖dL/dh0‖` of the run over steps
/// `t+1..T` started from the full run's state at `t` (with a many-to-one loss, the loss
/// depends on `h_t` only through that suffix); and switching it on changes no gradient.
#[test]
fn telemetry_equals_suffix_state_gradients() {
    for (cell, l) in [Cell::Rnn, Cell::Lstm, Cell::Gru]
        .into_iter()
        .flat_map(|c| [(c, 1), (c, 2)])
    {
        let (t_len, b, h) = (6, 2, 5);
        let cfg = RnnConfig::new(3, h, 2).layers(l).cell(cell);
        let loss = LossSpec::last_step(LossKind::Mse);
        let mut tr = Trainer::<f64>::new(cfg, loss.clone(), OptimizerKind::sgd(0.0), 3)
            .unwrap()
            .with_telemetry();
        let x: Vec<f64> = (0..t_len * b * 3)
            .map(|k| ((k * 29 % 31) as f64) / 15.0 - 1.0)
            .collect();
        let y = vec![0.7; b * 2];
        tr.loss_and_grads(&Batch::new(t_len, b, &x, Target::Values(&y)))
            .unwrap();
        let norms = tr.grad_h_norms().to_vec();
        assert_eq!(norms.len(), l * t_len);
        let grads_on = tr.grads.clone();
        let mut plain = Trainer::<f64>::new(cfg, loss.clone(), OptimizerKind::sgd(0.0), 3).unwrap();
        plain
            .loss_and_grads(&Batch::new(t_len, b, &x, Target::Values(&y)))
            .unwrap();
        assert_eq!(plain.grads, grads_on, "telemetry changed a gradient");
        assert!(plain.grad_h_norms().is_empty());

        let block = b * h;
        for t in 0..t_len - 1 {
            // States after step t (hs index t + 1), every layer.
            let state = |c: bool| -> Vec<f64> {
                tr.workspace
                    .layers
                    .iter()
                    .flat_map(|layer| {
                        let v = if c { &layer.cs } else { &layer.hs };
                        v[(t + 1) * block..(t + 2) * block].to_vec()
                    })
                    .collect()
            };
            let h0 = state(false);
            let c0 = if cell == Cell::Lstm {
                state(true)
            } else {
                Vec::new()
            };
            let suffix = Batch {
                h0: Some(&h0),
                c0: (cell == Cell::Lstm).then_some(&c0[..]),
                ..Batch::new(t_len - t - 1, b, &x[(t + 1) * b * 3..], Target::Values(&y))
            };
            let mut other = Trainer::<f64>::with_params(
                cfg,
                loss.clone(),
                OptimizerKind::sgd(0.0),
                tr.params.to_vec(),
            )
            .unwrap();
            other.loss_and_grads(&suffix).unwrap();
            // The top layer's: a lower layer's dL/dh_t also flows up into h_t of the layer
            // above, which the suffix run holds fixed.
            let k = l - 1;
            let want = other.workspace.dh0[k * block..(k + 1) * block]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
            let got = norms[k * t_len + t];
            assert!(
                (got - want).abs() <= 1e-12 * (1.0 + want),
                "{cell:?} layer {k} t {t}: telemetry {got} vs suffix dL/dh0 {want}"
            );
        }
    }
}

/// Stream weights: streams of integer weight train as that many copies of them, over
/// several chunks with overlapping windows (the replayed steps score nothing either way);
/// bad weights are typed errors.
#[test]
fn integer_stream_weights_train_as_repeated_streams() {
    let (k1, k2, chunks, b) = (3, 5, 4, 3);
    let weights = [0.0, 2.0, 1.0];
    let copies = [1, 1, 2];
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let (x, y) = stream_data(k1 * chunks, b);
        let pick = |buf: &[f64], width: usize| -> Vec<f64> {
            (0..k1 * chunks)
                .flat_map(|t| {
                    copies
                        .iter()
                        .flat_map(move |&s| &buf[(t * b + s) * width..][..width])
                })
                .copied()
                .collect()
        };
        let (xc, yc) = (pick(&x, 3), pick(&y, 4));
        let mut weighted = Tbptt::new(trainer(cell), k1, k2, b)
            .unwrap()
            .with_stream_weights(&weights)
            .unwrap();
        let mut copied = Tbptt::new(trainer(cell), k1, k2, copies.len()).unwrap();
        for c in 0..chunks {
            let (xs, ys) = (
                &x[c * k1 * b * 3..][..k1 * b * 3],
                &y[c * k1 * b * 4..][..k1 * b * 4],
            );
            let n = copies.len();
            let (xd, yd) = (
                &xc[c * k1 * n * 3..][..k1 * n * 3],
                &yc[c * k1 * n * 4..][..k1 * n * 4],
            );
            let a = weighted.step(xs, Target::Values(ys)).unwrap();
            let d = copied.step(xd, Target::Values(yd)).unwrap();
            assert!(
                (a.loss - d.loss).abs() <= 1e-12 * d.loss,
                "{cell:?} chunk {c}"
            );
        }
        for (p, q) in weighted
            .trainer
            .params
            .iter()
            .zip(copied.trainer.params.iter())
        {
            assert!(
                (p - q).abs() <= 1e-12 * (1.0 + q.abs()),
                "{cell:?}: {p} vs {q}"
            );
        }
    }
    let stream = || Tbptt::new(trainer(Cell::Gru), k1, k2, b).unwrap();
    let e = stream().with_stream_weights(&[1.0, 2.0]).unwrap_err();
    assert!(matches!(e, RnnError::ShapeMismatch { .. }), "{e}");
    let e = stream()
        .with_stream_weights(&[1.0, f64::NAN, 1.0])
        .unwrap_err();
    assert!(
        matches!(e, RnnError::NonFiniteInput { index: 1, .. }),
        "{e}"
    );
    let e = stream().with_stream_weights(&[1.0, -1.0, 1.0]).unwrap_err();
    assert!(e.to_string().contains("stream weight 1 = -1"), "{e}");
    // All zero under a mean: refused at the step, nothing changed.
    let mut zero = stream().with_stream_weights(&[0.0; 3]).unwrap();
    let before = zero.trainer.params.clone();
    let (x, y) = stream_data(k1, b);
    assert!(matches!(
        zero.step(&x, Target::Values(&y)),
        Err(RnnError::Config(_))
    ));
    assert_eq!(zero.trainer.params, before);
}

/// `[L, B, H]` states after `t` steps of `trainer`'s last pass (`c` for an LSTM, else
/// empty), as the streams carry them.
fn states_after(trainer: &Trainer<f64>, t: usize, b: usize) -> (Vec<f64>, Vec<f64>) {
    let cfg = &trainer.config;
    let (block, block_c) = (b * cfg.state_size(), b * cfg.hidden_size);
    let (mut h, mut c) = (Vec::new(), Vec::new());
    for layer in &trainer.workspace.layers {
        h.extend_from_slice(&layer.hs[t * block..(t + 1) * block]);
        if cfg.cell.has_cell_state() {
            c.extend_from_slice(&layer.cs[t * block_c..(t + 1) * block_c]);
        }
    }
    (h, c)
}

/// Accumulated chunks make one update with the same weights throughout: bitwise that of
/// `Trainer::accumulate` over the chunks as batches, each started from the state the one
/// before left; the streams carry the same states.
#[test]
fn accumulated_chunks_make_one_update_of_their_windows() {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let (k, b, chunks) = (4, 3, 3);
        let (x, y) = stream_data(k * chunks, b);
        let (xc, yc) = (k * b * 3, k * b * 4);
        let mut stream = Tbptt::new(trainer(cell), k, k, b).unwrap();
        let mut by_hand = trainer(cell);
        let before = stream.trainer.params.clone();
        let (mut h0, mut c0) = (vec![0.0; 2 * b * 6], Vec::new());
        if cell == Cell::Lstm {
            c0 = h0.clone();
        }
        for c in 0..chunks {
            let (xs, ys) = (&x[c * xc..(c + 1) * xc], &y[c * yc..(c + 1) * yc]);
            let got = stream.accumulate(xs, Target::Values(ys)).unwrap();
            let batch = Batch {
                h0: Some(&h0),
                c0: (cell == Cell::Lstm).then_some(&c0[..]),
                ..Batch::new(k, b, xs, Target::Values(ys))
            };
            let want = by_hand.accumulate(&batch).unwrap();
            assert_eq!(got, want, "{cell:?} chunk {c}'s loss");
            (h0, c0) = states_after(&by_hand, k, b);
            assert_eq!(stream.state(), &h0[..], "{cell:?} chunk {c}'s state");
            assert_eq!(
                stream.cell_state(),
                &c0[..],
                "{cell:?} chunk {c}'s cell state"
            );
            assert_eq!(stream.accumulated(), c as u64 + 1);
            assert_eq!(
                stream.trainer.params, before,
                "{cell:?}: no update before apply"
            );
        }
        let got = stream.apply_accumulated().unwrap();
        let want = by_hand.apply_accumulated().unwrap();
        assert_eq!(got.loss, want.loss);
        assert_eq!(stream.trainer.params, by_hand.params, "{cell:?}");
        assert_ne!(stream.trainer.params, before);
        assert_eq!(stream.accumulated(), 0);
    }
}

/// With overlapping windows (`k2 > k1`) and token input, each chunk accumulated alone and
/// applied is the step of that chunk (within rounding: a `mean` is taken as a sum, then
/// divided), chunk after chunk.
#[test]
fn a_chunk_accumulated_alone_is_a_step() {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let (k1, k2, b, chunks) = (3, 5, 2, 4);
        let cfg = RnnConfig::new(3, 6, 5).layers(2).cell(cell).embedding(7);
        let make = || {
            let tr = Trainer::<f64>::new(
                cfg,
                LossSpec::every_step(LossKind::CrossEntropy),
                OptimizerKind::adam(0.02),
                3,
            )
            .unwrap();
            Tbptt::new(tr, k1, k2, b).unwrap()
        };
        let (mut stepped, mut applied) = (make(), make());
        for c in 0..chunks {
            let tokens: Vec<usize> = (0..k1 * b).map(|i| (c * 5 + i * 3) % 7).collect();
            let labels: Vec<usize> = (0..k1 * b).map(|i| (c + i * 2) % 5).collect();
            let step = stepped
                .step_tokens(&tokens, Target::Classes(&labels))
                .unwrap();
            let loss = applied
                .accumulate_tokens(&tokens, Target::Classes(&labels))
                .unwrap();
            let update = applied.apply_accumulated().unwrap();
            assert!((loss - step.loss).abs() < 1e-12, "{cell:?} chunk {c}");
            assert!(
                (update.loss - step.loss).abs() < 1e-12,
                "{cell:?} chunk {c}"
            );
            let most = (stepped.trainer.params.iter())
                .zip(applied.trainer.params.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(most < 1e-12, "{cell:?} chunk {c}: {most:e}");
        }
    }
}

/// A plain step while chunks wait, an update with none waiting, and a chunk whose loss
/// overflows are refused; the first two change nothing, the last drops the waiting chunks
/// and keeps the state the earlier ones carried.
#[test]
fn accumulation_misuse_is_refused() {
    let (k, b) = (4, 2);
    let (x, y) = stream_data(k, b);
    let mut stream = Tbptt::new(trainer(Cell::Lstm), k, k, b).unwrap();
    assert!(matches!(
        stream.apply_accumulated().unwrap_err(),
        RnnError::Accumulation(_)
    ));
    stream.accumulate(&x, Target::Values(&y)).unwrap();
    let (params, state, cells) = (
        stream.trainer.params.clone(),
        stream.state().to_vec(),
        stream.cell_state().to_vec(),
    );
    assert!(matches!(
        stream.step(&x, Target::Values(&y)).unwrap_err(),
        RnnError::Accumulation(_)
    ));
    assert_eq!(stream.state(), &state[..]);
    assert_eq!(stream.accumulated(), 1);
    let huge = vec![1e300; y.len()];
    assert!(matches!(
        stream.accumulate(&x, Target::Values(&huge)).unwrap_err(),
        RnnError::NonFinite { .. }
    ));
    assert_eq!(stream.accumulated(), 0);
    assert_eq!(stream.trainer.params, params);
    assert_eq!(stream.state(), &state[..]);
    assert_eq!(stream.cell_state(), &cells[..]);
    let e = stream.accumulate(&x[1..], Target::Values(&y)).unwrap_err();
    assert!(e.to_string().contains("[k1=4, B=2, I=3]"), "{e}");
    let e = stream
        .accumulate_tokens(&[0; 8], Target::Values(&y))
        .unwrap_err();
    assert!(e.to_string().contains("no embedding"), "{e}");
    // After the refusals the stream trains on.
    stream.accumulate(&x, Target::Values(&y)).unwrap();
    stream.apply_accumulated().unwrap();
    assert_ne!(stream.trainer.params, params);
}

/// An LSTM with projections carries `P`-wide states and `H`-wide cell states: TBPTT(T, T)
/// over one chunk is full BPTT, bitwise, and a stream reset zeroes that stream's rows of both.
#[test]
fn projected_lstm_streams_carry_both_states() {
    let (t, b, h, p) = (6, 3, 6, 4);
    let cfg = RnnConfig::new(3, h, 4)
        .layers(2)
        .cell(Cell::Lstm)
        .projection(p);
    let make = || {
        Trainer::<f64>::new(
            cfg,
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::adam(0.01),
            5,
        )
        .unwrap()
    };
    let (x, y) = stream_data(t, b);
    let mut full = make();
    full.step(&Batch::new(t, b, &x, Target::Values(&y)))
        .unwrap();
    let mut stream = Tbptt::new(make(), t, t, b).unwrap();
    stream.step(&x, Target::Values(&y)).unwrap();
    assert_eq!(stream.trainer.params, full.params);
    let (hs, cs) = states_after(&full, t, b);
    assert_eq!((hs.len(), cs.len()), (2 * b * p, 2 * b * h));
    assert_eq!((stream.state(), stream.cell_state()), (&hs[..], &cs[..]));
    stream.reset_stream(1).unwrap();
    for layer in 0..2 {
        for (state, width, before) in [(stream.state(), p, &hs), (stream.cell_state(), h, &cs)] {
            for s in 0..b {
                let row = (layer * b + s) * width..(layer * b + s + 1) * width;
                if s == 1 {
                    assert!(state[row].iter().all(|&v| v == 0.0));
                } else {
                    assert_eq!(state[row.clone()], before[row]);
                }
            }
        }
    }
}
