#!/bin/sh
# Builds and runs the data-parallel MPI trainer (examples/c/mpi_trainer.c) on 2 processes.
# Exit status nonzero on any failure (build, a rank's check, or mpirun). CI runs it.
#
#   scripts/build-dist.sh                    # builds .build-dist/lib/libedkm.so (self-contained)
#   examples/c/build-mpi.sh                  # installs Open MPI if missing, compiles, runs mpirun -np 2
#   examples/c/build-mpi.sh build            # compile only
#   examples/c/build-mpi.sh run [ARGS...]    # compile and run, passing ARGS to the trainer
#
# The commands it runs (from the repository root):
#   apt-get install -y openmpi-bin libopenmpi-dev      # only when mpicc is missing (Debian)
#   mpicc -std=c99 -O2 -Wall -Wextra -I include examples/c/mpi_trainer.c examples/c/mlp/mlp.c \
#         -L .build-dist/lib -ledkm -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/mpi_trainer
#   mpirun -np 2 examples/c/bin/mpi_trainer
#         (as root, Open MPI needs: mpirun --allow-run-as-root --oversubscribe -np 2 ...)
#
# EDKM_LIB_DIR overrides the directory of libedkm.so (default .build-dist/lib); MPI_NP the number of
# processes (default 2).
set -eu

cd "$(dirname "$0")/../.."
ROOT=$PWD
LIB_DIR=${EDKM_LIB_DIR:-.build-dist/lib}
case $LIB_DIR in /*) LIB_ABS=$LIB_DIR ;; *) LIB_ABS=$ROOT/$LIB_DIR ;; esac
NP=${MPI_NP:-2}
ACTION=${1:-run}
[ $# -gt 0 ] && shift

run() { echo "+ $*"; "$@"; }

if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build-mpi.sh: installing Open MPI (openmpi-bin libopenmpi-dev)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
    else
        echo "build-mpi.sh: mpicc/mpirun not found; install Open MPI (apt-get install openmpi-bin libopenmpi-dev)" >&2
        exit 1
    fi
fi
if [ ! -e "$LIB_DIR/libedkm.so" ]; then
    echo "build-mpi.sh: $LIB_DIR/libedkm.so not found; run 'scripts/build-dist.sh' first" >&2
    exit 1
fi
mkdir -p examples/c/bin

run mpicc -std=c99 -O2 -Wall -Wextra -I include examples/c/mpi_trainer.c examples/c/mlp/mlp.c -L "$LIB_DIR" -ledkm \
    "-Wl,-rpath,$LIB_ABS" -lm -o examples/c/bin/mpi_trainer

case $ACTION in
build) exit 0 ;;
run) ;;
*) echo "usage: examples/c/build-mpi.sh [build | run [trainer args...]]" >&2; exit 2 ;;
esac

MPIRUN_FLAGS=""
if [ "$(id -u)" = 0 ]; then MPIRUN_FLAGS="--allow-run-as-root"; fi
# --oversubscribe: run NP ranks even where Open MPI counts fewer slots (cores) than NP.
# The TCP/shared-memory transports need no configuration on one machine.
run mpirun $MPIRUN_FLAGS --oversubscribe -np "$NP" examples/c/bin/mpi_trainer "$@"
