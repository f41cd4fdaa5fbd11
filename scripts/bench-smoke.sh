#!/usr/bin/env bash
# CI-sized smoke run of every benchmark (well under a minute): edkm-bench speed --quick (with the
# Swift build of the window passes and the full dense passes timed too; it fails if the AVX2 and
# Swift builds of the window passes disagree), speed --quick --setup (fails if the two 1-D k-means
# give different centroids) and
# ablation --quick (small shapes, 1 run; they exit nonzero on any libedkm error, on saved memory
# not returned, or on sharded ranks that disagree), and the coremltools comparison on a 256x256
# layer where torch and coremltools are installed (it says "skipped" otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/bench-build.sh)
"$BIN" speed --quick --scalar-kernels --full-dense
"$BIN" speed --quick --no-llama --setup --setup-runs 1
"$BIN" ablation --quick
if [ -e "${EDKM_LIB_PATH:-.build-dist/lib/libedkm.so.0}" ]; then
  PYTHONPATH=python python3 benchmarks/coremltools_compare.py --sizes 256x256 --edkm-steps 2 --ct-steps 1
else
  echo "bench-smoke.sh: no libedkm.so.0 for the Python binding (scripts/build-dist.sh): coremltools comparison skipped"
fi
