#!/usr/bin/env bash
# Coverage-guided fuzzing of the C ABI with libFuzzer: the same driver as the seeded
# fuzzer (Tests/reliability/fuzz_abi.c, built with -DEDKM_LIBFUZZER: every random choice comes from
# the fuzzer's input), against a libedkm built -c release with AddressSanitizer and SanitizerCoverage
# (inline 8-bit counters + pc-table + trace-cmp), so libFuzzer sees the Swift library's edges.
#
#   scripts/reliability-libfuzzer.sh [SECONDS] [extra libFuzzer flags...]    (default 300 s)
#
# Builds into .build-libfuzzer (library, ~1.5 min on 2 cores) and .build-reliability/bin; the corpus
# is .build-reliability/corpus-libfuzzer, crashing inputs are written to .build-reliability/
# (crash-*, leak-*, timeout-*). Reproduce one: .build-reliability/bin/fuzz_abi_libfuzzer CRASH_FILE
# (FUZZ_TRACE=1 prints every call; FUZZ_TOLERATE_KNOWN=1 avoids the inputs of the bugs fixed in 0.2).
# Note: swiftc's plain -sanitize-coverage=edge emits trace-pc-guard, which current libFuzzer
# rejects; inline-8bit-counters,pc-table is what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_TO_RUN=${1:-300}
shift || true
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
CLANG=${CLANG:-$(command -v clang || echo /opt/swift/usr/bin/clang)}
L=$ROOT/.build-libfuzzer/release
mkdir -p .build-reliability/bin .build-reliability/corpus-libfuzzer
swift build -c release --product EDKM --scratch-path .build-libfuzzer --sanitize=address \
    -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp 2>&1 | grep -E "error|Compiling|Build complete" || true
"$CLANG" -std=c99 -O1 -g -fuse-ld=lld -fsanitize=fuzzer,address -DEDKM_LIBFUZZER -I include Tests/reliability/fuzz_abi.c \
    -L "$L" -lEDKM "-Wl,-rpath,$L" -lm -o .build-reliability/bin/fuzz_abi_libfuzzer 2>&1 | grep -v "Cannot export local symbol" || true
exec .build-reliability/bin/fuzz_abi_libfuzzer -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -len_control=0 \
    -rss_limit_mb=6000 -print_final_stats=1 -artifact_prefix=.build-reliability/ "$@" .build-reliability/corpus-libfuzzer
