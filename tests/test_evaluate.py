"""lesa.evaluate: the original's report files, and the golden TF checkpoint evaluated end to end."""
from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from conftest import rel_err
from lesa import metrics
from lesa.cli import main
from lesa.datasets.embeddings import save_vector_pair
from lesa.datasets.h5 import FeatureWriter
from lesa.evaluate import format_summary, make_table


def test_report_table_matches_original_csv_layout(tmp_path):
    from lesa.files import write_csv

    def csv_lines(t):
        return write_csv(tmp_path / "t.csv", t.columns, t.rows).read_text().splitlines()

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((40, 6)).astype(np.float32)
    labels = np.where(rng.random((40, 6)) < 0.3, 1, -1).astype(np.int8)
    table = make_table("81", "zs", scores, labels, [3, 5], names=[f"c{i}" for i in range(6)])
    lines = csv_lines(table)
    assert lines[0] == ",classes,F1_3,P_3,R_3,F1_5,P_5,R_5,ap"
    row = next(csv.reader([lines[1]]))
    f1, p, r = metrics.topk_f1(scores, labels, 3)
    assert row[:5] == ["0", "c0", repr(f1), repr(p), repr(r)]
    assert float(row[-1]) == pytest.approx(metrics.average_precision(scores, labels)[0])
    # every row repeats the overall values (original: pandas broadcast of a scalar)
    assert {next(csv.reader([x]))[2] for x in lines[1:]} == {repr(f1)}
    g = make_table("1k", "gzs", scores, labels, [3, 5], prefix="g_", ap_column="aP")
    assert csv_lines(g)[0] == ",g_F1_3,g_P_3,g_R_3,g_F1_5,g_P_5,g_R_5,aP"
    assert "zs" in format_summary({"tag": "f", "reports": {"81": {"title": "zs", **table.summary}}})


def _write_golden_eval_data(tmp_path, inputs):
    """Open Images-style files around the golden model's 16 seen / 6 unseen labels."""
    seen_vecs, unseen_vecs, feats = inputs["seen_vecs"], inputs["unseen_vecs"], inputs["eval_features"]
    rng = np.random.default_rng(1)
    seen_labels = np.where(rng.random((5, 16)) < 0.3, 1, -1).astype(np.int8)
    unseen_labels = np.where(rng.random((5, 6)) < 0.4, 1, -1).astype(np.int8)
    seen_labels[:, 0], unseen_labels[:, 0] = 1, 1
    (tmp_path / "seen.txt").write_text("\n".join(f"/m/s{i}" for i in range(16)) + "\n")
    with open(tmp_path / "unseen.pkl", "wb") as f:
        pickle.dump(np.array([f"/m/u{i}" for i in range(6)], dtype=object), f, protocol=2)
    save_vector_pair(tmp_path / "vecs.pkl", seen_vecs, unseen_vecs)
    with FeatureWriter(tmp_path / "test.h5", "openimages", "test", {"seen_labels": 16, "unseen_labels": 6}) as w:
        w.append([f"img{i}" for i in range(5)], feats, {"seen_labels": seen_labels, "unseen_labels": unseen_labels})
        w.finish()
    return seen_labels, unseen_labels


def test_golden_tf_checkpoint_through_lesa_evaluate(golden_root, tmp_path):
    root = golden_root("model_nus")
    inputs = dict(np.load(root / "inputs.npz"))
    expected = np.load(root / "expected.npz")
    seen_labels, unseen_labels = _write_golden_eval_data(tmp_path, inputs)
    out = tmp_path / "eval"
    rc = main([
        "evaluate", "openimages_evaluate", "--checkpoint", str(root / "final" / "model.ckpt"),
        "--test", str(tmp_path / "test.h5"), "--label-vectors", str(tmp_path / "vecs.pkl"),
        "--out", str(out), "--save-scores", str(tmp_path / "scores.npz"), "--device", "cpu", "--no-progress",
        "--set", f"data.seen_label_ids={tmp_path / 'seen.txt'}", "--set", f"data.unseen_label_ids={tmp_path / 'unseen.pkl'}",
        "--set", "data.top_unseen=''", "--set", "data.class_descriptions=''",
        "--set", "evaluate.k=[3]", "--set", "evaluate.k_gzs=[3]", "--set", "evaluate.k_seen=[3]",
    ])
    assert rc == 0
    scores = np.load(tmp_path / "scores.npz")
    for head in ("logits", "zs_logits", "gzs_logits"):
        ref = expected[f"final_eval/{head}"]
        assert scores[head].shape == ref.shape
        assert rel_err(scores[head], ref) <= 1e-5, head
    # the reports equal the protocol applied to the golden scores
    summary = json.loads((out / "summary_f.json").read_text())
    ref_zs = expected["final_eval/zs_logits"]
    assert summary["reports"]["zs"]["mAP"] == pytest.approx(metrics.mean_average_precision(ref_zs, unseen_labels), abs=1e-6)
    assert summary["reports"]["seen"]["mAP"] == pytest.approx(
        metrics.mean_average_precision(expected["final_eval/logits"], seen_labels), abs=1e-6)
    gzs = np.concatenate([unseen_labels, seen_labels], axis=1)
    assert summary["reports"]["gzs"]["F1@3"] == pytest.approx(metrics.topk_f1(expected["final_eval/gzs_logits"], gzs, 3)[0])
    for name in ("F1_f_test.csv", "F1_f_zs_test.csv", "F1_f_gzs_test.csv"):
        assert (out / name).exists()
    header = (out / "F1_f_gzs_test.csv").read_text().splitlines()[0]
    assert header == ",classes,g_F1_3,g_P_3,g_R_3,ap"


