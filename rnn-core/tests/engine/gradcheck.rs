//! Every gradient the engine computes, checked against central finite differences in f64,
//! for every cell, option and odd shape; and f32 against f64.

use crate::common::Data;

use approx::assert_relative_eq;
use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::{Batch, IGNORED_LABEL, Target};
use rnn_core::config::{
    Cell, ClassWeights, LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig,
};
use rnn_core::dropout::Dropout;
use std::num::NonZeroUsize;

use rnn_core::network::{PassOptions, TimeChunks, UnitSplit, forward_backward};
use rnn_core::params::{Layout, init_params};
use rnn_core::workspace::Workspace;

#[derive(Clone, Debug)]
struct Case {
    cell: Cell,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    o: usize,
    layers: usize,
    act: Nonlinearity,
    kind: LossKind,
    reduction: Reduction,
    many_to_one: bool,
    lengths: bool,
    h0: bool,
    learn_h0: bool,
    split: UnitSplit,
    chunks: TimeChunks,
    dropout: Option<Dropout>,
    bias: bool,
    /// Every `n`-th class label (from the second) is [`IGNORED_LABEL`]; 0: none.
    ignore_every: usize,
    /// Cross-entropy's class weights.
    class_weights: Option<ClassWeights>,
    /// BCE's positive weights per output.
    pos_weights: Option<ClassWeights>,
    /// Both directions in every layer.
    bidirectional: bool,
    /// Token input through an embedding of this many tokens.
    embedding: Option<usize>,
    /// Uneven sequence weights, the first 0 ([`Data::weighted`]).
    sequence_weights: bool,
    /// LSTM projections of this width.
    proj: Option<usize>,
}

fn spec(c: &Case) -> LossSpec {
    LossSpec {
        kind: c.kind,
        reduction: c.reduction,
        many_to_one: c.many_to_one,
        class_weights: c.class_weights.clone(),
        pos_weights: c.pos_weights.clone(),
    }
}

fn cfg(c: &Case) -> RnnConfig {
    let cfg = RnnConfig::new(c.i, c.h, c.o)
        .cell(c.cell)
        .layers(c.layers)
        .bias(c.bias);
    RnnConfig {
        learn_h0: c.learn_h0,
        bidirectional: c.bidirectional,
        num_embeddings: c.embedding,
        proj_size: c.proj,
        ..cfg
    }
}

fn data(c: &Case, rng: &mut StdRng) -> Data {
    let mut d = Data::random(rng, &cfg(c), c.t, c.b, c.many_to_one);
    if c.ignore_every > 0 {
        for label in d.classes.iter_mut().skip(1).step_by(c.ignore_every) {
            *label = IGNORED_LABEL;
        }
    }
    if c.sequence_weights { d.weighted() } else { d }
}

fn batch<'a>(c: &Case, d: &'a Data) -> Batch<'a, f64> {
    d.batch(c.t, c.b, c.kind, c.lengths, c.h0)
}

/// The loss of case `c` over `d`, with parameters `params` of `cfg` (`c`'s config, or a
/// variant of it).
fn loss_of(c: &Case, cfg: &RnnConfig, params: &[f64], d: &Data) -> f64 {
    let layout = Layout::new(cfg);
    let spec = spec(c);
    let mut grads = vec![0.0; layout.len];
    let opts = PassOptions {
        split: c.split,
        chunks: c.chunks,
        dropout: c.dropout,
        ..Default::default()
    };
    forward_backward(
        cfg,
        &layout,
        params,
        &mut grads,
        &mut Workspace::new(),
        &batch(c, d),
        &spec,
        opts,
    )
    .unwrap()
}

