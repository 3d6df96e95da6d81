"""TFRecord files, plain or ZLIB/GZIP (one or several concatenated streams), read as a stream.

Record: ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``.
A bad record raises ``TFRecordError`` naming the file and index, after every record before it.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

from lesa.errors import TFRecordError
from lesa.tf_formats.crc32c import masked_crc32c

MAX_RECORD_BYTES = 1 << 28  # refuse a declared record length above 256 MiB (hostile or corrupted)
_READ_SIZE = 1 << 20
_WBITS = {"ZLIB": 15, "GZIP": 31}


def detect_compression(path, compression: str | None = None) -> str:
    """"", "ZLIB" or "GZIP": ``compression`` ("none" = "") if given, else the first bytes, then the name."""
    if compression is not None:
        value = "" if compression.upper() in ("", "NONE") else compression.upper()
        if value not in ("", *_WBITS):
            raise TFRecordError(f"{path}: unknown compression {compression!r}; use none, ZLIB or GZIP")
        return value
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) == 12 and int.from_bytes(head[8:], "little") == masked_crc32c(head[:8]):
        return ""  # a valid plain record header
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    # original: the compression type was chosen from the file name ('ZLIB' / 'GZIP' in it)
    return next((kind for kind in _WBITS if kind in Path(path).name), "")


class _Inflated:
    """``read(n)`` of concatenated zlib/gzip members (zero padding after one ignored), streaming."""

    def __init__(self, fh, wbits: int):
        self.fh, self.wbits, self.buffer, self.data = fh, wbits, bytearray(), b""
        self.decomp, self.fresh = zlib.decompressobj(wbits), True  # fresh: nothing of this member fed yet

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.data = self.data or self.fh.read(_READ_SIZE)
            if not self.data:
                if not self.fresh:
                    self.buffer += self.decomp.flush()  # output zlib still holds
                    if not self.decomp.eof:
                        raise zlib.error("compressed stream ends early (file truncated)")
                    self.fresh = True
                break
            self.fresh = False
            self.buffer += self.decomp.decompress(self.data, _READ_SIZE)
            self.data = self.decomp.unconsumed_tail
            if self.decomp.eof:
                self.data = self.decomp.unused_data.lstrip(b"\0")
                self.decomp, self.fresh = zlib.decompressobj(self.wbits), True
        with memoryview(self.buffer) as view:
            out = bytes(view[:n])
        del self.buffer[:n]
        return out


def iter_tfrecords(path, compression: str | None = None, verify: bool = True,
                   max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """The records of one TFRecord file as bytes; compression: None (detect), "none", "ZLIB" or "GZIP"."""
    path = Path(path)
    if not path.is_file():
        raise TFRecordError(f"TFRecord file not found: {path}")
    try:
        kind = detect_compression(path, compression)
        fh = open(path, "rb")
    except OSError as exc:
        raise TFRecordError(f"{path}: cannot open TFRecord file: {exc}") from None
    index = offset = 0  # offset: of the current record in the uncompressed stream

    def fail(problem: str):
        where = f"{path}: record {index} (byte {offset}{' of the decompressed stream' if kind else ''})"
        raise TFRecordError(f"{where}: {problem}; the {index} records before it were read. The file is "
                            "truncated or corrupted: re-copy or re-extract it")

    with fh:
        file_size = path.stat().st_size
        stream = _Inflated(fh, _WBITS[kind]) if kind else fh
        while True:
            try:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    fail(f"only {len(header)} bytes of the 12-byte record header")
                (length,) = struct.unpack("<Q", header[:8])
                if verify and int.from_bytes(header[8:], "little") != masked_crc32c(header[:8]):
                    fail("length checksum mismatch")
                limit = max_record_bytes if kind else min(max_record_bytes, file_size - offset - 12)
                if length > limit:
                    fail(f"declared length {length} bytes exceeds the {limit} bytes possible")
                body = stream.read(length + 4)
            except zlib.error as exc:
                fail(f"{kind} decompression failed ({exc})")
            except OSError as exc:
                fail(f"read error ({exc})")
            if len(body) < length + 4:
                fail(f"only {len(body)} of {length + 4} record bytes present")
            data = body[:length]
            if verify and int.from_bytes(body[length:], "little") != masked_crc32c(data):
                fail("data checksum mismatch")
            yield data
            index += 1
            offset += 16 + length