def _evaluate_with_scores(golden_root, tmp_path):
    root = golden_root("model_nus")
    inputs = dict(np.load(root / "inputs.npz"))
    _write_golden_eval_data(tmp_path, inputs)
    label_sets = ["--set", f"data.seen_label_ids={tmp_path / 'seen.txt'}",
                  "--set", f"data.unseen_label_ids={tmp_path / 'unseen.pkl'}",
                  "--set", "data.top_unseen=''", "--set", "data.class_descriptions=''"]
    assert main(["evaluate", "openimages_evaluate", "--checkpoint", str(root / "final" / "model.ckpt"),
                 "--test", str(tmp_path / "test.h5"), "--label-vectors", str(tmp_path / "vecs.pkl"),
                 "--out", str(tmp_path / "eval"), "--save-scores", str(tmp_path / "scores.npz"), "--device", "cpu",
                 "--no-progress", *label_sets]) == 0
    return label_sets


def test_lesa_score_reproduces_lesa_evaluate_bit_for_bit(golden_root, tmp_path, capsys):
    label_sets = _evaluate_with_scores(golden_root, tmp_path)
    assert main(["score", str(tmp_path / "scores.npz"), "--labels", str(tmp_path / "test.h5"),
                 "--out", str(tmp_path / "scored"), *label_sets]) == 0
    assert "rows matched to the split by image id" in capsys.readouterr().out
    for name in ("F1_f_test.csv", "F1_f_zs_test.csv", "F1_f_gzs_test.csv"):
        assert (tmp_path / "scored" / name).read_bytes() == (tmp_path / "eval" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / "summary_f.json").read_text())["reports"] for d in ("eval", "scored"))
    assert a == b


def test_lesa_score_of_another_methods_matrix(golden_root, tmp_path, capsys):
    """A bare matrix (no ids, no names) in the split's and the task's order, then the same scores with
    their images and labels shuffled and named: the same reports."""
    label_sets = _evaluate_with_scores(golden_root, tmp_path)
    saved = np.load(tmp_path / "scores.npz")
    gzs = saved["gzs_logits"]  # (5, 6 + 16): unseen first
    np.save(tmp_path / "plain.npy", gzs)
    assert main(["score", str(tmp_path / "plain.npy"), "--labels", str(tmp_path / "test.h5"), "--task", "openimages",
                 "--out", str(tmp_path / "plain"), *label_sets]) == 0
    out = capsys.readouterr().out
    assert "rows in the split's order" in out and "the unseen labels, then the seen" in out
    rows, cols = np.array([3, 0, 4, 1, 2]), np.random.default_rng(0).permutation(gzs.shape[1])
    names = saved["names_gzs_logits"]
    np.savez(tmp_path / "named.npz", scores=gzs[rows][:, cols], img_ids=saved["img_ids"][rows],
             label_names=names[cols])
    assert main(["score", str(tmp_path / "named.npz"), "--labels", str(tmp_path / "test.h5"),
                 "--out", str(tmp_path / "named"), *label_sets]) == 0
    for name in ("F1_f_test.csv", "F1_f_zs_test.csv", "F1_f_gzs_test.csv"):
        assert (tmp_path / "named" / name).read_bytes() == (tmp_path / "eval" / name).read_bytes(), name
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "eval" / name).read_bytes(), name


def test_lesa_score_refuses_bad_predictions_clearly(golden_root, tmp_path, capsys):
    label_sets = _evaluate_with_scores(golden_root, tmp_path)
    saved = np.load(tmp_path / "scores.npz")
    gzs, ids = saved["gzs_logits"].copy(), saved["img_ids"]

    def refused(name, match, **arrays):
        np.savez(tmp_path / f"{name}.npz", **arrays)
        assert main(["score", str(tmp_path / f"{name}.npz"), "--labels", str(tmp_path / "test.h5"),
                     "--out", str(tmp_path / name), *label_sets]) == 1
        err = capsys.readouterr().err
        assert match in err, err

    nan = gzs.copy()
    nan[2, 5] = np.nan
    refused("nan", "1 NaN or infinite scores, e.g. at (image 2, label 5)", scores=nan)
    refused("shape", "7 score columns", scores=gzs[:, :7])
    refused("rows", "4 rows of scores but the split has 5 images", scores=gzs[:4])
    refused("missing", "1 of the split's images have no scores, e.g. 'img4'", scores=gzs[:4], img_ids=ids[:4])
    refused("twice", "image id 'img0' appears twice", scores=gzs, img_ids=np.array([ids[0]] * 5))
    refused("label", "label 'zebra' is not a label of openimages", scores=gzs[:, :1],
            label_names=np.array(["zebra"]))
