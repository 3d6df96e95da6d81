"""Run figures (lesa.plots, `lesa plot`): rendered headless and not blank; per-class AP bars carry
their class names and tell unseen from seen labels, the 1k-label report's names come from the run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from conftest import rel_err
from lesa.errors import DataError
from lesa.plots import class_names, plot_class_ap, plot_run, plot_training_curves, read_columns

UNSEEN = [f"concept{i:02d}" for i in range(81)]
SEEN = [f"tag{i:03d}" for i in range(925)]


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


def _write_report(path: Path, ap, names=None) -> Path:
    """An evaluation report as lesa.evaluate writes it (classes column only when names are given)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", *(["classes"] if names else []), "F1_3", "P_3", "R_3", "ap" if names else "aP"])
        for i, value in enumerate(ap):
            writer.writerow([i, *([names[i]] if names else []), 0.3, 0.25, 0.4, value])
    return path


def _zero_shot_run(folder: Path, checkpoint: bool) -> tuple[Path, np.ndarray]:
    """A NUS-WIDE zero-shot run folder: F1_f_81 (named), F1_f_1k (unnamed: unseen rows, then seen)
    and, optionally, model.pt with the label names."""
    rng = np.random.default_rng(1)
    ap = np.concatenate([0.2 + 0.6 * rng.random(81), 0.3 * rng.random(925)])  # unseen best here
    ap[[5, 300]] = np.nan  # no positive test image
    folder.mkdir(exist_ok=True)
    _write_report(folder / "F1_f_81_test.csv", ap[:81], UNSEEN)
    if checkpoint:
        from lesa import LESA
        from lesa.checkpoint import save_checkpoint

        model = LESA(rng.random((925, 8), np.float32), rng.random((81, 8), np.float32))
        save_checkpoint(folder / "model.pt", model, label_names={"seen": SEEN, "unseen": UNSEEN})
    return _write_report(folder / "F1_f_1k_test.csv", ap), ap


def _pixels_of(path: Path, colour: str) -> float:
    """Fraction of the figure's pixels drawn in ``colour``."""
    rgb = imread(path)[..., :3]
    return float((np.abs(rgb - to_rgb(colour)).max(axis=-1) < 0.04).mean())


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


def test_zero_shot_report_names_its_unseen_bars(tmp_path):
    path = _write_report(tmp_path / "F1_f_81_test.csv", np.linspace(0.9, 0.01, 81), UNSEEN)
    assert class_names(path, read_columns(path)) == (UNSEEN, ["unseen"] * 81, "")
    out = plot_class_ap(path)
    assert out == tmp_path / "plots" / "F1_f_81_test_ap.png"
    _assert_real_figure(out, min_w=600, min_h=1000)  # 81 named bars
    assert _pixels_of(out, "tab:orange") > 0.05 and _pixels_of(out, "tab:blue") < 1e-3


def test_generalised_report_names_from_the_run_checkpoint(tmp_path):
    report, ap = _zero_shot_run(tmp_path / "run", checkpoint=True)
    names, groups, note = class_names(report, read_columns(report))
    assert names == UNSEEN + SEEN and groups == ["unseen"] * 81 + ["seen"] * 925 and note == ""
    notes = []
    out = plot_class_ap(report, log=notes.append)
    assert notes == []
    _assert_real_figure(out, min_w=1200, min_h=800)
    assert _pixels_of(out, "tab:orange") > 0.01 and _pixels_of(out, "tab:blue") > 0.01
    # far fewer bars than classes: the figure stays about as tall as the 81-label one
    assert imread(out).shape[0] < 1.2 * imread(plot_class_ap(report.with_name("F1_f_81_test.csv"))).shape[0]


def test_generalised_report_evaluated_elsewhere(tmp_path):
    """`lesa evaluate --out DIR`: the checkpoint is the one summary_<tag>.json names."""
    _zero_shot_run(tmp_path / "run", checkpoint=True)
    report, _ = _zero_shot_run(tmp_path / "eval", checkpoint=False)
    (tmp_path / "eval" / "summary_f.json").write_text(json.dumps({"checkpoint": str(tmp_path / "run" / "model.pt")}))
    assert class_names(report, read_columns(report))[0] == UNSEEN + SEEN


