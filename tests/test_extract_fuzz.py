"""Hypothesis: damaged feature files and image bytes end in a lesa error, never a crash or wrong data."""
from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings, strategies as st

from lesa.datasets.h5 import FeatureFile, FeatureWriter, open_features
from lesa.errors import LesaError
from lesa.features.jpeg import decode_jpeg

DIMS = {"labels": 5}


@pytest.fixture(scope="module")
def h5_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "f.h5"
    rng = np.random.default_rng(0)
    with FeatureWriter(path, "nus_wide", "Train", DIMS) as w:
        w.append(["a", "b", "c"], rng.standard_normal((3, 196, 512)).astype(np.float32),
                 {"labels": rng.integers(-1, 2, (3, 5))})
        w.finish()
    return path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_feature_file(h5_bytes, tmp_path_factory, data):
    blob = bytearray(h5_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("d") / "d.h5"
    path.write_bytes(bytes(blob))
    try:
        with open_features(path) as split:
            feats, labels = split.read(range(len(split)))
            assert feats.shape == (len(split), 196, 512)
            _ = split.img_ids
    except LesaError:
        pass


@pytest.fixture(scope="module")
def jpeg_bytes():
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)
    return simplejpeg.encode_jpeg(image, quality=85)


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=6))
def test_damaged_jpeg(jpeg_bytes, cut, flips):
    blob = bytearray(jpeg_bytes[: max(cut, 0) or len(jpeg_bytes)])
    for i, v in flips:
        if i < len(blob):
            blob[i] ^= v
    try:
        image = decode_jpeg(bytes(blob), "fuzz.jpg", max_pixels=10_000_000)
    except LesaError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_incomplete_is_refused(tmp_path):
    w = FeatureWriter(tmp_path / "x.h5", "nus_wide", "Train", DIMS)
    w.close()
    with pytest.raises(LesaError, match="--resume"):
        FeatureFile(tmp_path / "x.h5")
