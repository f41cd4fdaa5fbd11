"""The Pythonic layer over libedkm's C ABI (edkm._ffi).

Objects: Runtime (arena, budget, threads, communicator), Layer (config + centroids of one weight
tensor), SavedState (one forward awaiting its backward), Communicator (Python collectives lent to
the library). Every non-OK status raises EdkmError.

Buffers are numpy arrays handed to the library without copies: they must be C-contiguous, aligned
and of a supported dtype (float32, float16, bfloat16 as uint16 bit patterns with dtype="bf16", or
ml_dtypes.bfloat16 arrays when ml_dtypes is installed). Anything else raises TypeError/ValueError;
nothing is converted or copied silently. Outputs are allocated here with np.empty (or passed by the
caller with out=).
"""

from __future__ import annotations

import ctypes
import enum
import operator
import threading
from ctypes import byref, c_size_t, c_uint64, sizeof
from dataclasses import dataclass

import numpy as np

from . import _ffi

try:  # optional: a real bfloat16 numpy dtype
    import ml_dtypes as _ml_dtypes

    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except Exception:  # pragma: no cover - depends on the environment
    BFLOAT16 = None

__all__ = [
    "EdkmError",
    "DType",
    "SavedMode",
    "Init",
    "Algorithm",
    "Runtime",
    "RuntimeStats",
    "Layer",
    "LayerStats",
    "SavedState",
    "Communicator",
    "library_version",
    "library_path",
    "unpack_labels",
    "f32_to_bf16",
    "bf16_to_f32",
    "BFLOAT16",
]

# ============================ enums ============================


class DType(enum.IntEnum):
    F32 = _ffi.EDKM_DTYPE_F32
    F16 = _ffi.EDKM_DTYPE_F16
    BF16 = _ffi.EDKM_DTYPE_BF16


class SavedMode(enum.IntEnum):
    HISTOGRAM = _ffi.EDKM_SAVED_HISTOGRAM
    DKM = _ffi.EDKM_SAVED_DKM
    MARSHAL = _ffi.EDKM_SAVED_MARSHAL
    DEDUP = _ffi.EDKM_SAVED_DEDUP
    UNIQUIFY = _ffi.EDKM_SAVED_UNIQUIFY
    SHARD = _ffi.EDKM_SAVED_SHARD


class Init(enum.IntEnum):
    AUTO = _ffi.EDKM_INIT_AUTO
    OPTIMAL_1D = _ffi.EDKM_INIT_OPTIMAL_1D
    KMEANS_PP = _ffi.EDKM_INIT_KMEANS_PP




class TemperatureMode(enum.IntEnum):
    ABSOLUTE = _ffi.EDKM_TEMPERATURE_ABSOLUTE
    SCALE_FREE = _ffi.EDKM_TEMPERATURE_SCALE_FREE


class Algorithm(enum.IntEnum):
    AUTO = _ffi.EDKM_ALGORITHM_AUTO
    DENSE = _ffi.EDKM_ALGORITHM_DENSE
    UNIQUIFIED = _ffi.EDKM_ALGORITHM_UNIQUIFIED


def _enum_value(cls, value, what):
    """An enum member from a member, an int, or a case-insensitive name ("histogram")."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "").replace("_", "").replace("+", "P")
        for member_name, member in cls.__members__.items():
            if member_name.replace("_", "") == key:
                return member
        raise ValueError(f"{what}: unknown name {value!r}; expected one of {', '.join(m.lower() for m in cls.__members__)}")
    try:
        return cls(operator.index(value))
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {value!r} is not a valid {cls.__name__}") from None


_DTYPE_NAMES = {
    "f32": DType.F32, "float32": DType.F32, "fp32": DType.F32,
    "f16": DType.F16, "float16": DType.F16, "fp16": DType.F16, "half": DType.F16,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
}


def _resolve_dtype(spec, what="dtype"):
    """A DType from DType/int, a name ("f32", "f16", "bf16"), or a numpy dtype (float32, float16,
    ml_dtypes.bfloat16). uint16 is not accepted here: its meaning (f16 or bf16 bits) must be named."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str):
        try:
            return _DTYPE_NAMES[spec.lower()]
        except KeyError:
            raise ValueError(f"{what}: unknown dtype {spec!r}; use 'f32', 'f16' or 'bf16'") from None
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        try:
            return DType(int(spec))
        except ValueError:
            raise ValueError(f"{what}: {spec!r} is not an edkm dtype (0=f32, 1=f16, 2=bf16)") from None
    try:
        npd = np.dtype(spec)
    except TypeError:
        raise TypeError(f"{what}: cannot interpret {spec!r} as a dtype; use 'f32', 'f16' or 'bf16'") from None
    if npd == np.float32:
        return DType.F32
    if npd == np.float16:
        return DType.F16
    if BFLOAT16 is not None and npd == BFLOAT16:
        return DType.BF16
    raise TypeError(f"{what}: numpy dtype {npd} is not supported; use float32, float16, or bf16 bits as uint16 with dtype='bf16'")


def _np_dtype(code, spec=None, like=None):
    """The numpy dtype used to allocate an output of edkm dtype `code`. bf16 outputs are uint16 bit
    patterns unless the request (spec) or the input array (like) used ml_dtypes.bfloat16."""
    if code == DType.F32:
        return np.dtype(np.float32)
    if code == DType.F16:
        return np.dtype(np.float16)
    if BFLOAT16 is not None:
        for d in (spec, like):
            try:
                if d is not None and not isinstance(d, (str, int, DType)) and np.dtype(d) == BFLOAT16:
                    return BFLOAT16
            except TypeError:
                pass
    return np.dtype(np.uint16)


