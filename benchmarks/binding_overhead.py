"""Overhead of the Python binding on one training step: a 4096x4096 f16 layer, 4 bits, forward
(with saved state) + backward + release, through `edkm.Layer` / `SavedState` against the same three
C functions called directly through ctypes on preallocated buffers, in the same process,
interleaved, median of N steps each.

    PYTHONPATH=python python3 benchmarks/binding_overhead.py [--steps N] [--shape ROWSxCOLS]

Rows: the binding as a training loop calls it (it allocates w~ and dL/dw per step: numpy's
allocation and first-touch page faults are part of its cost); the binding with out= buffers; the
direct C calls on preallocated buffers; the direct C calls on buffers allocated per step with
numpy.empty (what the allocating binding does besides its own Python work). The ratio binding / C
is the binding's overhead. Each step is timed both by the wall clock and by the process's CPU time
(all threads): on a machine shared with other jobs the CPU-time ratio is the steadier one.
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import edkm  # noqa: E402
from edkm import _ffi  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--shape", default="4096x4096")
    args = ap.parse_args()
    rows, cols = (int(x) for x in args.shape.split("x"))
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)
    g = (rng.standard_normal((rows, cols)) * 1e-3).astype(np.float16)
    out = np.empty_like(w)
    grad = np.empty_like(g)
    f16 = int(edkm.DType.F16)
    with edkm.Runtime() as rt, edkm.Layer(rt, w.shape, bits=4) as layer:
        layer.init_centroids(w)
        c0 = layer.centroids

        def binding():
            _, state = layer.forward(w)
            state.backward(g, weights=w)
            state.close()

        def binding_out():
            _, state = layer.forward(w, out=out)
            state.backward(g, weights=w, out=grad)
            state.close()

        handle = layer._handle()

        def direct():
            saved = _ffi.edkm_saved_state_p()
            assert _ffi.edkm_layer_forward(handle, w.ctypes.data, f16, w.size, out.ctypes.data, f16, ctypes.byref(saved)) == 0
            assert _ffi.edkm_saved_state_backward(saved, g.ctypes.data, grad.ctypes.data, f16, g.size, w.ctypes.data) == 0
            _ffi.edkm_saved_state_destroy(saved)

        def direct_allocating():
            o, gi = np.empty_like(w), np.empty_like(g)
            saved = _ffi.edkm_saved_state_p()
            assert _ffi.edkm_layer_forward(handle, w.ctypes.data, f16, w.size, o.ctypes.data, f16, ctypes.byref(saved)) == 0
            assert _ffi.edkm_saved_state_backward(saved, g.ctypes.data, gi.ctypes.data, f16, g.size, w.ctypes.data) == 0
            _ffi.edkm_saved_state_destroy(saved)

        cases = [("binding (allocating w~, dL/dw)", binding), ("binding, out= buffers", binding_out),
                 ("direct C calls (ctypes)", direct), ("direct C calls, numpy.empty outputs", direct_allocating)]
        times = {name: [] for name, _ in cases}
        cpu = {name: [] for name, _ in cases}
        for step in range(args.steps + 1):
            for name, fn in cases:
                layer.centroids = c0  # every step does the same work
                t, c = time.perf_counter(), time.process_time()
                fn()
                dt, dc = time.perf_counter() - t, time.process_time() - c
                if step > 0:  # the first round warms up
                    times[name].append(dt)
                    cpu[name].append(dc)
    c = statistics.median(times["direct C calls (ctypes)"])
    cc = statistics.median(cpu["direct C calls (ctypes)"])
    print(f"{rows}x{cols} f16, 4 bits, fwd+bwd (library defaults), median of {args.steps} interleaved steps:")
    for name, _ in cases:
        m, mc = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"  {name:36s} wall {m * 1e3:8.1f} ms  {m / c:5.3f}x   CPU {mc * 1e3:8.1f} ms  {mc / cc:5.3f}x the direct C calls")


if __name__ == "__main__":
    main()
