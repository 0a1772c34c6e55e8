//! Property tests over random cells, shapes and options: gradients match finite differences;
//! chunked forwards equal the full forward; f32 agrees with f64; 1 and 2 threads agree bitwise.

use crate::common::Data;

use std::num::NonZeroUsize;

use faer::Par;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::config::{Cell, LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig};
use rnn_core::network::{Exec, PassOptions, TimeChunks, UnitSplit, forward_backward};
use rnn_core::params::{Layout, init_params};
use rnn_core::workspace::Workspace;

#[derive(Debug, Clone)]
struct Setup {
    cfg: RnnConfig,
    spec: LossSpec,
    t: usize,
    b: usize,
    lengths: bool,
    h0: bool,
    seed: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        (
            1usize..6,
            1usize..5,
            1usize..6,
            1usize..10,
            1usize..5,
            1usize..4,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        // The float-target loss when not cross-entropy (MSE, L1, Huber), drawn last so that
        // saved cases replay the draws before it unchanged; then, after it for the same
        // reason, both directions and token input.
        (0u64..10_000, 0usize..3, 0usize..3),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (t, b, i, h, o, layers),
                (relu, ce, last, sum, lengths, h0, learn, no_bias),
                (seed, cell, value_loss),
                (bidirectional, tokens),
            )| {
                let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
                let mut cfg = RnnConfig::new(i, h, o.max(if ce { 2 } else { 1 }))
                    .layers(layers)
                    .cell(cell)
                    .bias(!no_bias);
                cfg.nonlinearity = if relu && cell == Cell::Rnn {
                    Nonlinearity::Relu
                } else {
                    Nonlinearity::Tanh
                };
                cfg.learn_h0 = learn && !h0;
                cfg.bidirectional = bidirectional;
                // A vocabulary a little larger than the input width: tokens repeat.
                cfg.num_embeddings = tokens.then_some(i + 1);
                let spec = LossSpec {
                    kind: match (ce, value_loss) {
                        (true, _) => LossKind::CrossEntropy,
                        (false, 0) => LossKind::Mse,
                        (false, 1) => LossKind::L1,
                        (false, _) => LossKind::huber(0.5).unwrap(),
                    },
                    reduction: if sum { Reduction::Sum } else { Reduction::Mean },
                    many_to_one: last,
                    class_weights: None,
                    pos_weights: None,
                };
                Setup {
                    cfg,
                    spec,
                    t,
                    b,
                    lengths,
                    h0,
                    seed,
                }
            },
        )
}

fn data(s: &Setup) -> Data {
    Data::random(
        &mut StdRng::seed_from_u64(s.seed),
        &s.cfg,
        s.t,
        s.b,
        s.spec.many_to_one,
    )
}

fn loss_and_grads(s: &Setup, d: &Data, params: &[f64], exec: impl Into<Exec>) -> (f64, Vec<f64>) {
    let exec = exec.into();
    let layout = Layout::new(&s.cfg);
    let batch = d.batch(s.t, s.b, s.spec.kind, s.lengths, s.h0);
    let mut grads = vec![0.0; layout.len];
    let opts = PassOptions {
        par: exec.par,
        split: exec.split,
        chunks: exec.chunks,
        ..Default::default()
    };
    let loss = forward_backward(
        &s.cfg,
        &layout,
        params,
        &mut grads,
        &mut Workspace::new(),
        &batch,
        &s.spec,
        opts,
    )
    .unwrap();
    (loss, grads)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gradients_match_finite_differences(s in setup()) {
        let layout = Layout::new(&s.cfg);
        let mut params: Vec<f64> = init_params::<f64>(&s.cfg, s.seed).iter().map(|p| p * 2.0).collect();
        // A learned state starts at zeros. With ReLU and no biases, a unit whose inputs are
        // all zero then sits exactly on the kink, where finite differences see half a slope
        // (a 2-layer, H = 1, T = 1 case did). Start it where training would have moved it.
        let mut state_rng = StdRng::seed_from_u64(s.seed ^ 0x570);
        for r in layout.h0.iter().chain(&layout.c0) {
            params[r.clone()].fill_with(|| state_rng.random_range(-0.5..0.5));
        }
        let d = data(&s);
        let (_, grads) = loss_and_grads(&s, &d, &params, Par::Seq);
        let mut rng = StdRng::seed_from_u64(s.seed ^ 0x5eed);
        for _ in 0..12 {
            let idx = rng.random_range(0..layout.len);
            let mut p = params.clone();
            p[idx] += 1e-6;
            let up = loss_and_grads(&s, &d, &p, Par::Seq).0;
            p[idx] -= 2e-6;
            let down = loss_and_grads(&s, &d, &p, Par::Seq).0;
            let numeric = (up - down) / 2e-6;
            prop_assert!(
                (grads[idx] - numeric).abs() <= 1e-7 + 1e-5 * numeric.abs().max(grads[idx].abs()),
                "param {idx}: analytic {} vs numeric {numeric}", grads[idx]
            );
        }
    }
}