def _array_dtype(arr, explicit, name, fallback16=None):
    """The edkm dtype of a numpy array, checking it against an explicit dtype argument.

    uint16 arrays carry f16/bf16 bit patterns: they need `explicit` ('bf16' or 'f16'), or
    `fallback16` (the dtype implied by context, e.g. the forward's weights)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__} (no implicit conversion is done)")
    d = arr.dtype
    if explicit is not None:
        code = _resolve_dtype(explicit, f"{name} dtype")
        if d == np.uint16 and code in (DType.F16, DType.BF16):
            return code
        if _matches(d, code):
            return code
        raise TypeError(f"{name} has numpy dtype {d}, which does not hold {code.name.lower()} values "
                        f"(expected {_expected(code)})")
    if d == np.float32:
        return DType.F32
    if d == np.float16:
        return DType.F16
    if BFLOAT16 is not None and d == BFLOAT16:
        return DType.BF16
    if d == np.uint16:
        if fallback16 is not None and fallback16 in (DType.F16, DType.BF16):
            return DType(fallback16)
        raise TypeError(f"{name} is uint16: pass dtype='bf16' (bfloat16 bit patterns) or dtype='f16' "
                        f"(float16 bit patterns) to say which")
    raise TypeError(f"{name} has unsupported dtype {d}: use float32, float16, or bfloat16 bits as uint16 "
                    f"with dtype='bf16' (no implicit conversion is done)")


def _matches(npd, code):
    if code == DType.F32:
        return npd == np.float32
    if code == DType.F16:
        return npd == np.float16
    return npd == np.uint16 or (BFLOAT16 is not None and npd == BFLOAT16)


def _expected(code):
    return {DType.F32: "float32", DType.F16: "float16 (or uint16 bits)",
            DType.BF16: "uint16 bf16 bits" + (" or ml_dtypes.bfloat16" if BFLOAT16 is not None else "")}[code]


def _check_layout(arr, name, writable=False):
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (shape {arr.shape}, strides {arr.strides}); "
                         f"pass np.ascontiguousarray({name}) if a copy is what you want")
    if not arr.flags.aligned:
        raise ValueError(f"{name} is not aligned to its element size")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; the library writes into it")


def _u32(v, name):
    v = operator.index(v)
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{name}={v} does not fit the C field (uint32_t)")
    return v


def _u64(v, name):
    v = operator.index(v)
    if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"{name}={v} does not fit the C field (uint64_t)")
    return v


def _c_int(v, name, lo, hi, ctype):
    """v as a Python int in [lo, hi] (the range of the C integer ctype); ctypes would wrap it."""
    v = operator.index(v)
    if not lo <= v <= hi:
        raise OverflowError(f"{name}={v} does not fit the C {ctype} ({lo}..{hi})")
    return v


def _size_t(v, name):
    return _c_int(v, name, 0, 2 ** (8 * sizeof(c_size_t)) - 1, "size_t")


def _i64(v, name):
    return _c_int(v, name, -2 ** 63, 2 ** 63 - 1, "int64_t")


def _i32(v, name):
    return _c_int(v, name, -2 ** 31, 2 ** 31 - 1, "int32_t")


# ============================ errors ============================


def _decode(b):
    if b is None:
        return ""
    return b.decode("utf-8", "replace")


class EdkmError(Exception):
    """A libedkm call returned a non-OK edkm_status.

    Attributes: status (int), status_name ("EDKM_ERR_SHAPE"), message (edkm_last_error()),
    function (the C function that failed)."""

    def __init__(self, status, message="", function=None, status_name=None):
        self.status = int(status)
        if status_name is None:
            status_name = _decode(_ffi.edkm_status_name(self.status))
        self.status_name = status_name
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        detail = f": {message}" if message else ""
        super().__init__(f"{where}{status_name} ({self.status}){detail}")

    def __reduce__(self):
        return (EdkmError, (self.status, self.message, self.function, self.status_name))


def _check(status, function, communicator=None):
    """Raise EdkmError for a non-OK status; read edkm_last_error() right away (thread-local, valid
    until the next edkm_ call on this thread)."""
    if status == _ffi.EDKM_OK:
        if communicator is not None:
            communicator.last_exception = None
        return
    message = _decode(_ffi.edkm_last_error())
    err = EdkmError(status, message, function)
    cause = None
    if communicator is not None:
        cause, communicator.last_exception = communicator.last_exception, None
    if cause is not None and not isinstance(cause, Exception):
        raise cause  # KeyboardInterrupt / SystemExit raised inside a callback
    if cause is not None:
        raise err from cause
    raise err


def library_version():
    """The loaded library's version string, "MAJOR.MINOR.PATCH"."""
    return _decode(_ffi.edkm_version_string())


def library_path():
    """The file the library was loaded from."""
    return _ffi.lib_path


# ============================ communicator ============================


