//! A loss of the caller's own (`Trainer::step_with`, `network::forward_backward_with`): its
//! gradients against finite differences for every cell and option, a hand-written MSE
//! against the built-in one, padded rows, threads, and the batches and settings it refuses;
//! its gradient accumulation (`Trainer::accumulate_with`, `Tbptt::accumulate_with`).

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{LossKind, LossSpec, RnnConfig};
use rnn_core::error::RnnError;
use rnn_core::network::{self, PassOptions, TimeChunks, forward_backward_with};
use rnn_core::optim::{Clip, OptimizerKind};
use rnn_core::params::{Layout, init_params};
use rnn_core::tbptt::Tbptt;
use rnn_core::trainer::{Memory, Trainer};
use rnn_core::workspace::Workspace;

use crate::common::Data;

/// The rows (positions of `[T·B, O]` or `[B, O]`) a loss may read: not past a sequence's
/// length.
fn live_rows(lengths: &[usize], t: usize, many_to_one: bool) -> Vec<bool> {
    let b = lengths.len();
    match many_to_one {
        true => vec![true; b],
        false => (0..t * b).map(|p| p / b < lengths[p % b]).collect(),
    }
}

/// A loss no built-in one is: `Σ log cosh(y - z) + 0.1 y³` over the live rows, with its
/// gradient written into `dy` (zero elsewhere). `junk` goes into the rows it leaves out,
/// which the engine must ignore.
fn log_cosh_cubed(y: &[f64], dy: &mut [f64], z: &[f64], live: &[bool], junk: f64) -> f64 {
    let o = y.len() / live.len();
    let mut sum = 0.0;
    for (row, &alive) in live.iter().enumerate() {
        for k in row * o..(row + 1) * o {
            if !alive {
                dy[k] = junk;
                continue;
            }
            let e = y[k] - z[k];
            sum += e.cosh().ln() + 0.1 * y[k].powi(3);
            dy[k] = e.tanh() + 0.3 * y[k] * y[k];
        }
    }
    sum
}

/// The outputs of `params` over `batch` (a forward pass only).
fn outputs(cfg: &RnnConfig, params: &[f64], batch: &Batch<f64>, many_to_one: bool) -> Vec<f64> {
    let layout = Layout::new(cfg);
    let mut ws = Workspace::new();
    network::forward(
        cfg,
        &layout,
        params,
        &mut ws,
        batch,
        many_to_one,
        faer::Par::Seq,
    )
    .unwrap();
    let rows = if many_to_one { 1 } else { batch.seq_len } * batch.batch;
    ws.y[..rows * cfg.output_size].to_vec()
}

/// Every gradient of a loss of one's own against central differences, in f64: every cell,
/// stacked, bidirectional, projected, embedded and learned-state models, lengths, given
/// initial states, dropout, time chunks, at every step and at the last.
#[test]
fn own_losses_match_finite_differences() {
    let cases = [
        RnnConfig::new(3, 4, 2).layers(2),
        RnnConfig::lstm(3, 4, 3).projection(2),
        RnnConfig::gru(2, 3, 2).bidirectional(),
        RnnConfig::lstm(3, 3, 2).embedding(5),
        RnnConfig::gru(3, 4, 1).layers(2).learned_h0(),
        RnnConfig::lstm(2, 3, 2).layers(2).bidirectional(),
    ];
    for (case, cfg) in cases.into_iter().enumerate() {
        for many_to_one in [false, true] {
            let (t, b) = (4, 3);
            let mut rng = StdRng::seed_from_u64(case as u64);
            let d = Data::random(&mut rng, &cfg, t, b, many_to_one);
            let mut batch = d.batch(t, b, LossKind::Mse, true, !cfg.learn_h0);
            batch.target = Target::None;
            let layout = Layout::new(&cfg);
            let mut params = init_params::<f64>(&cfg, case as u64 + 11);
            let live = live_rows(&d.lengths, t, many_to_one);
            let z = &d.values;
            let opts = PassOptions {
                chunks: TimeChunks::Steps(2.try_into().unwrap()),
                dropout: (case % 2 == 1 && cfg.num_layers > 1)
                    .then(|| rnn_core::dropout::Dropout::new(0.4, 3).unwrap()),
                ..PassOptions::default()
            };
            let mut grads = vec![f64::NAN; layout.len];
            let loss = forward_backward_with(
                &cfg,
                &layout,
                &params,
                &mut grads,
                &mut Workspace::new(),
                &batch,
                many_to_one,
                opts,
                |y, dy| log_cosh_cubed(y, dy, z, &live, 1e3),
            )
            .unwrap();
            // The loss of the outputs as they are (dropout's masks replayed by a pass that
            // asks for them: the finite differences run the same masks).
            let loss_at = |p: &[f64]| {
                let mut g = vec![0.0; layout.len];
                forward_backward_with(
                    &cfg,
                    &layout,
                    p,
                    &mut g,
                    &mut Workspace::new(),
                    &batch,
                    many_to_one,
                    opts,
                    |y, dy| log_cosh_cubed(y, dy, z, &live, 0.0),
                )
                .unwrap()
            };
            assert_eq!(loss.to_bits(), loss_at(&params).to_bits());
            if opts.dropout.is_none() {
                let y = outputs(&cfg, &params, &batch, many_to_one);
                let mut dy = vec![0.0; y.len()];
                assert_eq!(loss, log_cosh_cubed(&y, &mut dy, z, &live, 0.0));
            }
            let eps = 1e-6;
            for k in 0..layout.len {
                let keep = params[k];
                params[k] = keep + eps;
                let up = loss_at(&params);
                params[k] = keep - eps;
                let down = loss_at(&params);
                params[k] = keep;
                let numeric = (up - down) / (2.0 * eps);
                let err = (grads[k] - numeric).abs() / (1.0 + numeric.abs());
                assert!(
                    err < 1e-6,
                    "case {case} ({many_to_one}): parameter {k}: {} against {numeric}",
                    grads[k]
                );
            }
        }
    }
}

