"""edkm.plot: pictures of what clustering did (matplotlib, optional).

    import edkm.torch as et, edkm.plot as ep
    et.palettize(model, bits=3)
    log = ep.TrainingLog(model)              # remembers every weight's initial centroids
    for step, batch in enumerate(loader):
        loss = ...; loss.backward(); opt.step(); opt.zero_grad()
        log.record(step, loss.item())        # loss, per-layer error, entropy, tau
    log.plot("training.png")                 # loss and per-layer reconstruction error over steps
    ep.plot_weight(model, "fc1.weight", initial=log.initial["fc1.weight"], path="fc1.png")

What is drawn:
- plot_weight: the histogram of one palettized weight's values (its dense float weights), the
  initial centroids (dashed) and the current ones (solid), with the layer's last mean attention
  entropy in nats (0 = hard assignment, ln 2^bits = uniform) and its effective temperature.
- TrainingLog.plot: the training loss over steps, and per palettized weight the relative
  reconstruction error ||hard(w) - w|| / ||w|| of its hard palettization (log scale).

Only TrainingLog.record touches the model; nothing here changes it. matplotlib is imported when a
picture is drawn (ImportError with the pip command otherwise), with the non-interactive Agg backend
unless a backend was chosen already.
"""

import math

import numpy as np

__all__ = ["TrainingLog", "plot_weight", "palettized_weights", "require_matplotlib"]


