"""Training and evaluation batches from HDF5 feature files (``lesa.datasets.h5``), read through
``torch.utils.data``.

- Order: the original's by default, sequential and repeating: the last batch of an epoch holds the
  remainder (TF1: ``dataset.batch(32).repeat()`` batches each pass separately), then the next epoch
  starts again at the first record. ``shuffle=True``: a permutation of blocks of records, mixed
  within windows of ``shuffle_buffer`` records, a pure function of (seed, epoch) (``BatchPlan``).
- Streaming (``preload="none"``): consecutive batches are read together as one *window* of about
  ``chunk_mb`` MB by a ``DataLoader`` with ``workers`` processes, two windows ahead per worker and
  returned in order: the same batches whatever the number of workers, memory bounded by a few
  windows. float16 files stay float16 until training batches are converted to float32;
  evaluation batches reach the model as stored (it casts them itself).
- ``preload="ram"``/``"gpu"`` read the range into memory once; ``"auto"`` picks the GPU, then RAM,
  when the data fits, else streams. A preload that cannot fit is a ``ConfigError`` before any work.
- ``shard=(rank, world_size)``: each process's slice of every global batch (DDP).
- A damaged record is a ``DataError`` naming the file and the records, also when a worker read it.
The position of the next batch, ``(epoch, batch)``, is saved in checkpoints for an exact resume.
"""
from __future__ import annotations

import itertools
import os
import signal
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lesa.datasets.h5 import FeatureSplit, open_features
from lesa.errors import ConfigError, DataError
from lesa.shapes import FEATURE_SHAPE

# A label spec: output key -> (label array name in the file, column indices or None = all columns)
LabelSpec = Mapping[str, tuple[str, "np.ndarray | None"]]
Window = Sequence[np.ndarray]  # the row indices of each batch read together


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_preload(preload: str, n_bytes: int, device: torch.device, where: str) -> str:
    """Turn ``auto`` into gpu/ram/none, and refuse a preload that cannot fit (fail fast); the value
    itself is checked with the configuration (``lesa.experiment.CHOICES``)."""
    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    # under torchrun every process of a node loads its own copy into the node's RAM
    ram = available_ram_bytes() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if preload == "auto":
        if device.type == "cuda" and n_bytes < 0.8 * gpu_free:
            return "gpu"
        return "ram" if n_bytes < 0.5 * ram else "none"
    if preload == "gpu":
        if device.type != "cuda":
            raise ConfigError(f"{where}: preload=gpu needs a CUDA device (device is {device}); "
                              "use preload=ram or auto")
        if n_bytes > 0.9 * gpu_free:
            raise ConfigError(f"{where}: {n_bytes / 2**30:.1f} GiB of features do not fit in the "
                              f"{gpu_free / 2**30:.1f} GiB free on {device}; use preload=ram/none "
                              "or float16 features")
    if preload == "ram" and n_bytes > 0.9 * ram:
        raise ConfigError(f"{where}: {n_bytes / 2**30:.1f} GiB of features do not fit in the "
                          f"{ram / 2**30:.1f} GiB of available memory (per process of this node); use "
                          "preload=none (streaming)")
    return preload


def _labels(split: FeatureSplit, rows: np.ndarray, label_spec: LabelSpec) -> dict[str, np.ndarray]:
    """``{key: (n, D) int8}`` of records ``rows`` (absolute, any order)."""
    raw = {array: split.read_labels(array, rows) for array, _ in label_spec.values()}
    return {key: raw[array] if cols is None else raw[array][:, cols] for key, (array, cols) in label_spec.items()}


def read_labels(split: FeatureSplit, label_spec: LabelSpec, block: int = 65536) -> dict[str, np.ndarray]:
    """The labels of every record, ``{key: (N, D) int8}`` (no features read)."""
    parts = [_labels(split, np.arange(a, min(len(split), a + block)), label_spec) for a in range(0, len(split), block)]
    return {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros((0, 0), np.int8) for key in label_spec}


class WindowReads(Dataset):
    """``dataset[window]`` -> ``(features as stored, {key: labels int8})`` tensors of a window's rows,
    each process with its own file handles. A worker returns a ``DataError`` instead of raising it,
    so that the training process raises it as it is (not wrapped in the worker's traceback)."""

    def __init__(self, split: FeatureSplit, label_spec: LabelSpec):
        self.paths, self.label_spec = list(split.paths), dict(label_spec)
        self._split, self._pid = split, os.getpid()

    def _opened(self) -> FeatureSplit:
        if os.getpid() != self._pid:  # a worker process: its own handles
            self._split, self._pid = open_features(self.paths), os.getpid()
        return self._split

    def __getitem__(self, window: Window):
        rows = np.concatenate(list(window))
        try:  # (a damaged record: a DataError naming file and rows)
            split = self._opened()
            feats, labels = split.read_features(rows, dtype=None), _labels(split, rows, self.label_spec)
        except DataError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            return exc
        return torch.from_numpy(feats), {k: torch.from_numpy(v) for k, v in labels.items()}


