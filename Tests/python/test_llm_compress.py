"""The language-model example's compression path (examples/python/llm/compress.py) on a
two-layer cut of SmolLM2-135M: palettize the decoder Linears, distil a few steps through
edkm.torch, finalize, export/load the palettized safetensors file, and score a few items."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
import edkm.torch as et  # noqa: E402
from llm_common import model_and_tokenizer, require  # noqa: E402

import compress  # noqa: E402
import smollm  # noqa: E402
import tasks as T  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_layer_cut(model):
    cfg = copy.copy(model.cfg)
    cfg.n_layers = 2
    small = smollm.LlamaLM(cfg)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("model.layers.")
          or int(k.split(".")[2]) < 2}
    small.load_state_dict(sd)
    return small.eval()


def test_distillation_steps_finalize_export_and_score(tmp_path, lib):
    require("olmo_eval")
    model, cfg, tok = model_and_tokenizer()
    teacher = two_layer_cut(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    et.palettize(student, bits=3, group_size=64, modules=compress.linear_filter, f32_key_dtype="f16")
    assert len(et.palettized(student)) == 2 * 7
    stream = compress.batches(tok, cfg.eos_id, batch=2, seq_len=32)
    ids = next(stream)
    assert ids.shape == (2, 32)
    assert not torch.equal(next(stream), ids)  # --skip-batches moves on to text not seen yet
    with torch.no_grad():
        target = teacher(ids)
    params = [p for n, p in student.named_parameters() if "embed_tokens" not in n]
    for n, p in student.named_parameters():
        p.requires_grad_("embed_tokens" not in n)
    opt = torch.optim.Adam(params, lr=1e-4)
    student.train()
    losses = []
    for _ in range(4):  # a fixed batch: the distillation loss must go down
        loss = compress.kl_distill(student(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    # --save-trained / --init-checkpoint: the trained weights before palettization come back bit
    # for bit, under the plain names of an unpalettized model
    trained = tmp_path / "trained.safetensors"
    compress.save_trained(student, trained)
    resumed = compress.load_init(copy.deepcopy(teacher), trained)
    for name, m in student.named_modules():
        if compress.linear_filter(name, m):
            assert torch.equal(resumed.get_submodule(name).weight, m.parametrizations.weight.original), name
    assert torch.equal(resumed.model.norm.weight, student.model.norm.weight)
    et.finalize(student, coreml_metadata=False)
    for name, m in student.named_modules():
        if compress.linear_filter(name, m):
            rows = m.weight.detach().reshape(-1, 64, m.weight.shape[1])
            assert all(torch.unique(g).numel() <= 8 for g in rows), name
    path = tmp_path / "student.safetensors"
    pal = et.export_safetensors(student, path)
    assert len(pal) == 14 and all(pt.bits == 3 and pt.group_size == 64 for pt in pal.values())
    back = smollm.LlamaLM(student.cfg)
    back.load_state_dict(et.load_safetensors(path))
    with torch.inference_mode():
        torch.testing.assert_close(back.eval()(ids), student.eval()(ids), rtol=0, atol=0)
    # Continuing a run from the file (--init-checkpoint): a group holds at most 8 distinct values,
    # so the exact k-means init recovers every LUT, up to the f16 keys (f32_key_dtype): a LUT value
    # that is not an f16 number may come back as an f16 number, within half an f16 step (2^-11
    # relative). Palettizing the loaded model and finalizing it without a step must give the file's
    # weights back to that rounding, and everything else bit for bit.
    again = compress.load_init(copy.deepcopy(teacher), path)
    et.palettize(again, bits=3, group_size=64, modules=compress.linear_filter, f32_key_dtype="f16")
    et.finalize(again, coreml_metadata=False)
    expected = back.state_dict()
    for name, value in again.state_dict().items():
        if name.endswith("_proj.weight"):
            assert ((value - expected[name]).abs() <= 2.0**-11 * expected[name].abs()).all(), name
        else:
            assert torch.equal(value, expected[name]), name
    res = T.evaluate(student, tok, ["piqa"], limit=3, prefix_id=cfg.eos_id, show_progress=False)
    assert res["piqa"]["n"] == 3


def test_model_bytes_counts_luts_indices_and_16_bit_rest():
    pt = et.PalettizedTensor(lut=torch.zeros(2, 8, 1), packed=__import__("numpy").zeros(6, dtype="uint8"), bits=3,
                             group_size=4, cluster_dim=1, shape=(8, 2), dtype=torch.float32)
    assert compress.model_bytes({"w": pt}, {"n": torch.zeros(10)}) == 2 * 8 * 4 + 6 + 10 * 2


def test_stop_request_on_deadline_and_on_sigusr1():
    import os
    import signal
    import time

    assert not compress.StopRequest(0)()  # no limit: never stops by itself
    stop = compress.StopRequest(1e-6)  # a deadline 60 microseconds from now
    time.sleep(0.01)
    assert stop()
    stop = compress.StopRequest(60)
    assert not stop()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop()
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_lloyd_reference_of_the_kmeans_check():
    import numpy as np

    import diagnose
    x = np.array([0.0, 0.0, 1.0, 1.0, 10.0, 10.0])
    assert diagnose.lloyd_mse(x, 3) == 0.0  # three distinct values, three centroids
    assert abs(diagnose.lloyd_mse(x, 2) - 4 * 0.25 / 6) < 1e-12  # {0, 0, 1, 1} -> 0.5, {10, 10} -> 10


def test_cosine_learning_rate_decays_from_base_to_zero():
    import math
    assert compress.learning_rate(3e-4, "constant", 0.7) == 3e-4
    assert compress.learning_rate(3e-4, "cosine", 0.0) == 3e-4
    assert math.isclose(compress.learning_rate(3e-4, "cosine", 0.5), 1.5e-4, rel_tol=1e-12)
    assert compress.learning_rate(3e-4, "cosine", 1.0) == 0.0
    assert compress.learning_rate(3e-4, "cosine", 2.0) == 0.0  # past the budget: stays at 0
    rates = [compress.learning_rate(1.0, "cosine", p / 10) for p in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
