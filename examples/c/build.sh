#!/bin/sh
# Builds (and with `run`, runs) the C examples against libedkm.so. No build system needed: these are
# the plain compiler command lines, run from the repository root.
#
#   scripts/build-dist.sh                    # builds .build-dist/lib/libedkm.so (self-contained)
#   examples/c/build.sh                      # compiles examples/c/bin/{mlp_trainer,device_split}
#   examples/c/build.sh run                  # ... and runs them (exit status nonzero on any failure)
#
# The commands it runs (from the repository root):
#   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c \
#      -L .build-dist/lib -ledkm -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/mlp_trainer
#   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/device_split.c -L .build-dist/lib -ledkm \
#      -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/device_split
#
# EDKM_LIB_DIR overrides the directory of libedkm.so (default .build-dist/lib); CC the compiler.
set -eu

cd "$(dirname "$0")/../.."
ROOT=$PWD
LIB_DIR=${EDKM_LIB_DIR:-.build-dist/lib}
case $LIB_DIR in /*) LIB_ABS=$LIB_DIR ;; *) LIB_ABS=$ROOT/$LIB_DIR ;; esac
CC=${CC:-cc}

if [ ! -e "$LIB_DIR/libedkm.so" ]; then
    echo "build.sh: $LIB_DIR/libedkm.so not found; run 'scripts/build-dist.sh' first" >&2
    exit 1
fi
mkdir -p examples/c/bin

run() { echo "+ $*"; "$@"; }

run "$CC" -std=c99 -O2 -Wall -Wextra -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c -L "$LIB_DIR" -ledkm \
    "-Wl,-rpath,$LIB_ABS" -lm -o examples/c/bin/mlp_trainer
run "$CC" -std=c99 -O2 -Wall -Wextra -I include examples/c/device_split.c -L "$LIB_DIR" -ledkm \
    "-Wl,-rpath,$LIB_ABS" -lm -o examples/c/bin/device_split

if [ "${1:-}" = run ]; then
    run examples/c/bin/mlp_trainer
    run examples/c/bin/device_split
fi
