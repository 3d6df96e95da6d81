"""Read TF1 checkpoints without TensorFlow: the V2 bundle and the V1 single-file table.

V2 (what ``tf.train.Saver`` writes by default, e.g. the original's ``model.ckpt``):
``prefix.index`` is a table whose key "" holds a BundleHeaderProto and whose other keys are tensor
names -> BundleEntryProto (dtype, shape, shard, offset, size, masked CRC32C); the bytes live in
``prefix.data-0000S-of-0000N``.
V1 (TF-slim model zoo files such as ``vgg_19.ckpt``): one table file; key "" holds the
SavedTensorSlices meta (name, shape, dtype of each tensor), the other keys hold SavedSlice records
whose TensorProto carries the values (``float_val`` etc.), possibly split into several slices.

Every stored checksum is verified; every declared size is checked against the file before any
allocation, so a truncated, corrupted or hostile file gives a ``CheckpointError`` naming the file and
the tensor, never garbage numbers or a huge allocation.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from lesa.errors import CheckpointError
from lesa.tf_formats.crc32c import crc32c, unmask
from lesa.tf_formats.protowire import (
    FIXED32,
    LENGTH,
    VARINT,
    Field,
    WireFormatError,
    iter_fields,
    read_varint,
    repeated_scalars,
    to_signed64,
)
from lesa.tf_formats.sstable import SSTable

# TF DataType enum -> numpy dtype (little-endian storage). bfloat16 has no numpy type: read as
# its uint16 bit pattern, then widened to float32 (exact).
DT_STRING = 7
DT_BFLOAT16 = 14
DT_HALF = 19
TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),    # DT_FLOAT
    2: np.dtype("<f8"),    # DT_DOUBLE
    3: np.dtype("<i4"),    # DT_INT32
    4: np.dtype("u1"),     # DT_UINT8
    5: np.dtype("<i2"),    # DT_INT16
    6: np.dtype("i1"),     # DT_INT8
    7: np.dtype(object),   # DT_STRING (bytes objects)
    8: np.dtype("<c8"),    # DT_COMPLEX64
    9: np.dtype("<i8"),    # DT_INT64
    10: np.dtype("?"),     # DT_BOOL
    11: np.dtype("i1"),    # DT_QINT8
    12: np.dtype("u1"),    # DT_QUINT8
    13: np.dtype("<i4"),   # DT_QINT32
    14: np.dtype("<u2"),   # DT_BFLOAT16 (bits; returned as float32)
    15: np.dtype("<i2"),   # DT_QINT16
    16: np.dtype("<u2"),   # DT_QUINT16
    17: np.dtype("<u2"),   # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),   # DT_HALF
    22: np.dtype("<u4"),   # DT_UINT32
    23: np.dtype("<u8"),   # DT_UINT64
}
TF_DTYPE_NAMES = {1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
                  8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 19: "half", 20: "resource",
                  21: "variant"}
_DATA_FILE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


class TensorInfo(NamedTuple):
    dtype: np.dtype  # dtype of the array read_tf_checkpoint returns
    shape: tuple


def _result_dtype(tf_dtype: int) -> np.dtype:
    if tf_dtype == DT_BFLOAT16:
        return np.dtype(np.float32)
    return TF_DTYPES[tf_dtype].newbyteorder("=") if TF_DTYPES[tf_dtype].kind != "O" else TF_DTYPES[tf_dtype]


def _check_dtype(tf_dtype: int, path, name: str) -> None:
    if tf_dtype not in TF_DTYPES:
        what = TF_DTYPE_NAMES.get(tf_dtype, f"enum {tf_dtype}")
        raise CheckpointError(f"{path}: tensor {name!r} has TF dtype {what}, which cannot be read as a "
                              "NumPy array (only numeric, bool and string tensors are supported)")


def _volume(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- protobuf messages ----

def _shape(buf) -> tuple:
    """TensorShapeProto -> tuple of dims."""
    dims = []
    for field in iter_fields(buf):
        if field.number == 2 and field.wire_type == LENGTH:
            size = 0
            for sub in iter_fields(field.value):
                if sub.number == 1 and sub.wire_type == VARINT:
                    size = to_signed64(sub.value)
            if size < 0:
                raise WireFormatError(f"dimension of unknown size ({size})")
            dims.append(size)
        elif field.number == 3 and field.value:
            raise WireFormatError("shape of unknown rank")
    return tuple(dims)


def _fields_by_number(buf) -> dict[int, Field]:
    """Last occurrence of each field (proto3 semantics for singular fields)."""
    return {f.number: f for f in iter_fields(buf)}


def _int(fields: dict, number: int, default: int = 0) -> int:
    field = fields.get(number)
    if field is None:
        return default
    if field.wire_type not in (VARINT, FIXED32) and not isinstance(field.value, int):
        raise WireFormatError(f"field {number} is not an integer")
    return to_signed64(field.value)


class _BundleEntry(NamedTuple):
    dtype: int
    shape: tuple
    shard: int
    offset: int
    size: int
    crc: int | None
    sliced: bool


def _bundle_entry(buf) -> _BundleEntry:
    fields = list(iter_fields(buf))
    by_number = {f.number: f for f in fields}
    shape_field = by_number.get(2)
    shape = _shape(shape_field.value) if shape_field is not None and shape_field.wire_type == LENGTH else ()
    crc_field = by_number.get(6)
    crc = crc_field.value if crc_field is not None and crc_field.wire_type == FIXED32 else None
    return _BundleEntry(
        dtype=_int(by_number, 1), shape=shape, shard=_int(by_number, 3), offset=_int(by_number, 4),
        size=_int(by_number, 5), crc=crc, sliced=any(f.number == 7 for f in fields),
    )


# ---- locating the files ----

def _resolve_prefix(path) -> tuple[str, Path]:
    """-> ("v2", prefix) or ("v1", file) for a prefix, an .index/.data file or a directory."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if not state.is_file():
            raise CheckpointError(f"{path}: a directory without a 'checkpoint' state file; pass the "
                                  "checkpoint prefix (e.g. .../model.ckpt) instead")
        try:
            text = state.read_text(errors="replace")
        except OSError as exc:
            raise CheckpointError(f"{state}: cannot read the checkpoint state file: {exc}") from None
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', text, re.M)
        if not match:
            raise CheckpointError(f"{state}: no model_checkpoint_path line; pass the checkpoint prefix instead")
        stored = Path(match.group(1))
        # TF1: relative paths are relative to the directory; absolute ones may point to where the
        # checkpoint was written, so fall back to the same file name in this directory.
        candidates = [path / stored] if not stored.is_absolute() else [stored, path / stored.name]
        for candidate in candidates:
            if candidate.is_file() or Path(str(candidate) + ".index").is_file():
                return _resolve_prefix(candidate)
        raise CheckpointError(f"{state}: names checkpoint {stored}, which is not in {path}; "
                              "pass the checkpoint prefix instead")
    text = str(path)
    if text.endswith(".index"):
        return "v2", Path(text[: -len(".index")])
    match = _DATA_FILE.search(text)
    if match:
        return "v2", Path(text[: match.start()])
    if Path(text + ".index").is_file():
        return "v2", path
    if path.is_file():
        return "v1", path
    raise CheckpointError(f"{path}: no checkpoint found (neither {path}.index nor a V1 file {path}); "
                          "pass the prefix of a TF checkpoint, e.g. .../model.ckpt")


