#!/usr/bin/env bash
# Reliability checks for CI, within a few minutes on a 2-core machine:
#   1. build the C programs of Tests/reliability/ (plain C99 against the shipped libedkm.so)
#   2. the C ABI fuzz driver, bounded (FUZZ_SECONDS, default 90 s)
#   3. the leak soak: 10,000 forward/backward cycles with dedup and sharding (SOAK_CYCLES)
#   4. the budget program (BUDGET_ROUNDS rounds)
#   5. the concurrency contract (pthreads)
#   6. runtime create/destroy churn (no thread and no memory outlives a runtime)
#   7. the reproductions of every bug this work found (known_bugs: all must stay fixed), and a scan
#      of the library's machine code for the compiler hazard behind K11 (swifterror_tailcalls.py)
#   8. valgrind memcheck on the C examples (header_check, and mlp_trainer with a short schedule:
#      4 float epochs, 1 fine-tuning epoch, 3 bits; fewer float epochs fail its own accuracy check)
#   9. optionally (RELIABILITY_SWIFT_SANITIZERS=1) `swift test` under ASan and TSan: see
#      scripts/reliability-sanitizers.sh, which does the full sanitizer matrix.
#
# Environment:
#   EDKM_LIB_DIR     directory of libedkm.so (default .build-dist/lib, the self-contained library;
#                    built with scripts/build-dist.sh if missing)
#   FUZZ_SECONDS (90)  FUZZ_SEED (default: a new seed per run, printed)  SOAK_CYCLES (10000)
#   BUDGET_ROUNDS (100)  CHURN_CYCLES (500)
#   RELIABILITY_SKIP_VALGRIND=1   skip step 8
# Exit status: nonzero if any step failed. Prints a timing table at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}   # crashes print our reproduction line, fast
LIB_DIR=${EDKM_LIB_DIR:-.build-dist/lib}
case $LIB_DIR in /*) LIB_ABS=$LIB_DIR ;; *) LIB_ABS=$ROOT/$LIB_DIR ;; esac
BIN=$ROOT/.build-reliability/bin
CC=${CC:-cc}
mkdir -p "$BIN"

declare -a NAMES=() RESULTS=() TIMES=()
FAILED=0
step() {  # step NAME command...: runs it, records PASS/FAIL and seconds
    local name=$1; shift
    local t0=$SECONDS
    echo
    echo "== $name"
    echo "+ $*"
    if "$@"; then RESULTS+=("PASS"); else RESULTS+=("FAIL"); FAILED=1; fi
    NAMES+=("$name"); TIMES+=($((SECONDS - t0)))
}
# 0. the library
if [ ! -e "$LIB_DIR/libedkm.so" ]; then
    step "build libedkm (scripts/build-dist.sh)" bash scripts/build-dist.sh
fi
if [ ! -e "$LIB_DIR/libedkm.so" ]; then echo "reliability-ci: $LIB_DIR/libedkm.so not found" >&2; exit 1; fi

# 1. the C programs
build_c() {
    local flags=(-std=c99 -O1 -g -Wall -Wextra -Werror -I include)
    local link=(-L "$LIB_DIR" -ledkm "-Wl,-rpath,$LIB_ABS" -lm)
    set -e
    for p in fuzz_abi soak budget churn; do
        "$CC" "${flags[@]}" "Tests/reliability/$p.c" "${link[@]}" -o "$BIN/$p"
    done
    "$CC" "${flags[@]}" -pthread Tests/reliability/concurrency.c "${link[@]}" -o "$BIN/concurrency"
    "$CC" "${flags[@]}" -pthread Tests/reliability/known_bugs.c "${link[@]}" -o "$BIN/known_bugs"
    "$CC" -std=c99 -O2 -g -Wall -Wextra -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c "${link[@]}" -o "$BIN/mlp_trainer"
    gcc -std=c99 -Wall -Wextra -Werror -pedantic -I include Tests/abi/header_check.c -L "$LIB_DIR" -ledkm \
        "-Wl,-rpath,$LIB_ABS" -o "$BIN/header_check"
    set +e
}
step "build C programs" build_c

# 2. fuzz
SEED=${FUZZ_SEED:-$(( (RANDOM << 16) ^ RANDOM ^ $$ ))}
FUZZ_ARGS=(--seed "$SEED" --seconds "${FUZZ_SECONDS:-90}")
step "fuzz C ABI (seed $SEED, ${FUZZ_SECONDS:-90} s)" "$BIN/fuzz_abi" "${FUZZ_ARGS[@]}"

# 3. soak
step "soak (${SOAK_CYCLES:-10000} cycles)" "$BIN/soak" --cycles "${SOAK_CYCLES:-10000}"

# 4. budget
step "budget (${BUDGET_ROUNDS:-100} rounds)" "$BIN/budget" --rounds "${BUDGET_ROUNDS:-100}"

# 5. concurrency (K4 and K7, fixed, are checked here: timing-dependent forward_shard gradients and
#    concurrent communicator callbacks)
step "concurrency" "$BIN/concurrency"

# 6. churn (K5: worker threads leaked; K8: ~4 KiB RSS per used arena, jemalloc retain; both fixed)
step "runtime churn (${CHURN_CYCLES:-500} runtimes)" "$BIN/churn" --cycles "${CHURN_CYCLES:-500}"

# 7. every bug reproduction (exit status = the number present)
step "known bugs stay fixed" "$BIN/known_bugs"
#    K11's cause anywhere in the library: a function returning its error in r12 that tail-calls
#    memcpy/memmove/memset (read from the symbol-carrying build the shipped library was stripped from)
SYM_LIB=${EDKM_SYMBOL_LIB:-$(dirname "$LIB_ABS")/release/libEDKM.so}
if [ -e "$SYM_LIB" ] && command -v objdump >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    step "no error-register tail calls to memcpy/memmove/memset" python3 Tests/reliability/swifterror_tailcalls.py "$SYM_LIB"
else
    echo "swifterror_tailcalls: skipped ($SYM_LIB, objdump or python3 missing; EDKM_SYMBOL_LIB names another build)"
fi

# 8. valgrind on the C examples (debug info stripped: valgrind 3.19 cannot read the Swift-built
#    library's DWARF, "debuginfo reader: ensure_valid failed")
if [ "${RELIABILITY_SKIP_VALGRIND:-0}" != 1 ]; then
    if command -v valgrind >/dev/null 2>&1; then
        VG_LIB=$ROOT/.build-reliability/valgrind-lib
        prepare_vg() {
            set -e
            mkdir -p "$VG_LIB"
            # as libedkm.so.0 (the shipped library's SONAME, what the programs load) and libedkm.so
            cp "$LIB_DIR/libedkm.so" "$VG_LIB/libedkm.so.0"
            ln -sf libedkm.so.0 "$VG_LIB/libedkm.so"
            strip -g "$VG_LIB/libedkm.so.0"
            "$CC" -std=c99 -O2 -g -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c -L "$VG_LIB" -ledkm "-Wl,-rpath,$VG_LIB" -lm -o "$BIN/mlp_trainer_vg"
            gcc -std=c99 -g -I include Tests/abi/header_check.c -L "$VG_LIB" -ledkm "-Wl,-rpath,$VG_LIB" -o "$BIN/header_check_vg"
            set +e
        }
        VG=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
            --suppressions=Tests/reliability/valgrind.supp --max-threads=3000)
        step "valgrind: prepare (strip -g copy)" prepare_vg
        step "valgrind: header_check" "${VG[@]}" "$BIN/header_check_vg"
        step "valgrind: mlp_trainer (short schedule)" "${VG[@]}" "$BIN/mlp_trainer_vg" --epochs 4 --ft-epochs 1 --bits 3
    else
        echo "valgrind not installed: skipped (apt-get install valgrind)"
    fi
fi

# 9. optional: swift test under ASan / TSan (several minutes each on 2 cores)
if [ "${RELIABILITY_SWIFT_SANITIZERS:-0}" = 1 ]; then
    step "swift test --sanitize=address" bash scripts/reliability-sanitizers.sh asan
    step "swift test --sanitize=thread" bash scripts/reliability-sanitizers.sh tsan
fi

echo
echo "== reliability-ci summary (library: $LIB_DIR)"
for i in "${!NAMES[@]}"; do printf '  %-6s %5ss  %s\n' "${RESULTS[$i]}" "${TIMES[$i]}" "${NAMES[$i]}"; done
exit $FAILED
