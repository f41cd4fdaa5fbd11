"""edkm.torch.DKMPalettizer: coremltools' config dictionaries, module selection, milestones, report,
and parity with coremltools' own DKMPalettizer (where coremltools is installed)."""
import copy
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edkm.torch as et  # noqa: E402
from edkm import palettizer as pz  # noqa: E402
from edkm.torch import DKMPalettizer, DKMPalettizerConfig, ModuleDKMPalettizerConfig  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def coremltools_palettization():
    """coremltools.optimize.torch.palettization, imported lazily; skips the test when absent."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            ctp = pytest.importorskip("coremltools.optimize.torch.palettization")
        finally:
            logging.disable(logging.NOTSET)
    return ctp


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)          # 3200 elements
        self.enc = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32))  # 4096 each
        self.conv = nn.Conv2d(4, 8, 3)            # 288 elements
        self.head = nn.Linear(32, 4)              # 128 elements
        self.norm = nn.LayerNorm(32)

    def forward(self, idx):
        return self.head(self.norm(self.enc(self.emb(idx))))


def selected(config):
    torch.manual_seed(0)
    p = DKMPalettizer(Net(), config)
    m = p.prepare()
    return {name: p.bits for name, _, _, p in et.palettized(m)}


# ---------------------------------------------------------------- configuration


def test_defaults_are_coremltools_defaults():
    cfg = ModuleDKMPalettizerConfig()
    assert cfg.weight_threshold == 2048 and cfg.kmeans_max_iter == 3 and cfg.palett_tau == 1e-4
    assert cfg.palett_epsilon == 1e-4 and cfg.prune_threshold == 1e-7 and cfg.zero_threshold == 1e-7
    assert cfg.milestone == 0 and cfg.granularity == "per_tensor" and cfg.group_size is None
    assert set(pz.KEY_STATUS) == set(pz.COREMLTOOLS_DEFAULTS), "every coremltools key has a status"


def test_defaults_equal_installed_coremltools():
    ctp = coremltools_palettization()
    from coremltools.optimize.torch.palettization import palettization_config as ctc
    from coremltools.optimize.torch.palettization._supported_modules import DKMPalettizerModulesRegistry

    theirs = ctc.ModuleDKMPalettizerConfig()
    fields = {f.name for f in type(theirs).__attrs_attrs__} - set(pz._DEPRECATED)
    assert fields == set(pz.COREMLTOOLS_DEFAULTS)
    ours = ModuleDKMPalettizerConfig()
    for key in fields:
        value = getattr(theirs, key)
        assert getattr(ours, key) == getattr(value, "value", value), key
    assert set(pz.SUPPORTED_MODULES) == set(DKMPalettizerModulesRegistry.get_supported_modules())
    for mtype, bits in pz.SUPPORTED_MODULES.items():
        assert ctc.DEFAULT_PALETTIZATION_SCHEME[mtype]["n_bits"] == bits, mtype
    # a coremltools config dictionary is accepted by both
    d = {"global_config": {"n_bits": 3, "granularity": "per_grouped_channel", "group_size": 16,
                           "kmeans_max_iter": 2, "palett_tau": 5e-5, "milestone": 2}}
    ctp.DKMPalettizerConfig.from_dict(d)
    assert DKMPalettizerConfig.from_dict(d).global_config[0].group_size == 16


def test_layer_options_absolute_temperature_by_default():
    opts = ModuleDKMPalettizerConfig(n_bits=3, palett_tau=2e-4, kmeans_max_iter=5).layer_options(nn.Linear)
    assert opts["temperature_mode"] == "absolute" and opts["tau"] == 2e-4
    assert opts["bits"] == 3 and opts["max_iterations"] == 5 and opts["group_size"] == 0
    assert ModuleDKMPalettizerConfig().layer_options(nn.Linear)["bits"] == 4
    assert ModuleDKMPalettizerConfig().layer_options(nn.Conv2d)["bits"] == 2
    own = ModuleDKMPalettizerConfig(temperature_mode="scale_free").layer_options(nn.Linear)
    assert own["temperature_mode"] == "scale_free" and own["tau"] is None  # the library's scale-free default
    m = DKMPalettizer(nn.Sequential(nn.Linear(64, 64)), {"global_config": {}}).prepare()
    layer = et.palettized(m)[0][3].layer
    assert layer.config["tau"] == pytest.approx(1e-4) and layer.config["temperature_mode"] == int(
        et._core.TemperatureMode.ABSOLUTE)


@pytest.mark.parametrize("key,value", [
    ("lut_dtype", "f8"),
    ("quantize_activations", True),
    ("palett_mode", "gsm"), ("add_extra_centroid", True), ("palett_cluster_tol", 0.1),
    ("kmeans_init", "nf"),
])
def test_unimplemented_keys_raise_naming_the_key(key, value):
    with pytest.raises(NotImplementedError, match=key):
        DKMPalettizerConfig.from_dict({"global_config": {key: value}})
    with pytest.raises(NotImplementedError, match=key):
        DKMPalettizerConfig.from_dict({"module_name_configs": {"enc.0": [{"n_bits": 2}, {key: value}]}})


@pytest.mark.parametrize("config,error,match", [
    ({"global_config": {"n_bit": 4}}, ValueError, "unknown key 'n_bit'"),
    ({"global_config": {"partition_size": 4}}, ValueError, "deprecated"),
    ({"global_config": {"group_size": 4}}, ValueError, "per_tensor"),
    ({"global_config": {"granularity": "per_grouped_channel"}}, ValueError, "group_size"),
    ({"global_config": {"granularity": "per_block"}}, ValueError, "granularity"),
    ({"global_config": {"channel_axis": 1}}, ValueError, "channel_axis"),
    ({"global_config": {"palett_tau": -1.0}}, ValueError, "palett_tau"),
    ({"global_config": {"weight_threshold": "big"}}, ValueError, "weight_threshold"),
    ({"module_type_configs": {"GRU": {}}}, ValueError, "module_type_configs"),
    ({"module_type_configs": {nn.ReLU: {}}}, ValueError, "module_type_configs"),
    ({"global": {}}, ValueError, "unknown key"),
])
def test_bad_configs_raise(config, error, match):
    with pytest.raises(error, match=match):
        DKMPalettizerConfig.from_dict(config)


def test_memory_only_keys_do_not_change_the_result():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(64, 48))
    x = torch.randn(8, 64)
    plain = {"n_bits": 3, "weight_threshold": 0}
    tuned = dict(plain, palett_max_mem=0.5, palett_min_tsize=16, palett_unique=True, palett_shard=True,
                 palett_batch_mode=True, palett_dist=True, kmeans_batch_threshold=1, kmeans_n_init=2,
                 kmeans_opt1d_threshold=4, kmeans_error_bnd=0.5, palett_lambda=0.3, quant_min=0, quant_max=15,
                 per_channel_scaling_factor_scheme="abs")
    outs = []
    for cfg in (plain, tuned):
        m = DKMPalettizer(copy.deepcopy(base), {"global_config": cfg}).prepare()
        outs.append((m(x), et.palettized(m)[0][3].centroids.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ---------------------------------------------------------------- module selection


def test_default_config_selects_supported_types_above_2048_elements():
    assert selected(None) == {"emb": 2, "enc.0": 4, "enc.2": 4}


def test_type_name_and_regex_configs():
    cfg = {"global_config": {"n_bits": 3, "weight_threshold": 100},
           "module_type_configs": {"Embedding": None, nn.Conv2d: {"n_bits": 2, "weight_threshold": 0}},
           "module_name_configs": {r"enc\.\d": {"n_bits": 5}, "head": None}}
    # enc.* by regex (threshold 2048 by default: both pass), conv by type, norm (32) under 100, head skipped
    assert selected(cfg) == {"enc.0": 5, "enc.2": 5, "conv": 2}
    assert selected({"module_name_configs": {"enc": {"n_bits": 2}}}) == {}  # full match: 'enc' is a Sequential
    assert selected({"global_config": {"weight_threshold": 3200}}) == {"enc.0": 4, "enc.2": 4}  # strictly more


def test_config_lists_pick_the_largest_threshold_passed():
    cfg = {"module_type_configs": {nn.Linear: [{"n_bits": 2, "weight_threshold": 4000},
                                               {"n_bits": 6, "weight_threshold": 100}],
                                   "Embedding": [{"n_bits": 3, "weight_threshold": 5000}]}}
    assert selected(cfg) == {"enc.0": 2, "enc.2": 2, "head": 6}


def test_group_size_not_dividing_the_channels_skips_the_module():
    grouped = {"granularity": "per_grouped_channel", "group_size": 16, "weight_threshold": 0}
    cfg = {"module_type_configs": {"Linear": grouped, "Embedding": grouped}}
    assert selected(cfg) == {"enc.0": 4, "enc.2": 4}  # emb (100 rows) and head (4 rows) are skipped
    model = DKMPalettizer(Net(), cfg).prepare()
    assert {p.group_size for _, _, _, p in et.palettized(model)} == {16}


def test_multihead_attention_is_refused_clearly():
    model = nn.Sequential(nn.MultiheadAttention(64, 4))
    with pytest.raises(NotImplementedError, match="MultiheadAttention"):
        DKMPalettizer(model).prepare()
    DKMPalettizer(model, {"module_type_configs": {"MultiheadAttention": None}}).prepare()


def test_prepare_and_finalize_copy_unless_inplace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    p = DKMPalettizer(model, {"global_config": {"n_bits": 2}})
    prepared = p.prepare()
    assert prepared is not model and not et.palettized(model) and len(et.palettized(prepared)) == 1
    prepared(torch.randn(2, 64))  # a module never forwarded stays plain (test_palettizer_first_forward.py)
    final = p.finalize()
    assert final is not prepared and len(et.palettized(prepared)) == 1 and not et.palettized(final)
    assert final[0].weight.unique().numel() <= 4 and not final.training
    assert p.finalize(inplace=True) is prepared and not et.palettized(prepared)


# ---------------------------------------------------------------- milestones


def _run_steps(model, palettizer, steps, x):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    started = []
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        palettizer.step()
        started.append(bool(et.palettized(model)))
    return started


@pytest.mark.parametrize("milestone", [0, 1, 3])
def test_milestone_starts_palettization_as_coremltools_counts(milestone):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(4, 64)
    p = DKMPalettizer(model, {"global_config": {"n_bits": 2, "milestone": milestone}})
    m = p.prepare()
    assert bool(et.palettized(m)) == (milestone == 0)
    if milestone:  # plain weights until then
        assert torch.equal(m(x), nn.functional.linear(x, m[0].weight, m[0].bias))
    started = _run_steps(m, p, 5, x)
    # coremltools: enabled in prepare() for 0, else in the step() call whose count of earlier calls
    # equals the milestone
    assert started == [i >= milestone for i in range(5)]
    w = m[0].parametrizations.weight.original
    assert m[0].weight.unique().numel() > 4 and m.eval()[0].weight.unique().numel() <= 4
    assert w.requires_grad


def test_milestone_matches_coremltools():
    ctp = coremltools_palettization()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(4, 64)
    cfg = {"global_config": {"n_bits": 2, "milestone": 2}}
    ct = ctp.DKMPalettizer(copy.deepcopy(base), ctp.DKMPalettizerConfig.from_dict(cfg))
    mc = ct.prepare()
    theirs = [bool(mc[0].weight_fake_quant.fake_palett_enabled[0])]
    for _ in range(4):
        ct.step()
        theirs.append(bool(mc[0].weight_fake_quant.fake_palett_enabled[0]))
    ours = DKMPalettizer(copy.deepcopy(base), cfg)
    mo = ours.prepare()
    assert [bool(et.palettized(mo))] + _run_steps(mo, ours, 4, x) == theirs


# ---------------------------------------------------------------- report


def test_report_figures():
    torch.manual_seed(0)
    p = DKMPalettizer(Net(), {"global_config": {"n_bits": 3, "milestone": 1}, "saved_mode": "dkm"})
    m = p.prepare()
    rep = p.report()
    assert set(rep) == {"emb", "enc.0", "enc.2"} and not rep["enc.0"]["enabled"]
    idx = torch.randint(0, 100, (4, 6))
    _run_steps(m, p, 2, idx)
    m(idx)
    rep = p.report()
    fig = rep["enc.0"]
    assert fig["enabled"] and fig["shape"] == (128, 32) and fig["bits"] == 3
    assert 1 <= fig["distinct_values"] <= 8 and fig["centroid_min"] < fig["centroid_max"]
    assert fig["effective_tau"] == pytest.approx(1e-4) and fig["attention_entropy"] >= 0
    assert 0 < fig["error"] < 0.1 and fig["palettized_bytes"] < fig["dense_bytes"]
    assert rep.runtime["arena_peak"] + rep.runtime["heap_saved_peak"] > 0 and p.runtime.saved_mode == et._core.SavedMode.DKM
    text = str(rep)
    assert "enc.0" in text and "distinct_values" in text and "arena" in text


# ---------------------------------------------------------------- parity with coremltools


def _coremltools_model(ctp, base, cfg, centroids, dtype):
    """coremltools' prepared model with the given initial centroids (one (k, d) tensor per group)."""
    ct = ctp.DKMPalettizer(copy.deepcopy(base).to(dtype), ctp.DKMPalettizerConfig.from_dict(cfg))
    m = ct.prepare(inplace=True)
    fq = m[0].weight_fake_quant
    w = m[0].weight.detach()
    fq.create_partitions(w.permute(fq.cluster_permute) if fq.cluster_permute else w)
    fq.centroids = [c.clone().to(dtype) for c in centroids]  # init_partitions keeps tensors as they are
    return ct, m


