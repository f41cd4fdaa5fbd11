#!/usr/bin/env bash
# Sanitizer runs for libedkm. Each part is selectable: with no argument all of them run.
#
#   asan      swift test --sanitize=address --scratch-path .build-asan   (the Swift test suites;
#             LeakSanitizer suppressions: Tests/reliability/lsan.supp, Swift runtime only)
#   tsan      swift test --sanitize=thread  --scratch-path .build-tsan
#   asan-c    libedkm built -c release with ASan (.build-asan-release) + the C reliability programs
#             and examples/c/mlp_trainer.c built with clang -fsanitize=address: fuzz (short), soak
#             (short), budget, concurrency, the trainer (short schedule).
#             (Note: the ASan build did NOT reproduce K4, a use-after-free that comes from Swift
#             ending an object's lifetime after its last use: the instrumented optimiser kept the
#             object alive. valgrind on the plain release library is what caught it.)
#   tsan-c    libedkm built -c release with TSan (.build-tsan-release) + concurrency.c and the trainer
#             built with clang -fsanitize=thread (races between C threads inside the library).
#             Tests/reliability/tsan.supp suppresses only Swift's lazy-global initialisers (swift_once
#             is not instrumented), for both TSan parts.
#   valgrind  memcheck (--error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite) on
#             the C examples, the fuzz driver (short), the soak (short) and the budget program,
#             against a copy of the shipped libedkm.so (scripts/build-dist.sh) stripped of debug info
#             (`strip -g`): valgrind 3.19 cannot read the DWARF of the Swift-built library ("debuginfo
#             reader: ensure_valid failed ... I can't recover"). Suppressions:
#             Tests/reliability/valgrind.supp (Swift runtime one-time caches only).
#
# Environment: EDKM_LIB_DIR (the library for valgrind; default .build-dist/lib, built if missing), SWIFT_TEST_FILTER (passed to swift test --filter), FUZZ_SECONDS_SAN (60),
#   SOAK_CYCLES_SAN (1000), VALGRIND_FUZZ_ITERATIONS (125: the channel scale made a program about 20 % longer), VALGRIND_SOAK_CYCLES (200).
# Every sanitizer report is a failure of its part; the summary lists PASS/FAIL and seconds per part.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
CLANG=${CLANG:-$(command -v clang || echo /opt/swift/usr/bin/clang)}
SWIFT_LIB=$(dirname "$(command -v swift)")/../lib/swift/linux
# Tests/reliability/tsan.supp: Swift lazy-global initialisers only (see that file)
TSAN_SUPP="suppressions=$ROOT/Tests/reliability/tsan.supp"
BIN=$ROOT/.build-reliability/bin
LOGS=$ROOT/.build-reliability/logs
mkdir -p "$BIN" "$LOGS"
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(asan tsan asan-c tsan-c valgrind)

declare -a NAMES=() RESULTS=() TIMES=()
FAILED=0
run() {  # run NAME LOG command...: output to the log (tail shown), PASS/FAIL by exit status
    local name=$1 log=$2; shift 2
    local t0=$SECONDS
    echo
    echo "== $name"
    echo "+ $*"
    if "$@" >"$log" 2>&1; then RESULTS+=("PASS"); else RESULTS+=("FAIL"); FAILED=1; fi
    tail -n 15 "$log"
    grep -m 3 -E "ERROR: (Address|Thread|Leak)Sanitizer|WARNING: ThreadSanitizer|SUMMARY: (Address|Thread)Sanitizer" "$log" || true
    NAMES+=("$name"); TIMES+=($((SECONDS - t0)))
    echo "(log: $log, $((SECONDS - t0)) s)"
}

swift_test() {  # swift_test SANITIZER SCRATCH: the Swift test suites under a sanitizer
    local san=$1 scratch=$2 filter=()
    [ -n "${SWIFT_TEST_FILTER:-}" ] && filter=(--filter "$SWIFT_TEST_FILTER")
    swift build --build-tests --sanitize="$san" --scratch-path "$scratch" || return 1
    swift test --skip-build --sanitize="$san" --scratch-path "$scratch" "${filter[@]}"
}

