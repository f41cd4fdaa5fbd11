#!/bin/sh
# Builds (and with `run`, runs) the C examples against libedkm.so. No build system needed: these are
# the plain compiler command lines, run from the repository root.
#
#   scripts/build-dist.sh                    # builds .build-dist/lib/libedkm.so (self-contained)
#   examples/c/build.sh                      # compiles examples/c/bin/{mlp_trainer,device_split,header_check}
#   examples/c/build.sh run                  # ... and runs them (exit status nonzero on any failure)
#
# The commands it runs (from the repository root):
#   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/mlp_trainer.c -L .build-dist/lib -ledkm \
#      -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/mlp_trainer
#   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/device_split.c -L .build-dist/lib -ledkm \
#      -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/device_split
#   gcc -std=c99 -Wall -Wextra -Werror -pedantic -I include examples/c/header_check.c -L .build-dist/lib \
#      -ledkm -Wl,-rpath,$PWD/.build-dist/lib -o examples/c/bin/header_check
#   c++ -x c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I include include/edkm.h
#                                            # the header is also valid C++ (skipped without c++)
#
# EDKM_LIB_DIR overrides the directory of libedkm.so (default .build-dist/lib); CC and CXX the compilers
# of the trainer and of the C++ check (the header check always uses gcc, as specified).
set -eu

cd "$(dirname "$0")/../.."
ROOT=$PWD
LIB_DIR=${EDKM_LIB_DIR:-.build-dist/lib}
case $LIB_DIR in /*) LIB_ABS=$LIB_DIR ;; *) LIB_ABS=$ROOT/$LIB_DIR ;; esac
CC=${CC:-cc}
CXX=${CXX:-c++}

if [ ! -e "$LIB_DIR/libedkm.so" ]; then
    echo "build.sh: $LIB_DIR/libedkm.so not found; run 'scripts/build-dist.sh' first" >&2
    exit 1
fi
mkdir -p examples/c/bin

run() { echo "+ $*"; "$@"; }

run "$CC" -std=c99 -O2 -Wall -Wextra -I include examples/c/mlp_trainer.c -L "$LIB_DIR" -ledkm \
    "-Wl,-rpath,$LIB_ABS" -lm -o examples/c/bin/mlp_trainer
run "$CC" -std=c99 -O2 -Wall -Wextra -I include examples/c/device_split.c -L "$LIB_DIR" -ledkm \
    "-Wl,-rpath,$LIB_ABS" -lm -o examples/c/bin/device_split
run gcc -std=c99 -Wall -Wextra -Werror -pedantic -I include examples/c/header_check.c -L "$LIB_DIR" \
    -ledkm "-Wl,-rpath,$LIB_ABS" -o examples/c/bin/header_check
if command -v "$CXX" >/dev/null 2>&1; then
    run "$CXX" -x c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I include include/edkm.h
fi

if [ "${1:-}" = run ]; then
    run examples/c/bin/header_check
    run examples/c/bin/mlp_trainer
    run examples/c/bin/device_split
fi