/// The mean squared error written by hand gives the built-in MSE's loss and gradients
/// (within rounding: the kernels sum in another order), with lengths, at every step (from
/// step 0 or a later `score_from`) and at the last, for every cell.
#[test]
fn a_hand_written_mse_equals_the_built_in_one() {
    for (case, cfg) in [
        RnnConfig::new(3, 5, 2),
        RnnConfig::lstm(3, 5, 2).layers(2),
        RnnConfig::gru(3, 5, 2).bidirectional(),
    ]
    .into_iter()
    .enumerate()
    {
        for (many_to_one, score_from) in [(false, 0), (false, 2), (true, 0)] {
            let (t, b) = (5, 4);
            let mut rng = StdRng::seed_from_u64(case as u64 + 40);
            let d = Data::random(&mut rng, &cfg, t, b, many_to_one);
            let spec = match many_to_one {
                false => LossSpec::every_step(LossKind::Mse),
                true => LossSpec::last_step(LossKind::Mse),
            };
            let layout = Layout::new(&cfg);
            let params = init_params::<f64>(&cfg, 5);
            let built_in_batch = Batch {
                score_from,
                ..d.batch(t, b, LossKind::Mse, true, false)
            };
            let mut built_in = vec![0.0; layout.len];
            let want = network::forward_backward(
                &cfg,
                &layout,
                &params,
                &mut built_in,
                &mut Workspace::new(),
                &built_in_batch,
                &spec,
                PassOptions::default(),
            )
            .unwrap();
            // The rows the loss sees: those of the steps from `score_from` on.
            let first = if many_to_one { 0 } else { score_from * b };
            let live = &live_rows(&d.lengths, t, many_to_one)[first..];
            let o = cfg.output_size;
            let n = (live.iter().filter(|&&l| l).count() * o) as f64;
            let values = &d.values[first * o..];
            let mse = |y: &[f64], dy: &mut [f64]| {
                assert_eq!(y.len(), values.len());
                let mut sum = 0.0;
                for (k, (dy, (y, z))) in dy.iter_mut().zip(y.iter().zip(values)).enumerate() {
                    if live[k / o] {
                        sum += (y - z) * (y - z);
                        *dy = 2.0 * (y - z) / n;
                    }
                }
                sum / n
            };
            let mut own = vec![0.0; layout.len];
            let batch = Batch {
                target: Target::None,
                ..built_in_batch
            };
            let got = forward_backward_with(
                &cfg,
                &layout,
                &params,
                &mut own,
                &mut Workspace::new(),
                &batch,
                many_to_one,
                PassOptions::default(),
                mse,
            )
            .unwrap();
            assert!(
                (got - want).abs() < 1e-13,
                "case {case}: {got} against {want}"
            );
            for (k, (a, w)) in own.iter().zip(&built_in).enumerate() {
                assert!(
                    (a - w).abs() < 1e-13 * (1.0 + w.abs()),
                    "case {case}: {k}: {a} against {w}"
                );
            }
        }
    }
}

