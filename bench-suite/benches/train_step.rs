//! One full training step per cell, workload and sweep (sequence length, hidden size, batch),
//! tokens/s (`cargo bench -p bench-suite`; `BENCH_WORKLOADS=tiny,medium` and
//! `BENCH_CELLS=lstm,gru` to pick; LSTM and GRU run the workloads.md table only), beside a same-run faer GEMM (512x512x512) for the hardware's rate. `cargo xtask
//! bench` gives the same measurements as records with memory and GEMM-relative ratios.
//! `fine_tune` times char's data through a two-layer LSTM with every tensor training, with
//! layer 0 frozen (`Trainer::freeze`, whose backward pass is then skipped), with layer 1's
//! input weights frozen (their gradient product skipped), and with only the head training
//! (a linear probe: the whole backward pass is the head's). `loader` times epochs over
//! sequences of 16-256 steps through `loader::Loader`: shuffled (in the loader's order, which
//! the trainer copies longest first, then listed so by the loader) and bucketed by length,
//! scored once per sequence and at every step (1000 classes): throughput counts the
//! sequences' own steps, not the padding.

use std::hint::black_box;

use bench_suite::{SWEEPS, WORKLOADS, Workload, picked};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use faer::{Accum, Par};
use kernels::gemm::{GemmShape, gemm_nn};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{Cell, LossKind, LossSpec, RnnConfig};
use rnn_core::loader::{Loader, gather_rows, pad_batch};
use rnn_core::optim::{Clip, OptimizerKind};
use rnn_core::trainer::Trainer;

fn train_step(c: &mut Criterion) {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        if !picked("BENCH_CELLS", cell.as_str()) {
            continue;
        }
        let sweeps: &[_] = if cell == Cell::Rnn { &SWEEPS } else { &[] };
        for w in WORKLOADS.iter().chain(sweeps) {
            if !picked("BENCH_WORKLOADS", w.name) {
                continue;
            }
            let threads = 1usize;
            let mut group = c.benchmark_group(format!("{}_{}_t{threads}", cell.as_str(), w.name));
            group.throughput(Throughput::Elements(w.tokens() as u64));
            if w.t * w.h * w.h * w.b > 50_000_000 {
                group.sample_size(10);
            }
            let data = w.data();
            let mut trainer = w.trainer(cell, threads);
            group.bench_function(BenchmarkId::from_parameter(w.t), |b| {
                b.iter(|| trainer.step(black_box(&data.batch())).unwrap())
            });
            group.finish();
        }
    }
}

fn fine_tune(c: &mut Criterion) {
    if !picked("BENCH_WORKLOADS", "fine_tune") {
        return;
    }
    let w = Workload::named("char").expect("char is a workload");
    let data = w.data();
    let mut group = c.benchmark_group("fine_tune_lstm_char_2layers_t1");
    group.throughput(Throughput::Elements(w.tokens() as u64));
    group.sample_size(10);
    let layer =
        |k: usize| ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|t| format!("{t}_l{k}"));
    let cases = [
        ("all_train", vec![]),
        ("layer0_frozen", layer(0).to_vec()),
        ("weight_ih_l1_frozen", vec!["weight_ih_l1".to_string()]),
        ("head_only", [layer(0), layer(1)].concat()),
    ];
    for (id, frozen) in cases {
        let cfg = RnnConfig::lstm(w.i, w.h, w.o).layers(2);
        let spec = LossSpec::every_step(LossKind::CrossEntropy);
        let mut trainer = Trainer::new(cfg, spec, OptimizerKind::sgd(1e-3), 0)
            .expect("a valid model")
            .with_clip(Clip::Norm(1.0))
            .with_threads(1);
        for name in frozen {
            trainer
                .freeze(&format!("rnn.{name}"))
                .expect("a tensor of the model");
        }
        group.bench_function(id, |b| {
            b.iter(|| trainer.step(black_box(&data.batch())).unwrap())
        });
    }
    group.finish();
}

