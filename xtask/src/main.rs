//! Project tasks: `cargo xtask <task>`.
//!
//! Tasks land with their issues; today only `ci` (what `.ci/run` does) exists.

use std::process::{Command, ExitCode};

fn run(args: &[&str]) -> bool {
    eprintln!("+ cargo {}", args.join(" "));
    Command::new(env!("CARGO"))
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let ok = match task.as_str() {
        "ci" => {
            run(&["test", "--workspace"])
                && run(&["fmt", "--all", "--check"])
                && run(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
        }
        _ => {
            eprintln!("usage: cargo xtask ci");
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