class Communicator:
    """Lends Python collectives (mpi4py, torch.distributed, ...) to libedkm.

    all_gather(send, nbytes) -> bytes-like of world_size * nbytes bytes (rank r's block at r*nbytes);
        `send` is a read-only memoryview of the nbytes to send, valid only during the call.
    all_reduce_sum(data) -> None: sums the float64 numpy array `data` over all ranks in place
        (a returned array of the same size is copied back instead); `data` is a view of the
        library's buffer, valid only during the call.

    Exceptions inside the callbacks never cross into C: the callback returns nonzero, the libedkm
    call fails with EDKM_ERR_COMMUNICATOR, and the EdkmError raised in Python has the original
    exception as its __cause__ (it is also kept in .last_exception until the next call).
    Keep this object referenced as long as any runtime uses it (Runtime, Layer and SavedState
    objects hold a reference)."""

    def __init__(self, rank, world_size, all_gather, all_reduce_sum):
        rank = _i32(rank, "rank")
        world_size = _i32(world_size, "world_size")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size and world_size >= 1 (got rank={rank}, world_size={world_size})")
        if not callable(all_gather) or not callable(all_reduce_sum):
            raise TypeError("all_gather and all_reduce_sum must be callables")
        self.rank = rank
        self.world_size = world_size
        self._py_all_gather = all_gather
        self._py_all_reduce_sum = all_reduce_sum
        self.last_exception = None
        self.calls = {"all_gather": 0, "all_reduce_sum": 0}
        # The CFUNCTYPE objects must stay alive as long as the C side may call them: keep them here.
        self._c_all_gather = _ffi.ALL_GATHER_FN(self._all_gather_trampoline)
        self._c_all_reduce_sum = _ffi.ALL_REDUCE_SUM_FN(self._all_reduce_trampoline)
        self._struct = _ffi.edkm_communicator(
            struct_size=sizeof(_ffi.edkm_communicator),
            rank=rank,
            world_size=world_size,
            reserved=0,
            user_data=None,
            all_gather=self._c_all_gather,
            all_reduce_sum=self._c_all_reduce_sum,
        )

    @classmethod
    def single(cls):
        """A world of one: all-gather copies, all-reduce leaves the data as it is."""
        return cls(0, 1, lambda send, nbytes: bytes(send), lambda data: None)

    def _all_gather_trampoline(self, user_data, send, recv, nbytes):
        try:
            self.calls["all_gather"] += 1
            if nbytes:
                src = memoryview((ctypes.c_ubyte * nbytes).from_address(send)).cast("B").toreadonly()
            else:
                src = memoryview(b"")
            result = self._py_all_gather(src, nbytes)
            mv = memoryview(result).cast("B")
            want = nbytes * self.world_size
            if mv.nbytes != want:
                raise ValueError(f"all_gather returned {mv.nbytes} bytes, expected world_size * nbytes = {want}")
            if want:
                ctypes.memmove(recv, (ctypes.c_ubyte * want).from_buffer_copy(mv), want)
            return 0
        except BaseException as e:  # never propagate through C
            self.last_exception = e
            return 1

    def _all_reduce_trampoline(self, user_data, data, count):
        try:
            self.calls["all_reduce_sum"] += 1
            if count:
                arr = np.ctypeslib.as_array(data, shape=(count,))
            else:
                arr = np.empty(0, np.float64)
            result = self._py_all_reduce_sum(arr)
            if result is not None and result is not arr:
                res = np.asarray(result, dtype=np.float64)
                if res.size != count:
                    raise ValueError(f"all_reduce_sum returned {res.size} values, expected {count}")
                arr[...] = res.reshape(arr.shape)
            return 0
        except BaseException as e:  # never propagate through C
            self.last_exception = e
            return 1


# ============================ runtime ============================


@dataclass(frozen=True)
class RuntimeStats:
    num_threads: int
    arena_allocated: int
    arena_peak: int
    arena_active: int
    heap_saved: int
    heap_saved_peak: int
    live_saved_states: int
    dedup_hits: int
    dedup_misses: int
    budget_bytes: int
    communicator_bytes: int


