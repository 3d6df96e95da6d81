"""The training loop: outputs, resume equals an uninterrupted run, NaN stops with the last good
checkpoint kept, bad configurations fail before any work."""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lesa.checkpoint import load_checkpoint, save_checkpoint
from lesa.errors import CheckpointError, ConfigError, TrainingError
from lesa.experiment import load_config
from lesa.synth import PRESETS, SynthSpec, config_for, write_synthetic
from lesa.train import train


@pytest.fixture(scope="module")
def tiny_nus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_nus")
    return write_synthetic(root, SynthSpec(**PRESETS["tiny"]), progress=False)


def tiny_config(files, out, **train):
    values = dict(n_iters=6, eval_interval=2, batch_size=16, lr=0.01, device="cpu")
    values.update(train)
    cfg = config_for(files, "nus_wide_zero_shot", out, "tiny", **values)
    cfg.data.n_validation = 40
    cfg.data.eval_batch_size = 40
    cfg.data.chunk_mb = 1
    cfg.model.conv = False  # keeps the test fast; the conv is covered by the experiment tests
    return cfg


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_run_writes_the_original_outputs(tiny_nus, tmp_path):
    result = train(tiny_config(tiny_nus, tmp_path / "run"), progress=False, log=lambda *_: None)
    out = tmp_path / "run"
    for name in ("log.csv", "description.txt", "config.toml", "model.pt", "model_ES.pt", "last.pt",
                 "F1_f_81_test.csv", "F1_f_1k_test.csv", "F1_ES_81_test.csv", "F1_ES_1k_test.csv",
                 "summary_f.json", "summary_ES.json"):
        assert (out / name).exists(), name
    log = read_csv(out / "log.csv")
    assert log[0] == ["", "index", "l", "l_rank", "l_att_span", "l_att_global", "l_att_dist", "mF1", "mF1_u",
                      "mAP", "lr"]
    assert [int(r[1]) for r in log[1:]] == [0, 2, 4, 5]  # i % 2 == 0 or the last iteration
    assert float(log[1][-1]) == float(np.float32(0.01))
    assert result["iterations"] == 6
    # the resolved configuration reloads to the same values
    again = load_config(out / "config.toml")
    from lesa.experiment import resolve_data_paths

    assert again.to_dict() == resolve_data_paths(tiny_config(tiny_nus, tmp_path / "run")).to_dict()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(tiny_nus, tmp_path / "run"), progress=False)


