"""Read TF1 checkpoints without TensorFlow: the V2 bundle and the V1 single-file table.

V2 (``tf.train.Saver``'s default, the original's ``model.ckpt``): ``prefix.index``, a table of
BundleHeaderProto (key "") and tensor name -> BundleEntryProto; the bytes in ``prefix.data-*``.
V1 (TF-slim's ``vgg_19.ckpt``): one table; key "" the SavedTensorSlices meta, the other keys
SavedSlice records whose TensorProto carries the values. Every checksum and declared size is
checked before use: a damaged file gives a ``CheckpointError`` naming the file and the tensor.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from lesa.errors import CheckpointError
from lesa.tf_formats.crc32c import crc32c, unmask
from lesa.tf_formats.protowire import FIXED32, LENGTH, WireFormatError, iter_fields, read_varint, \
    repeated_scalars, to_signed64
from lesa.tf_formats.sstable import SSTable

DT_STRING, DT_BFLOAT16, DT_HALF = 7, 14, 19
TF_DTYPES = {  # TF DataType enum -> NumPy dtype of the stored values (little-endian)
    1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1",  # float, double, int32, uint8, int16, int8
    7: "O", 8: "<c8", 9: "<i8", 10: "?",  # string, complex64, int64, bool
    11: "i1", 12: "u1", 13: "<i4", 15: "<i2", 16: "<u2",  # qint8, quint8, qint32, qint16, quint16
    14: "<u2", 17: "<u2", 18: "<c16", 19: "<f2",  # bfloat16 (its bits), uint16, complex128, half
    22: "<u4", 23: "<u8",  # uint32, uint64
}
UNSUPPORTED = {20: "resource", 21: "variant"}
# TensorProto field holding the values of each dtype (V1), and how they are encoded; others: int_val (7)
VALUE_FIELDS = {1: (5, "f4"), 2: (6, "f8"), 8: (9, "f4"), 18: (12, "f8"), 14: (13, "varint"),
                19: (13, "varint"), 9: (10, "varint"), 10: (11, "varint"), 22: (16, "varint"), 23: (17, "varint")}


class TensorInfo(NamedTuple):
    dtype: np.dtype  # dtype of the array read_tf_checkpoint returns
    shape: tuple


def _storage(tf_dtype: int, path, name: str) -> np.dtype:
    if tf_dtype not in TF_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has TF dtype {UNSUPPORTED.get(tf_dtype, f'enum {tf_dtype}')}, "
                              "which cannot be read as a NumPy array (only numeric, bool and string tensors are supported)")
    return np.dtype(TF_DTYPES[tf_dtype])


def _info(tf_dtype: int, shape: tuple) -> TensorInfo:
    # bfloat16 has no NumPy type: read as its bits, returned widened to float32 (exact)
    dtype = np.dtype(np.float32) if tf_dtype == DT_BFLOAT16 else np.dtype(TF_DTYPES[tf_dtype]).newbyteorder("=")
    return TensorInfo(dtype, shape)


def _to_native(array: np.ndarray, tf_dtype: int) -> np.ndarray:
    if tf_dtype == DT_BFLOAT16:  # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


# ---- protobuf messages ----

def _fields(buf) -> dict[int, list]:
    """Field number -> its occurrences in order."""
    out: dict[int, list] = {}
    for field in iter_fields(buf):
        out.setdefault(field.number, []).append(field)
    return out


def _int(fields: dict, number: int, default: int = 0) -> int:
    """Singular integer field (the last occurrence wins, as in protobuf)."""
    if number not in fields:
        return default
    field = fields[number][-1]
    if field.wire_type == LENGTH:
        raise WireFormatError(f"field {number} is not an integer")
    return to_signed64(field.value)


def _messages(fields: dict, number: int) -> list:
    """The payloads of message (or bytes) field ``number``."""
    return [f.value for f in fields.get(number, ()) if f.wire_type == LENGTH]


def _shape(fields: dict, number: int) -> tuple:
    """The last TensorShapeProto of field ``number`` -> tuple of dims (() without one)."""
    shapes = _messages(fields, number)
    if not shapes:
        return ()
    fields = _fields(shapes[-1])
    if _int(fields, 3):
        raise WireFormatError("shape of unknown rank")
    dims = tuple(_int(_fields(dim), 1) for dim in _messages(fields, 2))
    if any(d < 0 for d in dims):
        raise WireFormatError(f"dimension of unknown size in {dims}")
    return dims


# ---- locating the files ----

def _resolve_prefix(path) -> tuple[str, Path]:
    """-> ("v2", prefix) or ("v1", file) for a prefix, an .index/.data file or a directory."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        try:
            text = state.read_text(errors="replace")
        except OSError:
            raise CheckpointError(f"{path}: a directory without a readable 'checkpoint' state file; pass "
                                  "the checkpoint prefix (e.g. .../model.ckpt) instead") from None
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', text, re.M)
        if not match:
            raise CheckpointError(f"{state}: no model_checkpoint_path line; pass the checkpoint prefix instead")
        stored = Path(match.group(1))
        # TF1: relative paths are relative to the directory; absolute ones may point to where the
        # checkpoint was written, so fall back to the same file name in this directory.
        for candidate in [stored, path / stored.name] if stored.is_absolute() else [path / stored]:
            if candidate.is_file() or Path(f"{candidate}.index").is_file():
                return _resolve_prefix(candidate)
        raise CheckpointError(f"{state}: names checkpoint {stored}, which is not in {path}; "
                              "pass the checkpoint prefix instead")
    prefix = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", str(path))
    if prefix != str(path) or Path(f"{path}.index").is_file():
        return "v2", Path(prefix)
    if path.is_file():
        return "v1", path
    raise CheckpointError(f"{path}: no checkpoint found (neither {path}.index nor a V1 file {path}); "
                          "pass the prefix of a TF checkpoint, e.g. .../model.ckpt")


