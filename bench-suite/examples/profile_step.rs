//! Runs training steps of one workload in a loop, for profilers:
//! `cargo run --release -p bench-suite --example profile_step -- medium 50 [threads] [cell] [split] [chunks]`
//! with `split` one of `auto` (default), `whole`, `halves` (how each step's units are divided)
//! and `chunks` one of `auto` (default), `whole` or a number of steps (how many steps run at a
//! time).

use std::time::Instant;

use std::num::NonZeroUsize;

use rnn_core::network::{TimeChunks, UnitSplit};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "medium".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cell = rnn_core::config::Cell::parse(&args.next().unwrap_or_else(|| "rnn".into()))
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let Some(w) = bench_suite::Workload::named(&name) else {
        eprintln!(
            "unknown workload {name:?}; known: {:?}",
            bench_suite::WORKLOADS.map(|w| w.name)
        );
        std::process::exit(2);
    };
    let split = match args.next().as_deref() {
        None | Some("auto") => UnitSplit::Auto,
        Some("whole") => UnitSplit::Whole,
        Some("halves") => UnitSplit::Halves,
        Some(other) => {
            eprintln!("unknown split {other:?}: auto, whole or halves");
            std::process::exit(2);
        }
    };
    let chunks = match args.next().as_deref() {
        None | Some("auto") => TimeChunks::Auto,
        Some("whole") => TimeChunks::Whole,
        Some(n) => match n.parse().ok().and_then(NonZeroUsize::new) {
            Some(n) => TimeChunks::Steps(n),
            None => {
                eprintln!("unknown chunks {n:?}: auto, whole or a number of steps");
                std::process::exit(2);
            }
        },
    };
    let data = w.data();
    let mut trainer = w
        .trainer(cell, threads)
        .with_unit_split(split)
        .with_time_chunks(chunks);
    trainer.step(&data.batch()).expect("step");
    let start = Instant::now();
    for _ in 0..steps {
        trainer.step(&data.batch()).expect("step");
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{} {name} ({split:?}, {chunks:?}, {threads} thread(s)): {:.2} ms/step, {:.0} tokens/s, {:.1} GFLOP/s",
        cell.as_str(),
        secs * 1e3,
        w.tokens() as f64 / secs,
        w.flops(cell) / secs / 1e9
    );
}
