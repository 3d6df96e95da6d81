"""Zero-shot tagging (lesa.tag, `lesa tag`): real GloVe 50-d vectors, real photos, a tiny LESA
trained with 50-d label vectors; rankings must be the model's own zs_logits, and deterministic."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import rel_err
from lesa.errors import ConfigError, LesaError, ShapeError
from lesa.checkpoint import load_model
from lesa.tag import Tagger, label_vectors, parse_labels, ranking
from tag_helpers import (SEEN, TAGS, glove_arrays, glove_text, glove_vector, photos, random_vgg,
                         random_vgg_checkpoint, tiny_checkpoint)


@pytest.fixture(scope="module")
def glove(tmp_path_factory):
    return glove_text(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return photos(tmp_path_factory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def vgg():
    return random_vgg()


_FEATURES: dict = {}


def expected_scores(checkpoint_path, image_path, labels) -> np.ndarray:
    """zs_logits computed directly: decode, preprocess, random_vgg(), LESA with the labels' GloVe
    means (the features of each photo are computed once per session)."""
    from lesa.features import decode_jpeg, vgg_preprocess

    model = load_model(checkpoint_path).model.eval()
    model.set_unseen_vecs(np.stack([glove_vector(glove_arrays(), label) for label in labels]))
    with torch.no_grad():
        if str(image_path) not in _FEATURES:
            crop = vgg_preprocess(decode_jpeg(image_path.read_bytes()))  # (3, 224, 224)
            _FEATURES[str(image_path)] = random_vgg()(crop[None])  # (1, 196, 512)
        return model(_FEATURES[str(image_path)]).zs_logits[0].numpy()


def test_parse_labels():
    assert parse_labels(" beach, dog ,sunset\n coffee   cup ,, dog") == ["beach", "dog", "sunset", "coffee cup"]
    with pytest.raises(ConfigError):
        parse_labels(" , ,\n")


def test_glove_dimension_must_match_the_model(glove):
    with pytest.raises(ShapeError, match="--embeddings"):
        label_vectors(["cat", "dog"], glove, dim_w2v=300)


def test_labels_without_known_words_are_dropped(glove):
    got = label_vectors(["cat", "qqqzzx", "coffee qqqzzy", "-"], glove, dim_w2v=50)
    assert got.names == ["cat", "coffee qqqzzy"] and got.dropped == ["qqqzzx", "-"]
    assert got.missing_words == {"coffee qqqzzy": ["qqqzzy"]} and got.vectors.shape == (2, 50)
    with pytest.raises(LesaError, match="qqqzzx") as caught:  # no label left
        label_vectors(["qqqzzx", "-"], glove, dim_w2v=50)
    assert "allow_missing" not in str(caught.value)


def test_tags_are_the_model_zero_shot_scores(checkpoint, glove, images, vgg):
    loaded = load_model(checkpoint, placeholder_seen=True)
    assert loaded.seen_names == SEEN and loaded.dim_w2v == 50
    labels = label_vectors(TAGS, glove, loaded.dim_w2v)
    assert labels.missing_words == {}
    results = list(Tagger(loaded, vgg, labels, batch_size=2).tag(images[:2]))
    assert [r.image for r in results] == [str(p) for p in images[:2]]
    for result, path in zip(results, images):
        want = expected_scores(checkpoint, path, TAGS)
        # the tagger and this reference take different float32 paths (batch layout, kernels): their
        # VGG features differ by ~5e-7 relative; 1e-5 over the whole score vector holds on any x86 CPU
        assert rel_err(result.scores, want) < 1e-5
        # every label's score is its best head's score
        np.testing.assert_array_equal(result.head_scores.max(axis=0), result.scores)
        assert result.head_scores.shape == (4, len(TAGS)) and result.alphas.shape == (4, 196)
        np.testing.assert_allclose(result.alphas.sum(axis=1), 1.0, rtol=1e-5)
        ranked = result.ranked()
        assert [n for n, _ in ranked] == [TAGS[i] for i in ranking(want)]
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        assert len(result.ranked(3)) == 3
    # the photos do not all get the same ranking (the scores depend on the image)
    assert len({tuple(n for n, _ in r.ranked()) for r in results}) > 1


def test_checkpoint_labels_need_names(checkpoint, vgg):
    loaded = load_model(checkpoint, placeholder_seen=True)
    assert Tagger(loaded, vgg, label_set="seen").names == SEEN
    assert Tagger(loaded, vgg, label_set="all").names == SEEN[:3] + SEEN
    loaded.seen_names = []
    with pytest.raises(ConfigError, match="--labels"):
        Tagger(loaded, vgg, label_set="seen")


def test_cli_tag_json_deterministic_and_ranked(checkpoint, glove, images, tmp_path, tmp_path_factory, capsys):
    """`lesa tag` twice: identical JSON; a broken file is reported and skipped; the ranking and the
    scores are the model's zs_logits for the photo."""
    from lesa.cli import main

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [str(bad), str(images[2])]
    outputs = []
    for run in range(2):
        out = tmp_path / f"tags{run}.json"
        rc = main(["tag", *inputs, "--checkpoint", str(checkpoint), "--labels", ", ".join(TAGS + ["qqqzzx"]),
                   "--embeddings", str(glove), "--vgg", str(random_vgg_checkpoint(tmp_path_factory)),
                   "--device", "cpu", "--top", "3", "--json", str(out), "--attention", str(tmp_path / f"att{run}.png"),
                   "--no-progress"])
        assert rc == 1  # one image could not be used
        outputs.append(out.read_text())
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err
    assert "left out: qqqzzx" in captured.err  # the label no GloVe word spells is dropped
    assert outputs[0] == outputs[1]

    doc = json.loads(outputs[0])
    assert doc["labels"] == TAGS and doc["missing_words"] == {}
    assert list(doc["failed"]) == [str(bad)]
    (entry,) = doc["images"]
    assert entry["image"] == inputs[1]
    want = expected_scores(checkpoint, images[2], TAGS)
    assert list(entry["scores"]) == TAGS
    assert rel_err([entry["scores"][t] for t in TAGS], want) < 1e-5  # (two float32 paths: see above)
    assert [t["label"] for t in entry["tags"]] == [TAGS[i] for i in ranking(want)[:3]]
    assert all(t["score"] == entry["scores"][t["label"]] for t in entry["tags"])
    printed = [line.split()[1:-1] for line in captured.out.splitlines() if line.startswith("    ")]
    assert [" ".join(words) for words in printed[:3]] == [t["label"] for t in entry["tags"]]
    # one image tagged among two inputs: the figure is named after it
    assert (tmp_path / "att0-chelsea.png").stat().st_size > 10_000


