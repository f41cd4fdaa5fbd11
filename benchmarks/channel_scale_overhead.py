"""Cost of the per-channel scale (edkm_layer_config.channel_scale): forward and backward time of one
layer without and with the scale, in the same process. The scale adds passes over the N weights
(a finiteness scan, the divided copy, the product of the output; in the backward the scaled
gradient, the divided copy of the weights and the quotient of the gradient), which on the value
histogram path are of the order of the path's own O(N) passes. Best of --runs (default 5; more
runs give steadier figures on a loaded machine). --cpu-time times the process's CPU seconds
(time.process_time) instead of wall seconds: with --threads 1 a figure that other jobs sharing
the cores hardly move.

    python3 benchmarks/channel_scale_overhead.py [--runs 5] [--only-histogram] [--threads 1 --cpu-time]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import edkm  # noqa: E402


def best_seconds(rt, w, g, runs, clock=time.perf_counter, **layer_options):
    """(forward, backward) best of `runs`, each step from the same warm start."""
    with edkm.Layer(rt, w.shape, bits=4, **layer_options) as layer:
        layer.forward(w, save=False)
        start = layer.centroids
        forward = backward = float("inf")
        for _ in range(runs):
            layer.centroids = start
            t = clock()
            _, state = layer.forward(w)
            t1 = clock()
            state.backward(g, weights=w)
            t2 = clock()
            state.close()
            forward, backward = min(forward, t1 - t), min(backward, t2 - t1)
    return forward, backward


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only-histogram", action="store_true", help="skip the dense f32 case")
    ap.add_argument("--threads", type=int, default=0, help="runtime threads (0 = all cores)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU seconds instead of wall seconds")
    args = ap.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    rng = np.random.default_rng(0)
    cases = [("f16 2048x1024 (value histogram)", np.float16, (2048, 1024)),
             ("f32 512x1024 (dense)", np.float32, (512, 1024))][:1 if args.only_histogram else 2]
    with edkm.Runtime(num_threads=args.threads) as rt:
        for name, dtype, shape in cases:
            magnitudes = np.exp(rng.uniform(-4, 0, (shape[0], 1)))  # rows of different scales
            w = (rng.standard_normal(shape) * magnitudes).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            pf, pb = best_seconds(rt, w, g, args.runs, clock)
            sf, sb = best_seconds(rt, w, g, args.runs, clock, channel_scale="min_max")
            print(f"{name:32s} 4 bits: forward {pf * 1e3:6.1f} -> {sf * 1e3:6.1f} ms (x{sf / pf:.2f}), "
                  f"backward {pb * 1e3:6.1f} -> {sb * 1e3:6.1f} ms (x{sb / pb:.2f}) without -> with channel_scale")


if __name__ == "__main__":
    main()
