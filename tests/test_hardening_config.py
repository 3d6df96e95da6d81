"""Hardening: bad configurations and mismatched files fail fast — before any training step — with the fix.

Each case builds a valid tiny run, breaks one thing, and checks that ``train`` raises a ``LesaError``
naming the culprit before a single iteration ran (no ``log.csv``, no checkpoint written).
"""
from __future__ import annotations

import collections
import os
import shutil

import h5py
import numpy as np
import pytest

from lesa.datasets.embeddings import save_vector_pair
from lesa.datasets.h5 import FeatureWriter
from lesa.errors import LesaError
from lesa.synth import SynthSpec, config_for, write_synthetic
from lesa.train import train

FAULTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\n[hardening] bad configurations: {sum(FAULTS.values())}")
    report = os.environ.get("LESA_RELIABILITY_REPORT")
    if report:
        import json

        with open(report, "a") as f:
            f.write(json.dumps({"module": "config", "counts": dict(FAULTS)}) + "\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg_data")
    return write_synthetic(root, SynthSpec(n_train=40, n_test=12, n_tags=12, n_concepts=5, n_shared=2, chunk=20),
                           progress=False)


@pytest.fixture(scope="module")
def oi_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg_oi")
    return write_synthetic(root, SynthSpec(kind="openimages", n_train=30, n_validation=10, n_test=10, n_tags=10,
                                           n_concepts=6, chunk=10), progress=False)


def _config(files, out, task="nus_wide_zero_shot"):
    cfg = config_for(files, task, out, "bad", n_iters=50, eval_interval=10, batch_size=8, device="cpu")
    cfg.data.n_validation = 8
    cfg.model.conv = False
    return cfg


def _write_h5(path, n, label_dims, feature_shape=(196, 512), dataset="nus_wide", split="Train"):
    if feature_shape == (196, 512):
        with FeatureWriter(path, dataset, split, label_dims, attrs={"backbone": "synthetic"}) as w:
            if n:
                w.append([str(i) for i in range(n)], np.zeros((n, 196, 512), np.float32),
                         {k: np.zeros((n, d), np.int8) for k, d in label_dims.items()})
            w.finish()
        return path
    with h5py.File(path, "w") as f:  # a foreign layout: another backbone's grid
        f.create_dataset("features", data=np.zeros((n, *feature_shape), np.float32))
        f.create_dataset("img_ids", data=np.array([str(i) for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        for k, d in label_dims.items():
            f.create_dataset(k, data=np.zeros((n, d), np.int8))
        f.attrs["complete"] = True
    return path


def _fails_fast(cfg, match, tmp_path):
    FAULTS["bad configuration"] += 1
    with pytest.raises(LesaError, match=match) as info:
        train(cfg, progress=False, log=lambda *_: None)
    out = cfg.out_dir
    assert not (out / "log.csv").exists() and not (out / "last.pt").exists(), "work started before the error"
    return str(info.value)


def test_label_vectors_do_not_match_the_label_lists(files, tmp_path):
    vectors = tmp_path / "vectors.pkl"
    save_vector_pair(vectors, np.ones((11, 300)), np.ones((5, 300)))  # 11 tag vectors for 12 tags
    cfg = _config(files, tmp_path / "run")
    cfg.data.label_vectors = str(vectors)
    msg = _fails_fast(cfg, r"vectors.pkl.*11 vectors but there are 12 labels", tmp_path)
    assert "does not belong" in msg


def test_features_not_196x512(files, tmp_path):
    cfg = _config(files, tmp_path / "run")
    cfg.data.train = [str(_write_h5(tmp_path / "train49.h5", 20, {"labels_1k": 12, "labels_81": 5}, (49, 512)))]
    msg = _fails_fast(cfg, r"train49.h5.*\(N, 196, 512\)", tmp_path)
    assert "re-extract" in msg


@pytest.mark.parametrize("which", ["train", "test"])
def test_empty_split(files, tmp_path, which):
    cfg = _config(files, tmp_path / "run")
    empty = _write_h5(tmp_path / f"empty_{which}.h5", 0, {"labels_1k": 12, "labels_81": 5},
                      split="Train" if which == "train" else "Test")
    setattr(cfg.data, which, [str(empty)])
    _fails_fast(cfg, rf"empty_{which}.h5.*no records", tmp_path)


def test_test_split_of_another_dataset_fails_before_training(oi_files, files, tmp_path):
    """An Open Images run given a NUS-WIDE test file: found out at the start, not after training."""
    cfg = _config(oi_files, tmp_path / "run", task="openimages")
    cfg.data.test = [str(files["test"])]
    _fails_fast(cfg, r"_Test.h5.*no label array 'seen_labels'", tmp_path)


def test_label_columns_do_not_match_the_label_list(files, tmp_path):
    """Concept labels with 7 columns for a list of 5 concepts: an error, not silently wrong metrics."""
    cfg = _config(files, tmp_path / "run")
    cfg.data.test = [str(_write_h5(tmp_path / "test7.h5", 12, {"labels_1k": 12, "labels_81": 7}, split="Test"))]
    _fails_fast(cfg, r"test7.h5.*labels_81.*7 columns.*5", tmp_path)


def test_training_range_empty_after_validation(files, tmp_path):
    cfg = _config(files, tmp_path / "run")
    cfg.data.n_validation = 40
    _fails_fast(cfg, r"n_validation", tmp_path)


@pytest.mark.parametrize("key,value,match", [
    ("data.label_vectors", "missing.pkl", r"data.label_vectors.*missing.pkl.*does not exist"),
    ("data.tag_list", "", r"data.tag_list: NUS-WIDE.s TagList1k.txt not found \(looked for"),
    ("data.train", ["nothing*.h5"], r"no feature files match"),
    ("train.batch_size", 0, r"train.batch_size = 0"),
    ("train.lr", -1.0, r"train.lr"),
    ("train.device", "tpu", r"train.device"),
    ("experiment.task", "imagenet", r"experiment.task"),
    ("data.preload", "disk", r"data.preload"),
    ("evaluate.k", [0], r"evaluate.k"),
])
def test_bad_values_name_the_setting(files, tmp_path, key, value, match):
    cfg = _config(files, tmp_path / "run")
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    _fails_fast(cfg, match, tmp_path)


def test_resume_of_another_model_configuration(files, tmp_path):
    cfg = _config(files, tmp_path / "run")
    cfg.train.n_iters = 2
    train(cfg, progress=False, log=lambda *_: None, final_eval=False)
    shutil.copy(tmp_path / "run" / "last.pt", tmp_path / "keep.pt")
    other = _config(files, tmp_path / "run")
    other.model.n_attention = 3
    FAULTS["bad configuration"] += 1
    with pytest.raises(LesaError, match=r"last.pt.*\[model\].*differ"):
        train(other, resume=True, progress=False, log=lambda *_: None)
