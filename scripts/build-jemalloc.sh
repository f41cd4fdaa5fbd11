#!/usr/bin/env bash
# Builds the jemalloc that libedkm links: Debian's own jemalloc 5.3.0 source, configured with a
# `je_` prefix, a private namespace and global-dynamic TLS (--disable-initial-exec-tls), as a static
# PIC archive. Linked into libedkm.so it lets the library be dlopen()ed late (Python ctypes), which
# Debian's libjemalloc.so.2 (initial-exec TLS) cannot. Output: .deps/jemalloc/{include,lib}.
# Idempotent: does nothing when the archive is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/.deps
PREFIX=$DEPS/jemalloc
if [ -f "$PREFIX/lib/libjemalloc_pic.a" ] && [ -f "$PREFIX/include/jemalloc/jemalloc.h" ]; then
  exit 0
fi
SRC=$DEPS/aptsrc
rm -rf "$SRC"
mkdir -p "$SRC/lists/partial" "$SRC/archives/partial" "$SRC/src" "$SRC/sources.list.d"
# deb-src entries derived from this machine's own apt sources (deb822 or one-line format).
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
  sed 's/^Types: deb$/Types: deb-src/' "$f" > "$SRC/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && grep -E '^deb ' "$f" | sed 's/^deb /deb-src /' > "$SRC/sources.list.d/$(basename "$f").list" || true
done
O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$SRC/sources.list.d"
   -o "Dir::State::Lists=$SRC/lists" -o "Dir::Cache::Archives=$SRC/archives")
apt-get "${O[@]}" -qq update
(cd "$SRC/src" && apt-get "${O[@]}" -qq source --download-only jemalloc >/dev/null)
tar -C "$SRC/src" -xjf "$SRC"/src/jemalloc_5.3.0.orig.tar.bz2
cd "$SRC/src/jemalloc-5.3.0"
./configure -q --with-jemalloc-prefix=je_ --with-private-namespace=edkm_ \
  --disable-initial-exec-tls --disable-cxx --disable-doc --with-lg-page=12 \
  --prefix="$PREFIX" >/dev/null
make -s -j"$(nproc)" lib/libjemalloc_pic.a >/dev/null
mkdir -p "$PREFIX/include/jemalloc" "$PREFIX/lib"
cp include/jemalloc/jemalloc.h "$PREFIX/include/jemalloc/"
cp lib/libjemalloc_pic.a "$PREFIX/lib/"
strip -g "$PREFIX/lib/libjemalloc_pic.a"
rm -rf "$SRC"
echo "jemalloc 5.3.0 (je_ prefix, global-dynamic TLS, static PIC) -> $PREFIX"
