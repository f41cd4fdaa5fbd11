"""Hostile input through the Python binding: integers that do not fit the C parameter are refused
(never wrapped), and a communicator that lies or re-enters the runtime gets a clear error."""

import numpy as np
import pytest


def f16_weights(n=256):
    return ((np.arange(n) * 37 % 101) / 50.0 - 1.0).astype(np.float16)


@pytest.mark.parametrize("offset", [2 ** 64, 2 ** 64 + 3, -1])
def test_forward_shard_offset_out_of_range(lib, offset):
    """2**64 used to wrap to 0 and run on slice 0."""
    w = f16_weights()
    with lib.Runtime() as rt, lib.Layer(rt, w.shape, bits=3) as layer:
        with pytest.raises(OverflowError, match="offset"):
            layer.forward_shard(w, offset, save=False)
        out = layer.forward_shard(w, 0, save=False)  # the layer is unchanged and usable
        assert np.isfinite(out.astype(np.float32)).all()


def test_shape_and_rank_out_of_range(lib):
    with lib.Runtime() as rt:
        with pytest.raises(OverflowError, match=r"shape\[0\]"):
            lib.Layer(rt, (2 ** 63, 2))
        with pytest.raises(OverflowError, match=r"shape\[1\]"):
            lib.Layer(rt, (4, -2 ** 64))
    with pytest.raises(OverflowError, match="world_size"):
        lib.Communicator(0, 2 ** 32 + 1, lambda s, n: bytes(s) * 2, lambda d: None)


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e300, -3.0, 0.5])
def test_lying_histogram_all_reduce(lib, value):
    """A callback that reports success with an impossible histogram count: EDKM_ERR_COMMUNICATOR."""
    w = f16_weights()

    def reduce(d):
        if d.size == 65538:  # the forward's histogram
            d[np.flatnonzero(d[:65536])[0]] = value

    comm = lib.Communicator(0, 1, lambda s, n: bytes(s), reduce)
    with lib.Runtime(communicator=comm) as rt, lib.Layer(rt, w.shape, bits=3) as layer:
        with pytest.raises(lib.EdkmError) as e:
            layer.forward_shard(w, 0)
        assert e.value.status_name == "EDKM_ERR_COMMUNICATOR"
        assert "all_reduce_sum" in str(e.value)


def test_reentrant_callback_gets_busy(lib):
    """A callback that calls back into its runtime gets EDKM_ERR_BUSY instead of a deadlock."""
    w = f16_weights(64)
    seen = []
    holder = {}

    def reduce(d):
        try:
            holder["other"].forward_shard(w, 0, save=False)
            seen.append("ok")
        except lib.EdkmError as err:
            seen.append(err.status_name)

    comm = lib.Communicator(0, 1, lambda s, n: bytes(s), reduce)
    with lib.Runtime(communicator=comm) as rt, lib.Layer(rt, w.shape, bits=2) as layer, \
            lib.Layer(rt, w.shape, bits=2) as other:
        holder["other"] = other
        out = layer.forward_shard(w, 0, save=False)
        assert np.isfinite(out.astype(np.float32)).all()
        assert seen == ["EDKM_ERR_BUSY"]
