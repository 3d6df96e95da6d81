"""Feature records read by worker processes, for a GPU's training/evaluation batches and for
loading a preload (``data.read_workers``: -1 auto, 0 the reading thread, N processes).

An HDF5 read, with the Fletcher-32 check of every chunk it decodes, runs under h5py's global lock:
reading *threads* cannot read in parallel (one reads about 4,000 float32 / 7,300 float16 records/s
on this project's 2-core VM). Worker processes each open the feature files themselves and read
whole windows (the batches read in one go) into shared buffers that they reuse (fresh shared memory
would cost a page fault per 4 kB on both sides); window ``i`` is read by worker ``i % workers`` and
the windows come back in order, so the batches are exactly those of the reading thread
(``lesa.datasets.stream._thread_windows``). Two processes read 1.9-2.3x the thread's float32
records/s on 2 cores; ``auto`` starts them only where each training process has 4 cores or more,
since the training loop needs one.

Workers are forked (Linux): they start at once and inherit the window plan. Where fork is not
available, or shared memory (``/dev/shm``, small in containers) cannot hold their buffers,
``auto`` falls back to the reading thread and an explicit count is a ``ConfigError``.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from lesa.errors import ConfigError, DataError, LesaError

WINDOWS_PER_WORKER = 2  # windows each worker keeps ready (DataLoader's prefetch_factor)
SLOTS_PER_WORKER = WINDOWS_PER_WORKER + 1  # its shared buffers: those ready + the one in use
AUTO_MAX_WORKERS = 4  # enough for a fast local disk (about 17,000 float32 records/s)
SHM_DIR = "/dev/shm"

Window = Sequence[np.ndarray]  # the row indices of each batch of a window
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def shared_bytes(n: int) -> torch.Tensor:
    """A uint8 tensor of ``n`` bytes, in shared memory when called in a DataLoader worker (as torch's
    own collate does): it then reaches the main process without the copy the queue would make."""
    if torch.utils.data.get_worker_info() is not None and hasattr(torch.UntypedStorage, "_new_shared"):
        return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n))
    return torch.empty(n, dtype=torch.uint8)


def shared_memory_error(exc: RuntimeError, what: str, fix: str) -> DataError | None:
    """The ``DataError`` for workers that ran out of shared memory (``exc`` from a DataLoader), or
    None when ``exc`` is something else. ``what`` names the job, ``fix`` the way to use less."""
    text = str(exc)
    if "No space left on device" not in text and "Bus error" not in text:
        return None
    detail = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    return DataError(f"{what}: the reading workers ran out of shared memory ({SHM_DIR}) ({detail[:160]}); "
                     f"give the machine more (docker run --shm-size=8g) or {fix}")


def shared_memory_free() -> int:
    """Bytes free in /dev/shm (0 where there is none)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def auto_workers() -> int:
    """Reader processes for ``read_workers = -1``: up to 4, leaving a core to the training loop,
    where each process of a torchrun node has at least 4 cores; otherwise 0 (the reading thread:
    on 2 cores the processes would take the training loop's core)."""
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= per_node
    return min(AUTO_MAX_WORKERS, cores - 1) if cores >= 4 else 0


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def check_read_workers(requested: int, where: str) -> int:
    """Validate ``data.read_workers`` (-1 auto, 0 the reading thread, N processes); -1 is resolved.
    Returns 0 where processes cannot be forked (a warning-free fallback for auto only)."""
    requested = int(requested)
    if requested < -1:
        raise ConfigError(f"{where}: data.read_workers = {requested}; use -1 (auto), 0 (a reading thread "
                          "in this process) or the number of reader processes")
    if requested == -1:
        return auto_workers() if can_fork() else 0
    if requested > 0 and not can_fork():
        raise ConfigError(f"{where}: data.read_workers = {requested} needs the 'fork' start method, which "
                          "this platform lacks; use data.read_workers = 0")
    return requested


def workers_for(requested: int, auto: bool, window_bytes: int, where: str) -> int:
    """How many of ``requested`` workers can run with windows of ``window_bytes``: each has
    SLOTS_PER_WORKER window buffers in shared memory. ``auto`` shrinks the count (to 0: the reading
    thread) to what half of the free /dev/shm holds; an explicit count that does not fit in it all is
    a ConfigError before any worker starts."""
    if requested <= 0:
        return 0
    free = shared_memory_free() // (2 if auto else 1)
    fits = free // max(1, window_bytes) // SLOTS_PER_WORKER
    if fits >= requested:
        return requested
    if auto:
        return max(0, int(fits))
    need = requested * SLOTS_PER_WORKER * window_bytes
    raise ConfigError(f"{where}: {requested} reader processes need about {need / 2**20:.0f} MiB of shared "
                      f"memory ({SHM_DIR}) but {shared_memory_free() / 2**20:.0f} MiB are free; give the "
                      "machine more (docker run --shm-size=8g), lower data.read_workers or data.chunk_mb, "
                      "or set data.read_workers = 0 (one reading thread)")