def test_generalised_report_without_names_degrades_with_a_note(tmp_path):
    report, _ = _zero_shot_run(tmp_path, checkpoint=False)
    names, groups, note = class_names(report, read_columns(report))
    assert names[:81] == UNSEEN and names[81] == "seen #0" and names[-1] == "seen #924"
    assert groups == ["unseen"] * 81 + ["seen"] * 925
    assert "seen labels unnamed" in note and "lesa import-tf" in note
    notes = []
    _assert_real_figure(plot_class_ap(report, log=notes.append), min_w=1200, min_h=800)
    assert notes == [f"F1_f_1k_test.csv: {note}"]
    (tmp_path / "F1_f_81_test.csv").unlink()  # nothing says which rows are unseen
    names, groups, note = class_names(report, read_columns(report))
    assert names[:2] == ["#0", "#1"] and set(groups) == {"class"} and "unknown" in note
    assert _pixels_of(plot_class_ap(report), "tab:grey") > 0.01  # one colour: groups unknown


def test_open_images_reports_are_split_by_their_names(tmp_path):
    """Open Images: seen (F1_f), zero-shot (F1_f_zs) and generalised (F1_f_gzs: unseen first) reports."""
    seen = _write_report(tmp_path / "F1_f_test.csv", [0.5, 0.4], ["Dog", "Cat"])
    _write_report(tmp_path / "F1_f_zs_test.csv", [0.3, 0.2, 0.1], ["Lynx", "Okapi", "Yak"])
    generalised = _write_report(tmp_path / "F1_f_gzs_test.csv", [0.3, 0.2, 0.1, 0.5, 0.4],
                                ["Lynx", "Okapi", "Yak", "Dog", "Cat"])
    assert class_names(seen, read_columns(seen)) == (["Dog", "Cat"], ["seen"] * 2, "")
    names, groups, note = class_names(generalised, read_columns(generalised))
    assert names[3] == "Dog" and groups == ["unseen"] * 3 + ["seen"] * 2 and note == ""


def test_plot_run_finds_log_and_reports(tmp_path):
    _write_log(tmp_path / "log.csv")
    _zero_shot_run(tmp_path, checkpoint=True)
    (tmp_path / "description.csv").write_text("key,value\na,1\n")  # not an evaluation report
    (tmp_path / "zs_test_log.csv").write_text(",index,mAP_zs\n0,0,0.1\n")
    notes = []
    written = plot_run(tmp_path, log=notes.append)
    assert sorted(p.name for p in written) == ["F1_f_1k_test_ap.png", "F1_f_81_test_ap.png", "training_curves.png"]
    assert notes == []
    with pytest.raises(DataError, match="lesa train"):
        plot_run(tmp_path / "plots")  # a folder with no log or evaluation report


def test_bad_inputs_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        plot_training_curves(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("index,note\n0,a\n1,b\n")
    with pytest.raises(DataError, match="no numeric column"):
        plot_training_curves(tmp_path / "log.csv")
    (tmp_path / "eval.csv").write_text("classes,F1\na,0.1\n")
    with pytest.raises(DataError, match="'ap'"):
        plot_class_ap(tmp_path / "eval.csv")
    assert read_columns(tmp_path / "eval.csv") == {"classes": ["a"], "F1": ["0.1"]}
    (tmp_path / "F1_f_test.csv").write_text(",classes,ap\n0,a,\n1,b,nan\n")
    with pytest.raises(DataError, match="NaN"):
        plot_class_ap(tmp_path / "F1_f_test.csv")


def test_released_run_files(shared_data, tmp_path):
    """The published NUS-WIDE run: its log, its 81-concept report, and its 1k report, whose rows are
    the 81 unseen concepts first (the same APs as the 81 report), then the 925 seen tags."""
    log = plot_training_curves(shared_data("released_nus_wide", "log.csv"), tmp_path / "curves.png")
    _assert_real_figure(log, min_w=1000, min_h=700)
    zero_shot = shared_data("released_nus_wide", "F1_f_81_test.csv")
    _assert_real_figure(plot_class_ap(zero_shot, tmp_path / "ap.png"), min_w=600, min_h=1000)
    generalised = shared_data("released_nus_wide", "F1_f_1k_test.csv")
    columns = read_columns(generalised)
    names, groups, note = class_names(generalised, columns)
    concepts = read_columns(zero_shot)
    assert names[:81] == concepts["classes"] and groups == ["unseen"] * 81 + ["seen"] * 925
    # the original computed the two from separately rounded float32 scores: 1e-6 apart (rows
    # shifted by one: 1.0 apart)
    assert rel_err(np.array(columns["aP"][:81], float), np.array(concepts["ap"], float)) < 1e-5
    assert "seen labels unnamed" in note  # the original's run folder holds no label names
    out = plot_class_ap(generalised, tmp_path / "ap_1k.png")
    _assert_real_figure(out, min_w=1200, min_h=800)
    assert _pixels_of(out, "tab:orange") > 0.01 and _pixels_of(out, "tab:blue") > 0.01
