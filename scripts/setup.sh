#!/usr/bin/env bash
# Installs what a fresh Debian machine with Swift lacks and builds libedkm (idempotent).
#   - Debian packages: bzip2 (to unpack jemalloc's source), libjemalloc-dev (its headers and docs
#     for users; the library links its own build of the same source, see build-jemalloc.sh),
#     valgrind (the reliability tests)
#   - Python: numpy and pytest for the binding's tests
#   - jemalloc from Debian's source package, then `swift build -c release`
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v bzip2 >/dev/null || need+=(bzip2)
[ -f /usr/include/jemalloc/jemalloc.h ] || need+=(libjemalloc-dev)
command -v valgrind >/dev/null || need+=(valgrind)  # for the reliability tests
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c "import numpy, pytest" 2>/dev/null || python3 -m pip install -q numpy pytest
bash scripts/build-jemalloc.sh
swift build -c release 2>&1 | grep -E "error|warning: |Compiling|Build complete" | grep -v "^\[" || true
test -f .build/release/libedkm.so
