//! Time-series forecasting: a model learns sine waves of random frequency and phase
//! (made on the fly, nothing to download) as next-value prediction at every step
//! (many-to-many MSE, or L1, Huber or smooth L1 with `--loss`), then forecasts held-out waves
//! autoregressively, feeding its own predictions back, and is compared with the truth and
//! with the naive "same as last" forecast.
//!
//! `--loss gaussian` makes it a probabilistic forecaster: two outputs per step, a mean and a
//! log-variance, trained with the Gaussian negative log-likelihood, a loss of the program's
//! own (`Trainer::step_with`). It then reports how often the truth falls within two predicted
//! standard deviations of each one-step prediction, and plots that band around the forecast.
//!
//! ```text
//! cargo run --release --example sine
//! cargo run --release --example sine -- --cell lstm --steps 1500 --horizon 100
//! cargo run --release --example sine -- --loss huber --huber-delta 0.1
//! cargo run --release --example sine -- --loss gaussian
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::config::Cell;
use rnn_core::predict::Predictor;
use rnn_core::prelude::*;

/// Train on sine waves, then forecast autoregressively.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The recurrent cell (rnn, lstm, gru).
    #[arg(long, default_value = "gru")]
    cell: String,
    /// Updates.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Steps per training sequence.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Steps of each held-out wave the model sees before forecasting.
    #[arg(long, default_value_t = 48)]
    warmup: usize,
    /// Steps forecast from the model's own outputs.
    #[arg(long, default_value_t = 60)]
    horizon: usize,
    /// Uniform noise added to training inputs (not targets).
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    /// Where the forecast plot goes.
    #[arg(long, default_value = "target/sine/forecast.svg")]
    plot: PathBuf,
    /// Seed of weights and data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The training loss: mse, l1, huber or smooth_l1 (`nn.MSELoss`, `nn.L1Loss`,
    /// `nn.HuberLoss`, `nn.SmoothL1Loss`), or gaussian (a mean and a log-variance per step,
    /// `nn.GaussianNLLLoss(full=True)` of the variance's exp, written here as a loss of the
    /// program's own)
    #[arg(long, default_value = "mse")]
    loss: String,
    /// Huber's threshold delta (with --loss huber)
    #[arg(long, default_value_t = 1.0)]
    huber_delta: f64,
    /// Smooth L1's threshold beta (with --loss smooth_l1; 0 is L1)
    #[arg(long, default_value_t = 1.0)]
    smooth_l1_beta: f64,
}

/// How the model is trained.
#[derive(Clone, Copy)]
enum Loss {
    /// One output per step, a built-in loss.
    BuiltIn(LossKind),
    /// Two outputs per step (mean, log-variance), the Gaussian negative log-likelihood.
    Gaussian,
}

impl Loss {
    /// Outputs per step.
    fn outputs(self) -> usize {
        match self {
            Self::BuiltIn(_) => 1,
            Self::Gaussian => 2,
        }
    }
}

/// The loss `--loss` names.
fn loss_of(args: &Args) -> Result<Loss, String> {
    let kind = match args.loss.as_str() {
        "gaussian" => return Ok(Loss::Gaussian),
        "mse" => LossKind::Mse,
        "l1" => LossKind::L1,
        "huber" => LossKind::huber(args.huber_delta).map_err(|e| format!("--huber-delta: {e}"))?,
        "smooth_l1" => LossKind::smooth_l1(args.smooth_l1_beta)
            .map_err(|e| format!("--smooth-l1-beta: {e}"))?,
        other => {
            return Err(format!(
                "--loss {other:?}: expected mse, l1, huber, smooth_l1 or gaussian"
            ));
        }
    };
    Ok(Loss::BuiltIn(kind))
}

/// The Gaussian negative log-likelihood of `targets` under the outputs `y` (`[T, B, 2]`: a
/// mean and a log-variance per position), averaged over positions, with its gradient into
/// `dy`: `½ (log 2π + s + (z - μ)² e^{-s})` per position.
fn gaussian_nll(y: &[f32], dy: &mut [f32], targets: &[f32]) -> f32 {
    let n = targets.len() as f32;
    let log_two_pi = (2.0 * std::f32::consts::PI).ln();
    let mut sum = 0.0;
    for ((y, dy), z) in y.chunks_exact(2).zip(dy.chunks_exact_mut(2)).zip(targets) {
        let (err, precision) = (z - y[0], (-y[1]).exp());
        sum += 0.5 * (log_two_pi + y[1] + err * err * precision);
        dy[0] = -err * precision / n;
        dy[1] = 0.5 * (1.0 - err * err * precision) / n;
    }
    sum / n
}

/// A wave's frequency and phase.
fn wave(rng: &mut StdRng) -> (f32, f32) {
    (
        rng.random_range(0.05..0.3f32),
        rng.random_range(0.0..6.3f32),
    )
}

/// `b` waves of `t + 1` samples: inputs are samples `0..t` with a little noise, targets
/// the clean samples `1..=t`. The noise teaches the model to pull a slightly-off input back
/// onto the wave, which keeps a long autoregressive forecast from drifting away.
fn waves(rng: &mut StdRng, t: usize, b: usize, noise: f32) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (vec![0.0f32; t * b], vec![0.0f32; t * b]);
    for s in 0..b {
        let (freq, phase) = wave(rng);
        for step in 0..t {
            let jitter = if noise > 0.0 {
                rng.random_range(-noise..noise)
            } else {
                0.0
            };
            x[step * b + s] = (freq * step as f32 + phase).sin() + jitter;
            y[step * b + s] = (freq * (step + 1) as f32 + phase).sin();
        }
    }
    (x, y)
}

