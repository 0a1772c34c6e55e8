//! Learning-rate schedules: PyTorch's rates, the trainer applying them, and a resumed run
//! continuing them exactly; the same for `ReduceLROnPlateau` (`Plateau`); Keras' early
//! stopping (`EarlyStopping`).

use crate::common::scratch_dir;
use crate::fixtures;
use rnn_core::io;
use rnn_core::prelude::*;
use rnn_core::schedule::{Decay, EarlyStopping, LrSchedule, OneCycle, Plateau, Threshold, Verdict};

/// `opt.param_groups[0]["lr"]` before each of 12 `opt.step(); sched.step()` rounds, base
/// rate 0.1, printed by torch 2.15.
const TORCH: [(&str, [f64; 12]); 7] = [
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
    // CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=0.01): cycles of 3, 6, 12.
    (
        "restarts",
        [
            0.1,
            0.0775,
            0.032500000000000015,
            0.1,
            0.09397114317029975,
            0.0775,
            0.05500000000000001,
            0.032500000000000015,
            0.01602885682970026,
            0.1,
            0.09846666218300808,
            0.09397114317029975,
        ],
    ),
    // CosineAnnealingWarmRestarts(T_0=4, T_mult=1): cycles of 4.
    (
        "restarts_even",
        [
            0.1,
            0.08535533905932738,
            0.05,
            0.014644660940672627,
            0.1,
            0.08535533905932738,
            0.05,
            0.014644660940672627,
            0.1,
            0.08535533905932738,
            0.05,
            0.014644660940672627,
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
        "restarts" => LrSchedule::new(Decay::cosine_restarts(3, 2, 0.01).unwrap()),
        "restarts_even" => LrSchedule::new(Decay::cosine_restarts(4, 1, 0.0).unwrap()),
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
fn restarts_reach_any_update_count() {
    for t_mult in [1, 2, 7] {
        let s = LrSchedule::new(Decay::cosine_restarts(3, t_mult, 0.01).unwrap());
        for n in [u64::MAX, u64::MAX / 3, 1 << 40] {
            let rate = s.rate(0.1, n);
            assert!(
                (0.01..=0.1).contains(&rate),
                "t_mult {t_mult}, update {n}: {rate}"
            );
        }
    }
    // Cycles of 3, 6, 12, ...: update 3 + 6 + 12 = 21 starts the fourth at the base rate.
    let s = LrSchedule::new(Decay::cosine_restarts(3, 2, 0.0).unwrap());
    assert_eq!(s.rate(0.1, 21), 0.1);
    assert!(s.rate(0.1, 20) < 0.01);
}

#[test]
fn bad_schedules_are_typed_errors() {
    for (e, says) in [
        (Decay::step(0, 0.5).unwrap_err(), "step decay every = 0"),
        (Decay::step(2, 0.0).unwrap_err(), "step decay gamma = 0"),
        (Decay::exponential(f64::NAN).unwrap_err(), "gamma = NaN"),
        (Decay::cosine(0, 0.0).unwrap_err(), "cosine t_max = 0"),
        (Decay::cosine(5, -1.0).unwrap_err(), "eta_min = -1"),
        (Decay::cosine_restarts(0, 2, 0.0).unwrap_err(), "t_0 = 0"),
        (Decay::cosine_restarts(3, 0, 0.0).unwrap_err(), "t_mult = 0"),
        (
            Decay::cosine_restarts(3, 2, f64::INFINITY).unwrap_err(),
            "eta_min = inf",
        ),
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

const ONE_CYCLES: [&str; 7] = [
    "defaults",
    "linear_adam",
    "three_phase",
    "three_phase_linear",
    "short_climb",
    "no_momentum",
    "one_step",
];

/// A one-cycle fixture (`one_cycle(...)` in scripts/torch_fixtures.py): the schedule, and
/// PyTorch's rate and momentum before each of its updates at peak rate 0.1.
fn one_cycle_fixture(name: &str) -> (OneCycle, Vec<f64>, Vec<f64>) {
    let bytes = io::read_bytes(&fixtures::path(&format!("one_cycle_{name}.safetensors"))).unwrap();
    let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
    let rates = io::float_tensor::<f64>(&st, "rates").unwrap().0;
    let momenta = io::float_tensor::<f64>(&st, "momenta").unwrap().0;
    (fixtures::one_cycle(&meta["one_cycle"]), rates, momenta)
}

/// `OneCycleLR`'s rates and momenta, bit for bit: both annealings, two and three phases,
/// other factors and momenta, a climb over before the first update, one update in all, and
/// no momentum cycle (the optimizer's own momentum stays).
#[test]
fn one_cycle_matches_pytorch() {
    for name in ONE_CYCLES {
        let (cycle, rates, momenta) = one_cycle_fixture(name);
        let s = LrSchedule::new(Decay::OneCycle(cycle));
        let n = rates.len() as u64;
        assert_eq!(n, cycle.total_steps, "{name}");
        let got: Vec<f64> = (0..n).map(|k| s.rate(0.1, k)).collect();
        assert_eq!(got, rates, "{name} rates");
        let got: Vec<Option<f64>> = (0..n).map(|k| s.momentum(k)).collect();
        if name == "no_momentum" {
            assert!(got.iter().all(Option::is_none), "{got:?}");
            assert!(momenta.iter().all(|&m| m == 0.9), "the optimizer's own");
        } else {
            let want: Vec<Option<f64>> = momenta.iter().map(|&m| Some(m)).collect();
            assert_eq!(got, want, "{name} momenta");
        }
        // Past the cycle, its last rate and momentum hold (PyTorch raises).
        for past in [n, n + 1, u64::MAX] {
            assert_eq!(
                s.rate(0.1, past),
                rates[rates.len() - 1],
                "{name} at {past}"
            );
            assert_eq!(s.momentum(past), got[got.len() - 1], "{name} at {past}");
        }
    }
    // A warm-up holds the cycle's first momentum, and the cycle starts after it.
    let (cycle, rates, momenta) = one_cycle_fixture("defaults");
    let s = LrSchedule::new(Decay::OneCycle(cycle))
        .with_warmup(2, 0.5)
        .unwrap();
    assert_eq!((s.rate(0.1, 0), s.momentum(0)), (0.05, Some(momenta[0])));
    assert!((s.rate(0.1, 1) - 0.075).abs() < 1e-16);
    assert_eq!(s.momentum(1), Some(momenta[0]));
    assert_eq!(
        (s.rate(0.1, 5), s.momentum(5)),
        (rates[3], Some(momenta[3]))
    );
    assert_eq!(
        LrSchedule::new(Decay::cosine(4, 0.0).unwrap()).momentum(1),
        None
    );
}

/// The trainer moves the momentum the schedule names (Adam's `beta1`, SGD's and RMSprop's
/// `momentum`) before each update, as setting it by hand would, bit for bit; Adagrad, with no
/// momentum, is refused before anything changes unless the cycle leaves the momentum alone.
#[test]
fn the_trainer_moves_the_momentum_and_refuses_adagrad_with_a_cycle() {
    let (x, y) = data();
    let batch = Batch::new(6, 3, &x, Target::Values(&y));
    let cycle = OneCycle::new(6).unwrap().with_pct_start(0.4).unwrap();
    let s = LrSchedule::new(Decay::OneCycle(cycle));
    for kind in [
        OptimizerKind::adam(0.05),
        OptimizerKind::sgd(0.05),
        OptimizerKind::rmsprop(0.01),
    ] {
        let mut scheduled = trainer(kind).with_lr_schedule(s);
        let mut by_hand = trainer(kind);
        let base = kind.lr();
        for n in 0..8 {
            let report = scheduled.step(&batch).unwrap();
            assert_eq!(report.lr, s.rate(base, n));
            assert_eq!(scheduled.optimizer.kind.momentum(), s.momentum(n));
            by_hand.optimizer.kind.set_lr(s.rate(base, n));
            by_hand
                .optimizer
                .kind
                .set_momentum(s.momentum(n).unwrap())
                .unwrap();
            by_hand.step(&batch).unwrap();
        }
        assert_eq!(scheduled.params, by_hand.params, "{}", kind.family());
        assert_eq!(scheduled.optimizer.state1, by_hand.optimizer.state1);
    }
    let mut adagrad = trainer(OptimizerKind::adagrad(0.05)).with_lr_schedule(s);
    let (params, kind) = (adagrad.params.clone(), adagrad.optimizer.kind);
    let e = adagrad.step(&batch).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("without_momentum")),
        "{e}"
    );
    assert_eq!(adagrad.params, params);
    assert_eq!((adagrad.optimizer.kind, adagrad.optimizer.steps), (kind, 0));
    let rate_only = LrSchedule::new(Decay::OneCycle(cycle.without_momentum()));
    let mut adagrad = trainer(OptimizerKind::adagrad(0.05)).with_lr_schedule(rate_only);
    assert_eq!(adagrad.step(&batch).unwrap().lr, s.rate(0.05, 0));
}

#[test]
fn bad_one_cycles_are_typed_errors() {
    let ok = OneCycle::new(10).unwrap();
    for (e, says) in [
        (OneCycle::new(0).unwrap_err(), "total_steps = 0"),
        (ok.with_pct_start(1.5).unwrap_err(), "pct_start = 1.5"),
        (ok.with_pct_start(f64::NAN).unwrap_err(), "pct_start = NaN"),
        (ok.with_div_factors(0.0, 1e4).unwrap_err(), "div_factor = 0"),
        (
            ok.with_div_factors(25.0, f64::INFINITY).unwrap_err(),
            "final_div_factor = inf",
        ),
        (
            ok.with_momentum(-0.1, 0.9).unwrap_err(),
            "base_momentum = -0.1",
        ),
        (ok.with_momentum(0.85, 1.0).unwrap_err(), "max_momentum = 1"),
    ] {
        assert!(
            matches!(&e, RnnError::Config(m) if m.contains(says)),
            "{says}: {e}"
        );
    }
    // The edges are allowed: no climb (PyTorch's first phase ends at update -1, so the
    // first update is a tenth of the way down), all climb (the peak at the last update).
    for (pct, falls) in [(0.0, true), (1.0, false)] {
        let s = LrSchedule::new(Decay::OneCycle(ok.with_pct_start(pct).unwrap()));
        let rates: Vec<f64> = (0..10).map(|n| s.rate(0.1, n)).collect();
        assert!(
            rates.iter().all(|r| r.is_finite() && *r > 0.0 && *r <= 0.1),
            "{rates:?}"
        );
        let steps_fall = rates.windows(2).all(|w| w[1] < w[0]);
        let steps_climb = rates.windows(2).all(|w| w[1] > w[0]);
        assert_eq!(
            (steps_fall, steps_climb),
            (falls, !falls),
            "{pct}: {rates:?}"
        );
        assert_eq!(rates[9], if falls { 4e-7 } else { 0.1 });
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

/// A plateau schedule built as a fixture's metadata says (`plateau(...)` in
/// scripts/torch_fixtures.py), with its metrics and PyTorch's rate after each.
fn plateau_fixture(name: &str) -> (Plateau, Vec<f64>, Vec<f64>) {
    let bytes = io::read_bytes(&fixtures::path(&format!("plateau_{name}.safetensors"))).unwrap();
    let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
    let num = |k: &str, d: f64| meta.get(k).map_or(d, |v| v.parse().unwrap());
    let mut p = Plateau::new(
        num("lr", 0.0),
        num("factor", 0.1),
        num("patience", 10.0) as u64,
    )
    .unwrap()
    .with_cooldown(num("cooldown", 0.0) as u64)
    .with_min_lr(num("min_lr", 0.0))
    .unwrap();
    p.eps = num("eps", 1e-8);
    let threshold = num("threshold", 1e-4);
    p = p
        .with_threshold(match meta.get("threshold_mode").map(String::as_str) {
            Some("abs") => Threshold::Absolute(threshold),
            _ => Threshold::Relative(threshold),
        })
        .unwrap();
    if meta.get("mode").is_some_and(|m| m == "max") {
        p = p.maximizing();
    }
    let metrics = io::float_tensor::<f64>(&st, "metrics").unwrap().0;
    let rates = io::float_tensor::<f64>(&st, "rates").unwrap().0;
    (p, metrics, rates)
}

const PLATEAUS: [&str; 7] = [
    "defaults",
    "min_rel_cooldown",
    "min_abs",
    "max_rel",
    "max_abs_cooldown",
    "negative_min_rel",
    "eps_skip",
];

/// `ReduceLROnPlateau`'s rates, bit for bit: both modes and threshold modes, cooldown,
/// `min_lr`, `eps` and a negative metric under a relative threshold.
#[test]
fn plateau_rates_match_pytorch() {
    for name in PLATEAUS {
        let (mut p, metrics, want) = plateau_fixture(name);
        let got: Vec<f64> = metrics.iter().map(|&m| p.observe(m).unwrap()).collect();
        assert_eq!(got, want, "{name}");
        // Every fixture reduces at least once, except the one whose reductions are under eps.
        assert_eq!(
            want.iter().any(|&r| r < want[0]),
            name != "eps_skip",
            "{name}"
        );
    }
}

/// Saved into a checkpoint's extras at any point and restored into a schedule built the same
/// way, a plateau schedule goes on exactly, the trainer's rate with it.
#[test]
fn a_resumed_plateau_goes_on_exactly() {
    let dir = scratch_dir("plateau");
    let path = dir.join("ckpt.safetensors");
    let (x, y) = data();
    let batch = Batch::new(6, 3, &x, Target::Values(&y));
    for name in ["min_rel_cooldown", "max_abs_cooldown"] {
        let (fresh, metrics, want) = plateau_fixture(name);
        for stop in [0, 1, 7, 20, metrics.len()] {
            let mut first = fresh.clone();
            let mut tr = trainer(OptimizerKind::sgd(fresh.lr()))
                .with_lr_schedule(LrSchedule::new(Decay::Constant));
            for &m in &metrics[..stop] {
                tr.set_base_lr(first.observe(m).unwrap());
            }
            let mut extras = io::Extras::default();
            first.save(&mut extras);
            io::save_checkpoint_with(&path, &tr.config, &tr.params, &tr.optimizer, &extras)
                .unwrap();
            let mut resumed = trainer(OptimizerKind::sgd(fresh.lr()))
                .with_lr_schedule(LrSchedule::new(Decay::Constant));
            let cfg = resumed.config;
            let back =
                io::load_checkpoint_with(&path, &cfg, &mut resumed.params, &mut resumed.optimizer)
                    .unwrap();
            let mut second = fresh.clone();
            second.restore(&back).unwrap();
            assert_eq!(second, first, "{name} at {stop}");
            resumed.set_base_lr(second.lr());
            assert_eq!(resumed.step(&batch).unwrap().lr, first.lr());
            let rest: Vec<f64> = metrics[stop..]
                .iter()
                .map(|&m| second.observe(m).unwrap())
                .collect();
            assert_eq!(rest, want[stop..], "{name} resumed at {stop}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The plateau's rate is the trainer's base: a warm-up climbs to the lowered rate.
#[test]
fn a_plateau_lowers_the_base_a_schedule_scales() {
    let (x, y) = data();
    let batch = Batch::new(6, 3, &x, Target::Values(&y));
    let warmup = LrSchedule::new(Decay::Constant)
        .with_warmup(4, 0.5)
        .unwrap();
    let mut tr = trainer(OptimizerKind::adam(0.1)).with_lr_schedule(warmup);
    let mut plateau = Plateau::new(tr.base_lr(), 0.5, 0).unwrap();
    assert_eq!(tr.step(&batch).unwrap().lr, 0.05);
    tr.set_base_lr(plateau.observe(1.0).unwrap());
    assert_eq!(tr.step(&batch).unwrap().lr, warmup.rate(0.1, 1));
    tr.set_base_lr(plateau.observe(1.0).unwrap());
    assert_eq!((plateau.lr(), tr.base_lr()), (0.05, 0.05));
    assert_eq!(tr.step(&batch).unwrap().lr, warmup.rate(0.05, 2));
    // Without a schedule it is the optimizer's rate.
    let mut plain = trainer(OptimizerKind::sgd(0.1));
    plain.set_base_lr(0.02);
    assert_eq!(plain.optimizer.kind.lr(), 0.02);
    assert_eq!(plain.step(&batch).unwrap().lr, 0.02);
}

#[test]
fn bad_plateaus_are_typed_errors_and_change_nothing() {
    for (lr, factor) in [
        (0.1, 1.0),
        (0.1, 0.0),
        (0.1, -0.5),
        (0.1, f64::NAN),
        (0.0, 0.5),
    ] {
        let e = Plateau::new(lr, factor, 3).unwrap_err();
        assert!(matches!(e, RnnError::Config(_)), "{lr} {factor}: {e}");
    }
    let p = Plateau::new(f64::INFINITY, 0.5, 3).unwrap_err();
    assert!(p.to_string().contains("learning rate = inf"), "{p}");
    let p = Plateau::new(0.1, 0.5, 0).unwrap();
    for t in [Threshold::Relative(-0.1), Threshold::Absolute(f64::NAN)] {
        assert!(p.clone().with_threshold(t).is_err(), "{t:?}");
    }
    assert!(p.clone().with_min_lr(-1.0).is_err());
    let mut p = p;
    p.observe(1.0).unwrap();
    let before = p.clone();
    for m in [f64::NAN, f64::INFINITY] {
        let e = p.observe(m).unwrap_err();
        assert!(e.to_string().contains("plateau metric"), "{e}");
        assert_eq!(p, before);
    }
    // Missing or malformed state in a checkpoint is named, and nothing is restored.
    let mut extras = io::Extras::<f32>::default();
    p.save(&mut extras);
    for (key, value) in [
        ("plateau.bad", "-1"),
        ("plateau.lr", "0"),
        ("plateau.best", "x"),
    ] {
        let mut broken = extras.clone();
        broken.metadata.insert(key.into(), value.into());
        let mut q = Plateau::new(0.3, 0.5, 0).unwrap();
        let fresh = q.clone();
        let e = q.restore(&broken).unwrap_err();
        assert!(matches!(e, RnnError::Format(_)), "{key}: {e}");
        assert_eq!(q, fresh, "{key}");
    }
    let mut q = Plateau::new(0.3, 0.5, 0).unwrap();
    let e = q.restore(&io::Extras::<f32>::default()).unwrap_err();
    assert!(e.to_string().contains("plateau.lr"), "{e}");
}

/// Keras' `EarlyStopping` verdicts, worked out from its rule (`wait` counts epochs since the
/// last `current - min_delta < best`, reset by one; stop once `wait >= patience`), for
/// losses, accuracies, patience 0 and a relative threshold; and each at any point saved
/// into a checkpoint's extras and restored goes on exactly.
#[test]
fn early_stopping_follows_keras_and_resumes_exactly() {
    use Verdict::{Improved, Stop, Wait};
    let wait = |left| Wait { left };
    let cases = [
        (
            EarlyStopping::new(3),
            vec![0.9, 0.7, 0.7, 0.72, 0.65, 0.66, 0.67, 0.68],
            vec![
                Improved,
                Improved,
                wait(2),
                wait(1),
                Improved,
                wait(2),
                wait(1),
                Stop,
            ],
        ),
        (
            EarlyStopping::new(2)
                .maximizing()
                .with_min_delta(0.05)
                .unwrap(),
            vec![0.5, 0.54, 0.56, 0.6, 0.62, 0.64],
            vec![Improved, wait(1), Improved, wait(1), Improved, wait(1)],
        ),
        (
            EarlyStopping::new(0),
            vec![1.0, 0.5, 0.5],
            vec![Improved, Improved, Stop],
        ),
        (
            EarlyStopping::new(1)
                .with_threshold(Threshold::Relative(0.1))
                .unwrap(),
            vec![1.0, 0.95, 0.89, 0.85],
            vec![Improved, Stop, Improved, Stop],
        ),
    ];
    for (k, (fresh, metrics, want)) in cases.into_iter().enumerate() {
        let mut rule = fresh.clone();
        let got: Vec<Verdict> = metrics.iter().map(|&m| rule.observe(m).unwrap()).collect();
        assert_eq!(got, want, "case {k}");
        for stop in 0..=metrics.len() {
            let mut first = fresh.clone();
            for &m in &metrics[..stop] {
                first.observe(m).unwrap();
            }
            let mut extras = io::Extras::<f32>::default();
            first.save(&mut extras);
            let mut second = fresh.clone();
            second.restore(&extras).unwrap();
            assert_eq!(second, first, "case {k} at {stop}");
            let rest: Vec<Verdict> = metrics[stop..]
                .iter()
                .map(|&m| second.observe(m).unwrap())
                .collect();
            assert_eq!(rest, want[stop..], "case {k} resumed at {stop}");
        }
    }
}

/// Bad settings, metrics and saved states are typed errors that change nothing.
#[test]
fn bad_early_stopping_input_is_refused() {
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            EarlyStopping::new(1).with_min_delta(bad),
            Err(RnnError::Config(_))
        ));
    }
    let mut rule = EarlyStopping::new(2);
    rule.observe(1.0).unwrap();
    rule.observe(1.5).unwrap();
    let before = rule.clone();
    assert!(matches!(
        rule.observe(f64::NAN),
        Err(RnnError::NonFiniteInput { .. })
    ));
    assert_eq!((rule.best(), rule.waited()), (1.0, 1));
    assert_eq!(rule, before);
    let e = rule.restore(&io::Extras::<f32>::default()).unwrap_err();
    assert!(matches!(e, RnnError::Format(_)), "{e}");
    let mut extras = io::Extras::<f32>::default();
    rule.save(&mut extras);
    extras
        .metadata
        .insert("early_stopping.best".into(), "NaN".into());
    assert!(matches!(rule.restore(&extras), Err(RnnError::Format(_))));
    assert_eq!(rule, before);
}
