"""Raw Snappy block decompression (the optional block compression of TF/LevelDB tables).

Format: a varint uncompressed length, then elements tagged by their low 2 bits:
00 literal, 01 copy with 1-byte offset, 10 copy with 2-byte offset, 11 copy with 4-byte offset.
"""
from __future__ import annotations

from lesa.tf_formats.protowire import WireFormatError, read_varint


class SnappyError(WireFormatError):
    """Corrupted snappy data (internal; re-raised by the table reader with the file named)."""


def decompress(data, max_output: int) -> bytes:
    """Decompress one raw snappy block; refuses a declared length above ``max_output``."""
    src = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    end = len(src)
    try:
        length, pos = read_varint(src, 0, end)
    except WireFormatError as exc:
        raise SnappyError(f"bad snappy length header: {exc}") from None
    if length > max_output:
        raise SnappyError(f"snappy block declares {length} bytes, more than the allowed {max_output}")
    out = bytearray()
    while pos < end:
        tag = src[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            size = tag >> 2
            if size >= 60:
                n_bytes = size - 59
                if pos + n_bytes > end:
                    raise SnappyError("truncated literal length")
                size = int.from_bytes(src[pos:pos + n_bytes], "little")
                pos += n_bytes
            size += 1
            if pos + size > end:
                raise SnappyError("truncated literal")
            out += src[pos:pos + size]
            pos += size
        else:
            if kind == 1:
                if pos + 1 > end:
                    raise SnappyError("truncated copy")
                size = ((tag >> 2) & 7) + 4
                offset = ((tag >> 5) << 8) | src[pos]
                pos += 1
            else:
                n_bytes = 2 if kind == 2 else 4
                if pos + n_bytes > end:
                    raise SnappyError("truncated copy")
                size = (tag >> 2) + 1
                offset = int.from_bytes(src[pos:pos + n_bytes], "little")
                pos += n_bytes
            if offset == 0 or offset > len(out):
                raise SnappyError(f"copy offset {offset} outside the {len(out)} bytes decoded so far")
            start = len(out) - offset
            if size <= offset:
                out += out[start:start + size]
            else:  # overlapping copy repeats the pattern
                pattern = bytes(out[start:])
                out += (pattern * (size // offset + 1))[:size]
        if len(out) > length:
            raise SnappyError("snappy data longer than its declared length")
    if len(out) != length:
        raise SnappyError(f"snappy data has {len(out)} bytes, header declared {length}")
    return bytes(out)


def compress_literal(data: bytes) -> bytes:
    """Valid snappy encoding made only of literals (for tests of the decompressor)."""
    from lesa.tf_formats.protowire import encode_varint

    out = bytearray(encode_varint(len(data)))
    for start in range(0, len(data), 1 << 16):
        piece = data[start:start + (1 << 16)]
        n = len(piece) - 1
        if n < 60:
            out.append(n << 2)
        else:
            out.append(61 << 2)  # 2-byte length follows
            out += n.to_bytes(2, "little")
        out += piece
    return bytes(out)
