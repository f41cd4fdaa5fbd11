#!/usr/bin/env bash
# Builds the shipped, self-contained libedkm and edkm binary (the Swift runtime linked statically:
# they run on a machine without the Swift toolchain). SwiftPM scratch path .build-dist, separate
# from the default .build (whose dynamic release build and debug build `swift build` / `swift test`
# keep using). Output, with V = MAJOR.MINOR.PATCH from include/edkm.h (scripts/version.sh):
#
#   .build-dist/lib/libedkm.so.V         the library: SONAME libedkm.so.MAJOR, no RUNPATH, stripped,
#                                        exports exactly the functions of include/edkm.h
#   .build-dist/lib/libedkm.so.MAJOR     -> libedkm.so.V  (what programs load: the SONAME)
#   .build-dist/lib/libedkm.so           -> libedkm.so.MAJOR  (what `-ledkm` links)
#   .build-dist/lib/libedkm.so.V.debug   its debug info (found by gdb through .gnu_debuglink)
#   .build-dist/bin/edkm                 the command-line tool, stripped
#
# How: -Xswiftc -static-stdlib links the Swift runtime (libswiftCore, Concurrency, ...) into each
# product (SwiftPM's --static-swift-stdlib applies to executables only); -no-toolchain-stdlib-rpath
# leaves out the RUNPATH to the toolchain; -soname names the library libedkm.so.MAJOR (the two
# products are linked by separate commands so that only the library gets a SONAME; the compiled
# modules are shared). What remains NEEDED: libc, libm, libstdc++, libgcc_s (and ld-linux).
# Prints the library's path. EDKM_DIST_SCRATCH overrides the scratch path.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${EDKM_DIST_SCRATCH:-.build-dist}
VERSION=$(bash scripts/version.sh)
MAJOR=${VERSION%%.*}
SONAME=libedkm.so.$MAJOR
bash scripts/build-jemalloc.sh
flags=(-c release --scratch-path "$SCRATCH" -Xswiftc -static-stdlib -Xswiftc -no-toolchain-stdlib-rpath)
quiet() { grep -E "error|warning: |Build complete" | grep -vE "^\[|use of .mktemp. is dangerous" >&2 || true; }
swift build "${flags[@]}" --product edkm 2>&1 | quiet
swift build "${flags[@]}" -Xlinker -soname -Xlinker "$SONAME" --product EDKM 2>&1 | quiet
BUILT=$SCRATCH/release
test -f "$BUILT/libEDKM.so" && test -x "$BUILT/edkm" || { echo "build-dist.sh: swift build failed" >&2; exit 1; }

LIB=$SCRATCH/lib
BIN=$SCRATCH/bin
mkdir -p "$LIB" "$BIN"
REAL=libedkm.so.$VERSION
rm -f "$LIB"/libedkm.so*
objcopy --only-keep-debug "$BUILT/libEDKM.so" "$LIB/$REAL.debug"
strip --strip-unneeded -o "$LIB/$REAL" "$BUILT/libEDKM.so"
(cd "$LIB" && objcopy --add-gnu-debuglink="$REAL.debug" "$REAL")
ln -s "$REAL" "$LIB/$SONAME"
ln -s "$SONAME" "$LIB/libedkm.so"
strip --strip-all -o "$BIN/edkm" "$BUILT/edkm"
echo "$LIB/$REAL"
