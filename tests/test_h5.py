"""HDF5 feature-file layout: write, resume after interruption, read one file or shards as one."""
from __future__ import annotations

import numpy as np
import pytest

import h5py

from lesa.datasets.h5 import FeatureFile, FeatureWriter, open_features, partial_path
from lesa.errors import DataError, ShapeError

DIMS = {"labels_1k": 10, "labels_81": 3}


def batch(start, n, rng=None):
    rng = rng or np.random.default_rng(start)
    ids = [f"img_{i:04d}.jpg" for i in range(start, start + n)]
    feats = rng.standard_normal((n, 196, 512)).astype(np.float32)
    labels = {k: rng.integers(-1, 2, size=(n, d)).astype(np.int8) for k, d in DIMS.items()}
    return ids, feats, labels


def write(path, batches, **kw):
    with FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "vgg19_conv54"}, **kw) as w:
        for b in batches:
            w.append(*b)
        w.finish()


def test_roundtrip(tmp_path):
    path = tmp_path / "train.h5"
    b1, b2 = batch(0, 3), batch(3, 2)
    write(path, [b1, b2])
    assert not partial_path(path).exists()
    with FeatureFile(path) as f:
        assert len(f) == 5 and f.complete
        assert f.img_ids == b1[0] + b2[0]
        assert f.attrs["dataset"] == "nus_wide" and f.attrs["backbone"] == "vgg19_conv54"
        np.testing.assert_array_equal(f.features[3:5], b2[1])
        assert f.labels["labels_81"].dtype == np.int8
    split = open_features(path)
    feats, labels = split.read([4, 0, 4])
    np.testing.assert_array_equal(feats[0], b2[1][1])
    np.testing.assert_array_equal(feats[1], b1[1][0])
    np.testing.assert_array_equal(labels["labels_1k"][2], b2[2]["labels_1k"][1])
    np.testing.assert_array_equal(split.read_features(range(5), dtype=None), np.concatenate([b1[1], b2[1]]))
    np.testing.assert_array_equal(split.read_features([2, 3, 4]), np.concatenate([b1[1], b2[1]])[2:])
    np.testing.assert_array_equal(split.read_labels("labels_81", [1, 3]),
                                  np.stack([b1[2]["labels_81"][1], b2[2]["labels_81"][1]]))


def test_float16(tmp_path):
    path = tmp_path / "x.h5"
    ids, feats, labels = batch(0, 2)
    with FeatureWriter(path, "nus_wide", "Train", DIMS, dtype="float16") as w:
        w.append(ids, feats, labels)
        w.finish()
    split = open_features(path)
    assert split.feature_dtype == np.float16
    np.testing.assert_allclose(split.read_features([0, 1]), feats, rtol=1e-3, atol=1e-3)


class Killed(BaseException):
    pass


def test_interrupted_file_is_not_complete_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "train.h5"
    b1, b2, b3 = batch(0, 2), batch(2, 2), batch(4, 1)
    w = FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "vgg19_conv54"})
    w.append(*b1)
    w.append(*b2)
    real = h5py.AttributeManager.__setitem__

    def killed_at_the_counter(self, key, value):  # the next batch's rows are written, not counted
        if key == "n_written":
            raise Killed
        real(self, key, value)

    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", killed_at_the_counter)
    with pytest.raises(Killed):
        w.append(*batch(4, 3))
    monkeypatch.undo()
    w.close()
    with pytest.raises(DataError, match="--resume"):
        FeatureFile(path)
    with pytest.raises(DataError, match="incomplete.*after 4 images.*--resume"):
        FeatureFile(partial_path(path))
    with FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "vgg19_conv54"}, resume=True) as w:
        assert w.n_written == 4 and w.done_ids == b1[0] + b2[0]
        w.append(*b3)
        w.finish()
    ref = tmp_path / "ref.h5"
    write(ref, [b1, b2, b3])
    a, b = open_features(path), open_features(ref)
    assert a.img_ids == b.img_ids
    np.testing.assert_array_equal(a.read_features(range(5)), b.read_features(range(5)))


