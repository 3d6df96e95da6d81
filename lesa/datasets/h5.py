"""The HDF5 feature-file layout: one file per dataset split (or per shard of a split).

Layout (every array row ``i`` describes the same image)::

    /features        (N, 196, 512) float32 or float16, chunked one image per chunk
                     VGG-19 conv5_4 (+ReLU) regions, row-major over the 14x14 grid
    /img_ids         (N,) UTF-8 strings (NUS-WIDE: the image path as in ImageList; OI: ImageID)
    /<label name>    (N, D) int8 with values -1 (absent), 0 (unknown / not annotated), 1 (present)
                     NUS-WIDE: labels_1k (N, 1000), labels_81 (N, 81)
                     Open Images train/validation: labels (N, 7186)
                     Open Images test: seen_labels (N, 7186), unseen_labels (N, 2594)
    /label_names/<label name>   optional (D,) UTF-8 strings naming the label columns

    file attributes: dataset, split, backbone, weights_sha256, decoder, precision,
                     lesa_version, feature_dtype, n_written, complete (bool), and for shards
                     shard_rank / shard_world_size / shard_start / shard_stop.

Writing (crash safe, resumable)::

    with FeatureWriter("train.h5", "nus_wide", "Train", {"labels_1k": 1000, "labels_81": 81},
                       attrs={"backbone": "vgg19_conv54"}, resume=True) as writer:
        todo = [i for i in ids if i not in writer.done_ids]
        writer.append(img_ids, features, {"labels_1k": l1k, "labels_81": l81})
        writer.finish()

The writer works on ``<path>.partial``; after every ``append`` the data is flushed and the
``n_written`` attribute advanced, so a run killed at any point (Ctrl-C, kill -9) can continue with
``resume=True`` from the last appended batch. ``finish()`` sets ``complete=True`` and renames the
file to ``<path>``: a file under the final name is always complete, and a half-written one is never
mistaken for it. While partial, the ids are also kept as UTF-8 bytes plus end offsets
(``/_img_id_bytes``, ``/_img_id_ends``: plain numeric arrays, removed by ``finish()``): HDF5's
variable-length strings live in a global heap that a killed writer can leave damaged ("bad heap
index" on the next write), so a resumed writer never reads the old ``/img_ids``; it rebuilds it
from those bytes.

Reading::

    split = open_features("train.h5")                   # or a list of shard files, or a glob
    len(split), split.img_ids, split.label_names, split.attrs
    feats, labels = split.read([0, 5, 7])                # (3, 196, 512) float32, {name: (3, D) int8}
    for feats, labels in split.iter_batches(256): ...

``FeatureFile`` is one file (``.features`` is the h5py dataset, streamable); ``read_split_files``
presents several files (shards of one split) as one dataset in order. Both pickle by path, so a
copy sent to a DataLoader worker process reopens its own h5py handles.
"""
from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from lesa.errors import DataError, LesaError, ShapeError
from lesa.files import atomic_write, remove_temporaries
from lesa.shapes import FEATURE_SHAPE

FEATURE_DTYPES = ("float32", "float16")
PARTIAL_SUFFIX = ".partial"
LABEL_VALUES = (-1, 0, 1)

# what h5py raises on damaged files (besides our own checks)
_H5_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, UnicodeDecodeError)

# the ids of a partial file (see the module docstring)
ID_BYTES = "_img_id_bytes"
ID_ENDS = "_img_id_ends"

# attribute names (file level)
ATTR_COMPLETE = "complete"
ATTR_N_WRITTEN = "n_written"


def _h5py():
    import h5py

    return h5py


