//! Shapes no memory could hold are typed errors, found before anything is sized by them:
//! no overflow panic, no allocation of their size, no loop over their length.

use rnn_core::optim::Optimizer;
use rnn_core::prelude::*;

/// What a batch claims against what it holds.
struct Claim {
    name: &'static str,
    seq_len: usize,
    batch: usize,
    /// Its `lengths` (or none).
    lengths: Option<&'static [usize]>,
}

/// `T·B·I` past `usize`; a `B` of 2^45 (a room of its size would be 256 TiB) over three
/// sequences with lengths; a `T` of 2^50 that a memory budget would search step by step.
const CLAIMS: [Claim; 4] = [
    Claim {
        name: "T·B·I overflows",
        seq_len: 1 << 40,
        batch: 1 << 30,
        lengths: None,
    },
    Claim {
        name: "B past its lengths",
        seq_len: 2,
        batch: 1 << 45,
        lengths: Some(&[1, 2, 2]),
    },
    Claim {
        name: "T past its inputs, with lengths",
        seq_len: 1 << 50,
        batch: 3,
        lengths: Some(&[1, 2, 2]),
    },
    Claim {
        name: "T past its inputs",
        seq_len: 1 << 50,
        batch: 3,
        lengths: None,
    },
];

fn trainer(memory: Memory, loss: LossSpec) -> Trainer<f32> {
    Trainer::new(RnnConfig::lstm(2, 5, 3), loss, OptimizerKind::adam(1e-2), 0)
        .unwrap()
        .with_memory(memory)
        .with_input_grads()
}

/// Every entry point that takes a batch refuses each claim with the error its shape is
/// (the inputs are checked first), under every memory setting, with lengths in any order.
#[test]
fn a_batch_claiming_more_than_it_holds_is_refused_everywhere() {
    let x = [0.5f32; 2 * 3 * 2];
    let labels = [1usize; 2 * 3];
    let memories = [
        Memory::Full,
        Memory::Budget { bytes: 1 << 20 },
        Memory::Checkpointed { segment: 1 },
    ];
    for claim in &CLAIMS {
        for memory in memories {
            let ctx = format!("{}, {memory:?}", claim.name);
            let with = |target| Batch {
                seq_len: claim.seq_len,
                batch: claim.batch,
                lengths: claim.lengths,
                ..Batch::new(2, 3, &x, target)
            };
            let (classes, none) = (with(Target::Classes(&labels)), with(Target::None));
            let ce = LossSpec::every_step(LossKind::CrossEntropy);
            let mut tr = trainer(memory, ce);
            let own = |_: &[f32], _: &mut [f32]| 0.0f32;
            let results = [
                ("step", tr.step(&classes).map(drop)),
                ("loss_and_grads", tr.loss_and_grads(&classes).map(drop)),
                ("accumulate", tr.accumulate(&classes).map(drop)),
                ("evaluate", tr.evaluate(&classes).map(drop)),
                ("sequence_losses", tr.sequence_losses(&classes).map(drop)),
                ("accuracy", tr.accuracy(&classes).map(drop)),
                ("outputs", tr.outputs(&none).map(drop)),
                ("step_with", tr.step_with(&none, own).map(drop)),
                (
                    "loss_and_grads_with",
                    tr.loss_and_grads_with(&none, own).map(drop),
                ),
                ("accumulate_with", tr.accumulate_with(&none, own).map(drop)),
                ("final_states", tr.final_states(&none).map(drop)),
                ("eval_final_states", tr.eval_final_states(&none).map(drop)),
                (
                    "grads_from_final_states",
                    tr.grads_from_final_states(&none, &[0.0; 5], &[0.0; 5]),
                ),
            ];
            for (entry, result) in results {
                assert!(
                    matches!(result, Err(RnnError::ShapeMismatch { ref what, .. }) if what == "x"),
                    "{entry}, {ctx}: {result:?}"
                );
            }
        }
    }
}

