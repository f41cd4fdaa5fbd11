"""edkm: Python binding of libedkm, train-time weight clustering (DKM / eDKM).

    import numpy as np, edkm
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=3) as layer:
        w_soft, saved = layer.forward(w)          # soft-clustered weights + state for backward
        grad_w = saved.backward(grad_w_soft, w)   # dL/dw through every DKM iteration
        saved.close()
        lut, packed = layer.export(w, "f16")      # hard palettization for inference

The C ABI is mirrored 1:1 in edkm._ffi (include/edkm.h); this package adds numpy buffers, errors as
exceptions (EdkmError) and handle lifetimes. The library is the copy the wheel carries
(edkm/lib/libedkm.so.0), else EDKM_LIB_PATH, a checkout's build, or the system search path (see
edkm._ffi).
"""

from . import _ffi
from .core import (
    BFLOAT16,
    Algorithm,
    TemperatureMode,
    Communicator,
    DType,
    EdkmError,
    HistogramState,
    Init,
    Layer,
    LayerStats,
    Runtime,
    RuntimeStats,
    SavedMode,
    SavedState,
    bf16_to_f32,
    f32_to_bf16,
    library_path,
    library_version,
    lut_quantization,
    unpack_labels,
)

__version__ = "0.8.1"

if "edkm_version_number" not in _ffi.missing_symbols:
    _lib_major = _ffi.edkm_version_number() // 10000
    if _lib_major != _ffi.EDKM_VERSION_MAJOR:
        raise ImportError(
            f"libedkm at {_ffi.lib_path} is version {library_version()}, but this binding mirrors the "
            f"{_ffi.EDKM_VERSION_MAJOR}.x header; rebuild the library or use a matching binding"
        )

__all__ = [
    "Algorithm",
    "TemperatureMode",
    "BFLOAT16",
    "Communicator",
    "DType",
    "EdkmError",
    "HistogramState",
    "Init",
    "Layer",
    "LayerStats",
    "Runtime",
    "RuntimeStats",
    "SavedMode",
    "SavedState",
    "bf16_to_f32",
    "f32_to_bf16",
    "library_path",
    "library_version",
    "lut_quantization",
    "unpack_labels",
]
