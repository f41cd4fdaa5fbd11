#!/usr/bin/env bash
# Install tests: libedkm as C, Python and Swift users get it, checked on a machine that looks like
# one without Swift.
#   1. scripts/install.sh into a fresh prefix (and again with DESTDIR: same files, same edkm.pc);
#      the install tree; the ABI checks of the installed library; bin/edkm needs no Swift library
#   2. the wheel (`pip wheel python/`): name, tag py3-none-<platform>, the library inside;
#      `auditwheel show` where auditwheel is installed
#   3. a fresh venv (python3 -m venv) with the wheel, numpy and pytest installed
#   4. the Swift client package Tests/swift-client built against the prefix (pkg-config edkm)
#   5. Tests/install/run-installed.sh with the Swift toolchain hidden: `unshare -m` and an empty
#      directory bind-mounted over the toolchain's directory (where unshare is not permitted, it
#      runs with the toolchain visible and says so): C via pkg-config and via CMake find_package,
#      the quickstart and the binding's tests in the venv, `bin/edkm demo`, the Swift client.
# Scratch: .build-install-test (git-ignored). Exit status nonzero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T=$ROOT/.build-install-test
PREFIX=$T/prefix
VERSION=$(bash scripts/version.sh)
MAJOR=${VERSION%%.*}
pass=0; fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
ko() { echo "FAIL: $1"; fail=$((fail + 1)); }
rm -rf "$T" && mkdir -p "$T/empty"

echo "== install"
if bash scripts/install.sh "$PREFIX" && DESTDIR=$T/stage bash scripts/install.sh "$PREFIX" >/dev/null; then
  ok "scripts/install.sh $PREFIX (and with DESTDIR)"
else
  ko "scripts/install.sh"; echo "install-test: $pass passed, $fail failed"; exit 1
fi
tree=$(cd "$PREFIX" && find . \( -type f -o -type l \) | sort | tr '\n' ' ')
want="./bin/edkm ./include/edkm.h ./lib/cmake/edkm/edkmConfig.cmake ./lib/cmake/edkm/edkmConfigVersion.cmake ./lib/libedkm.so ./lib/libedkm.so.$MAJOR ./lib/libedkm.so.$VERSION ./lib/pkgconfig/edkm.pc "
[ "$tree" = "$want" ] && ok "install tree: $tree" || ko "install tree is '$tree', expected '$want'"
[ "$(readlink "$PREFIX/lib/libedkm.so")" = "libedkm.so.$MAJOR" ] && [ "$(readlink "$PREFIX/lib/libedkm.so.$MAJOR")" = "libedkm.so.$VERSION" ] \
  && ok "symlinks libedkm.so -> libedkm.so.$MAJOR -> libedkm.so.$VERSION" || ko "symlinks"
diff -r "$PREFIX" "$T/stage$PREFIX" >/dev/null && ok "DESTDIR install: the same files under \$DESTDIR$PREFIX (edkm.pc: prefix=$PREFIX)" \
  || ko "DESTDIR install differs"
bash scripts/check-abi.sh "$PREFIX/lib/libedkm.so.$VERSION" && ok "ABI checks of the installed library" || ko "ABI checks of the installed library"
needed=$(readelf -d "$PREFIX/bin/edkm" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p' | tr '\n' ' ')
echo "$needed" | grep -q swift && ko "bin/edkm needs Swift libraries: $needed" || ok "bin/edkm NEEDED: $needed"

echo "== wheel"
if python3 -m pip wheel -q --no-deps python/ -w "$T/wheel" >"$T/wheel.log" 2>&1; then
  whl=$(ls "$T"/wheel/edkm-*.whl)
  plat=$(python3 -c "import sysconfig; print(sysconfig.get_platform().replace('-', '_').replace('.', '_'))")
  [ "$(basename "$whl")" = "edkm-$VERSION-py3-none-$plat.whl" ] && ok "wheel $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)" \
    || ko "wheel name $(basename "$whl"), expected edkm-$VERSION-py3-none-$plat.whl"
  listing=$(python3 -m zipfile -l "$whl")
  echo "$listing" | grep -q "^edkm/lib/libedkm.so.$MAJOR " && ok "the wheel carries edkm/lib/libedkm.so.$MAJOR" \
    || ko "no edkm/lib/libedkm.so.$MAJOR in the wheel"
  if command -v auditwheel >/dev/null; then
    aw=$(auditwheel show "$whl" 2>&1)
    tag=$(echo "$aw" | grep -oE '"manylinux_[0-9]+_[0-9]+_[a-z0-9_]+"' | head -1)
    [ -n "$tag" ] && ok "auditwheel show: consistent with $tag" || ko "auditwheel show: $aw"
  else
    echo "auditwheel not installed (pip install auditwheel): its check skipped"
  fi
else
  ko "pip wheel python/: $(tail -20 "$T/wheel.log")"
fi

echo "== venv"
venv() {  # a fresh venv with the wheel; numpy and pytest from PyPI, else from this Python's site-packages
  python3 -m venv "$T/venv" && "$T/venv/bin/python" -m pip install -q "$T"/wheel/edkm-*.whl numpy pytest && return 0
  echo "PyPI not reachable: a venv with --system-site-packages for numpy and pytest"
  rm -rf "$T/venv"
  python3 -m venv --system-site-packages "$T/venv" && "$T/venv/bin/python" -m pip install -q --no-deps "$T"/wheel/edkm-*.whl
}
venv >"$T/venv.log" 2>&1 && ok "fresh venv with the wheel" || ko "venv: $(tail -5 "$T/venv.log")"

echo "== Swift client package"
if PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig swift build --package-path Tests/swift-client --scratch-path "$T/swift-client" \
     --static-swift-stdlib >"$T/swift-client.log" 2>&1; then
  ok "Tests/swift-client built against the prefix (pkg-config edkm)"
else
  ko "Tests/swift-client: $(grep -E "error" "$T/swift-client.log" | head -5)"
fi

echo "== the installed artefacts without the Swift toolchain"
TOOLCHAIN=$(cd "$(dirname "$(readlink -f "$(command -v swift)")")/../.." && pwd)
hideable() {  # the toolchain has a directory of its own, which holds none of the tools used here
  case $TOOLCHAIN in /|/usr|/usr/local|/opt) return 1 ;; esac
  local t
  for t in python3 cc gcc cmake pkg-config; do
    case $(readlink -f "$(command -v "$t")") in "$TOOLCHAIN"/*) return 1 ;; esac
  done
}
if ! hideable; then
  echo "NOTE: the Swift toolchain ($TOOLCHAIN) has no directory of its own to hide: the checks below" \
       "run with it visible, so they do not prove that it is not needed"
  bash Tests/install/run-installed.sh "$PREFIX" "$T" "$TOOLCHAIN"
elif unshare -m true 2>/dev/null; then
  echo "hiding $TOOLCHAIN (unshare -m, an empty directory bind-mounted over it)"
  unshare -m bash -c 'mount --bind "$1" "$2" && HIDDEN=1 exec bash Tests/install/run-installed.sh "$3" "$4" "$2"' \
    _ "$T/empty" "$TOOLCHAIN" "$PREFIX" "$T"
else
  echo "NOTE: unshare -m is not permitted here (needs root or user namespaces): the checks below run" \
       "with the Swift toolchain visible at $TOOLCHAIN, so they do not prove that it is not needed"
  bash Tests/install/run-installed.sh "$PREFIX" "$T" "$TOOLCHAIN"
fi && ok "installed artefacts (Tests/install/run-installed.sh)" || ko "installed artefacts (Tests/install/run-installed.sh)"

echo "install-test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