# ---- V2 bundle ----

class _Bundle:
    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.index_path = Path(str(prefix) + ".index")
        self.entries: dict[str, _BundleEntry] = {}
        self.num_shards = 1
        self.big_endian = False
        with SSTable(self.index_path) as table:
            for key, value in table.items():
                self._add(key, value)

    def _add(self, key: bytes, value) -> None:
        name = key.decode("utf-8", errors="replace")
        try:
            if key == b"":
                header = _fields_by_number(value)
                self.num_shards = _int(header, 1, 1)
                self.big_endian = _int(header, 2) == 1
                if not 1 <= self.num_shards <= 99999:
                    raise WireFormatError(f"implausible shard count {self.num_shards}")
                return
            if key.startswith(b"\x00"):  # slice entry of a partitioned variable
                return
            entry = _bundle_entry(value)
        except WireFormatError as exc:
            raise CheckpointError(f"{self.index_path}: corrupted entry for tensor {name!r} ({exc})") from None
        _check_dtype(entry.dtype, self.index_path, name)
        if entry.sliced:
            raise CheckpointError(f"{self.index_path}: tensor {name!r} is a partitioned variable; "
                                  "partitioned (sliced) tensors are not supported")
        if not 0 <= entry.shard < self.num_shards:
            raise CheckpointError(f"{self.index_path}: tensor {name!r} names shard {entry.shard} of "
                                  f"{self.num_shards}; the index is corrupted")
        if entry.offset < 0 or entry.size < 0:
            raise CheckpointError(f"{self.index_path}: tensor {name!r} has a negative offset/size; the index is corrupted")
        if entry.dtype != DT_STRING:
            expected = _volume(entry.shape) * TF_DTYPES[entry.dtype].itemsize
            if expected != entry.size:
                raise CheckpointError(f"{self.index_path}: tensor {name!r} of shape {entry.shape} should take "
                                      f"{expected} bytes but its entry says {entry.size}; the index is corrupted")
        self.entries[name] = entry

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def info(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(_result_dtype(e.dtype), e.shape) for name, e in self.entries.items()}

    def read(self, name: str, mmap: bool) -> np.ndarray:
        try:
            return self._read(name, mmap)
        except OSError as exc:
            raise CheckpointError(f"{self.prefix}: cannot read tensor {name!r}: {exc}") from None

    def _read(self, name: str, mmap: bool) -> np.ndarray:
        entry = self.entries[name]
        path = self.data_path(entry.shard)
        if not path.is_file():
            raise CheckpointError(f"data file missing: {path} (needed for tensor {name!r}); the index "
                                  f"{self.index_path} alone lists names and shapes but holds no values; "
                                  "copy the .data-* file(s) next to it")
        file_size = path.stat().st_size
        if entry.offset + entry.size > file_size:
            raise CheckpointError(f"{path}: tensor {name!r} needs bytes {entry.offset}..{entry.offset + entry.size} "
                                  f"but the file has {file_size}; the data file is truncated (re-copy it)")
        storage = TF_DTYPES[entry.dtype]
        if self.big_endian and storage.kind != "O":
            storage = storage.newbyteorder(">")
        if mmap and entry.dtype not in (DT_STRING, DT_BFLOAT16) and entry.size > 0:
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=entry.offset, shape=(entry.size,))
        else:
            raw = np.empty(entry.size, dtype=np.uint8)
            with open(path, "rb") as fh:
                fh.seek(entry.offset)
                if fh.readinto(memoryview(raw)) != entry.size:
                    raise CheckpointError(f"{path}: short read for tensor {name!r}; the data file is truncated")
        self._verify(raw, entry, path, name)
        if entry.dtype == DT_STRING:
            return _decode_bundle_strings(raw, entry.shape, path, name)
        array = raw.view(storage).reshape(entry.shape)
        return _to_native(array, entry.dtype)

    @staticmethod
    def _verify(raw: np.ndarray, entry: _BundleEntry, path: Path, name: str) -> None:
        if entry.crc is None:
            if entry.size:
                raise CheckpointError(f"{path}: tensor {name!r} has no stored checksum; the index is corrupted")
            return
        if crc32c(raw) != unmask(entry.crc):
            raise CheckpointError(f"{path}: checksum mismatch for tensor {name!r}; the data file is corrupted "
                                  "(re-download or re-copy it)")


