"""Writers of the TF1 file formats, for tests only (the package reads these formats, never writes them).

- ``write_tf_checkpoint(prefix, tensors)``: a V2 bundle as ``tf.train.Saver`` writes it;
  ``write_tf_checkpoint_v1(path, tensors, split_rows)``: a V1 table as TF-slim's model zoo files.
- ``write_table(path, items, compress=None)``: a TF (LevelDB) table file.
- ``encode_example(features)`` / ``write_tfrecords(path, records, compression)``: TFRecord files of
  ``tf.train.Example`` records, as the original's extraction scripts wrote them.
- ``tf_named_weights(model)``: a LESA's variables under the original's TF names and layouts.
- protobuf encoders: ``encode_varint``, ``encode_key``, ``encode_length_field``, ``encode_varint_field``,
  ``encode_fixed32_field``.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from lesa.tf_formats.crc32c import crc32c, mask, masked_crc32c

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
TABLE_MAGIC = 0xDB4775248B80FB57


# ---------------------------------------------------------------- protobuf wire format

def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def encode_length_field(number: int, payload: bytes) -> bytes:
    return encode_key(number, LENGTH) + encode_varint(len(payload)) + bytes(payload)


def encode_varint_field(number: int, value: int) -> bytes:
    return encode_key(number, VARINT) + encode_varint(value)


def encode_fixed32_field(number: int, value: int) -> bytes:
    return encode_key(number, FIXED32) + struct.pack("<I", value)


# ---------------------------------------------------------------- table files

def _block(entries, restart_interval: int) -> bytes:
    body, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(body))
            shared = 0
        else:
            shared = len(os.path.commonprefix([prev, key]))
        body += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        body += key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return bytes(body) + struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))


def write_table(path, items, block_size: int = 4096, restart_interval: int = 16, compress=None) -> None:
    """Sorted (key, value) byte pairs as a TF table. ``compress``: a function applied to each block,
    stored as compression type 1 (snappy), e.g. ``cramjam.snappy.compress_raw``."""
    items = sorted((bytes(k), bytes(v)) for k, v in items)
    out = bytearray()

    def finish(entries) -> bytes:
        payload, kind = _block(entries, restart_interval), 0
        if compress is not None:
            payload, kind = bytes(compress(payload)), 1
        handle = encode_varint(len(out)) + encode_varint(len(payload))
        out.extend(payload + bytes([kind]) + struct.pack("<I", masked_crc32c(payload + bytes([kind]))))
        return handle

    index, pending, size = [], [], 0
    for key, value in items:
        pending.append((key, value))
        size += len(key) + len(value)
        if size >= block_size:
            index.append((key, finish(pending)))
            pending, size = [], 0
    if pending:
        index.append((pending[-1][0], finish(pending)))
    footer = finish([]) + finish(index)  # metaindex handle, index handle
    out += footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    Path(path).write_bytes(bytes(out))


# ---------------------------------------------------------------- checkpoints

_TF_DTYPES = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6,
              "int64": 9, "bool": 10, "float16": 19, "uint16": 17, "uint32": 22, "uint64": 23}


def _tf_dtype(array: np.ndarray) -> int:
    if array.dtype.kind in "OSU":
        return 7
    try:
        return _TF_DTYPES[array.dtype.name]
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


def _values_field(array: np.ndarray, dtype: int) -> bytes:
    flat = np.ascontiguousarray(array).ravel()
    if dtype == 1:
        return encode_length_field(5, flat.astype("<f4").tobytes())
    if dtype == 2:
        return encode_length_field(6, flat.astype("<f8").tobytes())
    if dtype in (3, 9):  # int_val / int64_val, packed varints
        return encode_length_field(7 if dtype == 3 else 10, b"".join(encode_varint(int(v)) for v in flat))
    raise ValueError(f"write_tf_checkpoint_v1 supports float32/float64/int32/int64, not TF dtype {dtype}")


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


def tf_named_weights(model) -> dict[str, np.ndarray]:
    """The model's variables under the original's TF names and layouts (the inverse of loading);
    with ``write_tf_checkpoint`` this writes a checkpoint the original could read."""
    from lesa.tf_weights import CONV_W, tf_variables

    state = model.state_dict()
    out = {}
    for tf_name, (key, _) in tf_variables(model).items():
        array = state[key].detach().cpu().numpy()
        if tf_name == CONV_W:
            array = np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
        out[tf_name] = np.ascontiguousarray(array, dtype=np.float32)
    return out


# ---------------------------------------------------------------- TFRecord files

def _encode_feature(value) -> bytes:
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return encode_length_field(2, encode_length_field(1, value.astype("<f4").tobytes()))
    if isinstance(value, np.ndarray) and value.dtype.kind in "iub":
        packed = b"".join(encode_varint(int(v)) for v in value.ravel())
        return encode_length_field(3, encode_length_field(1, packed))
    items = list(value)
    if all(isinstance(v, (bytes, str)) for v in items):
        payload = b"".join(encode_length_field(1, v.encode() if isinstance(v, str) else v) for v in items)
        return encode_length_field(1, payload)
    if all(isinstance(v, (int, np.integer)) for v in items):
        return _encode_feature(np.asarray(items, dtype=np.int64))
    return _encode_feature(np.asarray(items, dtype=np.float32))


def encode_example(features: Mapping[str, object]) -> bytes:
    """{name: bytes | str | list of them | float array | int array} -> serialized tf.train.Example."""
    entries = b"".join(
        encode_length_field(1, encode_length_field(1, name.encode()) + encode_length_field(2, _encode_feature(value)))
        for name, value in sorted(features.items())
    )
    return encode_length_field(1, entries)


def write_tfrecords(path, records: Iterable[bytes], compression: str | None = None) -> int:
    """Write records as a TFRecord file; returns the count. compression: "" (or "none"), "ZLIB" or
    "GZIP"; None = from the file name ('ZLIB' / 'GZIP' in it), as the original chose it."""
    if compression is None:
        compression = next((kind for kind in ("ZLIB", "GZIP") if kind in str(path)), "")
    kind = compression.upper().replace("NONE", "")
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15 if kind == "ZLIB" else 31) if kind else None
    count = 0
    with open(path, "wb") as fh:
        for record in records:
            record = bytes(record)
            length = struct.pack("<Q", len(record))
            frame = length + struct.pack("<I", masked_crc32c(length)) + record + struct.pack("<I", masked_crc32c(record))
            fh.write(comp.compress(frame) if comp else frame)
            count += 1
        if comp:
            fh.write(comp.flush())
    return count
