"""Core ML interop: finalize registers the buffers coremltools' own DKMPalettizer.finalize registers,
and coremltools.convert turns the weights into constexpr_lut_to_dense with our LUT.

Skipped where coremltools is not installed. Conversion to an mlprogram runs on Linux (it builds the
MIL program and its protobuf; only prediction needs macOS), so it is tested here."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")
import edkm.torch as et  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_torch_thread")]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def coreml_buffers(model):
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items() if "_COREML_" in k}


@pytest.mark.parametrize("cfg", [dict(bits=3), dict(bits=4, group_size=16), dict(bits=2, cluster_dim=2)])
def test_buffers_match_coremltools_finalize(cfg):
    P = pytest.importorskip("coremltools.optimize.torch.palettization")
    gc = {"n_bits": cfg["bits"], "weight_threshold": 0, "milestone": 0}
    if cfg.get("group_size"):
        gc.update(granularity="per_grouped_channel", group_size=cfg["group_size"])
    if cfg.get("cluster_dim"):
        gc.update(cluster_dim=cfg["cluster_dim"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = mlp()
        pal = P.DKMPalettizer(theirs, P.DKMPalettizerConfig.from_dict({"global_config": gc}))
        prepared = pal.prepare()
        pal.step()
        prepared(torch.randn(4, 32)).sum().backward()
        pal.step()
        theirs = pal.finalize()
    ours = mlp()
    et.palettize(ours, **cfg)
    ours(torch.randn(4, 32)).sum().backward()
    et.finalize(ours)
    a, b = coreml_buffers(ours), coreml_buffers(theirs)
    assert a.keys() == b.keys()
    assert a == b
    for k in a:
        if k.endswith("compression_type") or k.endswith("metadata_version"):
            assert torch.equal(ours.state_dict()[k], theirs.state_dict()[k])
    # coremltools takes vectors along axis 0 (its default channel_axis), libedkm along the last axis
    if cfg.get("cluster_dim"):
        assert int(ours.state_dict()["0._COREML_/weight/vector_axis"]) == 1


def _convert(model, example):
    model.eval()
    traced = torch.jit.trace(model, example)
    try:
        return ct.convert(traced, inputs=[ct.TensorType(shape=example.shape)], convert_to="mlprogram",
                          minimum_deployment_target=ct.target.iOS18)
    except Exception as e:  # pragma: no cover - depends on the coremltools / torch pair installed
        pytest.skip(f"coremltools.convert cannot convert here: {type(e).__name__}: {e}")


@pytest.mark.parametrize("cfg", [dict(bits=3), dict(bits=4, group_size=16), dict(bits=2, cluster_dim=2)])
def test_convert_gives_constexpr_lut_to_dense(cfg):
    model = mlp()
    et.palettize(model, **cfg)
    x = torch.randn(4, 32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    et.finalize(model)
    mlmodel = _convert(model, x)
    ops = [op for op in mlmodel._mil_program.functions["main"].operations if op.op_type == "constexpr_lut_to_dense"]
    assert len(ops) == 2, [op.op_type for op in mlmodel._mil_program.functions["main"].operations]
    for op, layer in zip(ops, (model[0], model[2])):
        w = layer.weight.detach()
        lut = op.lut.val
        ours = layer.get_buffer("_COREML_/weight/lut").numpy()
        assert lut.shape == ours.shape, (lut.shape, ours.shape)
        np.testing.assert_array_equal(lut, ours.astype(lut.dtype))  # the LUT is ours (fp16 program)
        indices = op.indices.val
        assert indices.shape == tuple(w.shape[:-1]) + (w.shape[-1] // lut.shape[-1],) or indices.shape == tuple(w.shape)
        # the dense weights the op decodes equal our palettized weights (as fp16)
        d = lut.shape[-1]
        groups = lut.shape[0]
        rows = w.shape[0] // groups
        dense = np.empty(w.shape, lut.dtype)
        for r in range(w.shape[0]):
            table = lut[r // rows, 0]
            if d == 1:
                dense[r] = table[indices[r], 0]
            else:
                dense[r] = table[indices[r]].reshape(-1)
        np.testing.assert_array_equal(dense, w.numpy().astype(lut.dtype))
