"""Data-parallel DKM fine-tuning on 2 processes (torch.distributed, gloo, loopback) with the saved
state sharded across the ranks (eDKM's "shard": each rank keeps 1/world of the index list; the
backward all-gathers it through torch.distributed).

    pip install -e python/      # or run from the checkout
    python examples/python/distributed_gloo.py [--world 2] [--steps 30] [--bits 3]

Each rank trains the same MLP (DistributedDataParallel: gradients averaged over the ranks) on its own
half of a generated classification task. The Linear weights are palettized with edkm.torch; the
libedkm runtime of each rank gets edkm.torch.communicator() over a process group of its own, so the
library's all-gathers never interleave with DDP's gradient all-reduces on the default group. At the
end every rank holds the same weights (checked), rank 0 finalizes the model (hard 3-bit LUTs) and
writes it as an edkm safetensors file, and each rank reports its offload-arena peak next to the same
step's peak without sharding (UNIQUIFY: the whole index list on every rank) and in libedkm's default
HISTOGRAM mode (k- and U-sized tables only; the weights are re-read in backward, nothing to shard).
"""

import argparse
import os
import socket
import sys
import tempfile
import time

try:
    import edkm  # noqa: F401
except ImportError:  # not installed: use the checkout's python/ directory
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def make_model():
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))


def make_data(n=4096, seed=1):
    """x -> the argmax of a fixed random projection of x (plus noise); seed picks the samples."""
    proj = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    y = (x @ proj + 0.5 * torch.randn(n, 10, generator=g)).argmax(1)
    return x, y


def arena_peak_of_one_step(model, saved_mode, comm, x, y):
    """Arena peak of one forward+backward with a fresh runtime of the given mode (a float copy of
    the model's current weights, palettized again)."""
    import edkm
    import edkm.torch as et

    m = make_model()
    weights = {n.replace("parametrizations.weight.original", "weight"): p for n, p in model.named_parameters()}
    m.load_state_dict(weights)
    rt = edkm.Runtime(saved_mode=saved_mode, communicator=comm)
    et.palettize(m, bits=3, modules=(nn.Linear,), runtime=rt, f32_key_dtype="f16")
    rt.reset_peak()
    F.cross_entropy(m(x), y).backward()
    return rt.stats().arena_peak


def worker(rank, world, port, args, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import edkm
    import edkm.torch as et

    edkm_group = dist.new_group(backend="gloo")  # libedkm's collectives: a group of their own
    comm = et.communicator(edkm_group)
    runtime = edkm.Runtime(saved_mode="shard", communicator=comm, num_threads=1)

    model = make_model()
    et.palettize(model, bits=args.bits, modules=(nn.Linear,), runtime=runtime, f32_key_dtype="f16", tau=args.tau)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    x, y = make_data()
    x_test, y_test = make_data(1024, seed=2)
    mine = torch.arange(rank, len(x), world)  # this rank's half of the data
    t0 = time.perf_counter()
    for step in range(args.steps):
        g = torch.Generator().manual_seed(1000 * step + rank)
        idx = mine[torch.randint(len(mine), (args.batch,), generator=g)]
        loss = F.cross_entropy(ddp(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()  # DKM backward (all-gathers the sharded index list) + DDP all-reduce
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    stats = runtime.stats()

    # every rank must hold the same weights and centroids
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()] +
                     [p.centroids.reshape(-1) for *_, p in et.palettized(model)])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], t) for t in gathered)

    # arena peak of one step: sharded vs whole index list
    peak_shard = arena_peak_of_one_step(model, "shard", comm, x[mine[:args.batch]], y[mine[:args.batch]])
    peak_whole = arena_peak_of_one_step(model, "uniquify", None, x[mine[:args.batch]], y[mine[:args.batch]])
    peak_hist = arena_peak_of_one_step(model, "histogram", None, x[mine[:args.batch]], y[mine[:args.batch]])
    print(f"rank {rank}: {comm.calls['all_gather']} all-gathers, {stats.communicator_bytes} bytes sent; arena peak "
          f"of one step {peak_shard} B sharded vs {peak_whole} B with the whole index list (uniquify); "
          f"{peak_hist} B in libedkm's default histogram mode", flush=True)

    if rank == 0:
        model.eval()
        with torch.no_grad():
            acc_soft = (model(x_test).argmax(1) == y_test).float().mean().item()
        et.finalize(model)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        path = os.path.join(outdir, f"mlp-{args.bits}bit.safetensors")
        pal = et.export_safetensors(model, path)
        distinct = max(len(torch.unique(m.weight)) for m in model if isinstance(m, nn.Linear))
        print(f"ranks hold identical weights: {same}; test accuracy {acc:.3f} after finalize "
              f"(eval-mode hard weights before it: {acc_soft:.3f}); at most {distinct} distinct values per "
              f"weight; {path}: {os.path.getsize(path)} bytes ({len(pal)} palettized tensors)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tau", type=float, default=None,
                    help="scale-free DKM temperature factor (default: the library's, 0.1)")
    ap.add_argument("--out", default=None, help="directory for the safetensors file (default: a temporary one)")
    args = ap.parse_args()
    outdir = args.out or tempfile.mkdtemp(prefix="edkm-dist-")
    os.makedirs(outdir, exist_ok=True)
    print(f"{args.world} processes, gloo on 127.0.0.1, saved_mode=shard, {args.bits}-bit DKM on every Linear weight")
    mp.spawn(worker, args=(args.world, free_port(), args, outdir), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