/// Checks every gradient of `c` against finite differences; returns `y - target` at every
/// position of the head's outputs (empty for class labels), for callers that need to know
/// what the loss saw.
fn check(c: &Case, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cfg = cfg(c).nonlinearity(c.act);
    cfg.learn_h0 = c.learn_h0;
    let layout = Layout::new(&cfg);
    // Larger weights than PyTorch's init make every path matter numerically.
    let params: Vec<f64> = init_params::<f64>(&cfg, seed)
        .iter()
        .map(|p| p * 2.0)
        .collect();
    let d = data(c, &mut rng);
    let spec = spec(c);
    let mut ws = Workspace::new();
    let mut grads = vec![0.0; layout.len];
    let opts = PassOptions {
        input_grad: true,
        split: c.split,
        chunks: c.chunks,
        dropout: c.dropout,
        ..Default::default()
    };
    forward_backward(
        &cfg,
        &layout,
        &params,
        &mut grads,
        &mut ws,
        &batch(c, &d),
        &spec,
        opts,
    )
    .unwrap();
    let (dx, dh0, dc0) = (ws.dx.clone(), ws.dh0.clone(), ws.dc0.clone());
    let errors: Vec<f64> = if c.kind.takes_values() {
        ws.y.iter().zip(&d.values).map(|(y, t)| y - t).collect()
    } else {
        Vec::new()
    };

    let eps = 1e-6;
    let loss_at = |p: &[f64], d: &Data| loss_of(c, &cfg, p, d);
    let close = |analytic: f64, numeric: f64, what: &str| {
        assert!(
            (analytic - numeric).abs() <= 1e-7 + 1e-5 * numeric.abs().max(analytic.abs()),
            "{c:?}: {what}: analytic {analytic} vs numeric {numeric}"
        );
    };
    for tensor in &layout.tensors {
        for idx in tensor.range.clone() {
            let mut p = params.clone();
            p[idx] += eps;
            let up = loss_at(&p, &d);
            p[idx] -= 2.0 * eps;
            let down = loss_at(&p, &d);
            close(
                grads[idx],
                (up - down) / (2.0 * eps),
                &format!("{}[{}]", tensor.name, idx - tensor.range.start),
            );
        }
    }
    let perturbed = |field: fn(&mut Data) -> &mut Vec<f64>, idx: usize, delta: f64| {
        let mut dd = data(c, &mut StdRng::seed_from_u64(seed)); // the same draw as `d`
        field(&mut dd)[idx] += delta;
        loss_at(&params, &dd)
    };
    // Token ids have no gradient: the embedding's is checked with the other parameters.
    let dense_x = if c.embedding.is_some() { 0 } else { d.x.len() };
    for idx in 0..dense_x {
        let numeric =
            (perturbed(|d| &mut d.x, idx, eps) - perturbed(|d| &mut d.x, idx, -eps)) / (2.0 * eps);
        close(dx[idx], numeric, &format!("x[{idx}]"));
    }
    if c.h0 {
        for idx in 0..d.h0.len() {
            let numeric = (perturbed(|d| &mut d.h0, idx, eps)
                - perturbed(|d| &mut d.h0, idx, -eps))
                / (2.0 * eps);
            close(dh0[idx], numeric, &format!("h0[{idx}]"));
        }
        for idx in 0..d.c0.len() {
            let numeric = (perturbed(|d| &mut d.c0, idx, eps)
                - perturbed(|d| &mut d.c0, idx, -eps))
                / (2.0 * eps);
            close(dc0[idx], numeric, &format!("c0[{idx}]"));
        }
    }
    errors
}

const GATED: [Cell; 2] = [Cell::Lstm, Cell::Gru];
const CELLS: [Cell; 3] = [Cell::Rnn, Cell::Lstm, Cell::Gru];

fn base() -> Case {
    Case {
        cell: Cell::Rnn,
        t: 4,
        b: 3,
        i: 3,
        h: 5,
        o: 3,
        layers: 1,
        act: Nonlinearity::Tanh,
        kind: LossKind::Mse,
        reduction: Reduction::Mean,
        many_to_one: false,
        lengths: false,
        h0: true,
        learn_h0: false,
        split: UnitSplit::Auto,
        chunks: TimeChunks::Auto,
        dropout: None,
        bias: true,
        ignore_every: 0,
        class_weights: None,
        pos_weights: None,
        bidirectional: false,
        embedding: None,
        sequence_weights: false,
        proj: None,
    }
}

/// MSE for even seeds, cross-entropy for odd ones: sweeps that vary the seed cover both.
fn alternate_loss(seed: u64) -> LossKind {
    if seed.is_multiple_of(2) {
        LossKind::Mse
    } else {
        LossKind::CrossEntropy
    }
}

fn steps(n: usize) -> TimeChunks {
    TimeChunks::Steps(NonZeroUsize::new(n).expect("a positive chunk length"))
}

/// Checks `case` with both losses, both placements, with and without lengths and both
/// reductions, one seed after `seed` each.
fn check_every_loss_option(case: &Case, seed: &mut u64) {
    for kind in [LossKind::Mse, LossKind::CrossEntropy] {
        for many_to_one in [false, true] {
            for lengths in [false, true] {
                for reduction in [Reduction::Mean, Reduction::Sum] {
                    *seed += 1;
                    let option = Case {
                        kind,
                        many_to_one,
                        lengths,
                        reduction,
                        ..case.clone()
                    };
                    check(&option, *seed);
                }
            }
        }
    }
}

#[test]
fn every_option_matches_finite_differences() {
    let mut seed = 0;
    for act in [Nonlinearity::Tanh, Nonlinearity::Relu] {
        check_every_loss_option(&Case { act, ..base() }, &mut seed);
    }
}

/// (many-to-one, lengths, reduction): each placement with and without lengths, each reduction
/// twice, in four checks.
const PLACEMENTS: [(bool, bool, Reduction); 4] = [
    (false, false, Reduction::Mean),
    (false, true, Reduction::Sum),
    (true, false, Reduction::Sum),
    (true, true, Reduction::Mean),
];

