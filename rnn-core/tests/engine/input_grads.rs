//! The gradients of a batch's inputs through the trainer (`Trainer::with_input_grads`):
//! `dL/dx`, `dL/dh0` and `dL/dc0` against finite differences of the trainer's own loss, with
//! the settings that change how a pass runs (a frozen bottom layer, whose backward pass
//! would otherwise be skipped; checkpointing; two threads; a loss of one's own), and a
//! learned initial state's gradient as their sum over the batch.

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::Batch;
use rnn_core::config::Cell;
use rnn_core::prelude::*;

use crate::common::Data;

const EPS: f64 = 1e-6;

/// `analytic` against central differences of `loss` over every element of `field(data)`.
fn check(
    what: &str,
    data: &Data,
    field: fn(&mut Data) -> &mut Vec<f64>,
    analytic: &[f64],
    mut loss: impl FnMut(&Data) -> f64,
) {
    let mut probe = data.clone();
    let n = field(&mut probe).len();
    assert_eq!(analytic.len(), n, "{what}: length");
    for i in 0..n {
        let at = |probe: &mut Data, delta: f64, loss: &mut dyn FnMut(&Data) -> f64| {
            let original = field(probe)[i];
            field(probe)[i] = original + delta;
            let value = loss(probe);
            field(probe)[i] = original;
            value
        };
        let numeric =
            (at(&mut probe, EPS, &mut loss) - at(&mut probe, -EPS, &mut loss)) / (2.0 * EPS);
        let tolerance = 1e-6 * (1.0 + numeric.abs());
        assert!(
            (analytic[i] - numeric).abs() <= tolerance,
            "{what}[{i}]: {} against finite differences {numeric}",
            analytic[i]
        );
    }
}

/// One case: a model, how its trainer runs, and how it is scored.
struct Case {
    name: &'static str,
    cfg: RnnConfig,
    spec: LossSpec,
    setup: fn(Trainer<f64>) -> Trainer<f64>,
}

fn cases() -> Vec<Case> {
    let every = || LossSpec::every_step(LossKind::Mse);
    let last = || LossSpec::last_step(LossKind::CrossEntropy);
    let freeze_bottom = |tr: Trainer<f64>| {
        let mut tr = tr;
        tr.freeze_where(|name| name.ends_with("_l0"));
        tr
    };
    vec![
        Case {
            name: "rnn",
            cfg: RnnConfig::new(3, 4, 2),
            spec: every(),
            setup: |tr| tr,
        },
        Case {
            name: "lstm, layer 0 frozen",
            cfg: RnnConfig::lstm(3, 4, 2).layers(2),
            spec: last(),
            setup: freeze_bottom,
        },
        Case {
            name: "gru, layer 0 frozen, checkpointed",
            cfg: RnnConfig::gru(3, 4, 2).layers(2),
            spec: every(),
            setup: |tr| {
                let mut tr = tr.with_memory(Memory::Checkpointed { segment: 2 });
                tr.freeze_where(|name| name.ends_with("_l0"));
                tr
            },
        },
        Case {
            name: "lstm, bidirectional, two threads",
            cfg: RnnConfig::lstm(3, 4, 2).bidirectional(),
            spec: last(),
            setup: |tr| tr.with_threads(2),
        },
        Case {
            name: "lstm, projected, checkpointed",
            cfg: RnnConfig::lstm(3, 5, 2).projection(3),
            spec: every(),
            setup: |tr| tr.with_memory(Memory::Checkpointed { segment: 3 }),
        },
    ]
}

/// `dL/dx`, `dL/dh0` and `dL/dc0` of a training pass are the derivatives of the loss
/// `evaluate` gives, for each case, with and without lengths.
#[test]
fn input_grads_match_finite_differences() {
    let (t, b) = (5, 3);
    for (k, case) in cases().into_iter().enumerate() {
        for lengths in [false, true] {
            let what = format!("{}, lengths {lengths}", case.name);
            let mut rng = StdRng::seed_from_u64(k as u64);
            let data = Data::random(&mut rng, &case.cfg, t, b, case.spec.many_to_one);
            let new = || {
                let tr = Trainer::new(case.cfg, case.spec.clone(), OptimizerKind::sgd(0.1), 7)
                    .unwrap()
                    .with_input_grads();
                (case.setup)(tr)
            };
            let mut tr = new();
            let kind = case.spec.kind;
            tr.loss_and_grads(&data.batch(t, b, kind, lengths, true))
                .unwrap();
            let dx = tr.input_grads().to_vec();
            let (dh0, dc0) = tr.initial_state_grads();
            let (dh0, dc0) = (dh0.to_vec(), dc0.to_vec());
            assert!(dx.iter().any(|&g| g != 0.0), "{what}: no input gradient");
            let mut probe = new();
            let mut loss = |d: &Data| probe.evaluate(&d.batch(t, b, kind, lengths, true)).unwrap();
            check(&format!("{what}: x"), &data, |d| &mut d.x, &dx, &mut loss);
            check(
                &format!("{what}: h0"),
                &data,
                |d| &mut d.h0,
                &dh0,
                &mut loss,
            );
            if case.cfg.cell == Cell::Lstm {
                check(
                    &format!("{what}: c0"),
                    &data,
                    |d| &mut d.c0,
                    &dc0,
                    &mut loss,
                );
            } else {
                assert!(dc0.is_empty(), "{what}");
            }
        }
    }
}

