"""The library's forward/backward through the binding against a float64 numpy reference of the DKM
math in docs/design.md, part 1 (the math) (what the binding hands over is what the library computes on:
dtype codes, counts, layouts of centroids and groups)."""

import numpy as np
import pytest


def ref_dkm(w, c0, tau, iters, eps, z=1e-7, p=1e-7):
    """w: (G, n, d) float64, c0: (G, k, d). Returns (out (G, n, d), c^T (G, k, d), iterations, inertia)."""
    outs, cs, n_it, inertia = [], [], 0, 0.0
    for g in range(w.shape[0]):
        x, c, prev = w[g], c0[g].copy(), None
        for t in range(iters):
            D = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
            D[:, 0] -= p
            a = -D / tau
            a -= a.max(1, keepdims=True)
            A = np.exp(a)
            A /= A.sum(1, keepdims=True)
            A = np.maximum(A, z)
            S = A.sum(0)
            c = (A.T @ x) / S[:, None]
            inert = D.min(1).sum()
            done = t > 0 and abs(prev - inert) <= eps
            prev = inert
            if done:
                break
        outs.append(A @ c)
        cs.append(c)
        n_it = max(n_it, t + 1)
        inertia += inert
    return np.stack(outs), np.stack(cs), n_it, inertia


def ref_grad(w, g, c0, tau, iters, eps, h=1e-6):
    """d/dw of sum(g * out) by central differences (w, g: (G, n, d))."""
    flat = w.reshape(-1).copy()
    grad = np.empty_like(flat)
    for i in range(flat.size):
        flat[i] += h
        up = (g * ref_dkm(flat.reshape(w.shape), c0, tau, iters, eps)[0]).sum()
        flat[i] -= 2 * h
        dn = (g * ref_dkm(flat.reshape(w.shape), c0, tau, iters, eps)[0]).sum()
        flat[i] += h
        grad[i] = (up - dn) / (2 * h)
    return grad.reshape(w.shape)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


CASES = [
    # (shape, bits, d, group_size, weights dtype, algorithm)
    ((8, 8), 2, 1, 0, np.float32, "dense"),
    ((8, 8), 2, 1, 0, np.float16, "uniquified"),
    ((8, 8), 2, 1, 0, np.float16, "dense"),
    ((8, 8), 2, 1, 4, np.float32, "auto"),
    ((8, 8), 2, 1, 4, np.float16, "auto"),
    ((4, 8), 2, 2, 0, np.float32, "auto"),
    ((4, 12), 1, 3, 2, np.float32, "dense"),
]


@pytest.mark.parametrize("shape,bits,d,group_size,wdtype,algorithm", CASES)
def test_forward_and_backward_match_reference(lib, shape, bits, d, group_size, wdtype, algorithm):
    tau, iters, eps = 0.05, 3, 0.0
    rng = np.random.default_rng(sum(shape) + bits + d)
    w = rng.uniform(-1, 1, shape).astype(wdtype)
    g = rng.standard_normal(shape).astype(np.float32)
    groups = shape[0] // group_size if group_size else 1
    k = 2 ** bits
    if d == 1:
        c0 = np.tile(np.linspace(-0.75, 0.75, k, dtype=np.float32)[None, :, None], (groups, 1, 1))
    else:
        c0 = rng.uniform(-0.8, 0.8, (groups, k, d)).astype(np.float32)
    with lib.Runtime(num_threads=2) as rt, lib.Layer(rt, shape, bits=bits, cluster_dim=d, group_size=group_size,
                                                     max_iterations=iters, tau=tau, epsilon=eps, temperature_mode="absolute",
                                                     algorithm=algorithm) as layer:
        layer.centroids = c0
        out, st = layer.forward(w, "f32")
        gin = st.backward(g.astype(wdtype) if wdtype == np.float32 else g.astype(np.float16), w)
        st.close()
        stats = layer.stats()
        cT = layer.centroids

    wr = w.astype(np.float64).reshape(groups, -1, d)
    ref_out, ref_c, ref_it, ref_inertia = ref_dkm(wr, c0.astype(np.float64), tau, iters, eps)
    assert out.dtype == np.float32
    assert rel_err(out.astype(np.float64), ref_out.reshape(shape)) < 1e-5
    assert rel_err(cT.astype(np.float64), ref_c) < 1e-5
    assert stats.iterations == ref_it
    assert abs(stats.inertia - ref_inertia) <= 1e-5 * abs(ref_inertia)
    want = {"dense": lib.Algorithm.DENSE, "uniquified": lib.Algorithm.UNIQUIFIED,
            "auto": lib.Algorithm.UNIQUIFIED if (d == 1 and wdtype == np.float16) else lib.Algorithm.DENSE}[algorithm]
    assert stats.algorithm == want

    gr = (g.astype(np.float16) if wdtype == np.float16 else g).astype(np.float64).reshape(groups, -1, d)
    ref_g = ref_grad(wr, gr, c0.astype(np.float64), tau, iters, eps).reshape(shape)
    tol = 1e-4 if wdtype == np.float32 else 2e-3  # f16 gradient output
    assert rel_err(gin.astype(np.float64), ref_g) < tol, (gin, ref_g)


