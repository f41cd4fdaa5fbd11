"""edkm.torch.DKMPalettizer: coremltools' DKMPalettizer interface, on libedkm.

A coremltools training script switches by changing its import:

    from edkm.torch import DKMPalettizer, DKMPalettizerConfig     # was coremltools.optimize.torch.palettization
    config = DKMPalettizerConfig.from_dict({"global_config": {"n_bits": 4}})
    palettizer = DKMPalettizer(model, config)
    model = palettizer.prepare(inplace=True)
    for x, y in data:   # ... loss.backward(); optimizer.step()
        palettizer.step()
    model = palettizer.finalize(inplace=True)      # coremltools metadata: ct.convert gives constexpr_lut_to_dense

The configuration takes coremltools 9.0's dictionaries as they are (`global_config`,
`module_type_configs` keyed by module types or their names, `module_name_configs` keyed by names or
regular expressions matched in full, a list of configs per key chosen by `weight_threshold`, None to
skip) with coremltools' key names and defaults. Every coremltools key has a status (`KEY_STATUS`):
implemented, accepted because it cannot change the result here, or not implemented: a value other
than the default of a not-implemented key raises NotImplementedError naming the key. libedkm's own
options sit beside coremltools' keys: `temperature_mode`, `f32_key_dtype`, `algorithm`, `seed` in a
module config; `runtime` / `saved_mode` at the top of the dictionary or as DKMPalettizer arguments.

Semantics (coremltools 9.0, read from its palettization_config.py, palettizer.py, fake_palettize.py):
- modules: exactly the types coremltools registers (Linear, Conv1d/2d/3d, LayerNorm, Embedding,
  MultiheadAttention); n_bits defaults to 4 for Linear and 2 for the others; a module is palettized
  when every palettizable weight has more than `weight_threshold` elements (default 2048); of a list
  of configs the one with the largest threshold passed wins; per_grouped_channel with a group_size
  that does not divide the output channels skips the module (coremltools logs and skips too).
- temperature: coremltools' palett_tau is absolute (softmax(-d / tau) over squared distances), so a
  coremltools config runs with temperature_mode='absolute' and tau = palett_tau (default 1e-4).
  temperature_mode='scale_free' beside it reads palett_tau as libedkm's scale-free factor. A
  palett_tau, palett_epsilon or prune_threshold not given is passed unset, and the library uses its
  mode's default (absolute: coremltools' numbers above; scale-free: tau 0.1).
- milestone: coremltools enables a module's palettization in prepare() when milestone is 0, else in
  the step() call made when its step counter (calls before this one) equals milestone. Until then the
  weights are plain. The centroids are initialised from the weights when palettization starts
  (coremltools: at the first forward after; the weights are the same in between).
- finalize: modules whose palettization never started are left plain, without metadata; so are
  modules whose palettization started but that ran no forward since (coremltools initialises a
  module's partitions and centroids at its first forward after the start, and finalizes only those
  that have them; its report() runs such a forward, and so does ours). edkm._palettization_start.
"""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from . import _palettization_start as start


__all__ = ["DKMPalettizer", "DKMPalettizerConfig", "ModuleDKMPalettizerConfig", "PalettizationReport",
           "COREMLTOOLS_DEFAULTS", "KEY_STATUS", "SUPPORTED_MODULES"]

#: coremltools 9.0 ModuleDKMPalettizerConfig: every key and its default.
COREMLTOOLS_DEFAULTS = {
    "n_bits": None,  # None: 4 for Linear, 2 for the other module types (DEFAULT_PALETTIZATION_SCHEME)
    "weight_threshold": 2048,
    "granularity": "per_tensor",
    "group_size": None,
    "channel_axis": 0,
    "enable_per_channel_scale": False,
    "milestone": 0,
    "cluster_dim": None,  # None: 1
    "quant_min": -128,
    "quant_max": 127,
    "dtype": torch.qint8,
    "lut_dtype": "f32",
    "quantize_activations": False,
    "cluster_permute": None,
    "palett_max_mem": 1.0,
    "kmeans_max_iter": 3,
    "prune_threshold": 1e-7,
    "kmeans_init": "auto",
    "kmeans_opt1d_threshold": 1024,
    "enforce_zero": False,
    "palett_mode": "dkm",
    "palett_tau": 1e-4,
    "palett_epsilon": 1e-4,
    "palett_lambda": 0.0,
    "add_extra_centroid": False,
    "palett_cluster_tol": 0.0,
    "palett_min_tsize": 64 * 1024,
    "palett_unique": False,
    "palett_shard": False,
    "palett_batch_mode": False,
    "palett_dist": False,
    "per_channel_scaling_factor_scheme": "min_max",
    "percentage_palett_enable": 1.0,
    "kmeans_batch_threshold": 4,
    "kmeans_n_init": 10,
    "zero_threshold": 1e-7,
    "kmeans_error_bnd": 0.0,
}

#: libedkm's own module options (edkm.Layer), beside coremltools' keys.
#: None = the library's own default (edkm_layer_config_init), so none is restated here.
EDKM_DEFAULTS = {"temperature_mode": None, "f32_key_dtype": None, "algorithm": None, "seed": None}

#: coremltools' lut_dtype names -> libedkm's (edkm.Layer lut_dtype).
_LUT_DTYPES = {"f32": "f32", "fp32": "f32", "float32": "f32", "i8": "i8", "int8": "i8", "u8": "u8", "uint8": "u8",
               "f16": "f16", "float16": "f16", "b16": "b16"}
#: lut_dtype -> the type coremltools rounds the palettized weights to after each forward.
_ROUNDING_TYPES = {"f16": torch.float16, "b16": torch.bfloat16}

_DEPRECATED = {"partition_size": "group_size", "cluster_dtype": "lut_dtype"}

