"""coremltools' keep-sparsity rule (enforce_zero with prune_threshold 0) in the core, against the
float64 PyTorch autograd reference (Tests/python/dkm_float64.py, after coremltools 9.0's
FakePalettize.diff_palettize_seq): for a vector with a nonzero element the distance to centroid 0 is
the constant 1 / zero_threshold (no gradient through it), an exact zero (also -0.0) keeps its
ordinary distance; softmax(-D / tau).clamp(min=zero_threshold); c_0 = 0 after every update.

Weights with ~40 % exact zeros (half of them -0.0). Every path: dense and uniquified (histogram)
algorithms, f32 / f16 / bf16 weights, per-tensor and grouped LUTs, cluster_dim 1 and 2, the saved
modes that recompute (histogram) and that keep N x k maps (dkm) or U x k tables (uniquify), both
temperature modes at tiny, coremltools' and huge tau (a huge tau makes every centroid, centroid 0
of the nonzero weights included, carry weight in the softmax, so the windowed kernel covers all).

Tolerance as test_torch_reference: libedkm computes in float64 and rounds outputs and gradients to
float32 once, 1e-6 relative to the largest value.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
from dkm_float64 import autograd_reference, rel  # noqa: E402


def keep_sparsity_reference(w, c0, tau, g, zero_distance, iterations=3, zt=1e-7, eps=0.0):
    """Soft output, dL/dw (L = g . y) and the last centroids; w: (n, d) float64, c0: (k, d): the
    float64 iterations with enforce_zero, prune 0 and the constant D_0 for nonzero vectors."""
    return autograd_reference(w, c0, tau, g, iterations=iterations, zt=zt, pt=0.0, eps=eps,
                              enforce_zero=True, zero_distance=zero_distance)


def sparse_weights(rng, shape, dtype, zeros=0.4):
    """Gaussian weights (std 0.02) with a fraction `zeros` set to zero, half of those to -0.0: the
    array to pass (f32, f16, or bf16 as uint16) with its dtype argument and its float64 values."""
    w32 = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    drop = rng.random(shape) < zeros
    w32[drop] = np.where(rng.random(int(drop.sum())) < 0.5, np.float32(-0.0), np.float32(0.0))
    if dtype == "f32":
        return w32, {}, w32.astype(np.float64)
    if dtype == "f16":
        w = w32.astype(np.float16)
        return w, {}, w.astype(np.float64)
    w = edkm.f32_to_bf16(w32)
    return w, dict(dtype="bf16"), edkm.bf16_to_f32(w).astype(np.float64)


def initial_centroids(rng, values, k, d=1):
    """k distinct rows of values ((n, d) float64) as float32, centroid 0 set to zero (the warm
    start of an enforce_zero layer)."""
    distinct = np.unique(values.reshape(-1, d), axis=0)
    distinct = distinct[(distinct != 0).any(1)]
    c = distinct[rng.choice(len(distinct), k, replace=False)].astype(np.float32)
    c[0] = 0
    return c


def effective(mode, tau, zt, w64, c0):
    """(tau, zero distance) in absolute units: the scale-free mode multiplies both by the
    distortion sigma^2 = mean_i min_j ||w_i - c0_j||^2 (libedkm's temperature scale)."""
    if mode == "absolute":
        return tau, 1 / zt
    s2 = float(((w64[:, None, :] - c0[None].astype(np.float64)) ** 2).sum(-1).min(1).mean())
    return tau * s2, s2 / zt


# (temperature mode, tau, zero_threshold): tiny, coremltools' default and huge temperatures. The
# huge ones give centroid 0 a real share of a nonzero weight's softmax (D_0 - min D ~ 3 tau).
TEMPERATURES = [("absolute", 1e-4, 1e-7), ("absolute", 1e-7, 1e-7), ("absolute", 300.0, 1e-3),
                ("scale_free", 0.1, 1e-7), ("scale_free", 1e-6, 1e-7), ("scale_free", 1e4, 1e-3)]
PATHS = [("f32", "dense"), ("f16", "dense"), ("f16", "uniquified"), ("bf16", "dense"), ("bf16", "uniquified")]


def run_layer(w, arg, shape, c0, bits, mode, tau, zt, g, algorithm, saved_mode="histogram", threads=0, **options):
    comm = dict(communicator=edkm.Communicator.single()) if saved_mode == "shard" else {}
    with edkm.Runtime(num_threads=threads, saved_mode=saved_mode, **comm) as rt:
        layer = edkm.Layer(rt, shape, bits=bits, tau=tau, algorithm=algorithm, temperature_mode=mode,
                           enforce_zero=True, prune_threshold=0, zero_threshold=zt, epsilon=0, **options)
        layer.centroids = c0
        out, state = layer.forward(w, out_dtype="f32", **arg)
        grad = state.backward(g, weights=w)
        return out, grad, layer.centroids


@pytest.mark.parametrize("dtype,algorithm", PATHS)
@pytest.mark.parametrize("mode,tau,zt", TEMPERATURES)
def test_per_tensor_matches_autograd(dtype, algorithm, mode, tau, zt):
    rng = np.random.default_rng(11)
    w, arg, w64 = sparse_weights(rng, (48, 40), dtype)
    c0 = initial_centroids(rng, w64, 8)
    g = rng.standard_normal(w.shape).astype(np.float32)
    out, grad, c_after = run_layer(w, arg, w.shape, c0.reshape(1, -1, 1), 3, mode, tau, zt, g, algorithm)
    tau_a, d0 = effective(mode, tau, zt, w64.reshape(-1, 1), c0.reshape(-1, 1))
    y, gx, c_ref = keep_sparsity_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau_a,
                                           g.reshape(-1, 1), d0, zt=zt)
    errors = rel(c_after.reshape(-1), c_ref.reshape(-1)), rel(out.reshape(-1), y.reshape(-1)), rel(grad.reshape(-1), gx.reshape(-1))
    print(f"keep-sparsity {dtype} {algorithm} {mode} tau {tau:g} z {zt:g}: centroids {errors[0]:.1e} "
          f"soft {errors[1]:.1e} gradients {errors[2]:.1e}")  # shown with pytest -s
    assert c_after.reshape(-1)[0] == 0
    assert rel(c_after.reshape(-1), c_ref.reshape(-1)) < 1e-6
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6
    if tau <= 1e-4 or mode == "scale_free" and tau < 1:
        # the rule changes the result (the test can fail): plain enforce_zero (D_0 = (w - c_0)^2 for
        # every weight, prune 0) differs
        gx_plain = _plain_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau_a,
                                    g.reshape(-1, 1), zt)
        assert rel(gx_plain.reshape(-1), gx.reshape(-1)) > 1e-3