class _Handle:
    """Owns one C handle; close() destroys it exactly once."""

    _destroy_name = ""
    _kind = ""

    def __init__(self):
        self._h = None
        self._close_lock = threading.Lock()

    @property
    def closed(self):
        return self._h is None

    def _handle(self):
        h = self._h
        if h is None:
            raise ValueError(f"operation on a closed {self._kind}")
        return h

    def close(self):
        """Releases the handle. Idempotent."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ did not finish
            return
        with lock:
            h, self._h = self._h, None
        if h is not None:
            getattr(_ffi, self._destroy_name)(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass


class Runtime(_Handle):
    """An edkm runtime: offload arena (with optional byte budget), worker threads, communicator.

    saved_mode: a SavedMode (or its name, e.g. "histogram", "dkm", "shard").
    keep_weights: HISTOGRAM mode keeps the weights' 16-bit keys so backward may omit the weights.
    communicator: a Communicator, or None for one process."""

    _destroy_name = "edkm_runtime_destroy"
    _kind = "Runtime"

    def __init__(self, num_threads=0, budget_bytes=0, saved_mode=SavedMode.HISTOGRAM, keep_weights=False,
                 communicator=None):
        super().__init__()
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(f"communicator must be an edkm.Communicator or None, got {type(communicator).__name__}")
        cfg = _ffi.edkm_runtime_config()
        _ffi.edkm_runtime_config_init(byref(cfg))
        cfg.num_threads = _u32(num_threads, "num_threads")
        cfg.budget_bytes = _u64(budget_bytes, "budget_bytes")
        cfg.saved_mode = int(_enum_value(SavedMode, saved_mode, "saved_mode"))
        cfg.keep_weights = 1 if keep_weights else 0
        self._communicator = communicator
        if communicator is not None:
            cfg.communicator = ctypes.pointer(communicator._struct)
        h = _ffi.edkm_runtime_p()
        _check(_ffi.edkm_runtime_create(byref(cfg), byref(h)), "edkm_runtime_create", communicator)
        self._h = h
        self.saved_mode = SavedMode(cfg.saved_mode)
        self.keep_weights = bool(keep_weights)

    @property
    def communicator(self):
        return self._communicator

    def set_budget(self, budget_bytes):
        """Changes the arena byte budget (0 = unlimited)."""
        _check(_ffi.edkm_runtime_set_budget(self._handle(), _u64(budget_bytes, "budget_bytes")),
               "edkm_runtime_set_budget")

    def reset_peak(self):
        _check(_ffi.edkm_runtime_reset_peak(self._handle()), "edkm_runtime_reset_peak")

    def stats(self):
        """A RuntimeStats snapshot of the arena and saved-state counters."""
        s = _ffi.edkm_runtime_stats()
        s.struct_size = sizeof(_ffi.edkm_runtime_stats)
        _check(_ffi.edkm_runtime_get_stats(self._handle(), byref(s)), "edkm_runtime_get_stats")
        return RuntimeStats(**{name: getattr(s, name) for name, _ in _ffi.edkm_runtime_stats._fields_
                               if name != "struct_size"})

    def layer(self, shape, **kwargs):
        """Shorthand for Layer(self, shape, **kwargs)."""
        return Layer(self, shape, **kwargs)

    def __repr__(self):
        state = "closed" if self.closed else f"saved_mode={self.saved_mode.name}"
        return f"<edkm.Runtime {state}>"


# ============================ layer ============================


@dataclass(frozen=True)
class LayerStats:
    iterations: int
    forwards: int
    distinct_values: int
    algorithm: object  # an Algorithm, or the raw int if unknown to this binding
    inertia: float
    effective_tau: float = 0.0
    attention_entropy: float = 0.0


def unpack_labels(packed, bits, groups, labels_per_group):
    """Decode export's packed indices: returns uint16 labels of shape (groups, labels_per_group).

    Layout (edkm.h): each group's slice starts on a byte boundary; label n occupies stream bits
    n*bits .. n*bits+bits-1, stream bit b being bit (b % 8) of byte b // 8 (LSB first)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    if groups < 1 or packed.size % groups:
        raise ValueError(f"packed has {packed.size} bytes, not a multiple of groups={groups}")
    per = packed.size // groups
    need = -(-labels_per_group * bits // 8)
    if per < need:
        raise ValueError(f"packed holds {per} bytes per group, {need} needed")
    stream = np.unpackbits(packed.reshape(groups, per), axis=1, bitorder="little")
    stream = stream[:, : labels_per_group * bits].reshape(groups, labels_per_group, bits).astype(np.uint16)
    return (stream << np.arange(bits, dtype=np.uint16)).sum(axis=-1, dtype=np.uint16)


#: lut_dtype names -> edkm_lut_dtype.
LUT_DTYPES = {"f32": _ffi.EDKM_LUT_F32, "i8": _ffi.EDKM_LUT_INT8, "u8": _ffi.EDKM_LUT_UINT8}
CHANNEL_SCALES = {"none": _ffi.EDKM_CHANNEL_SCALE_NONE, "min_max": _ffi.EDKM_CHANNEL_SCALE_MIN_MAX,
                  "abs": _ffi.EDKM_CHANNEL_SCALE_ABS_MAX}


def lut_quantization(lut, lut_dtype):
    """(scale, zero_point) of one LUT (any array of its values) for lut_dtype 'i8' (symmetric, zero
    point 0) or 'u8' (affine): the library's per-LUT quantization parameters (edkm_lut_dtype), in
    float64. Dequantized values are (q - zero_point) * scale."""
    c = np.asarray(lut, dtype=np.float64).ravel()
    if lut_dtype == "i8":
        peak = np.abs(c).max() if c.size else 0.0
        return (peak / 127 if peak > 0 else 1.0), 0.0
    if lut_dtype == "u8":
        lo, hi = min(c.min(), 0.0), max(c.max(), 0.0)
        scale = (hi - lo) / 255 if hi > lo else 1.0
        return scale, float(np.clip(np.round(-lo / scale), 0, 255))
    raise ValueError(f"lut_quantization: lut_dtype 'i8' or 'u8', got {lut_dtype!r}")


class Layer(_Handle):
    """One weight tensor's clustering: config + centroids.

    shape: the weight tensor's shape (shape[0] = output rows). Parameters mirror edkm_layer_config;
    init / algorithm / temperature_mode accept the enums or their names; f32_key_dtype is 'f32' (no
    rounding; f32 weights take the dense path), 'f16' or 'bf16'.
    Every keyword defaults to None, which keeps the library's default (edkm_layer_config_init):
    the binding restates none of them. tau, epsilon and prune_threshold left None follow the
    temperature mode inside the library: scale-free (the default) tau 0.1 = a factor of each
    group's k-means distortion; temperature_mode='absolute' gives coremltools' semantics and its
    default tau 1e-4. `config` holds the values the layer runs with (edkm_layer_get_config).
    enforce_zero=True fixes centroid 0 of every LUT at zero (coremltools' enforce_zero; needs
    prune_threshold > 0). lut_dtype 'f32' (default), 'i8' or 'u8': each LUT fake-quantized after
    every DKM iteration with one scale per LUT (and a zero point for u8), straight-through in the
    backward (edkm_lut_dtype in edkm.h; `lut_quantization` gives the scale and zero point).
    channel_scale None / 'none', 'min_max' or 'abs' (coremltools' per_channel_scaling_factor_scheme
    names): each output row divided by its factor before clustering and multiplied back after
    (edkm_channel_scale in edkm.h); `channel_scale_factors` gets / sets the factors (one per row),
    and the centroids, an export's LUT and `unpack`'s output are in the scaled units."""

    _destroy_name = "edkm_layer_destroy"
    _kind = "Layer"

    def __init__(self, runtime, shape, bits=None, cluster_dim=None, group_size=None, max_iterations=None, tau=None,
                 epsilon=None, zero_threshold=None, prune_threshold=None, init=None,
                 algorithm=None, f32_key_dtype=None, seed=None, temperature_mode=None,
                 enforce_zero=None, lut_dtype=None, channel_scale=None):
        super().__init__()
        if not isinstance(runtime, Runtime):
            raise TypeError(f"runtime must be an edkm.Runtime, got {type(runtime).__name__}")
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        shape = tuple(_i64(s, f"shape[{i}]") for i, s in enumerate(shape))
        cfg = _ffi.edkm_layer_config()
        _ffi.edkm_layer_config_init(byref(cfg))
        given = dict(
            bits=(bits, lambda v: _u32(v, "bits")),
            cluster_dim=(cluster_dim, lambda v: _u32(v, "cluster_dim")),
            group_size=(group_size, lambda v: _u32(v, "group_size")),
            max_iterations=(max_iterations, lambda v: _u32(v, "max_iterations")),
            init=(init, lambda v: int(_enum_value(Init, v, "init"))),
            tau=(tau, float), epsilon=(epsilon, float), zero_threshold=(zero_threshold, float),
            prune_threshold=(prune_threshold, float),
            algorithm=(algorithm, lambda v: int(_enum_value(Algorithm, v, "algorithm"))),
            f32_key_dtype=(f32_key_dtype, lambda v: int(_resolve_dtype(v, "f32_key_dtype"))),
            seed=(seed, lambda v: _u64(v, "seed")),
            temperature_mode=(temperature_mode, lambda v: int(_enum_value(TemperatureMode, v, "temperature_mode"))))
        for name, (value, convert) in given.items():
            if value is not None:  # None keeps what edkm_layer_config_init wrote
                setattr(cfg, name, convert(value))
        if enforce_zero is not None:
            if not isinstance(enforce_zero, (bool, np.bool_)):
                raise TypeError(f"enforce_zero must be a bool, got {type(enforce_zero).__name__}")
            cfg.enforce_zero = int(enforce_zero)
        if lut_dtype is not None:
            if lut_dtype not in LUT_DTYPES:
                raise ValueError(f"lut_dtype must be one of {', '.join(LUT_DTYPES)}, got {lut_dtype!r}")
            cfg.lut_dtype = LUT_DTYPES[lut_dtype]
        if channel_scale is not None:
            if channel_scale not in CHANNEL_SCALES:
                raise ValueError(f"channel_scale must be one of {', '.join(CHANNEL_SCALES)}, got {channel_scale!r}")
            cfg.channel_scale = CHANNEL_SCALES[channel_scale]
        self._runtime = runtime  # keeps the communicator (and its callbacks) alive
        c_shape = (ctypes.c_int64 * max(len(shape), 1))(*shape)
        h = _ffi.edkm_layer_p()
        _check(_ffi.edkm_layer_create(runtime._handle(), byref(cfg), c_shape, len(shape), byref(h)),
               "edkm_layer_create")
        self._h = h
        self.shape = shape
        self.numel = int(np.prod(shape, dtype=np.int64))
        self.bits = cfg.bits
        self.k = 1 << cfg.bits
        self.cluster_dim = cfg.cluster_dim
        self.group_size = cfg.group_size
        resolved = _ffi.edkm_layer_config()
        _ffi.edkm_layer_config_init(byref(resolved))
        _check(_ffi.edkm_layer_get_config(h, byref(resolved)), "edkm_layer_get_config")
        self.config = {name: getattr(resolved, name) for name, _ in _ffi.edkm_layer_config._fields_
                       if name != "struct_size"}
        n = c_size_t()
        _check(_ffi.edkm_layer_centroid_count(h, byref(n)), "edkm_layer_centroid_count")
        self.centroid_count = n.value
        self.groups = n.value // (self.k * self.cluster_dim) if self.k * self.cluster_dim else 0

    @property
    def runtime(self):
        return self._runtime

    def _comm(self):
        return self._runtime._communicator

    # ---- centroids ----

    @property
    def centroids(self):
        """A float32 copy of the centroids, shape (groups, 2^bits, cluster_dim)."""
        out = np.empty((self.groups, self.k, self.cluster_dim), np.float32)
        _check(_ffi.edkm_layer_get_centroids(self._handle(), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                             out.size), "edkm_layer_get_centroids")
        return out

    @centroids.setter
    def centroids(self, value):
        self.set_centroids(value)

    def set_centroids(self, value):
        """Replaces the centroids: float32, C-contiguous, shape (groups, 2^bits, cluster_dim) or flat."""
        if not isinstance(value, np.ndarray):
            raise TypeError(f"centroids must be a numpy.ndarray of float32, got {type(value).__name__}")
        if value.dtype != np.float32:
            raise TypeError(f"centroids must be float32, got {value.dtype} (no implicit conversion is done)")
        _check_layout(value, "centroids")
        want = (self.groups, self.k, self.cluster_dim)
        if value.shape not in (want, (self.centroid_count,)):
            raise ValueError(f"centroids must have shape {want} (or ({self.centroid_count},)), got {value.shape}")
        _check(_ffi.edkm_layer_set_centroids(self._handle(), value.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                             value.size), "edkm_layer_set_centroids")

    @property
    def channel_scale_factors(self):
        """A float32 copy of the channel scale factors, shape (shape[0],) (edkm_layer_get_channel_scale)."""
        out = np.empty(self.shape[0], np.float32)
        _check(_ffi.edkm_layer_get_channel_scale(self._handle(), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                 out.size), "edkm_layer_get_channel_scale")
        return out

    @channel_scale_factors.setter
    def channel_scale_factors(self, value):
        """Replaces the factors: float32, C-contiguous, shape[0] values, each finite and > 0."""
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            raise TypeError("channel scale factors must be a numpy.ndarray of float32 (no implicit conversion is done)")
        _check_layout(value, "channel scale factors")
        _check(_ffi.edkm_layer_set_channel_scale(self._handle(), value.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                 value.size), "edkm_layer_set_channel_scale")

    def init_centroids(self, weights, *, dtype=None):
        """(Re)initialises the centroids from the weights with the layer's init method."""
        code = _array_dtype(weights, dtype, "weights")
        _check_layout(weights, "weights")
        _check(_ffi.edkm_layer_init_centroids(self._handle(), weights.ctypes.data, code, weights.size),
               "edkm_layer_init_centroids", self._comm())

    # ---- training ----

    def forward(self, weights, out_dtype=None, *, dtype=None, save=True, out=None):
        """Soft-clustered weights w~ (same shape as weights).

        out_dtype: 'f32' or the weights' dtype (default: the weights' dtype).
        save=True returns (out, SavedState) for the backward; save=False returns out alone.
        out: an optional caller-allocated output array (written in place, returned as is)."""
        code = _array_dtype(weights, dtype, "weights")
        _check_layout(weights, "weights")
        if out is None:
            ocode = code if out_dtype is None else _resolve_dtype(out_dtype, "out_dtype")
            out = np.empty(weights.shape, _np_dtype(ocode, out_dtype, weights.dtype))
        else:
            ocode = _array_dtype(out, out_dtype, "out", fallback16=code)
            _check_layout(out, "out", writable=True)
            if out.size != weights.size:
                raise ValueError(f"out has {out.size} elements, weights {weights.size}")
        saved = _ffi.edkm_saved_state_p() if save else None
        status = _ffi.edkm_layer_forward(self._handle(), weights.ctypes.data, code, weights.size,
                                         out.ctypes.data, ocode, byref(saved) if save else None)
        _check(status, "edkm_layer_forward", self._comm())
        if not save:
            return out
        return out, SavedState(saved, self._runtime, code, weights.size, weights.shape)

    __call__ = forward

    def forward_shard(self, weights, offset, out_dtype=None, *, dtype=None, save=True, out=None):
        """Forward on this rank's slice of the tensor (a collective over the runtime's communicator):
        weights holds the tensor's flattened elements [offset, offset + weights.size). Returns the
        slice's w~ (and a SavedState whose backward takes this rank's slices)."""
        offset = _size_t(offset, "offset")  # 2**64 would wrap to slice 0
        code = _array_dtype(weights, dtype, "weights")
        _check_layout(weights, "weights")
        if out is None:
            ocode = code if out_dtype is None else _resolve_dtype(out_dtype, "out_dtype")
            out = np.empty(weights.shape, _np_dtype(ocode, out_dtype, weights.dtype))
        else:
            ocode = _array_dtype(out, out_dtype, "out", fallback16=code)
            _check_layout(out, "out", writable=True)
            if out.size != weights.size:
                raise ValueError(f"out has {out.size} elements, weights {weights.size}")
        saved = _ffi.edkm_saved_state_p() if save else None
        status = _ffi.edkm_layer_forward_shard(self._handle(), weights.ctypes.data, code, offset, weights.size,
                                               out.ctypes.data, ocode, byref(saved) if save else None)
        _check(status, "edkm_layer_forward_shard", self._comm())
        if not save:
            return out
        return out, SavedState(saved, self._runtime, code, weights.size, weights.shape)

    def forward_histogram(self, keys, counts, offsets=None, key_dtype="f16", *, save=True, out=None):
        """The histogram form (edkm_layer_forward_histogram, the device split's host half).

        keys: uint16 array, per LUT partition its distinct keys (bit patterns of key_dtype, 'f16'
        or 'bf16'), strictly increasing, partitions concatenated; counts: float64 array of the
        same length (whole numbers adding up to each partition's element count); offsets: the
        groups + 1 partition offsets into keys (None: one partition). out: an optional float64
        array of len(keys) for the soft values. Returns (soft_values, HistogramState) with save,
        soft_values alone without."""
        kcode = _resolve_dtype(key_dtype, "key_dtype")
        keys = np.asarray(keys)
        counts = np.asarray(counts)
        if keys.dtype != np.uint16:
            raise TypeError(f"keys must be uint16 bit patterns, got {keys.dtype}")
        if counts.dtype != np.float64:
            raise TypeError(f"counts must be float64, got {counts.dtype}")
        offsets = np.asarray([0, keys.size] if offsets is None else offsets)
        if offsets.dtype.kind not in "iu" or offsets.ndim != 1 or offsets.size < 2:
            raise TypeError("offsets must be a 1-D integer array of groups + 1 entries")
        if (offsets < 0).any():
            raise ValueError("offsets must be non-negative")
        offsets = np.ascontiguousarray(offsets, dtype=np.uintp)
        for arr, name in ((keys, "keys"), (counts, "counts")):
            _check_layout(arr, name)
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if keys.size != counts.size:
            raise ValueError(f"keys has {keys.size} entries, counts {counts.size}")
        total = int(offsets[-1])
        if total != keys.size or int(offsets.max()) > keys.size:  # the library reads offsets[-1] entries
            raise ValueError(f"offsets end at {total} (max {int(offsets.max())}), keys has {keys.size} entries")
        if out is None:
            out = np.empty(keys.size, np.float64)
        else:
            _check_layout(out, "out", writable=True)
            if out.dtype != np.float64 or out.size != keys.size:
                raise ValueError(f"out must be float64 with {keys.size} entries, got {out.dtype} {out.size}")
        saved = _ffi.edkm_saved_state_p() if save else None
        status = _ffi.edkm_layer_forward_histogram(self._handle(), kcode, keys.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)),
                                                   counts.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                                   offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_size_t)), offsets.size - 1,
                                                   out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                                   byref(saved) if save else None)
        _check(status, "edkm_layer_forward_histogram", self._comm())
        if not save:
            return out
        return out, HistogramState(saved, self._runtime, keys.size)

    def stats(self):
        """LayerStats of the last forward."""
        s = _ffi.edkm_layer_stats()
        s.struct_size = sizeof(_ffi.edkm_layer_stats)
        _check(_ffi.edkm_layer_get_stats(self._handle(), byref(s)), "edkm_layer_get_stats")
        try:
            alg = Algorithm(s.algorithm)
        except ValueError:
            alg = s.algorithm
        return LayerStats(iterations=s.iterations, forwards=s.forwards, distinct_values=s.distinct_values,
                          algorithm=alg, inertia=s.inertia, effective_tau=s.effective_tau,
                          attention_entropy=s.attention_entropy)

    # ---- export ----

    def export_sizes(self):
        """(lut_count, packed_bytes) of export."""
        lut_count, packed_bytes = c_size_t(), c_size_t()
        _check(_ffi.edkm_layer_export_sizes(self._handle(), byref(lut_count), byref(packed_bytes)),
               "edkm_layer_export_sizes")
        return lut_count.value, packed_bytes.value

    def export(self, weights, lut_dtype="f32", *, dtype=None):
        """Hard palettization: returns (lut, packed).

        lut: shape (groups, 2^bits, cluster_dim) of lut_dtype ('f32' or 'f16');
        packed: uint8 array of packed_bytes, the labels `bits` bits each, LSB first, each group's
        slice starting on a byte boundary (see unpack_labels / Layer.labels)."""
        code = _array_dtype(weights, dtype, "weights")
        _check_layout(weights, "weights")
        lcode = _resolve_dtype(lut_dtype, "lut_dtype")
        lut_count, packed_bytes = self.export_sizes()
        lut = np.empty((self.groups, self.k, self.cluster_dim), _np_dtype(lcode, lut_dtype))
        if lut.size != lut_count:  # groups * k * d disagrees with the library: trust the library
            lut = np.empty(lut_count, lut.dtype)
        packed = np.empty(packed_bytes, np.uint8)
        status = _ffi.edkm_layer_export_sized(self._handle(), weights.ctypes.data, code, weights.size,
                                              lut.ctypes.data, lcode, lut.size,
                                              packed.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), packed.size)
        _check(status, "edkm_layer_export_sized")
        return lut, packed

    def unpack(self, lut, packed, out_dtype=None, *, lut_dtype=None, out=None):
        """The inverse of export: lut[label] for every weight, shape = the layer's shape.

        out_dtype: 'f32' (default), 'f16' or 'bf16'; or pass out= (any shape with numel elements)."""
        lcode = _array_dtype(lut, lut_dtype, "lut")
        _check_layout(lut, "lut")
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
            raise TypeError("packed must be a numpy uint8 array (as returned by export)")
        _check_layout(packed, "packed")
        if out is None:
            ocode = DType.F32 if out_dtype is None else _resolve_dtype(out_dtype, "out_dtype")
            out = np.empty(self.shape, _np_dtype(ocode, out_dtype))
        else:
            ocode = _array_dtype(out, out_dtype, "out")
            _check_layout(out, "out", writable=True)
            if out.size != self.numel:
                raise ValueError(f"out has {out.size} elements, the layer {self.numel}")
        status = _ffi.edkm_layer_unpack_sized(self._handle(), lut.ctypes.data, lcode, lut.size,
                                              packed.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), packed.size,
                                              out.ctypes.data, ocode, out.size)
        _check(status, "edkm_layer_unpack_sized")
        return out

    def labels(self, packed):
        """The hard labels from export's packed bytes, shape (numel // cluster_dim,), group-major
        (= element order of the d-vectors, since groups are consecutive rows)."""
        per_group = self.numel // self.cluster_dim // max(self.groups, 1)
        return unpack_labels(packed, self.bits, self.groups, per_group).reshape(-1)

    def __repr__(self):
        state = "closed" if self.closed else f"shape={self.shape} bits={self.bits} d={self.cluster_dim} groups={self.groups}"
        return f"<edkm.Layer {state}>"