def _all_centroids(module):
    """Every LUT group's centroids in coremltools' order: the trained groups' (the DKM layer), then
    the frozen groups' (percentage_palett_enable < 1)."""
    chain = module.parametrizations["weight"]
    dkm = next(p for p in chain if isinstance(p, et.DKMWeight))
    return torch.cat([dkm.centroids] + [p.lut for p in chain if isinstance(p, pz.FrozenRows)])


def _linear():
    return nn.Sequential(nn.Linear(64, 32)), (32, 64), (32, 32)


def _conv():
    return nn.Sequential(nn.Conv2d(8, 16, 3)), (8, 8, 5, 5), (8, 16, 3, 3)


_PARITY = [
    {"n_bits": 4, "weight_threshold": 0},
    {"n_bits": 3, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 8,
     "palett_tau": 3e-4, "kmeans_max_iter": 2},
    {"n_bits": 3, "weight_threshold": 0, "cluster_dim": 2, "kmeans_init": "kmeans++"},
    {"n_bits": 3, "weight_threshold": 0, "enforce_zero": True},
    {"n_bits": 2, "weight_threshold": 0, "enforce_zero": True, "granularity": "per_grouped_channel", "group_size": 8},
    {"n_bits": 1, "weight_threshold": 0, "enforce_zero": True},
    {"n_bits": 3, "weight_threshold": 0, "enable_per_channel_scale": True, "palett_tau": 1e-3},
    {"n_bits": 2, "weight_threshold": 0, "enable_per_channel_scale": True, "per_channel_scaling_factor_scheme": "abs",
     "granularity": "per_grouped_channel", "group_size": 8, "enforce_zero": True},
    {"n_bits": 2, "weight_threshold": 0, "enable_per_channel_scale": True, "cluster_dim": 2, "kmeans_init": "kmeans++"},
    {"n_bits": 3, "weight_threshold": 0, "lut_dtype": "f16"},
    # cluster_permute, percentage_palett_enable, vectors with LUT groups
    {"n_bits": 3, "weight_threshold": 0, "cluster_permute": (1, 0)},
    {"n_bits": 3, "weight_threshold": 0, "cluster_permute": (1, 0), "granularity": "per_grouped_channel",
     "group_size": 16},
    {"n_bits": 2, "weight_threshold": 0, "cluster_permute": (1, 0), "cluster_dim": 2, "kmeans_init": "kmeans++"},
    {"n_bits": 3, "weight_threshold": 0, "cluster_permute": (1, 0), "enable_per_channel_scale": True,
     "palett_tau": 1e-3},
    {"n_bits": 3, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 8,
     "percentage_palett_enable": 0.5},
    {"n_bits": 2, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 8,
     "percentage_palett_enable": 0.3, "cluster_dim": 2, "kmeans_init": "kmeans++", "enforce_zero": True},
    {"n_bits": 2, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 8, "cluster_dim": 2,
     "kmeans_init": "kmeans++"},
    {"n_bits": 2, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 16, "cluster_dim": 4,
     "kmeans_init": "kmeans++", "enable_per_channel_scale": True, "palett_tau": 1e-3},
]
_PARITY_CONV = [
    {"n_bits": 2, "weight_threshold": 0, "cluster_permute": (1, 2, 3, 0), "granularity": "per_grouped_channel",
     "group_size": 4},
    {"n_bits": 2, "weight_threshold": 0, "cluster_permute": (1, 0, 2, 3), "cluster_dim": 4, "kmeans_init": "kmeans++"},
    {"n_bits": 2, "weight_threshold": 0, "granularity": "per_grouped_channel", "group_size": 8, "cluster_dim": 2,
     "kmeans_init": "kmeans++", "percentage_palett_enable": 0.5},
]


