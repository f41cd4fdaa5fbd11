#!/usr/bin/env python3
"""coremltools DKMPalettizer vs libedkm: one training step of one nn.Linear, side by side.

    PYTHONPATH=python python3 benchmarks/coremltools_compare.py            # 1024x1024, 4 bits
    PYTHONPATH=python python3 benchmarks/coremltools_compare.py --large    # + 4096x4096 (~1 min, ~16 GB for coremltools)

The same float32 weights (normal, std 0.02) in an nn.Linear (no bias), a batch x of 8 rows, loss =
sum(y * r) for a fixed random r. One training step = forward (DKM of the weights, then x @ w~^T)
and backward (loss.backward() down to dL/dw), timed separately:

  coremltools   DKMPalettizer(n_bits, defaults: tau 1e-4, 3 k-means iterations, per-tensor), prepared
                model; its forward runs DKM on the weights.
  libedkm f32   the same float32 weights in a torch.autograd.Function around edkm_layer_forward /
                edkm_saved_state_backward (f32_key_dtype = f16: keyed by their float16 rounding, so the
                uniquified path runs; default HISTOGRAM saved state, weights handed back to backward).
  libedkm f16   the library calls alone on float16 weights (w~ and dL/dw in float16): the headline
                "4096x4096 f16, 4 bits" case, no torch around it.

Centroid initialisation is not timed: both start from the same centroids, libedkm's exact 1-D k-means
of the weights (coremltools' FakePalettize gets them as preset centroids: its own k-means++ init, 10
restarts of up to 100 Lloyd iterations with cdist, takes ~20 s at 256x256 and far longer at 4096x4096,
and is not part of a training step). The soft weights w~ of the first step are compared. coremltools runs 2 timed steps up to 1024x1024 and 1 above (one takes
~50 s at 4096x4096); libedkm runs --edkm-steps steps after an untimed warm-up step, and reports the
median.

Memory: each measurement runs in its own subprocess (the driver, one process, runs them one after
the other and prints the ratios). "step peak": the subprocess resets its peak resident set (writes 5
to /proc/self/clear_refs, which resets VmHWM), notes VmRSS, runs the steps (libedkm: warm-up included)
and reads VmHWM: the peak memory the training step(s) added over the set-up (model, weights,
centroids), outputs and gradients included. Without a writable clear_refs it falls back to the growth
of getrusage ru_maxrss (and says so). "process peak": the subprocess's ru_maxrss at the end (Python +
torch + everything). tracemalloc is not used: it does not see torch's or libedkm's native allocations.

The library is found by the binding (python/edkm): EDKM_LIB_PATH, else the checkout's build (.build-dist/lib/libedkm.so.0).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class StepPeak:
    """Peak resident memory of a block of code over the resident memory before it.

    Linux: resets the process's peak RSS (VmHWM) by writing 5 to /proc/self/clear_refs, records
    VmRSS, and after the block reads VmHWM: step peak = VmHWM - VmRSS(before). Elsewhere (or when
    clear_refs is not writable) falls back to the growth of getrusage's ru_maxrss, which cannot see
    a step that stays under the process's earlier peak (e.g. importing torch)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _status_kib("VmRSS")
            self.method = "VmHWM"
        except OSError:
            self.base = maxrss_bytes()
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc):
        self.peak = (_status_kib("VmHWM") if self.method == "VmHWM" else maxrss_bytes()) - self.base
        self.process_peak = maxrss_bytes()
        return False


