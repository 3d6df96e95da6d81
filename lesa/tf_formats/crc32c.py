"""CRC32C (Castagnoli), as TensorFlow uses it in TFRecords, table blocks and checkpoint bundles.

The standard library has no CRC32C, so this computes it with NumPy: the input is cut into many
equal chunks whose CRCs are computed side by side (one vectorised step per 4 bytes of chunk), then
combined with the linear "append n zero bytes" operator of the CRC. Large buffers are processed in
fixed-size segments so memory stays bounded (a 550 MB tensor needs only a few MB extra).
"""
from __future__ import annotations

import sys

import numpy as np

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

_SMALL = 256  # inputs shorter than this use the plain byte loop
_SEGMENT = 1 << 20  # bytes per vectorised segment (1 MiB)


def _byte_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _byte_table()
# Slicing-by-4 tables: _SLICE[k][b] = register after feeding byte b followed by k zero bytes.
_SLICE = np.zeros((4, 256), dtype=np.uint32)
_SLICE[0] = _TABLE
for _k in range(1, 4):
    _prev = _SLICE[_k - 1]
    _SLICE[_k] = np.asarray(_TABLE, dtype=np.uint32)[_prev & 0xFF] ^ (_prev >> 8)
_T0, _T1, _T2, _T3 = (_SLICE[k] for k in range(4))


def _update_bytes(register: int, data) -> int:
    """Raw register update (no pre/post inversion) with the byte-at-a-time loop."""
    table = _TABLE
    for b in bytes(data):
        register = table[(register ^ b) & 0xFF] ^ (register >> 8)
    return register


# ---- the "feed n zero bytes" operator, a 32x32 matrix over GF(2) stored as 4 byte tables ----

def _apply_zero_op(tables: np.ndarray, register):
    """Apply the zero-bytes operator given as 4 byte tables (4, 256) to scalar or array registers."""
    r = np.asarray(register, dtype=np.uint32)
    return tables[0][r & 0xFF] ^ tables[1][(r >> 8) & 0xFF] ^ tables[2][(r >> 16) & 0xFF] ^ tables[3][r >> 24]


def _tables_from_basis(images: np.ndarray) -> np.ndarray:
    """images[i] = operator applied to bit i -> (4, 256) byte tables of the linear operator."""
    tables = np.zeros((4, 256), dtype=np.uint32)
    values = np.arange(256)
    for byte in range(4):
        for bit in range(8):
            has_bit = ((values >> bit) & 1).astype(bool)
            tables[byte][has_bit] ^= images[8 * byte + bit]
    return tables


_ZERO_OPS: dict[int, np.ndarray] = {}


def _zero_op(n_bytes: int) -> np.ndarray:
    """Byte tables of the operator 'feed n_bytes zero bytes into the register' (n_bytes a power of 2)."""
    op = _ZERO_OPS.get(n_bytes)
    if op is None:
        if n_bytes == 1:
            images = np.array([_update_bytes(1 << i, b"\0") for i in range(32)], dtype=np.uint32)
        else:
            half = _zero_op(n_bytes // 2)
            basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
            images = _apply_zero_op(half, _apply_zero_op(half, basis))
        op = _tables_from_basis(images)
        _ZERO_OPS[n_bytes] = op
    return op


def _halfword_tables() -> tuple[np.ndarray, np.ndarray]:
    """16-bit tables: feeding 4 bytes x is LO[x & 0xFFFF] ^ HI[x >> 16] (slicing-by-4, pairs merged)."""
    value = np.arange(1 << 16)
    lo = _T3[value & 0xFF] ^ _T2[value >> 8]
    hi = _T1[value & 0xFF] ^ _T0[value >> 8]
    return lo, hi


_LO16, _HI16 = _halfword_tables()
_LOW_HALF, _HIGH_HALF = (0, 1) if sys.byteorder == "little" else (1, 0)  # halves of a native uint32


def _update_segment(register: int, data: np.ndarray) -> int:
    """Raw register update over a uint8 array, vectorised over parallel chunks."""
    n = data.size
    if n < _SMALL:
        return _update_bytes(register, data.tobytes())
    chunk = 64 if n < (1 << 19) else 128  # measured best on a 2-core CPU
    n_chunks = -(-n // chunk)
    # Left-pad with zeros: zero bytes leave a zero register unchanged, so chunk CRCs computed
    # from register 0 are unaffected. The incoming register is folded into the first 4 data bytes
    # (feeding word w from register r equals feeding w ^ r from register 0).
    padded = np.zeros(n_chunks * chunk, dtype=np.uint8)
    start = padded.size - n
    padded[start:] = data
    padded[start:start + 4] ^= np.frombuffer(int(register).to_bytes(4, "little"), np.uint8)
    halves = np.ascontiguousarray(padded.view("<u2").reshape(n_chunks, chunk // 2).T)  # (chunk/2, n_chunks)
    crc = np.zeros(n_chunks, dtype=np.uint32)
    for j in range(0, chunk // 2, 2):
        pairs = crc.view(np.uint16).reshape(n_chunks, 2)  # the two halves of each register
        crc = _LO16[pairs[:, _LOW_HALF] ^ halves[j]] ^ _HI16[pairs[:, _HIGH_HALF] ^ halves[j + 1]]
    # Combine neighbours pairwise: crc(A || B) = zeros_len(B)(crc(A)) ^ crc(B), all from register 0.
    # An odd count gets a zero chunk in front, which changes nothing.
    length = chunk
    while crc.size > 1:
        if crc.size % 2:
            crc = np.concatenate((np.zeros(1, np.uint32), crc))
        crc = _apply_zero_op(_zero_op(length), crc[0::2]) ^ crc[1::2]
        length *= 2
    return int(crc[0])


def _as_uint8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def crc32c(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (bytes-like or array), continuing from a previous ``crc`` value."""
    buf = _as_uint8(data)
    register = (crc ^ _U32) & _U32
    for offset in range(0, buf.size, _SEGMENT):
        register = _update_segment(register, buf[offset:offset + _SEGMENT])
    return register ^ _U32


def mask(crc: int) -> int:
    """TF's masked CRC (stored in TFRecords, table blocks and bundle entries)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def masked_crc32c(data) -> int:
    return mask(crc32c(data))
