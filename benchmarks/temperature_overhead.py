"""Cost of the scale-free temperature: forward+backward time of one layer in the absolute and the
scale-free mode, in the same process (the scale-free mode adds one pass that measures the k-means
distortion: O(U log k) on the value histogram, O(N log k) on the dense path). Best of 5.

    python3 benchmarks/temperature_overhead.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import edkm  # noqa: E402


def best_step_seconds(rt, w, g, **layer_options):
    with edkm.Layer(rt, w.shape, bits=4, **layer_options) as layer:
        layer.init_centroids(w)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            _, state = layer.forward(w, "f32")
            state.backward(g, weights=w)
            state.close()
            times.append(time.perf_counter() - t)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    cases = [("f16 4096x4096 (value histogram)", np.float16, (4096, 4096)),
             ("f32 1024x1024 (dense)", np.float32, (1024, 1024))]
    with edkm.Runtime() as rt:
        for name, dtype, shape in cases:
            w = (rng.standard_normal(shape) * 0.02).astype(dtype)
            g = (rng.standard_normal(shape) * 1e-3).astype(np.float32)
            absolute = best_step_seconds(rt, w, g, tau=1e-4, temperature_mode="absolute")
            scale_free = best_step_seconds(rt, w, g)  # the library's default: scale-free, tau 0.1
            print(f"{name:34s} 4 bits fwd+bwd: absolute {absolute * 1e3:7.1f} ms, scale-free {scale_free * 1e3:7.1f} ms, "
                  f"ratio {scale_free / absolute:.3f}")


if __name__ == "__main__":
    main()
