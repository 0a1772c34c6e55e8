//! Property tests over random shapes and options: gradients match finite differences.
//! (Thread-count independence needs products big enough to run in parallel: see api.rs.)

use faer::Par;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig};
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
        0u64..10_000,
    )
        .prop_map(
            |((t, b, i, h, o, layers), (relu, ce, last, sum, lengths, h0, learn), seed)| {
                let mut cfg = RnnConfig::new(i, h, o.max(if ce { 2 } else { 1 })).layers(layers);
                cfg.nonlinearity = if relu {
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

struct Data {
    x: Vec<f64>,
    values: Vec<f64>,
    classes: Vec<usize>,
    lengths: Vec<usize>,
    h0: Vec<f64>,
}

fn data(s: &Setup) -> Data {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let c = &s.cfg;
    let positions = if s.spec.many_to_one { s.b } else { s.t * s.b };
    let mut lengths: Vec<usize> = (0..s.b).map(|_| rng.random_range(1..=s.t)).collect();
    lengths[0] = s.t;
    Data {
        x: (0..s.t * s.b * c.input_size)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        values: (0..positions * c.output_size)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        classes: (0..positions)
            .map(|_| rng.random_range(0..c.output_size))
            .collect(),
        lengths,
        h0: (0..c.num_layers * s.b * c.hidden_size)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect(),
    }
}

fn loss_and_grads(s: &Setup, d: &Data, params: &[f64], par: Par) -> (f64, Vec<f64>) {
    let layout = Layout::new(&s.cfg);
    let target = match s.spec.kind {
        LossKind::Mse => Target::Values(&d.values),
        LossKind::CrossEntropy => Target::Classes(&d.classes),
    };
    let batch = Batch {
        seq_len: s.t,
        batch: s.b,
        x: &d.x,
        target,
        lengths: s.lengths.then_some(&d.lengths[..]),
        h0: s.h0.then_some(&d.h0[..]),
    };
    let mut grads = vec![0.0; layout.len];
    let opts = PassOptions {
        par,
        input_grad: false,
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
    #![proptest_config(ProptestConfig::with_cases(48))]

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