/// Epochs of 256 sequences of 16-256 steps (I = 32) through an LSTM of H = 128, batches of
/// 32: in shuffled batches (copied longest first by the trainer), listed longest first by
/// the loader, and in shuffled batches of like lengths (pools of 4 batches and of all 8).
/// Twice: a class per sequence scored at its own last step (4 classes), and a label at
/// every step out of 1000 (a language model's head, which at every step costs more than
/// the LSTM; only in shuffled and bucketed batches).
fn loader(c: &mut Criterion) {
    if !picked("BENCH_WORKLOADS", "loader") {
        return;
    }
    let (n, i, h, classes, batch_size) = (256, 32, 128, 4, 32);
    let mut rng = StdRng::seed_from_u64(0);
    let lengths: Vec<usize> = (0..n).map(|_| rng.random_range(16..=256)).collect();
    let xs: Vec<Vec<f32>> = (lengths.iter())
        .map(|&len| (0..len * i).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..classes)).collect();
    let vocab = 1000;
    let step_labels: Vec<Vec<usize>> = (lengths.iter())
        .map(|&len| (0..len).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let shuffled = Loader::new(&lengths, batch_size)
        .expect("a data set")
        .shuffled(0);
    let (bucketed4, bucketed8) = (
        shuffled.clone().bucketed(4).expect("a pool"),
        shuffled.clone().bucketed(8).expect("a pool"),
    );
    let runs = [
        (
            "loader_lstm_lengths16to256_t1",
            Labels::Sequence(&labels, classes),
            vec![
                ("shuffled", shuffled.clone()),
                ("shuffled_longest_first", shuffled.clone().longest_first()),
                ("bucketed4", bucketed4.clone()),
                ("bucketed8", bucketed8.clone()),
            ],
        ),
        (
            "loader_lstm_lengths16to256_every_step_o1000_t1",
            Labels::Steps(&step_labels, vocab),
            vec![("shuffled", shuffled), ("bucketed8", bucketed8)],
        ),
    ];
    for (name, labels, cases) in runs {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(lengths.iter().sum::<usize>() as u64));
        group.sample_size(10);
        for (id, loader) in cases {
            let mut trainer = Trainer::new(
                RnnConfig::lstm(i, h, labels.classes()),
                labels.spec(),
                OptimizerKind::adam(1e-3),
                0,
            )
            .expect("a valid model")
            .with_threads(1);
            // What bucketing saves: the share of the positions a step computes that are padding.
            let share = loader.padding_share(0);
            eprintln!(
                "{name}/{id}: {:.1} % of an epoch's positions padding",
                100.0 * share
            );
            let mut epoch = 0;
            group.bench_function(id, |b| {
                b.iter(|| {
                    for indices in loader.epoch(epoch) {
                        let x = pad_batch(&xs, &indices, i, 0.0).unwrap();
                        let y = labels.of(&indices);
                        let batch =
                            Batch::new(x.seq_len, indices.len(), &x.values, Target::Classes(&y));
                        trainer
                            .step(black_box(&Batch {
                                lengths: Some(&x.lengths),
                                ..batch
                            }))
                            .unwrap();
                    }
                    epoch += 1;
                })
            });
        }
        group.finish();
    }
}

/// The loader bench's labels: a class per sequence, or one per step, and how many classes.
#[derive(Clone, Copy)]
enum Labels<'a> {
    Sequence(&'a [usize], usize),
    Steps(&'a [Vec<usize>], usize),
}

impl Labels<'_> {
    fn classes(self) -> usize {
        match self {
            Labels::Sequence(_, n) | Labels::Steps(_, n) => n,
        }
    }

    fn spec(self) -> LossSpec {
        match self {
            Labels::Sequence(..) => LossSpec::last_step(LossKind::CrossEntropy),
            Labels::Steps(..) => LossSpec::every_step(LossKind::CrossEntropy),
        }
    }

    /// The labels of the sequences `indices`: `[B]`, or padded `[T, B]`.
    fn of(self, indices: &[usize]) -> Vec<usize> {
        match self {
            Labels::Sequence(labels, _) => gather_rows(labels, indices, 1).unwrap(),
            Labels::Steps(labels, _) => pad_batch(labels, indices, 1, 0).unwrap().values,
        }
    }
}

fn gemm_reference(c: &mut Criterion) {
    let n = 512;
    let (a, b) = (vec![0.5f32; n * n], vec![0.25f32; n * n]);
    let mut out = vec![0.0f32; n * n];
    let mut group = c.benchmark_group("gemm_reference_512");
    group.throughput(Throughput::Elements((2 * n * n * n) as u64));
    group.bench_function("faer_seq", |bch| {
        bch.iter(|| {
            gemm_nn(
                &mut out,
                Accum::Replace,
                black_box(&a),
                black_box(&b),
                GemmShape::new(n, n, n),
                Par::Seq,
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(15).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = gemm_reference, train_step, fine_tune, loader
}
criterion_main!(benches);
