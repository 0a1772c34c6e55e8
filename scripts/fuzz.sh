#!/usr/bin/env bash
# Runs every fuzz target (or the ones named after SECONDS) for SECONDS (default 60) from the
# committed seeds, inputs up to 8 KiB, and prints the executions each made. A target that
# finds a crash, a timeout or a leak does not stop the others; the script then fails at the
# end, and the input is in fuzz/artifacts/<target>/. Needs `cargo install cargo-fuzz` and a
# nightly toolchain.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(weights checkpoint grad_dump text)
status=0
for target in "${targets[@]}"; do
  work="target/corpus/$target"
  mkdir -p "$work"
  cargo +nightly fuzz run "$target" "$work" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"target/$target.log" 2>&1 || status=1
  grep -E "stat::number_of_executed_units|ERROR|panicked|SUMMARY" "target/$target.log" | sed "s/^/$target: /"
done
exit $status
