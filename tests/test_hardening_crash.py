"""Hardening: kill -9 during the TFRecord conversion, then resume; interrupted checkpoint writes.

What must hold after every kill:
- no checkpoint (``last.pt``, ``model_ES.pt``, ``model.pt``) is half-written under its final name: each
  one present loads and validates (``load_checkpoint``); no converted file is under ``OUT.h5`` unless
  it is complete;
- resuming ends with the same converted HDF5 contents as an uninterrupted run.
The kills land at counted points (the n-th HDF5 flush of the child process), never after a delay.

(kill -9 of `lesa train` is covered by test_train_crash.py, of `lesa extract` by test_extract_crash.py,
of the downloader by test_download.py.)
The number of kills is counted (``FAULTS``) and printed at the end of the module (``pytest -s``).
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lesa.checkpoint import load_checkpoint
from lesa.datasets.h5 import open_features, partial_path
from tf_writers import encode_example, write_tfrecords

FAULTS: collections.Counter = collections.Counter()
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\n[hardening] faults injected: {sum(FAULTS.values())} "
          + ", ".join(f"{k} {v}" for k, v in sorted(FAULTS.items())))
    report = os.environ.get("LESA_RELIABILITY_REPORT")
    if report:
        import json

        with open(report, "a") as f:
            f.write(json.dumps({"module": "crash", "counts": dict(FAULTS)}) + "\n")


def test_checkpoint_write_killed_midway_keeps_the_previous_one(tmp_path):
    """A kill inside ``torch.save`` (simulated: the writer dies after some bytes) leaves the previous
    checkpoint under the final name intact and loadable."""
    from lesa.checkpoint import save_checkpoint
    from lesa.files import atomic_write as atomic_write_bytes
    from lesa.model import LESA

    model = LESA(np.random.default_rng(0).random((4, 300)), np.random.default_rng(1).random((2, 300)))
    path = save_checkpoint(tmp_path / "last.pt", model)
    before = path.read_bytes()

    class Killed(BaseException):
        pass

    def dies(f):
        f.write(b"PK\x03\x04" + b"\x00" * 1000)
        raise Killed

    for _ in range(3):
        FAULTS["interrupted checkpoint write"] += 1
        with pytest.raises(Killed):
            atomic_write_bytes(path, dies)
        assert path.read_bytes() == before
        load_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------------
# TFRecord -> HDF5 conversion
# ---------------------------------------------------------------------------------------------------
CONVERT = """
import os, signal, sys
import h5py
n, calls = int(sys.argv[1]), [0]
real_flush = h5py.File.flush
def flush(self):  # an append flushes twice: its data, then the counter that makes it count
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_flush(self)
h5py.File.flush = flush
if sys.argv[2] == "library":
    from lesa.datasets.tfrecord_source import convert_tfrecords
    convert_tfrecords([sys.argv[3]], sys.argv[4], dataset="openimages", batch_size=3, resume=sys.argv[5] == "1",
                      progress=False)
else:
    from lesa.cli import main
    sys.exit(main(["convert-tfrecord", "--dataset", "openimages", "--no-progress", *sys.argv[3:]]))
"""


def convert(kill_at: int, *args):
    """The conversion in a child process, killed (SIGKILL) at its ``kill_at``-th HDF5 flush (0: never)."""
    return subprocess.run([sys.executable, "-c", CONVERT, str(kill_at), *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def tfrecord_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_convert")
    rng = np.random.default_rng(5)
    records = []
    for i in range(60):
        records.append(encode_example({
            "img_id": f"img{i:04d}".encode(),
            "feature": rng.random((196, 512), dtype=np.float32).tobytes(),
            "label": rng.integers(-1, 2, 12).astype(np.int32).tobytes(),
        }))
    path = root / "train_feature_2018_04_ZLIB.tfrecords"
    write_tfrecords(path, records)
    return path


def _same_h5(a: Path, b: Path) -> None:
    with open_features(a) as x, open_features(b) as y:
        assert x.img_ids == y.img_ids
        assert x.label_dims == y.label_dims
        fx, lx = x.read(np.arange(len(x)))
        fy, ly = y.read(np.arange(len(y)))
        assert np.array_equal(fx, fy)
        for name in lx:
            assert np.array_equal(lx[name], ly[name]), name
        for key in ("dataset", "split", "complete", "feature_dtype"):
            assert x.attrs[key] == y.attrs[key], key


@pytest.mark.slow
def test_kill9_during_conversion_then_resume_equals_uninterrupted(tfrecord_input, tmp_path):
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    assert convert(0, "library", str(tfrecord_input), str(ref), "0").returncode == 0
    # killed between an append's data and its counter, at a clean boundary, and mid-way again
    for attempt, kill_at in enumerate((7, 10, 25)):
        killed = convert(kill_at, "library", str(tfrecord_input), str(out), "1" if attempt else "0")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        FAULTS["kill -9 during convert-tfrecord"] += 1
        assert not out.exists()  # never a partial file under the final name
    assert convert(0, "library", str(tfrecord_input), str(out), "1").returncode == 0
    assert not partial_path(out).exists()
    _same_h5(out, ref)


@pytest.mark.slow
def test_kill9_lesa_convert_tfrecord_cli_then_resume(tfrecord_input, tmp_path):
    """The same through the `lesa convert-tfrecord` command."""
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    assert convert(0, "cli", str(tfrecord_input), str(ref)).returncode == 0
    killed = convert(3, "cli", str(tfrecord_input), str(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    FAULTS["kill -9 during convert-tfrecord"] += 1
    done = convert(0, "cli", "--resume", str(tfrecord_input), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    _same_h5(out, ref)