class _WindowReads(torch.utils.data.IterableDataset):
    """In worker ``w`` of ``n``: reads windows ``w, w + n, w + 2n, ...`` into its SLOTS_PER_WORKER
    shared buffers in turn, and yields ``(features (a view of the buffer), {key: labels})``.

    A buffer is refilled only after the consumer has released the window it held before
    (``released[w]`` counts the windows of worker ``w`` it is done with), so the consumer's view is
    never overwritten while in use, whatever the DataLoader keeps in flight. Reusing the buffers
    saves the page faults of fresh shared memory (most of the hand-over's cost)."""

    def __init__(self, reader, make_windows: Callable[[], Iterator[Window]], released, closed):
        self.reader, self.make_windows, self.released, self.closed = reader, make_windows, released, closed

    def _wait_for_slot(self, worker: int, count: int) -> bool:
        """Wait until window ``count - SLOTS_PER_WORKER`` of this worker is released; False when the
        consumer has gone away (closed, or the parent process died)."""
        parent = os.getppid()
        while True:
            with self.released.get_lock():
                if self.released[worker] > count - SLOTS_PER_WORKER:
                    return True
            if self.closed.value or os.getppid() != parent:
                return False
            time.sleep(0.0005)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        try:
            reader = self.reader.reopened()  # own h5py handles: those inherited from the parent are not used
        except LesaError as exc:
            yield exc
            return
        slots: list = [None] * SLOTS_PER_WORKER
        count = 0  # windows this worker has read
        try:
            for i, window in enumerate(self.make_windows()):
                if i % info.num_workers != info.id:
                    continue
                if not self._wait_for_slot(info.id, count):
                    return
                rows = np.concatenate(list(window)) if len(window) else np.empty(0, np.int64)
                slot, need = count % SLOTS_PER_WORKER, rows.size * reader.record_bytes
                if slots[slot] is None or slots[slot].numel() < need:
                    slots[slot] = shared_bytes(need)
                buffer = slots[slot][:need]
                feats, labels = reader.read(rows, alloc=lambda shape, dtype: buffer.numpy().view(dtype).reshape(shape))
                # the shared storage itself (a tensor made by from_numpy would be copied to new shared memory)
                feats = buffer.view(TORCH_DTYPES[feats.dtype]).view(feats.shape) \
                    if feats.ctypes.data == buffer.data_ptr() else torch.from_numpy(feats)
                count += 1
                yield feats, {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in labels.items()}
        except LesaError as exc:  # handed over as it is: the consumer raises it (DataLoader would
            yield exc             # wrap it in the worker's traceback)
        finally:
            reader.split.close()


def worker_windows(reader, make_windows: Callable[[], Iterator[Window]], workers: int, pin: bool = True
                   ) -> Iterator[tuple[Window, torch.Tensor, dict[str, torch.Tensor]]]:
    """``(window, features as stored, {key: labels})`` for each window of ``make_windows()``, read by
    ``workers`` forked processes (page-locked for a CUDA reader when ``pin``). The features are
    valid until the next window is asked for: copy what you keep."""
    context = multiprocessing.get_context("fork")
    released, closed = context.Array("q", workers), context.Value("b", 0)
    loader = torch.utils.data.DataLoader(
        _WindowReads(reader, make_windows, released, closed), batch_size=None, num_workers=workers,
        collate_fn=_as_is, pin_memory=pin and reader.device.type == "cuda", prefetch_factor=WINDOWS_PER_WORKER,
        multiprocessing_context=context,
    )
    where = str(reader.split.paths[0])
    items = iter(loader)
    try:
        for i, window in enumerate(make_windows()):
            try:
                item = next(items)
            except StopIteration:
                return
            except RuntimeError as exc:
                err = shared_memory_error(exc, where, "lower data.read_workers or data.chunk_mb "
                                                      "(or set data.read_workers = 0)")
                if err is None:
                    raise
                raise err from exc
            if isinstance(item, LesaError):
                raise item
            feats, labels = item
            yield window, feats, labels
            with released.get_lock():  # the consumer is done with it: the worker may refill its buffer
                released[i % workers] += 1
    finally:
        closed.value = 1
        del items  # stops the workers


def _as_is(item):
    return item
