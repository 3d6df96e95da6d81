"""Zero-shot tagging of new images with any label names (``lesa tag``; ``lesa visualize`` draws it).

    image file --decode_jpeg--> uint8 (H, W, 3) --vgg_preprocess_batch--> crop (3, 224, 224)
        --VGG19Conv54--> features (196, 512) --LESA--> scores of the labels (L,)

The user's label names become the model's *unseen* labels (``model.set_unseen_vecs``), their
vectors built from a GloVe text file (``lesa.datasets.embeddings.vectors_from_glove``: a
multi-word label is the mean of its words; a label none of whose words is in the file is dropped
with a warning). A label's score is the best of the T attention heads' scores (``zs_logits``); the
same pass gives what the attention figures draw: the maps ``alphas (T, 196)`` and each head's
scores ``(T, L)``. Without label names, the checkpoint's own seen / unseen / all labels are scored
(native checkpoints saved with their names).

Checkpoints are read by ``lesa.checkpoint.load_model``: a native ``.pt`` or the original's TF
``model.ckpt``, whose fixed label vectors are not in the file; a zero placeholder stands in for
the seen ones, which feed nothing but the seen scores. The word vectors must have the model's
dimension (300 for the paper's). Everything runs in inference mode without randomness: the same
command gives the same numbers (an image tagged alone or in a batch may differ in the last
float32 digits, as convolution algorithms depend on the batch).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from lesa.checkpoint import LoadedModel
from lesa.errors import CheckpointError, ConfigError, ImageError, ShapeError

LABEL_SETS = ("unseen", "seen", "all")


# -- labels -------------------------------------------------------------------------------------
def parse_labels(text: str) -> list[str]:
    """``"beach, dog, sunset"`` -> ``["beach", "dog", "sunset"]`` (commas or new lines; duplicates
    and empty items dropped, order kept)."""
    labels = [label for label in dict.fromkeys(" ".join(item.split()) for item in re.split(r"[,\n]", text)) if label]
    if not labels:
        raise ConfigError(f"no label names in {text!r}; give them as --labels \"beach, dog, sunset\"")
    return labels


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label per line (commas also separate labels)."""
    from lesa.datasets.embeddings import read_label_list

    return parse_labels("\n".join(read_label_list(path)))


@dataclass
class LabelVectors:
    names: list[str]  # the labels kept, in the user's order
    vectors: np.ndarray  # (L, dim) raw word vectors
    missing_words: dict[str, list[str]]  # kept label -> its words not in the GloVe file
    dropped: list[str]  # labels none of whose words is in the GloVe file


def label_vectors(names: Sequence[str], glove_path: str | os.PathLike, dim_w2v: int) -> LabelVectors:
    """Vectors of ``names`` from a GloVe text file, checked against the model's dimension; labels
    none of whose words is in the file are dropped (``DataError`` when no label is left)."""
    from lesa.datasets.embeddings import vectors_from_glove

    built = vectors_from_glove(glove_path, list(names), allow_missing_labels=True)
    if built.vectors.shape[1] != dim_w2v:
        raise ShapeError(
            f"{glove_path} holds {built.vectors.shape[1]}-d word vectors but the model was trained with "
            f"{dim_w2v}-d label vectors; pass a GloVe file of dimension {dim_w2v} to --embeddings "
            "(the paper's: glove.6B.300d.txt, i.e. glove-wiki-gigaword-300)")
    keep = [i for i, name in enumerate(names) if name not in built.unknown_labels]
    return LabelVectors([names[i] for i in keep], built.vectors[keep],
                        {n: w for n, w in built.missing_words.items() if n not in built.unknown_labels},
                        built.unknown_labels)


# -- VGG-19 ---------------------------------------------------------------------------------------
def load_vgg(vgg_path: str | os.PathLike | None = None, torchvision_weights: str | os.PathLike | None = None,
             device: str | torch.device = "cpu"):
    """VGG19Conv54 from the TF-slim ``vgg_19.ckpt`` (``vgg_path``, as the original) or else from
    torchvision's ImageNet weights (``torchvision_weights``: a local .pth; None: torch's download)."""
    from lesa.device import channels_last_by_default
    from lesa.features import VGG19Conv54

    try:
        vgg = VGG19Conv54.from_tf_slim(vgg_path) if vgg_path else VGG19Conv54.from_torchvision(torchvision_weights)
    except CheckpointError as exc:
        if vgg_path or torchvision_weights:
            raise
        from torchvision.models import VGG19_Weights

        raise CheckpointError(  # the download failed (no network): name this command's flags
            f"cannot download torchvision's VGG-19 weights ({exc.__cause__ or exc}); download "
            f"{VGG19_Weights.IMAGENET1K_V1.url} where there is network and pass it with "
            "--torchvision-weights PATH, or use the TF-slim weights: --vgg vgg_19.ckpt") from exc
    layout = torch.channels_last if channels_last_by_default(device, "fp32") else torch.contiguous_format
    return vgg.to(device).to(memory_format=layout).eval()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file decoded as the original's extraction did -> uint8 (H, W, 3)."""
    from lesa.features import decode_jpeg

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc
    return decode_jpeg(data, name=str(path))


