//! Once the workspace exists, a training step allocates nothing (counting global allocator),
//! batches of varying lengths and training through final states included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rnn_core::config::Cell;
use rnn_core::prelude::*;
use rnn_core::schedule::{Decay, LrSchedule, OneCycle};

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

const STEADY_STEPS: usize = 40;

/// A schedule that sets the rate and the momentum of every update.
fn one_cycle() -> LrSchedule {
    LrSchedule::new(Decay::OneCycle(OneCycle::new(1000).unwrap()))
}

fn allocations_of_steady_step(
    cfg: RnnConfig,
    loss: LossSpec,
    opt: OptimizerKind<f32>,
    t: usize,
    b: usize,
    (threads, split, memory, micro_batches): (usize, UnitSplit, Memory, usize),
) -> usize {
    // The stacked LSTM and GRU drop between their layers; the stacked RNN does not.
    let dropout = if cfg.cell == Cell::Rnn { 0.0 } else { 0.25 };
    let mut trainer = Trainer::<f32>::new(cfg, loss.clone(), opt, 0)
        .unwrap()
        .with_clip(Clip::Norm(1.0))
        .with_threads(threads)
        .with_unit_split(split)
        .with_memory(memory)
        .with_dropout(Dropout::new(dropout, 0).unwrap())
        .with_lr_schedule(one_cycle());
    // Four models (odd T) with frozen tensors and one of its own rate and decay: their
    // updates run in pieces around them, and the stacked ones skip their frozen bottom
    // layer's backward pass.
    if t % 2 == 1 {
        trainer.freeze("head.bias").unwrap();
        trainer.set_lr_scale("head.weight", 0.5).unwrap();
        trainer.set_weight_decay("head.weight", 0.0).unwrap();
        if cfg.num_layers > 1 {
            trainer.freeze_where(|n| n.contains("_l0") || n == "rnn.h0" || n == "rnn.c0");
        }
    }
    let x = vec![0.3f32; t * b * cfg.input_size];
    let positions = if loss.many_to_one { b } else { t * b };
    let values = vec![0.1f32; positions * cfg.output_size];
    let classes = vec![1usize; positions];
    let lengths: Vec<usize> = (0..b).map(|i| t - i % t).collect();
    let target = if loss.kind.takes_values() {
        Target::Values(&values)
    } else {
        Target::Classes(&classes)
    };
    let tokens: Vec<usize> = (0..t * b)
        .map(|k| k % cfg.num_embeddings.unwrap_or(1))
        .collect();
    let input = match cfg.num_embeddings {
        Some(_) => Batch::of_tokens(t, b, &tokens, target),
        None => Batch::new(t, b, &x, target),
    };
    // Sequence weights on seven of the eleven models (H / 8 even): the weighted loss scores row
    // by row.
    let weights: Vec<f32> = (0..b).map(|i| 0.5 + (i % 3) as f32).collect();
    let batch = Batch {
        lengths: Some(&lengths),
        sequence_weights: (cfg.hidden_size / 8)
            .is_multiple_of(2)
            .then_some(&weights[..]),
        ..input
    };
    // A step, or an update of accumulated micro-batches (here all the same batch).
    let mut step = || match micro_batches {
        0 => trainer.step(&batch).unwrap(),
        m => {
            for _ in 0..m {
                trainer.accumulate(&batch).unwrap();
            }
            trainer.apply_accumulated().unwrap()
        }
    };
    // The first step sizes the workspace. faer keeps per-thread GEMM packing buffers, sized
    // by the first products each thread runs: with two threads, which thread runs which unit
    // block can vary, so a few steps let both threads see every product.
    for _ in 0..if threads > 1 { 4 } else { 1 } {
        step();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..STEADY_STEPS {
        step();
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn training_steps_do_not_allocate() {
    // One test function, so no other test thread allocates while we count. The counter sees
    // every thread, so rayon's global pool is started first and waited for: a pool thread
    // still starting when a count begins adds its own allocations (on a loaded machine a
    // thread can start milliseconds late, after the two-thread run that spawned it).
    rayon::broadcast(|_| ());
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
            RnnConfig::lstm(5, 64, 3).bias(false),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::sgd(0.01),
            20,
            1,
        ),
        (
            RnnConfig::gru(7, 33, 5).layers(2).bias(false),
            LossSpec::last_step(LossKind::CrossEntropy)
                .with_class_weights(&[1.0, 0.5, 2.0, 0.0, 3.0])
                .unwrap(),
            OptimizerKind::RmsProp {
                lr: 0.01,
                alpha: 0.9,
                eps: 1e-8,
                weight_decay: 0.01,
                momentum: 0.5,
                centered: true,
            },
            11,
            6,
        ),
        (
            RnnConfig::gru(6, 24, 4).embedding(9),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::adam(0.01),
            10,
            3,
        ),
        (
            RnnConfig::lstm(5, 40, 3).layers(2).bidirectional(),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::adam(0.01),
            9,
            4,
        ),
        (
            RnnConfig::gru(5, 64, 3),
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::rmsprop(0.01),
            20,
            1,
        ),
        (
            RnnConfig::lstm(5, 48, 3).layers(2).projection(20),
            LossSpec::every_step(LossKind::CrossEntropy),
            OptimizerKind::adam(0.01),
            9,
            4,
        ),
        // 166k parameters: past `optim::SPLIT_MIN_PARAMS`, the norm and the update run
        // in halves (on two threads in the two-thread run).
        (
            RnnConfig::lstm(5, 200, 3),
            LossSpec::every_step(LossKind::Mse),
            OptimizerKind::adam(0.01),
            4,
            2,
        ),
    ];
    // Sequential with the default split, each step in two unit blocks on two threads, and
    // checkpointed BPTT under a memory budget (which picks its segment every step).
    let budget = Memory::Budget { bytes: 48 << 10 };
    // The last two accumulate micro-batches for each update (`Trainer::accumulate`).
    let runs = [
        (1, UnitSplit::Auto, Memory::Full, 0),
        (2, UnitSplit::Halves, Memory::Full, 0),
        (1, UnitSplit::Auto, budget, 0),
        (1, UnitSplit::Auto, Memory::Full, 3),
        (2, UnitSplit::Halves, Memory::Full, 2),
    ];
    // A bidirectional model runs whole sequences: no memory budget can split them.
    let all_runs = (cases.into_iter())
        .flat_map(|c| runs.map(|r| (c.clone(), r)))
        .filter(|((cfg, ..), (_, _, memory, _))| !(cfg.bidirectional && *memory != Memory::Full));
    for ((cfg, loss, opt, t, b), run) in all_runs {
        let n = allocations_of_steady_step(cfg, loss, opt, t, b, run);
        // On two threads a step enters rayon's pool from outside (once per layer pass), and
        // rayon's injector queue allocates a block per 63 entries: amortised, far below one
        // allocation per step. Anything the engine allocated per step would exceed it.
        let allowed = if run.0 > 1 { STEADY_STEPS / 8 } else { 0 };
        assert!(
            n <= allowed,
            "{n} allocations in {STEADY_STEPS} steady steps of {cfg:?} T={t} B={b} {run:?}"
        );
    }
    let n = allocations_of_varying_lengths();
    assert_eq!(n, 0, "allocations in steps of batches of varying lengths");
    for memory in [Memory::Full, budget] {
        let n = allocations_of_own_loss_steps(memory);
        assert_eq!(
            n, 0,
            "allocations in steps with a loss of one's own, {memory:?}"
        );
    }
}

/// Steady steps through a loss of one's own (`Trainer::step_with`, as `ctc::Ctc::step` and a
/// probabilistic forecast take them) on a ragged batch in no order, which runs longest first:
/// the outputs handed to the closure in the batch's order and its gradient put back need
/// buffers too, kept from step to step.
fn allocations_of_own_loss_steps(memory: Memory) -> usize {
    let cfg = RnnConfig::gru(5, 32, 3).layers(2);
    let spec = LossSpec::every_step(LossKind::Mse);
    let mut trainer = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(0.01), 0)
        .unwrap()
        .with_threads(1)
        .with_memory(memory);
    let (t, b) = (12, 6);
    let x = vec![0.3f32; t * b * 5];
    let lengths = [3, 12, 7, 12, 1, 9];
    let batch = Batch {
        lengths: Some(&lengths),
        ..Batch::new(t, b, &x, Target::None)
    };
    // Half the squared outputs: writes dy = y, allocates nothing.
    let mut step = || {
        trainer
            .step_with(&batch, |y, dy| {
                dy.copy_from_slice(y);
                y.iter().map(|v| v * v).sum::<f32>() / 2.0
            })
            .unwrap()
    };
    step();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..STEADY_STEPS {
        step();
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// Batches of another length every step (what `loader::Loader` gives, bucketed or not):
/// once the longest has run, the workspace holds every shorter one, and the steps,
/// together with an encoder's through its final states, allocate nothing.
fn allocations_of_varying_lengths() -> usize {
    let cfg = RnnConfig::lstm(5, 40, 3).layers(2);
    let spec = LossSpec::every_step(LossKind::CrossEntropy);
    let new = || {
        Trainer::<f32>::new(cfg, spec.clone(), OptimizerKind::adam(0.01), 0)
            .unwrap()
            .with_clip(Clip::Norm(1.0))
            .with_threads(1)
    };
    let (mut trainer, mut encoder) = (new(), new());
    let (longest, b) = (30, 6);
    let x = vec![0.3f32; longest * b * cfg.input_size];
    let classes = vec![1usize; longest * b];
    let dh = vec![0.01f32; 2 * b * cfg.hidden_size];
    let mut step = |t: usize| {
        let lengths: Vec<usize> = (0..b).map(|i| t - i % t).collect();
        let (x, classes) = (&x[..t * b * cfg.input_size], &classes[..t * b]);
        let batch = Batch::new(t, b, x, Target::Classes(classes));
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        trainer
            .step(&Batch {
                lengths: Some(&lengths),
                ..batch
            })
            .unwrap();
        let source = Batch {
            lengths: Some(&lengths),
            ..Batch::new(t, b, x, Target::None)
        };
        encoder.final_states(&source).unwrap();
        encoder.grads_from_final_states(&source, &dh, &dh).unwrap();
        encoder.update(1.0).unwrap();
        ALLOCATIONS.load(Ordering::Relaxed) - before
    };
    step(longest);
    [7, 19, 1, 25, 30, 12, 2]
        .iter()
        .cycle()
        .take(STEADY_STEPS)
        .map(|&t| step(t))
        .sum()
}