/// A loss of one's own (`step_with`) fills them too: here `½ Σ y²` over every output.
#[test]
fn own_loss_input_grads_match_finite_differences() {
    let (t, b) = (4, 2);
    let cfg = RnnConfig::gru(2, 3, 2);
    let data = Data::random(&mut StdRng::seed_from_u64(5), &cfg, t, b, false);
    let spec = LossSpec::every_step(LossKind::Mse);
    let new = || {
        Trainer::new(cfg, spec.clone(), OptimizerKind::sgd(0.1), 1)
            .unwrap()
            .with_input_grads()
    };
    fn batch(d: &Data, t: usize, b: usize) -> Batch<'_, f64> {
        Batch {
            h0: Some(&d.h0[..]),
            ..Batch::new(t, b, &d.x, Target::None)
        }
    }
    let half_square = |y: &[f64]| y.iter().map(|v| v * v).sum::<f64>() / 2.0;
    let mut tr = new();
    tr.loss_and_grads_with(&batch(&data, t, b), |y, dy| {
        dy.copy_from_slice(y);
        half_square(y)
    })
    .unwrap();
    let dx = tr.input_grads().to_vec();
    let dh0 = tr.initial_state_grads().0.to_vec();
    let mut probe = new();
    let mut loss = |d: &Data| half_square(probe.outputs(&batch(d, t, b)).unwrap());
    check("own loss: x", &data, |d| &mut d.x, &dx, &mut loss);
    check("own loss: h0", &data, |d| &mut d.h0, &dh0, &mut loss);
}

/// With a learned initial state, the batch's `dL/dh0` (and `dL/dc0`) summed over its
/// sequences is the state's gradient; without `with_input_grads`, nothing is reported;
/// on two threads, the same bits as on one.
#[test]
fn learned_state_threads_and_off() {
    let (t, b) = (20, 16);
    let cfg = RnnConfig::lstm(5, 128, 3).layers(2).learned_h0();
    let data = Data::random(&mut StdRng::seed_from_u64(2), &cfg, t, b, false);
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    let new = |threads| {
        Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::adam(1e-3), 3)
            .unwrap()
            .with_threads(threads)
    };
    let batch = data.batch(t, b, spec.kind, true, false);
    let (mut off, mut one, mut two) =
        (new(1), new(1).with_input_grads(), new(2).with_input_grads());
    assert_eq!(two.threads_for(t, b), 2);
    let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
    // The same step with or without them, on one thread or two.
    let loss = off.step(&batch).unwrap().loss.to_bits();
    for tr in [&mut one, &mut two] {
        assert_eq!(tr.step(&batch).unwrap().loss.to_bits(), loss);
        assert_eq!(bits(&tr.params), bits(&off.params));
    }
    assert!(off.input_grads().is_empty());
    assert_eq!(off.initial_state_grads(), (&[][..], &[][..]));
    assert_eq!(bits(one.input_grads()), bits(two.input_grads()));
    assert_eq!(
        bits(one.initial_state_grads().0),
        bits(two.initial_state_grads().0)
    );
    assert_eq!(
        bits(one.initial_state_grads().1),
        bits(two.initial_state_grads().1)
    );

    let (dh0, dc0) = one.initial_state_grads();
    let h = cfg.hidden_size;
    for (state, d) in [(&one.layout.h0, dh0), (&one.layout.c0, dc0)] {
        let range = state.clone().expect("a learned state");
        let learned = &one.grads[range];
        for (row, &g) in learned.iter().enumerate() {
            let (layer, unit) = (row / h, row % h);
            let sum: f64 = (0..b).map(|s| d[(layer * b + s) * h + unit]).sum();
            assert!(
                (g - sum).abs() <= 1e-12 * (1.0 + g.abs()),
                "row {row}: {g} vs {sum}"
            );
        }
    }
}
