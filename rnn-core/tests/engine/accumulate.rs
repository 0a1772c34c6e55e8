//! Gradient accumulation (`Trainer::accumulate`, `apply_accumulated`): micro-batches make the
//! update of the one batch that holds them all, for every cell, loss, reduction and option
//! that decides how a mean is taken; misuse and non-finite micro-batches are refused with
//! the weights untouched.

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::IGNORED_LABEL;
use rnn_core::prelude::*;

use crate::common::{Data, ScoringCase};

/// One case, its batch split at `cuts`, with or without sequence weights.
struct Case {
    scoring: ScoringCase,
    cuts: &'static [usize],
    weighted: bool,
}

/// The parameters after `updates` updates, each either one step on the whole batch or the
/// batch's micro-batches accumulated, with the reports' losses and gradient norms.
fn train(case: &Case, accumulate: bool, updates: usize) -> (Vec<f64>, Vec<(f64, f64)>) {
    let ScoringCase {
        cfg,
        loss,
        kind,
        t,
        b,
    } = &case.scoring;
    let (t, b) = (*t, *b);
    let mut tr = Trainer::<f64>::new(*cfg, loss.clone(), OptimizerKind::adam(1e-2), 5)
        .unwrap()
        .with_clip(Clip::Norm(0.5));
    let mut rng = StdRng::seed_from_u64(11);
    let mut reports = Vec::new();
    for _ in 0..updates {
        let data = case.scoring.data(&mut rng);
        let data = if case.weighted { data.weighted() } else { data };
        let report = if accumulate {
            let bounds: Vec<usize> = [0]
                .iter()
                .chain(case.cuts.iter())
                .chain([b].iter())
                .copied()
                .collect();
            for w in bounds.windows(2) {
                let part = data.sequences(cfg, t, b, loss.many_to_one, &(w[0]..w[1]));
                let width = w[1] - w[0];
                tr.accumulate(&part.batch(t, width, *kind, true, true))
                    .unwrap();
            }
            assert_eq!(tr.accumulated.micro_batches(), bounds.len() as u64 - 1);
            tr.apply_accumulated().unwrap()
        } else {
            tr.step(&data.batch(t, b, *kind, true, true)).unwrap()
        };
        assert_eq!(tr.accumulated.micro_batches(), 0);
        reports.push((report.loss, report.grad_norm));
    }
    (tr.params.to_vec(), reports)
}

fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-11 * (1.0 + y.abs()),
            "{what}[{i}]: accumulated {x} against one batch {y}"
        );
    }
}

