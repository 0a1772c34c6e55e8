//! The reference workloads (`shared/reference/workloads.md`) and helpers to run them.
//!
//! One training step = forward over the whole sequence, a linear head at every step, loss at
//! every step (MSE or cross-entropy, mean), full BPTT, clipping to global norm 1.0, one SGD
//! update with lr 1e-3. Throughput is `T * B / step time` tokens per second.

#![forbid(unsafe_code)]

use rnn_core::config::Cell;
use rnn_core::prelude::*;

pub mod round_trip;

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Name as in workloads.md (or a sweep's, like `medium_t4096`).
    pub name: &'static str,
    /// Steps.
    pub t: usize,
    /// Batch.
    pub b: usize,
    /// Inputs.
    pub i: usize,
    /// Hidden.
    pub h: usize,
    /// Outputs / classes.
    pub o: usize,
    /// Loss.
    pub loss: LossKind,
    /// LSTM projections of this width (PyTorch's `proj_size`; LSTM only), or none.
    pub proj: Option<usize>,
}

const fn w(
    name: &'static str,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    o: usize,
    loss: LossKind,
) -> Workload {
    Workload {
        name,
        t,
        b,
        i,
        h,
        o,
        loss,
        proj: None,
    }
}

/// Every workload of the reference table.
pub const WORKLOADS: [Workload; 9] = [
    w("tiny", 100, 1, 16, 64, 16, LossKind::Mse),
    w("small", 100, 16, 32, 128, 32, LossKind::Mse),
    w("medium", 100, 32, 64, 256, 64, LossKind::CrossEntropy),
    w("char", 128, 32, 65, 512, 65, LossKind::CrossEntropy),
    w("large", 50, 64, 256, 1024, 256, LossKind::Mse),
    w("seq16", 16, 32, 64, 256, 64, LossKind::CrossEntropy),
    w("seq64", 64, 32, 64, 256, 64, LossKind::CrossEntropy),
    w("seq256", 256, 32, 64, 256, 64, LossKind::CrossEntropy),
    w("seq1024", 1024, 32, 64, 256, 64, LossKind::CrossEntropy),
];

/// Whether the comma-separated list in the environment variable `var` names `name` (every
/// name when `var` is unset): how the criterion benches pick workloads and cells.
pub fn picked(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |o| o.split(',').any(|n| n == name))
}

/// Models of a cell's variants on the reference shapes: `char_p128` is char's LSTM with
/// projections to 128 units (PyTorch's `proj_size`; LSTM only).
pub const VARIANTS: [Workload; 1] = [Workload {
    proj: Some(128),
    ..w("char_p128", 128, 32, 65, 512, 65, LossKind::CrossEntropy)
}];

/// Sweeps around the medium shape: sequence length, hidden size, batch size.
pub const SWEEPS: [Workload; 7] = [
    w(
        "medium_t4096",
        4096,
        32,
        64,
        256,
        64,
        LossKind::CrossEntropy,
    ),
    w("medium_h128", 100, 32, 64, 128, 64, LossKind::CrossEntropy),
    w("medium_h512", 100, 32, 64, 512, 64, LossKind::CrossEntropy),
    w(
        "medium_h1024",
        100,
        32,
        64,
        1024,
        64,
        LossKind::CrossEntropy,
    ),
    w("medium_b1", 100, 1, 64, 256, 64, LossKind::CrossEntropy),
    w("medium_b8", 100, 8, 64, 256, 64, LossKind::CrossEntropy),
    w("medium_b128", 100, 128, 64, 256, 64, LossKind::CrossEntropy),
];

impl Workload {
    /// Looks a workload up by name, in [`WORKLOADS`], [`SWEEPS`] and [`VARIANTS`].
    pub fn named(name: &str) -> Option<Workload> {
        WORKLOADS
            .iter()
            .chain(&SWEEPS)
            .chain(&VARIANTS)
            .copied()
            .find(|w| w.name == name)
    }

