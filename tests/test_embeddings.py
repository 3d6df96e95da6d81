"""Label vectors: the original pickles (restricted unpickler), GloVe text, label lists."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lesa.datasets.embeddings import (label_words, load_label_ids_pickle, load_pickle, load_vector_pair,
                                      read_label_list, save_vector_pair, vectors_from_glove)
from lesa.errors import DataError, LesaError, ShapeError


def test_real_nus_wide_pickle(shared_data):
    vecs_1k, vecs_81 = load_vector_pair(shared_data("nus_wide", "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300"))
    assert vecs_1k.shape == (1000, 300) and vecs_81.shape == (81, 300)
    assert vecs_1k.dtype == np.float32 and np.isfinite(vecs_1k).all()


def test_real_openimages_unseen_ids(shared_data):
    ids = load_label_ids_pickle(shared_data("openimages_2018_04", "unseen_labels.pkl"))
    assert len(ids) == 2594 and ids[0].startswith("/m/")


def test_real_label_lists_crlf(shared_data):
    tags = read_label_list(shared_data("nus_wide", "TagList1k.txt"))
    concepts = read_label_list(shared_data("nus_wide", "Concepts81.txt"))
    assert len(tags) == 1000 and len(concepts) == 81
    assert not any("\r" in t for t in tags + concepts)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run > /dev/null",))


def test_pickle_with_code_is_refused_without_running(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((np.zeros((2, 3)), _Evil())))
    with pytest.raises(DataError, match="only numpy arrays"):
        load_pickle(path)


def test_roundtrip_and_shape_errors(tmp_path):
    save_vector_pair(tmp_path / "v.pkl", np.ones((4, 300)), np.zeros((2, 300)))
    a, b = load_vector_pair(tmp_path / "v.pkl")
    assert a.shape == (4, 300) and b.shape == (2, 300)
    with pytest.raises(ShapeError, match="dimensions"):
        load_vector_pair(tmp_path / "v.pkl", dim=50)
    (tmp_path / "one.pkl").write_bytes(pickle.dumps(np.ones((3, 3))))
    with pytest.raises(DataError, match="pair"):
        load_vector_pair(tmp_path / "one.pkl", dim=None)
    (tmp_path / "nan.pkl").write_bytes(pickle.dumps((np.full((2, 3), np.nan), np.ones((1, 3)))))
    with pytest.raises(DataError, match="NaN"):
        load_vector_pair(tmp_path / "nan.pkl", dim=None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_pickles_end_in_lesa_errors(tmp_path, data):
    good = pickle.dumps((np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)), protocol=3)
    blob = bytearray(good)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if blob:
            blob[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pkl"
    path.write_bytes(bytes(blob))
    try:
        a, b = load_vector_pair(path, dim=None)
    except LesaError:
        return
    assert a.ndim == 2 and b.ndim == 2  # a flip that still decodes must give valid matrices


def test_glove_multiword_average_and_missing(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 1 0 0\nsky 0 1 0\nblue 0 0 1\nthe 5 5 5\n")
    got = vectors_from_glove(glove, ["cat", "blue sky", "cat_unicorn", "sky/blue"])
    assert got.vectors.shape == (4, 3)
    np.testing.assert_allclose(got.vectors[1], [0, 0.5, 0.5])
    np.testing.assert_allclose(got.vectors[2], [1, 0, 0])
    assert got.missing_words == {"cat_unicorn": ["unicorn"]}
    assert "unicorn" in got.report()
    with pytest.raises(DataError, match="'unicorn'; .*--allow-missing"):
        vectors_from_glove(glove, ["cat", "unicorn"])
    allowed = vectors_from_glove(glove, ["cat", "unicorn", "&"], allow_missing_labels=True)
    assert not allowed.vectors[1:].any() and allowed.unknown_labels == ["unicorn", "&"]
    assert "zero vectors" in allowed.report() and "(no word)" in allowed.report()
    with pytest.raises(DataError, match="none of the words"):
        vectors_from_glove(glove, ["unicorn"], allow_missing_labels=True)
    (tmp_path / "bad.txt").write_text("cat 1 0 0\nsky 0 x 0\n")
    with pytest.raises(DataError, match="line 2"):
        vectors_from_glove(tmp_path / "bad.txt", ["sky"])
    assert label_words("Swimming-Pool & Spa") == ["swimming", "pool", "spa"]


def test_label_list_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_label_list(tmp_path / "none.txt")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(DataError, match="line 2"):
        read_label_list(tmp_path / "gap.txt")


def test_build_vectors_command(tmp_path, capsys):
    from lesa.cli import main

    (tmp_path / "glove.txt").write_text("cat 1 0\ndog 0 1\nhot 1 1\n")
    (tmp_path / "tags.txt").write_text("cat\r\nhot dog\r\n")
    (tmp_path / "ids.pkl").write_bytes(pickle.dumps(np.array(["/m/1"], dtype=object), protocol=2))
    (tmp_path / "names.csv").write_text('/m/1,"Dog"\n')
    assert main(["build-vectors", "--glove", str(tmp_path / "glove.txt"), "--first", str(tmp_path / "tags.txt"),
                 "--second", str(tmp_path / "ids.pkl"), "--names", str(tmp_path / "names.csv"),
                 "--out", str(tmp_path / "v.pkl")]) == 0
    a, b = load_vector_pair(tmp_path / "v.pkl", dim=2)
    np.testing.assert_allclose(a, [[1, 0], [0.5, 1]])
    np.testing.assert_allclose(b, [[0, 1]])
    # a label no word of which is in the file: refused, naming the flag that allows it
    (tmp_path / "tags.txt").write_text("cat\nunicorn\n")
    argv = ["build-vectors", "--glove", str(tmp_path / "glove.txt"), "--first", str(tmp_path / "tags.txt"),
            "--second", str(tmp_path / "tags.txt"), "--out", str(tmp_path / "w.pkl")]
    assert main(argv) == 1 and "--allow-missing" in capsys.readouterr().err
    assert main(argv + ["--allow-missing"]) == 0
    assert not load_vector_pair(tmp_path / "w.pkl", dim=2)[0][1].any()
