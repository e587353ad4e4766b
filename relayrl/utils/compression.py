"""LZ4 compression of numpy arrays, without pickle.

Why: a replay buffer of Atari-style observations (84x84x4 uint8, ~28 KB per
row, twice per transition for obs and new_obs) needs tens of GB for the 1M
transitions used by Prioritized Experience Replay (Schaul et al. 2016,
"Prioritized Experience Replay"). Frames are mostly flat background, so a fast
LZ4 pass shrinks them several-fold for a few microseconds per row.

Why not pickle: replay data crosses process boundaries (rollout workers to the
learner) and bytes that are unpickled can execute code. The format here is
plain data: a fixed header naming dtype and shape, then the raw C-order bytes,
all inside one LZ4 frame (with a content checksum, so corruption is detected).

Format of the decompressed payload (little-endian)::

    magic  b"RRNP"  | version u8 | dtype-string length u8 | dtype string (ASCII,
    numpy ``dtype.str``, e.g. "<f4") | ndim u8 | ndim x u64 shape | raw bytes
"""

from __future__ import annotations

import struct
from typing import Any

import lz4.frame
import numpy as np

__all__ = ["pack", "unpack", "is_compressed", "pack_column", "unpack_column"]

_MAGIC = b"RRNP"
_VERSION = 1
_LZ4_FRAME_MAGIC = b'\x04"M\x18'  # 0x184D2204, little-endian
_PREFIX = struct.Struct("<4sBB")  # magic, version, dtype-string length


def pack(arr: np.ndarray) -> bytes:
    """Compress one array into a self-describing LZ4 frame.

    Object and structured dtypes are refused: they cannot be described by a
    dtype string alone (and object arrays would need pickle).
    """
    arr = np.asarray(arr)
    dtype = arr.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"cannot pack dtype {dtype!r}: only plain (non-object, unstructured) dtypes")
    if arr.ndim > 255:
        raise ValueError(f"cannot pack an array with {arr.ndim} dimensions (max 255)")
    dtype_str = dtype.str.encode("ascii")
    header = (
        _PREFIX.pack(_MAGIC, _VERSION, len(dtype_str)) + dtype_str + struct.pack(f"<B{arr.ndim}Q", arr.ndim, *arr.shape)
    )
    return lz4.frame.compress(header + arr.tobytes(order="C"), content_checksum=True)


def unpack(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack`; returns a new, writable array.

    Raises ValueError for anything that is not an intact :func:`pack` output
    (bad LZ4 frame, failed checksum, wrong magic or version, size mismatch).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"unpack expects bytes, got {type(data).__name__}")
    try:
        payload = lz4.frame.decompress(data, return_bytearray=True)
    except RuntimeError as err:  # the lz4 binding raises RuntimeError for every frame error
        raise ValueError(f"corrupt compressed array: LZ4 frame error ({err})") from err
    return _parse_payload(payload)


def _parse_payload(payload: bytearray) -> np.ndarray:
    if len(payload) < _PREFIX.size:
        raise ValueError(f"corrupt compressed array: payload of {len(payload)} bytes is too short")
    magic, version, dtype_len = _PREFIX.unpack_from(payload, 0)
    if magic != _MAGIC:
        raise ValueError(f"corrupt compressed array: bad magic {magic!r} (expected {_MAGIC!r})")
    if version != _VERSION:
        raise ValueError(f"corrupt compressed array: unsupported format version {version}")
    pos = _PREFIX.size
    try:
        dtype = np.dtype(bytes(payload[pos : pos + dtype_len]).decode("ascii"))
        pos += dtype_len
        (ndim,) = struct.unpack_from("<B", payload, pos)
        shape = struct.unpack_from(f"<{ndim}Q", payload, pos + 1)
    except (UnicodeDecodeError, TypeError, ValueError, struct.error) as err:
        raise ValueError(f"corrupt compressed array: unreadable header ({err})") from err
    if dtype.hasobject:
        raise ValueError("corrupt compressed array: object dtype in header")
    pos += 1 + 8 * ndim
    expected = int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize
    if len(payload) - pos != expected:
        raise ValueError(
            f"corrupt compressed array: {len(payload) - pos} data bytes, "
            f"expected {expected} for dtype {dtype} and shape {tuple(shape)}"
        )
    return np.frombuffer(payload, dtype=dtype, offset=pos).reshape(shape)


def is_compressed(x: Any) -> bool:
    """True for :func:`pack` output (bytes starting with the LZ4 frame magic)
    and for :func:`pack_column` output (a non-empty object array of such bytes).

    A cheap structural check, not a validation: only the leading bytes of the
    first element are looked at.
    """
    if isinstance(x, np.ndarray):
        return x.dtype == object and x.size > 0 and is_compressed(x.flat[0])
    if isinstance(x, (bytes, bytearray)):
        return x[:4] == _LZ4_FRAME_MAGIC
    return False


def pack_column(arr: np.ndarray) -> np.ndarray:
    """Pack every row ``arr[i]`` separately into a 1-D object array of bytes.

    Per-row packing is what a replay buffer needs: rows are overwritten and
    sampled individually.
    """
    arr = np.asarray(arr)
    if arr.ndim < 1:
        raise ValueError("pack_column needs an array with a leading row dimension")
    out = np.empty(len(arr), dtype=object)
    for i in range(len(arr)):
        out[i] = pack(arr[i])
    return out


def unpack_column(col: np.ndarray) -> np.ndarray:
    """Unpack a :func:`pack_column` result (or any sequence of packed rows)
    and stack the rows into one array of shape ``(len(col), *row_shape)``.

    All rows must share dtype and shape; an empty column is refused because
    its row shape is unknown.
    """
    if len(col) == 0:
        raise ValueError("cannot unpack an empty column: its row shape and dtype are unknown")
    rows = [unpack(data) for data in col]
    first = rows[0]
    for i, row in enumerate(rows):
        if row.dtype != first.dtype or row.shape != first.shape:
            raise ValueError(
                f"row {i} has dtype {row.dtype} and shape {row.shape}, "
                f"row 0 has dtype {first.dtype} and shape {first.shape}"
            )
    return np.stack(rows)
