//! The CTC loss (`rnn_core::ctc`): its loss against a sum over every path and against
//! PyTorch's `nn.CTCLoss`, its gradient against finite differences and PyTorch's, f32 against
//! f64, what it refuses; training through it (the model's gradients against finite
//! differences, thread counts, impossible targets); greedy decoding.

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashMap;

use rnn_core::ctc::{Ctc, beam_decode, greedy_decode};
use rnn_core::io;
use rnn_core::prelude::*;
use safetensors::SafeTensors;

use crate::fixtures;

/// Random logits `[t, b, c]` of spread 2.
fn logits(rng: &mut StdRng, t: usize, b: usize, c: usize) -> Vec<f64> {
    (0..t * b * c)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect()
}

/// A target of up to `max` labels of `1..c` (class 0 the blank).
fn target(rng: &mut StdRng, max: usize, c: usize) -> Vec<usize> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random_range(1..c)).collect()
}

/// Random logits of a batch, its targets and lengths.
struct Case {
    t: usize,
    b: usize,
    c: usize,
    targets: Vec<Vec<usize>>,
    lengths: Vec<usize>,
    y: Vec<f64>,
}

impl Case {
    /// Up to `most` steps, sequences and classes (at least 2), targets of up to `labels`.
    fn random(rng: &mut StdRng, most: [usize; 3], labels: usize) -> Self {
        let t = rng.random_range(1..=most[0]);
        let b = rng.random_range(1..=most[1]);
        let c = rng.random_range(2..=most[2]);
        let targets = (0..b).map(|_| target(rng, labels, c)).collect();
        let lengths = (0..b).map(|_| rng.random_range(1..=t)).collect();
        let y = logits(rng, t, b, c);
        Self {
            t,
            b,
            c,
            targets,
            lengths,
            y,
        }
    }
}

/// Every path of `length` steps over `c` classes with the labelling it reads (blank 0) and
/// its probability under `y`'s sequence `s`.
fn every_path(y: &[f64], b: usize, c: usize, s: usize, length: usize) -> Vec<(Vec<usize>, f64)> {
    let log_softmax = |step: usize, k: usize| {
        let row = &y[(step * b + s) * c..][..c];
        row[k] - row.iter().map(|v| v.exp()).sum::<f64>().ln()
    };
    let mut paths = Vec::new();
    let mut path = vec![0usize; length];
    loop {
        let mut read = Vec::new();
        let mut previous = 0;
        for &k in &path {
            if k != 0 && k != previous {
                read.push(k);
            }
            previous = k;
        }
        let p = path
            .iter()
            .enumerate()
            .map(|(step, &k)| log_softmax(step, k))
            .sum::<f64>();
        paths.push((read, p.exp()));
        // The next path, as a number in base c.
        match path.iter().position(|&k| k + 1 < c) {
            Some(i) => {
                path[i] += 1;
                path[..i].fill(0);
            }
            None => return paths,
        }
    }
}

/// The CTC loss of one sequence by brute force: `-ln` of the summed probability of every
/// path of `length` steps over `c` classes that collapses to `target` (blank 0).
fn brute_force(
    y: &[f64],
    t: usize,
    b: usize,
    c: usize,
    s: usize,
    length: usize,
    target: &[usize],
) -> f64 {
    assert!(t >= length);
    let paths = every_path(y, b, c, s, length);
    -paths
        .iter()
        .filter(|(read, _)| read == target)
        .map(|(_, p)| p)
        .sum::<f64>()
        .ln()
}