c_programs() {  # c_programs SANITIZER LIBDIR: builds the reliability programs with clang -fsanitize
    local san=$1 lib=$2
    local extra=()
    # the toolchain's static TSan runtime has libdispatch interceptors: link libdispatch and Blocks
    [ "$san" = thread ] && extra=(-L"$SWIFT_LIB" -ldispatch -lBlocksRuntime "-Wl,-rpath,$SWIFT_LIB")
    set -e
    for p in fuzz_abi soak budget; do
        "$CLANG" -std=c99 -O1 -g -fno-omit-frame-pointer -fuse-ld=lld "-fsanitize=$san" -I include "Tests/reliability/$p.c" \
            -L "$lib" -lEDKM "-Wl,-rpath,$lib" "${extra[@]}" -lm -o "$BIN/${p}_$san" 2>&1 | grep -v "Cannot export local symbol" || true
    done
    "$CLANG" -std=c99 -O1 -g -fno-omit-frame-pointer -fuse-ld=lld "-fsanitize=$san" -pthread -I include Tests/reliability/concurrency.c \
        -L "$lib" -lEDKM "-Wl,-rpath,$lib" "${extra[@]}" -lm -o "$BIN/concurrency_$san" 2>&1 | grep -v "Cannot export local symbol" || true
    # the C example a user starts from
    "$CLANG" -std=c99 -O1 -g -fno-omit-frame-pointer -fuse-ld=lld "-fsanitize=$san" -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c \
        -L "$lib" -lEDKM "-Wl,-rpath,$lib" "${extra[@]}" -lm -o "$BIN/mlp_trainer_$san" 2>&1 | grep -v "Cannot export local symbol" || true
    set +e
    test -x "$BIN/concurrency_$san"
}

