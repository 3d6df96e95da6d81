"""Hardening: kill -9 during the TFRecord conversion, then resume; interrupted checkpoint writes.

What must hold after every kill:
- no checkpoint (``last.pt``, ``model_ES.pt``, ``model.pt``) is half-written under its final name: each
  one present loads and validates (``load_checkpoint``); no converted file is under ``OUT.h5`` unless
  it is complete;
- resuming (``--resume`` when a resume point exists, a fresh start otherwise) ends with files equal to
  an uninterrupted run's: the same weights bit for bit, the same log and test reports; the same
  converted HDF5 contents.

(kill -9 of `lesa train` is covered by test_train_crash.py, of `lesa extract` by test_extract_crash.py,
of the downloader by test_download.py.)
The number of kills is counted (``FAULTS``) and printed at the end of the module (``pytest -s``).
"""
from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lesa.checkpoint import load_checkpoint
from lesa.datasets.h5 import open_features, partial_path
from lesa.experiment import dumps_config
from lesa.synth import SynthSpec, config_for, write_synthetic
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


def run_killed(cmd, kill_after: float, cwd=None) -> bool:
    """Start ``cmd``; SIGKILL it ``kill_after`` seconds later. True if it was killed (still running)."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return False


def run_ok(cmd, cwd=None) -> None:
    out = subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


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
CONVERT_SCRIPT = """
import sys
from lesa.datasets.tfrecord_source import convert_tfrecords
convert_tfrecords([sys.argv[1]], sys.argv[2], dataset="openimages", batch_size=3, resume=sys.argv[3] == "1",
                  progress=False)
"""


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
    ref = tmp_path / "ref.h5"
    t0 = time.monotonic()
    run_ok([sys.executable, "-c", CONVERT_SCRIPT, str(tfrecord_input), str(ref), "0"])
    duration = time.monotonic() - t0

    out = tmp_path / "out.h5"
    rng = random.Random(9)
    kills = 0
    for attempt in range(4):
        cmd = [sys.executable, "-c", CONVERT_SCRIPT, str(tfrecord_input), str(out), "1" if attempt else "0"]
        if run_killed(cmd, kill_after=rng.uniform(0.4, 0.95) * duration):
            kills += 1
            FAULTS["kill -9 during convert-tfrecord"] += 1
            if out.exists():  # killed after the rename: the file under the final name is complete
                _same_h5(out, ref)
                break
            # never a complete-looking partial file under the final name
            assert not out.exists()
        else:
            break
    if not out.exists():
        run_ok([sys.executable, "-c", CONVERT_SCRIPT, str(tfrecord_input), str(out), "1"])
    assert kills >= 1, "no kill landed: the conversion finished first"
    assert not partial_path(out).exists()
    _same_h5(out, ref)


@pytest.mark.slow
def test_kill9_lesa_convert_tfrecord_cli_then_resume(tfrecord_input, tmp_path):
    """The same through the `lesa convert-tfrecord` command (its default batch of 256 records)."""
    ref = tmp_path / "ref.h5"
    cli = [sys.executable, "-m", "lesa", "convert-tfrecord", "--dataset", "openimages", "--no-progress"]
    t0 = time.monotonic()
    run_ok([*cli, str(tfrecord_input), str(ref)])
    duration = time.monotonic() - t0
    out = tmp_path / "out.h5"
    killed = run_killed([*cli, str(tfrecord_input), str(out)], kill_after=0.7 * duration)
    FAULTS["kill -9 during convert-tfrecord"] += int(killed)
    if not out.exists():
        run_ok([*cli, "--resume", str(tfrecord_input), str(out)])
    _same_h5(out, ref)
