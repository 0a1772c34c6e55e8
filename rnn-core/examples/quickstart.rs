//! Trains a tanh RNN to predict the next value of sine waves of random frequency and phase
//! (data made on the fly, nothing to download), and compares it with the naive forecast
//! "the next value equals this one".
//!
//! ```text
//! cargo run --release -p rnn-core --example quickstart [STEPS]
//! ```

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::prelude::*;

const T: usize = 64;
const B: usize = 32;

/// `B` waves of `T + 1` samples: inputs are samples `0..T`, targets samples `1..=T`.
fn waves(rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
    let mut x = vec![0.0f32; T * B];
    let mut y = vec![0.0f32; T * B];
    for b in 0..B {
        let (freq, phase) = (
            rng.random_range(0.05..0.3f32),
            rng.random_range(0.0..6.3f32),
        );
        for t in 0..T {
            x[t * B + b] = (freq * t as f32 + phase).sin();
            y[t * B + b] = (freq * (t + 1) as f32 + phase).sin();
        }
    }
    (x, y)
}

fn run() -> Result<()> {
    let steps: usize = match std::env::args().nth(1) {
        None => 600,
        Some(s) => s
            .parse()
            .map_err(|_| RnnError::Config(format!("STEPS must be a number, got {s:?}")))?,
    };
    let cfg = RnnConfig::new(1, 64, 1);
    let mut trainer = Trainer::<f32>::new(
        cfg,
        LossSpec::every_step(LossKind::Mse),
        OptimizerKind::adam(3e-3),
        0,
    )?
    .with_clip(Clip::Norm(1.0));
    let mut rng = StdRng::seed_from_u64(0);
    let start = Instant::now();
    for step in 1..=steps {
        let (x, y) = waves(&mut rng);
        let report = trainer.step(&Batch::new(T, B, &x, Target::Values(&y)))?;
        if step % 100 == 0 || step == 1 {
            println!(
                "step {step:5}  loss {:.5}  grad norm {:.3}",
                report.loss, report.grad_norm
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Held-out waves: the model's error against the naive forecast's.
    let (x, y) = waves(&mut StdRng::seed_from_u64(12345));
    let model = trainer.loss_and_grads(&Batch::new(T, B, &x, Target::Values(&y)))?;
    let naive = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / (T * B) as f32;
    println!(
        "{steps} steps in {secs:.1} s ({:.0} tokens/s)",
        (steps * T * B) as f64 / secs
    );
    println!("held-out MSE: model {model:.5}, naive forecast {naive:.5}");
    if steps >= 300 && model >= naive {
        return Err(RnnError::Config(
            "the model did not beat the naive forecast".into(),
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
