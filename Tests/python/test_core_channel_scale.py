"""The per-output-channel scale in the core (edkm_layer_config.channel_scale, edkm_channel_scale in
edkm.h): forward and backward against the unscaled DKM reference (PyTorch float64 autograd,
dkm_float64.autograd_reference) applied to the scaled rows, finite differences of the
library's own forward, zero and constant rows, groups, vectors, every saved mode, the export round
trip, and the bad inputs.

Tolerances: against the float64 reference 1e-6 relative to the largest value (libedkm computes in
float64 and rounds outputs and gradients to float32 once, as test_core_coremltools_options); finite
differences 2e-3 (central differences of float32 outputs with h = 1e-3: rounding noise about 1e-4
of the derivative, truncation below that at tau 0.02 on rows scaled to [-1, 1]).
"""
import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
from edkm import _ffi  # noqa: E402
from dkm_float64 import autograd_reference as dkm_reference, rel  # noqa: E402


def factors(w, scheme):
    """coremltools' per_channel_scaling_factor of w's rows (written here, independently of the
    library), with libedkm's rule for a factor of 0: the row's largest magnitude, else 1."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    peak = np.abs(rows).max(1)
    s = 0.5 * (rows.max(1) - rows.min(1)) if scheme == "min_max" else peak
    return np.where(s > 0, s, np.where(peak > 0, peak, 1.0)).astype(np.float32)


def scaled_reference(w, s, c0, tau, g, d=1, **options):
    """(w~, dL/dw) of w~ = s f(w / s) with f the DKM reference and s constant: f on the scaled rows
    (rounded to w's dtype, as the library and torch divide), the gradient by the chain rule
    dL/dw = (1 / s) J_f^T (s dL/dw~)."""
    rows = w.shape[0]
    x = (w.reshape(rows, -1).astype(np.float32) / s[:, None]).astype(w.dtype).astype(np.float64)
    gs = g.reshape(rows, -1).astype(np.float64) * s[:, None]
    y, gx, c = dkm_reference(x.reshape(-1, d), np.asarray(c0, np.float64).reshape(-1, d), tau, gs.reshape(-1, d),
                             **options)
    return ((y.reshape(rows, -1) * s[:, None]).reshape(w.shape), (gx.reshape(rows, -1) / s[:, None]).reshape(w.shape),
            c)


def weights(rows=24, cols=40, dtype=np.float32, seed=0):
    """Rows of very different magnitudes (what the per-channel scale is for)."""
    rng = np.random.default_rng(seed)
    magnitude = np.exp(rng.uniform(-4, 1, (rows, 1)))
    return (rng.standard_normal((rows, cols)) * magnitude).astype(dtype)


@pytest.mark.parametrize("algorithm,dtype", [("dense", np.float32), ("dense", np.float16), ("uniquified", np.float16)])
@pytest.mark.parametrize("scheme", ["min_max", "abs"])
def test_forward_and_backward_match_the_reference_on_scaled_rows(algorithm, dtype, scheme):
    w = weights(dtype=dtype)
    g = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    s = factors(w, scheme)
    c0 = np.linspace(-0.9, 0.9, 8).astype(np.float32)
    tau = 3e-3
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=3, tau=tau, temperature_mode="absolute", algorithm=algorithm,
                           channel_scale=scheme)
        layer.centroids = c0.reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32")
        grad = state.backward(g.astype(dtype), weights=w).astype(np.float32)
        np.testing.assert_allclose(layer.channel_scale_factors, s, rtol=1e-6)
        c_after = layer.centroids.reshape(-1)
    y, gx, c_ref = scaled_reference(w, s, c0, tau, g.astype(dtype).astype(np.float64))
    assert rel(c_after, c_ref.reshape(-1)) < 1e-6
    assert rel(out, y) < 1e-6
    # an f16 gradient is rounded to f16 once more (relative 2^-11)
    assert rel(grad, gx) < (1e-6 if dtype == np.float32 else 1e-3)
    # the scale changes the result (the test can fail): the unscaled layer's output differs
    with edkm.Runtime() as rt:
        plain = edkm.Layer(rt, w.shape, bits=3, tau=tau, temperature_mode="absolute", algorithm=algorithm)
        plain.centroids = c0.reshape(1, -1, 1)
        assert rel(plain.forward(w, out_dtype="f32", save=False), y) > 1e-2


def test_gradient_matches_finite_differences_with_the_scale_held_constant():
    """The factors are fixed at the first forward (coremltools computes them once): the backward is
    the derivative of w -> s f(w / s) with s constant, which central differences of the library's
    forward (same s, same initial centroids each time) measure; a scale recomputed from the
    perturbed weights would give another derivative, which the test tells apart."""
    w = weights(rows=8, cols=24, seed=3).astype(np.float64)
    c0 = np.linspace(-0.8, 0.8, 4).astype(np.float32).reshape(1, -1, 1)
    rng = np.random.default_rng(4)
    g = rng.standard_normal(w.shape)
    v = rng.standard_normal(w.shape) * np.abs(w).max(1, keepdims=True)  # a direction scaled per row like w
    tau, h = 2e-2, 1e-3
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, tau=tau, temperature_mode="absolute", channel_scale="min_max")

        def loss(x, save=False):
            layer.centroids = c0
            result = layer.forward(x.astype(np.float32), out_dtype="f32", save=save)
            return result if save else float((g * result).sum())

        out, state = loss(w, save=True)
        grad = state.backward(g.astype(np.float32), weights=w.astype(np.float32)).astype(np.float64)
        s = layer.channel_scale_factors
        numeric = (loss(w + h * v) - loss(w - h * v)) / (2 * h)
        assert np.array_equal(layer.channel_scale_factors, s)  # the perturbed forwards kept the factors
    analytic = float((grad * v).sum())
    assert abs(numeric - analytic) <= 2e-3 * abs(analytic)
    # the same difference with the factors recomputed from each perturbed input is another number
    with edkm.Runtime() as rt:
        def loss_rescaled(x):
            fresh = edkm.Layer(rt, w.shape, bits=2, tau=tau, temperature_mode="absolute", channel_scale="min_max")
            fresh.centroids = c0
            return float((g * fresh.forward(x.astype(np.float32), out_dtype="f32", save=False)).sum())
        rescaled = (loss_rescaled(w + h * v) - loss_rescaled(w - h * v)) / (2 * h)
    assert abs(rescaled - analytic) > 2e-2 * abs(analytic)


def test_zero_and_constant_rows_are_finite_and_documented():
    w = weights(rows=8, cols=32, seed=5)
    w[0] = 0          # zero row: factor 1
    w[3] = -0.25      # constant row: min_max factor 0 -> its magnitude 0.25
    g = np.ones_like(w)
    with edkm.Runtime() as rt:
        for scheme in ["min_max", "abs"]:
            layer = edkm.Layer(rt, w.shape, bits=2, temperature_mode="absolute", tau=1e-3, channel_scale=scheme)
            out, state = layer.forward(w)
            grad = state.backward(g, weights=w)
            s = layer.channel_scale_factors
            assert s[0] == 1 and s[3] == 0.25
            assert np.isfinite(out).all() and np.isfinite(grad).all()
            np.testing.assert_allclose(s, factors(w, scheme), rtol=1e-6)


def test_groups_and_vectors_match_the_reference():
    w = weights(rows=16, cols=24, seed=6)
    g = np.random.default_rng(7).standard_normal(w.shape).astype(np.float32)
    s = factors(w, "abs")
    rng = np.random.default_rng(8)
    c0 = rng.uniform(-0.9, 0.9, (2, 4, 2)).astype(np.float32)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, cluster_dim=2, group_size=8, tau=1e-2, temperature_mode="absolute",
                           channel_scale="abs", enforce_zero=False)
        layer.centroids = c0
        out, state = layer.forward(w)
        grad = state.backward(g, weights=w)
    for i in range(2):
        rows = slice(i * 8, (i + 1) * 8)
        y, gx, _ = scaled_reference(w[rows], s[rows], c0[i], 1e-2, g[rows], d=2)
        assert rel(out[rows], y) < 1e-6
        assert rel(grad[rows], gx) < 1e-6


@pytest.mark.parametrize("saved_mode", ["histogram", "dkm", "marshal", "dedup", "uniquify", "shard"])
@pytest.mark.parametrize("keep_weights", [False, True])
def test_every_saved_mode(saved_mode, keep_weights):
    w = weights(dtype=np.float16, seed=9)
    g = np.random.default_rng(10).standard_normal(w.shape).astype(np.float32)
    s = factors(w, "min_max")
    c0 = np.linspace(-0.9, 0.9, 4).astype(np.float32)
    with edkm.Runtime(saved_mode=saved_mode, keep_weights=keep_weights) as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, tau=3e-3, temperature_mode="absolute", channel_scale="min_max",
                           enforce_zero=True)
        layer.centroids = np.concatenate([[0], c0[1:]]).astype(np.float32).reshape(1, -1, 1)
        out, state = layer.forward(w, out_dtype="f32")
        grad = state.backward(g, dtype="f32", weights=None if keep_weights and saved_mode == "histogram" else w)
        with pytest.raises(edkm.EdkmError, match="WEIGHTS_CHANGED|STATE"):
            _, again = layer.forward(w, out_dtype="f32")
            changed = w.copy()
            changed[0, 0] = -changed[0, 0] if changed[0, 0] != 0 else 1
            again.backward(g, dtype="f32", weights=changed)
    y, gx, _ = scaled_reference(w, s, np.concatenate([[0], c0[1:]]), 3e-3, g, enforce_zero=True)
    assert rel(out, y) < 1e-6
    assert rel(grad, gx) < 1e-6


def test_set_factors_are_used_and_kept():
    w = weights(seed=11)
    s = np.linspace(0.5, 3, w.shape[0]).astype(np.float32)
    c0 = np.linspace(-2, 2, 4).astype(np.float32)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, tau=1e-2, temperature_mode="absolute", channel_scale="abs")
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors  # nothing seen yet
        layer.channel_scale_factors = s
        layer.centroids = c0.reshape(1, -1, 1)
        out = layer.forward(w, out_dtype="f32", save=False)
        layer.forward(2 * w, out_dtype="f32", save=False)  # other weights: the factors stay
        assert np.array_equal(layer.channel_scale_factors, s)
    y, _, _ = scaled_reference(w, s, c0, 1e-2, np.zeros_like(w))
    assert rel(out, y) < 1e-6


def test_init_centroids_fixes_the_factors_and_clusters_the_scaled_rows():
    w = weights(seed=12)
    s = factors(w, "min_max")
    with edkm.Runtime() as rt:
        scaled = edkm.Layer(rt, w.shape, bits=3, channel_scale="min_max")
        scaled.init_centroids(w)
        plain = edkm.Layer(rt, w.shape, bits=3)
        plain.init_centroids((w / s[:, None]).astype(np.float32))
        np.testing.assert_array_equal(scaled.centroids, plain.centroids)
        np.testing.assert_allclose(scaled.channel_scale_factors, s, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_export_round_trip(dtype):
    """export clusters w / s (labels of the scaled rows), its LUT is in the scaled units, and
    unpack(lut, labels) x s is the hard palettization s_r c[argmin_j |w / s_r - c_j|]."""
    w = weights(rows=16, cols=32, dtype=dtype, seed=13)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, group_size=8, channel_scale="min_max")
        layer.forward(w, save=False)
        lut, packed = layer.export(w)
        s = layer.channel_scale_factors
        unpacked = layer.unpack(lut, packed, out_dtype="f32")
    c = np.asarray(lut, np.float64).reshape(2, 4)
    x = (w.astype(np.float32) / s[:, None]).astype(dtype).astype(np.float64)
    expected = np.empty_like(x)
    for i in range(2):
        rows = x[i * 8:(i + 1) * 8]
        labels = np.argmin((rows[..., None] - c[i]) ** 2 - np.array([1e-7, 0, 0, 0]), -1)
        expected[i * 8:(i + 1) * 8] = c[i][labels]
    np.testing.assert_array_equal(unpacked.astype(np.float64), expected.astype(np.float32))
    # the hard weights are close to w: every row within its own scale's reach
    hard = unpacked * s[:, None]
    assert np.abs(hard - w.astype(np.float32)).max(1).max() <= 1.01 * s.max()


def test_bad_input():
    ffi = _ffi
    shape = (ctypes.c_int64 * 2)(16, 16)
    with edkm.Runtime() as rt:
        def create(**fields):
            cfg = ffi.edkm_layer_config()
            ffi.edkm_layer_config_init(ctypes.byref(cfg))
            for k, v in fields.items():
                setattr(cfg, k, v)
            h = ffi.edkm_layer_p()
            status = ffi.edkm_layer_create(rt._handle(), ctypes.byref(cfg), shape, 2, ctypes.byref(h))
            return status, h

        for value in [3, -1]:
            status, _ = create(channel_scale=value)
            assert status == ffi.EDKM_ERR_INVALID_ARGUMENT
            assert f"channel_scale {value}".encode() in ffi.edkm_last_error()
        # a 0.4-sized struct (ending before channel_scale) with garbage after it: channel_scale stays NONE
        old_size = ffi.edkm_layer_config.channel_scale.offset
        status, h = create(struct_size=old_size, channel_scale=7)
        assert status == 0
        got = ffi.edkm_layer_config()
        ffi.edkm_layer_config_init(ctypes.byref(got))
        assert ffi.edkm_layer_get_config(h, ctypes.byref(got)) == 0 and got.channel_scale == 0
        out = np.empty(16, np.float32)
        fp = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        assert ffi.edkm_layer_get_channel_scale(h, fp, 16) == ffi.EDKM_ERR_INVALID_ARGUMENT
        assert b"channel_scale NONE" in ffi.edkm_last_error()
        ffi.edkm_layer_destroy(h)

        layer = edkm.Layer(rt, (16, 16), bits=2, channel_scale="abs")
        for bad in [np.zeros(16, np.float32), np.full(16, np.nan, np.float32), -np.ones(16, np.float32),
                    np.full(16, np.inf, np.float32)]:
            with pytest.raises(edkm.EdkmError, match="INVALID_ARGUMENT"):
                layer.channel_scale_factors = bad
        with pytest.raises(edkm.EdkmError, match="SHAPE"):
            layer.channel_scale_factors = np.ones(15, np.float32)
        assert ffi.edkm_layer_get_channel_scale(layer._handle(), fp, 15) == ffi.EDKM_ERR_SHAPE
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors
        # the histogram form needs the factors fixed first (its keys are those of w / s:
        # test_device_channel_scale.py); it fixes nothing itself
        w = weights(rows=16, cols=16, dtype=np.float16, seed=14)
        keys, counts = np.unique(w.view(np.uint16), return_counts=True)
        with pytest.raises(edkm.EdkmError, match="STATE.*channel scale factors are not fixed"):
            layer.forward_histogram(keys, counts.astype(np.float64))
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors
        # non-finite weights: nothing fixed either
        bad = w.copy()
        bad[2, 2] = np.nan
        with pytest.raises(edkm.EdkmError, match="NON_FINITE"):
            layer.forward(bad)
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors


def test_torch_state_dict_keeps_the_factors_and_finalize_registers_them():
    """edkm.torch: the factors are DKMWeight's `channel_scale` buffer, restored by load_state_dict
    (a model whose weights changed since still uses the saved factors), and finalize registers
    coremltools' palettization_scale (out, 1) with hard weights lut[label] x s."""
    from torch import nn
    import edkm.torch as et

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 0, 32)[:, None])
    et.palettize(model, bits=2, channel_scale="abs", temperature_mode="absolute", tau=1e-3)
    x = torch.randn(4, 24)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # factors fixed at palettize (init)
    expected = model(x)
    key = "0.parametrizations.weight.0.channel_scale"
    np.testing.assert_allclose(state[key].numpy(), factors(state["0.parametrizations.weight.original"].numpy(), "abs"),
                               rtol=1e-6)
    twin = nn.Sequential(nn.Linear(24, 32))
    et.palettize(twin, bits=2, channel_scale="abs", temperature_mode="absolute", tau=1e-3)  # other weights, other factors
    twin.load_state_dict(state)
    assert torch.equal(twin(x), expected)
    p = et.palettized(twin)[0][3]
    assert np.array_equal(p.layer.channel_scale_factors, state[key].numpy())
    et.finalize(model)
    registered = model[0].get_buffer("_COREML_/weight/palettization_scale")
    assert registered.shape == (32, 1) and torch.equal(registered.reshape(-1), state[key])
    lut = model[0].get_buffer("_COREML_/weight/lut").reshape(-1)
    w = model[0].weight.detach()
    for r in range(32):  # every hard weight of row r is one of the LUT values times s_r
        values = (lut * registered[r]).float()
        assert torch.isclose(w[r][:, None], values[None, :], rtol=1e-6, atol=0).any(1).all()
