"""The wire and journal format of per-image results, shared by the scorer and the coordinator.

``per_image_correct``: one bit per image (1 = predicted right) in the split's image order, packed
little-endian within each byte -- image ``i`` is bit ``i % 8`` of byte ``i // 8`` (numpy's
``packbits(..., bitorder="little")``); ``ceil(n / 8)`` bytes, the unused high bits of the last one 0.
``per_image_loss``: each image's cross-entropy of its true class as little-endian float32, ``4 n``
bytes in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def pack_correct(correct: Sequence[bool] | npt.NDArray[np.bool_]) -> bytes:
    """Per-image correctness as packed little-endian bits."""
    return np.packbits(np.asarray(correct, dtype=bool), bitorder="little").tobytes()


def unpack_correct(data: bytes, total: int) -> npt.NDArray[np.bool_]:
    """The ``total`` per-image flags of :func:`pack_correct` output."""
    if len(data) != (total + 7) // 8:
        raise ValueError(f"{len(data)} bytes of per-image bits do not hold {total} images")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=total, bitorder="little")
    return bits.astype(bool)


def pack_loss(losses: Sequence[float] | npt.NDArray[np.floating]) -> bytes:
    """Per-image losses as little-endian float32."""
    return np.asarray(losses, dtype="<f4").tobytes()


def unpack_loss(data: bytes) -> npt.NDArray[np.float64]:
    """The per-image losses of :func:`pack_loss` output (as float64)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes of per-image losses are not float32 values")
    return np.frombuffer(data, dtype="<f4").astype(np.float64)
