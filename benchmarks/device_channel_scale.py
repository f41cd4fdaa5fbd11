"""The per-channel scale on the device split (edkm.torch_device): distinct keys U, bytes crossing
between the device and the host per training step, and step time, without and with the scale, on
one weight of a LLaMA-7B projection's shape (4096 x 4096), in the same process.

With the scale the device keys v = w / s_r rounded to the weights' dtype, so the keys stay 16-bit
(U <= 65,536 per LUT partition) but rows of different factors put their values on other points of
the 16-bit grid: U changes with the weights' spread. Per step 26 bytes per key cross with the
scale (the soft values come down as float32, 4 bytes, instead of the weights' 16-bit dtype) against
24 without, plus 8 per partition offset and 4 per row for the factors (device_dkm reads them from
the layer on every call; edkm.torch.DKMWeight keeps them on the device and sends them once).

    nice -n 10 python3 benchmarks/device_channel_scale.py [--device cpu] [--rows 4096 --cols 4096] [--groups 0,16]

Weights: "gaussian" i.i.d. N(0, 0.02^2) (one scale for every row) and "row spread" rows of
magnitudes e^U(-4, 0) (what the per-channel scale is for). Time: best of 2 steps after a warm-up
(on a CPU this times torch's CPU ops, a stand-in for the device's passes; compare the two columns).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import torch  # noqa: E402

import edkm  # noqa: E402
from edkm.torch_device import HostLink, device_dkm  # noqa: E402


_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16"}


def weights(kind, rows, cols, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    if kind == "gaussian":
        w *= 0.02
    else:
        w *= torch.exp(torch.empty(rows, 1).uniform_(-4, 0, generator=gen))
    return w.to(dtype)


def step(rt, w, g, device, **options):
    """(U, bytes per step, best seconds per step) of forward + backward through the device split."""
    with edkm.Layer(rt, tuple(w.shape), bits=4, **options) as layer:
        link = HostLink()
        best, crossed = float("inf"), None
        for i in range(3):
            x = w.to(device).requires_grad_(True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            link.reset_counters()
            t = time.perf_counter()
            device_dkm(x, layer, link).backward(g.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            if i > 0:  # after the warm-up (which also fixes the factors and carries them once)
                best = min(best, seconds)
                crossed = link.bytes_to_host + link.bytes_to_device
        return layer.stats().distinct_values, crossed, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--groups", default="0,16", help="group sizes (0 = one LUT per tensor), comma-separated")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.rows * args.cols
    print(f"{args.rows} x {args.cols} ({n:,} weights), 4 bits, device {device}; bytes and time per training step")
    print(f"{'weights':10s} {'dtype':5s} {'LUT':9s} | {'U':>7s} {'bytes':>9s} {'ms':>7s} | {'U scaled':>8s} "
          f"{'bytes':>9s} {'ms':>7s} | time x")
    with edkm.Runtime() as rt:
        for kind in ("gaussian", "row spread"):
            for dtype in (torch.bfloat16, torch.float16):
                w = weights(kind, args.rows, args.cols, dtype)
                g = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(1)).to(dtype)
                for group in (int(x) for x in args.groups.split(",")):
                    u0, b0, t0 = step(rt, w, g, device, group_size=group)
                    u1, b1, t1 = step(rt, w, g, device, group_size=group, channel_scale="min_max")
                    lut = "tensor" if group == 0 else f"{group} rows"
                    print(f"{kind:10s} {_NAMES[dtype]:5s} {lut:9s} | {u0:7,d} {b0:9,d} {t0 * 1e3:7.0f} | {u1:8,d} "
                          f"{b1:9,d} {t1 * 1e3:7.0f} | x{t1 / t0:.2f}")
    print(f"(dense weights would be 2 x {n:,} = {2 * n:,} bytes each way per pass)")


if __name__ == "__main__":
    main()
