//! Per-tensor rules, PyTorch's `requires_grad_(False)` and parameter groups. Frozen tensors
//! (`Trainer::freeze`): updates leave them and their optimizer state alone, their gradients
//! count nowhere, each tensor's own update count survives a checkpoint, and passes skip the
//! work only they need. A tensor's own learning rate and weight decay
//! (`Trainer::set_lr_scale`, `set_weight_decay`). The bits never depend on the thread count.
//! The match with PyTorch's training loop is in `golden::training_matches_pytorch_with_*`.

use crate::common::{owned_tensors, scratch_dir};
use rnn_core::io;
use rnn_core::prelude::*;

fn data(step: usize, t: usize, b: usize, i: usize) -> (Vec<f32>, Vec<usize>) {
    let x = (0..t * b * i)
        .map(|k| (((k + 29 * step) * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let y = (0..t * b).map(|k| (k + step) * 7 % 4).collect();
    (x, y)
}

fn trainer(cfg: RnnConfig) -> Trainer<f32> {
    let opt = OptimizerKind::Adam {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        decoupled: false,
    };
    Trainer::new(cfg, LossSpec::every_step(LossKind::CrossEntropy), opt, 3)
        .unwrap()
        .with_clip(Clip::Norm(0.1))
}

/// Which tensors are frozen at `step`: the first layer's input weights for the first three,
/// the head's weights for steps 2 to 4.
fn schedule(tr: &mut Trainer<f32>, step: usize) {
    for (name, steps) in [("rnn.weight_ih_l0", 0..3), ("head.weight", 2..5)] {
        if steps.contains(&step) {
            tr.freeze(name).unwrap();
        } else {
            tr.unfreeze(name).unwrap();
        }
    }
}

fn run(tr: &mut Trainer<f32>, steps: std::ops::Range<usize>) {
    let (t, b) = (5, 3);
    for step in steps {
        schedule(tr, step);
        let (x, y) = data(step, t, b, 3);
        tr.step(&Batch::new(t, b, &x, Target::Classes(&y))).unwrap();
    }
}

fn range(tr: &Trainer<f32>, name: &str) -> std::ops::Range<usize> {
    tr.layout.find(name).unwrap().range.clone()
}

#[test]
fn frozen_tensors_and_their_state_stay_as_they_are() {
    let cfg = RnnConfig::lstm(3, 8, 4).layers(2);
    let mut tr = trainer(cfg);
    let before = tr.params.to_vec();
    run(&mut tr, 0..2);
    let w_ih = range(&tr, "rnn.weight_ih_l0");
    assert_eq!(tr.frozen(), ["rnn.weight_ih_l0"]);
    assert_eq!(tr.params[w_ih.clone()], before[w_ih.clone()]);
    assert!(tr.optimizer.state1[w_ih.clone()].iter().all(|&m| m == 0.0));
    assert!(tr.optimizer.state2[w_ih.clone()].iter().all(|&v| v == 0.0));
    let w_hh = range(&tr, "rnn.weight_hh_l0");
    assert_ne!(tr.params[w_hh.clone()], before[w_hh.clone()]);
    assert_eq!(tr.optimizer.updates_seen(w_ih.clone()), 0);
    assert_eq!(tr.optimizer.updates_seen(w_hh), 2);
    // Frozen from the start to step 2, then thawed: its state counts from its first update,
    // while the head's weights, frozen at steps 2 to 4, stand still there.
    run(&mut tr, 2..6);
    let head = range(&tr, "head.weight");
    assert_eq!(tr.optimizer.updates_seen(w_ih), 3);
    assert_eq!(tr.optimizer.updates_seen(head), 3);
    assert_eq!(tr.optimizer.steps, 6);
    assert!(tr.frozen().is_empty());
}

/// The gradient norm and clipping see no frozen gradient, and a non-finite one there rejects
/// nothing, as PyTorch's `clip_grad_norm_` skips parameters without a gradient.
#[test]
fn frozen_gradients_count_nowhere() {
    let cfg = RnnConfig::gru(3, 6, 4);
    let (t, b) = (4, 2);
    let (x, y) = data(0, t, b, 3);
    let batch = Batch::new(t, b, &x, Target::Classes(&y));
    let mut tr = trainer(cfg);
    tr.freeze("rnn.weight_hh_l0").unwrap();
    let loss = tr.loss_and_grads(&batch).unwrap();
    let w_hh = range(&tr, "rnn.weight_hh_l0");
    let others: f32 = (tr.grads.iter().enumerate())
        .filter(|(k, _)| !w_hh.contains(k))
        .map(|(_, g)| g * g)
        .sum();
    // PyTorch's frozen gradient is None; here it is zero, and a caller's write to it
    // (a NaN here) counts nowhere.
    assert!(tr.grads[w_hh.clone()].iter().all(|&g| g == 0.0));
    tr.grads[w_hh.start] = f32::NAN;
    let before = tr.params.to_vec();
    let report = tr.update(loss).unwrap();
    assert!((report.grad_norm - others.sqrt()).abs() <= 1e-5 * others.sqrt());
    // clip_grad_norm_'s scale, with its 1e-6 guard (the norm is past 0.1: clipping acts).
    assert!((report.clip_scale - 0.1 / (others.sqrt() + 1e-6)).abs() < 1e-6);
    assert_eq!(tr.params[w_hh.clone()], before[w_hh.clone()]);
    // Thawed, the same NaN is refused and nothing changes.
    tr.unfreeze("rnn.weight_hh_l0").unwrap();
    let loss = tr.loss_and_grads(&batch).unwrap();
    tr.grads[w_hh.start] = f32::NAN;
    let before = (tr.params.to_vec(), tr.optimizer.clone());
    let e = tr.update(loss).unwrap_err().to_string();
    assert!(e.contains("rnn.weight_hh_l0[0]"), "{e}");
    assert_eq!(tr.params.to_vec(), before.0);
    assert_eq!(tr.optimizer.steps, before.1.steps);
    assert_eq!(tr.optimizer.updates_seen(w_hh), 0); // it sat out the one update made
}

#[test]
fn frozen_names_are_checked_and_listed_in_state_dict_order() {
    let mut tr = trainer(RnnConfig::new(3, 4, 2).embedding(9));
    let e = tr.freeze("rnn.weight_hh_l1").unwrap_err();
    assert!(matches!(e, RnnError::Config(_)), "{e}");
    assert!(e.to_string().contains("embedding.weight"), "{e}");
    assert!(tr.unfreeze("head").is_err());
    for name in ["head.bias", "embedding.weight", "head.bias"] {
        tr.freeze(name).unwrap();
    }
    assert_eq!(tr.frozen(), ["embedding.weight", "head.bias"]);
    tr.unfreeze("rnn.bias_ih_l0").unwrap(); // not frozen: nothing to do
    tr.unfreeze("head.bias").unwrap();
    assert_eq!(tr.frozen(), ["embedding.weight"]);
}

/// A checkpoint taken while a tensor is frozen, loaded and frozen again, continues bitwise;
/// the per-tensor update counts come back with it (without them, Adam's bias correction of
/// a thawed tensor would restart).
#[test]
fn frozen_runs_resume_bitwise() {
    let cfg = RnnConfig::lstm(3, 8, 4).layers(2);
    let mut straight = trainer(cfg);
    run(&mut straight, 0..7);
    let dir = scratch_dir("frozen-resume");
    let path = dir.join("ckpt.safetensors");
    let mut first = trainer(cfg);
    run(&mut first, 0..4);
    io::save_checkpoint(&path, &cfg, &first.params, &first.optimizer).unwrap();
    let mut resumed = trainer(cfg);
    io::load_checkpoint(&path, &cfg, &mut resumed.params, &mut resumed.optimizer).unwrap();
    let head = range(&resumed, "head.weight");
    assert_eq!(resumed.optimizer.updates_seen(head.clone()), 2);
    assert_eq!(
        resumed
            .optimizer
            .updates_seen(range(&resumed, "rnn.weight_ih_l0")),
        1
    );
    run(&mut resumed, 4..7);
    assert_eq!(resumed.params.to_vec(), straight.params.to_vec());
    assert_eq!(resumed.optimizer.state1, straight.optimizer.state1);
    assert_eq!(resumed.optimizer.state2, straight.optimizer.state2);
    assert_eq!(resumed.optimizer.updates_seen(head.clone()), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `optim.skipped` must name the model's tensors, once each, with no more skipped updates
/// than the state has seen; a refused file changes nothing.
#[test]
fn checkpoint_skipped_counts_are_checked() {
    let cfg = RnnConfig::lstm(3, 8, 4).layers(2);
    let mut tr = trainer(cfg);
    run(&mut tr, 0..4);
    let dir = scratch_dir("frozen-skipped");
    let path = dir.join("ckpt.safetensors");
    io::save_checkpoint(&path, &cfg, &tr.params, &tr.optimizer).unwrap();
    let (tensors, meta) = owned_tensors(&io::read_bytes(&path).unwrap());
    assert_eq!(meta["optim.skipped"], "rnn.weight_ih_l0=3,head.weight=2");
    for (entry, why) in [
        ("rnn.weight_ih_l9=1", "no tensor \"rnn.weight_ih_l9\""),
        ("head.weight=5", "up to the 4"),
        ("head.weight", "not name=count"),
        ("head.weight=-1", "not a number"),
        ("head.weight=1,head.weight=2", "listed twice"),
    ] {
        let mut edited = meta.clone();
        edited.insert("optim.skipped".into(), entry.into());
        let bad = dir.join("bad.safetensors");
        io::write_tensors(&bad, &tensors, edited).unwrap();
        let mut other = trainer(cfg);
        let before = other.params.to_vec();
        let e = io::load_checkpoint(&bad, &cfg, &mut other.params, &mut other.optimizer)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optim.skipped") && e.contains(why),
            "{entry}: {e}"
        );
        assert_eq!(other.params.to_vec(), before);
        assert_eq!(other.optimizer.steps, 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With frozen tensors the update runs in pieces, each split between two threads when long:
/// the same bits as one thread.
#[test]
fn frozen_updates_are_bitwise_across_thread_counts() {
    // 4·256·(256 + 257) + ... > optim::SPLIT_MIN_PARAMS, so the long pieces run in halves.
    let cfg = RnnConfig::lstm(3, 256, 4).layers(2);
    let params = |threads| {
        let mut tr = trainer(cfg).with_threads(threads);
        tr.freeze("rnn.weight_hh_l0").unwrap();
        tr.set_lr_scale("rnn.weight_hh_l1", 0.5).unwrap();
        tr.set_weight_decay("rnn.weight_ih_l1", 0.0).unwrap();
        let (t, b) = (3, 2);
        for step in 0..3 {
            let (x, y) = data(step, t, b, 3);
            tr.step(&Batch::new(t, b, &x, Target::Classes(&y))).unwrap();
        }
        (tr.params.to_vec(), tr.optimizer.state2.clone())
    };
    assert!(rnn_core::params::Layout::new(&cfg).len >= rnn_core::optim::SPLIT_MIN_PARAMS);
    assert_eq!(params(1), params(2));
}

/// A pass told what is frozen (`network::Frozen`) gives the loss and every other gradient
/// bitwise as a full pass does, and zeros where it left work out: the bottom layers' tensors
/// and initial-state rows, the embedding table, single tensors anywhere (a third of them,
/// a different third per case), with and without a frozen bottom. Every cell, with
/// projections, learned states, lengths, dropout, time chunks and checkpointed segments.
#[test]
fn passes_leave_out_frozen_parts_and_keep_the_rest_bitwise() {
    use crate::common::Data;
    use rand::{SeedableRng, rngs::StdRng};
    use rnn_core::network::{
        Frozen, FrozenTensors, PassOptions, TimeChunks, forward_backward_checkpointed,
    };
    use rnn_core::params::{Layout, init_params};
    use rnn_core::workspace::Workspace;
    use std::num::NonZeroUsize;

    let chunks = TimeChunks::Steps(NonZeroUsize::new(2).unwrap());
    let cases = [
        (RnnConfig::new(3, 5, 4).layers(3), 2, false, None),
        (
            RnnConfig::lstm(3, 6, 4).layers(3).projection(4),
            1,
            true,
            Some(2),
        ),
        (
            RnnConfig::gru(3, 7, 4).layers(2).embedding(9),
            1,
            true,
            None,
        ),
        (
            RnnConfig::lstm(3, 5, 4).layers(2).learned_h0(),
            1,
            false,
            Some(3),
        ),
        (
            RnnConfig::gru(3, 5, 4).layers(2).embedding(6),
            0,
            true,
            Some(2),
        ),
        (RnnConfig::new(3, 5, 4).layers(2), 2, false, None),
        (
            RnnConfig::lstm(3, 5, 4).layers(3).bidirectional(),
            2,
            true,
            None,
        ),
        (
            RnnConfig::gru(3, 5, 4)
                .layers(2)
                .bidirectional()
                .embedding(7),
            1,
            false,
            None,
        ),
    ];
    for (case, (cfg, bottom_layers, dropout, segment)) in cases.into_iter().enumerate() {
        let (t, b) = (5, 3);
        let spec = LossSpec::every_step(LossKind::CrossEntropy);
        let d = Data::random(&mut StdRng::seed_from_u64(case as u64), &cfg, t, b, false);
        let batch = d.batch(t, b, spec.kind, true, false);
        let layout = Layout::new(&cfg);
        let params = init_params::<f64>(&cfg, 7);
        // One workspace for both passes, as a trainer keeps: what the full pass leaves in it
        // must not leak into the parts the second pass leaves out.
        let mut ws = Workspace::new();
        let mut pass = |frozen: Frozen| {
            let mut grads = vec![f64::NAN; layout.len];
            let opts = PassOptions {
                chunks,
                dropout: dropout.then(|| rnn_core::dropout::Dropout::new(0.3, 4).unwrap()),
                frozen,
                ..PassOptions::default()
            };
            let loss = forward_backward_checkpointed(
                &cfg,
                &layout,
                &params,
                &mut grads,
                &mut ws,
                &batch,
                &spec,
                opts,
                segment.unwrap_or(usize::MAX),
            )
            .unwrap();
            (loss, grads)
        };
        let (full_loss, full) = pass(Frozen::default());
        // Single tensors: every third of the stack's and the head's, from the case's offset.
        let singles: Vec<std::ops::Range<usize>> = (layout.layers.iter())
            .flat_map(|l| l.ranges().cloned())
            .chain([layout.w_hy.clone(), layout.b_y.clone()])
            .enumerate()
            .filter(|(k, _)| (k + case) % 3 == 0)
            .map(|(_, r)| r)
            .collect();
        let tensors = FrozenTensors::of(&layout, |r| singles.contains(r));
        for bottom in [true, false] {
            let frozen = match bottom {
                true => Frozen {
                    embedding: cfg.num_embeddings.is_some(),
                    bottom_layers,
                    tensors,
                },
                false => Frozen {
                    tensors,
                    ..Frozen::default()
                },
            };
            let (loss, grads) = pass(frozen);
            assert_eq!(loss.to_bits(), full_loss.to_bits(), "case {case}");
            let passes = match bottom {
                true => bottom_layers.min(cfg.num_layers) * cfg.passes() / cfg.num_layers,
                false => 0,
            };
            let mut left_out: Vec<std::ops::Range<usize>> = (layout.layers[..passes].iter())
                .flat_map(|l| l.ranges().cloned())
                .chain(layout.embedding.clone().filter(|_| bottom))
                .chain(singles.iter().cloned())
                .collect();
            if let Some(h0) = &layout.h0 {
                let rows = passes * cfg.state_size();
                left_out.push(h0.start..h0.start + rows);
            }
            if let Some(c0) = &layout.c0 {
                let rows = passes * cfg.hidden_size;
                left_out.push(c0.start..c0.start + rows);
            }
            for (k, (&g, &want)) in grads.iter().zip(&full).enumerate() {
                if left_out.iter().any(|r| r.contains(&k)) {
                    assert_eq!(g, 0.0, "case {case} ({bottom}): element {k} was left out");
                } else {
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "case {case} ({bottom}): element {k}"
                    );
                }
            }
            // Something was left out, and it had a gradient.
            assert!(
                left_out
                    .iter()
                    .flat_map(|r| &full[r.clone()])
                    .any(|&g| g != 0.0)
            );
        }
    }
}

/// A trainer skips the frozen bottom of a stack only where nothing below trains; with
/// telemetry (which reports every layer) it runs the whole backward pass. Both train to the
/// same bits.
#[test]
fn trainers_skip_frozen_bottoms_to_the_same_bits() {
    let cfgs = [
        RnnConfig::lstm(3, 8, 4).layers(3).embedding(7),
        RnnConfig::gru(3, 6, 4).layers(2).learned_h0(),
        RnnConfig::new(3, 6, 4).layers(2),
        RnnConfig::gru(3, 6, 4).layers(2).bidirectional(),
    ];
    for cfg in cfgs {
        let train = |telemetry: bool| {
            let mut tr = trainer(cfg);
            if telemetry {
                tr = tr.with_telemetry();
            }
            tr.freeze_where(|name| {
                name.contains("_l0") // and `_l0_reverse`
                    || !name.starts_with("rnn.weight")
                        && !name.starts_with("rnn.bias")
                        && !name.starts_with("head")
            });
            let (t, b) = (4, 3);
            for step in 0..3 {
                let (x, y) = data(step, t, b, 3);
                let tokens: Vec<usize> = (0..t * b).map(|k| (k * 5 + step) % 7).collect();
                let batch = match cfg.num_embeddings {
                    Some(_) => Batch::of_tokens(t, b, &tokens, Target::Classes(&y)),
                    None => Batch::new(t, b, &x, Target::Classes(&y)),
                };
                tr.step(&batch).unwrap();
            }
            (tr.params.to_vec(), tr.grads.to_vec(), tr.frozen().len())
        };
        let (skipped, full) = (train(false), train(true));
        assert!(skipped.2 >= 4, "{cfg:?}: {} frozen", skipped.2);
        assert_eq!(skipped, full, "{cfg:?}");
    }
}

/// A tensor's own learning rate and weight decay: checked, refused without a change, and
/// gone when set back, so the update is bitwise the optimizer's own again.
#[test]
fn tensor_rates_and_decays_are_checked_and_undone() {
    let cfg = RnnConfig::gru(3, 6, 4).layers(2);
    let mut tr = trainer(cfg);
    for bad in [-0.5, f64::NAN, f64::INFINITY] {
        let e = tr.set_lr_scale("head.weight", bad).unwrap_err();
        assert!(
            matches!(e, RnnError::Config(_)) && e.to_string().contains("head.weight"),
            "{e}"
        );
        assert!(tr.set_weight_decay("head.weight", bad).is_err());
    }
    assert!(tr.set_lr_scale("head.weights", 2.0).is_err());
    assert!(tr.weight_decay("rnn.h0").is_err());
    let optimizers = f64::from(0.01f32); // the trainer's own, in f32
    assert_eq!(tr.lr_scale("head.weight").unwrap(), 1.0);
    assert_eq!(tr.weight_decay("head.weight").unwrap(), optimizers);
    // Set, trained with, then set back: from there on the same bits as a trainer without.
    let mut plain = trainer(cfg);
    tr.set_lr_scale("rnn.weight_hh_l1", 3.0).unwrap();
    tr.set_weight_decay("rnn.bias_ih_l0", 0.5).unwrap();
    run(&mut tr, 0..1);
    run(&mut plain, 0..1);
    assert_ne!(tr.params.to_vec(), plain.params.to_vec());
    tr.set_lr_scale("rnn.weight_hh_l1", 1.0).unwrap();
    tr.clear_weight_decay("rnn.bias_ih_l0").unwrap();
    assert_eq!(tr.weight_decay("rnn.bias_ih_l0").unwrap(), optimizers);
    let (before, state) = (tr.params.to_vec(), tr.optimizer.clone());
    let mut again = trainer(cfg);
    again.params.copy_from_slice(&before);
    again.optimizer = state;
    run(&mut tr, 1..3);
    run(&mut again, 1..3);
    assert_eq!(tr.params.to_vec(), again.params.to_vec());
    // A rate of 0 holds the tensor but not its state (a frozen one's state stands still).
    let w = range(&tr, "head.bias");
    tr.set_lr_scale("head.bias", 0.0).unwrap();
    let (held, moment) = (
        tr.params[w.clone()].to_vec(),
        tr.optimizer.state1[w.clone()].to_vec(),
    );
    run(&mut tr, 3..4);
    assert_eq!(tr.params[w.clone()], held[..]);
    assert_ne!(tr.optimizer.state1[w], moment[..]);
}
