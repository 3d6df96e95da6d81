"""The HDF5 feature-file layout: one file per dataset split (or per shard of a split).

Layout (row ``i`` of every array describes the same image)::

    /features        (N, 196, 512) float32 or float16, one image per chunk: VGG-19 conv5_4 (+ReLU)
                     regions, row-major over the 14x14 grid
    /img_ids         (N,) UTF-8 strings (NUS-WIDE: the ImageList path; Open Images: the ImageID)
    /<label name>    (N, D) int8: -1 absent, 0 unknown (not annotated), 1 present: NUS-WIDE labels_1k,
                     labels_81; Open Images labels (test: seen_labels, unseen_labels)
    /label_names/<label name>   optional (D,) UTF-8 names of the label columns

    attributes: dataset, split, feature_dtype, lesa_version, n_written, complete (True), those the
                writer was given (backbone, weights_sha256, decoder, precision, ...) and for shards
                shard_rank / shard_world_size / shard_start / shard_stop.

Every array carries a Fletcher-32 checksum per chunk: a damaged byte is an error, not a number.

``FeatureWriter`` fills ``<path>.partial``, flushing each batch before ``n_written`` counts it (a
killed run continues with ``resume=True``), and ``finish()`` renames it to ``<path>``: a file under
the final name is whole. While partial, the ids are also kept as UTF-8 bytes plus end offsets
(``/_img_id_bytes``, ``/_img_id_ends``): a kill can damage the heap of variable-length strings,
so a resumed writer rebuilds ``/img_ids`` from them without reading it.
``open_features(path | list | glob)`` -> ``FeatureSplit`` (shards in rank order, read as one);
it and ``FeatureFile`` pickle by path, so a DataLoader worker opens its own handles.
"""
from __future__ import annotations

import glob
import os
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from lesa.errors import DataError, LesaError, ShapeError
from lesa.files import atomic_write, remove_temporaries
from lesa.shapes import FEATURE_SHAPE

FEATURE_DTYPES = ("float32", "float16")
ID_BYTES, ID_ENDS = "_img_id_bytes", "_img_id_ends"  # a partial file's ids, as a kill leaves them
NOT_LABELS = ("features", "img_ids", "label_names", ID_BYTES, ID_ENDS)
STRINGS = h5py.string_dtype("utf-8")
# what h5py raises on damaged files (besides our own checks)
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, UnicodeDecodeError)
LAYOUT_HELP = ("a lesa feature file holds /features (N,196,512) float32 or float16, /img_ids (N,) strings, "
               "labels as (N,D) int8 arrays and the attribute complete=True; write one with `lesa extract`, "
               "`lesa convert-tfrecord` or lesa.datasets.h5.FeatureWriter")