for part in "${PARTS[@]}"; do
    case $part in
    asan)
        run "swift test --sanitize=address" "$LOGS/swift-test-asan.log" \
            env LSAN_OPTIONS="suppressions=$ROOT/Tests/reliability/lsan.supp" bash -c "$(declare -f swift_test); swift_test address .build-asan" ;;
    tsan)
        run "swift test --sanitize=thread" "$LOGS/swift-test-tsan.log" \
            env TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0 exitcode=66} $TSAN_SUPP" bash -c "$(declare -f swift_test); swift_test thread .build-tsan" ;;
    asan-c)
        L=$ROOT/.build-asan-release/release
        run "build libedkm -c release --sanitize=address" "$LOGS/build-asan-release.log" \
            swift build -c release --product EDKM --sanitize=address --scratch-path .build-asan-release
        run "build C programs (ASan)" "$LOGS/build-c-asan.log" c_programs address "$L"
        export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
        run "ASan: fuzz_abi (${FUZZ_SECONDS_SAN:-60} s)" "$LOGS/asan-fuzz.log" "$BIN/fuzz_abi_address" --seed 11 --seconds "${FUZZ_SECONDS_SAN:-60}"
        # RSS bounds off: ASan's quarantine holds freed memory
        run "ASan: soak (${SOAK_CYCLES_SAN:-1000} cycles)" "$LOGS/asan-soak.log" "$BIN/soak_address" --cycles "${SOAK_CYCLES_SAN:-1000}" \
            --sample 100 --rss-slope-kib 1e9 --rss-growth-kib 1e9
        run "ASan: budget" "$LOGS/asan-budget.log" "$BIN/budget_address" --rounds 10 --rss-kib 1e9
        run "ASan: concurrency" "$LOGS/asan-concurrency.log" "$BIN/concurrency_address" --cycles 20 --attempts 100 --rounds 50
        run "ASan: mlp_trainer (short)" "$LOGS/asan-mlp.log" "$BIN/mlp_trainer_address" --epochs 4 --ft-epochs 1 --bits 3 ;;
    tsan-c)
        L=$ROOT/.build-tsan-release/release
        run "build libedkm -c release --sanitize=thread" "$LOGS/build-tsan-release.log" \
            swift build -c release --product EDKM --sanitize=thread --scratch-path .build-tsan-release
        run "build C programs (TSan)" "$LOGS/build-c-tsan.log" c_programs thread "$L"
        run "TSan: concurrency" "$LOGS/tsan-concurrency.log" env TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0 exitcode=66} $TSAN_SUPP" \
            "$BIN/concurrency_thread" --cycles 20 --attempts 100 --rounds 50
        run "TSan: mlp_trainer (short, 2 threads)" "$LOGS/tsan-mlp.log" env TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0 exitcode=66} $TSAN_SUPP" \
            "$BIN/mlp_trainer_thread" --epochs 4 --ft-epochs 1 --bits 3 ;;
    valgrind)
        LIB=${EDKM_LIB_DIR:-}
        if [ -z "$LIB" ]; then LIB=.build-dist/lib; [ -e "$LIB/libedkm.so" ] || bash scripts/build-dist.sh >/dev/null; fi
        VG_LIB=$ROOT/.build-reliability/valgrind-lib
        prepare() {
            set -e
            mkdir -p "$VG_LIB"
            cp "$LIB/libedkm.so" "$VG_LIB/libedkm.so.0"   # the shipped library's SONAME, what the programs load
            ln -sf libedkm.so.0 "$VG_LIB/libedkm.so"
            strip -g "$VG_LIB/libedkm.so.0"    # drop the DWARF valgrind cannot read
            local link=(-L "$VG_LIB" -ledkm "-Wl,-rpath,$VG_LIB" -lm)
            for p in fuzz_abi soak budget; do cc -std=c99 -O1 -g -I include "Tests/reliability/$p.c" "${link[@]}" -o "$BIN/${p}_vg"; done
            cc -std=c99 -O2 -g -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c "${link[@]}" -o "$BIN/mlp_trainer_vg"
            gcc -std=c99 -g -I include Tests/abi/header_check.c "${link[@]}" -o "$BIN/header_check_vg"
            set +e
        }
        run "valgrind: prepare ($LIB, strip -g)" "$LOGS/valgrind-prepare.log" prepare
        VG=(valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
            --suppressions=Tests/reliability/valgrind.supp --max-threads=3000 --num-callers=30)
        run "valgrind: header_check" "$LOGS/valgrind-header-check.log" "${VG[@]}" "$BIN/header_check_vg"
        run "valgrind: mlp_trainer (short)" "$LOGS/valgrind-mlp.log" "${VG[@]}" "$BIN/mlp_trainer_vg" --epochs 4 --ft-epochs 1 --bits 3
        run "valgrind: fuzz_abi (${VALGRIND_FUZZ_ITERATIONS:-125} iterations)" "$LOGS/valgrind-fuzz.log" \
            "${VG[@]}" "$BIN/fuzz_abi_vg" --seed 12 --iterations "${VALGRIND_FUZZ_ITERATIONS:-125}"
        run "valgrind: soak (${VALGRIND_SOAK_CYCLES:-200} cycles)" "$LOGS/valgrind-soak.log" \
            "${VG[@]}" "$BIN/soak_vg" --cycles "${VALGRIND_SOAK_CYCLES:-200}" --sample 20 --rss-slope-kib 1e9 --rss-growth-kib 1e9
        run "valgrind: budget (3 rounds)" "$LOGS/valgrind-budget.log" "${VG[@]}" "$BIN/budget_vg" --rounds 3 --rss-kib 1e9 ;;
    *)
        echo "unknown part '$part' (asan tsan asan-c tsan-c valgrind)" >&2; exit 2 ;;
    esac
done

echo
echo "== reliability-sanitizers summary"
for i in "${!NAMES[@]}"; do printf '  %-4s %5ss  %s\n' "${RESULTS[$i]}" "${TIMES[$i]}" "${NAMES[$i]}"; done
exit $FAILED