/// L1, Huber and smooth L1, every cell, both placements, with and without lengths, both
/// reductions. The threshold sits inside the spread of the errors, so both branches of
/// Huber and smooth L1 are scored (asserted, where every position is scored), not only one.
#[test]
fn l1_and_huber_match_finite_differences() {
    let delta = 0.4;
    let mut seed = 900;
    for cell in CELLS {
        let thresholded = [LossKind::huber(delta), LossKind::smooth_l1(delta)];
        for kind in [LossKind::L1]
            .into_iter()
            .chain(thresholded.map(Result::unwrap))
        {
            for (many_to_one, lengths, reduction) in PLACEMENTS {
                seed += 1;
                let case = Case {
                    cell,
                    kind,
                    many_to_one,
                    lengths,
                    reduction,
                    ..base()
                };
                let errors = check(&case, seed);
                if kind != LossKind::L1 && !lengths {
                    let inside = errors.iter().filter(|e| e.abs() < delta).count();
                    assert!(
                        inside > 0 && inside < errors.len(),
                        "{case:?}: {inside} of {} errors within delta",
                        errors.len()
                    );
                }
            }
        }
    }
}

/// Binary cross-entropy on logits, every cell, both placements, with and without lengths,
/// both reductions.
#[test]
fn bce_with_logits_matches_finite_differences() {
    for (k, cell) in CELLS.into_iter().enumerate() {
        for (p, (many_to_one, lengths, reduction)) in PLACEMENTS.into_iter().enumerate() {
            let case = Case {
                cell,
                kind: LossKind::BceWithLogits,
                many_to_one,
                lengths,
                reduction,
                ..base()
            };
            check(&case, 1300 + 10 * k as u64 + p as u64);
        }
    }
}

/// Binary cross-entropy with positive weights per output (PyTorch's `pos_weight`), with a
/// weight per output (its `weight`), and with both, every cell, with lengths, both
/// reductions.
#[test]
fn weighted_bce_matches_finite_differences() {
    for (k, cell) in CELLS.into_iter().enumerate() {
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let case = Case {
                cell,
                kind: LossKind::BceWithLogits,
                lengths: true,
                reduction,
                ..base()
            };
            let weights = |w: &[f64]| Some(ClassWeights::new(&w[..case.o]).unwrap());
            let (pos, rescale) = (weights(&[0.5, 3.0, 1.0]), weights(&[2.0, 0.25, 1.5]));
            for (p, (pos_weights, class_weights)) in
                [(pos.clone(), None), (None, rescale.clone()), (pos, rescale)]
                    .into_iter()
                    .enumerate()
            {
                let case = Case {
                    pos_weights,
                    class_weights,
                    ..case.clone()
                };
                let seed = 1400 + 10 * k as u64 + 3 * reduction as u64 + p as u64;
                check(&case, seed);
            }
        }
    }
}

/// Cross-entropy with every third label ignored (PyTorch's `ignore_index`), every cell, both
/// placements, with and without lengths, both reductions; and labelling an ignored position
/// changes the loss (it was not scored as some class). The mean's divisor, which finite
/// differences cannot see, is pinned by PyTorch fixtures (golden.rs).
#[test]
fn ignored_labels_match_finite_differences() {
    let mut seed = 1000;
    for cell in CELLS {
        for (many_to_one, lengths, reduction) in PLACEMENTS {
            seed += 1;
            let case = Case {
                cell,
                kind: LossKind::CrossEntropy,
                many_to_one,
                lengths,
                reduction,
                ignore_every: 3,
                ..base()
            };
            check(&case, seed);
        }
    }
    let case = Case {
        kind: LossKind::CrossEntropy,
        ignore_every: 3,
        ..base()
    };
    let cfg = cfg(&case);
    let params = init_params::<f64>(&cfg, 1);
    let mut d = data(&case, &mut StdRng::seed_from_u64(1));
    let ignoring = loss_of(&case, &cfg, &params, &d);
    d.classes[1] = 0; // now labelled: scored, and the mean divides by one more position
    assert_ne!(loss_of(&case, &cfg, &params, &d), ignoring);
}

