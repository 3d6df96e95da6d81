"""experiments/evaluate_released_nus_wide.py end to end on a miniature NUS-WIDE test split.

A random LESA with the released configuration is written as an original-style TF checkpoint
(weights, RMSProp slots, learning rate, is_train flag); the script must evaluate it with the real
NUS-WIDE label files and write reports with the released checkpoint's CSV columns.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lesa import LESA, metrics
from lesa.datasets.embeddings import load_vector_pair, read_label_list
from lesa.datasets.h5 import FeatureWriter
from lesa.datasets.nus_wide import seen_unseen_tag_indices
from tf_writers import tf_named_weights, write_tf_checkpoint

REPO = Path(__file__).resolve().parents[1]


def header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f))


@pytest.mark.slow
def test_released_script_on_a_miniature_split(shared_data, tmp_path):
    tags = shared_data("nus_wide", "TagList1k.txt")
    concepts = shared_data("nus_wide", "Concepts81.txt")
    vectors = shared_data("nus_wide", "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300")
    tag1k, tag81 = read_label_list(tags), read_label_list(concepts)
    vecs_1k, vecs_81 = load_vector_pair(vectors)
    seen, _ = seen_unseen_tag_indices(tag1k, tag81)
    assert len(seen) == 925

    torch.manual_seed(3)
    model = LESA(vecs_1k[seen], vecs_81)
    with torch.no_grad():
        model.bn.running_mean.uniform_(0, 0.5)
        model.bn.running_var.uniform_(0.5, 2)
    tensors = tf_named_weights(model)
    tensors.update({name + "/RMSProp": np.ones_like(a) for name, a in list(tensors.items())})
    tensors.update({"Variable": np.float32(0.001), "conv/is_train": np.bool_(True)})
    (tmp_path / "release").mkdir()
    write_tf_checkpoint(tmp_path / "release" / "model.ckpt", tensors)

    rng = np.random.default_rng(0)
    n = 24
    features = np.maximum(rng.normal(size=(n, 196, 512)), 0).astype(np.float32)
    labels_1k = rng.choice([-1, 1], p=[0.97, 0.03], size=(n, 1000)).astype(np.int8)
    labels_81 = rng.choice([-1, 1], p=[0.9, 0.1], size=(n, 81)).astype(np.int8)
    test_h5 = tmp_path / "NUS_WIDE_Test.h5"
    with FeatureWriter(test_h5, "nus_wide", "Test", {"labels_1k": 1000, "labels_81": 81}) as writer:
        writer.append([f"img{i}.jpg" for i in range(n)], features,
                      {"labels_1k": labels_1k, "labels_81": labels_81})
        writer.finish()

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "evaluate_released_nus_wide.py"),
         "--checkpoint", str(tmp_path / "release" / "model.ckpt"), "--test", str(test_h5),
         "--label-vectors", str(vectors), "--out", str(out),
         "--set", f"data.tag_list='{tags}'", "--set", f"data.concepts='{concepts}'"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "published" in result.stdout and "0.3143" in result.stdout

    released = Path(vectors).parents[1] / "released_nus_wide"
    assert header(out / "F1_f_81_test.csv") == header(released / "F1_f_81_test.csv")
    assert header(out / "F1_f_1k_test.csv") == header(released / "F1_f_1k_test.csv")

    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(features))
    gzs_labels = np.concatenate([labels_81, labels_1k[:, seen]], axis=1)
    summary = json.loads((out / "summary_f.json").read_text())
    zs, gzs = summary["reports"]["81"], summary["reports"]["1k"]
    assert zs["mAP"] == pytest.approx(metrics.mean_average_precision(scores.zs_logits.numpy(), labels_81), abs=1e-6)
    assert gzs["mAP"] == pytest.approx(metrics.mean_average_precision(scores.gzs_logits.numpy(), gzs_labels), abs=1e-6)
    assert zs["F1@3"] == pytest.approx(metrics.topk_f1(scores.zs_logits.numpy(), labels_81, 3)[0], abs=1e-6)
    assert "F1@5" in gzs  # the original lost these; the port reports them
