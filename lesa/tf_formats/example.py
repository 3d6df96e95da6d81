"""``tf.train.Example`` protos -> plain Python/NumPy values.

Example {features = 1}; Features {map<string, Feature> feature = 1}; Feature {oneof bytes_list = 1,
float_list = 2, int64_list = 3}, each list ``repeated value = 1``.
"""
from __future__ import annotations

import numpy as np

from lesa.errors import TFRecordError
from lesa.tf_formats.protowire import LENGTH, WireFormatError, iter_fields, repeated_scalars


def _payload(field, what: str):
    if field.wire_type != LENGTH:
        raise WireFormatError(f"{what} is not length-delimited")
    return field.value


def _feature(buf):
    """Feature -> list[bytes] (bytes_list), float32 array (float_list) or int64 array (int64_list)."""
    value = []
    for field in iter_fields(buf):
        payload = _payload(field, f"Feature field {field.number}")
        if field.number == 1:
            value = []
            for item in iter_fields(payload):
                if item.number != 1:
                    raise WireFormatError("BytesList holds a non-bytes field")
                value.append(bytes(_payload(item, "a BytesList value")))
        elif field.number == 2:
            value = repeated_scalars(list(iter_fields(payload)), 1, "f4").astype(np.float32)
        elif field.number == 3:
            value = repeated_scalars(list(iter_fields(payload)), 1, "varint").view(np.int64).copy()
    return value


def parse_example(record, where: str = "record") -> dict:
    """Serialized ``tf.train.Example`` -> {name: list[bytes] | float32 array | int64 array}; ``where``
    names the record in errors."""
    out: dict = {}
    try:
        for top in iter_fields(record):
            if top.number != 1:
                continue
            for entry in iter_fields(_payload(top, "Example.features")):
                if entry.number != 1:
                    continue
                key, value = None, []
                for part in iter_fields(_payload(entry, "a Features.feature entry")):
                    payload = _payload(part, "a feature map entry field")
                    if part.number == 1:
                        key = bytes(payload).decode("utf-8")
                    elif part.number == 2:
                        value = _feature(payload)
                if key is None:
                    raise WireFormatError("feature without a name")
                out[key] = value
    except (WireFormatError, UnicodeDecodeError) as exc:
        raise TFRecordError(f"{where}: not a valid tf.train.Example ({exc}); the file is corrupted") from None
    return out