/// Cross-entropy with label smoothing (PyTorch's `label_smoothing`), every cell, both
/// placements, with and without lengths, both reductions, some labels ignored; and the
/// smoothing changes the loss (it is not dropped on the way). PyTorch fixtures pin the
/// values (golden.rs).
#[test]
fn label_smoothing_matches_finite_differences() {
    let smoothed = LossKind::cross_entropy(0.25).unwrap();
    let mut seed = 1100;
    for cell in CELLS {
        for (many_to_one, lengths, reduction) in PLACEMENTS {
            seed += 1;
            let case = Case {
                cell,
                kind: smoothed,
                many_to_one,
                lengths,
                reduction,
                ignore_every: 4,
                ..base()
            };
            check(&case, seed);
        }
    }
    let case = Case {
        kind: smoothed,
        ..base()
    };
    let cfg = cfg(&case);
    let params = init_params::<f64>(&cfg, 1);
    let d = data(&case, &mut StdRng::seed_from_u64(1));
    let hard = Case {
        kind: LossKind::CrossEntropy,
        ..case.clone()
    };
    assert_ne!(
        loss_of(&case, &cfg, &params, &d),
        loss_of(&hard, &cfg, &params, &d)
    );
}

/// Class weights (PyTorch's `weight`), with and without label smoothing, every cell and
/// placement, ignored labels, both reductions; a class of weight 0 among them.
#[test]
fn class_weights_match_finite_differences() {
    let weights = ClassWeights::new(&[0.5, 0.0, 2.5]).unwrap();
    let mut seed = 1200;
    for cell in CELLS {
        for kind in [
            LossKind::CrossEntropy,
            LossKind::cross_entropy(0.3).unwrap(),
        ] {
            for (many_to_one, lengths, reduction) in PLACEMENTS {
                seed += 1;
                let case = Case {
                    cell,
                    kind,
                    many_to_one,
                    lengths,
                    reduction,
                    ignore_every: 5,
                    class_weights: Some(weights.clone()),
                    ..base()
                };
                check(&case, seed);
            }
        }
    }
    // The weights change the loss: they are not ignored.
    let case = Case {
        kind: LossKind::CrossEntropy,
        class_weights: Some(weights),
        ..base()
    };
    let cfg = cfg(&case);
    let params = init_params::<f64>(&cfg, 1);
    let d = data(&case, &mut StdRng::seed_from_u64(1));
    let unweighted = Case {
        class_weights: None,
        ..case.clone()
    };
    assert_ne!(
        loss_of(&case, &cfg, &params, &d),
        loss_of(&unweighted, &cfg, &params, &d)
    );
}

/// Sequence weights: every cell, both placements, with and without lengths, both
/// reductions, MSE and cross-entropy with ignored labels and class weights, a
/// bidirectional layer and time chunks, with a sequence of weight 0 among them.
#[test]
fn sequence_weights_match_finite_differences() {
    let mut seed = 1300;
    for cell in CELLS {
        for (k, (many_to_one, lengths, reduction)) in PLACEMENTS.into_iter().enumerate() {
            seed += 1;
            let ce = k % 2 == 1;
            let case = Case {
                cell,
                b: 4,
                kind: if ce {
                    LossKind::cross_entropy(0.2).unwrap()
                } else {
                    LossKind::Mse
                },
                many_to_one,
                lengths,
                reduction,
                ignore_every: if ce { 4 } else { 0 },
                class_weights: ce.then(|| ClassWeights::new(&[0.5, 1.0, 2.5]).unwrap()),
                bidirectional: k == 2,
                chunks: if k == 0 { steps(2) } else { TimeChunks::Auto },
                sequence_weights: true,
                ..base()
            };
            check(&case, seed);
        }
    }
    // The weights change the loss: they are not ignored.
    let case = Case {
        b: 4,
        sequence_weights: true,
        ..base()
    };
    let cfg = cfg(&case);
    let params = init_params::<f64>(&cfg, 1);
    let d = data(&case, &mut StdRng::seed_from_u64(1));
    let unweighted = Case {
        sequence_weights: false,
        ..case.clone()
    };
    let d0 = data(&unweighted, &mut StdRng::seed_from_u64(1));
    assert_ne!(
        loss_of(&case, &cfg, &params, &d),
        loss_of(&unweighted, &cfg, &params, &d0)
    );
}

/// Bidirectional layers (PyTorch's `bidirectional=True`): every cell, one and two layers,
/// both placements, lengths (each sequence reversed within its own length), both reductions
/// and losses, given and learned initial states, dropout between layers, odd sizes.
#[test]
fn bidirectional_layers_match_finite_differences() {
    let mut seed = 1300;
    for cell in CELLS {
        for layers in [1, 2] {
            for (many_to_one, lengths, reduction) in PLACEMENTS {
                seed += 1;
                let case = Case {
                    cell,
                    layers,
                    kind: alternate_loss(seed),
                    many_to_one,
                    lengths,
                    reduction,
                    bidirectional: true,
                    ..base()
                };
                check(&case, seed);
            }
        }
        seed += 1;
        let learned = Case {
            cell,
            layers: 2,
            t: 5,
            b: 1,
            h: 7,
            lengths: false,
            learn_h0: true,
            h0: false,
            bidirectional: true,
            ..base()
        };
        check(&learned, seed);
        seed += 1;
        let dropped = Case {
            cell,
            layers: 3,
            kind: LossKind::CrossEntropy,
            lengths: true,
            dropout: Some(Dropout::new(0.4, 7).unwrap()),
            bidirectional: true,
            ..base()
        };
        check(&dropped, seed);
        seed += 1;
        let one_step = Case {
            cell,
            t: 1,
            b: 2,
            layers: 2,
            kind: LossKind::CrossEntropy,
            bidirectional: true,
            ..base()
        };
        check(&one_step, seed);
    }
}

