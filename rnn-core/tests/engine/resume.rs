//! Exact resume: N steps, a checkpoint, a fresh process state loaded from it, M more steps
//! equal N + M steps without a stop, bitwise (weights and optimizer state), for every
//! optimizer and for TBPTT streams (carried state, replayed window and data position).

use crate::common::scratch_dir;
use rnn_core::config::Cell;
use rnn_core::dropout::Dropout;
use rnn_core::io::{self, Extras};
use rnn_core::prelude::*;

fn batch_data(step: usize, t: usize, b: usize) -> (Vec<f32>, Vec<usize>) {
    let x = (0..t * b * 3)
        .map(|k| (((k + 31 * step) * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let y = (0..t * b).map(|k| (k + step) * 7 % 4).collect();
    (x, y)
}

fn temp(name: &str) -> std::path::PathBuf {
    scratch_dir(&format!("resume-{name}")).join("ckpt.safetensors")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_optimizer_resumes_bitwise() {
    let optimizers = [
        OptimizerKind::sgd(0.1),
        OptimizerKind::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
        },
        OptimizerKind::adam(0.01),
        OptimizerKind::adamw(0.01),
        OptimizerKind::rmsprop(0.01),
        OptimizerKind::RmsProp {
            lr: 0.005,
            alpha: 0.9,
            eps: 1e-6,
            weight_decay: 0.01,
            momentum: 0.5,
            centered: true,
        },
        OptimizerKind::Adagrad {
            lr: 0.05,
            lr_decay: 0.01,
            weight_decay: 0.0,
            eps: 1e-10,
            initial_accumulator_value: 0.1,
        },
    ];
    for (k, opt) in optimizers.into_iter().enumerate() {
        let cfg = RnnConfig::lstm(3, 8, 4).layers(2);
        // Dropout's masks follow the optimizer's step count, which the checkpoint keeps.
        let dropout = Dropout::new(if k % 2 == 1 { 0.3 } else { 0.0 }, 5).unwrap();
        let new = || {
            Trainer::<f32>::new(cfg, LossSpec::every_step(LossKind::CrossEntropy), opt, 9)
                .unwrap()
                .with_clip(Clip::Norm(0.5))
                .with_dropout(dropout)
        };
        let (n, m) = (4, 3);
        let mut straight = new();
        for s in 0..n + m {
            let (x, y) = batch_data(s, 5, 2);
            straight
                .step(&Batch::new(5, 2, &x, Target::Classes(&y)))
                .unwrap();
        }
        let path = temp(&format!("opt{k}"));
        let mut first = new();
        for s in 0..n {
            let (x, y) = batch_data(s, 5, 2);
            first
                .step(&Batch::new(5, 2, &x, Target::Classes(&y)))
                .unwrap();
        }
        let extras = Extras {
            tensors: vec![],
            metadata: [("data_step".to_string(), n.to_string())].into(),
        };
        io::save_checkpoint_with(
            &path,
            &first.config,
            &first.params,
            &first.optimizer,
            &extras,
        )
        .unwrap();
        drop(first);
        let mut resumed = new();
        let back =
            io::load_checkpoint_with(&path, &cfg, &mut resumed.params, &mut resumed.optimizer)
                .unwrap();
        let from: usize = back.value("data_step").unwrap();
        for s in from..n + m {
            let (x, y) = batch_data(s, 5, 2);
            resumed
                .step(&Batch::new(5, 2, &x, Target::Classes(&y)))
                .unwrap();
        }
        assert_eq!(bits(&resumed.params), bits(&straight.params), "{opt:?}");
        assert_eq!(
            bits(&resumed.optimizer.state1),
            bits(&straight.optimizer.state1)
        );
        assert_eq!(
            bits(&resumed.optimizer.state2),
            bits(&straight.optimizer.state2)
        );
        assert_eq!(
            bits(&resumed.optimizer.state3),
            bits(&straight.optimizer.state3)
        );
        assert_eq!(resumed.optimizer.steps, straight.optimizer.steps);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

/// `B` streams of a classifier trained by Adam with TBPTT(k1, k2), from seed 5.
fn adam_streams(cfg: RnnConfig, k1: usize, k2: usize, b: usize) -> Tbptt<f32> {
    let tr = Trainer::<f32>::new(
        cfg,
        LossSpec::every_step(LossKind::CrossEntropy),
        OptimizerKind::adam(0.01),
        5,
    )
    .unwrap();
    Tbptt::new(tr, k1, k2, b).unwrap()
}

#[test]
fn tbptt_streams_resume_bitwise() {
    for (cell, k1, k2) in [(Cell::Lstm, 4, 4), (Cell::Gru, 2, 5), (Cell::Rnn, 3, 7)] {
        let cfg = RnnConfig::new(3, 6, 4).cell(cell).layers(2);
        let b = 3;
        let new = || adam_streams(cfg, k1, k2, b);
        let chunk = |c: usize| batch_data(c, k1, b);
        let (n, m) = (5, 4);
        let mut straight = new();
        for c in 0..n + m {
            let (x, y) = chunk(c);
            straight.step(&x, Target::Classes(&y)).unwrap();
        }
        let path = temp(&format!("{cell:?}"));
        let mut first = new();
        for c in 0..n {
            let (x, y) = chunk(c);
            first.step(&x, Target::Classes(&y)).unwrap();
        }
        let extras = Extras {
            tensors: first.snapshot(),
            metadata: [("chunk".to_string(), n.to_string())].into(),
        };
        let tr = &first.trainer;
        io::save_checkpoint_with(&path, &tr.config, &tr.params, &tr.optimizer, &extras).unwrap();
        drop(first);
        let mut resumed = new();
        let tr = &mut resumed.trainer;
        let back =
            io::load_checkpoint_with(&path, &cfg, &mut tr.params, &mut tr.optimizer).unwrap();
        resumed.restore_snapshot(&back.tensors).unwrap();
        for c in back.value::<usize>("chunk").unwrap()..n + m {
            let (x, y) = chunk(c);
            resumed.step(&x, Target::Classes(&y)).unwrap();
        }
        let what = format!("{cell:?} TBPTT({k1}, {k2})");
        assert_eq!(
            bits(&resumed.trainer.params),
            bits(&straight.trainer.params),
            "{what}"
        );
        assert_eq!(
            bits(&resumed.trainer.optimizer.state2),
            bits(&straight.trainer.optimizer.state2),
            "{what}"
        );
        assert_eq!(
            bits(resumed.state()),
            bits(straight.state()),
            "{what}: carried state"
        );
        // A snapshot of another stream shape is refused, naming the part.
        let mut other = adam_streams(cfg, k1, k2, b + 1);
        let e = other.restore_snapshot(&back.tensors).unwrap_err();
        assert!(e.to_string().contains("tbptt."), "{e}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

/// Streams updated every third chunk resume bitwise from a checkpoint taken between an
/// update's chunks: the waiting gradients, loss and divisor (of weighted streams, so not a
/// count) travel in the extras; misshapen ones are refused and change nothing.
#[test]
fn accumulated_chunks_resume_bitwise() {
    let (k, b, every) = (3, 3, 3);
    let cfg = RnnConfig::new(3, 6, 4).cell(Cell::Gru).layers(2);
    let new = || {
        adam_streams(cfg, k, k, b)
            .with_stream_weights(&[0.3, 1.0, 2.7])
            .unwrap()
    };
    let train = |stream: &mut Tbptt<f32>, chunks: std::ops::Range<usize>| {
        for c in chunks {
            let (x, y) = batch_data(c, k, b);
            stream.accumulate(&x, Target::Classes(&y)).unwrap();
            if (c + 1) % every == 0 {
                stream.apply_accumulated().unwrap();
            }
        }
    };
    let (n, total) = (5, 9);
    let mut straight = new();
    train(&mut straight, 0..total);
    let mut first = new();
    train(&mut first, 0..n);
    assert_eq!(first.accumulated(), 2);
    let mut extras = Extras {
        tensors: first.snapshot(),
        ..Extras::default()
    };
    first.trainer.save_accumulated(&mut extras);
    let path = temp("accumulated");
    let tr = &first.trainer;
    io::save_checkpoint_with(&path, &tr.config, &tr.params, &tr.optimizer, &extras).unwrap();
    let mut resumed = new();
    let tr = &mut resumed.trainer;
    let back = io::load_checkpoint_with(&path, &cfg, &mut tr.params, &mut tr.optimizer).unwrap();
    resumed.restore_snapshot(&back.tensors).unwrap();
    resumed.trainer.restore_accumulated(&back).unwrap();
    assert_eq!(resumed.accumulated(), 2);
    train(&mut resumed, n..total);
    assert_eq!(
        bits(&resumed.trainer.params),
        bits(&straight.trainer.params)
    );
    assert_eq!(bits(resumed.state()), bits(straight.state()));
    // Without the waiting chunks the run differs: the test can tell.
    let mut forgetful = new();
    let tr = &mut forgetful.trainer;
    io::load_checkpoint_with(&path, &cfg, &mut tr.params, &mut tr.optimizer).unwrap();
    forgetful.restore_snapshot(&back.tensors).unwrap();
    train(&mut forgetful, n..total);
    assert_ne!(
        bits(&forgetful.trainer.params),
        bits(&straight.trainer.params)
    );
    // Gradients of another model's size, or a missing count, are refused.
    let mut bad = back.clone();
    for (name, values) in &mut bad.tensors {
        if name == "accumulated.grads" {
            values.pop();
        }
    }
    let mut other = new();
    let e = other.trainer.restore_accumulated(&bad).unwrap_err();
    assert!(e.to_string().contains("accumulated.grads"), "{e}");
    let mut bad = back.clone();
    bad.metadata.remove("accumulated.micro_batches");
    let e = other.trainer.restore_accumulated(&bad).unwrap_err();
    assert!(e.to_string().contains("accumulated.micro_batches"), "{e}");
    let mut bad = back.clone();
    bad.metadata
        .insert("accumulated.divisor".into(), "-1".into());
    assert!(other.trainer.restore_accumulated(&bad).is_err());
    assert_eq!(other.accumulated(), 0);
    // A checkpoint saved with none waiting restores none (and drops any waiting here).
    let mut none = Extras::default();
    straight.trainer.save_accumulated(&mut none);
    resumed.trainer.restore_accumulated(&none).unwrap();
    resumed
        .accumulate(
            &batch_data(0, k, b).0,
            Target::Classes(&batch_data(0, k, b).1),
        )
        .unwrap();
    resumed.trainer.restore_accumulated(&none).unwrap();
    assert_eq!(resumed.accumulated(), 0);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
