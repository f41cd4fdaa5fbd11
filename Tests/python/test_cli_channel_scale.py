"""`edkm palettize --channel-scale` read from Python: the CLI's version-2 file loads through
edkm.torch.load_safetensors exactly as `edkm unpack` restores it and as a numpy decode gives it; its
factors are coremltools' per-channel scale of the weights (edkm.palettizer.per_channel_scale, the
scheme DKMPalettizer uses); its LUT is the core's 1-D k-means of the scaled rows (edkm.Layer with
the same channel_scale)."""

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
import edkm  # noqa: E402
import edkm.torch as et  # noqa: E402
from edkm import palettized_file as pf  # noqa: E402
from edkm.palettizer import per_channel_scale  # noqa: E402
from edkm_cli import edkm_cli  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_palettized_format import assert_same, read_all, reference_dense  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args):
    return subprocess.run([edkm_cli(), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("option,scheme", [("min_max", "min_max"), ("abs_max", "abs")])
def test_cli_channel_scale_file_in_python(tmp_path, option, scheme):
    torch.manual_seed(7)
    dense = {"a.f32": torch.randn(64, 32) * torch.logspace(-2, 1, 64)[:, None],
             "b.bf16": torch.randn(32, 64).to(torch.bfloat16),
             "c.f16": (0.02 * torch.randn(48, 32)).half(), "bias": torch.randn(64)}
    save_file(dense, str(tmp_path / "in.safetensors"))
    r = cli("palettize", tmp_path / "in.safetensors", "-o", tmp_path / "p.safetensors", "--bits", "3",
            "--min-size", "1000", "--channel-scale", option, "--plain")
    assert r.returncode == 0, r.stderr
    r = cli("unpack", tmp_path / "p.safetensors", "-o", tmp_path / "u.safetensors", "--plain")
    assert r.returncode == 0, r.stderr

    meta, tensors = read_all(tmp_path / "p.safetensors")
    assert meta[pf.FORMAT_KEY] == pf.SCALED_FORMAT_VALUE
    loaded, pals = et.load_safetensors(tmp_path / "p.safetensors", return_palettized=True)
    _, unpacked = read_all(tmp_path / "u.safetensors")
    assert_same(loaded, unpacked)
    assert_same({k: loaded[k] for k in pals}, reference_dense(tmp_path / "p.safetensors"))
    assert sorted(pals) == ["a.f32", "b.bf16", "c.f16"]
    for name, pt in pals.items():
        w = dense[name]
        record = json.loads(meta["edkm.tensor." + name])
        assert record["scale"] == name + ".scale"
        # coremltools' factors of these weights (computed in float32, as the core)
        assert torch.equal(pt.scale, per_channel_scale(w.float(), scheme).reshape(-1))
        # the LUT: the core's exact 1-D k-means of w / s
        layer = edkm.Layer(edkm.Runtime(num_threads=1), tuple(w.shape), bits=3, channel_scale=scheme,
                           prune_threshold=0.0)
        wn, code = et.tensor_as_numpy(w.contiguous())
        layer.init_centroids(wn, dtype=code)
        np.testing.assert_array_equal(layer.channel_scale_factors, pt.scale.numpy())
        # (the LUT as loaded is in the tensor's dtype: one rounding to it)
        np.testing.assert_allclose(pt.lut.float().reshape(-1).numpy(), layer.centroids.reshape(-1),
                                   rtol=0, atol=np.abs(layer.centroids).max() * torch.finfo(w.dtype).eps)
        # the scale matters: the rows come back near their own magnitudes
        err = (loaded[name].float() - w.float()).norm() / w.float().norm()
        assert err < 0.25, (name, float(err))
