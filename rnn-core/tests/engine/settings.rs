//! Trainer settings against each other, over random models: a trainer that checkpoints, runs
//! time chunks, uses two threads, records telemetry and skips frozen work trains to the
//! weights of a plain one (within rounding), through steps, gradient accumulation, TBPTT and
//! a loss of one's own, and answers `evaluate`, `outputs` and `sequence_losses` alike. No
//! combination panics: a setting a model cannot take is a typed error from both.

use crate::common::Data;

use std::num::NonZeroUsize;

use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{Cell, LossKind, LossSpec, RnnConfig};
use rnn_core::dropout::Dropout;
use rnn_core::error::RnnError;
use rnn_core::network::TimeChunks;
use rnn_core::optim::{Clip, OptimizerKind};
use rnn_core::tbptt::Tbptt;
use rnn_core::trainer::{Memory, Trainer};

#[derive(Debug, Clone)]
struct Settings {
    cfg: RnnConfig,
    t: usize,
    b: usize,
    many_to_one: bool,
    cross_entropy: bool,
    lengths: bool,
    /// The second trainer's: checkpoint segments (0: none), time chunk steps (0: auto).
    segment: usize,
    chunk: usize,
    dropout: bool,
    telemetry: bool,
    /// Tensors frozen in both trainers: bit `k` of the mask freezes tensor `k` (for every
    /// third `k`); and with `frozen_bottom`, layer 0 and all below it (table, learned
    /// states), so that steps skip its backward pass.
    frozen: u64,
    frozen_bottom: bool,
    /// Sequence weights on the batch.
    weighted: bool,
    seed: u64,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        (0usize..3, 1usize..4, 1usize..7, 1usize..4, 1usize..4),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (1usize..8, 1usize..5, 0usize..4, 0usize..3),
        (any::<bool>(), any::<bool>(), any::<u64>(), 0u64..1000),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (cell, layers, h, o, i),
                (bidirectional, projection, embedding, learned_h0),
                (many_to_one, cross_entropy, lengths, no_bias),
                (t, b, segment, chunk),
                (dropout, telemetry, frozen, seed),
                (frozen_bottom, weighted),
            )| {
                let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
                let mut cfg = RnnConfig::new(i, h + 1, o + 1).cell(cell).layers(layers);
                if bidirectional {
                    cfg = cfg.bidirectional();
                }
                if projection && cell == Cell::Lstm {
                    cfg = cfg.projection(h.max(2) - 1);
                }
                if embedding {
                    cfg = cfg.embedding(5);
                }
                if learned_h0 {
                    cfg = cfg.learned_h0();
                }
                if no_bias {
                    cfg = cfg.bias(false);
                }
                Settings {
                    cfg,
                    t,
                    b,
                    many_to_one,
                    cross_entropy,
                    lengths,
                    segment,
                    chunk,
                    dropout: dropout && layers > 1,
                    telemetry,
                    frozen,
                    frozen_bottom,
                    weighted,
                    seed,
                }
            },
        )
}

/// A trainer of `s`: plain (one thread, every activation kept, chunks as `Auto` chooses),
/// or with the settings under test.
fn trainer(s: &Settings, plain: bool) -> Trainer<f64> {
    let kind = if s.cross_entropy {
        LossKind::CrossEntropy
    } else {
        LossKind::Mse
    };
    let spec = match s.many_to_one {
        true => LossSpec::last_step(kind),
        false => LossSpec::every_step(kind),
    };
    let mut tr = Trainer::<f64>::new(s.cfg, spec, OptimizerKind::adam(1e-2), s.seed)
        .unwrap()
        .with_clip(Clip::Norm(1.0));
    if s.dropout {
        tr = tr.with_dropout(Dropout::new(0.25, s.seed).unwrap());
    }
    for (k, t) in tr.layout.tensors.clone().iter().enumerate() {
        let bottom =
            t.name.contains("_l0") || !t.name.contains("_l") && !t.name.starts_with("head");
        if s.frozen >> (k % 64) & 1 == 1 && k % 3 == 0 || s.frozen_bottom && bottom {
            tr.freeze(&t.name).unwrap();
        }
    }
    if plain {
        return tr.with_threads(1);
    }
    tr = tr.with_threads(2);
    if s.segment > 0 {
        tr = tr.with_memory(Memory::Checkpointed { segment: s.segment });
    } else if s.seed.is_multiple_of(2) {
        // A budget no pass fits: the least memory, whatever segments that takes.
        tr = tr.with_memory(Memory::Budget { bytes: 1 });
    }
    if s.chunk > 0 {
        tr = tr.with_time_chunks(TimeChunks::Steps(NonZeroUsize::new(s.chunk).unwrap()));
    }
    if s.telemetry {
        tr = tr.with_telemetry();
    }
    tr
}

/// Every element of `a` within `tol` of `b`'s (relative to 1 + |b|).
fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

