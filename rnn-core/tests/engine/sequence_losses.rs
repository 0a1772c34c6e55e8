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
        let (cfg, loss, kind, t, b) = (&case.cfg, &case.loss, &case.kind, case.t, case.b);
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

/// `Trainer::accuracy`: the share of scored, labelled positions whose likeliest output is
/// the label, counted by hand from `Trainer::outputs`; with sequence weights, that of the
/// batch holding each sequence as many times as its weight.
#[test]
fn accuracy_counts_the_scored_labelled_positions() {
    let mut checked = 0;
    for (k, case) in ScoringCase::all().iter().enumerate() {
        let ScoringCase {
            cfg,
            loss,
            kind,
            t,
            b,
        } = case;
        if kind.takes_values() {
            continue;
        }
        let (t, b) = (*t, *b);
        let mut tr = Trainer::<f64>::new(*cfg, loss.clone(), OptimizerKind::adam(1e-2), 3).unwrap();
        let data = case.data(&mut StdRng::seed_from_u64(k as u64 + 60));
        let batch = data.batch(t, b, *kind, true, true);
        let o = cfg.output_size;
        let y = tr.outputs(&batch).unwrap().to_vec();
        let steps = if loss.many_to_one { 1 } else { t };
        let (mut right, mut total) = (0, 0);
        for p in 0..steps * b {
            let (tt, bb) = (p / b, p % b);
            let label = data.classes[p];
            let running = loss.many_to_one || tt < data.lengths[bb];
            if !running || label == IGNORED_LABEL {
                continue;
            }
            let row = &y[p * o..][..o];
            let best = (0..o).fold(0, |m, c| if row[c] > row[m] { c } else { m });
            total += 1;
            right += usize::from(best == label);
        }
        let want = right as f64 / total as f64;
        assert_eq!(tr.accuracy(&batch).unwrap(), want, "{cfg:?} {loss:?}");
        // Integer weights count as repeated sequences.
        let mut weighted = data;
        weighted.weights = (0..b).map(|s| (s % 3) as f64).collect();
        let copies: Vec<usize> = (0..b).flat_map(|s| std::iter::repeat_n(s, s % 3)).collect();
        let mut repeated = weighted.pick(cfg, t, b, loss.many_to_one, &copies);
        repeated.weights.clear();
        let a = tr
            .accuracy(&weighted.batch(t, b, *kind, true, true))
            .unwrap();
        let r = tr
            .accuracy(&repeated.batch(t, copies.len(), *kind, true, true))
            .unwrap();
        assert!((a - r).abs() < 1e-15, "{cfg:?}: {a} vs {r}");
        checked += 1;
    }
    assert_eq!(checked, 9);
    // Float targets have no accuracy; nor has a batch that scores no label (under `sum`,
    // which allows one).
    let mut mse = Trainer::<f64>::new(
        RnnConfig::new(2, 4, 3),
        LossSpec::every_step(LossKind::Mse),
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap();
    let (x, v) = (vec![0.5; 2 * 2 * 2], vec![0.0; 2 * 2 * 3]);
    let e = mse
        .accuracy(&Batch::new(2, 2, &x, Target::Values(&v)))
        .unwrap_err();
    assert!(e.to_string().contains("accuracy needs class labels"), "{e}");
    let mut summed = Trainer::<f64>::new(
        RnnConfig::new(2, 4, 3),
        LossSpec {
            reduction: Reduction::Sum,
            ..LossSpec::every_step(LossKind::CrossEntropy)
        },
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap();
    let none = [IGNORED_LABEL; 4];
    let e = summed
        .accuracy(&Batch::new(2, 2, &x, Target::Classes(&none)))
        .unwrap_err();
    assert!(e.to_string().contains("no scored position"), "{e}");
    // A label out of range is refused with the inputs' check, before the forward pass.
    let e = summed
        .accuracy(&Batch::new(2, 2, &x, Target::Classes(&[0, 1, 3, 2])))
        .unwrap_err();
    assert!(matches!(e, RnnError::LabelOutOfRange { .. }), "{e}");
    // So is it by every other pass that reads labels, on a batch run as it is and on one
    // run longest first.
    // (Sequence 1's second step is scored under either.)
    let lengths = [1, 2];
    for bad in [
        Batch::new(2, 2, &x, Target::Classes(&[0, 1, 2, 3])),
        Batch {
            lengths: Some(&lengths),
            ..Batch::new(2, 2, &x, Target::Classes(&[0, 1, 2, 3]))
        },
    ] {
        let before = summed.params.clone();
        for (what, e) in [
            ("evaluate", summed.evaluate(&bad).map(drop)),
            ("sequence_losses", summed.sequence_losses(&bad).map(drop)),
            ("loss_and_grads", summed.loss_and_grads(&bad).map(drop)),
            ("step", summed.step(&bad).map(drop)),
            ("accuracy", summed.accuracy(&bad).map(drop)),
        ] {
            assert!(
                matches!(e, Err(RnnError::LabelOutOfRange { .. })),
                "{what}: {e:?}"
            );
        }
        assert_eq!(summed.params, before);
    }
}

/// Sequences of different lengths padded into one batch (`padding::pad`) score as each one
/// alone, and `padding::unpad` gives each its own outputs: packed-sequence semantics end to
/// end.
#[test]
fn padded_sequences_score_and_run_as_each_alone() {
    use rnn_core::padding::{pad, unpad};
    let cfg = RnnConfig::lstm(2, 6, 3).layers(2);
    let spec = LossSpec {
        reduction: Reduction::Sum,
        ..LossSpec::every_step(LossKind::CrossEntropy)
    };
    let lens = [5usize, 1, 3, 4];
    let xs: Vec<Vec<f64>> = (lens.iter().enumerate())
        .map(|(b, &l)| {
            (0..l * 2)
                .map(|k| ((k * 7 + b * 3) % 11) as f64 / 5.0 - 1.0)
                .collect()
        })
        .collect();
    let ys: Vec<Vec<usize>> = (lens.iter().enumerate())
        .map(|(b, &l)| (0..l).map(|k| (k + b) % 3).collect())
        .collect();
    let x = pad(&xs.iter().map(|s| &s[..]).collect::<Vec<_>>(), 2, 0.0).unwrap();
    let y = pad(
        &ys.iter().map(|s| &s[..]).collect::<Vec<_>>(),
        1,
        IGNORED_LABEL,
    )
    .unwrap();
    assert_eq!(x.lengths, lens);
    let mut tr = Trainer::<f64>::new(cfg, spec, OptimizerKind::sgd(0.1), 3).unwrap();
    let batch = Batch {
        lengths: Some(&x.lengths),
        ..Batch::new(x.seq_len, 4, &x.values, Target::Classes(&y.values))
    };
    let together = tr.sequence_losses(&batch).unwrap().to_vec();
    let outputs = unpad(tr.outputs(&batch).unwrap(), x.seq_len, 4, 3, &x.lengths).unwrap();
    for (b, &len) in lens.iter().enumerate() {
        let alone = Batch::new(len, 1, &xs[b], Target::Classes(&ys[b]));
        let loss = tr.sequence_losses(&alone).unwrap()[0];
        assert!(
            (together[b] - loss).abs() <= 1e-12 * loss.abs(),
            "sequence {b}"
        );
        let own = tr.outputs(&alone).unwrap();
        assert_eq!(outputs[b].len(), own.len());
        for (got, want) in outputs[b].iter().zip(own) {
            assert!((got - want).abs() <= 1e-12, "sequence {b}: {got} vs {want}");
        }
    }
}
