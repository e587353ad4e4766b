"""LZ4 array packing: round trips, corruption detection, and real memory savings."""

from __future__ import annotations

import struct
import sys
import time

import lz4.frame
import numpy as np
import pytest

from relayrl.utils.compression import is_compressed, pack, pack_column, unpack, unpack_column


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(-5, 5, dtype=np.int16),
        np.array([2**62, -(2**62)], dtype=np.int64),
        np.linspace(-1, 1, 7, dtype=np.float16),
        np.random.default_rng(0).random((5, 3)).astype(np.float32),
        np.random.default_rng(1).random(9).astype(">f8"),  # big-endian survives
        np.array([True, False, True]),
        np.array([1 + 2j, -3j], dtype=np.complex64),
        np.float64(3.5) * np.ones(()),  # 0-d
        np.zeros((0,), dtype=np.float32),
        np.zeros((5, 0, 2), dtype=np.int32),
        np.array(["ab", "xyz"]),
    ],
    ids=lambda a: f"{a.dtype.str}{a.shape}",
)
def test_round_trip(arr: np.ndarray) -> None:
    data = pack(arr)
    assert isinstance(data, bytes) and is_compressed(data)
    out = unpack(data)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_non_contiguous_input() -> None:
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for view in (base.transpose(2, 0, 1), base[:, ::2, 1:], base[::-1]):
        np.testing.assert_array_equal(unpack(pack(view)), view)


def test_refuses_object_and_structured_dtypes() -> None:
    with pytest.raises(ValueError, match="dtype"):
        pack(np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="dtype"):
        pack(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]))