class _ParityRun:
    """Ours, coremltools in float64 (the reference) and coremltools in float32 from the same
    dictionary and the same initial centroids (ours), trained side by side by SGD (lr 0.5) on the
    loss mean((model(x) - t)^2). Records each side's soft weights (the whole parametrization chain's
    output: the DKM layer may sit between Permute, RowScale, FirstRows / FrozenRows, AxisSwap /
    GroupVectors parametrizations) and weight gradients; grad_mask (bool, the weight's shape): the
    gradient is zeroed there after it is recorded (a pruning mask)."""

    def __init__(self, ctp, base, cfg, x, t, grad_mask=None):
        self.ours = DKMPalettizer(copy.deepcopy(base), cfg)
        self.mo = self.ours.prepare(inplace=True)
        self.centroids = _all_centroids(self.mo[0])
        self.ct64, self.m64 = _coremltools_model(ctp, base, cfg, list(self.centroids), torch.float64)
        self.ct32, self.m32 = _coremltools_model(ctp, base, cfg, list(self.centroids), torch.float32)
        self.x, self.t, self.soft, self.grads = x, t, {}, {}
        for key, module in (("ours", self.mo[0].parametrizations.weight), ("ref", self.m64[0].weight_fake_quant),
                            ("c32", self.m32[0].weight_fake_quant)):
            module.register_forward_hook(lambda mod, i, o, key=key: self.soft.__setitem__(key, o.detach().double()))
        self.weights = {"ours": self.mo[0].parametrizations.weight.original, "ref": self.m64[0].weight,
                        "c32": self.m32[0].weight}
        for key, w in self.weights.items():
            w.register_hook(lambda g, key=key: self._record(key, g, grad_mask))
        self.models = {"ours": (self.mo, self.ours), "ref": (self.m64, self.ct64), "c32": (self.m32, self.ct32)}
        self.optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.5) for k, (m, _) in self.models.items()}
        self.worst = [0.0] * 4

    def _record(self, key, g, mask):
        self.grads[key] = g.detach().double()
        return None if mask is None else torch.where(mask, torch.zeros_like(g), g)

    def step(self):
        """One SGD step and palettizer step on every side; returns the soft weights' and gradients'
        errors of ours and of coremltools float32 against float64 (relative to float64's largest
        magnitude) and asserts ours is no farther than coremltools float32 (or within 1e-6 / 1e-5),
        centroids too (1e-5)."""
        for k, (m, pal) in self.models.items():
            dt = self.weights[k].dtype
            self.optimizers[k].zero_grad()
            ((m(self.x.to(dt)) - self.t.to(dt)) ** 2).mean().backward()
            self.optimizers[k].step()
            pal.step()
        ref_soft, ref_grad = self.soft["ref"], self.grads["ref"]
        s_scale, g_scale = ref_soft.abs().max(), ref_grad.abs().max()
        errors = [float(e) for e in ((self.soft["ours"] - ref_soft).abs().max() / s_scale,
                                     (self.grads["ours"] - ref_grad).abs().max() / g_scale,
                                     (self.soft["c32"] - ref_soft).abs().max() / s_scale,
                                     (self.grads["c32"] - ref_grad).abs().max() / g_scale)]
        self.worst = [max(a, b) for a, b in zip(self.worst, errors)]
        assert errors[0] <= max(1e-6, errors[2]), errors
        assert errors[1] <= max(1e-5, errors[3]), errors
        ref_c = torch.stack(self.m64[0].weight_fake_quant.centroids)
        c_scale = ref_c.abs().max()
        c_err = (_all_centroids(self.mo[0]).double() - ref_c).abs().max() / c_scale
        c32_c_err = (torch.stack(self.m32[0].weight_fake_quant.centroids).double() - ref_c).abs().max() / c_scale
        assert c_err <= max(1e-5, c32_c_err), (float(c_err), float(c32_c_err))
        return errors

    def summary(self):
        w = self.worst
        return f"worst of the steps: soft weights {w[0]:.2g} / gradients {w[1]:.2g} (coremltools float32 {w[2]:.2g} / {w[3]:.2g})"


