"""Where post-training k-means hurts SmolLM2-135M: the figures of the README's section
"Why post-training k-means collapses this model".

    python3 examples/python/llm/diagnose.py kmeans     # libedkm k-means vs numpy Lloyd, MSE per weight
    python3 examples/python/llm/diagnose.py types      # held-out KL with one kind of matrix clustered
    python3 examples/python/llm/diagnose.py outliers   # the largest weight of every down projection
    python3 examples/python/llm/diagnose.py grid 4:16:16,4:16:1,3:16:1   # bits:rows per LUT:rows per down_proj LUT
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import compress as C  # noqa: E402
import smollm  # noqa: E402

KMEANS_MATRICES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                   "model.layers.5.mlp.down_proj", "model.layers.15.mlp.gate_proj",
                   "model.layers.29.self_attn.o_proj"]


def lloyd_mse(values, k, iterations=200):
    """Mean squared error of weighted Lloyd k-means on the distinct values (quantile start)."""
    v, cnt = np.unique(values.astype(np.float64), return_counts=True)
    cum = np.cumsum(cnt)
    c = v[np.searchsorted(cum, (np.arange(k) + 0.5) * cum[-1] / k)]
    for _ in range(iterations):
        lab = np.abs(v[:, None] - c[None, :]).argmin(1)
        mass = np.bincount(lab, weights=cnt, minlength=k)
        new = np.where(mass > 0, np.bincount(lab, weights=v * cnt, minlength=k) / np.maximum(mass, 1), c)
        if np.array_equal(new, c):
            break
        c = new
    lab = np.abs(v[:, None] - c[None, :]).argmin(1)
    return float(((v - c[lab]) ** 2 * cnt).sum() / cum[-1])


def palettized_copy(model, bits, group_size, select, down_group_size=None):
    """A copy of model with the selected Linears k-means palettized (finalized)."""
    import edkm.torch as et
    s = copy.deepcopy(model)
    if down_group_size is not None:
        et.palettize(s, bits=bits, group_size=down_group_size, f32_key_dtype="f16",
                     modules=lambda n, m: select(n, m) and n.endswith(".down_proj"))
    et.palettize(s, bits=bits, group_size=group_size, modules=select, f32_key_dtype="f16")
    et.finalize(s, coreml_metadata=False)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kmeans", "types", "outliers", "grid"])
    ap.add_argument("configs", nargs="?", default="4:0:0,4:16:16,4:16:1,3:16:16,3:16:1")
    ap.add_argument("--bits", type=int, default=4)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "python"))
    teacher, cfg, reader = smollm.load_model()
    tok = smollm.load_tokenizer(reader)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if a.what == "kmeans":
        for name in KMEANS_MATRICES:
            w = teacher.get_submodule(name).weight.detach()
            holder = torch.nn.Sequential(copy.deepcopy(teacher.get_submodule(name)))
            q = palettized_copy(holder, a.bits, 0, lambda n, m: isinstance(m, torch.nn.Linear))[0].weight.detach()
            print(f"{name} {tuple(w.shape)}: libedkm mse {((q - w) ** 2).mean().item():.4g} "
                  f"({torch.unique(q).numel()} values), numpy Lloyd mse "
                  f"{lloyd_mse(w.half().float().numpy().ravel(), 2 ** a.bits):.4g}, variance {w.var().item():.3g}",
                  flush=True)
    elif a.what == "outliers":
        for i, layer in enumerate(teacher.model.layers):
            w = layer.mlp.down_proj.weight.detach()
            row, col = divmod(int(w.abs().argmax()), w.shape[1])
            print(f"layer {i} down_proj: largest |w| {w.abs().max().item():.3f} at row {row}, column {col}; "
                  f"{(w.abs().max() / w.std()).item():.1f} standard deviations", flush=True)
    elif a.what == "types":
        for kind in ["q", "k", "v", "o", "gate", "up", "down"]:
            s = palettized_copy(teacher, a.bits, 0, lambda n, m: C.linear_filter(n, m) and
                                re.search(rf"\.{kind}_proj$", n) is not None)
            print(f"{a.bits} bits per tensor, only {kind}_proj: held-out KL "
                  f"{C.heldout_kl(s, teacher, tok, cfg.eos_id):.3f}", flush=True)
    else:
        for c in a.configs.split(","):
            bits, g, dg = (int(x) for x in c.split(":"))
            t0 = time.time()
            s = palettized_copy(teacher, bits, g, C.linear_filter, None if dg == g else dg)
            print(json.dumps({"bits": bits, "group_size": g, "down_group_size": dg,
                              "heldout_kl": round(C.heldout_kl(s, teacher, tok, cfg.eos_id), 4),
                              "seconds": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
