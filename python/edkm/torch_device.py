"""The device split of edkm.torch: DKM on weights that stay on their own device (CUDA, MPS or CPU).

Per forward and backward, the four O(N) passes run as torch ops on the weight's device and only
U-sized tables cross to the host, where libedkm's histogram form (edkm_layer_forward_histogram,
edkm_saved_state_backward_histogram) runs the O(U k T) soft k-means and its reverse mode and keeps
the saved state (U-sized, in its arena):

    device                                             host (libedkm)
    keys = bits(w) (f16/bf16), bits(round16(w)) (f32)
    counts = bincount(partition * 65536 + key)   --U-->  forward_histogram: soft value per key
                                                         (key 2 B + count 4 B per key, offsets)
    w~ = table[partition * 65536 + key]          <--U--  (the soft value in w's dtype: 2 B per key)
    G = bincount(..., weights = g) in float64    --U-->  backward_histogram: h, r per key (8 B)
    dL/dw = g h[...] + r[...]                    <--U--  (h and r as float32: 8 B per key)

so 24 bytes per distinct key and step for 16-bit weights (26 for f32), plus 8 per partition.

Work runs in segments of at most `CHUNK` elements (whole partitions, or pieces of one large
partition), so the device temporaries stay O(CHUNK + 65,536 x partitions per segment) whatever N.

Gradient sums are accumulated in float64: the buffer form sums in float64 too, and a float32
sum over the thousands of elements that share a key (with a GPU's unordered atomics) loses
digits in proportion to their number; float64 keeps G exact to ~1e-16 relative. The soft values
and h, r are rounded to float32 on the host, as the buffer form rounds them, so the forward is
the buffer form's bit for bit and the gradient equals fma(g, h, r) of the buffer form except for
rare double roundings (the product g h is exact in float64).

Data parallelism: with `process_group`, each rank holds a contiguous slice of one tensor (FSDP /
ZeRO-3 style, per-tensor LUT): the 65,536 counts and the U gradient sums are all-reduced by the
process group on the device before the host call, so every rank gets the same centroids. Ranks
that hold the whole tensor (DDP) need no group: their histograms are already the tensor's, and r
is linear in G, so DDP's gradient averaging is exact.

Channel scale (a layer made with channel_scale, coremltools' enable_per_channel_scale): the
factors s (one per row, float32, the layer's: fixed once, constants) live on the device; the O(N)
passes key v = round(float(w) / s_r) to the weight's dtype, exactly as the buffer form divides,
so the keys stay 16-bit and U at most 65,536 per partition; the soft values come down as float32
(4 bytes per key, not 2: the buffer form multiplies the float soft value by s_r and rounds once)
and w~ = s_r table[key] is rounded once to the weight's dtype; the backward sums g' = s_r g per
key and forms dL/dw = (g' h + r) / s_r, rounded once (the buffer form's order). 26 bytes per key
and step then, plus 4 per row once when the factors reach the device.

Every copy between the device and the host goes through a `HostLink`, which counts the bytes both
ways (`bytes_to_host`, `bytes_to_device`); its buffers are reused from step to step (pinned when
CUDA is available) and grow only when U does.
"""

from __future__ import annotations

import operator
import time

import numpy as np
import torch

from . import _ffi
from .core import CHANNEL_SCALES, DType, EdkmError, f32_to_bf16

__all__ = ["CHUNK", "HostLink", "DeviceDKMFunction", "device_dkm", "key_dtype_for", "RowFactors",
           "channel_scale_factors", "layer_factors_on"]

#: Elements per segment of the O(N) passes (device temporaries ~ 40 bytes per element of a segment).
CHUNK = 1 << 21

_KEY_TORCH = {DType.F16: torch.float16, DType.BF16: torch.bfloat16}
_SCHEMES = {int(v): k for k, v in CHANNEL_SCALES.items() if k != "none"}  # edkm_channel_scale -> name


