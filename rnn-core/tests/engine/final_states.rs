//! Training through the final states (`Trainer::final_states`,
//! `Trainer::grads_from_final_states`): an encoder whose `h_n` (and `c_n`) start a decoder,
//! its gradients against finite differences of the decoder's loss (every cell, lengths,
//! dropout, time chunks, projections, tokens, a frozen tensor, input gradients), the same
//! bits whether the forward pass is reused or run again and on one thread or two, in
//! checkpointed segments what whole passes give, and bad input refused with the gradients
//! left as they were.

use std::num::NonZeroUsize;

use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::Batch;
use rnn_core::error::RnnError;
use rnn_core::network::TimeChunks;
use rnn_core::prelude::*;

use crate::common::Data;

/// What a case does to its encoder's trainer.
type Setup = fn(Trainer<f64>) -> Trainer<f64>;

/// An encoder and the decoder its final states start, with a batch for each.
struct Seq2Seq {
    encoder: Trainer<f64>,
    decoder: Trainer<f64>,
    source: Data,
    reply: Data,
    t_in: usize,
    t_out: usize,
    b: usize,
}

impl Seq2Seq {
    /// `enc` and a decoder of the same cell, layers and state width (2 inputs, 2 outputs,
    /// MSE at every step); the source with lengths, the reply without.
    fn new(enc: RnnConfig, setup: Setup, seed: u64) -> Self {
        let (t_in, t_out, b) = (5, 3, 3);
        // One decoder layer per encoder pass: a bidirectional encoder's two directions
        // start two layers.
        let dec = RnnConfig {
            input_size: 2,
            output_size: 2,
            num_embeddings: None,
            learn_h0: false,
            bidirectional: false,
            num_layers: enc.passes(),
            ..enc
        };
        let spec = LossSpec::every_step(LossKind::Mse);
        let encoder = Trainer::new(enc, spec.clone(), OptimizerKind::sgd(0.1), seed).unwrap();
        let decoder = Trainer::new(dec, spec, OptimizerKind::sgd(0.1), seed + 1)
            .unwrap()
            .with_input_grads();
        let mut rng = StdRng::seed_from_u64(seed);
        Self {
            encoder: setup(encoder),
            decoder,
            source: Data::random(&mut rng, &enc, t_in, b, false),
            reply: Data::random(&mut rng, &dec, t_out, b, false),
            t_in,
            t_out,
            b,
        }
    }

    fn source_batch(source: &Data, t: usize, b: usize) -> Batch<'_, f64> {
        let tokens = (!source.tokens.is_empty()).then_some(&source.tokens[..]);
        Batch {
            tokens,
            x: if tokens.is_some() { &[] } else { &source.x },
            lengths: Some(&source.lengths),
            ..Batch::new(t, b, &[], Target::None)
        }
    }

    /// The decoder's batch started from the states `h`, `c`.
    fn reply_batch<'a>(&'a self, h: &'a [f64], c: &'a [f64]) -> Batch<'a, f64> {
        let reply = Batch::new(
            self.t_out,
            self.b,
            &self.reply.x,
            Target::Values(&self.reply.values),
        );
        Batch {
            h0: Some(h),
            c0: (!c.is_empty()).then_some(c),
            ..reply
        }
    }

    /// The decoder's loss from the encoder's final states, `source` encoded by `encoder`.
    fn loss(&mut self, encoder: &mut Trainer<f64>, source: &Data) -> f64 {
        let (h, c) = encoder
            .final_states(&Self::source_batch(source, self.t_in, self.b))
            .unwrap();
        let (h, c) = (h.to_vec(), c.to_vec());
        let batch = self.reply_batch(&h, &c);
        let mut decoder = self.decoder.clone();
        decoder.evaluate(&batch).unwrap()
    }

    /// The encoder's gradients (and its `dL/dx` when it reports it) through the decoder.
    fn grads(&mut self) -> (Vec<f64>, Vec<f64>) {
        let source = Self::source_batch(&self.source, self.t_in, self.b);
        let (h, c) = self.encoder.final_states(&source).unwrap();
        let (h, c) = (h.to_vec(), c.to_vec());
        let batch = self.reply_batch(&h, &c);
        let mut decoder = self.decoder.clone();
        decoder.loss_and_grads(&batch).unwrap();
        let (dh, dc) = decoder.initial_state_grads();
        self.encoder
            .grads_from_final_states(&source, dh, dc)
            .unwrap();
        (
            self.encoder.grads.to_vec(),
            self.encoder.input_grads().to_vec(),
        )
    }
}