/// The trainer's steps with a loss of one's own train to the same bits on one and two
/// threads (a model whose steps split between them), and learn: the loss falls.
#[test]
fn own_loss_steps_are_bitwise_across_thread_counts_and_learn() {
    let cfg = RnnConfig::lstm(4, 256, 2).layers(2);
    let (t, b) = (12, 32);
    let x: Vec<f32> = (0..t * b * 4)
        .map(|k| ((k * 7 % 13) as f32 - 6.0) / 6.0)
        .collect();
    let z: Vec<f32> = (0..t * b)
        .map(|k| ((k * 5 % 11) as f32 - 5.0) / 5.0)
        .collect();
    // A Gaussian negative log-likelihood: output 0 the mean, output 1 the log-variance.
    let nll = |y: &[f32], dy: &mut [f32]| {
        let n = z.len() as f32;
        let mut sum = 0.0;
        for ((y, dy), z) in y.chunks_exact(2).zip(dy.chunks_exact_mut(2)).zip(&z) {
            let (err, precision) = (z - y[0], (-y[1]).exp());
            sum += 0.5 * (y[1] + err * err * precision);
            dy[0] = -err * precision / n;
            dy[1] = 0.5 * (1.0 - err * err * precision) / n;
        }
        sum / n
    };
    let train = |threads| {
        let spec = LossSpec::every_step(LossKind::Mse);
        let mut tr = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(1e-3), 3)
            .unwrap()
            .with_clip(Clip::Norm(1.0))
            .with_threads(threads);
        assert_eq!(tr.threads_for(t, b), threads);
        let batch = Batch::new(t, b, &x, Target::None);
        let losses: Vec<f32> = (0..6)
            .map(|_| tr.step_with(&batch, nll).unwrap().loss)
            .collect();
        (losses, tr.params.to_vec())
    };
    let (one, two) = (train(1), train(2));
    assert!(one.0[5] < one.0[0] - 0.05, "{:?}", one.0);
    assert_eq!(one, two);
}

/// `dy` comes zeroed to the loss, whatever the trainer's last step left in its workspace: a
/// loss that writes only some rows trains the same after a built-in step as before it.
#[test]
fn the_gradient_buffer_comes_zeroed() {
    let cfg = RnnConfig::gru(2, 4, 2);
    let spec = LossSpec::every_step(LossKind::Mse);
    let (t, b) = (3, 2);
    let (x, y) = (vec![0.3; t * b * 2], vec![0.9; t * b * 2]);
    let first_row = |y: &[f64], dy: &mut [f64]| {
        dy[..2].copy_from_slice(&y[..2]);
        0.5 * (y[0] * y[0] + y[1] * y[1])
    };
    let mut fresh = Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::sgd(0.1), 0).unwrap();
    let mut used = fresh.clone();
    used.loss_and_grads(&Batch::new(t, b, &x, Target::Values(&y)))
        .unwrap();
    let batch = Batch::new(t, b, &x, Target::None);
    fresh.loss_and_grads_with(&batch, first_row).unwrap();
    used.loss_and_grads_with(&batch, first_row).unwrap();
    assert_eq!(fresh.grads, used.grads);
}

