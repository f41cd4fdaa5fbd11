"""The library owns every default: the binding passes "unset" (None -> what edkm_layer_config_init
writes, NaN for the temperature thresholds) and reads back what the layer runs with
(edkm_layer_get_config). None must give exactly the run of the default written out, and an
absolute-mode layer without a tau runs coremltools' 1e-4, resolved in C (no Python rule)."""

import numpy as np
import pytest

import edkm.core as core

MODE_DEFAULTS = {"scale_free": dict(tau=0.1, epsilon=1e-4, prune_threshold=1e-7),
                 "absolute": dict(tau=1e-4, epsilon=1e-4, prune_threshold=1e-7)}


def weights(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.02, shape).astype(np.float16)


@pytest.mark.parametrize("mode", ["scale_free", "absolute"])
def test_unset_thresholds_resolve_per_mode_in_the_library(lib, rt, mode):
    with lib.Layer(rt, (64, 16), temperature_mode=mode) as layer:
        got = {k: layer.config[k] for k in MODE_DEFAULTS[mode]}
    assert got == MODE_DEFAULTS[mode]
    with lib.Layer(rt, (64, 16)) as layer:  # no mode: the library's default mode, scale-free
        assert layer.config["temperature_mode"] == lib.TemperatureMode.SCALE_FREE
        assert layer.config["tau"] == 0.1


def test_the_old_python_tau_rule_is_gone(lib, rt):
    """The absolute default is the C library's: a config made with the C calls alone (no Python
    rule in between) resolves to 1e-4."""
    import ctypes

    ffi = lib._ffi
    assert not hasattr(core, "ABSOLUTE_DEFAULT_TAU")
    cfg = ffi.edkm_layer_config()
    ffi.edkm_layer_config_init(ctypes.byref(cfg))
    cfg.temperature_mode = ffi.EDKM_TEMPERATURE_ABSOLUTE
    shape = (ctypes.c_int64 * 2)(64, 16)
    h = ffi.edkm_layer_p()
    assert ffi.edkm_layer_create(rt._handle(), ctypes.byref(cfg), shape, 2, ctypes.byref(h)) == ffi.EDKM_OK
    try:
        out = ffi.edkm_layer_config()
        ffi.edkm_layer_config_init(ctypes.byref(out))
        assert ffi.edkm_layer_get_config(h, ctypes.byref(out)) == ffi.EDKM_OK
        assert (out.tau, out.epsilon, out.prune_threshold) == (1e-4, 1e-4, 1e-7)
    finally:
        ffi.edkm_layer_destroy(h)


@pytest.mark.parametrize("mode", ["scale_free", "absolute"])
def test_none_gives_the_run_of_the_default_written_out(lib, rt, mode):
    w = weights((64, 64), seed=1)
    g = np.random.default_rng(2).normal(0, 1, w.shape).astype(np.float16)

    def run(**options):
        with lib.Layer(rt, w.shape, bits=3, temperature_mode=mode, **options) as layer:
            out, state = layer.forward(w)
            with state:
                grad = state.backward(g, w)
            lut, packed = layer.export(w)
            return out, grad, lut, packed, layer.config

    unset = run()
    written = run(**MODE_DEFAULTS[mode])
    for a, b in zip(unset[:4], written[:4]):
        np.testing.assert_array_equal(a, b)
    assert unset[4] == written[4]
    if mode == "absolute":  # the default really is 1e-4: the scale-free number 0.1 is another run
        soft = run(tau=0.1)
        assert not np.array_equal(soft[0], unset[0])


def test_coremltools_numbers_are_the_libraries_absolute_defaults(lib, rt):
    """edkm.torch.DKMPalettizer mirrors coremltools' config keys; the thresholds it leaves unset must
    resolve, in the absolute mode, to the numbers it shows as coremltools' defaults."""
    pytest.importorskip("torch")
    from edkm.palettizer import COREMLTOOLS_DEFAULTS, ModuleDKMPalettizerConfig

    opts = ModuleDKMPalettizerConfig.from_dict({}).layer_options(None)
    assert opts["tau"] is None and opts["epsilon"] is None and opts["prune_threshold"] is None
    assert opts["temperature_mode"] == "absolute"
    with lib.Layer(rt, (64, 16), **{k: v for k, v in opts.items() if k != "bits"}) as layer:
        assert layer.config["tau"] == COREMLTOOLS_DEFAULTS["palett_tau"]
        assert layer.config["epsilon"] == COREMLTOOLS_DEFAULTS["palett_epsilon"]
        assert layer.config["prune_threshold"] == COREMLTOOLS_DEFAULTS["prune_threshold"]