# -- tagging --------------------------------------------------------------------------------------
def ranking(scores: np.ndarray) -> np.ndarray:
    """Label indices by decreasing score; ties keep the label order (deterministic)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


@dataclass
class ImageTags:
    """The tagging result of one image."""

    image: str
    names: list[str]  # the label set, in the user's order
    scores: np.ndarray  # (L,) float32
    head_scores: np.ndarray  # (T, L) float32
    alphas: np.ndarray  # (T, 196) float32
    crop: np.ndarray | None = None  # (3, 224, 224) preprocessed crop (for figures)

    def ranked(self, top: int | None = None) -> list[tuple[str, float]]:
        return [(self.names[i], float(self.scores[i])) for i in ranking(self.scores)[: top or None]]

    def to_json(self, top: int | None = None) -> dict:
        return {"image": self.image,
                "tags": [{"label": n, "score": s} for n, s in self.ranked(top)],
                "scores": {n: float(s) for n, s in zip(self.names, self.scores)}}


class Tagger:
    """Scores images with a LESA model (``lesa.checkpoint.load_model``) and a VGG-19 (``load_vgg``).

    With ``labels`` (a ``LabelVectors``): the user's labels, set as the model's unseen ones.
    Without: the checkpoint's own ``label_set`` ("seen", "unseen", or "all": unseen first).
    """

    def __init__(self, loaded: LoadedModel, vgg, labels: LabelVectors | None = None,
                 label_set: str = "unseen", device: str | torch.device = "cpu", batch_size: int = 8):
        if label_set not in LABEL_SETS:
            raise ConfigError(f"label set {label_set!r} is not one of {', '.join(LABEL_SETS)}")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.model, self.vgg = loaded.model.to(device).eval(), vgg.to(device).eval()
        self.device, self.batch_size = device, batch_size
        if labels is not None:
            self.model.set_unseen_vecs(labels.vectors)
            label_set, self.names = "unseen", list(labels.names)
        else:
            seen, unseen = loaded.seen_names, loaded.unseen_names
            self.names = {"seen": seen, "unseen": unseen, "all": unseen + seen if seen and unseen else []}[label_set]
            if not self.names:
                raise ConfigError(
                    f"{loaded.source} holds no names for its {label_set} labels (TF checkpoints and "
                    "checkpoints saved without label names); pass --labels or --labels-file with --embeddings")
        self.label_set = label_set

    @torch.no_grad()
    def _score(self, images: list) -> tuple:
        """uint8 images -> crops (B, 3, 224, 224), scores (B, L), head scores (B, T, L), alphas (B, T, 196)."""
        from lesa.features import vgg_preprocess_batch

        crops = vgg_preprocess_batch(images, device=self.device)
        out = self.model(self.vgg(crops).float())
        scores, heads = {
            "unseen": (out.zs_logits, out.zs_att_logits),
            "seen": (out.logits, out.att_logits),
            "all": (out.gzs_logits, torch.cat([out.zs_att_logits, out.att_logits], dim=2)),
        }[self.label_set]
        return [t.cpu().numpy() for t in (crops, scores, heads, out.alphas)]

    def tag(self, paths: Sequence, keep_crops: bool = False, errors: list | None = None,
            progress: bool = False) -> Iterator[ImageTags]:
        """One ``ImageTags`` per usable image, in input order. With ``errors`` a list, images that
        cannot be read are appended as ``(path, ImageError)`` and skipped, else the error is raised;
        ``progress``: a tqdm bar on stderr when there are several images."""
        from tqdm import tqdm

        batch: list[tuple[str, np.ndarray]] = []
        with tqdm(total=len(paths), desc="tagging", unit="img", disable=not progress or len(paths) < 2) as bar:
            for i, path in enumerate(paths):
                try:
                    batch.append((str(path), read_image(path)))
                except ImageError as exc:
                    if errors is None:
                        raise
                    errors.append((str(path), exc))
                if batch and (len(batch) == self.batch_size or i == len(paths) - 1):
                    crops, scores, heads, alphas = self._score([image for _, image in batch])
                    for b, (name, _) in enumerate(batch):
                        yield ImageTags(name, self.names, scores[b], heads[b], alphas[b],
                                        crops[b] if keep_crops else None)
                    batch = []
                bar.update(1)


def figure_path(base: str | os.PathLike, image: str, images: Sequence[str]) -> Path:
    """Where ``--attention base.png`` draws ``image``: ``base.png`` itself for a single image, else
    ``base-<image name>.png`` (``base-<position>-<image name>.png`` when image names repeat)."""
    base = Path(base)
    if len(images) == 1:
        return base
    stem = Path(image).stem
    if [Path(str(p)).stem for p in images].count(stem) > 1:
        stem = f"{[str(p) for p in images].index(str(image)):03d}-{stem}"
    return base.with_name(f"{base.stem}-{stem}{base.suffix or '.png'}")


def format_tags(result: ImageTags, top: int | None) -> str:
    """Plain-text ranking of one image, for the terminal."""
    ranked = result.ranked(top)
    width = max(len(n) for n, _ in ranked)
    return "\n".join([result.image] + [f"  {i:>3}. {n:<{width}}  {s:+.4f}" for i, (n, s) in enumerate(ranked, 1)])
