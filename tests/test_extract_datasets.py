"""End to end on miniature NUS-WIDE and Open Images trees built here: labels, skips, ids, resume, shards.

The trees use the real label lists from ../shared/data, real photos from scikit-image encoded as
JPEG, the Flickr placeholder (its bytes read from ../shared at test time), a truncated JPEG, a
missing file and a tiny file. VGG-19 runs with seeded random weights (same architecture and cost).
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch

from lesa.datasets.h5 import open_features, partial_path
from lesa.datasets.nus_wide import load_nus_wide_split, nus_wide_labels, seen_unseen_tag_indices
from lesa.datasets.openimages import build_openimages_labels, load_openimages_split
from lesa.features.extract import (build_model, extract_features, merge_shards, nus_wide_source,
                                   openimages_source, shard_path)


def photos() -> list[np.ndarray]:
    import skimage.data as data

    gray = data.camera()[::2, ::2]
    return [data.astronaut()[::2, ::2], data.coffee()[::2, ::2], np.stack([gray] * 3, -1),
            data.chelsea()[::2, ::2], data.rocket()[::2, ::2]]


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")


def build_nus_tree(root: Path, shared_data, unzipped: bool = False) -> dict:
    """A NUS-WIDE tree of 12 images: Train has 5 good photos, a placeholder, a tiny file, a truncated
    JPEG, a missing file and a zero-byte file; Test has 2 good photos. Metadata in the original's
    layout (Concepts81.txt, AllLabels/ at the top) or, ``unzipped``, as NUS-WIDE's zip files unpack."""
    tags = shared_data("nus_wide", "TagList1k.txt").read_bytes()
    concepts_bytes = shared_data("nus_wide", "Concepts81.txt").read_bytes()
    placeholder = shared_data("flickr_unavailable_placeholder.jpg").read_bytes()
    concepts = [c.strip() for c in concepts_bytes.decode().splitlines() if c.strip()]
    (root / "NUS_WID_Tags").mkdir(parents=True)
    (root / "ImageList").mkdir()
    concepts_file = root / "ConceptsList" / "Concepts81.txt" if unzipped else root / "Concepts81.txt"
    all_labels = root / "Groundtruth" / "AllLabels" if unzipped else root / "AllLabels"
    concepts_file.parent.mkdir(exist_ok=True)
    all_labels.mkdir(parents=True)
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_bytes(tags)
    concepts_file.write_bytes(concepts_bytes)
    pics = photos()
    good = [jpeg(p) for p in pics]
    files = {  # name -> bytes (None: missing)
        "actor/0001_1.jpg": good[0], "airport/0002_2.jpg": placeholder, "actor/0003_3.jpg": good[1],
        "animal/0004_4.jpg": jpeg(pics[0][:40, :40], 50), "animal/0005_5.jpg": good[2][: len(good[2]) // 2],
        "beach/0006_6.jpg": None, "beach/0007_7.jpg": good[3], "book/0008_8.jpg": b"",
        "book/0009_9.jpg": good[4], "bird/0010_10.jpg": good[0] + b"\x00",
        "castle/0011_11.jpg": good[1], "castle/0012_12.jpg": good[2],
    }
    assert len(files["animal/0004_4.jpg"]) <= 4000 and len(files["animal/0005_5.jpg"]) > 4000
    names = list(files)
    train, test = names[:10], names[10:]
    for name, content in files.items():
        path = root / "Flickr" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content)
    crlf = "\r\n"
    # the full list in another order than the split lists (labels are matched by file name)
    full = list(reversed(names))
    (root / "ImageList" / "Imagelist.txt").write_text(
        crlf.join("C:\\ImageData\\Flickr\\" + n.replace("/", "\\") for n in full) + crlf, newline="")
    (root / "ImageList" / "TrainImagelist.txt").write_text(
        crlf.join(n.replace("/", "\\") for n in train) + crlf, newline="")
    (root / "ImageList" / "TestImagelist.txt").write_text(
        crlf.join(n.replace("/", "\\") for n in test) + crlf, newline="")
    rng = np.random.default_rng(0)
    tags01 = (rng.random((len(full), 1000)) < 0.1).astype(np.uint8)
    concept01 = (rng.random((len(full), 81)) < 0.3).astype(np.uint8)
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text(
        "".join("\t".join(map(str, row)) + "\t" + crlf for row in tags01), newline="")
    for j, c in enumerate(concepts):
        (all_labels / f"Labels_{c}.txt").write_text(
            "".join(f"{v}{crlf}" for v in concept01[:, j]), newline="")
    return {"full": full, "train": train, "test": test, "tags01": tags01, "concept01": concept01,
            "tags": [t.strip() for t in tags.decode().splitlines() if t.strip()], "concepts": concepts}


