"""Streaming training and evaluation batches from HDF5 feature files (layout: ``lesa.datasets.h5``).

Reading behaviour
-----------------
- Default order is the original's: sequential and repeating. The training range is cut into
  batches in file order; the last batch of an epoch holds the remainder (TF1: ``dataset.batch(32)
  .repeat()`` batches each pass separately), then the next epoch starts again at the first record.
- ``shuffle=True``: each epoch the range is cut into blocks of contiguous records, the blocks are
  permuted, and records are mixed within windows of ``shuffle_buffer`` records; the order is a pure
  function of (seed, epoch), so a resumed run replays it exactly.
- Streaming (``preload="none"``) reads contiguous runs of records, about ``chunk_mb`` MB at a time
  (a window), ahead of the consumer: memory is bounded by a few windows whatever the file size; the
  file is never read whole. float16 files are read as float16 and converted to float32 per training
  batch; evaluation batches stay float16 (the model casts them slice by slice).
  One background thread of this process reads, one window ahead; with ``read_workers`` > 0, batches
  for a GPU and preloads are read by that many processes instead (``lesa.datasets.read_workers``:
  HDF5 reads hold h5py's lock, so threads cannot read in parallel). Both give the same batches.
- ``preload="ram"`` reads the range once into memory (in chunks, with a progress bar); ``"gpu"`` puts
  it in GPU memory; ``"auto"`` picks the GPU, then RAM, when the data fits (GPU: 80 % of free
  memory; RAM: 50 % of available memory), else streams. An explicit preload that cannot fit is a
  ``ConfigError`` before any work.
- ``shard=(rank, world_size)`` gives each process its slice of every global batch (DDP).

The position of the next batch, ``(epoch, batch)``, is saved in checkpoints so that training
resumes on exactly the batch it would have read next.
"""
from __future__ import annotations

import atexit
import copy
import os
import pickle
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from lesa.datasets import read_workers as rw
from lesa.datasets.h5 import FeatureSplit, open_features
from lesa.errors import ConfigError, DataError
from lesa.shapes import FEATURE_SHAPE

RECORD_VALUES = FEATURE_SHAPE[0] * FEATURE_SHAPE[1]

# A label spec: output key -> (label array name in the file, column indices or None = all columns)
LabelSpec = Mapping[str, tuple[str, "np.ndarray | None"]]


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 33