# ---- V2 bundle ----

class _Entry(NamedTuple):
    dtype: int
    shape: tuple
    shard: int
    offset: int
    size: int
    crc: int | None


class _Bundle:
    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.where = Path(f"{prefix}.index")
        self.entries: dict[str, _Entry] = {}
        self.num_shards, self.big_endian = 1, False
        with SSTable(self.where) as table:
            for key, value in table.items():
                name = key.decode("utf-8", errors="replace")
                try:
                    self._add(key, name, _fields(value))
                except WireFormatError as exc:
                    raise CheckpointError(f"{self.where}: corrupted entry for tensor {name!r} ({exc})") from None
        self.tensors = {name: (e.dtype, e.shape) for name, e in self.entries.items()}

    def _add(self, key: bytes, name: str, fields: dict) -> None:
        if key == b"":  # BundleHeaderProto: num_shards, endianness
            self.num_shards, self.big_endian = _int(fields, 1, 1), _int(fields, 2) == 1
            if not 1 <= self.num_shards <= 99999:
                raise WireFormatError(f"implausible shard count {self.num_shards}")
            return
        if key.startswith(b"\x00"):  # slice entry of a partitioned variable
            return
        crcs = [f.value for f in fields.get(6, ()) if f.wire_type == FIXED32]
        entry = _Entry(_int(fields, 1), _shape(fields, 2), _int(fields, 3), _int(fields, 4),
                       _int(fields, 5), crcs[-1] if crcs else None)
        storage = _storage(entry.dtype, self.where, name)
        if 7 in fields:
            raise CheckpointError(f"{self.where}: tensor {name!r} is a partitioned variable; "
                                  "partitioned (sliced) tensors are not supported")
        problem = None
        if not 0 <= entry.shard < self.num_shards:
            problem = f"names shard {entry.shard} of {self.num_shards}"
        elif entry.offset < 0 or entry.size < 0:
            problem = "has a negative offset/size"
        elif entry.dtype != DT_STRING and math.prod(entry.shape) * storage.itemsize != entry.size:
            problem = (f"of shape {entry.shape} should take {math.prod(entry.shape) * storage.itemsize} "
                       f"bytes but its entry says {entry.size}")
        if problem:
            raise CheckpointError(f"{self.where}: tensor {name!r} {problem}; the index is corrupted")
        self.entries[name] = entry

    def read(self, names: list[str], mmap: bool) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            try:
                out[name] = self._read(name, self.entries[name], mmap)
            except OSError as exc:
                raise CheckpointError(f"{self.prefix}: cannot read tensor {name!r}: {exc}") from None
        return out

    def _read(self, name: str, entry: _Entry, mmap: bool) -> np.ndarray:
        path = Path(f"{self.prefix}.data-{entry.shard:05d}-of-{self.num_shards:05d}")
        if not path.is_file():
            raise CheckpointError(f"data file missing: {path} (needed for tensor {name!r}); the index "
                                  f"{self.where} alone lists names and shapes but holds no values; "
                                  "copy the .data-* file(s) next to it")
        file_size = path.stat().st_size
        if entry.offset + entry.size > file_size:
            raise CheckpointError(f"{path}: tensor {name!r} needs bytes {entry.offset}..{entry.offset + entry.size} "
                                  f"but the file has {file_size}; the data file is truncated (re-copy it)")
        if mmap and entry.dtype not in (DT_STRING, DT_BFLOAT16) and entry.size > 0:
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=entry.offset, shape=(entry.size,))
        else:
            raw = np.empty(entry.size, dtype=np.uint8)
            with open(path, "rb") as fh:
                fh.seek(entry.offset)
                if fh.readinto(memoryview(raw)) != entry.size:
                    raise CheckpointError(f"{path}: short read for tensor {name!r}; the data file is truncated")
        if entry.crc is None and entry.size:
            raise CheckpointError(f"{path}: tensor {name!r} has no stored checksum; the index is corrupted")
        if entry.crc is not None and crc32c(raw) != unmask(entry.crc):
            raise CheckpointError(f"{path}: checksum mismatch for tensor {name!r}; the data file is corrupted "
                                  "(re-download or re-copy it)")
        if entry.dtype == DT_STRING:
            return _bundle_strings(raw, entry.shape, path, name)
        storage = np.dtype(TF_DTYPES[entry.dtype]).newbyteorder(">" if self.big_endian else "<")
        return _to_native(raw.view(storage).reshape(entry.shape), entry.dtype)


