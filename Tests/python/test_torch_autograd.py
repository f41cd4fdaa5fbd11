"""edkm.torch's autograd Function against torch autograd of the docs/design.md, part 1 (the math) formula.

The reference (Tests/python/dkm_float64.py) is the formula written out in float64 torch ops; torch's autograd
differentiates it through every k-means iteration. libedkm computes in float64 and rounds its output
and gradient once to the weights' dtype, hence the tolerances: 1e-6 relative for float32, the
twice the half-ulp of float16 (2^-11) / bfloat16 (2^-8) otherwise.
"""
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from dkm_float64 import rel, soft_kmeans  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_weights(w, c0, tau, group_size=0, cluster_dim=1):
    """dkm_float64.soft_kmeans over the groups of rows of w (any shape), as float64, differentiable in w."""
    rows = w.shape[0]
    g = group_size or rows
    flat = w.reshape(rows, -1)
    parts = []
    for i in range(rows // g):
        x = flat[i * g:(i + 1) * g].reshape(-1, cluster_dim)
        parts.append(soft_kmeans(x, c0[i], tau)[0].reshape(g, -1))
    return torch.cat(parts, 0).reshape(w.shape)


def distinct_init(w64, groups, k, d, seed):
    rng = np.random.default_rng(seed)
    flat = w64.reshape(groups, -1, d)
    out = []
    for i in range(groups):
        vals = np.unique(flat[i], axis=0)
        out.append(vals[np.sort(rng.choice(len(vals), k, replace=False))])
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("bits,tau,group_size", [(3, 1e-4, 0), (4, 2e-5, 16), (2, 1e-4, 0)])
def test_function_matches_reference(dtype, tol, bits, tau, group_size):
    torch.manual_seed(bits)
    w = (torch.randn(32, 24) * 0.02).to(dtype)
    g = torch.randn(32, 24).to(dtype)
    groups = 32 // group_size if group_size else 1
    c0 = distinct_init(w.double().numpy(), groups, 2 ** bits, 1, bits)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=bits, tau=tau, group_size=group_size, temperature_mode="absolute") as layer:
        layer.centroids = c0
        x = w.clone().requires_grad_(True)
        out = et.dkm(x, layer)
        assert out.dtype == dtype and out.shape == w.shape
        out.backward(g)
        assert rt.stats().live_saved_states == 0  # released right after the backward
    x64 = w.double().requires_grad_(True)
    ref = reference_weights(x64, torch.from_numpy(c0).double(), tau, group_size)
    ref.backward(g.double())
    assert rel(out.detach(), ref.detach()) < tol
    assert rel(x.grad, x64.grad) < tol


def test_vectors_match_reference():
    torch.manual_seed(3)
    w = torch.randn(16, 20) * 0.02
    g = torch.randn(16, 20)
    c0 = distinct_init(w.double().numpy(), 2, 8, 2, 0)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=3, cluster_dim=2, group_size=8, tau=1e-4,
                                          temperature_mode="absolute") as layer:
        layer.centroids = c0
        x = w.clone().requires_grad_(True)
        out = et.dkm(x, layer)
        out.backward(g)
    x64 = w.double().requires_grad_(True)
    ref = reference_weights(x64, torch.from_numpy(c0).double(), 1e-4, 8, 2)
    ref.backward(g.double())
    assert rel(out.detach(), ref.detach()) < 1e-6
    assert rel(x.grad, x64.grad) < 1e-6


