"""The DKM iterations in float64 torch ops, written independently of the library: the reference that
the core, the binding and edkm.torch are tested against (docs/design.md, part 1; coremltools 9.0's
FakePalettize.diff_palettize_seq for its options). torch's autograd differentiates it through every
k-means iteration.

One iteration, x (n, d) the weights (vectors), c (k, d) the centroids:

    D_ij = |x_i - c_j|^2                       distances
    D_i0 -= p                                  prune bias on centroid 0 (p = prune_threshold)
    D_i0  = zero_distance where x_i != 0       keep-sparsity (a constant: no gradient through it)
    A     = max(softmax(-D / tau), z)          clamped attention (z = zero_threshold)
    c     = A^T x / sum_i A_i                  centroid update
    c_0   = 0                                  enforce_zero
    c     = Q(c) (straight-through)            LUT quantization (lut_dtype i8 / u8)

stopping when the inertia sum_i min_j D_ij moves by at most eps (never when eps is None); the output
is w~ = A c with the last iteration's A and c.
"""
import numpy as np
import torch


def fake_quantize(c, lut_dtype):
    """The LUT's fake-quantized values with the straight-through gradient (c + (Q(c) - c).detach()):
    the per-LUT scale / zero point of edkm.h's edkm_lut_dtype (i8: symmetric, u8: affine with the
    range widened to include 0)."""
    v = c.detach()
    if lut_dtype == "i8":
        peak = float(v.abs().max())
        scale, zp, qmin, qmax = (peak / 127 if peak > 0 else 1.0), 0, -128, 127
    else:
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        scale = (hi - lo) / 255 if hi > lo else 1.0
        zp, qmin, qmax = int(min(max(round(-lo / scale), 0), 255)), 0, 255
    q = torch.clamp(torch.round(v / scale) + zp, qmin, qmax)
    return c + ((q - zp) * scale - v)


def soft_kmeans(x, c0, tau, iterations=3, zt=1e-7, pt=1e-7, eps=1e-4, enforce_zero=False,
                zero_distance=None, lut_dtype="f32"):
    """(w~, c): the soft-clustered vectors (n, d) and the last centroids (k, d), differentiable in x
    ((n, d) float64 tensor); c0 ((k, d) float64 tensor) is a constant. zero_distance: keep-sparsity's
    constant D_0 for the vectors with a nonzero element (-0.0 counts as zero)."""
    c = c0
    nonzero = (x.detach() != 0).any(1) if zero_distance is not None else None
    last = None
    for _ in range(iterations):
        dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        d0 = dist[:, 0] - pt
        if nonzero is not None:
            d0 = torch.where(nonzero, torch.full_like(d0, zero_distance), d0)
        dist = torch.cat([d0[:, None], dist[:, 1:]], 1)
        attention = torch.softmax(-dist / tau, 1).clamp(min=zt)
        c = (attention.T @ x) / attention.sum(0)[:, None]
        if enforce_zero:
            c = torch.cat([torch.zeros_like(c[:1]), c[1:]], 0)
        if lut_dtype != "f32":
            c = fake_quantize(c, lut_dtype)
        inertia = float(dist.detach().min(1).values.sum())
        if eps is not None and last is not None and last != 0 and abs(last - inertia) <= eps:
            break
        last = inertia
    return attention @ c, c


def autograd_reference(w, c0, tau, g, **options):
    """(w~, dL/dw, c) as float64 numpy arrays for L = sum(g * w~); w, g: (n, d), c0: (k, d) arrays.
    options: those of soft_kmeans."""
    x = torch.tensor(np.asarray(w, np.float64), requires_grad=True)
    y, c = soft_kmeans(x, torch.tensor(np.asarray(c0, np.float64)), tau, **options)
    y.backward(torch.tensor(np.asarray(g, np.float64)))
    return y.detach().numpy(), x.grad.numpy(), c.detach().numpy()


def rel(a, b):
    """max |a - b| / max |b| (numpy arrays or torch tensors), in float64."""
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())
