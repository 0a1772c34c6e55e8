#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from the committed seeds, inputs up to 8 KiB,
# and prints the executions each made. Needs `cargo install cargo-fuzz` and a nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
for target in weights checkpoint grad_dump text; do
  work="target/corpus/$target"
  mkdir -p "$work"
  cargo +nightly fuzz run "$target" "$work" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|ERROR|panicked|SUMMARY" | sed "s/^/$target: /"
done
