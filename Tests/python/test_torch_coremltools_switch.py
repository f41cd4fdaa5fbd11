"""edkm.torch.DKMPalettizer's chain options (cluster_permute, percentage_palett_enable, vectors with
LUT groups): their errors, frozen groups, and Core ML conversion against coremltools 9.0's own; the
short form (edkm.torch.palettize / finalize) registering the same Core ML metadata as the long form;
the key table of docs/coremltools-options.md against KEY_STATUS; coremltools' documented example
run with only its import changed (examples/python/coremltools_documented_example.py)."""
import copy
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm.torch as et  # noqa: E402
from edkm import palettizer as pz  # noqa: E402
from edkm.torch import DKMPalettizer, DKMPalettizerConfig  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_torch_thread")]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def coremltools_or_skip():
    """(coremltools, coremltools.optimize.torch.palettization); skips the test when absent."""
    from test_torch_dkm_palettizer import coremltools_palettization

    ctp = coremltools_palettization()
    import coremltools as ct

    return ct, ctp


def _train(api, model, x, config, steps=3):
    """prepare, `steps` SGD steps with palettizer.step(), finalize (a copy)."""
    palettizer = api.DKMPalettizer(model, api.DKMPalettizerConfig.from_dict(config))
    model = palettizer.prepare(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        palettizer.step()
    return palettizer, palettizer.finalize()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("value", [(0, 0), (1, 2), [0, -1], "10", (0.0, 1.0)])
def test_cluster_permute_must_be_a_permutation(value):
    with pytest.raises(ValueError, match="cluster_permute"):
        DKMPalettizerConfig.from_dict({"global_config": {"cluster_permute": value}})


def test_cluster_permute_of_another_rank_is_refused_at_prepare():
    p = DKMPalettizer(nn.Sequential(nn.Linear(64, 64)), {"global_config": {"cluster_permute": (0, 2, 1)}})
    with pytest.raises(ValueError, match=r"cluster_permute=\(0, 2, 1\).*\(64, 64\)"):
        p.prepare()


def test_vectors_crossing_the_permuted_first_axis_are_refused():
    # 16 output channels pass coremltools' cluster_dim check; the permuted first axis (in 6) does not
    model = nn.Sequential(nn.Linear(6, 16))
    cfg = {"global_config": {"weight_threshold": 0, "cluster_dim": 4, "cluster_permute": (1, 0)}}
    with pytest.raises(NotImplementedError, match="cluster_permute.*cluster_dim=4"):
        DKMPalettizer(model, cfg).prepare()


@pytest.mark.parametrize("value", [-0.1, float("nan"), "half", None])
def test_percentage_palett_enable_must_be_a_number(value):
    with pytest.raises(ValueError, match="percentage_palett_enable"):
        DKMPalettizerConfig.from_dict({"global_config": {"percentage_palett_enable": value}})


def test_group_size_not_dividing_the_permuted_axis_skips_the_module():
    # coremltools checks group_size against the permuted first axis: 64 in, 24 out
    model = nn.Sequential(nn.Linear(64, 24))
    grouped = {"weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 16}
    assert not et.palettized(DKMPalettizer(copy.deepcopy(model), {"global_config": grouped}).prepare())
    permuted = dict(grouped, cluster_permute=(1, 0))
    assert len(et.palettized(DKMPalettizer(copy.deepcopy(model), {"global_config": permuted}).prepare())) == 1


# ---------------------------------------------------------------- frozen groups


@pytest.mark.parametrize("percentage,trained", [(0.5, 2), (0.3, 1), (0.0, 1), (0.76, 3), (1.0, 4)])
def test_only_the_first_groups_train_and_the_others_stay_frozen(percentage, trained):
    """coremltools' _Partitioner: max(1, int(p * groups)) groups train; the others are hard-palettized
    with their initial centroids, get no gradient and never change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    cfg = {"global_config": {"n_bits": 2, "weight_threshold": 0, "granularity": "per_grouped_channel",
                             "group_size": 8, "percentage_palett_enable": percentage}}
    p = DKMPalettizer(model, cfg)
    m = p.prepare()
    dkm = et.palettized(m)[0][3]
    assert dkm.centroids.shape[0] == trained
    frozen = [q for q in m[0].parametrizations.weight if isinstance(q, pz.FrozenRows)]
    assert len(frozen) == (trained < 4)
    rows = 8 * trained
    x = torch.randn(16, 64)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    first = None
    for _ in range(3):
        opt.zero_grad()
        m(x).square().mean().backward()
        w = m[0].parametrizations.weight.original
        assert torch.count_nonzero(w.grad[rows:]) == 0 and torch.count_nonzero(w.grad[:rows]) > 0
        soft = m[0].weight.detach()
        if first is None:
            first = soft.clone()
        assert torch.equal(soft[rows:], first[rows:])  # frozen rows: constant
        for g in range(trained, 4):  # each frozen group holds at most 2^bits values
            assert soft[8 * g:8 * (g + 1)].unique().numel() <= 4
        opt.step()
        p.step()
    fig = p.report()["0"]
    assert fig["frozen_groups"] == 4 - trained and fig["palettized_bytes"] == 4 * (4 * 4 + 8 * 64 * 2 // 8)
    final = p.finalize()
    lut = final.get_buffer("0._COREML_/weight/lut")
    assert lut.shape == (4, 1, 4, 1)
    assert torch.equal(final[0].weight.detach()[rows:], first[rows:])
    if frozen:
        assert torch.equal(lut[trained:].reshape(-1), frozen[0].lut.reshape(-1))


# ---------------------------------------------------------------- Core ML


def _convert_f32(ct, model, x):
    model.eval()
    traced = torch.jit.trace(model, x)
    return ct.convert(traced, inputs=[ct.TensorType(shape=x.shape)], convert_to="mlprogram",
                      minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)


def _decoded(var):
    """The dense value a Core ML weight var decodes to (const, constexpr_lut_to_dense,
    constexpr_blockwise_shift_scale, as Core ML evaluates them)."""
    from coremltools.optimize import _utils as cto_utils

    op = var.op
    if op.op_type == "const":
        return np.asarray(var.val)
    if op.op_type == "constexpr_lut_to_dense":
        axis = op.vector_axis.val if op.vector_axis is not None else None
        return cto_utils.lut_to_dense(_decoded(op.indices), _decoded(op.lut), axis)
    if op.op_type == "constexpr_blockwise_shift_scale":
        offset = _decoded(op.offset) if op.offset is not None else None
        return op.decompress(_decoded(op.data), _decoded(op.scale), offset)
    raise AssertionError(f"unexpected op {op.op_type} in a weight")


def _program(ct, model, x):
    """(op types of the Core ML program, {layer index: decoded weight})."""
    try:
        ops = _convert_f32(ct, model, x)._mil_program.functions["main"].operations
    except Exception as e:  # noqa: BLE001 - the message is the result
        return None, f"{type(e).__name__}: {e}"
    layers = [op for op in ops if op.op_type in ("linear", "conv")]
    return [op.op_type for op in ops], [_decoded(op.weight) for op in layers]


def _models():
    torch.manual_seed(0)
    return {"linear": (nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32)), torch.randn(4, 64)),
            "conv": (nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)), torch.randn(2, 8, 9, 9))}


_COREML_CASES = [
    ("linear", {"n_bits": 2, "cluster_permute": (1, 0), "granularity": "per_grouped_channel", "group_size": 16}),
    ("linear", {"n_bits": 2, "cluster_permute": (1, 0), "cluster_dim": 2, "kmeans_init": "kmeans++"}),
    ("linear", {"n_bits": 3, "cluster_permute": (1, 0), "enable_per_channel_scale": True}),
    ("linear", {"n_bits": 3, "cluster_permute": (1, 0), "lut_dtype": "i8"}),
    ("linear", {"n_bits": 2, "granularity": "per_grouped_channel", "group_size": 8, "percentage_palett_enable": 0.5}),
    ("linear", {"n_bits": 2, "granularity": "per_grouped_channel", "group_size": 8, "cluster_dim": 4,
                "kmeans_init": "kmeans++"}),
    ("conv", {"n_bits": 2, "cluster_permute": (1, 2, 3, 0), "granularity": "per_grouped_channel", "group_size": 4}),
    ("conv", {"n_bits": 2, "granularity": "per_grouped_channel", "group_size": 4, "cluster_dim": 2,
              "kmeans_init": "kmeans++", "percentage_palett_enable": 0.5}),
    ("conv", {"n_bits": 2, "cluster_permute": (1, 0, 2, 3), "granularity": "per_grouped_channel", "group_size": 4,
              "percentage_palett_enable": 0.5, "enable_per_channel_scale": True}),
]


@pytest.mark.parametrize("kind,options", _COREML_CASES)
def test_converted_programs_decode_to_the_finalized_weights(kind, options):
    """Our finalized model converts to a Core ML program whose weights decode to the finalized
    weights (float32 program: exactly, up to float32 rounding of the per-channel scale product), with
    the op types of coremltools' own program for the same dictionary. Where coremltools' own finalize
    puts a cluster_permute'd model's groups, vectors or scale on the weight's axis 0 (they belong on
    cluster_permute[0]), its program decodes other weights than its finalized model holds, or does not
    convert; this test records that too (if a later coremltools changes it, the test says so)."""
    ct, ctp = coremltools_or_skip()
    base, x = _models()[kind]
    config = {"global_config": dict(options, weight_threshold=0)}
    programs = {}
    for label, api in (("coremltools", ctp), ("edkm", et)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, final = _train(api, copy.deepcopy(base), x, config)
            ops, weights = _program(ct, final, x)
        programs[label] = ops
        if label == "edkm":
            assert ops is not None, weights
            lut_ops = ops.count("constexpr_lut_to_dense")
            assert lut_ops == 2, ops
            assert ops.count("constexpr_blockwise_shift_scale") == (
                2 if options.get("enable_per_channel_scale") or options.get("lut_dtype") == "i8" else 0)
            for w, layer in zip(weights, (final[0], final[2])):
                np.testing.assert_allclose(w, layer.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
        else:
            misplaced = "cluster_permute" in options and (options.get("granularity") or options.get("cluster_dim")
                                                          or options.get("enable_per_channel_scale"))
            if ops is None:  # the misplaced LUT groups or scale do not fit the weight's axis 0
                assert misplaced, weights
                continue
            agree = all(np.allclose(w, layer.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
                        for w, layer in zip(weights, (final[0], final[2])))
            assert agree == (not misplaced)
    if programs["coremltools"] is not None and options.get("lut_dtype") != "i8":
        # (coremltools 9.0 registers no quantization metadata for i8: see test_torch_dkm_palettizer)
        assert programs["edkm"] == programs["coremltools"]


def test_vectors_with_a_per_channel_scale_do_not_convert_in_coremltools_either():
    """coremltools.convert (9.0) cannot convert vector palettization with a per-channel scale: its
    canonicalize_quantized_lut_pattern pass fails on coremltools' own finalized model, and on ours,
    which holds the same metadata (same buffers, same shapes)."""
    ct, ctp = coremltools_or_skip()
    base, x = _models()["conv"]
    config = {"global_config": {"n_bits": 2, "weight_threshold": 0, "cluster_dim": 2, "kmeans_init": "kmeans++",
                                "enable_per_channel_scale": True}}
    errors, shapes = {}, {}
    for label, api in (("coremltools", ctp), ("edkm", et)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, final = _train(api, copy.deepcopy(base), x, config)
            ops, errors[label] = _program(ct, final, x)
        assert ops is None
        shapes[label] = {k: tuple(v.shape) for k, v in _metadata(final).items()}
    assert shapes["edkm"] == shapes["coremltools"]
    assert "indices" in errors["edkm"] and errors["edkm"] == errors["coremltools"]


# ---------------------------------------------------------------- short form = long form


def _metadata(model):
    return {k: v for k, v in model.state_dict().items() if "_COREML_" in k}


@pytest.mark.parametrize("lut_dtype", ["i8", "u8"])
def test_short_form_registers_the_long_forms_lut_quantization(lut_dtype):
    """edkm.torch.palettize(lut_dtype=...) + edkm.torch.finalize registers the same Core ML metadata
    as DKMPalettizer with the same options (one finalize serves both), and ct.convert gives the same
    op types (8-bit integer LUTs)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    x = torch.randn(4, 64)
    config = {"global_config": {"n_bits": 3, "weight_threshold": 0, "lut_dtype": lut_dtype,
                                "granularity": "per_grouped_channel", "group_size": 16}}
    _, long_form = _train(et, copy.deepcopy(base), x, config)
    short = copy.deepcopy(base)
    et.palettize(short, modules=nn.Linear, bits=3, group_size=16, temperature_mode="absolute", lut_dtype=lut_dtype)
    opt = torch.optim.SGD(short.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        short(x).square().mean().backward()
        opt.step()
    et.finalize(short)
    a, b = _metadata(short), _metadata(long_form)
    assert {k: (tuple(v.shape), v.dtype) for k, v in a.items()} == {k: (tuple(v.shape), v.dtype) for k, v in b.items()}
    assert a["0._COREML_/weight/compression_type"].tolist() == [2, 3]
    for k in a:  # same options, same data: the same values
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-6, atol=0), k
    ct, _ = coremltools_or_skip()
    assert _program(ct, short, x)[0] == _program(ct, long_form, x)[0]


@pytest.mark.parametrize("options", [
    {"n_bits": 3, "enable_per_channel_scale": True},
    {"n_bits": 2, "cluster_permute": (1, 0), "granularity": "per_grouped_channel", "group_size": 16,
     "percentage_palett_enable": 0.5, "lut_dtype": "u8"},
])
def test_short_form_finalize_of_a_long_form_model_is_the_long_forms(options):
    """edkm.torch.finalize on a model DKMPalettizer prepared gives what DKMPalettizer.finalize gives:
    the weights and every Core ML buffer (palettization_scale, LUTs in the weight's axes, LUT
    quantization)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    x = torch.randn(4, 64)
    p, long_form = _train(et, copy.deepcopy(base), x, {"global_config": dict(options, weight_threshold=0)})
    short = et.finalize(copy.deepcopy(p._model).eval())
    assert _metadata(short).keys() == _metadata(long_form).keys()
    for k, v in _metadata(long_form).items():
        assert torch.equal(_metadata(short)[k], v), k
    for i in (0, 2):
        assert torch.equal(short[i].weight, long_form[i].weight)
    if options.get("lut_dtype") == "u8":  # every LUT on its grid, the frozen groups' too
        meta = _metadata(long_form)
        lut = meta["0._COREML_/weight/lut"].double()
        q = lut / meta["0._COREML_/weight/quantization_scale"].double() + meta["0._COREML_/weight/zero_point"].double()
        assert lut.shape == (1, 4, 4, 1) and (q - q.round()).abs().max() < 1e-3


@pytest.mark.parametrize("lut_dtype", ["i8", "u8"])
def test_finalize_before_any_forward_puts_the_lut_on_its_grid(lut_dtype):
    """Centroids straight from initialisation are not on their 8-bit grid yet; finalize quantizes
    them first, so the registered scale (and zero point) represent the LUT exactly and the weights
    are the LUT's values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    et.palettize(model, bits=3, group_size=8, temperature_mode="absolute", lut_dtype=lut_dtype)
    et.finalize(model)
    lut = model.get_buffer("0._COREML_/weight/lut").double()
    scale = model.get_buffer("0._COREML_/weight/quantization_scale").double()
    zp = model.get_buffer("0._COREML_/weight/zero_point").double() if lut_dtype == "u8" else 0
    q = lut / scale + zp
    assert (q - q.round()).abs().max() < 1e-3
    w = model[0].weight.detach()
    for g in range(4):
        assert set(w[8 * g:8 * (g + 1)].unique().tolist()) <= set(lut[g].float().reshape(-1).tolist())


# ---------------------------------------------------------------- documentation


def _table_rows(text):
    """{key: (default, status, meaning)} from the rows of a markdown key table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| `(.*?)` \| ([a-z, ]+) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def test_docs_key_table_is_key_status():
    """docs/coremltools-options.md's table is KEY_STATUS and COREMLTOOLS_DEFAULTS, row for row
    (pz.key_table() writes it)."""
    text = (ROOT / "docs" / "coremltools-options.md").read_text()
    assert pz.key_table() in text, "regenerate the table: python3 -c 'import edkm.palettizer as p; print(p.key_table())'"
    rows = _table_rows(text)
    assert set(rows) == set(pz.KEY_STATUS)
    for key, (status, meaning) in pz.KEY_STATUS.items():
        assert rows[key] == (repr(pz.COREMLTOOLS_DEFAULTS[key]), status, meaning.replace("|", "\\|")), key


def test_readme_status_table_follows_key_status():
    """The README's short status table puts every key in the row of its status."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From coremltools' DKMPalettizer"):]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| (implemented|accepted, no effect|not implemented)[^|]*\| (.*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    assert set(rows) == {"implemented", "accepted, no effect", "not implemented"}
    for key, (status, _) in pz.KEY_STATUS.items():
        assert f"`{key}`" in rows[status], (key, status)
        if status == "not implemented":
            assert f"`{key}`" not in rows["implemented"], key


def test_documented_coremltools_example_runs_with_only_the_import_changed(tmp_path):
    """examples/python/coremltools_documented_example.py runs coremltools' own documented example
    (the DKMPalettizer docstring's, read from the installed coremltools) with its import changed to
    edkm.torch, trains, finalizes and converts; --compare runs coremltools' original too and checks
    that both programs hold the same op types."""
    coremltools_or_skip()
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "python"))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "coremltools_documented_example.py"),
                          "--compare", "--out", str(tmp_path / "model.mlpackage")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "\n-from coremltools.optimize.torch.palettization import" in out
    assert "\n+from edkm.torch import" in out
    assert re.search(r"changed lines: 1\b", out)
    assert "same Core ML op types as coremltools' own run" in out
    assert re.search(r"constexpr_lut_to_dense: 2\b", out)
