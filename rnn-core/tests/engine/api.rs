//! The public API's promises: typed errors for bad input, rejected non-finite steps that
//! leave everything untouched, bitwise determinism across thread counts, checkpoints.

use crate::common::scratch_dir;
use rnn_core::config::Cell;
use rnn_core::dropout::Dropout;
use rnn_core::io;
use rnn_core::prelude::*;
use std::sync::Arc;

fn trainer(opt: OptimizerKind<f32>) -> Trainer<f32> {
    Trainer::new(
        RnnConfig::new(3, 8, 4).layers(2),
        LossSpec::every_step(LossKind::CrossEntropy),
        opt,
        7,
    )
    .unwrap()
}

fn data(t: usize, b: usize) -> (Vec<f32>, Vec<usize>) {
    let x = (0..t * b * 3)
        .map(|k| ((k * 37 % 100) as f32) / 50.0 - 1.0)
        .collect();
    let y = (0..t * b).map(|k| k * 7 % 4).collect();
    (x, y)
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut tr = trainer(OptimizerKind::sgd(0.1));
    let (x, y) = data(5, 2);
    let ok = Batch::new(5, 2, &x, Target::Classes(&y));
    let err = |b: Batch<f32>, tr: &mut Trainer<f32>| tr.step(&b).unwrap_err();

    assert!(matches!(
        err(Batch { seq_len: 0, ..ok }, &mut tr),
        RnnError::Empty {
            what: "sequence length T"
        }
    ));
    assert!(matches!(
        err(Batch { batch: 0, ..ok }, &mut tr),
        RnnError::Empty {
            what: "batch size B"
        }
    ));
    let e = err(Batch { x: &x[1..], ..ok }, &mut tr);
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "x"),
        "{e}"
    );
    assert!(e.to_string().contains("[T=5, B=2, I=3]"), "{e}");
    let e = err(
        Batch {
            target: Target::Classes(&y[1..]),
            ..ok
        },
        &mut tr,
    );
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "target labels"),
        "{e}"
    );
    let mut bad_y = y.clone();
    bad_y[7] = 4;
    let e = err(
        Batch {
            target: Target::Classes(&bad_y),
            ..ok
        },
        &mut tr,
    );
    assert!(
        matches!(
            e,
            RnnError::LabelOutOfRange {
                t: 3,
                b: 1,
                label: 4,
                classes: 4
            }
        ),
        "{e}"
    );
    for bad in [[0usize, 5], [6, 5]] {
        let e = err(
            Batch {
                lengths: Some(&bad),
                ..ok
            },
            &mut tr,
        );
        assert!(
            matches!(e, RnnError::LengthOutOfRange { seq_len: 5, .. }),
            "{e}"
        );
    }
    let e = err(
        Batch {
            lengths: Some(&[5]),
            ..ok
        },
        &mut tr,
    );
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "lengths"),
        "{e}"
    );
    // Finite values whose squares overflow f32 are accepted.
    let mut big_x = x.clone();
    big_x[3] = 3e38;
    big_x[5] = -2e30;
    assert!(
        Batch { x: &big_x, ..ok }
            .validate(&tr.config, &tr.loss)
            .is_ok()
    );
    let mut nan_x = x.clone();
    nan_x[4] = f32::NAN;
    let e = err(Batch { x: &nan_x, ..ok }, &mut tr);
    assert!(
        matches!(
            e,
            RnnError::NonFiniteInput {
                what: "x",
                index: 4,
                ..
            }
        ),
        "{e}"
    );
    let h0 = vec![f32::INFINITY; 2 * 2 * 8];
    assert!(matches!(
        err(
            Batch {
                h0: Some(&h0),
                ..ok
            },
            &mut tr
        ),
        RnnError::NonFiniteInput { what: "h0", .. }
    ));
    assert!(matches!(
        err(
            Batch {
                h0: Some(&h0[1..]),
                ..ok
            },
            &mut tr
        ),
        RnnError::ShapeMismatch { .. }
    ));
    let vals = vec![0.0f32; 40];
    assert!(matches!(
        err(
            Batch {
                target: Target::Values(&vals),
                ..ok
            },
            &mut tr
        ),
        RnnError::Config(_)
    ));
    // A label past a sequence's end is not scored, so it may be anything.
    let mut padded = y.clone();
    padded[9] = 99; // t = 4, b = 1
    tr.step(&Batch {
        target: Target::Classes(&padded),
        lengths: Some(&[5, 4]),
        ..ok
    })
    .unwrap();
    assert!(RnnConfig::new(0, 4, 2).validate().is_err());
}

/// An ignored label needs no valid class; a mean over no labelled position is refused (and
/// leaves the weights), a sum over none is 0.
#[test]
fn ignored_labels_are_checked_and_a_mean_over_none_is_refused() {
    let (t, b) = (5, 2);
    let (x, mut y) = data(t, b);
    let mut tr = trainer(OptimizerKind::sgd(0.1));
    y[3] = IGNORED_LABEL;
    tr.step(&Batch::new(t, b, &x, Target::Classes(&y))).unwrap();
    y[4] = 4; // classes 0..4
    let e = tr
        .step(&Batch::new(t, b, &x, Target::Classes(&y)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RnnError::LabelOutOfRange {
                t: 2,
                b: 0,
                label: 4,
                classes: 4
            }
        ),
        "{e}"
    );
    let none = vec![IGNORED_LABEL; t * b];
    let before = tr.params.clone();
    let e = tr
        .step(&Batch::new(t, b, &x, Target::Classes(&none)))
        .unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("IGNORED_LABEL")),
        "{e}"
    );
    assert_eq!(tr.params, before);
    let mut summed = Trainer::<f32>::new(
        RnnConfig::new(3, 8, 4),
        LossSpec {
            reduction: Reduction::Sum,
            ..LossSpec::every_step(LossKind::CrossEntropy)
        },
        OptimizerKind::sgd(0.1),
        7,
    )
    .unwrap();
    let report = summed
        .step(&Batch::new(t, b, &x, Target::Classes(&none)))
        .unwrap();
    assert_eq!(report.loss, 0.0);
}

/// Class weights are checked against the model when the trainer is built, and a mean over
/// positions that all weigh 0 is refused like a mean over none; a step that fails a check
/// leaves the weights as they were.
#[test]
fn class_weights_are_checked_and_a_mean_over_no_weight_is_refused() {
    let ce = LossSpec::every_step(LossKind::CrossEntropy);
    let new = |loss: LossSpec| {
        Trainer::<f32>::new(RnnConfig::new(3, 8, 4), loss, OptimizerKind::sgd(0.1), 7)
    };
    let three = ce.clone().with_class_weights(&[1.0, 2.0, 3.0]).unwrap();
    let e = new(three).err().unwrap();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "class weights"),
        "{e}"
    );
    let mut on_mse = LossSpec::every_step(LossKind::Mse);
    on_mse.class_weights = ce
        .clone()
        .with_class_weights(&[1.0; 4])
        .unwrap()
        .class_weights;
    let e = new(on_mse).err().unwrap();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("not MSE")),
        "{e}"
    );
    assert!(matches!(
        ce.clone().with_class_weights(&[]),
        Err(RnnError::Empty { .. })
    ));

    let (t, b) = (5, 2);
    let (x, mut y) = data(t, b);
    let weighted = ce.with_class_weights(&[0.0, 1.0, 2.0, 0.5]).unwrap();
    let mut tr = new(weighted).unwrap();
    tr.step(&Batch::new(t, b, &x, Target::Classes(&y))).unwrap();
    // Class 0 weighs nothing: labels of 0 and ignored ones leave no weight to average over.
    y.iter_mut()
        .enumerate()
        .for_each(|(k, l)| *l = if k % 2 == 0 { 0 } else { IGNORED_LABEL });
    let before = tr.params.clone();
    let e = tr
        .step(&Batch::new(t, b, &x, Target::Classes(&y)))
        .unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("class weight 0")),
        "{e}"
    );
    assert_eq!(tr.params, before);
}

