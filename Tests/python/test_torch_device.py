"""The device split (edkm.torch_device) against the buffer form, on CPU torch.

The device split runs the four O(N) passes as torch ops and libedkm's histogram form on the host;
the buffer form runs all of it in libedkm. Same engine, same histogram order: the forward is
bit-identical. The gradient is fma(g, h32, r32) in the buffer form and g h32 + r32 in float64 then
float32 here (g h32 is exact in float64, so only a rare double rounding can differ): the
comparison allows 1e-6 of the largest gradient, and the tests also count exact matches.
"""
import os

import pytest

torch = pytest.importorskip("torch")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from edkm.torch_device import HostLink, device_dkm  # noqa: E402
from torch import nn  # noqa: E402
from ports import free_port  # noqa: E402

CASES = [
    # (weight dtype, f32_key_dtype, group_size, temperature_mode)
    (torch.float16, "f32", 0, "scale_free"),
    (torch.float16, "f32", 8, "absolute"),
    (torch.bfloat16, "f32", 0, "absolute"),
    (torch.bfloat16, "f32", 16, "scale_free"),
    (torch.float32, "bf16", 0, "scale_free"),
    (torch.float32, "f16", 8, "absolute"),
]


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(96, 64), nn.Tanh(), nn.Linear(64, 32))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.3)
    return m.to(dtype)


@pytest.mark.parametrize("dtype,key,group,mode", CASES)
def test_device_split_equals_buffer_form(dtype, key, group, mode):
    opts = dict(bits=3, group_size=group, temperature_mode=mode, f32_key_dtype=key)
    buffer, split = _model(dtype), _model(dtype)
    et.palettize(buffer, **opts)
    et.palettize(split, device_split=True, **opts)
    assert not et.palettized(buffer)[0][3].uses_device_split(buffer[0].weight)
    assert et.palettized(split)[0][3].uses_device_split(split[0].weight)
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x = torch.randn(16, 96, generator=gen).to(dtype)
        for m in (buffer, split):
            m.zero_grad()
            m(x).float().square().sum().backward()
        for (name, pb), (_, ps) in zip(buffer.named_parameters(), split.named_parameters()):
            gb, gs = pb.grad.double(), ps.grad.double()
            scale = float(gb.abs().max())
            assert scale > 0
            assert float((gb - gs).abs().max()) <= 1e-6 * scale, (step, name)
            if "parametrizations" in name:  # the clustered weights: exact but for rare double roundings
                assert float((pb.grad != ps.grad).float().mean()) < 1e-3, (step, name)
        for (_, _, mb, db), (_, _, ms, ds) in zip(et.palettized(buffer), et.palettized(split)):
            wb, ws = db(mb.parametrizations.weight.original), ds(ms.parametrizations.weight.original)
            assert torch.equal(_bits(wb), _bits(ws)), step
            assert torch.equal(db.centroids, ds.centroids)
            sb, ss = db.layer.stats(), ds.layer.stats()
            assert (sb.iterations, sb.distinct_values, sb.inertia, sb.effective_tau, sb.attention_entropy) == \
                   (ss.iterations, ss.distinct_values, ss.inertia, ss.effective_tau, ss.attention_entropy)


def test_only_u_sized_tables_cross():
    """A 512 x 512 bf16 weight (N = 262,144) has a few thousand distinct values: per step the link
    carries 2 + 4 bytes per key up (key, count) and 2 down (soft value) in forward, 8 up (G) and 8
    down (h, r) in backward, plus the partition offsets, exactly. Any O(N) buffer (>= 2N bytes) would break the equality."""
    w = (torch.randn(512, 512, generator=torch.Generator().manual_seed(3)) * 0.02).bfloat16().requires_grad_(True)
    n = w.numel()
    for group in (0, 64):
        with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=3, group_size=group) as layer:
            link = HostLink()
            for _ in range(2):
                link.reset_counters()
                w.grad = None
                device_dkm(w, layer, link).float().sum().backward()
                U, P = layer.stats().distinct_values, layer.groups
                crossed = link.bytes_to_host + link.bytes_to_device
                assert crossed == 24 * U + 8 * (P + 1), (crossed, U, P)
                if group == 0:  # one LUT: U is a few thousand, far below N
                    assert crossed < n / 2, "more than the U-sized tables crossed"
                assert link.transfers == 6
            assert w.grad is not None and torch.isfinite(w.grad.float()).all()
            assert rt.stats().live_saved_states == 0


def test_host_buffers_are_reused():
    w = (torch.randn(64, 64) * 0.02).half().requires_grad_(True)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=2) as layer:
        link = HostLink()
        device_dkm(w, layer, link).float().sum().backward()
        first = {k: v.data_ptr() if isinstance(v, torch.Tensor) else v.ctypes.data for k, v in link._buffers.items()}
        device_dkm(w, layer, link).float().sum().backward()
        again = {k: v.data_ptr() if isinstance(v, torch.Tensor) else v.ctypes.data for k, v in link._buffers.items()}
        assert first == again


