#!/usr/bin/env bash
# Prints libedkm's version MAJOR.MINOR.PATCH, read from the EDKM_VERSION_* macros of include/edkm.h
# (the one place it is written). The shipped library is libedkm.so.MAJOR.MINOR.PATCH, SONAME
# libedkm.so.MAJOR.
set -euo pipefail
hdr="$(dirname "$0")/../include/edkm.h"
v() { sed -nE "s/^#define EDKM_VERSION_$1[[:space:]]+([0-9]+).*/\1/p" "$hdr"; }
major=$(v MAJOR); minor=$(v MINOR); patch=$(v PATCH)
[ -n "$major" ] && [ -n "$minor" ] && [ -n "$patch" ] || { echo "version.sh: no EDKM_VERSION_* in $hdr" >&2; exit 1; }
echo "$major.$minor.$patch"
