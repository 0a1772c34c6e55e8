//! Inference with `Predictor`, tokens/s (`cargo bench -p bench-suite --bench inference`): one
//! step at a time (a sampler, a server answering as inputs arrive) and a run of the workload's
//! `T` steps at once (`Predictor::run`: warming up on a history), per cell, at batch 1 and at
//! the workload's batch, on one thread, f32. The medium, char and large workloads' shapes
//! (`BENCH_WORKLOADS=char` and `BENCH_CELLS=lstm` pick, as for `train_step`).

use std::hint::black_box;

use bench_suite::{WORKLOADS, Workload, picked};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rnn_core::config::Cell;
use rnn_core::params::init_params;
use rnn_core::predict::Predictor;
use rnn_core::prelude::RnnConfig;

fn predictor(c: &mut Criterion) {
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        if !picked("BENCH_CELLS", cell.as_str()) {
            continue;
        }
        let shapes = WORKLOADS
            .iter()
            .filter(|w| ["medium", "char", "large"].contains(&w.name));
        for w in shapes.filter(|w| picked("BENCH_WORKLOADS", w.name)) {
            let cfg = RnnConfig::new(w.i, w.h, w.o).cell(cell);
            let params: Vec<f32> = init_params(&cfg, 0);
            let mut group = c.benchmark_group(format!("predict_{}_{}", cell.as_str(), w.name));
            if w.t * w.h * w.h * w.b > 50_000_000 {
                group.sample_size(10);
            }
            for b in [1, w.b] {
                let data = Workload { b, ..*w }.data();
                let x = data.batch().x;
                // One predictor for each mode: the workspace is sized for the steps of a pass.
                let predictor = || Predictor::new(cfg, &params, b).expect("valid workload");
                let (mut stepper, mut runner) = (predictor(), predictor());
                group.throughput(Throughput::Elements(b as u64));
                group.bench_function(BenchmarkId::new("step", format!("b{b}")), |bch| {
                    bch.iter(|| {
                        stepper
                            .step(black_box(&x[..b * w.i]))
                            .map(|y| y[0])
                            .unwrap()
                    })
                });
                group.throughput(Throughput::Elements((w.t * b) as u64));
                group.bench_function(
                    BenchmarkId::new(format!("run_t{}", w.t), format!("b{b}")),
                    |bch| {
                        bch.iter(|| {
                            runner.reset();
                            runner.run(black_box(x), w.t).map(|y| y[0]).unwrap()
                        })
                    },
                );
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(15).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = predictor
}
criterion_main!(benches);
