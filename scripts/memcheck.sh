#!/usr/bin/env bash
# Runs the kernels' and the engine's tests under valgrind memcheck: no invalid access, no use of
# uninitialised memory, no leak. Installs valgrind from Debian's packages when it is missing.
# Valgrind emulates a CPU without AVX-512, so the kernels take their AVX2 and scalar paths
# here (every path is also tested natively against the scalar reference).
#
# `scripts/memcheck.sh [NAME...]` runs only the test binaries whose names start with one of
# the NAMEs (`engine`, `routines`, `kernels`, `rnn_core`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq valgrind
fi
# The test binaries, built once; their paths come from cargo's JSON messages.
bins=$(cargo test -p kernels -p rnn-core --tests --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
status=0
for bin in $bins; do
  name=$(basename "$bin")
  # The SIGKILL test kills child processes on purpose and the allocation test counts
  # allocations, which valgrind's own allocator changes: both are skipped here, and so are
  # the large two-thread comparisons, which take an hour under valgrind (the pulled-pieces
  # one, 4.6 s natively, had not finished after 23 minutes, with or without --fair-sched:
  # its pieces exist only at 32 MFLOP a step and more); the two-thread step loops run here
  # at small sizes (api.rs, split_steps_of_small_models_...), and the pieces' shared-memory
  # code, kernels::pair, runs under Miri (scripts/miri.sh). Valgrind also
  # ignores the MXCSR flush-to-zero bits, so the test of that mode cannot pass under it.
  case "$name" in alloc-*) continue ;; esac
  if [ $# -gt 0 ]; then
    wanted=no
    for prefix in "$@"; do case "$name" in "$prefix"-*) wanted=yes ;; esac; done
    [ $wanted = yes ] || continue
  fi
  if valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
      --show-leak-kinds=definite,indirect "$bin" --test-threads=2 \
      --skip checkpoints_survive_sigkill --skip one_and_two_threads --skip agree_bitwise --skip pulled_pieces --skip flush_denormals_is_scoped_per_thread >"/tmp/memcheck-$name.log" 2>&1; then
    echo "clean: $name ($(grep -o '[0-9]* passed' "/tmp/memcheck-$name.log" | tail -1))"
  else
    echo "FAILED: $name (see /tmp/memcheck-$name.log)"; status=1
  fi
done
exit $status
