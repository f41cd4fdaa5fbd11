#!/usr/bin/env bash
# The main job: builds libedkm and its C example trainer, which trains a 2-layer MLP on data it
# generates, then compresses its weights to 4 and 3 bits by post-training k-means and by DKM
# fine-tuning through libedkm, and prints accuracy and size of each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
sh examples/c/build.sh >/dev/null
exec examples/c/bin/mlp_trainer
