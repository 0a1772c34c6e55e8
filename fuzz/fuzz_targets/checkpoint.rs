//! Checkpoints (weights, optimizer state, program extras) from arbitrary bytes, for a fixed
//! model and three optimizers (Adam's two buffers, RMSprop's three, Adagrad's one): a
//! rejected file must leave the model and optimizer untouched; an accepted one takes an
//! update, and a plateau schedule restores from its extras or refuses them, without
//! panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rnn_core::config::RnnConfig;
use rnn_core::optim::{Optimizer, OptimizerKind};
use rnn_core::params::{Layout, init_params};
use rnn_core::schedule::Plateau;

fuzz_target!(|data: &[u8]| {
    let cfg = RnnConfig::lstm(3, 4, 2).layers(2);
    let n = Layout::new(&cfg).len;
    let rmsprop = OptimizerKind::RmsProp {
        lr: 0.01,
        alpha: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.9,
        centered: true,
    };
    for kind in [OptimizerKind::adam(0.01), rmsprop, OptimizerKind::adagrad(0.01)] {
        let mut params: Vec<f32> = init_params(&cfg, 0);
        let before = params.clone();
        let mut opt = Optimizer::new(kind, n);
        let state_before = (opt.state1.clone(), opt.state2.clone(), opt.state3.clone());
        match rnn_core::io::checkpoint_from_bytes(data, &cfg, &mut params, &mut opt) {
            Ok(extras) => {
                // An accepted state takes an update without a panic (buffers of the right
                // sizes, a start no later than the step count).
                assert!(opt.state_start() <= opt.steps);
                opt.update(&mut params, &vec![0.5; n], 1.0);
                let mut plateau = Plateau::new(0.1, 0.5, 2).unwrap();
                let fresh = plateau.clone();
                if plateau.restore(&extras).is_err() {
                    assert_eq!(plateau, fresh, "a rejected plateau state changed the schedule");
                }
            }
            Err(_) => {
                assert_eq!(params, before, "a rejected checkpoint changed the model");
                let state = (opt.state1.clone(), opt.state2.clone(), opt.state3.clone());
                assert_eq!(state, state_before, "a rejected checkpoint changed the optimizer");
            }
        }
    }
});