def test_uniquified_equals_dense(lib):
    """The two algorithms are the same math (f16 weights, many repeated values)."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((256, 128)) * 0.02).astype(np.float16)
    g = (rng.standard_normal(w.shape) * 1e-3).astype(np.float32)
    res = {}
    for alg in ("dense", "uniquified"):
        with lib.Runtime() as rt, lib.Layer(rt, w.shape, bits=3, algorithm=alg, seed=3) as layer:
            layer.init_centroids(w)
            out, st = layer.forward(w, "f32")
            gin = st.backward(g.astype(np.float16), w)
            st.close()
            res[alg] = (out, gin.astype(np.float32), layer.stats())
    assert res["uniquified"][2].distinct_values > 0 and res["dense"][2].distinct_values == 0
    assert rel_err(res["dense"][0], res["uniquified"][0]) < 1e-5
    assert rel_err(res["dense"][1], res["uniquified"][1]) < 1e-2


def test_early_stop_with_epsilon(lib):
    w = np.repeat(np.array([-1.0, 1.0], np.float32), 32).reshape(8, 8)
    with lib.Runtime() as rt, lib.Layer(rt, w.shape, bits=1, max_iterations=10, epsilon=1e-3) as layer:
        layer.centroids = np.array([[[-1.0], [1.0]]], np.float32)
        layer.forward(w, save=False)
        assert layer.stats().iterations == 2  # converged at once: stops after t = 1


def test_default_temperature_is_scale_free(lib):
    """The default layer runs the scale-free temperature: effective tau = 0.1 x the mean squared
    distance of the weights to their nearest initial centroid (computed here from the centroids),
    and scaling the weights by 4 scales it by 16 and the output by 4 (both exact in f16)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((64, 48)) * 0.03).astype(np.float16)
    results = []
    for scale in (1, 4):
        ws = (w.astype(np.float32) * scale).astype(np.float16)
        with lib.Runtime() as rt, lib.Layer(rt, ws.shape, bits=3) as layer:
            layer.init_centroids(ws)
            c = np.asarray(layer.centroids, dtype=np.float64).ravel()
            x = ws.astype(np.float64).ravel()
            distortion = np.min((x[:, None] - c[None, :]) ** 2, axis=1).mean()
            out = layer.forward(ws, "f32", save=False)
            st = layer.stats()
            assert abs(st.effective_tau / (0.1 * distortion) - 1) < 1e-12
            results.append((st.effective_tau, np.asarray(out, dtype=np.float32)))
    assert abs(results[1][0] / results[0][0] - 16) < 1e-9
    np.testing.assert_array_equal(results[1][1], results[0][1] * 4)
