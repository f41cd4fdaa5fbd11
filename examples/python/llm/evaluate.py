"""Scores SmolLM2-135M-Instruct (the dequantized Q4_1 reference, or a checkpoint written by
compress.py) on WinoGrande, PIQA, ARC-Easy, HellaSwag and LAMBADA.

    python3 examples/python/llm/evaluate.py --limit 100 --json out.json
    python3 examples/python/llm/evaluate.py --checkpoint m.safetensors --limit 100
    python3 examples/python/llm/evaluate.py --sanity     # tokenizer, perplexity, greedy continuation
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import smollm  # noqa: E402
import tasks as T  # noqa: E402

SANITY_TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
               "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
               "Although initially criticised by some of France's leading artists and intellectuals for its design, "
               "it has since become a global cultural icon of France and one of the most recognisable structures in "
               "the world.")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_checkpoint(model, path):
    """Loads an edkm palettized safetensors file (dense tensors lut[label]) into model."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "python"))
    import edkm.torch as et
    sd = et.load_safetensors(path)
    sd = {k: v.float() for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model


def sanity(model, tok):
    ids = tok.encode(SANITY_TEXT).ids
    print(f"tokens: {len(ids)}, round trip {'ok' if tok.decode(ids) == SANITY_TEXT else 'FAILED'}")
    print(f"perplexity on the sanity text: {smollm.perplexity(model, ids):.2f}")
    prompt = "The capital of France is"
    out = model.generate(tok.encode(prompt).ids, 16, eos_id=model.cfg.eos_id)
    print(f"greedy: {prompt!r} -> {tok.decode(out)!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="edkm palettized safetensors file (from compress.py)")
    ap.add_argument("--tasks", default=",".join(T.TASKS), help="comma-separated subset of %(default)s")
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each task (default or 0: all)")
    ap.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sanity", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    a.limit = a.limit or None
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    model, cfg, reader = smollm.load_model()
    tok = smollm.load_tokenizer(reader)
    if a.checkpoint:
        load_checkpoint(model, a.checkpoint)
    if a.sanity:
        sanity(model, tok)
        return 0
    res = T.evaluate(model, tok, a.tasks.split(","), a.limit, prefix_id=cfg.eos_id, max_tokens=a.max_tokens)
    res["wall_s"] = time.time() - t0
    res["peak_rss_mb"] = peak_rss_mb()
    res["checkpoint"] = a.checkpoint or "reference (dequantized Q4_1)"
    res["limit"] = a.limit
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
