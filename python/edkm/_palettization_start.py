"""When a DKMPalettizer module's palettization takes hold, as coremltools 9.0 decides it.

coremltools enables a module's palettization in prepare() (milestone 0) or in step() (at its
milestone), but creates its partitions and initial centroids only at the module's first forward
after that (training or eval mode, with or without grad; its report() runs one too). finalize()
palettizes exactly the modules that have them: a module enabled but never forwarded since is left
plain, without Core ML metadata.

libedkm registers the DKM parametrization when palettization is enabled (the centroids start from
the weights then) and marks the module *pending* until its first forward. The first forward clears
the mark; if the weights changed in place since the start (an optimizer step between step() and the
next forward, e.g. step() called before optimizer.step()), it first restarts the palettization from
the weights as they are now, as coremltools initialises from them. A module still pending at
finalize() is returned to its plain weights.

The mark lives on the module (an attribute and a forward pre-hook), so it follows copy.deepcopy of
the model, as coremltools' state does.
"""

from __future__ import annotations

import torch

_PENDING = "_edkm_palettization_pending"  # (forward pre-hook id, weight version at the start)


def _original(module):
    return module.parametrizations["weight"].original


def mark_pending(module, on_first_forward):
    """Marks module pending and hooks its next forward: on_first_forward(module, weights_changed)
    runs once, before that forward, after the mark is cleared."""

    def first_forward(m, args):
        state = getattr(m, _PENDING, None)
        if state is None:
            return None
        clear(m)
        on_first_forward(m, _original(m)._version != state[1])
        return None

    handle = module.register_forward_pre_hook(first_forward)
    setattr(module, _PENDING, (handle.id, _original(module)._version))


def is_pending(module):
    return getattr(module, _PENDING, None) is not None


def weights_changed(module):
    """Whether a pending module's weights changed in place since its palettization started."""
    return _original(module)._version != getattr(module, _PENDING)[1]


def clear(module):
    """Removes the mark and its hook (nothing if the module is not pending)."""
    state = getattr(module, _PENDING, None)
    if state is None:
        return
    module._forward_pre_hooks.pop(state[0], None)
    delattr(module, _PENDING)


def unpalettize(module):
    """Returns module.weight to its plain Parameter (the original, unchanged) and releases the DKM
    layers of its parametrization chain."""
    from . import torch as edkm_torch

    layers = [p for p in module.parametrizations["weight"] if isinstance(p, edkm_torch.DKMWeight)]
    edkm_torch._own_class(module)
    torch.nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    for p in layers:
        p.close()
