"""coremltools' palettization options in the core (enforce_zero), against PyTorch float64 autograd
of the same iterations (Tests/python/dkm_float64.py, after coremltools' FakePalettize.diff_palettize_seq).

Tolerance as test_torch_reference: libedkm computes in float64 and rounds outputs and gradients to
float32 once, 1e-6 relative to the largest value.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
from dkm_float64 import autograd_reference as dkm_reference, rel  # noqa: E402


@pytest.mark.parametrize("algorithm", ["dense", "uniquified"])
@pytest.mark.parametrize("bits,tau", [(3, 1e-4), (1, 1e-4), (4, 3e-5)])
def test_enforce_zero_matches_autograd(algorithm, bits, tau):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((48, 40)) * 0.02).astype(np.float16)
    w64 = w.astype(np.float64)
    c0 = np.sort(rng.choice(np.unique(w64.ravel()), 2 ** bits, replace=False)).astype(np.float32)
    c0[0] = 0  # the warm start of an enforce_zero layer
    g = rng.standard_normal(w.shape).astype(np.float32)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=bits, tau=tau, algorithm=algorithm, temperature_mode="absolute",
                           enforce_zero=True)
        layer.centroids = c0.reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32")
        grad = state.backward(g, weights=w)
        c_after = layer.centroids.reshape(-1)
    y, gx, c_ref = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau, g.reshape(-1, 1),
                                 enforce_zero=True)
    assert c_after[0] == 0
    assert rel(c_after, c_ref.reshape(-1)) < 1e-6
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6
    # the option changes the result (the test can fail): the free-centroid run differs
    y_free, gx_free, _ = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau, g.reshape(-1, 1))
    assert rel(gx_free.reshape(-1), gx.reshape(-1)) > 1e-3


def test_enforce_zero_vectors_and_groups_match_autograd():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((32, 40)) * 0.02).astype(np.float32)
    g = rng.standard_normal(w.shape).astype(np.float32)
    c0 = np.stack([w[i * 16:(i + 1) * 16].reshape(-1, 2)[rng.choice(320, 8, replace=False)] for i in range(2)])
    c0[:, 0] = 0
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=3, cluster_dim=2, group_size=16, tau=1e-4, temperature_mode="absolute",
                           enforce_zero=True)
        layer.centroids = c0.astype(np.float32)
        out, state = layer.forward(w)
        grad = state.backward(g, weights=w)
    for i in range(2):
        rows = slice(i * 16, (i + 1) * 16)
        y, gx, _ = dkm_reference(w[rows].astype(np.float64).reshape(-1, 2), c0[i].astype(np.float64), 1e-4,
                                 g[rows].reshape(-1, 2), enforce_zero=True)
        assert rel(out[rows].reshape(-1), y.reshape(-1)) < 1e-6
        assert rel(grad[rows].reshape(-1), gx.reshape(-1)) < 1e-6


@pytest.mark.parametrize("cluster_dim", [1, 2])
def test_enforce_zero_initialisation_places_zero_first(cluster_dim):
    """coremltools: the initial centroid nearest zero is replaced by zero and swapped to index 0."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((16, 64)) * 0.02 + 0.01).astype(np.float32)
    with edkm.Runtime() as rt:
        free = edkm.Layer(rt, w.shape, bits=2, cluster_dim=cluster_dim, init="kmeans++")
        free.init_centroids(w)
        fixed = edkm.Layer(rt, w.shape, bits=2, cluster_dim=cluster_dim, init="kmeans++", enforce_zero=True)
        fixed.init_centroids(w)
        c, z = free.centroids[0], fixed.centroids[0]
    nearest = int(np.argmin((c.astype(np.float64) ** 2).sum(1)))
    expected = c.copy()
    expected[nearest] = c[0]
    expected[0] = 0
    assert np.array_equal(z, expected)


def test_enforce_zero_refusals():
    with edkm.Runtime() as rt:
        # prune_threshold 0 is coremltools' keep-sparsity rule (Tests/python/test_keep_sparsity.py)
        edkm.Layer(rt, (8, 8), bits=2, enforce_zero=True, prune_threshold=0).close()
        with pytest.raises(TypeError, match="enforce_zero"):
            edkm.Layer(rt, (8, 8), bits=2, enforce_zero=1)
        edkm.Layer(rt, (8, 8), bits=1, enforce_zero=True).close()  # one free centroid: allowed


