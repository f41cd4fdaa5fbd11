#!/usr/bin/env bash
# All the tests: Swift (C ABI and core), ABI checks, the C examples, the Python binding (and the
# torch autograd reference where torch is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== swift test"
swift test 2>&1 | grep -vE "^\[|^Test (Suite|Case)|^(\s)*Executed 0 tests" 
echo "== ABI"
bash scripts/check-abi.sh
echo "== C examples"
sh examples/c/build.sh run
echo "== MPI: 2-process data-parallel trainer with sharded saved state"
sh examples/c/build-mpi.sh
echo "== benchmark smoke (small shapes)"
EDKM_BENCH_SCRATCH=.build bash scripts/bench-smoke.sh
echo "== Python"
python3 examples/python/quickstart.py
EDKM_REQUIRE_LIB=1 python3 -m pytest -q python/tests
