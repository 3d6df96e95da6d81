"""train.step: the training loop through lesa.fast_step gives the eager loop's results."""
import csv

import pytest
import torch

from lesa.checkpoint import load_checkpoint
from lesa.errors import ConfigError
from lesa.synth import SynthSpec, config_for, write_synthetic
from lesa.train import train


def _run(tmp_path, name, step, **overrides):
    if tmp_path not in _RUNS:
        spec = SynthSpec(kind="nus_wide", n_train=160, n_validation=0, n_test=40, n_tags=24, n_concepts=6,
                         n_shared=3, seed=1)
        _RUNS[tmp_path] = write_synthetic(tmp_path / "data", spec, progress=False)
    files = _RUNS[tmp_path]
    cfg = config_for(files, "nus_wide_zero_shot", tmp_path / name, name, n_iters=12, eval_interval=6, device="cpu")
    cfg.data.n_validation, cfg.data.eval_batch_size = 32, 32
    cfg.model.n_attention = 3
    cfg.train.step = step
    for key, value in overrides.items():
        setattr(cfg.data, key, value)
    train(cfg, progress=False, final_eval=False, log=lambda *a: None)
    return tmp_path / name


_RUNS = {}


@pytest.mark.slow
def test_fast_step_loop_equals_the_eager_loop(tmp_path):
    eager = _run(tmp_path, "eager", "eager")
    fast = _run(tmp_path, "fast", "auto")  # auto on the CPU: the fast step's eager mode
    a = load_checkpoint(eager / "model.pt")["model_state"]
    b = load_checkpoint(fast / "model.pt")["model_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    rows_a = list(csv.reader(open(eager / "log.csv")))
    rows_b = list(csv.reader(open(fast / "log.csv")))
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        for x, y in zip(ra[1:], rb[1:]):
            assert float(x) == pytest.approx(float(y), rel=1e-4, abs=1e-6)


def test_fast_step_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="train.step"):
        _run(tmp_path, "bad", "warp")
