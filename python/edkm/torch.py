"""edkm.torch: libedkm for PyTorch models (CPU tensors; device tensors through edkm.torch_device).

    import edkm.torch as et
    et.palettize(model, bits=4, group_size=0, modules=(nn.Linear,))   # DKM on the chosen weights
    ...  # an ordinary training loop: the parametrized weights are the soft-clustered ones
    et.finalize(model)                       # hard palettized weights + coremltools metadata buffers
    et.export_safetensors(model, "m.safetensors")   # <name>.lut + <name>.indices per tensor
    state = et.load_safetensors("m.safetensors")    # dense tensors again

Pieces:
- `DKMFunction` / `dkm(weight, layer)`: an autograd Function over `Layer.forward` and
  `SavedState.backward`. Weights of dtype float32, float16 or bfloat16 go to the library without
  copies (CPU, contiguous; bfloat16 as its 16-bit patterns). The saved state is released right after
  the backward, or when the autograd graph is freed if the backward never runs.
- `DKMWeight`: the torch.nn.utils.parametrize parametrization `palettize` registers. In training mode
  it returns the soft-clustered weights (DKM); in eval mode the hard palettized weights (nearest
  centroid), as coremltools' FakePalettize does. Its centroids are a buffer, so they are part of the
  model's state_dict and come back with load_state_dict.
- `palettize`, `finalize`, `export_safetensors`, `load_safetensors`, `communicator` (a
  torch.distributed process group lent to the library, for EDKM_SAVED_SHARD).

Imports torch: import this module only where torch is installed (`import edkm` alone does not).
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize as _parametrize

from . import core as _core
from . import palettized_file as _pf
from .core import DType, EdkmError, Layer, Runtime, unpack_labels
from .torch_device import DeviceDKMFunction, HostLink, device_dkm, layer_factors_on

__all__ = [
    "DKMFunction",
    "DKMWeight",
    "PalettizedTensor",
    "dkm",
    "device_dkm",
    "DeviceDKMFunction",
    "HostLink",
    "palettize",
    "palettized",
    "finalize",
    "export_safetensors",
    "load_safetensors",
    "communicator",
    "tensor_as_numpy",
    "COREML_PREFIX",
    "COREML_METADATA_VERSION_BUFFER",
    "SAFETENSORS_FORMAT",
]

# coremltools.optimize.torch._utils.metadata_utils: STATE_DICT_METADATA_BUFFER_PREFIX, the separator,
# METADATA_VERSION_BUFFER / METADATA_VERSION, CompressionType.palettization.
COREML_PREFIX = "_COREML_"
COREML_METADATA_VERSION_BUFFER = COREML_PREFIX + "/metadata_version"
COREML_METADATA_VERSION = 1
COREML_PALETTIZATION = 2
COREML_QUANTIZATION = 3

SAFETENSORS_FORMAT = _pf.FORMAT_VALUE  # include/edkm-palettized-format.md, shared with the CLI

_TORCH_TO_EDKM = {torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16}
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}  # safetensors' names
_NAME_TO_DTYPE = {v: k for k, v in _DTYPE_NAMES.items()}


# ============================ tensors <-> numpy, without copies ============================


def tensor_as_numpy(t, what="tensor"):
    """(numpy view, edkm DType) of a CPU, contiguous float32/float16/bfloat16 tensor; no copy.

    bfloat16 becomes a uint16 view of its bit patterns (the library's EDKM_DTYPE_BF16)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; libedkm works on CPU tensors (move the model with .cpu())")
    code = _TORCH_TO_EDKM.get(t.dtype)
    if code is None:
        raise TypeError(f"{what} has dtype {t.dtype}; libedkm takes float32, float16 or bfloat16")
    if not t.is_contiguous():
        raise ValueError(f"{what} is not contiguous (shape {tuple(t.shape)}, strides {t.stride()})")
    t = t.detach()
    if code == DType.BF16:
        arr = t.view(torch.int16).numpy().view(np.uint16)
    else:
        arr = t.numpy()
    return arr, code


def _contiguous(t):
    return t if t.is_contiguous() else t.contiguous()


# ============================ autograd ============================


class _SavedBox:
    """Holds one forward's SavedState; closes it after the backward or when freed with the graph."""

    __slots__ = ("state", "backward_done")

    def __init__(self, state):
        self.state = state
        self.backward_done = False

    def close(self):
        s, self.state = self.state, None
        if s is not None:
            s.close()

    def __del__(self):  # the graph was freed without a backward
        try:
            self.close()
        except Exception:
            pass


class DKMFunction(torch.autograd.Function):
    """w~ = DKM(w): libedkm's forward, and its backward through every k-means iteration.

    apply(weight, layer): weight a CPU float32/float16/bfloat16 tensor of layer.shape (contiguous:
    passed without a copy; otherwise copied once); returns w~ in the weight's dtype, contiguous.
    The centroids get no gradient (docs/design.md, part 1 (the math))."""

    @staticmethod
    def forward(ctx, weight, layer):
        if weight.is_contiguous():
            w_src, ctx.copied = weight, None
        else:  # e.g. channels_last conv weights: one contiguous copy, kept for the backward
            w_src = ctx.copied = weight.detach().contiguous()
        w, code = tensor_as_numpy(w_src, "weight")
        out = torch.empty_like(w_src, memory_format=torch.contiguous_format)
        out_np, _ = tensor_as_numpy(out, "out")
        _, saved = layer.forward(w, dtype=code, out=out_np)
        ctx.box = _SavedBox(saved)
        if ctx.copied is None:
            ctx.save_for_backward(weight)  # no copy: the parameter itself (HISTOGRAM mode re-reads it)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        box = ctx.box
        if box.state is None:
            raise RuntimeError("edkm: a DKM backward ran twice on one forward; the saved state is released "
                               "after the first backward (retain_graph=True is not supported)")
        weight = ctx.copied if ctx.copied is not None else ctx.saved_tensors[0]
        w, code = tensor_as_numpy(weight, "weight")
        g = _contiguous(grad_out.to(weight.dtype))
        g_np, _ = tensor_as_numpy(g, "grad_output")
        grad_in = torch.empty_like(g, memory_format=torch.contiguous_format)
        gi_np, _ = tensor_as_numpy(grad_in, "grad_input")
        try:
            box.state.backward(g_np, weights=w, dtype=code, out=gi_np)
        finally:
            box.close()
        return grad_in, None


def dkm(weight, layer):
    """The soft-clustered weights of `weight` through `layer` (an edkm.Layer), differentiable."""
    return DKMFunction.apply(weight, layer)


# ============================ the parametrization ============================


@dataclass
class PalettizedTensor:
    """The hard palettization of one tensor, in the library's export layout.

    lut: torch tensor (groups, 2^bits, cluster_dim) in the tensor's dtype (the values the dense
    weights hold, in the scaled units with a channel scale); packed: numpy uint8, each group's labels
    `bits` bits each, LSB first, every group starting on a byte boundary; scale: None, or the
    channel scale factors (float32, (shape[0],)): then row r of the dense tensor is lut[label] x
    scale[r]."""

    lut: torch.Tensor
    packed: np.ndarray
    bits: int
    group_size: int
    cluster_dim: int
    shape: tuple
    dtype: torch.dtype
    scale: torch.Tensor = None

    @property
    def groups(self):
        return self.lut.shape[0]

    def labels(self):
        per_group = int(np.prod(self.shape)) // self.cluster_dim // self.groups
        return unpack_labels(self.packed, self.bits, self.groups, per_group)

    def record(self, name, runtime=None):
        """The format's record of this tensor (palettized_file.Record), with a layer of its
        geometry made in runtime (default: a one-thread runtime of its own)."""
        r = _pf.Record(name, _DTYPE_NAMES[self.dtype], tuple(self.shape), self.bits, self.group_size,
                       self.cluster_dim, name + ".lut", name + ".indices",
                       name + ".scale" if self.scale is not None else None)
        r.layer = Layer(runtime or Runtime(num_threads=1), self.shape, bits=self.bits, group_size=self.group_size,
                        cluster_dim=self.cluster_dim)
        return r

    def dense(self, layer=None):
        """The dense tensor lut[label] (shape, dtype), through edkm_layer_unpack (layer: one of
        this tensor's geometry, else one is made); with a channel scale lut[label] x scale[row],
        rounded once to dtype."""
        layer = layer or self.record("tensor").layer
        out = torch.empty(self.shape, dtype=self.dtype if self.scale is None else torch.float32)
        lut = self.lut.detach().cpu()
        lut = lut.float() if lut.dtype == torch.bfloat16 else lut  # the library reads f32/f16 LUTs; exact
        arr, code = tensor_as_numpy(out, "out")
        layer.unpack(lut.contiguous().numpy().reshape(-1), np.ascontiguousarray(self.packed).reshape(-1),
                     out=arr.reshape(-1), out_dtype=code)
        if self.scale is None:
            return out
        rows = out.reshape(out.shape[0], -1) * self.scale.detach().cpu().float().reshape(-1, 1)
        return rows.reshape(self.shape).to(self.dtype)

    def coreml_lut(self, ndim=None):
        """The LUT in coremltools' metadata shape: (groups, 1, ..., 1, 2^bits, cluster_dim), rank
        ndim + 2 (coremltools: stack the per-partition centroids, unsqueeze(-3) until it has the
        weight's rank + 2; the groups run along axis 0)."""
        ndim = len(self.shape) if ndim is None else ndim
        lut = self.lut
        while lut.dim() < ndim + 2:
            lut = lut.unsqueeze(-3)
        return lut.contiguous()

    def coreml_scale(self, ndim=None):
        """coremltools' palettization_scale: the channel scale factors as (shape[0], 1, ..., 1),
        float32, rank ndim (default the tensor's); None without a channel scale."""
        if self.scale is None:
            return None
        ndim = len(self.shape) if ndim is None else ndim
        return self.scale.detach().float().reshape((-1,) + (1,) * (ndim - 1)).clone()

    @property
    def nbytes(self):
        extra = 0 if self.scale is None else self.scale.numel() * 4
        return self.lut.numel() * self.lut.element_size() + self.packed.nbytes + extra


class DKMWeight(nn.Module):
    """Parametrization putting DKM on one weight (registered by `palettize`).

    training mode: the soft-clustered weights w~ (differentiable when grad is enabled);
    eval mode: the hard palettized weights (each weight replaced by its nearest centroid).
    The centroids (float32, (groups, 2^bits, cluster_dim)) are the buffer `centroids`."""

    def __init__(self, runtime, shape, dtype, layer_options, weight=None, device_split=None, channel_scale_factors=None):
        """channel_scale_factors: with layer_options' channel_scale, the factors to use (one per
        row; default: fixed by the library from the first weights it sees); they are the buffer
        `channel_scale`, constants (no gradient). On the device split (weights off the CPU, or
        device_split=True) the factors go to the weight's device once and the weights are
        divided there (edkm.torch_device: same results as the buffer form)."""
        super().__init__()
        self.runtime = runtime
        self.device_split = device_split
        self.link = HostLink()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.layer_options = dict(layer_options)
        self.layer = Layer(runtime, self.shape, **self.layer_options)
        self.register_buffer("centroids", torch.zeros(self.layer.groups, self.layer.k, self.layer.cluster_dim))
        self.has_channel_scale = self.layer.config["channel_scale"] != _core.CHANNEL_SCALES["none"]
        if self.has_channel_scale:
            self.register_buffer("channel_scale", torch.ones(self.shape[0]))
            if channel_scale_factors is not None:
                self.layer.channel_scale_factors = np.ascontiguousarray(
                    torch.as_tensor(channel_scale_factors).detach().cpu().float().reshape(-1).numpy())
        elif channel_scale_factors is not None:
            raise ValueError("edkm: channel_scale_factors need a layer with a channel_scale")
        self._push_centroids = False
        self._hard_cache = None
        self._forwards = 0
        self._scale_pulled = False  # whether the buffer `channel_scale` holds the layer's factors
        self._device_scale = None  # (device, RowFactors): the factors on the device split's device
        if weight is not None:
            if weight.device.type != "cpu" and self.layer.cluster_dim > 1:
                raise ValueError(f"edkm: cluster_dim {self.layer.cluster_dim} has no 16-bit value histogram, so it "
                                 f"cannot run on {weight.device}; palettize vectors on a CPU model")
            # once, at palettize time: a host copy of a device weight to initialise the centroids
            w, code = tensor_as_numpy(_contiguous(weight.detach().cpu()), "weight")
            self.layer.init_centroids(w, dtype=code)
            self._pull_centroids()

    # -- configuration --

    @property
    def bits(self):
        return self.layer.bits

    @property
    def group_size(self):
        return self.layer.group_size

    @property
    def cluster_dim(self):
        return self.layer.cluster_dim

    def extra_repr(self):
        return (f"shape={self.shape}, dtype={_DTYPE_NAMES[self.dtype]}, bits={self.bits}, "
                f"group_size={self.group_size}, cluster_dim={self.cluster_dim}, tau={self.layer.config['tau']:g} "
                f"({_core.TemperatureMode(self.layer.config['temperature_mode']).name.lower()})")

    # -- centroids <-> buffer --

    def _pull_centroids(self):
        with torch.no_grad():
            self.centroids.copy_(torch.from_numpy(self.layer.centroids))
            if self.has_channel_scale and not self._scale_pulled:  # the factors change only when fixed or set
                self.channel_scale.copy_(torch.from_numpy(self.layer.channel_scale_factors))
                self._scale_pulled = True
        self._forwards += 1

    def _sync_in(self):
        if self._push_centroids:
            c = np.ascontiguousarray(self.centroids.detach().cpu().numpy(), dtype=np.float32)
            self.layer.set_centroids(c)
            if self.has_channel_scale:
                self._device_scale = None
                self.layer.channel_scale_factors = np.ascontiguousarray(
                    self.channel_scale.detach().cpu().numpy(), dtype=np.float32)
                self._scale_pulled = True
            self._push_centroids = False
            self._forwards += 1

    def _device_factors(self, w):
        """The layer's channel scale factors on w's device (edkm.torch_device.RowFactors), kept
        from forward to forward; None without a channel scale. Not fixed yet: fixed now from w on
        its device (the library's formula) and set into the layer."""
        if not self.has_channel_scale:
            return None
        if self._device_scale is None or self._device_scale[0] != w.device:
            self._device_scale = (w.device, layer_factors_on(w, self.layer, self.link))
        return self._device_scale[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._push_centroids = True

    def _check(self, w):
        if tuple(w.shape) != self.shape:
            raise ValueError(f"edkm: weight of shape {tuple(w.shape)}, the layer was made for {self.shape}")
        if w.dtype != self.dtype:
            raise TypeError(f"edkm: weight dtype changed from {self.dtype} to {w.dtype}; palettize after "
                            f"converting the model's dtype")

    # -- forward --

    def uses_device_split(self, w):
        """Whether w takes the device split (torch ops on w's device + the histogram form) rather
        than the buffer form: always for non-CPU tensors; for CPU tensors when device_split=True
        (the default, None, keeps the buffer form there: it measured faster, see the README)."""
        if w.device.type != "cpu":
            if self.device_split is False:
                raise ValueError(f"edkm: the weight is on {w.device} and device_split=False; the buffer form needs "
                                 f"CPU tensors")
            return True
        return bool(self.device_split)

    def forward(self, w):
        self._check(w)
        self._sync_in()
        if not self.training:
            return self.hard(w)
        if self.uses_device_split(w):
            out = DeviceDKMFunction.apply(w, self.layer, self.link, None, self._device_factors(w))
        elif torch.is_grad_enabled() and w.requires_grad:
            out = DKMFunction.apply(w, self.layer)
        else:
            wn, code = tensor_as_numpy(_contiguous(w.detach()), "weight")
            out = torch.empty_like(w, memory_format=torch.contiguous_format)
            self.layer.forward(wn, dtype=code, save=False, out=tensor_as_numpy(out, "out")[0])
        self._pull_centroids()
        return out

    def export(self, w):
        """PalettizedTensor of w with the current centroids (export; the LUT cast to w's dtype)."""
        self._check(w)
        self._sync_in()
        wn, code = tensor_as_numpy(_contiguous(w.detach().cpu()), "weight")  # export: a host copy of a device weight
        lut, packed = self.layer.export(wn, "f32", dtype=code)
        lut_t = torch.from_numpy(np.ascontiguousarray(lut).reshape(self.layer.groups, self.layer.k,
                                                                  self.layer.cluster_dim)).to(self.dtype)
        scale = torch.from_numpy(self.layer.channel_scale_factors) if self.has_channel_scale else None
        return PalettizedTensor(lut=lut_t, packed=packed, bits=self.bits, group_size=self.group_size,
                                cluster_dim=self.cluster_dim, shape=self.shape, dtype=self.dtype, scale=scale)

    def hard(self, w):
        """The hard palettized weights (cached while the weights and centroids are unchanged)."""
        key = (w.data_ptr(), w._version, self._forwards)
        if self._hard_cache is not None and self._hard_cache[0] == key:
            return self._hard_cache[1]
        with torch.no_grad():
            out = self.export(w).dense(self.layer).to(w.device)
        self._hard_cache = (key, out)
        return out

    def close(self):
        """Releases the library layer (after finalize)."""
        self.layer.close()
        self._hard_cache = None

    def __deepcopy__(self, memo):
        """A new library layer on the same runtime, with a copy of the centroids."""
        new = DKMWeight.__new__(DKMWeight)
        memo[id(self)] = new
        nn.Module.__init__(new)
        new.runtime = self.runtime
        new.shape = self.shape
        new.dtype = self.dtype
        new.layer_options = dict(self.layer_options)
        new.device_split = self.device_split
        new.link = HostLink()
        new.training = self.training
        new.layer = Layer(self.runtime, self.shape, **self.layer_options)
        new.register_buffer("centroids", self.centroids.detach().clone())
        new.layer.set_centroids(np.ascontiguousarray(new.centroids.numpy()))
        new.has_channel_scale = self.has_channel_scale
        if self.has_channel_scale:
            new.register_buffer("channel_scale", self.channel_scale.detach().clone())
            try:
                new.layer.channel_scale_factors = self.layer.channel_scale_factors
            except EdkmError:  # not fixed yet: the copy fixes its own from the first weights it sees
                pass
        new._push_centroids = False
        new._hard_cache = None
        new._forwards = 0
        new._scale_pulled = False
        new._device_scale = None
        for k, v in self._forward_hooks.items():  # hooks are rare on parametrizations; keep them
            new._forward_hooks[k] = copy.deepcopy(v, memo)
        return new

    def __getstate__(self):
        raise TypeError("edkm.torch.DKMWeight holds a native libedkm layer and cannot be pickled; save the "
                        "model's state_dict (centroids are in it), or finalize() first")


# ============================ palettize / finalize ============================

_DEFAULT_MODULES = (nn.Linear, nn.Embedding, nn.Conv2d)


def _selector(modules):
    """A predicate (qualified_name, module) -> bool from the `modules` argument of palettize."""
    if modules is None:
        modules = _DEFAULT_MODULES
    if isinstance(modules, type):
        modules = (modules,)
    if callable(modules) and not isinstance(modules, type):
        return modules
    if isinstance(modules, str):
        pattern = re.compile(modules)
        return lambda name, m: pattern.search(name) is not None
    if isinstance(modules, re.Pattern):
        return lambda name, m: modules.search(name) is not None
    items = tuple(modules)
    types_ = tuple(x for x in items if isinstance(x, type))
    names = {x for x in items if isinstance(x, str)}
    other = [x for x in items if not isinstance(x, (type, str))]
    if other:
        raise TypeError(f"modules: expected module types, names, a regex string or a callable, got {other!r}")
    return lambda name, m: (types_ and isinstance(m, types_)) or name in names


def _runtime_from(runtime):
    if runtime is None:
        return Runtime()
    if isinstance(runtime, Runtime):
        return runtime
    if isinstance(runtime, dict):
        return Runtime(**runtime)
    raise TypeError(f"runtime: expected None, an edkm.Runtime or a dict of Runtime options, got {type(runtime).__name__}")


def palettized(model):
    """[(qualified module name, tensor name, module, DKMWeight)] for every DKM parametrization in model."""
    found = []
    for name, m in model.named_modules():
        if not _parametrize.is_parametrized(m):
            continue
        for pname, plist in m.parametrizations.items():
            for p in plist:
                if isinstance(p, DKMWeight):
                    found.append((name, pname, m, p))
    return found


def palettize(model, bits=None, group_size=None, cluster_dim=None, tau=None, modules=_DEFAULT_MODULES, runtime=None,
              min_numel=0, tensor_name="weight", device_split=None, **layer_options):
    """Puts DKM on the weights of the chosen modules (torch.nn.utils.parametrize), in place.

    bits, group_size (0 = one LUT per tensor, g = a LUT per g output rows), cluster_dim, tau and any
    other edkm.Layer option (temperature_mode, max_iterations, epsilon, zero_threshold,
    prune_threshold, init, algorithm, f32_key_dtype, seed, enforce_zero, lut_dtype, channel_scale:
    'min_max' / 'abs' = coremltools' per-channel scale) configure each weight's layer; None (the
    default of each) keeps the library's default (bits 4, one LUT per tensor, scalars; the
    temperature thresholds follow temperature_mode: scale-free tau 0.1 x each tensor's k-means
    distortion, or with temperature_mode='absolute' coremltools' semantics and tau 1e-4). f32
    weights take the library's dense path unless f32_key_dtype='f16' or 'bf16' (much faster: the
    histogram path on the rounded keys).
    modules: module types (default Linear, Embedding, Conv2d), qualified names, a regex string
    matched against the qualified module name, or a callable (name, module) -> bool.
    runtime: None (a new edkm.Runtime shared by these weights), an edkm.Runtime, or a dict of
    Runtime options (e.g. {"saved_mode": "shard", "communicator": edkm.torch.communicator()}).
    min_numel: modules whose weight has fewer elements are left alone.
    Weights already palettized are skipped, so palettize may be called again with another filter
    and other options. The centroids are initialised from the weights now (layer init, default the
    exact 1-D k-means). Returns the model.
    Weights on a device (CUDA, MPS) stay there: the O(N) passes run as torch ops on the device and
    only U-sized tables cross to libedkm on the host (edkm.torch_device); device_split=True
    routes CPU weights that way too (the default keeps CPU weights on the buffer form, which
    measured faster). Vector clustering (cluster_dim > 1) needs CPU weights."""
    select = _selector(modules)
    rt = _runtime_from(runtime)
    opts = dict(layer_options, bits=bits, group_size=group_size, cluster_dim=cluster_dim, tau=tau)
    done = {(n, p) for n, p, _, _ in palettized(model)}
    chosen = []
    for name, m in model.named_modules():
        if (name, tensor_name) in done or not select(name, m):
            continue
        if _parametrize.is_parametrized(m, tensor_name):
            raise ValueError(f"edkm: {name}.{tensor_name} already has another parametrization")
        w = getattr(m, tensor_name, None)
        if not isinstance(w, nn.Parameter):
            continue
        if w.numel() < min_numel:
            continue
        chosen.append((name, m, w))
    for name, m, w in chosen:
        try:
            p = DKMWeight(rt, w.shape, w.dtype, opts, weight=w, device_split=device_split)
        except EdkmError as e:
            where = f"edkm.torch.palettize: {name or type(m).__name__}.{tensor_name} {tuple(w.shape)}"
            raise EdkmError(e.status, e.message, f"{where}: {e.function}", e.status_name) from e
        p.train(m.training)
        _parametrize.register_parametrization(m, tensor_name, p, unsafe=True)
    return model


def _coreml_metadata(pt):
    """Core ML metadata of a weight palettized by its DKM layer alone: lut (groups, 1, ..., 2^bits,
    cluster_dim) with the groups along axis 0, and vector_axis (the last axis: libedkm's d-vectors
    are consecutive elements of a row) for cluster_dim > 1, and palettization_scale (out, 1, ...)
    with a channel scale."""
    meta = {"lut": pt.coreml_lut()}
    if pt.cluster_dim > 1:
        if pt.shape[-1] % pt.cluster_dim:
            warnings.warn(f"edkm: {pt.shape}: cluster_dim {pt.cluster_dim} does not divide the last axis, so the "
                          f"vectors cross axes and Core ML's vector_axis cannot describe them", stacklevel=4)
        meta["vector_axis"] = len(pt.shape) - 1
    if pt.scale is not None:
        meta["palettization_scale"] = pt.coreml_scale()
    return meta


def _register_coreml_metadata(module, pname, meta, lut_dtype="f32"):
    """The buffers coremltools' finalize registers for one palettized parameter
    (CompressionMetadata(param_name).register(module)): compression_type (palettization appended to
    an existing one), lut, vector_axis and palettization_scale where `meta` has them. lut_dtype 'i8'
    / 'u8' (LUTs quantized in training) adds Core ML's joint palettization + quantization metadata:
    compression_type ... 3, quantization_n_bits 8, quantization_scale (and zero_point for u8), one
    per LUT, shaped like the LUT with its last two axes 1 (coremltools.convert then stores each LUT
    as 8-bit integers: constexpr_blockwise_shift_scale on an int8 / uint8 LUT feeding
    constexpr_lut_to_dense)."""
    base = f"{COREML_PREFIX}/{pname}/"
    ctype = [COREML_PALETTIZATION]
    try:
        ctype = module.get_buffer(base + "compression_type").tolist() + ctype
    except AttributeError:
        pass
    lut = meta["lut"]
    if lut_dtype in ("i8", "u8"):
        ctype.append(COREML_QUANTIZATION)
        blocks = lut.reshape((-1,) + tuple(lut.shape[-2:])).detach().cpu().numpy()
        params = [_core.lut_quantization(b, lut_dtype) for b in blocks]
        shape = tuple(lut.shape[:-2]) + (1, 1)
        module.register_buffer(base + "quantization_n_bits", torch.tensor(8))
        module.register_buffer(base + "quantization_scale",
                               torch.tensor([q[0] for q in params], dtype=torch.float32).reshape(shape))
        if lut_dtype == "u8":
            module.register_buffer(base + "zero_point",
                                   torch.tensor([q[1] for q in params], dtype=torch.float32).reshape(shape))
    module.register_buffer(base + "compression_type", torch.tensor(ctype))
    for key, value in meta.items():
        module.register_buffer(base + key, value if isinstance(value, torch.Tensor) else torch.tensor(value))


def _quantize_centroids(p):
    """For lut_dtype i8 / u8: puts every LUT of DKMWeight p on its own 8-bit grid (the layer's
    fake quantization, edkm_lut_dtype; a no-op for LUTs a training forward left there), so that
    the exported LUT is the one Core ML stores. Other lut_dtypes: nothing."""
    lut_dtype = p.layer_options.get("lut_dtype")
    if lut_dtype not in ("i8", "u8"):
        return
    lo, hi = (-128, 127) if lut_dtype == "i8" else (0, 255)
    c = np.array(p.layer.centroids, dtype=np.float64).reshape(p.layer.groups, -1)
    moved = False
    for g in range(c.shape[0]):
        scale, zero = _core.lut_quantization(c[g], lut_dtype)
        q = c[g] / scale + zero
        if np.abs(q - np.round(q)).max() > 1e-3:  # not on its grid yet (no training forward since init)
            c[g] = (np.clip(np.round(q), lo, hi) - zero) * scale
            moved = True
    if moved:
        p.layer.set_centroids(np.ascontiguousarray(c.reshape(p.centroids.shape), dtype=np.float32))
        p._pull_centroids()


def _finalize_weight(m, pname, p, coreml_metadata):
    """finalize for one DKM parametrization p of m.<pname>, alone or in a chain of
    parametrizations (edkm.palettizer: cluster_permute, per-channel scale, frozen groups, vectors
    along the output channels, f16 rounding): the hard weights into the Parameter, the Core ML
    metadata in the weight's own axes."""
    plist = m.parametrizations[pname]
    items = list(plist)
    i = next(j for j, q in enumerate(items) if q is p)
    pre, post = items[:i], items[i + 1:]
    original = plist.original
    _quantize_centroids(p)
    with torch.no_grad():
        clustered = _through(pre, original.detach())
        pt = p.export(clustered)
        hard = _through(post, pt.dense(p.layer).to(original.device))
    _own_class(m)
    _parametrize.remove_parametrizations(m, pname, leave_parametrized=False)
    with torch.no_grad():
        getattr(m, pname).copy_(hard)
    if not pre and not post:  # the export describes the weight itself (export_safetensors)
        if not hasattr(m, "_edkm_palettized"):
            m._edkm_palettized = {}
        m._edkm_palettized[pname] = pt
    if coreml_metadata:
        meta = _chain_coreml_metadata(pt, pre, post, original.dim()) if pre or post else _coreml_metadata(pt)
        _register_coreml_metadata(m, pname, meta, p.layer_options.get("lut_dtype") or "f32")
    p.close()


def _own_class(module):
    """Gives a parametrized module a class of its own before its parametrization is removed.

    torch.nn.utils.parametrize injects a class (e.g. ParametrizedLinear) holding the parametrized
    tensor as a property; copy.deepcopy shares that class between the copies, so removing the
    parametrization from one copy (delattr on the class) would break the others."""
    cls = module.__class__
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def finalize(model, coreml_metadata=True):
    """Replaces every DKM parametrization with the hard palettized weights, in place.

    Each weight becomes lut[label] (export with the layer's centroids, then unpack: at most 2^bits
    distinct values per LUT group), written into the original Parameter (optimizers keep it). With
    coreml_metadata, registers the buffers coremltools' DKMPalettizer.finalize registers:
    `<module>._COREML_/weight/compression_type` ([2] = palettization), `..._COREML_/weight/lut`
    (shape (groups, 1, ..., 2^bits, cluster_dim): weight rank + 2), `vector_axis` for
    cluster_dim > 1, and `_COREML_/metadata_version` (1) on the model, so that coremltools.convert
    emits constexpr_lut_to_dense. A layer with lut_dtype 'i8' / 'u8' adds Core ML's LUT quantization
    metadata (its LUTs first put on their 8-bit grid if no training forward has). A weight that
    DKMPalettizer palettized through a chain of parametrizations (cluster_permute, per-channel scale,
    frozen LUT groups, vectors along the output channels, f16 rounding) is finalized through it, with
    the metadata in the weight's own axes (palettization_scale included): the same code serves
    DKMPalettizer.finalize. The palettization of a weight palettized alone is also kept as
    `module._edkm_palettized[name]` (a PalettizedTensor) for export_safetensors. Returns the model."""
    for _, pname, m, p in palettized(model):
        _finalize_weight(m, pname, p, coreml_metadata)
    if coreml_metadata:
        model.register_buffer(COREML_METADATA_VERSION_BUFFER, torch.tensor(COREML_METADATA_VERSION))
    return model


# ============================ safetensors ============================


def _from_coreml_buffers(m, pname, w):
    """A PalettizedTensor for a weight finalized elsewhere (e.g. coremltools, or a reloaded state
    dict): the LUT from the _COREML_ buffers, the labels by nearest LUT entry (edkm_layer_export
    of a layer whose centroids are the LUT, prune_threshold 0)."""
    lut = m.get_buffer(f"{COREML_PREFIX}/{pname}/lut").detach()
    k, d = lut.shape[-2], lut.shape[-1]
    bits = int(np.log2(k))
    if 2 ** bits != k:
        raise ValueError(f"{pname}: LUT of {k} entries is not a power of two")
    blocks = lut.shape[:-2]
    if any(b != 1 for b in blocks[1:]):
        raise NotImplementedError(f"{pname}: LUT blocked along axes other than 0 ({tuple(blocks)})")
    if d > 1:
        axis = int(m.get_buffer(f"{COREML_PREFIX}/{pname}/vector_axis")) % w.dim()
        if axis != w.dim() - 1:
            raise NotImplementedError(f"{pname}: vector_axis {axis}; edkm's vectors run along the last axis")
    groups = blocks[0]
    lut3 = lut.reshape(groups, k, d).to(w.dtype)
    group_size = 0 if groups == 1 else w.shape[0] // groups
    layer = Layer(Runtime(num_threads=1), tuple(w.shape), bits=bits, group_size=group_size, cluster_dim=d,
                  prune_threshold=0.0)
    layer.set_centroids(lut3.float().numpy())
    try:  # a per-channel scale: the LUT is in the scaled units, the labels those of w / scale
        scale = m.get_buffer(f"{COREML_PREFIX}/{pname}/palettization_scale").detach().cpu().float().reshape(-1)
    except AttributeError:
        scale = None
    source = w.detach().cpu()
    if scale is not None:
        source = (source.float().reshape(w.shape[0], -1) / scale.reshape(-1, 1)).reshape(w.shape).to(w.dtype)
    _, packed = layer.export(tensor_as_numpy(_contiguous(source), pname)[0], "f32")
    return PalettizedTensor(lut=lut3.contiguous(), packed=packed, bits=bits, group_size=group_size,
                            cluster_dim=d, shape=tuple(w.shape), dtype=w.dtype, scale=scale)


def _collect(model):
    """(palettized: OrderedDict name -> PalettizedTensor, other: OrderedDict name -> tensor)."""
    pal = OrderedDict()
    skip_prefixes = set()
    for name, pname, m, p in palettized(model):
        full = f"{name}.{pname}" if name else pname
        pal[full] = p.export(m.parametrizations[pname].original)
        skip_prefixes.add((f"{name}." if name else "") + f"parametrizations.{pname}.")
    for name, m in model.named_modules():
        for pname, pt in getattr(m, "_edkm_palettized", {}).items():
            full = f"{name}.{pname}" if name else pname
            w = getattr(m, pname)
            if not torch.equal(pt.dense(), w.detach()):  # changed since finalize: re-derive
                pt = _from_coreml_buffers(m, pname, w)
            pal[full] = pt
        for bname, _ in m.named_buffers(recurse=False):
            if bname.startswith(COREML_PREFIX + "/") and bname.endswith("/lut"):
                pname = bname[len(COREML_PREFIX) + 1:-len("/lut")]
                full = f"{name}.{pname}" if name else pname
                if full not in pal:
                    pal[full] = _from_coreml_buffers(m, pname, getattr(m, pname))
    other = OrderedDict()
    for key, val in model.state_dict(keep_vars=False).items():
        if COREML_PREFIX in key or key in pal or any(key.startswith(s) for s in skip_prefixes):
            continue
        if ".parametrizations." in key or key.startswith("parametrizations."):
            # another library's parametrization: store the tensor the module sees
            head, _, tail = key.partition("parametrizations.")
            pname = tail.split(".", 1)[0]
            full = head + pname
            if full not in other and full not in pal:
                mod = model.get_submodule(head[:-1]) if head else model
                other[full] = getattr(mod, pname).detach()
            continue
        other[key] = val
    return pal, other


def export_safetensors(model, path, include_other=True, metadata=None):
    """Writes model as a palettized safetensors file (include/edkm-palettized-format.md, the format
    `edkm unpack` and `edkm info` read): every palettized tensor as `<name>.lut` ((groups, 2^bits,
    cluster_dim), the tensor's dtype) and `<name>.indices` (uint8, the packed labels: `bits` bits
    each, LSB first, each group starting on a byte boundary), described by the metadata entry
    `edkm.tensor.<name>` {dtype, shape, bits, group_size, cluster_dim, lut, indices}, with
    `edkm.format` = SAFETENSORS_FORMAT. Works before finalize (the layers' current centroids),
    after it, and on a model finalized by coremltools (labels by nearest LUT entry). include_other:
    also store the model's other tensors (biases, norms, unpalettized weights, buffers) under their
    state-dict names, so the file is a whole checkpoint. metadata: the model's own entries (keys
    not starting with "edkm."). Returns {name: PalettizedTensor}."""
    from safetensors.torch import save_file

    pal, other = _collect(model)
    runtime = Runtime(num_threads=1)
    recs = [pt.record(name, runtime) for name, pt in pal.items()]
    meta = _pf.file_metadata(recs, metadata)
    tensors = {}
    for r, pt in zip(recs, pal.values()):
        tensors[r.lut] = pt.lut.contiguous()
        if r.scale is not None:
            tensors[r.scale] = pt.scale.detach().cpu().float().contiguous()
        tensors[r.indices] = torch.from_numpy(np.ascontiguousarray(pt.packed).reshape(r.layer.groups, -1))
    if include_other:
        for name, t in other.items():
            tensors[name] = t.detach().cpu().contiguous().clone()  # clone: tied tensors must not share
    infos = {k: (_DTYPE_NAMES.get(t.dtype, str(t.dtype)) if t.dtype != torch.uint8 else "U8", tuple(t.shape))
             for k, t in tensors.items()}
    _pf.records(meta, infos, runtime)  # the reader's checks (names that collide, geometry) before writing
    save_file(tensors, str(path), metadata=meta)
    return pal


def load_safetensors(path, palettized_only=False, return_palettized=False):
    """Reads a palettized safetensors file (include/edkm-palettized-format.md: written by
    export_safetensors or `edkm palettize`, or the older edkm.torch form "edkm.palettized.v1"):
    an OrderedDict name -> dense tensor, each palettized tensor unpacked (lut[label], through
    edkm_layer_unpack) to its original shape and dtype, the other tensors as stored (unless
    palettized_only). Load it with model.load_state_dict(...). With return_palettized, returns
    (tensors, {name: PalettizedTensor}), each LUT in the tensor's dtype (the values it holds).
    Raises ValueError (palettized_file.FormatError) for a file that is not palettized, of another
    major version, or that breaks the format's rules."""
    from safetensors import safe_open

    out, pals = OrderedDict(), OrderedDict()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if not _pf.is_palettized(meta):
            raise _pf.FormatError(f"{path}: not an edkm palettized file (no {_pf.FORMAT_KEY!r} metadata)")
        keys = list(f.keys())
        infos = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in keys}
        try:
            recs = _pf.records(meta, infos, Runtime(num_threads=1))
        except _pf.FormatError as e:
            raise _pf.FormatError(f"{path}: {e}") from None
        for r in recs:
            lut, packed = f.get_tensor(r.lut), f.get_tensor(r.indices).numpy()
            scale = f.get_tensor(r.scale) if r.scale is not None else None
            dense = torch.empty(r.shape, dtype=_NAME_TO_DTYPE[r.dtype])
            wide = lut.float() if lut.dtype == torch.bfloat16 else lut  # the library reads f32/f16 LUTs; exact
            try:
                _pf.unpack(r, wide.numpy(), packed, out=tensor_as_numpy(dense, r.name)[0],
                           scale=None if scale is None else scale.numpy())
            except EdkmError as e:
                raise _pf.FormatError(f"{path}: palettized tensor {r.name!r}: {e}") from None
            pals[r.name] = PalettizedTensor(lut=lut.to(dense.dtype), packed=packed.reshape(-1), bits=r.bits,
                                            group_size=r.group_size, cluster_dim=r.cluster_dim, shape=r.shape,
                                            dtype=dense.dtype, scale=scale)
            out[r.name] = dense
        if not palettized_only:
            taken = {t for r in recs for t in (r.lut, r.indices, r.scale) if t is not None}
            for k in keys:
                if k not in taken:
                    out[k] = f.get_tensor(k)
    return (out, pals) if return_palettized else out


# ============================ torch.distributed ============================


def communicator(group=None):
    """An edkm.Communicator over a torch.distributed process group (default: the default group).

    all_gather of bytes: all_gather_into_tensor of uint8 CPU tensors; all_reduce_sum: all_reduce
    (SUM) of float64 in place. Works with gloo (CPU). Every rank must make the same libedkm calls
    in the same order (palettize, forwards, backwards), as data-parallel training does."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("edkm.torch.communicator: torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first)")
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    gather_into = getattr(dist, "all_gather_into_tensor", None)

    def all_gather(send, nbytes):
        if nbytes == 0:
            return b""
        inp = torch.from_numpy(np.frombuffer(send, dtype=np.uint8).copy())
        out = torch.empty(world * nbytes, dtype=torch.uint8)
        if gather_into is not None:
            gather_into(out, inp, group=group)
        else:  # older torch
            dist.all_gather(list(out.chunk(world)), inp, group=group)
        return out.numpy()

    def all_reduce_sum(data):
        if data.size == 0:
            return
        t = torch.from_numpy(data)  # a view of the library's buffer: summed in place
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    return _core.Communicator(rank, world, all_gather, all_reduce_sum)

from .palettizer import DKMPalettizer, DKMPalettizerConfig, ModuleDKMPalettizerConfig  # noqa: E402,F401  coremltools' interface
from .palettizer import _chain_coreml_metadata, _through  # noqa: E402  finalize of a weight in a chain of parametrizations