#[test]
fn the_loss_is_the_sum_over_every_path() {
    let mut rng = StdRng::seed_from_u64(1);
    for case in 0..40 {
        let Case {
            t,
            b,
            c,
            targets,
            lengths,
            y,
        } = Case::random(&mut rng, [6, 3, 4], 3);
        let ctc = Ctc::new(&targets, c, 0).unwrap();
        let got = ctc.sequence_losses(&y, t, Some(&lengths)).unwrap();
        for s in 0..b {
            let want = brute_force(&y, t, b, c, s, lengths[s], &targets[s]);
            let what = format!(
                "case {case}: sequence {s}, target {:?} in {} steps",
                targets[s], lengths[s]
            );
            if want.is_infinite() {
                assert_eq!(got[s], f64::INFINITY, "{what}");
            } else {
                assert!(
                    (got[s] - want).abs() <= 1e-12 * (1.0 + want),
                    "{what}: {} vs {want}",
                    got[s]
                );
            }
        }
    }
}

/// Central differences of `ctc`'s reduced loss at `y` against its gradient.
fn assert_grads_match_finite_differences(
    ctc: &Ctc,
    y: &[f64],
    t: usize,
    lengths: Option<&[usize]>,
    what: &str,
) {
    let mut grads = vec![f64::NAN; y.len()];
    ctc.loss_and_grads(y, t, lengths, &mut grads).unwrap();
    let h = 1e-5;
    let mut at = y.to_vec();
    for i in 0..y.len() {
        at[i] = y[i] + h;
        let up = ctc.loss(&at, t, lengths).unwrap();
        at[i] = y[i] - h;
        let down = ctc.loss(&at, t, lengths).unwrap();
        at[i] = y[i];
        let want = (up - down) / (2.0 * h);
        assert!(
            (grads[i] - want).abs() <= 1e-7,
            "{what}: dlogits[{i}] = {} vs {want}",
            grads[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(2);
    for case in 0..24 {
        let Case {
            t,
            c,
            targets,
            lengths,
            y,
            ..
        } = Case::random(&mut rng, [9, 4, 11], 4);
        let reduction = if case % 2 == 0 {
            Reduction::Mean
        } else {
            Reduction::Sum
        };
        // Every other case puts the blank last (its labels moved out of its way).
        let (ctc, targets) = match case % 4 < 2 {
            true => (Ctc::new(&targets, c, 0).unwrap(), targets),
            false => {
                let moved: Vec<Vec<usize>> = targets
                    .iter()
                    .map(|l| l.iter().map(|k| k - 1).collect())
                    .collect();
                (Ctc::new(&moved, c, c - 1).unwrap(), moved)
            }
        };
        let ctc = ctc.with_reduction(reduction).zero_infinity();
        let what = format!("case {case}: T {t}, C {c}, {targets:?} in {lengths:?}, {reduction:?}");
        assert_grads_match_finite_differences(&ctc, &y, t, Some(&lengths), &what);
        assert_grads_match_finite_differences(&ctc, &y, t, None, &what);
    }
}

#[test]
fn padded_steps_and_impossible_targets_take_no_gradient() {
    // Sequence 1 has 2 steps of 5, sequence 0 needs 4 (1, blank, 1, 2) and has 3.
    let ctc = Ctc::new(&[vec![1, 1, 2], vec![2]], 3, 0)
        .unwrap()
        .with_reduction(Reduction::Sum);
    let y = logits(&mut StdRng::seed_from_u64(3), 5, 2, 3);
    let lengths = [3, 2];
    let losses = ctc.sequence_losses(&y, 5, Some(&lengths)).unwrap();
    assert_eq!(losses[0], f64::INFINITY);
    assert!(losses[1].is_finite() && losses[1] > 0.0);
    let mut d = vec![f64::NAN; y.len()];
    // Without zero_infinity the loss is +inf: a trainer rejects such a step.
    assert_eq!(
        ctc.loss_and_grads(&y, 5, Some(&lengths), &mut d).unwrap(),
        f64::INFINITY
    );
    let ctc = ctc.zero_infinity();
    let loss = ctc.loss_and_grads(&y, 5, Some(&lengths), &mut d).unwrap();
    assert_eq!(loss, losses[1]);
    for (row, grad) in d.chunks_exact(3).enumerate() {
        let (t, s) = (row / 2, row % 2);
        let live = s == 1 && t < 2;
        assert_eq!(
            grad.iter().any(|&g| g != 0.0),
            live,
            "step {t}, sequence {s}: {grad:?}"
        );
    }
    assert_eq!(
        ctc.sequence_losses(&y, 5, Some(&lengths)).unwrap(),
        [0.0, losses[1]]
    );
}

#[test]
fn matches_pytorch() {
    for name in ["mixed", "blank_last", "zero_infinity"] {
        let bytes = std::fs::read(fixtures::path(&format!("ctc_{name}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let (y, shape) = io::float_tensor::<f64>(&st, "logits").unwrap();
        let (t, b, c) = (shape[0], shape[1], shape[2]);
        let flat = fixtures::classes(&st, "targets");
        let target_lengths = fixtures::classes(&st, "target_lengths");
        let lengths = fixtures::classes(&st, "input_lengths");
        let mut targets = Vec::new();
        let mut start = 0;
        for n in target_lengths {
            targets.push(flat[start..start + n].to_vec());
            start += n;
        }
        let mut ctc = Ctc::new(&targets, c, meta["blank"].parse().unwrap()).unwrap();
        if meta["zero_infinity"] == "True" {
            ctc = ctc.zero_infinity();
        }
        let (want, _) = io::float_tensor::<f64>(&st, "loss_none").unwrap();
        let got = ctc.sequence_losses(&y, t, Some(&lengths)).unwrap();
        for s in 0..b {
            assert!(
                (got[s] - want[s]).abs() <= 1e-12 * (1.0 + want[s]),
                "{name}: sequence {s}: {} vs {}",
                got[s],
                want[s]
            );
        }
        for (reduction, key) in [(Reduction::Mean, "mean"), (Reduction::Sum, "sum")] {
            let ctc = ctc.clone().with_reduction(reduction);
            let mut d = vec![0.0; y.len()];
            let loss = ctc.loss_and_grads(&y, t, Some(&lengths), &mut d).unwrap();
            let (want, _) = io::float_tensor::<f64>(&st, &format!("loss_{key}")).unwrap();
            assert!(
                (loss - want[0]).abs() <= 1e-12 * (1.0 + want[0]),
                "{name} {key}: {loss} vs {}",
                want[0]
            );
            let (want, _) = io::float_tensor::<f64>(&st, &format!("grad_{key}")).unwrap();
            for (i, (g, w)) in d.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12,
                    "{name} {key}: dlogits[{i}] = {g} vs PyTorch {w}"
                );
            }
        }
    }
}

#[test]
fn f32_matches_f64() {
    let mut rng = StdRng::seed_from_u64(4);
    let (t, b, c) = (40, 5, 17);
    let targets: Vec<Vec<usize>> = (0..b).map(|_| target(&mut rng, 12, c)).collect();
    let y = logits(&mut rng, t, b, c);
    let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
    let lengths = [40, 33, 17, 40, 25];
    let ctc = Ctc::new(&targets, c, 0).unwrap();
    let (mut d64, mut d32) = (vec![0.0f64; y.len()], vec![0.0f32; y.len()]);
    let l64 = ctc.loss_and_grads(&y, t, Some(&lengths), &mut d64).unwrap();
    let l32 = ctc
        .loss_and_grads(&y32, t, Some(&lengths), &mut d32)
        .unwrap();
    assert!(((l32 as f64) - l64).abs() <= 1e-5 * l64, "{l32} vs {l64}");
    for (i, (a, b)) in d32.iter().zip(&d64).enumerate() {
        assert!(((*a as f64) - b).abs() <= 1e-6, "dlogits[{i}] = {a} vs {b}");
    }
}

#[test]
fn bad_targets_and_logits_are_refused() {
    assert!(matches!(
        Ctc::new::<Vec<usize>>(&[], 3, 0),
        Err(RnnError::Empty { what: "targets" })
    ));
    assert!(matches!(
        Ctc::new(&[[1]], 0, 0),
        Err(RnnError::Empty { what: "classes" })
    ));
    assert!(matches!(
        Ctc::new(&[vec![1], vec![2, 3]], 3, 0),
        Err(RnnError::LabelOutOfRange {
            t: 1,
            b: 1,
            label: 3,
            classes: 3
        })
    ));
    assert!(
        matches!(Ctc::new(&[[1, 0]], 3, 0), Err(RnnError::Config(m)) if m.contains("blank (0) at position 1"))
    );
    assert!(matches!(Ctc::new(&[[1]], 3, 3), Err(RnnError::Config(m)) if m.contains("blank 3")));
    assert!(matches!(Ctc::new(&[[1]], 3, 1), Err(RnnError::Config(_))));

    let ctc = Ctc::new(&[vec![1], vec![2]], 3, 0).unwrap();
    let y = vec![0.5f64; 4 * 2 * 3];
    let mut d = vec![7.0; y.len()];
    let refused = |r: rnn_core::Result<f64>, d: &[f64]| {
        assert!(d.iter().all(|&v| v == 7.0), "dlogits written on an error");
        r.unwrap_err()
    };
    let e = refused(ctc.loss_and_grads(&y[1..], 4, None, &mut d[1..]), &d);
    assert!(
        matches!(e, RnnError::ShapeMismatch { ref what, .. } if what == "CTC logits"),
        "{e}"
    );
    let e = refused(ctc.loss_and_grads(&y, 0, None, &mut d), &d);
    assert!(matches!(e, RnnError::Empty { what: "steps" }), "{e}");
    let e = refused(ctc.loss_and_grads(&y, 4, None, &mut d[1..]), &d);
    assert!(
        matches!(e, RnnError::ShapeMismatch { ref what, .. } if what == "CTC dlogits"),
        "{e}"
    );
    let e = refused(ctc.loss_and_grads(&y, 4, Some(&[4]), &mut d), &d);
    assert!(
        matches!(e, RnnError::ShapeMismatch { ref what, .. } if what == "lengths"),
        "{e}"
    );
    let e = refused(ctc.loss_and_grads(&y, 4, Some(&[4, 5]), &mut d), &d);
    assert!(
        matches!(
            e,
            RnnError::LengthOutOfRange {
                index: 1,
                length: 5,
                seq_len: 4
            }
        ),
        "{e}"
    );
    let e = refused(ctc.loss_and_grads(&y, 4, Some(&[0, 4]), &mut d), &d);
    assert!(
        matches!(
            e,
            RnnError::LengthOutOfRange {
                index: 0,
                length: 0,
                ..
            }
        ),
        "{e}"
    );
    // A NaN at a scored step is refused; past a sequence's length it is not read.
    let mut bad = y.clone();
    bad[(2 * 2 + 1) * 3 + 2] = f64::NAN; // step 2, sequence 1, class 2
    let e = refused(ctc.loss_and_grads(&bad, 4, None, &mut d), &d);
    assert!(
        matches!(
            e,
            RnnError::NonFiniteInput {
                what: "CTC logits",
                index: 17,
                ..
            }
        ),
        "{e}"
    );
    let loss = ctc.loss_and_grads(&bad, 4, Some(&[4, 2]), &mut d).unwrap();
    assert!(loss.is_finite() && d.iter().all(|v| v.is_finite()));
}

#[test]
fn greedy_decoding_merges_repeats_and_drops_blanks() {
    // [T = 6, B = 2, C = 4]; sequence 0 likeliest 1 1 0 1 3 3, sequence 1 2 0 2 2 0 0.
    let picks = [[1, 2], [1, 0], [0, 2], [1, 2], [3, 0], [3, 0]];
    let mut y = vec![0.0f32; 6 * 2 * 4];
    for (t, row) in picks.iter().enumerate() {
        for (s, &k) in row.iter().enumerate() {
            y[(t * 2 + s) * 4 + k] = 1.0;
        }
    }
    assert_eq!(
        greedy_decode(&y, 6, 2, 4, 0, None).unwrap(),
        [vec![1, 1, 3], vec![2, 2]]
    );
    assert_eq!(
        greedy_decode(&y, 6, 2, 4, 0, Some(&[4, 2])).unwrap(),
        [vec![1, 1], vec![2]]
    );
    // Blank 3: sequence 0 reads 1 0 1 (0 is a label now), sequence 1 reads 2 0 2 0.
    assert_eq!(
        greedy_decode(&y, 6, 2, 4, 3, None).unwrap(),
        [vec![1, 0, 1], vec![2, 0, 2, 0]]
    );
    // A tie goes to the first class.
    assert_eq!(
        greedy_decode(&[0.5f32, 0.5, 0.5], 1, 1, 3, 2, None).unwrap(),
        [vec![0]]
    );
    assert!(matches!(
        greedy_decode(&y, 6, 2, 4, 4, None),
        Err(RnnError::Config(_))
    ));
    assert!(matches!(
        greedy_decode(&y, 5, 2, 4, 0, None),
        Err(RnnError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        greedy_decode(&y, 6, 2, 4, 0, Some(&[7, 1])),
        Err(RnnError::LengthOutOfRange { .. })
    ));
    assert!(matches!(
        greedy_decode::<f32>(&[], 0, 2, 4, 0, None),
        Err(RnnError::Empty { what: "steps" })
    ));
    // A NaN where a sequence is read is refused; past its length it is not read.
    let mut bad = y.clone();
    bad[(3 * 2 + 1) * 4] = f32::NAN; // step 3, sequence 1
    assert!(matches!(
        greedy_decode(&bad, 6, 2, 4, 0, None),
        Err(RnnError::NonFiniteInput { index: 28, .. })
    ));
    assert!(matches!(
        beam_decode(&bad, 6, 2, 4, 0, None, 4),
        Err(RnnError::NonFiniteInput { .. })
    ));
    assert!(greedy_decode(&bad, 6, 2, 4, 0, Some(&[6, 2])).is_ok());
}

#[test]
fn a_wide_beam_finds_the_likeliest_labelling() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut greedy_missed = 0;
    for case in 0..60 {
        let Case {
            t,
            b,
            c,
            lengths,
            y,
            ..
        } = Case::random(&mut rng, [6, 3, 4], 0);
        let beam = beam_decode(&y, t, b, c, 0, Some(&lengths), 10_000).unwrap();
        let greedy = greedy_decode(&y, t, b, c, 0, Some(&lengths)).unwrap();
        for s in 0..b {
            let mut by_labelling: HashMap<Vec<usize>, f64> = HashMap::new();
            for (read, p) in every_path(&y, b, c, s, lengths[s]) {
                *by_labelling.entry(read).or_default() += p;
            }
            let (best, p) = by_labelling
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            assert_eq!(
                &beam[s], best,
                "case {case}, sequence {s}: p {p} vs {}",
                by_labelling[&beam[s]]
            );
            greedy_missed += usize::from(&greedy[s] != best);
        }
    }
    // The cases include some where the likeliest path does not read the likeliest labelling.
    assert!(greedy_missed > 0);
}

#[test]
fn narrow_beams_and_their_refusals() {
    let mut rng = StdRng::seed_from_u64(8);
    let (t, b, c) = (30, 4, 6);
    let y: Vec<f32> = logits(&mut rng, t, b, c)
        .iter()
        .map(|&v| 3.0 * v as f32)
        .collect();
    let lengths = [30, 12, 1, 25];
    // Width 1 keeps one prefix a step: it reads a labelling no likelier than a wider beam's.
    let one = beam_decode(&y, t, b, c, 0, Some(&lengths), 1).unwrap();
    let wide = beam_decode(&y, t, b, c, 0, Some(&lengths), 64).unwrap();
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let ctc = |labels: &[Vec<usize>]| {
        Ctc::new(labels, c, 0)
            .unwrap()
            .sequence_losses(&y64, t, Some(&lengths))
            .unwrap()
    };
    for (s, (narrow, wide)) in ctc(&one).iter().zip(ctc(&wide)).enumerate() {
        assert!(wide <= narrow + 1e-9, "sequence {s}: {wide} vs {narrow}");
    }
    // Past a sequence's length nothing is read: sequence 2 reads at most one label.
    assert!(wide[2].len() <= 1);
    // Blank last: the same labelling, classes renamed.
    let mut moved = vec![0.0f32; y.len()];
    for (row, from) in moved.chunks_exact_mut(c).zip(y.chunks_exact(c)) {
        row[c - 1] = from[0];
        row[..c - 1].copy_from_slice(&from[1..]);
    }
    let renamed = beam_decode(&moved, t, b, c, c - 1, Some(&lengths), 64).unwrap();
    let back: Vec<Vec<usize>> = renamed
        .iter()
        .map(|l| l.iter().map(|k| k + 1).collect())
        .collect();
    assert_eq!(back, wide);
    assert!(
        matches!(beam_decode(&y, t, b, c, 0, None, 0), Err(RnnError::Config(m)) if m.contains("width"))
    );
    assert!(matches!(
        beam_decode(&y, t, b, c, c, None, 4),
        Err(RnnError::Config(_))
    ));
    assert!(matches!(
        beam_decode(&y[1..], t, b, c, 0, None, 4),
        Err(RnnError::ShapeMismatch { .. })
    ));
}

/// A trainer of `cfg` (heads of `c` classes) with an every-step spec.
fn trainer(cfg: RnnConfig, seed: u64) -> Trainer<f64> {
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    Trainer::<f64>::new(cfg, spec, OptimizerKind::sgd(0.1), seed).unwrap()
}

#[test]
fn training_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    for (k, cfg) in [
        RnnConfig::new(3, 5, 4),
        RnnConfig::lstm(3, 4, 5).layers(2),
        RnnConfig::gru(3, 5, 3).bidirectional(),
    ]
    .into_iter()
    .enumerate()
    {
        let c = cfg.output_size;
        let (t, b) = (6, 3);
        let x: Vec<f64> = (0..t * b * 3)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let targets: Vec<Vec<usize>> = (0..b).map(|_| target(&mut rng, 2, c)).collect();
        let lengths = [6, 3, 5];
        let batch = Batch {
            lengths: Some(&lengths),
            ..Batch::new(t, b, &x, Target::None)
        };
        let ctc = Ctc::new(&targets, c, 0).unwrap().zero_infinity();
        let mut tr = trainer(cfg, k as u64);
        let loss = tr
            .loss_and_grads_with(&batch, |y, dy| {
                ctc.loss_and_grads(y, t, Some(&lengths), dy).unwrap()
            })
            .unwrap();
        assert_eq!(loss, ctc.evaluate(&mut tr, &batch).unwrap());
        let grads = tr.grads.to_vec();
        let h = 1e-6;
        for i in 0..tr.params.len() {
            let p = tr.params[i];
            tr.params[i] = p + h;
            let up = ctc.evaluate(&mut tr, &batch).unwrap();
            tr.params[i] = p - h;
            let down = ctc.evaluate(&mut tr, &batch).unwrap();
            tr.params[i] = p;
            let want = (up - down) / (2.0 * h);
            assert!(
                (grads[i] - want).abs() <= 1e-7 * (1.0 + want.abs()),
                "{cfg:?}: param {i}: {} vs {want}",
                grads[i]
            );
        }
    }
}

#[test]
fn steps_are_the_same_on_one_thread_or_two() {
    let mut rng = StdRng::seed_from_u64(6);
    let cfg = RnnConfig::lstm(4, 96, 9);
    let (t, b) = (20, 16);
    let x: Vec<f32> = (0..t * b * 4)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let targets: Vec<Vec<usize>> = (0..b).map(|_| target(&mut rng, 6, 9)).collect();
    let ctc = Ctc::new(&targets, 9, 0).unwrap();
    let batch = Batch::new(t, b, &x, Target::None);
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    let run = |threads: usize| {
        let mut tr = Trainer::<f32>::new(cfg, spec.clone(), OptimizerKind::adam(1e-2), 7)
            .unwrap()
            .with_threads(threads);
        let losses: Vec<f32> = (0..3)
            .map(|_| ctc.step(&mut tr, &batch).unwrap().loss)
            .collect();
        (losses, tr.params.to_vec())
    };
    let (one, two) = (run(1), run(2));
    assert!(one.0[2] < one.0[0], "{:?}", one.0);
    assert_eq!(one, two);
}

#[test]
fn trainers_and_batches_it_cannot_read_are_refused() {
    let cfg = RnnConfig::gru(2, 4, 3);
    let x = vec![0.5f64; 4 * 2 * 2];
    let batch = Batch::new(4, 2, &x, Target::None);
    let ctc = Ctc::new(&[vec![1], vec![2]], 3, 0).unwrap();
    let mut tr = trainer(cfg, 0);
    let before = tr.params.to_vec();
    let many_to_one = LossSpec::last_step(LossKind::CrossEntropy);
    let mut last = Trainer::<f64>::new(cfg, many_to_one, OptimizerKind::sgd(0.1), 0).unwrap();
    assert!(
        matches!(ctc.step(&mut last, &batch), Err(RnnError::Config(m)) if m.contains("every_step"))
    );
    let wide = Ctc::new(&[vec![1], vec![3]], 4, 0).unwrap();
    assert!(
        matches!(wide.step(&mut tr, &batch), Err(RnnError::ShapeMismatch { what, .. }) if what.contains("head"))
    );
    let three = Ctc::new(&[vec![1], vec![2], vec![]], 3, 0).unwrap();
    assert!(
        matches!(three.accumulate(&mut tr, &batch), Err(RnnError::ShapeMismatch { what, .. }) if what.contains("sequences"))
    );
    let late = Batch {
        score_from: 1,
        ..batch
    };
    assert!(
        matches!(ctc.evaluate(&mut tr, &late), Err(RnnError::Config(m)) if m.contains("from step 1"))
    );
    // A target no path of its steps can read: the step is rejected, weights as they were.
    let long = Ctc::new(&[vec![1, 1, 2], vec![2]], 3, 0).unwrap();
    let short = Batch {
        lengths: Some(&[3, 4]),
        ..Batch::new(4, 2, &x, Target::None)
    };
    assert!(matches!(
        long.step(&mut tr, &short),
        Err(RnnError::NonFinite { .. })
    ));
    assert_eq!(tr.params.to_vec(), before);
    // Counted as 0, the other sequence trains.
    let report = long.clone().zero_infinity().step(&mut tr, &short).unwrap();
    assert!(report.loss > 0.0 && tr.params.to_vec() != before);
    // Accumulated micro-batches make the update of their mean.
    let mut once = tr.clone();
    let want = ctc.step(&mut once, &batch).unwrap();
    ctc.accumulate(&mut tr, &batch).unwrap();
    ctc.accumulate(&mut tr, &batch).unwrap();
    assert_eq!(tr.apply_accumulated().unwrap().loss, want.loss);
    assert_eq!(tr.params, once.params);
}

/// The fewest steps that read `target`: a step per label and one per blank between equal
/// neighbours.
fn fewest_steps(target: &[usize]) -> usize {
    target.len() + target.windows(2).filter(|w| w[0] == w[1]).count()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// At any scale of logits (at 2000 every path's probability leaves f64's range and the
    /// log-space recursions take over): a loss is infinite exactly when the target needs more
    /// steps than its sequence has, else finite and non-negative; each scored step's
    /// gradient is `softmax - γ` with `γ` a distribution (entries in [-1, 1], summing to 0);
    /// steps past a length and impossible targets take none. (At 2000 the log-space
    /// gradient subtracts exponents of 10^4-10^5, so it is exact to 1e-11, not 1e-16.)
    #[test]
    fn losses_and_gradients_keep_their_shape_at_any_scale(
        (t, b, c) in (1usize..40, 1usize..5, 2usize..12),
        scale in proptest::sample::select(vec![0.1, 3.0, 50.0, 2000.0]),
        seed in 0u64..1000,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let targets: Vec<Vec<usize>> = (0..b).map(|_| target(&mut rng, 15, c)).collect();
        let lengths: Vec<usize> = (0..b).map(|_| rng.random_range(1..=t)).collect();
        let y: Vec<f64> = logits(&mut rng, t, b, c).iter().map(|v| v * scale).collect();
        let ctc = Ctc::new(&targets, c, 0).unwrap().with_reduction(Reduction::Sum);
        let losses = ctc.sequence_losses(&y, t, Some(&lengths)).unwrap();
        for s in 0..b {
            let possible = fewest_steps(&targets[s]) <= lengths[s];
            proptest::prop_assert_eq!(losses[s].is_finite(), possible, "sequence {}", s);
            proptest::prop_assert!(!possible || losses[s] >= -1e-12, "{}", losses[s]);
        }
        let mut d = vec![f64::NAN; y.len()];
        let total = ctc.zero_infinity().loss_and_grads(&y, t, Some(&lengths), &mut d).unwrap();
        let finite: f64 = losses.iter().filter(|l| l.is_finite()).sum();
        proptest::prop_assert!((total - finite).abs() <= 1e-9 * (1.0 + finite));
        for (row, grad) in d.chunks_exact(c).enumerate() {
            let (step, s) = (row / b, row % b);
            let scored = step < lengths[s] && losses[s].is_finite();
            let sum: f64 = grad.iter().sum();
            proptest::prop_assert!(grad.iter().all(|g| (-1.0 - 1e-9..=1.0 + 1e-9).contains(g)), "{:?}", grad);
            proptest::prop_assert!(sum.abs() <= 1e-9, "step {}, sequence {}: sums to {}", step, s, sum);
            if !scored {
                proptest::prop_assert!(grad.iter().all(|&g| g == 0.0), "step {}, sequence {}: {:?}", step, s, grad);
            }
        }
    }
}

/// A path that falls past f64's range behind the others (logits drawn from -100..100) and
/// is the one left when they die out: the scaled recursions lost it and gave sequence 1 a
/// loss 95 nats too high (found by the property test above). The losses are PyTorch 2.15's
/// (`ctc_loss` in f64, reduction "sum", one sequence at a time).
#[test]
fn a_path_that_falls_behind_and_then_leads_is_kept() {
    let (t, b, c) = (25, 3, 7);
    let mut rng = StdRng::seed_from_u64(453);
    let targets: Vec<Vec<usize>> = (0..b).map(|_| target(&mut rng, 15, c)).collect();
    let lengths: Vec<usize> = (0..b).map(|_| rng.random_range(1..=t)).collect();
    let y: Vec<f64> = logits(&mut rng, t, b, c).iter().map(|v| v * 50.0).collect();
    assert_eq!((targets[1].len(), lengths[1]), (14, 16));
    let ctc = Ctc::new(&targets, c, 0)
        .unwrap()
        .with_reduction(Reduction::Sum);
    let losses = ctc.sequence_losses(&y, t, Some(&lengths)).unwrap();
    let torch = [156.50439908599975, 1374.2775233153013, f64::INFINITY];
    for (s, (ours, torch)) in losses.iter().zip(torch).enumerate() {
        assert!(
            ours == &torch || (ours - torch).abs() <= 1e-9 * torch,
            "sequence {s}: {ours} vs {torch}"
        );
    }
    let mut d = vec![0.0; y.len()];
    let total = ctc
        .zero_infinity()
        .loss_and_grads(&y, t, Some(&lengths), &mut d);
    assert!((total.unwrap() - (torch[0] + torch[1])).abs() <= 1e-9 * torch[1]);
}