def test_a_file_lesa_did_not_write_is_told_apart(tmp_path):
    """Without the 'complete' attribute a file is not called interrupted: the error says what the
    layout must be and how to make one."""
    path = tmp_path / "mine.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((2, 196, 512), np.float32)
        f["img_ids"] = np.array([b"a", b"b"])
    with pytest.raises(DataError) as info:
        FeatureFile(path)
    message = str(info.value)
    assert "not a lesa feature file" in message and "complete=True" in message and "lesa extract" in message
    assert "--resume" not in message and "interrupted" not in message
    with h5py.File(path, "a") as f:  # the same arrays marked complete: read as they are
        f.attrs["complete"] = True
    with open_features(path) as split:
        assert split.img_ids == ["a", "b"] and split.label_dims == {}


def test_numeric_ids_of_a_users_own_file_read_as_strings(tmp_path):
    path = tmp_path / "mine.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((3, 196, 512), np.float32)
        f["img_ids"] = np.arange(3)
        f["labels"] = np.zeros((3, 2), np.int8)
        f["label_names/labels"] = np.array([7, 8])
        f.attrs["complete"] = True
    with open_features(path) as split:
        assert split.img_ids == ["0", "1", "2"] and split.label_names == {"labels": ["7", "8"]}


def test_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "t.h5"
    w = FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "vgg19_conv54"})
    w.append(*batch(0, 1))
    w.close()
    with pytest.raises(DataError, match="backbone"):
        FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "other"}, resume=True)


def test_bad_inputs(tmp_path):
    path = tmp_path / "t.h5"
    with FeatureWriter(path, "nus_wide", "Train", DIMS) as w:
        ids, feats, labels = batch(0, 2)
        with pytest.raises(ShapeError):
            w.append(ids, feats[:, :100], labels)
        with pytest.raises(DataError):
            w.append(ids, feats, {"labels_1k": labels["labels_1k"] * 2, "labels_81": labels["labels_81"]})
        w.finish()
    with pytest.raises(DataError, match="already exists"):
        FeatureWriter(path, "nus_wide", "Train", DIMS)
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError):
        FeatureFile(bogus)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["features"] = np.zeros((2, 49, 512), np.float32)
        f["img_ids"] = np.array([b"a", b"b"])
        f.attrs["complete"] = True
    with pytest.raises(ShapeError, match="196, 512"):
        FeatureFile(wrong)
    with pytest.raises(DataError, match="not found"):
        FeatureFile(tmp_path / "nope.h5")


def test_shards_read_as_one(tmp_path):
    batches = [batch(0, 3), batch(3, 2)]
    for rank, b in enumerate(batches):
        with FeatureWriter(tmp_path / f"s.rank{rank}.h5", "nus_wide", "Train", DIMS,
                           attrs={"shard_rank": rank, "shard_world_size": 2}) as w:
            w.append(*b)
            w.finish()
    split = open_features(str(tmp_path / "s.rank*.h5"))
    assert len(split) == 5
    assert split.img_ids == batches[0][0] + batches[1][0]
    np.testing.assert_array_equal(split.read_features([4, 1]), np.stack([batches[1][1][1], batches[0][1][1]]))
    (tmp_path / "s.rank1.h5").unlink()
    with pytest.raises(DataError, match="missing"):
        open_features(str(tmp_path / "s.rank*.h5"))


def test_pickles_by_path(tmp_path):
    import pickle

    path = tmp_path / "p.h5"
    b = batch(0, 2)
    write(path, [b])
    split = open_features(path)
    copy = pickle.loads(pickle.dumps(split))
    assert len(copy) == 2 and copy.img_ids == b[0]
    np.testing.assert_array_equal(copy.read_features([1]), b[1][1:])


