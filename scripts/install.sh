#!/usr/bin/env bash
# Installs libedkm under PREFIX the way zstd, libsodium or jemalloc install:
#
#   PREFIX/lib/libedkm.so.V                        the self-contained library (scripts/build-dist.sh)
#   PREFIX/lib/libedkm.so.MAJOR -> libedkm.so.V    its SONAME, what programs load
#   PREFIX/lib/libedkm.so -> libedkm.so.MAJOR      what `cc ... -ledkm` links
#   PREFIX/include/edkm.h
#   PREFIX/lib/pkgconfig/edkm.pc                   pkg-config --cflags --libs edkm
#   PREFIX/lib/cmake/edkm/edkmConfig.cmake         find_package(edkm): imported target edkm::edkm
#   PREFIX/lib/cmake/edkm/edkmConfigVersion.cmake
#   PREFIX/bin/edkm                                the command-line tool (self-contained too)
#
# Usage: scripts/install.sh PREFIX          (e.g. /usr/local, $HOME/.local; made absolute)
#        DESTDIR=/tmp/stage scripts/install.sh /usr   (staged: files under /tmp/stage/usr, but
#                                            edkm.pc says prefix=/usr, as packagers expect)
# Builds (or brings up to date) .build-dist first; EDKM_INSTALL_NO_BUILD=1 installs what is there
# (e.g. as another user, or on a machine without Swift after copying the checkout).
# After installing into a prefix the dynamic loader does not search, programs need
# -Wl,-rpath,PREFIX/lib or LD_LIBRARY_PATH=PREFIX/lib (or `ldconfig` for /usr/local/lib).
set -euo pipefail
[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: scripts/install.sh PREFIX   (DESTDIR honoured)" >&2; exit 2; }
PREFIX=$(realpath -m "$1")
cd "$(dirname "$0")/.."
VERSION=$(bash scripts/version.sh)
MAJOR=${VERSION%%.*}
DIST=${EDKM_DIST_SCRATCH:-.build-dist}
[ "${EDKM_INSTALL_NO_BUILD:-0}" = 1 ] || bash scripts/build-dist.sh >/dev/null
REAL=libedkm.so.$VERSION
for f in "$DIST/lib/$REAL" "$DIST/bin/edkm"; do
  [ -f "$f" ] || { echo "install.sh: $f missing: run scripts/build-dist.sh" >&2; exit 1; }
done

D=${DESTDIR:-}$PREFIX
install -d "$D/lib/pkgconfig" "$D/lib/cmake/edkm" "$D/include" "$D/bin"
install -m 755 "$DIST/lib/$REAL" "$D/lib/$REAL"
ln -sfn "$REAL" "$D/lib/libedkm.so.$MAJOR"
ln -sfn "libedkm.so.$MAJOR" "$D/lib/libedkm.so"
install -m 644 include/edkm.h "$D/include/edkm.h"
subst() { sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@SOVERSION@|$MAJOR|g" "$1"; }
subst packaging/edkm.pc.in > "$D/lib/pkgconfig/edkm.pc"
subst packaging/edkmConfig.cmake.in > "$D/lib/cmake/edkm/edkmConfig.cmake"
subst packaging/edkmConfigVersion.cmake.in > "$D/lib/cmake/edkm/edkmConfigVersion.cmake"
chmod 644 "$D/lib/pkgconfig/edkm.pc" "$D/lib/cmake/edkm/"*.cmake
install -m 755 "$DIST/bin/edkm" "$D/bin/edkm"
echo "libedkm $VERSION installed in $D"
