"""CRC32C (Castagnoli), as TensorFlow uses it in TFRecords, table blocks and checkpoint bundles,
computed by ``google_crc32c`` (hardware CRC instructions where the CPU has them)."""
from __future__ import annotations

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (bytes-like or array), continuing from a previous ``crc`` value."""
    if not isinstance(data, bytes):  # the extension takes bytes or arrays: view other buffers, never copy
        data = np.ascontiguousarray(data).reshape(-1) if isinstance(data, np.ndarray) else \
            np.frombuffer(memoryview(data).cast("B"), np.uint8)
    return google_crc32c.extend(crc, data)


def mask(crc: int) -> int:
    """TF's masked CRC (stored in TFRecords, table blocks and bundle entries)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def masked_crc32c(data) -> int:
    return mask(crc32c(data))
