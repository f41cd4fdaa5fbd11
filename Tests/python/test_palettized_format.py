"""One palettized safetensors format for the CLI and edkm.torch (include/edkm-palettized-format.md):
files cross both ways bit-exactly (CLI -> Python, Python -> CLI), the older edkm.torch form
("edkm.palettized.v1", a fixture written by that code) still loads in both, and files of another
major version or that break a rule are refused by both readers with a message."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from edkm import palettized_file as pf  # noqa: E402
from edkm_cli import edkm_cli  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args):
    return subprocess.run([edkm_cli(), *map(str, args)], capture_output=True, text=True, timeout=300)


def read_all(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def rewrite(src, dst, change):
    """dst = src with its metadata passed through change(meta) (edited in place)."""
    meta, tensors = read_all(src)
    change(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def reference_dense(path):
    """{name: lut[label]} of every record, decoded with numpy (edkm.unpack_labels and indexing),
    independently of edkm_layer_unpack; with a scale tensor (format version 2) each row times its
    factor in float32; rounded to the original dtype."""
    meta, t = read_all(path)
    out = {}
    for key, value in meta.items():
        if key.startswith("edkm.tensor."):
            r = json.loads(value)
            lut, packed = t[r["lut"]].float(), t[r["indices"]].numpy().reshape(-1)
            groups = lut.shape[0]
            per_group = int(np.prod(r["shape"])) // r["cluster_dim"] // groups
            labels = torch.from_numpy(edkm.unpack_labels(packed, r["bits"], groups, per_group).astype(np.int64))
            dense = lut[torch.arange(groups)[:, None], labels].reshape(r["shape"])
            if "scale" in r:
                dense = (dense.reshape(r["shape"][0], -1) * t[r["scale"]].reshape(-1, 1)).reshape(r["shape"])
            out[key[len("edkm.tensor."):]] = dense.to({"F32": torch.float32, "F16": torch.float16,
                                                       "BF16": torch.bfloat16}[r["dtype"]])
    return out


def assert_same(a, b):
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k  # bit-exact


def mixed_model():
    torch.manual_seed(3)
    m = nn.ModuleDict({"emb": nn.Embedding(32, 16).to(torch.bfloat16), "fc1": nn.Linear(16, 48),
                       "fc2": nn.Linear(48, 16).to(torch.float16), "norm": nn.LayerNorm(16)})
    et.palettize(m, bits=3, group_size=8, modules=["emb"])
    et.palettize(m, bits=4, modules=["fc1"])
    et.palettize(m, bits=2, cluster_dim=2, modules=["fc2"])
    return m


@pytest.fixture
def python_file(tmp_path):
    m = mixed_model()
    et.finalize(m)
    path = tmp_path / "py.safetensors"
    et.export_safetensors(m, path, metadata={"run": "format test"})
    return path, {k: v for k, v in m.state_dict().items() if "_COREML_" not in k}


def test_cli_file_loads_in_python(tmp_path):
    torch.manual_seed(5)
    dense = {"a.f32": torch.randn(64, 32), "b.bf16": torch.randn(32, 64).to(torch.bfloat16),
             "c.f16": (0.02 * torch.randn(48, 32)).half(), "bias": torch.randn(64), "ids": torch.arange(7)}
    save_file(dense, str(tmp_path / "in.safetensors"), metadata={"origin": "test"})
    r = cli("palettize", tmp_path / "in.safetensors", "-o", tmp_path / "p.safetensors", "--bits", "3",
            "--group-size", "16", "--cluster-dim", "2", "--min-size", "1000", "--plain")
    assert r.returncode == 0, r.stderr
    r = cli("unpack", tmp_path / "p.safetensors", "-o", tmp_path / "u.safetensors", "--plain")
    assert r.returncode == 0, r.stderr

    loaded, pals = et.load_safetensors(tmp_path / "p.safetensors", return_palettized=True)
    _, unpacked = read_all(tmp_path / "u.safetensors")
    assert_same(loaded, unpacked)  # edkm.torch reads the CLI's file as `edkm unpack` does
    assert sorted(pals) == ["a.f32", "b.bf16", "c.f16"]
    reference = reference_dense(tmp_path / "p.safetensors")
    assert_same({k: loaded[k] for k in pals}, reference)
    for name, pt in pals.items():
        assert pt.dtype == dense[name].dtype and (pt.bits, pt.group_size, pt.cluster_dim) == (3, 16, 2)
        assert torch.equal(pt.dense(), loaded[name])  # the LUT in the tensor's dtype gives the same weights
        rel = ((loaded[name].double() - dense[name].double()).norm() / dense[name].double().norm()).item()
        # 8 centroids for Gaussian pairs (1.5 bits per weight): k-means gives about 0.35-0.45;
        # a zero or shuffled tensor would give 1 or more.
        assert rel < 0.5, (name, rel)
    assert torch.equal(loaded["bias"], dense["bias"]) and torch.equal(loaded["ids"], dense["ids"])


def test_python_file_unpacks_with_cli(tmp_path, python_file):
    path, state = python_file
    meta, _ = read_all(path)
    assert meta[pf.FORMAT_KEY] == pf.FORMAT_VALUE and meta[pf.VERSION_KEY].startswith("libedkm ")
    r = cli("info", path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == pf.FORMAT_VALUE
    assert {p["name"]: (p["dtype"], p["bits"], p["group_size"], p["cluster_dim"], p["lut"]["dtype"]) for p in info["palettized"]} == {
        "emb.weight": ("BF16", 3, 8, 1, "BF16"), "fc1.weight": ("F32", 4, 0, 1, "F32"), "fc2.weight": ("F16", 2, 0, 2, "F16")}

    r = cli("unpack", path, "-o", tmp_path / "u.safetensors", "--plain")
    assert r.returncode == 0, r.stderr
    umeta, unpacked = read_all(tmp_path / "u.safetensors")
    assert umeta == {"run": "format test"}  # the format's entries dropped, the model's kept
    assert_same(unpacked, state)  # the CLI restores the finalized model bit-exactly
    assert_same(et.load_safetensors(path), state)
    r = cli("palettize", path, "-o", tmp_path / "again.safetensors")
    assert r.returncode == 1 and "already palettized" in r.stderr


def test_older_python_form_still_loads(tmp_path):
    """legacy-v1.safetensors: written by the edkm.torch that wrote "edkm.palettized.v1" (bf16 LUTs,
    flat indices, plain-name records); legacy-v1-dense.safetensors: that model's state dict."""
    _, expected = read_all(DATA / "legacy-v1-dense.safetensors")
    loaded, pals = et.load_safetensors(DATA / "legacy-v1.safetensors", return_palettized=True)
    assert_same(loaded, expected)
    assert sorted(pals) == ["emb.weight", "fc1.weight", "fc2.weight"] and pals["emb.weight"].group_size == 4
    r = cli("unpack", DATA / "legacy-v1.safetensors", "-o", tmp_path / "u.safetensors", "--plain")
    assert r.returncode == 0, r.stderr
    umeta, unpacked = read_all(tmp_path / "u.safetensors")
    assert umeta == {"model": "legacy fixture"}
    assert_same(unpacked, expected)
    r = cli("info", DATA / "legacy-v1.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "edkm.palettized.v1" and len(info["palettized"]) == 3


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _edit_record(name, **fields):
    def change(meta):
        r = json.loads(meta["edkm.tensor." + name])
        for k, v in fields.items():
            if v is None:
                del r[k]
            else:
                r[k] = v
        meta["edkm.tensor." + name] = json.dumps(r)
    return change


@pytest.mark.parametrize("label, change, words", [
    ("next major version", _set("edkm.format", "palettized-3"), "major version 3"),
    ("not a version", _set("edkm.format", "palettized-one"), "unsupported edkm.format 'palettized-one'"),
    ("record without format", lambda m: m.pop("edkm.format"), "no edkm.format"),
    ("unknown field, same minor", _edit_record("fc1.weight", note="x"), "unknown metadata field 'note'"),
    ("missing field", _edit_record("fc1.weight", bits=None), "missing metadata field 'bits'"),
    ("original dtype", _edit_record("fc1.weight", dtype="I32"), "not F32, F16 or BF16"),
    ("shape against indices", _edit_record("fc1.weight", shape=[96, 16]), "indices shape is"),
    ("missing LUT", _edit_record("fc1.weight", lut="nope.lut"), "tensor 'nope.lut' is missing"),
    ("bits", _edit_record("fc1.weight", bits=9), "bits"),
])
def test_refused_with_a_message(tmp_path, python_file, label, change, words):
    bad = rewrite(python_file[0], tmp_path / "bad.safetensors", change)
    with pytest.raises(ValueError, match=words):
        et.load_safetensors(bad)
    r = cli("unpack", bad, "-o", tmp_path / "u.safetensors")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, (label, r.stderr)
    assert any(w.replace("'", '"') in r.stderr for w in words.split("|")), (label, r.stderr)  # JSON quotes there
    assert not (tmp_path / "u.safetensors").exists(), label


def test_newer_minor_version_fields_ignored(tmp_path, python_file):
    path, state = python_file
    newer = rewrite(path, tmp_path / "newer.safetensors",
                    lambda m: (_set("edkm.format", "palettized-1.3")(m), _edit_record("fc1.weight", note="x")(m)))
    assert_same(et.load_safetensors(newer), state)
    r = cli("unpack", newer, "-o", tmp_path / "u.safetensors")
    assert r.returncode == 0, r.stderr
    assert_same(read_all(tmp_path / "u.safetensors")[1], state)


def test_writer_rejects_reserved_metadata(tmp_path):
    m = mixed_model()
    with pytest.raises(ValueError, match="reserved"):
        et.export_safetensors(m, tmp_path / "x.safetensors", metadata={"edkm.format": "mine"})
    assert not (tmp_path / "x.safetensors").exists()


def test_numpy_reader_without_torch_types(tmp_path):
    """edkm.palettized_file on tensors read with safetensors' numpy framework (F32/F16 files):
    the same dense tensors as edkm.torch."""
    m = nn.ModuleDict({"fc1": nn.Linear(16, 48), "fc2": nn.Linear(48, 16).half()})
    et.palettize(m, bits=3, group_size=12, modules=["fc1"])
    et.palettize(m, bits=2, cluster_dim=4, modules=["fc2"])
    path = tmp_path / "np.safetensors"
    et.export_safetensors(m, path)
    expected = et.load_safetensors(path, palettized_only=True)
    with safe_open(str(path), framework="np") as f:
        infos = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        recs = pf.records(f.metadata(), infos, edkm.Runtime(num_threads=1))
        got = {r.name: pf.unpack(r, f.get_tensor(r.lut), f.get_tensor(r.indices)) for r in recs}
    assert sorted(got) == sorted(expected)
    for name, arr in got.items():
        np.testing.assert_array_equal(arr, expected[name].numpy())
        assert arr.dtype == expected[name].numpy().dtype


def test_channel_scale_file_is_version_2_and_unpacks_alike(tmp_path):
    """A model with per-channel scales (the core's channel_scale) exports a version-2 file: each
    scaled record names its F32 scale tensor; edkm.torch, the numpy reference and `edkm unpack`
    restore the finalized weights bit-exactly; the same record under palettized-1 is refused."""
    torch.manual_seed(4)
    m = nn.ModuleDict({"fc1": nn.Linear(16, 48), "fc2": nn.Linear(48, 16).to(torch.float16),
                       "fc3": nn.Linear(16, 16).to(torch.bfloat16)})
    with torch.no_grad():
        m["fc1"].weight.mul_(torch.logspace(-2, 1, 48)[:, None])  # rows of very different magnitudes
    et.palettize(m, bits=3, modules=["fc1"], channel_scale="min_max")
    et.palettize(m, bits=2, group_size=8, modules=["fc2"], channel_scale="abs")
    et.palettize(m, bits=2, modules=["fc3"])
    et.finalize(m)
    state = {k: v for k, v in m.state_dict().items() if "_COREML_" not in k}
    path = tmp_path / "scaled.safetensors"
    pals = et.export_safetensors(m, path)
    meta, tensors = read_all(path)
    assert meta[pf.FORMAT_KEY] == pf.SCALED_FORMAT_VALUE
    records = {k[len("edkm.tensor."):]: json.loads(v) for k, v in meta.items() if k.startswith("edkm.tensor.")}
    assert records["fc1.weight"]["scale"] == "fc1.weight.scale" and "scale" not in records["fc3.weight"]
    assert tensors["fc1.weight.scale"].dtype == torch.float32 and tuple(tensors["fc1.weight.scale"].shape) == (48,)
    assert torch.equal(pals["fc1.weight"].scale, m["fc1"].get_buffer("_COREML_/weight/palettization_scale").reshape(-1))
    reference = reference_dense(path)
    assert_same({k: state[k] for k in reference}, reference)
    assert_same(et.load_safetensors(path), state)
    # the scale matters: without it the dense weights would be far off
    assert not torch.allclose(pals["fc1.weight"].lut[0][0], state["fc1.weight"].unique()[0])
    bad = rewrite(path, tmp_path / "v1.safetensors", lambda meta: meta.update({pf.FORMAT_KEY: pf.FORMAT_VALUE}))
    with pytest.raises(ValueError, match="unknown metadata field 'scale'"):
        et.load_safetensors(bad)
    r = cli("unpack", path, "-o", tmp_path / "u.safetensors", "--plain")
    assert r.returncode == 0, r.stderr
    _, unpacked = read_all(tmp_path / "u.safetensors")
    assert_same(unpacked, state)
    r = cli("unpack", bad, "-o", tmp_path / "u1.safetensors", "--plain")
    assert r.returncode != 0 and "unknown metadata field" in r.stderr
