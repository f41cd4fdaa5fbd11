#!/usr/bin/env bash
# The main job: builds libedkm and its command-line tool and runs `edkm demo`: a small model
# trained on data it generates, compressed to 4 and 3 bits by post-training palettization and by
# eDKM fine-tuning through libedkm, with accuracy, size and the saved-state memory of every eDKM
# technique measured from the offload arena (no downloads; under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .build-dist/bin/edkm demo "$@"
