"""Records read by worker processes (lesa.datasets.read_workers): the same windows as the reading
thread in every mode (sequential, shuffled, sharded, resumed, a slow consumer, evaluation, preload),
errors from a worker, the shared-memory budget, and no process left behind."""
from __future__ import annotations

import itertools
import multiprocessing
import time

import numpy as np
import pytest
import torch

from lesa.datasets import read_workers as rw
from lesa.datasets.h5 import open_features
from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream, _thread_windows
from lesa.errors import ConfigError, DataError
from test_stream import write_file

pytestmark = pytest.mark.skipif(not rw.can_fork(), reason="reader processes need the fork start method")

SPEC = {"y": ("labels_81", None), "seen": ("labels_1k", np.array([0, 3, 5]))}


@pytest.fixture(params=["float32", "float16"])
def split(tmp_path, request):
    s = open_features(write_file(tmp_path / "train.h5", 230, dtype=request.param))
    yield s
    s.close()


def read_all(reader, make_windows, workers, hold_s=0.0):
    """Every window as (rows, features copy, labels copy); ``hold_s``: the consumer keeps each window
    that long before taking the next (the workers meanwhile fill their other buffers)."""
    source = (rw.worker_windows(reader, make_windows, workers, pin=False) if workers
              else _thread_windows(reader, make_windows(), pin=False))
    out = []
    for window, feats, labels in source:
        if hold_s:
            time.sleep(hold_s)
        out.append((np.concatenate(window).tolist(), _copy(feats), {k: _copy(v) for k, v in labels.items()}))
    return out


def _copy(array):
    return array.clone().numpy() if torch.is_tensor(array) else np.array(array, copy=True)


def assert_same(got, ref):
    assert len(got) == len(ref)
    for (rows, feats, labels), (rows_ref, feats_ref, labels_ref) in zip(got, ref):
        assert rows == rows_ref
        assert feats.dtype == feats_ref.dtype and np.array_equal(feats, feats_ref)
        assert labels.keys() == labels_ref.keys() and all(np.array_equal(labels[k], labels_ref[k]) for k in labels)


def stream_windows(reader, plan, position=None, shard=(0, 1), limit=40):
    """The first ``limit`` windows a TrainStream would read."""
    stream = TrainStream(reader, plan, position=position, shard=shard)
    return lambda: itertools.islice(stream._windows(stream.epoch, stream.batch), limit)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers", [1, 3])
def test_windows_equal_the_threads_sequential_shuffled_sharded_and_resumed(split, workers):
    # chunk_mb=1: windows of 1-5 records, so 40 windows run through several epochs
    reader = RangeReader(split, SPEC, chunk_mb=1)
    for plan, shard, position in [(BatchPlan(30, 230, 64), (0, 1), None),
                                  (BatchPlan(0, 230, 32, shuffle=True, seed=3, block=8, buffer=64), (0, 1), None),
                                  (BatchPlan(0, 230, 30, shuffle=True, seed=1, block=8, buffer=64), (1, 3), None),
                                  (BatchPlan(0, 230, 16, shuffle=True, seed=5, block=8, buffer=64), (0, 1),
                                   {"epoch": 2, "batch": 7})]:
        make = stream_windows(reader, plan, position, shard)
        assert_same(read_all(reader, make, workers), read_all(reader, make, 0))


@pytest.mark.parametrize("slots", [1, rw.SLOTS_PER_WORKER])
def test_a_slow_consumer_never_sees_its_window_overwritten(split, slots, monkeypatch):
    # one buffer per worker: each window must wait until the consumer has released the one before
    monkeypatch.setattr(rw, "SLOTS_PER_WORKER", slots)  # (the forked workers inherit it)
    reader = RangeReader(split, SPEC, chunk_mb=1)
    make = stream_windows(reader, BatchPlan(0, 230, 8), limit=12)
    assert_same(read_all(reader, make, 2, hold_s=0.15), read_all(reader, make, 0))


def test_evaluation_batches_and_preload_read_by_workers(split):
    ref = list(RangeReader(split, SPEC, chunk_mb=1).iter_batches(40))
    loaded = RangeReader(split, SPEC, chunk_mb=1, preload="ram", progress=False, read_workers=2)
    assert loaded._features.dtype == split.feature_dtype  # stored as in the file
    got = list(loaded.iter_batches(40))
    assert [len(b.rows) for b in got] == [40] * 5 + [30]
    for x, y in zip(got, ref):
        assert x.rows.tolist() == y.rows.tolist() and torch.equal(x.features, y.features)
        assert all(torch.equal(x.labels[k], y.labels[k]) for k in x.labels)


def test_a_cpu_runs_batches_come_from_the_thread(split):
    before = set(multiprocessing.active_children())
    stream = TrainStream(RangeReader(split, SPEC, chunk_mb=1, read_workers=2), BatchPlan(0, 230, 16))
    next(stream)
    assert set(multiprocessing.active_children()) - before == set()
    stream.close()