def resolve_preload(preload: str, n_bytes: int, device: torch.device, where: str) -> str:
    """Turn ``auto`` into gpu/ram/none, and refuse a preload that cannot fit (fail fast)."""
    if preload not in ("none", "ram", "gpu", "auto"):
        raise ConfigError(f"{where}: preload must be none, ram, gpu or auto; got {preload!r}")
    gpu_free = 0
    if device.type == "cuda" and torch.cuda.is_available():
        gpu_free, _ = torch.cuda.mem_get_info(device)
    # under torchrun every process of a node loads its own copy into the node's RAM
    ram = available_ram_bytes() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if preload == "auto":
        if device.type == "cuda" and n_bytes < 0.8 * gpu_free:
            return "gpu"
        if n_bytes < 0.5 * ram:
            return "ram"
        return "none"
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


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] of the maximal runs of consecutive integers in a sorted array."""
    if sorted_rows.size == 0:
        return []
    breaks = np.nonzero(np.diff(sorted_rows) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_rows.size]])
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, stops)]


class RangeReader:
    """Reads records of ``split`` (features as stored + the labels of ``label_spec``).

    With ``preload`` the records ``[start, stop)`` live in memory (RAM numpy arrays or GPU tensors)
    and reads are slices of them; otherwise every read goes to the file in contiguous runs.
    ``read_workers``: processes that read the file for a GPU's batches and for loading a preload
    (-1: auto, 0: a thread of this process; see ``lesa.datasets.read_workers``).
    """

    def __init__(self, split: FeatureSplit, label_spec: LabelSpec, start: int = 0, stop: int | None = None,
                 preload: str = "none", device: str | torch.device = "cpu", chunk_mb: int = 64,
                 progress: bool = True, name: str = "data", read_workers: int = -1):
        self.split = split
        self.label_spec = dict(label_spec)
        self.start = int(start)
        self.stop = len(split) if stop is None else int(stop)
        self.device = torch.device(device)
        self.name = name
        where = f"{split.paths[0]}"
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
        self.dtype = np.dtype(split.feature_dtype)
        self.record_bytes = RECORD_VALUES * self.dtype.itemsize
        self.chunk_records = max(1, int(chunk_mb * 2**20) // self.record_bytes)
        n_bytes = (self.stop - self.start) * self.record_bytes
        self.preload = resolve_preload(preload, n_bytes, self.device, where)
        self.auto_workers = int(read_workers) == -1
        self.read_workers = rw.check_read_workers(read_workers, where)
        if self.device.type == "cuda" or self.preload != "none":  # processes will read: fail fast
            self.workers_for(self.chunk_records)  # (an explicit count that /dev/shm cannot hold)
        self._features = None
        self._labels: dict[str, np.ndarray | torch.Tensor] = {}
        if self.preload != "none":
            self._load_all(progress)

    def __len__(self) -> int:
        return self.stop - self.start

    def reopened(self) -> "RangeReader":
        """This reader on fresh handles of its files (``FeatureSplit`` pickles by path): for a reader
        process, which must not use the handles it inherited."""
        other = copy.copy(self)
        other.split = pickle.loads(pickle.dumps(self.split))
        return other

    def workers_for(self, window_records: int) -> int:
        """Reader processes for windows of ``window_records`` records (0: the reading thread)."""
        return rw.workers_for(self.read_workers, self.auto_workers, window_records * self.record_bytes,
                              str(self.split.paths[0]))

    def _read_file(self, rows: np.ndarray, alloc=np.empty) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows (absolute, sorted, unique) straight from the file, contiguous runs as slices; the
        features go to ``alloc(shape, dtype)`` (e.g. shared memory)."""
        feats = alloc((rows.size, *FEATURE_SHAPE), self.dtype)
        raw = {array: np.empty((rows.size, self.split.label_dims[array]), np.int8)
               for array in {a for a, _ in self.label_spec.values()}}
        pos = 0
        for a, b in contiguous_runs(rows):
            idx = np.arange(a, b)
            try:
                self.split.read_features_into(a, feats[pos:pos + b - a])
                for array in raw:
                    raw[array][pos:pos + b - a] = self.split.read_labels(array, idx)
            except (OSError, RuntimeError, KeyError) as exc:  # h5py: damaged chunk, truncated file
                raise DataError(f"{self.split.paths[0]}: records {a}..{b - 1} cannot be read ({exc}); the "
                                "feature file is damaged — re-create it (lesa extract / convert-tfrecord)") from exc
            pos += b - a
        return feats, self._select_labels(raw)

    def _select_labels(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: (raw[array] if cols is None else raw[array][:, cols])
                for key, (array, cols) in self.label_spec.items()}

    def _load_all(self, progress: bool) -> None:
        from tqdm import tqdm

        n = len(self)
        feats = np.empty((n, *FEATURE_SHAPE), dtype=self.dtype)
        labels = None
        bar = tqdm(total=n, desc=f"loading {self.name} into {self.preload.upper()}", unit="img",
                   disable=not progress, leave=False)
        windows = [[np.arange(self.start + a, self.start + min(n, a + self.chunk_records))]
                   for a in range(0, n, self.chunk_records)]
        def into_place(rows):  # (an ``alloc`` for _read_file: the preload's own rows)
            return lambda shape, dtype: feats[rows[0] - self.start:rows[-1] + 1 - self.start]

        in_place = not self.workers_for(self.chunk_records)
        if in_place:  # read here, straight into place
            chunks = ((w, *self._read_file(w[0], alloc=into_place(w[0]))) for w in windows)
        else:  # read by processes in parallel, copied from their shared buffers
            chunks = self.read_windows(lambda: iter(windows), self.chunk_records, batches=False)
        for window, f, lab in chunks:
            a = int(window[0][0]) - self.start
            b = a + len(window[0])
            if not in_place:
                feats[a:b] = f
            if labels is None:
                labels = {k: np.empty((n, v.shape[1]), np.int8) for k, v in lab.items()}
            for k, v in lab.items():
                labels[k][a:b] = v
            bar.update(b - a)
        bar.close()
        labels = labels or {k: np.empty((0, 0), np.int8) for k in self.label_spec}
        if self.preload == "gpu":
            self._features = torch.from_numpy(feats).to(self.device)
            self._labels = {k: torch.from_numpy(v).to(self.device) for k, v in labels.items()}
        else:
            self._features = feats
            self._labels = labels

    def read(self, rows: np.ndarray, alloc=np.empty):
        """Records ``rows`` (absolute indices, any order) -> (features, {key: labels}) as stored
        (read from the file into ``alloc(shape, dtype)`` unless preloaded)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._features is not None:
            local = rows - self.start
            if self.preload == "gpu":
                # pinned + non_blocking: a plain copy from pageable memory would wait for the GPU
                # to finish the previous step (a host sync per batch)
                idx = torch.from_numpy(local).pin_memory().to(self.device, non_blocking=True)
                return self._features[idx], {k: v[idx] for k, v in self._labels.items()}
            if local.size and local[-1] - local[0] + 1 == local.size and np.all(np.diff(local) == 1):
                sl = slice(int(local[0]), int(local[-1]) + 1)  # a view, no copy
                return self._features[sl], {k: v[sl] for k, v in self._labels.items()}
            return self._features[local], {k: v[local] for k, v in self._labels.items()}
        uniq, inverse = np.unique(rows, return_inverse=True)
        feats, labels = self._read_file(uniq, alloc)
        if uniq.size == rows.size and np.all(uniq == rows):
            return feats, labels
        return feats[inverse], {k: v[inverse] for k, v in labels.items()}

    def to_batch(self, feats, labels, rows, as_stored: bool = False) -> "Batch":
        """Tensors on the device: features (B,196,512) float32 (``as_stored``: as the file stores
        them, float32 or float16), labels float32 (B, D)."""
        if not torch.is_tensor(feats):
            feats = torch.from_numpy(np.ascontiguousarray(feats))
        feats = feats.to(self.device, non_blocking=True)
        if not as_stored:
            feats = feats.to(torch.float32)
        out = {}
        for k, v in labels.items():
            if not torch.is_tensor(v):
                v = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = v.to(self.device, non_blocking=True).to(torch.float32)
        return Batch(features=feats, labels=out, rows=np.asarray(rows))

    def read_windows(self, make_windows, window_records: int, batches: bool = True
                     ) -> Iterator[tuple[Sequence[np.ndarray], np.ndarray | torch.Tensor, dict]]:
        """``(window, features as stored, {key: labels})`` for each window (a list of row arrays
        read in one go) of ``make_windows()``, in order, read ahead by reader processes or a thread.
        ``window_records``: the windows' largest size. ``batches``: they become batches (page-locked
        for a CUDA reader); otherwise they are copied into a preload.

        Reader processes serve batches for a GPU and preloads; a CPU run's batches come from the
        thread (its step is far slower than reading, and batches made from reused shared buffers
        would need one more copy each). With processes, the features are reused once the next
        window is asked for: copy what you keep."""
        workers = self.workers_for(window_records) if self.device.type == "cuda" or not batches else 0
        if workers:
            return rw.worker_windows(self, make_windows, workers, pin=batches)
        return _thread_windows(self, make_windows(), pin=batches)

    def iter_batches(self, batch_size: int, progress: bool = False, desc: str = "") -> Iterator["Batch"]:
        """All records ``[start, stop)`` in order, in batches (evaluation); reads ahead one chunk.
        Features come as stored: the model casts a float16 batch itself, straight to what it
        computes in (float32, or bfloat16 under bf16 autocast), slice by slice on the CPU, so no
        float32 copy of the whole batch is made (the same scores bit for bit)."""
        n = len(self)
        windows = []
        per_window = max(batch_size, (self.chunk_records // batch_size) * batch_size)
        for a in range(0, n, per_window):
            rows = np.arange(self.start + a, self.start + min(n, a + per_window))
            windows.append([rows[i:i + batch_size] for i in range(0, rows.size, batch_size)])
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc or f"evaluating {self.name}", unit="img", disable=not progress,
                   leave=False)
        for batch in _prefetched(self, lambda: iter(windows), per_window, as_stored=True):
            bar.update(len(batch.rows))
            yield batch
        bar.close()


@dataclass
class Batch:
    features: torch.Tensor  # (B, 196, 512) on the device: float32 (training), as stored (evaluation)
    labels: dict[str, torch.Tensor]  # key -> (B, D) float32 in {-1, 0, 1}
    rows: np.ndarray  # (B,) record indices in the file


_LIVE_PREFETCHERS: set = set()  # (stop event, thread) of prefetch threads still running


@atexit.register
def _stop_prefetchers() -> None:
    """A stream left open at exit would keep its daemon thread inside h5py while the interpreter
    tears modules down (which can crash the process): stop and join them first."""
    for stop, thread in list(_LIVE_PREFETCHERS):
        stop.set()
    for stop, thread in list(_LIVE_PREFETCHERS):
        thread.join(timeout=5)


def _pinned(array: np.ndarray) -> torch.Tensor:
    """A page-locked copy: its batches then go to the GPU without blocking (a copy from pageable
    memory may wait for the GPU to finish its queued work: a host sync per batch)."""
    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory()


def _prefetched(reader: RangeReader, make_windows, window_records: int, as_stored: bool = False
                ) -> Iterator[Batch]:
    """Yield the batches of each window of ``make_windows()`` (a window is a list of batches: arrays
    of row indices whose union is read in one go), read ahead (``RangeReader.read_windows``).
    ``as_stored``: see ``RangeReader.to_batch``."""
    if reader.preload != "none":
        for window in make_windows():
            for rows in window:
                feats, labels = reader.read(rows)
                yield reader.to_batch(feats, labels, rows, as_stored)
        return
    windows = reader.read_windows(make_windows, window_records)
    try:
        for window, feats, labels in windows:
            pos = 0
            for rows in window:
                b = len(rows)
                yield reader.to_batch(feats[pos:pos + b], {k: v[pos:pos + b] for k, v in labels.items()}, rows,
                                      as_stored)
                pos += b
    finally:
        windows.close()  # stops the reading thread or processes


def _thread_windows(reader: RangeReader, windows: Iterator, pin: bool = True):
    """``RangeReader.read_windows`` in one background thread of this process, one window ahead.
    Memory: the window being consumed + one read ahead."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    _END = object()

    def work():
        try:
            for window in windows:
                if stop.is_set():
                    return
                rows = np.concatenate(list(window)) if len(window) else np.empty(0, np.int64)
                feats, labels = reader.read(rows)
                if pin and reader.device.type == "cuda":  # page-locked here, off the training loop's thread
                    feats, labels = _pinned(feats), {k: _pinned(v) for k, v in labels.items()}
                item = (window, feats, labels)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            q.put(_END)
        except BaseException as exc:  # hand the error to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="lesa-prefetch")
    thread.start()
    _LIVE_PREFETCHERS.add((stop, thread))
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
        _LIVE_PREFETCHERS.discard((stop, thread))