_IMPLEMENTED = "implemented"
_ACCEPTED = "accepted, no effect"
_NOT_IMPLEMENTED = "not implemented"

#: key -> (status, what it means here). Not-implemented keys accept only their default value.
KEY_STATUS = {
    "n_bits": (_IMPLEMENTED, "bits per weight (2^n_bits centroids)"),
    "weight_threshold": (_IMPLEMENTED, "palettize when every weight has more elements than this"),
    "granularity": (_IMPLEMENTED, "per_tensor, or per_grouped_channel (a LUT per group_size output channels)"),
    "group_size": (_IMPLEMENTED, "output channels per LUT with per_grouped_channel"),
    "channel_axis": (_IMPLEMENTED, "0 only (as coremltools' DKM)"),
    "milestone": (_IMPLEMENTED, "step() count at which palettization starts"),
    "cluster_dim": (_IMPLEMENTED, "vector palettization along the output channels (coremltools' vector "
                                  "axis 0), per_tensor or per_grouped_channel (group_size a multiple of "
                                  "cluster_dim)"),
    "kmeans_max_iter": (_IMPLEMENTED, "differentiable k-means iterations per forward"),
    "prune_threshold": (_IMPLEMENTED, "subtracted from every distance to centroid 0"),
    "kmeans_init": (_IMPLEMENTED, "auto / opt1d: libedkm's exact 1-D k-means (auto: k-means++ for "
                                  "cluster_dim > 1); kmeans++ / cpu.kmeans++: k-means++"),
    "palett_tau": (_IMPLEMENTED, "absolute softmax temperature"),
    "palett_epsilon": (_IMPLEMENTED, "early stop when the inertia changes by at most this"),
    "zero_threshold": (_IMPLEMENTED, "lower clamp of the attention"),
    "enable_per_channel_scale": (_IMPLEMENTED, "each output channel divided by its scale before clustering and "
                                               "multiplied after (the core's channel_scale), on CPU weights and "
                                               "on device weights (the device split); the scale is "
                                               "finalize's palettization_scale"),
    "enforce_zero": (_IMPLEMENTED, "centroid 0 fixed at zero; with prune_threshold 0 coremltools' "
                                   "keep-sparsity rule (nonzero weights keep distance 1/zero_threshold "
                                   "to it)"),
    "lut_dtype": (_IMPLEMENTED, "f32; i8 / u8: each LUT fake-quantized after every DKM iteration (one scale per "
                                "LUT, a zero point for u8; straight-through backward) and exported as Core ML's "
                                "joint palettization + quantization (coremltools 9.0 itself never applies i8 / u8: "
                                "its LUT fake-quantizer stays disabled); f16 / b16: the palettized weights rounded "
                                "to that type after each forward, as coremltools"),
    "quantize_activations": (_NOT_IMPLEMENTED, "False only (activation quantization is out of scope)"),
    "cluster_permute": (_IMPLEMENTED, "the weight's axes permuted before clustering and back after (groups, "
                                      "per-channel scale and vectors along the permuted axis 0); the Core ML "
                                      "metadata is given in the weight's own axes"),
    "percentage_palett_enable": (_IMPLEMENTED, "the first max(1, int(p x groups)) LUT groups train; the others "
                                               "are hard-palettized once with their initial centroids and stay "
                                               "frozen (no gradient)"),
    "palett_mode": (_NOT_IMPLEMENTED, "'dkm' only (gsm / hard / topk attention not in the core)"),
    "add_extra_centroid": (_NOT_IMPLEMENTED, "False only"),
    "palett_cluster_tol": (_NOT_IMPLEMENTED, "0.0 only (the default: coinciding centroids are re-spread to "
                                             "midpoints before each training forward, in libedkm's core too)"),
    "quant_min": (_ACCEPTED, "libedkm's LUT quantization uses the whole range of lut_dtype (int8 -128..127, "
                         "uint8 0..255) with a scale from each LUT's own range"),
    "quant_max": (_ACCEPTED, "libedkm's LUT quantization uses the whole range of lut_dtype (int8 -128..127, "
                         "uint8 0..255) with a scale from each LUT's own range"),
    "dtype": (_ACCEPTED, "libedkm's LUT quantization uses the whole range of lut_dtype (int8 -128..127, "
                         "uint8 0..255) with a scale from each LUT's own range"),
    "per_channel_scaling_factor_scheme": (_IMPLEMENTED, "min_max (0.5 (max - min) per channel) or abs (max |w|); "
                                                        "a channel whose factor is 0 gets max |w|, or 1 if all zero"),
    "palett_lambda": (_ACCEPTED, "stored but never read by coremltools 9.0's FakePalettize"),
    "palett_max_mem": (_ACCEPTED, "coremltools' GPU memory for saved tensors (lossless pack hooks); "
                                  "libedkm's memory is its runtime's saved_mode / budget"),
    "palett_min_tsize": (_ACCEPTED, "size threshold of coremltools' lossless pack hooks"),
    "palett_unique": (_ACCEPTED, "coremltools' lossless 16-bit uniquification of saved tensors; "
                                 "libedkm: saved_mode='histogram' (its default)"),
    "palett_shard": (_ACCEPTED, "coremltools' sharding of saved indices over GPUs; libedkm: saved_mode='shard'"),
    "palett_batch_mode": (_ACCEPTED, "batches equal-size groups in one kernel: same values"),
    "palett_dist": (_ACCEPTED, "splits the distance computation over ranks: same values"),
    "kmeans_opt1d_threshold": (_ACCEPTED, "chooses coremltools' initialiser; libedkm's auto is its exact "
                                          "1-D k-means for cluster_dim 1 at any size (over 65,536 f32 "
                                          "weights on their 16-bit rounding)"),
    "kmeans_batch_threshold": (_ACCEPTED, "spreads coremltools' initialisation over ranks"),
    "kmeans_n_init": (_ACCEPTED, "restarts of coremltools' heuristic initialiser (libedkm: exact 1-D "
                                 "k-means, or its own k-means++)"),
    "kmeans_error_bnd": (_ACCEPTED, "stopping rule of coremltools' initialiser"),
}

