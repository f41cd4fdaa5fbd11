"""The per-call contract of include/edkm.h: every function that returns an edkm_status lists, after
"Returns:" in its comment, the statuses it can give; each status named there exists; and the
statuses the library really gives to a set of bad calls (one or more per function, each aimed at
one status) are the ones aimed at and are listed for that function. Part 1 needs only the header;
part 2 loads the library."""

import ctypes
import re

import numpy as np
import pytest

from conftest import HEADER

# ============================ part 1: the header ============================


def documented_statuses(text):
    """name -> set of status names after "Returns:" in the comment right before its declaration
    ("those of edkm_x" resolved; "cannot fail" = empty); None for functions returning void."""
    decls = list(re.finditer(r"(/\*(?:(?!\*/).)*\*/)\s*EDKM_API\s+([^;(]*?)\b(edkm_[a-z_]+)\s*\(", text, re.S))
    raw = {}
    for m in decls:
        comment, ret, name = m.group(1), " ".join(m.group(2).split()), m.group(3)
        if ret == "void":
            raw[name] = None
            continue
        assert "Returns:" in comment, f"{name}: no 'Returns:' in its comment"
        after = comment.split("Returns:", 1)[1]
        raw[name] = (set(re.findall(r"\bEDKM_ERR_[A-Z_]+\b", after)), re.findall(r"those of (edkm_[a-z_]+)", after),
                     "cannot fail" in after)
    out = {}
    for name, v in raw.items():
        if v is None:
            out[name] = None
            continue
        names, refs, cannot_fail = v
        for r in refs:
            names |= raw[r][0]
        assert names or cannot_fail, f"{name}: 'Returns:' names no status and does not say 'cannot fail'"
        out[name] = names
    return out


@pytest.fixture(scope="module")
def documented():
    return documented_statuses(HEADER.read_text())


def test_every_function_has_a_documented_status_list(documented, header_text):
    names = set(re.findall(r"EDKM_API\s+[^;(]*?\b(edkm_[a-z_]+)\s*\(", header_text))
    assert names == set(documented), f"without a comment right before: {sorted(names - set(documented))}"
    enum = set(re.findall(r"\b(EDKM_(?:OK|ERR_[A-Z_]+))\s*=", header_text))
    for name, statuses in documented.items():
        assert statuses is None or statuses <= enum, (name, statuses - enum)


def test_additions_after_0_1_are_marked():
    text = HEADER.read_text()
    for name in ["edkm_layer_forward_shard", "edkm_layer_forward_histogram", "edkm_saved_state_backward_histogram",
                 "edkm_layer_get_config", "edkm_layer_export_sized", "edkm_layer_unpack_sized"]:
        comment = re.search(r"(/\*(?:(?!\*/).)*\*/)\s*EDKM_API\s+[^;(]*?\b" + name + r"\s*\(", text, re.S).group(1)
        assert re.search(r"since 0\.[2-9]", comment), name
    assert "Deprecated since 0.4" in text
    fence = text.index("Experimental tier")
    for knob in ["EDKM_SAVED_DKM = 1", "EDKM_ALGORITHM_DENSE = 1"]:
        assert text.index(knob) > fence, f"{knob} is not in the experimental tier"


# ============================ part 2: statuses the library gives ============================

F32, F16, BF16, BAD_DTYPE = 0, 1, 2, 7