/// Every gradient of the encoder, and its `dL/dx`, against central differences of the
/// decoder's loss.
#[test]
fn encoder_grads_match_finite_differences() {
    let cases: [(&str, RnnConfig, Setup); 8] = [
        ("rnn", RnnConfig::new(2, 3, 1).layers(2), |tr| {
            tr.with_input_grads()
        }),
        ("gru, time chunks of 2", RnnConfig::gru(2, 3, 1), |tr| {
            tr.with_time_chunks(TimeChunks::Steps(NonZeroUsize::new(2).unwrap()))
                .with_input_grads()
        }),
        (
            "lstm, dropout, a frozen tensor",
            RnnConfig::lstm(2, 3, 1).layers(2),
            |tr| {
                let mut tr = tr
                    .with_dropout(Dropout::new(0.3, 4).unwrap())
                    .with_input_grads();
                tr.freeze("rnn.weight_hh_l1").unwrap();
                tr
            },
        ),
        (
            "lstm, projected, checkpointed",
            RnnConfig::lstm(2, 4, 1).projection(2),
            |tr| {
                tr.with_memory(Memory::Checkpointed { segment: 2 })
                    .with_input_grads()
            },
        ),
        ("gru, tokens", RnnConfig::gru(3, 3, 1).embedding(6), |tr| tr),
        (
            "lstm, learned state",
            RnnConfig::lstm(2, 3, 1).learned_h0(),
            |tr| tr,
        ),
        (
            "lstm, bidirectional",
            RnnConfig::lstm(2, 3, 1).bidirectional(),
            |tr| tr.with_input_grads(),
        ),
        (
            "gru, bidirectional, 2 layers, dropout, layer 0 frozen",
            RnnConfig::gru(2, 3, 1).layers(2).bidirectional(),
            |tr| {
                let mut tr = tr.with_dropout(Dropout::new(0.3, 2).unwrap());
                tr.freeze_where(|name| name.contains("_l0"));
                tr
            },
        ),
    ];
    for (k, (name, cfg, setup)) in cases.into_iter().enumerate() {
        let mut s = Seq2Seq::new(cfg, setup, k as u64);
        let (grads, dx) = s.grads();
        let eps = 1e-6;
        let close = |analytic: f64, numeric: f64, what: String| {
            let tolerance = 1e-6 * (1.0 + numeric.abs());
            assert!(
                (analytic - numeric).abs() <= tolerance,
                "{name}: {what}: {analytic} vs {numeric}"
            );
        };
        let frozen: Vec<String> = s.encoder.frozen().iter().map(|n| n.to_string()).collect();
        for tensor in s.encoder.layout.tensors.clone() {
            for i in tensor.range.clone() {
                let at = |s: &mut Seq2Seq, delta: f64| {
                    let mut probe = s.encoder.clone();
                    probe.params[i] += delta;
                    let source = s.source.clone();
                    s.loss(&mut probe, &source)
                };
                let numeric = (at(&mut s, eps) - at(&mut s, -eps)) / (2.0 * eps);
                let head = tensor.name.starts_with("head.");
                let want = if head || frozen.contains(&tensor.name) {
                    0.0
                } else {
                    numeric
                };
                close(
                    grads[i],
                    want,
                    format!("{}[{}]", tensor.name, i - tensor.range.start),
                );
            }
        }
        assert!(grads.iter().any(|&g| g != 0.0), "{name}: no gradient");
        for (i, &analytic) in dx.iter().enumerate() {
            let at = |s: &mut Seq2Seq, delta: f64| {
                let mut source = s.source.clone();
                source.x[i] += delta;
                let mut probe = s.encoder.clone();
                s.loss(&mut probe, &source)
            };
            let numeric = (at(&mut s, eps) - at(&mut s, -eps)) / (2.0 * eps);
            close(analytic, numeric, format!("x[{i}]"));
        }
    }
}

