//! Per-sequence losses (`Trainer::sequence_losses`): each sequence's loss is the loss of a
//! batch holding it alone, for every cell, loss, reduction and option that decides what a
//! sequence scores; under `sum` they add up to the batch's loss.

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::IGNORED_LABEL;
use rnn_core::prelude::*;

use crate::common::{Data, ScoringCase};

#[test]
fn each_sequence_scores_as_a_batch_of_its_own() {
    for (k, case) in ScoringCase::all().iter().enumerate() {
        let ScoringCase {
            cfg,
            loss,
            kind,
            t,
            b,
        } = case;
        let (t, b) = (*t, *b);
        let mut tr = Trainer::<f64>::new(*cfg, loss.clone(), OptimizerKind::adam(1e-2), 3).unwrap();
        let data = case.data(&mut StdRng::seed_from_u64(k as u64));
        // Every other case weighs its sequences (the first by 0).
        let data = if k % 2 == 1 { data.weighted() } else { data };
        let what = format!("{cfg:?} {loss:?}");
        // A step first, so the weights are not the initial ones of every trainer.
        tr.step(&data.batch(t, b, *kind, true, true)).unwrap();
        let each = tr
            .sequence_losses(&data.batch(t, b, *kind, true, true))
            .unwrap()
            .to_vec();
        assert_eq!(each.len(), b, "{what}");
        for (bb, &got) in each.iter().enumerate() {
            let alone = data.sequences(cfg, t, b, loss.many_to_one, &(bb..bb + 1));
            match tr.evaluate(&alone.batch(t, 1, *kind, true, true)) {
                // (A weight of 0 under `sum` scores 0, alone or not.)
                Ok(want) => assert!(
                    (got - want).abs() <= 1e-12 * (1.0 + want.abs())
                        && (want != 0.0 || alone.weights == [0.0]),
                    "{what}: sequence {bb} scores {got}, alone {want}"
                ),
                // A mean over a sequence that scores nothing, or weighs 0: its own batch is
                // refused, and its loss among others is 0.
                Err(RnnError::Config(_)) => {
                    let scored = if loss.many_to_one {
                        1
                    } else {
                        alone.lengths[0]
                    };
                    let labels = &alone.classes[..scored];
                    let unlabelled = labels.iter().all(|&c| c == IGNORED_LABEL);
                    assert!(unlabelled || alone.weights == [0.0], "{what}: {bb}");
                    assert_eq!(got, 0.0, "{what}: sequence {bb}");
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
        if loss.reduction == Reduction::Sum {
            let total = tr.evaluate(&data.batch(t, b, *kind, true, true)).unwrap();
            let sum: f64 = each.iter().sum();
            assert!(
                (sum - total).abs() <= 1e-12 * total,
                "{what}: {sum} vs {total}"
            );
        }
    }
}

/// Nothing a step reads changes: the next step equals that of a trainer that never scored,
/// and a batch that fails validation is a typed error.
#[test]
fn scoring_sequences_changes_nothing_and_refuses_bad_batches() {
    let cfg = RnnConfig::lstm(3, 6, 4).layers(2);
    let loss = LossSpec::every_step(LossKind::CrossEntropy);
    let data = Data::random(&mut StdRng::seed_from_u64(4), &cfg, 5, 3, false);
    let mut scored = Trainer::<f32>::new(cfg, loss.clone(), OptimizerKind::adam(1e-2), 1)
        .unwrap()
        .with_threads(2);
    let mut plain = scored.clone();
    let x: Vec<f32> = data.x.iter().map(|&v| v as f32).collect();
    let labels = &data.classes;
    let batch32 = Batch::new(5, 3, &x, Target::Classes(labels));
    let first = scored.sequence_losses(&batch32).unwrap().to_vec();
    assert!(first.iter().all(|l| l.is_finite() && *l > 0.0), "{first:?}");
    let (a, b) = (
        scored.step(&batch32).unwrap(),
        plain.step(&batch32).unwrap(),
    );
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(scored.params, plain.params);
    // One thread and two give the same bits.
    let mut one = scored.clone().with_threads(1);
    assert_eq!(
        one.sequence_losses(&batch32).unwrap(),
        scored.sequence_losses(&batch32).unwrap()
    );
    // A label out of range is named, as `evaluate` names it.
    let mut bad = labels.clone();
    bad[4] = 9;
    let e = scored
        .sequence_losses(&Batch::new(5, 3, &x, Target::Classes(&bad)))
        .unwrap_err();
    assert!(
        matches!(e, RnnError::LabelOutOfRange { label: 9, .. }),
        "{e}"
    );
    let e = scored
        .sequence_losses(&Batch::new(5, 3, &x[1..], Target::Classes(labels)))
        .unwrap_err();
    assert!(matches!(e, RnnError::ShapeMismatch { .. }), "{e}");
}