def key_dtype_for(weight_dtype, f32_key_dtype):
    """The DType the keys of a weight of torch dtype `weight_dtype` are bit patterns of."""
    if weight_dtype == torch.float16:
        return DType.F16
    if weight_dtype == torch.bfloat16:
        return DType.BF16
    if weight_dtype == torch.float32:
        if f32_key_dtype in (DType.F16, DType.BF16):
            return DType(f32_key_dtype)
        raise ValueError("edkm: float32 weights on the device split are keyed by their f16 or bf16 rounding: "
                         "palettize with f32_key_dtype='bf16' (or 'f16')")
    raise TypeError(f"edkm: weights of dtype {weight_dtype} are not supported (float32, float16 or bfloat16)")


class HostLink:
    """Reused host buffers for the U-sized tables, and a count of the bytes that cross.

    Buffers are pinned when CUDA is available (asynchronous-capable DMA) and grow only when a
    step needs more room than any before it, so a training step allocates no host memory that
    grows with N."""

    def __init__(self):
        self.pin = torch.cuda.is_available()
        self._buffers = {}
        self.bytes_to_host = 0
        self.bytes_to_device = 0
        self.transfers = 0
        self.host_seconds = 0.0  # wall time inside libedkm's histogram-form calls

    def reset_counters(self):
        self.bytes_to_host = self.bytes_to_device = self.transfers = 0
        self.host_seconds = 0.0

    def _buffer(self, name, n, dtype):
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            size = max(n, 1024) if buf is None else max(n, 2 * buf.numel())
            buf = torch.empty(size, dtype=dtype, pin_memory=self.pin)
            self._buffers[name] = buf
        return buf[:n]

    def to_host(self, name, t):
        """A host copy of device tensor t (1-D) in a reused buffer (a view of it)."""
        host = self._buffer(name, t.numel(), t.dtype)
        host.copy_(t)
        self.bytes_to_host += t.numel() * t.element_size()
        self.transfers += 1
        return host

    def to_device(self, name, array, device, dtype):
        """Device tensor (1-D, dtype) from numpy array (bfloat16: its uint16 bit patterns), staged
        through a reused host buffer."""
        host = self._buffer(name, array.size, dtype)
        if dtype == torch.bfloat16:
            host.view(torch.int16).numpy()[...] = array.view(np.int16)
        else:
            host.numpy()[...] = array
        self.bytes_to_device += host.numel() * host.element_size()
        self.transfers += 1
        return host.to(device, non_blocking=False)

    def numpy_scratch(self, name, n, np_dtype):
        """A reused host numpy array of n elements (host-only, nothing crosses)."""
        key = ("np", name)
        buf = self._buffers.get(key)
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 1024) if buf is None else max(n, 2 * buf.size), np_dtype)
            self._buffers[key] = buf
        return buf[:n]


def _wide(device):
    """The accumulation dtype on `device`: float64, except on MPS, which has none (float32 there:
    gradient sums then carry float32 rounding, about 1e-7 relative per addition)."""
    return torch.float32 if device.type == "mps" else torch.float64