def make_inputs(rows, cols, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    x = torch.randn(8, cols, generator=g)
    r = torch.randn(8, rows, generator=g)
    return w, x, r


# ----------------------------------------------------------------------------- children


def initial_centroids(w, bits):
    """libedkm's initial centroids (exact 1-D k-means of the f16-keyed values) for float32 weights w:
    both implementations start every timed step from these."""
    import edkm

    with edkm.Runtime() as rt:
        layer = edkm.Layer(rt, tuple(w.shape), bits=bits, f32_key_dtype="f16")
        layer.init_centroids(w.numpy())
        c = layer.centroids.copy()
        layer.close()
    return c.reshape(-1, 1)  # (k, 1)


def child_coremltools(rows, cols, bits, steps, dump):
    import warnings

    warnings.filterwarnings("ignore")
    import logging
    import numpy as np
    import torch

    logging.disable(logging.WARNING)
    from coremltools.optimize.torch.palettization import DKMPalettizer, DKMPalettizerConfig

    w, x, r = make_inputs(rows, cols)
    c0 = torch.from_numpy(initial_centroids(w, bits))
    model = torch.nn.Sequential(torch.nn.Linear(cols, rows, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    cfg = DKMPalettizerConfig.from_dict({"global_config": {"n_bits": bits}})
    palettizer = DKMPalettizer(model, cfg)
    model = palettizer.prepare()
    model.train()
    fq = model[0].weight_fake_quant
    # Preset the centroids (coremltools' own k-means++ initialisation, 10 restarts of up to 100 Lloyd
    # iterations with cdist, takes minutes at 4096x4096 and is not part of a training step).
    fq.create_partitions(model[0].weight.detach())
    fq.centroids = [c0.clone() for _ in fq.partitions]
    fq.labels = [None for _ in fq.partitions]
    captured = []
    hook = fq.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()) if not captured else None)
    fwd, bwd = [], []
    mem = StepPeak().__enter__()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = model(x)
        loss = (y * r).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        palettizer.step()
    mem.__exit__(None, None, None)
    hook.remove()
    if dump:
        np.save(dump, captured[0].numpy())
    gw = model[0].weight.grad
    return dict(fwd=fwd, bwd=bwd, step_peak=mem.peak, process_peak=mem.process_peak, mem_method=mem.method,
                grad_finite=bool(torch.isfinite(gw).all().item()), output_nan=bool(torch.isnan(captured[0]).any().item()),
                torch=torch.__version__, threads=torch.get_num_threads())


def child_edkm_f32(rows, cols, bits, steps, dump):
    import numpy as np
    import torch
    import edkm

    class EdkmDKM(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, layer):
            wn = w.detach().numpy()
            soft, saved = layer.forward(wn, out_dtype="f32")
            ctx.saved, ctx.wn = saved, wn
            if not soft_first:
                soft_first.append(soft.copy())
            return torch.from_numpy(soft)

        @staticmethod
        def backward(ctx, g):
            gw = ctx.saved.backward(np.ascontiguousarray(g.numpy()), weights=ctx.wn)
            ctx.saved.close()
            return torch.from_numpy(gw), None

    w, x, r = make_inputs(rows, cols)
    weight = torch.nn.Parameter(w.clone())
    rt = edkm.Runtime()
    layer = edkm.Layer(rt, (rows, cols), bits=bits, f32_key_dtype="f16", temperature_mode="absolute")  # tau 1e-4, as coremltools
    layer.centroids = initial_centroids(w, bits).reshape(1, -1, 1)
    c0 = layer.centroids.copy()
    soft_first = []
    fwd, bwd = [], []
    mem = StepPeak().__enter__()
    for step in range(-1, steps):  # one untimed warm-up step
        layer.centroids = c0
        weight.grad = None
        t0 = time.perf_counter()
        y = torch.nn.functional.linear(x, EdkmDKM.apply(weight, layer))
        loss = (y * r).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if step >= 0:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    mem.__exit__(None, None, None)
    if dump:
        np.save(dump, soft_first[0])
    st = layer.stats()
    return dict(fwd=fwd, bwd=bwd, step_peak=mem.peak, process_peak=mem.process_peak, mem_method=mem.method,
                grad_finite=bool(torch.isfinite(weight.grad).all().item()),
                distinct=int(st.distinct_values), iterations=int(st.iterations), library=edkm.library_path(),
                threads=int(rt.stats().num_threads))


def child_edkm_f16(rows, cols, bits, steps, dump):
    import numpy as np
    import edkm

    w, x, r = make_inputs(rows, cols)
    w16 = w.numpy().astype(np.float16)
    g16 = (np.random.default_rng(1).standard_normal((rows, cols)) * 1e-3).astype(np.float16)
    out = np.empty_like(w16)
    gout = np.empty_like(w16)
    rt = edkm.Runtime()
    layer = edkm.Layer(rt, (rows, cols), bits=bits, temperature_mode="absolute")  # tau 1e-4, as coremltools
    layer.init_centroids(w16)
    c0 = layer.centroids.copy()
    fwd, bwd = [], []
    mem = StepPeak().__enter__()
    for step in range(-1, steps):
        layer.centroids = c0
        t0 = time.perf_counter()
        _, saved = layer.forward(w16, out=out)
        t1 = time.perf_counter()
        saved.backward(g16, weights=w16, out=gout)
        t2 = time.perf_counter()
        saved.close()
        if step >= 0:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    mem.__exit__(None, None, None)
    return dict(fwd=fwd, bwd=bwd, step_peak=mem.peak, process_peak=mem.process_peak, mem_method=mem.method,
                grad_finite=bool(np.isfinite(gout).all()),
                threads=int(rt.stats().num_threads))


CHILDREN = {"coremltools": child_coremltools, "edkm-f32": child_edkm_f32, "edkm-f16": child_edkm_f16}


# ----------------------------------------------------------------------------- driver


def run_child(kind, rows, cols, bits, steps, dump):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, str(rows), str(cols), str(bits), str(steps), dump or ""]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{kind} {rows}x{cols} failed (exit {p.returncode})")
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["wall"] = wall
    return res


