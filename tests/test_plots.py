"""Figures render headless (Agg) and are not blank: size, pixel dimensions, content."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from lesa.errors import DataError
from lesa.plots import plot_class_ap, plot_run, plot_training_curves, read_csv_columns


def _write_log(path: Path, rows: int = 30) -> Path:
    """A log.csv shaped like the original's (pandas index column, 'index' = iteration)."""
    rng = np.random.default_rng(0)
    header = ["", "index", "l", "l_rank", "l_att_span", "l_att_global", "l_att_dist", "mF1",
              "mF1_u", "mAP", "lr"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(rows):
            decay = np.exp(-i / 8)
            writer.writerow([i, i * 4000, 1 + 6 * decay, 1 + decay, 2 + 15 * decay,
                             30 + 5800 * decay ** 3, 0.3 + 0.4 * rng.random(),
                             0.3 * (1 - decay), "" if i == 3 else 0.4 * (1 - decay),
                             0.2 * (1 - decay), 0.001 * 0.8 ** (i // 10)])
    return path


def _write_eval(path: Path, n: int, seed: int = 0, nan_every: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "classes", "F1_3", "P_3", "R_3", "ap"])
        for i in range(n):
            ap = "nan" if nan_every and i % nan_every == 0 else rng.random()
            writer.writerow([i, f"class_{i:04d}", 0.3, 0.25, 0.4, ap])
    return path


def _assert_real_figure(path: Path, min_w: int, min_h: int):
    assert path.is_file() and path.suffix == ".png"
    assert path.stat().st_size > 15_000
    image = imread(path)  # (H, W, 4) float in [0, 1]
    assert image.shape[0] >= min_h and image.shape[1] >= min_w
    rgb = image[..., :3]
    assert rgb.std() > 0.05                                   # not a blank canvas
    assert (rgb.reshape(-1, 3) < 0.9).any(axis=1).mean() > 0.01  # ink on >1% of pixels
    saturated = rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3       # coloured curves/bars
    assert saturated.mean() > 0.002


def test_training_curves(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    out = plot_training_curves(_write_log(run / "log.csv"))
    assert out == run / "plots" / "training_curves.png"
    _assert_real_figure(out, min_w=1000, min_h=700)  # 3x3 panels


def test_class_ap_small_and_large(tmp_path):
    small = plot_class_ap(_write_eval(tmp_path / "F1_f_81_test.csv", 81))
    assert small == tmp_path / "plots" / "F1_f_81_test_ap.png"
    _assert_real_figure(small, min_w=600, min_h=1000)
    large = plot_class_ap(_write_eval(tmp_path / "F1_f_1k_test.csv", 1000, nan_every=50),
                          tmp_path / "big.png", max_classes=40)
    _assert_real_figure(large, min_w=600, min_h=500)
    h_small, h_large = imread(small).shape[0], imread(large).shape[0]
    assert h_large < h_small  # 1000 classes are cut down to the best and worst 20


def test_plot_run_finds_log_and_eval_csvs(tmp_path):
    _write_log(tmp_path / "log.csv")
    _write_eval(tmp_path / "F1_f_81_test.csv", 81)
    (tmp_path / "description.csv").write_text("key,value\na,1\n")  # not an evaluation CSV
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == ["F1_f_81_test_ap.png", "training_curves.png"]
    with pytest.raises(DataError):
        plot_run(tmp_path / "plots")  # a folder with no log or evaluation CSV


def test_bad_inputs_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        plot_training_curves(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("index,note\n0,a\n1,b\n")
    with pytest.raises(DataError, match="no numeric column"):
        plot_training_curves(tmp_path / "log.csv")
    (tmp_path / "eval.csv").write_text("classes,F1\na,0.1\n")
    with pytest.raises(DataError, match="ap"):
        plot_class_ap(tmp_path / "eval.csv")
    assert read_csv_columns(tmp_path / "eval.csv") == {"classes": ["a"], "F1": ["0.1"]}


def test_released_run_files(shared_data, tmp_path):
    """The published NUS-WIDE run's own log.csv and per-class AP CSV."""
    log = plot_training_curves(shared_data("released_nus_wide", "log.csv"),
                               tmp_path / "curves.png")
    _assert_real_figure(log, min_w=1000, min_h=700)
    ap = plot_class_ap(shared_data("released_nus_wide", "F1_f_81_test.csv"), tmp_path / "ap.png")
    _assert_real_figure(ap, min_w=600, min_h=1000)
