#!/usr/bin/env bash
# The installed artefacts used as a user would use them, on what should look like a machine without
# Swift: scripts/test-install.sh runs this in a private mount namespace with the toolchain's
# directory hidden under an empty one (or, where that is not permitted, with it visible, and says so).
#
#   Tests/install/run-installed.sh PREFIX WORK TOOLCHAIN
#     PREFIX     an installed prefix (scripts/install.sh PREFIX)
#     WORK       scratch directory with venv/ (the wheel installed) and swift-client/ (its build)
#     TOOLCHAIN  the Swift toolchain's directory (checked to be hidden when HIDDEN=1)
# Prints one ok/FAIL line per check (the programs' output: WORK/run-installed.log) and
# "installed: N passed, M failed"; exit status 1 on a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PREFIX=$1 WORK=$2 TOOLCHAIN=$3
pass=0; fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
ko() { echo "FAIL: $1"; fail=$((fail + 1)); }
LOG=$2/run-installed.log
: > "$LOG"
check() {  # check WHAT command...: its output goes to the log; the last lines are shown
  local what=$1; shift
  echo "+ $*"
  if "$@" > "$LOG.part" 2>&1; then tail -n 2 "$LOG.part"; ok "$what"; else tail -n 25 "$LOG.part"; ko "$what"; fi
  cat "$LOG.part" >> "$LOG"
}
unset LD_LIBRARY_PATH EDKM_LIB_PATH PYTHONPATH
BIN=$WORK/bin
mkdir -p "$BIN"

if [ "${HIDDEN:-0}" = 1 ]; then
  # The toolchain must really be gone: its runtime library absent and a toolchain-linked libedkm
  # (the dynamic build of this checkout, when there is one) unloadable.
  swiftcore=$(find "$TOOLCHAIN" -name 'libswiftCore.so' 2>/dev/null | head -1)
  [ -z "$swiftcore" ] && ! command -v swift >/dev/null && ok "toolchain hidden: no libswiftCore.so under $TOOLCHAIN, no swift" \
    || ko "toolchain still visible ($swiftcore)"
  dyn=; for f in .build/release/libEDKM.so .build/debug/libEDKM.so; do [ -e "$f" ] && { dyn=$f; break; }; done
  if [ -n "$dyn" ]; then
    out=$(python3 -c "import ctypes; ctypes.CDLL('$ROOT/$dyn')" 2>&1)
    echo "$out" | grep -q "libswift" && ok "the toolchain-linked $dyn does not load (${out##*OSError: })" \
      || ko "the toolchain-linked $dyn loaded or failed for another reason: $out"
  fi
fi

# C with pkg-config
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
flags=$(pkg-config --cflags --libs edkm) && [ "$(pkg-config --modversion edkm)" = "$(bash scripts/version.sh)" ] \
  && ok "pkg-config edkm $(pkg-config --modversion edkm): $flags" || ko "pkg-config edkm"
# shellcheck disable=SC2086
check "cc \$(pkg-config --cflags --libs edkm): header_check, mlp_trainer" bash -c "
  gcc -std=c99 -Wall -Wextra -Werror -pedantic Tests/abi/header_check.c $flags -Wl,-rpath,$PREFIX/lib -o $BIN/header_check &&
  cc -std=c99 -O2 examples/c/mlp_trainer.c examples/c/mlp/mlp.c $flags -Wl,-rpath,$PREFIX/lib -lm -o $BIN/mlp_trainer"
check "pkg-config build: header_check runs" "$BIN/header_check"
check "pkg-config build: mlp_trainer (short schedule) runs" "$BIN/mlp_trainer" --epochs 4 --ft-epochs 1 --bits 3
ldd "$BIN/header_check" | grep -q "libedkm.so.0 => $PREFIX/lib/libedkm.so.0" \
  && ok "header_check loads $PREFIX/lib/libedkm.so.0 (its SONAME)" || ko "header_check does not load the installed libedkm.so.0: $(ldd "$BIN/header_check")"

# C with CMake
if command -v cmake >/dev/null; then
  rm -rf "$WORK/cmake-build" "$WORK/cmake-wrong-version"
  check "cmake find_package(edkm 0.2) + edkm::edkm: configure and build" bash -c "
    cmake -S Tests/install -B $WORK/cmake-build -DCMAKE_PREFIX_PATH=$PREFIX >$WORK/cmake.log 2>&1 &&
    cmake --build $WORK/cmake-build >>$WORK/cmake.log 2>&1 || { tail -20 $WORK/cmake.log; false; }"
  check "cmake build: header_check runs" "$WORK/cmake-build/header_check"
  check "cmake build: mlp_trainer (short schedule) runs" "$WORK/cmake-build/mlp_trainer" --epochs 4 --ft-epochs 1 --bits 3
  if cmake -S Tests/install -B "$WORK/cmake-wrong-version" -DCMAKE_PREFIX_PATH="$PREFIX" -DEDKM_WANT_VERSION=1.0 >"$WORK/cmake-wrong.log" 2>&1; then
    ko "find_package(edkm 1.0) accepted version $(bash scripts/version.sh)"
  else
    grep -q "edkmConfig.cmake, version: $(bash scripts/version.sh)" "$WORK/cmake-wrong.log" \
      && ok "find_package(edkm 1.0) refuses $(bash scripts/version.sh) (another major version)" || ko "find_package(edkm 1.0) failed for another reason: $(tail -5 "$WORK/cmake-wrong.log")"
  fi
else
  ko "cmake not installed (scripts/setup.sh installs it)"
fi

# Python: the wheel in a fresh venv
PY=$WORK/venv/bin/python
where=$(cd "$WORK" && "$PY" -c "import edkm; print(edkm.library_path())" 2>&1)
case $where in "$WORK/venv/"*/edkm/lib/libedkm.so.0) ok "the venv's edkm loads its own copy: $where" ;; *) ko "the venv's edkm: $where" ;; esac
check "python examples/python/quickstart.py (wheel, venv)" bash -c "cd $WORK && $PY $ROOT/examples/python/quickstart.py"
check "the binding's tests against the wheel (EDKM_REQUIRE_LIB=1)" env EDKM_REQUIRE_LIB=1 EDKM_TEST_INSTALLED=1 EDKM_CLI="$PREFIX/bin/edkm" \
  "$PY" -m pytest -q -p no:cacheprovider Tests/python

# The command-line tool
check "bin/edkm --help" "$PREFIX/bin/edkm" --help
check "bin/edkm demo" "$PREFIX/bin/edkm" demo

# Swift: the client package built against the prefix (its Swift runtime linked statically)
if [ -x "$WORK/swift-client/debug/edkm-swift-client" ]; then
  check "Swift client package (C module via pkg-config): one forward" env LD_LIBRARY_PATH="$PREFIX/lib" "$WORK/swift-client/debug/edkm-swift-client"
else
  ko "the Swift client was not built"
fi

echo "installed: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