def available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def gib(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def fmt_s(s):
    return f"{s:.3f} s" if s >= 0.1 else f"{s * 1e3:.2f} ms"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rows, cols, bits, steps = sys.argv[2], *map(int, sys.argv[3:7])
        res = CHILDREN[kind](rows, cols, bits, steps, sys.argv[7] if len(sys.argv) > 7 else "")
        print("RESULT " + json.dumps(res))
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024x1024", help="ROWSxCOLS list (default 1024x1024)")
    ap.add_argument("--large", action="store_true", help="also 4096x4096 (coremltools: ~1 min, ~16 GB)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--edkm-steps", type=int, default=5, help="timed libedkm steps (median; default 5)")
    ap.add_argument("--ct-steps", type=int, default=0,
                    help="timed coremltools steps (median; default 2 up to 1024x1024, 1 above)")
    ap.add_argument("--min-free-gib", type=float, default=20.0,
                    help="skip coremltools at 4096x4096 when less memory is available (default 20)")
    args = ap.parse_args()

    try:
        import torch
        import coremltools  # noqa: F401
    except Exception as e:  # pragma: no cover - environment dependent
        print(f"coremltools_compare: skipped ({type(e).__name__}: {e}); pip install torch coremltools")
        return
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    if args.large and (4096, 4096) not in sizes:
        sizes.append((4096, 4096))

    import coremltools as ct

    print(f"coremltools {ct.__version__} DKMPalettizer vs libedkm; torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"{args.bits} bits, one nn.Linear, batch 8; one subprocess per row; memory: each subprocess's peak RSS")
    rows_out = []
    import tempfile

    tmp = tempfile.mkdtemp(prefix="edkm-ct-")
    for rows, cols in sizes:
        n = rows * cols
        avail = available_memory()
        results = {}
        dumps = {}
        for kind in ("coremltools", "edkm-f32", "edkm-f16"):
            steps = args.edkm_steps
            if kind == "coremltools":
                steps = args.ct_steps or (2 if n <= 1024 * 1024 else 1)
            if kind == "coremltools" and n >= 4096 * 4096 and avail < args.min_free_gib * 2**30:
                print(f"  {rows}x{cols}: coremltools skipped, {gib(avail)} available < {args.min_free_gib} GiB")
                continue
            print(f"  {rows}x{cols} {kind} ...", flush=True)
            dump = os.path.join(tmp, f"{kind}-{rows}x{cols}.npy") if kind != "edkm-f16" else None
            results[kind] = run_child(kind, rows, cols, args.bits, steps, dump)
            if dump:
                dumps[kind] = dump
        if len(dumps) == 2:  # w~ of the first step, both from the same centroids
            import numpy as np

            a, b = np.load(dumps["edkm-f32"]), np.load(dumps["coremltools"])
            d = np.abs(a.astype(np.float64) - b)
            results["coremltools"]["soft_diff"] = (float(d.max() / np.abs(b).max()), float(d.mean() / np.abs(b).mean()))
        rows_out.append(((rows, cols), results))

    print()
    hdr = f"{'shape':>10} {'implementation':<34} {'fwd':>10} {'bwd':>10} {'fwd+bwd':>10} {'step peak':>11} {'process peak':>13} {'x faster':>9} {'x less step mem':>15}"
    print(hdr)
    print("-" * len(hdr))
    summary = []
    for (rows, cols), results in rows_out:
        ct_r = results.get("coremltools")
        ct_total = median(ct_r["fwd"]) + median(ct_r["bwd"]) if ct_r else None
        ct_mem = max(ct_r["step_peak"], 0) if ct_r else None
        names = {"coremltools": "coremltools DKMPalettizer (f32)", "edkm-f32": "libedkm, torch autograd (f32)",
                 "edkm-f16": "libedkm calls only (f16)"}
        for kind, res in results.items():
            f, b = median(res["fwd"]), median(res["bwd"])
            step_mem = max(res["step_peak"], 0)
            speed = f"{ct_total / (f + b):.0f}x" if ct_total and kind != "coremltools" else "-"
            mem = f"{ct_mem / max(step_mem, 1):.0f}x" if ct_mem and kind != "coremltools" else "-"
            print(f"{rows}x{cols:<5} {names[kind]:<34} {fmt_s(f):>10} {fmt_s(b):>10} {fmt_s(f + b):>10} {gib(step_mem):>11} "
                  f"{gib(res['process_peak']):>13} {speed:>9} {mem:>15}")
            if ct_total and kind != "coremltools":
                summary.append(f"{rows}x{cols} {args.bits} bits: {names[kind]} is {ct_total / (f + b):.0f}x faster than coremltools "
                               f"({fmt_s(f + b)} vs {ct_total:.2f} s per step); step peak memory "
                               f"{gib(step_mem)} vs {gib(ct_mem)}")
        if ct_r:
            notes = []
            if ct_r.get("output_nan"):
                notes.append("coremltools output has NaN")
            if not ct_r.get("grad_finite", True):
                notes.append("coremltools gradient not finite")
            if "soft_diff" in ct_r:
                notes.append("w~ libedkm vs coremltools, same start: max |diff| / max |w~| %.1e, mean |diff| / mean |w~| %.1e"
                             % ct_r["soft_diff"])
            print(f"{'':>10} ({'; '.join(notes)})")
    methods = {r["mem_method"] for _, rs in rows_out for r in rs.values()}
    if methods == {"VmHWM"}:
        print("\nstep peak = the subprocess's peak resident memory during the steps (VmHWM, reset through /proc/self/clear_refs "
              "just before them) minus its resident memory before them; process peak = its ru_maxrss at the end")
    else:
        print("\nstep peak = growth of the subprocess's ru_maxrss during the steps (/proc/self/clear_refs unavailable: a step "
              "under the set-up's peak shows 0); process peak = its ru_maxrss at the end")
    e = next((r["edkm-f32"] for _, r in rows_out if "edkm-f32" in r), None)
    if e:
        print(f"libedkm: {e['library']}, runtime threads {e['threads']}; U = {e['distinct']} distinct f16 keys, T = {e['iterations']}")
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
