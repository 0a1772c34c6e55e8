//! grad_dump's input format from arbitrary bytes: parse, validate, and run the engine.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rnn_core::dump::grad_dump(data);
});