/// Token input through an embedding (`nn.Embedding` before the first layer): every cell,
/// both placements, lengths (a padded position's token gets no gradient), reductions, a
/// vocabulary of a token or two more than the sequence (so tokens repeat and their
/// gradients add), bidirectional, dropout.
#[test]
fn embeddings_match_finite_differences() {
    let mut seed = 1400;
    for cell in CELLS {
        for (many_to_one, lengths, reduction) in PLACEMENTS {
            seed += 1;
            let case = Case {
                cell,
                kind: alternate_loss(seed),
                many_to_one,
                lengths,
                reduction,
                embedding: Some(5),
                ..base()
            };
            check(&case, seed);
        }
        seed += 1;
        let stacked = Case {
            cell,
            layers: 2,
            kind: LossKind::CrossEntropy,
            lengths: true,
            embedding: Some(3),
            bidirectional: true,
            dropout: Some(Dropout::new(0.3, 2).unwrap()),
            ..base()
        };
        check(&stacked, seed);
    }
}

/// LSTM projections (`proj_size`): both losses, both placements, lengths, both reductions;
/// then stacked, bidirectional, learned states, dropout, tokens, time chunks, one step, a
/// batch of one, a projection of one unit, and steps split into blocks of sequences.
#[test]
fn lstm_projections_match_finite_differences() {
    let mut seed = 1700;
    let projected = Case {
        cell: Cell::Lstm,
        h: 5,
        proj: Some(3),
        ..base()
    };
    check_every_loss_option(&projected, &mut seed);
    let variants = [
        Case {
            layers: 2,
            lengths: true,
            ..projected.clone()
        },
        Case {
            layers: 2,
            lengths: true,
            bidirectional: true,
            kind: LossKind::CrossEntropy,
            ..projected.clone()
        },
        Case {
            layers: 2,
            bidirectional: true,
            many_to_one: true,
            lengths: true,
            ..projected.clone()
        },
        Case {
            layers: 2,
            learn_h0: true,
            h0: false,
            ..projected.clone()
        },
        Case {
            layers: 3,
            lengths: true,
            dropout: Some(Dropout::new(0.3, 5).unwrap()),
            ..projected.clone()
        },
        Case {
            embedding: Some(4),
            kind: LossKind::CrossEntropy,
            ..projected.clone()
        },
        Case {
            t: 7,
            layers: 2,
            lengths: true,
            chunks: steps(3),
            ..projected.clone()
        },
        Case {
            t: 1,
            ..projected.clone()
        },
        Case {
            b: 1,
            t: 6,
            many_to_one: true,
            ..projected.clone()
        },
        Case {
            proj: Some(1),
            bias: false,
            layers: 2,
            ..projected.clone()
        },
        // Split steps: two blocks of sequences (of 1 and 2 rows, and of 2 and 3), with
        // lengths, time chunks, both directions and a one-step pass.
        Case {
            layers: 2,
            lengths: true,
            split: UnitSplit::Halves,
            ..projected.clone()
        },
        Case {
            t: 7,
            b: 5,
            lengths: true,
            many_to_one: true,
            chunks: steps(3),
            split: UnitSplit::Halves,
            ..projected.clone()
        },
        Case {
            layers: 2,
            lengths: true,
            bidirectional: true,
            kind: LossKind::CrossEntropy,
            split: UnitSplit::Halves,
            ..projected.clone()
        },
        Case {
            t: 1,
            split: UnitSplit::Halves,
            ..projected.clone()
        },
    ];
    for case in variants {
        seed += 1;
        check(&case, seed);
    }
}

