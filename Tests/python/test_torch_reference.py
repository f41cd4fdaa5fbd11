"""libedkm against PyTorch autograd of the docs/design.md, part 1 (the math) formula (Tests/python/dkm_float64.py, in float64).

Tolerance: libedkm computes in float64 and rounds outputs and gradients to float32 once (the
uniquified path also rounds its (h, r) tables to float32): 1e-6 relative to the largest value.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
from dkm_float64 import autograd_reference as dkm_reference, rel  # noqa: E402


@pytest.mark.parametrize("algorithm", ["dense", "uniquified"])
@pytest.mark.parametrize("dtype,bits,tau", [("f16", 3, 1e-4), ("f16", 4, 1e-5), ("bf16", 2, 1e-4), ("f16", 1, 1e-5)])
def test_scalar_matches_autograd(algorithm, dtype, bits, tau):
    rng = np.random.default_rng(bits)
    w32 = (rng.standard_normal((64, 48)) * 0.02).astype(np.float32)
    if dtype == "f16":
        w = w32.astype(np.float16)
        w64 = w.astype(np.float64)
        arg = dict()
    else:
        w = edkm.f32_to_bf16(w32)
        w64 = edkm.bf16_to_f32(w).astype(np.float64)
        arg = dict(dtype="bf16")
    c0 = np.sort(rng.choice(np.unique(w64.ravel()), 2 ** bits, replace=False)).astype(np.float32)
    g = rng.standard_normal(w.shape).astype(np.float32)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=bits, tau=tau, algorithm=algorithm, temperature_mode="absolute")
        layer.centroids = c0.reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32", **arg)
        grad = state.backward(g, weights=w)
    y, gx, _ = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau, g.reshape(-1, 1))
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6


def test_vectors_and_groups_match_autograd():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((32, 40)) * 0.02).astype(np.float32)
    g = rng.standard_normal(w.shape).astype(np.float32)
    groups = 2
    c0 = np.stack([w[i * 16:(i + 1) * 16].reshape(-1, 2)[rng.choice(320, 8, replace=False)] for i in range(groups)])
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=3, cluster_dim=2, group_size=16, tau=1e-4, temperature_mode="absolute")
        layer.centroids = c0.astype(np.float32)
        out, state = layer.forward(w)
        grad = state.backward(g, weights=w)
    for i in range(groups):
        rows = slice(i * 16, (i + 1) * 16)
        y, gx, _ = dkm_reference(w[rows].astype(np.float64).reshape(-1, 2), c0[i].astype(np.float64), 1e-4,
                              g[rows].reshape(-1, 2))
        assert rel(out[rows].reshape(-1), y.reshape(-1)) < 1e-6
        assert rel(grad[rows].reshape(-1), gx.reshape(-1)) < 1e-6
