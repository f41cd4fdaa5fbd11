#!/usr/bin/env bash
# Builds the benchmark executable edkm-bench (release) and prints its path.
#   scripts/bench-build.sh          -> .build-bench/release/edkm-bench
# The scratch path (EDKM_BENCH_SCRATCH, default .build-bench) is separate from the default .build so
# that benchmarking never races another `swift build` of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${EDKM_BENCH_SCRATCH:-.build-bench}
bash scripts/build-jemalloc.sh
swift build -c release --scratch-path "$SCRATCH" --product edkm-bench 2>&1 \
  | grep -E "error|warning: .*EDKMBench|Build complete" >&2 || true
BIN="$SCRATCH/release/edkm-bench"
test -x "$BIN" || { echo "bench-build.sh: $BIN was not built" >&2; exit 1; }
echo "$BIN"
