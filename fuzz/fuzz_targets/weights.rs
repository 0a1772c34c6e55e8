//! Model weights from arbitrary bytes: PyTorch-named safetensors, architecture inferred.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rnn_core::io::weights_from_bytes::<f32>(data);
    let _ = rnn_core::io::weights_from_bytes::<f64>(data);
});