/// Runs `f` on both trainers: both give the same kind of answer, and if `Ok`, values within
/// `tol` (compared by `same`).
fn both<R: std::fmt::Debug>(
    plain: &mut Trainer<f64>,
    tested: &mut Trainer<f64>,
    f: impl Fn(&mut Trainer<f64>) -> Result<R, RnnError>,
    same: impl Fn(&R, &R) -> bool,
    what: &str,
) -> Result<(), TestCaseError> {
    match (f(plain), f(tested)) {
        (Ok(a), Ok(b)) => prop_assert!(same(&a, &b), "{what}: {a:?} against {b:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => prop_assert!(false, "{what}: {a:?} against {b:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn trainer_settings_agree(s in settings()) {
        let (mut plain, mut tested) = (trainer(&s, true), trainer(&s, false));
        let mut rng = StdRng::seed_from_u64(s.seed);
        let d = Data::random(&mut rng, &s.cfg, s.t, s.b, s.many_to_one);
        let d = if s.weighted { d.weighted() } else { d };
        let kind = if s.cross_entropy { LossKind::CrossEntropy } else { LossKind::Mse };
        let batch = d.batch(s.t, s.b, kind, s.lengths, false);
        let segment = tested.memory.segment_for::<f64>(&s.cfg, s.t, s.b, s.many_to_one);
        let bidirectional_segments = s.cfg.bidirectional && segment < s.t;
        let tol = 1e-9;
        let loss = |a: &f64, b: &f64| (a - b).abs() <= tol * (1.0 + b.abs());

        // A step, the same bits or within rounding; a bidirectional model refuses segments.
        let step_a = plain.step(&batch);
        let step_b = tested.step(&batch);
        if bidirectional_segments {
            prop_assert!(matches!(step_b, Err(RnnError::Config(_))), "{step_b:?}");
            return Ok(());
        }
        let (step_a, step_b) = match (step_a, step_b) {
            (Ok(a), Ok(b)) => (a, b),
            // A batch both refuse (all its sequence weights 0 under `mean`, say).
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.to_string(), b.to_string());
                return Ok(());
            }
            (a, b) => return Err(TestCaseError::fail(format!("step: {a:?} against {b:?}"))),
        };
        prop_assert!(loss(&step_a.loss, &step_b.loss), "{} against {}", step_a.loss, step_b.loss);
        prop_assert!(close(&tested.params, &plain.params, tol), "params after a step");
        if s.telemetry {
            prop_assert!(tested.grad_h_norms().iter().all(|n| n.is_finite()));
        }

        // Accumulation over two micro-batches (the sequences split in two).
        if s.b >= 2 {
            let half = s.b / 2;
            for cols in [0..half, half..s.b] {
                let part = d.sequences(&s.cfg, s.t, s.b, s.many_to_one, &cols);
                let micro = part.batch(s.t, cols.len(), kind, s.lengths, false);
                both(&mut plain, &mut tested, |tr| tr.accumulate(&micro), loss, "accumulate")?;
            }
            both(&mut plain, &mut tested, |tr| tr.apply_accumulated().map(|r| r.loss), loss, "apply")?;
            prop_assert!(close(&tested.params, &plain.params, tol), "params after accumulation");
        }

        // A loss of one's own: half the squared outputs, over every row.
        let own = Batch { target: Target::None, sequence_weights: None, ..batch };
        let squares = |y: &[f64], dy: &mut [f64]| {
            dy.copy_from_slice(y);
            y.iter().map(|v| 0.5 * v * v).sum::<f64>()
        };
        both(&mut plain, &mut tested, |tr| tr.step_with(&own, squares).map(|r| r.loss), loss, "step_with")?;
        prop_assert!(close(&tested.params, &plain.params, tol), "params after step_with");

        // What reads the model without training.
        both(&mut plain, &mut tested, |tr| tr.evaluate(&batch), loss, "evaluate")?;
        both(&mut plain, &mut tested, |tr| tr.accuracy(&batch), |a, b| a == b, "accuracy")?;
        both(&mut plain, &mut tested, |tr| tr.outputs(&batch).map(<[f64]>::to_vec), |a, b| close(a, b, tol), "outputs")?;
        both(&mut plain, &mut tested, |tr| tr.sequence_losses(&batch).map(<[f64]>::to_vec), |a, b| close(a, b, tol), "sequence_losses")?;

        // TBPTT over trainers of the same settings (streams need every step scored and one
        // direction; they make their own batches, of no lengths).
        if !s.cfg.bidirectional {
            let (k1, k2) = (s.t.div_ceil(2), s.t);
            let every_step = Settings { many_to_one: false, ..s.clone() };
            let streams = |plain| Tbptt::new(trainer(&every_step, plain), k1, k2, s.b);
            let (mut sa, mut sb) = match (streams(true), streams(false)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(_), Err(_)) => return Ok(()),
                (a, b) => return Err(TestCaseError::fail(format!("Tbptt::new: {:?} against {:?}", a.err(), b.err()))),
            };
            for chunk in 0..2 {
                let x: Vec<f64> = (0..k1 * s.b * s.cfg.input_size)
                    .map(|k| ((k * 7 + chunk * 3) % 11) as f64 / 11.0 - 0.5)
                    .collect();
                let tokens: Vec<usize> = (0..k1 * s.b).map(|k| (k + chunk) % 5).collect();
                let values: Vec<f64> = (0..k1 * s.b * s.cfg.output_size)
                    .map(|k| ((k * 5 + chunk) % 7) as f64 / 7.0)
                    .collect();
                let classes: Vec<usize> = (0..k1 * s.b).map(|k| (k + chunk) % s.cfg.output_size).collect();
                let target = if s.cross_entropy { Target::Classes(&classes) } else { Target::Values(&values) };
                let (a, b) = match s.cfg.num_embeddings {
                    Some(_) => (sa.step_tokens(&tokens, target), sb.step_tokens(&tokens, target)),
                    None => (sa.step(&x, target), sb.step(&x, target)),
                };
                let (a, b) = (a.unwrap(), b.unwrap());
                prop_assert!(loss(&a.loss, &b.loss), "tbptt: {} against {}", a.loss, b.loss);
            }
            prop_assert!(close(&sb.trainer.params, &sa.trainer.params, tol), "params after TBPTT");
            prop_assert!(close(sb.state(), sa.state(), tol), "stream states after TBPTT");
        }
    }
}
