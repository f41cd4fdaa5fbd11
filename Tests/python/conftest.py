"""Shared fixtures of the binding tests.

Tests that only compare the binding's declarations with include/edkm.h (and the C compiler's view of
it) run without the library: the `decls` fixture executes the declarations part of edkm/_ffi.py
(everything before its "Loading" section). Every other test needs libedkm.so and is skipped, with the
ImportError's instructions as the reason, when it cannot be loaded.
"""

import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON_DIR = REPO / "python"
HEADER = REPO / "include" / "edkm.h"
FFI_SOURCE = PYTHON_DIR / "edkm" / "_ffi.py"

# EDKM_TEST_INSTALLED=1 tests the edkm package installed in this interpreter (a wheel in a venv)
# instead of the checkout's python/edkm.
INSTALLED = os.environ.get("EDKM_TEST_INSTALLED") == "1"
if not INSTALLED and str(PYTHON_DIR) not in sys.path:  # a checkout without `pip install -e python/`
    sys.path.insert(0, str(PYTHON_DIR))

try:
    import edkm  # noqa: E402

    LOAD_ERROR = None
except ImportError as e:  # the library is not built / not found
    edkm = None
    LOAD_ERROR = str(e)


def _declarations_module():
    src = FFI_SOURCE.read_text()
    marker = "# ============================ Loading"
    assert marker in src, "edkm/_ffi.py lost its Loading section marker"
    mod = types.ModuleType("edkm_ffi_declarations")
    mod.__file__ = str(FFI_SOURCE)
    exec(compile(src.split(marker)[0], str(FFI_SOURCE), "exec"), mod.__dict__)
    return mod


@pytest.fixture(scope="session")
def decls():
    """The declarations of edkm/_ffi.py (structs, prototypes, constants) without loading the library."""
    return _declarations_module()


@pytest.fixture(scope="session")
def header_text():
    return HEADER.read_text()


@pytest.fixture(scope="session")
def lib():
    """The edkm package with the library loaded; skips when libedkm.so cannot be loaded."""
    if edkm is None:
        if os.environ.get("EDKM_REQUIRE_LIB") == "1":
            pytest.fail(f"EDKM_REQUIRE_LIB=1 but the library did not load: {LOAD_ERROR}")
        pytest.skip(f"libedkm not loadable: {LOAD_ERROR}")
    return edkm


@pytest.fixture
def rt(lib):
    with lib.Runtime(num_threads=2) as r:
        yield r


@pytest.fixture(scope="module")
def one_torch_thread():
    """For the torch test modules: one intra-op thread is faster than several on their small tensors,
    and steadier on a loaded machine; restored after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
