//! The adding problem (Hochreiter & Schmidhuber 1997): a long-range dependency test.
//!
//! Each input step carries a random value in `[0, 1)` and a marker; exactly two steps are
//! marked, one in each half of the sequence, and the target, scored at the last step only
//! (many-to-one MSE), is the sum of the two marked values. Predicting the mean (1.0) scores
//! an MSE of 1/6 ≈ 0.167; solving the task takes gradients that survive `T` steps.
//!
//! ```text
//! cargo run --release --example adding_problem                      # RNN, LSTM, GRU at T = 50, 100, 200
//! cargo run --release --example adding_problem -- --lengths 100 --cells lstm --steps 2000
//! ```
//!
//! It prints each model's held-out MSE and draws, from the gradient-flow telemetry, the norm
//! of `dL/dh_t` at every step `t` of the longest sequence: vanishing gradients made visible.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::config::Cell;
use rnn_core::prelude::*;

/// RNN against LSTM and GRU on the adding problem, with per-step gradient norms.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Sequence lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    lengths: Vec<usize>,
    /// Cells to compare, comma-separated (rnn, lstm, gru).
    #[arg(long, value_delimiter = ',', default_value = "rnn,lstm,gru")]
    cells: Vec<String>,
    /// Updates per model.
    #[arg(long, default_value_t = 800)]
    steps: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Where the gradient-norm plot goes.
    #[arg(long, default_value = "target/adding_problem/grad_norms.svg")]
    plot: PathBuf,
    /// Seed of weights and data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A batch of `b` adding-problem sequences of length `t`: inputs `[T, B, 2]`, targets `[B, 1]`.
fn batch(rng: &mut StdRng, t: usize, b: usize) -> (Vec<f32>, Vec<f32>) {
    let mut x = vec![0.0f32; t * b * 2];
    let mut y = vec![0.0f32; b];
    for s in 0..b {
        let (first, second) = (rng.random_range(0..t / 2), rng.random_range(t / 2..t));
        for step in 0..t {
            let v = rng.random_range(0.0..1.0f32);
            x[(step * b + s) * 2] = v;
            if step == first || step == second {
                x[(step * b + s) * 2 + 1] = 1.0;
                y[s] += v;
            }
        }
    }
    (x, y)
}

struct Outcome {
    mse: f64,
    /// `‖dL/dh_t‖` for every step of one held-out batch.
    grad_norms: Vec<f64>,
}

fn train(args: &Args, cell: Cell, t: usize) -> Result<Outcome, RnnError> {
    let cfg = RnnConfig::new(2, args.hidden, 1).cell(cell);
    let mut tr = Trainer::<f32>::new(
        cfg,
        LossSpec::last_step(LossKind::Mse),
        OptimizerKind::adam(args.lr),
        args.seed,
    )?
    .with_clip(Clip::Norm(1.0));
    let mut rng = StdRng::seed_from_u64(args.seed ^ (t as u64) << 8);
    for _ in 0..args.steps {
        let (x, y) = batch(&mut rng, t, args.batch);
        tr.step(&Batch::new(t, args.batch, &x, Target::Values(&y)))?;
    }
    // Held out: fresh sequences, no update; telemetry on for the gradient profile.
    tr.telemetry = true;
    let (x, y) = batch(&mut StdRng::seed_from_u64(12_345), t, 1000);
    let mse = tr.loss_and_grads(&Batch::new(t, 1000, &x, Target::Values(&y)))?;
    let grad_norms = tr.grad_h_norms().iter().map(|&v| v as f64).collect();
    Ok(Outcome {
        mse: mse as f64,
        grad_norms,
    })
}

fn run(args: Args) -> Result<(), String> {
    let cells: Vec<Cell> = args
        .cells
        .iter()
        .map(|c| Cell::parse(c).map_err(|e| format!("--cells: {e}")))
        .collect::<Result<_, _>>()?;
    if args.lengths.is_empty() || args.lengths.iter().any(|&t| t < 2) {
        return Err("--lengths must be at least 2 each".into());
    }
    if args.batch == 0 || args.hidden == 0 {
        return Err("--batch and --hidden must be positive".into());
    }
    let longest = *args.lengths.iter().max().expect("non-empty");
    println!(
        "adding problem: {} updates of {} sequences per model, H = {}; predicting the mean scores 0.167",
        args.steps, args.batch, args.hidden
    );
    print!("{:>6}", "T");
    for c in &cells {
        print!("  {:>10}", format!("{} MSE", c.as_str()));
    }
    println!();
    let mut profiles = Vec::new();
    let begin = Instant::now();
    for &t in &args.lengths {
        print!("{t:>6}");
        for &cell in &cells {
            let out = train(&args, cell, t).map_err(|e| e.to_string())?;
            print!("  {:>10.4}", out.mse);
            if t == longest {
                profiles.push(common::Series {
                    name: cell.as_str().to_string(),
                    points: out
                        .grad_norms
                        .iter()
                        .enumerate()
                        .map(|(step, &n)| (step as f64, n))
                        .collect(),
                });
            }
        }
        println!();
    }
    let svg = common::line_plot(
        &format!("adding problem, T = {longest}: gradient reaching each step"),
        "step t",
        "‖dL/dh_t‖",
        &profiles,
        true,
    );
    common::write(&args.plot, &svg)?;
    for p in &profiles {
        let (first, last) = (p.points[0].1, p.points[p.points.len() - 1].1);
        let ratio = if first > 0.0 {
            format!("{:.1e}", first / last)
        } else {
            "0 (underflowed in f32: vanished)".into()
        };
        println!(
            "{:>5}: ‖dL/dh_t‖ at t = 0 over its value at t = {}: {ratio}",
            p.name,
            longest - 1
        );
    }
    println!(
        "gradient-norm profile: {} ({:.0} s)",
        args.plot.display(),
        begin.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}
