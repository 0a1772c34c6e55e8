//! Shapes no memory could hold are typed errors, found before anything is sized by them:
//! no overflow panic, no allocation of their size, no loop over their length.

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
