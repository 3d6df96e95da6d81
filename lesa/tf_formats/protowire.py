"""A minimal protocol-buffer wire-format decoder (no protobuf package), for the TF1 formats.

Length-delimited payloads are memoryview slices, never copies, and every read is bounds-checked.
``WireFormatError`` is re-raised by the format modules as a lesa error naming the file and record.
"""
from __future__ import annotations

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
    """-> (value, position after it) of the varint at ``buf[pos]``, not reading past ``end``."""
    result = shift = 0
    while shift < 70:
        if pos >= end:
            raise WireFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise WireFormatError("varint longer than 10 bytes")


def iter_fields(buf) -> Iterator[Field]:
    """The fields of one message in ``buf``, in file order."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    pos, end = 0, len(view)
    while pos < end:
        key, pos = read_varint(view, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireFormatError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos, end)
            yield Field(number, wire_type, value)
            continue
        if wire_type == LENGTH:
            size, pos = read_varint(view, pos, end)
        elif wire_type in (FIXED32, FIXED64):
            size = 4 if wire_type == FIXED32 else 8
        else:
            raise WireFormatError(f"unsupported wire type {wire_type} (field {number})")
        if size > end - pos:
            raise WireFormatError(f"field {number} declares {size} bytes, only {end - pos} left")
        value = view[pos:pos + size]
        pos += size
        yield Field(number, wire_type, value if wire_type == LENGTH else int.from_bytes(value, "little"))


def to_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def varints(buf) -> list[int]:
    """All the varints of ``buf``, one after another."""
    values, pos, end = [], 0, len(buf)
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def repeated_scalars(fields: list[Field], number: int, kind: str) -> np.ndarray:
    """All values of repeated field ``number``, packed or not; kind 'f4', 'f8' or 'varint' (-> uint64)."""
    wire_type = {"f4": FIXED32, "f8": FIXED64, "varint": VARINT}[kind]
    dtype = np.dtype(np.uint64 if kind == "varint" else "<" + kind)
    parts = []
    for field in fields:
        if field.number != number:
            continue
        if field.wire_type == LENGTH:  # packed
            if kind == "varint":
                parts.append(np.array(varints(field.value), dtype))
            elif len(field.value) % dtype.itemsize:
                raise WireFormatError(f"packed field {number} has {len(field.value)} bytes, "
                                      f"not a multiple of {dtype.itemsize}")
            else:
                parts.append(np.frombuffer(field.value, dtype))
        elif field.wire_type != wire_type:
            raise WireFormatError(f"field {number} has wire type {field.wire_type}, expected {wire_type}")
        elif kind == "varint":
            parts.append(np.array([field.value], dtype))
        else:
            parts.append(np.frombuffer(field.value.to_bytes(dtype.itemsize, "little"), dtype))
    if len(parts) == 1:
        return parts[0]  # a view of the buffer: no copy of a large tensor
    return np.concatenate(parts) if parts else np.zeros(0, dtype)
