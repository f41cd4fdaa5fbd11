"""The ctypes binding against include/edkm.h and the built libedkm.so.

Part 1 (no library needed): the declarations in edkm/_ffi.py mirror the header exactly: every
function with the C types of its prototype, every struct with the compiler's sizes and offsets,
every enum constant with the compiler's value.
Part 2 (library): loading, errors as EdkmError with the library's message, zero-copy buffers,
dtypes, export/unpack, lifetimes.
"""

import ctypes
import gc
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import HEADER, INSTALLED, PYTHON_DIR, REPO

# ============================ header parsing ============================


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return text


def header_code(text):
    """The header without comments and preprocessor lines."""
    code = strip_comments(text)
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("#"))


def header_function_names(text):
    """Names of every `edkm_xxx(` in the header's code (comments removed)."""
    return set(re.findall(r"\b(edkm_[a-z_]+)\s*\(", header_code(text)))


def header_prototypes(text):
    """name -> (return type, [param types]) of every EDKM_API declaration."""
    code = header_code(text)
    protos = {}
    for m in re.finditer(r"EDKM_API\s+([^;(]*?)\b(edkm_[a-z_]+)\s*\(([^;]*?)\)\s*;", code, re.S):
        ret = " ".join(m.group(1).split())
        params = " ".join(m.group(3).split())
        types_ = []
        if params != "void":
            for p in params.split(","):
                types_.append(param_type(p))
        protos[m.group(2)] = (ret, types_)
    return protos


def param_type(decl):
    """'const edkm_runtime_config *cfg' -> 'const edkm_runtime_config *'."""
    decl = " ".join(decl.split())
    m = re.match(r"^(.*?)\s*\b(\w+)$", decl)
    assert m, decl
    t = m.group(1).strip()
    return re.sub(r"\s*\*", " *", t).replace("* *", "**").strip()


def header_structs(text):
    """struct name -> [(field name, field C declaration)] in header order."""
    code = header_code(text)
    out = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*\1\s*;", code, re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            fp = re.match(r"^(.*?)\(\s*\*\s*(\w+)\s*\)\s*\((.*)\)$", decl)
            if fp:
                ret = fp.group(1).strip()
                params = [param_type(p) for p in fp.group(3).split(",")]
                fields.append((fp.group(2), ("fnptr", ret, params)))
            else:
                name = re.findall(r"\w+", decl)[-1]
                fields.append((name, param_type(decl)))
        out[m.group(1)] = fields
    return out


def header_enums(text):
    """enum typedef name -> {constant: value}."""
    code = header_code(text)
    out = {}
    for m in re.finditer(r"typedef\s+enum\s+(\w+)\s*\{(.*?)\}\s*\1\s*;", code, re.S):
        vals = {}
        for item in m.group(2).split(","):
            item = item.strip()
            if item:
                name, value = (s.strip() for s in item.split("="))
                vals[name] = int(value, 0)
        out[m.group(1)] = vals
    return out


OPAQUE = {"edkm_runtime", "edkm_layer", "edkm_saved_state"}
SCALARS = {
    "uint32_t": "c_uint32", "int32_t": "c_int32", "uint64_t": "c_uint64", "int64_t": "c_int64",
    "size_t": "c_size_t", "float": "c_float", "double": "c_double", "uint8_t": "c_uint8", "uint16_t": "c_uint16",
    "int": "c_int", "edkm_status": "c_int", "edkm_dtype": "c_int",
}


def expected_ctype(mod, ctype, is_return=False):
    """The ctypes type that mirrors C type `ctype` in the declarations module `mod`."""
    if ctype == "void":
        return None
    stars = ctype.count("*")
    base = ctype.replace("*", " ").replace("const", " ").split()
    assert len(base) == 1, ctype
    base = base[0]
    if base == "char" and stars == 1:
        return ctypes.c_char_p
    if base == "void":
        assert stars == 1, ctype
        return ctypes.c_void_p
    if base in SCALARS:
        t = getattr(ctypes, SCALARS[base])
    elif base in OPAQUE:
        t = getattr(mod, base)
    elif base in mod.STRUCTS:
        t = mod.STRUCTS[base]
    else:
        raise AssertionError(f"unmapped C type {ctype!r}")
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t


# ============================ part 1: declarations vs header ============================


def test_header_declares_the_functions_the_binding_knows(decls, header_text):
    names = header_function_names(header_text)
    protos = header_prototypes(header_text)
    assert names == set(protos), "every edkm_x( in the header's code is an EDKM_API declaration"
    assert len(names) >= 25
    assert names == set(decls.PROTOTYPES), (
        f"missing in _ffi: {sorted(names - set(decls.PROTOTYPES))}; "
        f"not in header: {sorted(set(decls.PROTOTYPES) - names)}"
    )
    # header order is kept
    order = [m.group(1) for m in re.finditer(r"EDKM_API\s+[^;(]*?\b(edkm_[a-z_]+)\s*\(", header_code(header_text))]
    assert list(decls.PROTOTYPES) == order


def test_prototype_types_mirror_header(decls, header_text):
    for name, (ret, params) in header_prototypes(header_text).items():
        restype, argtypes = decls.PROTOTYPES[name]
        assert restype == expected_ctype(decls, ret, True), f"{name}: return {ret}"
        want = [expected_ctype(decls, p) for p in params]
        assert argtypes == want, f"{name}: params {params}"


def test_prototype_comments_in_ffi_source(header_text):
    """Each PROTOTYPES entry in _ffi.py is preceded by its C prototype as a comment."""
    src = (PYTHON_DIR / "edkm" / "_ffi.py").read_text()
    for name, (ret, params) in header_prototypes(header_text).items():
        m = re.search(r"((?:\n\s*#[^\n]*)+)\n\s*\"" + name + r"\":", src)
        assert m, f"no comment block before {name}"
        comment = " ".join(line.strip().lstrip("#").strip() for line in m.group(1).strip().splitlines())
        assert name + "(" in comment.replace(" (", "("), f"{name}: comment is {comment!r}"
        assert comment.rstrip().endswith(");"), f"{name}: comment is {comment!r}"