/// Gradients for final states of the shapes of `h` and `c`, each value its own.
fn state_grads(h: &[f64], c: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dh = (0..h.len()).map(|k| ((k % 7) as f64 - 3.0) / 10.0);
    let dc = (0..c.len()).map(|k| ((k % 5) as f64 - 2.0) / 10.0);
    (dh.collect(), dc.collect())
}

/// The backward pass gives the same bits whether it reuses the forward pass or runs it
/// again: right after `final_states`, without it, after another pass on the trainer, after
/// a change of the parameters (then from the new ones, as a fresh trainer would), and on
/// two threads.
#[test]
fn reused_or_rerun_forward_passes_agree() {
    let cfg = RnnConfig::lstm(4, 96, 1).layers(2);
    let setup = |tr: Trainer<f64>| {
        tr.with_dropout(Dropout::new(0.2, 1).unwrap())
            .with_threads(1)
    };
    let mut s = Seq2Seq::new(cfg, setup, 9);
    let (t, b) = (s.t_in, s.b);
    let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
    // Before any pass: its workspace holds no forward pass.
    let fresh = s.encoder.clone();
    let (h, c) = s
        .encoder
        .final_states(&Seq2Seq::source_batch(&s.source, t, b))
        .unwrap();
    let (dh, dc) = state_grads(h, c);
    let backward = |tr: &mut Trainer<f64>, source: &Data| {
        tr.grads_from_final_states(&Seq2Seq::source_batch(source, t, b), &dh, &dc)
            .unwrap();
        bits(&tr.grads)
    };
    let mut reused = s.encoder.clone();
    let want = backward(&mut reused, &s.source);
    assert!(backward(&mut fresh.clone(), &s.source) == want, "run again");
    let mut other = fresh.clone();
    other
        .final_states(&Seq2Seq::source_batch(&s.source, t, b))
        .unwrap();
    let mut shorter = s.source.clone();
    shorter.lengths[0] = 2;
    other
        .outputs(&Seq2Seq::source_batch(&shorter, t, b))
        .unwrap();
    assert!(
        backward(&mut other, &s.source) == want,
        "after another pass"
    );
    // Parameters changed after the forward pass: the gradients are the new parameters'.
    let mut changed = fresh.clone();
    changed
        .final_states(&Seq2Seq::source_batch(&s.source, t, b))
        .unwrap();
    changed.params[5] += 0.25;
    let mut moved = fresh.clone();
    moved.params[5] += 0.25;
    assert!(
        backward(&mut changed, &s.source) == backward(&mut moved, &s.source),
        "the same bits"
    );
    assert!(backward(&mut moved, &s.source) != want, "other parameters");
    // Another batch with the same parameters and masks, but other inputs.
    let mut other_x = s.source.clone();
    other_x.x[0] += 1.0;
    let mut kept = fresh.clone();
    kept.final_states(&Seq2Seq::source_batch(&s.source, t, b))
        .unwrap();
    assert!(
        backward(&mut kept, &other_x) == backward(&mut fresh.clone(), &other_x),
        "the same bits"
    );
}

