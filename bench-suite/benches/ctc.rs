//! The CTC loss (`cargo bench -p bench-suite --bench ctc`): its loss and gradient over
//! logits of a speech-like shape (T = 500 steps, B = 32 sequences, C = 30 classes, targets of
//! 100 labels), f32, on one thread and two, and the loss alone on one; greedy and beam-search
//! (16 wide) decoding of those logits, one thread; and a training step of an LSTM (I = 40,
//! H = 256) through it against the same step through a loss of one's own that costs nothing,
//! one thread: the loss's share of a step. `python3 scripts/torch_ctc_bench.py` times
//! PyTorch's `F.ctc_loss` forward and backward on the same shape.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::ctc::{Ctc, beam_decode, greedy_decode};
use rnn_core::prelude::*;

const T: usize = 500;
const B: usize = 32;
const C: usize = 30;
const S: usize = 100;
const I: usize = 40;
const H: usize = 256;

fn ctc(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let targets: Vec<Vec<usize>> = (0..B)
        .map(|_| (0..S).map(|_| rng.random_range(1..C)).collect())
        .collect();
    let ctc = Ctc::new(&targets, C, 0).expect("valid targets");
    let logits: Vec<f32> = (0..T * B * C)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let mut dlogits = vec![0.0f32; logits.len()];

    let mut group = c.benchmark_group(format!("ctc_t{T}_b{B}_c{C}_s{S}"));
    group.throughput(Throughput::Elements((T * B) as u64));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        group.bench_function(format!("loss_and_grads_threads{threads}"), |bch| {
            bch.iter(|| {
                pool.install(|| ctc.loss_and_grads(black_box(&logits), T, None, &mut dlogits))
                    .unwrap()
            })
        });
    }

    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    group.bench_function("loss_threads1", |bch| {
        bch.iter(|| {
            one.install(|| ctc.loss(black_box(&logits), T, None))
                .unwrap()
        })
    });
    group.bench_function("greedy_decode_threads1", |bch| {
        bch.iter(|| {
            one.install(|| greedy_decode(black_box(&logits), T, B, C, 0, None))
                .unwrap()
        })
    });
    group.bench_function("beam_decode_w16_threads1", |bch| {
        bch.iter(|| {
            one.install(|| beam_decode(black_box(&logits), T, B, C, 0, None, 16))
                .unwrap()
        })
    });

    let x: Vec<f32> = (0..T * B * I)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let batch = Batch::new(T, B, &x, Target::None);
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    let cfg = RnnConfig::lstm(I, H, C);
    let trainer = || {
        Trainer::<f32>::new(cfg, spec.clone(), OptimizerKind::adam(1e-4), 0)
            .unwrap()
            .with_threads(1)
    };
    let mut tr = trainer();
    group.sample_size(10);
    group.bench_function("lstm_h256_step_threads1", |bch| {
        bch.iter(|| ctc.step(&mut tr, black_box(&batch)).unwrap().loss)
    });
    let mut tr = trainer();
    group.bench_function("lstm_h256_step_free_loss_threads1", |bch| {
        bch.iter(|| tr.step_with(black_box(&batch), |_, _| 0.0).unwrap().loss)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = ctc
}
criterion_main!(benches);