class BatchPlan:
    """Which records form training batch ``b`` of epoch ``e`` (deterministic; no I/O).

    Sequential (original): records ``start..stop-1`` in order, cut into batches, last one partial.
    Shuffled: blocks of ``block`` contiguous records in a permuted order, records mixed within
    windows of ``buffer`` records; seeded by (seed, epoch).
    """

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
            n_blocks = -(-order.size // self.block)
            perm = rng.permutation(n_blocks)
            order = np.concatenate([order[i * self.block:(i + 1) * self.block] for i in perm])
            for a in range(0, order.size, self.buffer):
                order[a:a + self.buffer] = rng.permutation(order[a:a + self.buffer])
        self._cache = (epoch, order)
        return order

    def batch_rows(self, epoch: int, batch: int) -> np.ndarray:
        order = self.epoch_order(epoch)
        return order[batch * self.batch_size:(batch + 1) * self.batch_size]


class TrainStream:
    """Endless training batches (sequential repeating by default) with a resumable position.

    ``position`` = ``{"epoch": e, "batch": b}`` of the next batch ``next()`` returns.
    """

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

    def _local(self, rows: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return rows
        return np.array_split(rows, self.world)[self.rank]

    @property
    def batches_per_window(self) -> int:
        return max(1, self.reader.chunk_records // self.plan.batch_size)

    def _windows(self, epoch: int, batch: int):
        per_window = self.batches_per_window
        while True:
            while batch < self.plan.batches_per_epoch:
                stop = min(self.plan.batches_per_epoch, batch + per_window)
                yield [self._local(self.plan.batch_rows(epoch, b)) for b in range(batch, stop)]
                batch = stop
            epoch, batch = epoch + 1, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            epoch, batch = self.epoch, self.batch
            self._iter = _prefetched(self.reader, lambda: self._windows(epoch, batch),
                                     self.batches_per_window * self.plan.batch_size)
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
