"""`lesa train` killed (kill -9) or interrupted (Ctrl-C) at chosen points, then resumed: the run
ends with the files of an uninterrupted one, bit for bit.

The faults are injected at counted points, never after a random delay: the child process counts
training steps, checkpoint saves or the renames that make a write final, and kills itself at the
n-th one (SIGKILL: nothing is cleaned up; SIGINT: what Ctrl-C sends).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from lesa.checkpoint import load_checkpoint
from lesa.experiment import dumps_config
from lesa.synth import SynthSpec, config_for, write_synthetic

CHILD = """
import os, signal, sys
import lesa.files, lesa.train
where, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
calls = [0]
def counted(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    return call
if where == "step":  # before the n-th training step
    lesa.train.train_step = counted(lesa.train.train_step)
elif where == "save":  # before the n-th checkpoint is written
    lesa.train.save_checkpoint = counted(lesa.train.save_checkpoint)
elif where == "rename":  # a write complete in its temporary file, before the rename makes it final
    lesa.files.os.replace = counted(os.replace)
from lesa.cli import main
sys.exit(main(sys.argv[4:]))
"""
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    files = write_synthetic(root / "data", SynthSpec(n_train=72, n_test=24, n_tags=16, n_concepts=6, n_shared=3,
                                                     chunk=24), progress=False)
    cfg = config_for(files, "nus_wide_zero_shot", root / "unused", "crash", n_iters=16, eval_interval=6,
                     checkpoint_every=2, batch_size=8, lr=0.01, device="cpu")
    cfg.data.n_validation, cfg.data.eval_batch_size, cfg.data.chunk_mb, cfg.data.workers = 16, 16, 1, 0
    cfg.model.conv = False
    path = root / "crash.toml"
    path.write_text(dumps_config(cfg))
    return path


def lesa_train(config, out, fault=None, resume=False):
    where, n, sig = fault or ("step", 0, "SIGKILL")
    cmd = [sys.executable, "-c", CHILD, where, str(n), sig, "train", str(config), "--out", str(out),
           "--no-progress", *(["--resume"] if resume else [])]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    done = lesa_train(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def assert_same_run(ref, out):
    for name in ("model.pt", "model_ES.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(out / name)
        for key in a["model_state"]:
            assert torch.equal(a["model_state"][key], b["model_state"][key]), (name, key)
    assert load_checkpoint(ref / "model.pt")["train_state"] == load_checkpoint(out / "model.pt")["train_state"]
    for name in ("log.csv", "F1_f_81_test.csv", "F1_ES_81_test.csv", "F1_f_1k_test.csv"):
        assert (ref / name).read_text() == (out / name).read_text(), name
    assert not list(out.glob("*.tmp-*"))  # a killed write's temporary file is cleaned up


@pytest.mark.slow
def test_kill_9_at_counted_points_then_resume_equals_uninterrupted(config, reference, tmp_path):
    out = tmp_path / "run"
    for fault in (("step", 5, "SIGKILL"), ("save", 3, "SIGKILL"), ("rename", 4, "SIGKILL")):
        killed = lesa_train(config, out, fault, resume=(out / "last.pt").exists())
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-2000:])
        for name in ("last.pt", "model_ES.pt"):  # never half-written under its final name
            if (out / name).exists():
                load_checkpoint(out / name)
    done = lesa_train(config, out, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, out)


@pytest.mark.slow
def test_ctrl_c_saves_a_resume_point_and_says_how_to_continue(config, reference, tmp_path):
    out = tmp_path / "run"
    stopped = lesa_train(config, out, ("step", 4, "SIGINT"))  # during iteration 3, between resume points
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert f"continue with `lesa train {out} --resume`" in stopped.stderr
    assert load_checkpoint(out / "last.pt")["train_state"]["iteration"] == 4  # the iteration it was in: kept
    done = lesa_train(config, out, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, out)