/// Under a memory setting that checkpoints, the passes to and from the final states run in
/// segments (sequences ending in an earlier one included), and give what whole passes give:
/// the states, the gradients, `dL/dx` and `dL/dh0`; the backward pass the same bits whether
/// it reuses the segmented forward pass or runs it again. A bidirectional model cannot run
/// in segments: refused, as a training step refuses it.
#[test]
fn checkpointed_segments_match_whole_passes() {
    let cases: [(&str, RnnConfig); 5] = [
        ("rnn, 2 layers", RnnConfig::new(2, 3, 1).layers(2)),
        ("lstm, 2 layers", RnnConfig::lstm(2, 3, 1).layers(2)),
        ("gru", RnnConfig::gru(2, 3, 1)),
        ("lstm, projected", RnnConfig::lstm(2, 4, 1).projection(2)),
        (
            "gru, tokens, learned state",
            RnnConfig::gru(3, 3, 1).embedding(6).learned_h0(),
        ),
    ];
    let close = |name: &str, what: &str, a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{name}: {what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let ok = (x - y).abs() <= 1e-12 * (1.0 + x.abs());
            assert!(ok, "{name}: {what}[{i}]: {x} in segments, {y} whole");
        }
    };
    for (k, (name, cfg)) in cases.into_iter().enumerate() {
        for segment in [1, 2, 4] {
            let setup: Setup = |tr| {
                tr.with_dropout(Dropout::new(0.3, 2).unwrap())
                    .with_input_grads()
            };
            let mut s = Seq2Seq::new(cfg, setup, 20 + k as u64);
            // Sequences that end in the first segment, in a middle one and in the last.
            s.source.lengths = vec![5, 1, 3];
            let (t, b) = (s.t_in, s.b);
            let source = Seq2Seq::source_batch(&s.source, t, b);
            let mut whole = s.encoder.clone();
            let mut parts = s
                .encoder
                .clone()
                .with_memory(Memory::Checkpointed { segment });
            let (h, c) = whole.final_states(&source).unwrap();
            let (h, c) = (h.to_vec(), c.to_vec());
            let (h_seg, c_seg) = parts.final_states(&source).unwrap();
            close(name, "h_n", h_seg, &h);
            close(name, "c_n", c_seg, &c);
            let (dh, dc) = state_grads(&h, &c);
            let rerun = parts.clone();
            whole.grads_from_final_states(&source, &dh, &dc).unwrap();
            parts.grads_from_final_states(&source, &dh, &dc).unwrap();
            close(name, "grads", &parts.grads, &whole.grads);
            close(name, "dL/dx", parts.input_grads(), whole.input_grads());
            let (dh0, dh0_whole) = (parts.initial_state_grads().0, whole.initial_state_grads().0);
            close(name, "dL/dh0", dh0, dh0_whole);
            // Its workspace emptied: nothing kept to reuse.
            let mut rerun = rerun;
            rerun.workspace = Default::default();
            rerun.grads_from_final_states(&source, &dh, &dc).unwrap();
            let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&rerun.grads) == bits(&parts.grads),
                "{name}: run again"
            );
            let (h_eval, _) = parts.eval_final_states(&source).unwrap();
            let (h_eval, h_eval_whole) =
                (h_eval.to_vec(), whole.eval_final_states(&source).unwrap().0);
            close(name, "eval h_n", &h_eval, h_eval_whole);
        }
    }
    let cfg = RnnConfig::gru(2, 3, 1).bidirectional();
    let setup: Setup = |tr| tr.with_memory(Memory::Checkpointed { segment: 2 });
    let mut s = Seq2Seq::new(cfg, setup, 30);
    let source = Seq2Seq::source_batch(&s.source, s.t_in, s.b);
    assert!(matches!(
        s.encoder.final_states(&source),
        Err(RnnError::Config(_))
    ));
}

/// On two threads, where the encoder's steps split, the same bits as on one.
#[test]
fn two_threads_give_the_same_bits() {
    let (t, b, h) = (20, 16, 128);
    let cfg = RnnConfig::lstm(8, h, 1).layers(2);
    let source = Data::random(&mut StdRng::seed_from_u64(3), &cfg, t, b, false);
    let dh: Vec<f64> = (0..2 * b * h)
        .map(|k| ((k % 9) as f64 - 4.0) / 9.0)
        .collect();
    let dc: Vec<f64> = (0..2 * b * h)
        .map(|k| ((k % 4) as f64 - 1.5) / 4.0)
        .collect();
    let spec = LossSpec::every_step(LossKind::Mse);
    let run = |threads| {
        let mut tr = Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::adam(1e-3), 2)
            .unwrap()
            .with_threads(threads);
        assert_eq!(tr.threads_for(t, b), threads);
        let batch = Seq2Seq::source_batch(&source, t, b);
        let h_n = tr.final_states(&batch).unwrap().0.to_vec();
        tr.grads_from_final_states(&batch, &dh, &dc).unwrap();
        tr.update(1.0).unwrap();
        let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
        (bits(&h_n), bits(&tr.grads), bits(&tr.params))
    };
    assert!(run(1) == run(2), "one thread and two");
}