/// A model, a stream window or a predictor's states past any address space are refused
/// with [`RnnError::OutOfMemory`] (or [`RnnError::Config`] when the parameters cannot even
/// be counted), not by ending the process.
#[test]
fn a_model_past_any_memory_is_refused() {
    let mse = || LossSpec::every_step(LossKind::Mse);
    let adam = OptimizerKind::adam(1e-2);
    // 3·2^24·(2^24 + 3) parameters: 3 PiB of f32.
    let big = RnnConfig::gru(1, 1 << 24, 1);
    let result = Trainer::<f32>::new(big, mse(), adam, 0).map(drop);
    assert!(
        matches!(result, Err(RnnError::OutOfMemory { ref what, bytes }) if what == "the parameters" && bytes > 1 << 50),
        "{result:?}"
    );
    let uncountable = RnnConfig::lstm(1 << 40, 1 << 40, 2);
    let result = Trainer::<f32>::new(uncountable, mse(), adam, 0).map(drop);
    assert!(matches!(result, Err(RnnError::Config(_))), "{result:?}");
    let optimizer = Optimizer::<f32>::try_new(adam, 1 << 60).map(drop);
    assert!(
        matches!(optimizer, Err(RnnError::OutOfMemory { .. })),
        "{optimizer:?}"
    );

    let cfg = RnnConfig::lstm(2, 5, 3);
    let small = || Trainer::<f32>::new(cfg, mse(), adam, 0).unwrap();
    // A window of 2^50 steps, and one whose size overflows.
    for (k2, streams) in [(1 << 50, 2), (usize::MAX / 2, 4)] {
        let result = rnn_core::tbptt::Tbptt::new(small(), 1, k2, streams).map(drop);
        assert!(
            matches!(result, Err(RnnError::OutOfMemory { ref what, .. }) if what == "the window's inputs"),
            "k2 {k2}: {result:?}"
        );
    }
    let params: Vec<f32> = rnn_core::params::init_params(&cfg, 0);
    let result = rnn_core::predict::Predictor::new(cfg, &params, 1 << 60).map(drop);
    assert!(
        matches!(result, Err(RnnError::OutOfMemory { ref what, .. }) if what == "the states"),
        "{result:?}"
    );
}

#[cfg(target_os = "linux")]
const LIMIT_VAR: &str = "RNN_MEMORY_LIMIT_CHILD";

/// Runs in a process limited to 1.5 GB of address space (`ulimit -v`): a batch of 2^21
/// rows through an LSTM of 64 units (8 MiB of inputs) wants a 2 GiB gate buffer.
#[cfg(target_os = "linux")] // `ulimit -v` and `/proc/self/status`
#[test]
#[ignore = "run by a_batch_past_the_memory_is_refused as a child process"]
fn memory_limit_child() {
    if std::env::var_os(LIMIT_VAR).is_none() {
        return;
    }
    let cfg = RnnConfig::lstm(1, 64, 1);
    let spec = LossSpec::every_step(LossKind::Mse);
    let mut tr = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(1e-2), 0).unwrap();
    let (t, b) = (1 << 15, 64);
    let x = vec![0.5f32; t * b];
    let huge = Batch::new(t, b, &x, Target::Values(&x));
    let (t_small, b_small) = (8, 4);
    let small = Batch::new(t_small, b_small, &x[..32], Target::Values(&x[..32]));
    tr.step(&small).unwrap();
    let (params, state) = (tr.params.to_vec(), tr.optimizer.state1.clone());
    let refused = |what: &str, result: Result<(), RnnError>| {
        assert!(
            matches!(result, Err(RnnError::OutOfMemory { ref what, bytes }) if what == "a layer's gate buffer" && bytes >= 2 << 30),
            "{what}: {result:?}"
        );
    };
    refused("step", tr.step(&huge).map(drop));
    // The room grown before the failure (the layer's states, 545 MB written) is given back.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap();
    let resident_kib: usize = rss.trim().trim_end_matches("kB").trim().parse().unwrap();
    let resident_mib = resident_kib / 1024;
    assert!(resident_mib < 400, "{resident_mib} MiB resident");
    refused("evaluate", tr.evaluate(&huge).map(drop));
    let inputs = Batch::new(t, b, &x, Target::None);
    refused("outputs", tr.outputs(&inputs).map(drop));
    refused("final_states", tr.final_states(&inputs).map(drop));
    assert_eq!(tr.params.to_vec(), params, "weights untouched");
    assert_eq!(tr.optimizer.state1, state, "optimizer state untouched");
    // The trainer goes on.
    let before = tr.evaluate(&small).unwrap();
    for _ in 0..5 {
        tr.step(&small).unwrap();
    }
    assert!(tr.evaluate(&small).unwrap() < before);

    // The passes a trainer runs make the room themselves: called directly, or by a
    // predictor, they refuse the batch too.
    let params = tr.params.to_vec();
    let layout = rnn_core::params::Layout::new(&cfg);
    let mut ws = rnn_core::workspace::Workspace::new();
    let forward = rnn_core::network::forward(
        &cfg,
        &layout,
        &params,
        &mut ws,
        &inputs,
        false,
        faer::Par::Seq,
    );
    refused("network::forward", forward);
    let mut predictor = rnn_core::predict::Predictor::new(cfg, &params, b).unwrap();
    refused("Predictor::run", predictor.run(&x, t).map(drop));
    assert_eq!(predictor.run(&x[..2 * b], 2).unwrap().len(), 2 * b);

    // In segments the activations fit, but a loss of one's own keeps every step's 256
    // outputs and their gradient (2 GiB each).
    let cfg = RnnConfig::lstm(1, 64, 256);
    let spec = LossSpec::every_step(LossKind::Mse);
    let mut tr = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(1e-2), 0)
        .unwrap()
        .with_memory(Memory::Checkpointed { segment: 64 });
    let result = tr.step_with(&inputs, |_, _| 0.0).map(drop);
    assert!(
        matches!(result, Err(RnnError::OutOfMemory { ref what, .. }) if what == "the checkpointed segments"),
        "own loss in segments: {result:?}"
    );
    let small = Batch::new(t_small, b_small, &x[..32], Target::None);
    tr.step_with(&small, |_, dy| {
        dy.fill(0.01);
        1.0
    })
    .unwrap();
    println!("memory limit child: refused and went on");
}

