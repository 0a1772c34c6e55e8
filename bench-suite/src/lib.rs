//! The reference workloads (`shared/reference/workloads.md`) and helpers to run them.
//!
//! One training step = forward over the whole sequence, a linear head at every step, loss at
//! every step (MSE or cross-entropy, mean), full BPTT, clipping to global norm 1.0, one SGD
//! update with lr 1e-3. Throughput is `T * B / step time` tokens per second.

use rnn_core::prelude::*;

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Name as in workloads.md.
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

impl Workload {
    /// Looks a workload up by name.
    pub fn named(name: &str) -> Option<Workload> {
        WORKLOADS.iter().copied().find(|w| w.name == name)
    }

    /// Matrix-multiply flops of one vanilla-RNN training step: `T B (4 I H + 6 H² + 6 H O)`.
    pub fn flops(&self) -> f64 {
        let (i, h, o) = (self.i as f64, self.h as f64, self.o as f64);
        (self.t * self.b) as f64 * (4.0 * i * h + 6.0 * h * h + 6.0 * h * o)
    }

    /// Tokens per step (`T * B`).
    pub fn tokens(&self) -> usize {
        self.t * self.b
    }

    /// A trainer set up as the reference step (SGD 1e-3, clip norm 1.0).
    pub fn trainer(&self, threads: usize) -> Trainer<f32> {
        let cfg = RnnConfig::new(self.i, self.h, self.o);
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
        let values = (0..self.t * self.b * self.o)
            .map(|k| ((k * 104_729 % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        let classes = (0..self.t * self.b).map(|k| k * 31 % self.o).collect();
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
        let target = match self.w.loss {
            LossKind::Mse => Target::Values(&self.values),
            LossKind::CrossEntropy => Target::Classes(&self.classes),
        };
        Batch::new(self.w.t, self.w.b, &self.x, target)
    }
}
