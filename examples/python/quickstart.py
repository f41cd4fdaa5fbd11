"""libedkm quickstart: train-time weight clustering of one fp16 weight matrix with numpy only.

    pip install -e python/          # or: PYTHONPATH=python
    scripts/build-dist.sh           # builds .build-dist/lib/libedkm.so.0 (or set EDKM_LIB_PATH)
    python examples/python/quickstart.py

A (256, 512) fp16 weight is clustered to 3 bits (8 centroids). Each step runs the DKM forward
(soft-clustered weights w~), a toy loss (squared error of w~ to the original weights), its backward
through every k-means iteration (dL/dw), and a plain SGD step on an fp32 master copy of the weights.
The loss goes down as the weights move to where their 3-bit clustering reproduces the original best.
At the end the layer is exported (8-entry LUT + 3-bit indices) and unpacked again.
"""

import os
import sys

import numpy as np

try:
    import edkm
except ImportError:  # not installed: use the checkout's python/ directory
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import edkm

rng = np.random.default_rng(0)
shape = (256, 512)
w_orig = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float16)  # a typical init scale
target = w_orig.astype(np.float32)
master = target.copy()  # fp32 master weights; the layer sees their fp16 copy

steps, lr = 10, 0.015

with edkm.Runtime() as runtime, edkm.Layer(runtime, shape, bits=3) as layer:
    print(f"libedkm {edkm.library_version()}: {shape} fp16 weights, {layer.k} centroids "
          f"(tau={layer.config['tau']:g}, {layer.config['max_iterations']} DKM iterations per forward)")
    for step in range(steps + 1):
        w = master.astype(np.float16)
        w_soft, saved = layer.forward(w, "f32")        # soft-clustered weights, f32
        diff = w_soft - target
        loss = 0.5 * float(np.sum(diff * diff))
        st = layer.stats()
        print(f"step {step}: loss {loss:.6f}  inertia {st.inertia:.6f}  "
              f"({st.iterations} iterations, {st.distinct_values} distinct fp16 values, "
              f"saved state {saved.nbytes} bytes)")
        if step == steps:
            saved.close()
            break
        grad_soft = diff.astype(np.float16)               # dL/dw~, in the weights' dtype
        grad = saved.backward(grad_soft, w)               # dL/dw through every DKM iteration
        saved.close()
        master -= lr * grad.astype(np.float32)            # plain SGD

    # Hard palettization for inference: an fp16 LUT and 3-bit indices.
    w = master.astype(np.float16)
    lut, packed = layer.export(w, "f16")
    w_hard = layer.unpack(lut, packed, "f16")
    hard_err = float(np.sqrt(np.mean((w_hard.astype(np.float32) - target) ** 2)))
    print(f"LUT: {lut.reshape(-1)}")
    print(f"hard-palettized RMS error vs the original weights: {hard_err:.6f} "
          f"(weights' RMS {float(np.sqrt(np.mean(target ** 2))):.6f})")
    distinct = len(np.unique(w_hard.astype(np.float32)))  # (np.unique on large float16 arrays miscounts in numpy 2.4)
    original = w_orig.nbytes
    compressed = lut.nbytes + packed.nbytes
    print(f"{distinct} distinct values; size: original {original} bytes (fp16), compressed {compressed} bytes "
          f"({packed.nbytes} index + {lut.nbytes} LUT) = {original / compressed:.2f}x smaller")