def _to_native(array: np.ndarray, tf_dtype: int) -> np.ndarray:
    if tf_dtype == DT_BFLOAT16:
        # bfloat16 is the top half of a float32: widening is exact.
        return (array.astype(np.uint32) << 16).view(np.float32)
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def _decode_bundle_strings(raw: np.ndarray, shape: tuple, path: Path, name: str) -> np.ndarray:
    """[varint len]*N, 4-byte crc32c of the length bytes, then the string bytes."""
    data = memoryview(raw)
    count = _volume(shape)
    if count > len(data):
        raise CheckpointError(f"{path}: string tensor {name!r} declares {count} elements in {len(data)} bytes")
    pos = 0
    lengths = []
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

class _SliceRecord(NamedTuple):
    name: str
    extents: list  # [(start, length or None)] per dim
    data: object  # memoryview of the TensorProto


def _v1_meta(value, path: Path) -> dict[str, tuple[int, tuple]]:
    """SavedTensorSlices.meta -> {name: (tf dtype, shape)}."""
    meta: dict[str, tuple[int, tuple]] = {}
    try:
        for field in iter_fields(value):
            if field.number != 1 or field.wire_type != LENGTH:
                continue
            for tensor in iter_fields(field.value):
                if tensor.number != 1 or tensor.wire_type != LENGTH:
                    continue
                name, shape, dtype = None, (), 0
                for sub in iter_fields(tensor.value):
                    if sub.number == 1 and sub.wire_type == LENGTH:
                        name = bytes(sub.value).decode("utf-8", errors="replace")
                    elif sub.number == 2 and sub.wire_type == LENGTH:
                        shape = _shape(sub.value)
                    elif sub.number == 3 and sub.wire_type == VARINT:
                        dtype = sub.value
                if name is None:
                    raise WireFormatError("tensor without a name")
                meta[name] = (dtype, shape)
    except WireFormatError as exc:
        raise CheckpointError(f"{path}: corrupted V1 checkpoint metadata ({exc})") from None
    return meta