class RowFactors:
    """The channel scale factors of one weight on its device: s (float32, (rows,)), constants, and
    the row length (elements per row: numel / rows). Element i of the flat weights is in row
    i // row_length."""

    __slots__ = ("factors", "row_length")

    def __init__(self, factors, row_length):
        self.factors, self.row_length = factors, int(row_length)

    def of(self, start, stop):
        """The factors of elements [start, stop) of the flat weights, for `rowwise`: a column
        (rows, 1) when the elements are whole rows (no per-element copy), else s_r of every
        element (float32, stop - start values)."""
        L = self.row_length
        if start % L == 0 and stop % L == 0:
            return self.factors[start // L:stop // L].unsqueeze(1)
        r0, r1 = start // L, (stop - 1) // L + 1
        if (r1 - r0) * L <= 2 * (stop - start) + 2 * 65536:  # rows cut at the ends: repeat each factor
            return self.factors[r0:r1].repeat_interleave(L)[start - r0 * L:stop - r0 * L]
        # a piece of a row much longer than the segment: one row index per element
        return self.factors[torch.arange(start, stop, device=self.factors.device) // L]

    @staticmethod
    def rowwise(op, t, s):
        """op(t, s) (1-D) of a segment's elements t (1-D) and their factors s (`of`)."""
        if s.dim() == 2:
            return op(t.view(s.shape[0], -1), s).view(-1)
        return op(t, s)

    @staticmethod
    def divide(w, s):
        """v = w / s rounded to w's dtype, as the buffer form divides (ChannelScaling.divided: the
        16-bit value widened to float, one float division, one rounding back)."""
        if w.dtype == torch.float32:
            return RowFactors.rowwise(operator.truediv, w, s)
        return RowFactors.rowwise(operator.truediv, w.float(), s).to(w.dtype)


def channel_scale_factors(weight, scheme):
    """The factors the library fixes from these weights (ChannelScaling.factor, in float32 on the
    weight's device): scheme 'min_max' s_r = 0.5 (max_r - min_r), 'abs' s_r = max_r |w|; a factor
    that is not finite and > 0 is the row's largest magnitude, or 1 for a zero row. float32
    (rows,). Raises ValueError for weights holding NaN or Inf (the library fixes nothing from them)."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    lo, hi = rows.amin(1), rows.amax(1)
    peak = torch.maximum(-lo, hi)
    s = 0.5 * (hi - lo) if scheme == "min_max" else peak
    good = torch.isfinite(s) & (s > 0)
    s = torch.where(good, s, torch.where(peak > 0, peak, torch.ones_like(peak)))
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        bad = int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0])
        raise ValueError(f"edkm: weight row {bad} holds NaN or Inf; the channel scale factors are fixed from "
                         f"finite weights only")
    return s.contiguous()


def layer_factors_on(weight, layer, link):
    """The layer's channel scale factors on the weight's device (RowFactors), or None for a layer
    without a channel scale. Factors not fixed yet are fixed now from these weights, on the device
    (channel_scale_factors: the library's formula), and set into the layer (the rows x 4 bytes
    cross once, counted by link); fixed ones come from the layer (counted too)."""
    scheme = _SCHEMES.get(int(layer.config["channel_scale"]))
    if scheme is None:
        return None
    rows = layer.shape[0]
    try:
        host = layer.channel_scale_factors
    except EdkmError as e:
        if e.status != _ffi.EDKM_ERR_STATE:  # not fixed yet; anything else is an error
            raise
        host = None
    if host is None:
        s = channel_scale_factors(weight, scheme)
        host = link.to_host("scale", s).numpy().copy()
        layer.channel_scale_factors = host
        return RowFactors(s, layer.numel // rows)
    s = link.to_device("scale", host, weight.device, torch.float32)
    if s.device.type == "cpu":
        s = s.clone()  # not a view of the link's reused buffer
    return RowFactors(s, layer.numel // rows)


class _Segment:
    """Elements [start, stop) of the flat weights: `parts` whole partitions from `first`, or a
    piece of partition `first` (parts == 1, piece == True)."""

    __slots__ = ("start", "stop", "first", "parts", "batch")

    def __init__(self, start, stop, first, parts, batch):
        self.start, self.stop, self.first, self.parts, self.batch = start, stop, first, parts, batch


def _segments(count, partitions, chunk):
    """Segments covering `count` elements in `partitions` equal partitions, grouped into batches:
    a batch is the partitions whose 65,536-entry tables are built together."""
    per = count // partitions
    out = []
    if per >= chunk:  # pieces of one partition per segment; one batch per partition
        for p in range(partitions):
            for s in range(0, per, chunk):
                out.append(_Segment(p * per + s, p * per + min(per, s + chunk), p, 1, p))
        return out
    step = max(1, min(chunk // per, 64))  # at most 64 x 65,536 table entries per batch
    for b, p in enumerate(range(0, partitions, step)):
        q = min(partitions, p + step)
        out.append(_Segment(p * per, q * per, p, q - p, b))
    return out


def _keys(flat, seg, key_torch, s=None):
    """Table index of every element of a segment: local partition * 65,536 + 16-bit key (int64);
    with s (the segment's row factors, RowFactors.of), the key of w / s."""
    w = flat[seg.start:seg.stop]
    if s is not None:
        w = RowFactors.divide(w, s)
    if w.dtype == torch.float32:
        w = w.to(key_torch)
    k = w.view(torch.int16).to(torch.int64) & 0xFFFF
    if seg.parts > 1:
        k = k.view(seg.parts, -1)
        k += torch.arange(seg.parts, device=k.device, dtype=torch.int64).unsqueeze(1) * 65536
        k = k.view(-1)
    return k


class _Batch:
    """Partitions [first, first + parts) whose 65,536-entry tables are built together, the
    segments that cover them, and (after the histogram) their nonzero table entries."""

    __slots__ = ("first", "parts", "segments", "nonzero", "span")

    def __init__(self, first, parts):
        self.first, self.parts, self.segments, self.nonzero, self.span = first, parts, [], None, None

    def table(self, values, dtype, device):
        """A dense (parts x 65,536) table holding `values` (this batch's U entries) at its keys;
        one batch's table lives at a time."""
        t = torch.zeros(self.parts * 65536, dtype=dtype, device=device)
        t[self.nonzero] = values[self.span]
        return t


class _Plan:
    """The forward's histogram on the device, batch by batch: per batch, the nonzero table entries
    (U_b, kept for the gathers of the backward); keys, counts and offsets of all partitions."""

    def __init__(self, flat, partitions, key_dtype, chunk, group, count_limit, scaling=None):
        self.key_torch = _KEY_TORCH[key_dtype]
        self.scaling = scaling
        self.device = device = flat.device
        self.batches = []
        for seg in _segments(flat.numel(), partitions, chunk):
            if seg.batch == len(self.batches):  # batches are numbered in order, from 0
                self.batches.append(_Batch(seg.first, seg.parts))
            self.batches[-1].segments.append(seg)
        counts_list, located = [], []
        lo = 0
        for batch in self.batches:
            t = None
            for seg in batch.segments:
                c = torch.bincount(self.keys_of(flat, seg), minlength=batch.parts * 65536)
                t = c if t is None else t.add_(c)
            # int64 counts: exact, and all-reducible by NCCL and gloo
            if group is not None:
                import torch.distributed as dist

                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            batch.nonzero = torch.nonzero(t).squeeze(1)
            batch.span = slice(lo, lo + batch.nonzero.numel())
            lo = batch.span.stop
            counts_list.append(t[batch.nonzero])
            located.append(batch.nonzero + batch.first * 65536)
            del t
        self.total = lo
        nz_all = torch.cat(located)
        keys = nz_all & 0xFFFF  # ascending within each partition
        self.keys = torch.where(keys >= 32768, keys - 65536, keys).to(torch.int16)  # the uint16 bits, as int16
        counts = torch.cat(counts_list)
        # whole numbers below each partition's element count: int32 carries them exactly (4 bytes, not 8)
        self.counts = counts.to(torch.int32) if count_limit < 2**31 else counts
        per_partition = torch.bincount(nz_all // 65536, minlength=partitions)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), per_partition.cumsum(0)])

    def factors(self, seg):
        """The segment's row factors (None without a channel scale)."""
        return None if self.scaling is None else self.scaling.of(seg.start, seg.stop)

    def keys_of(self, flat, seg, s=None):
        """_keys of the segment (of w / s with a channel scale; s: its factors if already made)."""
        if self.scaling is not None and s is None:
            s = self.factors(seg)
        return _keys(flat, seg, self.key_torch, s)


def _check_weight(weight, layer):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"edkm: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"edkm: the weight is on {weight.device}; the device split runs on cpu, cuda, mps or xpu "
                         f"devices (it counts and gathers the weight's values)")
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"edkm: weight has dtype {weight.dtype}; the device split takes float32, float16 or bfloat16")
    if not weight.is_contiguous():
        raise ValueError(f"edkm: weight is not contiguous (shape {tuple(weight.shape)}, strides {weight.stride()}); "
                         f"the device split reads it in place")
    if layer.cluster_dim != 1:
        raise ValueError(f"edkm: cluster_dim {layer.cluster_dim} has no 16-bit value histogram, so it cannot run on "
                         f"{weight.device} through the device split; move the weight to the CPU for vector clustering")


def _check_scaling(weight, layer, group, scaling):
    has_scale = int(layer.config["channel_scale"]) in _SCHEMES
    if not has_scale:
        if scaling is not None:
            raise ValueError("edkm: channel scale factors given for a layer without a channel_scale")
        return
    if group is not None:
        raise ValueError("edkm: a channel scale on sharded weights (process_group) is not supported by the device "
                         "split (each rank would need its slice's rows); use edkm_layer_forward_shard on the host")
    if scaling is None:
        raise ValueError("edkm: the layer has a channel_scale: pass its factors (layer_factors_on; device_dkm does)")
    s = scaling.factors
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or s.dim() != 1 or s.numel() != layer.shape[0]:
        raise ValueError(f"edkm: the channel scale factors must be a 1-D float32 tensor of {layer.shape[0]} values "
                         f"(one per row), got {getattr(s, 'dtype', type(s).__name__)} {tuple(getattr(s, 'shape', ()))}")
    if s.device != weight.device:
        raise ValueError(f"edkm: the channel scale factors are on {s.device}, the weight on {weight.device}")
    if scaling.row_length * layer.shape[0] != layer.numel:
        raise ValueError(f"edkm: row length {scaling.row_length} x {layer.shape[0]} rows is not the layer's {layer.numel} elements")


class DeviceDKMFunction(torch.autograd.Function):
    """w~ = DKM(w) through the device split. apply(weight, layer, link, group, scaling):

    weight: the tensor (or with `group`, this rank's contiguous slice of it: the histogram does
    not depend on where the slice starts) on any device, contiguous, float32/float16/bfloat16; layer: an edkm.Layer
    (cluster_dim 1) for the whole tensor; link: the HostLink that carries and counts the tables;
    group: a torch.distributed process group, or None; scaling: for a layer with a channel scale,
    its factors on the weight's device (RowFactors, from layer_factors_on), else None: then
    w~ = s_r f(w / s) and the factors get no gradient (constants). Returns w~ in the weight's dtype."""

    @staticmethod
    def forward(ctx, weight, layer, link, group=None, scaling=None):
        _check_weight(weight, layer)
        _check_scaling(weight, layer, group, scaling)
        key_dtype = key_dtype_for(weight.dtype, DType(layer.config["f32_key_dtype"]))
        flat = weight.detach().view(-1)
        if group is None and flat.numel() != layer.numel:
            raise ValueError(f"edkm: weight has {flat.numel()} elements, the layer was made for {layer.numel}")
        if group is not None and layer.groups != 1:
            raise ValueError("edkm: sharded weights (process_group) need a per-tensor LUT (group_size 0)")
        partitions = layer.groups if group is None else 1
        plan = _Plan(flat, partitions, key_dtype, CHUNK, group, layer.numel // layer.groups, scaling)
        keys = link.to_host("keys", plan.keys).numpy().view(np.uint16)
        counts = link.numpy_scratch("counts", plan.total, np.float64)
        np.copyto(counts, link.to_host("counts", plan.counts).numpy(), casting="unsafe")
        offsets = link.to_host("offsets", plan.offsets)
        soft = link.numpy_scratch("soft", plan.total, np.float64)
        save = bool(ctx.needs_input_grad[0])
        t0 = time.perf_counter()
        result = layer.forward_histogram(keys, counts, offsets.numpy(), key_dtype, save=save, out=soft)
        link.host_seconds += time.perf_counter() - t0
        state = result[1] if save else None  # (soft, state) with save, soft alone without
        # rounded as the buffer form rounds: to float32, then to the weight's dtype (on the host: U values)
        soft32 = link.numpy_scratch("soft32", plan.total, np.float32)
        soft32[...] = soft
        if scaling is not None:  # the float soft values: s_r f[m] is rounded once, on the device
            soft_w, table_dtype = soft32, torch.float32
        elif weight.dtype == torch.bfloat16:
            soft_w, table_dtype = f32_to_bf16(soft32), weight.dtype
        elif weight.dtype == torch.float16:
            soft_w, table_dtype = soft32.astype(np.float16), weight.dtype
        else:
            soft_w, table_dtype = soft32, weight.dtype
        soft_dev = link.to_device("soft", soft_w, weight.device, table_dtype)
        out = torch.empty_like(flat)
        for batch in plan.batches:
            table = batch.table(soft_dev, table_dtype, weight.device)
            for seg in batch.segments:
                s = plan.factors(seg)
                values = table[plan.keys_of(flat, seg, s)]
                # with a channel scale s_r f[m]: float x float, one rounding to the weight's dtype
                out[seg.start:seg.stop] = values if s is None else RowFactors.rowwise(operator.mul, values, s)
            del table
        ctx.plan, ctx.state, ctx.link, ctx.group = plan, state, link, group
        if save:
            ctx.save_for_backward(weight)
        return out.view_as(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.state is None:
            raise RuntimeError("edkm: a DKM backward ran twice on one forward; the saved state is released "
                               "after the first backward (retain_graph=True is not supported)")
        (weight,) = ctx.saved_tensors
        plan, link = ctx.plan, ctx.link
        flat = weight.detach().view(-1)
        if grad_out.device != weight.device:
            raise ValueError(f"edkm: grad_output is on {grad_out.device}, the weight on {weight.device}")
        g = grad_out.reshape(-1)
        sums = []
        for batch in plan.batches:
            acc = None
            for seg in batch.segments:
                s = plan.factors(seg)
                part = torch.bincount(plan.keys_of(flat, seg, s), weights=_scaled(g[seg.start:seg.stop], s).to(_wide(weight.device)),
                                      minlength=batch.parts * 65536)
                acc = part if acc is None else acc.add_(part)
            sums.append(acc[batch.nonzero])
            del acc
        G = torch.cat(sums)
        if ctx.group is not None:
            import torch.distributed as dist

            dist.all_reduce(G, op=dist.ReduceOp.SUM, group=ctx.group)
        G_host = link.to_host("G", G)
        state, ctx.state = ctx.state, None
        try:
            h_np = link.numpy_scratch("h", plan.total, np.float64)
            r_np = link.numpy_scratch("r", plan.total, np.float64)
            t0 = time.perf_counter()
            state.backward(G_host.numpy().astype(np.float64, copy=False), h=h_np, r=r_np)
            link.host_seconds += time.perf_counter() - t0
        finally:
            state.close()
        hr = link.numpy_scratch("hr", 2 * plan.total, np.float32)
        hr[:plan.total] = h_np
        hr[plan.total:] = r_np
        wide = _wide(weight.device)
        hr_dev = link.to_device("hr", hr, weight.device, torch.float32).to(wide)
        h_all, r_all = hr_dev[:plan.total], hr_dev[plan.total:]
        grad_in = torch.empty(flat.numel(), dtype=weight.dtype, device=weight.device)
        for batch in plan.batches:
            h_table, r_table = batch.table(h_all, wide, weight.device), batch.table(r_all, wide, weight.device)
            for seg in batch.segments:
                s = plan.factors(seg)
                idx = plan.keys_of(flat, seg, s)
                gs = _scaled(g[seg.start:seg.stop], s).to(wide)
                # fma(g, h32, r32) of the buffer form: g h is exact in float64, one more rounding to float32.
                value = (gs * h_table[idx] + r_table[idx]).to(torch.float32)
                # with a channel scale, then divided by s_r in float and rounded once (the buffer form's order)
                grad_in[seg.start:seg.stop] = value if s is None else RowFactors.rowwise(operator.truediv, value, s)
            del h_table, r_table
        return grad_in.view_as(weight), None, None, None, None


def _scaled(g, s):
    """g' = g s in float (the gradient with respect to the clustered scaled weights, as the buffer
    form's ChannelScaling.multiplied makes it); g itself without a channel scale."""
    return g if s is None else RowFactors.rowwise(operator.mul, g.float(), s)


def device_dkm(weight, layer, link=None, group=None):
    """The soft-clustered weights of `weight` through `layer` on the weight's own device (with
    `group`: this rank's contiguous slice of the tensor, see DeviceDKMFunction). A layer with a
    channel scale uses its factors (fixed now from these weights if the layer has none yet)."""
    link = link if link is not None else HostLink()
    if int(layer.config["channel_scale"]) in _SCHEMES and group is None:
        _check_weight(weight, layer)
        if weight.numel() != layer.numel:
            raise ValueError(f"edkm: weight has {weight.numel()} elements, the layer was made for {layer.numel}")
        scaling = layer_factors_on(weight.view(layer.shape), layer, link)
    else:
        scaling = None
    return DeviceDKMFunction.apply(weight, layer, link, group, scaling)
