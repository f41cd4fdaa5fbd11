"""Cost of the per-channel scale (edkm_layer_config.channel_scale): forward and backward time of one
layer without and with the scale, in the same process. The scale adds passes over the N weights
(a finiteness scan, the divided copy, the product of the output; in the backward the scaled
gradient, the divided copy of the weights and the quotient of the gradient), which on the value
histogram path are of the order of the path's own O(N) passes. Best of 5.

    python3 benchmarks/channel_scale_overhead.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import edkm  # noqa: E402


def best_seconds(rt, w, g, **layer_options):
    """(forward, backward) best of 5, each step from the same warm start."""
    with edkm.Layer(rt, w.shape, bits=4, **layer_options) as layer:
        layer.forward(w, save=False)
        start = layer.centroids
        forward = backward = float("inf")
        for _ in range(5):
            layer.centroids = start
            t = time.perf_counter()
            _, state = layer.forward(w)
            t1 = time.perf_counter()
            state.backward(g, weights=w)
            t2 = time.perf_counter()
            state.close()
            forward, backward = min(forward, t1 - t), min(backward, t2 - t1)
    return forward, backward


def main():
    rng = np.random.default_rng(0)
    cases = [("f16 2048x1024 (value histogram)", np.float16, (2048, 1024)),
             ("f32 512x1024 (dense)", np.float32, (512, 1024))]
    with edkm.Runtime() as rt:
        for name, dtype, shape in cases:
            magnitudes = np.exp(rng.uniform(-4, 0, (shape[0], 1)))  # rows of different scales
            w = (rng.standard_normal(shape) * magnitudes).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            pf, pb = best_seconds(rt, w, g)
            sf, sb = best_seconds(rt, w, g, channel_scale="min_max")
            print(f"{name:32s} 4 bits: forward {pf * 1e3:6.1f} -> {sf * 1e3:6.1f} ms (x{sf / pf:.2f}), "
                  f"backward {pb * 1e3:6.1f} -> {sb * 1e3:6.1f} ms (x{sb / pb:.2f}) without -> with channel_scale")


if __name__ == "__main__":
    main()
