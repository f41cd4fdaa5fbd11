"""Where the tests find the `edkm` executable."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def edkm_cli():
    """The edkm executable: $EDKM_CLI, or the checkout's release build (toolchain-linked, else shipped)."""
    candidates = [os.environ.get("EDKM_CLI")] + [str(REPO / p) for p in (".build/release/edkm", ".build-dist/bin/edkm")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if os.environ.get("EDKM_REQUIRE_LIB") == "1":
        pytest.fail(f"EDKM_REQUIRE_LIB=1 but no edkm executable was found (tried {candidates[1:]}): swift build -c release")
    pytest.skip("the edkm executable is not built (swift build -c release)")
