"""The per-channel scale on the device split (edkm.torch_device; coremltools' enable_per_channel_scale
on weights that stay on their device) against the buffer form, on CPU torch (device_split=True
routes CPU tensors through the device split, as test_torch_device.py does).

Both forms divide the weights by the layer's fixed factors in float and round v = w / s_r to the
weights' dtype, key v, run the same U-level engine on the same histogram, and multiply the float
soft value by s_r with one rounding: the forward (soft weights, centroids, statistics, factors) is
bit-identical. The gradient is (g' h32 + r32) / s_r with g' = g s_r in float: the buffer form
evaluates g' h32 + r32 as one float32 fma, the device split in float64 then float32 (g' h32 is
exact in float64, so only a rare double rounding differs, then the same division): the comparison
allows 1e-6 of the largest gradient and counts exact matches (< 1e-3 may differ), as
test_torch_device.py. After SGD steps the weights can then differ by such rare last-bit roundings,
so centroids and soft weights are compared to 1e-5 of their scale there (bit-identical in
practice: the tests also report exact equality where it holds).
"""
import operator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
import edkm.torch_device as td  # noqa: E402
from edkm.torch_device import HostLink, RowFactors, device_dkm  # noqa: E402
from torch import nn  # noqa: E402

KEYS = {torch.float16: "f32", torch.bfloat16: "f32", torch.float32: "bf16"}  # f32 weights: bf16 keys


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _weights(rows=64, cols=48, dtype=torch.float16, seed=0):
    """Rows of very different magnitudes (what the per-channel scale is for)."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.exp(torch.empty(rows, 1).uniform_(-5, 1, generator=gen))
    return (torch.randn(rows, cols, generator=gen) * magnitude).to(dtype)


def _assert_gradients_close(a, b, what):
    a64, b64 = a.double(), b.double()
    scale = float(a64.abs().max())
    assert scale > 0, what
    assert float((a64 - b64).abs().max()) <= 1e-6 * scale, what
    assert float((a != b).float().mean()) < 1e-3, what


# ---------------- the C ABI: the histogram form of a layer with a channel scale ----------------


@pytest.mark.parametrize("dtype,key", [(np.float16, "f16"), (np.float32, "bf16")])
def test_histogram_form_on_scaled_keys_equals_the_buffer_form(dtype, key):
    """The contract of edkm_layer_forward_histogram with a channel scale (include/edkm.h), in numpy:
    the keys of round(float(w) / s_r), the float soft values multiplied by s_r and rounded once give
    the buffer forward's output bit for bit; (g' h + r) / s_r with g' = g s_r its gradient."""
    w = _weights(24, 40, torch.float32, seed=3).numpy().astype(dtype)
    g = np.random.default_rng(4).standard_normal(w.shape).astype(dtype)
    opts = dict(bits=3, channel_scale="min_max", f32_key_dtype=key if dtype == np.float32 else None,
                temperature_mode="absolute", tau=1e-3)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, **opts) as buf, edkm.Layer(rt, w.shape, **opts) as hist:
        buf.init_centroids(w)
        hist.init_centroids(w)  # fixes the same factors from the same weights
        s = hist.channel_scale_factors
        assert np.array_equal(s, buf.channel_scale_factors)
        out, state = buf.forward(w)
        grad = state.backward(g, weights=w)

        s_el = np.repeat(s, w.shape[1]).reshape(w.shape)
        v = (w.astype(np.float32) / s_el).astype(dtype)
        kd = np.float16 if dtype == np.float16 else None
        bits = v.view(np.uint16) if kd is not None else (v.view(np.uint32) + 0x7FFF + ((v.view(np.uint32) >> 16) & 1)) >> 16
        keys, inverse, counts = np.unique(bits.astype(np.uint16).reshape(-1), return_inverse=True, return_counts=True)
        soft, hstate = hist.forward_histogram(keys, counts.astype(np.float64), key_dtype="f16" if kd else "bf16")
        y = (soft.astype(np.float32)[inverse].reshape(w.shape) * s_el).astype(dtype)
        assert np.array_equal(y.view(np.uint8), out.view(np.uint8))
        assert np.array_equal(hist.centroids, buf.centroids)

        gp = g.astype(np.float32) * s_el
        G = np.bincount(inverse, weights=gp.reshape(-1).astype(np.float64), minlength=keys.size)
        h, r = (t.astype(np.float32).astype(np.float64) for t in hstate.backward(G))  # as the buffer form rounds them
        value = (gp.reshape(-1).astype(np.float64) * h[inverse] + r[inverse]).astype(np.float32).reshape(w.shape)
        mine = (value / s_el).astype(dtype)
        _assert_gradients_close(torch.from_numpy(grad.astype(np.float32)), torch.from_numpy(mine.astype(np.float32)),
                                "histogram-form gradient")
        hstate.close()
        state.close()


