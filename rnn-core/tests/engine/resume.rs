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

#[test]
fn tbptt_streams_resume_bitwise() {
    for (cell, k1, k2) in [(Cell::Lstm, 4, 4), (Cell::Gru, 2, 5), (Cell::Rnn, 3, 7)] {
        let cfg = RnnConfig::new(3, 6, 4).cell(cell).layers(2);
        let b = 3;
        let new = || {
            let tr = Trainer::<f32>::new(
                cfg,
                LossSpec::every_step(LossKind::CrossEntropy),
                OptimizerKind::adam(0.01),
                5,
            )
            .unwrap();
            Tbptt::new(tr, k1, k2, b).unwrap()
        };
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
        let mut other = Tbptt::new(
            Trainer::<f32>::new(
                cfg,
                LossSpec::every_step(LossKind::CrossEntropy),
                OptimizerKind::adam(0.01),
                5,
            )
            .unwrap(),
            k1,
            k2,
            b + 1,
        )
        .unwrap();
        let e = other.restore_snapshot(&back.tensors).unwrap_err();
        assert!(e.to_string().contains("tbptt."), "{e}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
