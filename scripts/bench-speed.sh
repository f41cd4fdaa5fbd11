#!/usr/bin/env bash
# The speed benchmark: the default (uniquified) path against the dense path and a memcpy
# bandwidth probe, 4096x4096 and 11008x4096, f16/bf16, 3/4 bits, per-tensor/grouped, 1 and all
# threads, and one LLaMA-7B decoder layer (bf16, 3 bits). Arguments go to `edkm-bench speed`
# (--help lists them; --quick is the CI-sized smoke run). Takes ~15 min in full on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/bench-build.sh)
exec "$BIN" speed "$@"