@pytest.mark.parametrize("make,global_config", [(_linear, c) for c in _PARITY] + [(_conv, c) for c in _PARITY_CONV])
def test_parity_with_coremltools(make, global_config):
    """The same dictionary through coremltools' DKMPalettizer and ours, absolute tau, same initial
    centroids, 3 SGD steps. The reference is coremltools in float64: float32 noise is what
    coremltools' own float32 run shows against it (softmax(-d / tau) with tau 1e-4 amplifies the
    rounding of d, and over SGD steps the rounding of the weights). Ours must be no farther from the
    reference than coremltools' float32 run (or within 1e-6 / 1e-5 of the scale): soft weights,
    gradients and centroids, relative to their largest magnitude. After finalize, in the clustered
    (cluster_permute'd) axes, the LUTs agree within 1e-4, no more labels differ from the float64
    run's than coremltools' float32 run's (measured: none, except 2 of 2048 with cluster_permute and
    the per-channel scale, where coremltools' float32 run has 28), and the palettization_scale and
    vector_axis agree (ours are in the weight's own axes: cluster_permute moves them)."""
    ctp = coremltools_palettization()
    cfg = {"global_config": global_config}
    torch.manual_seed(0)
    base, x_shape, t_shape = make()
    g = torch.Generator().manual_seed(1)
    run = _ParityRun(ctp, base, cfg, torch.randn(x_shape, generator=g), torch.randn(t_shape, generator=g))
    for _ in range(3):
        run.step()
    print(f"parity {make.__name__} {global_config}: {run.summary()}")  # shown with pytest -s
    ours, mo, ct64, ct32 = run.ours, run.mo, run.ct64, run.ct32
    fo, f64 = ours.finalize(), ct64.finalize()
    perm = global_config.get("cluster_permute")
    # a weight, or its LUT / scale in the weight's axes, in the clustered (cluster_permute'd) axes
    clustered = lambda v: v if perm is None else v.permute(tuple(perm) + tuple(range(len(perm), v.dim())))  # noqa: E731
    lut_o, lut_r = clustered(fo.get_buffer("0._COREML_/weight/lut")), f64.get_buffer("0._COREML_/weight/lut")
    assert lut_o.shape == lut_r.shape
    assert (lut_o.double() - lut_r).abs().max() / lut_r.abs().max() < 1e-4
    scale = "0._COREML_/weight/palettization_scale"
    assert (scale in fo.state_dict()) == (scale in f64.state_dict()) == ("enable_per_channel_scale" in global_config)
    s_o = s_r = None
    if "enable_per_channel_scale" in global_config:
        s_o, s_r = clustered(fo.get_buffer(scale)), f64.get_buffer(scale)
        assert s_o.shape == s_r.shape and torch.allclose(s_o.double(), s_r.double(), rtol=1e-6, atol=0)
    labels_o = _labels(clustered(fo[0].weight.detach()), lut_o, s_o)
    labels_r = _labels(clustered(f64[0].weight.detach()), lut_r, s_r)
    f32 = ct32.finalize()
    lut_32 = f32.get_buffer("0._COREML_/weight/lut")
    s_32 = f32.get_buffer(scale) if s_r is not None else None
    labels_32 = _labels(clustered(f32[0].weight.detach()), lut_32, s_32)
    print(f"  labels differing from coremltools float64: ours {int((labels_o != labels_r).sum())}, coremltools "
          f"float32 {int((labels_32 != labels_r).sum())} of {labels_r.numel()}")
    assert int((labels_o != labels_r).sum()) <= int((labels_32 != labels_r).sum())
    vector_axis = "0._COREML_/weight/vector_axis"
    assert (vector_axis in fo.state_dict()) == (vector_axis in f64.state_dict()) == ("cluster_dim" in global_config)
    if "cluster_dim" in global_config:
        assert int(f64.get_buffer(vector_axis)) == 0
        assert int(fo.get_buffer(vector_axis)) == (perm[0] if perm else 0)


