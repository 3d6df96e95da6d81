"""``tf.train.Example`` protos: decode to plain Python/NumPy values, and encode (for tests/synth).

Example { Features features = 1 }; Features { map<string, Feature> feature = 1 } (map entries:
key = 1, value = 2); Feature { oneof: BytesList bytes_list = 1, FloatList float_list = 2,
Int64List int64_list = 3 }; each list is ``repeated value = 1`` (floats/ints packed or not).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lesa.errors import TFRecordError
from lesa.tf_formats.protowire import (
    LENGTH,
    WireFormatError,
    encode_length_field,
    encode_varint,
    iter_fields,
    repeated_scalars,
)



def _feature(buf):
    """Feature -> list[bytes] (bytes_list), float32 array (float_list) or int64 array (int64_list)."""
    value = []
    for field in iter_fields(buf):
        if field.wire_type != LENGTH:
            raise WireFormatError(f"Feature field {field.number} is not a list message")
        if field.number == 1:
            items = []
            for item in iter_fields(field.value):
                if item.number != 1 or item.wire_type != LENGTH:
                    raise WireFormatError("BytesList holds a non-bytes field")
                items.append(bytes(item.value))
            value = items
        elif field.number == 2:
            value = repeated_scalars(list(iter_fields(field.value)), 1, "f4").astype(np.float32)
        elif field.number == 3:
            value = repeated_scalars(list(iter_fields(field.value)), 1, "varint").view(np.int64).copy()
    return value


def parse_example(record, where: str = "record") -> dict:
    """Serialized ``tf.train.Example`` -> {name: list[bytes] | float32 array | int64 array}.

    where: text naming the record in error messages (e.g. "file.tfrecords: record 12").
    """
    out: dict = {}
    try:
        for top in iter_fields(record):
            if top.number != 1:
                continue
            if top.wire_type != LENGTH:
                raise WireFormatError("Example.features is not a message")
            for entry in iter_fields(top.value):
                if entry.number != 1:
                    continue
                if entry.wire_type != LENGTH:
                    raise WireFormatError("Features.feature entry is not a message")
                key, value = None, []
                for part in iter_fields(entry.value):
                    if part.wire_type != LENGTH:
                        raise WireFormatError("feature map entry field is not length-delimited")
                    if part.number == 1:
                        key = bytes(part.value).decode("utf-8")
                    elif part.number == 2:
                        value = _feature(part.value)
                if key is None:
                    raise WireFormatError("feature without a name")
                out[key] = value
    except (WireFormatError, UnicodeDecodeError) as exc:
        raise TFRecordError(f"{where}: not a valid tf.train.Example ({exc}); the file is corrupted") from None
    return out


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