    /// Matrix-multiply flops of one training step with `G` gates (1 RNN, 4 LSTM, 3 GRU):
    /// `T B (4G I H + 6G H² + 6 H O)`, workloads.md's counts; with projections to `P`
    /// units, `T B (4G I H + 6G H P + 6 H P + 6 P O)` (the recurrent products read `P`, and
    /// the projection, its state gradient and `dW_hr` add `6 H P`).
    pub fn flops(&self, cell: Cell) -> f64 {
        let (i, h, o) = (self.i as f64, self.h as f64, self.o as f64);
        let g = cell.gates() as f64;
        let per_token = match self.proj.map(|p| p as f64) {
            None => 4.0 * g * i * h + 6.0 * g * h * h + 6.0 * h * o,
            Some(p) => 4.0 * g * i * h + 6.0 * g * h * p + 6.0 * h * p + 6.0 * p * o,
        };
        (self.t * self.b) as f64 * per_token
    }

    /// Tokens per step (`T * B`).
    pub fn tokens(&self) -> usize {
        self.t * self.b
    }

    /// A trainer of `cell` set up as the reference step (SGD 1e-3, clip norm 1.0).
    pub fn trainer(&self, cell: Cell, threads: usize) -> Trainer<f32> {
        let cfg = RnnConfig {
            proj_size: self.proj,
            ..RnnConfig::new(self.i, self.h, self.o).cell(cell)
        };
        Trainer::new(
            cfg,
            LossSpec::every_step(self.loss),
            OptimizerKind::sgd(1e-3),
            0,
        )
        .expect("valid workload")
        .with_clip(Clip::Norm(1.0))
        .with_threads(threads)
    }