def partial_path(path: str | os.PathLike) -> Path:
    """The name a file has while it is being written: ``<path>.partial``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _decode_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _ids_from_bytes(f, n: int) -> list[str]:
    """The first ``n`` ids of a partial file (UTF-8 bytes + end offsets)."""
    if n == 0:
        return []
    ends = f[ID_ENDS][:n]
    raw = f[ID_BYTES][: int(ends[-1])].tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    return [raw[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist())]


def _attrs_dict(h5attrs) -> dict:
    out = {}
    for key, value in h5attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


class FeatureWriter:
    """Append images' features, ids and labels to one HDF5 split file (see module docstring).

    Args:
        path: final file name; the data goes to ``<path>.partial`` until ``finish()``.
        dataset: e.g. ``"nus_wide"`` or ``"openimages"`` (stored as attribute ``dataset``).
        split: e.g. ``"Train"``, ``"Test"``, ``"train"``, ``"validation"``, ``"test"``.
        label_dims: ``{label name: number of columns}``, e.g. ``{"labels_1k": 1000, "labels_81": 81}``.
        dtype: ``"float32"`` or ``"float16"`` for ``features``.
        attrs: extra file attributes (backbone, weights_sha256, decoder, precision, shard info...).
            On resume, these must equal the ones stored (a different backbone would mix features).
        label_names: optional ``{label name: list of D column names}`` stored under ``/label_names``.
        resume: continue ``<path>.partial`` if it exists (otherwise start fresh). Without it an
            existing ``<path>.partial`` is overwritten. An existing complete ``<path>`` is an
            error unless ``overwrite=True``.
        overwrite: replace an existing complete ``<path>``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dataset: str,
        split: str,
        label_dims: Mapping[str, int],
        dtype: str = "float32",
        attrs: Mapping | None = None,
        label_names: Mapping[str, Sequence[str]] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ):
        h5py = _h5py()
        self.path = Path(path)
        self.partial = partial_path(self.path)
        if str(dtype) not in FEATURE_DTYPES:
            raise DataError(f"{self.path}: feature dtype {dtype!r} is not supported; use float32 or float16")
        self.dtype = np.dtype(str(dtype))
        self.label_dims = {str(k): int(v) for k, v in label_dims.items()}
        for name, dim in self.label_dims.items():
            if name in ("features", "img_ids", "label_names") or name.startswith("_") or dim <= 0:
                raise DataError(f"{self.path}: invalid label array {name!r} with {dim} columns")
        self._finished = False
        if self.path.exists() and not overwrite:
            raise DataError(
                f"{self.path} already exists (a complete file); delete it, choose another output, "
                "or pass overwrite=True (--overwrite) to replace it"
            )
        wanted_attrs = {
            "dataset": str(dataset),
            "split": str(split),
            "feature_dtype": self.dtype.name,
            **{str(k): v for k, v in (attrs or {}).items()},
        }
        if "lesa_version" not in wanted_attrs:
            from lesa import __version__

            wanted_attrs["lesa_version"] = __version__

        if resume and self.partial.exists():
            try:
                self._file = h5py.File(self.partial, "r+")
            except OSError as exc:
                raise DataError(
                    f"{self.partial}: the interrupted file cannot be opened ({exc}); it was damaged "
                    "while being written. Delete it and run again without --resume"
                ) from exc
            self._check_resumable(wanted_attrs)
        else:
            self._file = self._create_partial(wanted_attrs, label_names)

    # -- creation / resume -------------------------------------------------------------------
    def _create_partial(self, attrs: Mapping, label_names):
        """The empty file is built under a temporary name and renamed to ``*.partial`` once every
        array exists: a kill during creation never leaves a partial file that --resume cannot
        continue (the next run finds no partial file and starts afresh)."""
        h5py = _h5py()
        remove_temporaries(self.partial.parent, self.partial.name)  # of a killed creation

        def create(tmp: Path) -> None:
            self._file = h5py.File(tmp, "w")
            try:
                self._create(attrs, label_names)
            finally:
                self._file.close()

        atomic_write(self.partial, create, by_name=True)
        return h5py.File(self.partial, "r+")

    def _create(self, attrs: Mapping, label_names) -> None:
        h5py = _h5py()
        f = self._file
        f.create_dataset(
            "features", shape=(0, *FEATURE_SHAPE), maxshape=(None, *FEATURE_SHAPE),
            dtype=self.dtype, chunks=(1, *FEATURE_SHAPE),
            fletcher32=True,  # a checksum per chunk: a damaged byte is an error, not a silently wrong value
        )
        self._create_img_ids([])
        # ids while partial: UTF-8 bytes + end offsets (no variable-length heap; see module docstring)
        f.create_dataset(ID_BYTES, shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(1 << 16,))
        f.create_dataset(ID_ENDS, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        for name, dim in self.label_dims.items():
            rows = max(1, min(1024, (1 << 16) // dim))
            f.create_dataset(name, shape=(0, dim), maxshape=(None, dim), dtype=np.int8, chunks=(rows, dim),
                             fletcher32=True)
        for name, names in (label_names or {}).items():
            if name not in self.label_dims or len(names) != self.label_dims[name]:
                raise DataError(
                    f"{self.path}: label_names[{name!r}] has {len(names)} names for "
                    f"{self.label_dims.get(name)} columns"
                )
            f.create_dataset(f"label_names/{name}", data=np.array(list(names), dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs[ATTR_N_WRITTEN] = 0
        f.attrs[ATTR_COMPLETE] = False
        f.flush()

    def _check_resumable(self, wanted_attrs: Mapping) -> None:
        f = self._file
        stored = _attrs_dict(f.attrs)
        where = f"{self.partial} (resume)"
        for key, value in wanted_attrs.items():
            if key == "lesa_version":
                continue
            if key not in stored or str(stored[key]) != str(value):
                raise DataError(
                    f"{where}: attribute {key!r} is {stored.get(key)!r} in the file but {value!r} now; "
                    "resume with the same settings, or run without --resume to start over"
                )
        for name, dim in self.label_dims.items():
            if name not in f or f[name].shape[1:] != (dim,):
                raise DataError(f"{where}: label array {name!r} with {dim} columns is missing; "
                                "run without --resume to start over")
        if "features" not in f or f["features"].shape[1:] != FEATURE_SHAPE:
            raise DataError(f"{where}: no (N,196,512) 'features' array; run without --resume")
        if ID_ENDS not in f or ID_BYTES not in f:
            raise DataError(f"{where}: no image-id arrays; run without --resume to start over")
        n = int(stored.get(ATTR_N_WRITTEN, 0))
        # Rows past n_written belong to a batch interrupted mid-write: drop them.
        for name in ["features", ID_ENDS, *self.label_dims]:
            if f[name].shape[0] < n:
                raise DataError(f"{where}: {name!r} has {f[name].shape[0]} rows, fewer than the "
                                f"{n} recorded as written; delete the file and run without --resume")
            f[name].resize(n, axis=0)
        n_bytes = int(f[ID_ENDS][n - 1]) if n else 0
        if f[ID_BYTES].shape[0] < n_bytes:
            raise DataError(f"{where}: image ids are truncated; delete the file and run without --resume")
        f[ID_BYTES].resize(n_bytes, axis=0)
        # the vlen ids may sit in a heap damaged by the kill: unlink them unread, write them afresh
        if "img_ids" in f:
            del f["img_ids"]
        self._create_img_ids(_ids_from_bytes(f, n))
        f.attrs[ATTR_COMPLETE] = False
        f.flush()

    def _create_img_ids(self, ids: list[str]) -> None:
        h5py = _h5py()
        self._file.create_dataset("img_ids", data=np.array(ids, dtype=object).reshape(-1),
                                  dtype=h5py.string_dtype("utf-8"), maxshape=(None,), chunks=(4096,))

    # -- state ----------------------------------------------------------------------------------
    @property
    def n_written(self) -> int:
        """Number of images appended so far (including those of a resumed run)."""
        return int(self._file.attrs[ATTR_N_WRITTEN])

    @property
    def done_ids(self) -> list[str]:
        """Image ids already in the file, in order (what a resumed run must skip)."""
        return _ids_from_bytes(self._file, self.n_written)

    def set_attrs(self, **attrs) -> None:
        """Add or update file attributes (e.g. a summary of skipped images)."""
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.flush()

    # -- writing --------------------------------------------------------------------------------
    def append(self, img_ids: Sequence[str], features, labels: Mapping[str, np.ndarray] | None = None,
               checksums: np.ndarray | None = None) -> None:
        """Append B images: ``img_ids`` (B,), ``features`` (B, 196, 512), ``labels`` {name: (B, D)}.

        Label values must be -1, 0 or 1. The batch becomes durable (survives a kill) when this returns.
        ``checksums``: the records' Fletcher-32 (:func:`fletcher32_of_records` of ``features`` in the
        file's dtype, e.g. computed on the GPU): the chunks are then written as they are, past
        HDF5's filter, whose single-threaded checksum is otherwise the slowest part of a write.
        """
        if hasattr(features, "detach"):
            features = features.detach().cpu().numpy()
        features = np.asarray(features)
        b = len(img_ids)
        if features.shape != (b, *FEATURE_SHAPE):
            raise ShapeError(f"{self.path}: features of shape {features.shape} for {b} image ids; "
                             f"expected ({b}, 196, 512)")
        features = features.astype(self.dtype, copy=False)
        if checksums is None:
            self._append(img_ids, labels, lambda f, n: _write_rows(f["features"], n, features))
            return
        if hasattr(checksums, "detach"):
            checksums = checksums.detach().cpu().numpy()
        if np.shape(checksums) != (b,):
            raise ShapeError(f"{self.path}: {np.shape(checksums)} checksums for {b} records")
        import torch

        chunks = record_chunks(torch.from_numpy(np.ascontiguousarray(features)), torch.as_tensor(checksums))
        self.append_chunks(img_ids, chunks.numpy(), labels)

    def append_chunks(self, img_ids: Sequence[str], chunks, labels: Mapping[str, np.ndarray] | None = None) -> None:
        """``append`` for records already laid out as the file's chunks (:func:`record_chunks`: each
        record's bytes in the file's dtype, then its Fletcher-32), e.g. built on the GPU: they are
        written as they are, without another copy."""
        if hasattr(chunks, "detach"):
            chunks = chunks.detach().cpu().numpy()
        b = len(img_ids)
        width = int(np.prod(FEATURE_SHAPE)) * self.dtype.itemsize + 4
        if chunks.dtype != np.uint8 or chunks.shape != (b, width):
            raise ShapeError(f"{self.path}: chunks of shape {chunks.shape} ({chunks.dtype}) for {b} image ids; "
                             f"expected ({b}, {width}) uint8: {self.dtype} records and their checksums")

        def write(f, n):
            ds = f["features"]
            ds.resize(n + b, axis=0)
            for i in range(b):
                ds.id.write_direct_chunk((n + i, 0, 0), chunks[i])
        self._append(img_ids, labels, write)

    def _append(self, img_ids: Sequence[str], labels, write_features) -> None:
        """The rest of an append: checks the labels, calls ``write_features(file, n_written)``,
        writes ids and labels, then the counter that makes the batch count."""
        if self._finished:
            raise DataError(f"{self.path}: append after finish()")
        ids = [str(i) for i in img_ids]
        b = len(ids)
        labels = dict(labels or {})
        if set(labels) != set(self.label_dims):
            raise DataError(f"{self.path}: labels given for {sorted(labels)} but the file has "
                            f"{sorted(self.label_dims)}")
        checked = {}
        for name, dim in self.label_dims.items():
            arr = np.asarray(labels[name])
            if arr.shape != (b, dim):
                raise ShapeError(f"{self.path}: labels {name!r} of shape {arr.shape}; expected ({b}, {dim})")
            if arr.size and (arr.min() < -1 or arr.max() > 1 or not np.all(arr == np.round(arr))):
                raise DataError(f"{self.path}: labels {name!r} must be -1, 0 or 1")
            checked[name] = arr.astype(np.int8)
        if b == 0:
            return
        f = self._file
        n = self.n_written
        encoded = [i.encode("utf-8") for i in ids]
        start = int(f[ID_ENDS][n - 1]) if n else 0
        ends = start + np.cumsum([len(e) for e in encoded], dtype=np.int64)
        id_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        f[ID_BYTES].resize(start + id_bytes.size, axis=0)
        f[ID_BYTES][start:] = id_bytes
        write_features(f, n)
        for name, arr in [(ID_ENDS, ends), ("img_ids", np.array(ids, dtype=object)), *checked.items()]:
            _write_rows(f[name], n, arr)
        f.flush()  # data first, then the counter that makes it count
        f.attrs[ATTR_N_WRITTEN] = n + b
        f.flush()

    def finish(self) -> Path:
        """Mark the file complete and move it to its final name; returns that path."""
        if self._finished:
            return self.path
        f = self._file
        if f["img_ids"].shape[0] != self.n_written:
            raise DataError(f"{self.partial}: {f['img_ids'].shape[0]} image ids for {self.n_written} rows")
        del f[ID_BYTES], f[ID_ENDS]
        f.attrs[ATTR_COMPLETE] = True
        f.flush()
        f.close()
        os.replace(self.partial, self.path)
        self._finished = True
        return self.path

    def close(self) -> None:
        """Close without finishing: the ``.partial`` file stays for ``resume=True``."""
        if not self._finished and self._file.id.valid:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeatureFile:
    """One feature file opened for reading.

    ``.features`` (N, 196, 512) and ``.labels[name]`` (N, D) are h5py datasets (read slices of
    them; nothing is loaded up front); ``.img_ids`` is a list of str; ``.attrs`` a dict.
    An incomplete file or a wrong shape raises ``DataError`` naming the fix, unless
    ``allow_incomplete=True``.
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        h5py = _h5py()
        self.path = Path(path)
        if not self.path.exists():
            hint = ""
            if partial_path(self.path).exists():
                hint = (f"; {partial_path(self.path)} exists: the extraction was interrupted — "
                        "rerun it with --resume to finish the file")
            raise DataError(f"feature file {self.path} not found{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 feature file ({exc}); "
                            "re-create it with `lesa extract`") from exc
        try:
            self._validate(allow_incomplete)
        except LesaError:
            self._file.close()
            raise
        except _H5_READ_ERRORS as exc:  # a damaged file: h5py reports it in many ways
            self._file.close()
            raise DataError(f"{self.path}: damaged HDF5 feature file ({type(exc).__name__}: {exc}); "
                            "re-create it with `lesa extract`") from exc

    def _validate(self, allow_incomplete: bool) -> None:
        f = self._file
        self.attrs = _attrs_dict(f.attrs)
        self.complete = bool(self.attrs.get(ATTR_COMPLETE, False))
        if not self.complete and not allow_incomplete:
            raise DataError(f"{self.path}: the file is incomplete (its extraction was interrupted); "
                            "rerun the extraction with --resume to finish it")
        if "features" not in f or not isinstance(f["features"], _h5py().Dataset):
            raise DataError(f"{self.path}: no 'features' array; not a lesa feature file")
        feats = f["features"]
        if feats.ndim != 3 or feats.shape[1:] != FEATURE_SHAPE:
            raise ShapeError(f"{self.path}: 'features' has shape {feats.shape}; expected (N, 196, 512) "
                             "(VGG-19 conv5_4 regions of a 224x224 input); re-extract the features")
        if feats.dtype not in (np.float32, np.float16):
            raise DataError(f"{self.path}: 'features' dtype {feats.dtype}; expected float32 or float16")
        n = feats.shape[0]
        if not self.complete:  # rows past n_written are an interrupted batch
            n = min(n, int(self.attrs.get(ATTR_N_WRITTEN, n)))
        self._n = n
        if "img_ids" in f:
            if not isinstance(f["img_ids"], _h5py().Dataset) or f["img_ids"].ndim != 1:
                raise DataError(f"{self.path}: 'img_ids' is not a 1-d array of image ids; not a lesa "
                                "feature file — re-create it with `lesa extract`")
            n_ids = f["img_ids"].shape[0]
        elif ID_ENDS in f and ID_BYTES in f:  # a partial file (allow_incomplete=True)
            n_ids = f[ID_ENDS].shape[0]
        else:
            n_ids = -1
        if n_ids < n:
            raise DataError(f"{self.path}: 'img_ids' missing or shorter than the {n} feature rows")
        self.features = feats
        self.labels = {}
        skip = {"features", "img_ids", "label_names", ID_BYTES, ID_ENDS}
        for name, obj in f.items():
            if name in skip or not isinstance(obj, _h5py().Dataset):
                continue
            if obj.ndim != 2 or obj.shape[0] < n:
                raise ShapeError(f"{self.path}: label array {name!r} has shape {obj.shape}; "
                                 f"expected ({n}, D)")
            self.labels[name] = obj
        self.label_names = {}
        if "label_names" in f:
            for name, obj in f["label_names"].items():
                self.label_names[name] = [_decode_str(v) for v in obj[()]]
        self._img_ids = None

    def __len__(self) -> int:
        return self._n

    # h5py handles do not survive pickling/fork: a copy sent to a DataLoader worker reopens the file
    def __getstate__(self) -> dict:
        return {"path": self.path, "allow_incomplete": not self.complete}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], allow_incomplete=state["allow_incomplete"])

    @property
    def img_ids(self) -> list[str]:
        if self._img_ids is None:
            try:
                if "img_ids" in self._file:
                    self._img_ids = [_decode_str(v) for v in self._file["img_ids"][: self._n]]
                else:
                    self._img_ids = _ids_from_bytes(self._file, self._n)
            except _H5_READ_ERRORS as exc:
                raise DataError(f"{self.path}: cannot read 'img_ids' ({type(exc).__name__}: {exc}); "
                                "the file is damaged — re-create it with `lesa extract`") from exc
        return self._img_ids

    @property
    def label_dims(self) -> dict[str, int]:
        return {name: int(ds.shape[1]) for name, ds in self.labels.items()}

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeatureSplit:
    """Several feature files (shards of one split, in order) presented as one dataset.

    Rows are numbered 0..N-1 across the files in the order given. ``read(indices)`` returns
    ``(features (B,196,512), {label name: (B, D) int8})`` for any indices (any order, repeats ok).
    """

    def __init__(self, files: Sequence[FeatureFile]):
        if not files:
            raise DataError("no feature files given")
        self.files = list(files)
        first = self.files[0]
        for other in self.files[1:]:
            for key in ("dataset", "split", "backbone", "weights_sha256", "feature_dtype"):
                if str(first.attrs.get(key)) != str(other.attrs.get(key)):
                    raise DataError(
                        f"{other.path}: attribute {key!r} is {other.attrs.get(key)!r} but "
                        f"{first.path} has {first.attrs.get(key)!r}; only shards of one split "
                        "(same dataset, split, backbone and weights) can be read together"
                    )
            if other.label_dims != first.label_dims:
                raise DataError(f"{other.path}: label arrays {other.label_dims} differ from "
                                f"{first.path}'s {first.label_dims}")
        self.lengths = [len(f) for f in self.files]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        attrs = dict(first.attrs)
        for key in ("shard_rank", "shard_start", "shard_stop", ATTR_N_WRITTEN):
            attrs.pop(key, None)
        self.attrs = attrs
        self.label_dims = first.label_dims
        self.label_names = first.label_names
        self._img_ids = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:  # picklable: each process reopens the files
        return {"files": self.files}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["files"])

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    @property
    def img_ids(self) -> list[str]:
        if self._img_ids is None:
            self._img_ids = [i for f in self.files for i in f.img_ids]
        return self._img_ids

    @property
    def feature_dtype(self) -> np.dtype:
        return self.files[0].features.dtype

    def _gather(self, indices, get, width_shape, dtype) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"feature index out of range for {n} rows")
        out = np.empty((idx.size, *width_shape), dtype=dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(which):
            sel = np.nonzero(which == k)[0]
            local = idx[sel] - self.offsets[k]
            uniq, inverse = np.unique(local, return_inverse=True)  # h5py wants increasing indices
            try:
                block = _read_rows(get(self.files[k]), uniq)
            except _H5_READ_ERRORS as exc:
                raise DataError(f"{self.files[k].path}: cannot read rows {uniq[:3].tolist()}... "
                                f"({type(exc).__name__}: {exc}); the file is damaged — re-create it "
                                "with `lesa extract`") from exc
            out[sel] = block[inverse]
        return out

    def read_features(self, indices, dtype=np.float32) -> np.ndarray:
        """Features (B, 196, 512) of the given rows, as ``dtype`` (None: as stored)."""
        dtype = self.feature_dtype if dtype is None else np.dtype(dtype)
        return self._gather(indices, lambda f: f.features, FEATURE_SHAPE, dtype)

    def read_features_into(self, start: int, out: np.ndarray) -> None:
        """Features of the rows ``start .. start + len(out) - 1`` straight into ``out`` (C-contiguous,
        the stored dtype): no temporary copy (the fast path of streaming)."""
        stop = start + len(out)
        if start < 0 or stop > len(self):
            raise IndexError(f"rows {start}..{stop - 1} out of range for {len(self)} rows")
        if out.dtype != self.feature_dtype or not out.flags.c_contiguous:
            raise ValueError(f"read_features_into needs a C-contiguous {self.feature_dtype} array")
        for k, f in enumerate(self.files):
            a, b = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
            if a >= b:
                continue
            local = int(a - self.offsets[k])
            try:
                f.features.read_direct(out, np.s_[local:local + int(b - a)], np.s_[int(a - start):int(b - start)])
            except _H5_READ_ERRORS as exc:
                raise DataError(f"{f.path}: cannot read rows {local}..{local + int(b - a) - 1} "
                                f"({type(exc).__name__}: {exc}); the file is damaged — re-create it "
                                "with `lesa extract`") from exc

    def read_labels(self, name: str, indices) -> np.ndarray:
        """Labels (B, D) int8 of array ``name`` for the given rows."""
        if name not in self.label_dims:
            raise DataError(f"{self.files[0].path}: no label array {name!r}; "
                            f"the file has {sorted(self.label_dims)}")
        return self._gather(indices, lambda f: f.labels[name], (self.label_dims[name],), np.int8)

    def read(self, indices, dtype=np.float32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(features (B,196,512), {label name: (B, D) int8})`` for the given rows."""
        return (self.read_features(indices, dtype),
                {name: self.read_labels(name, indices) for name in self.label_dims})

    def iter_batches(self, batch_size: int, indices=None, dtype=np.float32
                     ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Stream ``read`` over ``indices`` (default: all rows in order) in batches."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, order.size, batch_size):
            yield self.read(order[start:start + batch_size], dtype)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "FeatureSplit":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of an h5py dataset; contiguous runs are read as slices (fast)."""
    if rows.size == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    if rows[-1] - rows[0] + 1 == rows.size:
        return ds[int(rows[0]): int(rows[-1]) + 1]
    return ds[rows]


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A path, a glob pattern, or a list of them -> the files, in order (globs sorted by name)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?[") and not Path(s).exists():
            matches = sorted(_glob.glob(s))
            if not matches:
                raise DataError(f"no feature files match {s!r}; check the path or pattern")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(s))
    return out


def read_split_files(paths, allow_incomplete: bool = False) -> FeatureSplit:
    """Open one or several feature files (a path, glob, or list) as one ``FeatureSplit``.

    Shard files (attribute ``shard_rank``) are ordered by rank, so that the rows come in the
    original image-list order; a missing shard is an error naming it.
    """
    files = [FeatureFile(p, allow_incomplete=allow_incomplete) for p in expand_paths(paths)]
    ranks = [f.attrs.get("shard_rank") for f in files]
    if ranks and all(r is not None for r in ranks):
        files.sort(key=lambda f: int(f.attrs["shard_rank"]))
        world = int(files[0].attrs.get("shard_world_size", len(files)))
        got = [int(f.attrs["shard_rank"]) for f in files]
        if got != list(range(world)):
            for f in files:
                f.close()
            missing = sorted(set(range(world)) - set(got))
            raise DataError(f"shards of {files[0].path.parent}: expected ranks 0..{world - 1}, got {got}"
                            f" (missing {missing}); run the missing ranks with --rank R --world-size {world}")
    return FeatureSplit(files)


def open_features(paths, allow_incomplete: bool = False) -> FeatureSplit:
    """Alias of ``read_split_files``: the one entry point for reading features."""
    return read_split_files(paths, allow_incomplete=allow_incomplete)


def _write_rows(ds, n: int, rows) -> None:
    ds.resize(n + len(rows), axis=0)
    ds[n:n + len(rows)] = rows


def record_chunks(features, checksums):
    """The file's chunks for B records: (B, record bytes + 4) uint8 tensor on ``features``'s device,
    each record's bytes (``features`` (B, 196, 512) in the file's dtype) followed by its
    Fletcher-32 (``checksums`` (B,), :func:`fletcher32_of_records`) in little-endian byte order —
    exactly what HDF5's fletcher32 filter stores (tests compare the bytes)."""
    import torch

    b = features.shape[0]
    record_bytes = int(np.prod(features.shape[1:])) * features.element_size()
    if b == 0:  # (an empty array's strides may not allow the byte view)
        return torch.empty((0, record_bytes + 4), dtype=torch.uint8, device=features.device)
    raw = features.contiguous().view(torch.uint8).reshape(b, record_bytes)
    c = checksums.to(device=raw.device, dtype=torch.int64)
    tail = torch.stack([(c >> shift) & 255 for shift in (0, 8, 16, 24)], dim=1).to(torch.uint8)
    return torch.cat([raw, tail], dim=1)


def fletcher32_of_records(features) -> np.ndarray:
    """HDF5's Fletcher-32 checksum of each record's bytes (a (B, 196, 512) tensor in the dtype it is
    stored in, on any device): (B,) int64 tensor on that device, for
    ``FeatureWriter.append(..., checksums=)``.

    HDF5 sums the bytes as big-endian 16-bit words w_1..w_n: s1 = sum w_i, s2 = sum (n-i+1) w_i,
    each folded modulo 65535 into 1..65535 (0 only for all-zero data); the checksum is
    s2 << 16 | s1. (Its 360-word blocks never overflow 32 bits, so the closed form is exact.)"""
    import torch

    out = []
    for part in torch.as_tensor(features).split(64):  # bounded temporaries
        record_bytes = int(np.prod(part.shape[1:])) * part.element_size()
        raw = part.contiguous().view(torch.uint8).reshape(part.shape[0], record_bytes // 2, 2).to(torch.int64)
        words = raw[..., 0] * 256 + raw[..., 1]
        n = words.shape[1]
        weights = torch.arange(n, 0, -1, dtype=torch.int64, device=words.device)
        s1, s2 = words.sum(1), (words * weights).sum(1)
        folded = [torch.where(s == 0, 0, (s - 1) % 65535 + 1) for s in (s1, s2)]
        out.append((folded[1] << 16) | folded[0])
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