def provocations(lib, rt):
    """(function, expected status name, call) triples: each call aims at one status."""
    ffi = lib._ffi
    P = ctypes.POINTER
    u8 = lambda a: a.ctypes.data_as(P(ctypes.c_uint8))  # noqa: E731
    f32p = lambda a: a.ctypes.data_as(P(ctypes.c_float))  # noqa: E731
    f64p = lambda a: a.ctypes.data_as(P(ctypes.c_double))  # noqa: E731
    bogus = {k: ctypes.cast(0x10, t) for k, t in
             [("runtime", ffi.edkm_runtime_p), ("layer", ffi.edkm_layer_p), ("state", ffi.edkm_saved_state_p)]}
    R = rt._handle()
    shape = (ctypes.c_int64 * 2)(16, 16)
    n = 256
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, n).astype(np.float16)
    wnan = w.copy()
    wnan[3] = np.nan
    out = np.empty(n, np.float32)
    keep = []

    def layer(bits=2, **fields):
        cfg = ffi.edkm_layer_config()
        ffi.edkm_layer_config_init(ctypes.byref(cfg))
        cfg.bits = bits
        for k, v in fields.items():
            setattr(cfg, k, v)
        h = ffi.edkm_layer_p()
        assert ffi.edkm_layer_create(R, ctypes.byref(cfg), shape, 2, ctypes.byref(h)) == 0
        keep.append(h)
        return h

    L, fresh = layer(), layer()
    state = ffi.edkm_saved_state_p()
    assert ffi.edkm_layer_forward(L, w.ctypes.data, F16, n, out.ctypes.data, F32, ctypes.byref(state)) == 0
    done = ffi.edkm_saved_state_p()
    assert ffi.edkm_layer_forward(L, w.ctypes.data, F16, n, out.ctypes.data, F32, ctypes.byref(done)) == 0
    g = np.ones(n, np.float16)
    gin = np.empty(n, np.float16)
    assert ffi.edkm_saved_state_backward(done, g.ctypes.data, gin.ctypes.data, F16, n, w.ctypes.data) == 0
    lut_count, packed_bytes = ctypes.c_size_t(), ctypes.c_size_t()
    ffi.edkm_layer_export_sizes(L, ctypes.byref(lut_count), ctypes.byref(packed_bytes))
    lc, pb = lut_count.value, packed_bytes.value
    lut = np.empty(lc, np.float32)
    packed = np.zeros(pb, np.uint8)
    lutnan = np.full(lc, np.nan, np.float32)
    keys, counts = np.unique(w.view(np.uint16), return_counts=True)
    counts = counts.astype(np.float64)
    hist_out = np.empty(keys.size, np.float64)

    def cfg_of(kind, **fields):
        c = getattr(ffi, kind)()
        getattr(ffi, kind.replace("_config", "_config_init"))(ctypes.byref(c))
        for k, v in fields.items():
            setattr(c, k, v)
        return ctypes.byref(c)

    def create_runtime(**fields):
        h = ffi.edkm_runtime_p()
        s = ffi.edkm_runtime_create(cfg_of("edkm_runtime_config", **fields), ctypes.byref(h))
        if s == 0:
            ffi.edkm_runtime_destroy(h)
        return s

    def create_layer(runtime=R, dims=(16, 16), **fields):
        h = ffi.edkm_layer_p()
        s = ffi.edkm_layer_create(runtime, cfg_of("edkm_layer_config", **fields), (ctypes.c_int64 * 2)(*dims), 2,
                                  ctypes.byref(h))
        if s == 0:
            ffi.edkm_layer_destroy(h)
        return s

    def sized(kind, size):
        s = kind()
        s.struct_size = size
        return ctypes.byref(s)

    def histogram(layer_, key_dtype=F16, k=keys, parts=1):
        offsets = (ctypes.c_size_t * 3)(0, k.size, k.size)
        return ffi.edkm_layer_forward_histogram(layer_, key_dtype, k.ctypes.data_as(P(ctypes.c_uint16)),
                                                f64p(counts[: k.size]), offsets, parts, f64p(hist_out), None)

    hstate = ffi.edkm_saved_state_p()
    offsets = (ctypes.c_size_t * 2)(0, keys.size)
    assert ffi.edkm_layer_forward_histogram(L, F16, keys.ctypes.data_as(P(ctypes.c_uint16)), f64p(counts), offsets, 1,
                                            f64p(hist_out), ctypes.byref(hstate)) == 0
    h_, r_ = np.empty(keys.size), np.empty(keys.size)
    c = np.empty(lc, np.float32)
    cnan = np.full(lc, np.nan, np.float32)
    scaled = layer(channel_scale=1)
    factors = np.ones(16, np.float32)

    calls = [
        ("edkm_runtime_create", "NULL_POINTER", lambda: ffi.edkm_runtime_create(None, None)),
        ("edkm_runtime_create", "STRUCT_SIZE", lambda: create_runtime(struct_size=3)),
        ("edkm_runtime_create", "INVALID_ARGUMENT", lambda: create_runtime(num_threads=5000)),
        ("edkm_runtime_create", "INVALID_ARGUMENT", lambda: create_runtime(saved_mode=9)),
        ("edkm_runtime_set_budget", "NULL_POINTER", lambda: ffi.edkm_runtime_set_budget(None, 0)),
        ("edkm_runtime_set_budget", "INVALID_HANDLE", lambda: ffi.edkm_runtime_set_budget(bogus["runtime"], 0)),
        ("edkm_runtime_get_stats", "NULL_POINTER", lambda: ffi.edkm_runtime_get_stats(R, None)),
        ("edkm_runtime_get_stats", "STRUCT_SIZE", lambda: ffi.edkm_runtime_get_stats(R, sized(ffi.edkm_runtime_stats, 0))),
        ("edkm_runtime_get_stats", "INVALID_HANDLE",
         lambda: ffi.edkm_runtime_get_stats(bogus["runtime"], sized(ffi.edkm_runtime_stats, 8))),
        ("edkm_runtime_reset_peak", "INVALID_HANDLE", lambda: ffi.edkm_runtime_reset_peak(bogus["runtime"])),
        ("edkm_layer_create", "NULL_POINTER", lambda: ffi.edkm_layer_create(R, None, None, 2, None)),
        ("edkm_layer_create", "INVALID_HANDLE", lambda: create_layer(runtime=bogus["runtime"])),
        ("edkm_layer_create", "STRUCT_SIZE", lambda: create_layer(struct_size=5)),
        ("edkm_layer_create", "INVALID_ARGUMENT", lambda: create_layer(bits=9)),
        ("edkm_layer_create", "INVALID_ARGUMENT", lambda: create_layer(tau=-1.0)),
        ("edkm_layer_create", "DTYPE", lambda: create_layer(f32_key_dtype=BAD_DTYPE)),
        ("edkm_layer_create", "SHAPE", lambda: create_layer(dims=(3, 3), bits=4)),
        ("edkm_layer_get_config", "NULL_POINTER", lambda: ffi.edkm_layer_get_config(L, None)),
        ("edkm_layer_get_config", "STRUCT_SIZE", lambda: ffi.edkm_layer_get_config(L, sized(ffi.edkm_layer_config, 2))),
        ("edkm_layer_get_config", "INVALID_HANDLE",
         lambda: ffi.edkm_layer_get_config(bogus["layer"], sized(ffi.edkm_layer_config, 8))),
        ("edkm_layer_centroid_count", "NULL_POINTER", lambda: ffi.edkm_layer_centroid_count(L, None)),
        ("edkm_layer_centroid_count", "INVALID_HANDLE",
         lambda: ffi.edkm_layer_centroid_count(bogus["layer"], ctypes.byref(ctypes.c_size_t()))),
        ("edkm_layer_get_centroids", "SHAPE", lambda: ffi.edkm_layer_get_centroids(L, f32p(c), lc - 1)),
        ("edkm_layer_get_centroids", "STATE", lambda: ffi.edkm_layer_get_centroids(fresh, f32p(c), lc)),
        ("edkm_layer_set_centroids", "SHAPE", lambda: ffi.edkm_layer_set_centroids(fresh, f32p(c), lc + 1)),
        ("edkm_layer_set_centroids", "NON_FINITE", lambda: ffi.edkm_layer_set_centroids(fresh, f32p(cnan), lc)),
        ("edkm_layer_get_channel_scale", "NULL_POINTER", lambda: ffi.edkm_layer_get_channel_scale(scaled, None, 16)),
        ("edkm_layer_get_channel_scale", "INVALID_HANDLE",
         lambda: ffi.edkm_layer_get_channel_scale(bogus["layer"], f32p(factors), 16)),
        ("edkm_layer_get_channel_scale", "SHAPE", lambda: ffi.edkm_layer_get_channel_scale(scaled, f32p(factors), 15)),
        ("edkm_layer_get_channel_scale", "STATE", lambda: ffi.edkm_layer_get_channel_scale(scaled, f32p(factors), 16)),
        ("edkm_layer_get_channel_scale", "INVALID_ARGUMENT",
         lambda: ffi.edkm_layer_get_channel_scale(fresh, f32p(factors), 16)),
        ("edkm_layer_set_channel_scale", "NULL_POINTER", lambda: ffi.edkm_layer_set_channel_scale(scaled, None, 16)),
        ("edkm_layer_set_channel_scale", "INVALID_HANDLE",
         lambda: ffi.edkm_layer_set_channel_scale(bogus["layer"], f32p(factors), 16)),
        ("edkm_layer_set_channel_scale", "SHAPE", lambda: ffi.edkm_layer_set_channel_scale(scaled, f32p(factors), 17)),
        ("edkm_layer_set_channel_scale", "INVALID_ARGUMENT",
         lambda: ffi.edkm_layer_set_channel_scale(scaled, f32p(np.zeros(16, np.float32)), 16)),
        ("edkm_layer_set_channel_scale", "INVALID_ARGUMENT",
         lambda: ffi.edkm_layer_set_channel_scale(fresh, f32p(factors), 16)),
        ("edkm_layer_init_centroids", "DTYPE", lambda: ffi.edkm_layer_init_centroids(fresh, w.ctypes.data, BAD_DTYPE, n)),
        ("edkm_layer_init_centroids", "SHAPE", lambda: ffi.edkm_layer_init_centroids(fresh, w.ctypes.data, F16, n - 1)),
        ("edkm_layer_init_centroids", "NON_FINITE", lambda: ffi.edkm_layer_init_centroids(fresh, wnan.ctypes.data, F16, n)),
        ("edkm_layer_forward", "NULL_POINTER", lambda: ffi.edkm_layer_forward(L, None, F16, n, out.ctypes.data, F32, None)),
        ("edkm_layer_forward", "DTYPE", lambda: ffi.edkm_layer_forward(L, w.ctypes.data, BAD_DTYPE, n, out.ctypes.data, F32, None)),
        ("edkm_layer_forward", "DTYPE", lambda: ffi.edkm_layer_forward(L, w.ctypes.data, F16, n, out.ctypes.data, BF16, None)),
        ("edkm_layer_forward", "SHAPE", lambda: ffi.edkm_layer_forward(L, w.ctypes.data, F16, n + 1, out.ctypes.data, F32, None)),
        ("edkm_layer_forward", "NON_FINITE", lambda: ffi.edkm_layer_forward(L, wnan.ctypes.data, F16, n, out.ctypes.data, F32, None)),
        ("edkm_layer_forward_shard", "SHAPE",
         lambda: ffi.edkm_layer_forward_shard(L, w.ctypes.data, F16, n, 8, out.ctypes.data, F32, None)),
        ("edkm_layer_forward_shard", "INVALID_ARGUMENT",
         lambda: ffi.edkm_layer_forward_shard(layer(group_size=8), w.ctypes.data, F16, 0, n, out.ctypes.data, F32, None)),
        ("edkm_layer_forward_shard", "DTYPE",
         lambda: ffi.edkm_layer_forward_shard(L, w.ctypes.data, BAD_DTYPE, 0, n, out.ctypes.data, F32, None)),
        ("edkm_layer_get_stats", "STRUCT_SIZE", lambda: ffi.edkm_layer_get_stats(L, sized(ffi.edkm_layer_stats, 1))),
        ("edkm_layer_get_stats", "NULL_POINTER", lambda: ffi.edkm_layer_get_stats(L, None)),
        ("edkm_saved_state_backward", "SHAPE",
         lambda: ffi.edkm_saved_state_backward(state, g.ctypes.data, gin.ctypes.data, F16, n - 1, w.ctypes.data)),
        ("edkm_saved_state_backward", "DTYPE",
         lambda: ffi.edkm_saved_state_backward(state, g.ctypes.data, gin.ctypes.data, BAD_DTYPE, n, w.ctypes.data)),
        ("edkm_saved_state_backward", "NON_FINITE",
         lambda: ffi.edkm_saved_state_backward(state, wnan.ctypes.data, gin.ctypes.data, F16, n, w.ctypes.data)),
        ("edkm_saved_state_backward", "WEIGHTS_CHANGED",
         lambda: ffi.edkm_saved_state_backward(state, g.ctypes.data, gin.ctypes.data, F16, n, g.ctypes.data)),
        ("edkm_saved_state_backward", "STATE",
         lambda: ffi.edkm_saved_state_backward(state, g.ctypes.data, gin.ctypes.data, F16, n, None)),
        ("edkm_saved_state_backward", "STATE",
         lambda: ffi.edkm_saved_state_backward(done, g.ctypes.data, gin.ctypes.data, F16, n, w.ctypes.data)),
        ("edkm_saved_state_backward", "INVALID_HANDLE",
         lambda: ffi.edkm_saved_state_backward(bogus["state"], g.ctypes.data, gin.ctypes.data, F16, n, None)),
        ("edkm_saved_state_bytes", "NULL_POINTER", lambda: ffi.edkm_saved_state_bytes(state, None)),
        ("edkm_saved_state_bytes", "INVALID_HANDLE",
         lambda: ffi.edkm_saved_state_bytes(bogus["state"], ctypes.byref(ctypes.c_uint64()))),
        ("edkm_layer_export_sizes", "NULL_POINTER", lambda: ffi.edkm_layer_export_sizes(L, None, None)),
        ("edkm_layer_export", "DTYPE",
         lambda: ffi.edkm_layer_export(L, w.ctypes.data, F16, n, lut.ctypes.data, BF16, u8(packed), pb)),
        ("edkm_layer_export", "SHAPE",
         lambda: ffi.edkm_layer_export(L, w.ctypes.data, F16, n, lut.ctypes.data, F32, u8(packed), pb - 1)),
        ("edkm_layer_export", "STATE",
         lambda: ffi.edkm_layer_export(layer(), w.ctypes.data, F16, n, lut.ctypes.data, F32, u8(packed), pb)),
        ("edkm_layer_export_sized", "SHAPE",
         lambda: ffi.edkm_layer_export_sized(L, w.ctypes.data, F16, n, lut.ctypes.data, F32, lc + 1, u8(packed), pb)),
        ("edkm_layer_export_sized", "NON_FINITE",
         lambda: ffi.edkm_layer_export_sized(L, wnan.ctypes.data, F16, n, lut.ctypes.data, F32, lc, u8(packed), pb)),
        ("edkm_layer_unpack", "NON_FINITE",
         lambda: ffi.edkm_layer_unpack(L, lutnan.ctypes.data, F32, u8(packed), pb, out.ctypes.data, F32, n)),
        ("edkm_layer_unpack", "DTYPE",
         lambda: ffi.edkm_layer_unpack(L, lut.ctypes.data, F32, u8(packed), pb, out.ctypes.data, BAD_DTYPE, n)),
        ("edkm_layer_unpack_sized", "SHAPE",
         lambda: ffi.edkm_layer_unpack_sized(L, lut.ctypes.data, F32, lc - 1, u8(packed), pb, out.ctypes.data, F32, n)),
        ("edkm_layer_unpack_sized", "SHAPE",
         lambda: ffi.edkm_layer_unpack_sized(L, lut.ctypes.data, F32, lc, u8(packed), pb, out.ctypes.data, F32, n - 1)),
        ("edkm_layer_unpack_sized", "NULL_POINTER",
         lambda: ffi.edkm_layer_unpack_sized(L, None, F32, lc, u8(packed), pb, out.ctypes.data, F32, n)),
        ("edkm_layer_forward_histogram", "DTYPE", lambda: histogram(L, key_dtype=F32)),
        ("edkm_layer_forward_histogram", "SHAPE", lambda: histogram(L, parts=2)),
        ("edkm_layer_forward_histogram", "INVALID_ARGUMENT", lambda: histogram(L, k=keys[::-1].copy())),
        ("edkm_saved_state_backward_histogram", "SHAPE",
         lambda: ffi.edkm_saved_state_backward_histogram(hstate, f64p(hist_out), keys.size - 1, f64p(h_), f64p(r_))),
        ("edkm_saved_state_backward_histogram", "STATE",
         lambda: ffi.edkm_saved_state_backward_histogram(state, f64p(hist_out), keys.size, f64p(h_), f64p(r_))),
    ]

    def cleanup():
        for s in (state, done, hstate):
            ffi.edkm_saved_state_destroy(s)
        for h in keep:
            ffi.edkm_layer_destroy(h)

    return calls, cleanup


def test_the_library_gives_the_documented_statuses(lib, rt, documented):
    calls, cleanup = provocations(lib, rt)
    try:
        failures = []
        for name, want, call in calls:
            got = lib._ffi.edkm_status_name(call())
            got = got.decode() if isinstance(got, bytes) else got
            if got != "EDKM_ERR_" + want:
                failures.append(f"{name}: aimed at EDKM_ERR_{want}, got {got}")
            elif got not in documented[name]:
                failures.append(f"{name} gives {got}, not listed after 'Returns:' in the header")
        assert not failures, "\n".join(failures)
        provoked = {name for name, _, _ in calls}
        with_status = {n for n, s in documented.items() if s}
        assert with_status - provoked == set(), f"functions without a provocation: {sorted(with_status - provoked)}"
    finally:
        cleanup()
