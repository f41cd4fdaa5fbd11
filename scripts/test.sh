#!/usr/bin/env bash
# All the tests: Swift (C ABI and core), ABI checks, the C examples, the install tests (installed
# prefix, wheel in a fresh venv, Swift client; the Swift toolchain hidden), the Python binding (and
# the torch autograd reference where torch is installed), then reliability: a bounded fuzz run over
# the C ABI, the 10,000-cycle soak, budget, concurrency, churn, the bug reproductions, valgrind,
# and the sanitizer builds (swift test and the C programs under ASan and TSan).
# RELIABILITY=0 leaves the reliability part out (a quick run while developing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== swift test"
swift test 2>&1 | grep -vE "^\[|^Test (Suite|Case)|^(\s)*Executed 0 tests" 
echo "== ABI (the shipped .build-dist/lib/libedkm.so.0)"
bash scripts/check-abi.sh
echo "== the header from C99 and C++ (Tests/abi)"
sh Tests/abi/run.sh
echo "== C examples"
sh examples/c/build.sh run
echo "== MPI: 2-process data-parallel trainer with sharded saved state"
sh examples/c/build-mpi.sh
echo "== benchmark smoke (small shapes)"
EDKM_BENCH_SCRATCH=.build bash scripts/bench-smoke.sh
echo "== install: pkg-config and CMake, the wheel in a fresh venv, bin/edkm, a Swift client; toolchain hidden"
bash scripts/test-install.sh
echo "== Python (the self-contained library)"
export EDKM_LIB_PATH=$PWD/.build-dist/lib/libedkm.so.0
python3 examples/python/quickstart.py
EDKM_REQUIRE_LIB=1 python3 -m pytest -q Tests/python
[ "${RELIABILITY:-1}" = 0 ] && { echo "RELIABILITY=0: reliability checks skipped"; exit 0; }
echo "== reliability: fuzz the C ABI (bounded), soak, budget, concurrency, churn, bug reproductions"
FUZZ_SECONDS=${FUZZ_SECONDS:-120} RELIABILITY_SKIP_VALGRIND=1 bash scripts/reliability-ci.sh
# The library under ASan and TSan through the C programs (fuzz, soak, budget, concurrency, trainer)
# and valgrind. `swift test` under the sanitizers (parts asan and tsan of the same script) is left
# out: with Swift 6.3.1 the runtime's type-name cache (swift_getTypeName, called by Swift Testing to
# name test arguments and expectation values) frees a pointer into the test binary's static data,
# which ASan reports as a bad free and TSan's allocator aborts on, before or beside any libedkm call.
echo "== sanitizers: the C programs against ASan and TSan builds of libedkm; valgrind"
bash scripts/reliability-sanitizers.sh asan-c tsan-c valgrind
