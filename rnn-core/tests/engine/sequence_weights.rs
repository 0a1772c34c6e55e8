//! Sequence weights (`Batch::with_sequence_weights`): a sequence of integer weight `w` trains
//! as `w` copies of it in the batch (0: as if absent), for every cell, loss, reduction and
//! option that decides how a mean is taken; bad weights are typed errors.

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::prelude::*;

use crate::common::ScoringCase;

#[test]
fn integer_weights_train_as_repeated_sequences() {
    for (k, case) in ScoringCase::all().iter().enumerate() {
        let (cfg, loss, kind, t, b) = (&case.cfg, &case.loss, &case.kind, case.t, case.b);
        let mut data = case.data(&mut StdRng::seed_from_u64(k as u64 + 40));
        // 0, 1, 2, 3, 0, ...: the first sequence (always of full length) is absent.
        data.weights = (0..b).map(|s| (s % 4) as f64).collect();
        let copies: Vec<usize> = (0..b).flat_map(|s| std::iter::repeat_n(s, s % 4)).collect();
        let mut repeated = data.pick(cfg, t, b, loss.many_to_one, &copies);
        repeated.weights.clear();
        let new = || {
            Trainer::<f64>::new(*cfg, loss.clone(), OptimizerKind::adam(1e-2), 7)
                .unwrap()
                .with_clip(Clip::Norm(0.5))
        };
        let (mut weighted, mut copied) = (new(), new());
        let what = format!("{cfg:?} {loss:?}");
        for _ in 0..2 {
            let a = weighted.step(&data.batch(t, b, *kind, true, true)).unwrap();
            let c = copied
                .step(&repeated.batch(t, copies.len(), *kind, true, true))
                .unwrap();
            assert!(
                (a.loss - c.loss).abs() <= 1e-12 * c.loss.abs(),
                "{what}: {a:?} {c:?}"
            );
            assert!(
                (a.grad_norm - c.grad_norm).abs() <= 1e-12 * c.grad_norm,
                "{what}"
            );
        }
        for (i, (x, y)) in weighted.params.iter().zip(copied.params.iter()).enumerate() {
            assert!(
                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                "{what}: parameter {i}: {x} vs {y}"
            );
        }
    }
}

/// Weights of one value `c` leave a mean as it was and multiply a sum by `c`.
#[test]
fn uniform_weights_scale_a_sum_and_leave_a_mean() {
    let cfg = RnnConfig::gru(3, 6, 4).layers(2);
    let data = crate::common::Data::random(&mut StdRng::seed_from_u64(3), &cfg, 5, 3, false);
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let loss = LossSpec {
            reduction,
            ..LossSpec::every_step(LossKind::CrossEntropy)
        };
        let mut tr = Trainer::<f64>::new(cfg, loss, OptimizerKind::sgd(0.1), 1).unwrap();
        let batch = data.batch(5, 3, LossKind::CrossEntropy, true, true);
        let plain = tr.evaluate(&batch).unwrap();
        let weighted = tr
            .evaluate(&batch.with_sequence_weights(&[2.5; 3]))
            .unwrap();
        let want = if reduction == Reduction::Sum {
            2.5 * plain
        } else {
            plain
        };
        assert!(
            (weighted - want).abs() <= 1e-13 * want,
            "{reduction:?}: {weighted} vs {want}"
        );
    }
}

#[test]
fn bad_weights_are_typed_errors() {
    let cfg = RnnConfig::lstm(2, 4, 3);
    let (x, labels) = (vec![0.5f32; 4 * 2 * 2], vec![1usize; 4 * 2]);
    let batch = Batch::new(4, 2, &x, Target::Classes(&labels));
    let mut tr = Trainer::<f32>::new(
        cfg,
        LossSpec::every_step(LossKind::CrossEntropy),
        OptimizerKind::adam(1e-2),
        0,
    )
    .unwrap();
    let before = tr.params.clone();
    let e = tr.step(&batch.with_sequence_weights(&[1.0])).unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "sequence_weights"),
        "{e}"
    );
    let e = tr
        .step(&batch.with_sequence_weights(&[1.0, f32::NAN]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RnnError::NonFiniteInput {
                what: "sequence_weights",
                index: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = tr
        .step(&batch.with_sequence_weights(&[1.0, -0.5]))
        .unwrap_err();
    assert!(e.to_string().contains("sequence weight 1 = -0.5"), "{e}");
    let e = tr
        .step(&batch.with_sequence_weights(&[0.0, 0.0]))
        .unwrap_err();
    assert!(e.to_string().contains("sequence weight is 0"), "{e}");
    assert_eq!(tr.params, before);
    assert_eq!(tr.optimizer.steps, 0);
    // A sum over no weight is 0, as PyTorch's: a step that moves nothing but weight decay.
    let mut summed = Trainer::<f32>::new(
        cfg,
        LossSpec {
            reduction: Reduction::Sum,
            ..LossSpec::every_step(LossKind::CrossEntropy)
        },
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap();
    let report = summed
        .step(&batch.with_sequence_weights(&[0.0, 0.0]))
        .unwrap();
    assert_eq!((report.loss, report.grad_norm), (0.0, 0.0));
}
