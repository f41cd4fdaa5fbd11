"""The palettized safetensors format (include/edkm-palettized-format.md), shared with the CLI.

No torch here: the records of a file's metadata, their checks, and the unpacking of one tensor
through the library (edkm_layer_create checks the geometry, edkm_layer_unpack decodes the labels).
edkm.torch.export_safetensors / load_safetensors build on it; a numpy user can call `records` and
`unpack` on tensors read with safetensors.numpy.

A file holds, per palettized tensor W: `W.lut` (F32/F16/BF16, (groups, 2^bits, cluster_dim)),
`W.indices` (U8, (groups, bytes_per_group), labels LSB first, each group byte-aligned), and the
metadata entries "edkm.format": "palettized-1" and "edkm.tensor.W": {"dtype", "shape", "bits",
"group_size", "cluster_dim", "lut", "indices"}. Format version 2 adds the optional record field
"scale": `W.scale` (F32, (shape[0],)), the channel scale factors, row r unpacked as lut[label] x
scale[r]; a file is version 2 when one of its records has a scale (readers of version 1 refuse it
instead of misreading it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from . import core as _core

FORMAT_KEY = "edkm.format"
FORMAT_VALUE = "palettized-1"
FORMAT_MAJOR, FORMAT_MINOR = 1, 0
SCALED_FORMAT_VALUE = "palettized-2"  # version 2.0: version 1.0 plus the record field "scale"
SCALED_FORMAT_MAJOR = 2
_MINORS = {FORMAT_MAJOR: FORMAT_MINOR, SCALED_FORMAT_MAJOR: 0}  # the newest minor read, per major
VERSION_KEY = "edkm.version"
TENSOR_PREFIX = "edkm.tensor."
RESERVED_PREFIX = "edkm."

# The older form edkm.torch wrote (read, never written).
LEGACY_FORMAT_KEY = "format"
LEGACY_FORMAT_VALUE = "edkm.palettized.v1"
LEGACY_VERSION_KEY = "edkm_version"
_LEGACY_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

DTYPES = ("F32", "F16", "BF16")
_FIELDS = ("dtype", "shape", "bits", "group_size", "cluster_dim", "lut", "indices")


class FormatError(ValueError):
    """A file (or metadata) that is not a valid palettized file of a version this edkm reads."""


@dataclass
class Record:
    """One palettized tensor's metadata record. dtype: the original dtype ("F32", "F16", "BF16");
    layer: an edkm.Layer of its geometry (set by `records`), which unpacks it."""

    name: str
    dtype: str
    shape: tuple
    bits: int
    group_size: int
    cluster_dim: int
    lut: str
    indices: str
    scale: str | None = None
    layer: _core.Layer | None = None

    @property
    def metadata_key(self):
        return TENSOR_PREFIX + self.name

    def metadata_value(self):
        obj = {"dtype": self.dtype, "shape": list(self.shape), "bits": self.bits, "group_size": self.group_size,
               "cluster_dim": self.cluster_dim, "lut": self.lut, "indices": self.indices}
        if self.scale is not None:
            obj["scale"] = self.scale
        return json.dumps(obj, separators=(",", ":"))


def parse_version(text):
    """(major, minor) of an "edkm.format" value "palettized-<major>[.<minor>]"; FormatError if it
    is not one, or its major version is not the one this edkm reads."""
    m = re.fullmatch(r"palettized-([0-9]{1,6})(?:\.([0-9]{1,6}))?", text)
    if m is None:
        raise FormatError(f"unsupported {FORMAT_KEY} {text!r} (not 'palettized-<major>[.<minor>]'; "
                          f"this edkm reads {FORMAT_VALUE!r})")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    if major not in _MINORS:
        raise FormatError(f"unsupported {FORMAT_KEY} {text!r}: format major version {major}, this edkm reads "
                          f"major versions {FORMAT_MAJOR} and {SCALED_FORMAT_MAJOR} ({FORMAT_VALUE!r}, "
                          f"{SCALED_FORMAT_VALUE!r})")
    return major, minor


def is_palettized(metadata):
    """Whether metadata says the file is palettized (an edkm.* entry, or the older edkm.torch form)."""
    metadata = metadata or {}
    return any(k.startswith(RESERVED_PREFIX) for k in metadata) or metadata.get(LEGACY_FORMAT_KEY) == LEGACY_FORMAT_VALUE


def _parse(name, value, legacy, ignore_unknown, major=FORMAT_MAJOR):
    def bad(why):
        return FormatError(f"palettized tensor {name!r}: {why}")

    try:
        obj = json.loads(value)
    except ValueError as e:
        raise bad(f"metadata is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise bad(f"metadata is {type(obj).__name__}, not an object")
    known = _FIELDS[:5] if legacy else _FIELDS + (("scale",) if major >= SCALED_FORMAT_MAJOR else ())
    unknown = [k for k in obj if k not in known]
    if unknown and not ignore_unknown:
        raise bad(f"unknown metadata field {unknown[0]!r}")
    for f in known:
        if f not in obj and f != "scale":
            raise bad(f"missing metadata field {f!r}")

    def integer(f, v):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 40:
            raise bad(f"{f} must be a non-negative integer, got {v!r}")
        return v

    def string(f):
        if not isinstance(obj[f], str):
            raise bad(f"{f} must be a string, got {type(obj[f]).__name__}")
        return obj[f]

    dtype = string("dtype")
    dtype = _LEGACY_DTYPES.get(dtype) if legacy else dtype
    if dtype not in DTYPES:
        raise bad(f"original dtype {obj['dtype']!r} is not F32, F16 or BF16")
    if not isinstance(obj["shape"], list):
        raise bad(f"shape must be an array, got {type(obj['shape']).__name__}")
    shape = tuple(integer("shape entries", e) for e in obj["shape"])
    lut, indices = (name + ".lut", name + ".indices") if legacy else (string("lut"), string("indices"))
    if lut == indices:
        raise bad("lut and indices are the same tensor")
    scale = string("scale") if "scale" in obj and "scale" in known else None
    if scale is not None and scale in (lut, indices):
        raise bad("scale is the same tensor as lut or indices")
    return Record(name, dtype, shape, integer("bits", obj["bits"]), integer("group_size", obj["group_size"]),
                  integer("cluster_dim", obj["cluster_dim"]), lut, indices, scale)


def _is_legacy(metadata):
    return FORMAT_KEY not in metadata and metadata.get(LEGACY_FORMAT_KEY) == LEGACY_FORMAT_VALUE


def _entries(metadata, tensors):
    """[(name, value, legacy, ignore_unknown, major version)] of the records metadata holds."""
    if _is_legacy(metadata):
        return [(k, v, True, False, FORMAT_MAJOR) for k, v in metadata.items() if k + ".lut" in tensors]
    entries = [(k[len(TENSOR_PREFIX):], v) for k, v in metadata.items() if k.startswith(TENSOR_PREFIX)]
    if FORMAT_KEY not in metadata:
        if entries:
            raise FormatError(f"metadata has {TENSOR_PREFIX}* entries but no {FORMAT_KEY}")
        return []
    major, minor = parse_version(metadata[FORMAT_KEY])
    return [(n, v, False, minor > _MINORS[major], major) for n, v in entries]


def records(metadata, tensors, runtime):
    """The palettized tensors metadata describes, checked against the file's tensors.

    metadata: the file's {key: value}; tensors: {name: (dtype, shape)} with safetensors dtype
    names; runtime: the edkm.Runtime the records' layers are made in. Raises FormatError on a
    record that breaks a rule of the format (its geometry checked by edkm_layer_create), a LUT or
    indices tensor missing or of the wrong dtype or shape, a tensor claimed twice, or a name that
    collides with a tensor kept as it is."""
    metadata = metadata or {}
    out = []
    for name, value, legacy, ignore_unknown, major in _entries(metadata, tensors):
        r = _parse(name, value, legacy, ignore_unknown, major)  # legacy: indices stored flat, (packed_bytes,)
        where = f"palettized tensor {name!r}"
        try:
            r.layer = _core.Layer(runtime, r.shape, bits=r.bits, group_size=r.group_size, cluster_dim=r.cluster_dim)
        except (_core.EdkmError, ValueError, TypeError, OverflowError) as e:
            raise FormatError(f"{where}: {e}") from None
        lut_count, packed_bytes = r.layer.export_sizes()
        groups = r.layer.groups
        expect = {r.lut: (("F32", "F16", "BF16"), (groups, r.layer.k, r.cluster_dim)),
                  r.indices: (("U8",), (groups, packed_bytes // groups))}
        if r.scale is not None:
            expect[r.scale] = (("F32",), (r.shape[0],))
        for t, (dtypes, shape) in expect.items():
            what = {r.lut: "LUT", r.indices: "indices"}.get(t, "scale")
            if t not in tensors:
                raise FormatError(f"{where}: its {what} tensor {t!r} is missing")
            dt, sh = tensors[t]
            if dt not in dtypes:
                raise FormatError(f"{where}: {what} dtype is {dt}, not {' or '.join(dtypes)}")
            if tuple(sh) != shape and not (legacy and t == r.indices and tuple(sh) == (packed_bytes,)):
                raise FormatError(f"{where}: {what} shape is {list(sh)}, expected {list(shape)}")
        out.append(r)
    claimed = set()
    for r in out:
        for t in (r.lut, r.indices) + ((r.scale,) if r.scale is not None else ()):
            if t in claimed:
                raise FormatError(f"tensor {t!r} is claimed by two palettized tensors")
            claimed.add(t)
    names = set(tensors) - claimed
    for r in out:
        if r.name in names:
            raise FormatError(f"palettized tensor {r.name!r} would collide with another tensor of that name")
        names.add(r.name)
    return out


def plain_metadata(metadata, tensors):
    """The entries of metadata that do not describe the palettization (the model's own)."""
    metadata = metadata or {}
    if _is_legacy(metadata):
        return {k: v for k, v in metadata.items()
                if k not in (LEGACY_FORMAT_KEY, LEGACY_VERSION_KEY) and k + ".lut" not in tensors}
    return {k: v for k, v in metadata.items() if not k.startswith(RESERVED_PREFIX)}


def file_metadata(recs, extra=None):
    """The metadata a writer stores: format, version, one entry per record, then extra (the
    model's own entries, whose keys must not start with "edkm.")."""
    scaled = any(r.scale is not None for r in recs)
    meta = {FORMAT_KEY: SCALED_FORMAT_VALUE if scaled else FORMAT_VALUE,
            VERSION_KEY: f"libedkm {_core.library_version()}"}
    for r in recs:
        meta[r.metadata_key] = r.metadata_value()
    for k, v in (extra or {}).items():
        if str(k).startswith(RESERVED_PREFIX):
            raise ValueError(f"metadata key {k!r}: keys starting with {RESERVED_PREFIX!r} are reserved for the format")
        meta[str(k)] = str(v)
    return meta


def unpack(record, lut, packed, out=None, scale=None):
    """The dense tensor of a record (edkm_layer_unpack): lut[label] rounded to record.dtype; with a
    scale (the record's scale tensor: float32, (shape[0],), finite and > 0) lut[label] x scale[row]
    in float32, rounded once to record.dtype.

    lut: numpy float32 or float16 (a BF16 LUT widened to float32 first: exact); packed: numpy
    uint8. Returns out (or a new array of record.shape: float32, float16, or uint16 bfloat16 bit
    patterns)."""
    lut, packed = np.ascontiguousarray(lut).reshape(-1), np.ascontiguousarray(packed).reshape(-1)
    if (scale is None) != (record.scale is None):
        raise FormatError(f"palettized tensor {record.name!r}: " +
                          ("its scale tensor is needed" if scale is None else "has no scale tensor"))
    if scale is None:
        return record.layer.unpack(lut, packed, record.dtype.lower(), out=out)
    scale = np.asarray(scale, np.float32).reshape(-1)
    if scale.shape != (record.shape[0],) or not (np.isfinite(scale).all() and (scale > 0).all()):
        raise FormatError(f"palettized tensor {record.name!r}: its scale must hold {record.shape[0]} finite "
                          f"factors > 0")
    wide = record.layer.unpack(lut, packed, "f32").reshape(record.shape[0], -1) * scale[:, None]
    dense = {"F32": lambda a: a, "F16": lambda a: a.astype(np.float16), "BF16": _core.f32_to_bf16}[record.dtype](
        np.ascontiguousarray(wide, np.float32).reshape(record.shape))
    if out is None:
        return dense
    np.copyto(out.reshape(record.shape), dense.reshape(record.shape))
    return out
