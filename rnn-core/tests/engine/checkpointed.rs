//! Checkpointed (memory-efficient) BPTT gives full BPTT's loss and gradients, for every cell,
//! option and segment length, and holds O(√T) activations; so does a loss-only pass in
//! segments (`network::loss`).

use crate::common::Data;

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::config::{Cell, LossKind, LossSpec, Reduction, RnnConfig};
use rnn_core::dropout::Dropout;
use rnn_core::network::{self, PassOptions, forward_backward, forward_backward_checkpointed};
use rnn_core::params::{Layout, init_params};
use rnn_core::workspace::Workspace;

struct Run {
    loss: f64,
    grads: Vec<f64>,
    dx: Vec<f64>,
    dh0: Vec<f64>,
    dc0: Vec<f64>,
    norms: Vec<f64>,
}

fn run(
    cfg: &RnnConfig,
    spec: &LossSpec,
    d: &Data,
    t: usize,
    b: usize,
    lengths: bool,
    score_from: usize,
    dropout: Option<Dropout>,
    segment: Option<usize>,
) -> Run {
    let layout = Layout::new(cfg);
    let params: Vec<f64> = init_params::<f64>(cfg, 11)
        .iter()
        .map(|p| 1.5 * p)
        .collect();
    let mut grads = vec![0.0; layout.len];
    let mut ws = Workspace::new();
    let batch = rnn_core::batch::Batch {
        score_from,
        ..d.batch(t, b, spec.kind, lengths, !cfg.learn_h0)
    };
    let opts = PassOptions {
        input_grad: true,
        telemetry: true,
        dropout,
        ..Default::default()
    };
    let loss = match segment {
        None => forward_backward(
            cfg, &layout, &params, &mut grads, &mut ws, &batch, spec, opts,
        ),
        Some(s) => forward_backward_checkpointed(
            cfg, &layout, &params, &mut grads, &mut ws, &batch, spec, opts, s,
        ),
    }
    .unwrap();
    Run {
        loss,
        grads,
        dx: ws.dx.to_vec(),
        dh0: ws.dh0.to_vec(),
        dc0: ws.dc0.to_vec(),
        norms: ws.grad_h_norms.clone(),
    }
}

/// `network::loss` of the batch `run` uses, in `segment`-step segments.
fn loss_only(
    cfg: &RnnConfig,
    spec: &LossSpec,
    d: &Data,
    (t, b, lengths, score_from): (usize, usize, bool, usize),
    segment: usize,
) -> (f64, usize) {
    let layout = Layout::new(cfg);
    let params: Vec<f64> = init_params::<f64>(cfg, 11)
        .iter()
        .map(|p| 1.5 * p)
        .collect();
    let batch = rnn_core::batch::Batch {
        score_from,
        ..d.batch(t, b, spec.kind, lengths, !cfg.learn_h0)
    };
    let mut ws = Workspace::new();
    let par = faer::Par::Seq;
    let loss = network::loss(cfg, &layout, &params, &mut ws, &batch, spec, par, segment).unwrap();
    (loss, ws.bytes())
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
            "{what}[{k}]: {x} vs full {y}"
        );
    }
}