def _bundle_strings(raw: np.ndarray, shape: tuple, path: Path, name: str) -> np.ndarray:
    """[varint len]*N, 4-byte crc32c of the length bytes, then the string bytes."""
    data = memoryview(raw)
    count = math.prod(shape)
    if count > len(data):
        raise CheckpointError(f"{path}: string tensor {name!r} declares {count} elements in {len(data)} bytes")
    pos, lengths = 0, []
    try:
        for _ in range(count):
            length, pos = read_varint(data, pos, len(data))
            lengths.append(length)
    except WireFormatError as exc:
        raise CheckpointError(f"{path}: corrupted string tensor {name!r} ({exc})") from None
    if pos + 4 > len(data) or int.from_bytes(data[pos:pos + 4], "little") != crc32c(data[:pos]):
        raise CheckpointError(f"{path}: string tensor {name!r} has bad length checksum; the file is corrupted")
    pos += 4
    if pos + sum(lengths) != len(data):
        raise CheckpointError(f"{path}: string tensor {name!r} lengths do not add up to its size; the file is corrupted")
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = bytes(data[pos:pos + length])
        pos += length
    return out.reshape(shape)


# ---- V1 table ----

class _V1Table:
    def __init__(self, path: Path):
        self.where = path
        with SSTable(path) as table:
            key, value = table.first()
            if key != b"":
                raise CheckpointError(f"{path}: a TF table without checkpoint metadata (first key {key!r}); "
                                      "not a V1 checkpoint")
            self.tensors = self._meta(value)

    def _meta(self, value) -> dict[str, tuple[int, tuple]]:
        """SavedTensorSlices.meta -> {name: (TF dtype, shape)}."""
        tensors = {}
        try:
            for meta in _messages(_fields(value), 1):
                for tensor in _messages(_fields(meta), 1):
                    fields = _fields(tensor)
                    names = _messages(fields, 1)
                    if not names:
                        raise WireFormatError("tensor without a name")
                    tensors[bytes(names[-1]).decode("utf-8", errors="replace")] = (_int(fields, 3), _shape(fields, 2))
        except WireFormatError as exc:
            raise CheckpointError(f"{self.where}: corrupted V1 checkpoint metadata ({exc})") from None
        for name, (dtype, _) in tensors.items():
            _storage(dtype, self.where, name)
        return tensors

    def read(self, names: list[str], mmap: bool = False) -> dict[str, np.ndarray]:
        slices: dict[str, list] = {name: [] for name in names}
        with SSTable(self.where) as table:
            for key, value in table.items() if names else ():
                if key == b"":
                    continue
                try:  # SavedSlice: name, slice (its extents: start, length), data (a TensorProto)
                    saved = _messages(_fields(value), 2)
                    if not saved:
                        raise WireFormatError("record without slice data")
                    fields = _fields(saved[-1])
                    name, data = _messages(fields, 1), _messages(fields, 3)
                    if not name or not data:
                        raise WireFormatError("slice without a name or data")
                    extents = [(_int(e, 1), _int(e, 2) if 2 in e else None)
                               for s in _messages(fields, 2) for e in map(_fields, _messages(_fields(s), 1))]
                except WireFormatError as exc:
                    raise CheckpointError(f"{self.where}: corrupted V1 checkpoint record {key!r} ({exc})") from None
                name = bytes(name[-1]).decode("utf-8", errors="replace")
                if name in slices:
                    slices[name].append((extents, data[-1]))
            return {name: self._assemble(name, slices[name]) for name in names}

    def _assemble(self, name: str, records: list) -> np.ndarray:
        tf_dtype, shape = self.tensors[name]
        regions, covered = [], 0
        for extents, data in records:
            if len(extents) not in (0, len(shape)):
                raise CheckpointError(f"{self.where}: slice of tensor {name!r} has rank {len(extents)}, "
                                      f"tensor has shape {shape}; the file is corrupted")
            index = []
            for dim, (start, length) in zip(shape, extents or [(0, None)] * len(shape)):
                stop = dim if length is None else start + length
                if not 0 <= start <= stop <= dim:
                    raise CheckpointError(f"{self.where}: slice of tensor {name!r} lies outside its shape {shape}")
                index.append(slice(start, stop))
            part_shape = tuple(s.stop - s.start for s in index)
            regions.append((tuple(index), _tensor_proto_values(data, tf_dtype, part_shape, self.where, name)))
            covered += math.prod(part_shape)
        for i, (a, _) in enumerate(regions):  # overlapping slices would leave holes unfilled
            for b, _ in regions[i + 1:]:
                if len(a) and all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b)):
                    raise CheckpointError(f"{self.where}: tensor {name!r} has overlapping slices; the file is corrupted")
        if covered != math.prod(shape):
            raise CheckpointError(f"{self.where}: tensor {name!r} of shape {shape} has {covered} of its "
                                  f"{math.prod(shape)} values stored; the file is truncated or corrupted")
        out = np.empty(shape, dtype=TF_DTYPES[tf_dtype])
        for index, values in regions:
            out[index] = values
        return _to_native(out, tf_dtype)