def _labels(w, lut, scale=None):
    """Nearest LUT entry of every weight (divided by its palettization_scale when there is one) of w
    in its clustered axes: a LUT per group of rows (lut (groups, 1, ..., k, d)), vectors of d
    consecutive rows within a group as coremltools' vectorize (transpose(0, -1))."""
    groups, k, d = lut.shape[0], lut.shape[-2], lut.shape[-1]
    table = lut.detach().double().reshape(groups, k, d)
    w = w.double()
    if scale is not None:
        w = w / scale.double()
    rows = w.shape[0] // groups
    vectors = torch.stack([w[p * rows:(p + 1) * rows].transpose(0, -1).reshape(-1, d) for p in range(groups)])
    return torch.cdist(vectors, table).argmin(-1)


# ---------------------------------------------------------------- coremltools' documented example


def _documented_example(api, model, x, **options):
    """coremltools' DKMPalettizer docstring example, with `api` the module providing its three names."""
    config = api.DKMPalettizerConfig(global_config=api.ModuleDKMPalettizerConfig(**options))
    palettizer = api.DKMPalettizer(model, config)
    model = palettizer.prepare(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        palettizer.step()
    return palettizer.finalize(inplace=True)


@pytest.mark.parametrize("options", [
    dict(n_bits=4), dict(n_bits=2, cluster_dim=2),
    # the per-channel scale adds constexpr_blockwise_shift_scale after each constexpr_lut_to_dense
    dict(n_bits=4, enable_per_channel_scale=True),
    dict(n_bits=2, enable_per_channel_scale=True, enforce_zero=True, granularity="per_grouped_channel", group_size=16),
])
def test_documented_coremltools_example_with_the_import_changed_converts_alike(options):
    ctp = coremltools_palettization()
    from test_torch_coreml import _convert

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 64)
    programs = {}
    for label, api in (("coremltools", ctp), ("edkm", et)):
        model = _documented_example(api, copy.deepcopy(base), x, **options)
        ops = _convert(model, x)._mil_program.functions["main"].operations
        programs[label] = [op.op_type for op in ops]
    assert programs["edkm"].count("constexpr_lut_to_dense") == 2  # 64x96 and 96x32 pass 2048; 32x8 does not
    scaled = 2 if options.get("enable_per_channel_scale") else 0
    assert programs["edkm"].count("constexpr_blockwise_shift_scale") == scaled
    assert programs["edkm"] == programs["coremltools"]