/// L1, Huber and smooth L1 take float targets like MSE, checked the same way; a Huber
/// threshold must be finite and positive, a smooth L1 beta finite and non-negative (0 is L1).
#[test]
fn l1_and_huber_check_their_targets_and_threshold() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = LossKind::huber(bad).unwrap_err();
        assert!(
            matches!(&e, RnnError::Config(m) if m.contains("Huber delta")),
            "{bad}: {e}"
        );
    }
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let e = LossKind::smooth_l1(bad).unwrap_err();
        assert!(
            matches!(&e, RnnError::Config(m) if m.contains("smooth L1 beta")),
            "{bad}: {e}"
        );
    }
    assert_eq!(LossKind::smooth_l1(0.0).unwrap(), LossKind::L1);
    let (t, b) = (5, 2);
    let cfg = RnnConfig::new(3, 4, 2);
    let (x, labels) = data(t, b);
    let mut values = vec![0.5f32; t * b * 2];
    let thresholded = [LossKind::huber(0.25), LossKind::smooth_l1(0.25)];
    for kind in [LossKind::L1]
        .into_iter()
        .chain(thresholded.map(Result::unwrap))
    {
        let mut tr =
            Trainer::<f32>::new(cfg, LossSpec::every_step(kind), OptimizerKind::sgd(0.1), 0)
                .unwrap();
        let e = tr
            .step(&Batch::new(t, b, &x, Target::Classes(&labels)))
            .unwrap_err();
        let expected = format!("{} needs float targets, got class labels", kind.name());
        assert!(matches!(&e, RnnError::Config(m) if *m == expected), "{e}");
        let e = tr
            .step(&Batch::new(t, b, &x, Target::Values(&values[1..])))
            .unwrap_err();
        assert!(
            matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "target"),
            "{e}"
        );
        values[3] = f32::NAN;
        let e = tr
            .step(&Batch::new(t, b, &x, Target::Values(&values)))
            .unwrap_err();
        assert!(
            matches!(
                &e,
                RnnError::NonFiniteInput {
                    what: "target",
                    index: 3,
                    ..
                }
            ),
            "{e}"
        );
        values[3] = 0.5;
        let before = tr.params.clone();
        let report = tr
            .step(&Batch::new(t, b, &x, Target::Values(&values)))
            .unwrap();
        assert!(report.loss.is_finite() && report.loss > 0.0);
        assert_ne!(tr.params, &before[..], "{}: the step updated", kind.name());
    }
}

#[test]
fn non_finite_loss_rejects_the_step_and_keeps_everything() {
    for opt in [
        OptimizerKind::sgd(0.1),
        OptimizerKind::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: true,
        },
        OptimizerKind::adam(0.01),
    ] {
        let mut tr = trainer(opt);
        let (x, y) = data(5, 2);
        tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap();
        let (params, s1, s2, steps) = (
            tr.params.clone(),
            tr.optimizer.state1.clone(),
            tr.optimizer.state2.clone(),
            tr.optimizer.steps,
        );
        // Huge weights overflow the logits to infinity: the loss is not finite.
        let w = tr.layout.w_hy.clone();
        let saved = tr.params[w.clone()].to_vec();
        tr.params[w.clone()].iter_mut().for_each(|p| *p = f32::MAX);
        let params_bad = tr.params.clone();
        let e = tr
            .step(&Batch::new(5, 2, &x, Target::Classes(&y)))
            .unwrap_err();
        assert!(matches!(e, RnnError::NonFinite { step: 1, .. }), "{e}");
        assert!(e.to_string().contains("weights unchanged"));
        assert_eq!(
            tr.params.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
            params_bad.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            (
                &tr.optimizer.state1,
                &tr.optimizer.state2,
                tr.optimizer.steps
            ),
            (&s1, &s2, steps)
        );
        tr.params[w].copy_from_slice(&saved);
        assert_eq!(tr.params, params);
        tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap(); // training goes on
    }
}

#[test]
fn one_and_two_threads_give_bitwise_identical_weights() {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        for split in [UnitSplit::Whole, UnitSplit::Halves] {
            identical_at_one_and_two_threads(cell, split, Size::LARGE);
        }
        // Checkpointed BPTT runs its segments in the same pass (one pair session), and
        // four threads cut each of the pair's product shares again.
        let segments = Size {
            memory: Memory::Checkpointed { segment: 24 },
            threads: 4,
            ..Size::LARGE
        };
        identical_at_one_and_two_threads(cell, UnitSplit::Halves, segments);
        let dropout = Size {
            dropout: 0.3,
            ..Size::LARGE
        };
        identical_at_one_and_two_threads(cell, UnitSplit::Halves, dropout);
        let bias_free = Size {
            bias: false,
            ..Size::LARGE
        };
        identical_at_one_and_two_threads(cell, UnitSplit::Halves, bias_free);
        // A pool the trainer is given, and the clamp of value clipping, which runs in halves
        // with the update (every model here has 150-210 k parameters, past the split).
        let clamped_in_given_pool = Size {
            clip: Clip::Value(1e-3),
            given_pool: true,
            ..Size::LARGE
        };
        identical_at_one_and_two_threads(cell, UnitSplit::Halves, clamped_in_given_pool);
        // Both directions, ragged (each reverse pass starts at its sequence's own end), with
        // dropout between the layers.
        let bidirectional = Size {
            bidirectional: true,
            ragged: true,
            dropout: 0.2,
            ..Size::LARGE
        };
        identical_at_one_and_two_threads(cell, UnitSplit::Halves, bidirectional);
    }
    // LSTM projections split their steps into blocks of sequences, which meet once per
    // chunk; ragged, in segments, and bidirectional.
    let projected = Size {
        proj: Some(48),
        ragged: true,
        ..Size::LARGE
    };
    identical_at_one_and_two_threads(Cell::Lstm, UnitSplit::Halves, projected);
    let in_segments = Size {
        memory: Memory::Checkpointed { segment: 24 },
        ..projected
    };
    identical_at_one_and_two_threads(Cell::Lstm, UnitSplit::Auto, in_segments);
    let both_ways = Size {
        bidirectional: true,
        dropout: 0.2,
        ..projected
    };
    identical_at_one_and_two_threads(Cell::Lstm, UnitSplit::Auto, both_ways);
}

/// The two-thread step loops at a size that also runs under valgrind (`scripts/memcheck.sh`
/// skips the large comparison above): odd hidden size, one- and two-step sequences.
#[test]
fn split_steps_of_small_models_match_across_thread_counts() {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        for (t, b) in [(7, 5), (1, 3)] {
            let size = Size {
                hidden: 13,
                t,
                b,
                ..Size::LARGE
            };
            identical_at_one_and_two_threads(cell, UnitSplit::Halves, size);
        }
    }
}

/// Two threads pull the LSTM's and GRU's forward steps in pieces of rows by unit groups
/// (steps of 32 MFLOP and more): blocks of 300 units (three full groups of 96 and a ragged one)
/// over 19 rows (tiles of 8, 8 and 3). The RNN's stay whole blocks. An odd `H` (385) gives
/// blocks of 192 and 193 units, whose grid must cover the wider one (40 rows: 2 x 3 x 40 x
/// 385² = 35.6 MFLOP for the GRU). With ragged lengths, the pieces carry their rows of
/// finished sequences (in every row tile) unchanged.
#[test]
fn pulled_pieces_match_whole_blocks_across_thread_counts() {
    for (hidden, b) in [(600, 19), (385, 40)] {
        for ragged in [false, true] {
            let size = Size {
                hidden,
                t: 6,
                b,
                ragged,
                ..Size::LARGE
            };
            for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
                identical_at_one_and_two_threads(cell, UnitSplit::Halves, size);
            }
        }
    }
}

/// A model and batch size for [`identical_at_one_and_two_threads`].
#[derive(Clone, Copy)]
struct Size {
    hidden: usize,
    t: usize,
    b: usize,
    memory: Memory,
    /// The thread count compared with one thread.
    threads: usize,
    /// Sequences of lengths 1 to `t` rather than all of `t` steps.
    ragged: bool,
    /// Dropout between the two layers.
    dropout: f64,
    /// Whether the recurrent layers have biases.
    bias: bool,
    clip: Clip<f32>,
    /// The trainer is given its pool ([`Trainer::with_thread_pool`]) rather than being run
    /// inside one with a thread count.
    given_pool: bool,
    /// Both directions in each layer.
    bidirectional: bool,
    /// LSTM projections of this width.
    proj: Option<usize>,
}

impl Size {
    /// Large enough that the all-steps products (up to 2 x 128 x 128 x 2048 flops) run on
    /// both threads rather than being kept sequential.
    const LARGE: Self = Self {
        hidden: 128,
        t: 64,
        b: 32,
        memory: Memory::Full,
        threads: 2,
        ragged: false,
        dropout: 0.0,
        bias: true,
        clip: Clip::Norm(1.0),
        given_pool: false,
        bidirectional: false,
        proj: None,
    };
}

