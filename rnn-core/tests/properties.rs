//! Property tests over random cells, shapes and options: gradients match finite differences.
//! (Thread-count independence needs products big enough to run in parallel: see api.rs.)

mod common;
use common::Data;

use faer::Par;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::config::{Cell, LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig};
use rnn_core::network::{PassOptions, forward_backward};
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
        ),
        (0u64..10_000, 0usize..3),
    )
        .prop_map(
            |((t, b, i, h, o, layers), (relu, ce, last, sum, lengths, h0, learn), (seed, cell))| {
                let cell = [Cell::Rnn, Cell::Lstm, Cell::Gru][cell];
                let mut cfg = RnnConfig::new(i, h, o.max(if ce { 2 } else { 1 }))
                    .layers(layers)
                    .cell(cell);
                cfg.nonlinearity = if relu && cell == Cell::Rnn {
                    Nonlinearity::Relu
                } else {
                    Nonlinearity::Tanh
                };
                cfg.learn_h0 = learn && !h0;
                let spec = LossSpec {
                    kind: if ce {
                        LossKind::CrossEntropy
                    } else {
                        LossKind::Mse
                    },
                    reduction: if sum { Reduction::Sum } else { Reduction::Mean },
                    many_to_one: last,
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

fn loss_and_grads(s: &Setup, d: &Data, params: &[f64], par: Par) -> (f64, Vec<f64>) {
    let layout = Layout::new(&s.cfg);
    let batch = d.batch(s.t, s.b, s.spec.kind, s.lengths, s.h0);
    let mut grads = vec![0.0; layout.len];
    let opts = PassOptions {
        par,
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
        let params: Vec<f64> = init_params::<f64>(&s.cfg, s.seed).iter().map(|p| p * 2.0).collect();
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