fn run(args: Args) -> Result<(), String> {
    let cell = Cell::parse(&args.cell).map_err(|e| format!("--cell: {e}"))?;
    if args.warmup == 0 || args.horizon == 0 || args.seq_len == 0 || args.batch == 0 {
        return Err("--warmup, --horizon, --seq-len and --batch must be positive".into());
    }
    let loss = loss_of(&args)?;
    let o = loss.outputs();
    let cfg = RnnConfig::new(1, args.hidden, o).cell(cell);
    // A loss of the program's own replaces the spec's kind; the spec still says every step.
    let kind = match loss {
        Loss::BuiltIn(kind) => kind,
        Loss::Gaussian => LossKind::Mse,
    };
    let mut trainer = Trainer::<f32>::new(
        cfg,
        LossSpec::every_step(kind),
        OptimizerKind::adam(3e-3),
        args.seed,
    )
    .map_err(|e| e.to_string())?
    .with_clip(Clip::Norm(1.0));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (t, b) = (args.seq_len, args.batch);
    let start = Instant::now();
    for step in 1..=args.steps {
        let (x, y) = waves(&mut rng, t, b, args.noise);
        let report = match loss {
            Loss::BuiltIn(_) => trainer.step(&Batch::new(t, b, &x, Target::Values(&y))),
            Loss::Gaussian => trainer.step_with(&Batch::new(t, b, &x, Target::None), |out, dy| {
                gaussian_nll(out, dy, &y)
            }),
        }
        .map_err(|e| e.to_string())?;
        if step % 200 == 0 || step == 1 {
            println!("update {step:5}  loss {:.5}", report.loss);
        }
    }
    println!(
        "{} {} updates in {:.1} s",
        cell.as_str(),
        args.steps,
        start.elapsed().as_secs_f64()
    );

    // Forecast 100 held-out waves: warm up on the true samples, then run on the model's own.
    let mut held_out = StdRng::seed_from_u64(12_345);
    let (mut model_se, mut naive_se) = (0.0f64, 0.0f64);
    // One-step predictions during the warm-ups whose truth lies within 2 predicted σ.
    let (mut within, mut one_step) = (0usize, 0usize);
    let mut example = None;
    let waves_out = 100;
    for w in 0..waves_out {
        let (freq, phase) = wave(&mut held_out);
        let truth = move |i: usize| (freq * i as f32 + phase).sin();
        let mut p = Predictor::new(cfg, &trainer.params, 1).map_err(|e| e.to_string())?;
        // The warm-up is one run of steps (one input product for all of them).
        let history: Vec<f32> = (0..args.warmup).map(truth).collect();
        let outputs = p.run(&history, args.warmup).map_err(|e| e.to_string())?;
        if let Loss::Gaussian = loss {
            for (i, out) in outputs.chunks_exact(2).enumerate() {
                let sigma = (0.5 * out[1]).exp();
                within += usize::from((truth(i + 1) - out[0]).abs() <= 2.0 * sigma);
                one_step += 1;
            }
        }
        // Each step's mean (the output, or output 0 of a Gaussian) and its σ (0 without one).
        let mean_sigma = |out: &[f32]| match loss {
            Loss::BuiltIn(_) => (out[0], 0.0),
            Loss::Gaussian => (out[0], (0.5 * out[1]).exp()),
        };
        let mut next = mean_sigma(&outputs[(args.warmup - 1) * o..]);
        let mut forecast = Vec::with_capacity(args.horizon);
        for _ in 0..args.horizon {
            forecast.push(next);
            next = mean_sigma(p.step(&[next.0]).map_err(|e| e.to_string())?);
        }
        let last_seen = truth(args.warmup - 1);
        for (k, &(f, _)) in forecast.iter().enumerate() {
            let want = truth(args.warmup + k) as f64;
            model_se += (f as f64 - want).powi(2);
            naive_se += (last_seen as f64 - want).powi(2);
        }
        if w == 0 {
            example = Some((forecast, truth));
        }
    }
    let n = (waves_out * args.horizon) as f64;
    let (model_mse, naive_mse) = (model_se / n, naive_se / n);
    println!(
        "{}-step autoregressive forecast of {waves_out} held-out waves: MSE {model_mse:.4} (naive \"same as last\" {naive_mse:.4})",
        args.horizon
    );
    if one_step > 0 {
        println!(
            "one-step predictions of the warm-ups: the truth within 2 predicted standard \
             deviations {:.1} % of the time ({within} of {one_step}; a calibrated Gaussian: 95.4 %)",
            100.0 * within as f64 / one_step as f64
        );
    }
    let (forecast, truth) = example.expect("one wave");
    let total = args.warmup + args.horizon;
    let at = |k: usize| (args.warmup + k) as f64;
    let mut series = vec![
        common::Series {
            name: "truth".into(),
            points: (0..total).map(|i| (i as f64, truth(i) as f64)).collect(),
        },
        common::Series {
            name: "forecast".into(),
            points: (forecast.iter().enumerate())
                .map(|(k, &(f, _))| (at(k), f as f64))
                .collect(),
        },
    ];
    if let Loss::Gaussian = loss {
        for (name, side) in [("forecast + 2σ", 2.0), ("forecast - 2σ", -2.0)] {
            series.push(common::Series {
                name: name.into(),
                points: (forecast.iter().enumerate())
                    .map(|(k, &(f, sigma))| (at(k), (f + side * sigma) as f64))
                    .collect(),
            });
        }
    }
    let svg = common::line_plot(
        &format!("sine: {} forecast from step {}", cell.as_str(), args.warmup),
        "step",
        "value",
        &series,
        false,
    );
    common::write(&args.plot, &svg)?;
    println!("plot: {}", args.plot.display());
    if args.steps >= 300 && model_mse >= naive_mse {
        return Err("the model did not beat the naive forecast".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}