def _v1_slice(value, path: Path, key: bytes) -> _SliceRecord:
    try:
        saved = None
        for field in iter_fields(value):
            if field.number == 2 and field.wire_type == LENGTH:
                saved = field.value
        if saved is None:
            raise WireFormatError("record without slice data")
        name, extents, data = None, [], None
        for field in iter_fields(saved):
            if field.number == 1 and field.wire_type == LENGTH:
                name = bytes(field.value).decode("utf-8", errors="replace")
            elif field.number == 2 and field.wire_type == LENGTH:
                for extent in iter_fields(field.value):
                    if extent.number != 1 or extent.wire_type != LENGTH:
                        continue
                    ext = _fields_by_number(extent.value)
                    length = _int(ext, 2) if 2 in ext else None
                    extents.append((_int(ext, 1), length))
            elif field.number == 3 and field.wire_type == LENGTH:
                data = field.value
        if name is None or data is None:
            raise WireFormatError("slice without a name or data")
    except WireFormatError as exc:
        raise CheckpointError(f"{path}: corrupted V1 checkpoint record {key!r} ({exc})") from None
    return _SliceRecord(name, extents, data)


def _tensor_proto_values(data, tf_dtype: int, count: int, path: Path, name: str) -> np.ndarray:
    """Flat values (``count`` of them) of a TensorProto; exact count required."""
    try:
        fields = list(iter_fields(data))
        content = [f for f in fields if f.number == 4 and f.wire_type == LENGTH]
        storage = TF_DTYPES[tf_dtype]
        if content and tf_dtype != DT_STRING:
            raw = bytes(content[-1].value)
            if len(raw) != count * storage.itemsize:
                raise WireFormatError(f"tensor_content has {len(raw)} bytes, expected {count * storage.itemsize}")
            values = np.frombuffer(raw, dtype=storage)
        elif tf_dtype == 1:
            values = repeated_scalars(fields, 5, "f4")
        elif tf_dtype == 2:
            values = repeated_scalars(fields, 6, "f8")
        elif tf_dtype == 8:
            values = repeated_scalars(fields, 9, "f4").view("<c8") if count else np.zeros(0, "<c8")
        elif tf_dtype == 18:
            values = repeated_scalars(fields, 12, "f8").view("<c16") if count else np.zeros(0, "<c16")
        elif tf_dtype in (DT_HALF, DT_BFLOAT16):
            values = repeated_scalars(fields, 13, "varint").astype(np.uint16).view(storage)
        elif tf_dtype in (9,):
            values = repeated_scalars(fields, 10, "varint").view(np.int64)
        elif tf_dtype == 10:
            values = repeated_scalars(fields, 11, "varint") != 0
        elif tf_dtype == 22:
            values = repeated_scalars(fields, 16, "varint").astype(np.uint32)
        elif tf_dtype == 23:
            values = repeated_scalars(fields, 17, "varint")
        elif tf_dtype == DT_STRING:
            values = np.empty(sum(1 for f in fields if f.number == 8), dtype=object)
            for i, f in enumerate(f for f in fields if f.number == 8):
                values[i] = bytes(f.value)
        else:  # int32-family in int_val
            values = repeated_scalars(fields, 7, "varint").view(np.int64).astype(storage)
    except WireFormatError as exc:
        raise CheckpointError(f"{path}: corrupted values of tensor {name!r} ({exc})") from None
    if values.size != count:
        raise CheckpointError(f"{path}: tensor {name!r} slice holds {values.size} values, expected {count}; "
                              "the file is corrupted")
    return values


