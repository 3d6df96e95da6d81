"""A minimal protocol-buffer wire-format decoder/encoder (no generated code, no protobuf package).

Only what the TF1 file formats need: varints, fixed32/64 and length-delimited fields. Decoding
works on any bytes-like buffer (bytes, memoryview of a memory map) and never copies the payload of
a length-delimited field: it returns a memoryview slice. Every read is bounds-checked against the
buffer, so a hostile length can never cause a large allocation or a read past the end.
Errors raise ``WireFormatError``; the file-format modules turn it into their ``lesa`` error type
with the file and record/tensor named.
"""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireFormatError(ValueError):
    """Malformed protobuf bytes (internal; callers re-raise as a lesa error with context)."""


class Field(NamedTuple):
    number: int
    wire_type: int
    value: object  # int for VARINT/FIXED32/FIXED64, memoryview for LENGTH


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireFormatError("varint longer than 10 bytes")


def iter_fields(buf, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield the fields of one message in ``buf[start:end]`` in file order."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    end = len(view) if end is None else end
    pos = start
    while pos < end:
        key, pos = read_varint(view, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireFormatError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos, end)
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise WireFormatError("truncated fixed64")
            value = int.from_bytes(view[pos:pos + 8], "little")
            pos += 8
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise WireFormatError("truncated fixed32")
            value = int.from_bytes(view[pos:pos + 4], "little")
            pos += 4
        elif wire_type == LENGTH:
            length, pos = read_varint(view, pos, end)
            if length > end - pos:
                raise WireFormatError(f"length-delimited field declares {length} bytes, only {end - pos} left")
            value = view[pos:pos + length]
            pos += length
        else:
            raise WireFormatError(f"unsupported wire type {wire_type} (field {number})")
        yield Field(number, wire_type, value)


def to_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_packed_varints(buf) -> np.ndarray:
    """Packed repeated varints -> uint64 array (vectorised; reinterpret as signed where needed)."""
    data = np.frombuffer(buf, dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if data[-1] & 0x80:
        raise WireFormatError("truncated packed varint")
    ends = np.flatnonzero(data < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise WireFormatError("varint longer than 10 bytes")
    values = np.zeros(ends.size, dtype=np.uint64)
    for k in range(int(lengths.max())):
        rows = np.flatnonzero(lengths > k)
        values[rows] |= (data[starts[rows] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return values


def repeated_scalars(fields: list[Field], number: int, kind: str) -> np.ndarray:
    """All values of repeated scalar field ``number``, packed or not.

    kind: 'f4' (float, fixed32), 'f8' (double, fixed64), 'varint' (-> uint64 array).
    """
    parts = []
    for field in fields:
        if field.number != number:
            continue
        if field.wire_type == LENGTH:  # packed
            if kind == "varint":
                parts.append(decode_packed_varints(field.value))
            else:
                size = 4 if kind == "f4" else 8
                if len(field.value) % size:
                    raise WireFormatError(f"packed field {number} has {len(field.value)} bytes, not a multiple of {size}")
                parts.append(np.frombuffer(field.value, dtype="<" + kind))
        else:
            expected = {"f4": FIXED32, "f8": FIXED64, "varint": VARINT}[kind]
            if field.wire_type != expected:
                raise WireFormatError(f"field {number} has wire type {field.wire_type}, expected {expected}")
            if kind == "varint":
                parts.append(np.array([field.value], dtype=np.uint64))
            else:
                raw = field.value.to_bytes(4 if kind == "f4" else 8, "little")
                parts.append(np.frombuffer(raw, dtype="<" + kind))
    if not parts:
        return np.zeros(0, dtype=np.uint64 if kind == "varint" else "<" + kind)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ---- encoding (for writers and test data) ----

def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def encode_length_field(number: int, payload: bytes) -> bytes:
    return encode_key(number, LENGTH) + encode_varint(len(payload)) + bytes(payload)


def encode_varint_field(number: int, value: int) -> bytes:
    return encode_key(number, VARINT) + encode_varint(value)


def encode_fixed32_field(number: int, value: int) -> bytes:
    return encode_key(number, FIXED32) + struct.pack("<I", value)