def test_parametrized_linear_gradient_matches_reference():
    """The whole path: palettize an nn.Linear, a loss through it, loss.backward(): the gradient of
    the original weight (and of the input, the bias) equals autograd of F.linear(x, DKM_ref(w))."""
    torch.manual_seed(0)
    lin = nn.Linear(24, 32)
    with torch.no_grad():
        lin.weight.mul_(0.5)
    w0 = lin.weight.detach().clone()
    tau = 1e-4
    et.palettize(lin, bits=3, tau=tau, temperature_mode="absolute")
    p = lin.parametrizations.weight[0]
    c0 = p.centroids.detach().clone()  # exact 1-D k-means of w0, set at palettize
    x = torch.randn(5, 24, requires_grad=True)
    y = torch.randn(5, 32)
    loss = F.mse_loss(lin(x), y)
    loss.backward()

    w64 = w0.double().requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    ref_w = reference_weights(w64, c0.double(), tau)
    ref_loss = F.mse_loss(F.linear(x64, ref_w, lin.bias.detach().double()), y.double())
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-6 * abs(ref_loss.item())
    assert rel(lin.parametrizations.weight.original.grad, w64.grad) < 1e-5
    assert rel(x.grad, x64.grad) < 1e-5
    # the layer moved its centroids to c^T (the warm start of the next forward)
    assert not torch.equal(p.centroids, c0)


def test_no_copies_and_dtypes():
    """Weights and outputs reach the library as views of the tensors' storage."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.randn(8, 16).to(dtype)
        arr, code = et.tensor_as_numpy(t)
        assert arr.ctypes.data == t.data_ptr() and arr.shape == (8, 16)
        assert code == {torch.float32: edkm.DType.F32, torch.float16: edkm.DType.F16,
                        torch.bfloat16: edkm.DType.BF16}[dtype]
    bf = torch.tensor([1.0, -2.5], dtype=torch.bfloat16)
    np.testing.assert_array_equal(edkm.bf16_to_f32(et.tensor_as_numpy(bf)[0]), [1.0, -2.5])
    with pytest.raises(ValueError, match="contiguous"):
        et.tensor_as_numpy(torch.randn(8, 16).t())
    with pytest.raises(TypeError, match="float64"):
        et.tensor_as_numpy(torch.randn(4, dtype=torch.float64))


def test_forward_writes_into_torch_storage(monkeypatch):
    seen = {}
    orig = edkm.Layer.forward

    def spy(self, weights, *a, **kw):
        seen["w"] = weights.ctypes.data
        seen["out"] = kw["out"].ctypes.data
        return orig(self, weights, *a, **kw)

    monkeypatch.setattr(edkm.Layer, "forward", spy)
    w = (torch.randn(16, 16) * 0.02).half().requires_grad_(True)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=2) as layer:
        out = et.dkm(w, layer)
        assert seen["w"] == w.data_ptr() and seen["out"] == out.data_ptr()
        out.sum().backward()


def test_saved_state_released_without_backward():
    w = (torch.randn(64, 32) * 0.02).requires_grad_(True)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=3, f32_key_dtype="f16") as layer:
        out = et.dkm(w, layer)
        assert rt.stats().live_saved_states == 1
        del out
        gc.collect()
        assert rt.stats().live_saved_states == 0
        out = et.dkm(w, layer)
        out.sum().backward(retain_graph=True)
        assert rt.stats().live_saved_states == 0
        with pytest.raises(RuntimeError, match="backward ran twice"):
            out.sum().backward()


def test_errors():
    w = torch.randn(16, 16)
    with edkm.Runtime() as rt, edkm.Layer(rt, (16, 8), bits=2) as layer:
        with pytest.raises(edkm.EdkmError):
            et.dkm(w.requires_grad_(True), layer)
    if torch.cuda.is_available():  # pragma: no cover - CPU-only here
        with pytest.raises(ValueError, match="CPU"):
            et.tensor_as_numpy(torch.randn(4, device="cuda"))


def test_non_contiguous_weight_is_copied_once():
    """A channels_last conv weight is not contiguous: the Function copies it once and the gradient
    equals the one of the contiguous weight."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * 0.1
    g = torch.randn(8, 4, 3, 3)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = w.clone().to(memory_format=fmt).requires_grad_(True)
        assert x.is_contiguous() == (fmt == torch.contiguous_format)
        with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=3) as layer:
            layer.init_centroids(w.numpy())
            out = et.dkm(x, layer)
            out.backward(g)
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