def test_resumed_run_equals_uninterrupted(tiny_nus, tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    train(tiny_config(tiny_nus, tmp_path / "full"), **quiet)
    cfg = tiny_config(tiny_nus, tmp_path / "part")
    stopped = train(cfg, stop_after=4, **quiet)  # "crash" after iteration 3; last.pt is from iteration 2
    assert stopped["stopped"] and load_checkpoint(tmp_path / "part" / "last.pt")["train_state"]["iteration"] == 3
    train(tiny_config(tiny_nus, tmp_path / "part"), resume=True, **quiet)
    a = load_checkpoint(tmp_path / "full" / "model.pt")["model_state"]
    b = load_checkpoint(tmp_path / "part" / "model.pt")["model_state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in ("log.csv", "F1_f_81_test.csv", "F1_ES_1k_test.csv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "part" / name).read_text(), name


def test_shuffled_resume_equals_uninterrupted(tiny_nus, tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    for name in ("full", "part"):
        cfg = tiny_config(tiny_nus, tmp_path / name, n_iters=5, checkpoint_every=1, eval_interval=10)
        cfg.data.shuffle = True
        cfg.data.shuffle_buffer = 32
        if name == "full":
            train(cfg, final_eval=False, **quiet)
        else:
            train(cfg, final_eval=False, stop_after=3, **quiet)
            train(cfg, final_eval=False, resume=True, **quiet)
    a = load_checkpoint(tmp_path / "full" / "model.pt")
    b = load_checkpoint(tmp_path / "part" / "model.pt")
    assert a["train_state"]["position"] == b["train_state"]["position"]
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key


def test_nan_features_stop_with_the_last_good_checkpoint(tiny_nus, tmp_path):
    import shutil

    bad = dict(tiny_nus)
    bad["train"] = tmp_path / "train_nan.h5"
    shutil.copy(tiny_nus["train"], bad["train"])
    with h5py.File(bad["train"], "r+") as f:
        f["features"][70] = np.nan  # records 56..71 form iteration 1 (validation = first 40, batch 16)
    with pytest.raises(TrainingError, match=r"iteration 1 .*last.pt \(iteration 1\)"):
        train(tiny_config(bad, tmp_path / "nan"), progress=False, log=lambda *_: None)
    good = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert good["train_state"]["iteration"] == 1
    assert not (tmp_path / "nan" / "model.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nan_is_caught_before_any_save_when_the_loss_stays_on_the_device(tiny_nus, tmp_path, device="cuda"):
    """The GPU loop keeps the losses on the device (no host sync per step) and checks them before
    each save: a checkpoint after the bad step must not overwrite last.pt with NaN weights.
    (On the CPU the step itself stops before the update: the test above.)"""
    import shutil

    bad = dict(tiny_nus)
    bad["train"] = tmp_path / "train_nan.h5"
    shutil.copy(tiny_nus["train"], bad["train"])
    with h5py.File(bad["train"], "r+") as f:
        f["features"][70] = np.nan  # iteration 1, as above
    cfg = tiny_config(bad, tmp_path / "nan", step="cuda_graph", checkpoint_every=1, eval_interval=4,
                      device=device)
    with pytest.raises(TrainingError, match=r"at iteration 1 \(found at iteration 1;.*last.pt \(iteration 1\)"):
        train(cfg, progress=False, log=lambda *_: None)
    good = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert good["train_state"]["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in good["model_state"].values() if v.is_floating_point())


def test_loss_watch_keeps_the_first_bad_iteration():
    from lesa.train import LossWatch

    class Run:
        out_dir = Path("/nonexistent")
        state = type("S", (), {"iteration": 9})()

    watch = LossWatch()
    watch.raise_if_bad(Run())  # nothing recorded yet
    for i, value in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0]):
        watch.record(torch.tensor(value), i)
    with pytest.raises(TrainingError, match=r"at iteration 2 \(found at iteration 8"):
        watch.raise_if_bad(Run())
    finite = LossWatch()
    for i in range(3):
        finite.record(torch.tensor(float(i)), i)
    finite.raise_if_bad(Run())


def test_bad_configurations_fail_before_work(tiny_nus, tmp_path):
    cfg = tiny_config(tiny_nus, tmp_path / "x")
    cfg.data.test = [str(tmp_path / "missing.h5")]
    with pytest.raises(ConfigError, match="missing.h5"):
        train(cfg, progress=False)
    cfg = tiny_config(tiny_nus, tmp_path / "x")
    cfg.data.n_validation = 10_000
    with pytest.raises(ConfigError, match="n_validation"):
        train(cfg, progress=False)
    cfg = tiny_config(tiny_nus, tmp_path / "x")
    cfg.train.monitor = "accuracy"
    with pytest.raises(ConfigError, match="monitor"):
        train(cfg, progress=False)
    (tmp_path / "bad.toml").write_text("[train]\nn_iter = 5\n")
    with pytest.raises(ConfigError, match="unknown key 'n_iter'.*n_iters"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text("[trian]\nn_iters = 5\n")
    with pytest.raises(ConfigError, match=r"unknown table \[trian\]"):
        load_config(tmp_path / "bad2.toml")
    with pytest.raises(ConfigError, match="integer"):
        load_config("configs/nus_wide_zero_shot.toml", ["train.n_iters=many"])
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tiny_nus, tmp_path / "never"), resume=True, progress=False)


def test_checkpoints_are_atomic_and_validated(tmp_path):
    from lesa.model import LESA

    model = LESA(np.random.rand(4, 300), np.random.rand(2, 300))
    path = save_checkpoint(tmp_path / "m.pt", model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a lesa checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_lesa_evaluate_in_bf16_is_labelled_and_close_to_fp32(tiny_nus, tmp_path, capsys):
    import json

    from lesa.cli import main

    cfg = tiny_config(tiny_nus, tmp_path / "run")
    train(cfg, progress=False, final_eval=False, log=lambda *a: None)
    config, model = str(tmp_path / "run" / "config.toml"), str(tmp_path / "run" / "model.pt")
    summaries = {}
    for precision in ("fp32", "bf16"):
        assert main(["evaluate", config, "--checkpoint", model, "--out", str(tmp_path / precision),
                     "--precision", precision, "--no-progress"]) == 0
        summaries[precision] = json.loads((tmp_path / precision / "summary_f.json").read_text())
    printed = capsys.readouterr().out
    assert "forward pass in bf16: not the exact fp32 scores" in printed
    assert printed.count("not the exact fp32 scores") == 1  # the fp32 table says nothing
    assert summaries["fp32"]["precision"] == "fp32" and summaries["bf16"]["precision"] == "bf16"
    for name, report in summaries["fp32"]["reports"].items():
        assert summaries["bf16"]["reports"][name]["mAP"] == pytest.approx(report["mAP"], abs=0.02)
    assert main(["evaluate", config, "--checkpoint", model, "--set", "evaluate.precision=fp16"]) == 1
    assert "evaluate.precision = 'fp16'" in capsys.readouterr().err