def key_table():
    """KEY_STATUS and COREMLTOOLS_DEFAULTS as the markdown table of docs/coremltools-options.md."""
    lines = ["| key | coremltools default | status | meaning here |", "|---|---|---|---|"]
    for key, (status, meaning) in KEY_STATUS.items():
        lines.append(f"| `{key}` | `{COREMLTOOLS_DEFAULTS[key]!r}` | {status} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def _et():
    """edkm.torch, imported on use: edkm.torch re-exports this module's classes, so a module-level
    import would be circular whichever of the two is imported first."""
    from . import torch as et

    return et


_INIT_NAMES = {"auto": "auto", "opt1d": "optimal_1d", "kmeans++": "kmeans_pp", "cpu.kmeans++": "kmeans_pp"}


def _supported_modules():
    """coremltools' DKMPalettizerModulesRegistry, in its order; n_bits default per type."""
    return {nn.Linear: 4, nn.Conv1d: 2, nn.Conv2d: 2, nn.Conv3d: 2, nn.LayerNorm: 2,
            nn.MultiheadAttention: 2, nn.Embedding: 2}


#: module type -> default n_bits (coremltools' DEFAULT_PALETTIZATION_SCHEME).
SUPPORTED_MODULES = _supported_modules()
_TYPE_NAMES = {t.__name__: t for t in SUPPORTED_MODULES}


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _granularity_name(v):
    v = getattr(v, "value", v)  # coremltools' PalettizationGranularity enum
    if v not in ("per_tensor", "per_grouped_channel"):
        raise ValueError(f"granularity: expected 'per_tensor' or 'per_grouped_channel', got {v!r}")
    return v


def _not_implemented(key, value):
    raise NotImplementedError(f"edkm.torch.DKMPalettizer: {key}={value!r} is not implemented in libedkm "
                              f"({KEY_STATUS[key][1]})")


class ModuleDKMPalettizerConfig:
    """One module's palettization options: coremltools' ModuleDKMPalettizerConfig keys (defaults in
    COREMLTOOLS_DEFAULTS) plus libedkm's (EDKM_DEFAULTS). Attribute access by key name; `given` is
    the set of keys the caller set."""

    def __init__(self, **options):
        for key in options:
            if key in _DEPRECATED:
                raise ValueError(f"edkm.torch.DKMPalettizer: {key} is deprecated in coremltools; use "
                                 f"{_DEPRECATED[key]}")
            if key not in COREMLTOOLS_DEFAULTS and key not in EDKM_DEFAULTS:
                raise ValueError(f"edkm.torch.DKMPalettizer: unknown key {key!r} (neither a coremltools "
                                 f"ModuleDKMPalettizerConfig key nor an edkm option: "
                                 f"{', '.join(sorted(EDKM_DEFAULTS))})")
        self.given = frozenset(options)
        values = dict(COREMLTOOLS_DEFAULTS, **EDKM_DEFAULTS)
        values.update(options)
        self.__dict__.update(values)
        self._validate()

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"a module config must be a dict or a ModuleDKMPalettizerConfig, got {type(d).__name__}")
        return cls(**d)

    def as_dict(self):
        return {k: getattr(self, k) for k in list(COREMLTOOLS_DEFAULTS) + list(EDKM_DEFAULTS)}

    def __repr__(self):
        return "ModuleDKMPalettizerConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in sorted(self.given)) + ")"

    def _validate(self):
        for key in ("weight_threshold", "milestone", "kmeans_max_iter"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key}: expected a non-negative int, got {v!r}")
        for key in ("n_bits", "group_size", "cluster_dim"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{key}: expected None or a positive int, got {v!r}")
        for key in ("palett_tau", "palett_epsilon", "prune_threshold", "zero_threshold"):
            v = getattr(self, key)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{key}: expected a finite number >= 0, got {v!r}")
        self.granularity = _granularity_name(self.granularity)
        if self.granularity == "per_grouped_channel":
            if self.group_size is None:
                raise ValueError("group_size has to be specified along with per_grouped_channel granularity")
            if self.group_size % (self.cluster_dim or 1):
                raise NotImplementedError(
                    f"edkm.torch.DKMPalettizer: cluster_dim={self.cluster_dim} with group_size={self.group_size} is "
                    f"not implemented: a group's vectors of cluster_dim output channels would cross its columns, "
                    f"which Core ML's vector palettization cannot describe (use a group_size that cluster_dim divides)")
        elif self.group_size is not None:
            raise ValueError("group_size can't be specified along with per_tensor granularity")
        self.cluster_permute = _permutation(self.cluster_permute)
        p = self.percentage_palett_enable
        if not _is_number(p) or not math.isfinite(p) or p < 0:
            raise ValueError(f"percentage_palett_enable: expected a finite number >= 0, got {p!r}")
        if self.channel_axis != 0:
            raise ValueError(f"channel_axis: only 0 (the output channels) is supported, as in coremltools' DKM; "
                             f"got {self.channel_axis!r}")
        if self.kmeans_init not in _INIT_NAMES:
            _not_implemented_init(self.kmeans_init)
        if self.per_channel_scaling_factor_scheme not in ("min_max", "abs"):
            raise ValueError(f"per_channel_scaling_factor_scheme: 'min_max' or 'abs', got "
                             f"{self.per_channel_scaling_factor_scheme!r}")
        checks = {
            "lut_dtype": lambda v: v in _LUT_DTYPES,
            "quantize_activations": lambda v: v is False,
            "palett_mode": lambda v: v == "dkm",
            "add_extra_centroid": lambda v: v is False,
            "palett_cluster_tol": lambda v: _is_number(v) and v == 0,
        }
        for key, ok in checks.items():
            if not ok(getattr(self, key)):
                _not_implemented(key, getattr(self, key))

    # ---- what a module gets ----

    def layer_options(self, module_type):
        """edkm.torch.palettize keyword arguments for a module of this type."""
        bits = self.n_bits if self.n_bits is not None else SUPPORTED_MODULES.get(module_type, 4)
        mode = self.temperature_mode
        if mode is None:  # a coremltools config: its absolute temperature
            mode = "absolute"
        # Thresholds not given stay unset: the library fills its mode's defaults (absolute mode:
        # coremltools' palett_tau, palett_epsilon and prune_threshold, the numbers above).
        given = {key: float(getattr(self, key)) if key in self.given else None
                 for key in ("palett_tau", "palett_epsilon", "prune_threshold")}
        return dict(bits=bits, group_size=self.group_size or 0, cluster_dim=self.cluster_dim or 1,
                    tau=given["palett_tau"], temperature_mode=mode,
                    max_iterations=self.kmeans_max_iter, epsilon=given["palett_epsilon"],
                    zero_threshold=float(self.zero_threshold), prune_threshold=given["prune_threshold"],
                    init=_INIT_NAMES[self.kmeans_init], f32_key_dtype=self.f32_key_dtype,
                    algorithm=self.algorithm, seed=self.seed, enforce_zero=bool(self.enforce_zero),
                    lut_dtype=_LUT_DTYPES[self.lut_dtype] if _LUT_DTYPES[self.lut_dtype] in ("i8", "u8") else "f32")


def _permutation(v):
    """cluster_permute as a tuple of axes, or None (None or () in the config). coremltools takes a
    tuple; a list is accepted too. Whether it fits a weight's rank is checked at prepare()."""
    if v is None or (isinstance(v, (tuple, list)) and len(v) == 0):
        return None
    if not isinstance(v, (tuple, list)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in v) \
            or sorted(v) != list(range(len(v))):
        raise ValueError(f"cluster_permute: expected None or a permutation of the weight's axes (0, 1, ...), "
                         f"got {v!r}")
    return tuple(v)


def _not_implemented_init(v):
    raise NotImplementedError(f"edkm.torch.DKMPalettizer: kmeans_init={v!r} is not implemented in libedkm "
                              f"(one of {', '.join(_INIT_NAMES)}; coremltools' NormalFloat 'nf' inits are not)")


def _module_configs(value):
    """None, one config, or a list of configs sorted by weight_threshold (coremltools' order)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return sorted((ModuleDKMPalettizerConfig.from_dict(v) for v in value if v is not None),
                      key=lambda c: c.weight_threshold)
    return [ModuleDKMPalettizerConfig.from_dict(value)]


def _type_key(key):
    if isinstance(key, str):
        if key not in _TYPE_NAMES:
            raise ValueError(f"module_type_configs: keys must be one of {sorted(_TYPE_NAMES)}, got {key!r}")
        return _TYPE_NAMES[key]
    if key not in SUPPORTED_MODULES:
        raise ValueError(f"module_type_configs: keys must be one of {list(SUPPORTED_MODULES)}, got {key!r}")
    return key


class DKMPalettizerConfig:
    """Which modules are palettized and how (coremltools' DKMPalettizerConfig).

    global_config: a module config (dict) or a list of them, for every supported module not named
    by the other two; module_type_configs: {type or type name: config, list or None};
    module_name_configs: {qualified name or regular expression (re.fullmatch): config, list or None}.
    Precedence as coremltools: the first matching name, then the type, then the global config. With
    none of the three, every supported module type gets the default config (coremltools' default
    scheme). runtime: None, an edkm.Runtime or a dict of Runtime options; saved_mode: a shortcut for
    runtime={'saved_mode': ...}."""

    def __init__(self, global_config=None, module_type_configs=None, module_name_configs=None, runtime=None,
                 saved_mode=None):
        self.global_config = _module_configs(global_config)
        self.module_type_configs = {_type_key(k): _module_configs(v) for k, v in (module_type_configs or {}).items()}
        self.module_name_configs = {str(k): _module_configs(v) for k, v in (module_name_configs or {}).items()}
        if global_config is None and not self.module_type_configs and not self.module_name_configs:
            self.module_type_configs = {t: [ModuleDKMPalettizerConfig()] for t in SUPPORTED_MODULES}
        if saved_mode is not None:
            if runtime is not None and not isinstance(runtime, dict):
                raise ValueError("saved_mode: give it inside runtime's options, or give no runtime object")
            runtime = dict(runtime or {}, saved_mode=saved_mode)
        self.runtime = runtime

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"DKMPalettizerConfig.from_dict: expected a dict, got {type(d).__name__}")
        allowed = {"global_config", "module_type_configs", "module_name_configs", "runtime", "saved_mode"}
        extra = sorted(set(d) - allowed)
        if extra:
            raise ValueError(f"DKMPalettizerConfig: unknown key(s) {extra} (expected {sorted(allowed)})")
        return cls(**d)

    def module_configs(self, name, module):
        """The config list for one module (None: not palettized), by coremltools' precedence."""
        for pattern, cfg in self.module_name_configs.items():
            if re.fullmatch(pattern, name):
                return cfg
        if type(module) in self.module_type_configs:
            return self.module_type_configs[type(module)]
        return self.global_config


def _palettizable_weights(module):
    """(name, tensor) of the weights coremltools palettizes in this module."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            return [("in_proj_weight", module.in_proj_weight), ("out_proj.weight", module.out_proj.weight)]
        return [(n, getattr(module, n)) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight")] + \
            [("out_proj.weight", module.out_proj.weight)]
    return [("weight", module.weight)]


def _choose(configs, module):
    """coremltools' choice: every config (sorted by threshold) whose threshold all weights pass and whose
    group_size divides the output channels is applied in turn; the last one wins."""
    chosen = None
    for cfg in configs:
        weights = _palettizable_weights(module)
        if not all(w is not None and w.numel() > cfg.weight_threshold for _, w in weights):
            continue
        if cfg.granularity == "per_grouped_channel" and any(_permuted_shape(w, cfg)[0] % cfg.group_size
                                                            for _, w in weights):
            continue  # coremltools logs "axis_length ... is not divisible by group_size" and skips
        if any(w.shape[0] % (cfg.cluster_dim or 1) for _, w in weights):
            continue  # coremltools logs "... is not divisible by cluster_dim" and skips
        chosen = cfg
    return chosen


def _permuted_shape(w, cfg):
    """The weight's shape after cfg.cluster_permute (coremltools groups the rows of the permuted
    weight); a permutation of another rank is refused naming the key."""
    perm = cfg.cluster_permute
    if perm is None:
        return tuple(w.shape)
    if len(perm) != w.dim():
        raise ValueError(f"cluster_permute={perm} does not permute the axes of a weight of shape {tuple(w.shape)} "
                         f"(coremltools fails at the forward there)")
    return tuple(w.shape[a] for a in perm)


def _permuted(w, cfg):
    return w if cfg.cluster_permute is None else w.permute(cfg.cluster_permute)


class AxisSwap(nn.Module):
    """Parametrization w -> w.transpose(0, -1) (its own inverse)."""

    def forward(self, w):
        return w.transpose(0, -1)


class RowScale(nn.Module):
    """Parametrization w -> w / s (divide=True) or w * s: s (the buffer `scale`, shape (out, 1)) is one
    factor per output channel, applied to w.flatten(1) as coremltools' FakePalettize does."""

    def __init__(self, scale, divide):
        super().__init__()
        self.divide = bool(divide)
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, w):
        s = self.scale.to(device=w.device, dtype=w.dtype)
        rows = w.flatten(1)
        return (rows / s if self.divide else rows * s).view(w.size())


