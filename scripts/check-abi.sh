#!/usr/bin/env bash
# ABI checks of the built library: exported functions == header functions; the header compiles
# as strict C99 and as C++. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
so=${1:-.build/release/libedkm.so}
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
env -i PATH=/usr/bin:/bin python3 -c "import ctypes; ctypes.CDLL('$(pwd)/$so').edkm_version_number()" && ok "ctypes.CDLL in a clean environment" || ko "ctypes.CDLL in a clean environment"
readelf -d "$so" | grep -q STATIC_TLS && ko "libedkm.so needs static TLS" || ok "no STATIC_TLS flag (loads late with dlopen)"
echo "abi: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
