"""The device split per training step on one LLaMA-7B decoder layer (bf16, 3 bits).

Each weight lives on --device; per step (forward + backward of DKM on every weight) the four O(N)
passes run as torch ops there and libedkm's histogram form runs on the host (edkm.torch_device).
Reported per tensor and for the layer, per-tensor LUTs and grouped LUTs (group_size 16):

- bytes that cross host<->device (counted by the HostLink), against 4 x 2N: moving the bf16
  weights to the host, w~ back, the upstream gradient to the host and dL/dw back, as a trainer
  would with the buffer API;
- time: the whole step, and the part spent in libedkm on the host (the rest is the device
  passes and the transfers);
- peak device memory the step allocates beyond the weights and the upstream gradient, and beyond
  the two results every DKM step makes (w~ and dL/dw, 2 x 2N): CUDA from
  torch.cuda.max_memory_allocated, CPU from the resident set sampled every millisecond.

With --compare-buffer (CPU only) each tensor also runs the buffer form (edkm.torch.dkm: the whole
step in libedkm) in the same process, best of --repeat, for the choice of the CPU default.

    nice -n 10 python3 benchmarks/device_step.py --device cpu
    python3 benchmarks/device_step.py --device cuda
    python3 benchmarks/device_step.py --device cpu --layers q,gate --compare-buffer

The last line reads `host<->device bytes per step: B (Rx less than moving the weights)` for the
per-tensor LUTs of the layers run.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import torch  # noqa: E402

import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from edkm.torch_device import HostLink, device_dkm  # noqa: E402

SHAPES = {  # LLaMA-7B decoder layer: name -> (out, in)
    "q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
    "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_peak_bytes(fn):
    """Peak resident memory while fn runs above the resident memory before it: /proc/self/statm
    sampled every millisecond by a thread (torch's CPU ops release the GIL; tensors this large are
    mmap'ed, so their frees return the pages at once). None where /proc is missing."""
    import threading

    try:
        base = _rss_bytes()
    except OSError:
        return None
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - base


def step(w, g, layer, link):
    y = device_dkm(w, layer, link)
    y.backward(g)
    return y


def run_tensor(name, shape, group, device, rt, repeat):
    gen = torch.Generator().manual_seed(list(SHAPES).index(name))
    w_cpu = (torch.randn(shape, generator=gen) * 0.02).bfloat16()
    layer = edkm.Layer(rt, shape, bits=3, group_size=group)
    layer.init_centroids(et.tensor_as_numpy(w_cpu)[0], dtype="bf16")  # setup, not part of the step
    w = w_cpu.to(device).requires_grad_(True)
    g = (torch.randn(shape, generator=gen) * 1e-3).bfloat16().to(device)
    del w_cpu
    link = HostLink()
    n = w.numel()
    best = None
    for _ in range(repeat):
        link.reset_counters()
        w.grad = None
        sync(device)
        t0 = time.perf_counter()
        y = step(w, g, layer, link)
        sync(device)
        total = time.perf_counter() - t0
        if best is None or total < best[0]:
            best = (total, link.host_seconds, link.bytes_to_host + link.bytes_to_device)
        del y
    results = 2 * 2 * n  # w~ and dL/dw, bf16
    w.grad = None  # freed before the measurement: the peak counts only what the step allocates
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        y = step(w, g, layer, link)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del y
    else:
        holder = {}
        peak = cpu_peak_bytes(lambda: holder.setdefault("y", step(w, g, layer, link)))
        holder.clear()
    extra = None if peak is None else max(0, peak - results)
    stats = layer.stats()
    layer.close()
    return dict(name=name, n=n, U=stats.distinct_values, seconds=best[0], host=best[1], bytes=best[2],
                extra=extra)


def buffer_seconds(name, shape, group, rt, repeat):
    """Best step time of the buffer form (libedkm does all of it) on a CPU tensor."""
    gen = torch.Generator().manual_seed(list(SHAPES).index(name))
    w = (torch.randn(shape, generator=gen) * 0.02).bfloat16().requires_grad_(True)
    g = (torch.randn(shape, generator=gen) * 1e-3).bfloat16()
    layer = edkm.Layer(rt, shape, bits=3, group_size=group)
    layer.init_centroids(et.tensor_as_numpy(w.detach())[0], dtype="bf16")
    best = None
    for _ in range(repeat):
        w.grad = None
        t0 = time.perf_counter()
        et.dkm(w, layer).backward(g)
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    layer.close()
    return best


def mb(b):
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def main():
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc: every allocation over 128 KiB mmap'ed and unmapped on free (no dynamic threshold),
        # so that the resident set follows the live CPU tensors; re-run with that setting
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N, mps)")
    ap.add_argument("--layers", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--groups", default="0,16", help="group sizes to run (0 = per-tensor LUT)")
    ap.add_argument("--repeat", type=int, default=1, help="steps per tensor (the best is reported)")
    ap.add_argument("--compare-buffer", action="store_true", help="CPU: also time the buffer form")
    args = ap.parse_args()
    device = torch.device(args.device)
    names = [s.strip() for s in args.layers.split(",") if s.strip()]
    for s in names:
        if s not in SHAPES:
            ap.error(f"unknown layer {s!r}; choose from {','.join(SHAPES)}")
    groups = [int(x) for x in args.groups.split(",")]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'host CPU'}), "
          f"torch {torch.__version__}, libedkm {edkm.library_version()}, threads {torch.get_num_threads()}")
    summary = {}
    with edkm.Runtime() as rt:
        for group in groups:
            lut = "per-tensor LUT" if group == 0 else f"grouped LUTs (group_size {group})"
            print(f"\n== {lut}, bf16, 3 bits ==")
            print(f"{'tensor':6s} {'shape':>12s} {'U':>8s} {'step s':>8s} {'host s':>8s} {'device s':>9s} "
                  f"{'crossed':>11s} {'4x2N':>11s} {'ratio':>8s} {'peak extra':>11s}" +
                  (f" {'buffer s':>9s} {'split/buffer':>12s}" if args.compare_buffer else ""))
            tot = dict(n=0, seconds=0.0, host=0.0, bytes=0, extra=0)
            for name in names:
                r = run_tensor(name, SHAPES[name], group, device, rt, args.repeat)
                move = 4 * 2 * r["n"]
                line = (f"{name:6s} {'x'.join(map(str, SHAPES[name])):>12s} {r['U']:8d} {r['seconds']:8.2f} "
                        f"{r['host']:8.2f} {r['seconds'] - r['host']:9.2f} {r['bytes'] / 2**20:9.2f}Mi "
                        f"{move / 2**20:9.0f}Mi {move / r['bytes']:7.0f}x {mb(r['extra']):>11s}")
                if args.compare_buffer:
                    b = buffer_seconds(name, SHAPES[name], group, rt, args.repeat)
                    line += f" {b:9.2f} {r['seconds'] / b:11.2f}x"
                print(line, flush=True)
                for key in ("n", "seconds", "host", "bytes"):
                    tot[key] += r[key]
                tot["extra"] = None if r["extra"] is None or tot["extra"] is None else max(tot["extra"], r["extra"])
            move = 4 * 2 * tot["n"]
            print(f"layer: N = {tot['n']:,}, step {tot['seconds']:.2f} s (host math {tot['host']:.2f} s, device passes "
                  f"and transfers {tot['seconds'] - tot['host']:.2f} s), crossed {tot['bytes']:,} B vs 4 x 2N = "
                  f"{move:,} B ({move / tot['bytes']:.0f}x less), peak extra per tensor step {mb(tot['extra'])}")
            summary[group] = (tot["bytes"], move)
    key = 0 if 0 in summary else groups[0]
    crossed, move = summary[key]
    print(f"host<->device bytes per step: {crossed} ({move / crossed:.0f}x less than moving the weights)")


if __name__ == "__main__":
    main()