class Permute(nn.Module):
    """Parametrization w -> w.permute(dims): coremltools' cluster_permute before clustering
    (`inverse()` is the permutation that undoes it, applied after)."""

    def __init__(self, dims):
        super().__init__()
        self.dims = tuple(int(a) for a in dims)

    def inverse(self):
        return Permute(sorted(range(len(self.dims)), key=self.dims.__getitem__))

    def forward(self, w):
        return w.permute(self.dims)


class GroupVectors(nn.Module):
    """Parametrization laying out the rows of a weight of `shape` (n, r_2, ..., r_N) as libedkm's
    vectors with a LUT per group of `group_size` rows: w -> (n / g, g r_2 ... r_N), row p being
    w[p g : (p + 1) g].transpose(0, -1) flattened, which is coremltools' vectorize of partition p, so
    that the layer's d-vectors of consecutive row elements (group_size 1: a LUT per row) are d
    consecutive output channels of one group. inverse=True maps such rows back to `shape`."""

    def __init__(self, shape, group_size, inverse=False):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.group_size = int(group_size)
        self.inverse = bool(inverse)

    def forward(self, w):
        n, rest = self.shape[0], self.shape[1:]
        g = self.group_size
        groups = n // g
        if not self.inverse:
            return w.reshape((groups, g) + rest).transpose(1, -1).reshape(groups, -1)
        swapped = (groups,) + ((rest[-1],) + rest[:-1] if rest else ()) + (g,)
        return w.reshape(swapped).transpose(1, -1).reshape(self.shape)


