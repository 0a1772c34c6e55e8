//! Once the workspace exists, a training step allocates nothing (counting global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rnn_core::prelude::*;

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_of_steady_step(
    cfg: RnnConfig,
    loss: LossSpec,
    opt: OptimizerKind<f32>,
    t: usize,
    b: usize,
) -> usize {
    let mut trainer = Trainer::<f32>::new(cfg, loss, opt, 0)
        .unwrap()
        .with_clip(Clip::Norm(1.0));
    let x = vec![0.3f32; t * b * cfg.input_size];
    let positions = if loss.many_to_one { b } else { t * b };
    let values = vec![0.1f32; positions * cfg.output_size];
    let classes = vec![1usize; positions];
    let lengths: Vec<usize> = (0..b).map(|i| t - i % t).collect();
    let target = match loss.kind {
        LossKind::Mse => Target::Values(&values),
        LossKind::CrossEntropy => Target::Classes(&classes),
    };
    let batch = Batch {
        lengths: Some(&lengths),
        ..Batch::new(t, b, &x, target)
    };
    trainer.step(&batch).unwrap(); // sizes the workspace
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..3 {
        trainer.step(&batch).unwrap();
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn training_steps_do_not_allocate() {
    // One test function, so no other test thread allocates while we count.
    let cases = [
        (
            RnnConfig::new(5, 64, 3),
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::sgd(0.01),
            20,
            1,
        ),
        (
            RnnConfig::new(5, 48, 7).layers(2),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::adam(0.01),
            12,
            8,
        ),
        (
            RnnConfig::new(9, 256, 4),
            LossSpec::last_step(LossKind::CrossEntropy),
            OptimizerKind::adamw(0.01),
            10,
            32,
        ),
        (
            RnnConfig::lstm(5, 40, 3).layers(2).learned_h0(),
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::adam(0.01),
            9,
            4,
        ),
        (
            RnnConfig::lstm(5, 64, 3),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::sgd(0.01),
            20,
            1,
        ),
        (
            RnnConfig::gru(7, 33, 5).layers(2),
            LossSpec::last_step(LossKind::CrossEntropy),
            OptimizerKind::sgd(0.01),
            11,
            6,
        ),
        (
            RnnConfig::gru(5, 64, 3),
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::adamw(0.01),
            20,
            1,
        ),
    ];
    for (cfg, loss, opt, t, b) in cases {
        let n = allocations_of_steady_step(cfg, loss, opt, t, b);
        assert_eq!(
            n, 0,
            "{n} allocations in 3 steady steps of {cfg:?} T={t} B={b}"
        );
    }
}
