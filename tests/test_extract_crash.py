"""kill -9 in the middle of `lesa extract`, then --resume: the final file equals an uninterrupted run's."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from lesa.cli import main
from lesa.datasets.h5 import partial_path
from test_extract_datasets import assert_same_file, build_nus_tree

ARGS = ["--split", "Train", "--backbone", "random", "--device", "cpu", "--workers", "0",
        "--batch-size", "1", "--no-progress"]


@pytest.mark.slow
def test_kill9_then_resume(tmp_path, shared_data):
    root = tmp_path / "nus"
    build_nus_tree(root, shared_data)
    ref = tmp_path / "ref.h5"
    assert main(["extract", "nus-wide", "--root", str(root), "--out", str(ref), *ARGS]) == 0

    out = tmp_path / "out.h5"
    cmd = [sys.executable, "-m", "lesa", "extract", "nus-wide", "--root", str(root), "--out", str(out), *ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not partial_path(out).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.5, 2.5))  # somewhere among the 6 images
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        assert not out.exists(), "a killed run must not leave a file under the final name"
    assert main(["extract", "nus-wide", "--root", str(root), "--out", str(out), "--resume", *ARGS]) == 0
    assert_same_file(out, ref)
    assert (tmp_path / "out.h5.failed.tsv").read_text().count("\ttruncated\t") == 1


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["extract", "nus-wide", "--root", str(tmp_path), "--split", "Train", "--out",
                 str(tmp_path / "x.h5"), "--backbone", "random", "--device", "cpu"]) == 1
    assert "TagList1k.txt not found" in capsys.readouterr().err
    assert main(["merge-shards", str(tmp_path / "none*.h5"), "--out", str(tmp_path / "m.h5")]) == 1
    assert "no feature files match" in capsys.readouterr().err