class _V1Table:
    def __init__(self, path: Path):
        self.path = path
        self.table = SSTable(path)
        key, value = self.table.first()
        if key != b"":
            self.table.close()
            raise CheckpointError(f"{path}: a TF table without checkpoint metadata (first key {key!r}); "
                                  "not a V1 checkpoint")
        self.meta = _v1_meta(value, path)
        for name, (dtype, _shape_) in self.meta.items():
            _check_dtype(dtype, path, name)

    def info(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(_result_dtype(d), s) for name, (d, s) in self.meta.items()}

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        slices: dict[str, list[_SliceRecord]] = {name: [] for name in names}
        for key, value in self.table.items():
            if key == b"":
                continue
            record = _v1_slice(value, self.path, key)
            if record.name in slices:
                slices[record.name].append(record)
        return {name: self._assemble(name, slices[name]) for name in names}

    def _assemble(self, name: str, records: list[_SliceRecord]) -> np.ndarray:
        tf_dtype, shape = self.meta[name]
        total = _volume(shape)
        regions = []
        covered = 0
        for record in records:
            if len(record.extents) not in (0, len(shape)):
                raise CheckpointError(f"{self.path}: slice of tensor {name!r} has rank {len(record.extents)}, "
                                      f"tensor has shape {shape}; the file is corrupted")
            index = []
            for dim, (start, length) in zip(shape, record.extents or [(0, None)] * len(shape)):
                stop = dim if length is None else start + length
                if not 0 <= start <= stop <= dim:
                    raise CheckpointError(f"{self.path}: slice of tensor {name!r} lies outside its shape {shape}")
                index.append(slice(start, stop))
            count = _volume(tuple(s.stop - s.start for s in index))
            values = _tensor_proto_values(record.data, tf_dtype, count, self.path, name)
            regions.append((tuple(index), values))
            covered += count
        for i, (a, _) in enumerate(regions):  # overlapping slices would leave holes unfilled
            for b, _ in regions[i + 1:]:
                if all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b)) and len(a):
                    raise CheckpointError(f"{self.path}: tensor {name!r} has overlapping slices; the file is corrupted")
        if covered != total:
            raise CheckpointError(f"{self.path}: tensor {name!r} of shape {shape} has {covered} of its {total} "
                                  "values stored; the file is truncated or corrupted")
        out = np.empty(shape, dtype=TF_DTYPES[tf_dtype])
        for index, values in regions:
            out[index] = values.reshape(tuple(s.stop - s.start for s in index))
        return _to_native(out, tf_dtype)

    def close(self):
        self.table.close()


# ---- public API ----

def list_tf_checkpoint(path) -> dict[str, TensorInfo]:
    """Names -> (numpy dtype, shape) of a TF1 checkpoint, from the index/metadata alone."""
    kind, resolved = _resolve_prefix(path)
    if kind == "v2":
        return _Bundle(resolved).info()
    v1 = _V1Table(resolved)
    try:
        return v1.info()
    finally:
        v1.close()


def read_tf_checkpoint(path, names: Iterable[str] | None = None, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read the tensors of a TF1 checkpoint (V2 bundle or V1 table) as NumPy arrays.

    path: the prefix (``.../model.ckpt``), the ``.index``/``.data-*`` file, a V1 file, or a directory
    with a ``checkpoint`` state file. names: only these tensors (default all). mmap: for V2 numeric
    tensors, return read-only memory-mapped arrays (checksums still verified) instead of copies.
    bfloat16 tensors come back as float32 (exact).
    """
    kind, resolved = _resolve_prefix(path)
    if kind == "v2":
        bundle = _Bundle(resolved)
        wanted = _select(names, bundle.entries, bundle.index_path)
        return {name: bundle.read(name, mmap) for name in wanted}
    v1 = _V1Table(resolved)
    try:
        wanted = _select(names, v1.meta, resolved)
        return v1.read(wanted) if wanted else {}
    finally:
        v1.close()


def _select(names, available, path) -> list[str]:
    if names is None:
        return list(available)
    names = list(names)
    missing = [n for n in names if n not in available]
    if missing:
        raise CheckpointError(f"{path}: tensors not in the checkpoint: {', '.join(missing)}; "
                              f"it holds {len(available)} tensors (see list_tf_checkpoint)")
    return names