def test_a_damaged_record_read_by_a_worker_is_a_data_error(tmp_path):
    path = write_file(tmp_path / "d.h5", 60)
    with open_features(path) as s:
        info = s.files[0].features.id.get_chunk_info_by_coord((45, 0, 0))
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 1000] ^= 0xFF  # one flipped byte in record 45: its checksum fails
    path.write_bytes(bytes(data))
    split = open_features(path)
    reader = RangeReader(split, SPEC, chunk_mb=1)
    windows = [[np.arange(a, a + 10)] for a in range(0, 60, 10)]
    rows = []
    with pytest.raises(DataError, match=r"^\S*d\.h5: cannot read rows 40\.\.49 .*damaged"):
        for window, _, _ in rw.worker_windows(reader, lambda: iter(windows), 2, pin=False):
            rows += window[0].tolist()
    assert rows == list(range(40))  # every window before the damaged one came through, in order
    with pytest.raises(DataError, match=r"cannot read rows 44\.\.45 "):  # a preload (windows of 2 records), too
        RangeReader(split, SPEC, chunk_mb=1, preload="ram", progress=False, read_workers=2)
    split.close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_closing_early_stops_the_workers(split):
    before = set(multiprocessing.active_children())
    reader = RangeReader(split, SPEC, chunk_mb=1)
    windows = rw.worker_windows(reader, stream_windows(reader, BatchPlan(0, 230, 16), limit=10**6), 3, pin=False)
    next(windows)
    assert len(set(multiprocessing.active_children()) - before) == 3
    windows.close()
    assert set(multiprocessing.active_children()) - before == set()


def test_read_workers_values_and_the_shared_memory_budget(split, monkeypatch):
    with pytest.raises(ConfigError, match="read_workers = -2"):
        RangeReader(split, SPEC, read_workers=-2)
    monkeypatch.setattr(rw.os, "sched_getaffinity", lambda pid: set(range(2)))
    assert RangeReader(split, SPEC).read_workers == 0  # the default (auto) on 2 cores: the reading thread
    monkeypatch.setattr(rw.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert RangeReader(split, SPEC).read_workers == 4  # ... and on 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 8 cores per process: 4 workers
    auto = RangeReader(split, SPEC, chunk_mb=1, read_workers=-1)
    assert auto.read_workers == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 2 cores per process: the thread
    assert RangeReader(split, SPEC, read_workers=-1).read_workers == 0
    window = 5 * auto.record_bytes
    monkeypatch.setattr(rw, "shared_memory_free", lambda: 4 * rw.SLOTS_PER_WORKER * window)
    assert auto.workers_for(5) == 2  # auto: as many as half of /dev/shm holds
    monkeypatch.setattr(rw, "shared_memory_free", lambda: 2 * rw.SLOTS_PER_WORKER * window - 1)
    assert auto.workers_for(5) == 0  # ... down to the reading thread
    loaded = RangeReader(split, SPEC, chunk_mb=1, preload="ram", progress=False, read_workers=-1)
    assert loaded._features.shape[0] == 230  # which still reads everything
    explicit = RangeReader(split, SPEC, chunk_mb=1, read_workers=2)
    monkeypatch.setattr(rw, "shared_memory_free", lambda: 2 * rw.SLOTS_PER_WORKER * window - 1)
    with pytest.raises(ConfigError, match=r"2 reader processes need about .* MiB of shared memory.*shm-size"):
        explicit.workers_for(5)
    with pytest.raises(ConfigError, match="reader processes need"):  # a preload finds out before reading
        RangeReader(split, SPEC, chunk_mb=1, preload="ram", progress=False, read_workers=200)
    monkeypatch.setattr(rw, "can_fork", lambda: False)
    assert RangeReader(split, SPEC, read_workers=-1).read_workers == 0
    with pytest.raises(ConfigError, match="fork"):
        RangeReader(split, SPEC, read_workers=2)


def test_workers_out_of_shared_memory_is_a_clear_error(split, monkeypatch):
    def full(n):  # what torch raises in a worker when /dev/shm is full
        raise RuntimeError("unable to write to file </torch_7_1234_0>: No space left on device (28)")

    monkeypatch.setattr(rw, "shared_bytes", full)  # the forked workers inherit it
    with pytest.raises(DataError, match=r"train\.h5: the reading workers ran out of shared memory.*read_workers"):
        RangeReader(split, SPEC, chunk_mb=1, preload="ram", progress=False, read_workers=1)


KILLED_PARENT = """
import itertools, os, signal, sys, time
import multiprocessing
import numpy as np
from lesa.datasets import read_workers as rw
from lesa.datasets.h5 import open_features
from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream
rw.SLOTS_PER_WORKER = int(sys.argv[2])  # 1: the workers wait for the consumer inside the dataset
split = open_features(sys.argv[1])
reader = RangeReader(split, {"y": ("labels_81", None)}, chunk_mb=1)
stream = TrainStream(reader, BatchPlan(0, len(split), 4))
windows = rw.worker_windows(reader, lambda: stream._windows(0, 0), 2, pin=False)
next(windows)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(0.5)  # the workers fill their buffers and wait for the consumer
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("slots", [1, rw.SLOTS_PER_WORKER])
def test_reader_processes_exit_when_their_parent_is_killed(tmp_path, slots):
    import os
    import subprocess
    import sys

    path = write_file(tmp_path / "f.h5", 60)
    out = subprocess.run([sys.executable, "-c", KILLED_PARENT, str(path), str(slots)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -9, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 20
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    assert not alive, f"reader processes {alive} outlived their killed parent"