def test_struct_fields_mirror_header(decls, header_text):
    structs = header_structs(header_text)
    assert set(structs) == set(decls.STRUCTS)
    for sname, fields in structs.items():
        cls = decls.STRUCTS[sname]
        assert [f for f, _ in cls._fields_] == [f for f, _ in fields], sname
        for (fname, ctype), (_, pytype) in zip(fields, cls._fields_):
            if isinstance(ctype, tuple):  # function pointer
                _, ret, params = ctype
                assert pytype._restype_ == expected_ctype(decls, ret)
                assert list(pytype._argtypes_) == [expected_ctype(decls, p) for p in params], f"{sname}.{fname}"
            else:
                assert pytype == expected_ctype(decls, ctype), f"{sname}.{fname}: {ctype}"


def test_enum_constants_mirror_header(decls, header_text):
    enums = header_enums(header_text)
    assert set(enums) == {"edkm_status", "edkm_dtype", "edkm_saved_mode", "edkm_init", "edkm_algorithm", "edkm_temperature_mode", "edkm_lut_dtype",
                          "edkm_channel_scale"}
    for ename, values in enums.items():
        for cname, value in values.items():
            assert getattr(decls, cname) == value, f"{ename}.{cname}"
    declared = {n for n in vars(decls) if re.fullmatch(r"EDKM_[A-Z0-9_]+", n) and not n.startswith("EDKM_VERSION")}
    assert declared == {c for v in enums.values() for c in v}
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#define EDKM_VERSION_{part} (\d+)", header_text)
        assert int(m.group(1)) == getattr(decls, f"EDKM_VERSION_{part}")