def _tensor_proto_values(data, tf_dtype: int, shape: tuple, path: Path, name: str) -> np.ndarray:
    """The values of a TensorProto, in ``shape`` (exactly that many required)."""
    storage = np.dtype(TF_DTYPES[tf_dtype])
    count = math.prod(shape)
    try:
        fields = _fields(data)
        content = _messages(fields, 4)
        if tf_dtype == DT_STRING:
            values = np.array([bytes(v) for v in _messages(fields, 8)], dtype=object)
        elif content:
            if len(content[-1]) != count * storage.itemsize:
                raise WireFormatError(f"tensor_content has {len(content[-1])} bytes, expected {count * storage.itemsize}")
            values = np.frombuffer(content[-1], dtype=storage)
        else:
            number, kind = VALUE_FIELDS.get(tf_dtype, (7, "varint"))
            values = repeated_scalars(fields.get(number, []), number, kind)
            if kind != "varint":
                if storage.kind == "c" and values.size % 2:
                    raise WireFormatError("an odd number of complex parts")
                values = values.view(storage)
            elif tf_dtype == DT_HALF:
                values = values.astype(np.uint16).view(storage)
            else:
                values = values.view(np.int64).astype(storage)
    except WireFormatError as exc:
        raise CheckpointError(f"{path}: corrupted values of tensor {name!r} ({exc})") from None
    if values.size != count:
        raise CheckpointError(f"{path}: tensor {name!r} slice holds {values.size} values, expected {count}; "
                              "the file is corrupted")
    return values.reshape(shape)


# ---- public API ----

def _open(path):
    kind, resolved = _resolve_prefix(path)
    return _Bundle(resolved) if kind == "v2" else _V1Table(resolved)


def list_tf_checkpoint(path) -> dict[str, TensorInfo]:
    """Names -> (numpy dtype, shape) of a TF1 checkpoint, from the index/metadata alone."""
    return {name: _info(dtype, shape) for name, (dtype, shape) in _open(path).tensors.items()}


def read_tf_checkpoint(path, names: Iterable[str] | None = None, mmap: bool = False) -> dict[str, np.ndarray]:
    """The tensors (``names``, default all) of a TF1 checkpoint as NumPy arrays, bfloat16 as float32.

    path: the prefix (``.../model.ckpt``), its ``.index``/``.data-*`` file, a V1 file, or a folder with
    a ``checkpoint`` state file. mmap: V2 numeric tensors as read-only (verified) memory maps.
    """
    checkpoint = _open(path)
    names = list(checkpoint.tensors if names is None else names)
    missing = [n for n in names if n not in checkpoint.tensors]
    if missing:
        raise CheckpointError(f"{checkpoint.where}: tensors not in the checkpoint: {', '.join(missing)}; "
                              f"it holds {len(checkpoint.tensors)} tensors (see list_tf_checkpoint)")
    return checkpoint.read(names, mmap)
