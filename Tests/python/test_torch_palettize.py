"""edkm.torch.palettize / finalize on torch modules: training, eval, state dicts, selection."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).to(dtype)


def task(seed=1, n=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :8] * 2 + x[:, 8:16]).argmax(1)
    return x, y


@pytest.mark.parametrize("bits,group_size", [(3, 0), (3, 16)])
def test_parametrized_linear_trains(bits, group_size):
    model = mlp()
    et.palettize(model, bits=bits, group_size=group_size, modules=["0"])
    et.palettize(model, bits=bits, modules=["2"])
    assert len(et.palettized(model)) == 2
    x, y = task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    # Library defaults (scale-free tau 0.1): a new task from random weights needs the weights to
    # travel far, which the near-hard default attention makes slow (0.47-0.56 of the first loss
    # after 60 steps here; an absolute tau of 1e-4 gets 0.09-0.19).
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    rt = et.palettized(model)[0][3].runtime
    assert rt.stats().live_saved_states == 0

    model.eval()
    with torch.no_grad():
        hard_out = model(x)
    et.finalize(model)
    assert not et.palettized(model)
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), hard_out.numpy())  # eval mode = hard weights
    for m in (model[0], model[2]):
        w = m.weight.detach()
        groups = w.shape[0] // group_size if group_size and m is model[0] else 1
        for gw in w.reshape(groups, -1):
            assert len(torch.unique(gw)) <= 2 ** bits
        lut = m.get_buffer("_COREML_/weight/lut")
        assert lut.shape == (groups, 1, 2 ** bits, 1)
        for gw, gl in zip(w.reshape(groups, -1), lut.reshape(groups, -1)):
            assert set(torch.unique(gw).tolist()) <= set(gl.tolist())
        assert m.get_buffer("_COREML_/weight/compression_type").tolist() == [2]
        assert isinstance(m.weight, nn.Parameter)
    assert int(model.get_buffer("_COREML_/metadata_version")) == 1


def test_finalize_keeps_parameter_object_and_dtypes():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = mlp(dtype=dtype)
        et.palettize(model, bits=3, modules=(nn.Linear,))
        original = model[0].parametrizations.weight.original
        x, _ = task()
        model(x.to(dtype)).float().sum().backward()
        assert original.grad is not None and original.grad.dtype == dtype
        et.finalize(model)
        assert model[0].weight is original and model[0].weight.dtype == dtype
        assert len(torch.unique(model[0].weight.float())) <= 8
        assert model[0].get_buffer("_COREML_/weight/lut").dtype == dtype


def test_module_selection():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.conv = nn.Conv2d(3, 8, 3)
            self.attn = nn.Linear(16, 16)
            self.mlp = nn.Linear(16, 64)
            self.tiny = nn.Linear(2, 2)

    net = Net()
    et.palettize(net, bits=2, modules="attn|mlp")
    assert sorted(n for n, *_ in et.palettized(net)) == ["attn", "mlp"]
    et.palettize(net, bits=4, modules=(nn.Embedding, nn.Conv2d, nn.Linear), min_numel=100)  # skips done + tiny
    names = {n: p for n, _, _, p in et.palettized(net)}
    assert sorted(names) == ["attn", "conv", "emb", "mlp"]
    assert names["attn"].bits == 2 and names["emb"].bits == 4
    net2 = Net()
    et.palettize(net2, modules=lambda name, m: name == "conv", bits=3, group_size=4)
    assert [n for n, *_ in et.palettized(net2)] == ["conv"]
    assert et.palettized(net2)[0][3].centroids.shape == (2, 8, 1)
    with pytest.raises(TypeError):
        et.palettize(Net(), modules=[3.5])
    with pytest.raises(edkm.EdkmError, match="tiny"):
        et.palettize(Net(), modules=["tiny"], bits=4)  # 4 weights < 16 centroids


def test_embedding_and_conv_train_and_finalize():
    torch.manual_seed(0)
    emb = nn.Embedding(64, 32)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    model = nn.ModuleDict({"emb": emb, "conv": conv})
    et.palettize(model, bits=3, group_size=8, tau=1e-4, temperature_mode="absolute")
    idx = torch.randint(0, 64, (10,))
    img = torch.randn(2, 4, 6, 6)
    (emb(idx).square().mean() + conv(img).square().mean()).backward()
    assert emb.parametrizations.weight.original.grad.abs().sum() > 0
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0
    et.finalize(model)
    assert emb.get_buffer("_COREML_/weight/lut").shape == (8, 1, 8, 1)
    assert conv.get_buffer("_COREML_/weight/lut").shape == (1, 1, 1, 1, 8, 1)
    for gw in conv.weight.detach().reshape(1, -1):
        assert len(torch.unique(gw)) <= 8


def test_vector_clustering_metadata():
    lin = nn.Linear(16, 32)
    et.palettize(lin, bits=2, cluster_dim=2)
    et.finalize(lin)
    assert lin.get_buffer("_COREML_/weight/lut").shape == (1, 1, 4, 2)
    assert int(lin.get_buffer("_COREML_/weight/vector_axis")) == 1
    pairs = lin.weight.detach().reshape(-1, 2)
    assert len(torch.unique(pairs, dim=0)) <= 4


def test_centroids_in_state_dict_and_deepcopy():
    model = mlp()
    et.palettize(model, bits=3)
    x, y = task()
    F.cross_entropy(model(x), y).backward()
    sd = copy.deepcopy(model.state_dict())
    assert "0.parametrizations.weight.0.centroids" in sd
    twin = copy.deepcopy(model)  # a new library layer with the same centroids
    p, q = model[0].parametrizations.weight[0], twin[0].parametrizations.weight[0]
    assert p.layer is not q.layer
    np.testing.assert_array_equal(p.layer.centroids, q.layer.centroids)
    with torch.no_grad():
        a, b = model(x), twin(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    et.finalize(twin)  # finalizing a deep copy leaves the original parametrized and working
    assert et.palettized(model) and not et.palettized(twin)
    with torch.no_grad():
        model(x)

    fresh = mlp(seed=5)
    et.palettize(fresh, bits=3)
    fresh.load_state_dict(sd)  # weights and centroids come back
    model.load_state_dict(sd)  # (its centroids moved with the forwards since)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())
    np.testing.assert_array_equal(fresh[0].parametrizations.weight[0].layer.centroids,
                                  sd["0.parametrizations.weight.0.centroids"].numpy())


def test_no_grad_training_mode_and_shared_runtime_options():
    model = mlp()
    et.palettize(model, bits=3, runtime={"saved_mode": "uniquify", "budget_bytes": 1 << 30},
                 f32_key_dtype="f16", max_iterations=2)
    p = model[0].parametrizations.weight[0]
    assert p.runtime.saved_mode == edkm.SavedMode.UNIQUIFY
    assert model[2].parametrizations.weight[0].runtime is p.runtime
    x, y = task()
    with torch.no_grad():
        model(x)  # soft forward, nothing saved
    assert p.runtime.stats().live_saved_states == 0
    F.cross_entropy(model(x), y).backward()
    assert p.runtime.stats().arena_peak > 0
    assert p.layer.stats().algorithm == edkm.Algorithm.UNIQUIFIED
