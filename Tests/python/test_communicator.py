"""edkm.Communicator: Python collectives lent to the library through the CFUNCTYPE callbacks."""

import gc
import threading

import numpy as np
import pytest


def weights(shape=(128, 64), seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.05).astype(np.float16)


def test_validation(lib):
    with pytest.raises(ValueError):
        lib.Communicator(2, 2, lambda s, n: bytes(s), lambda d: None)
    with pytest.raises(ValueError):
        lib.Communicator(0, 0, lambda s, n: bytes(s), lambda d: None)
    with pytest.raises(TypeError):
        lib.Communicator(0, 1, None, lambda d: None)
    with pytest.raises(TypeError):
        lib.Runtime(communicator=object())


def test_trampolines_directly(lib):
    """The C-callable pointers behave as the header says, without going through the library."""
    import ctypes

    comm = lib.Communicator(1, 3, lambda send, n: bytes(send) * 3, lambda d: d.__imul__(2))
    send = (ctypes.c_ubyte * 4)(1, 2, 3, 4)
    recv = (ctypes.c_ubyte * 12)()
    assert comm._struct.all_gather(None, ctypes.addressof(send), ctypes.addressof(recv), 4) == 0
    assert bytes(recv) == bytes([1, 2, 3, 4]) * 3
    data = (ctypes.c_double * 3)(1.0, 2.0, 3.5)
    assert comm._struct.all_reduce_sum(None, data, 3) == 0
    assert list(data) == [2.0, 4.0, 7.0]
    # a returned array is copied back
    comm2 = lib.Communicator(0, 1, lambda s, n: bytes(s), lambda d: d + 1.0)
    assert comm2._struct.all_reduce_sum(None, data, 3) == 0
    assert list(data) == [3.0, 5.0, 8.0]
    # exceptions and wrong sizes become nonzero returns, never propagate
    bad = lib.Communicator(0, 2, lambda s, n: b"x", lambda d: 1 / 0)
    assert bad._struct.all_gather(None, ctypes.addressof(send), ctypes.addressof(recv), 4) != 0
    assert isinstance(bad.last_exception, ValueError)
    assert bad._struct.all_reduce_sum(None, data, 3) != 0
    assert isinstance(bad.last_exception, ZeroDivisionError)
    assert list(data) == [3.0, 5.0, 8.0]


@pytest.mark.parametrize("mode", ["histogram", "shard"])
def test_single_rank(lib, mode):
    w = weights()
    comm = lib.Communicator.single()
    with lib.Runtime(saved_mode=mode, communicator=comm) as rt, lib.Layer(rt, w.shape, bits=3) as layer:
        out, st = layer.forward(w)
        gin = st.backward(np.ones_like(out), w)
        assert np.isfinite(gin.astype(np.float32)).all()
        st.close()


def test_runtime_keeps_communicator_alive(lib):
    w = weights()
    comm = lib.Communicator.single()
    rt = lib.Runtime(saved_mode="shard", communicator=comm)
    layer = lib.Layer(rt, w.shape)
    del comm
    rt.close()
    del rt
    gc.collect()
    out, st = layer.forward(w)
    del layer
    gc.collect()
    gin = st.backward(np.ones_like(out), w)  # may call the callbacks: they must still exist
    assert np.isfinite(gin.astype(np.float32)).all()
    st.close()


def test_callback_exception_becomes_communicator_error(lib):
    """A raising callback makes the call fail with EDKM_ERR_COMMUNICATOR, the Python exception as
    __cause__; the saved state stays usable (the header: 'lose nothing')."""
    w = weights()
    fail = {"on": False}

    def all_gather(send, n):
        if fail["on"]:
            raise RuntimeError("network down")
        return bytes(send)

    def all_reduce(d):
        if fail["on"]:
            raise RuntimeError("network down")

    comm = lib.Communicator(0, 1, all_gather, all_reduce)
    with lib.Runtime(saved_mode="shard", communicator=comm) as rt, lib.Layer(rt, w.shape) as layer:
        out, st = layer.forward(w)
        before = dict(comm.calls)
        fail["on"] = True
        try:
            gin = st.backward(np.ones_like(out), w)
        except lib.EdkmError as e:
            assert e.status == lib._ffi.EDKM_ERR_COMMUNICATOR, e
            assert isinstance(e.__cause__, RuntimeError) and "network down" in str(e.__cause__)
            fail["on"] = False
            gin = st.backward(np.ones_like(out), w)
        else:
            if comm.calls == before:
                pytest.skip("the library does not call the communicator for world_size 1")
            pytest.fail("a raising callback did not fail the call")
        assert np.isfinite(gin.astype(np.float32)).all()
        st.close()


class ThreadWorld:
    """In-test collectives between threads (ranks) of one process."""

    def __init__(self, n):
        self.n = n
        self.barrier = threading.Barrier(n, timeout=60)
        self.slots = [None] * n

    def comm(self, lib, rank):
        def all_gather(send, nbytes):
            self.slots[rank] = bytes(send)
            self.barrier.wait()
            out = b"".join(self.slots)
            self.barrier.wait()
            return out

        def all_reduce(data):
            self.slots[rank] = data.copy()
            self.barrier.wait()
            total = np.sum(self.slots, axis=0)
            self.barrier.wait()
            data[:] = total

        return lib.Communicator(rank, self.n, all_gather, all_reduce)


@pytest.mark.parametrize("mode", ["shard", "histogram"])
def test_two_ranks_in_threads_match_one_process(lib, mode):
    """Data-parallel: both ranks hold the same weights, each its own gradient; every rank's backward
    equals the one-process backward of its gradient."""
    w = weights((64, 64), seed=1)
    grads = [(np.random.default_rng(10 + r).standard_normal(w.shape) * 1e-2).astype(np.float16) for r in range(2)]
    with lib.Runtime() as rt, lib.Layer(rt, w.shape, bits=3, seed=5) as layer:
        layer.init_centroids(w)
        c0 = layer.centroids
        ref_out, ref_g = [], []
        for g in grads:
            layer.centroids = c0
            out, st = layer.forward(w, "f32")
            ref_out.append(out)
            ref_g.append(st.backward(g, w))
            st.close()

    world = ThreadWorld(2)
    results, errors = [None, None], []

    def rank_main(r):
        try:
            comm = world.comm(lib, r)
            with lib.Runtime(saved_mode=mode, communicator=comm) as rt, \
                    lib.Layer(rt, w.shape, bits=3, seed=5) as layer:
                layer.centroids = c0
                out, st = layer.forward(w, "f32")
                gin = st.backward(grads[r], w)
                st.close()
                results[r] = (out, gin, rt.stats(), dict(comm.calls))
        except BaseException as e:  # pragma: no cover
            errors.append(e)
            world.barrier.abort()

    ts = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    for r in range(2):
        out, gin, stats, calls = results[r]
        np.testing.assert_allclose(out, ref_out[r], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gin.astype(np.float32), ref_g[r].astype(np.float32), rtol=1e-2, atol=1e-5)
        if mode == "shard":
            assert calls["all_gather"] >= 1 and stats.communicator_bytes > 0
