//! Measures one workload in this process and prints its record as one JSON line.
//!
//! `bench-runner WORKLOAD [THREADS] [MIN_SECONDS]` — `cargo xtask bench` runs it once per
//! record, so each record's peak memory is its own.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(w) = args.first().and_then(|n| bench_suite::Workload::named(n)) else {
        let names: Vec<_> = bench_suite::WORKLOADS
            .iter()
            .chain(&bench_suite::SWEEPS)
            .map(|w| w.name)
            .collect();
        eprintln!(
            "usage: bench-runner WORKLOAD [THREADS] [MIN_SECONDS]; workloads: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let min_secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    println!("{}", bench_suite::measure(&w, threads, min_secs).to_json());
    ExitCode::SUCCESS
}
