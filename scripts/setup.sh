#!/usr/bin/env bash
# Installs what a fresh Debian machine with Swift lacks and builds libedkm (idempotent).
#   - Debian packages: bzip2 (to unpack jemalloc's source), libjemalloc-dev (its headers and docs
#     for users; the library links its own build of the same source, see build-jemalloc.sh),
#     valgrind (the reliability tests), cmake and pkg-config (the install tests)
#   - Python: numpy and pytest for the binding's tests, auditwheel for the wheel's check
#   - jemalloc from Debian's source package, then `swift build -c release` (the toolchain-linked
#     build in .build) and scripts/build-dist.sh (the self-contained libedkm.so.0 and edkm in
#     .build-dist, what the C, ABI, reliability, install and Python tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v bzip2 >/dev/null || need+=(bzip2)
[ -f /usr/include/jemalloc/jemalloc.h ] || need+=(libjemalloc-dev)
command -v valgrind >/dev/null || need+=(valgrind)  # for the reliability tests
command -v cmake >/dev/null || need+=(cmake)        # for the install tests
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c "import numpy, pytest" 2>/dev/null || python3 -m pip install -q numpy pytest
command -v auditwheel >/dev/null || python3 -m pip install -q auditwheel || echo "auditwheel not installed: the wheel's manylinux check will skip"
bash scripts/build-jemalloc.sh
swift build -c release 2>&1 | grep -E "error|warning: |Compiling|Build complete" | grep -v "^\[" || true
test -f .build/release/libEDKM.so
bash scripts/build-dist.sh >/dev/null
