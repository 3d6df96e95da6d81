"""TF's immutable sorted table (the LevelDB SSTable format), used by both checkpoint formats.

Layout: data blocks, a metaindex block, an index block (last key of each data block -> handle),
then a 48-byte footer (metaindex handle, index handle, padding, magic 0xdb4775248b80fb57).
Each block is followed by a 5-byte trailer: compression type (0 none, 1 snappy) and the masked
CRC32C of block contents + type byte. Block entries are prefix-compressed keys
(shared, non_shared, value_length varints) with a restart-offset array at the end.

The file is memory-mapped, and values of uncompressed blocks are memoryview slices of the map, so
a 550 MB V1 checkpoint is never copied whole into RAM.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Iterator

from lesa.errors import CheckpointError
from lesa.tf_formats import snappy
from lesa.tf_formats.crc32c import crc32c, masked_crc32c, unmask
from lesa.tf_formats.protowire import WireFormatError, encode_varint, read_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
NO_COMPRESSION, SNAPPY = 0, 1


class SSTable:
    """Read-only view of one table file. Use as a context manager or call ``close()``."""

    def __init__(self, path, error=CheckpointError, verify=True):
        self.path = Path(path)
        self.error = error
        self.verify = verify
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < FOOTER_SIZE:
                    raise error(f"{self.path}: {size} bytes is too short for a TF table file "
                                f"(needs at least a {FOOTER_SIZE}-byte footer); the file is truncated or not a checkpoint")
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise error(f"{self.path}: cannot open table file: {exc}") from None
        self.size = size
        self.data = memoryview(self._map)
        footer = self.data[size - FOOTER_SIZE:]
        if struct.unpack("<Q", footer[40:48])[0] != MAGIC:
            raise error(f"{self.path}: not a TF table file (bad magic number in the footer); "
                        "the file is truncated, corrupted or not a checkpoint")
        try:
            _meta_offset, pos = read_varint(footer, 0, 40)
            _meta_size, pos = read_varint(footer, pos, 40)
            index_offset, pos = read_varint(footer, pos, 40)
            index_size, pos = read_varint(footer, pos, 40)
        except WireFormatError as exc:
            raise error(f"{self.path}: corrupted table footer ({exc})") from None
        self._index_handle = (index_offset, index_size)

    # ---- blocks ----

    def _block(self, offset: int, size: int, what: str):
        end = offset + size + TRAILER_SIZE
        if end > self.size - FOOTER_SIZE:
            raise self.error(f"{self.path}: {what} block at offset {offset} (+{size} bytes) lies outside "
                             f"the {self.size}-byte file; the file is truncated or corrupted")
        contents = self.data[offset:offset + size]
        block_type = self.data[offset + size]
        if self.verify:
            stored = unmask(int.from_bytes(self.data[offset + size + 1:end], "little"))
            actual = crc32c(bytes([block_type]), crc32c(contents))
            if stored != actual:
                raise self.error(f"{self.path}: checksum mismatch in the {what} block at offset {offset}; "
                                 "the file is corrupted (re-download or re-copy it)")
        if block_type == SNAPPY:
            try:
                return memoryview(snappy.decompress(contents, max_output=max(64 * size, 1 << 20)))
            except WireFormatError as exc:
                raise self.error(f"{self.path}: corrupted snappy block at offset {offset}: {exc}") from None
        if block_type != NO_COMPRESSION:
            raise self.error(f"{self.path}: {what} block at offset {offset} uses unknown compression type "
                             f"{block_type}; the file is corrupted or from an unsupported writer")
        return contents

    def _entries(self, block, where: str) -> Iterator[tuple[bytes, memoryview]]:
        size = len(block)
        if size < 4:
            raise self.error(f"{self.path}: {where} is shorter than its restart count; the file is corrupted")
        n_restarts = int.from_bytes(block[size - 4:], "little")
        limit = size - 4 - 4 * n_restarts
        if n_restarts < 1 or limit < 0:
            raise self.error(f"{self.path}: {where} has an invalid restart array ({n_restarts}); the file is corrupted")
        key = b""
        pos = 0
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
            raise self.error(f"{self.path}: corrupted entry in {where} ({exc}); the file is corrupted") from None

    def _data_handles(self) -> Iterator[tuple[int, int]]:
        offset, size = self._index_handle
        index = self._block(offset, size, "index")
        for key, value in self._entries(index, "the index block"):
            try:
                block_offset, pos = read_varint(value, 0, len(value))
                block_size, _ = read_varint(value, pos, len(value))
            except WireFormatError as exc:
                raise self.error(f"{self.path}: corrupted block handle for key {key!r} ({exc})") from None
            yield block_offset, block_size

    def items(self) -> Iterator[tuple[bytes, memoryview]]:
        """All (key, value) pairs in key order; values are zero-copy views where possible."""
        for offset, size in self._data_handles():
            block = self._block(offset, size, "data")
            yield from self._entries(block, f"the data block at offset {offset}")

    def first(self) -> tuple[bytes, memoryview]:
        for item in self.items():
            return item
        raise self.error(f"{self.path}: the table is empty; not a checkpoint written by TensorFlow")

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


# ---- writer (small tables: checkpoint indexes, V1 files in tests) ----

def write_table(path, items, block_size: int = 4096, restart_interval: int = 16, snappy_blocks: bool = False) -> None:
    """Write sorted (key bytes, value bytes) pairs as a TF table.

    snappy_blocks: store blocks with compression type 1 (literal-only snappy; for reader tests).
    """
    items = sorted((bytes(k), bytes(v)) for k, v in items)
    out = bytearray()
    index: list[tuple[bytes, tuple[int, int]]] = []

    def finish_block(payload: bytes) -> tuple[int, int]:
        kind = SNAPPY if snappy_blocks else NO_COMPRESSION
        if snappy_blocks:
            payload = snappy.compress_literal(payload)
        offset = len(out)
        out.extend(payload)
        out.append(kind)
        out.extend(struct.pack("<I", masked_crc32c(payload + bytes([kind]))))
        return offset, len(payload)

    def build_block(entries) -> bytes:
        body = bytearray()
        restarts = []
        prev = b""
        for i, (key, value) in enumerate(entries):
            if i % restart_interval == 0:
                restarts.append(len(body))
                shared = 0
            else:
                shared = len(os.path.commonprefix([prev, key]))
            body += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
            body += key[shared:] + value
            prev = key
        if not restarts:
            restarts = [0]
        for r in restarts:
            body += struct.pack("<I", r)
        body += struct.pack("<I", len(restarts))
        return bytes(body)

    pending: list[tuple[bytes, bytes]] = []
    pending_size = 0
    for key, value in items:
        pending.append((key, value))
        pending_size += len(key) + len(value)
        if pending_size >= block_size:
            index.append((pending[-1][0], finish_block(build_block(pending))))
            pending, pending_size = [], 0
    if pending:
        index.append((pending[-1][0], finish_block(build_block(pending))))
    meta_handle = finish_block(build_block([]))
    index_entries = [(key, encode_varint(off) + encode_varint(size)) for key, (off, size) in index]
    index_handle = finish_block(build_block(index_entries))
    footer = encode_varint(meta_handle[0]) + encode_varint(meta_handle[1])
    footer += encode_varint(index_handle[0]) + encode_varint(index_handle[1])
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", MAGIC)
    out += footer
    Path(path).write_bytes(bytes(out))