#[test]
fn micro_batches_make_the_update_of_one_batch() {
    // Uneven cuts, one per case of each cell.
    let cuts: [&'static [usize]; 5] = [&[3, 4], &[1], &[2, 5], &[2], &[1, 2, 3]];
    // Every other case with sequence weights, a different half for each cell.
    let cases: Vec<Case> = ScoringCase::all()
        .into_iter()
        .zip(cuts.into_iter().cycle())
        .enumerate()
        .map(|(k, (scoring, cuts))| Case {
            scoring,
            cuts,
            weighted: k % 2 == 1,
        })
        .collect();
    for case in &cases {
        let (whole, whole_reports) = train(case, false, 3);
        let (parts, part_reports) = train(case, true, 3);
        let what = format!(
            "{:?} {:?} cuts {:?} weighted {}",
            case.scoring.cfg, case.scoring.loss, case.cuts, case.weighted
        );
        for ((l1, n1), (l2, n2)) in part_reports.iter().zip(&whole_reports) {
            assert_close(&format!("loss of {what}"), &[*l1], &[*l2]);
            assert_close(&format!("gradient norm of {what}"), &[*n1], &[*n2]);
        }
        assert_close(&format!("parameters of {what}"), &parts, &whole);
    }
}

/// A small trainer and batch for the tests of order and errors.
fn small(loss: LossSpec) -> (Trainer<f64>, Data) {
    let cfg = RnnConfig::lstm(3, 6, 4).layers(2);
    let tr = Trainer::<f64>::new(cfg, loss.clone(), OptimizerKind::adam(1e-2), 1).unwrap();
    let data = Data::random(&mut StdRng::seed_from_u64(2), &cfg, 4, 3, loss.many_to_one);
    (tr, data)
}

#[test]
fn a_lone_micro_batch_is_a_step_and_dropout_differs_between_micro_batches() {
    let (tr, data) = small(LossSpec::every_step(LossKind::Mse));
    let tr = tr.with_dropout(Dropout::new(0.4, 9).unwrap());
    let batch = data.batch(4, 3, LossKind::Mse, true, false);
    let (mut stepped, mut accumulated) = (tr.clone(), tr);
    let report = stepped.step(&batch).unwrap();
    // The first micro-batch drops what the step drops.
    let first = accumulated.accumulate(&batch).unwrap();
    assert!((first - report.loss).abs() < 1e-14 * report.loss);
    let applied = accumulated.apply_accumulated().unwrap();
    assert!((applied.loss - report.loss).abs() < 1e-14 * report.loss);
    assert_close("lone micro-batch", &accumulated.params, &stepped.params);
    // The same sequences again as a second micro-batch are dropped differently.
    let again = accumulated.accumulate(&batch).unwrap();
    let second = accumulated.accumulate(&batch).unwrap();
    assert_ne!(
        again, second,
        "the second micro-batch drew the first one's masks"
    );
    // Without dropout they are the same sums.
    let (mut plain, _) = small(LossSpec::every_step(LossKind::Mse));
    assert_eq!(
        plain.accumulate(&batch).unwrap(),
        plain.accumulate(&batch).unwrap()
    );
}

#[test]
fn misuse_is_refused_and_leaves_the_weights() {
    let (mut tr, data) = small(LossSpec::every_step(LossKind::Mse));
    let batch = data.batch(4, 3, LossKind::Mse, true, false);
    assert!(matches!(
        tr.apply_accumulated(),
        Err(RnnError::Accumulation(_))
    ));
    tr.accumulate(&batch).unwrap();
    let before = tr.params.to_vec();
    // A plain step or update would leave the waiting micro-batch behind.
    assert!(matches!(tr.step(&batch), Err(RnnError::Accumulation(_))));
    assert!(matches!(tr.update(1.0), Err(RnnError::Accumulation(_))));
    assert_eq!(tr.params.to_vec(), before);
    assert_eq!((tr.optimizer.steps, tr.accumulated.micro_batches()), (0, 1));
    tr.apply_accumulated().unwrap();
    assert_eq!(tr.optimizer.steps, 1);
    // A bad micro-batch is refused without dropping the good ones.
    tr.accumulate(&batch).unwrap();
    let short = data.batch(4, 2, LossKind::Mse, true, false);
    assert!(matches!(
        tr.accumulate(&short),
        Err(RnnError::ShapeMismatch { .. })
    ));
    assert_eq!(tr.accumulated.micro_batches(), 1);
    tr.step(&batch).unwrap_err();
    tr.apply_accumulated().unwrap();
    tr.step(&batch).unwrap();
}

#[test]
fn a_non_finite_micro_batch_rejects_the_update() {
    let (mut tr, mut data) = small(LossSpec::every_step(LossKind::Mse));
    tr.accumulate(&data.batch(4, 3, LossKind::Mse, true, false))
        .unwrap();
    let (params, state) = (tr.params.to_vec(), tr.optimizer.clone());
    // Finite targets whose squared error overflows.
    data.values.iter_mut().for_each(|v| *v = 1e300);
    let err = tr
        .accumulate(&data.batch(4, 3, LossKind::Mse, true, false))
        .unwrap_err();
    assert!(
        matches!(&err, RnnError::NonFinite { what, step: 0 } if what.contains("micro-batch 1")),
        "{err}"
    );
    // The update is rejected: the micro-batches before it are dropped too.
    assert_eq!(tr.accumulated.micro_batches(), 0);
    assert!(matches!(
        tr.apply_accumulated(),
        Err(RnnError::Accumulation(_))
    ));
    assert_eq!(tr.params.to_vec(), params);
    assert_eq!(format!("{:?}", tr.optimizer), format!("{state:?}"));
}

#[test]
fn a_mean_counts_the_positions_of_all_micro_batches() {
    let loss = LossSpec::every_step(LossKind::CrossEntropy);
    let (mut tr, mut data) = small(loss.clone());
    let ce = LossKind::CrossEntropy;
    // A micro-batch that scores nothing is allowed, and adds nothing.
    data.classes.fill(IGNORED_LABEL);
    let nothing = data.batch(4, 3, ce, true, false);
    assert!(matches!(tr.step(&nothing), Err(RnnError::Config(_))));
    assert_eq!(tr.accumulate(&nothing).unwrap(), 0.0);
    let before = tr.params.to_vec();
    // Together they must score something.
    assert!(matches!(tr.apply_accumulated(), Err(RnnError::Config(_))));
    assert_eq!(tr.params.to_vec(), before);
    assert_eq!(tr.accumulated.micro_batches(), 0);

    let (mut reference, mut data) = small(loss);
    tr = reference.clone();
    data.classes
        .iter_mut()
        .enumerate()
        .for_each(|(k, c)| *c = k % 4);
    let scored = data.batch(4, 3, ce, true, false);
    let mut blank = Data {
        classes: vec![IGNORED_LABEL; 12],
        ..data.sequences(&tr.config, 4, 3, false, &(0..3))
    };
    blank.x.iter_mut().for_each(|v| *v = -*v);
    tr.accumulate(&blank.batch(4, 3, ce, true, false)).unwrap();
    let own = tr.accumulate(&scored).unwrap();
    let report = tr.apply_accumulated().unwrap();
    let alone = reference.step(&scored).unwrap();
    assert!((own - alone.loss).abs() < 1e-14 && (report.loss - alone.loss).abs() < 1e-14);
    assert_close("with a blank micro-batch", &tr.params, &reference.params);
}

#[test]
fn accumulation_is_bitwise_the_same_on_one_and_two_threads() {
    let run = |threads: usize| {
        let cfg = RnnConfig::gru(8, 96, 5).layers(2);
        let loss = LossSpec::every_step(LossKind::CrossEntropy);
        let mut tr = Trainer::<f32>::new(cfg, loss, OptimizerKind::adamw(1e-2), 3)
            .unwrap()
            .with_clip(Clip::Norm(1.0))
            .with_unit_split(UnitSplit::Halves)
            .with_dropout(Dropout::new(0.3, 4).unwrap())
            .with_threads(threads);
        let (t, b) = (6, 8);
        assert_eq!(tr.threads_for(t, b), threads);
        for update in 0..3 {
            for m in 0..3 {
                let x: Vec<f32> = (0..t * b * 8)
                    .map(|k| (((k + 31 * update + 7 * m) * 7919 % 1000) as f32) / 500.0 - 1.0)
                    .collect();
                let y: Vec<usize> = (0..t * b).map(|k| (k + m) * 13 % 5).collect();
                tr.accumulate(&Batch::new(t, b, &x, Target::Classes(&y)))
                    .unwrap();
            }
            tr.apply_accumulated().unwrap();
        }
        tr.params.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    };
    assert!(run(1) == run(2), "weights differ between 1 and 2 threads");
}