/// A random cell, shape and batch for the cross-checks below (f64 data).
fn cross_setup() -> impl Strategy<Value = (RnnConfig, usize, usize, u64)> {
    (
        0usize..3,
        1usize..4,
        (1usize..40, 1usize..9, 1usize..70, 1usize..70, 1usize..9),
        0u64..1000,
    )
        .prop_map(|(cell, layers, (t, b, i, h, o), seed)| {
            let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
            (
                RnnConfig::new(i, h, o).cell(cell).layers(layers),
                t,
                b,
                seed,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Running a sequence in chunks, each starting from the state the previous one ended in
    /// (what TBPTT's forward does), gives the full forward's hidden states.
    #[test]
    fn chunked_forward_equals_full_forward((cfg, t, b, seed) in cross_setup(), cut in 1usize..40) {
        use rnn_core::batch::{Batch, Target};
        use rnn_core::network::forward;
        let cut = cut.min(t);
        let layout = Layout::new(&cfg);
        let params = init_params::<f64>(&cfg, seed);
        let d = Data::random(&mut StdRng::seed_from_u64(seed), &cfg, t, b, false);
        let (l, h, i) = (cfg.num_layers, cfg.hidden_size, cfg.input_size);
        let mut full = Workspace::new();
        forward(&cfg, &layout, &params, &mut full, &Batch::new(t, b, &d.x, Target::Values(&[])), false, Par::Seq).unwrap();
        let mut state_h = vec![0.0; l * b * h];
        let mut state_c = vec![0.0; if cfg.cell == Cell::Lstm { l * b * h } else { 0 }];
        let mut start = 0;
        while start < t {
            let len = cut.min(t - start);
            let batch = Batch {
                h0: Some(&state_h),
                c0: (cfg.cell == Cell::Lstm).then_some(&state_c[..]),
                ..Batch::new(len, b, &d.x[start * b * i..(start + len) * b * i], Target::Values(&[]))
            };
            let mut ws = Workspace::new();
            forward(&cfg, &layout, &params, &mut ws, &batch, false, Par::Seq).unwrap();
            for k in 0..l {
                for s in 1..=len {
                    let got = &ws.layers[k].hs[s * b * h..(s + 1) * b * h];
                    let want = &full.layers[k].hs[(start + s) * b * h..(start + s + 1) * b * h];
                    for (g, w) in got.iter().zip(want) {
                        prop_assert!((g - w).abs() <= 1e-12, "layer {k} step {}: {g} vs {w}", start + s);
                    }
                }
            }
            let next: Vec<f64> = ws.layers.iter().flat_map(|ly| ly.hs[len * b * h..(len + 1) * b * h].to_vec()).collect();
            state_h = next;
            if cfg.cell == Cell::Lstm {
                state_c = ws.layers.iter().flat_map(|ly| ly.cs[len * b * h..(len + 1) * b * h].to_vec()).collect();
            }
            start += len;
        }
    }

    /// The f32 engine agrees with the f64 one, to f32 precision, on every gradient.
    #[test]
    fn f32_agrees_with_f64((cfg, t, b, seed) in cross_setup()) {
        use rnn_core::batch::{Batch, Target};
        let layout = Layout::new(&cfg);
        let p64 = init_params::<f64>(&cfg, seed);
        let p32: Vec<f32> = p64.iter().map(|&v| v as f32).collect();
        let d = Data::random(&mut StdRng::seed_from_u64(seed), &cfg, t, b, false);
        let spec = LossSpec::every_step(LossKind::Mse);
        let mut g64 = vec![0.0; layout.len];
        let l64 = forward_backward(&cfg, &layout, &p64, &mut g64, &mut Workspace::new(),
            &Batch::new(t, b, &d.x, Target::Values(&d.values)), &spec, PassOptions::default()).unwrap();
        let x32: Vec<f32> = d.x.iter().map(|&v| v as f32).collect();
        let v32: Vec<f32> = d.values.iter().map(|&v| v as f32).collect();
        let mut g32 = vec![0.0f32; layout.len];
        let l32 = forward_backward(&cfg, &layout, &p32, &mut g32, &mut Workspace::new(),
            &Batch::new(t, b, &x32, Target::Values(&v32)), &spec, PassOptions::default()).unwrap();
        prop_assert!((l32 as f64 - l64).abs() <= 1e-5 * (1.0 + l64.abs()));
        let scale = g64.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        for (k, (a, w)) in g32.iter().zip(&g64).enumerate() {
            prop_assert!((*a as f64 - w).abs() <= 2e-5 * scale, "grad {k}: {a} vs {w}");
        }
    }

    /// One and two threads give bitwise the same gradients (the shapes reach the size where
    /// the big products do run on both threads), with each step whole or in two unit
    /// blocks (which two threads then run side by side), and in time chunks of any length.
    /// Half the cases score the last step: it reads the final states, which finished
    /// sequences carried unchanged (a loss at every step never reads a carried state).
    #[test]
    fn one_and_two_threads_agree_bitwise((cfg, t, b, seed) in cross_setup()) {
        let (t, b) = (t * 8, b * 8); // up to 312 x 64 rows: some products split across threads
        let last = seed % 2 == 1;
        let d = Data::random(&mut StdRng::seed_from_u64(seed), &cfg, t, b, last);
        let s = Setup {
            cfg,
            spec: match last {
                false => LossSpec::every_step(LossKind::CrossEntropy),
                true => LossSpec::last_step(LossKind::CrossEntropy),
            },
            t,
            b,
            lengths: true,
            h0: false,
            seed,
        };
        let params = init_params::<f64>(&cfg, seed);
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let three = TimeChunks::Steps(NonZeroUsize::new(3).unwrap());
        for (split, chunks) in [
            (UnitSplit::Auto, TimeChunks::Auto),
            (UnitSplit::Halves, TimeChunks::Auto),
            (UnitSplit::Auto, three),
            (UnitSplit::Halves, three),
        ] {
            let exec = |par| Exec { par, split, chunks };
            let one = pool(1).install(|| loss_and_grads(&s, &d, &params, exec(Par::Seq)));
            let two = pool(2).install(|| loss_and_grads(&s, &d, &params, exec(Par::rayon(2))));
            prop_assert_eq!(one.0.to_bits(), two.0.to_bits());
            prop_assert!(one.1.iter().zip(&two.1).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