def test_histogram_form_needs_fixed_factors_and_fixes_none():
    w = _weights(16, 16, torch.float16, seed=5).numpy()
    keys, counts = np.unique(w.view(np.uint16), return_counts=True)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=2, channel_scale="abs") as layer:
        with pytest.raises(edkm.EdkmError, match="STATE.*not fixed yet"):
            layer.forward_histogram(keys, counts.astype(np.float64))
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors
        assert rt.stats().arena_allocated == 0


# ---------------- edkm.torch: the device split against the buffer form ----------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scheme", ["min_max", "abs"])
@pytest.mark.parametrize("group", [0, 16])
def test_device_split_with_channel_scale_equals_buffer_form(dtype, scheme, group):
    """Soft weights, gradients, centroids, statistics and factors over 4 SGD steps, then finalize's
    LUTs, labels and scale: the device split against the buffer form."""
    opts = dict(bits=3, group_size=group, channel_scale=scheme, f32_key_dtype=KEYS[dtype], temperature_mode="absolute",
                tau=1e-3)
    w0 = _weights(64, 48, dtype)
    models = []
    for split in (False, True):
        m = nn.Sequential(nn.Linear(48, 64, bias=False)).to(dtype)
        with torch.no_grad():
            m[0].weight.copy_(w0)
        et.palettize(m, device_split=split, **opts)
        p = et.palettized(m)[0][3]
        assert p.uses_device_split(m[0].weight) == split
        models.append((m, p, torch.optim.SGD(m.parameters(), lr=1e-3)))
    gen = torch.Generator().manual_seed(1)
    exact = True
    for step in range(4):
        x = (0.1 * torch.randn(8, 48, generator=gen)).to(dtype)
        outs = []
        for m, p, opt in models:
            opt.zero_grad()
            w = m[0].weight  # the soft weights (training mode)
            (m(x).float().square().sum()).backward()
            outs.append((w.detach(), m[0].parametrizations.weight.original.grad.clone(), p.centroids.clone(),
                         p.channel_scale.clone(), p.layer.stats()))
        (wb, gb, cb, sb, stb), (ws, gs, cs, ss, sts) = outs
        assert torch.equal(sb, ss), "the same factors, fixed from the same first weights"
        if step == 0:  # same weights: bit for bit
            assert torch.equal(_bits(wb), _bits(ws))
            assert torch.equal(cb, cs)
            assert (stb.iterations, stb.distinct_values, stb.inertia, stb.effective_tau) == \
                   (sts.iterations, sts.distinct_values, sts.inertia, sts.effective_tau)
        else:  # weights after SGD steps on gradients equal but for rare double roundings
            for a, b in ((wb, ws), (cb, cs)):
                assert float((a.double() - b.double()).abs().max()) <= 1e-5 * float(a.double().abs().max()), step
            exact = exact and torch.equal(_bits(wb), _bits(ws)) and torch.equal(cb, cs)
        _assert_gradients_close(gb, gs, f"step {step}")
        for _, _, opt in models:
            opt.step()
    # finalize: the same LUTs, labels and scale
    pts = []
    for m, p, _ in models:
        pts.append(p.export(m[0].parametrizations.weight.original))
        et.finalize(m)
    (pb, ps) = pts
    if exact:
        assert torch.equal(pb.lut, ps.lut) and np.array_equal(pb.labels(), ps.labels())
    else:
        assert float((pb.lut.double() - ps.lut.double()).abs().max()) <= 1e-5 * float(pb.lut.double().abs().max())
        assert float((pb.labels() != ps.labels()).mean()) < 1e-3
    assert torch.equal(pb.scale, ps.scale)
    mb, ms = models[0][0], models[1][0]
    assert torch.equal(mb[0].get_buffer("_COREML_/weight/palettization_scale"),
                       ms[0].get_buffer("_COREML_/weight/palettization_scale"))


