"""The msgpack array ext type's remembered headers (encode and decode skip re-packing / re-checking a header seen
lately) give exactly the documented bytes and values, and never let a lying array through; ActionFuture keeps the
concurrent.futures.Future contract the servers and ExternalEnv.get_action rely on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import msgpack
import numpy as np
import pytest

from relayrl.env.external_env import ActionFuture
from relayrl.serving.protocol import MSGPACK, NDARRAY_EXT, ProtocolError, decode_body, encode_body

ARRAYS = [
    np.asarray([0.5, -1.25, 3.0, 4.5], np.float32),
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not contiguous: sent in C order
    np.asarray(7, np.int16),  # 0-d
    np.zeros((0, 3), np.float32),  # empty
    np.ones((2, 2, 2), np.uint8),
    np.asarray([True, False]),
    np.random.default_rng(0).standard_normal(5000).astype(np.float32),  # a raw length of 3 bytes' size
]


def _documented(x: np.ndarray) -> bytes:
    payload = msgpack.packb([x.dtype.str, list(x.shape), np.ascontiguousarray(x).tobytes()], use_bin_type=True)
    return msgpack.packb({"observation": msgpack.ExtType(NDARRAY_EXT, payload)}, use_bin_type=True)


@pytest.mark.parametrize("rounds", [1, 3])
def test_arrays_encode_to_the_documented_bytes_and_decode_back_exactly(rounds):
    for _ in range(rounds):  # later rounds use the remembered headers
        for x in ARRAYS:
            body = encode_body({"observation": x}, True)
            assert body == _documented(x)
            y = decode_body(body, MSGPACK)["observation"]
            assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(y, x)
            assert y.flags.aligned


def test_a_remembered_header_does_not_let_a_lying_array_through():
    good = np.asarray([1.0, 2.0, 3.0, 4.0], np.float32)
    decode_body(_documented(good), MSGPACK)  # its header is remembered now
    payload = msgpack.packb(["<f4", [4], good.tobytes()[:12]], use_bin_type=True)  # 12 bytes for 16
    with pytest.raises(ProtocolError, match="needs 16 bytes"):
        decode_body(msgpack.packb({"o": msgpack.ExtType(NDARRAY_EXT, payload)}), MSGPACK)
    payload = msgpack.packb(["<f4", [4], good.tobytes() + b"\0" * 4], use_bin_type=True)  # 20 bytes for 16
    with pytest.raises(ProtocolError, match="needs 16 bytes"):
        decode_body(msgpack.packb({"o": msgpack.ExtType(NDARRAY_EXT, payload)}), MSGPACK)
    payload = msgpack.packb(["|O", [2], b"\0" * 16], use_bin_type=True)
    with pytest.raises(ProtocolError, match="not numeric"):
        decode_body(msgpack.packb({"o": msgpack.ExtType(NDARRAY_EXT, payload)}), MSGPACK)
    for i in range(20):  # many other headers: the remembered set stays bounded and every array decodes right
        x = np.full(i + 1, i, np.int32)
        assert np.array_equal(decode_body(_documented(x), MSGPACK)["observation"], x)
    assert np.array_equal(decode_body(_documented(good), MSGPACK)["observation"], good)


def test_action_future_result_timeout_cancel_and_callbacks():
    f = ActionFuture()
    with pytest.raises(TimeoutError):
        f.result(timeout=0.01)
    seen = []
    f.add_done_callback(lambda g: seen.append(("first", g.result())))
    f.add_done_callback(lambda g: 1 / 0)  # a failing callback is logged, not the settler's error
    f.add_done_callback(lambda g: seen.append(("third", g.result())))
    settler = threading.Timer(0.05, f.set_result, args=(3,))
    settler.start()
    assert f.result(timeout=5) == 3  # blocks until another thread settles it
    assert f.done() and not f.cancelled()
    settler.join(5)  # the callbacks run in the settling thread, after the waiters wake
    assert seen == [("first", 3), ("third", 3)]
    f.add_done_callback(lambda g: seen.append(("late", g.result())))  # runs at once
    assert seen[-1] == ("late", 3)
    assert not f.set_result(4) and not f.cancel() and f.result() == 3  # settled once

    c = ActionFuture()
    assert c.cancel() and c.cancel() and c.cancelled()
    assert not c.set_result(1)  # a late action is dropped
    with pytest.raises(CancelledError):
        c.result(0)

    e = ActionFuture()
    e.set_exception(RuntimeError("closed"))
    with pytest.raises(RuntimeError, match="closed"):
        e.result(0)


def test_action_future_settled_while_many_threads_wait():
    f = ActionFuture()
    got = []
    threads = [threading.Thread(target=lambda: got.append(f.result(timeout=10))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    f.set_result("go")
    for t in threads:
        t.join(10)
    assert got == ["go"] * 8
