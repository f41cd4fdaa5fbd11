"""edkm.torch.export_safetensors / load_safetensors: LUT + packed indices per tensor, exact round trip."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
import edkm.torch as et  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.ModuleDict({
        "emb": nn.Embedding(40, 16),
        "fc1": nn.Linear(16, 48),
        "fc2": nn.Linear(48, 16),
        "conv": nn.Conv2d(2, 4, 3),
        "norm": nn.LayerNorm(16),
    }).to(dtype)


def train_a_bit(m, dtype):
    x = torch.randint(0, 40, (6,))
    h = m["fc2"](torch.relu(m["fc1"](m["emb"](x))))
    y = m["norm"](h).float().square().mean() + m["conv"](torch.randn(1, 2, 5, 5).to(dtype)).float().square().mean()
    y.backward()
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_exact(tmp_path, dtype):
    m = model(dtype)
    et.palettize(m, bits=3, group_size=8, modules=["emb", "fc1"])
    et.palettize(m, bits=4, modules=["conv"])
    et.palettize(m, bits=2, cluster_dim=2, modules=["fc2"])
    train_a_bit(m, dtype)
    before = et.export_safetensors(m, tmp_path / "before.safetensors")  # from the parametrized model
    et.finalize(m)
    path = tmp_path / "m.safetensors"
    written = et.export_safetensors(m, path)
    assert sorted(written) == ["conv.weight", "emb.weight", "fc1.weight", "fc2.weight"]

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        assert meta["edkm.format"] == et.SAFETENSORS_FORMAT
        info = json.loads(meta["edkm.tensor.fc1.weight"])
        assert info == {"bits": 3, "group_size": 8, "cluster_dim": 1, "shape": [48, 16],
                        "dtype": {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype],
                        "lut": "fc1.weight.lut", "indices": "fc1.weight.indices"}
        assert json.loads(meta["edkm.tensor.fc2.weight"])["cluster_dim"] == 2
        idx = f.get_tensor("fc1.weight.indices")
        assert idx.dtype == torch.uint8 and idx.numel() == 6 * (8 * 16 * 3 // 8)  # 6 groups, 3 bits
        assert f.get_tensor("fc1.weight.lut").shape == (6, 8, 1)
        assert f.get_tensor("fc2.weight.lut").shape == (1, 4, 2)
        assert f.get_tensor("conv.weight.lut").dtype == dtype
    assert "fc1.weight" not in keys and "fc1.bias" in keys and "norm.weight" in keys
    assert not any("_COREML_" in k or "parametrizations" in k for k in keys)

    state = et.load_safetensors(path)
    for name, t in m.state_dict().items():
        if "_COREML_" in name:
            continue
        assert state[name].dtype == t.dtype
        assert torch.equal(state[name], t), name  # bit-exact
    # the file written before finalize has the same palettization
    b = et.load_safetensors(tmp_path / "before.safetensors", palettized_only=True)
    for name in written:
        assert torch.equal(b[name], m.state_dict()[name])
    assert set(b) == set(written) and before.keys() == written.keys()
    # a float model takes the file as its state dict
    fresh = model(dtype, seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh["fc1"].weight, m["fc1"].weight)


def test_indices_match_library_export(tmp_path):
    lin = nn.Linear(24, 32)
    et.palettize(lin, bits=3, group_size=16)
    p = lin.parametrizations.weight[0]
    w = lin.parametrizations.weight.original.detach()
    lut, packed = p.layer.export(w.numpy(), "f32")
    et.finalize(lin)
    et.export_safetensors(lin, tmp_path / "l.safetensors")
    tensors, pals = et.load_safetensors(tmp_path / "l.safetensors", return_palettized=True)
    np.testing.assert_array_equal(pals["weight"].packed, packed)
    np.testing.assert_array_equal(pals["weight"].lut.numpy(), lut)
    # the labels re-derived from the LUT alone (a model finalized elsewhere) pack to the same bytes
    np.testing.assert_array_equal(et._from_coreml_buffers(lin, "weight", lin.weight).packed, packed)


def test_export_from_coreml_style_buffers(tmp_path):
    """A model whose state dict carries only the _COREML_ buffers (reloaded, or finalized by another
    tool) still exports: labels by nearest LUT entry."""
    lin = nn.Linear(16, 32)
    et.palettize(lin, bits=2, group_size=8)
    et.finalize(lin)
    sd = lin.state_dict()
    plain = nn.Linear(16, 32)
    for k, v in sd.items():
        if "_COREML_" in k:
            plain.register_buffer(k, v.clone())
    plain.load_state_dict(sd)
    et.export_safetensors(plain, tmp_path / "p.safetensors")
    out = et.load_safetensors(tmp_path / "p.safetensors")
    assert torch.equal(out["weight"], lin.weight)


def test_not_an_edkm_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an edkm"):
        et.load_safetensors(tmp_path / "x.safetensors")
