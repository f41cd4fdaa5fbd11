"""DKMPalettizer.finalize of modules whose palettization started but ran no forward since.

coremltools 9.0 initialises a module's partitions and centroids at its first forward after the
module's palettization is enabled (prepare() at milestone 0, else the step() at its milestone; any
forward: training, eval, no_grad, and the one its report() runs), and its finalize palettizes only
modules that have them. The same scenarios run through coremltools (when installed) and through
edkm.torch.DKMPalettizer; each module must come out the same: plain or palettized, the same Core ML
buffers, and the same finalized weights (coremltools' exact 1-D k-means initialiser is forced with
kmeans_opt1d_threshold, so both start from the optimal LUT of the same weights)."""

import copy

import pytest

torch = pytest.importorskip("torch")
import edkm.torch as et  # noqa: E402
from edkm import _palettization_start as start  # noqa: E402
from test_torch_dkm_palettizer import coremltools_palettization  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), torch.randn(4, 64)


def _run(palettizer, actions, x, step_first=False):
    """Runs actions on the prepared model; returns palettizer.finalize() (a copy)."""
    m = palettizer.prepare()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for a in actions:
        if a == "train":  # coremltools' loop: optimizer.step(), then palettizer.step()
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            if step_first:
                palettizer.step()
                opt.step()
            else:
                opt.step()
                palettizer.step()
        elif a == "report":
            palettizer.report()
        elif a == "eval_forward":
            m.eval()
            m(x)
            m.train()
        elif a == "no_grad_forward":
            with torch.no_grad():
                m(x)
        elif a == "forward_first_module":
            m[0](x)
        else:
            raise ValueError(a)
    return palettizer.finalize()


def _outcome(model):
    """Per module: (palettized, its Core ML buffers) and the weights."""
    kinds = []
    for module in model:
        names = sorted(b for b, _ in module.named_buffers() if "_COREML_" in b)
        kinds.append((module.weight.unique().numel() <= 4, names))
    return kinds, [module.weight.detach().clone() for module in model]


# (milestone, actions, step() before optimizer.step(), palettized modules)
_SCENARIOS = [
    (0, [], False, [False, False]),                              # prepared, never forwarded
    (0, ["report"], False, [True, True]),                        # report() runs a forward
    (0, ["eval_forward"], False, [True, True]),
    (0, ["no_grad_forward"], False, [True, True]),
    (0, ["forward_first_module"], False, [True, False]),         # only the forwarded module
    (2, ["train"] * 3, False, [False, False]),                   # started by the last step(), no forward since
    (2, ["train"] * 3 + ["eval_forward"], False, [True, True]),
    (1, ["train"] * 2 + ["eval_forward"], True, [True, True]),   # weights changed after the start
    (0, ["train"], False, [True, True]),
]


@pytest.mark.parametrize("milestone,actions,step_first,palettized", _SCENARIOS)
def test_finalize_palettizes_what_coremltools_palettizes(milestone, actions, step_first, palettized):
    base, x = _base()
    cfg = {"global_config": {"n_bits": 2, "milestone": milestone, "kmeans_opt1d_threshold": 1 << 20}}
    ours, ours_w = _outcome(_run(et.DKMPalettizer(copy.deepcopy(base), cfg), actions, x, step_first))
    assert [p for p, _ in ours] == palettized
    for p, buffers in ours:
        assert buffers == (["_COREML_/weight/compression_type", "_COREML_/weight/lut"] if p else [])
    ctp = coremltools_palettization()
    theirs, theirs_w = _outcome(_run(ctp.DKMPalettizer(copy.deepcopy(base), ctp.DKMPalettizerConfig.from_dict(cfg)),
                                     actions, x, step_first))
    assert ours == theirs
    for a, b in zip(ours_w, theirs_w):  # the same LUT of the same weights: float32 rounding apart
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_start_on_weights_changed_before_the_first_forward_restarts_from_them():
    """step() before optimizer.step(): the weights change between the start and the first forward;
    the finalized LUT is that of the weights at the first forward (as coremltools'), which differs
    from the LUT of the weights at the start."""
    base, x = _base()
    cfg = {"global_config": {"n_bits": 2, "milestone": 1}}
    p = et.DKMPalettizer(copy.deepcopy(base), cfg)
    m = p.prepare()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for i in range(2):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        p.step()
        if i == 1:
            at_start = copy.deepcopy(m[0].parametrizations.weight.original.detach())
            assert start.is_pending(m[0])
        opt.step()
    m.eval()
    m(x)
    assert not start.is_pending(m[0]) and not m[0]._forward_pre_hooks
    final = p.finalize()
    lut = final[0].get_buffer("_COREML_/weight/lut").reshape(-1)
    now = m[0].parametrizations.weight.original.detach()

    def lut_of(w):
        model = nn.Sequential(nn.Linear(64, 64))
        with torch.no_grad():
            model[0].weight.copy_(w)
        return et.finalize(et.palettize(model, bits=2))[0].get_buffer("_COREML_/weight/lut").reshape(-1)

    torch.testing.assert_close(lut, lut_of(now), rtol=0, atol=0)
    assert (lut - lut_of(at_start)).abs().max() > 1e-4


@pytest.mark.parametrize("extra", [{}, {"enable_per_channel_scale": True, "granularity": "per_grouped_channel",
                                        "group_size": 16, "percentage_palett_enable": 0.5}])
def test_a_pending_module_is_finalized_to_its_untouched_weights(extra):
    """Plain palettization and a chain of parametrizations (per-channel scale, frozen LUT groups):
    the Parameter comes back bit-exact, without parametrization, hook or Core ML buffers; the
    prepared model keeps its palettization and still trains."""
    base, x = _base()
    p = et.DKMPalettizer(copy.deepcopy(base), {"global_config": dict({"n_bits": 2}, **extra)})
    m = p.prepare()
    originals = [mod.parametrizations.weight.original.detach().clone() for mod in m]
    final = p.finalize()
    for mod, w in zip(final, originals):
        assert not torch.nn.utils.parametrize.is_parametrized(mod) and not mod._forward_pre_hooks
        assert torch.equal(mod.weight.detach(), w) and type(mod) is nn.Linear
        assert not [b for b, _ in mod.named_buffers() if "_COREML_" in b]
    assert len(et.palettized(m)) == 2 and all(start.is_pending(mod) for mod in m)
    m(x).pow(2).mean().backward()
    assert not any(start.is_pending(mod) for mod in m)
    final = p.finalize(inplace=True)
    assert final is m and all(mod.get_buffer("_COREML_/weight/lut").numel() == 4 * mod.weight.shape[0] // (
        extra.get("group_size") or mod.weight.shape[0]) for mod in final)