class FirstRows(nn.Module):
    """Parametrization w -> w[:rows]: the rows of the LUT groups that train (percentage_palett_enable)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = int(rows)

    def forward(self, w):
        return w[:self.rows]


class FrozenRows(nn.Module):
    """Parametrization w -> cat([w, rows]): appends the rows of the LUT groups that do not train
    (coremltools' percentage_palett_enable < 1), hard-palettized once with their initial centroids.
    Buffers: `rows` (their values; no gradient reaches their weights, as in coremltools) and `lut`
    (their LUTs, (groups, 2^bits, cluster_dim), exported after the trained groups' LUTs)."""

    def __init__(self, rows, lut):
        super().__init__()
        self.register_buffer("rows", rows.detach().clone())
        self.register_buffer("lut", lut.detach().clone())

    def forward(self, w):
        return torch.cat([w, self.rows.to(device=w.device, dtype=w.dtype)], 0)


class CastRound(nn.Module):
    """Parametrization w -> w.to(dtype).to(w.dtype): coremltools' lut_dtype f16 / b16 rounding of the
    palettized weights (autograd rounds the gradient the same way, as in coremltools)."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, w):
        return w.to(self.dtype).to(w.dtype)


def per_channel_scale(weight, scheme="min_max"):
    """coremltools' per_channel_scaling_factor of a weight (rows = output channels), shape (out, 1):
    scheme 'min_max' 0.5 (max - min) of each row, 'abs' max |w| of each row. A row whose factor is 0
    (a constant row with min_max, a zero row) makes coremltools divide by zero (NaN weights); here it
    gets max |w| of the row instead, or 1 for a zero row, so that it is clustered like the others."""
    rows = weight.detach().flatten(1)
    peak = rows.abs().max(1).values
    if scheme == "min_max":
        s = 0.5 * (rows.max(1).values - rows.min(1).values)
    elif scheme == "abs":
        s = peak
    else:
        raise ValueError(f"per_channel_scaling_factor_scheme: 'min_max' or 'abs', got {scheme!r}")
    fallback = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(s > 0, s, fallback).view(-1, 1)


def _chain(module):
    """(pre, DKMWeight, post) of a weight palettized through a chain of parametrizations
    ([RowScale], [AxisSwap], DKMWeight, [AxisSwap], [RowScale]), or None for a plain DKMWeight."""
    if not torch.nn.utils.parametrize.is_parametrized(module, "weight"):
        return None
    items = list(module.parametrizations["weight"])
    if isinstance(items[0], _et().DKMWeight) and len(items) == 1:
        return None
    i = next(i for i, p in enumerate(items) if isinstance(p, _et().DKMWeight))
    return items[:i], items[i], items[i + 1:]


def _through(parametrizations, w):
    for p in parametrizations:
        w = p(w)
    return w


def _clustered(module):
    """The tensor the DKM layer of module.weight clusters: the weight, or it after the chain's
    parametrizations before the DKM layer (divided by the per-channel scale, transposed for vectors
    along the output channels)."""
    plist = module.parametrizations["weight"]
    chain = _chain(module)
    return plist.original if chain is None else _through(chain[0], plist.original)


def _vector_layout(shape, opts):
    """(pre, post) parametrizations putting vectors of cluster_dim consecutive OUTPUT channels
    (coremltools' vectorize, vector axis 0) where libedkm's vectors run (along the rows): AxisSwap
    (w.transpose(0, -1)) for one LUT, GroupVectors with LUT groups. Also the layer options that
    then apply (group_size 1: a LUT per row of GroupVectors)."""
    if opts["cluster_dim"] == 1:
        return [], [], opts
    if not opts["group_size"] or opts["group_size"] == shape[0]:
        return [AxisSwap()], [AxisSwap()], dict(opts, group_size=0)
    g = opts["group_size"]
    return [GroupVectors(shape, g)], [GroupVectors(shape, g, inverse=True)], dict(opts, group_size=1)


def _frozen_rows(runtime, t, opts, dtype):
    """FrozenRows for the rows t (in the clustered frame) of the LUT groups that do not train:
    their centroids initialised as the trained groups' (per group), fake-quantized for lut_dtype
    i8 / u8, then every weight (vector) replaced by its nearest centroid (coremltools' palettize of a
    disabled partition: labels argmin of the distances with prune_threshold off centroid 0)."""
    et = _et()
    pre, post, layer_opts = _vector_layout(tuple(t.shape), opts)
    with torch.no_grad():
        tv = _through(pre, t).contiguous()
    dkm = et.DKMWeight(runtime, tv.shape, dtype, layer_opts, weight=tv)
    try:
        et._quantize_centroids(dkm)
        pt = dkm.export(tv)
        with torch.no_grad():
            rows = _through(post, pt.dense(dkm.layer)).to(t.device)
        return FrozenRows(rows, pt.lut.float())
    finally:
        dkm.close()


def _palettize_chain(module, runtime, opts, scale=None, rounding=None, permute=None, trained_groups=None,
                     scheme="min_max"):
    """Palettization as coremltools does it where libedkm's layer needs help around it, as a chain of
    parametrizations around the DKM layer: [Permute] (cluster_permute), [RowScale] (per-channel
    scale: divide before, multiply after), [FirstRows ... FrozenRows] (only the first trained_groups
    LUT groups train: percentage_palett_enable), [AxisSwap or GroupVectors] (vectors of cluster_dim
    consecutive output channels: coremltools' vectorize), DKMWeight, then the inverses in reverse
    order, [CastRound] (lut_dtype f16 / b16). The centroids start from the transformed weights now.
    The per-channel scale (factors `scale`, (out, 1), of `scheme`) is the core's (the layer's
    channel_scale with these factors) when the DKM layer's rows are the scaled rows: scalars with
    every LUT group training; RowScale otherwise (vectors: the layer's rows are those of the
    transposed tensor; frozen groups: the layer sees only the first rows)."""
    et = _et()
    w = module.weight
    if not isinstance(w, nn.Parameter):
        raise TypeError(f"edkm.torch.DKMPalettizer: {type(module).__name__}.weight is not a Parameter")
    pre, post = [], []
    if permute is not None:
        pre, post = [Permute(permute)], [Permute(permute).inverse()]
    rows_all = w.shape[permute[0] if permute is not None else 0]
    g = opts["group_size"] or rows_all
    in_core = scale is not None and opts["cluster_dim"] == 1 and not (
        trained_groups is not None and trained_groups * g < rows_all)
    if scale is not None and not in_core:
        pre, post = pre + [RowScale(scale, divide=True)], [RowScale(scale, divide=False)] + post
    with torch.no_grad():
        t = _through(pre, w.detach())
    if trained_groups is not None and trained_groups * g < t.shape[0]:
        rows = trained_groups * g
        post = [_frozen_rows(runtime, t[rows:], opts, w.dtype)] + post
        pre = pre + [FirstRows(rows)]
        t = t[:rows]
    vpre, vpost, opts = _vector_layout(tuple(t.shape), opts)
    pre, post = pre + vpre, vpost + post
    if rounding is not None:
        post = post + [CastRound(rounding)]
    with torch.no_grad():
        t = _through(vpre, t)
    dkm = et.DKMWeight(runtime, t.shape, w.dtype, dict(opts, channel_scale=scheme) if in_core else opts,
                       weight=t.contiguous(), channel_scale_factors=scale if in_core else None)
    dkm.train(module.training)
    for p in pre + [dkm] + post:
        torch.nn.utils.parametrize.register_parametrization(module, "weight", p, unsafe=True)


def _chain_coreml_metadata(pt, pre, post, ndim):
    """Core ML metadata (coremltools' CompressionMetadata fields) of a weight of rank ndim palettized
    through the chain pre -> DKM layer -> post (_palettize_chain), in the weight's own axes:
    {'lut': (blocks..., 2^bits, cluster_dim), 'vector_axis': int (vectors only),
    'palettization_scale': (per-channel scale only)}. In the clustered frame every LUT group and
    every scale runs along axis 0 and vectors along axis 0 (AxisSwap / GroupVectors); the frozen
    groups' LUTs follow the trained ones'; a cluster_permute then moves axis 0 to the weight's axis
    cluster_permute[0] (coremltools' own finalize leaves them on axis 0, where they describe another
    weight: Core ML then decodes wrong weights, or fails for the scale)."""
    lut = torch.cat([pt.lut.float()] + [p.lut for p in post if isinstance(p, FrozenRows)], 0)
    k, d = lut.shape[-2], lut.shape[-1]
    meta = {"lut": lut.reshape((lut.shape[0],) + (1,) * (ndim - 1) + (k, d)).to(pt.lut.dtype)}
    if any(isinstance(p, (AxisSwap, GroupVectors)) for p in pre):
        meta["vector_axis"] = 0
    scales = [p.scale for p in post if isinstance(p, RowScale)] + ([pt.scale] if pt.scale is not None else [])
    if scales:
        meta["palettization_scale"] = scales[0].detach().float().reshape((-1,) + (1,) * (ndim - 1))
    perms = [p.dims for p in pre if isinstance(p, Permute)]
    if perms:
        back = Permute(perms[0]).inverse().dims  # axis a of the weight is axis back[a] of the clustered frame
        meta["lut"] = meta["lut"].permute(back + (ndim, ndim + 1))
        if "vector_axis" in meta:
            meta["vector_axis"] = perms[0][0]
        if scales:
            meta["palettization_scale"] = meta["palettization_scale"].permute(back)
    return {key: v.contiguous().clone() if isinstance(v, torch.Tensor) else v for key, v in meta.items()}


class PalettizationReport(dict):
    """{module name: {figure: value}}; str() is a table. `runtime` holds the runtime's arena figures."""

    runtime = None

    def __str__(self):
        if not self:
            return "(no palettized modules)"
        cols = ["shape", "enabled", "bits", "group_size", "distinct_values", "centroid_min", "centroid_max",
                "effective_tau", "attention_entropy", "iterations", "error", "palettized_bytes"]
        rows = [["module"] + cols]
        for name, fig in self.items():
            rows.append([name or "(model)"] + [_fmt(fig.get(c)) for c in cols])
        width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [" | ".join(v.rjust(w) for v, w in zip(r, width)) for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in width))
        if self.runtime:
            rt = self.runtime
            lines.append(f"arena: {rt['arena_allocated']} bytes allocated, peak {rt['arena_peak']}; "
                         f"saved states on the heap: {rt['heap_saved']} bytes (peak {rt['heap_saved_peak']})")
        return "\n".join(lines)

    __repr__ = __str__


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "x".join(str(s) for s in v)
    return str(v)


class DKMPalettizer:
    """coremltools' DKMPalettizer on libedkm: prepare(), step() after each optimizer step,
    finalize(), report(). config: a DKMPalettizerConfig, its dictionary, or None (coremltools'
    default scheme). runtime: None (from the config, else a new edkm.Runtime), an edkm.Runtime, or a
    dict of Runtime options."""

    def __init__(self, model, config=None, runtime=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = DKMPalettizerConfig() if config is None else DKMPalettizerConfig.from_dict(config)
        self._model = model
        self._runtime_spec = runtime if runtime is not None else self.config.runtime
        self._runtime = None
        self._plan = {}  # name -> (module config, module type)
        self._started = set()
        self._step_count = 0
        self._prepared = False
        self._scales = {}  # name -> per-channel scale (out, 1) of modules with enable_per_channel_scale

    @property
    def runtime(self):
        return self._runtime

    def _select(self, model):
        plan = {}
        for name, module in model.named_modules(remove_duplicate=True):
            if type(module) not in SUPPORTED_MODULES:
                continue
            configs = self.config.module_configs(name, module)
            if not configs:
                continue
            cfg = _choose(configs, module)
            if cfg is None:
                continue
            if isinstance(module, nn.MultiheadAttention):
                raise NotImplementedError(
                    f"edkm.torch.DKMPalettizer: {name} is a MultiheadAttention; palettizing its projection "
                    f"weights is not implemented (skip it with module_type_configs={{'MultiheadAttention': None}} "
                    f"or module_name_configs={{{name!r}: None}})")
            shape = _permuted_shape(module.weight, cfg) if isinstance(module.weight, torch.Tensor) else None
            if shape and (cfg.cluster_dim or 1) > 1 and shape[0] % cfg.cluster_dim:
                raise NotImplementedError(
                    f"edkm.torch.DKMPalettizer: {name}: cluster_permute={cfg.cluster_permute} puts an axis of "
                    f"{shape[0]} first, which cluster_dim={cfg.cluster_dim} does not divide: the vectors would "
                    f"cross it (coremltools' vectorize), which Core ML's vector palettization cannot describe")
            plan[name] = (cfg, type(module))
        return plan

    def prepare(self, inplace=False):
        """Selects the modules (validating each one's options) and starts palettization on those whose
        milestone is 0. inplace=False works on a deep copy. Returns the model in training mode."""
        model = self._model if inplace else copy.deepcopy(self._model)
        model.train()
        plan = self._select(model)
        if self._runtime is None:
            self._runtime = _et()._runtime_from(self._runtime_spec)
        self._model, self._plan, self._started, self._step_count = model, plan, set(), 0
        # coremltools computes the per-channel scale at the module's first forward, before any
        # optimizer step (also before its milestone): from the weights as they are now
        # (of the weight's rows after cluster_permute, as coremltools)
        self._scales = {name: per_channel_scale(_permuted(model.get_submodule(name).weight, cfg),
                                                cfg.per_channel_scaling_factor_scheme)
                        for name, (cfg, _) in plan.items() if cfg.enable_per_channel_scale}
        self._prepared = True
        for name, (cfg, _) in plan.items():
            if cfg.milestone == 0:
                self._start(name)
        return model

    def _start(self, name, module=None, pending=True):
        """Palettizes module (default: the prepared model's module `name`) from its weights now;
        pending: marks it pending until its first forward (edkm._palettization_start)."""
        cfg, mtype = self._plan[name]
        opts = cfg.layer_options(mtype)
        scale = self._scales.get(name)
        rounding = _ROUNDING_TYPES.get(_LUT_DTYPES[cfg.lut_dtype])
        if module is None:
            module = self._model.get_submodule(name)
        permute = cfg.cluster_permute if cfg.cluster_permute != tuple(range(module.weight.dim())) else None
        groups = _permuted_shape(module.weight, cfg)[0] // opts["group_size"] if opts["group_size"] else 1
        # coremltools' _Partitioner: the first max(1, int(p * groups)) partitions train
        trained = min(groups, max(1, int(cfg.percentage_palett_enable * groups)))
        if opts["cluster_dim"] == 1 and scale is None and rounding is None and permute is None and trained == groups:
            _et().palettize(module, modules=[""], runtime=self._runtime, min_numel=0, **opts)
        else:
            _palettize_chain(module, self._runtime, opts, scale, rounding, permute, trained,
                             cfg.per_channel_scaling_factor_scheme)
        self._started.add(name)
        if pending:
            start.mark_pending(module, lambda m, changed: self._first_forward(name, m, changed))

    def _first_forward(self, name, module, weights_changed):
        """A started module's first forward (or report()): coremltools initialises its centroids
        from the weights now, so a palettization started on weights changed since starts again."""
        if weights_changed:
            start.unpalettize(module)
            self._start(name, module, pending=False)

    def step(self):
        """Call after each optimizer step: starts palettization of the modules whose milestone equals
        the number of step() calls before this one (coremltools' count)."""
        if not self._prepared:
            raise RuntimeError("edkm.torch.DKMPalettizer.step: call prepare() first")
        for name, (cfg, _) in self._plan.items():
            if name not in self._started and self._step_count == cfg.milestone:
                self._start(name)
        self._step_count += 1

    def finalize(self, model=None, inplace=False):
        """The model in eval mode with hard palettized weights and coremltools' metadata
        (edkm.torch.finalize). model: default the prepared one; inplace=False finalizes a copy."""
        if model is None:
            model = self._model
        model.eval()
        if not inplace:
            model = copy.deepcopy(model)
        for m in model.modules():
            if start.is_pending(m):  # started but never forwarded: coremltools leaves it plain
                start.clear(m)
                start.unpalettize(m)
        return _et().finalize(model)

    def report(self):
        """PalettizationReport: per selected module its shape, bits, group size, started or not,
        distinct values of the hard weights, centroid range (of the trained groups), error (RMSE
        weights vs hard weights, as coremltools), the last forward's effective temperature, attention
        entropy and iterations, the palettized size in bytes, the LUT groups that do not train
        (percentage_palett_enable); `.runtime` the runtime's arena figures."""
        for name in self._started:  # coremltools' report() runs every started module's first forward
            m = self._model.get_submodule(name)
            if start.is_pending(m):
                changed = start.weights_changed(m)
                start.clear(m)
                self._first_forward(name, m, changed)
        rep = PalettizationReport()
        by_name = {name: (m, p) for name, pname, m, p in _et().palettized(self._model) if pname == "weight"}
        for name, (cfg, mtype) in self._plan.items():
            opts = cfg.layer_options(mtype)
            fig = {"type": mtype.__name__, "enabled": name in by_name, "milestone": cfg.milestone,
                   "bits": opts["bits"], "n_clusters": 2 ** opts["bits"], "cluster_dim": opts["cluster_dim"],
                   "group_size": opts["group_size"]}
            if name in by_name:
                m, p = by_name[name]
                w = m.parametrizations.weight.original
                with torch.no_grad():
                    pt = p.export(_clustered(m))
                    hard = pt.dense()
                    chain = _chain(m)
                    if chain is not None:
                        hard = _through(chain[2], hard.to(w.device))
                    wf = w.detach().float()
                    stats = p.layer.stats()
                    # groups that do not train (percentage_palett_enable): their LUTs and labels
                    frozen = [q for q in (chain[2] if chain else []) if isinstance(q, FrozenRows)]
                    frozen_bytes = sum(q.lut.numel() * pt.lut.element_size() + q.lut.shape[0] * math.ceil(
                        q.rows.numel() // q.lut.shape[0] // opts["cluster_dim"] * opts["bits"] / 8) for q in frozen)
                    fig.update(shape=tuple(w.shape), device=str(w.device), **{"#params": w.numel()},
                               distinct_values=int(torch.unique(hard).numel()),
                               centroid_min=float(p.centroids.min()), centroid_max=float(p.centroids.max()),
                               error=float(torch.sqrt(torch.mean((wf - hard.float()) ** 2))),
                               effective_tau=float(stats.effective_tau),
                               attention_entropy=float(stats.attention_entropy),
                               iterations=int(stats.iterations), inertia=float(stats.inertia),
                               palettized_bytes=int(pt.nbytes) + frozen_bytes, dense_bytes=w.numel() * w.element_size(),
                               frozen_groups=sum(q.lut.shape[0] for q in frozen))
            else:
                w = self._model.get_submodule(name).weight
                fig.update(shape=tuple(w.shape), device=str(w.device), **{"#params": w.numel()})
            rep[name] = fig
        if self._runtime is not None:
            s = self._runtime.stats()
            rep.runtime = {k: getattr(s, k) for k in ("arena_allocated", "arena_peak", "arena_active",
                                                      "heap_saved", "heap_saved_peak", "live_saved_states")}
        return rep
