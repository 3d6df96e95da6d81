"""Attention figures (lesa.viz, `lesa visualize`): the crop shown is the one the model saw, the maps
keep the 14x14 grid's orientation, heads are titled with the labels they serve, and the PNGs
rendered headless are non-trivial."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lesa.plots import save_figure
from lesa.viz import attention_figure, display_crop, head_titles, labels_per_head, upsample_alphas
from tag_helpers import SEEN, photos, random_vgg_checkpoint, tiny_checkpoint


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    from lesa.features import decode_jpeg, vgg_preprocess

    return vgg_preprocess(decode_jpeg(photos(tmp_path_factory)[0].read_bytes())).numpy()  # (3, 224, 224)


def read_png(path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)  # (H, W, 3|4) floats in [0, 1]


def assert_not_blank(pixels: np.ndarray, min_height: int, min_width: int) -> None:
    height, width = pixels.shape[:2]
    assert height >= min_height and width >= min_width
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1  # not one flat colour
    assert (rgb.min(axis=2) < 0.9).mean() > 0.3  # a good part of the figure is not white


def test_display_crop_adds_the_means_back(crop):
    shown = display_crop(crop)
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    rgb = crop.transpose(1, 2, 0) + np.array([123.68, 116.78, 103.94], dtype=np.float32)
    assert np.abs(shown.astype(np.float32) - rgb).max() <= 0.5 + 1e-3  # rounding only
    assert shown.std() > 20  # a photo, not a flat image


def test_upsampled_maps_keep_the_grid_orientation():
    alphas = np.zeros((2, 196), dtype=np.float32)
    alphas[0, 2 * 14 + 11] = 1.0  # head 1: row 2, column 11 of the 14x14 grid
    alphas[1] = 1.0 / 196  # head 2: uniform
    maps = upsample_alphas(alphas)
    assert maps.shape == (2, 224, 224)
    row, col = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 2 * 16 <= row < 3 * 16 and 11 * 16 <= col < 12 * 16  # 16 pixels per cell
    np.testing.assert_allclose(maps[1], 1.0 / 196, rtol=1e-6)


def test_heads_are_titled_with_the_top_labels_they_serve():
    # 3 heads x 4 labels; label scores are the max over heads
    head_scores = np.array([[5.0, 0.0, 1.0, 9.0],
                            [1.0, 7.0, 2.0, 0.0],
                            [0.0, 6.0, 3.0, 1.0]])
    scores = head_scores.max(axis=0)  # [5, 7, 3, 9] -> ranking d, b, a, c
    assert labels_per_head(head_scores, scores, top=3) == [[3, 0], [1], []]
    assert labels_per_head(head_scores, scores, top=4) == [[3, 0], [1], [2]]
    titles = head_titles(head_scores, scores, ["a", "b", "c", "d"], top=3)
    assert titles == ["head 1: d, a", "head 2: b", "head 3"]


def test_attention_figure_renders_a_nontrivial_png(crop, tmp_path):
    gen = torch.Generator().manual_seed(0)
    T, names = 10, [f"label {i}" for i in range(12)]
    alphas = torch.softmax(3 * torch.randn(T, 196, generator=gen), dim=1).numpy()
    head_scores = torch.randn(T, len(names), generator=gen).numpy()
    scores = head_scores.max(axis=0)
    fig = attention_figure(crop, alphas, head_scores, scores, names, top=5, title="astronaut")
    first = read_png(save_figure(fig, tmp_path / "a.png"))
    assert_not_blank(first, min_height=400, min_width=1000)  # 11 panels: 6 columns x 2 rows
    # the maps are drawn: other attention gives another picture
    fig = attention_figure(crop, alphas[::-1].copy(), head_scores, scores, names, top=5, title="astronaut")
    second = read_png(save_figure(fig, tmp_path / "b.png"))
    assert first.shape == second.shape and np.abs(first - second).mean() > 1e-3


def test_cli_visualize_with_the_checkpoint_labels(tmp_path, tmp_path_factory, capsys):
    from lesa.cli import main

    out = tmp_path / "att.png"
    rc = main(["visualize", str(photos(tmp_path_factory)[1]), "--checkpoint", str(tiny_checkpoint(tmp_path_factory)),
               "--vgg", str(random_vgg_checkpoint(tmp_path_factory)), "--device", "cpu", "--out", str(out),
               "--top", str(len(SEEN))])
    assert rc == 0 and str(out) in capsys.readouterr().out
    assert_not_blank(read_png(out), min_height=300, min_width=600)  # 5 panels (4 heads)
