"""Hardening: every reader of outside files, fed hostile input, ends in a lesa error naming the file.

Covers what the area tests do not already fuzz (TF checkpoints: test_tf_checkpoint.py; TFRecord and
Example protos: test_tfrecord.py; byte flips of HDF5 files and JPEGs: test_extract_fuzz.py; byte flips
of vector pickles: test_embeddings.py): HDF5 files with the wrong structure (shapes, dtypes, missing
arrays, incomplete flag, huge declared sizes), label lists and CSVs, hostile pickles, GloVe text,
TOML configurations and native ``.pt`` checkpoints.

Outcome accepted for each input: a ``LesaError`` whose message names the file, or a result that passes
the reader's own contract (shapes, finite values, for checkpoints the exact saved weights). Never
another exception, a hang (Hypothesis ``deadline``), or a huge allocation: inputs declaring 2**40
records or 10**12 array elements must end in the error without allocating them.

The number of inputs each test tried is counted (``FUZZED``) and printed at the end of the module
(``pytest -s``) for the README "Reliability" table.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import string
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from lesa.checkpoint import load_checkpoint, load_model, save_checkpoint
from lesa.datasets import openimages
from lesa.datasets.embeddings import (load_label_ids_pickle, load_pickle, load_vector_pair, read_label_list,
                                      vectors_from_glove)
from lesa.datasets.h5 import FeatureWriter, open_features
from lesa.datasets.nus_wide import read_01_matrix
from lesa.errors import CheckpointError, ConfigError, DataError, LesaError
from lesa.experiment import check_config, load_config
from lesa.tasks import read_top_unseen

FUZZED: collections.Counter = collections.Counter()
FAST = dict(deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(FUZZED.values())
    print(f"\n[hardening] inputs fuzzed: {total} " + ", ".join(f"{k} {v}" for k, v in sorted(FUZZED.items())))
    report = os.environ.get("LESA_RELIABILITY_REPORT")
    if report:
        import json

        with open(report, "a") as f:
            f.write(json.dumps({"module": "fuzz", "counts": dict(FUZZED)}) + "\n")


def expect_lesa_error_or(check, path: Path, func, *args, **kwargs):
    """Run ``func``; a LesaError must name ``path``; anything else must pass ``check(result)``."""
    try:
        result = func(*args, **kwargs)
    except LesaError as exc:
        assert path.name in str(exc), f"error does not name the file: {exc}"
        return exc
    check(result)
    return result


# ---------------------------------------------------------------------------------------------------
# HDF5 feature files with the wrong structure (byte flips/truncation: test_extract_fuzz.py)
# ---------------------------------------------------------------------------------------------------
def _read_everything(path):
    with open_features(path) as split:
        n = len(split)
        ids = split.img_ids
        feats, labels = split.read(np.arange(n))
        return n, ids, feats, labels


@settings(max_examples=80, **FAST)
@given(
    n=st.integers(0, 4),
    feat_shape=st.sampled_from([(196, 512), (49, 512), (196, 256), (512, 196), (196,), (14, 14, 512)]),
    feat_dtype=st.sampled_from(["float32", "float16", "float64", "int8", "uint8", "S4"]),
    ids_len=st.integers(0, 5),
    ids_kind=st.sampled_from(["str", "int", "missing", "group"]),
    label_shape=st.sampled_from(["ok", "1d", "short", "3d", "missing"]),
    complete=st.sampled_from([True, False, None, "yes"]),
    n_written=st.sampled_from([None, 0, 2, 10, -3, 2**62]),
    features_is_group=st.booleans(),
)
def test_hdf5_wrong_structure(tmp_path_factory, n, feat_shape, feat_dtype, ids_len, ids_kind, label_shape,
                              complete, n_written, features_is_group):
    FUZZED["hdf5 structure"] += 1
    path = tmp_path_factory.mktemp("h5s") / "feats.h5"
    with h5py.File(path, "w") as f:
        if features_is_group:
            f.create_group("features")
        else:
            f.create_dataset("features", data=np.ones((n, *feat_shape), dtype=feat_dtype))
        if ids_kind == "str":
            f.create_dataset("img_ids", data=np.array([f"i{k}" for k in range(ids_len)], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        elif ids_kind == "int":
            f.create_dataset("img_ids", data=np.arange(ids_len))
        elif ids_kind == "group":
            f.create_group("img_ids")
        if label_shape == "ok":
            f.create_dataset("labels_81", data=np.zeros((n, 3), np.int8))
        elif label_shape == "1d":
            f.create_dataset("labels_81", data=np.zeros((n,), np.int8))
        elif label_shape == "short":
            f.create_dataset("labels_81", data=np.zeros((max(0, n - 1), 3), np.int8))
        elif label_shape == "3d":
            f.create_dataset("labels_81", data=np.zeros((n, 3, 2), np.int8))
        if complete is not None:
            f.attrs["complete"] = complete
        if n_written is not None:
            f.attrs["n_written"] = n_written

    def valid(result):
        rows, ids, feats, labels = result
        assert feats.shape == (rows, 196, 512) and feats.dtype == np.float32
        assert len(ids) == rows and all(isinstance(i, str) for i in ids)
        for arr in labels.values():
            assert arr.shape[0] == rows

    expect_lesa_error_or(valid, path, _read_everything, path)


def test_hdf5_huge_declared_shape_fails_without_allocating(tmp_path):
    """A dataset declaring 2**40 records (no data written) must not make the reader allocate it."""
    FUZZED["hdf5 structure"] += 1
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", shape=(2**40, 196, 512), dtype=np.float32, chunks=(1, 196, 512))
        f.create_dataset("img_ids", shape=(3,), dtype=h5py.string_dtype("utf-8"))
        f.attrs["complete"] = True
    with pytest.raises(DataError, match="huge.h5"):
        _read_everything(path)


@settings(max_examples=40, **FAST)
@given(data=st.data())
def test_hdf5_flipped_data_bytes_are_errors_not_wrong_values(tmp_path_factory, data):
    """Flips inside the feature/label chunks: the per-chunk checksum turns them into DataError."""
    FUZZED["hdf5 data-chunk flips"] += 1
    path = tmp_path_factory.mktemp("h5d") / "feats.h5"
    rng = np.random.default_rng(0)
    feats = rng.random((3, 196, 512), dtype=np.float32)
    labels = rng.integers(-1, 2, (3, 4)).astype(np.int8)
    with FeatureWriter(path, "nus_wide", "Train", {"labels_81": 4}) as w:
        w.append(["a", "b", "c"], feats, {"labels_81": labels})
        w.finish()
    with h5py.File(path, "r") as f:
        name = data.draw(st.sampled_from(["features", "labels_81"]))
        info = f[name].id.get_chunk_info(data.draw(st.integers(0, f[name].id.get_num_chunks() - 1)))
    blob = bytearray(path.read_bytes())
    blob[info.byte_offset + data.draw(st.integers(0, info.size - 1))] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="feats.h5"):
        _read_everything(path)


def test_hdf5_missing_and_incomplete_name_the_fix(tmp_path):
    FUZZED["hdf5 structure"] += 2
    with pytest.raises(DataError, match="not found"):
        open_features(tmp_path / "none.h5")
    w = FeatureWriter(tmp_path / "x.h5", "nus_wide", "Train", {"labels_81": 3})
    w.append(["a"], np.zeros((1, 196, 512), np.float32), {"labels_81": np.zeros((1, 3))})
    w.close()
    with pytest.raises(DataError, match="--resume"):
        open_features(tmp_path / "x.h5")  # only x.h5.partial exists


# ---------------------------------------------------------------------------------------------------
# Label lists and CSVs (TagList1k / Concepts81 / classes-trainable, AllTags 0/1 matrices,
# Open Images annotation CSV and class descriptions, top_400_unseen.csv)
# ---------------------------------------------------------------------------------------------------
_TEXTISH = st.binary(max_size=300) | st.text(alphabet=string.printable + "\u00e9\u4e2d\ufeff\x00", max_size=300).map(
    lambda s: s.encode("utf-8"))


@settings(max_examples=150, **FAST)
@given(blob=_TEXTISH)
def test_label_list_fuzz(tmp_path_factory, blob):
    FUZZED["label lists (TagList1k/Concepts81 style)"] += 1
    path = tmp_path_factory.mktemp("ll") / "TagList1k.txt"
    path.write_bytes(blob)

    def valid(labels):
        assert labels and all(isinstance(x, str) and x == x.strip() and x for x in labels)

    expect_lesa_error_or(valid, path, read_label_list, path)


@settings(max_examples=120, **FAST)
@given(blob=st.binary(max_size=200) | st.lists(st.sampled_from([b"0", b"1", b" ", b"\t", b"\n", b"\r\n", b"2", b"10"]),
                                              max_size=60).map(b"".join),
       n_cols=st.integers(1, 4))
def test_01_matrix_fuzz(tmp_path_factory, blob, n_cols):
    FUZZED["0/1 label matrices (AllTags1k, Labels_*)"] += 1
    path = tmp_path_factory.mktemp("m") / "AllTags1k.txt"
    path.write_bytes(blob)

    def valid(m):
        assert m.ndim == 2 and m.shape[1] == n_cols and set(np.unique(m)) <= {0, 1}

    expect_lesa_error_or(valid, path, read_01_matrix, path, n_cols)


_CSV_CELLS = st.sampled_from(["ImageID", "Source", "LabelName", "Confidence", "img1", "img2", "/m/a", "/m/b",
                              "0", "1", "0.5", "-1", "nan", "inf", "1e400", "", "\"", "x,y", "\x00", "\ufeff"])


@settings(max_examples=150, **FAST)
@given(rows=st.lists(st.lists(_CSV_CELLS, max_size=6), max_size=8), header=st.booleans(),
       garbage=st.binary(max_size=20))
def test_openimages_annotation_csv_fuzz(tmp_path_factory, rows, header, garbage):
    FUZZED["Open Images annotation CSV"] += 1
    path = tmp_path_factory.mktemp("oi") / "train-annotations-human-imagelabels.csv"
    lines = ([["ImageID", "Source", "LabelName", "Confidence"]] if header else []) + rows
    path.write_bytes("\n".join(",".join(r) for r in lines).encode("utf-8") + garbage)

    def build():
        rows_ = openimages.read_annotation_rows(path)
        return openimages.build_openimages_labels(rows_, ["/m/a", "/m/b"], None, None, str(path))

    def valid(labels):
        assert set(np.unique(labels.values)) <= {-1, 1}
        assert labels.offsets[-1] == labels.values.size
        labels.dense("labels", np.arange(len(labels.image_ids)))

    expect_lesa_error_or(valid, path, build)


@settings(max_examples=100, **FAST)
@given(blob=_TEXTISH | st.lists(st.integers(-5, 2**70).map(str), max_size=8).map(lambda r: "\n".join(r).encode()))
def test_top_unseen_and_class_descriptions_fuzz(tmp_path_factory, blob):
    FUZZED["top_400_unseen.csv / class-descriptions.csv"] += 1
    folder = tmp_path_factory.mktemp("top")
    top = folder / "top_400_unseen.csv"
    top.write_bytes(blob)

    def valid_rows(rows):
        assert rows.dtype == np.int64 and rows.size and rows.min() >= 0

    expect_lesa_error_or(valid_rows, top, read_top_unseen, top)
    desc = folder / "class-descriptions.csv"
    desc.write_bytes(blob)
    expect_lesa_error_or(lambda d: all(isinstance(k, str) for k in d), desc, openimages.read_class_descriptions, desc)


def test_label_file_readers_missing_files(tmp_path):
    FUZZED["top_400_unseen.csv / class-descriptions.csv"] += 3
    for reader in (read_top_unseen, openimages.read_class_descriptions, read_label_list):
        with pytest.raises(DataError, match="nope"):
            reader(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------------
# Pickles: code never runs; hostile structure is refused (byte flips: test_embeddings.py)
# ---------------------------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def _hostile_payloads(marker):
    evil = _RunsCode(marker)
    obj_arr = np.empty(2, dtype=object)
    obj_arr[0] = evil
    return {
        "os.system": evil,
        "pair with os.system": (np.zeros((2, 3), np.float32), evil),
        "object array holding os.system": obj_arr,
        "builtins.eval": _Eval(),
        "subprocess.Popen": type("P", (), {"__reduce__": lambda self: (__import__("subprocess").Popen,
                                                                        (["touch", str(marker)],))})(),
    }


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    for name, payload in _hostile_payloads(marker).items():
        FUZZED["hostile pickles"] += 1
        path = tmp_path / f"vectors_{protocol}.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        for reader in (load_pickle, load_vector_pair, load_label_ids_pickle):
            with pytest.raises(DataError, match=r"only numpy arrays.*refused") as info:
                reader(path)
            assert path.name in str(info.value), name
        assert not marker.exists(), f"{name}: code ran"


def test_pickle_declaring_a_huge_array_is_refused(tmp_path):
    """An ndarray whose pickled state claims 10^12 elements backed by 8 bytes: no allocation."""
    FUZZED["hostile pickles"] += 3
    reconstruct, args, state = np.ones((1,), np.float64).__reduce__()
    for shape in [(10**6, 10**6), (2**62,), (-1, 5)]:
        class Huge:
            def __reduce__(self, shape=shape):
                return (reconstruct, args, (state[0], shape, *state[2:]))

        path = tmp_path / "huge.pkl"
        path.write_bytes(pickle.dumps(Huge(), protocol=2))
        with pytest.raises(DataError, match="huge.pkl"):
            load_pickle(path)


@settings(max_examples=60, **FAST)
@given(opcodes=st.lists(st.sampled_from([b"(", b"t", b"l", b"d", b"N", b"I1\n", b"J\xff\xff\xff\x7f",
                                         b"\x8c\x05numpy\x8c\x07ndarray\x93", b"cos\nsystem\n", b"R", b"b",
                                         b"\x94", b"h\x00", b"}", b"]", b"e", b"s", b"0", b"2", b"\x88"]),
                        max_size=12),
       stop=st.booleans())
def test_random_opcode_streams(tmp_path_factory, opcodes, stop):
    FUZZED["hostile pickles"] += 1
    path = tmp_path_factory.mktemp("op") / "vectors.pkl"
    path.write_bytes(b"\x80\x04" + b"".join(opcodes) + (b"." if stop else b""))

    def valid(pair):
        assert len(pair) == 2 and all(v.ndim == 2 and np.isfinite(v).all() for v in pair)

    expect_lesa_error_or(valid, path, load_vector_pair, path, dim=None)


# ---------------------------------------------------------------------------------------------------
# GloVe text
# ---------------------------------------------------------------------------------------------------
_GLOVE_VALUES = st.sampled_from(["0.5", "-1", "1e3", "nan", "inf", "-inf", "1e39", "x", "", "0x10", "1,5",
                                 "3.4028235e38", "1e-50"])


@settings(max_examples=150, **FAST)
@given(lines=st.lists(st.tuples(st.sampled_from(["cat", "sky", "blue", "dog", "", " ", "cat\x00"]),
                                st.lists(_GLOVE_VALUES, max_size=5)), max_size=8),
       tail=st.binary(max_size=10), dim=st.sampled_from([None, 3]))
def test_glove_fuzz(tmp_path_factory, lines, tail, dim):
    FUZZED["GloVe text"] += 1
    path = tmp_path_factory.mktemp("glove") / "glove.6B.300d.txt"
    path.write_bytes("\n".join(" ".join([w, *v]) for w, v in lines).encode() + tail)

    def valid(got):
        assert got.vectors.shape[0] == 2 and got.vectors.shape[1] >= 1
        assert np.isfinite(got.vectors).all(), "NaN/inf vector accepted"
        if dim:
            assert got.vectors.shape[1] == dim

    expect_lesa_error_or(valid, path, vectors_from_glove, path, ["cat", "blue sky"], dim=dim)


def test_glove_empty_and_missing(tmp_path):
    FUZZED["GloVe text"] += 2
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt"):
        vectors_from_glove(tmp_path / "empty.txt", ["cat"])
    with pytest.raises(DataError, match="not found"):
        vectors_from_glove(tmp_path / "nope.txt", ["cat"])


# ---------------------------------------------------------------------------------------------------
# TOML configurations
# ---------------------------------------------------------------------------------------------------
_KEYS = st.sampled_from(["experiment.name", "experiment.task", "experiment.colour", "data.train", "data.preload",
                         "data.n_validation", "data.shuffle", "model.n_attention", "model.lamb_att_dist",
                         "model.global_pool", "model.dropout", "train.n_iters", "train.lr", "train.monitor",
                         "train.device", "train.eval_interval", "evaluate.k", "evaluate.top", "trian.n_iters",
                         "train", "data.chunk_mb", "train.batch_size"])
_VALUES = st.sampled_from(['"x"', "1", "-1", "0", "1.5", "nan", "inf", "true", '["a", 1]', "[3, 5]", "[]",
                           "{a = 1}", '"mean"', '"max"', '"cpu"', '"cuda:0"', '"mF1"', "2026-01-01", '"auto"',
                           "1e308", "9999999999999999999"])


@settings(max_examples=200, **FAST)
@given(items=st.lists(st.tuples(_KEYS, _VALUES), max_size=6), garbage=st.sampled_from(["", "[", "= 3", "\x00", "\xff"]))
def test_toml_config_fuzz(tmp_path_factory, items, garbage):
    FUZZED["TOML configs"] += 1
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "exp.toml"
    tables: dict = {}
    for key, value in items:
        table, _, name = key.partition(".")
        tables.setdefault(table, {})[name or "x"] = value
    text = "\n".join(f"[{t}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) for t, kv in tables.items())
    path.write_text(text + "\n" + garbage, encoding="utf-8", errors="surrogateescape") if garbage != "\xff" else \
        path.write_bytes(text.encode() + b"\n\xff")

    def valid(cfg):
        try:
            check_config(cfg)
        except ConfigError as exc:  # files are absent: must say which setting is wrong, not crash
            assert "data." in str(exc) or "train." in str(exc) or "evaluate." in str(exc) \
                or "experiment." in str(exc), str(exc)

    expect_lesa_error_or(valid, path, load_config, path)


def test_toml_unknown_key_and_wrong_type_name_the_fix(tmp_path):
    FUZZED["TOML configs"] += 3
    path = tmp_path / "exp.toml"
    path.write_text("[model]\nn_atention = 10\n")
    with pytest.raises(ConfigError, match=r"exp.toml.*unknown.*n_atention.*n_attention"):
        load_config(path)
    path.write_text("[train]\nlr = \"fast\"\n")
    with pytest.raises(ConfigError, match=r"exp.toml.*train.lr must be a number"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


# ---------------------------------------------------------------------------------------------------
# Native .pt checkpoints (truncation, flipped bytes, wrong format)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pt_bytes(tmp_path_factory):
    from lesa.model import LESA, LESAConfig

    torch.manual_seed(0)
    model = LESA(np.random.default_rng(0).random((5, 300)), np.random.default_rng(1).random((3, 300)),
                 LESAConfig(n_attention=2))
    path = save_checkpoint(tmp_path_factory.mktemp("pt") / "model.pt", model, include_rng=False)
    return path.read_bytes(), {k: v.clone() for k, v in model.state_dict().items()}


def _load_and_build(path):
    return load_checkpoint(path), load_model(path).model


@settings(max_examples=120, **FAST)
@given(data=st.data())
def test_pt_checkpoint_truncation_and_flips(pt_bytes, tmp_path_factory, data):
    FUZZED["native .pt checkpoints"] += 1
    good, state = pt_bytes
    blob = bytearray(good)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    for _ in range(data.draw(st.integers(0, 6), label="flips")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("ptf") / "model.pt"
    path.write_bytes(bytes(blob))

    def valid(result):
        payload, model = result
        # a damaged byte must not slip through as different weights: torch's zip reader checks CRCs
        # of the records it reads, so a checkpoint that loads has the saved weights exactly
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), f"silently different tensor {key}"

    expect_lesa_error_or(valid, path, _load_and_build, path)


def test_pt_wrong_formats(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world\n" * 10,
        "zip of text": _zip_bytes({"archive/data.pkl": b"not a pickle"}),
        "tf index": b"\x00" * 48 + bytes.fromhex("57fb808b247547db"),
    }
    for name, blob in cases.items():
        FUZZED["native .pt checkpoints"] += 1
        path = tmp_path / "model.pt"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match="model.pt"):
            load_checkpoint(path)
    marker = tmp_path / "PWNED"
    for payload in ({"format": "lesa-checkpoint", "x": _RunsCode(marker)}, _RunsCode(marker)):
        FUZZED["native .pt checkpoints"] += 1
        torch.save(payload, tmp_path / "model.pt")
        with pytest.raises(CheckpointError, match="model.pt"):
            load_checkpoint(tmp_path / "model.pt")
        assert not marker.exists(), "code ran while loading a checkpoint"
    for payload in ([1, 2], {"format": "lesa-checkpoint", "format_version": 99},
                    {"format": "lesa-checkpoint", "format_version": 1, "model_config": {}, "model_state": {}},
                    {"format": "lesa-checkpoint", "format_version": 1, "model_config": {"n_attention": "x"},
                     "model_state": {"init_vecs": torch.ones(2, 3), "unseen_vecs": torch.ones(1, 3),
                                     "W": torch.ones(3, 3)}}):
        FUZZED["native .pt checkpoints"] += 1
        torch.save(payload, tmp_path / "model.pt")
        with pytest.raises(CheckpointError, match="model.pt|checkpoint"):
            _load_and_build(tmp_path / "model.pt")


def _zip_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()