@pytest.fixture(scope="module")
def vgg():
    return build_model("random", None, seed=3)


class TinyExtractor(torch.nn.Module):
    """Same interface as VGG19Conv54 ((B,3,224,224) -> (B,196,512)) at a tiny cost: for the tests
    of data logic (resume, shards, labels), where VGG-19 on 2 CPU cores would take most of the time."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 512, kernel_size=1)
        self.source, self.weights_sha256 = "tiny-test-extractor", "none"

    def forward(self, x):
        fmap = torch.relu(self.proj(torch.nn.functional.avg_pool2d(x, 16)))  # (B, 512, 14, 14)
        return fmap.permute(0, 2, 3, 1).reshape(x.shape[0], 196, 512)


@pytest.fixture(scope="module")
def model():
    return TinyExtractor().eval()


@pytest.fixture
def nus_tree(tmp_path, shared_data):
    root = tmp_path / "nus"
    return root, build_nus_tree(root, shared_data)


def test_nus_wide_labels_and_skips(nus_tree, vgg, tmp_path):
    root, meta = nus_tree
    split = load_nus_wide_split(root, "Train")
    assert {k: sorted(v) for k, v in split.skipped.items()} == {
        "placeholder": ["airport/0002_2.jpg"], "small": ["animal/0004_4.jpg", "book/0008_8.jpg"],
        "missing": ["beach/0006_6.jpg"]}
    assert split.img_ids == ["actor/0001_1.jpg", "actor/0003_3.jpg", "animal/0005_5.jpg",
                             "beach/0007_7.jpg", "book/0009_9.jpg", "bird/0010_10.jpg"]
    seen, unseen = seen_unseen_tag_indices(meta["tags"], meta["concepts"])
    assert len(seen) == 925 and len(unseen) == 75
    rows = [meta["full"].index(i) for i in split.img_ids]
    ref_1k = 2 * meta["tags01"][rows].astype(np.int8) - 1
    ref_1k[:, unseen] = 0
    np.testing.assert_array_equal(split.labels["labels_1k"], ref_1k)
    np.testing.assert_array_equal(split.labels["labels_81"], 2 * meta["concept01"][rows].astype(np.int8) - 1)

    out = tmp_path / "train.h5"
    summary = extract_features(nus_wide_source(split), out, vgg, batch_size=4, workers=1, progress=False)
    assert summary.written == 5 and summary.failed == {"truncated": 1}
    assert summary.skipped == {"placeholder": 1, "small": 2, "missing": 1}
    with open_features(out) as f:
        assert len(f) == 5
        assert f.img_ids == [i for i in split.img_ids if i != "animal/0005_5.jpg"]
        assert f.attrs["dataset"] == "nus_wide" and f.attrs["split"] == "Train"
        assert f.label_names["labels_81"] == meta["concepts"]
        keep = [0, 1, 3, 4, 5]
        _, labels = f.read(range(5))
        np.testing.assert_array_equal(labels["labels_1k"], ref_1k[keep])
        feats = f.read_features([0, 4])
    # the appended trailing byte does not change the image: same features as the clean file
    np.testing.assert_array_equal(feats[0], feats[1])
    assert "truncated" in (tmp_path / "train.h5.failed.tsv").read_text()


def test_nchw_and_nhwc_extract_the_same_features(nus_tree, vgg, tmp_path):
    """On the CPU extraction runs VGG-19 channels-last by default; NCHW (--no-channels-last)
    gives the same records to float32 rounding, and the model is left in the layout it ran."""
    root, _ = nus_tree
    source = nus_wide_source(load_nus_wide_split(root, "Train"))
    default, nchw = tmp_path / "default.h5", tmp_path / "nchw.h5"
    extract_features(source, default, vgg, batch_size=4, workers=0, progress=False)
    assert vgg.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    extract_features(source, nchw, vgg, batch_size=4, workers=0, progress=False, channels_last=False)
    assert vgg.features[0].weight.is_contiguous()
    with open_features(default) as fa, open_features(nchw) as fb:
        assert fa.img_ids == fb.img_ids and len(fa) == 5
        a, b = fa.read_features(range(5)), fb.read_features(range(5))
    assert np.linalg.norm(b) > 0 and np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)


def test_nus_wide_pure_labels():
    tags = np.array([[1, 0, 1], [0, 0, 1]])
    l1k, l81 = nus_wide_labels(tags, np.array([[1], [0]]), np.array([2]))
    np.testing.assert_array_equal(l1k, [[1, -1, 0], [-1, -1, 0]])
    np.testing.assert_array_equal(l81, [[1], [-1]])


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_file(nus_tree, model, tmp_path):
    root, _ = nus_tree
    source = nus_wide_source(load_nus_wide_split(root, "Train"))
    ref = tmp_path / "ref.h5"
    extract_features(source, ref, model, batch_size=2, workers=0, progress=False)

    calls = {"n": 0}
    labels_for = source.labels_for

    def failing(pos):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt()
        return labels_for(pos)

    source.labels_for = failing
    out = tmp_path / "out.h5"
    with pytest.raises(Interrupt):
        extract_features(source, out, model, batch_size=2, workers=0, progress=False)
    assert not out.exists() and partial_path(out).exists()
    source.labels_for = labels_for
    summary = extract_features(source, out, model, batch_size=2, workers=0, progress=False, resume=True)
    assert summary.resumed_from == 3 and summary.written == 5
    assert_same_file(out, ref)
    # resuming a finished file does nothing
    assert extract_features(source, out, model, resume=True, workers=0, progress=False).written == 5


def assert_same_file(a: Path, b: Path) -> None:
    with open_features(a) as fa, open_features(b) as fb:
        assert fa.img_ids == fb.img_ids
        ignore = {"lesa_version"}
        assert {k: v for k, v in fa.attrs.items() if k not in ignore} == \
               {k: v for k, v in fb.attrs.items() if k not in ignore}
        n = len(fa)
        fx, lx = fa.read(range(n))
        fy, ly = fb.read(range(n))
        np.testing.assert_array_equal(fx, fy)
        assert lx.keys() == ly.keys()
        for k in lx:
            np.testing.assert_array_equal(lx[k], ly[k])
        assert fa.label_names == fb.label_names


def test_two_ranks_merge_to_the_one_rank_file(nus_tree, model, tmp_path):
    root, _ = nus_tree
    source = nus_wide_source(load_nus_wide_split(root, "Train"))
    one = tmp_path / "one.h5"
    extract_features(source, one, model, batch_size=4, workers=0, progress=False)
    out = tmp_path / "two.h5"
    for rank in (1, 0):
        extract_features(source, out, model, batch_size=4, workers=1, progress=False, rank=rank, world_size=2)
    assert shard_path(out, 0, 2).name == "two.shard-00000-of-00002.h5"
    merged = merge_shards(str(tmp_path / "two.shard-*.h5"), tmp_path / "merged.h5", progress=False)
    assert_same_file(merged, one)
    with open_features(str(tmp_path / "two.shard-*.h5")) as split:  # or read the shards as one
        assert len(split) == 5


# -- Open Images --------------------------------------------------------------------------------
def build_oi_tree(root: Path, shared_data) -> dict:
    seen = [line.strip() for line in shared_data("openimages_2018_04", "classes-trainable.txt")
            .read_text().splitlines() if line.strip()]
    root.mkdir(parents=True)
    (root / "classes-trainable.txt").write_text("\n".join(seen) + "\n")
    (root / "unseen_labels.pkl").write_bytes(shared_data("openimages_2018_04", "unseen_labels.pkl").read_bytes())
    from lesa.datasets.embeddings import load_label_ids_pickle

    unseen = load_label_ids_pickle(root / "unseen_labels.pkl")
    pics = photos()
    images = {"000a": jpeg(pics[0]), "000b": jpeg(pics[1]), "000c": None, "000d": jpeg(pics[2])[:3000],
              "000e": jpeg(pics[3])}
    rows = [("000a", seen[0], 1), ("000a", seen[5], 0), ("000a", unseen[0], 1), ("000a", "/m/notalabel", 1),
            ("000b", seen[7185], 1), ("000b", unseen[2593], 0), ("000c", seen[1], 1), ("000d", seen[2], 1),
            ("000e", seen[3], 0)]
    for split in ("validation", "test"):
        folder = root.parent / "image_data" / split  # the data folder's layout
        folder.mkdir(parents=True)
        for name, content in images.items():
            if content is not None:
                (folder / f"{name}.jpg").write_bytes(content)
        with open(root / f"{split}-annotations-human-imagelabels.csv", "w") as f:
            f.write("ImageID,Source,LabelName,Confidence\n")
            for image_id, label, conf in rows:
                f.write(f"{image_id},verification,{label},{conf}\n")
    return {"seen": seen, "unseen": unseen}


def test_openimages_validation_and_test(tmp_path, shared_data, model):
    root = tmp_path / "OpenImages" / "2018_04"
    meta = build_oi_tree(root, shared_data)
    seen, unseen = meta["seen"], meta["unseen"]
    assert len(seen) == 7186 and len(unseen) == 2594
    val = load_openimages_split(root, "validation")
    assert val.img_ids == ["000a", "000b", "000d", "000e"] and val.skipped == {"missing": ["000c"]}
    out = tmp_path / "val.h5"
    summary = extract_features(openimages_source(val), out, model, batch_size=8, workers=0, progress=False)
    assert summary.written == 3 and summary.failed == {"truncated": 1}
    with open_features(out) as f:
        assert f.img_ids == ["000a", "000b", "000e"] and f.label_dims == {"labels": 7186}
        _, labels = f.read([0, 1, 2])
    expected = np.zeros((3, 7186), np.int8)
    expected[0, 0], expected[0, 5], expected[1, 7185], expected[2, 3] = 1, -1, 1, -1
    np.testing.assert_array_equal(labels["labels"], expected)

    test = load_openimages_split(root, "test")
    out = tmp_path / "test.h5"
    extract_features(openimages_source(test), out, model, batch_size=8, workers=0, progress=False)
    with open_features(out) as f:
        assert f.label_dims == {"seen_labels": 7186, "unseen_labels": 2594}
        _, labels = f.read([0, 1])
    assert labels["unseen_labels"][0, 0] == 1 and labels["unseen_labels"][1, 2593] == -1
    assert labels["unseen_labels"].sum() == 0 and labels["seen_labels"][0, 0] == 1


def test_openimages_original_partition_quirk():
    rows = [("a", "m1", "1"), ("a", "m2", "0"), ("a", "m1", "0"), ("b", "m2", "1")]
    fixed = build_openimages_labels(rows, ["m1", "m2"])
    assert fixed.image_ids == ["a", "b"]
    np.testing.assert_array_equal(fixed.dense("labels", [0]), [[-1, -1]])  # later row wins
    quirk = build_openimages_labels(rows, ["m1", "m2"], partition_rows=2)
    assert quirk.image_ids == ["a", "a", "b"]
    np.testing.assert_array_equal(quirk.dense("labels", [0, 1, 2]), [[1, -1], [-1, 0], [0, 1]])


def test_unseen_pickle_with_code_is_refused(tmp_path):
    from lesa.errors import DataError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "classes-trainable.txt").write_text("/m/a\n")
    (tmp_path / "unseen_labels.pkl").write_bytes(pickle.dumps(Evil()))
    (tmp_path / "test-annotations-human-imagelabels.csv").write_text("ImageID,Source,LabelName,Confidence\n")
    with pytest.raises(DataError, match="only numpy"):
        load_openimages_split(tmp_path, "test")


def test_nus_wide_01_matrix_parser(tmp_path):
    from lesa.datasets.nus_wide import read_01_matrix
    from lesa.errors import DataError

    m = np.random.default_rng(0).integers(0, 2, (9000, 7)).astype(np.uint8)  # more than one block
    (tmp_path / "a.txt").write_text("".join("\t".join(map(str, r)) + "\t\r\n" for r in m), newline="")
    np.testing.assert_array_equal(read_01_matrix(tmp_path / "a.txt", 7), m)
    (tmp_path / "b.txt").write_text("0 1\n1 1\n\n")  # trailing blank lines are fine
    assert read_01_matrix(tmp_path / "b.txt", 2).tolist() == [[0, 1], [1, 1]]
    for bad, message in [("0 1\n1\n", "line 2 has 1 values"), ("0 2\n", "line 1 has b'2'"),
                         ("0 10\n", "multi-digit"), ("0 1\n\n0 1\n", "line 2 has 0 values")]:
        (tmp_path / "c.txt").write_text(bad)
        with pytest.raises(DataError, match=message):
            read_01_matrix(tmp_path / "c.txt", 2)


# -- the command, with the data folder's defaults ------------------------------------------------
CLI = ["--backbone", "random", "--device", "cpu", "--workers", "0", "--batch-size", "8", "--no-progress"]


def test_cli_defaults_to_the_data_folder_and_names_the_next_command(tmp_path, shared_data, capsys):
    """NUS-WIDE as its zip files unpack, in DATA/NUS_WIDE: `lesa extract nus-wide --split S
    --data-dir DATA` needs no other folder flag, writes DATA/features/NUS_WIDE_S.h5 (where the
    configurations look) and ends with the next command."""
    from lesa.cli import main

    data = tmp_path / "data"
    build_nus_tree(data / "NUS_WIDE", shared_data, unzipped=True)
    assert main(["extract", "nus-wide", "--split", "Test", "--data-dir", str(data), *CLI]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"next: lesa extract nus-wide --split Train --data-dir {data}"
    assert main(["extract", "nus-wide", "--split", "Train", "--data-dir", str(data), *CLI]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"next: lesa train nus_wide_zero_shot --data-dir {data}"
    with open_features(data / "features" / "NUS_WIDE_Train.h5") as train, \
            open_features(data / "features" / "NUS_WIDE_Test.h5") as test:
        assert len(train) == 5 and test.img_ids == ["castle/0011_11.jpg", "castle/0012_12.jpg"]


def test_a_wrong_image_folder_stops_before_anything_is_written(tmp_path, shared_data, capsys):
    from lesa.cli import main

    root = tmp_path / "nus"
    build_nus_tree(root, shared_data)
    out = tmp_path / "x.h5"
    assert main(["extract", "nus-wide", "--root", str(root), "--images-dir", str(root / "Flikr"),
                 "--split", "Train", "--out", str(out), *CLI]) == 1
    err = capsys.readouterr().err
    assert str(root / "Flikr" / "actor" / "0001_1.jpg") in err and "--images-dir" in err
    # Open Images: the images where the original kept them (./image_data/<split>), not next to --root
    oi = tmp_path / "OpenImages" / "2018_04"
    build_oi_tree(oi, shared_data)
    (oi.parent / "image_data").rename(tmp_path / "image_data")
    assert main(["extract", "openimages", "--root", str(oi), "--split", "validation", "--out", str(out), *CLI]) == 1
    err = capsys.readouterr().err
    assert str(oi.parent / "image_data" / "validation" / "000a.jpg") in err and "--images-dir" in err
    assert not list(tmp_path.glob("x.h5*"))


def test_many_missing_images_are_announced_at_the_start(nus_tree, model, tmp_path, capsys):
    root, _ = nus_tree
    extract_features(nus_wide_source(load_nus_wide_split(root, "Train")), tmp_path / "a.h5", model,
                     workers=0, progress=False)
    assert "warning" not in capsys.readouterr().err  # 1 of 10 missing
    for name in ("actor/0001_1.jpg", "actor/0003_3.jpg"):
        (root / "Flickr" / name).unlink()
    extract_features(nus_wide_source(load_nus_wide_split(root, "Train")), tmp_path / "b.h5", model,
                     workers=0, progress=False, log=lambda message: print(message, file=sys.stderr))
    first, *later = capsys.readouterr().err.splitlines()
    assert first.startswith(f"warning: 3 of the 10 images listed for nus_wide Train are not in {root / 'Flickr'}")
    assert "--images-dir" in first and later and all(line.startswith("skipped ") for line in later)


def test_missing_vgg_weights_say_where_to_get_them(tmp_path, monkeypatch, capsys):
    from lesa.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["extract", "nus-wide", "--split", "Train", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "model/vgg_19.ckpt: VGG-19 checkpoint not found" in err
    assert "http://download.tensorflow.org/models/vgg_19_2016_08_28.tar.gz" in err and "-C model" in err