def test_zero_and_constant_rows_fix_the_same_factors():
    """A zero row gets factor 1, a constant row under min_max its magnitude (as the buffer form):
    no NaN, the same soft weights and gradients."""
    w0 = _weights(32, 24, torch.float16, seed=7)
    w0[3] = 0
    w0[5] = 0.25
    w0[9] = -0.5
    for scheme in ("min_max", "abs"):
        res = []
        for split in (False, True):
            w = nn.Parameter(w0.clone())
            p = et.DKMWeight(edkm.Runtime(), w.shape, w.dtype, dict(bits=2, channel_scale=scheme), weight=w,
                             device_split=split)
            y = p(w)
            y.backward(torch.ones_like(y))
            res.append((y.detach(), w.grad, p.channel_scale.clone()))
        (yb, gb, sb), (ys, gs, ss) = res
        assert torch.equal(sb, ss) and float(sb[3]) == 1.0
        assert float(sb[5]) == 0.25 and float(sb[9]) == 0.5
        assert torch.isfinite(ys.float()).all() and torch.equal(_bits(yb), _bits(ys))
        _assert_gradients_close(gb, gs, scheme)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_factors_fixed_on_the_device_equal_the_librarys(dtype):
    """A layer without factors: the device split fixes them from the first weights on the device
    (the library's formula in float32) as the buffer form fixes them in the library."""
    w0 = _weights(40, 33, dtype, seed=8)
    w0[0] = 0
    w0[1] = 3.0
    opts = dict(bits=2, channel_scale="min_max", f32_key_dtype=KEYS[dtype])
    with edkm.Runtime() as rt:
        with edkm.Layer(rt, w0.shape, **opts) as buf, edkm.Layer(rt, w0.shape, **opts) as dev:
            arr, code = et.tensor_as_numpy(w0)
            buf.forward(arr, dtype=code, save=False)
            link = HostLink()
            y_dev = device_dkm(w0, dev, link)
            assert np.array_equal(dev.channel_scale_factors, buf.channel_scale_factors)
            assert link.bytes_to_host >= 4 * w0.shape[0]  # the fixed factors went to the library once
            assert torch.isfinite(y_dev.float()).all()
        direct = td.channel_scale_factors(w0, "abs")
        ref = w0.float().abs().amax(1)
        ref[0] = 1.0
        assert torch.equal(direct, ref)


def test_only_u_sized_tables_and_the_factors_cross():
    """Per step 26 bytes per key (key 2 + count 4 up, the float soft value 4 down, G 8 up, h and r 8
    down) plus 8 per partition offset; the factors (4 bytes per row) once, when they reach the
    device. U stays a 16-bit histogram (the keys are those of w / s rounded to the dtype)."""
    w0 = _weights(256, 512, torch.bfloat16, seed=9)
    for group in (0, 32):
        m = nn.Linear(512, 256, bias=False).bfloat16()
        with torch.no_grad():
            m.weight.copy_(w0)
        et.palettize(m, device_split=True, bits=3, group_size=group, channel_scale="min_max")
        p = et.palettized(m)[0][3]
        link = p.link
        for step in range(3):
            link.reset_counters()
            m.weight.float().sum().backward()
            U, P = p.layer.stats().distinct_values, p.layer.groups
            crossed = link.bytes_to_host + link.bytes_to_device
            once = 4 * 256 if step == 0 else 0
            assert crossed == 26 * U + 8 * (P + 1) + once, (step, crossed, U, P)
            assert U <= 65536 * P
        assert p.layer.stats().distinct_values < w0.numel() / 4


