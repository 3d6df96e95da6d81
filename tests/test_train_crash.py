"""kill -9 during training, then --resume: the final files equal those of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lesa.checkpoint import load_checkpoint
from lesa.synth import PRESETS, SynthSpec, write_synthetic
from lesa.train import train

CHILD = """
import sys, pickle
from lesa.train import train
cfg = pickle.load(open(sys.argv[1], "rb"))
train(cfg, resume=len(sys.argv) > 2, progress=False, log=lambda *a: None)
"""


def crash_config(files, out):
    from lesa.synth import config_for

    cfg = config_for(files, "nus_wide_zero_shot", out, "crash", n_iters=10, eval_interval=4, batch_size=16,
                     lr=0.01, device="cpu", checkpoint_every=1)
    cfg.data.n_validation, cfg.data.eval_batch_size, cfg.data.chunk_mb = 40, 40, 1
    cfg.model.conv = False
    return cfg


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    import pickle

    files = write_synthetic(tmp_path / "data", SynthSpec(**PRESETS["tiny"]), progress=False)
    train(crash_config(files, tmp_path / "full"), progress=False, log=lambda *_: None)

    cfg = crash_config(files, tmp_path / "killed")
    pickle.dump(cfg, open(tmp_path / "cfg.pkl", "wb"))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cfg.pkl")])
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 600
    try:
        while time.time() < deadline:  # kill once a few iterations are saved
            if last.exists():
                try:
                    if load_checkpoint(last)["train_state"]["iteration"] >= 5:
                        break
                except Exception:  # a checkpoint is never half-written: this must not happen
                    raise
            if child.poll() is not None:
                pytest.fail("the training finished before it could be killed")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cfg.pkl"), "resume"], timeout=600)
    assert resumed.returncode == 0
    assert not list((tmp_path / "killed").glob("*.tmp-*"))  # a killed write's temporary file is cleaned up
    a = load_checkpoint(tmp_path / "full" / "model.pt")
    b = load_checkpoint(tmp_path / "killed" / "model.pt")
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for name in ("log.csv", "F1_f_81_test.csv", "F1_ES_81_test.csv", "F1_f_1k_test.csv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "killed" / name).read_text(), name
