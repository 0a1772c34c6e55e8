//! Learning-rate schedules: PyTorch's rates, the trainer applying them, and a resumed run
//! continuing them exactly.

use crate::common::scratch_dir;
use rnn_core::io;
use rnn_core::prelude::*;
use rnn_core::schedule::{Decay, LrSchedule};

/// `opt.param_groups[0]["lr"]` before each of 12 `opt.step(); sched.step()` rounds, base
/// rate 0.1, printed by torch 2.15.
const TORCH: [(&str, [f64; 12]); 5] = [
    // StepLR(step_size=3, gamma=0.5)
    (
        "step",
        [
            0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.0125,
        ],
    ),
    // ExponentialLR(gamma=0.9)
    (
        "exponential",
        [
            0.1,
            0.09000000000000001,
            0.08100000000000002,
            0.07290000000000002,
            0.06561000000000002,
            0.05904900000000002,
            0.05314410000000002,
            0.04782969000000002,
            0.043046721000000024,
            0.03874204890000002,
            0.03486784401000002,
            0.03138105960900001,
        ],
    ),
    // CosineAnnealingLR(T_max=8, eta_min=0.01): back up after T_max.
    (
        "cosine",
        [
            0.1,
            0.0965745789630079,
            0.08681980515339463,
            0.07222075445642905,
            0.055,
            0.03777924554357096,
            0.023180194846605363,
            0.013425421036992097,
            0.01,
            0.013425421036992097,
            0.02318019484660537,
            0.03777924554357097,
        ],
    ),
    // LinearLR(start_factor=0.25, total_iters=4)
    (
        "warmup",
        [
            0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
        ],
    ),
    // SequentialLR([LinearLR(start_factor=0.2, total_iters=3),
    //               CosineAnnealingLR(T_max=6, eta_min=0)], milestones=[3])
    (
        "warmup_cosine",
        [
            0.020000000000000004,
            0.04666666666666667,
            0.07333333333333333,
            0.1,
            0.09330127018922195,
            0.07500000000000001,
            0.05,
            0.025000000000000012,
            0.006698729810778065,
            0.0,
            0.006698729810778065,
            0.025,
        ],
    ),
];

fn schedule(name: &str) -> LrSchedule {
    match name {
        "step" => LrSchedule::new(Decay::step(3, 0.5).unwrap()),
        "exponential" => LrSchedule::new(Decay::exponential(0.9).unwrap()),
        "cosine" => LrSchedule::new(Decay::cosine(8, 0.01).unwrap()),
        "warmup" => LrSchedule::new(Decay::Constant)
            .with_warmup(4, 0.25)
            .unwrap(),
        "warmup_cosine" => LrSchedule::new(Decay::cosine(6, 0.0).unwrap())
            .with_warmup(3, 0.2)
            .unwrap(),
        other => unreachable!("{other}"),
    }
}

#[test]
fn rates_match_pytorch() {
    for (name, want) in TORCH {
        let s = schedule(name);
        for (n, &w) in want.iter().enumerate() {
            let got = s.rate(0.1, n as u64);
            assert!(
                (got - w).abs() <= 1e-15 * w.max(1e-3),
                "{name} update {n}: {got} vs PyTorch's {w}"
            );
        }
    }
}

#[test]
fn bad_schedules_are_typed_errors() {
    for (e, says) in [
        (Decay::step(0, 0.5).unwrap_err(), "step decay every = 0"),
        (Decay::step(2, 0.0).unwrap_err(), "step decay gamma = 0"),
        (Decay::exponential(f64::NAN).unwrap_err(), "gamma = NaN"),
        (Decay::cosine(0, 0.0).unwrap_err(), "cosine t_max = 0"),
        (Decay::cosine(5, -1.0).unwrap_err(), "eta_min = -1"),
        (
            LrSchedule::new(Decay::Constant)
                .with_warmup(0, 0.5)
                .unwrap_err(),
            "warm-up steps = 0",
        ),
        (
            LrSchedule::new(Decay::Constant)
                .with_warmup(3, 0.0)
                .unwrap_err(),
            "start factor = 0",
        ),
    ] {
        assert!(
            matches!(&e, RnnError::Config(m) if m.contains(says)),
            "{says}: {e}"
        );
    }
}

fn data() -> (Vec<f64>, Vec<f64>) {
    let x = (0..6 * 3 * 2)
        .map(|k| ((k * 7 % 11) as f64) / 5.0 - 1.0)
        .collect();
    let y = (0..6 * 3)
        .map(|k| ((k * 5 % 7) as f64) / 3.0 - 1.0)
        .collect();
    (x, y)
}

fn trainer(optimizer: OptimizerKind<f64>) -> Trainer<f64> {
    let cfg = RnnConfig::gru(2, 6, 1);
    Trainer::new(cfg, LossSpec::every_step(LossKind::Mse), optimizer, 3).unwrap()
}

/// The trainer's updates use the schedule's rates: the same weights as setting each rate by
/// hand, bit for bit; and a rejected step does not advance the schedule.
#[test]
fn the_trainer_applies_the_schedule_and_a_rejected_step_does_not_advance_it() {
    let (x, y) = data();
    let batch = Batch::new(6, 3, &x, Target::Values(&y));
    let s = schedule("warmup_cosine");
    let mut scheduled = trainer(OptimizerKind::adam(0.1)).with_lr_schedule(s);
    let mut by_hand = trainer(OptimizerKind::adam(0.1));
    for n in 0..8 {
        let report = scheduled.step(&batch).unwrap();
        assert_eq!(report.lr, s.rate(0.1, n));
        by_hand.optimizer.kind.set_lr(s.rate(0.1, n));
        by_hand.step(&batch).unwrap();
    }
    assert_eq!(scheduled.params, by_hand.params);

    let bad_y = vec![f64::NAN; y.len()];
    let before = scheduled.params.clone();
    // NaN targets are refused before any work, NaN from the model rejects the step: either
    // way, nothing moves.
    assert!(scheduled.update(f64::NAN).is_err());
    assert!(
        scheduled
            .step(&Batch::new(6, 3, &x, Target::Values(&bad_y)))
            .is_err()
    );
    assert_eq!(scheduled.params, before);
    assert_eq!(scheduled.step(&batch).unwrap().lr, s.rate(0.1, 8));
}

/// A run saved mid-schedule and resumed in a trainer built the same way continues it
/// exactly.
#[test]
fn a_resumed_run_continues_the_schedule_exactly() {
    let dir = scratch_dir("schedule");
    let path = dir.join("ckpt.safetensors");
    let (x, y) = data();
    let batch = Batch::new(6, 3, &x, Target::Values(&y));
    let s = schedule("step");
    let mut whole = trainer(OptimizerKind::adam(0.05)).with_lr_schedule(s);
    for _ in 0..4 {
        whole.step(&batch).unwrap();
    }
    io::save_checkpoint(&path, &whole.config, &whole.params, &whole.optimizer).unwrap();
    let mut resumed = trainer(OptimizerKind::adam(0.05)).with_lr_schedule(s);
    let cfg = resumed.config;
    io::load_checkpoint(&path, &cfg, &mut resumed.params, &mut resumed.optimizer).unwrap();
    for _ in 0..5 {
        let (a, b) = (whole.step(&batch).unwrap(), resumed.step(&batch).unwrap());
        assert_eq!(a.lr, b.lr);
    }
    assert_eq!(whole.params, resumed.params);
    std::fs::remove_dir_all(&dir).unwrap();
}
