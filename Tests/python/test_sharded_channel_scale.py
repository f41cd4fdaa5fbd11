"""The per-output-channel scale on sharded weights (edkm_layer_forward_shard with a channel_scale):
ranks in threads (test_communicator.ThreadWorld), slices that split rows anywhere (a row across
four ranks, an empty slice). Against the whole tensor's buffer forward and backward in one process:
factors and centroids bit for bit, the soft weights bit for bit (the same O(U k T) math on the same
all-reduced histogram), the gradients within 1e-6 relative to the largest (the U gradient sums are
added in another order: float64, then rounded to float32 once). Also: factors kept after the first
forward, ranks that disagree on their factors, non-finite weights, the traffic."""

import threading

import numpy as np
import pytest

import edkm
from test_communicator import ThreadWorld

ROWS, COLS = 24, 37  # 37: the ranks' slices split rows


def weights(dtype, seed=0):
    """Rows of very different magnitudes, with a zero row and a constant row."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((ROWS, COLS)) * np.exp(rng.uniform(-4, 1, (ROWS, 1)))
    w[3] = 0
    w[7] = -0.5
    return w.astype(dtype)


def as_bits(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


def layer_options(scheme, dtype):
    options = dict(bits=3, tau=2e-3, temperature_mode="absolute", algorithm="uniquified", channel_scale=scheme)
    if dtype == np.float32:
        options["f32_key_dtype"] = "f16"
    return options


def whole_tensor(w, g, scheme, c0, steps=2):
    """(factors, [(w~, dL/dw, centroids)] per step) of the buffer forward in one process; step 2
    runs on w x 1.1 (the factors stay those of the first weights)."""
    out = []
    with edkm.Runtime(num_threads=1) as rt, edkm.Layer(rt, w.shape, **layer_options(scheme, w.dtype)) as layer:
        layer.centroids = c0
        for step in range(steps):
            x = w if step == 0 else (w * 1.1).astype(w.dtype)
            y, st = layer.forward(x, "f32")
            out.append((y, st.backward(g, x), layer.centroids))
            st.close()
        return layer.channel_scale_factors, out


def run_ranks(world, body, **runtime_options):
    """body(rank, runtime) on `world` thread ranks (runtimes with runtime_options); returns their
    results (re-raises the first error)."""
    group = ThreadWorld(world)
    results, errors = [None] * world, []

    def main(r):
        try:
            with edkm.Runtime(num_threads=1, communicator=group.comm(edkm, r), **runtime_options) as rt:
                results[r] = body(r, rt)
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


BOUNDS = {1: [0, ROWS * COLS], 2: [0, 400, ROWS * COLS], 3: [0, 300, 600, ROWS * COLS],
          4: [0, 50, 60, 70, ROWS * COLS],          # row 1 (elements 37..73) on all four ranks
          5: [0, 200, 200, 500, 700, ROWS * COLS]}  # rank 1's slice is empty


@pytest.mark.parametrize("world", sorted(BOUNDS))
@pytest.mark.parametrize("scheme,dtype", [("min_max", np.float16), ("abs", np.float16), ("min_max", np.float32)])
def test_slices_equal_the_whole_tensor(world, scheme, dtype):
    w = weights(dtype)
    g = (np.random.default_rng(1).standard_normal(w.shape) * 1e-2).astype(np.float32)
    c0 = np.linspace(-0.9, 0.9, 8).astype(np.float32).reshape(1, 8, 1)
    factors, reference = whole_tensor(w, g, scheme, c0)
    bounds = BOUNDS[world]

    def rank(r, rt):
        lo, hi = bounds[r], bounds[r + 1]
        steps = []
        with edkm.Layer(rt, w.shape, **layer_options(scheme, dtype)) as layer:
            layer.centroids = c0
            for step in range(2):
                x = (w if step == 0 else (w * 1.1).astype(dtype)).reshape(-1)[lo:hi].copy()
                y, st = layer.forward_shard(x, lo, "f32")
                steps.append((y, st.backward(g.reshape(-1)[lo:hi].copy(), x), layer.centroids))
                st.close()
            return layer.channel_scale_factors, steps

    results = run_ranks(world, rank)
    for r_factors, _ in results:
        np.testing.assert_array_equal(r_factors, factors)
    for step, (y, gin, centroids) in enumerate(reference):
        np.testing.assert_array_equal(np.concatenate([res[1][step][0] for res in results]), y.reshape(-1))
        got = np.concatenate([res[1][step][1] for res in results])
        assert np.abs(got - gin.reshape(-1)).max() <= 1e-6 * np.abs(gin).max(), step
        for _, steps in results:
            np.testing.assert_array_equal(steps[step][2], centroids)


def test_the_scale_is_applied():
    """Rows of small magnitude keep their own resolution with the scale; without it they collapse
    onto the few centroids near 0 (relative error per row, sharded over 2 ranks, both ways)."""
    w = weights(np.float16)
    c0 = np.linspace(-0.9, 0.9, 8).astype(np.float32).reshape(1, 8, 1)

    def rank(r, rt):
        out = []
        for scheme in ["min_max", "none"]:
            with edkm.Layer(rt, w.shape, **layer_options(scheme, w.dtype)) as layer:
                layer.centroids = c0 if scheme != "none" else (c0 * np.abs(w).max()).astype(np.float32)
                out.append(layer.forward_shard(w.reshape(-1)[r * 444:(r + 1) * 444].copy(), r * 444, "f32", save=False))
        return out

    results = run_ranks(2, rank)
    wf = w.astype(np.float32)
    peak = np.abs(wf).max(1)
    small = (peak > 0) & (peak < 0.25)
    assert small.sum() >= 5
    for which, bound in [(0, 0.5), (1, None)]:
        y = np.concatenate([res[which] for res in results]).reshape(w.shape)
        rel = np.abs(y - wf).max(1)[small] / peak[small]
        if bound is not None:
            assert (rel < bound).all(), rel  # scaled: every small row near its own values
        else:
            assert (rel > 0.5).any(), rel    # unscaled: some small row is far off


def test_ranks_that_disagree_fail_together_and_recover():
    w = weights(np.float16)
    half = ROWS * COLS // 2

    def rank(r, rt):
        statuses = []
        with edkm.Layer(rt, w.shape, **layer_options("abs", w.dtype)) as layer:
            x = w.reshape(-1)[r * half:(r + 1) * half].copy()
            if r == 0:  # factors on one rank only
                layer.channel_scale_factors = np.full(ROWS, 2.0, np.float32)
            for attempt in range(2):
                try:
                    layer.forward_shard(x, r * half, "f32", save=False)
                    statuses.append("OK")
                except edkm.EdkmError as e:
                    statuses.append(e.status_name)
                    assert "disagree" in str(e)
                if attempt == 0:
                    layer.channel_scale_factors = np.full(ROWS, 2.0 + r, np.float32)  # set, but not the same
            layer.channel_scale_factors = np.full(ROWS, 2.0, np.float32)  # the same on every rank
            layer.forward_shard(x, r * half, "f32", save=False)
            statuses.append("OK")
            return statuses, layer.channel_scale_factors

    for statuses, kept in run_ranks(2, rank):
        assert statuses == ["EDKM_ERR_STATE", "EDKM_ERR_STATE", "OK"]
        np.testing.assert_array_equal(kept, np.full(ROWS, 2.0, np.float32))


def test_non_finite_weights_fail_every_rank_and_fix_nothing():
    w = weights(np.float16)
    w[20, 5] = np.nan  # in rank 1's slice
    half = ROWS * COLS // 2

    def rank(r, rt):
        with edkm.Layer(rt, w.shape, **layer_options("min_max", w.dtype)) as layer:
            with pytest.raises(edkm.EdkmError, match="NON_FINITE"):
                layer.forward_shard(w.reshape(-1)[r * half:(r + 1) * half].copy(), r * half, "f32")
            with pytest.raises(edkm.EdkmError, match="STATE"):
                layer.channel_scale_factors
            return True

    assert run_ranks(2, rank) == [True, True]


def test_traffic_of_the_scale():
    """16 bytes per forward for the agreement, rows x 8 bytes once for the factors."""
    w = weights(np.float16)
    half = ROWS * COLS // 2

    def rank(r, rt):
        x = w.reshape(-1)[r * half:(r + 1) * half].copy()
        sent = []
        for scheme in [None, "min_max", "min_max"]:
            options = layer_options(scheme or "none", w.dtype)
            with edkm.Layer(rt, w.shape, **options) as layer:
                before = rt.stats().communicator_bytes
                layer.forward_shard(x, r * half, "f32", save=False)
                sent.append(rt.stats().communicator_bytes - before)
                if scheme is not None:
                    before = rt.stats().communicator_bytes
                    layer.forward_shard(x, r * half, "f32", save=False)
                    sent.append(rt.stats().communicator_bytes - before)
        return sent

    for plain, first, second, _, _ in run_ranks(2, rank):
        assert first - plain == 16 + 8 * ROWS and second - plain == 16


@pytest.mark.parametrize("bad_call", [1, 2])
def test_impossible_gathers_are_communicator_errors(bad_call):
    """An all-gather that returns what no correct one can (flags other than 0 / 1 in the agreement;
    another block than this rank sent in the exchange) fails with EDKM_ERR_COMMUNICATOR and fixes
    nothing."""
    w = weights(np.float16)
    calls = []

    def all_gather(send, nbytes):
        calls.append(nbytes)
        return b"\x07" * nbytes if len(calls) == bad_call else bytes(send)

    comm = edkm.Communicator(0, 1, all_gather, lambda data: None)
    with edkm.Runtime(num_threads=1, communicator=comm) as rt, \
            edkm.Layer(rt, w.shape, **layer_options("min_max", w.dtype)) as layer:
        with pytest.raises(edkm.EdkmError, match="COMMUNICATOR"):
            layer.forward_shard(w.reshape(-1), 0, "f32", save=False)
        assert calls[:bad_call] == [16, 8 * ROWS][:bad_call]
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors
        layer.forward_shard(w.reshape(-1), 0, "f32", save=False)  # an honest gather then works
        assert layer.channel_scale_factors.shape == (ROWS,)


def test_keep_weights_backward_without_the_slice():
    """keep_weights: the state keeps the scaled slice's keys, so the backward needs no weights and
    gives the same gradient as with them."""
    w = weights(np.float16)
    g = (np.random.default_rng(2).standard_normal(w.shape) * 1e-2).astype(np.float32)
    c0 = np.linspace(-0.9, 0.9, 8).astype(np.float32).reshape(1, 8, 1)
    _, reference = whole_tensor(w, g, "abs", c0, steps=1)
    half = ROWS * COLS // 2

    def rank(r, rt):
        with edkm.Layer(rt, w.shape, **layer_options("abs", w.dtype)) as layer:
            layer.centroids = c0
            _, st = layer.forward_shard(w.reshape(-1)[r * half:(r + 1) * half].copy(), r * half, "f32")
            gin = st.backward(g.reshape(-1)[r * half:(r + 1) * half].copy())  # no weights
            st.close()
            return gin

    results = run_ranks(2, rank, keep_weights=True)
    gin = reference[0][1].reshape(-1)
    assert np.abs(np.concatenate(results) - gin).max() <= 1e-6 * np.abs(gin).max()