def require_matplotlib():
    """matplotlib.pyplot, or an ImportError that says how to get it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("edkm.plot draws with matplotlib, which is not installed: "
                          "python3 -m pip install matplotlib") from e
    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def palettized_weights(model):
    """{"<module>.<tensor>": (module, tensor name, DKMWeight)} for every palettized weight of model."""
    from . import torch as et
    return {(f"{name}.{pname}" if name else pname): (m, pname, p) for name, pname, m, p in et.palettized(model)}


def _original(module, pname):
    """The trained (dense) weights behind a parametrization, as a float64 numpy array."""
    return module.parametrizations[pname].original.detach().float().cpu().numpy().astype(np.float64)


def _relative_error(module, pname, p):
    """||hard(w) - w|| / ||w|| of the current hard palettization (0 for an all-zero tensor)."""
    import torch
    w = module.parametrizations[pname].original.detach()
    with torch.no_grad():
        hard = p.export(w).dense().double()
    w = w.double()
    norm = float(torch.linalg.vector_norm(w))
    return float(torch.linalg.vector_norm(hard - w)) / norm if norm > 0 else 0.0


class TrainingLog:
    """Per-step figures of a palettized model's training, for TrainingLog.plot.

    At construction it copies every palettized weight's centroids (the initial ones, for
    plot_weight). record(step, loss) appends the loss and, every `error_every` records, each
    weight's relative reconstruction error (a hard export of the weights: O(N) per weight), mean
    attention entropy and effective tau (from the layer's statistics of its last forward)."""

    def __init__(self, model, error_every=1):
        if error_every < 1:
            raise ValueError("error_every must be >= 1")
        self.model = model
        self.error_every = int(error_every)
        self.weights = palettized_weights(model)
        if not self.weights:
            raise ValueError("edkm.plot.TrainingLog: the model has no palettized weight (call edkm.torch.palettize first)")
        self.initial = {n: p.centroids.detach().cpu().numpy().copy() for n, (_, _, p) in self.weights.items()}
        self.steps, self.loss = [], []
        self.error_steps = []
        self.error = {n: [] for n in self.weights}
        self.entropy = {n: [] for n in self.weights}
        self.tau = {n: [] for n in self.weights}

    def record(self, step=None, loss=None):
        """Appends one step: the loss (a float, or None) and, every error_every calls, the per-weight figures."""
        step = len(self.steps) if step is None else int(step)
        self.steps.append(step)
        self.loss.append(float("nan") if loss is None else float(loss))
        if (len(self.steps) - 1) % self.error_every:
            return
        self.error_steps.append(step)
        for n, (m, pname, p) in self.weights.items():
            stats = p.layer.stats()
            self.error[n].append(_relative_error(m, pname, p))
            self.entropy[n].append(stats.attention_entropy)
            self.tau[n].append(stats.effective_tau)

    def plot(self, path=None, title="eDKM training"):
        """Two panels: loss over steps; per-weight relative reconstruction error (log scale).
        Writes `path` (PNG by its extension) when given; returns the matplotlib Figure."""
        plt = require_matplotlib()
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        a.plot(self.steps, self.loss, color="#1f77b4", lw=1.2)
        a.set_xlabel("step")
        a.set_ylabel("training loss")
        a.set_title("loss")
        a.grid(alpha=0.3)
        for n, values in self.error.items():
            if values:
                b.plot(self.error_steps, values, lw=1.2, label=n)
        b.set_yscale("log")
        b.set_xlabel("step")
        b.set_ylabel("||hard(w) - w|| / ||w||")
        b.set_title("reconstruction error of the hard palettization")
        b.grid(alpha=0.3, which="both")
        if len(self.error) <= 12:
            b.legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def plot_weight(model, name, initial=None, path=None, group=0, bins=200, ax=None):
    """Histogram of one palettized weight with its centroids.

    model: a palettized model (name = "<module>.<tensor>", as palettized_weights lists) or the
    parametrized module itself (name = the tensor name). initial: centroids to draw dashed (e.g.
    TrainingLog.initial[name]), shape (groups, 2^bits, 1) or (2^bits,). group: which LUT of a
    grouped weight to draw (its rows only). cluster_dim must be 1. Writes `path` when given;
    returns the matplotlib Figure."""
    plt = require_matplotlib()
    weights = palettized_weights(model)
    if name not in weights:
        raise KeyError(f"edkm.plot.plot_weight: no palettized weight {name!r}; have {sorted(weights)}")
    m, pname, p = weights[name]
    if p.cluster_dim != 1:
        raise ValueError(f"edkm.plot.plot_weight: {name} clusters {p.cluster_dim}-vectors; only scalar clustering is drawn")
    groups = p.centroids.shape[0]
    if not 0 <= group < groups:
        raise ValueError(f"edkm.plot.plot_weight: group {group} out of range (the weight has {groups} LUTs)")
    w = _original(m, pname)
    if groups > 1:
        w = w.reshape(groups, -1)[group]
    w = w.ravel()
    current = p.centroids.detach().cpu().numpy().reshape(groups, -1)[group]
    stats = p.layer.stats()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.hist(w, bins=bins, color="#9ecae1", edgecolor="none", label=f"weights ({w.size:,})")
    if initial is not None:
        init = np.asarray(initial, dtype=np.float64).ravel()
        if init.size == groups * current.size:
            init = init.reshape(groups, -1)[group]
        elif init.size != current.size:
            raise ValueError(f"edkm.plot.plot_weight: initial has {init.size} values; expected {current.size} "
                             f"or {groups * current.size}")
        for i, c in enumerate(init):
            ax.axvline(c, color="#636363", ls="--", lw=1, label="initial centroids" if i == 0 else None)
    for i, c in enumerate(current):
        ax.axvline(c, color="#d62728", lw=1.4, label="current centroids" if i == 0 else None)
    k = current.size
    where = f" (LUT {group} of {groups})" if groups > 1 else ""
    ax.set_title(f"{name}{where}: {p.bits} bits, attention entropy {stats.attention_entropy:.3f} nats "
                 f"(uniform {math.log(k):.2f}), tau {stats.effective_tau:.3g}", fontsize=10)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    owner = fig if fig is not None else ax.figure
    if fig is not None:
        fig.tight_layout()
    if path is not None:
        owner.savefig(path, dpi=110)
    return owner