@pytest.mark.parametrize("shape,chunk,group", [((64, 96), 1000, 0), ((64, 96), 2000, 8), ((2, 150000), 20000, 0)])
def test_segmented_passes_with_scale_equal_one_segment(monkeypatch, shape, chunk, group):
    """Segments that cut rows (chunk 1000 of rows of 96), batches of partitions, and pieces of rows
    far longer than a segment (rows of 150,000, the per-element row index) give the one-segment
    results: the forward bit for bit, the gradients to float64 summation order."""
    w0 = _weights(*shape, torch.float16, seed=11)
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(12)).half()
    results = []
    for c in (td.CHUNK, chunk):
        monkeypatch.setattr(td, "CHUNK", c)
        with edkm.Runtime() as rt, edkm.Layer(rt, shape, bits=3, group_size=group, channel_scale="abs") as layer:
            w = w0.clone().requires_grad_(True)
            y = device_dkm(w, layer)
            y.backward(g)
            results.append((y.detach(), w.grad))
    assert torch.equal(_bits(results[0][0]), _bits(results[1][0]))
    a, b = results[0][1].double(), results[1][1].double()
    assert float((a != b).float().mean()) < 0.01
    assert float((a - b).abs().max()) <= 1e-3 * float(a.abs().max())


def test_row_factors_of_every_element():
    """Whole rows (a column of factors), rows cut at the ends, and pieces of very long rows."""
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rf = RowFactors(s, 5)
    full = s.repeat_interleave(5)
    for start, stop in [(0, 20), (3, 17), (5, 10), (19, 20), (0, 1)]:
        ones = torch.ones(stop - start)
        assert torch.equal(RowFactors.rowwise(operator.mul, ones, rf.of(start, stop)), full[start:stop])
    assert rf.of(5, 15).shape == (2, 1)
    long_rows = RowFactors(torch.tensor([2.0, 5.0]), 300000)
    assert torch.equal(long_rows.of(299990, 300010), torch.tensor([2.0] * 10 + [5.0] * 10))


# ---------------- DKMPalettizer (coremltools' interface) through the device split ----------------


def test_dkm_palettizer_per_channel_scale_through_the_device_split():
    """coremltools' enable_per_channel_scale with DKMPalettizer, a few training steps: the modules
    routed through the device split give the buffer form's soft weights, gradients, LUTs, labels
    and palettization_scale."""
    from edkm.torch import DKMPalettizer

    cfg = {"global_config": {"n_bits": 3, "weight_threshold": 0, "enable_per_channel_scale": True,
                             "palett_tau": 1e-3, "granularity": "per_grouped_channel", "group_size": 16}}
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16)).half()
    runs = []
    for split in (False, True):
        pal = DKMPalettizer(base, cfg)
        model = pal.prepare()
        for _, _, _, p in et.palettized(model):
            p.device_split = split
            assert p.has_channel_scale
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        gen = torch.Generator().manual_seed(2)
        grads, soft = [], []
        for _ in range(3):
            x = torch.randn(4, 32, generator=gen).half()
            opt.zero_grad()
            model(x).float().square().sum().backward()
            grads.append([q.grad.clone() for q in model.parameters()])
            soft.append([m.weight.detach().clone() for m in (model[0], model[2])])
            opt.step()
            pal.step()
        final = pal.finalize()
        runs.append((grads, soft, final.state_dict()))
    (gb, wb, sb), (gs, ws, ss) = runs
    for step in range(3):
        for a, b in zip(gb[step], gs[step]):
            _assert_gradients_close(a, b, f"palettizer step {step}")
        for a, b in zip(wb[step], ws[step]):
            assert float((a.double() - b.double()).abs().max()) <= 1e-5 * float(a.double().abs().max()), step
    assert sb.keys() == ss.keys()
    scale_keys = [k for k in sb if k.endswith("palettization_scale")]
    assert len(scale_keys) == 2
    for k in sb:
        a, b = sb[k], ss[k]
        if a.is_floating_point():
            assert float((a.double() - b.double()).abs().max()) <= 1e-5 * max(float(a.double().abs().max()), 1e-30), k
        else:
            assert torch.equal(a, b), k