def _plain_reference(w, c0, tau, g, zt):
    """enforce_zero without keep-sparsity, prune 0: the reference with every D_0 ordinary."""
    return autograd_reference(w, c0, tau, g, zt=zt, pt=0.0, eps=None, enforce_zero=True)[1]


@pytest.mark.parametrize("saved_mode,dtype,algorithm", [("dkm", "f32", "dense"), ("dkm", "bf16", "dense"),
                                                        ("uniquify", "f16", "uniquified"),
                                                        ("marshal", "f16", "dense"), ("dedup", "f32", "dense"),
                                                        ("shard", "bf16", "uniquified")])
@pytest.mark.parametrize("mode,tau,zt", [TEMPERATURES[0], TEMPERATURES[2], TEMPERATURES[3]])
def test_saved_maps_match_autograd(saved_mode, dtype, algorithm, mode, tau, zt):
    """The modes that keep the forward's softmax maps (dkm, marshal, dedup: N x k; uniquify, shard:
    U x k) run the row-at-a-time kernel in both passes."""
    rng = np.random.default_rng(12)
    w, arg, w64 = sparse_weights(rng, (40, 24), dtype)
    c0 = initial_centroids(rng, w64, 4)
    g = rng.standard_normal(w.shape).astype(np.float32)
    out, grad, _ = run_layer(w, arg, w.shape, c0.reshape(1, -1, 1), 2, mode, tau, zt, g, algorithm, saved_mode)
    tau_a, d0 = effective(mode, tau, zt, w64.reshape(-1, 1), c0.reshape(-1, 1))
    y, gx, _ = keep_sparsity_reference(w64.reshape(-1, 1), c0.astype(np.float64).reshape(-1, 1), tau_a,
                                       g.reshape(-1, 1), d0, zt=zt)
    assert rel(out.reshape(-1), y.reshape(-1)) < 1e-6
    assert rel(grad.reshape(-1), gx.reshape(-1)) < 1e-6


@pytest.mark.parametrize("cluster_dim,algorithm,dtype", [(1, "uniquified", "f16"), (1, "dense", "f32"),
                                                         (2, "dense", "f32"), (2, "dense", "bf16")])
@pytest.mark.parametrize("mode,tau,zt", [TEMPERATURES[0], TEMPERATURES[2], TEMPERATURES[3]])
def test_grouped_and_vectors_match_autograd(cluster_dim, algorithm, dtype, mode, tau, zt):
    """One LUT per 16 rows; cluster_dim 2: a vector with any nonzero element has the constant D_0
    (~48 % of the vectors here mix a zero and a nonzero element), an all-zero vector its own."""
    rng = np.random.default_rng(13)
    d, rows = cluster_dim, 16
    w, arg, w64 = sparse_weights(rng, (32, 40), dtype)
    g = rng.standard_normal(w.shape).astype(np.float32)
    c0 = np.stack([initial_centroids(rng, w64[i * rows:(i + 1) * rows].reshape(-1, d), 8, d) for i in range(2)])
    if d == 2:
        mixed = ((w64.reshape(-1, 2) == 0).sum(1) == 1).mean()
        assert mixed > 0.3
    out, grad, _ = run_layer(w, arg, w.shape, c0, 3, mode, tau, zt, g, algorithm, cluster_dim=d, group_size=rows)
    for i in range(2):
        part = slice(i * rows, (i + 1) * rows)
        v = w64[part].reshape(-1, d)
        tau_a, d0 = effective(mode, tau, zt, v, c0[i])
        y, gx, _ = keep_sparsity_reference(v, c0[i].astype(np.float64), tau_a, g[part].reshape(-1, d), d0, zt=zt)
        assert rel(out[part].reshape(-1), y.reshape(-1)) < 1e-6
        assert rel(grad[part].reshape(-1), gx.reshape(-1)) < 1e-6