/// A projected LSTM's steps split into blocks of sequences compute what whole steps do
/// (within rounding): loss, every gradient, `dL/dx`, `dL/dh0`, `dL/dc0` and the telemetry.
/// Finite differences alone would not tell: a block that read another's rows would be a
/// different function with consistent gradients.
#[test]
fn projected_row_halves_equal_whole_steps() {
    let projected = Case {
        cell: Cell::Lstm,
        t: 7,
        b: 5,
        h: 6,
        proj: Some(4),
        layers: 2,
        lengths: true,
        ..base()
    };
    let cases = [
        projected.clone(),
        Case {
            many_to_one: true,
            chunks: steps(3),
            kind: LossKind::CrossEntropy,
            ..projected.clone()
        },
        Case {
            bidirectional: true,
            ..projected.clone()
        },
        Case {
            layers: 3,
            dropout: Some(Dropout::new(0.3, 9).unwrap()),
            b: 4,
            ..projected.clone()
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let cfg = cfg(case);
        let layout = Layout::new(&cfg);
        let params = init_params::<f64>(&cfg, 11);
        let d = data(case, &mut StdRng::seed_from_u64(12 + k as u64));
        let run = |split| {
            let mut ws = Workspace::new();
            let mut grads = vec![0.0; layout.len];
            let opts = PassOptions {
                input_grad: true,
                telemetry: true,
                split,
                chunks: case.chunks,
                dropout: case.dropout,
                ..Default::default()
            };
            let b = batch(case, &d);
            let loss = forward_backward(
                &cfg,
                &layout,
                &params,
                &mut grads,
                &mut ws,
                &b,
                &spec(case),
                opts,
            )
            .unwrap();
            let dc0 = ws.dc0.to_vec();
            let parts = [grads, ws.dx.to_vec(), ws.dh0.to_vec(), dc0, ws.grad_h_norms];
            (loss, parts)
        };
        let (whole, split) = (run(UnitSplit::Whole), run(UnitSplit::Halves));
        assert!((whole.0 - split.0).abs() <= 1e-13, "case {k}: loss");
        let names = ["grads", "dx", "dh0", "dc0", "telemetry"];
        for ((a, b), name) in whole.1.iter().zip(&split.1).zip(names) {
            assert_eq!(a.len(), b.len(), "case {k}: {name}");
            assert!(!a.is_empty(), "case {k}: {name}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-12, "case {k}: {name}[{i}] {x} vs {y}");
            }
        }
    }
}

/// LSTM and GRU: both losses, both placements, lengths, both reductions.
#[test]
fn gated_cells_every_option_matches_finite_differences() {
    let mut seed = 1000;
    for cell in GATED {
        check_every_loss_option(&Case { cell, ..base() }, &mut seed);
    }
}

#[test]
fn stacked_layers_match_finite_differences() {
    for cell in CELLS {
        for layers in [2, 3] {
            for kind in [LossKind::Mse, LossKind::CrossEntropy] {
                check(
                    &Case {
                        cell,
                        layers,
                        kind,
                        lengths: true,
                        ..base()
                    },
                    100 + layers as u64,
                );
                let act = if cell == Cell::Rnn {
                    Nonlinearity::Relu
                } else {
                    Nonlinearity::Tanh
                };
                check(
                    &Case {
                        cell,
                        layers,
                        kind,
                        many_to_one: true,
                        act,
                        ..base()
                    },
                    200 + layers as u64,
                );
            }
        }
    }
}

/// Dropout between layers: the mask is a function of the seed, so every pass of the check
/// drops the same elements and the loss is a smooth function of the weights. Stacks of two
/// and three layers, ragged lengths, both placements, in chunks of two steps (masks numbered
/// across chunks) and with each step split in unit halves.
#[test]
fn dropout_between_layers_matches_finite_differences() {
    let mut seed = 300;
    for cell in CELLS {
        for (layers, many_to_one, chunks, split) in [
            (2, false, TimeChunks::Auto, UnitSplit::Auto),
            (3, true, steps(2), UnitSplit::Auto),
            (2, false, steps(3), UnitSplit::Halves),
        ] {
            seed += 1;
            let case = Case {
                cell,
                layers,
                many_to_one,
                chunks,
                split,
                kind: alternate_loss(seed),
                lengths: true,
                dropout: Some(Dropout::new(0.4, seed).unwrap()),
                ..base()
            };
            check(&case, seed);
        }
    }
}

#[test]
fn odd_shapes_match_finite_differences() {
    // B = 1 (the GEMV path), T = 1, sizes that are not multiples of any vector width,
    // H = 17 straddles a 16-lane register.
    for (t, b, i, h, o) in [
        (1, 1, 1, 1, 1),
        (1, 3, 2, 4, 2),
        (5, 1, 2, 17, 3),
        (3, 2, 17, 9, 5),
        (2, 5, 1, 33, 2),
    ] {
        for (cell, kind) in CELLS
            .into_iter()
            .flat_map(|c| [(c, LossKind::Mse), (c, LossKind::CrossEntropy)])
        {
            check(
                &Case {
                    cell,
                    t,
                    b,
                    i,
                    h,
                    o,
                    kind,
                    ..base()
                },
                (t * 100 + b * 10 + h) as u64,
            );
            check(
                &Case {
                    cell,
                    t,
                    b,
                    i,
                    h,
                    o,
                    kind,
                    h0: false,
                    many_to_one: true,
                    ..base()
                },
                (t * 7 + h) as u64,
            );
        }
    }
}

/// Each step split into two blocks of hidden units (what two per-step workers run): every
/// cell, with lengths (finished sequences inside a block), stacked layers, odd `H` (uneven
/// blocks, `H = 17` across a register), a learned state, one-step and batch-1 shapes.
#[test]
fn unit_halves_match_finite_differences() {
    let mut seed = 500;
    for cell in CELLS {
        for (t, b, h, layers, lengths, many_to_one, learn_h0) in [
            (4, 3, 5, 1, true, false, false),
            (3, 2, 17, 2, true, true, false),
            (1, 1, 2, 1, false, false, true),
            (4, 3, 6, 2, false, false, true),
        ] {
            seed += 1;
            check(
                &Case {
                    cell,
                    t,
                    b,
                    h,
                    layers,
                    lengths,
                    many_to_one,
                    learn_h0,
                    h0: !learn_h0,
                    kind: alternate_loss(seed),
                    split: UnitSplit::Halves,
                    ..base()
                },
                seed,
            );
        }
    }
}

/// Layers without biases (PyTorch's `bias=False`): every cell, stacked, with lengths, both
/// placements, whole steps, unit halves and time chunks, a learned state, and dropout.
#[test]
fn layers_without_biases_match_finite_differences() {
    let mut seed = 600;
    for cell in CELLS {
        for (layers, many_to_one, split, chunk, learn_h0, dropout) in [
            (1, false, UnitSplit::Whole, None, false, false),
            (2, true, UnitSplit::Halves, None, false, false),
            (2, false, UnitSplit::Halves, Some(2), true, false),
            (3, false, UnitSplit::Whole, Some(3), false, true),
        ] {
            seed += 1;
            check(
                &Case {
                    cell,
                    t: 5,
                    h: 6,
                    layers,
                    lengths: true,
                    many_to_one,
                    learn_h0,
                    h0: !learn_h0,
                    kind: alternate_loss(seed),
                    split,
                    chunks: chunk.map_or(TimeChunks::Auto, steps),
                    dropout: dropout.then(|| Dropout::new(0.4, seed).unwrap()),
                    bias: false,
                    ..base()
                },
                seed,
            );
        }
    }
}

/// Steps run a chunk at a time (the gradient of a chunk's first step carried into the chunk
/// before it, weight gradients summed over chunks): every cell, chunks of 1-3 steps at
/// T = 5 (a shorter last chunk), with lengths (sequences ending inside and at the edge of a
/// chunk), stacked layers, both placements and losses, given and learned initial states,
/// whole steps and unit halves.
#[test]
fn time_chunks_match_finite_differences() {
    let mut seed = 700;
    for cell in CELLS {
        for (chunk, layers, lengths, many_to_one, learn_h0, split) in [
            (1, 1, true, false, false, UnitSplit::Whole),
            (2, 2, true, false, false, UnitSplit::Halves),
            (3, 2, true, true, false, UnitSplit::Whole),
            (2, 1, false, false, true, UnitSplit::Halves),
            (3, 3, true, false, true, UnitSplit::Whole),
        ] {
            seed += 1;
            check(
                &Case {
                    cell,
                    t: 5,
                    layers,
                    lengths,
                    many_to_one,
                    learn_h0,
                    h0: !learn_h0,
                    kind: alternate_loss(seed),
                    split,
                    chunks: steps(chunk),
                    ..base()
                },
                seed,
            );
        }
    }
}

/// A learned initial state (`rnn.h0`, and `rnn.c0` for LSTM, broadcast over the batch) gets
/// the gradient summed over sequences; `check` perturbs it like every other parameter.
#[test]
fn learned_h0_matches_finite_differences() {
    for (cell, layers, kind, lengths) in CELLS.into_iter().flat_map(|cell| {
        [
            (cell, 1, LossKind::Mse, false),
            (cell, 2, LossKind::CrossEntropy, true),
            (cell, 3, LossKind::Mse, true),
        ]
    }) {
        check(
            &Case {
                cell,
                layers,
                kind,
                lengths,
                h0: false,
                learn_h0: true,
                ..base()
            },
            300 + layers as u64,
        );
    }
    check(
        &Case {
            b: 1,
            t: 1,
            h0: false,
            learn_h0: true,
            many_to_one: true,
            ..base()
        },
        399,
    );
}

/// Without a given h0 the engine still reports dL/dh0: it equals the gradient at h0 = 0.
#[test]
fn zero_h0_gradient_equals_explicit_zero_state() {
    let c = Case {
        h0: false,
        layers: 2,
        ..base()
    };
    let cfg = RnnConfig::new(c.i, c.h, c.o).layers(2);
    let layout = Layout::new(&cfg);
    let params = init_params::<f64>(&cfg, 9);
    let d = data(&c, &mut StdRng::seed_from_u64(9));
    let spec = LossSpec::every_step(LossKind::Mse);
    let zeros = vec![0.0; c.layers * c.b * c.h];
    let run = |h0: Option<&[f64]>| {
        let mut ws = Workspace::new();
        let mut g = vec![0.0; layout.len];
        let b = Batch {
            h0,
            ..batch(&c, &d)
        };
        let l = forward_backward(
            &cfg,
            &layout,
            &params,
            &mut g,
            &mut ws,
            &b,
            &spec,
            PassOptions::default(),
        )
        .unwrap();
        (l, g, ws.dh0)
    };
    let (l1, g1, d1) = run(None);
    let (l2, g2, d2) = run(Some(&zeros));
    assert_eq!((l1, g1), (l2, g2));
    assert_eq!(d1, d2);
    assert!(d1.iter().any(|v| *v != 0.0));
}

/// The f32 engine agrees with the f64 one to f32 precision.
#[test]
fn f32_agrees_with_f64() {
    let weights = ClassWeights::new(&[0.5, 2.0, 1.0, 0.0, 3.0]).unwrap();
    let cases = CELLS.into_iter().flat_map(|cell| {
        let weighted = Some(weights.clone());
        [
            (cell, 1, LossKind::Mse, None, false),
            (cell, 4, LossKind::CrossEntropy, None, false),
            (cell, 16, LossKind::Mse, None, false),
            (cell, 3, LossKind::L1, None, false),
            (cell, 8, LossKind::huber(0.5).unwrap(), None, false),
            (cell, 7, LossKind::smooth_l1(0.3).unwrap(), None, false),
            (cell, 5, LossKind::BceWithLogits, None, false),
            (cell, 4, LossKind::cross_entropy(0.1).unwrap(), None, false),
            (cell, 6, LossKind::CrossEntropy, weighted.clone(), false),
            (
                cell,
                5,
                LossKind::cross_entropy(0.2).unwrap(),
                weighted,
                false,
            ),
            (cell, 5, LossKind::CrossEntropy, None, true),
            (cell, 1, LossKind::Mse, None, true),
        ]
        .map(|case| (case, None))
    });
    // LSTM projections, one way and both.
    let projected = [
        (
            (Cell::Lstm, 4, LossKind::CrossEntropy, None, false),
            Some(13),
        ),
        ((Cell::Lstm, 5, LossKind::Mse, None, true), Some(9)),
    ];
    for ((cell, b, kind, class_weights, bidirectional), proj) in cases.chain(projected) {
        let c = Case {
            cell,
            t: 20,
            b,
            i: 7,
            h: 33,
            o: 5,
            kind,
            lengths: b > 1,
            layers: 2,
            class_weights,
            bidirectional,
            // Sequence weights wherever a batch has a few sequences (the first weighs 0).
            sequence_weights: (4..=6).contains(&b),
            proj,
            ..base()
        };
        let cfg = cfg(&c);
        let layout = Layout::new(&cfg);
        let p64 = init_params::<f64>(&cfg, 5);
        let p32: Vec<f32> = p64.iter().map(|&v| v as f32).collect();
        let d = data(&c, &mut StdRng::seed_from_u64(5));
        let spec = spec(&c);
        let mut g64 = vec![0.0; layout.len];
        let l64 = forward_backward(
            &cfg,
            &layout,
            &p64,
            &mut g64,
            &mut Workspace::new(),
            &batch(&c, &d),
            &spec,
            PassOptions::default(),
        )
        .unwrap();
        let x32: Vec<f32> = d.x.iter().map(|&v| v as f32).collect();
        let v32: Vec<f32> = d.values.iter().map(|&v| v as f32).collect();
        let h32: Vec<f32> = d.h0.iter().map(|&v| v as f32).collect();
        let c32: Vec<f32> = d.c0.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = d.weights.iter().map(|&v| v as f32).collect();
        let target = if kind.takes_values() {
            Target::Values(&v32[..])
        } else {
            Target::Classes(&d.classes[..])
        };
        let b32 = Batch {
            seq_len: c.t,
            batch: c.b,
            x: &x32,
            tokens: None,
            target,
            lengths: c.lengths.then_some(&d.lengths[..]),
            h0: Some(&h32),
            c0: (cell == Cell::Lstm).then_some(&c32[..]),
            score_from: 0,
            sequence_weights: (!w32.is_empty()).then_some(&w32[..]),
        };
        let mut g32 = vec![0.0f32; layout.len];
        let l32 = forward_backward(
            &cfg,
            &layout,
            &p32,
            &mut g32,
            &mut Workspace::new(),
            &b32,
            &spec,
            PassOptions::default(),
        )
        .unwrap();
        assert_relative_eq!(l32 as f64, l64, max_relative = 1e-5);
        let scale = g64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * scale,
                "{cell:?} {proj:?} grad {i}: f32 {a} vs f64 {b}"
            );
        }
    }
}