@pytest.fixture(scope="session")
def c_layout(decls, header_text, tmp_path_factory):
    """What the C compiler says about the header: struct sizes, field offsets/sizes/signedness,
    enum values (a tiny C program compiled with -Iinclude)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "edkm.h"', "int main(void) {"]
    for sname, cls in decls.STRUCTS.items():
        lines.append(f'printf("S {sname} %zu %zu\\n", sizeof({sname}), (size_t)_Alignof({sname}));')
        for fname, ftype in cls._fields_:
            is_int = ftype in (ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64)
            signed = f"(int)((__typeof__((({sname}*)0)->{fname}))-1 < 0)" if is_int else "-1"
            lines.append(
                f'printf("F {sname} {fname} %zu %zu %d\\n", offsetof({sname}, {fname}), '
                f"sizeof((({sname}*)0)->{fname}), {signed});"
            )
    for ename, values in header_enums(header_text).items():
        lines.append(f'printf("E {ename} %zu\\n", sizeof({ename}));')
        for cname in values:
            lines.append(f'printf("C {cname} %lld\\n", (long long){cname});')
    lines.append('printf("V %d\\n", EDKM_VERSION_NUMBER);')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("clayout")
    (d / "layout.c").write_text("\n".join(lines) + "\n")
    r = subprocess.run([cc, "-std=gnu99", "-Wall", "-Werror", "-I", str(REPO / "include"), "layout.c", "-o", "layout"],
                       cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(d / "layout")], capture_output=True, text=True, check=True).stdout
    info = {"S": {}, "F": {}, "E": {}, "C": {}, "V": None}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            info["S"][rest[0]] = (int(rest[1]), int(rest[2]))
        elif kind == "F":
            info["F"][(rest[0], rest[1])] = (int(rest[2]), int(rest[3]), int(rest[4]))
        elif kind == "E":
            info["E"][rest[0]] = int(rest[1])
        elif kind == "C":
            info["C"][rest[0]] = int(rest[1])
        else:
            info["V"] = int(rest[0])
    return info


def test_struct_sizes_match_c(decls, c_layout):
    for sname, cls in decls.STRUCTS.items():
        size, align = c_layout["S"][sname]
        assert ctypes.sizeof(cls) == size, sname
        assert ctypes.alignment(cls) == align, sname


def test_struct_field_offsets_match_c(decls, c_layout):
    for sname, cls in decls.STRUCTS.items():
        for fname, ftype in cls._fields_:
            offset, size, signed = c_layout["F"][(sname, fname)]
            assert getattr(cls, fname).offset == offset, f"{sname}.{fname}"
            assert getattr(cls, fname).size == size == ctypes.sizeof(ftype), f"{sname}.{fname}"
            if signed != -1:
                py_signed = ftype(-1).value < 0
                assert py_signed == bool(signed), f"{sname}.{fname} signedness"


def test_enum_values_match_c(decls, c_layout):
    for cname, value in c_layout["C"].items():
        assert getattr(decls, cname) == value, cname
    for ename, size in c_layout["E"].items():
        assert size == ctypes.sizeof(ctypes.c_int), f"sizeof({ename}) != sizeof(int): passing it as c_int is wrong"
    assert c_layout["V"] == decls.EDKM_VERSION_NUMBER


# ============================ part 2: the library ============================


def test_every_header_function_is_bound(lib, header_text):
    ffi = lib._ffi
    assert ffi.missing_symbols == [], f"{ffi.lib_path} lacks {ffi.missing_symbols}"
    for name, (ret, params) in header_prototypes(header_text).items():
        fn = getattr(ffi, name)
        assert isinstance(fn, ctypes._CFuncPtr), name
        assert fn.restype == expected_ctype(ffi, ret, True), name
        assert fn.argtypes == [expected_ctype(ffi, p) for p in params], name


def test_version(lib):
    ffi = lib._ffi
    assert ffi.edkm_version_number() == ffi.EDKM_VERSION_NUMBER
    assert lib.library_version() == f"{ffi.EDKM_VERSION_MAJOR}.{ffi.EDKM_VERSION_MINOR}.{ffi.EDKM_VERSION_PATCH}"


def test_status_names(lib, header_text):
    ffi = lib._ffi
    for cname, value in header_enums(header_text)["edkm_status"].items():
        assert ffi.edkm_status_name(value).decode() == cname
    assert ffi.edkm_status_name(12345).decode() == "EDKM_UNKNOWN_STATUS"
    assert ffi.edkm_status_name(-1).decode() == "EDKM_UNKNOWN_STATUS"


def test_config_init_defaults_and_python_defaults(lib):
    import inspect

    ffi = lib._ffi
    rc = ffi.edkm_runtime_config()
    ctypes.memset(ctypes.byref(rc), 0xAB, ctypes.sizeof(rc))
    ffi.edkm_runtime_config_init(ctypes.byref(rc))
    assert rc.struct_size == ctypes.sizeof(ffi.edkm_runtime_config)
    assert (rc.num_threads, rc.budget_bytes, rc.saved_mode, rc.keep_weights) == (0, 0, ffi.EDKM_SAVED_HISTOGRAM, 0)
    assert not rc.communicator
    lc = ffi.edkm_layer_config()
    ctypes.memset(ctypes.byref(lc), 0xAB, ctypes.sizeof(lc))
    ffi.edkm_layer_config_init(ctypes.byref(lc))
    assert lc.struct_size == ctypes.sizeof(ffi.edkm_layer_config)
    want = dict(bits=4, cluster_dim=1, group_size=0, max_iterations=3, init=0,
                zero_threshold=1e-7, algorithm=0, f32_key_dtype=0, seed=0x5EED,
                temperature_mode=ffi.EDKM_TEMPERATURE_SCALE_FREE)
    assert {k: getattr(lc, k) for k in want} == want
    # the temperature thresholds are unset (NaN): the layer resolves them from its mode
    assert math.isnan(lc.tau) and math.isnan(lc.epsilon) and math.isnan(lc.prune_threshold)
    # the Python layer restates no default: every keyword is None (left as the library sets it)
    sig = inspect.signature(lib.Layer.__init__).parameters
    for k in list(want) + ["tau", "epsilon", "prune_threshold"]:
        assert sig[k].default is None, k
    rsig = inspect.signature(lib.Runtime.__init__).parameters
    assert rsig["num_threads"].default == 0 and rsig["budget_bytes"].default == 0
    assert rsig["saved_mode"].default == ffi.EDKM_SAVED_HISTOGRAM and rsig["keep_weights"].default is False


# ---------------------------- errors ----------------------------


def w16(shape=(64, 32), seed=0, dtype=np.float16):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.05).astype(dtype)


@pytest.mark.parametrize("bits", [0, 9])
def test_bad_bits_raise_edkm_error(lib, rt, bits):
    with pytest.raises(lib.EdkmError) as ei:
        lib.Layer(rt, (8, 8), bits=bits)
    e = ei.value
    assert e.status == lib._ffi.EDKM_ERR_INVALID_ARGUMENT
    assert e.status_name == "EDKM_ERR_INVALID_ARGUMENT"
    assert e.message, "the library's edkm_last_error() detail is carried"
    assert e.function == "edkm_layer_create"
    assert "EDKM_ERR_INVALID_ARGUMENT" in str(e) and e.message in str(e)


@pytest.mark.parametrize(
    "kwargs",
    [dict(tau=0.0), dict(tau=-1.0), dict(tau=float("inf")), dict(max_iterations=0),
     dict(max_iterations=65), dict(cluster_dim=0), dict(cluster_dim=65), dict(epsilon=-1.0),
     dict(zero_threshold=-1.0), dict(prune_threshold=-1.0), dict(init=7), dict(algorithm=7),
     dict(temperature_mode=2), dict(temperature_mode=-1), dict(temperature_mode="hot")],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_out_of_range_config_raises(lib, rt, kwargs):
    with pytest.raises((lib.EdkmError, ValueError)) as ei:
        lib.Layer(rt, (8, 64), **kwargs)
    if isinstance(ei.value, lib.EdkmError):
        assert ei.value.status in (lib._ffi.EDKM_ERR_INVALID_ARGUMENT,), ei.value


def test_absolute_mode_without_tau_is_coremltools_default(lib, rt):
    """temperature_mode='absolute' with no tau uses coremltools' 1e-4, not the scale-free factor 0.1."""
    with lib.Layer(rt, (8, 64), temperature_mode="absolute") as layer:
        assert layer.config["tau"] == 1e-4
        assert layer.config["temperature_mode"] == lib._ffi.EDKM_TEMPERATURE_ABSOLUTE
    with lib.Layer(rt, (8, 64)) as layer:
        assert layer.config["tau"] == 0.1
        assert layer.config["temperature_mode"] == lib._ffi.EDKM_TEMPERATURE_SCALE_FREE


def test_bad_shapes_raise(lib, rt):
    for shape, kw in [((), {}), ((0, 4), {}), ((4, -1), {}), ((8, 6), dict(cluster_dim=4)),
                      ((6, 8), dict(group_size=4))]:
        with pytest.raises(lib.EdkmError) as ei:
            lib.Layer(rt, shape, **kw)
        assert ei.value.status in (lib._ffi.EDKM_ERR_SHAPE, lib._ffi.EDKM_ERR_INVALID_ARGUMENT), (shape, kw, ei.value)


def test_wrong_element_count_raises_shape(lib, rt):
    with lib.Layer(rt, (64, 32)) as layer:
        w = w16((64, 31))
        with pytest.raises(lib.EdkmError) as ei:
            layer.forward(w)
        assert ei.value.status == lib._ffi.EDKM_ERR_SHAPE
        assert ei.value.message
        with pytest.raises(lib.EdkmError) as ei:
            layer.init_centroids(w)
        assert ei.value.status == lib._ffi.EDKM_ERR_SHAPE


