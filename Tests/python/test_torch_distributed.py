"""Two processes, torch.distributed with gloo on loopback: edkm.torch.communicator() lent to libedkm,
saved_mode SHARD (each rank keeps half of the index list, backward all-gathers it). Each rank's
gradients equal the ones one process computes for the same batch without a communicator: exactly
with the same saved tables kept whole (UNIQUIFY), and to float16 rounding with the default mode."""
import os

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import edkm.torch as et  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from ports import free_port  # noqa: E402

WORLD = 2


def build(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).to(dtype)
    return model


def batch(rank, dtype):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 32, generator=g).to(dtype), torch.randint(0, 8, (16,), generator=g)


def grads(model, x, y):
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, loss.item()


def _worker(rank, port, outdir, dtype_name):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        comm = et.communicator(dist.new_group(backend="gloo"))  # its own group: never interleaves with DDP's
        sharded = build(dtype)
        et.palettize(sharded, bits=3, group_size=8, runtime={"saved_mode": "shard", "communicator": comm})
        single = build(dtype)
        et.palettize(single, bits=3, group_size=8, runtime={"saved_mode": "uniquify"})  # one process
        default = build(dtype)
        et.palettize(default, bits=3, group_size=8)  # one process, default HISTOGRAM mode
        x, y = batch(rank, dtype)
        g_shard, loss_shard = grads(sharded, x, y)
        g_single, loss_single = grads(single, x, y)
        g_default, _ = grads(default, x, y)
        rt = et.palettized(sharded)[0][3].runtime
        stats = rt.stats()
        torch.save({"shard": g_shard, "single": g_single, "default": g_default, "loss": (loss_shard, loss_single),
                    "calls": dict(comm.calls), "comm_bytes": stats.communicator_bytes,
                    "live": stats.live_saved_states, "saved_mode": int(rt.saved_mode)},
                   os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()



@pytest.mark.parametrize("dtype_name", ["float16"])
def test_two_process_gloo_shard_matches_single_process(tmp_path, dtype_name):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(free_port(), str(tmp_path), dtype_name), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert res["saved_mode"] == 5  # EDKM_SAVED_SHARD
        assert res["calls"]["all_gather"] >= 2 and res["comm_bytes"] > 0, res["calls"]
        assert res["live"] == 0
        assert res["loss"][0] == res["loss"][1]
        for name, g in res["single"].items():
            # sharding is lossless: bit-identical to the same saved state kept whole in one process
            assert torch.equal(res["shard"][name], g), (r, name)
            # and within float16 rounding of the default (histogram) mode, which recomputes the
            # attention tables in float64 instead of reading float32 ones back
            d = res["default"][name].float()
            assert float((res["shard"][name].float() - d).abs().max()) <= 1e-3 * float(d.abs().max()), (r, name)
    # the ranks had different batches: different gradients
    assert not torch.equal(results[0]["single"]["0.parametrizations.weight.original"],
                           results[1]["single"]["0.parametrizations.weight.original"])


def test_communicator_needs_an_initialised_process_group():
    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        et.communicator()


def test_communicator_callbacks_in_a_world_of_one(tmp_path):
    """The adapter's callbacks on a 1-process gloo group: all-gather returns the bytes, all-reduce
    sums in place (the library's buffer is a numpy view)."""
    import numpy as np

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        comm = et.communicator()
        assert (comm.rank, comm.world_size) == (0, 1)
        out = comm._py_all_gather(memoryview(b"\x01\x02\x03"), 3)
        assert bytes(memoryview(out)) == b"\x01\x02\x03"
        data = np.array([1.5, -2.0])
        comm._py_all_reduce_sum(data)
        assert data.tolist() == [1.5, -2.0]
        import edkm

        w = (torch.randn(32, 16) * 0.05).half().requires_grad_(True)
        with edkm.Runtime(saved_mode="shard", communicator=comm) as rt, edkm.Layer(rt, w.shape, bits=2) as layer:
            et.dkm(w, layer).float().sum().backward()
        assert comm.calls["all_gather"] >= 1 and w.grad is not None
    finally:
        dist.destroy_process_group()
