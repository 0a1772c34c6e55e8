//! Long sequences: truncated BPTT's throughput and memory against the stream's total length,
//! and checkpointed BPTT against full BPTT from T = 256 to 16384 (time and activation memory).
//! Medium shape (B = 32, I = 64, H = 256, O = 64, cross-entropy), one thread, f32:
//!
//! ```text
//! cargo run --release -p bench-suite --example long_sequences [--quick]
//! ```
//!
//! Memory is the workspace's bytes (activations, checkpoints, temporaries), which is what
//! grows with T; inputs are made chunk by chunk, so a stream holds none of its past.

use std::time::Instant;

use rnn_core::config::Cell;
use rnn_core::prelude::*;

const B: usize = 32;
const I: usize = 64;
const H: usize = 256;
const O: usize = 64;

fn trainer(cell: Cell) -> Trainer<f32> {
    Trainer::new(
        RnnConfig::new(I, H, O).cell(cell),
        LossSpec::every_step(LossKind::CrossEntropy),
        OptimizerKind::sgd(1e-3),
        0,
    )
    .expect("valid")
    .with_clip(Clip::Norm(1.0))
}

/// Deterministic inputs and labels for steps `from..from + t`.
fn data(from: usize, t: usize) -> (Vec<f32>, Vec<usize>) {
    let x = (from * B * I..(from + t) * B * I)
        .map(|k| ((k * 7919 % 2000) as f32 / 1000.0) - 1.0)
        .collect();
    let y = (from * B..(from + t) * B).map(|k| k * 31 % O).collect();
    (x, y)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn tbptt(cell: Cell, total: usize, chunk: usize) {
    let mut stream = Tbptt::new(trainer(cell), chunk, chunk, B).expect("stream");
    let start = Instant::now();
    let mut peak = 0;
    for c in 0..total / chunk {
        let (x, y) = data(c * chunk, chunk);
        stream.step(&x, Target::Classes(&y)).expect("step");
        peak = peak.max(stream.trainer.workspace.bytes());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "| tbptt({chunk}) | {} | {total} | {:.0} | {:.1} |",
        cell.as_str(),
        (total * B) as f64 / secs,
        mib(peak)
    );
}

/// Seconds per step (best of `reps`) and workspace bytes.
fn step_time(cell: Cell, t: usize, memory: Memory, reps: usize) -> (f64, usize) {
    let mut tr = trainer(cell).with_memory(memory);
    let (x, y) = data(0, t);
    let batch = Batch::new(t, B, &x, Target::Classes(&y));
    tr.step(&batch).expect("step");
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        tr.step(&batch).expect("step");
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, tr.workspace.bytes())
}

/// Step time without and with gradient-flow telemetry (best of 7 alternating pairs).
fn telemetry_cost(cell: Cell, t: usize) {
    let (x, y) = data(0, t);
    let batch = Batch::new(t, B, &x, Target::Classes(&y));
    let mut off = trainer(cell);
    let mut on = trainer(cell).with_telemetry();
    off.step(&batch).expect("step");
    on.step(&batch).expect("step");
    let (mut best_off, mut best_on) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..7 {
        let start = Instant::now();
        off.step(&batch).expect("step");
        best_off = best_off.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        on.step(&batch).expect("step");
        best_on = best_on.min(start.elapsed().as_secs_f64());
    }
    println!(
        "| {} | {t} | {:.2} | {:.2} | {:+.1} % |",
        cell.as_str(),
        best_off * 1e3,
        best_on * 1e3,
        100.0 * (best_on / best_off - 1.0)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("Gradient-flow telemetry (‖dL/dh_t‖ per layer and step), medium shape\n");
    println!("| cell | T | off ms/step | on ms/step | cost |");
    println!("|---|---|---|---|---|");
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        telemetry_cost(cell, 100);
    }
    println!();
    println!("Truncated BPTT, k1 = k2 = 64, medium shape: flat in the total length\n");
    println!("| mode | cell | total steps | tokens/s | workspace MiB |");
    println!("|---|---|---|---|---|");
    let totals: &[usize] = if quick {
        &[1024, 4096]
    } else {
        &[1024, 4096, 16384]
    };
    for cell in [Cell::Rnn, Cell::Lstm] {
        for &total in totals {
            tbptt(cell, total, 64);
        }
    }
    println!("\nCheckpointed (segment = √T) against full BPTT, medium shape\n");
    println!(
        "| cell | T | full s/step | checkpointed s/step | time ratio | full MiB | checkpointed MiB | memory ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let lengths: &[usize] = if quick {
        &[256, 1024]
    } else {
        &[256, 1024, 4096, 16384]
    };
    for cell in [Cell::Rnn, Cell::Lstm] {
        for &t in lengths {
            if cell == Cell::Lstm && t > 4096 {
                continue; // the LSTM's full-BPTT step at 16384 holds ~5 GiB
            }
            let reps = if t >= 4096 { 1 } else { 3 };
            let segment = (t as f64).sqrt().round() as usize;
            let (full_s, full_b) = step_time(cell, t, Memory::Full, reps);
            let (ck_s, ck_b) = step_time(cell, t, Memory::Checkpointed { segment }, reps);
            println!(
                "| {} | {t} | {full_s:.3} | {ck_s:.3} | {:.2}x | {:.1} | {:.1} | {:.3} |",
                cell.as_str(),
                ck_s / full_s,
                mib(full_b),
                mib(ck_b),
                ck_b as f64 / full_b as f64
            );
        }
    }
}