/// Bad input is a typed error, and the gradients stay as they were.
#[test]
fn bad_input_is_refused() {
    let (t, b) = (4, 2);
    let spec = LossSpec::every_step(LossKind::Mse);
    let cfg = RnnConfig::lstm(2, 3, 1);
    let mut tr = Trainer::<f64>::new(cfg, spec.clone(), OptimizerKind::sgd(0.1), 0).unwrap();
    let x = vec![0.5; t * b * 2];
    let y = vec![0.0; t * b];
    let batch = Batch::new(t, b, &x, Target::None);
    let (dh, dc) = (vec![0.1; b * 3], vec![0.1; b * 3]);
    tr.grads.fill(7.0);
    let targets = Batch::new(t, b, &x, Target::Values(&y));
    assert!(matches!(
        tr.final_states(&targets),
        Err(RnnError::Config(_))
    ));
    let err = tr
        .grads_from_final_states(&batch, &dh[1..], &dc)
        .unwrap_err();
    assert!(err.to_string().contains("dh_n"), "{err}");
    let err = tr.grads_from_final_states(&batch, &dh, &[]).unwrap_err();
    assert!(err.to_string().contains("dc_n"), "{err}");
    let mut nan = dc.clone();
    nan[2] = f64::NAN;
    assert!(matches!(
        tr.grads_from_final_states(&batch, &dh, &nan),
        Err(RnnError::NonFiniteInput {
            what: "dc_n",
            index: 2,
            ..
        })
    ));
    let short = [0.5; 2 * 2];
    assert!(
        tr.grads_from_final_states(&Batch::new(t, b, &short, Target::None), &dh, &dc)
            .is_err()
    );
    // A ragged batch that would run longest first is checked before it is copied.
    let lengths = [2, 4];
    let ragged = Batch {
        lengths: Some(&lengths),
        ..batch
    };
    let err = (tr.grads_from_final_states(&ragged, &dh[1..], &dc)).unwrap_err();
    assert!(err.to_string().contains("dh_n"), "{err}");
    assert!(matches!(
        tr.grads_from_final_states(&ragged, &dh, &nan),
        Err(RnnError::NonFiniteInput { what: "dc_n", .. })
    ));
    let targets = Batch {
        lengths: Some(&lengths),
        ..targets
    };
    assert!(matches!(
        tr.final_states(&targets),
        Err(RnnError::Config(_))
    ));
    assert!(tr.grads.iter().all(|&g| g == 7.0));
}

/// For inference (`eval_final_states`): no dropout, the states a trainer without it gives;
/// and nothing kept for a backward pass, which then runs its own, with the training masks.
#[test]
fn inference_final_states_do_not_drop() {
    let (t, b) = (6, 3);
    let cfg = RnnConfig::lstm(3, 8, 1).layers(2);
    let source = Data::random(&mut StdRng::seed_from_u64(4), &cfg, t, b, false);
    let spec = LossSpec::every_step(LossKind::Mse);
    let plain = Trainer::<f64>::new(cfg, spec, OptimizerKind::sgd(0.1), 1).unwrap();
    let dropping = plain.clone().with_dropout(Dropout::new(0.5, 3).unwrap());
    let batch = Seq2Seq::source_batch(&source, t, b);
    let bits = |(h, c): (&[f64], &[f64])| {
        let all = h.iter().chain(c);
        all.map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let want = bits(plain.clone().final_states(&batch).unwrap());
    let mut eval = dropping.clone();
    assert!(
        bits(eval.eval_final_states(&batch).unwrap()) == want,
        "no dropout"
    );
    assert!(
        bits(dropping.clone().final_states(&batch).unwrap()) != want,
        "training drops"
    );
    let dh = vec![0.2; 2 * b * 8];
    eval.grads_from_final_states(&batch, &dh, &dh).unwrap();
    let mut fresh = dropping.clone();
    fresh.grads_from_final_states(&batch, &dh, &dh).unwrap();
    let grad_bits = |tr: &Trainer<f64>| tr.grads.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
    assert!(
        grad_bits(&eval) == grad_bits(&fresh),
        "the training pass's gradients"
    );
}