/// With two unit blocks the two threads also split every step; the blocks depend on the
/// split only, so the weights do not change with the thread count.
fn identical_at_one_and_two_threads(cell: Cell, split: UnitSplit, size: Size) {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let run = |threads: usize| {
        let cfg = RnnConfig {
            bidirectional: size.bidirectional,
            proj_size: size.proj,
            ..RnnConfig::new(16, size.hidden, 10)
                .layers(2)
                .cell(cell)
                .bias(size.bias)
        };
        // With ragged lengths the loss reads the final states, which finished sequences
        // carried unchanged from their last steps: a wrong carry changes the weights.
        let loss = match size.ragged {
            false => LossSpec::every_step(LossKind::CrossEntropy),
            true => LossSpec::last_step(LossKind::CrossEntropy),
        };
        let mut tr = Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-2), 3)
            .unwrap()
            .with_clip(size.clip)
            .with_unit_split(split)
            .with_memory(size.memory)
            .with_dropout(Dropout::new(size.dropout, 1).unwrap());
        tr = match size.given_pool {
            true => tr.with_thread_pool(Arc::new(pool(threads))),
            false => tr.with_threads(threads),
        };
        assert_eq!(tr.threads(), threads);
        for step in 0..5 {
            let (t, b) = (size.t, size.b);
            let x: Vec<f32> = (0..t * b * 16)
                .map(|k| (((k + step) * 7919 % 1000) as f32) / 500.0 - 1.0)
                .collect();
            let scored = if size.ragged { b } else { t * b };
            let y: Vec<usize> = (0..scored).map(|k| (k + step) * 13 % 10).collect();
            let lengths: Vec<usize> = (0..b).map(|k| 1 + k * 5 % t).collect();
            let batch = Batch {
                lengths: size.ragged.then_some(lengths.as_slice()),
                ..Batch::new(t, b, &x, Target::Classes(&y))
            };
            tr.step(&batch).unwrap();
            if let Clip::Value(v) = size.clip {
                assert!(tr.grads.iter().any(|g| g.abs() == v), "the clamp bites");
            }
        }
        tr.params.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    };
    let one = pool(1).install(|| run(1));
    let more = pool(size.threads).install(|| run(size.threads));
    assert!(
        one == more,
        "{cell:?} {split:?} H = {}, P = {:?}, {:?}, ragged {}, dropout {}, bias {}, {:?}, given pool {}, bidirectional {}: weights differ between 1 and {} threads",
        size.hidden,
        size.proj,
        size.memory,
        size.ragged,
        size.dropout,
        size.bias,
        size.clip,
        size.given_pool,
        size.bidirectional,
        size.threads
    );
}

#[test]
fn clipping_by_norm_and_value() {
    let mut tr = trainer(OptimizerKind::sgd(0.0)).with_clip(Clip::Norm(1e-3));
    let (x, y) = data(5, 2);
    let r = tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap();
    assert!(r.grad_norm > 1e-3);
    assert!((r.clip_scale * r.grad_norm - 1e-3).abs() < 1e-6);
    let mut tr = trainer(OptimizerKind::sgd(0.0)).with_clip(Clip::Value(1e-4));
    tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap();
    assert!(tr.grads.iter().all(|g| g.abs() <= 1e-4));
    assert!(tr.grads.iter().any(|g| g.abs() == 1e-4));
}

#[test]
fn dropout_is_validated_and_acts_only_between_layers() {
    for p in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        match Dropout::new(p, 0) {
            Err(RnnError::Config(msg)) => assert!(msg.contains("dropout"), "{msg}"),
            other => panic!("p = {p}: {other:?}"),
        }
    }
    let (x, y) = data(5, 2);
    let weights_after_3_steps = |layers: usize, dropout: Option<f64>| {
        let cfg = RnnConfig::gru(3, 8, 4).layers(layers);
        let loss = LossSpec::every_step(LossKind::CrossEntropy);
        let mut tr = Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-2), 7).unwrap();
        if let Some(p) = dropout {
            tr = tr.with_dropout(Dropout::new(p, 3).unwrap());
        }
        for _ in 0..3 {
            tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap();
        }
        tr.params
    };
    // As in PyTorch, p = 0 changes nothing, nor does any p on a one-layer model (no layer
    // below another) ...
    assert_eq!(
        weights_after_3_steps(2, Some(0.0)),
        weights_after_3_steps(2, None)
    );
    assert_eq!(
        weights_after_3_steps(1, Some(0.5)),
        weights_after_3_steps(1, None)
    );
    // ... while p > 0 between two layers trains differently.
    assert_ne!(
        weights_after_3_steps(2, Some(0.5)),
        weights_after_3_steps(2, None)
    );
}

/// A step's masks come from the dropout's seed and the optimizer's step count: the same
/// step twice drops the same units, the next step others.
#[test]
fn dropout_draws_new_masks_each_step() {
    let mut tr = trainer(OptimizerKind::sgd(0.1)).with_dropout(Dropout::new(0.5, 11).unwrap());
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let first = tr.loss_and_grads(&batch).unwrap();
    let first_grads = tr.grads.clone();
    assert_eq!(tr.loss_and_grads(&batch).unwrap(), first);
    assert_eq!(tr.grads, first_grads);
    tr.optimizer.steps += 1; // the next step, with the same weights
    let next = tr.loss_and_grads(&batch).unwrap();
    assert_ne!(next, first);
    // What the layer above read: each output of the layer below doubled (1 / (1 - p)) or
    // zeroed, about half of each.
    let (b, h) = (2, 8);
    let ws = &tr.workspace;
    let (below, read) = (&ws.layers[0].hs[b * h..], &ws.dropped[..]);
    assert_eq!(read.len(), below.len());
    for (r, h) in read.iter().zip(below) {
        assert!(*r == 0.0 || *r == 2.0 * h, "{r} from {h}");
    }
    let zeros = read.iter().filter(|&&r| r == 0.0).count();
    assert!((20..=60).contains(&zeros), "{zeros} of 80 dropped");
}

/// `evaluate` is the loss a step would report without dropout, for both placements and
/// ragged lengths, on one or two threads, and changes nothing but the workspace.
#[test]
fn evaluate_is_the_loss_without_gradients_or_dropout() {
    let (t, b) = (9, 20);
    let x: Vec<f32> = (0..t * b * 3)
        .map(|k| ((k * 37 % 100) as f32) / 50.0 - 1.0)
        .collect();
    let classes: Vec<usize> = (0..t * b).map(|k| k * 7 % 4).collect();
    let values: Vec<f32> = (0..b * 4).map(|k| (k % 5) as f32 / 5.0).collect();
    let lengths: Vec<usize> = (0..b).map(|k| 1 + k % t).collect();
    for (loss, target) in [
        (
            LossSpec::every_step(LossKind::CrossEntropy),
            Target::Classes(&classes),
        ),
        (LossSpec::last_step(LossKind::Mse), Target::Values(&values)),
    ] {
        let batch = Batch {
            lengths: Some(&lengths),
            ..Batch::new(t, b, &x, target)
        };
        let new = |threads: usize| {
            let cfg = RnnConfig::lstm(3, 160, 4).layers(2);
            Trainer::<f32>::new(cfg, loss.clone(), OptimizerKind::adam(1e-2), 5)
                .unwrap()
                .with_threads(threads)
        };
        let mut plain = new(1);
        plain.step(&batch).unwrap(); // weights that are not the initial ones
        let want = plain.loss_and_grads(&batch).unwrap();
        for threads in [1, 2] {
            let mut tr = new(threads).with_dropout(Dropout::new(0.5, 2).unwrap());
            assert_eq!(
                tr.threads_for(t, b),
                threads,
                "a step that uses the threads"
            );
            tr.params.clone_from(&plain.params);
            tr.grads.fill(7.0);
            let params = tr.params.clone();
            let got = tr.evaluate(&batch).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{loss:?}, {threads} threads");
            assert_eq!(tr.params, params);
            assert!(tr.grads.iter().all(|&g| g == 7.0));
            assert_eq!(tr.optimizer.steps, 0);
            // A step of the same trainer drops units and reports another loss.
            assert_ne!(tr.loss_and_grads(&batch).unwrap(), want);
        }
    }
    let mut tr = trainer(OptimizerKind::sgd(0.1));
    let (x, y) = data(5, 2);
    let short = Batch::new(5, 2, &x[1..], Target::Classes(&y));
    assert!(matches!(
        tr.evaluate(&short),
        Err(RnnError::ShapeMismatch { .. })
    ));
}

#[test]
fn learning_rate_changes_between_steps() {
    let mut tr = trainer(OptimizerKind::sgd(0.1));
    tr.optimizer.kind.set_lr(0.0);
    let before = tr.params.clone();
    let (x, y) = data(5, 2);
    tr.step(&Batch::new(5, 2, &x, Target::Classes(&y))).unwrap();
    assert_eq!(tr.params, before);
    assert_eq!(tr.optimizer.kind.lr(), 0.0);
}