    /// Deterministic inputs and targets for the workload.
    pub fn data(&self) -> WorkloadData {
        let x = (0..self.t * self.b * self.i)
            .map(|k| ((k * 7919 % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        let mse = self.loss.takes_values();
        // Only the target the loss uses, so peak memory counts no dead input.
        let values = (0..if mse { self.t * self.b * self.o } else { 0 })
            .map(|k| ((k * 104_729 % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        let classes = (0..if mse { 0 } else { self.t * self.b })
            .map(|k| k * 31 % self.o)
            .collect();
        WorkloadData {
            w: *self,
            x,
            values,
            classes,
        }
    }
}

/// Inputs and targets of one workload.
pub struct WorkloadData {
    w: Workload,
    x: Vec<f32>,
    values: Vec<f32>,
    classes: Vec<usize>,
}

impl WorkloadData {
    /// The batch.
    pub fn batch(&self) -> Batch<'_, f32> {
        let target = if self.w.loss.takes_values() {
            Target::Values(&self.values)
        } else {
            Target::Classes(&self.classes)
        };
        Batch::new(self.w.t, self.w.b, &self.x, target)
    }
}

/// One benchmark record (`cargo xtask bench --json` writes an array of these).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `rnn`, `lstm` or `gru`.
    pub cell: &'static str,
    /// Workload name (workloads.md's, or a sweep's like `medium_t4096`).
    pub workload: String,
    /// Steps.
    pub t: usize,
    /// Batch.
    pub b: usize,
    /// Inputs.
    pub i: usize,
    /// Hidden.
    pub h: usize,
    /// Outputs.
    pub o: usize,
    /// Threads.
    pub threads: usize,
    /// Median tokens per second.
    pub tokens_per_s: f64,
    /// Achieved matrix-multiply GFLOP/s.
    pub gflops: f64,
    /// `gflops` over the same-run faer GEMM rate at the same thread count.
    pub peak_fraction: f64,
    /// The same-run GEMM rate (GFLOP/s).
    pub gemm_gflops: f64,
    /// Peak resident memory of the measuring process.
    pub peak_rss_bytes: u64,
    /// With more than one thread: the one-thread rate of the same workload, measured in the
    /// same process in alternation with this record's steps, so the speedup is free of the
    /// drift between separately measured records.
    pub one_thread_tokens_per_s: Option<f64>,
    /// Threads a step of this workload actually uses ([`Trainer::threads_for`]): 1 when the
    /// trainer judged the shape too small for a second thread.
    pub threads_used: usize,
    /// Steps per time chunk of the pass ([`rnn_core::network::TimeChunks`]; `T` when the
    /// pass runs all steps at once).
    pub chunk_steps: usize,
    /// Unit blocks per step ([`rnn_core::network::UnitSplit`]): 2 when each step is split
    /// between two workers, 1 when it runs whole.
    pub unit_blocks: usize,
    /// Rounds measured (each a reference GEMM, then this record's steps and, beside a
    /// one-thread trainer, its steps).
    pub rounds: usize,
    /// With more than one thread: the speedup over the one-thread trainer within each round
    /// (the two measured back to back), as its spread over the rounds. The record's speedup
    /// is `tokens_per_s / one_thread_tokens_per_s`, a ratio of medians; this shows how much
    /// the machine moved it from round to round.
    pub round_speedups: Option<Spread>,
    /// With more than one thread: the median over the rounds of the round trip of a cache
    /// line between two threads (ns, [`round_trip::core_round_trip_ns`]), measured in each
    /// round beside the reference GEMM. About 70 on the project's VM when its two cores share
    /// an L3, 310-340 when the host has put them apart, and two threads lose more then.
    pub core_round_trip_ns: Option<f64>,
    /// With more than one thread: the same-run GEMM rate on one thread (GFLOP/s), timed in
    /// each round beside `gemm_gflops`'s. `gemm_gflops / one_thread_gemm_gflops` is what the
    /// machine's cores give a product that splits perfectly in those rounds: on the project's
    /// VM about 1.9x, not 2x, and about what a training step's speedup reaches (the char and
    /// large steps measured within 0.12 of it, most within 0.05, some above).
    pub one_thread_gemm_gflops: Option<f64>,
}

/// The least, median and greatest of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The least.
    pub min: f64,
    /// The median (the upper one of an even count).
    pub median: f64,
    /// The greatest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, `None` when there are none.
    ///
    /// ```
    /// let s = bench_suite::Spread::of(vec![1.9, 1.6, 1.8, 2.0]).unwrap();
    /// assert_eq!((s.min, s.median, s.max), (1.6, 1.9, 2.0));
    /// ```
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        Some(Self {
            min: *values.first()?,
            median: values[values.len() / 2],
            max: *values.last()?,
        })
    }
}

impl Record {
    /// The record as one JSON object (field names are the `--json` contract).
    pub fn to_json(&self) -> String {
        let mut json = format!(
            "{{\"cell\":\"{}\",\"workload\":\"{}\",\"T\":{},\"B\":{},\"I\":{},\"H\":{},\"O\":{},\"threads\":{},\
             \"tokens_per_s\":{:.1},\"gflops\":{:.3},\"peak_fraction\":{:.4},\"gemm_gflops\":{:.3},\"peak_rss_bytes\":{}",
            self.cell,
            self.workload,
            self.t,
            self.b,
            self.i,
            self.h,
            self.o,
            self.threads,
            self.tokens_per_s,
            self.gflops,
            self.peak_fraction,
            self.gemm_gflops,
            self.peak_rss_bytes
        );
        if let Some(rate) = self.one_thread_tokens_per_s {
            json += &format!(",\"one_thread_tokens_per_s\":{rate:.1}");
        }
        json += &format!(
            ",\"threads_used\":{},\"chunk_steps\":{},\"unit_blocks\":{},\"rounds\":{}",
            self.threads_used, self.chunk_steps, self.unit_blocks, self.rounds
        );
        if let Some(Spread { min, median, max }) = self.round_speedups {
            json += &format!(
                ",\"round_speedup_min\":{min:.3},\"round_speedup_median\":{median:.3},\
                 \"round_speedup_max\":{max:.3}"
            );
        }
        if let Some(ns) = self.core_round_trip_ns {
            json += &format!(",\"core_round_trip_ns\":{ns:.1}");
        }
        if let Some(rate) = self.one_thread_gemm_gflops {
            json += &format!(",\"one_thread_gemm_gflops\":{rate:.3}");
        }
        json + "}"
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The median of measurements taken in every round (there is at least one round).
fn median(v: Vec<f64>) -> f64 {
    Spread::of(v).expect("at least one round").median
}

/// Measures `w` with `cell` at `threads`: rounds alternate a faer GEMM reference (512³, same thread
/// count) with training steps, so noise from a shared machine hits both; the medians give
/// tokens/s and the fraction of the same-run GEMM rate. With more than one thread each round
/// also times the GEMM on one thread, the cores' round trip and a one-thread trainer.
pub fn measure(w: &Workload, cell: Cell, threads: usize, min_secs: f64) -> Record {
    use faer::Accum;
    use kernels::gemm::{GemmShape, gemm_nn};
    use std::time::Instant;

    let data = w.data();
    let mut trainer = w.trainer(cell, threads);
    // The reference GEMM runs on the threads the step may use.
    let par = trainer.par;
    let n = 512;
    let (a, b) = (vec![0.5f32; n * n], vec![0.25f32; n * n]);
    let mut c = vec![0.0f32; n * n];
    // The best of three products on `par`'s threads, in seconds.
    let mut gemm = |par| {
        let mut once = || {
            let start = Instant::now();
            gemm_nn(&mut c, Accum::Replace, &a, &b, GemmShape::new(n, n, n), par);
            start.elapsed().as_secs_f64()
        };
        (0..3).map(|_| once()).fold(f64::INFINITY, f64::min)
    };
    // Beside a multi-thread trainer, a one-thread one that takes its turn every round.
    let mut solo = (threads > 1).then(|| w.trainer(cell, 1));
    if let Some(solo) = &mut solo {
        solo.step(&data.batch()).expect("workload step");
    }
    let warm = Instant::now();
    trainer.step(&data.batch()).expect("workload step");
    // Steps per round: enough for ~20 ms, so a round measures warm caches, not the GEMM's
    // eviction of them.
    let per_round = (0.02 / warm.elapsed().as_secs_f64())
        .ceil()
        .clamp(1.0, 1000.0) as usize;
    gemm(par);
    // Seconds per step of `per_round` steps.
    let time = |tr: &mut Trainer<f32>| {
        let start = Instant::now();
        for _ in 0..per_round {
            tr.step(&data.batch()).expect("workload step");
        }
        start.elapsed().as_secs_f64() / per_round as f64
    };
    let (mut steps, mut gemms, mut solo_steps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut round_trips, mut solo_gemms) = (Vec::new(), Vec::new());
    let begin = Instant::now();
    let more = |rounds: usize| {
        let wanted = rounds < 5 || (begin.elapsed().as_secs_f64() < min_secs && rounds < 1000);
        // Beside a one-thread trainer, an even count: each trainer then goes first in as many
        // rounds as the other (below), so whatever going first costs, both pay it equally.
        wanted || (threads > 1 && rounds % 2 == 1)
    };
    while more(steps.len()) {
        gemms.push(gemm(par));
        if threads > 1 {
            solo_gemms.push(gemm(faer::Par::Seq));
            // 3 ms at most: how far apart the cores are in this round.
            let ns = round_trip::core_round_trip_ns(20_000, std::time::Duration::from_millis(3));
            round_trips.extend(ns);
        }
        // Let the reference GEMM's pool threads finish spinning and park, so they do not
        // compete with a step that leaves them idle (tiny and small at two threads).
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The two trainers take turns going first: the first after the pause runs on a
        // core that may have slowed down while idle.
        let solo_first = steps.len() % 2 == 1;
        if let Some(solo) = solo.as_mut().filter(|_| solo_first) {
            solo_steps.push(time(solo));
        }
        steps.push(time(&mut trainer));
        if let Some(solo) = solo.as_mut().filter(|_| !solo_first) {
            solo_steps.push(time(solo));
        }
    }
    // Round by round: the one-thread step over this record's, measured back to back.
    let round_speedups = Spread::of(
        solo_steps
            .iter()
            .zip(&steps)
            .map(|(one, s)| one / s)
            .collect(),
    );
    let rounds = steps.len();
    let one_thread_tokens_per_s = Spread::of(solo_steps).map(|s| w.tokens() as f64 / s.median);
    let (step, gemm_s) = (median(steps), median(gemms));
    let gflops_of = |secs: f64| 2.0 * (n * n * n) as f64 / secs / 1e9;
    let gemm_gflops = gflops_of(gemm_s);
    let gflops = w.flops(cell) / step / 1e9;
    let gates = trainer.config.gate_rows() / w.h;
    Record {
        cell: cell.as_str(),
        workload: w.name.to_string(),
        t: w.t,
        b: w.b,
        i: w.i,
        h: w.h,
        o: w.o,
        threads,
        tokens_per_s: w.tokens() as f64 / step,
        gflops,
        peak_fraction: gflops / gemm_gflops,
        gemm_gflops,
        peak_rss_bytes: peak_rss_bytes(),
        one_thread_tokens_per_s,
        threads_used: trainer.threads_for(w.t, w.b),
        chunk_steps: trainer.chunks.steps(w.t, w.b, w.h, gates),
        unit_blocks: trainer.split.blocks(w.b, w.h, gates),
        rounds,
        round_speedups,
        core_round_trip_ns: Spread::of(round_trips).map(|s| s.median),
        one_thread_gemm_gflops: Spread::of(solo_gemms).map(|s| gflops_of(s.median)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--json` record's fields, names and formats are a contract (`cargo xtask bench
    /// --check` and users' scripts read them): new fields are added, none renamed.
    #[test]
    fn json_record_has_every_field() {
        let record = Record {
            cell: "lstm",
            workload: "char".into(),
            t: 128,
            b: 32,
            i: 65,
            h: 512,
            o: 65,
            threads: 2,
            tokens_per_s: 25000.04,
            gflops: 170.5,
            peak_fraction: 0.85,
            gemm_gflops: 200.0,
            peak_rss_bytes: 123,
            one_thread_tokens_per_s: Some(13000.0),
            threads_used: 2,
            chunk_steps: 8,
            unit_blocks: 2,
            rounds: 6,
            round_speedups: Some(Spread {
                min: 1.7,
                median: 1.9,
                max: 1.95,
            }),
            core_round_trip_ns: Some(68.25),
            one_thread_gemm_gflops: Some(105.5),
        };
        assert_eq!(
            record.to_json(),
            "{\"cell\":\"lstm\",\"workload\":\"char\",\"T\":128,\"B\":32,\"I\":65,\"H\":512,\
             \"O\":65,\"threads\":2,\"tokens_per_s\":25000.0,\"gflops\":170.500,\
             \"peak_fraction\":0.8500,\"gemm_gflops\":200.000,\"peak_rss_bytes\":123,\
             \"one_thread_tokens_per_s\":13000.0,\"threads_used\":2,\"chunk_steps\":8,\
             \"unit_blocks\":2,\"rounds\":6,\"round_speedup_min\":1.700,\
             \"round_speedup_median\":1.900,\"round_speedup_max\":1.950,\
             \"core_round_trip_ns\":68.2,\"one_thread_gemm_gflops\":105.500}"
        );
        let solo = Record {
            one_thread_tokens_per_s: None,
            round_speedups: None,
            core_round_trip_ns: None,
            one_thread_gemm_gflops: None,
            ..record
        };
        assert!(!solo.to_json().contains("one_thread_tokens_per_s"));
        assert!(!solo.to_json().contains("round_speedup"));
        assert!(!solo.to_json().contains("core_round_trip_ns"));
        assert!(!solo.to_json().contains("one_thread_gemm_gflops"));
    }
}
