#!/usr/bin/env bash
# Runs the kernels' thread-synchronisation tests (kernels::pair, the one module whose unsafe
# code shares memory between threads), and the gate kernels' pointer walk over registers
# (kernels::gates::walk), under Miri, which checks every access for data races
# and undefined behaviour, with weak-memory effects. Installs Miri on the nightly toolchain
# when it is missing. Tree borrows: crossbeam-epoch (under rayon) breaks the stricter
# stacked-borrows model in its own code; leaks are rayon's global pool threads.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup +nightly component add miri rust-src >/dev/null
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks" cargo +nightly miri test -p kernels --lib pair
MIRIFLAGS="-Zmiri-tree-borrows" cargo +nightly miri test -p kernels --lib gates::tests