/// A trainer that checkpoints ([`Memory::Checkpointed`]) gives a loss of one's own every
/// output at once and the whole pass's gradients (within rounding), at every step and at the
/// last, with lengths, an embedding, learned states and dropout, in segments that do and do
/// not divide `T`.
#[test]
fn checkpointed_steps_give_the_whole_passes_gradients() {
    let cases = [
        RnnConfig::new(3, 5, 2).layers(2),
        RnnConfig::lstm(3, 4, 3).projection(2),
        RnnConfig::gru(3, 4, 2).embedding(6),
        RnnConfig::lstm(3, 4, 1).layers(2).learned_h0(),
    ];
    for (case, cfg) in cases.into_iter().enumerate() {
        let runs = [
            (false, 2, 0),
            (false, 3, 0),
            (false, 2, 3),
            (true, 2, 0),
            (true, 4, 0),
        ];
        for (many_to_one, segment, score_from) in runs {
            let (t, b) = (7, 3);
            let mut rng = StdRng::seed_from_u64(case as u64 + 70);
            let d = Data::random(&mut rng, &cfg, t, b, many_to_one);
            let batch = Batch {
                target: Target::None,
                score_from,
                ..d.batch(t, b, LossKind::Mse, true, false)
            };
            // The rows the loss sees: from `score_from` on (segment 1 of 2-step segments
            // straddles it).
            let first = if many_to_one { 0 } else { score_from * b };
            let live = &live_rows(&d.lengths, t, many_to_one)[first..];
            let o = cfg.output_size;
            let spec = match many_to_one {
                false => LossSpec::every_step(LossKind::Mse),
                true => LossSpec::last_step(LossKind::Mse),
            };
            let run = |memory| {
                let mut tr = Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::sgd(0.1), 1)
                    .unwrap()
                    .with_memory(memory);
                if cfg.num_layers > 1 {
                    tr = tr.with_dropout(rnn_core::dropout::Dropout::new(0.3, 2).unwrap());
                }
                let loss = tr
                    .loss_and_grads_with(&batch, |y, dy| {
                        log_cosh_cubed(y, dy, &d.values[first * o..], live, 7.0)
                    })
                    .unwrap();
                (loss, tr.grads.to_vec())
            };
            let (whole_loss, whole) = run(Memory::Full);
            let (loss, grads) = run(Memory::Checkpointed { segment });
            let at = format!("case {case} ({many_to_one}, segment {segment} from {score_from})");
            assert_eq!(loss.to_bits(), whole_loss.to_bits(), "{at}");
            assert!(whole.iter().any(|&g| g != 0.0), "{at}");
            for (k, (g, w)) in grads.iter().zip(&whole).enumerate() {
                assert!(
                    (g - w).abs() < 1e-12 * (1.0 + w.abs()),
                    "{at}: {k}: {g} against {w}"
                );
            }
        }
    }
}

/// What a loss writes into rows past a sequence's length is ignored, as PyTorch's packed
/// sequences have no such rows.
#[test]
fn rows_past_a_length_take_no_gradient() {
    let cfg = RnnConfig::gru(3, 5, 2).layers(2);
    let (t, b) = (6, 4);
    let d = Data::random(&mut StdRng::seed_from_u64(9), &cfg, t, b, false);
    assert!(d.lengths.iter().any(|&n| n < t));
    let batch = Batch {
        target: Target::None,
        ..d.batch(t, b, LossKind::Mse, true, false)
    };
    let layout = Layout::new(&cfg);
    let params = init_params::<f64>(&cfg, 1);
    let live = live_rows(&d.lengths, t, false);
    let grads = |junk: f64| {
        let mut grads = vec![0.0; layout.len];
        forward_backward_with(
            &cfg,
            &layout,
            &params,
            &mut grads,
            &mut Workspace::new(),
            &batch,
            false,
            PassOptions::default(),
            |y, dy| log_cosh_cubed(y, dy, &d.values, &live, junk),
        )
        .unwrap();
        grads
    };
    assert_eq!(grads(0.0), grads(1e3));
}

