//! Checkpoints (weights, optimizer state, program extras) from arbitrary bytes, for a fixed
//! model: a rejected file must leave the model untouched.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rnn_core::config::RnnConfig;
use rnn_core::optim::{Optimizer, OptimizerKind};
use rnn_core::params::{Layout, init_params};

fuzz_target!(|data: &[u8]| {
    let cfg = RnnConfig::lstm(3, 4, 2).layers(2);
    let n = Layout::new(&cfg).len;
    let mut params: Vec<f32> = init_params(&cfg, 0);
    let before = params.clone();
    let mut opt = Optimizer::new(OptimizerKind::adam(0.01), n);
    if rnn_core::io::checkpoint_from_bytes(data, &cfg, &mut params, &mut opt).is_err() {
        assert_eq!(params, before, "a rejected checkpoint changed the model");
    }
});