def test_bad_inputs_give_clear_errors():
    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, (32, 32), bits=2)
        w = (torch.randn(32, 32) * 0.02).half()
        with pytest.raises(ValueError, match="not contiguous"):
            device_dkm(w.t(), layer)
        with pytest.raises(TypeError, match="float64"):
            device_dkm(w.double(), layer)
        with pytest.raises(ValueError, match="f32_key_dtype"):
            device_dkm(w.float(), layer)
        with pytest.raises(ValueError, match="elements"):
            device_dkm(w[:16].contiguous(), layer)
        with pytest.raises(ValueError, match="device"):
            device_dkm(torch.empty(32, 32, dtype=torch.float16, device="meta"), layer)
        vec = edkm.Layer(rt, (32, 32), bits=2, cluster_dim=2)
        with pytest.raises(ValueError, match="cluster_dim 2"):
            device_dkm(w, vec)
        bad = w.clone()
        bad[3, 4] = float("inf")
        with pytest.raises(edkm.EdkmError, match="NaN or Inf"):
            device_dkm(bad, layer)
        g = torch.full_like(w, float("nan"))
        y = device_dkm(w.clone().requires_grad_(True), layer)
        with pytest.raises(edkm.EdkmError, match="grad_sums"):
            y.backward(g)
        layer.close()
        vec.close()
        assert rt.stats().arena_allocated == 0


def test_palettize_refuses_vectors_off_the_cpu():
    m = nn.Linear(16, 16).half()
    dw = et.DKMWeight(edkm.Runtime(), m.weight.shape, m.weight.dtype, dict(bits=2, cluster_dim=2), weight=m.weight)
    dw.device_split = False
    assert not dw.uses_device_split(m.weight)
    dw.device_split = True
    with pytest.raises(ValueError, match="cluster_dim 2"):
        dw(m.weight.detach().clone().requires_grad_(True))


# ---------------- two processes: counts and gradient sums all-reduced by the process group ----------------

WORLD = 2


def _worker(rank, port, outdir):
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        gen = torch.Generator().manual_seed(5)
        full = (torch.randn(64, 48, generator=gen) * 0.02).bfloat16()
        grad = torch.randn(64, 48, generator=gen).bfloat16()
        half = full.numel() // WORLD
        lo, hi = rank * half, (rank + 1) * half
        mine = full.view(-1)[lo:hi].clone().requires_grad_(True)
        link = HostLink()
        with edkm.Runtime() as rt, edkm.Layer(rt, full.shape, bits=3) as layer:
            y = device_dkm(mine, layer, link, group=dist.group.WORLD)
            y.backward(grad.view(-1)[lo:hi])
            stats = layer.stats()
            centroids = layer.centroids
        torch.save({"y": y.detach(), "grad": mine.grad, "U": stats.distinct_values, "centroids": torch.from_numpy(centroids),
                    "bytes": link.bytes_to_host + link.bytes_to_device}, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()



def test_two_process_gloo_all_reduces_counts_and_gradient_sums(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # one process with the whole tensor, for reference
    gen = torch.Generator().manual_seed(5)
    full = (torch.randn(64, 48, generator=gen) * 0.02).bfloat16()
    grad = torch.randn(64, 48, generator=gen).bfloat16()
    w = full.clone().requires_grad_(True)
    with edkm.Runtime() as rt, edkm.Layer(rt, full.shape, bits=3) as layer:
        y = device_dkm(w, layer)
        y.backward(grad)
        U = layer.stats().distinct_values
        centroids = layer.centroids
    half = full.numel() // WORLD
    for r in range(WORLD):
        assert res[r]["U"] == U, "every rank saw the whole tensor's histogram"
        assert torch.equal(res[r]["centroids"], torch.from_numpy(centroids)), "every rank got the same centroids"
        assert torch.equal(res[r]["y"].view(torch.int16), y.detach().view(-1)[r * half:(r + 1) * half].view(torch.int16))
        ref = w.grad.view(-1)[r * half:(r + 1) * half].float()
        # G summed per rank then across ranks (another float64 order): equal to ~1e-16, then bf16 rounding
        assert float((res[r]["grad"].float() - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
        assert float((res[r]["grad"] != w.grad.view(-1)[r * half:(r + 1) * half]).float().mean()) < 0.01
        assert res[r]["bytes"] == 24 * U + 8 * 2  # U-sized tables only (see test_only_u_sized_tables_cross)


@pytest.mark.parametrize("chunk,group", [(1000, 0), (2000, 8)])
def test_segmented_passes_equal_one_segment(monkeypatch, chunk, group):
    """Pieces of one partition (chunk 1000 < 6,144 per partition) and batches of two partitions
    (chunk 2000, 768 per partition) give the one-segment results: the forward bit for bit, the
    gradients to float64 summation order (G is summed per segment, then added)."""
    import edkm.torch_device as td

    w0 = (torch.randn(64, 96, generator=torch.Generator().manual_seed(9)) * 0.02).half()
    g = torch.randn(64, 96, generator=torch.Generator().manual_seed(10)).half()
    results = []
    for c in (td.CHUNK, chunk):
        monkeypatch.setattr(td, "CHUNK", c)
        with edkm.Runtime() as rt, edkm.Layer(rt, w0.shape, bits=3, group_size=group) as layer:
            w = w0.clone().requires_grad_(True)
            y = device_dkm(w, layer)
            y.backward(g)
            results.append((y.detach(), w.grad))
    assert torch.equal(results[0][0].view(torch.int16), results[1][0].view(torch.int16))
    a, b = results[0][1].double(), results[1][1].double()
    # f16 gradients: a float64 difference in G can flip one f16 rounding (~5e-4 relative) on rare elements
    assert float((a != b).float().mean()) < 0.01
    assert float((a - b).abs().max()) <= 1e-3 * float(a.abs().max())