#[test]
fn equals_full_bptt_for_every_cell_and_option() {
    let mut seed = 0;
    // The three cells, and an LSTM with projections (its states `P` wide, its cells `H`).
    let models = [
        (Cell::Rnn, None),
        (Cell::Lstm, None),
        (Cell::Gru, None),
        (Cell::Lstm, Some(2)),
    ];
    for (cell, proj) in models {
        // Dropout masks are numbered from the sequence's first step, so a segment drops
        // what the same steps of the whole pass drop.
        for (kind, many_to_one, lengths, learn, score_from, layers, dropout) in [
            (LossKind::Mse, false, false, false, 0, 1, 0.0),
            (LossKind::CrossEntropy, false, true, false, 0, 2, 0.3),
            (LossKind::Mse, true, true, true, 0, 2, 0.0),
            (LossKind::CrossEntropy, true, false, false, 0, 1, 0.0),
            (LossKind::CrossEntropy, false, true, true, 5, 3, 0.5),
        ] {
            seed += 1;
            let dropout = (dropout > 0.0).then(|| Dropout::new(dropout, seed).unwrap());
            let (t, b) = (11, 3);
            let mut cfg = RnnConfig::new(3, 5, 4).cell(cell).layers(layers);
            cfg.learn_h0 = learn;
            cfg.proj_size = proj;
            let spec = LossSpec {
                kind,
                reduction: if seed % 2 == 0 {
                    Reduction::Sum
                } else {
                    Reduction::Mean
                },
                many_to_one,
                class_weights: None,
                pos_weights: None,
            };
            let d = Data::random(&mut StdRng::seed_from_u64(seed), &cfg, t, b, many_to_one);
            // Sequence weights in a third of the runs: segments score with the whole batch's.
            let weighted = seed % 3 == 1;
            let d = if weighted { d.weighted() } else { d };
            let full = run(&cfg, &spec, &d, t, b, lengths, score_from, dropout, None);
            // The loss-only pass never drops: it is the undropped model's loss.
            let undropped = run(&cfg, &spec, &d, t, b, lengths, score_from, None, None).loss;
            let shape = (t, b, lengths, score_from);
            let whole = loss_only(&cfg, &spec, &d, shape, usize::MAX).0;
            assert_eq!(whole.to_bits(), undropped.to_bits(), "{cell:?} seed {seed}");
            for segment in [1, 2, 3, 4, 10, 11, 40] {
                let what = format!(
                    "{cell:?} proj {proj:?} {kind:?} m2o={many_to_one} lengths={lengths} learn={learn} from={score_from} L={layers} {dropout:?} weighted={weighted} segment={segment}"
                );
                let ck = run(
                    &cfg,
                    &spec,
                    &d,
                    t,
                    b,
                    lengths,
                    score_from,
                    dropout,
                    Some(segment),
                );
                assert!(
                    (ck.loss - full.loss).abs() <= 1e-12 * (1.0 + full.loss.abs()),
                    "{what}: loss {} vs {}",
                    ck.loss,
                    full.loss
                );
                close(&ck.grads, &full.grads, &format!("{what} grads"));
                close(&ck.dx, &full.dx, &format!("{what} dx"));
                close(&ck.dh0, &full.dh0, &format!("{what} dh0"));
                close(&ck.dc0, &full.dc0, &format!("{what} dc0"));
                close(&ck.norms, &full.norms, &format!("{what} telemetry"));
                let (in_segments, _) = loss_only(&cfg, &spec, &d, shape, segment);
                close(&[in_segments], &[undropped], &format!("{what} loss only"));
            }
        }
    }
}

/// Activation memory: O(√T · B · H) with segments of √T, against O(T · B · H) for full BPTT.
#[test]
fn memory_grows_with_the_square_root_of_t() {
    let cfg = RnnConfig::lstm(4, 16, 3);
    let spec = LossSpec::every_step(LossKind::Mse);
    let bytes = |t: usize, checkpointed: bool| {
        let d = Data::random(&mut StdRng::seed_from_u64(1), &cfg, t, 2, false);
        let layout = Layout::new(&cfg);
        let params = init_params::<f64>(&cfg, 0);
        let mut grads = vec![0.0; layout.len];
        let mut ws = Workspace::new();
        let batch = d.batch(t, 2, spec.kind, false, false);
        // A segment of T or more is plain full BPTT (what `forward_backward` runs).
        let segment = if checkpointed {
            (t as f64).sqrt().round() as usize
        } else {
            usize::MAX
        };
        forward_backward_checkpointed(
            &cfg,
            &layout,
            &params,
            &mut grads,
            &mut ws,
            &batch,
            &spec,
            PassOptions::default(),
            segment,
        )
        .unwrap();
        ws.bytes() as f64
    };
    let (full_small, full_big) = (bytes(256, false), bytes(4096, false));
    let (ck_small, ck_big) = (bytes(256, true), bytes(4096, true));
    // A loss-only pass in segments of 64 holds about what a 64-step pass does, whatever T.
    let d = Data::random(&mut StdRng::seed_from_u64(1), &cfg, 4096, 2, false);
    let (_, eval_bytes) = loss_only(&cfg, &spec, &d, (4096, 2, false, 0), 64);
    assert!(
        (eval_bytes as f64) < full_big / 30.0,
        "loss only {eval_bytes} vs full {full_big}"
    );
    // 16x the steps: full BPTT's activations grow ~16x, checkpointed ones ~4x.
    assert!(
        full_big / full_small > 14.0,
        "full: {full_small} -> {full_big}"
    );
    assert!(
        ck_big / ck_small < 5.0,
        "checkpointed: {ck_small} -> {ck_big}"
    );
    assert!(
        ck_big < full_big / 10.0,
        "checkpointed {ck_big} vs full {full_big}"
    );
}

