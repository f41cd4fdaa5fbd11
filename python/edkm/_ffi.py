"""Thin 1:1 ctypes mirror of include/edkm.h.

Everything here maps one C declaration to one Python object: the structs (fields in header order,
exact C types), the enum constants, and every function with its argtypes/restype, each preceded by
its C prototype. No policy lives here; the Pythonic layer is edkm.core.

Library discovery (first that loads wins):
  1. the copy next to this module, edkm/lib/libedkm.so.MAJOR (what the wheel carries);
  2. the file named by the environment variable EDKM_LIB_PATH (if set, it must load);
  3. a checkout's builds (this module in <repo>/python/edkm): the newer of the self-contained
     <repo>/.build-dist/lib/libedkm.so.MAJOR (scripts/build-dist.sh) and the toolchain-linked
     <repo>/.build/release/libEDKM.so (`swift build -c release`), then <repo>/.build/debug/libEDKM.so;
  4. libedkm.so.MAJOR from the system search path (an installed prefix: LD_LIBRARY_PATH, ldconfig).
If none loads, importing this module raises ImportError naming every path tried and the command that
fixes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

# ============================ Version ============================

# #define EDKM_VERSION_MAJOR 0 / MINOR 4 / PATCH 0: the header this binding mirrors.
EDKM_VERSION_MAJOR = 0
EDKM_VERSION_MINOR = 8
EDKM_VERSION_PATCH = 1
EDKM_VERSION_NUMBER = EDKM_VERSION_MAJOR * 10000 + EDKM_VERSION_MINOR * 100 + EDKM_VERSION_PATCH

# ============================ Status (typedef enum edkm_status) ============================

EDKM_OK = 0
EDKM_ERR_INVALID_ARGUMENT = 1
EDKM_ERR_NULL_POINTER = 2
EDKM_ERR_INVALID_HANDLE = 3
EDKM_ERR_DTYPE = 4
EDKM_ERR_SHAPE = 5
EDKM_ERR_NON_FINITE = 6
EDKM_ERR_OUT_OF_MEMORY = 7
EDKM_ERR_BUDGET_EXCEEDED = 8
EDKM_ERR_STATE = 9
EDKM_ERR_WEIGHTS_CHANGED = 10
EDKM_ERR_COMMUNICATOR = 11
EDKM_ERR_BUSY = 12
EDKM_ERR_STRUCT_SIZE = 13
EDKM_ERR_ALLOCATOR = 14
EDKM_ERR_INTERNAL = 99

# ============================ Types ============================

# typedef enum edkm_dtype
EDKM_DTYPE_F32 = 0
EDKM_DTYPE_F16 = 1
EDKM_DTYPE_BF16 = 2

# typedef enum edkm_saved_mode
EDKM_SAVED_HISTOGRAM = 0
EDKM_SAVED_DKM = 1
EDKM_SAVED_MARSHAL = 2
EDKM_SAVED_DEDUP = 3
EDKM_SAVED_UNIQUIFY = 4
EDKM_SAVED_SHARD = 5

# typedef enum edkm_init
EDKM_INIT_AUTO = 0
EDKM_INIT_OPTIMAL_1D = 1
EDKM_INIT_KMEANS_PP = 2

# typedef enum edkm_algorithm
EDKM_ALGORITHM_AUTO = 0
EDKM_ALGORITHM_DENSE = 1
EDKM_ALGORITHM_UNIQUIFIED = 2

# typedef enum edkm_temperature_mode
EDKM_TEMPERATURE_ABSOLUTE = 0
EDKM_TEMPERATURE_SCALE_FREE = 1

# typedef enum edkm_lut_dtype (since 0.4)
EDKM_LUT_F32 = 0
EDKM_LUT_INT8 = 1
EDKM_LUT_UINT8 = 2

# typedef enum edkm_channel_scale (since 0.5)
EDKM_CHANNEL_SCALE_NONE = 0
EDKM_CHANNEL_SCALE_MIN_MAX = 1
EDKM_CHANNEL_SCALE_ABS_MAX = 2

# C enums (edkm_status, edkm_dtype) are passed and returned as int.
edkm_status = c_int
edkm_dtype = c_int


# Opaque handles: typedef struct edkm_runtime edkm_runtime; (and layer, saved_state).
# Distinct pointer types so that ctypes refuses a layer where a runtime is expected.
class edkm_runtime(Structure):
    pass


class edkm_layer(Structure):
    pass


class edkm_saved_state(Structure):
    pass


edkm_runtime_p = POINTER(edkm_runtime)
edkm_layer_p = POINTER(edkm_layer)
edkm_saved_state_p = POINTER(edkm_saved_state)

# ============================ Communicator ============================

# int (*all_gather)(void *user_data, const void *send, void *recv, size_t bytes);
ALL_GATHER_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_size_t)
# int (*all_reduce_sum)(void *user_data, double *data, size_t count);
ALL_REDUCE_SUM_FN = CFUNCTYPE(c_int, c_void_p, POINTER(c_double), c_size_t)


class edkm_communicator(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("rank", c_int32),
        ("world_size", c_int32),
        ("reserved", c_int32),
        ("user_data", c_void_p),
        ("all_gather", ALL_GATHER_FN),
        ("all_reduce_sum", ALL_REDUCE_SUM_FN),
    ]


# ============================ Runtime ============================


class edkm_runtime_config(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("num_threads", c_uint32),
        ("budget_bytes", c_uint64),
        ("saved_mode", c_int32),
        ("keep_weights", c_uint32),
        ("communicator", POINTER(edkm_communicator)),
    ]


class edkm_runtime_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("num_threads", c_uint32),
        ("arena_allocated", c_uint64),
        ("arena_peak", c_uint64),
        ("arena_active", c_uint64),
        ("heap_saved", c_uint64),
        ("heap_saved_peak", c_uint64),
        ("live_saved_states", c_uint64),
        ("dedup_hits", c_uint64),
        ("dedup_misses", c_uint64),
        ("budget_bytes", c_uint64),
        ("communicator_bytes", c_uint64),
    ]


# ============================ Layer ============================


class edkm_layer_config(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("bits", c_uint32),
        ("cluster_dim", c_uint32),
        ("group_size", c_uint32),
        ("max_iterations", c_uint32),
        ("init", c_int32),
        ("tau", c_double),
        ("epsilon", c_double),
        ("zero_threshold", c_double),
        ("prune_threshold", c_double),
        ("algorithm", c_int32),
        ("f32_key_dtype", c_int32),
        ("seed", c_uint64),
        ("temperature_mode", c_int32),
        ("reserved", c_uint32),
        ("enforce_zero", c_uint32),  # since 0.4
        ("lut_dtype", c_int32),  # since 0.4: an edkm_lut_dtype
        ("channel_scale", c_int32),  # since 0.5: an edkm_channel_scale
    ]


class edkm_layer_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("iterations", c_uint32),
        ("forwards", c_uint64),
        ("distinct_values", c_uint64),
        ("algorithm", c_int32),
        ("reserved", c_int32),
        ("inertia", c_double),
        ("effective_tau", c_double),
        ("attention_entropy", c_double),
    ]


STRUCTS = {
    "edkm_communicator": edkm_communicator,
    "edkm_runtime_config": edkm_runtime_config,
    "edkm_runtime_stats": edkm_runtime_stats,
    "edkm_layer_config": edkm_layer_config,
    "edkm_layer_stats": edkm_layer_stats,
}

# ============================ Functions ============================
# name -> (restype, argtypes), in header order, each under its C prototype.

PROTOTYPES = {
    # uint32_t edkm_version_number(void);
    "edkm_version_number": (c_uint32, []),
    # const char *edkm_version_string(void);
    "edkm_version_string": (c_char_p, []),
    # const char *edkm_status_name(edkm_status status);
    "edkm_status_name": (c_char_p, [edkm_status]),
    # const char *edkm_last_error(void);
    "edkm_last_error": (c_char_p, []),
    # void edkm_runtime_config_init(edkm_runtime_config *cfg);
    "edkm_runtime_config_init": (None, [POINTER(edkm_runtime_config)]),
    # edkm_status edkm_runtime_create(const edkm_runtime_config *cfg, edkm_runtime **out);
    "edkm_runtime_create": (edkm_status, [POINTER(edkm_runtime_config), POINTER(edkm_runtime_p)]),
    # void edkm_runtime_destroy(edkm_runtime *runtime);
    "edkm_runtime_destroy": (None, [edkm_runtime_p]),
    # edkm_status edkm_runtime_set_budget(edkm_runtime *runtime, uint64_t budget_bytes);
    "edkm_runtime_set_budget": (edkm_status, [edkm_runtime_p, c_uint64]),
    # edkm_status edkm_runtime_get_stats(const edkm_runtime *runtime, edkm_runtime_stats *out);
    "edkm_runtime_get_stats": (edkm_status, [edkm_runtime_p, POINTER(edkm_runtime_stats)]),
    # edkm_status edkm_runtime_reset_peak(edkm_runtime *runtime);
    "edkm_runtime_reset_peak": (edkm_status, [edkm_runtime_p]),
    # void edkm_layer_config_init(edkm_layer_config *cfg);
    "edkm_layer_config_init": (None, [POINTER(edkm_layer_config)]),
    # edkm_status edkm_layer_create(edkm_runtime *runtime, const edkm_layer_config *cfg,
    #                               const int64_t *shape, size_t ndim, edkm_layer **out);
    "edkm_layer_create": (
        edkm_status,
        [edkm_runtime_p, POINTER(edkm_layer_config), POINTER(c_int64), c_size_t, POINTER(edkm_layer_p)],
    ),
    # void edkm_layer_destroy(edkm_layer *layer);
    "edkm_layer_destroy": (None, [edkm_layer_p]),
    # (since 0.4)
    # edkm_status edkm_layer_get_config(const edkm_layer *layer, edkm_layer_config *out);
    "edkm_layer_get_config": (edkm_status, [edkm_layer_p, POINTER(edkm_layer_config)]),
    # edkm_status edkm_layer_centroid_count(const edkm_layer *layer, size_t *count);
    "edkm_layer_centroid_count": (edkm_status, [edkm_layer_p, POINTER(c_size_t)]),
    # edkm_status edkm_layer_get_centroids(const edkm_layer *layer, float *out, size_t count);
    "edkm_layer_get_centroids": (edkm_status, [edkm_layer_p, POINTER(c_float), c_size_t]),
    # edkm_status edkm_layer_set_centroids(edkm_layer *layer, const float *centroids, size_t count);
    "edkm_layer_set_centroids": (edkm_status, [edkm_layer_p, POINTER(c_float), c_size_t]),
    # edkm_status edkm_layer_get_channel_scale(const edkm_layer *layer, float *out, size_t count);
    "edkm_layer_get_channel_scale": (edkm_status, [edkm_layer_p, POINTER(c_float), c_size_t]),
    # edkm_status edkm_layer_set_channel_scale(edkm_layer *layer, const float *scale, size_t count);
    "edkm_layer_set_channel_scale": (edkm_status, [edkm_layer_p, POINTER(c_float), c_size_t]),
    # edkm_status edkm_layer_init_centroids(edkm_layer *layer, const void *weights,
    #                                       edkm_dtype dtype, size_t count);
    "edkm_layer_init_centroids": (edkm_status, [edkm_layer_p, c_void_p, edkm_dtype, c_size_t]),
    # edkm_status edkm_layer_forward(edkm_layer *layer, const void *weights, edkm_dtype dtype,
    #                                size_t count, void *out, edkm_dtype out_dtype,
    #                                edkm_saved_state **saved);
    "edkm_layer_forward": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, c_size_t, c_void_p, edkm_dtype, POINTER(edkm_saved_state_p)],
    ),
    # edkm_status edkm_layer_forward_shard(edkm_layer *layer, const void *weights, edkm_dtype dtype,
    #                                      size_t offset, size_t count, void *out, edkm_dtype out_dtype,
    #                                      edkm_saved_state **saved);
    "edkm_layer_forward_shard": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, c_size_t, c_size_t, c_void_p, edkm_dtype, POINTER(edkm_saved_state_p)],
    ),
    # edkm_status edkm_layer_get_stats(const edkm_layer *layer, edkm_layer_stats *out);
    "edkm_layer_get_stats": (edkm_status, [edkm_layer_p, POINTER(edkm_layer_stats)]),
    # edkm_status edkm_saved_state_backward(edkm_saved_state *state, const void *grad_output,
    #                                       void *grad_input, edkm_dtype grad_dtype,
    #                                       size_t count, const void *weights);
    "edkm_saved_state_backward": (
        edkm_status,
        [edkm_saved_state_p, c_void_p, c_void_p, edkm_dtype, c_size_t, c_void_p],
    ),
    # edkm_status edkm_saved_state_bytes(const edkm_saved_state *state, uint64_t *bytes);
    "edkm_saved_state_bytes": (edkm_status, [edkm_saved_state_p, POINTER(c_uint64)]),
    # void edkm_saved_state_destroy(edkm_saved_state *state);
    "edkm_saved_state_destroy": (None, [edkm_saved_state_p]),
    # edkm_status edkm_layer_export_sizes(const edkm_layer *layer, size_t *lut_count,
    #                                     size_t *packed_bytes);
    "edkm_layer_export_sizes": (edkm_status, [edkm_layer_p, POINTER(c_size_t), POINTER(c_size_t)]),
    # edkm_status edkm_layer_export(const edkm_layer *layer, const void *weights, edkm_dtype dtype,
    #                               size_t count, void *lut, edkm_dtype lut_dtype,
    #                               uint8_t *packed, size_t packed_bytes);
    "edkm_layer_export": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, c_size_t, c_void_p, edkm_dtype, POINTER(c_uint8), c_size_t],
    ),
    # (since 0.4)
    # edkm_status edkm_layer_export_sized(const edkm_layer *layer, const void *weights, edkm_dtype dtype,
    #                                     size_t count, void *lut, edkm_dtype lut_dtype, size_t lut_count,
    #                                     uint8_t *packed, size_t packed_bytes);
    "edkm_layer_export_sized": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, c_size_t, c_void_p, edkm_dtype, c_size_t, POINTER(c_uint8), c_size_t],
    ),
    # (since 0.4)
    # edkm_status edkm_layer_unpack_sized(const edkm_layer *layer, const void *lut, edkm_dtype lut_dtype,
    #                                     size_t lut_count, const uint8_t *packed, size_t packed_bytes,
    #                                     void *out, edkm_dtype out_dtype, size_t count);
    "edkm_layer_unpack_sized": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, c_size_t, POINTER(c_uint8), c_size_t, c_void_p, edkm_dtype, c_size_t],
    ),
    # (deprecated since 0.4)
    # edkm_status edkm_layer_unpack(const edkm_layer *layer, const void *lut, edkm_dtype lut_dtype,
    #                               const uint8_t *packed, size_t packed_bytes,
    #                               void *out, edkm_dtype out_dtype, size_t count);
    "edkm_layer_unpack": (
        edkm_status,
        [edkm_layer_p, c_void_p, edkm_dtype, POINTER(c_uint8), c_size_t, c_void_p, edkm_dtype, c_size_t],
    ),
    # (since 0.3)
    # edkm_status edkm_layer_forward_histogram(edkm_layer *layer, edkm_dtype key_dtype,
    #                                          const uint16_t *keys, const double *counts,
    #                                          const size_t *partition_offsets, size_t partitions,
    #                                          double *soft_values, edkm_saved_state **saved);
    "edkm_layer_forward_histogram": (
        edkm_status,
        [edkm_layer_p, edkm_dtype, POINTER(c_uint16), POINTER(c_double), POINTER(c_size_t), c_size_t, POINTER(c_double),
         POINTER(edkm_saved_state_p)],
    ),
    # (since 0.3)
    # edkm_status edkm_saved_state_backward_histogram(edkm_saved_state *state, const double *grad_sums,
    #                                                 size_t count, double *h, double *r);
    "edkm_saved_state_backward_histogram": (
        edkm_status,
        [edkm_saved_state_p, POINTER(c_double), c_size_t, POINTER(c_double), POINTER(c_double)],
    ),
}

# ============================ Loading ============================

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO = _PACKAGE_DIR.parents[1]  # python/edkm/_ffi.py -> <repo> when run from a checkout
_SONAME = f"libedkm.so.{EDKM_VERSION_MAJOR}"
_BUNDLED = _PACKAGE_DIR / "lib" / _SONAME


def _fix_hint():
    """The one command that provides a library, for this copy of the binding."""
    if (_REPO / "Package.swift").exists() and (_REPO / "scripts" / "build-dist.sh").exists():
        return (f"run `bash scripts/build-dist.sh` in {_REPO} (builds the self-contained "
                f".build-dist/lib/{_SONAME}), or set EDKM_LIB_PATH=/path/to/{_SONAME}")
    return (f"this copy of the binding carries no library ({_BUNDLED} is missing): reinstall the "
            f"edkm wheel (`pip install --force-reinstall <edkm wheel>`), or set "
            f"EDKM_LIB_PATH=/path/to/{_SONAME}")


def _checkout_builds():
    """A checkout's builds in discovery order: the newer release build first, the debug build last."""
    release = [p for p in (_REPO / ".build-dist" / "lib" / _SONAME, _REPO / ".build" / "release" / "libEDKM.so")
               if p.exists()]
    release.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    debug = _REPO / ".build" / "debug" / "libEDKM.so"
    return release + ([debug] if debug.exists() else [])