/// A batch with what only built-in losses read, and a loss or gradient that is not finite,
/// are refused, and nothing changes; the built-in
/// losses and TBPTT refuse a batch without targets.
#[test]
fn own_loss_refusals_change_nothing() {
    let cfg = RnnConfig::lstm(2, 4, 1);
    let spec = LossSpec::every_step(LossKind::Mse);
    let mut tr = Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::adam(1e-2), 0).unwrap();
    let (t, b) = (5, 2);
    let (x, y) = (vec![0.5; t * b * 2], vec![0.25; t * b]);
    let weights = [1.0, 2.0];
    let plain = Batch::new(t, b, &x, Target::None);
    let half = |y: &[f64], dy: &mut [f64]| {
        dy.fill(0.5);
        y.iter().sum::<f64>() / 2.0
    };
    let before = (tr.params.to_vec(), tr.optimizer.steps);
    let config_error = |r: Result<_, RnnError>, what: &str| match r {
        Err(RnnError::Config(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("{what}: {other:?}"),
    };
    config_error(
        tr.step_with(&Batch::new(t, b, &x, Target::Values(&y)), half),
        "targets",
    );
    config_error(
        tr.step_with(&plain.with_sequence_weights(&weights), half),
        "sequence weights",
    );
    config_error(
        tr.step_with(
            &Batch {
                score_from: t,
                ..plain
            },
            half,
        ),
        "leaves no step",
    );
    config_error(tr.step(&plain), "needs targets");
    config_error(
        Tbptt::new(tr.clone(), 2, 2, b).and_then(|mut s| s.step(&x[..2 * b * 2], Target::None)),
        "needs targets",
    );
    match tr.step_with(&plain, |_, _| f64::NAN) {
        Err(RnnError::NonFinite { what, .. }) => assert!(what.contains("loss"), "{what}"),
        other => panic!("{other:?}"),
    }
    match tr.step_with(&plain, |_, dy| {
        dy[3] = f64::INFINITY;
        1.0
    }) {
        Err(RnnError::NonFinite { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!((tr.params.to_vec(), tr.optimizer.steps), before);
    // And the same trainer then steps.
    tr.step_with(&plain, half).unwrap();
    assert_ne!(tr.params.to_vec(), before.0);
}

/// In f32, a loss of one's own gives the f64 gradients within f32's rounding, for every cell.
#[test]
fn f32_own_loss_gradients_agree_with_f64() {
    fn grads<T: kernels::Float>(cfg: &RnnConfig, params: &[T], x: &[T], z: &[T]) -> Vec<T> {
        let layout = Layout::new(cfg);
        let mut grads = vec![T::zero(); layout.len];
        let batch = Batch::new(4, 3, x, Target::None);
        let smooth = |y: &[T], dy: &mut [T]| {
            let mut sum = T::zero();
            for ((y, dy), z) in y.iter().zip(dy.iter_mut()).zip(z) {
                let e = *y - *z;
                sum += e * e * e * e;
                *dy = T::of(4.0) * e * e * e;
            }
            sum
        };
        let opts = PassOptions::default();
        let mut ws = Workspace::new();
        forward_backward_with(
            cfg, &layout, params, &mut grads, &mut ws, &batch, false, opts, smooth,
        )
        .unwrap();
        grads
    }
    for cfg in [
        RnnConfig::new(3, 5, 2),
        RnnConfig::lstm(3, 5, 2),
        RnnConfig::gru(3, 5, 2),
    ] {
        let params = init_params::<f64>(&cfg, 2);
        let x: Vec<f64> = (0..4 * 3 * 3)
            .map(|k| ((k * 7 % 11) as f64 - 5.0) / 5.0)
            .collect();
        let z: Vec<f64> = (0..4 * 3 * 2)
            .map(|k| ((k * 3 % 7) as f64 - 3.0) / 3.0)
            .collect();
        let narrow = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let wide = grads(&cfg, &params, &x, &z);
        let (params32, x32, z32) = (narrow(&params), narrow(&x), narrow(&z));
        let single = grads(&cfg, &params32, &x32, &z32);
        let scale = wide.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        for (k, (s, w)) in single.iter().zip(&wide).enumerate() {
            assert!(
                (*s as f64 - w).abs() < 1e-4 * scale,
                "{cfg:?}: {k}: {s} against {w}"
            );
        }
    }
}

/// TBPTT with a loss of one's own (`Tbptt::step_with`): a hand-written MSE over the `k1` new
/// steps trains the streams as the built-in MSE does (the replayed history of `k2 > k1`
/// unscored), whatever the trainer's memory setting.
#[test]
fn tbptt_with_an_own_loss_trains_as_the_built_in_loss() {
    let cfg = RnnConfig::gru(2, 6, 2).layers(2);
    let (k1, k2, b) = (3, 7, 2);
    let chunk = |c: usize| {
        let x: Vec<f64> = (0..k1 * b * 2)
            .map(|k| ((c * 31 + k * 7) % 17) as f64 / 17.0 - 0.5)
            .collect();
        let z: Vec<f64> = (0..k1 * b * 2)
            .map(|k| ((c * 13 + k * 5) % 11) as f64 / 11.0 - 0.5)
            .collect();
        (x, z)
    };
    let train = |memory, own: bool| {
        let spec = LossSpec::every_step(LossKind::Mse);
        let tr = Trainer::<f64>::new(cfg, spec, OptimizerKind::adam(1e-2), 4)
            .unwrap()
            .with_memory(memory);
        let mut stream = Tbptt::new(tr, k1, k2, b).unwrap();
        let mut losses = Vec::new();
        for c in 0..5 {
            let (x, z) = chunk(c);
            let report = match own {
                false => stream.step(&x, Target::Values(&z)),
                true => stream.step_with(&x, |y, dy| {
                    assert_eq!(y.len(), z.len()); // the new steps' outputs only
                    let n = z.len() as f64;
                    let mut sum = 0.0;
                    for ((y, dy), z) in y.iter().zip(dy.iter_mut()).zip(&z) {
                        sum += (y - z) * (y - z);
                        *dy = 2.0 * (y - z) / n;
                    }
                    sum / n
                }),
            };
            losses.push(report.unwrap().loss);
        }
        (losses, stream.trainer.params.to_vec())
    };
    let built_in = train(Memory::Full, false);
    // The windows keep every activation whatever the trainer's memory setting (the streams
    // read the window's states back): the same bits.
    assert_eq!(train(Memory::Checkpointed { segment: 3 }, false), built_in);
    for memory in [Memory::Full, Memory::Checkpointed { segment: 3 }] {
        let own = train(memory, true);
        for (a, w) in own.0.iter().zip(&built_in.0) {
            assert!((a - w).abs() < 1e-12, "{memory:?}: loss {a} against {w}");
        }
        for (k, (a, w)) in own.1.iter().zip(&built_in.1).enumerate() {
            assert!(
                (a - w).abs() < 1e-10,
                "{memory:?}: parameter {k}: {a} against {w}"
            );
        }
    }
}

/// `½ Σ (y - z)²` over every output, its gradient into `dy`.
fn half_squared_error(y: &[f64], dy: &mut [f64], z: &[f64]) -> f64 {
    let mut sum = 0.0;
    for ((y, dy), z) in y.iter().zip(dy.iter_mut()).zip(z) {
        sum += (y - z) * (y - z) / 2.0;
        *dy = y - z;
    }
    sum
}

/// Accumulated micro-batches of one's own loss (of different sizes) make the update of
/// the mean of their gradients under `mean` (their sum under `sum`), its loss the mean (or
/// sum) of theirs; a checkpoint keeps them, and their kind.
#[test]
fn accumulated_own_losses_update_with_their_mean() {
    use rnn_core::config::Reduction;
    use rnn_core::io::Extras;
    let cfg = RnnConfig::lstm(2, 5, 2).layers(2);
    let micro: Vec<(usize, Data)> = [2usize, 3, 1]
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            (
                b,
                Data::random(&mut StdRng::seed_from_u64(k as u64), &cfg, 4, b, false),
            )
        })
        .collect();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let spec = LossSpec {
            reduction,
            ..LossSpec::every_step(LossKind::Mse)
        };
        let new = || {
            Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::adam(1e-2), 3)
                .unwrap()
                .with_clip(Clip::Norm(0.5))
        };
        fn batch((b, d): &(usize, Data)) -> Batch<'_, f64> {
            Batch::new(4, *b, &d.x, Target::None)
        }
        // By hand: each micro-batch's gradients, summed, scaled, then one update.
        let mut manual = new();
        let (mut sum, mut loss) = (vec![0.0; manual.grads.len()], 0.0);
        for m in &micro {
            loss += manual
                .loss_and_grads_with(&batch(m), |y, dy| half_squared_error(y, dy, &m.1.values))
                .unwrap();
            sum.iter_mut()
                .zip(manual.grads.iter())
                .for_each(|(s, g)| *s += g);
        }
        let n = if reduction == Reduction::Mean {
            micro.len() as f64
        } else {
            1.0
        };
        manual
            .grads
            .iter_mut()
            .zip(&sum)
            .for_each(|(g, s)| *g = s / n);
        let want = manual.update(loss / n).unwrap();

        let mut tr = new();
        for m in &micro {
            tr.accumulate_with(&batch(m), |y, dy| half_squared_error(y, dy, &m.1.values))
                .unwrap();
        }
        // Saved and restored into another trainer midway: the same update.
        let mut extras = Extras::default();
        tr.save_accumulated(&mut extras);
        let mut resumed = new();
        resumed.restore_accumulated(&extras).unwrap();
        for tr in [&mut tr, &mut resumed] {
            let got = tr.apply_accumulated().unwrap();
            assert!(
                (got.loss - want.loss).abs() < 1e-14,
                "{reduction:?}: {} vs {}",
                got.loss,
                want.loss
            );
            for (k, (a, w)) in tr.params.iter().zip(manual.params.iter()).enumerate() {
                assert!(
                    (a - w).abs() < 1e-14,
                    "{reduction:?}: parameter {k}: {a} vs {w}"
                );
            }
        }
    }
}