# in a child process: kill -9 just before its KILL_AT-th write into an HDF5 array
KILL_AT_WRITE = """
import os, signal, h5py
calls, real_write = 0, h5py.Dataset.__setitem__
def counted_write(self, key, value):
    global calls
    calls += 1
    if calls == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(self, key, value)
h5py.Dataset.__setitem__ = counted_write
"""
# 5 writes per batch of 3 (id bytes, id ends, ids, features, labels); KILL_AT -1: in finish(),
# just before the file is renamed
WRITER = """
import os, signal, sys
import numpy as np
from lesa.datasets.h5 import FeatureWriter
KILL_AT = int(sys.argv[2])
""" + KILL_AT_WRITE + """
if KILL_AT < 0:
    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
w = FeatureWriter(sys.argv[1], "x", "Train", {"labels": 7}, resume=True)
i = w.n_written
while i < 300:
    ids = [f"id{j}" for j in range(i, i + 3)]
    feats = np.stack([np.full((196, 512), j, np.float32) for j in range(i, i + 3)])
    w.append(ids, feats, {"labels": np.full((3, 7), i // 3 % 3 - 1, np.int8)})
    i += 3
w.finish()
"""


@pytest.mark.slow
def test_kill9_during_appends_then_resume(tmp_path):
    """kill -9 inside each kind of array write and inside finish(), each followed by a resume: the
    final file has every row once."""
    import subprocess
    import sys

    path = tmp_path / "k.h5"
    # the 1st batch's id bytes, the 8th's ids, the 22nd's id ends, the 37th's features, the 32nd's
    # labels; in finish (-1); no kill (0): the run finishes
    for kill_at in ["1", "38", "107", "184", "160", "-1", "0"]:
        proc = subprocess.run([sys.executable, "-c", WRITER, str(path), kill_at], capture_output=True)
        assert proc.returncode == (0 if kill_at == "0" else -9), proc.stderr.decode()[-800:]
        assert path.exists() == (kill_at == "0")
    with open_features(path) as split:
        assert split.img_ids == [f"id{j}" for j in range(300)]
        feats, labels = split.read(range(0, 300, 29))
    rows = np.arange(0, 300, 29)
    assert all(np.all(feats[k] == row) for k, row in enumerate(rows))
    assert all(np.all(labels["labels"][k] == row // 3 % 3 - 1) for k, row in enumerate(rows))


KILLED_DURING_CREATION = """
import os, signal, sys
import h5py
from lesa.datasets.h5 import FeatureWriter
real = h5py.Group.create_dataset
def killed_after_the_first(self, *args, **kwargs):
    real(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 before the other arrays exist
h5py.Group.create_dataset = killed_after_the_first
FeatureWriter(sys.argv[1], "x", "Train", {"labels": 7}, resume=True)
"""


def test_kill_during_file_creation_leaves_nothing_that_blocks_resume(tmp_path):
    """A writer killed while it creates the empty file (before any record) must not leave a
    partial file that --resume refuses ("no image-id arrays"): the next run starts afresh."""
    import subprocess
    import sys

    path = tmp_path / "c.h5"
    proc = subprocess.run([sys.executable, "-c", KILLED_DURING_CREATION, str(path)], capture_output=True)
    assert proc.returncode == -9
    assert not partial_path(path).exists()
    assert list(tmp_path.glob("c.h5.partial.tmp-*"))  # the half-built file, under a temporary name
    with FeatureWriter(path, "x", "Train", {"labels": 7}, resume=True) as w:
        assert w.n_written == 0
        w.append(["a"], np.zeros((1, 196, 512), np.float32), {"labels": np.zeros((1, 7), np.int8)})
        w.finish()
    assert not list(tmp_path.glob("c.h5.partial.tmp-*"))  # cleaned up by the next run
    with open_features(path) as split:
        assert split.img_ids == ["a"]


def test_a_failed_creation_leaves_no_file(tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(DataError, match="label_names"):
        FeatureWriter(path, "x", "Train", {"labels": 2}, label_names={"labels": ["only one"]})
    assert list(tmp_path.iterdir()) == []