# ---------------- bad input ----------------


def test_bad_factors_and_inputs_give_clear_errors():
    w = _weights(32, 16, torch.float16, seed=13)
    opts = dict(bits=2, channel_scale="min_max")
    with pytest.raises(edkm.EdkmError, match="SHAPE.*expected 32 channel scale factors"):
        et.DKMWeight(edkm.Runtime(), w.shape, w.dtype, opts, weight=w, device_split=True,
                     channel_scale_factors=torch.ones(31))
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        f = torch.ones(32)
        f[4] = bad
        with pytest.raises(edkm.EdkmError, match="INVALID_ARGUMENT.*channel scale factor 4"):
            et.DKMWeight(edkm.Runtime(), w.shape, w.dtype, opts, weight=w, device_split=True, channel_scale_factors=f)
    # a state dict with a non-finite factor: refused at the next forward, nothing changed
    p = et.DKMWeight(edkm.Runtime(), w.shape, w.dtype, opts, weight=w, device_split=True)
    before = p.layer.channel_scale_factors.copy()
    sd = p.state_dict()
    sd["channel_scale"][2] = float("nan")
    p.load_state_dict(sd)
    with pytest.raises(edkm.EdkmError, match="INVALID_ARGUMENT.*channel scale factor 2"):
        p(w.clone().requires_grad_(True))
    assert np.array_equal(p.layer.channel_scale_factors, before)
    # non-finite weights: the factors fixed on the device are refused before anything is fixed
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, **opts) as layer:
        bad = w.clone()
        bad[7, 3] = float("nan")
        with pytest.raises(ValueError, match="row 7 holds NaN or Inf"):
            device_dkm(bad, layer)
        with pytest.raises(edkm.EdkmError, match="STATE"):
            layer.channel_scale_factors
        y = device_dkm(w, layer)  # fixed now
        assert torch.isfinite(y.float()).all()
        bad[7, 3] = float("inf")
        with pytest.raises(edkm.EdkmError, match="NaN or Inf"):  # fixed factors: the key of w / s is not finite
            device_dkm(bad, layer)
        # the function's own checks: factors of the wrong length, dtype, device, or for a layer without a scale
        link = HostLink()
        for s, what in ((torch.ones(31), "32 values"), (torch.ones(32, dtype=torch.float64), "float32"),
                        (torch.ones(32, device="meta"), "meta")):
            with pytest.raises(ValueError, match=what):
                td.DeviceDKMFunction.apply(w, layer, link, None, RowFactors(s, 16))
        with pytest.raises(ValueError, match="pass its factors"):
            td.DeviceDKMFunction.apply(w, layer, link, None, None)
        with pytest.raises(ValueError, match="process_group"):
            td.DeviceDKMFunction.apply(w, layer, link, object(), RowFactors(torch.ones(32), 16))
        with edkm.Layer(rt, w.shape, bits=2) as plain:
            with pytest.raises(ValueError, match="without a channel_scale"):
                td.DeviceDKMFunction.apply(w, plain, link, None, RowFactors(torch.ones(32), 16))
