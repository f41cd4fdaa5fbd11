#!/usr/bin/env bash
# ABI checks of the shipped library (default: .build-dist/lib/libedkm.so.V, scripts/build-dist.sh):
# exported functions == header functions; the header compiles as strict C99 and as C++; it is
# self-contained: SONAME libedkm.so.MAJOR, NEEDED only glibc (libc, libm, ld-linux), libstdc++ and
# libgcc_s, RUNPATH none or $ORIGIN, stripped; loads with ctypes in a clean environment. Prints the
# glibc / libstdc++ symbol versions it needs (its floor) and "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
version=$(bash scripts/version.sh)
so=${1:-.build-dist/lib/libedkm.so.$version}
[ -f "$so" ] || { echo "check-abi.sh: $so not found (scripts/build-dist.sh builds it)"; exit 1; }
pass=0; fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
ko() { echo "FAIL: $1"; fail=$((fail + 1)); }
hdr=$(gcc -E -P -x c include/edkm.h | grep -oE '\bedkm_[a-z0-9_]+[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' | sort -u)
exp=$(nm -D --defined-only "$so" | awk '$2=="T"{print $3}' | sort -u)
missing=$(comm -23 <(echo "$hdr") <(echo "$exp"))
extra=$(comm -13 <(echo "$hdr") <(echo "$exp"))
[ -z "$missing" ] && ok "every header function is exported ($(echo "$hdr" | wc -l))" || ko "not exported: $missing"
[ -z "$extra" ] && ok "no function exported beyond the header" || ko "exported but not in the header: $extra"
others=$(nm -D --defined-only "$so" | awk '$2 ~ /^[A-Z]$/ && $2 != "T"{print $3}')
[ -z "$others" ] && ok "no data or other global symbol exported" || ko "exported non-function symbols: $others"
gcc -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c include/edkm.h && ok "header: gcc -std=c99 -pedantic -Werror" || ko "header as C99"
g++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c++ include/edkm.h && ok "header: g++ -fsyntax-only" || ko "header as C++"
env -i PATH=/usr/bin:/bin python3 -c "import ctypes; ctypes.CDLL('$(realpath "$so")').edkm_version_number()" && ok "ctypes.CDLL in a clean environment" || ko "ctypes.CDLL in a clean environment"
readelf -d "$so" | grep -q STATIC_TLS && ko "the library needs static TLS" || ok "no STATIC_TLS flag (loads late with dlopen)"
soname=$(readelf -d "$so" | sed -nE 's/.*\(SONAME\).*\[(.*)\]/\1/p')
[ "$soname" = "libedkm.so.${version%%.*}" ] && ok "SONAME $soname" || ko "SONAME is '$soname', not libedkm.so.${version%%.*}"
needed=$(readelf -d "$so" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p' | sort | tr '\n' ' ')
foreign=$(echo "$needed" | tr ' ' '\n' | grep -vxE 'libc\.so\.6|libm\.so\.6|libstdc\+\+\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|' || true)
[ -z "$foreign" ] && ok "NEEDED only glibc, libstdc++, libgcc_s: $needed" || ko "NEEDED beyond glibc/libstdc++/libgcc_s: $foreign"
runpath=$(readelf -d "$so" | sed -nE 's/.*\((RPATH|RUNPATH)\).*\[(.*)\]/\2/p')
case $runpath in ''|'$ORIGIN') ok "RUNPATH '${runpath}'" ;; *) ko "RUNPATH/RPATH '$runpath' (none or \$ORIGIN expected)" ;; esac
readelf -S "$so" | grep -qE '\] \.(symtab|debug_info) ' && ko "not stripped (.symtab or .debug_info present)" || ok "stripped (no .symtab, no .debug_info)"
real=$(readlink -f "$so")
[ "$(basename "$real")" = "libedkm.so.$version" ] && ok "file name libedkm.so.$version (the header's version)" || ko "file $real is not libedkm.so.$version"
floor() { objdump -T "$so" | grep -oE "\b$1_[0-9.]+" | sort -uV | tail -1; }
echo "floor: $(floor GLIBC) $(floor GLIBCXX) $(floor CXXABI) $(floor GCC)"
echo "abi: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