# ============================ saved state ============================


class SavedState(_Handle):
    """What one forward keeps for its backward. One backward per state; close() frees its memory."""

    _destroy_name = "edkm_saved_state_destroy"
    _kind = "SavedState"

    def __init__(self, handle, runtime, weights_dtype, count, shape):
        super().__init__()
        self._h = handle
        self._runtime = runtime  # keeps the communicator alive
        self.weights_dtype = DType(weights_dtype)
        self.count = count
        self.shape = tuple(shape)

    @property
    def nbytes(self):
        """Bytes this saved state holds (arena or heap)."""
        b = c_uint64()
        _check(_ffi.edkm_saved_state_bytes(self._handle(), byref(b)), "edkm_saved_state_bytes")
        return b.value

    def backward(self, grad_out, weights=None, *, dtype=None, out=None):
        """dL/dw from dL/dw~ (grad_out, same dtype as the returned gradient).

        weights: the forward's weights (same dtype and size); required in HISTOGRAM mode unless the
        runtime has keep_weights, optional (and checked) otherwise."""
        gcode = _array_dtype(grad_out, dtype, "grad_out", fallback16=self.weights_dtype)
        _check_layout(grad_out, "grad_out")
        if weights is not None:
            wcode = _array_dtype(weights, None, "weights", fallback16=self.weights_dtype)
            _check_layout(weights, "weights")
            if wcode != self.weights_dtype:
                raise TypeError(f"weights are {wcode.name.lower()}, the forward's were "
                                f"{self.weights_dtype.name.lower()}")
            if weights.size != grad_out.size:  # the library reads `count` weights: guard the read
                raise ValueError(f"weights have {weights.size} elements, grad_out {grad_out.size}")
            wptr = weights.ctypes.data
        else:
            wptr = None
        if out is None:
            out = np.empty(grad_out.shape, grad_out.dtype)
        else:
            ocode = _array_dtype(out, None, "out", fallback16=gcode)
            _check_layout(out, "out", writable=True)
            if ocode != gcode:
                raise TypeError(f"out must have the gradient's dtype ({gcode.name.lower()}), got {out.dtype}")
            if out.size != grad_out.size:
                raise ValueError(f"out has {out.size} elements, grad_out {grad_out.size}")
        status = _ffi.edkm_saved_state_backward(self._handle(), grad_out.ctypes.data, out.ctypes.data, gcode,
                                                grad_out.size, wptr)
        _check(status, "edkm_saved_state_backward", self._runtime._communicator)
        return out

    def __repr__(self):
        return f"<edkm.SavedState {'closed' if self.closed else f'shape={self.shape}'}>"


