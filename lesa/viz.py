"""Figures of LESA's shared attention: one panel per head over the image crop (``lesa visualize``).

For one image the model gives ``alphas (T, 196)``: T attention maps over the 14 x 14 conv5_4 grid
(row-major, as the features). Each map is upsampled bilinearly to the 224 x 224 crop the features
came from (as in the paper's figures) and drawn over the crop, the RGB means added back.

A head is titled with the labels it serves: among the top-scored labels of the image, a label's
score is the best of the T heads' scores (``max_t att_logits[t, label]``), and the label is listed
on the head achieving that maximum. Heads no top label picks carry only their number.

Rendering uses matplotlib's ``Figure`` directly (the Agg canvas, no pyplot state, no display).
(The original imported a ``visualize_attention`` that its repository never contained.)
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lesa.errors import ShapeError
from lesa.features.preprocess import CROP_SIZE as CROP  # the VGG input crop, in pixels
from lesa.features.preprocess import RGB_MEAN  # TF-slim VGG means, subtracted by the preprocessing
from lesa.shapes import GRID  # conv5_4 regions per side
from lesa.tag import ranking


def display_crop(crop) -> np.ndarray:
    """Preprocessed crop ``(3, 224, 224)`` (means subtracted) -> displayable uint8 ``(224, 224, 3)``."""
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim != 3 or crop.shape[0] != 3:
        raise ShapeError(f"expected a preprocessed crop (3, H, W), got {crop.shape}")
    rgb = crop.transpose(1, 2, 0) + np.asarray(RGB_MEAN, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def upsample_alphas(alphas, size: int = CROP) -> np.ndarray:
    """Attention ``(T, 196)`` -> maps ``(T, size, size)``, bilinear (half-pixel centres)."""
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float32))
    if a.ndim != 2 or a.shape[1] != GRID * GRID:
        raise ShapeError(f"expected attention weights (T, {GRID * GRID}), got {tuple(a.shape)}")
    maps = a.reshape(-1, 1, GRID, GRID)  # row-major 14 x 14, as the features were reshaped
    up = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def labels_per_head(head_scores, scores, top: int = 5) -> list[list[int]]:
    """For each head, the indices of the ``top`` best-scored labels whose best head it is.

    ``head_scores (T, L)``, ``scores (L,)`` (= max over heads). Labels keep their rank order;
    ties between heads go to the first head (numpy argmax).
    """
    head_scores = np.asarray(head_scores)
    if head_scores.ndim != 2 or head_scores.shape[1] != np.shape(scores)[0]:
        raise ShapeError(f"head scores {head_scores.shape} do not fit {np.shape(scores)[0]} label scores")
    per_head: list[list[int]] = [[] for _ in range(head_scores.shape[0])]
    for label in ranking(scores)[:top]:
        per_head[int(np.argmax(head_scores[:, label]))].append(int(label))
    return per_head


def head_titles(head_scores, scores, names: Sequence[str], top: int = 5, width: int = 26) -> list[str]:
    """``"head 3: dog, beach"`` for every head (wrapped to ``width`` characters, at most 3 lines)."""
    titles = []
    for t, labels in enumerate(labels_per_head(head_scores, scores, top), 1):
        text = f"head {t}" + (": " + ", ".join(names[i] for i in labels) if labels else "")
        titles.append(textwrap.fill(text, width=width, max_lines=3, placeholder=" …"))
    return titles


def heat_overlay(heat: np.ndarray, cmap, max_opacity: float = 0.7) -> np.ndarray:
    """An RGBA layer ``(H, W, 4)`` for one map: coloured by the weight scaled to the map's maximum,
    and as opaque as it is strong (regions the head ignores leave the photo visible)."""
    scaled = heat / max(float(heat.max()), 1e-12)
    rgba = cmap(scaled)
    rgba[..., 3] = max_opacity * scaled
    return rgba


def attention_figure(crop, alphas, head_scores, scores, names: Sequence[str], top: int = 5,
                     title: str | None = None, cols: int | None = None, panel_inches: float = 2.3):
    """A matplotlib ``Figure``: the crop, then one overlay panel per attention head.

    ``crop (3, 224, 224)`` preprocessed, ``alphas (T, 196)``, ``head_scores (T, L)``, ``scores (L,)``,
    ``names`` the L label names. Each head's map is scaled to its own maximum.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cmap = colormaps["jet"]
    image = display_crop(crop)
    maps = upsample_alphas(alphas, size=image.shape[0])
    titles = head_titles(head_scores, scores, names, top)
    n_panels = len(maps) + 1
    cols = cols or min(n_panels, 6)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(cols * panel_inches, rows * (panel_inches + 0.45) + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(image)
    axes[0].set_title("input (224×224 crop)", fontsize=8)
    for ax, heat, head_title in zip(axes[1:], maps, titles):
        ax.imshow(image)
        ax.imshow(heat_overlay(heat, cmap), interpolation="nearest")
        ax.set_title(head_title, fontsize=8)
    ranked = ", ".join(f"{names[i]} {float(scores[i]):.2f}" for i in ranking(scores)[:top])
    line = textwrap.shorten("top: " + ranked, width=max(40, 18 * cols))
    fig.suptitle(f"{title}\n{line}" if title else line, fontsize=9)
    fig.tight_layout()
    return fig


def save_attention_figure(path, result, top: int = 5, title: str | None = None, dpi: int = 100) -> Path:
    """The attention figure of one ``lesa.tag.ImageTags`` (tagged with ``keep_crops=True``), as a PNG."""
    from lesa.plots import save_figure

    fig = attention_figure(result.crop, result.alphas, result.head_scores, result.scores, result.names,
                           top=top, title=Path(result.image).name if title is None else title)
    return save_figure(fig, path, dpi=dpi)
