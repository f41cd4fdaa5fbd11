#!/usr/bin/env python3
"""Relinks a SwiftPM product (the test bundle edkmPackageTests.xctest, or the CLI `edkm`) without
`-Xlinker --exclude-libs=ALL`.

Why: Package.swift gives EDKMSupport `-Xlinker --exclude-libs=ALL` (to keep the private jemalloc's
symbols out of libedkm.so). It also applies to the test executable, where it hides the sanitizer
runtime's interceptors (libclang_rt.asan/tsan are static archives): the Swift runtime and libdispatch
then allocate and create threads behind the sanitizer's back. Under ASan,
`malloc_usable_size` on a Swift-allocated block aborts ("pointer which is not owned"); under TSan the
swift-testing runner crashes (SEGV in __tsan_func_entry on a libdispatch thread) before any test.
Suggested fix in Package.swift: `--exclude-libs=libjemalloc_pic.a` instead of `ALL`; until then
scripts/reliability-sanitizers.sh relinks with this script.

usage: relink_tests.py SCRATCH_PATH PRODUCT_FILE OUTPUT
  (reads SCRATCH_PATH/debug.yaml; PRODUCT_FILE e.g. edkmPackageTests.xctest or edkm; writes OUTPUT)
"""
import json
import re
import subprocess
import sys

scratch, product, output = sys.argv[1], sys.argv[2], sys.argv[3]
yaml = open(f"{scratch}/debug.yaml").read()
match = None
for m in re.finditer(r'  "?<?C\.[^\n]*\n((?:    [^\n]*\n)+)', yaml):
    block = m.group(1)
    if "outputs:" in block and "args:" in block and '"-o"' in block:
        out_line = re.search(r'outputs: \[(.*?)\]', block).group(1)
        if out_line.strip().endswith('/' + product + '"'):
            match = block
if match is None:
    sys.exit(f"relink_tests.py: link command of {product} not found in {scratch}/debug.yaml")
args = json.loads(re.search(r'args: (\[.*?\])\n', match, re.S).group(1))
new = []
for a in args:
    if a == "--exclude-libs=ALL":
        if new and new[-1] == "-Xlinker":
            new.pop()
        continue
    new.append(a)
i = new.index("-o")
new[i + 1] = output
r = subprocess.run(new, capture_output=True, text=True)
if r.returncode != 0:
    sys.stderr.write(r.stderr)
    sys.exit(r.returncode)
print(f"relinked {product} -> {output} without --exclude-libs=ALL")