def _worker_ignores_ctrl_c(_worker_id: int) -> None:
    """Ctrl-C is the training process's to handle (it saves a resume point, then stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Batch:
    features: torch.Tensor  # (B, 196, 512) on the device: float32 (training), as stored (evaluation)
    labels: dict[str, torch.Tensor]  # key -> (B, D) float32 in {-1, 0, 1}
    rows: np.ndarray  # (B,) record indices in the file


class RangeReader:
    """Reads records ``[start, stop)`` of ``split``: features as stored and the labels of
    ``label_spec``. With ``preload`` they live in memory (RAM numpy arrays or GPU tensors);
    otherwise they are read window by window through a DataLoader with ``workers`` processes."""

    def __init__(self, split: FeatureSplit, label_spec: LabelSpec, start: int = 0, stop: int | None = None,
                 preload: str = "none", device: str | torch.device = "cpu", chunk_mb: int = 64,
                 progress: bool = True, name: str = "data", workers: int = 0):
        self.split, self.label_spec = split, dict(label_spec)
        self.start, self.stop = int(start), len(split) if stop is None else int(stop)
        self.device, self.name, self.workers = torch.device(device), name, int(workers)
        where = split.paths[0]
        if not 0 <= self.start <= self.stop <= len(split):
            raise DataError(f"{where}: records [{self.start}, {self.stop}) are outside the file's "
                            f"{len(split)} records")
        for key, (array, cols) in self.label_spec.items():
            if array not in split.label_dims:
                raise DataError(f"{where}: no label array {array!r} (needed for {key}); the file has "
                                f"{sorted(split.label_dims)} — is it the right dataset/split?")
            if cols is not None and len(cols) and int(np.max(cols)) >= split.label_dims[array]:
                raise DataError(f"{where}: label array {array!r} has {split.label_dims[array]} columns; "
                                f"the label list needs column {int(np.max(cols))}")
        record_bytes = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * np.dtype(split.feature_dtype).itemsize
        self.chunk_records = max(1, int(chunk_mb * 2**20) // record_bytes)
        self.preload = resolve_preload(preload, len(self) * record_bytes, self.device, where)
        self._features = self._labels = None
        if self.preload != "none":
            self._load_all(progress)

    def __len__(self) -> int:
        return self.stop - self.start

    def read_windows(self, windows: Iterable[Window]) -> Iterator[tuple[Window, torch.Tensor, dict]]:
        """``(window, features as stored, {key: labels})`` for each window of ``windows`` (a fresh
        iterable, possibly endless), read ahead by the DataLoader, in order."""
        # the loader takes windows from its own copy of the sequence, ahead of the consumer
        mine, theirs = itertools.tee(windows)
        loader = DataLoader(WindowReads(self.split, self.label_spec), sampler=theirs, batch_size=None,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if self.workers else None,
                            worker_init_fn=_worker_ignores_ctrl_c if self.workers else None)
        items = iter(loader)
        try:
            for window, item in zip(mine, items):
                if isinstance(item, DataError):
                    raise item
                yield (window, *item)
        finally:
            del items  # stops the workers

    def _load_all(self, progress: bool) -> None:
        from tqdm import tqdm

        n = len(self)
        feats = np.empty((n, *FEATURE_SHAPE), dtype=self.split.feature_dtype)
        labels = {key: np.empty((n, len(cols) if cols is not None else self.split.label_dims[array]), np.int8)
                  for key, (array, cols) in self.label_spec.items()}
        windows = [[np.arange(a, min(self.stop, a + self.chunk_records))]
                   for a in range(self.start, self.stop, self.chunk_records)]
        with tqdm(total=n, desc=f"loading {self.name} into {self.preload.upper()}", unit="img",
                  disable=not progress, leave=False) as bar:
            for window, f, lab in self.read_windows(windows):
                a = int(window[0][0]) - self.start
                for dest, src in ((feats, f), *((labels[k], v) for k, v in lab.items())):
                    dest[a:a + len(src)] = src.numpy()
                bar.update(len(f))
        device = self.device if self.preload == "gpu" else "cpu"
        self._features = torch.from_numpy(feats).to(device)
        self._labels = {k: torch.from_numpy(v).to(device) for k, v in labels.items()}

    def _from_memory(self, rows: np.ndarray):
        local = np.asarray(rows, dtype=np.int64) - self.start
        if local.size and np.all(np.diff(local) == 1):
            index = slice(int(local[0]), int(local[-1]) + 1)  # a view, no copy
        elif self.preload == "gpu":
            # pinned + non_blocking: a copy from pageable memory would wait for the queued GPU work
            index = torch.from_numpy(local).pin_memory().to(self.device, non_blocking=True)
        else:
            index = torch.from_numpy(local)
        return self._features[index], {k: v[index] for k, v in self._labels.items()}

    def to_batch(self, feats: torch.Tensor, labels: dict, rows, as_stored: bool = False) -> Batch:
        """Tensors on the device: features float32 (``as_stored``: as the file stores them), labels float32."""
        feats = feats.to(self.device, non_blocking=True)
        if not as_stored:
            feats = feats.to(torch.float32)
        return Batch(feats, {k: v.to(self.device, non_blocking=True).to(torch.float32) for k, v in labels.items()},
                     np.asarray(rows))

    def batches(self, windows: Iterable[Window], as_stored: bool = False) -> Iterator[Batch]:
        """The batches of each window (a list of row arrays), in order."""
        if self.preload != "none":
            for window in windows:
                for rows in window:
                    yield self.to_batch(*self._from_memory(rows), rows, as_stored)
            return
        for window, feats, labels in self.read_windows(windows):
            pos = 0
            for rows in window:
                b = len(rows)
                yield self.to_batch(feats[pos:pos + b], {k: v[pos:pos + b] for k, v in labels.items()}, rows,
                                    as_stored)
                pos += b

    def iter_batches(self, batch_size: int, progress: bool = False, desc: str = "") -> Iterator[Batch]:
        """All records in order, in batches, as stored (evaluation: the model casts a float16 batch
        itself, slice by slice on the CPU, so no float32 copy of the whole batch is made)."""
        from tqdm import tqdm

        rows, per_window = np.arange(self.start, self.stop), max(1, self.chunk_records // batch_size)
        batches = [rows[i:i + batch_size] for i in range(0, rows.size, batch_size)]
        windows = [batches[i:i + per_window] for i in range(0, len(batches), per_window)]
        with tqdm(total=len(self), desc=desc or f"evaluating {self.name}", unit="img", disable=not progress,
                  leave=False) as bar:
            for batch in self.batches(windows, as_stored=True):
                bar.update(len(batch.rows))
                yield batch


class BatchPlan:
    """Which records form training batch ``b`` of epoch ``e`` (no I/O): ``start..stop-1`` in order, or
    blocks of ``block`` records permuted and mixed within windows of ``buffer`` records (``shuffle``)."""

    def __init__(self, start: int, stop: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                 block: int = 64, buffer: int = 4096):
        if stop <= start:
            raise DataError(f"the training range is empty (records {start}..{stop}); the file has too "
                            "few records for the validation split — check data.n_validation")
        self.start, self.stop, self.batch_size = int(start), int(stop), int(batch_size)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.block = max(1, int(block))
        self.buffer = max(self.block, int(buffer))
        self.batches_per_epoch = -(-(self.stop - self.start) // self.batch_size)
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = np.arange(self.start, self.stop, dtype=np.int64)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(-(-order.size // self.block))
            order = np.concatenate([order[i * self.block:(i + 1) * self.block] for i in perm])
            for a in range(0, order.size, self.buffer):
                order[a:a + self.buffer] = rng.permutation(order[a:a + self.buffer])
        self._cache = (epoch, order)
        return order

    def batch_rows(self, epoch: int, batch: int) -> np.ndarray:
        order = self.epoch_order(epoch)
        return order[batch * self.batch_size:(batch + 1) * self.batch_size]


class TrainStream:
    """Endless training batches with a resumable ``position``, ``{"epoch": e, "batch": b}`` of the
    next batch ``next()`` returns."""

    def __init__(self, reader: RangeReader, plan: BatchPlan, position: Mapping | None = None,
                 shard: tuple[int, int] = (0, 1)):
        self.reader, self.plan = reader, plan
        self.epoch = int((position or {}).get("epoch", 0))
        self.batch = int((position or {}).get("batch", 0))
        self.rank, self.world = int(shard[0]), int(shard[1])
        if not 0 <= self.rank < self.world:
            raise ConfigError(f"shard rank {self.rank} is outside world size {self.world}")
        self._iter: Iterator[Batch] | None = None

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def _windows(self, epoch: int, batch: int) -> Iterator[Window]:
        per_window = max(1, self.reader.chunk_records // self.plan.batch_size)
        while True:
            while batch < self.plan.batches_per_epoch:
                stop = min(self.plan.batches_per_epoch, batch + per_window)
                rows = [self.plan.batch_rows(epoch, b) for b in range(batch, stop)]
                # DDP: this process's slice of every global batch
                yield rows if self.world == 1 else [np.array_split(r, self.world)[self.rank] for r in rows]
                batch = stop
            epoch, batch = epoch + 1, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            self._iter = self.reader.batches(self._windows(self.epoch, self.batch))
        out = next(self._iter)
        self.batch += 1
        if self.batch >= self.plan.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()
            self._iter = None


def open_split(paths, what: str) -> FeatureSplit:
    """Open feature file(s) of one split; ``DataError`` if there are none or no records."""
    if not paths:
        raise ConfigError(f"no feature file given for the {what} split")
    split = open_features(paths)
    if len(split) == 0:
        split.close()
        raise DataError(f"{split.paths[0]}: the {what} split has no records")
    return split