/// Micro-batches of one's own loss and of the built-in one do not mix in an update (either
/// way round, a restored checkpoint's kind included), a NaN loss drops the waiting ones,
/// and the refusals change nothing.
#[test]
fn accumulated_kinds_do_not_mix() {
    use rnn_core::io::Extras;
    let cfg = RnnConfig::gru(2, 4, 1);
    let d = Data::random(&mut StdRng::seed_from_u64(1), &cfg, 3, 2, false);
    let spec = LossSpec::every_step(LossKind::Mse);
    let mut tr = Trainer::<f64>::new(cfg, spec, OptimizerKind::sgd(0.1), 0).unwrap();
    let own = Batch::new(3, 2, &d.x, Target::None);
    let built_in = Batch::new(3, 2, &d.x, Target::Values(&d.values));
    let loss = |y: &[f64], dy: &mut [f64]| half_squared_error(y, dy, &d.values);
    tr.accumulate_with(&own, loss).unwrap();
    let err = tr.accumulate(&built_in).unwrap_err();
    assert!(
        matches!(err, RnnError::Accumulation(ref m) if m.contains("your own")),
        "{err}"
    );
    assert_eq!(tr.accumulated.micro_batches(), 1);
    let mut extras = Extras::default();
    tr.save_accumulated(&mut extras);
    let mut other = tr.clone();
    other.apply_accumulated().unwrap();
    other.accumulate(&built_in).unwrap();
    assert!(matches!(
        other.accumulate_with(&own, loss),
        Err(RnnError::Accumulation(_))
    ));
    other.restore_accumulated(&extras).unwrap();
    assert!(matches!(
        other.accumulate(&built_in),
        Err(RnnError::Accumulation(_))
    ));
    other.accumulate_with(&own, loss).unwrap();
    assert_eq!(other.accumulated.micro_batches(), 2);
    let params = tr.params.clone();
    let err = tr.accumulate_with(&own, |_, _| f64::NAN).unwrap_err();
    assert!(matches!(err, RnnError::NonFinite { .. }), "{err}");
    assert_eq!(tr.accumulated.micro_batches(), 0);
    assert_eq!(tr.params, params);
    tr.accumulate(&built_in).unwrap(); // a fresh update: either kind
}

