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