@pytest.mark.parametrize("scale", [1e-40, 1e-44])
def test_init_on_subnormal_f32_weights_gives_finite_centroids(lib, rt, scale):
    """f32 weights with an RMS below 2^-126 (subnormal floats) in a partition of over 65,536
    weights: the initialisation rounds them to f16 keys after multiplying by a power of two, which
    must stay a finite float (2^126 at most; 2^-l for the RMS's exponent l would be +Inf and every
    key Inf). The centroids must be finite and within the weights' range."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((300, 256)) * scale).astype(np.float32)
    assert np.sqrt(np.mean(w.astype(np.float64) ** 2)) < 2.0 ** -126
    with lib.Layer(rt, w.shape, bits=2) as layer:
        layer.init_centroids(w)
        c = np.asarray(layer.centroids, dtype=np.float64)
        assert np.all(np.isfinite(c)), c
        assert np.all(np.abs(c) <= np.abs(w).max()), (c, np.abs(w).max())
        assert len(np.unique(c)) > 1, c


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_raise(lib, rt, dtype, bad):
    with lib.Layer(rt, (64, 32)) as layer:
        w = w16(dtype=dtype)
        w[3, 5] = bad
        with pytest.raises(lib.EdkmError) as ei:
            layer.forward(w)
        assert ei.value.status == lib._ffi.EDKM_ERR_NON_FINITE
        assert ei.value.message


def test_non_finite_centroids_and_gradients_raise(lib, rt):
    with lib.Layer(rt, (64, 32), bits=2) as layer:
        c = np.array([[[-0.1], [0.0], [0.1], [np.nan]]], np.float32)
        with pytest.raises(lib.EdkmError) as ei:
            layer.centroids = c
        assert ei.value.status == lib._ffi.EDKM_ERR_NON_FINITE
        w = w16()
        out, st = layer.forward(w)
        g = np.ones_like(w)
        g[0, 0] = np.inf
        with pytest.raises(lib.EdkmError) as ei:
            st.backward(g, w)
        assert ei.value.status == lib._ffi.EDKM_ERR_NON_FINITE
        st.close()


def test_backward_twice_raises_state(lib, rt):
    with lib.Layer(rt, (64, 32), bits=3) as layer:
        w = w16()
        out, st = layer.forward(w)
        g = np.ones_like(out)
        gi = st.backward(g, w)
        assert np.isfinite(gi.astype(np.float32)).all()
        with pytest.raises(lib.EdkmError) as ei:
            st.backward(g, w)
        assert ei.value.status == lib._ffi.EDKM_ERR_STATE
        assert ei.value.message
        st.close()


def test_centroids_before_any_forward_raise_state(lib, rt):
    with lib.Layer(rt, (16, 16)) as layer:
        with pytest.raises(lib.EdkmError) as ei:
            layer.centroids
        assert ei.value.status == lib._ffi.EDKM_ERR_STATE


def test_changed_weights_raise(lib, rt):
    with lib.Layer(rt, (64, 32), bits=3) as layer:
        w = w16()
        out, st = layer.forward(w)
        w2 = w.copy()
        w2[1, 1] = -w2[1, 1] + np.float16(0.01)
        with pytest.raises(lib.EdkmError) as ei:
            st.backward(np.ones_like(out), w2)
        assert ei.value.status == lib._ffi.EDKM_ERR_WEIGHTS_CHANGED
        st.backward(np.ones_like(out), w)  # the state is still usable with the right weights
        st.close()


def test_histogram_mode_needs_weights_unless_keep_weights(lib):
    w = w16()
    with lib.Runtime() as rt, lib.Layer(rt, w.shape) as layer:
        out, st = layer.forward(w)
        with pytest.raises(lib.EdkmError) as ei:
            st.backward(np.ones_like(out))
        assert ei.value.status in (lib._ffi.EDKM_ERR_NULL_POINTER, lib._ffi.EDKM_ERR_STATE)
        st.backward(np.ones_like(out), w)
        st.close()
    with lib.Runtime(keep_weights=True) as rt, lib.Layer(rt, w.shape) as layer:
        out, st = layer.forward(w)
        a = st.backward(np.ones_like(out))
        out2, st2 = layer.forward(w)
        b = st2.backward(np.ones_like(out2), w)
        assert np.isfinite(a.astype(np.float32)).all() and np.isfinite(b.astype(np.float32)).all()
        st.close()
        st2.close()


def test_wrong_out_dtype_raises_dtype(lib, rt):
    with lib.Layer(rt, (64, 32)) as layer:
        w = w16()  # f16 weights: out may be f32 or f16, not bf16
        with pytest.raises(lib.EdkmError) as ei:
            layer.forward(w, "bf16", save=False)
        assert ei.value.status == lib._ffi.EDKM_ERR_DTYPE
        with pytest.raises(lib.EdkmError) as ei:  # LUT: f32 or f16 only
            layer.export(w, "bf16")
        assert ei.value.status == lib._ffi.EDKM_ERR_DTYPE


def test_struct_size_checks(lib):
    ffi = lib._ffi
    h = ffi.edkm_runtime_p()
    for size in (0, ctypes.sizeof(ffi.edkm_runtime_config) + 1024):
        cfg = ffi.edkm_runtime_config()
        ffi.edkm_runtime_config_init(ctypes.byref(cfg))
        cfg.struct_size = size
        assert ffi.edkm_runtime_create(ctypes.byref(cfg), ctypes.byref(h)) == ffi.EDKM_ERR_STRUCT_SIZE
        assert not h
        assert ffi.edkm_last_error()
    assert ffi.edkm_runtime_create(None, ctypes.byref(h)) == ffi.EDKM_OK  # NULL = defaults
    s = ffi.edkm_runtime_stats()
    s.struct_size = 0
    assert ffi.edkm_runtime_get_stats(h, ctypes.byref(s)) == ffi.EDKM_ERR_STRUCT_SIZE
    # an older (smaller) struct: only the covered fields are written
    s = ffi.edkm_runtime_stats()
    ctypes.memset(ctypes.byref(s), 0xCD, ctypes.sizeof(s))
    s.struct_size = ffi.edkm_runtime_stats.arena_allocated.offset
    assert ffi.edkm_runtime_get_stats(h, ctypes.byref(s)) == ffi.EDKM_OK
    assert s.arena_allocated == 0xCDCDCDCDCDCDCDCD, "wrote past struct_size"
    assert s.num_threads >= 1
    assert ffi.edkm_runtime_create(None, None) == ffi.EDKM_ERR_NULL_POINTER
    ffi.edkm_runtime_destroy(h)
    ffi.edkm_runtime_destroy(None)
    ffi.edkm_layer_destroy(None)
    ffi.edkm_saved_state_destroy(None)


def test_last_error_is_kept_by_successful_calls(lib, rt):
    ffi = lib._ffi
    with pytest.raises(lib.EdkmError) as ei:
        lib.Layer(rt, (8, 8), bits=0)
    assert ffi.edkm_last_error().decode() == ei.value.message
    rt.stats()  # a successful call
    assert ffi.edkm_last_error().decode() == ei.value.message


def test_stale_and_foreign_handles_are_rejected(lib):
    """Handles destroyed or of another kind give EDKM_ERR_INVALID_HANDLE (run in a child: a library
    that dereferences them would crash the test process)."""
    code = textwrap.dedent(
        """
        import ctypes, sys
        sys.path.insert(0, %r)
        from edkm import _ffi as f
        rt = f.edkm_runtime_p()
        assert f.edkm_runtime_create(None, ctypes.byref(rt)) == 0
        layer = f.edkm_layer_p()
        shape = (ctypes.c_int64 * 2)(8, 8)
        assert f.edkm_layer_create(rt, None, shape, 2, ctypes.byref(layer)) == 0
        n = ctypes.c_size_t()
        # a runtime handle passed as a layer handle
        fake = ctypes.cast(rt, f.edkm_layer_p)
        assert f.edkm_layer_centroid_count(fake, ctypes.byref(n)) == f.EDKM_ERR_INVALID_HANDLE
        # a pointer that never came from *_create
        junk = ctypes.create_string_buffer(256)
        assert f.edkm_layer_centroid_count(ctypes.cast(junk, f.edkm_layer_p), ctypes.byref(n)) == f.EDKM_ERR_INVALID_HANDLE
        assert f.edkm_layer_centroid_count(layer, ctypes.byref(n)) == 0 and n.value == 16
        f.edkm_layer_destroy(layer)
        assert f.edkm_layer_centroid_count(layer, ctypes.byref(n)) == f.EDKM_ERR_INVALID_HANDLE
        assert f.edkm_last_error()
        f.edkm_layer_destroy(layer)  # double destroy: rejected silently, no crash
        f.edkm_runtime_destroy(rt)
        assert f.edkm_runtime_set_budget(rt, 1) == f.EDKM_ERR_INVALID_HANDLE
        print("ok")
        """
    ) % str(PYTHON_DIR)
    env = dict(os.environ, EDKM_LIB_PATH=lib.library_path())
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


# ---------------------------- Python-side validation (no silent copies) ----------------------------


def test_rejects_non_contiguous_and_wrong_dtypes(lib, rt):
    with lib.Layer(rt, (64, 32)) as layer:
        base = w16((64, 64))
        with pytest.raises(ValueError, match="C-contiguous"):
            layer.forward(base[:, ::2])
        with pytest.raises(ValueError, match="C-contiguous"):
            layer.forward(np.asfortranarray(w16((64, 32))))
        with pytest.raises(TypeError, match="float64"):
            layer.forward(np.zeros((64, 32)))
        with pytest.raises(TypeError, match="bf16"):
            layer.forward(np.zeros((64, 32), np.uint16))
        with pytest.raises(TypeError, match="ndarray"):
            layer.forward([[0.0] * 32] * 64)
        with pytest.raises(TypeError):
            layer.forward(np.zeros((64, 32), np.float16), dtype="f32")
        with pytest.raises(TypeError):
            layer.forward(np.zeros((64, 32), ">f4"))
        ro = w16()
        out = np.empty((64, 32), np.float16)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            layer.forward(ro, out=out)
        with pytest.raises(ValueError):
            layer.forward(ro, out=np.empty((64, 31), np.float16))
        _, st = layer.forward(ro)
        with pytest.raises(ValueError, match="C-contiguous"):
            st.backward(np.ones((64, 64), np.float16)[:, ::2], ro)
        with pytest.raises(TypeError):
            st.backward(np.ones((64, 32), np.float16), ro.astype(np.float32))
        with pytest.raises(ValueError):
            st.backward(np.ones((64, 32), np.float16), ro[:10])
        with pytest.raises(TypeError):
            layer.centroids = np.zeros((1, 16, 1), np.float64)
        with pytest.raises(ValueError):
            layer.centroids = np.zeros((2, 16, 1), np.float32)
        st.close()


def test_forward_writes_into_callers_buffer(lib, rt):
    w = w16()
    with lib.Layer(rt, w.shape, bits=3) as layer:
        out = np.full(w.shape, np.nan, np.float32)
        addr = out.ctypes.data
        res, st = layer.forward(w, "f32", out=out)
        assert res is out and res.ctypes.data == addr
        assert np.isfinite(out).all()
        g = np.ones(w.shape, np.float16)
        gin = np.full(w.shape, np.nan, np.float16)
        gaddr = gin.ctypes.data
        r2 = st.backward(g, w, out=gin)
        assert r2 is gin and r2.ctypes.data == gaddr and np.isfinite(gin).all()
        st.close()
        # the output may be a view into a larger, caller-owned buffer
        big = np.full((2,) + w.shape, np.nan, np.float16)
        layer.centroids = layer.centroids
        res = layer.forward(w, out=big[1], save=False)
        assert res.ctypes.data == big[1].ctypes.data
        assert np.isnan(big[0]).all() and np.isfinite(big[1]).all()


def test_forward_reads_callers_buffer_in_place(lib, rt):
    """Weights given as a view into a larger array (rows 8..72) read exactly like a copy of them."""
    big = w16((80, 32), seed=3)
    view = big[8:72]
    assert view.flags.c_contiguous and not view.flags.owndata
    with lib.Layer(rt, view.shape, bits=3) as layer:
        layer.init_centroids(view.copy())
        c0 = layer.centroids
        a = layer.forward(view, save=False)
        layer.centroids = c0
        b = layer.forward(view.copy(), save=False)
        np.testing.assert_array_equal(a, b)


# ---------------------------- dtypes ----------------------------


def _bf16(x):
    from edkm import f32_to_bf16

    return f32_to_bf16(x)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "f32-keyed"])
@pytest.mark.parametrize("out_kind", ["same", "f32"])
def test_forward_backward_dtypes_finite(lib, rt, kind, out_kind):
    rng = np.random.default_rng(1)
    w32 = (rng.standard_normal((128, 64)) * 0.05).astype(np.float32)
    extra = {}
    if kind == "f32":
        w, dt = w32, None
    elif kind == "f32-keyed":
        w, dt = w32, None
        extra = dict(f32_key_dtype="f16")
    elif kind == "f16":
        w, dt = w32.astype(np.float16), None
    else:
        w, dt = _bf16(w32), "bf16"
    with lib.Layer(rt, w.shape, bits=3, **extra) as layer:
        out_dtype = None if out_kind == "same" else "f32"
        out, st = layer.forward(w, out_dtype, dtype=dt)
        assert out.shape == w.shape
        assert out.dtype == (w.dtype if out_kind == "same" else np.float32)
        outf = lib.bf16_to_f32(out) if (kind == "bf16" and out_kind == "same") else out.astype(np.float32)
        assert np.isfinite(outf).all()
        assert np.abs(outf - w32).max() < 0.1
        s = layer.stats()
        assert s.forwards == 1 and 1 <= s.iterations <= 3 and np.isfinite(s.inertia)
        if kind in ("f16", "bf16", "f32-keyed"):
            assert s.algorithm == lib.Algorithm.UNIQUIFIED and 0 < s.distinct_values <= w.size
        else:
            assert s.algorithm == lib.Algorithm.DENSE and s.distinct_values == 0
        g = (rng.standard_normal(w.shape) * 1e-2).astype(np.float32)
        gw = _bf16(g) if dt == "bf16" else g.astype(w.dtype)
        gin = st.backward(gw, w, dtype=dt)
        assert gin.dtype == gw.dtype and gin.shape == w.shape
        ginf = lib.bf16_to_f32(gin) if dt == "bf16" else gin.astype(np.float32)
        assert np.isfinite(ginf).all() and np.abs(ginf).max() > 0
        assert st.nbytes > 0
        st.close()


def test_ml_dtypes_bfloat16(lib, rt):
    if lib.BFLOAT16 is None:
        pytest.skip("ml_dtypes not installed")
    w = w16(dtype=np.float32).astype(lib.BFLOAT16)
    with lib.Layer(rt, w.shape) as layer:
        out, st = layer.forward(w)
        assert out.dtype == lib.BFLOAT16
        gin = st.backward(np.ones_like(out), w)
        assert gin.dtype == lib.BFLOAT16 and np.isfinite(gin.astype(np.float32)).all()
        st.close()


def test_bf16_helpers(lib):
    from edkm.core import bf16_to_f32, f32_to_bf16

    x = np.array([1.0, -2.5, 3.140625, 1e-3, 0.0, np.inf, 65504.0], np.float32)
    b = f32_to_bf16(x)
    assert b.dtype == np.uint16
    back = bf16_to_f32(b)
    np.testing.assert_allclose(back[np.isfinite(x)], x[np.isfinite(x)], rtol=2 ** -8)
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]
    # round to nearest even: 1 + 2^-8 is exactly between 1 and 1 + 2^-7 -> 1
    assert bf16_to_f32(f32_to_bf16(np.array([1 + 2 ** -8], np.float32)))[0] == 1.0


# ---------------------------- export / unpack ----------------------------


@pytest.mark.parametrize("bits,d,group_size,shape", [
    (3, 1, 0, (64, 48)), (4, 1, 16, (64, 48)), (2, 4, 0, (32, 64)), (3, 2, 8, (32, 40)), (1, 1, 0, (8, 9)),
    (8, 1, 0, (64, 64)), (5, 1, 4, (12, 9)),
])
@pytest.mark.parametrize("lut_dtype", ["f32", "f16"])
def test_export_unpack(lib, rt, bits, d, group_size, shape, lut_dtype):
    w = w16(shape, seed=bits)
    with lib.Layer(rt, shape, bits=bits, cluster_dim=d, group_size=group_size) as layer:
        layer.forward(w, save=False)
        groups = shape[0] // group_size if group_size else 1
        lut_count, packed_bytes = layer.export_sizes()
        n_per_group = w.size // groups
        assert lut_count == groups * 2 ** bits * d
        assert packed_bytes == groups * -(-(n_per_group // d * bits) // 8)
        lut, packed = layer.export(w, lut_dtype)
        assert lut.shape == (groups, 2 ** bits, d) and packed.shape == (packed_bytes,) and packed.dtype == np.uint8
        assert lut.dtype == (np.float32 if lut_dtype == "f32" else np.float16)
        labels = layer.labels(packed)
        assert labels.shape == (w.size // d,) and labels.max() < 2 ** bits
        # unpack == lut[labels]
        lab = labels.reshape(groups, -1)
        expect = np.take_along_axis(lut, lab[:, :, None].astype(np.int64), axis=1).reshape(shape).astype(np.float32)
        for out_dtype in ("f32", "f16", "bf16"):
            u = layer.unpack(lut, packed, out_dtype)
            assert u.shape == shape
            uf = lib.bf16_to_f32(u) if out_dtype == "bf16" else u.astype(np.float32)
            ex = {"f32": expect, "f16": expect.astype(np.float16).astype(np.float32),
                  "bf16": lib.bf16_to_f32(lib.f32_to_bf16(expect))}[out_dtype]
            np.testing.assert_array_equal(uf, ex)
        # at most 2^bits distinct values (d-vectors) per group
        u = layer.unpack(lut, packed, "f32").reshape(groups, -1, d)
        for gi in range(groups):
            assert len(np.unique(u[gi], axis=0)) <= 2 ** bits
        # hard assignment: label = argmin ||w - c||^2 - prune * [j == 0], with the centroids
        c = layer.centroids.astype(np.float64)
        wv = w.astype(np.float64).reshape(groups, -1, d)
        dist = ((wv[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
        dist[:, :, 0] -= layer.config["prune_threshold"]
        best = dist.min(-1)
        chosen = np.take_along_axis(dist, lab[:, :, None].astype(np.int64), axis=2)[..., 0]
        np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-9)
        if lut_dtype == "f32":
            np.testing.assert_array_equal(lut, layer.centroids)
        # caller-provided out
        out = np.empty(shape, np.float32)
        assert layer.unpack(lut, packed, out=out) is out


def test_unpack_validates_sizes(lib, rt):
    w = w16((16, 16))
    with lib.Layer(rt, w.shape, bits=2) as layer:
        layer.forward(w, save=False)
        lut, packed = layer.export(w)
        with pytest.raises(lib.EdkmError) as ei:  # the library checks the LUT's size (unpack_sized)
            layer.unpack(lut.reshape(-1)[:-1].copy(), packed)
        assert ei.value.status == lib._ffi.EDKM_ERR_SHAPE
        with pytest.raises(lib.EdkmError) as ei:
            layer.unpack(lut, packed[:-1].copy())
        assert ei.value.status in (lib._ffi.EDKM_ERR_SHAPE, lib._ffi.EDKM_ERR_INVALID_ARGUMENT)
        with pytest.raises(TypeError):
            layer.unpack(lut, packed.astype(np.int8))


def test_export_before_centroids_raises_state(lib, rt):
    w = w16((16, 16))
    with lib.Layer(rt, w.shape) as layer:
        with pytest.raises(lib.EdkmError) as ei:
            layer.export(w)
        assert ei.value.status == lib._ffi.EDKM_ERR_STATE


# ---------------------------- centroids ----------------------------


def test_centroids_roundtrip(lib, rt):
    w = w16((32, 16))
    with lib.Layer(rt, w.shape, bits=2, group_size=8) as layer:
        assert layer.groups == 4 and layer.centroid_count == 4 * 4
        layer.init_centroids(w)
        c = layer.centroids
        assert c.shape == (4, 4, 1) and c.dtype == np.float32 and np.isfinite(c).all()
        new = np.linspace(-0.1, 0.1, 16, dtype=np.float32).reshape(4, 4, 1)
        layer.centroids = new
        np.testing.assert_array_equal(layer.centroids, new)
        layer.set_centroids(new.reshape(-1))
        np.testing.assert_array_equal(layer.centroids, new)
        # the forward moves them (warm start) and the stats count it
        layer.forward(w, save=False)
        assert not np.array_equal(layer.centroids, new)
        assert layer.stats().forwards == 1


# ---------------------------- runtime, budget, lifetimes ----------------------------


def test_runtime_stats_track_saved_states(lib):
    w = w16((256, 64))
    with lib.Runtime(num_threads=2) as rt, lib.Layer(rt, w.shape) as layer:
        s0 = rt.stats()
        assert isinstance(s0, lib.RuntimeStats)
        assert s0.num_threads == 2 and s0.live_saved_states == 0
        _, st = layer.forward(w)
        s1 = rt.stats()
        assert s1.live_saved_states == 1
        assert s1.arena_allocated >= st.nbytes > 0 and s1.arena_peak >= s1.arena_allocated
        st.close()
        st.close()  # idempotent
        s2 = rt.stats()
        assert s2.live_saved_states == 0 and s2.arena_allocated < s1.arena_allocated
        rt.reset_peak()
        assert rt.stats().arena_peak == rt.stats().arena_allocated
        _, st = layer.forward(w)
        del st
        gc.collect()
        assert rt.stats().live_saved_states == 0, "__del__ destroys the saved state"


def test_dkm_mode_uses_heap(lib):
    w = w16((64, 32))
    with lib.Runtime(saved_mode="dkm") as rt, lib.Layer(rt, w.shape, bits=2) as layer:
        _, st = layer.forward(w)
        s = rt.stats()
        assert s.heap_saved >= st.nbytes > 0
        gin = st.backward(np.ones_like(w))  # weights optional outside HISTOGRAM mode
        assert np.isfinite(gin.astype(np.float32)).all()
        st.close()
        assert rt.stats().heap_saved == 0 and rt.stats().heap_saved_peak >= s.heap_saved


@pytest.mark.parametrize("mode", list(range(6)))
def test_all_saved_modes_agree(lib, mode):
    w = w16((64, 32), seed=5)
    g = w16((64, 32), seed=6)
    results = []
    for m in (0, mode):
        with lib.Runtime(saved_mode=m, communicator=lib.Communicator.single()) as rt, \
                lib.Layer(rt, w.shape, bits=3, seed=1) as layer:
            out, st = layer.forward(w, "f32")
            results.append((out, st.backward(g.astype(np.float32), w)))
            st.close()
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_budget(lib):
    w = w16((256, 64))
    with lib.Runtime(saved_mode="marshal", budget_bytes=1) as rt, lib.Layer(rt, w.shape) as layer:
        assert rt.stats().budget_bytes == 1
        with pytest.raises(lib.EdkmError) as ei:
            layer.forward(w)
        assert ei.value.status == lib._ffi.EDKM_ERR_BUDGET_EXCEEDED
        assert rt.stats().live_saved_states == 0
        layer.forward(w, save=False)  # nothing saved: no budget needed
        rt.set_budget(0)
        _, st = layer.forward(w)
        st.close()


def test_handles_close_once_and_outlive(lib):
    w = w16((32, 16))
    rt = lib.Runtime()
    layer = lib.Layer(rt, w.shape)
    rt.close()
    rt.close()
    assert rt.closed
    with pytest.raises(ValueError, match="closed"):
        rt.stats()
    # layers keep the runtime alive (C contract); saved states outlive their layer
    out, st = layer.forward(w)
    layer.close()
    layer.close()
    with pytest.raises(ValueError, match="closed"):
        layer.forward(w)
    gin = st.backward(np.ones_like(out), w)
    assert np.isfinite(gin.astype(np.float32)).all()
    st.close()
    with pytest.raises(ValueError, match="closed"):
        st.nbytes
    with pytest.raises(ValueError, match="closed"):
        lib.Layer(rt, (4, 4))


def test_threads_share_a_runtime(lib, rt):
    import threading

    errors = []

    def work(seed):
        try:
            w = w16((128, 64), seed=seed)
            with lib.Layer(rt, w.shape, bits=3) as layer:
                for _ in range(5):
                    out, st = layer.forward(w)
                    st.backward(np.ones_like(out), w)
                    st.close()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_one_layer_from_two_threads_is_busy_or_ok(lib, rt):
    import threading

    w = w16((512, 256))
    layer = lib.Layer(rt, w.shape, bits=4, algorithm="dense")
    statuses = []

    def work():
        for _ in range(3):
            try:
                layer.forward(w, save=False)
                statuses.append(0)
            except lib.EdkmError as e:
                statuses.append(e.status)

    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert set(statuses) <= {0, lib._ffi.EDKM_ERR_BUSY}, statuses
    layer.close()


# ---------------------------- loading ----------------------------


def _clean_env(**extra):
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT") if k in os.environ}
    env.update(extra)
    return env


def test_library_loads_in_a_fresh_interpreter(lib):
    path = lib.library_path()
    r = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({path!r})"],
                       env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # e.g. "cannot allocate memory in static TLS block"


def test_import_after_numpy_in_a_fresh_interpreter(lib):
    code = ("import numpy, sys; sys.path.insert(0, %r); import edkm; "
            "import numpy as np; "
            "rt = edkm.Runtime(); l = edkm.Layer(rt, (4, 8), bits=1); "
            "print(edkm.library_version(), l.forward(np.ones((4, 8), np.float32) * np.arange(8, dtype=np.float32), save=False).shape)"
            ) % str(PYTHON_DIR)
    r = subprocess.run([sys.executable, "-c", code], env=_clean_env(EDKM_LIB_PATH=lib.library_path()),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(4, 8)" in r.stdout


def test_import_error_says_what_to_do(tmp_path):
    code = "import sys; sys.path.insert(0, %r); import edkm" % str(PYTHON_DIR)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_clean_env(EDKM_LIB_PATH=str(tmp_path / "nope" / "libedkm.so.0")))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "EDKM_LIB_PATH" in r.stderr and "scripts/build-dist.sh" in r.stderr


def test_discovery_prefers_the_newest_checkout_build(lib):
    builds = [p for p in (REPO / ".build-dist" / "lib" / "libedkm.so.0", REPO / ".build" / "release" / "libEDKM.so")
              if p.exists()]
    if not builds:
        pytest.skip("no release build in the checkout")
    newest = max(builds, key=lambda p: p.stat().st_mtime)
    code = "import sys; sys.path.insert(0, %r); from edkm import _ffi; print(_ffi.lib_path)" % str(PYTHON_DIR)
    r = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(newest)


def test_bundled_copy_comes_first(lib, tmp_path):
    """A package with edkm/lib/libedkm.so.0 (as the wheel installs it) loads that copy, even with
    EDKM_LIB_PATH pointing elsewhere."""
    pkg = tmp_path / "site" / "edkm"
    shutil.copytree(PYTHON_DIR / "edkm", pkg, ignore=shutil.ignore_patterns("__pycache__", "lib"))
    (pkg / "lib").mkdir()
    shutil.copy(lib.library_path(), pkg / "lib" / "libedkm.so.0")
    code = "import sys; sys.path.insert(0, %r); import edkm; print(edkm.library_path())" % str(tmp_path / "site")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_clean_env(EDKM_LIB_PATH=lib.library_path()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pkg / "lib" / "libedkm.so.0")


def _import_in(python_dir, **env):
    code = "import sys; sys.path.insert(0, %r); import edkm" % str(python_dir)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_clean_env(**env))


def test_import_error_when_nothing_is_built(tmp_path):
    """A checkout without a build and no EDKM_LIB_PATH: ImportError naming every path tried and the
    command to run in that checkout."""
    shutil.copytree(PYTHON_DIR / "edkm", tmp_path / "python" / "edkm",
                    ignore=shutil.ignore_patterns("__pycache__", "lib"))
    (tmp_path / "Package.swift").write_text("// a checkout\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "build-dist.sh").write_text("")
    r = _import_in(tmp_path / "python")
    if r.returncode == 0:
        pytest.skip("a libedkm.so.0 is installed on the system search path")
    assert "ImportError" in r.stderr
    assert f"run `bash scripts/build-dist.sh` in {tmp_path}" in r.stderr
    assert "EDKM_LIB_PATH=/path/to/libedkm.so.0" in r.stderr
    for tried in (tmp_path / "python" / "edkm" / "lib" / "libedkm.so.0", tmp_path / ".build-dist" / "lib" / "libedkm.so.0",
                  "libedkm.so.0: "):
        assert str(tried) in r.stderr


def test_import_error_of_an_installed_copy_without_library(tmp_path):
    """Outside a checkout (an installed package that lost its library): the error says to reinstall."""
    shutil.copytree(PYTHON_DIR / "edkm", tmp_path / "site" / "edkm",
                    ignore=shutil.ignore_patterns("__pycache__", "lib"))
    r = _import_in(tmp_path / "site")
    if r.returncode == 0:
        pytest.skip("a libedkm.so.0 is installed on the system search path")
    assert "ImportError" in r.stderr and "reinstall the edkm wheel" in r.stderr
    assert str(tmp_path / "site" / "edkm" / "lib" / "libedkm.so.0") in r.stderr


@pytest.mark.skipif(not INSTALLED, reason="tests the checkout's package (EDKM_TEST_INSTALLED=1 tests an installed one)")
def test_installed_package_is_tested_with_its_own_library(lib):
    """EDKM_TEST_INSTALLED=1 (scripts/test-install.sh, the wheel in a venv): the package under test is
    the installed one, not the checkout's, and it loads the library it carries."""
    package_dir = os.path.dirname(os.path.abspath(lib.__file__))
    assert not package_dir.startswith(str(PYTHON_DIR)), package_dir
    assert lib.library_path() == os.path.join(package_dir, "lib", "libedkm.so.0")