def test_reference_gradient_matches_finite_differences():
    """The reference's dropped D_0 adjoint is the derivative of the function it computes: central
    differences of L = g . y at nonzero weights (a step 1e-7 of weights ~0.02 never reaches zero),
    float64, h^2 truncation ~1e-10 relative."""
    rng = np.random.default_rng(14)
    w, _, w64 = sparse_weights(rng, (12, 10), "f32")
    c0 = initial_centroids(rng, w64, 4).astype(np.float64).reshape(-1, 1)
    g = rng.standard_normal(w.shape).reshape(-1, 1)
    v = w64.reshape(-1, 1)
    tau, d0 = 1e-3, 1e7
    _, gx, _ = keep_sparsity_reference(v, c0, tau, g, d0)

    def loss(x):
        y, _, _ = keep_sparsity_reference(x, c0, tau, g, d0)
        return float((y * g).sum())

    h = 1e-7
    checked = 0
    for i in np.flatnonzero(v[:, 0] != 0)[:12]:
        up, down = v.copy(), v.copy()
        up[i] += h
        down[i] -= h
        fd = (loss(up) - loss(down)) / (2 * h)
        assert abs(fd - gx[i, 0]) <= 1e-5 * np.abs(gx).max(), (i, fd, gx[i, 0])
        checked += 1
    assert checked == 12


@pytest.mark.parametrize("mode,tau", [("absolute", 1e-4), ("scale_free", 0.1)])
def test_thread_counts_bit_identical(mode, tau):
    """Several blocks of rows (2048 per block) on 1 and 2 threads: the same bits."""
    rng = np.random.default_rng(15)
    w, arg, w64 = sparse_weights(rng, (128, 96), "f32")
    c0 = initial_centroids(rng, w64, 16).reshape(1, -1, 1)
    g = rng.standard_normal(w.shape).astype(np.float32)
    for algorithm, ww, a in (("dense", w, arg), ("uniquified", w.astype(np.float16), {})):
        runs = [run_layer(ww, a, w.shape, c0, 4, mode, tau, 1e-7, g, algorithm, threads=t) for t in (1, 2)]
        assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1])), algorithm


def test_scale_free_zero_distance_is_in_units_of_the_distortion():
    """Scale-free: D_0 = sigma^2 / z, so multiplying the weights by 4 (exact in f32) multiplies the
    output by 4 and leaves the gradient of g . y unchanged (to float32 rounding)."""
    rng = np.random.default_rng(16)
    w, arg, w64 = sparse_weights(rng, (48, 40), "f32")
    c0 = initial_centroids(rng, w64, 8).reshape(1, -1, 1)
    g = rng.standard_normal(w.shape).astype(np.float32)
    # zt 1e-3 and tau 1e4: centroid 0 has a real share of the softmax, so D_0's unit shows
    out1, grad1, _ = run_layer(w, arg, w.shape, c0, 3, "scale_free", 1e4, 1e-3, g, "dense")
    out4, grad4, _ = run_layer(w * 4, arg, w.shape, c0 * 4, 3, "scale_free", 1e4, 1e-3, g, "dense")
    assert rel(out4, 4 * out1) < 1e-6
    assert rel(grad4, grad1) < 1e-6


def test_export_keeps_zeros_and_labels_by_plain_argmin():
    """After training, export labels every exact zero 0 (LUT[0] = 0: the unpacked zeros are exact)
    and every weight by the plain nearest LUT entry, as coremltools' finalize: a nonzero weight
    nearer 0 than any other entry is labelled 0 too (keep-sparsity is a rule of the soft forward)."""
    rng = np.random.default_rng(17)
    w, _, w64 = sparse_weights(rng, (64, 48), "f16")
    w[0, :4] = np.float16(1e-4)  # small nonzero weights, nearest the zero centroid
    w64 = w.astype(np.float64)
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, w.shape, bits=2, tau=1e-4, temperature_mode="absolute", enforce_zero=True,
                           prune_threshold=0)
        layer.init_centroids(w)
        for _ in range(2):
            out, state = layer.forward(w)
            state.close()
        lut, packed = layer.export(w)
        labels = layer.labels(packed)
        unpacked = layer.unpack(lut, packed)
    assert lut[0, 0, 0] == 0
    nearest = np.abs(w64.reshape(-1, 1) - lut[0, :, 0].astype(np.float64)[None]).argmin(1)
    assert np.array_equal(labels, nearest)
    zero = w64.reshape(-1) == 0
    assert (labels[zero] == 0).all() and (unpacked.reshape(-1)[zero] == 0).all()
    assert (labels[:4] == 0).all()
    # in the soft forward those small weights attend to the zero centroid only at the clamp
    assert (out.reshape(-1)[:4].astype(np.float64) != 0).all()
