"""`lesa convert-tfrecord`: the original's TFRecord feature files -> the HDF5 feature layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from lesa.cli import main
from lesa.datasets.h5 import open_features, partial_path
from lesa.datasets.tfrecord_source import convert_tfrecords, split_from_filename
from lesa.errors import TFRecordError
from tf_writers import encode_example, write_tfrecords

GOLDEN = {  # expected.npz prefix -> (file, --dataset, split from the name, {h5 label: npz key})
    "nus": ("NUS_WIDE_Test_full_feature_ZLIB.tfrecords", "nus-wide", "Test",
            {"labels_1k": "label_1k", "labels_81": "label_81"}),
    "oi_train": ("train_feature_2018_04_ZLIB.tfrecords", "openimages", "train", {"labels": "label"}),
    "oi_test": ("OI_seen_unseen_test_feature_2018_04_ZLIB.tfrecords", "openimages", "test",
                {"seen_labels": "seen_label", "unseen_labels": "unseen_label"}),
}


def _oi_records(n, seed=0, n_classes=20):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        feature = rng.random((196, 512), dtype=np.float32)
        label = rng.integers(-1, 2, n_classes).astype(np.int32)
        out.append((f"id{i:04d}", feature, label))
    return out


def _write_oi(path, records):
    write_tfrecords(path, [encode_example({"img_id": i.encode(), "feature": f.tobytes(), "label": lab.tobytes()})
                           for i, f, lab in records])


def _assert_h5(path, records, dtype=np.float32):
    with open_features(path) as split:
        assert split.img_ids == [r[0] for r in records]
        feats, labels = split.read(np.arange(len(records)))
    for k, (_, feature, label) in enumerate(records):
        if dtype == np.float32:
            assert np.array_equal(feats[k], feature)
        else:
            assert np.array_equal(feats[k], feature.astype(np.float16).astype(np.float32))
        assert np.array_equal(labels["labels"][k], label)


def test_synthetic_conversion_batches_and_float16(tmp_path):
    records = _oi_records(7)
    src = tmp_path / "validation_feature_2018_04_ZLIB.tfrecords"
    _write_oi(src, records)
    out = tmp_path / "val.h5"
    summary = convert_tfrecords([src], out, dataset="openimages", batch_size=3, progress=False)
    assert summary.n_records == 7 and summary.label_dims == {"labels": 20}
    _assert_h5(out, records)
    with h5py.File(out) as f:
        assert f.attrs["split"] == "validation" and f.attrs["dataset"] == "openimages"
        assert bool(f.attrs["complete"])
    half = tmp_path / "val16.h5"
    assert main(["convert-tfrecord", "--dataset", "openimages", "--dtype", "float16", "--no-progress",
                 str(src), str(src), str(half)]) == 0
    with h5py.File(half) as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (14, 196, 512)
    _assert_h5(half, records + records, dtype=np.float16)


def test_corrupted_input_keeps_earlier_records_then_resume(tmp_path):
    records = _oi_records(6, seed=1)
    src = tmp_path / "train_feature_ZLIB.tfrecords"
    _write_oi(src, records)
    good = src.read_bytes()
    src.write_bytes(good[: int(len(good) * 0.6)])
    out = tmp_path / "train.h5"
    with pytest.raises(TFRecordError, match=r"record \d") as info:
        convert_tfrecords([src], out, dataset="openimages", batch_size=2, progress=False)
    assert not out.exists()  # never under the final name
    with h5py.File(partial_path(out)) as f:
        n_kept = int(f.attrs["n_written"])
        assert not bool(f.attrs["complete"])
        assert [v.decode() for v in f["img_ids"][:n_kept]] == [r[0] for r in records[:n_kept]]
    assert f"record {n_kept}" in str(info.value)
    assert n_kept >= 2
    # through the CLI the same failure is a clean exit code 1
    assert main(["convert-tfrecord", "--dataset", "openimages", "--no-progress", "--resume",
                 str(src), str(out)]) == 1
    src.write_bytes(good)  # the input is fixed: resume finishes the file
    summary = convert_tfrecords([src], out, dataset="openimages", resume=True, progress=False)
    assert summary.n_skipped == n_kept and summary.n_records == 6 - n_kept
    _assert_h5(out, records)


def test_argument_errors(tmp_path, capsys):
    records = _oi_records(1)
    src = tmp_path / "features.tfrecords"
    _write_oi(src, records)
    assert main(["convert-tfrecord", "--dataset", "openimages", str(tmp_path / "o.h5")]) == 1  # no input
    assert "needs the TFRecord file(s)" in capsys.readouterr().err
    assert main(["convert-tfrecord", "--dataset", "nus-wide", "--split", "x", str(src), str(tmp_path / "o.h5")]) == 1
    assert "pass the matching --dataset" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()
    assert split_from_filename("NUS_WIDE_Train_full_feature_ZLIB.tfrecords") == "Train"
    assert split_from_filename("OI_seen_unseen_test_feature_2018_04_ZLIB.tfrecords") == "test"
    assert split_from_filename("validation_feature_2018_04_ZLIB.tfrecords") == "validation"
    assert split_from_filename("features.tfrecords") is None


def test_split_is_metadata_a_renamed_file_converts(tmp_path, capsys):
    records = _oi_records(3, seed=2)
    src = tmp_path / "features.tfrecords"  # a name that tells nothing
    _write_oi(src, records)
    # with an output: the split is stored as unknown, the input's name always
    summary = convert_tfrecords([src, src], tmp_path / "o.h5", dataset="openimages", progress=False)
    assert summary.split == "unknown"
    with h5py.File(tmp_path / "o.h5") as f:
        assert f.attrs["split"] == "unknown" and f.attrs["source_files"] == "features.tfrecords\nfeatures.tfrecords"
    # without one it has nowhere to go: the message names both fixes, nothing is written
    data = tmp_path / "data"
    assert main(["convert-tfrecord", "--dataset", "openimages", "--data-dir", str(data), str(src)]) == 1
    err = capsys.readouterr().err
    assert "--split NAME" in err and "OUT.h5" in err and not data.exists()
    # --split: into the data folder, where the configuration looks
    assert main(["convert-tfrecord", "--dataset", "openimages", "--split", "validation", "--no-progress",
                 "--data-dir", str(data), str(src)]) == 0
    out = data / "features" / "OpenImages_validation.h5"
    _assert_h5(out, records)
    next_line = capsys.readouterr().out.splitlines()[-1]
    assert next_line == f"next: lesa train openimages_train --data-dir {data}"


def _write_oi_test(path, n, seed=0):
    rng = np.random.default_rng(seed)
    write_tfrecords(path, [encode_example({
        "img_id": f"t{i}".encode(), "feature": rng.random((196, 512), dtype=np.float32).tobytes(),
        "seen_label": rng.integers(-1, 2, 12).astype(np.int32).tobytes(),
        "unseen_label": rng.integers(-1, 2, 5).astype(np.int32).tobytes()}) for i in range(n)])


def test_default_output_and_the_next_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_oi_test(tmp_path / "renamed.tfrecords", 2)  # the records tell: Open Images test
    assert main(["convert-tfrecord", "--dataset", "openimages", "--no-progress", "renamed.tfrecords"]) == 0
    out = capsys.readouterr().out.splitlines()
    with open_features(tmp_path / "data" / "features" / "OpenImages_test.h5") as data:
        assert data.attrs["split"] == "test" and data.attrs["source_files"] == "renamed.tfrecords"
        assert data.label_dims == {"seen_labels": 12, "unseen_labels": 5}
    # no training file yet: evaluating is what the test split is good for
    assert out[-1] == "next: lesa evaluate openimages_evaluate --checkpoint CKPT --data-dir data"
    _write_oi(tmp_path / "train_feature_2018_04_ZLIB.tfrecords", _oi_records(2))
    assert main(["convert-tfrecord", "--dataset", "openimages", "--no-progress",
                 "train_feature_2018_04_ZLIB.tfrecords"]) == 0
    assert (tmp_path / "data" / "features" / "OpenImages_train.h5").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == "next: lesa train openimages_train --data-dir data"
    # an explicit --split wins over the records; an explicit output gets the flag that points at it
    assert main(["convert-tfrecord", "--dataset", "openimages", "--no-progress", "--split", "validation",
                 "renamed.tfrecords", "mine.h5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "next: lesa train openimages_train --data-dir data --validation mine.h5"
    with open_features(tmp_path / "mine.h5") as data:
        assert data.attrs["split"] == "validation"


@pytest.mark.parametrize("prefix", sorted(GOLDEN))
def test_golden_conversion_exact(golden_root, tmp_path, prefix):
    root = golden_root("tfrecord")
    expected = np.load(root / "expected.npz")
    name, dataset, split, label_keys = GOLDEN[prefix]
    out = tmp_path / f"{prefix}.h5"
    assert main(["convert-tfrecord", "--dataset", dataset, "--no-progress", str(root / name), str(out)]) == 0
    ids = [str(i) for i in expected[f"{prefix}/img_ids"]]
    with open_features(out) as data:
        assert data.img_ids == ids
        assert data.attrs["split"] == split and data.attrs["source_files"] == name
        feats, labels = data.read(np.arange(len(ids)))
    for i in range(len(ids)):
        assert np.array_equal(feats[i], expected[f"{prefix}/{i}/feature"])
        for h5_name, key in label_keys.items():
            assert labels[h5_name].dtype == np.int8
            assert np.array_equal(labels[h5_name][i], expected[f"{prefix}/{i}/{key}"])


def test_golden_flipped_byte(golden_root, tmp_path):
    root = golden_root("tfrecord")
    name = GOLDEN["oi_train"][0]
    raw = bytearray((root / name).read_bytes())
    raw[int(len(raw) * 0.5)] ^= 0x80
    src = tmp_path / name
    src.write_bytes(bytes(raw))
    out = tmp_path / "oi.h5"
    with pytest.raises(TFRecordError, match=r"record (\d)") as info:
        convert_tfrecords([src], out, dataset="openimages", batch_size=1, progress=False)
    bad = int(str(info.value).split("record ")[1].split(" ")[0])
    expected = np.load(root / "expected.npz")
    with h5py.File(partial_path(out)) as f:
        assert int(f.attrs["n_written"]) == bad > 0
        assert [v.decode() for v in f["img_ids"][:bad]] == [str(i) for i in expected["oi_train/img_ids"][:bad]]
        assert np.array_equal(f["features"][bad - 1], expected[f"oi_train/{bad - 1}/feature"])


def test_golden_nus_relative_ids(golden_root, tmp_path):
    root = golden_root("tfrecord")
    expected = np.load(root / "expected.npz")
    out = tmp_path / "nus.h5"
    assert main(["convert-tfrecord", "--dataset", "nus-wide", "--img-ids", "relative", "--no-progress",
                 str(root / GOLDEN["nus"][0]), str(out)]) == 0
    with open_features(out) as data:
        ids = data.img_ids
        assert data.attrs["img_id_style"] == "relative"
    assert ids == [str(i).split("Flickr/")[1] for i in expected["nus/img_ids"]]
    assert ids[0] == "actor/0000_749601068.jpg"