/// TBPTT chunks accumulated with one's own mean squared error, each chunk's mean, update as
/// the built-in MSE's accumulation does when every chunk scores as many positions.
#[test]
fn tbptt_accumulates_own_losses_as_the_built_in_loss() {
    let cfg = RnnConfig::lstm(2, 5, 2);
    let (k1, b) = (3, 2);
    let chunk = |c: usize| -> (Vec<f64>, Vec<f64>) {
        let wave = |k: usize, m: usize| ((c * m + k * 7) % 13) as f64 / 13.0 - 0.5;
        (
            (0..k1 * b * 2).map(|k| wave(k, 31)).collect(),
            (0..k1 * b * 2).map(|k| wave(k, 17)).collect(),
        )
    };
    let train = |own: bool| {
        let spec = LossSpec::every_step(LossKind::Mse);
        let tr = Trainer::<f64>::new(cfg, spec, OptimizerKind::adam(1e-2), 2).unwrap();
        let mut stream = Tbptt::new(tr, k1, 5, b).unwrap();
        for update in 0..2 {
            for c in 0..3 {
                let (x, z) = chunk(update * 3 + c);
                match own {
                    false => stream.accumulate(&x, Target::Values(&z)).unwrap(),
                    true => stream
                        .accumulate_with(&x, |y, dy| {
                            // The mean over the chunk's outputs: twice the half square, / n.
                            let n = z.len() as f64;
                            let loss = 2.0 * half_squared_error(y, dy, &z) / n;
                            dy.iter_mut().for_each(|g| *g *= 2.0 / n);
                            loss
                        })
                        .unwrap(),
                };
            }
            stream.apply_accumulated().unwrap();
        }
        stream.trainer.params.to_vec()
    };
    let (built_in, own) = (train(false), train(true));
    for (k, (a, w)) in own.iter().zip(&built_in).enumerate() {
        assert!((a - w).abs() < 1e-12, "parameter {k}: {a} against {w}");
    }
}
