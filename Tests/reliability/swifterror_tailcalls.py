#!/usr/bin/env python3
"""Finds a known miscompile in a built libEDKM (x86-64): a Swift function that returns its error in
the error register r12 (a throwing function, or a closure passed to a generic `throws(E)` API such as
`withUnsafeTemporaryAllocation`) and ends its normal path with a tail jump to memcpy, memmove or
memset. The tail jump skips the epilogue that puts the error register back, so the caller can see a
"thrown error" that is only whatever r12 held last, and runs a path the compiler marked unreachable
(for a `throws(Never)` closure: it falls into the next function). Tests/reliability/README.md,
"Compiler hazards", has the analysis.

Usage: swifterror_tailcalls.py LIBRARY   (a library with its symbol table, e.g. .build/release/libEDKM.so
       or .build-dist/release/libEDKM.so; the stripped shipped library has none)
A function is reported when it
  1. tail-jumps to memcpy@plt, memmove@plt or memset@plt,
  2. does not push r12 in its prologue (in every other convention r12 is callee-saved and pushed
     before use), and
  3. writes r12 other than by reloading it from the slot its prologue spilled it to (so r12 is its
     error result and is used as a scratch register: at the tail jump it need not hold the value
     the caller gave).
Exit status: 0 none found; 1 some found; 2 the library could not be disassembled or has no symbols.
"""
import re
import subprocess
import sys

TAIL = re.compile(r"\sjmp\s+[0-9a-f]+ <(memcpy|memmove|memset)@plt>")
WRITES_R12 = re.compile(r"\s(mov|lea|add|sub|xor|and|or|imul|shl|shr|sar|inc|dec|neg|not|cmov\w*|pop)\w*\s+(\S+,)?%r12$")


def functions(lib):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", lib], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"swifterror_tailcalls: objdump failed on {lib}: {out.stderr.strip()}")
    name, body = None, []
    for line in out.stdout.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            if name:
                yield name, body
            name, body = head.group(1), []
        elif name and "\t" in line:
            body.append(line.split("\t", 1)[1].strip() if line.count("\t") >= 1 else line)
    if name:
        yield name, body


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lib = sys.argv[1]
    found, seen = [], 0
    for name, body in functions(lib):
        seen += 1
        tails = [i for i in body if TAIL.search(" " + i)]
        if not tails:
            continue
        pushes_r12 = any(re.match(r"push\s+%r12$", i) for i in body[:10])
        spills = {m.group(1) for i in body[:12] for m in [re.match(r"mov\s+%r12,(-0x[0-9a-f]+\(%rbp\))$", i)] if m}
        writes_r12 = any(WRITES_R12.search(" " + i) and not any(i == f"mov    {slot},%r12" or re.match(rf"mov\s+{re.escape(slot)},%r12$", i)
                                                                for slot in spills)
                         for i in body)
        if not pushes_r12 and writes_r12:
            found.append((name, tails[0]))
    if seen < 100:
        print(f"swifterror_tailcalls: {lib}: only {seen} functions (no symbol table?)", file=sys.stderr)
        return 2
    for name, tail in found:
        print(f"error-register function tail-calls a mem libcall: {name}\n    {tail}")
    print(f"swifterror_tailcalls: {seen} functions, {len(found)} with the hazard")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
