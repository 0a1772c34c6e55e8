//! Project tasks: `cargo xtask <task>`.
//!
//! - `bench`: runs the benchmark suite (`--quick` in under 3 minutes), prints a table and
//!   writes `target/bench-report/{report.json, report.md, tokens_vs_seq_len_<cell>.svg}`;
//!   `--json PATH` writes the records as a JSON array; `--peer torch` runs the same workloads
//!   in PyTorch, `--peer jax` in JAX, `--peer torch,jax` in both; `--check` compares with the
//!   committed baseline; `--update-baseline` writes it.
//! - `ci`: runs `.ci/run`, what CI runs.

#![forbid(unsafe_code)]

mod check;
mod measure;
mod plan;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use serde_json::Value;

use check::{baseline_path, check_confirmed, machine_key};
use measure::{measure_record, median_records, run_peer};
use plan::plan;
use report::{scaling_table, svg, table};

#[derive(Parser)]
#[command(about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the benchmark suite and write the report.
    Bench(BenchArgs),
    /// Everything CI runs (`.ci/run`): tests, formatting, lints, API docs, the examples' smoke runs
    /// and the performance check.
    Ci,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The small set (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Also write the records as a JSON array to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run the same workloads in peer frameworks (`torch`, `jax`, or both: `torch,jax`) and
    /// print the ratio to each.
    #[arg(long, value_name = "PEER", value_delimiter = ',')]
    peer: Vec<String>,
    /// Compare with the committed baseline for this machine; exit non-zero on a regression.
    /// A failing check measures once more and fails only if that fails too (the report
    /// files keep the first measurement; the second's verdict is printed).
    #[arg(long)]
    check: bool,
    /// Write the measured records as this machine's baseline.
    #[arg(long)]
    update_baseline: bool,
    /// Seconds to measure each record (at least 5 steps).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Measure the whole plan this many times, interleaved, and keep each record's median
    /// (by share of the GEMM rate): use 3 or more for `--update-baseline` on a shared machine.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> bool {
    eprintln!("+ cargo {}", args.join(" "));
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .status()
        .is_ok_and(|s| s.success())
}

fn bench(args: BenchArgs) -> Result<(), String> {
    let plan = plan(&args);
    let peers = args
        .peer
        .iter()
        .map(|peer| run_peer(peer, &plan))
        .collect::<Result<Vec<_>, _>>()?;
    if !cargo(&[
        "build",
        "--release",
        "-p",
        "bench-suite",
        "--bin",
        "bench-runner",
    ]) {
        return Err("building bench-runner failed".into());
    }
    let runner = root().join("target/release/bench-runner");
    let measure = || -> Result<Vec<Value>, String> {
        let mut rounds: Vec<Vec<Value>> = Vec::new();
        for round in 0..args.rounds.max(1) {
            if args.rounds > 1 {
                eprintln!("round {} of {}", round + 1, args.rounds);
            }
            let mut records = Vec::new();
            for (cell, w, threads) in &plan {
                records.push(measure_record(&runner, cell, w, *threads, args.seconds)?);
            }
            rounds.push(records);
        }
        Ok(median_records(rounds))
    };
    let records = measure()?;
    let dir = root().join("target/bench-report");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // A text file ends in a newline (POSIX), so tools and diffs read the last line whole.
    let json = serde_json::to_string_pretty(&Value::Array(records.clone())).expect("json") + "\n";
    let md = format!(
        "{}\nTwo threads against one, measured in this run:\n\n{}",
        table(&records, &peers),
        scaling_table(&records)
    );
    let write =
        |p: PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(dir.join("report.json"), &json)?;
    write(
        dir.join("report.md"),
        &format!(
            "Machine: {} ({} cores). Command: `cargo xtask bench{}`.\n\n{md}",
            machine_key(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            if args.quick { " --quick" } else { "" }
        ),
    )?;
    write(dir.join("tokens_vs_seq_len_rnn.svg"), &svg(&records, "rnn"))?;
    if let Some(p) = &args.json {
        write(p.clone(), &json)?;
    }
    println!("{md}");
    println!("report: {}", dir.display());
    if args.update_baseline {
        let p = baseline_path();
        std::fs::create_dir_all(p.parent().expect("dir")).map_err(|e| e.to_string())?;
        write(p.clone(), &json)?;
        println!("baseline written: {}", p.display());
    }
    if args.check {
        let p = baseline_path();
        let Ok(text) = std::fs::read_to_string(&p) else {
            println!(
                "check: no baseline for this machine ({}); run `cargo xtask bench --check --update-baseline` on it",
                p.display()
            );
            return Ok(());
        };
        let baseline: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("check against {}:", p.display());
        let ok = check_confirmed(&records, &baseline, measure, |report| println!("{report}"))?;
        if !ok {
            return Err("performance regression".into());
        }
        println!("check: passed");
    }
    Ok(())
}

/// Runs `.ci/run`, the script CI itself calls, so that there is one definition of CI.
fn ci() -> Result<(), String> {
    let script = root().join(".ci/run");
    eprintln!("+ {}", script.display());
    let status = Command::new(&script)
        .current_dir(root())
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ci failed ({status})"))
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Bench(args) => bench(args),
        Task::Ci => ci(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Records as bench-runner writes them, for the modules' tests.
#[cfg(test)]
mod test_records {
    use serde_json::Value;

    pub(crate) fn record(cell: &str, w: &str, threads: u64, rate: f64, extra: Value) -> Value {
        let mut r = serde_json::json!({
            "cell": cell, "workload": w, "threads": threads, "tokens_per_s": rate,
        });
        if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
            r.extend(extra);
        }
        r
    }
}
