"""TFRecord files: read and write the record framing, plain or ZLIB/GZIP compressed.

Each record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``
(little-endian). A compressed file is one (or several concatenated) zlib/gzip stream(s) of that
framing. Reading streams: memory stays at one record plus a decompression buffer, whatever the
file size. Every CRC is verified; a corrupted or truncated record raises ``TFRecordError`` naming the
file and record index, after all records before it have been yielded.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from lesa.errors import TFRecordError
from lesa.tf_formats.crc32c import masked_crc32c

COMPRESSIONS = ("", "ZLIB", "GZIP")
MAX_RECORD_BYTES = 1 << 28  # refuse a declared record length above 256 MiB (hostile or corrupted)
_READ_SIZE = 1 << 20


def compression_from_name(path) -> str:
    """original: the compression type is chosen from the file name ('ZLIB' / 'GZIP' in it)."""
    name = str(path)
    if "ZLIB" in name:
        return "ZLIB"
    if "GZIP" in name:
        return "GZIP"
    return ""


def sniff_compression(head: bytes) -> str | None:
    """Compression from the first bytes, or None when they do not decide it."""
    if len(head) >= 12:
        if struct.unpack("<I", head[8:12])[0] == masked_crc32c(head[:8]):
            return ""  # a valid plain record header
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if len(head) >= 2 and (head[0] & 0x0F) == 8 and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    return None


def detect_compression(path, compression: str | None = None) -> str:
    """Explicit ``compression`` wins; otherwise the file's first bytes, then the file name."""
    if compression is not None:
        value = compression.upper() if compression else ""
        if value == "NONE":
            value = ""
        if value not in COMPRESSIONS:
            raise TFRecordError(f"{path}: unknown compression {compression!r}; use none, ZLIB or GZIP")
        return value
    with open(path, "rb") as fh:
        head = fh.read(12)
    sniffed = sniff_compression(head)
    return compression_from_name(path) if sniffed is None else sniffed


class _Decompressed:
    """File-like ``read(n)`` over a (possibly multi-member) zlib/gzip stream."""

    def __init__(self, fh: BinaryIO, wbits: int):
        self.fh = fh
        self.wbits = wbits
        self.decomp = zlib.decompressobj(wbits)
        self.buffer = bytearray()
        self.eof = False

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n and not self.eof:
            if self.decomp.unconsumed_tail:
                data = self.decomp.unconsumed_tail
            else:
                data = self.fh.read(_READ_SIZE)
                if not data:
                    if not self.decomp.eof:
                        self.buffer += self.decomp.flush()
                        raise zlib.error("compressed stream ends early (file truncated)")
                    self.eof = True
                    break
            self.buffer += self.decomp.decompress(data, max(n - len(self.buffer), _READ_SIZE))
            if self.decomp.eof:
                rest = self.decomp.unused_data
                self.decomp = zlib.decompressobj(self.wbits)
                if rest.strip(b"\0"):
                    self.buffer += self.decomp.decompress(rest, _READ_SIZE)
                elif not self._more_input():
                    self.eof = True

    def _more_input(self) -> bool:
        pos = self.fh.tell()
        more = self.fh.read(1)
        self.fh.seek(pos)
        return bool(more)

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def iter_tfrecords(path, compression: str | None = None, verify: bool = True,
                   max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """Yield the records of one TFRecord file as bytes, in order.

    compression: None = detect (first bytes, then the original's file-name rule), or
    ``""``/``"none"``, ``"ZLIB"``, ``"GZIP"`` to force it.
    """
    path = Path(path)
    if not path.is_file():
        raise TFRecordError(f"TFRecord file not found: {path}")
    try:
        kind = detect_compression(path, compression)
        fh = open(path, "rb")
    except OSError as exc:
        raise TFRecordError(f"{path}: cannot open TFRecord file: {exc}") from None
    index = 0
    offset = 0  # byte offset of the current record in the uncompressed stream
    with fh:
        file_size = os.fstat(fh.fileno()).st_size
        stream = _Decompressed(fh, 15 if kind == "ZLIB" else 31) if kind else fh

        def fail(problem: str):
            where = f"{path}: record {index} (byte {offset}{' of the decompressed stream' if kind else ''})"
            raise TFRecordError(f"{where}: {problem}; the {index} records before it were read. The file is "
                                "truncated or corrupted: re-copy or re-extract it")

        while True:
            try:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    fail(f"only {len(header)} bytes of the 12-byte record header")
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:12])
                if verify and length_crc != masked_crc32c(header[:8]):
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
            if verify and struct.unpack("<I", body[length:])[0] != masked_crc32c(data):
                fail("data checksum mismatch")
            yield data
            index += 1
            offset += 16 + length


def write_tfrecords(path, records: Iterable[bytes], compression: str | None = None) -> int:
    """Write records (bytes) as a TFRecord file; returns the count.

    compression: ""/"none", "ZLIB" or "GZIP"; None = from the file name ('ZLIB'/'GZIP' in it).
    """
    kind = compression_from_name(path) if compression is None else detect_compression(path, compression)
    count = 0
    with open(path, "wb") as fh:
        comp = None
        if kind:
            comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15 if kind == "ZLIB" else 31)
        for record in records:
            record = bytes(record)
            length = struct.pack("<Q", len(record))
            frame = (length + struct.pack("<I", masked_crc32c(length)) + record
                     + struct.pack("<I", masked_crc32c(record)))
            fh.write(comp.compress(frame) if comp else frame)
            count += 1
        if comp:
            fh.write(comp.flush())
    return count