class HistogramState(_Handle):
    """What a histogram-form forward keeps (U-sized data in the arena). One backward; close() frees."""

    _destroy_name = "edkm_saved_state_destroy"
    _kind = "HistogramState"

    def __init__(self, handle, runtime, count):
        super().__init__()
        self._h = handle
        self._runtime = runtime
        self.count = count  # the forward's total distinct keys U

    @property
    def nbytes(self):
        """Bytes this saved state holds in the arena."""
        b = c_uint64()
        _check(_ffi.edkm_saved_state_bytes(self._handle(), byref(b)), "edkm_saved_state_bytes")
        return b.value

    def backward(self, grad_sums, *, h=None, r=None):
        """(h, r): float64 per-key tables with dL/dw_i = g_i h[key_i] + r[key_i], from grad_sums
        (float64, U entries: the upstream gradient summed per key, in the forward's key order).
        h and r: optional float64 output arrays of U entries."""
        grad_sums = np.asarray(grad_sums)
        if grad_sums.dtype != np.float64:
            raise TypeError(f"grad_sums must be float64, got {grad_sums.dtype}")
        _check_layout(grad_sums, "grad_sums")
        outs = []
        for arr, name in ((h, "h"), (r, "r")):
            if arr is None:
                arr = np.empty(grad_sums.size, np.float64)
            else:
                _check_layout(arr, name, writable=True)
                if arr.dtype != np.float64 or arr.size != grad_sums.size:
                    raise ValueError(f"{name} must be float64 with {grad_sums.size} entries")
            outs.append(arr)
        status = _ffi.edkm_saved_state_backward_histogram(self._handle(), grad_sums.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                                          grad_sums.size, outs[0].ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                                          outs[1].ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        _check(status, "edkm_saved_state_backward_histogram", self._runtime._communicator)
        return outs[0], outs[1]

    def __repr__(self):
        return f"<edkm.HistogramState {'closed' if self.closed else f'U={self.count}'}>"


# ============================ bf16 helpers (explicit conversions) ============================


def f32_to_bf16(x):
    """float32 array -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_to_f32(b):
    """bfloat16 bit patterns (uint16 or ml_dtypes.bfloat16) -> float32 array."""
    b = np.asarray(b)
    if BFLOAT16 is not None and b.dtype == BFLOAT16:
        b = b.view(np.uint16)
    if b.dtype != np.uint16:
        raise TypeError(f"expected uint16 bf16 bit patterns, got {b.dtype}")
    return (b.astype(np.uint32) << 16).view(np.float32)