def _candidates():
    """(path or name, must_load) pairs in discovery order; see the module's docstring."""
    out = [(str(_BUNDLED), False)] if _BUNDLED.exists() else []
    env = os.environ.get("EDKM_LIB_PATH")
    if env:
        out.append((env, True))
    out += [(str(p), False) for p in _checkout_builds()]
    found = ctypes.util.find_library("edkm")
    if found:
        out.append((found, False))
    out.append((_SONAME, False))  # whatever the dynamic loader finds (LD_LIBRARY_PATH, ld.so.cache)
    return out


def _load():
    tried = [] if _BUNDLED.exists() else [f"{_BUNDLED}: not there"]
    for cand, must_load in _candidates():
        try:
            handle = ctypes.CDLL(cand)
        except OSError as e:
            if must_load:
                raise ImportError(
                    f"libedkm: EDKM_LIB_PATH={cand!r} could not be loaded ({e}); {_fix_hint()}"
                ) from e
            tried.append(f"{cand}: {e}")
            continue
        if f"{os.sep}.build{os.sep}debug{os.sep}" in cand:
            warnings.warn(f"libedkm: using the unoptimised debug build {cand} (no release build found; "
                          f"{_fix_hint()})", RuntimeWarning, stacklevel=2)
        return handle, cand
    if not _checkout_builds() and (_REPO / "Package.swift").exists():
        tried.append(f"{_REPO}/.build-dist/lib/{_SONAME}, {_REPO}/.build/release/libEDKM.so: not built")
    raise ImportError("libedkm not found or not loadable: " + _fix_hint() + ". Tried: " + "; ".join(tried))


lib, lib_path = _load()

#: Names of header functions that the loaded library does not export (should be empty).
missing_symbols = []


def _missing(name):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"{lib_path} does not export {name} (declared in include/edkm.h)")

    stub.__name__ = name
    return stub


def _bind():
    g = globals()
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing_symbols.append(name)
            g[name] = _missing(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
        g[name] = fn


_bind()

__all__ = sorted(
    n for n in globals() if n.startswith(("edkm_", "EDKM_")) or n in ("lib", "lib_path", "STRUCTS", "PROTOTYPES")
)
