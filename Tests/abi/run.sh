#!/bin/sh
# The header's contract from plain C and C++: include/edkm.h compiled as strict C99 (gcc, -Werror
# -pedantic) into header_check, which checks struct sizes, the library version and every cheaply
# reachable error path against libedkm.so; and the header parsed as C++11 (skipped without c++).
#
#   Tests/abi/run.sh        # from anywhere; builds into Tests/abi/bin/ and runs
#
# EDKM_LIB_DIR overrides the directory of libedkm.so (default .build-dist/lib); CXX the C++ compiler.
set -eu

cd "$(dirname "$0")/../.."
LIB_DIR=${EDKM_LIB_DIR:-.build-dist/lib}
case $LIB_DIR in /*) LIB_ABS=$LIB_DIR ;; *) LIB_ABS=$PWD/$LIB_DIR ;; esac
CXX=${CXX:-c++}
if [ ! -e "$LIB_DIR/libedkm.so" ]; then
    echo "Tests/abi/run.sh: $LIB_DIR/libedkm.so not found; run 'scripts/build-dist.sh' first" >&2
    exit 1
fi
mkdir -p Tests/abi/bin

run() { echo "+ $*"; "$@"; }

run gcc -std=c99 -Wall -Wextra -Werror -pedantic -I include Tests/abi/header_check.c -L "$LIB_DIR" \
    -ledkm "-Wl,-rpath,$LIB_ABS" -o Tests/abi/bin/header_check
if command -v "$CXX" >/dev/null 2>&1; then
    run "$CXX" -x c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I include include/edkm.h
fi
run Tests/abi/bin/header_check