def test_figure_paths():
    from pathlib import Path

    from lesa.tag import figure_path

    assert figure_path("out/att.png", "a/x.jpg", ["a/x.jpg"]) == Path("out/att.png")
    assert figure_path("att.png", "a/x.jpg", ["a/x.jpg", "b/y.jpg"]) == Path("att-x.png")
    assert figure_path("att.png", "b/x.jpg", ["a/x.jpg", "b/x.jpg"]) == Path("att-001-x.png")


def test_tf_checkpoint_scores_without_its_label_vectors(golden_root):
    """A TF checkpoint holds no fixed label vectors: a zero placeholder for the seen ones must not
    change the zero-shot scores."""
    from lesa import LESA, load_tf_checkpoint

    root = golden_root("model_nus")
    inputs = np.load(root / "inputs.npz")
    prefix = root / "final" / "model.ckpt"
    loaded = load_model(str(prefix) + ".index", placeholder_seen=True)
    assert loaded.model.n_seen == 1 and loaded.dim_w2v == 300 and loaded.seen_names == []
    reference = LESA(inputs["seen_vecs"], inputs["unseen_vecs"])
    load_tf_checkpoint(reference, prefix)
    reference.eval()
    loaded.model.eval().set_unseen_vecs(inputs["unseen_vecs"])
    features = torch.as_tensor(inputs["eval_features"])
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.model(features).zs_logits.numpy(),
                                      reference(features).zs_logits.numpy())


def _flags(text: str) -> set:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def test_every_message_names_flags_the_command_has(checkpoint, glove, images, tmp_path, tmp_path_factory,
                                                   capsys, golden_root):
    """Failures of `lesa tag` / `lesa visualize` end in one message whose fix names only flags
    that command has (its --help lists them)."""
    from lesa.cli import main

    vgg = ["--vgg", str(random_vgg_checkpoint(tmp_path_factory)), "--device", "cpu"]
    model = ["--checkpoint", str(checkpoint)]
    tf_model = ["--checkpoint", str(golden_root("model_nus") / "final" / "model.ckpt")]
    photo = str(images[0])
    cases = {
        "tag": [
            [photo, *model, *vgg, "--labels", "qqqzzx, -", "--embeddings", str(glove)],  # no label left
            [photo, *model, *vgg, "--labels", "cat", "--embeddings", str(tmp_path / "none.txt")],
            [photo, *model, *vgg, "--labels", "cat", "--embeddings", str(glove), "--top", "-1"],
            [photo, *model, *vgg, "--labels", "cat", "--embeddings", str(glove), "--batch-size", "0"],
            [photo, *model, *vgg, "--labels", " , ", "--embeddings", str(glove)],
            [photo, "--checkpoint", str(tmp_path / "none.pt"), *vgg, "--labels", "cat", "--embeddings", str(glove)],
        ],
        "visualize": [
            [photo, *tf_model, *vgg, "--out", str(tmp_path / "a.png")],  # a TF checkpoint has no names
            [photo, *model, *vgg, "--labels", "cat", "--out", str(tmp_path / "a.png")],  # no --embeddings
            [photo, *model, *vgg, "--dpi", "0", "--out", str(tmp_path / "a.png")],
            [str(tmp_path / "missing.jpg"), *model, *vgg, "--out", str(tmp_path / "a.png")],
        ],
    }
    for command, runs in cases.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        known = _flags(capsys.readouterr().out)
        for argv in runs:
            assert main([command, *argv]) == 1, argv
            err = capsys.readouterr().err
            assert err.startswith("lesa: error: ") and err.count("lesa: error") == 1, err
            assert _flags(err) <= known, (argv, err)
    assert not (tmp_path / "a.png").exists()
