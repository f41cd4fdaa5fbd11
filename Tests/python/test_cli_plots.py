"""The pictures of `edkm demo --plots` decoded by an independent PNG reader (zlib + the PNG row
filters): the CLI's own PNG encoder (deflate with fixed Huffman codes) must produce streams that
zlib inflates, and the charts must show what they claim (curves and centroid markers in colour)."""

import subprocess

import numpy as np
import pytest

from edkm_cli import edkm_cli
from png_check import read_png


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    r = subprocess.run([edkm_cli(), "demo", "--plots", str(out), "--train-samples", "1280", "--epochs", "2", "--ft-epochs", "1",
                        "--bits", "4,3", "--llm-layer", "0", "--plain"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_every_picture_decodes(pictures):
    names = sorted(p.name for p in pictures.iterdir())
    assert names == ["histogram-W1-3bit.png", "histogram-W1-4bit.png", "reconstruction-error.png", "training-loss.png"]
    for n in names:
        w, h, px = read_png(pictures / n)
        assert (w, h, px.shape[2]) == (1000, 520, 3)
        assert (px == 255).all(axis=2).mean() > 0.5, f"{n}: mostly white background"
        assert (px.sum(axis=2) < 100).any(), f"{n}: has dark text"


def _colour_pixels(px, hex_rgb, tol=12):
    r, g, b = (hex_rgb >> 16) & 255, (hex_rgb >> 8) & 255, hex_rgb & 255
    p = px.astype(int)
    return (abs(p[..., 0] - r) <= tol) & (abs(p[..., 1] - g) <= tol) & (abs(p[..., 2] - b) <= tol)


def test_histogram_shows_bars_and_both_centroid_sets(pictures):
    _, _, px = read_png(pictures / "histogram-W1-4bit.png")
    bars = _colour_pixels(px, 0x9ECAE1)
    red = _colour_pixels(px, 0xD62728)
    gray = _colour_pixels(px, 0x636363)
    assert bars.sum() > 5000
    # 16 fine-tuned centroids drawn as 2-pixel vertical lines: at least 12 distinct red columns
    # (two centroids may fall on one column) spanning most of the plot's height.
    red_columns = np.flatnonzero(red.sum(axis=0) > 200)
    assert len(red_columns) >= 12, len(red_columns)
    assert gray.sum() > 500


def test_loss_chart_has_three_curves(pictures):
    _, _, px = read_png(pictures / "training-loss.png")
    for colour in (0x1F77B4, 0xD62728, 0x2CA02C):  # float32, eDKM 4-bit, eDKM 3-bit
        assert _colour_pixels(px, colour).sum() > 40, hex(colour)
