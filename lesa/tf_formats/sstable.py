"""TF's immutable sorted table (LevelDB's SSTable), the container of both checkpoint formats.

Data blocks, metaindex, index (last key of each block -> handle), 48-byte footer; block trailers
hold the compression and a masked CRC32C. Values are views of a memory map: no copy of the file.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

import cramjam

from lesa.errors import CheckpointError
from lesa.tf_formats.crc32c import crc32c, unmask
from lesa.tf_formats.protowire import WireFormatError, read_varint, varints

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
NO_COMPRESSION, SNAPPY = 0, 1


class SSTable:
    """Read-only view of one table file. Use as a context manager or call ``close()``."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                self.size = fh.seek(0, 2)
                if self.size < FOOTER_SIZE:
                    raise self._error(f"{self.size} bytes is too short for a TF table file (needs at least "
                                      f"a {FOOTER_SIZE}-byte footer); the file is truncated or not a checkpoint")
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise self._error(f"cannot open table file: {exc}") from None
        self.data = memoryview(self._map)
        footer = self.data[self.size - FOOTER_SIZE:]
        if int.from_bytes(footer[40:], "little") != MAGIC:
            raise self._error("not a TF table file (bad magic number in the footer); the file is "
                              "truncated, corrupted or not a checkpoint")
        try:  # metaindex offset and size, index offset and size, zero padding
            self._index_handle = varints(footer[:40])[2:4]
        except WireFormatError as exc:
            raise self._error(f"corrupted table footer ({exc})") from None

    def _error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {problem}")

    def _block(self, offset: int, size: int, what: str):
        end = offset + size + TRAILER_SIZE
        if end > self.size - FOOTER_SIZE:
            raise self._error(f"{what} block at offset {offset} (+{size} bytes) lies outside the "
                              f"{self.size}-byte file; the file is truncated or corrupted")
        contents = self.data[offset:offset + size]
        block_type = self.data[offset + size]
        if unmask(int.from_bytes(self.data[end - 4:end], "little")) != crc32c(self.data[offset:end - 4]):
            raise self._error(f"checksum mismatch in the {what} block at offset {offset}; the file is "
                              "corrupted (re-download or re-copy it)")
        if block_type == NO_COMPRESSION:
            return contents
        if block_type != SNAPPY:
            raise self._error(f"{what} block at offset {offset} uses unknown compression type {block_type}; "
                              "the file is corrupted or from an unsupported writer")
        try:  # the declared length first: a hostile header must not make the decompressor allocate it
            length, _ = read_varint(contents, 0, size)
            limit = max(64 * size, 1 << 20)
            if length > limit:
                raise WireFormatError(f"it declares {length} bytes, more than the allowed {limit}")
            return memoryview(cramjam.snappy.decompress_raw(contents))
        except (WireFormatError, cramjam.DecompressionError) as exc:
            raise self._error(f"corrupted snappy block at offset {offset}: {exc}") from None

    def _entries(self, block, where: str) -> Iterator[tuple[bytes, memoryview]]:
        size = len(block)
        n_restarts = int.from_bytes(block[size - 4:], "little") if size >= 4 else 0
        limit = size - 4 - 4 * n_restarts
        if n_restarts < 1 or limit < 0:
            raise self._error(f"{where} has an invalid restart array; the file is corrupted")
        key, pos = b"", 0
        try:
            while pos < limit:
                shared, pos = read_varint(block, pos, limit)
                non_shared, pos = read_varint(block, pos, limit)
                value_len, pos = read_varint(block, pos, limit)
                if shared > len(key) or non_shared + value_len > limit - pos:
                    raise WireFormatError("entry lengths point outside the block")
                key = key[:shared] + bytes(block[pos:pos + non_shared])
                pos += non_shared
                yield key, block[pos:pos + value_len]
                pos += value_len
        except WireFormatError as exc:
            raise self._error(f"corrupted entry in {where} ({exc}); the file is corrupted") from None

    def items(self) -> Iterator[tuple[bytes, memoryview]]:
        """All (key, value) pairs in key order; values are zero-copy views where possible."""
        index = self._block(*self._index_handle, "index")
        for key, handle in self._entries(index, "the index block"):
            try:
                offset, size = varints(handle)
            except (WireFormatError, ValueError) as exc:
                raise self._error(f"corrupted block handle for key {key!r} ({exc})") from None
            yield from self._entries(self._block(offset, size, "data"), f"the data block at offset {offset}")

    def first(self) -> tuple[bytes, memoryview]:
        for item in self.items():
            return item
        raise self._error("the table is empty; not a checkpoint written by TensorFlow")

    def close(self) -> None:
        try:
            self.data.release()
            self._map.close()
        except BufferError:  # views still referenced by a caller; the map closes when they go
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
