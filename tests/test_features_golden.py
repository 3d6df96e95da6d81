"""Golden vgg19_slim: decode, preprocessing and VGG-19 conv5_4 features equal the original's."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import rel_err
from lesa.features import VGG19Conv54, decode_jpeg, vgg_preprocess, vgg_preprocess_batch
from lesa.device import channels_last_by_default


@pytest.fixture(scope="module")
def golden(golden_root):
    root = golden_root("vgg19_slim")
    expected = np.load(root / "expected.npz")
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    assert len(names) == 6
    return root, expected, names


@pytest.fixture(scope="module")
def model(golden):
    return VGG19Conv54.from_tf_slim(golden[0] / "vgg_19.ckpt")


def test_decode_is_bit_identical(golden):
    root, expected, names = golden
    for name in names:
        image = decode_jpeg((root / "images" / name).read_bytes(), name)
        ref = expected[f"decoded/{name}"]
        assert image.dtype == np.uint8 and image.shape == ref.shape
        np.testing.assert_array_equal(image, ref, err_msg=name)


def test_preprocess_matches(golden):
    _, expected, names = golden
    for name in names:
        out = vgg_preprocess(expected[f"decoded/{name}"]).permute(1, 2, 0).numpy()  # HWC like TF
        np.testing.assert_allclose(out, expected[f"preprocessed/{name}"], rtol=0, atol=0.01, err_msg=name)
    batch = vgg_preprocess_batch([expected[f"decoded/{n}"] for n in names])
    assert batch.shape == (6, 3, 224, 224)
    for i, name in enumerate(names):
        np.testing.assert_allclose(batch[i].permute(1, 2, 0).numpy(), expected[f"preprocessed/{name}"],
                                   rtol=0, atol=0.01)


def test_features_from_preprocessed(golden, model):
    _, expected, names = golden
    x = torch.stack([torch.from_numpy(expected[f"preprocessed/{n}"]).permute(2, 0, 1) for n in names])
    with torch.no_grad():
        feats = model(x).numpy()
    assert feats.shape == (6, 196, 512)
    for i, name in enumerate(names):
        assert rel_err(feats[i], expected[f"features/{name}"]) <= 1e-5, name


def test_channels_last_features(golden, model):
    """NHWC convolutions (the default on the CPU) give the original's features too."""
    _, expected, names = golden
    x = torch.stack([torch.from_numpy(expected[f"preprocessed/{n}"]).permute(2, 0, 1) for n in names])
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        feats = nhwc(x)  # an NCHW batch: the model lays it out as its weights are
    assert nhwc.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for i, name in enumerate(names):
        assert rel_err(feats[i].numpy(), expected[f"features/{name}"]) <= 1e-5, name


def test_layout_defaults():
    assert channels_last_by_default("cpu", "fp32") and channels_last_by_default("cpu", "bf16")
    assert channels_last_by_default("cuda", "tf32") and channels_last_by_default("cuda", "bf16")
    assert not channels_last_by_default("cuda", "fp32")  # not compared on a card yet


def test_end_to_end_from_jpeg_bytes(golden, model):
    root, expected, names = golden
    images = [decode_jpeg((root / "images" / n).read_bytes(), n) for n in names]
    with torch.no_grad():
        feats = model(vgg_preprocess_batch(images)).numpy()
    for i, name in enumerate(names):
        assert rel_err(feats[i], expected[f"features/{name}"]) <= 1e-5, name


def test_checkpoint_without_vgg_tensors_is_refused(tmp_path):
    from lesa.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        VGG19Conv54.from_tf_slim(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="conv1_1"):
        VGG19Conv54.from_tf_tensors({}, "empty")