/// Every cell's weights and optimizer state survive a checkpoint, with and without
/// recurrent biases, and the state-dict names are PyTorch's.
#[test]
fn every_cell_checkpoints_and_resumes_exactly() {
    let dir = scratch_dir("cells");
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    for (cell, bias) in [
        (Cell::Lstm, true),
        (Cell::Gru, true),
        (Cell::Rnn, false),
        (Cell::Lstm, false),
    ] {
        let path = dir.join(format!("{cell:?}-{bias}.safetensors"));
        let cfg = RnnConfig::new(3, 8, 4)
            .layers(2)
            .cell(cell)
            .learned_h0()
            .bias(bias);
        let new = || {
            Trainer::<f32>::new(
                cfg,
                LossSpec::every_step(LossKind::CrossEntropy),
                OptimizerKind::adam(0.01),
                7,
            )
            .unwrap()
            .with_clip(Clip::Norm(1.0))
        };
        let mut a = new();
        for _ in 0..3 {
            a.step(&batch).unwrap();
        }
        io::save_checkpoint(&path, &a.config, &a.params, &a.optimizer).unwrap();
        let (loaded_cfg, weights) = io::load_weights::<f32>(&path).unwrap();
        assert_eq!(loaded_cfg, cfg);
        assert_eq!(weights, a.params);
        let names: Vec<&str> = a.layout.tensors.iter().map(|t| t.name.as_str()).collect();
        let gates = cell.gates() * 8;
        assert_eq!(
            a.layout.find("rnn.weight_hh_l1").unwrap().shape,
            vec![gates, 8]
        );
        assert!(names.contains(&"rnn.h0") && names.contains(&"head.bias"));
        assert_eq!(names.contains(&"rnn.bias_ih_l1"), bias);
        assert_eq!(names.contains(&"rnn.c0"), cell == Cell::Lstm);
        let mut b = new();
        let other = cfg.bias(!bias);
        let e = io::load_checkpoint(&path, &other, &mut b.params, &mut b.optimizer).unwrap_err();
        assert!(e.to_string().contains("checkpoint is for"), "{e}");
        io::load_checkpoint(&path, &cfg, &mut b.params, &mut b.optimizer).unwrap();
        for _ in 0..2 {
            a.step(&batch).unwrap();
            b.step(&batch).unwrap();
        }
        assert_eq!(a.params, b.params, "{cell:?} bias {bias}");
        assert_eq!(
            a.optimizer.state1, b.optimizer.state1,
            "{cell:?} bias {bias}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cell_specific_inputs_are_typed_errors() {
    let (x, y) = data(5, 2);
    let ok = Batch::new(5, 2, &x, Target::Classes(&y));
    // c0 belongs to an LSTM only.
    let c0 = vec![0.0f32; 2 * 2 * 8];
    let mut rnn = trainer(OptimizerKind::sgd(0.1));
    let e = rnn
        .step(&Batch {
            c0: Some(&c0),
            ..ok
        })
        .unwrap_err();
    assert!(matches!(&e, RnnError::Config(m) if m.contains("c0")), "{e}");
    let mut lstm = Trainer::<f32>::new(
        RnnConfig::lstm(3, 8, 4).layers(2),
        LossSpec::every_step(LossKind::CrossEntropy),
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap();
    let e = lstm
        .step(&Batch {
            c0: Some(&c0[1..]),
            ..ok
        })
        .unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "c0"),
        "{e}"
    );
    let mut bad = c0.clone();
    bad[3] = f32::INFINITY;
    let e = lstm
        .step(&Batch {
            c0: Some(&bad),
            ..ok
        })
        .unwrap_err();
    assert!(
        matches!(
            &e,
            RnnError::NonFiniteInput {
                what: "c0",
                index: 3,
                ..
            }
        ),
        "{e}"
    );
    lstm.step(&Batch {
        c0: Some(&c0),
        ..ok
    })
    .unwrap();
    // ReLU is an Elman-RNN option only.
    let e = RnnConfig::gru(3, 8, 4)
        .nonlinearity(Nonlinearity::Relu)
        .validate()
        .unwrap_err();
    assert!(
        e.to_string().contains("relu") && e.to_string().contains("gru"),
        "{e}"
    );
}

/// Parameters and gradients start on a cache line, in a new trainer and in a clone, so a
/// step's speed does not depend on where the allocator put them (`kernels::aligned`).
#[test]
fn parameters_and_gradients_start_on_a_cache_line() {
    let line = |v: &[f32]| v.as_ptr() as usize % kernels::aligned::CACHE_LINE;
    let a = trainer(OptimizerKind::adam(0.01));
    // Clones one after another land at different offsets from the allocator.
    let clones: Vec<Trainer<f32>> = (0..8).map(|_| a.clone()).collect();
    for tr in std::iter::once(&a).chain(&clones) {
        assert_eq!((line(&tr.params), line(&tr.grads)), (0, 0));
        assert_eq!(tr.params, a.params);
    }
}

#[test]
fn checkpoint_roundtrip_resumes_exactly() {
    let dir = scratch_dir("api");
    let path = dir.join("ckpt.safetensors");
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let mut a = trainer(OptimizerKind::adam(0.01));
    for _ in 0..3 {
        a.step(&batch).unwrap();
    }
    io::save_checkpoint(&path, &a.config, &a.params, &a.optimizer).unwrap();
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "no temporary file left behind"
    );
    let mut b = trainer(OptimizerKind::adam(0.01));
    io::load_checkpoint(&path, &b.config.clone(), &mut b.params, &mut b.optimizer).unwrap();
    for _ in 0..2 {
        a.step(&batch).unwrap();
        b.step(&batch).unwrap();
    }
    assert_eq!(a.params, b.params);
    assert_eq!(a.optimizer.state2, b.optimizer.state2);

    // A model of another shape, a truncated file, a missing file: clear errors.
    let mut other = Trainer::<f32>::new(
        RnnConfig::new(3, 9, 4),
        LossSpec::every_step(LossKind::Mse),
        OptimizerKind::adam(0.1),
        0,
    )
    .unwrap();
    let cfg = other.config;
    let e = io::load_checkpoint(&path, &cfg, &mut other.params, &mut other.optimizer).unwrap_err();
    assert!(matches!(e, RnnError::Format(_)), "{e}");
    // The right model, but a parameter buffer of another length: a typed error, nothing
    // changed.
    let mut c = trainer(OptimizerKind::adam(0.01));
    let (state_before, cfg) = (c.optimizer.state1.clone(), c.config);
    let mut short = c.params[1..].to_vec();
    let e = io::load_checkpoint(&path, &cfg, &mut short, &mut c.optimizer).unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "params"),
        "{e}"
    );
    assert_eq!(short, c.params[1..]);
    assert_eq!(c.optimizer.state1, state_before);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        io::load_weights::<f32>(&path).unwrap_err(),
        RnnError::Format(_)
    ));
    assert!(matches!(
        io::load_weights::<f32>(&dir.join("missing")).unwrap_err(),
        RnnError::Io { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint names its optimizer family and holds exactly the buffers the optimizer's
/// kind uses: state of another family, or a buffer the kind does not use, is refused with
/// nothing changed, even where the lengths would fit (Adam's two moments against RMSprop's
/// square average and momentum).
#[test]
fn optimizer_state_of_another_kind_is_refused() {
    let dir = scratch_dir("kinds");
    let path = dir.join("ckpt.safetensors");
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let rmsprop = |momentum: f32, centered: bool| OptimizerKind::RmsProp {
        lr: 0.01,
        alpha: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum,
        centered,
    };
    let saved = |opt: OptimizerKind<f32>| {
        let mut tr = trainer(opt);
        tr.step(&batch).unwrap();
        io::save_checkpoint(&path, &tr.config, &tr.params, &tr.optimizer).unwrap();
        tr
    };
    let load = |opt: OptimizerKind<f32>| {
        let mut tr = trainer(opt);
        let before = (tr.params.clone(), tr.optimizer.clone());
        let cfg = tr.config;
        let result = io::load_checkpoint(&path, &cfg, &mut tr.params, &mut tr.optimizer);
        if result.is_err() {
            assert_eq!(tr.params, before.0);
            let opt = &tr.optimizer;
            assert_eq!(
                (&opt.state1, &opt.state2, &opt.state3),
                (&before.1.state1, &before.1.state2, &before.1.state3)
            );
        }
        result.map(|()| tr)
    };

    let adam = saved(OptimizerKind::adam(0.01));
    let e = load(rmsprop(0.9, false)).unwrap_err().to_string();
    assert!(
        e.contains("holds adam optimizer state, the optimizer is rmsprop"),
        "{e}"
    );
    assert_eq!(adam.optimizer.state3.len(), 0);

    let centered = saved(rmsprop(0.0, true));
    let n = centered.params.len();
    assert_eq!(
        [
            &centered.optimizer.state1,
            &centered.optimizer.state2,
            &centered.optimizer.state3
        ]
        .map(Vec::len),
        [n, 0, n]
    );
    let e = load(rmsprop(0.0, false)).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "optim.state3 holds {n} values; this rmsprop optimizer does not use it"
        )),
        "{e}"
    );
    let e = load(OptimizerKind::sgd(0.1)).unwrap_err().to_string();
    assert!(
        e.contains("holds rmsprop optimizer state, the optimizer is sgd"),
        "{e}"
    );
    // Back into its own kind, it resumes exactly.
    let mut again = load(rmsprop(0.0, true)).unwrap();
    let mut straight = centered;
    again.step(&batch).unwrap();
    straight.step(&batch).unwrap();
    assert_eq!(again.params, straight.params);
    assert_eq!(again.optimizer.state3, straight.optimizer.state3);

    // A buffer the saving kind did not use starts at zero, as a fresh optimizer's would.
    saved(rmsprop(0.0, false));
    let mut with_momentum = load(rmsprop(0.9, false)).unwrap();
    assert!(with_momentum.optimizer.state2.is_empty());
    with_momentum.step(&batch).unwrap();
    assert_eq!(with_momentum.optimizer.state2.len(), n);

    // A file from before the family was recorded (no `optim.kind`, no third buffer) loads.
    let old = trainer(OptimizerKind::adam(0.01));
    write_unchecked(&path, &old.config, &old.params, Some(&old.optimizer));
    load(OptimizerKind::adam(0.02)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Optimizer::kind` may change between updates within its family: a buffer the new
/// hyper-parameters need starts at zero (PyTorch's lazy state), the others carry over, and one
/// they no longer use is kept but neither read nor saved.
#[test]
fn optimizer_kind_may_change_between_updates() {
    let dir = scratch_dir("kind-change");
    let path = dir.join("ckpt.safetensors");
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let mut tr = trainer(OptimizerKind::rmsprop(0.01));
    tr.step(&batch).unwrap();
    let n = tr.params.len();
    assert_eq!(tr.optimizer.state2.len(), 0);
    let square_avg = tr.optimizer.state1.clone();
    let with_momentum = OptimizerKind::RmsProp {
        lr: 0.01,
        alpha: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.5,
        centered: true,
    };
    tr.optimizer.kind = with_momentum;
    assert!(tr.optimizer.state_is_current());
    // The squared average carries over into the update (PyTorch keeps it too).
    let mut expected = Trainer::with_params(
        tr.config,
        tr.loss.clone(),
        with_momentum,
        tr.params.to_vec(),
    )
    .unwrap();
    expected.optimizer.state1.copy_from_slice(&square_avg);
    expected.optimizer.steps = 1;
    let before = tr.params.clone();
    tr.step(&batch).unwrap();
    expected.step(&batch).unwrap();
    assert_ne!(tr.params, before);
    assert_eq!(tr.params, expected.params);
    let opt = &tr.optimizer;
    assert_eq!(
        [&opt.state1, &opt.state2, &opt.state3].map(Vec::len),
        [n, n, n]
    );
    assert!(opt.state3.iter().any(|&v| v != 0.0));
    tr.optimizer.kind = OptimizerKind::rmsprop(0.01);
    let (state2, state3) = (tr.optimizer.state2.clone(), tr.optimizer.state3.clone());
    tr.step(&batch).unwrap();
    assert_eq!(
        (&tr.optimizer.state2, &tr.optimizer.state3),
        (&state2, &state3),
        "plain RMSprop touches neither the momentum nor the average"
    );
    io::save_checkpoint(&path, &tr.config, &tr.params, &tr.optimizer).unwrap();
    let mut fresh = trainer(OptimizerKind::rmsprop(0.01));
    let cfg = fresh.config;
    io::load_checkpoint(&path, &cfg, &mut fresh.params, &mut fresh.optimizer).unwrap();
    assert_eq!(fresh.optimizer.state1, tr.optimizer.state1);
    assert!(fresh.optimizer.state2.is_empty() && fresh.optimizer.state3.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A change of `Optimizer::kind` to another family (Adam to RMSprop, SGD with momentum to
/// Adagrad) starts its state over, as a new PyTorch optimizer would: the next updates are
/// bitwise those of a fresh optimizer of that kind on the same weights. Reading Adam's first
/// moment (signed) as RMSprop's squared average took square roots of negative numbers.
#[test]
fn a_new_optimizer_family_starts_with_fresh_state() {
    let dir = scratch_dir("family-change");
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let sgd_momentum = OptimizerKind::Sgd {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    };
    for (first, then) in [
        (OptimizerKind::adam(0.05), OptimizerKind::rmsprop(0.01)),
        (sgd_momentum, OptimizerKind::adagrad(0.1)),
        (OptimizerKind::rmsprop(0.01), OptimizerKind::adamw(0.01)),
    ] {
        let mut switched = trainer(first);
        for _ in 0..4 {
            switched.step(&batch).unwrap();
        }
        switched.optimizer.kind = then;
        // Before the next update the state is the new family's, not yet sized, and a
        // checkpoint saves it so: no buffers, no updates.
        let listed = switched.optimizer.named_state();
        assert!(
            listed.iter().all(|(_, buffer)| buffer.is_empty()),
            "{then:?}"
        );
        let path = dir.join("switched.safetensors");
        io::save_checkpoint(
            &path,
            &switched.config,
            &switched.params,
            &switched.optimizer,
        )
        .unwrap();
        let mut loaded = trainer(then);
        let cfg = loaded.config;
        io::load_checkpoint(&path, &cfg, &mut loaded.params, &mut loaded.optimizer).unwrap();
        assert_eq!(
            (loaded.optimizer.steps, loaded.optimizer.state_start()),
            (4, 4)
        );
        assert!(
            loaded
                .optimizer
                .named_state()
                .iter()
                .all(|(_, b)| b.is_empty())
        );
        let mut fresh = Trainer::with_params(
            switched.config,
            switched.loss.clone(),
            then,
            switched.params.to_vec(),
        )
        .unwrap();
        for _ in 0..3 {
            switched.step(&batch).unwrap();
            fresh.step(&batch).unwrap();
        }
        assert!(switched.params.iter().all(|v| v.is_finite()), "{then:?}");
        assert_eq!(switched.params, fresh.params, "{first:?} then {then:?}");
        // Schedules keep counting every update; the formulas count from the switch.
        assert_eq!(switched.optimizer.steps, 7);
        assert_eq!(switched.optimizer.state_start(), 4);
        // Resumed from the checkpoint taken at the switch, the same bits.
        for _ in 0..3 {
            loaded.step(&batch).unwrap();
        }
        assert_eq!(loaded.params, fresh.params);
        assert_eq!(
            switched.optimizer.named_state(),
            fresh.optimizer.named_state()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// RMSprop's update in halves on two threads is bitwise the one-thread update, every buffer.
#[test]
fn rmsprop_update_in_halves_is_bitwise_one_thread() {
    use rnn_core::optim::{Optimizer, SPLIT_MIN_PARAMS};
    let n = SPLIT_MIN_PARAMS + 37;
    let grads: Vec<f32> = (0..n).map(|k| ((k * 13 % 11) as f32 - 5.0) / 7.0).collect();
    let kind = OptimizerKind::RmsProp {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-8,
        weight_decay: 0.01,
        momentum: 0.5,
        centered: true,
    };
    let mut one = (vec![0.5f32; n], Optimizer::new(kind, n));
    let mut two = one.clone();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for scale in [1.0, 0.5, 0.25] {
        one.1.update(&mut one.0, &grads, scale);
        pool.install(|| two.1.update_on(&mut two.0, &grads, scale, true));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.0), bits(&two.0));
    for (a, b) in [
        (&one.1.state1, &two.1.state1),
        (&one.1.state2, &two.1.state2),
        (&one.1.state3, &two.1.state3),
    ] {
        assert_eq!(a.len(), n);
        assert_eq!(bits(a), bits(b));
    }
}

#[test]
fn misnamed_or_misshapen_tensors_are_named() {
    let cfg = RnnConfig::new(3, 4, 2);
    let params = rnn_core::params::init_params::<f32>(&cfg, 0);
    let layout = rnn_core::params::Layout::new(&cfg);
    let mut tensors = io::param_tensors(&layout, &params);
    tensors[1].1.shape = vec![2, 8];
    let dir = scratch_dir("names");
    let path = dir.join("w.safetensors");
    io::write_tensors(&path, &tensors, io::config_metadata(&cfg)).unwrap();
    let e = io::load_weights::<f32>(&path).unwrap_err();
    assert!(e.to_string().contains("rnn.weight_hh_l0"), "{e}");
    tensors[1].1.shape = vec![4, 4];
    tensors[1].0 = "rnn.weight_hh_l0_typo".into();
    io::write_tensors(&path, &tensors, io::config_metadata(&cfg)).unwrap();
    let e = io::load_weights::<f32>(&path).unwrap_err();
    assert!(
        e.to_string()
            .contains("missing tensor \"rnn.weight_hh_l0\""),
        "{e}"
    );
    // Two tensors of one name are an error, not a panic in the serializer.
    tensors[1].0 = tensors[0].0.clone();
    let e = io::write_tensors(&path, &tensors, io::config_metadata(&cfg)).unwrap_err();
    assert!(
        e.to_string()
            .contains("two tensors are named \"rnn.weight_ih_l0\""),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A NaN or infinity in weights or optimizer state is refused where it enters, naming the
/// tensor: loaded, it would make every later step a rejected one.
#[test]
fn non_finite_weights_and_optimizer_state_are_refused() {
    let dir = scratch_dir("nan");
    let path = dir.join("w.safetensors");
    let good = trainer(OptimizerKind::adam(0.01));
    let cfg = good.config;
    let layout = rnn_core::params::Layout::new(&cfg);
    let w_hh = layout.find("rnn.weight_hh_l1").unwrap().range.start;

    // Saving refuses such a model and writes nothing; a file another program wrote with one
    // is refused when loaded.
    let mut params = good.params.clone();
    params[w_hh + 5] = f32::NAN;
    let e = io::save_weights(&path, &cfg, &params).unwrap_err();
    assert!(
        matches!(e, RnnError::NonFiniteInput { what: "params", index, .. } if index == w_hh + 5),
        "{e}"
    );
    assert!(!path.exists());
    write_unchecked(&path, &cfg, &params, None);
    let e = io::load_weights::<f32>(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"rnn.weight_hh_l1\" holds NaN at flat index 5"),
        "{e}"
    );
    params[w_hh + 5] = f32::INFINITY;
    let loss = LossSpec::every_step(LossKind::CrossEntropy);
    let e = Trainer::with_params(cfg, loss, OptimizerKind::sgd(0.1), params.to_vec()).unwrap_err();
    assert!(
        matches!(e, RnnError::NonFiniteInput { what: "params", index, .. } if index == w_hh + 5),
        "{e}"
    );
    let e = rnn_core::predict::Predictor::new(cfg, &params, 1)
        .err()
        .unwrap();
    assert!(matches!(e, RnnError::NonFiniteInput { .. }), "{e}");

    // A checkpoint whose Adam state went non-finite: not saved; loaded from another
    // program's file, refused, the trainer left as it was.
    std::fs::remove_file(&path).unwrap();
    let mut optimizer = good.optimizer.clone();
    optimizer.state2[2] = f32::NEG_INFINITY;
    let e = io::save_checkpoint(&path, &cfg, &good.params, &optimizer).unwrap_err();
    assert!(
        matches!(
            e,
            RnnError::NonFiniteInput {
                what: "optimizer state",
                index: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(!path.exists());
    write_unchecked(&path, &cfg, &good.params, Some(&optimizer));
    let e = refused_by_adam(&path, &cfg);
    assert!(
        e.contains("\"optim.state2\" holds -inf at flat index 2"),
        "{e}"
    );

    // A negative squared average (Adam's second moment) is finite but no update makes one,
    // and the next would take its square root: refused both ways too. The first moment may be
    // negative.
    std::fs::remove_file(&path).unwrap();
    let mut optimizer = good.optimizer.clone();
    optimizer.state1[3] = -0.5;
    io::save_checkpoint(&path, &cfg, &good.params, &optimizer).unwrap();
    std::fs::remove_file(&path).unwrap();
    optimizer.state2[3] = -0.25;
    let e = io::save_checkpoint(&path, &cfg, &good.params, &optimizer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("optim.state2 holds -0.25 at flat index 3") && e.contains("exp_avg_sq"),
        "{e}"
    );
    assert!(!path.exists());
    write_unchecked(&path, &cfg, &good.params, Some(&optimizer));
    let e = refused_by_adam(&path, &cfg);
    assert!(e.contains("optim.state2 holds -0.25"), "{e}");
    // Read by an RMSprop (the file, as another program wrote it, names no family), the
    // second buffer is the momentum, which may be negative, and the first the squares.
    let mut rms = trainer(OptimizerKind::RmsProp {
        lr: 0.01,
        alpha: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.9,
        centered: false,
    });
    let e = io::load_checkpoint(&path, &cfg, &mut rms.params, &mut rms.optimizer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("optim.state1 holds -0.5 at flat index 3") && e.contains("square_avg"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Parameters or optimizer state that do not fit the model are typed errors when saved (they
/// would panic in slicing, or write a file no model of `cfg` loads), and nothing is written.
#[test]
fn saving_a_misfit_model_is_refused() {
    let dir = scratch_dir("misfit");
    let path = dir.join("w.safetensors");
    let good = trainer(OptimizerKind::adam(0.01));
    let cfg = good.config;
    let n = good.params.len();
    let short = &good.params[..n - 1];
    let e = io::save_weights(&path, &cfg, short).unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, expected, got }
            if what == "params" && *expected == n.to_string() && *got == (n - 1).to_string()),
        "{e}"
    );
    let e = io::save_checkpoint(&path, &cfg, short, &good.optimizer).unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "params"),
        "{e}"
    );
    let e = io::save_weights(
        &path,
        &RnnConfig {
            hidden_size: 0,
            ..cfg
        },
        &good.params,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            RnnError::Empty {
                what: "hidden_size"
            }
        ),
        "{e}"
    );

    // Optimizer state of another model's size; empty state (SGD's second buffer) is fine.
    let mut optimizer = good.optimizer.clone();
    optimizer.state1.push(0.0);
    let e = io::save_checkpoint(&path, &cfg, &good.params, &optimizer).unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "optim.state1"),
        "{e}"
    );
    assert!(!path.exists());
    let sgd = trainer(OptimizerKind::sgd(0.1));
    assert!(sgd.optimizer.state2.is_empty());
    io::save_checkpoint(&path, &cfg, &sgd.params, &sgd.optimizer).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Loads the checkpoint at `path` into a fresh Adam trainer, which must refuse it and stay as
/// it was; returns the error's text.
fn refused_by_adam(path: &std::path::Path, cfg: &RnnConfig) -> String {
    let mut other = trainer(OptimizerKind::adam(0.01));
    let before = (
        other.params.clone(),
        other.optimizer.state1.clone(),
        other.optimizer.state2.clone(),
    );
    let e = io::load_checkpoint(path, cfg, &mut other.params, &mut other.optimizer)
        .unwrap_err()
        .to_string();
    let after = (
        other.params.clone(),
        other.optimizer.state1.clone(),
        other.optimizer.state2.clone(),
    );
    assert_eq!(after, before, "a refused checkpoint changed the trainer");
    e
}

/// Writes `params` (and `optimizer`'s state) as a weights file (or checkpoint) without the
/// checks of [`io::save_weights`]: a file as another program could have written it.
fn write_unchecked(
    path: &std::path::Path,
    cfg: &RnnConfig,
    params: &[f32],
    optimizer: Option<&rnn_core::optim::Optimizer<f32>>,
) {
    let layout = rnn_core::params::Layout::new(cfg);
    let mut tensors = io::param_tensors(&layout, params);
    let mut metadata = io::config_metadata(cfg);
    if let Some(opt) = optimizer {
        for (name, state) in [("optim.state1", &opt.state1), ("optim.state2", &opt.state2)] {
            tensors.push((
                name.into(),
                io::OwnedTensor::float(vec![state.len()], state),
            ));
        }
        metadata.insert("optim.steps".into(), opt.steps.to_string());
    }
    io::write_tensors(path, &tensors, metadata).unwrap();
}

/// A checkpoint's `optim.state_start` (the update its optimizer state started at) must be a
/// number of updates no later than `optim.steps`; a file without one (from before) starts at 0.
#[test]
fn checkpoint_state_start_is_checked() {
    let dir = scratch_dir("state-start");
    let path = dir.join("ckpt.safetensors");
    let good = trainer(OptimizerKind::adam(0.01));
    let cfg = good.config;
    for (start, ok) in [
        (None, true),
        (Some("0"), true),
        (Some("2"), true),
        (Some("3"), false),
        (Some("x"), false),
    ] {
        let layout = rnn_core::params::Layout::new(&cfg);
        let mut tensors = io::param_tensors(&layout, &good.params);
        for name in ["optim.state1", "optim.state2"] {
            tensors.push((name.into(), io::OwnedTensor::float(vec![0], &[] as &[f32])));
        }
        let mut metadata = io::config_metadata(&cfg);
        metadata.insert("optim.steps".into(), "2".into());
        if let Some(start) = start {
            metadata.insert("optim.state_start".into(), start.into());
        }
        io::write_tensors(&path, &tensors, metadata).unwrap();
        let mut other = trainer(OptimizerKind::adam(0.01));
        let loaded = io::load_checkpoint(&path, &cfg, &mut other.params, &mut other.optimizer);
        match (loaded, ok) {
            (Ok(_), true) => {
                let want = start.map_or(0, |s| s.parse().unwrap());
                assert_eq!(
                    (other.optimizer.steps, other.optimizer.state_start()),
                    (2, want)
                );
            }
            (Err(e), false) => assert!(e.to_string().contains("optim.state_start"), "{e}"),
            (got, _) => panic!("state_start {start:?}: {got:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A program's own state rides in the checkpoint and comes back exactly.
#[test]
fn checkpoint_extras_roundtrip() {
    let dir = scratch_dir("extras");
    let path = dir.join("ckpt.safetensors");
    let tr = trainer(OptimizerKind::adam(0.01));
    let extras = io::Extras {
        tensors: vec![
            ("h".into(), vec![1.5f32, -2.0]),
            ("losses".into(), vec![3.0]),
        ],
        metadata: [("pos".to_string(), "1234".to_string())].into(),
    };
    io::save_checkpoint_with(&path, &tr.config, &tr.params, &tr.optimizer, &extras).unwrap();
    let mut other = trainer(OptimizerKind::adam(0.01));
    let cfg = other.config;
    let back =
        io::load_checkpoint_with(&path, &cfg, &mut other.params, &mut other.optimizer).unwrap();
    assert_eq!(back, extras);
    assert_eq!(back.value::<usize>("pos").unwrap(), 1234);
    assert_eq!(back.tensor("h").unwrap(), &[1.5, -2.0]);
    assert!(
        back.tensor("nope")
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
    assert!(back.value::<usize>("missing").is_err());
    // A plain checkpoint has no extras, and loads with the plain loader too.
    io::save_checkpoint(&path, &tr.config, &tr.params, &tr.optimizer).unwrap();
    let none =
        io::load_checkpoint_with(&path, &cfg, &mut other.params, &mut other.optimizer).unwrap();
    assert_eq!(none, io::Extras::default());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A NaN or infinity injected into a gradient at step k rejects that step, names the tensor
/// and the step, leaves weights and optimizer state bitwise as they were, and training goes on.
#[test]
fn non_finite_gradient_is_named_and_rejected() {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let mut tr = Trainer::<f32>::new(
            RnnConfig::new(3, 8, 4).layers(2).cell(cell),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::adam(0.01),
            7,
        )
        .unwrap();
        let (x, y) = data(5, 2);
        let batch = Batch::new(5, 2, &x, Target::Classes(&y));
        for _ in 0..3 {
            tr.step(&batch).unwrap();
        }
        let before = (tr.params.clone(), tr.optimizer.clone());
        for (bad, idx) in [(f32::NAN, 5), (f32::INFINITY, 0), (f32::NEG_INFINITY, 1)] {
            let loss = tr.loss_and_grads(&batch).unwrap();
            let w = tr.layout.find("rnn.weight_hh_l1").unwrap().range.clone();
            tr.grads[w.start + idx] = bad;
            let e = tr.update(loss).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("rnn.weight_hh_l1[{idx}]")) && msg.contains("step 3"),
                "{cell:?}: {msg}"
            );
            assert_eq!(tr.params, before.0);
            assert_eq!(tr.optimizer.state1, before.1.state1);
            assert_eq!(tr.optimizer.state2, before.1.state2);
            assert_eq!(tr.optimizer.steps, before.1.steps);
        }
        // The next batch trains as if nothing happened.
        let r = tr.step(&batch).unwrap();
        assert!(r.loss.is_finite());
        assert_eq!(tr.optimizer.steps, 4);
    }
}

/// Flush-to-zero is scoped to the step: results on normal data are unchanged, and the caller's
/// thread gets its own mode back.
#[cfg(target_arch = "x86_64")]
#[test]
fn flush_denormals_is_scoped_to_the_step() {
    use std::hint::black_box;
    let (x, y) = data(5, 2);
    let batch = Batch::new(5, 2, &x, Target::Classes(&y));
    let mut plain = trainer(OptimizerKind::adam(0.01));
    let mut flushed = trainer(OptimizerKind::adam(0.01)).with_flush_denormals();
    for _ in 0..3 {
        plain.step(&batch).unwrap();
        flushed.step(&batch).unwrap();
    }
    assert_eq!(plain.params, flushed.params);
    assert!(
        black_box(f32::MIN_POSITIVE) * black_box(0.5f32) > 0.0,
        "mode restored"
    );
}

/// A bidirectional model trains on whole sequences, reports telemetry for every pass, saves
/// and loads as one, and whatever needs a stream or segments of it refuses it clearly.
#[test]
fn bidirectional_models_train_whole_sequences_and_refuse_streams() {
    let cfg = RnnConfig::gru(3, 8, 4).layers(2).bidirectional();
    let new = || {
        let loss = LossSpec::every_step(LossKind::CrossEntropy);
        Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-2), 5).unwrap()
    };
    let (t, b) = (6, 2);
    let (x, y) = data(t, b);
    let batch = Batch::new(t, b, &x, Target::Classes(&y));
    let mut tr = new().with_telemetry();
    let first = tr.step(&batch).unwrap().loss;
    for _ in 0..20 {
        tr.step(&batch).unwrap();
    }
    assert!(tr.step(&batch).unwrap().loss < first);
    // [L·D, T]: both layers, both directions.
    assert_eq!(tr.grad_h_norms().len(), 4 * t);
    assert!(tr.grad_h_norms().iter().all(|n| *n > 0.0));

    // The initial state is [L·D, B, H].
    let h0 = vec![0.0f32; 2 * b * 8];
    let e = tr
        .step(&Batch {
            h0: Some(&h0),
            ..batch
        })
        .unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, expected, .. }
            if what == "h0" && expected.contains("L·D=4")),
        "{e}"
    );

    // Saved and loaded as a bidirectional model, by PyTorch's names.
    let dir = scratch_dir("bidi");
    let path = dir.join("model.safetensors");
    io::save_weights(&path, &tr.config, &tr.params).unwrap();
    let (loaded, params) = io::load_weights::<f32>(&path).unwrap();
    assert_eq!(loaded, cfg);
    assert_eq!(&params[..], &tr.params[..]);
    std::fs::remove_dir_all(&dir).unwrap();

    // Streams and segments need the state to move forward only.
    let e = Tbptt::new(new(), 4, 4, b).err().unwrap();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("bidirectional")),
        "{e}"
    );
    let e = rnn_core::predict::Predictor::new(cfg, &tr.params, b)
        .err()
        .unwrap();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("whole sequences")),
        "{e}"
    );
    let mut segmented = new().with_memory(Memory::Checkpointed { segment: 2 });
    let before = segmented.params.clone();
    let e = segmented.step(&batch).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("bidirectional") && m.contains("2 steps")),
        "{e}"
    );
    assert_eq!(segmented.params, before);
}

/// A model with an embedding reads token ids: identity rows make it the same model as one
/// reading one-hot inputs (bitwise), segments agree with full BPTT, streams of tokens train
/// and resume exactly, files keep the table, and bad token input is a typed error.
#[test]
fn token_input_through_an_embedding() {
    let (v, h, t, b) = (5, 6, 7, 3);
    let tokens: Vec<usize> = (0..t * b).map(|k| (k * 3 + k / 4) % v).collect();
    let next: Vec<usize> = (0..t * b).map(|k| (k * 2 + 1) % v).collect();
    let one_hot: Vec<f64> = (tokens.iter())
        .flat_map(|&id| (0..v).map(move |c| if c == id { 1.0 } else { 0.0 }))
        .collect();
    let ce = LossSpec::every_step(LossKind::CrossEntropy);
    let lstm = RnnConfig::lstm(v, h, v).layers(2);
    let embedded = lstm.embedding(v);
    let mut dense = Trainer::<f64>::new(lstm, ce.clone(), OptimizerKind::sgd(0.1), 2).unwrap();
    let mut tr = Trainer::<f64>::new(embedded, ce.clone(), OptimizerKind::sgd(0.1), 2).unwrap();
    let table = tr.layout.embedding.clone().unwrap();
    for (row, r) in tr.params[table.clone()].chunks_exact_mut(v).enumerate() {
        r.iter_mut()
            .enumerate()
            .for_each(|(c, p)| *p = f64::from(c == row));
    }
    tr.params[table.end..].copy_from_slice(&dense.params);
    let by_token = Batch::of_tokens(t, b, &tokens, Target::Classes(&next));
    let by_vector = Batch::new(t, b, &one_hot, Target::Classes(&next));
    let (lt, ld) = (
        tr.loss_and_grads(&by_token).unwrap(),
        dense.loss_and_grads(&by_vector).unwrap(),
    );
    assert_eq!(lt.to_bits(), ld.to_bits());
    assert_eq!(&tr.grads[table.end..], &dense.grads[..]);
    // A token's gradient row sums its positions' dL/dx: tokens never given have none.
    assert!(tr.grads[table.clone()].iter().any(|g| *g != 0.0));

    // Checkpointed segments: the same gradients within rounding, the table's included.
    let mut segmented = tr.clone().with_memory(Memory::Checkpointed { segment: 3 });
    segmented.loss_and_grads(&by_token).unwrap();
    for (a, b) in segmented.grads.iter().zip(&tr.grads[..]) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }

    // Bad token input.
    let mut bad = tokens.clone();
    bad[4] = v;
    let e = tr
        .step(&Batch::of_tokens(t, b, &bad, Target::Classes(&next)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RnnError::TokenOutOfRange {
                t: 1,
                b: 1,
                token: 5,
                num_embeddings: 5
            }
        ),
        "{e}"
    );
    let e = tr.step(&by_vector).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("Batch::of_tokens")),
        "{e}"
    );
    let e = dense.step(&by_token).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("no embedding")),
        "{e}"
    );
    let e = tr
        .step(&Batch::of_tokens(
            t,
            b,
            &tokens[1..],
            Target::Classes(&next),
        ))
        .unwrap_err();
    assert!(
        matches!(&e, RnnError::ShapeMismatch { what, .. } if what == "tokens"),
        "{e}"
    );

    // Saved and loaded with its table.
    let dir = scratch_dir("embedding");
    let path = dir.join("model.safetensors");
    io::save_weights(&path, &tr.config, &tr.params).unwrap();
    let (loaded, params) = io::load_weights::<f64>(&path).unwrap();
    assert_eq!(loaded, embedded);
    assert_eq!(&params[..], &tr.params[..]);

    // Streams of tokens: resumed from a snapshot mid-stream, the same weights.
    let stream = |tr: Trainer<f64>| Tbptt::new(tr, 2, 3, b).unwrap();
    let chunk = |c: usize| -> (Vec<usize>, Vec<usize>) {
        let ids = (0..2 * b).map(|k| (k + 3 * c) % v).collect();
        let next = (0..2 * b).map(|k| (k + 3 * c + 1) % v).collect();
        (ids, next)
    };
    let mut whole = stream(tr.clone());
    for c in 0..4 {
        let (ids, next) = chunk(c);
        whole.step_tokens(&ids, Target::Classes(&next)).unwrap();
    }
    let mut first = stream(tr.clone());
    for c in 0..2 {
        let (ids, next) = chunk(c);
        first.step_tokens(&ids, Target::Classes(&next)).unwrap();
    }
    let mut resumed = stream(first.trainer.clone());
    resumed.restore_snapshot(&first.snapshot()).unwrap();
    for c in 2..4 {
        let (ids, next) = chunk(c);
        resumed.step_tokens(&ids, Target::Classes(&next)).unwrap();
    }
    assert_eq!(whole.trainer.params, resumed.trainer.params);
    let e = (whole.step(&one_hot[..2 * b * v], Target::Classes(&next[..2 * b]))).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("Tbptt::step_tokens")),
        "{e}"
    );
    let mut dense_stream = Tbptt::new(dense, 2, 2, b).unwrap();
    let e =
        (dense_stream.step_tokens(&tokens[..2 * b], Target::Classes(&next[..2 * b]))).unwrap_err();
    assert!(
        matches!(&e, RnnError::Config(m) if m.contains("no embedding")),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Trainer::outputs` is the forward pass the loss scores: the summed squared error of its
/// outputs over the scored positions is `evaluate`'s loss; no dropout acts, so it repeats
/// exactly; many-to-one gives `[B, O]`.
#[test]
fn outputs_are_what_the_loss_scores() {
    let (t, b, o) = (5, 3, 2);
    let cfg = RnnConfig::lstm(3, 6, o).layers(2).bidirectional();
    let sum = LossSpec {
        reduction: Reduction::Sum,
        ..LossSpec::every_step(LossKind::Mse)
    };
    let mut tr = Trainer::<f64>::new(cfg, sum, OptimizerKind::sgd(0.1), 4)
        .unwrap()
        .with_dropout(Dropout::new(0.5, 3).unwrap());
    let x: Vec<f64> = (0..t * b * 3)
        .map(|k| ((k * 7 % 11) as f64) / 5.0 - 1.0)
        .collect();
    let y: Vec<f64> = (0..t * b * o)
        .map(|k| ((k * 5 % 7) as f64) / 3.0 - 1.0)
        .collect();
    let lengths = [5, 2, 4];
    let batch = Batch {
        lengths: Some(&lengths),
        ..Batch::new(t, b, &x, Target::Values(&y))
    };
    tr.step(&batch).unwrap();
    let out = tr.outputs(&batch).unwrap().to_vec();
    assert_eq!(out.len(), t * b * o);
    let scored: f64 = (0..t * b)
        .filter(|p| p / b < lengths[p % b])
        .flat_map(|p| (0..o).map(move |j| p * o + j))
        .map(|i| (out[i] - y[i]).powi(2))
        .sum();
    let loss = tr.evaluate(&batch).unwrap();
    assert!((scored - loss).abs() <= 1e-12 * loss, "{scored} vs {loss}");
    assert_eq!(tr.outputs(&batch).unwrap(), &out[..]);

    let mut last = Trainer::<f64>::new(
        RnnConfig::gru(3, 6, o),
        LossSpec::last_step(LossKind::Mse),
        OptimizerKind::sgd(0.1),
        4,
    )
    .unwrap();
    let many_to_one = last.outputs(&Batch::new(t, b, &x, Target::Values(&[])));
    assert_eq!(many_to_one.unwrap().len(), b * o);
}

/// BCE's positive weights: only on `BceWithLogits`, one per output, finite and
/// non-negative; its weights per output (`with_class_weights`) the same.
#[test]
fn bad_pos_weights_are_typed_errors() {
    let bce = LossSpec::every_step(LossKind::BceWithLogits);
    for kind in [LossKind::Mse, LossKind::CrossEntropy] {
        let e = LossSpec::every_step(kind)
            .with_pos_weights(&[1.0])
            .unwrap_err();
        assert!(
            matches!(e, RnnError::Config(ref m) if m.contains("BCE")),
            "{e}"
        );
    }
    for bad in [&[-1.0][..], &[f64::NAN], &[]] {
        assert!(bce.clone().with_pos_weights(bad).is_err());
    }
    assert!(bce.clone().with_class_weights(&[-1.0]).is_err());
    let rescaled = bce.clone().with_class_weights(&[1.0, 2.0]).unwrap();
    let e = Trainer::<f64>::new(
        RnnConfig::new(2, 3, 3),
        rescaled,
        OptimizerKind::sgd(0.1),
        0,
    );
    assert!(
        matches!(e, Err(RnnError::ShapeMismatch { ref what, .. }) if what == "class weights"),
        "{:?}",
        e.err()
    );
    for kind in [LossKind::Mse, LossKind::L1] {
        let e = LossSpec::every_step(kind).with_class_weights(&[1.0]);
        assert!(matches!(e, Err(RnnError::Config(ref m)) if m.contains("BCE")));
    }
    let spec = bce.with_pos_weights(&[1.0, 2.0]).unwrap();
    let e = Trainer::<f64>::new(
        RnnConfig::new(2, 3, 3),
        spec.clone(),
        OptimizerKind::sgd(0.1),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(e, RnnError::ShapeMismatch { ref what, .. } if what == "pos weights"),
        "{e}"
    );
    assert!(Trainer::<f64>::new(RnnConfig::new(2, 3, 2), spec, OptimizerKind::sgd(0.1), 0).is_ok());
}