def test_palettizer_module_imports_on_its_own():
    """edkm.torch re-exports edkm.palettizer's classes: importing either first must work."""
    import subprocess
    import sys

    code = ("import edkm.palettizer as p, edkm.torch as et; assert et.DKMPalettizer is p.DKMPalettizer; "
            "from torch import nn; p.DKMPalettizer(nn.Sequential(nn.Linear(64, 64))).prepare()")
    env = dict(__import__("os").environ, PYTHONPATH=str(__import__("pathlib").Path(pz.__file__).parents[1]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_vectors_crossing_a_group_are_refused_and_indivisible_channels_skipped():
    with pytest.raises(NotImplementedError, match="cluster_dim=4 with group_size=6"):
        DKMPalettizerConfig.from_dict({"global_config": {"cluster_dim": 4, "granularity": "per_grouped_channel",
                                                         "group_size": 6}})
    # cluster_dim 3 divides no output channel count of Net but emb's 100? no: skipped like coremltools
    assert selected({"global_config": {"cluster_dim": 3, "weight_threshold": 0}}) == {}
    got = selected({"module_type_configs": {"Linear": {"cluster_dim": 4, "weight_threshold": 0}}})
    assert got == {"enc.0": 4, "enc.2": 4, "head": 4}


def test_step_before_prepare_raises_and_an_empty_selection_steps():
    p = DKMPalettizer(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(RuntimeError, match="prepare"):
        p.step()
    p.prepare()  # 16 weights: under the 2048 threshold, nothing selected
    p.step()
    assert p.report() == {} and str(p.report()) == "(no palettized modules)"


def test_vectors_on_a_square_weight_report_and_finalize():
    """cluster_dim 2 on a 64 x 64 weight: the layer clusters w.transpose(0, -1), which has the same
    shape, so the report and finalize must go by the parametrizations, not by the shape."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    w0 = model[0].weight.detach().clone()
    p = DKMPalettizer(model, {"global_config": {"n_bits": 3, "cluster_dim": 2}})
    m = p.prepare()
    fig = p.report()["0"]
    assert fig["cluster_dim"] == 2 and 0 < fig["error"] < 0.05
    final = p.finalize()
    w = final[0].weight.detach()
    assert (w - w0).abs().max() < 0.1
    lut = final.get_buffer("0._COREML_/weight/lut")
    assert lut.shape == (1, 1, 8, 2) and int(final.get_buffer("0._COREML_/weight/vector_axis")) == 0
    assert torch.equal(lut[0, 0][_labels(final[0].weight.detach(), lut)[0]].reshape(64, 64).T, w)  # vectors down the columns
    assert torch.equal(m.eval()[0].weight, w)


_KEEP_SPARSITY = [
    {"n_bits": 3, "weight_threshold": 0, "enforce_zero": True, "prune_threshold": 0},
    {"n_bits": 2, "weight_threshold": 0, "enforce_zero": True, "prune_threshold": 0,
     "granularity": "per_grouped_channel", "group_size": 8},
    {"n_bits": 3, "weight_threshold": 0, "enforce_zero": True, "prune_threshold": 0, "enable_per_channel_scale": True,
     "palett_tau": 1e-3},
]


def _sparse_linear():
    """nn.Linear(64, 32) whose weight is 40 % exact zeros (every other one -0.0) and their mask."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 32))
    w = base[0].weight
    drop = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.4
    with torch.no_grad():
        w[drop] = 0.0
        w[drop & (torch.arange(w.numel()).reshape(w.shape) % 2 == 0)] = -0.0
    return base, drop


@pytest.mark.parametrize("global_config", _KEEP_SPARSITY)
def test_keep_sparsity_parity_with_coremltools(global_config):
    """coremltools' keep-sparsity rule (enforce_zero, prune_threshold 0) as test_parity_with_coremltools
    checks the other options (same dictionary, absolute tau, same initial centroids, 3 SGD steps,
    ours no farther from coremltools float64 than coremltools float32, or within 1e-6 / 1e-5 of the
    scale), on a Linear whose zeros a pruning mask keeps zero (the gradient is masked after it is
    compared: the gradients at the zeros, through their ordinary distance to centroid 0, are checked
    too). After finalize: LUTs within 1e-4, labels equal coremltools float64's but at near ties, and every
    zero weight exactly zero in both. (The per-channel-scale case has 1 label of 2048 off where
    coremltools float32 has none: coremltools float64's weight lies 8e-6 from the midpoint of two LUT
    entries, and the trained weights differ by up to 0.02 in LUT units: a near tie, allowed.)"""
    ctp = coremltools_palettization()
    cfg = {"global_config": global_config}
    base, drop = _sparse_linear()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn((32, 64), generator=g), torch.randn((32, 32), generator=g)
    run = _ParityRun(ctp, base, cfg, x, t, grad_mask=drop)
    assert (run.centroids[:, 0] == 0).all()
    for step in range(3):
        run.step()
        if step == 0:
            first_soft = run.soft["ref"].clone()
        assert all((w.detach()[drop] == 0).all() for w in run.weights.values())  # the mask keeps the zeros
    print(f"keep-sparsity parity {global_config}: {run.summary()}")  # shown with pytest -s
    ours, centroids, ct64, ct32, soft = run.ours, run.centroids, run.ct64, run.ct32, run.soft
    # the rule matters (the test can fail): coremltools' plain enforce_zero (prune_threshold 1e-7)
    # gives other soft weights from the same start
    plain = {"global_config": dict(global_config, prune_threshold=1e-7)}
    _, mp = _coremltools_model(ctp, base, plain, list(centroids), torch.float64)
    mp[0].weight_fake_quant.register_forward_hook(lambda mod, i, o: soft.__setitem__("plain", o.detach()))
    mp(x.double())
    assert (soft["plain"] - first_soft).abs().max() / first_soft.abs().max() > 1e-2
    fo, f64, f32 = ours.finalize(), ct64.finalize(), ct32.finalize()
    lut_o, lut_r = fo.get_buffer("0._COREML_/weight/lut"), f64.get_buffer("0._COREML_/weight/lut")
    assert lut_o.shape == lut_r.shape
    assert (lut_o.double() - lut_r).abs().max() / lut_r.abs().max() < 1e-4
    scale = "0._COREML_/weight/palettization_scale"
    s_o = s_r = s_32 = None
    if "enable_per_channel_scale" in global_config:
        s_o, s_r, s_32 = fo.get_buffer(scale), f64.get_buffer(scale), f32.get_buffer(scale)
    labels_o = _labels(fo[0].weight.detach(), lut_o, s_o)
    labels_r = _labels(f64[0].weight.detach(), lut_r, s_r)
    labels_32 = _labels(f32[0].weight.detach(), f32.get_buffer("0._COREML_/weight/lut"), s_32)
    print(f"  labels differing from coremltools float64: ours {int((labels_o != labels_r).sum())}, coremltools "
          f"float32 {int((labels_32 != labels_r).sum())} of {labels_r.numel()}")
    # A label may differ from coremltools float64's only at a near tie: where the trained weights
    # (ours float32, theirs float64; in LUT units, in the labels' order) differ by more than the
    # reference weight's distance to the midpoint of the two LUT entries.
    groups, k = lut_r.shape[0], lut_r.shape[-2]

    def values(w, scale):
        w = w.detach().double() / (1 if scale is None else scale.double())
        rows = w.shape[0] // groups
        return torch.stack([w[p * rows:(p + 1) * rows].T.reshape(-1) for p in range(groups)])

    w_r, w_o = values(run.m64[0].weight, s_r), values(run.weights["ours"], s_o)
    drift = float((w_o - w_r).abs().max())
    table = lut_r.double().reshape(groups, k)
    for p, i in torch.nonzero(labels_o != labels_r).tolist():
        a, b = int(labels_o[p, i]), int(labels_r[p, i])
        mid = float(table[p, a] + table[p, b]) / 2
        print(f"  label ({p}, {i}): ours {a}, coremltools {b}: weight {float(w_r[p, i]):.6g} (ours {float(w_o[p, i]):.6g}), "
              f"midpoint {mid:.6g}, weights' largest difference {drift:.3g}")
        assert abs(float(w_r[p, i]) - mid) <= drift
    assert (fo[0].weight.detach()[drop] == 0).all() and (f64[0].weight.detach()[drop] == 0).all()


def test_enforce_zero_lut_holds_zero_first():
    torch.manual_seed(0)
    p = DKMPalettizer(nn.Sequential(nn.Linear(64, 32)), {"global_config": {"n_bits": 2, "weight_threshold": 0,
                                                                           "enforce_zero": True}})
    m = p.prepare()
    m(torch.randn(2, 64)).sum().backward()
    lut = p.finalize().get_buffer("0._COREML_/weight/lut")
    assert lut.reshape(-1)[0] == 0 and lut.reshape(-1)[1:].abs().min() > 0


# ---------------------------------------------------------------- per-channel scale, LUT quantization


def test_per_channel_scale_of_zero_and_constant_rows_is_documented():
    """coremltools divides by a zero factor (NaN weights); libedkm gives a constant row max |w| and a
    zero row 1, and palettizes the rest as usual."""
    w = torch.randn(6, 64) * 0.05
    w[1] = 0
    w[4] = 0.3
    s_minmax = pz.per_channel_scale(w, "min_max").reshape(-1)
    s_abs = pz.per_channel_scale(w, "abs").reshape(-1)
    assert s_minmax[1] == 1 and s_abs[1] == 1 and torch.isclose(s_minmax[4], torch.tensor(0.3))
    assert torch.allclose(s_abs, torch.where(w.abs().amax(1) > 0, w.abs().amax(1), torch.ones(6)))
    row = w[0]
    assert torch.isclose(s_minmax[0], 0.5 * (row.max() - row.min()))
    model = nn.Sequential(nn.Linear(64, 6))
    with torch.no_grad():
        model[0].weight.copy_(w)
    p = DKMPalettizer(model, {"global_config": {"n_bits": 2, "weight_threshold": 0, "enable_per_channel_scale": True}})
    m = p.prepare()
    m(torch.randn(3, 64)).sum().backward()
    assert torch.isfinite(m[0].parametrizations.weight.original.grad).all()
    final = p.finalize()
    fw = final[0].weight.detach()
    assert torch.isfinite(fw).all() and torch.all(fw[1] == fw[1, 0])  # the zero row stays one LUT value
    assert torch.equal(final.get_buffer("0._COREML_/weight/palettization_scale").reshape(-1), s_minmax)


def test_coremltools_never_applies_its_lut_quantization():
    """Why libedkm's lut_dtype i8 / u8 results differ from coremltools' in training: coremltools 9.0's
    FakePalettize disables its LUT fake-quantizer and observer and nothing enables them, so its i8 run
    is bit-identical to its f32 run (if a later coremltools changes that, this test says so)."""
    ctp = coremltools_palettization()
    runs = []
    for lut_dtype in ("f32", "i8"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32))
        cfg = ctp.DKMPalettizerConfig.from_dict({"global_config": {"n_bits": 3, "weight_threshold": 0,
                                                                   "lut_dtype": lut_dtype}})
        m = ctp.DKMPalettizer(model, cfg).prepare()
        y = m(torch.randn(4, 64))
        y.sum().backward()
        runs.append((y.detach(), m[0].weight.grad, m[0].weight_fake_quant.centroids[0]))
        assert not m[0].weight_fake_quant.fake_quant_enabled[0]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lut_dtype,int_type", [("i8", "int8"), ("u8", "uint8")])
def test_lut_quantization_trains_and_converts_to_an_integer_lut(lut_dtype, int_type):
    from test_torch_coreml import _convert

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 64)
    model = _documented_example(et, copy.deepcopy(base), x, n_bits=4, lut_dtype=lut_dtype,
                                granularity="per_grouped_channel", group_size=32)
    lut = model.get_buffer("0._COREML_/weight/lut")
    scale = model.get_buffer("0._COREML_/weight/quantization_scale")
    assert lut.shape[0] == 3 and scale.shape == (3, 1, 1, 1)
    assert model.get_buffer("0._COREML_/weight/compression_type").tolist() == [2, 3]
    zp = model.get_buffer("0._COREML_/weight/zero_point") if lut_dtype == "u8" else torch.zeros_like(scale)
    q = lut.double() / scale.double() + zp.double()
    assert (q - q.round()).abs().max() < 1e-3  # every LUT on its own 8-bit grid
    ops = _convert(model, x)._mil_program.functions["main"].operations
    # each LUT is stored as 8-bit integers: constexpr_blockwise_shift_scale(int LUT, scale) feeds
    # constexpr_lut_to_dense
    luts = [op for op in ops if op.op_type == "constexpr_lut_to_dense"]
    assert len(luts) == 2
    for op in luts:
        dequant = op.lut.op
        assert dequant.op_type == "constexpr_blockwise_shift_scale"
        assert dequant.data.val.dtype == np.dtype(int_type)
