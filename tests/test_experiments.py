"""Each experiment script end to end on small synthetic files (a few iterations, the paper's model)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesa.synth import PRESETS, SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--no-progress", "--set", "data.eval_batch_size=40", "--set", "data.chunk_mb=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    nus = write_synthetic(root / "nus", SynthSpec(**PRESETS["tiny"]), progress=False)
    oi = write_synthetic(root / "oi", SynthSpec(**{**PRESETS["tiny"], "kind": "openimages"}), progress=False)
    return nus, oi


def run_script(name, args):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / name), *args, *COMMON], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def header(path):
    with open(path) as f:
        return next(csv.reader(f))


def nus_args(nus, out):
    return ["--train", str(nus["train"]), "--test", str(nus["test"]), "--label-vectors", str(nus["label_vectors"]),
            "--out", str(out), "--set", f"data.tag_list={nus['tag_list']}", "--set", f"data.concepts={nus['concepts']}",
            "--set", "data.n_validation=40", "--set", "train.n_iters=3", "--set", "train.eval_interval=2"]


@pytest.mark.slow
def test_nus_wide_zero_shot_script(data, tmp_path):
    nus, _ = data
    stdout = run_script("nus_wide_zero_shot.py", nus_args(nus, tmp_path / "zs"))
    out = tmp_path / "zs"
    for name in ("model.pt", "model_ES.pt", "description.txt", "config.toml", "F1_f_81_test.csv", "F1_f_1k_test.csv",
                 "F1_ES_81_test.csv", "F1_ES_1k_test.csv"):
        assert (out / name).exists(), name
    assert header(out / "log.csv") == ["", "index", "l", "l_rank", "l_att_span", "l_att_global", "l_att_dist", "mF1",
                                       "mF1_u", "mAP", "lr"]
    assert header(out / "F1_f_81_test.csv") == ["", "classes", "F1_3", "P_3", "R_3", "F1_5", "P_5", "R_5", "ap"]
    assert header(out / "F1_f_1k_test.csv") == ["", "g_F1_3", "g_P_3", "g_R_3", "g_F1_5", "g_P_5", "g_R_5", "aP"]
    assert "zero-shot (8 unseen)" in stdout
    summary = json.loads((out / "summary_ES.json").read_text())
    assert summary["reports"]["1k"]["n_labels"] == 8 + 20  # 8 concepts + 20 tags that are not concepts


@pytest.mark.slow
def test_nus_wide_multilabel_script(data, tmp_path):
    nus, _ = data
    # the 2x2 conv is exercised by the zero-shot script; switched off here to keep CI fast
    run_script("nus_wide_multilabel.py", nus_args(nus, tmp_path / "ml") + ["--set", "model.conv=false"])
    out = tmp_path / "ml"
    assert header(out / "log.csv") == ["", "index", "l", "l_rank", "l_att_span", "l_att_global", "l_att_dist", "mF1",
                                       "mAP", "lr"]
    for name in ("model.pt", "model_ES.pt", "F1_f_test.csv", "F1_ES_test.csv"):
        assert (out / name).exists(), name
    assert header(out / "F1_f_test.csv") == ["", "classes", "F1_3", "P_3", "R_3", "F1_5", "P_5", "R_5", "ap"]
    assert "lamb_att_dist=0.0001" in (out / "description.txt").read_text()


@pytest.mark.slow
def test_openimages_train_and_evaluate_scripts(data, tmp_path):
    _, oi = data
    out = tmp_path / "oi"
    labels = ["--set", f"data.seen_label_ids={oi['seen_label_ids']}", "--set", f"data.unseen_label_ids={oi['unseen_label_ids']}",
              "--set", f"data.top_unseen={oi['top_unseen']}", "--set", f"data.class_descriptions={oi['class_descriptions']}",
              "--test", str(oi["test"]), "--label-vectors", str(oi["label_vectors"])]
    run_script("openimages_train.py", ["--train", str(oi["train"]), "--validation", str(oi["validation"]),
                                       "--out", str(out), "--set", "train.n_iters=4", "--set", "train.eval_interval=2",
                                       "--set", "model.conv=false", *labels])
    assert header(out / "log.csv") == ["", "index", "l", "l_rank", "l_att_span", "l_att_global", "l_att_dist", "mF1",
                                       "mAP", "lr"]
    for name in ("model.pt", "model_ES.pt", "F1_f_test.csv", "F1_f_zs_test.csv", "F1_f_gzs_test.csv",
                 "F1_ES_test.csv", "F1_ES_zs_test.csv", "F1_ES_gzs_test.csv", "zs_test_log.csv"):
        assert (out / name).exists(), name
    zs_rows = list(csv.reader(open(out / "zs_test_log.csv")))
    assert [r[1] for r in zs_rows[1:]] == ["0", "1", "2", "3"]  # every quarter of 4 iterations
    gzs = list(csv.reader(open(out / "F1_f_gzs_test.csv")))
    assert gzs[0] == ["", "classes", "g_F1_10", "g_P_10", "g_R_10", "g_F1_20", "g_P_20", "g_R_20", "ap"]
    assert len(gzs) - 1 == 4 + 24  # top unseen first, then the seen labels
    assert gzs[1][1].startswith("synthetic u") and gzs[-1][1].startswith("synthetic s")

    ev = tmp_path / "oi_eval"
    run_script("openimages_evaluate.py", ["--checkpoint", str(out / "model_ES.pt"), str(out / "model.pt"),
                                          "--out", str(ev), "--set", "model.conv=false", *labels])
    for name in ("F1_ES_test.csv", "F1_ES_zs_test.csv", "F1_ES_gzs_test.csv", "F1_f_test.csv", "summary_f.json"):
        assert (ev / name).exists(), name
    assert header(ev / "F1_f_zs_test.csv") == ["", "classes", "F1_10", "P_10", "R_10", "F1_20", "P_20", "R_20", "ap"]
    # evaluating model.pt again gives the mAPs the training run reported for it (K differ: 10, 20)
    again = json.loads((ev / "summary_f.json").read_text())["reports"]
    first = json.loads((out / "summary_f.json").read_text())["reports"]
    assert {k: v["mAP"] for k, v in again.items()} == {k: v["mAP"] for k, v in first.items()}


def test_lesa_synth_writes_a_data_folder_that_the_printed_command_trains_on(tmp_path, capsys):
    import shlex

    from lesa.cli import main
    from lesa.datasets.h5 import open_features

    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny", "--n-train", "60", "--n-test", "10",
                 "--dtype", "float16", "--no-progress"]) == 0
    split = open_features(tmp_path / "s" / "features" / "NUS_WIDE_Train.h5")
    assert len(split) == 60 and split.feature_dtype == "float16"
    assert split.label_dims == {"labels_1k": 24, "labels_81": 8}
    lab = split.read_labels("labels_1k", range(60))
    split.close()
    tags = (tmp_path / "s" / "NUS_WIDE" / "NUS_WID_Tags" / "TagList1k.txt").read_text().split()
    concepts = set((tmp_path / "s" / "NUS_WIDE" / "ConceptsList" / "Concepts81.txt").read_text().split())
    shared = [i for i, t in enumerate(tags) if t in concepts]
    assert len(shared) == 4 and (lab[:, shared] == 0).all()  # tags that are concepts are not seen labels
    (command,) = [line[len("next: "):] for line in capsys.readouterr().out.splitlines() if line.startswith("next: ")]
    argv = shlex.split(command)
    assert argv[:3] == ["lesa", "train", "nus_wide_zero_shot"]  # the bundled configuration, as it is
    assert main([*argv[1:], "--set", "train.n_iters=2", "--set", "train.device=cpu", "--no-progress"]) == 0
    assert (tmp_path / "s" / "run" / "summary_f.json").exists()


def test_real_label_files_give_the_papers_label_sets(shared_data):
    from lesa.experiment import load_config
    from lesa.tasks import load_task

    nus = load_config(REPO / "configs" / "nus_wide_zero_shot.toml", [
        f"data.tag_list='{shared_data('nus_wide', 'TagList1k.txt')}'",
        f"data.concepts='{shared_data('nus_wide', 'Concepts81.txt')}'",
        f"data.label_vectors='{shared_data('nus_wide', 'NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300')}'"])
    task = load_task(nus)
    assert task.n_seen == 925 and len(task.unseen_names) == 81
    assert task.seen_vecs.shape == (925, 300) and task.unseen_vecs.shape == (81, 300)
    seen_cols = task.train_labels["seen"][1]
    assert seen_cols[:6].tolist() == [0, 2, 5, 6, 7, 8]  # TagList1k order, concepts removed
    ml = load_config(REPO / "configs" / "nus_wide_multilabel.toml", [
        f"data.tag_list='{shared_data('nus_wide', 'TagList1k.txt')}'",
        f"data.concepts='{shared_data('nus_wide', 'Concepts81.txt')}'",
        f"data.label_vectors='{shared_data('nus_wide', 'NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300')}'"])
    assert load_task(ml).n_seen == 81


@pytest.mark.slow
def test_lesa_demo_runs_twice_in_the_same_folder(tmp_path):
    from lesa.synth import run_demo

    small = dict(n_train=160, n_test=40)
    first = run_demo(tmp_path / "demo", n_iters=3, progress=False, log=lambda *_: None, sizes=small)
    assert (tmp_path / "demo" / "run" / "F1_f_81_test.csv").exists()
    assert 0 <= first["untrained_zero_shot_map"] <= 1
    second = run_demo(tmp_path / "demo", n_iters=3, progress=False, log=lambda *_: None, sizes=small)
    assert second["zero_shot_map"] == first["zero_shot_map"]  # seeded: the same run again