def _payload(dtype_str: bytes, shape: tuple[int, ...], body: bytes, magic: bytes = b"RRNP", version: int = 1) -> bytes:
    header = struct.pack("<4sBB", magic, version, len(dtype_str)) + dtype_str
    header += struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
    return lz4.frame.compress(header + body)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "LZ4 frame"),
        (b"definitely not lz4", "LZ4 frame"),
        (pack(np.arange(1000))[:-7], "LZ4 frame"),  # truncated
        (lz4.frame.compress(b"plain bytes, no header"), "bad magic"),
        (_payload(b"<f4", (3,), b"\x00" * 12, version=9), "version"),
        (_payload(b"<f4", (3,), b"\x00" * 11), "expected 12"),
        (_payload(b"|O", (1,), b"\x00" * 8), "object dtype"),
        (_payload(b"not-a-dtype", (1,), b"\x00"), "unreadable header"),
        (lz4.frame.compress(b"RR"), "too short"),
    ],
    ids=["empty", "garbage", "truncated", "no-header", "version", "size", "object", "dtype", "short"],
)
def test_corrupt_data_raises_value_error(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unpack(data)


def test_flipped_byte_is_detected_by_checksum() -> None:
    rng = np.random.default_rng(0)
    data = bytearray(pack(rng.integers(0, 4, size=(64, 64), dtype=np.uint8)))
    for pos in (len(data) // 2, len(data) - 6):  # inside the compressed block, and in the checksum
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x5A
        with pytest.raises(ValueError, match="corrupt"):
            unpack(bytes(corrupt))


def test_unpack_type_error_for_non_bytes() -> None:
    with pytest.raises(TypeError):
        unpack(np.zeros(3))  # type: ignore[arg-type]


def test_is_compressed() -> None:
    arr = np.ones((4, 3))
    assert is_compressed(pack(arr))
    assert is_compressed(pack_column(arr))
    assert not is_compressed(arr)
    assert not is_compressed(b"raw bytes")
    assert not is_compressed(np.empty(0, dtype=object))
    assert not is_compressed(None)


def test_column_round_trip_and_validation() -> None:
    rng = np.random.default_rng(3)
    col = rng.integers(0, 255, size=(7, 10, 10, 2), dtype=np.uint8)
    packed = pack_column(col)
    assert packed.dtype == object and packed.shape == (7,)
    np.testing.assert_array_equal(unpack_column(packed), col)
    np.testing.assert_array_equal(unpack_column(packed[[4, 4, 0]]), col[[4, 4, 0]])
    np.testing.assert_array_equal(unpack_column(list(packed)), col)
    with pytest.raises(ValueError, match="empty"):
        unpack_column(packed[:0])
    mixed = np.array([pack(np.zeros(3)), pack(np.zeros(4))], dtype=object)
    with pytest.raises(ValueError, match="row 1"):
        unpack_column(mixed)
    mixed_dtype = np.array([pack(np.zeros(3)), pack(np.zeros(3, dtype=np.float32))], dtype=object)
    with pytest.raises(ValueError, match="row 1"):
        unpack_column(mixed_dtype)
    with pytest.raises(ValueError):
        pack_column(np.float32(1.0))


# ------------------------------------------------------------ memory savings
def _scrolling_strip(width: int, rng: np.random.Generator) -> np.ndarray:
    """An 84-row side-scrolling "level": flat sky, a grainy ground band (like
    the resampling noise of downscaled Atari screens, which LZ4 cannot
    compress), many solid blocks of random size and colour, and noisy sprites."""
    strip = np.full((84, width), 40, dtype=np.uint8)  # sky
    strip[72:] = rng.choice(np.array([108, 110, 113], dtype=np.uint8), size=(12, width))  # ground
    strip[68:70] = 200  # horizon line
    for x in range(0, width, 23):  # one solid block every 23 columns on average
        h, w = rng.integers(4, 20, size=2)
        y = rng.integers(0, 84 - h)
        x0 = x + rng.integers(0, 12)
        strip[y : y + h, x0 : x0 + w] = rng.integers(0, 256)
    for x in range(0, width, 61):  # textured sprites
        y = rng.integers(0, 76)
        strip[y : y + 8, x : x + 8] = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)[:, : max(0, min(8, width - x))]
    return strip


def test_compression_saves_memory_on_100k_atari_like_observations() -> None:
    """100k stacked 84x84x4 uint8 observations (2.8 GB raw), built and packed
    in chunks of 2,000 so that only ~60 MB of raw frames exist at a time."""
    rng = np.random.default_rng(0)
    n_obs, chunk, stack = 100_000, 2_000, 4
    strip = _scrolling_strip(n_obs + 84 + stack, rng)
    # frames[j] is the 84x84 screen at scroll position j (a view, no copy).
    frames = np.lib.stride_tricks.sliding_window_view(strip, 84, axis=1).transpose(1, 0, 2)
    raw_bytes = 0
    packed_bytes = 0  # payload only
    held_bytes = 0  # payload + bytes-object header + one pointer in the object column
    start_time = time.perf_counter()
    spot_checks = []
    for start in range(0, n_obs, chunk):
        # obs[i] stacks the screens at positions i .. i+3 along the last axis.
        obs = np.stack([frames[start + k : start + k + chunk] for k in range(stack)], axis=-1)
        assert obs.shape == (chunk, 84, 84, 4)
        column = pack_column(obs)
        raw_bytes += obs.nbytes
        sizes = [len(b) for b in column]
        packed_bytes += sum(sizes)
        held_bytes += sum(sys.getsizeof(b) for b in column) + column.nbytes
        spot_checks.append((obs[-1].copy(), column[-1]))
    elapsed = time.perf_counter() - start_time
    for original, data in spot_checks[::10]:
        np.testing.assert_array_equal(unpack(data), original)
    ratio = raw_bytes / held_bytes
    print(
        f"\n100k obs 84x84x4 uint8: uncompressed {raw_bytes / 2**20:.1f} MiB, "
        f"compressed {packed_bytes / 2**20:.1f} MiB payload / {held_bytes / 2**20:.1f} MiB held "
        f"(ratio {ratio:.1f}x, {elapsed:.1f} s)"
    )
    assert raw_bytes == n_obs * 84 * 84 * 4
    assert ratio >= 3.0
