"""Write small TF1 checkpoints (V2 bundle, V1 table) from NumPy arrays.

Used by tests and synthetic data to produce files in the exact layout ``tf.train.Saver`` writes,
so the reader can be exercised without TensorFlow and without the golden files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lesa.tf_formats.crc32c import crc32c, mask
from lesa.tf_formats.protowire import (
    encode_fixed32_field,
    encode_length_field,
    encode_varint,
    encode_varint_field,
)
from lesa.tf_formats.sstable import write_table

_NUMPY_TO_TF = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6,
                "int64": 9, "bool": 10, "float16": 19, "uint16": 17, "uint32": 22, "uint64": 23}


def _tf_dtype(array: np.ndarray) -> int:
    if array.dtype.kind in "OSU":
        return 7
    try:
        return _NUMPY_TO_TF[array.dtype.name]
    except KeyError:
        raise ValueError(f"dtype {array.dtype} has no TF checkpoint equivalent here") from None


def _shape_proto(shape) -> bytes:
    return b"".join(encode_length_field(2, encode_varint_field(1, d) if d else b"") for d in shape)


def _string_bytes(array: np.ndarray) -> bytes:
    items = [x if isinstance(x, bytes) else str(x).encode() for x in array.ravel()]
    lengths = b"".join(encode_varint(len(x)) for x in items)
    return lengths + crc32c(lengths).to_bytes(4, "little") + b"".join(items)


def write_tf_checkpoint(prefix, tensors: dict) -> Path:
    """V2 bundle: ``prefix.index`` + ``prefix.data-00000-of-00001`` (one shard, little-endian)."""
    prefix = Path(prefix)
    data = bytearray()
    entries = []
    for name, value in tensors.items():
        array = np.asarray(value)
        dtype = _tf_dtype(array)
        payload = _string_bytes(array) if dtype == 7 else np.ascontiguousarray(array).astype(
            array.dtype.newbyteorder("<")).tobytes()
        entry = encode_varint_field(1, dtype) + encode_length_field(2, _shape_proto(array.shape))
        if data:
            entry += encode_varint_field(4, len(data))
        entry += encode_varint_field(5, len(payload)) + encode_fixed32_field(6, mask(crc32c(payload)))
        entries.append((name.encode(), entry))
        data += payload
    header = encode_varint_field(1, 1) + encode_length_field(3, encode_varint_field(1, 1))
    write_table(f"{prefix}.index", [(b"", header)] + entries)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    return prefix


def write_tf_checkpoint_v1(path, tensors: dict, split_rows: int | None = None) -> Path:
    """V1 single-file table with values in TensorProto repeated fields (float32/float64/int32/int64).

    split_rows: store each tensor with more rows than this as several slices along dim 0 (as a
    partitioned save would). Slice keys are ``\\0`` + name + start, not TF's OrderedCode (the
    reader does not depend on key contents).
    """
    meta = b""
    items = []
    for name, value in tensors.items():
        array = np.asarray(value)
        dtype = _tf_dtype(array)
        full_extent = encode_length_field(4, b"".join(encode_length_field(1, b"") for _ in array.shape))
        meta += encode_length_field(1, encode_length_field(1, name.encode()) + encode_length_field(
            2, _shape_proto(array.shape)) + encode_varint_field(3, dtype) + full_extent)
        rows = array.shape[0] if array.ndim else 1
        step = rows if (split_rows is None or array.ndim == 0) else max(1, split_rows)
        for start in range(0, max(rows, 1), step):
            part = array[start:start + step] if array.ndim else array
            if array.ndim and step < rows:
                extents = encode_length_field(1, encode_varint_field(1, start) + encode_varint_field(2, len(part)))
                extents += b"".join(encode_length_field(1, b"") for _ in array.shape[1:])
            else:
                extents = b"".join(encode_length_field(1, b"") for _ in array.shape)
            proto = encode_varint_field(1, dtype) + _values_field(part, dtype)
            saved = encode_length_field(1, name.encode()) + encode_length_field(2, extents) + encode_length_field(3, proto)
            items.append((b"\x00" + name.encode() + start.to_bytes(8, "big"), encode_length_field(2, saved)))
    items.append((b"", encode_length_field(1, meta)))
    write_table(path, items)
    return Path(path)


def _values_field(array: np.ndarray, dtype: int) -> bytes:
    flat = np.ascontiguousarray(array).ravel()
    if dtype == 1:
        return encode_length_field(5, flat.astype("<f4").tobytes())
    if dtype == 2:
        return encode_length_field(6, flat.astype("<f8").tobytes())
    if dtype == 3:
        return encode_length_field(7, b"".join(encode_varint(int(v)) for v in flat))
    if dtype == 9:
        return encode_length_field(10, b"".join(encode_varint(int(v)) for v in flat))
    raise ValueError(f"write_tf_checkpoint_v1 supports float32/float64/int32/int64, not TF dtype {dtype}")
