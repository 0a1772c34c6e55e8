//! rnn-core's integration tests, one module per promise.
//!
//! They form one test binary, not one per file: every binary links the engine again and
//! instantiates its generic code for f32 and f64 again, so nine binaries cost CI minutes of
//! compile time for seconds of tests. `tests/alloc.rs` stays apart because it installs a
//! counting global allocator, which would see the other tests' allocations.
//!
//! Run one module with `cargo test -p rnn-core --test engine gradcheck::`.

mod common;
mod fixtures;

mod accumulate;
mod api;
mod average;
mod checkpointed;
mod crash;
mod ctc;
mod final_states;
mod frozen;
mod golden;
mod gradcheck;
mod huge_shapes;
mod input_grads;
mod live_rows;
mod loader;
mod own_loss;
mod predict;
mod properties;
mod resume;
mod schedule;
mod sequence_losses;
mod sequence_weights;
mod settings;
mod tbptt;
mod time_chunks;
