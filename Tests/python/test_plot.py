"""edkm.plot: the pictures are drawn from a short training run and are valid PNG files; the figures
recorded are the ones they claim to be; misuse gives clear errors. Skipped without torch or matplotlib."""

import math

import numpy as np
import pytest

from png_check import read_png

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib", reason="edkm.plot needs matplotlib (python3 -m pip install matplotlib)")


@pytest.fixture(scope="module")
def run(lib, one_torch_thread):
    """A small MLP, 3-bit palettized, trained 12 steps with a TrainingLog."""
    import edkm.plot as ep
    import edkm.torch as et

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
    et.palettize(model, bits=3, group_size=0)
    et.palettize(model, bits=2, group_size=2, modules=["2"])  # already palettized: skipped
    log = ep.TrainingLog(model, error_every=3)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for step in range(12):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.record(step, loss.item())
    return model, log


def test_log_records_what_it_says(run):
    model, log = run
    assert log.steps == list(range(12)) and all(math.isfinite(v) for v in log.loss)
    assert log.error_steps == [0, 3, 6, 9]
    assert sorted(log.error) == ["0.weight", "2.weight"]
    # The recorded error is ||hard(w) - w|| / ||w||: recompute it from the centroids with a
    # nearest-centroid assignment in numpy (the library's prune bias on centroid 0 moves a label
    # only for weights within sqrt(bias) of a midpoint: far below the 1e-3 relative tolerance).
    m = model[2]
    w = m.parametrizations.weight.original.detach().double().numpy().ravel()
    c = m.parametrizations.weight[0].centroids.detach().double().numpy().ravel()
    hard = c[np.argmin((w[:, None] - c[None, :]) ** 2, axis=1)]
    err_now = np.linalg.norm(hard - w) / np.linalg.norm(w)
    log.record(12, None)  # 12 is a multiple of 3: figures recorded
    assert math.isnan(log.loss[-1])
    assert log.error["2.weight"][-1] == pytest.approx(err_now, rel=1e-3)
    k = 8
    assert all(0 <= e <= math.log(k) + 1e-9 for e in log.entropy["0.weight"])
    assert all(t > 0 for t in log.tau["0.weight"])


def test_plots_are_valid_pngs(run, tmp_path):
    import edkm.plot as ep

    model, log = run
    train_png, weight_png = tmp_path / "training.png", tmp_path / "w.png"
    fig = log.plot(train_png)
    assert fig is not None
    ep.plot_weight(model, "0.weight", initial=log.initial["0.weight"], path=weight_png)
    for p in (train_png, weight_png):
        w, h, px = read_png(p)
        assert w >= 400 and h >= 200
        assert len(np.unique(px.reshape(-1, px.shape[-1]), axis=0)) > 8, f"{p} looks blank"


def test_weight_plot_draws_centroids(run, tmp_path):
    """The current centroids are drawn in red (#d62728): the picture has such pixels."""
    import edkm.plot as ep

    model, log = run
    path = tmp_path / "w2.png"
    ep.plot_weight(model, "0.weight", path=path)
    _, _, px = read_png(path)
    rgb = px[..., :3].astype(int)
    red = (abs(rgb[..., 0] - 0xD6) < 20) & (abs(rgb[..., 1] - 0x27) < 20) & (abs(rgb[..., 2] - 0x28) < 20)
    assert red.sum() > 100


def test_misuse_is_reported(run, lib):
    import edkm.plot as ep

    model, log = run
    with pytest.raises(ValueError, match="no palettized weight"):
        ep.TrainingLog(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="error_every"):
        ep.TrainingLog(model, error_every=0)
    with pytest.raises(KeyError, match="no palettized weight 'nope'"):
        ep.plot_weight(model, "nope")
    with pytest.raises(ValueError, match="group 5 out of range"):
        ep.plot_weight(model, "0.weight", group=5)
    with pytest.raises(ValueError, match="initial has 3 values"):
        ep.plot_weight(model, "0.weight", initial=[0.0, 1.0, 2.0])
