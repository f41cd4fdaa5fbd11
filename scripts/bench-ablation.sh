#!/usr/bin/env bash
# The eDKM memory ablation: saved bytes per eDKM mode on one LLaMA-7B decoder layer (bf16, 3 bits),
# dense modes on row slices with a linear fit and extrapolation, shard with 8 simulated ranks, and
# gradient accumulation. Arguments go to `edkm-bench ablation` (--help lists them; --markdown prints
# the README table; --quick is the CI-sized smoke run). Takes ~3 min and ~3 GB in full.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/bench-build.sh)
exec "$BIN" ablation "$@"