/// A batch whose activations do not fit is refused by every pass with
/// [`RnnError::OutOfMemory`], weights and optimizer state untouched, and the trainer trains
/// on: checked in a child process whose address space is limited (so on any machine).
#[cfg(target_os = "linux")]
#[test]
fn a_batch_past_the_memory_is_refused() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1500000 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--ignored", "--exact", "huge_shapes::memory_limit_child"])
        .args(["--nocapture", "--test-threads", "1"])
        .env(LIMIT_VAR, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("refused and went on"),
        "child: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// The passes of `rnn_core::network`, which take parameters and gradients apart from their
/// layout, refuse buffers of another length with an error naming them (they panicked).
#[test]
fn network_passes_refuse_parameters_of_another_length() {
    use rnn_core::network::{self, PassOptions};
    let cfg = RnnConfig::gru(2, 3, 1);
    let layout = rnn_core::params::Layout::new(&cfg);
    let spec = LossSpec::every_step(LossKind::Mse);
    let (x, y) = ([0.5; 2 * 2 * 2], [0.25; 2 * 2]);
    let batch = Batch::new(2, 2, &x, Target::Values(&y));
    let (good, short) = (vec![0.1; layout.len], vec![0.1; layout.len - 1]);
    let mut ws = rnn_core::workspace::Workspace::new();
    let opts = PassOptions::default();
    let named = |r: Result<(), RnnError>, want: &str| {
        assert!(
            matches!(r, Err(RnnError::ShapeMismatch { ref what, .. }) if what == want),
            "{want}: {r:?}"
        );
    };
    let forward = network::forward(&cfg, &layout, &short, &mut ws, &batch, false, opts.exec());
    named(forward, "params");
    let loss = network::loss(
        &cfg,
        &layout,
        &short,
        &mut ws,
        &batch,
        &spec,
        opts.exec(),
        2,
    );
    named(loss.map(drop), "params");
    let per_sequence =
        network::sequence_losses(&cfg, &layout, &short, &mut ws, &batch, &spec, opts.exec());
    named(per_sequence, "params");
    for (params, grads, want) in [(&short, &good, "params"), (&good, &short, "grads")] {
        let mut grads = grads.clone();
        let r = network::forward_backward(
            &cfg, &layout, params, &mut grads, &mut ws, &batch, &spec, opts,
        );
        named(r.map(drop), want);
        let r = network::forward_backward_checkpointed(
            &cfg, &layout, params, &mut grads, &mut ws, &batch, &spec, opts, 1,
        );
        named(r.map(drop), want);
        let own = |_: &[f64], _: &mut [f64]| 0.0;
        let r = network::forward_backward_with(
            &cfg, &layout, params, &mut grads, &mut ws, &batch, false, opts, own,
        );
        named(r.map(drop), want);
    }
}
