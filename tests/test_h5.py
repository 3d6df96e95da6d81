"""HDF5 feature-file layout: write, resume after interruption, read one file or shards as one."""
from __future__ import annotations

import numpy as np
import pytest

from lesa.datasets.h5 import FeatureFile, FeatureWriter, open_features, partial_path, read_split_files
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
    got = np.concatenate([f for f, _ in split.iter_batches(2)])
    np.testing.assert_array_equal(got, np.concatenate([b1[1], b2[1]]))


def test_float16(tmp_path):
    path = tmp_path / "x.h5"
    ids, feats, labels = batch(0, 2)
    with FeatureWriter(path, "nus_wide", "Train", DIMS, dtype="float16") as w:
        w.append(ids, feats, labels)
        w.finish()
    split = open_features(path)
    assert split.feature_dtype == np.float16
    np.testing.assert_allclose(split.read_features([0, 1]), feats, rtol=1e-3, atol=1e-3)


def test_interrupted_file_is_not_complete_and_resumes(tmp_path):
    path = tmp_path / "train.h5"
    b1, b2, b3 = batch(0, 2), batch(2, 2), batch(4, 1)
    w = FeatureWriter(path, "nus_wide", "Train", DIMS, attrs={"backbone": "vgg19_conv54"})
    w.append(*b1)
    w.append(*b2)
    # simulate a kill in the middle of the next batch: rows grown but counter not advanced
    w._file["features"].resize(6, axis=0)
    w.close()
    with pytest.raises(DataError, match="--resume"):
        FeatureFile(path)
    with pytest.raises(DataError, match="incomplete"):
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
    import h5py
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
    split = read_split_files(str(tmp_path / "s.rank*.h5"))
    assert len(split) == 5
    assert split.img_ids == batches[0][0] + batches[1][0]
    np.testing.assert_array_equal(split.read_features([4, 1]), np.stack([batches[1][1][1], batches[0][1][1]]))
    (tmp_path / "s.rank1.h5").unlink()
    with pytest.raises(DataError, match="missing"):
        read_split_files(str(tmp_path / "s.rank*.h5"))


def test_pickles_by_path(tmp_path):
    import pickle

    path = tmp_path / "p.h5"
    b = batch(0, 2)
    write(path, [b])
    split = open_features(path)
    copy = pickle.loads(pickle.dumps(split))
    assert len(copy) == 2 and copy.img_ids == b[0]
    np.testing.assert_array_equal(copy.read_features([1]), b[1][1:])


WRITER = """
import sys, time, numpy as np
from lesa.datasets.h5 import FeatureWriter
w = FeatureWriter(sys.argv[1], "x", "Train", {"labels": 7}, resume=True)
i = w.n_written
while i < 300:
    ids = [f"id{j}" for j in range(i, i + 3)]
    feats = np.stack([np.full((196, 512), j, np.float32) for j in range(i, i + 3)])
    w.append(ids, feats, {"labels": np.full((3, 7), i % 3 - 1, np.int8)})
    i += 3
    time.sleep(0.02)
w.finish()
"""


@pytest.mark.slow
def test_kill9_during_appends_then_resume(tmp_path):
    """Repeated kill -9 of a writer: each resume continues, the final file has every row once.
    (Variable-length ids in a heap damaged by a kill used to fail the next write.)"""
    import random
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "k.h5"
    rng = random.Random(1)
    kills = 0
    while not path.exists() and kills < 8:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.8, 1.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        assert b"Error" not in err, err.decode()[-800:]
    assert kills >= 2
    if not path.exists():
        subprocess.run([sys.executable, "-c", WRITER, str(path)], check=True)
    with open_features(path) as split:
        assert split.img_ids == [f"id{j}" for j in range(300)]
        feats = split.read_features(range(0, 300, 29))
        assert all(np.all(feats[k] == 29 * k) for k in range(len(feats)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chunks_written_with_our_checksums_are_the_filters_bytes(tmp_path, dtype):
    """FeatureWriter.append(checksums=fletcher32_of_records(...)) and append_chunks(record_chunks(...))
    (what the GPU extraction builds) store byte for byte what HDF5's fletcher32 filter stores (so
    reading verifies them), including all-zero and all-0xFF records."""
    import h5py
    import torch

    from lesa.datasets.h5 import fletcher32_of_records, record_chunks

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((12, 196, 512)).astype(dtype)
    feats[3] = 0
    feats[4].view(np.uint8)[:] = 0xFF  # 16-bit words 0xFFFF: sums congruent to 0 mod 65535
    labels = rng.integers(-1, 2, (12, 5)).astype(np.int8)
    files = []
    for how in ("filter", "checksums", "chunks"):
        path = tmp_path / f"{how}.h5"
        with FeatureWriter(path, "nus_wide", "Test", {"labels_81": 5}, dtype=dtype) as writer:
            for i in (0, 7):
                part = feats[i:i + 7][: 12 - i]
                ids, part_labels = [str(i + j) for j in range(len(part))], {"labels_81": labels[i:i + len(part)]}
                sums = fletcher32_of_records(torch.from_numpy(part))
                if how == "chunks":
                    writer.append_chunks(ids, record_chunks(torch.from_numpy(part), sums), part_labels)
                else:
                    writer.append(ids, part, part_labels, checksums=sums if how == "checksums" else None)
            writer.append([], np.zeros((0, 196, 512), dtype), {"labels_81": labels[:0]},
                          checksums=fletcher32_of_records(torch.zeros(0, 196, 512)))  # an empty batch: nothing
            with pytest.raises(ShapeError, match="uint8"):  # chunks of another dtype's records
                writer.append_chunks(["x"], np.zeros((1, 196 * 512 * 3 + 4), np.uint8), {"labels_81": labels[:1]})
            writer.finish()
        files.append(path)
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b, h5py.File(files[2]) as c:
        for i in range(12):
            chunk = a["features"].id.read_direct_chunk((i, 0, 0))
            assert chunk == b["features"].id.read_direct_chunk((i, 0, 0)) == c["features"].id.read_direct_chunk((i, 0, 0))
        np.testing.assert_array_equal(c["features"][:], feats)
    for path in files[1:]:
        with open_features(path) as split:
            np.testing.assert_array_equal(split.read(np.arange(12))[0], feats.astype(np.float32))


KILLED_DURING_CREATION = """
import os, signal, sys
from lesa.datasets.h5 import FeatureWriter
real = FeatureWriter._create
def half_then_killed(self, attrs, label_names):
    self._file.create_dataset("features", shape=(0, 196, 512), maxshape=(None, 196, 512), dtype="f4")
    self._file.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 before the other arrays exist
FeatureWriter._create = half_then_killed
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
