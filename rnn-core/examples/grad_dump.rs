//! Loss, outputs and every gradient of one batch, for checking against PyTorch.
//!
//! ```text
//! cargo run --release -p rnn-core --example grad_dump -- IN.safetensors OUT.safetensors
//! ```
//!
//! The file format is documented in [`rnn_core::dump`].

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 || args[0].starts_with('-') {
        eprintln!("usage: grad_dump IN.safetensors OUT.safetensors");
        return ExitCode::from(2);
    }
    match rnn_core::dump::grad_dump_file(Path::new(&args[0]), Path::new(&args[1])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grad_dump: {e}");
            ExitCode::FAILURE
        }
    }
}
