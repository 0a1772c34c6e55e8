//! Measures one workload in this process and prints its record as one JSON line.
//!
//! `bench-runner WORKLOAD [THREADS] [MIN_SECONDS] [CELL]` (cell `rnn`, `lstm` or `gru`,
//! default `rnn`) — `cargo xtask bench` runs it once per record, so each record's peak memory
//! is its own.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(w) = args.first().and_then(|n| bench_suite::Workload::named(n)) else {
        let names: Vec<_> = bench_suite::WORKLOADS
            .iter()
            .chain(&bench_suite::SWEEPS)
            .chain(&bench_suite::VARIANTS)
            .map(|w| w.name)
            .collect();
        eprintln!(
            "usage: bench-runner WORKLOAD [THREADS] [MIN_SECONDS] [CELL]; workloads: {}; cells: rnn, lstm, gru",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let min_secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let cell = match rnn_core::config::Cell::parse(args.get(3).map_or("rnn", String::as_str)) {
        Ok(cell) => cell,
        Err(e) => {
            eprintln!("bench-runner: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}",
        bench_suite::measure(&w, cell, threads, min_secs).to_json()
    );
    ExitCode::SUCCESS
}