@pytest.mark.parametrize("algorithm", ["dense", "uniquified"])
@pytest.mark.parametrize("lut_dtype,bits,enforce_zero", [("i8", 3, False), ("u8", 3, False), ("u8", 2, True),
                                                         ("i8", 4, True)])
def test_lut_quantization_matches_autograd(algorithm, lut_dtype, bits, enforce_zero):
    rng = np.random.default_rng(bits + 10)
    w = (rng.standard_normal((48, 40)) * 0.02 + 0.004).astype(np.float16)  # not centred: u8's zero point moves
    w64 = w.astype(np.float64)
    c0 = np.sort(rng.choice(np.unique(w64.ravel()), 2 ** bits, replace=False)).astype(np.float32)
    if enforce_zero:
        c0[0] = 0
    g = rng.standard_normal(w.shape).astype(np.float32)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=bits, tau=1e-4, algorithm=algorithm, temperature_mode="absolute",
                           enforce_zero=enforce_zero, lut_dtype=lut_dtype)
        layer.centroids = c0.reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32")
        grad = state.backward(g, weights=w)
        c_after = layer.centroids.reshape(-1).astype(np.float64)
    y, gx, c_ref = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), 1e-4, g.reshape(-1, 1),
                                 enforce_zero=enforce_zero, lut_dtype=lut_dtype)
    assert rel(c_after, c_ref.reshape(-1)) < 1e-6
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6
    # the centroids are on the 8-bit grid of their own LUT: 8-bit integers after scale / zero point
    scale, zp = edkm.lut_quantization(c_after, lut_dtype)
    q = c_after / scale + zp
    assert np.abs(q - np.round(q)).max() < 1e-3
    lo, hi = (-128, 127) if lut_dtype == "i8" else (0, 255)
    assert q.min() > lo - 0.5 and q.max() < hi + 0.5
    # and they differ from the float run (the quantization is not a no-op here)
    _, _, c_float = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), 1e-4, g.reshape(-1, 1),
                                  enforce_zero=enforce_zero)
    assert np.abs(c_float.reshape(-1) - c_after).max() > 1e-7


def test_lut_quantization_of_a_wide_lut_does_not_overflow():
    """A LUT far outside the int8 value range: the scale comes from the LUT's own range, so every
    value stays representable (documented in edkm.h, edkm_lut_dtype)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((32, 64)) * 300).astype(np.float32)
    with edkm.Runtime() as rt:
        for lut_dtype in ("i8", "u8"):
            layer = edkm.Layer(rt, w.shape, bits=3, lut_dtype=lut_dtype)
            layer.forward(w, save=False)
            c = layer.centroids.reshape(-1).astype(np.float64)
            scale, zp = edkm.lut_quantization(c, lut_dtype)
            q = np.round(c / scale + zp)
            assert np.all(np.isfinite(c)) and np.abs(c / scale + zp - q).max() < 1e-3
            assert np.abs(c).max() > 127  # far outside the integer range itself
        with pytest.raises(ValueError, match="lut_dtype"):
            edkm.Layer(rt, w.shape, lut_dtype="f16")


@pytest.mark.parametrize("saved_mode", ["histogram", "dkm", "marshal", "dedup", "uniquify", "shard"])
def test_new_options_in_every_saved_mode(saved_mode):
    """enforce_zero + u8 LUT quantization through each saved-state mode (the raw updates travel in
    the saved trace): same gradients as the autograd reference."""
    rng = np.random.default_rng(21)
    w = (rng.standard_normal((32, 40)) * 0.02 + 0.003).astype(np.float16)
    w64 = w.astype(np.float64)
    c0 = np.sort(rng.choice(np.unique(w64.ravel()), 8, replace=False)).astype(np.float32)
    c0[0] = 0
    g = rng.standard_normal(w.shape).astype(np.float32)
    with edkm.Runtime(saved_mode=saved_mode) as rt:
        layer = edkm.Layer(rt, w.shape, bits=3, tau=1e-4, temperature_mode="absolute", enforce_zero=True,
                           lut_dtype="u8")
        layer.centroids = c0.reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32")
        grad = state.backward(g, weights=w)
    y, gx, _ = dkm_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), 1e-4, g.reshape(-1, 1),
                             enforce_zero=True, lut_dtype="u8")
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6