DAMAGED = "the file is damaged: re-create it with `lesa extract` (or `lesa convert-tfrecord`)"


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] of the maximal runs of consecutive integers in a sorted array."""
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(sorted_rows, breaks) if run.size]


def partial_path(path: str | os.PathLike) -> Path:
    """The name a file has while it is being written: ``<path>.partial``."""
    return Path(f"{Path(path)}.partial")


def _attrs(h5attrs) -> dict:
    """HDF5 attributes as Python values (str, int, float, bool)."""
    return {key: value.decode("utf-8") if isinstance(value, bytes) else
            value.item() if isinstance(value, np.generic) else value for key, value in h5attrs.items()}


def _partial_ids(f, n: int) -> list[str]:
    """The first ``n`` ids of a partial file."""
    ends = f[ID_ENDS][:n].tolist()
    raw = f[ID_BYTES][:ends[-1] if n else 0].tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip([0, *ends[:-1]], ends)]


def _strings(values) -> list[str]:
    """UTF-8 strings as str; other values (a user's own file with numeric ids) by ``str``."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _grow(ds, n: int, rows) -> None:
    """Write ``rows`` at row ``n`` of the resizable dataset ``ds``."""
    ds.resize(n + len(rows), axis=0)
    ds[n:n + len(rows)] = rows


class FeatureWriter(_Closing):
    """Appends images' features, ids and labels ``{label name: (B, label_dims[name])}`` to one split
    file. ``attrs`` (extra file attributes) must be repeated by a resumed run (another backbone would
    mix features); ``resume`` continues ``<path>.partial`` if there is one."""

    def __init__(self, path: str | os.PathLike, dataset: str, split: str, label_dims: Mapping[str, int],
                 dtype: str = "float32", attrs: Mapping | None = None,
                 label_names: Mapping[str, Sequence[str]] | None = None, resume: bool = False,
                 overwrite: bool = False):
        self.path, self.partial = Path(path), partial_path(path)
        if str(dtype) not in FEATURE_DTYPES:
            raise DataError(f"{self.path}: feature dtype {dtype!r} is not supported; use float32 or float16")
        self.dtype = np.dtype(str(dtype))
        self.label_dims = {str(k): int(v) for k, v in label_dims.items()}
        for name, dim in self.label_dims.items():
            if name in NOT_LABELS or name.startswith("_") or dim <= 0:
                raise DataError(f"{self.path}: invalid label array {name!r} with {dim} columns")
        for name, names in (label_names or {}).items():
            if len(names) != self.label_dims.get(name):
                raise DataError(f"{self.path}: label_names[{name!r}] has {len(names)} names for "
                                f"{self.label_dims.get(name)} columns")
        if self.path.exists() and not overwrite:
            raise DataError(f"{self.path} already exists (a complete file); delete it, choose another "
                            "output, or pass --overwrite (overwrite=True) to replace it")
        from lesa import __version__

        wanted = {"dataset": str(dataset), "split": str(split), "feature_dtype": self.dtype.name,
                  "lesa_version": __version__, **{str(k): v for k, v in (attrs or {}).items()}}
        self._finished = False
        if resume and self.partial.exists():
            self._file = self._open_partial(wanted)
        else:
            self._file = self._create_partial(wanted, label_names or {})

    def _create_partial(self, attrs: Mapping, label_names: Mapping) -> h5py.File:
        """The empty file, built under a temporary name and renamed once every array exists: a kill
        meanwhile leaves no ``*.partial`` that --resume could not continue."""
        remove_temporaries(self.partial.parent, self.partial.name)  # of a killed creation

        def create(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", shape=(0, *FEATURE_SHAPE), maxshape=(None, *FEATURE_SHAPE),
                                 dtype=self.dtype, chunks=(1, *FEATURE_SHAPE), fletcher32=True)
                f.create_dataset("img_ids", shape=(0,), maxshape=(None,), dtype=STRINGS, chunks=(4096,))
                f.create_dataset(ID_BYTES, shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(1 << 16,))
                f.create_dataset(ID_ENDS, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
                for name, dim in self.label_dims.items():
                    f.create_dataset(name, shape=(0, dim), maxshape=(None, dim), dtype=np.int8,
                                     chunks=(max(1, min(1024, (1 << 16) // dim)), dim), fletcher32=True)
                for name, names in label_names.items():
                    f.create_dataset(f"label_names/{name}", data=list(names), dtype=STRINGS)
                f.attrs.update({**attrs, "n_written": 0, "complete": False})
                f.flush()

        atomic_write(self.partial, create, by_name=True)
        return h5py.File(self.partial, "r+")

    def _open_partial(self, wanted: Mapping) -> h5py.File:
        """``*.partial`` of an interrupted run, checked against this run's settings and cut back to
        the rows its ``n_written`` counts (the rest belong to a batch the kill interrupted)."""
        where = f"{self.partial} (--resume)"
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            raise DataError(f"{where}: the interrupted file cannot be opened ({exc}); delete it and run "
                            "again without --resume") from exc
        try:
            stored = _attrs(f.attrs)
            for key, value in wanted.items():
                if key != "lesa_version" and str(stored.get(key)) != str(value):
                    raise DataError(f"{where}: attribute {key!r} is {stored.get(key)!r} in the file but "
                                    f"{value!r} now; resume with the same settings, or run without --resume")
            n = int(stored.get("n_written", 0))
            widths = {"features": FEATURE_SHAPE, ID_ENDS: (), **{k: (d,) for k, d in self.label_dims.items()}}
            for name, width in widths.items():
                if name not in f or f[name].shape[1:] != width or f[name].shape[0] < n:
                    raise DataError(f"{where}: array {name!r} is missing or shorter than the {n} images "
                                    "written; delete the file and run without --resume")
                f[name].resize(n, axis=0)
            n_bytes = int(f[ID_ENDS][n - 1]) if n else 0
            if ID_BYTES not in f or f[ID_BYTES].shape[0] < n_bytes:
                raise DataError(f"{where}: the image ids are truncated; delete the file and run without --resume")
            f[ID_BYTES].resize(n_bytes, axis=0)
            if "img_ids" in f:  # unread: the kill may have damaged its heap
                del f["img_ids"]
            f.create_dataset("img_ids", data=np.array(_partial_ids(f, n), dtype=object), maxshape=(None,),
                             dtype=STRINGS, chunks=(4096,))
            f.attrs["complete"] = False
            f.flush()
        except BaseException:
            f.close()
            raise
        return f

    @property
    def n_written(self) -> int:
        """Images appended so far (those of an interrupted run included)."""
        return int(self._file.attrs["n_written"])

    @property
    def done_ids(self) -> list[str]:
        """The ids already in the file, in order (what a resumed run skips)."""
        return _partial_ids(self._file, self.n_written)

    def set_attrs(self, **attrs) -> None:
        """Add or change file attributes (e.g. counts of skipped images)."""
        self._file.attrs.update(attrs)
        self._file.flush()

    def append(self, img_ids: Sequence[str], features, labels: Mapping[str, np.ndarray] | None = None) -> None:
        """Append B images: ``img_ids`` (B,), ``features`` (B, 196, 512), ``labels`` {name: (B, D)}
        with values -1, 0, 1. The batch is durable (survives a kill) when this returns."""
        if self._finished:
            raise DataError(f"{self.path}: append after finish()")
        ids = [str(i) for i in img_ids]
        b = len(ids)
        features = np.asarray(features)
        if features.shape != (b, *FEATURE_SHAPE):
            raise ShapeError(f"{self.path}: features of shape {features.shape} for {b} image ids; "
                             f"expected ({b}, 196, 512)")
        labels = dict(labels or {})
        if set(labels) != set(self.label_dims):
            raise DataError(f"{self.path}: labels given for {sorted(labels)} but the file has "
                            f"{sorted(self.label_dims)}")
        for name, dim in self.label_dims.items():
            arr = np.asarray(labels[name])
            if arr.shape != (b, dim):
                raise ShapeError(f"{self.path}: labels {name!r} of shape {arr.shape}; expected ({b}, {dim})")
            if not np.isin(arr, (-1, 0, 1)).all():
                raise DataError(f"{self.path}: labels {name!r} must be -1, 0 or 1")
            labels[name] = arr.astype(np.int8)
        if b == 0:
            return
        f, n = self._file, self.n_written
        start, encoded = int(f[ID_ENDS][n - 1]) if n else 0, [i.encode("utf-8") for i in ids]
        _grow(f[ID_BYTES], start, np.frombuffer(b"".join(encoded), dtype=np.uint8))
        _grow(f[ID_ENDS], n, start + np.cumsum([len(e) for e in encoded]))
        _grow(f["img_ids"], n, ids)
        _grow(f["features"], n, features.astype(self.dtype, copy=False))
        for name, arr in labels.items():
            _grow(f[name], n, arr)
        f.flush()  # the rows first, then the counter that makes them count
        f.attrs["n_written"] = n + b
        f.flush()

    def finish(self) -> Path:
        """Mark the file complete and give it its final name; returns that path."""
        if not self._finished:
            self._file.attrs["complete"] = True
            self._file.close()
            os.replace(self.partial, self.path)  # a kill before: resumable; after: complete
            with h5py.File(self.path, "r+") as f:
                del f[ID_BYTES], f[ID_ENDS]  # (a kill before this leaves them: readers skip them)
            self._finished = True
        return self.path

    def close(self) -> None:
        """Close without finishing: ``*.partial`` stays for ``resume=True``."""
        if not self._finished:
            self._file.close()


class FeatureFile(_Closing):
    """One complete feature file opened for reading: ``.features`` (N, 196, 512) and ``.labels[name]``
    (N, D) are h5py datasets (nothing is loaded up front), ``.img_ids`` a list of str, ``.attrs`` a dict."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            hint = (f"; {partial_path(self.path)} exists: its extraction was interrupted, rerun the same "
                    "command with --resume to finish it") if partial_path(self.path).exists() else ""
            raise DataError(f"feature file {self.path} not found{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc}); {LAYOUT_HELP}") from exc
        try:
            self._open()
        except LesaError:
            self._file.close()
            raise
        except H5_ERRORS as exc:  # a damaged file: h5py reports it in many ways
            self._file.close()
            raise DataError(f"{self.path}: cannot be read ({type(exc).__name__}: {exc}); {DAMAGED}") from exc

    def _open(self) -> None:
        f = self._file
        self.attrs = _attrs(f.attrs)
        self.complete = self.attrs.get("complete") is True
        if "complete" not in self.attrs:
            raise DataError(f"{self.path}: not a lesa feature file (no 'complete' attribute); {LAYOUT_HELP}")
        if not self.complete:
            raise DataError(f"{self.path}: the file is incomplete: the run writing it was interrupted after "
                            f"{self.attrs.get('n_written')} images; rerun the same command with --resume to finish it")
        feats = f.get("features")
        if not isinstance(feats, h5py.Dataset) or feats.ndim != 3 or feats.shape[1:] != FEATURE_SHAPE:
            raise ShapeError(f"{self.path}: 'features' is {getattr(feats, 'shape', 'missing')}; expected "
                             "(N, 196, 512) (VGG-19 conv5_4 regions of a 224x224 crop); re-extract the features")
        if feats.dtype not in (np.float32, np.float16):
            raise DataError(f"{self.path}: 'features' dtype {feats.dtype}; expected float32 or float16")
        n, ids = feats.shape[0], f.get("img_ids")
        if not isinstance(ids, h5py.Dataset) or ids.ndim != 1 or ids.shape[0] < n:
            raise DataError(f"{self.path}: 'img_ids' is missing, not 1-d or shorter than the {n} feature "
                            f"rows; {LAYOUT_HELP}")
        self._n, self.features, self.labels = n, feats, {}
        for name, obj in f.items():
            if name in NOT_LABELS or not isinstance(obj, h5py.Dataset):
                continue
            if obj.ndim != 2 or obj.shape[0] < n:
                raise ShapeError(f"{self.path}: label array {name!r} has shape {obj.shape}; expected ({n}, D)")
            self.labels[name] = obj
        self.label_dims = {name: int(ds.shape[1]) for name, ds in self.labels.items()}
        names = f.get("label_names")
        self.label_names = {k: _strings(obj[()]) for k, obj in names.items()
                            if isinstance(obj, h5py.Dataset) and obj.ndim == 1} if isinstance(names, h5py.Group) else {}

    def __len__(self) -> int:
        return self._n

    @cached_property
    def img_ids(self) -> list[str]:
        try:
            return _strings(self._file["img_ids"][: self._n])
        except H5_ERRORS as exc:
            raise DataError(f"{self.path}: cannot read 'img_ids' ({type(exc).__name__}: {exc}); {DAMAGED}") from exc

    def __getstate__(self) -> dict:  # h5py handles do not survive pickling: the copy reopens the file
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def close(self) -> None:
        self._file.close()


class FeatureSplit(_Closing):
    """Feature files (the shards of one split, in order) read as one: rows 0..N-1 across them."""

    def __init__(self, files: Sequence[FeatureFile]):
        if not files:
            raise DataError("no feature files given")
        self.files = list(files)
        first = self.files[0]
        for other in self.files[1:]:
            for key in ("dataset", "split", "backbone", "weights_sha256", "feature_dtype"):
                if str(first.attrs.get(key)) != str(other.attrs.get(key)):
                    raise DataError(f"{other.path}: attribute {key!r} is {other.attrs.get(key)!r} but "
                                    f"{first.path} has {first.attrs.get(key)!r}; only shards of one split "
                                    "(same dataset, split, backbone and weights) are read together")
            if other.label_dims != first.label_dims:
                raise DataError(f"{other.path}: label arrays {other.label_dims} differ from "
                                f"{first.path}'s {first.label_dims}")
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])
        self.attrs = {k: v for k, v in first.attrs.items()
                      if k not in ("shard_rank", "shard_start", "shard_stop", "n_written")}
        self.label_dims, self.label_names = first.label_dims, first.label_names
        self.paths: list[Path] = [f.path for f in self.files]
        self.feature_dtype: np.dtype = first.features.dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:  # each process reopens the files
        return {"files": self.files}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["files"])

    @cached_property
    def img_ids(self) -> list[str]:
        return [i for f in self.files for i in f.img_ids]

    def _read_into(self, name: str | None, start: int, out: np.ndarray) -> None:
        """Rows ``start .. start + len(out) - 1`` of the features (``name`` None) or of label array
        ``name``, across the files, straight into ``out`` (C-contiguous, the stored dtype)."""
        stop = start + len(out)
        for k, f in enumerate(self.files):
            a, b = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
            if a < b:
                local = int(a - self.offsets[k])
                ds = f.features if name is None else f.labels[name]
                try:
                    ds.read_direct(out, np.s_[local:local + int(b - a)], np.s_[int(a - start):int(b - start)])
                except H5_ERRORS as exc:
                    raise DataError(f"{f.path}: cannot read rows {local}..{local + int(b - a) - 1} "
                                    f"({type(exc).__name__}: {exc}); {DAMAGED}") from exc

    def _gather(self, rows, name: str | None, width: tuple, dtype) -> np.ndarray:
        """Rows in any order (repeats allowed), each contiguous run read straight into place."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"feature rows out of range for {len(self)} rows")
        uniq, inverse = np.unique(rows, return_inverse=True)
        out, pos = np.empty((uniq.size, *width), dtype=dtype), 0
        for a, b in contiguous_runs(uniq):
            self._read_into(name, a, out[pos:pos + b - a])
            pos += b - a
        return out if uniq.size == rows.size and np.array_equal(uniq, rows) else out[inverse]

    def read_features(self, rows, dtype=np.float32) -> np.ndarray:
        """Features (B, 196, 512) of ``rows`` as ``dtype`` (None: as stored)."""
        feats = self._gather(rows, None, FEATURE_SHAPE, self.feature_dtype)
        return feats if dtype is None else feats.astype(dtype, copy=False)

    def read_labels(self, name: str, rows) -> np.ndarray:
        """Labels (B, D) int8 of array ``name`` for ``rows``."""
        if name not in self.label_dims:
            raise DataError(f"{self.files[0].path}: no label array {name!r}; the file has {sorted(self.label_dims)}")
        return self._gather(rows, name, (self.label_dims[name],), np.int8)

    def read(self, rows, dtype=np.float32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(features (B, 196, 512), {label name: (B, D) int8})`` of ``rows``."""
        return self.read_features(rows, dtype), {name: self.read_labels(name, rows) for name in self.label_dims}

    def close(self) -> None:
        for f in self.files:
            f.close()


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A path, a glob pattern, or a list of them -> the files, in order (each glob sorted by name)."""
    out: list[Path] = []
    for p in map(str, [paths] if isinstance(paths, (str, os.PathLike)) else paths):
        matches = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") and not Path(p).exists() else [p]
        if not matches:
            raise DataError(f"no feature files match {p!r}; check the path or pattern")
        out.extend(map(Path, matches))
    return out


def open_features(paths) -> FeatureSplit:
    """One or several feature files (a path, a glob, or a list) as one ``FeatureSplit``. Shards
    (attribute ``shard_rank``) come in rank order, the image list's; a missing rank is an error."""
    files = []
    try:
        for p in expand_paths(paths):
            files.append(FeatureFile(p))
        if files and all("shard_rank" in f.attrs for f in files):
            files.sort(key=lambda f: int(f.attrs["shard_rank"]))
            world = int(files[0].attrs.get("shard_world_size", len(files)))
            got = [int(f.attrs["shard_rank"]) for f in files]
            if got != list(range(world)):
                missing = sorted(set(range(world)) - set(got))
                raise DataError(f"shards of {files[0].path.parent}: expected ranks 0..{world - 1}, got {got} "
                                f"(missing {missing}); run the missing ranks with --rank R --world-size {world}")
        return FeatureSplit(files)
    except BaseException:
        for f in files:
            f.close()
        raise
