"""Wheel build hook: puts the self-contained libedkm into the wheel as edkm/lib/libedkm.so.MAJOR.

The library comes from EDKM_WHEEL_LIBRARY (a prebuilt libedkm.so.MAJOR.MINOR.PATCH, e.g. from
`scripts/build-dist.sh` or an installed prefix), else it is built by `bash scripts/build-dist.sh` in
the repository this python/ directory belongs to (Swift toolchain needed; incremental). The wheel is
tagged py3-none-<platform>: the binding is pure ctypes, so one wheel serves every CPython 3; the
library needs only libc, libm, libstdc++ and libgcc_s. Editable installs get no copy (the binding
finds the checkout's build). MAJOR is the binding's EDKM_VERSION_MAJOR, the name it loads.
"""

import os
import re
import subprocess
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _binding_major(root: Path) -> int:
    m = re.search(r"^EDKM_VERSION_MAJOR = (\d+)$", (root / "edkm" / "_ffi.py").read_text(), re.M)
    if not m:
        raise RuntimeError("edkm/_ffi.py lost its EDKM_VERSION_MAJOR line")
    return int(m.group(1))


def _library(root: Path) -> Path:
    given = os.environ.get("EDKM_WHEEL_LIBRARY")
    if given:
        lib = Path(given).resolve()
        if not lib.is_file():
            raise RuntimeError(f"EDKM_WHEEL_LIBRARY={given!r} is not a file")
        return lib
    repo = root.parent
    script = repo / "scripts" / "build-dist.sh"
    if not script.exists():
        raise RuntimeError(
            f"no libedkm to put in the wheel: {script} is not there (building from an sdist?). Build "
            "the wheel from the repository (`pip wheel --no-deps python/`) or set "
            "EDKM_WHEEL_LIBRARY=/path/to/libedkm.so.MAJOR.MINOR.PATCH")
    out = subprocess.run(["bash", str(script)], cwd=repo, check=True, stdout=subprocess.PIPE, text=True)
    return (repo / out.stdout.strip().splitlines()[-1]).resolve()


def _check_elf(lib: Path, soname: str):
    head = lib.read_bytes()
    if head[:4] != b"\x7fELF" or soname.encode() not in head:
        raise RuntimeError(f"{lib} is not an ELF library with SONAME {soname}")


class LibedkmBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        soname = f"libedkm.so.{_binding_major(root)}"
        lib = _library(root)
        _check_elf(lib, soname)
        build_data["force_include"][str(lib)] = f"edkm/lib/{soname}"
        build_data["pure_python"] = False
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["tag"] = f"py3-none-{platform}"
