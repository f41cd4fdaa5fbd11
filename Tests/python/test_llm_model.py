"""The language-model example's decoder and tokenizer (examples/python/llm/smollm.py):
RoPE / Q-K permutation algebra on random tensors, the tokenizer rebuilt from the GGUF metadata,
and the loaded SmolLM2-135M-Instruct (dequantized Q4_1 reference)."""

import math

import pytest

torch = pytest.importorskip("torch")
from llm_common import model_and_tokenizer, require  # noqa: E402

import smollm  # noqa: E402


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(3 * 64, 40).numpy()
    assert (smollm.unpermute_qk(smollm.permute_qk(w, 3), 3) == w).all()
    assert not (smollm.permute_qk(w, 3) == w).all()


def test_interleaved_rope_on_file_rows_equals_rotate_half_on_unpermuted_rows():
    """llama.cpp rotates adjacent pairs of the permuted rows; we rotate halves of the original
    rows: the per-head q.k attention scores must agree (float64, to rounding)."""
    torch.manual_seed(0)
    n_heads, hd, d, t = 2, 16, 24, 7
    wq, wk = torch.randn(n_heads * hd, d, dtype=torch.float64), torch.randn(n_heads * hd, d, dtype=torch.float64)
    x = torch.randn(t, d, dtype=torch.float64)
    cos, sin = smollm.rope_tables(hd, torch.arange(t), 10000.0, torch.float64)

    def scores(wq_, wk_, rope):
        q = (x @ wq_.T).view(t, n_heads, hd).transpose(0, 1)
        k = (x @ wk_.T).view(t, n_heads, hd).transpose(0, 1)
        return rope(q, cos, sin) @ rope(k, cos, sin).transpose(-1, -2)

    ref = scores(wq, wk, smollm.apply_rope)
    fq = torch.from_numpy(smollm.permute_qk(wq.numpy(), n_heads))
    fk = torch.from_numpy(smollm.permute_qk(wk.numpy(), n_heads))
    torch.testing.assert_close(scores(fq, fk, smollm.apply_rope_interleaved), ref, rtol=1e-12, atol=1e-10)
    # and the file's rows under the Hugging Face RoPE differ (the permutation is not a no-op)
    assert (scores(fq, fk, smollm.apply_rope) - ref).abs().max() > 1e-2


def test_tokenizer_known_ids_and_round_trip():
    _, cfg, tok = model_and_tokenizer()
    vocab = tok.get_vocab()
    assert tok.encode("<|im_start|>").ids == [cfg.bos_id] == [1]
    assert tok.encode("<|im_end|>").ids == [cfg.eos_id] == [2]
    assert tok.encode("<|endoftext|>").ids == [0]
    e = tok.encode("Hello world")
    assert e.tokens == ["Hello", "\u0120world"] and e.ids == [19556, 905] == [vocab["Hello"], vocab["\u0120world"]]
    assert tok.encode(" the").ids == [vocab["\u0120the"]]
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]  # SmolLM2 splits digits one by one
    for s in ["Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9.\n\tTabs and  two spaces",
              "emoji \U0001F600 and CJK \u4e2d\u6587", "<|im_start|>user\nHi<|im_end|>\n"]:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s


def test_reference_model_is_sane():
    """Finite logits, ' Paris' after 'The capital of France is', a low perplexity on an
    encyclopedic text, and a much higher one with the file's Q/K rows left permuted."""
    model, cfg, tok = model_and_tokenizer()
    ids = tok.encode("The capital of France is").ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), cfg.vocab_size) and torch.isfinite(logits).all()
    assert tok.decode([int(logits[0, -1].argmax())]) == " Paris"
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
            "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.")
    tids = tok.encode(text).ids
    ppl = smollm.perplexity(model, tids)
    assert 1.0 < ppl < 15.0, ppl
    import copy
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        for layer in wrong.model.layers:
            a = layer.self_attn
            a.q_proj.weight.copy_(torch.from_numpy(smollm.permute_qk(a.q_proj.weight.numpy(), cfg.n_heads)))
            a.k_proj.weight.copy_(torch.from_numpy(smollm.permute_qk(a.k_proj.weight.numpy(), cfg.n_kv_heads)))
    assert smollm.perplexity(wrong, tids) > 3 * ppl