#[test]
fn zero_segment_is_a_config_error() {
    let cfg = RnnConfig::new(3, 5, 4);
    let spec = LossSpec::every_step(LossKind::Mse);
    let d = Data::random(&mut StdRng::seed_from_u64(1), &cfg, 4, 2, false);
    let layout = Layout::new(&cfg);
    let params = init_params::<f64>(&cfg, 0);
    let mut grads = vec![0.0; layout.len];
    let e = forward_backward_checkpointed(
        &cfg,
        &layout,
        &params,
        &mut grads,
        &mut Workspace::new(),
        &d.batch(4, 2, spec.kind, false, false),
        &spec,
        PassOptions::default(),
        0,
    )
    .unwrap_err();
    assert!(matches!(e, rnn_core::RnnError::Config(_)), "{e}");
    let d = Data::random(&mut StdRng::seed_from_u64(1), &cfg, 4, 2, false);
    let batch = d.batch(4, 2, spec.kind, false, false);
    let mut ws = Workspace::new();
    let e = network::loss(
        &cfg,
        &layout,
        &params,
        &mut ws,
        &batch,
        &spec,
        faer::Par::Seq,
        0,
    );
    assert!(matches!(e, Err(rnn_core::RnnError::Config(_))), "{e:?}");
}

/// The trainer's memory setting: checkpointed training ends where full training does, and a
/// budget picks full BPTT when it fits.
#[test]
fn trainer_memory_modes_train_alike() {
    use rnn_core::prelude::*;
    let cfg = RnnConfig::gru(3, 6, 2).layers(2);
    let loss = LossSpec::every_step(LossKind::Mse);
    let (t, b) = (23, 2);
    let x: Vec<f64> = (0..t * b * 3)
        .map(|k| ((k * 13 % 17) as f64) / 8.0 - 1.0)
        .collect();
    let y: Vec<f64> = (0..t * b * 2)
        .map(|k| ((k * 7 % 11) as f64) / 5.0 - 1.0)
        .collect();
    let train = |memory: Memory| {
        let mut tr = Trainer::<f64>::new(cfg, loss.clone(), OptimizerKind::adam(0.01), 4)
            .unwrap()
            .with_clip(Clip::Norm(1.0))
            .with_memory(memory);
        for _ in 0..5 {
            tr.step(&Batch::new(t, b, &x, Target::Values(&y))).unwrap();
        }
        (tr.params, tr.workspace.bytes())
    };
    let (full, full_bytes) = train(Memory::Full);
    let (ck, ck_bytes) = train(Memory::Checkpointed { segment: 5 });
    close(&ck, &full, "checkpointed weights");
    assert!(ck_bytes < full_bytes, "{ck_bytes} vs {full_bytes}");
    let (roomy, _) = train(Memory::Budget { bytes: 1 << 30 });
    assert_eq!(roomy, full, "a roomy budget is full BPTT, bitwise");
    assert_eq!(
        Memory::Budget { bytes: 1 << 30 }.segment_for::<f64>(&cfg, t, b, false),
        t
    );
    let tight = Memory::Budget { bytes: 6000 }.segment_for::<f64>(&cfg, t, b, false);
    assert!(tight < t, "{tight}");
    let (budget, _) = train(Memory::Budget { bytes: 6000 });
    close(&budget, &full, "budget weights");
    // Evaluation follows the memory setting: in segments, the same loss within rounding.
    let evaluate = |memory: Memory| {
        let mut tr = Trainer::<f64>::new(cfg, loss.clone(), OptimizerKind::adam(0.01), 4)
            .unwrap()
            .with_memory(memory);
        let l = tr
            .evaluate(&Batch::new(t, b, &x, Target::Values(&y)))
            .unwrap();
        (l, tr.workspace.bytes())
    };
    let (whole, whole_bytes) = evaluate(Memory::Full);
    let (segmented, segmented_bytes) = evaluate(Memory::Checkpointed { segment: 5 });
    close(&[segmented], &[whole], "evaluate in segments");
    assert!(
        segmented_bytes < whole_bytes / 2,
        "{segmented_bytes} vs {whole_bytes}"
    );
}
