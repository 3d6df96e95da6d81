"""Zero-shot tagging of new images with any label names (``lesa tag``).

    image file --decode_jpeg--> uint8 (H, W, 3) --vgg_preprocess--> crop (3, 224, 224)
        --VGG19Conv54--> features (196, 512) --LESA--> scores of the user's labels (L,)

The user's label names become the model's *unseen* label vectors (``model.set_unseen_vecs``),
built from a GloVe-format text file (``lesa.datasets.embeddings.vectors_from_glove``; multi-word
labels are the mean of their words). The ranking is ``zs_logits``: for each label, the best of the
T attention heads' scores. The same pass gives what ``lesa visualize`` draws: the attention maps
``alphas (T, 196)`` and the per-head scores ``(T, L)``.

Checkpoints:

- native ``.pt`` (``lesa.checkpoint``): the weights, the label vectors the model was trained with
  and, when saved by ``lesa train``, the seen/unseen label names;
- the original's TF checkpoint (the ``model.ckpt`` prefix): weights only. When the label vectors
  were fixed during training (the paper's setting) they are not in the file, and neither are the
  label names. Scoring the user's labels needs neither: the seen vectors only enter the seen
  scores, so the model is built with a placeholder ``(1, dim_w2v)`` of zeros (``dim_w2v`` read
  from ``prediction_frac/W``); with trainable vectors the file's ``vecs (C, dim)`` are loaded.

The word-vector dimension must be the model's (300 for the paper's GloVe/word2vec vectors): a model
trained with 300-d vectors cannot score 50-d ones. Everything runs in inference mode (batch-norm
moving statistics) without randomness, so the same command always gives the same numbers. (The
convolution algorithms may depend on the batch: an image tagged alone or among others
(``--batch-size``) can differ in the last float32 digits.)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from lesa.checkpoint import LoadedModel, load_model
from lesa.errors import ConfigError, ImageError, ShapeError

LABEL_SETS = ("unseen", "seen", "all")


# -- models -------------------------------------------------------------------------------------
def load_lesa(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A LESA in eval mode from a native ``.pt`` checkpoint or an original TF checkpoint (see the
    module doc: without the seen vectors of a TF checkpoint, a zero placeholder stands in)."""
    loaded = load_model(path, device=device, placeholder_seen=True)
    loaded.model.eval()
    return loaded


# -- label names and vectors ------------------------------------------------------------------
def parse_labels(text: str) -> list[str]:
    """``"beach, dog, sunset"`` -> ``["beach", "dog", "sunset"]`` (commas or new lines; duplicates
    and empty items dropped, order kept)."""
    labels: list[str] = []
    for item in re.split(r"[,\n]", text):
        item = " ".join(item.split())
        if item and item not in labels:
            labels.append(item)
    if not labels:
        raise ConfigError(f"no label names in {text!r}; give them as --labels \"beach, dog, sunset\"")
    return labels


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label per line (commas also separate labels)."""
    from lesa.datasets.embeddings import read_label_list

    return parse_labels("\n".join(read_label_list(path)))


@dataclass
class LabelVectors:
    names: list[str]
    vectors: np.ndarray  # (L, dim) raw word vectors
    missing_words: dict[str, list[str]]  # label -> its words absent from the GloVe file
    source: str


def label_vectors(names: Sequence[str], glove_path: str | os.PathLike, dim_w2v: int) -> LabelVectors:
    """Vectors of ``names`` from a GloVe text file, checked against the model's dimension."""
    from lesa.datasets.embeddings import vectors_from_glove

    built = vectors_from_glove(glove_path, list(names))
    dim = built.vectors.shape[1]
    if dim != dim_w2v:
        raise ShapeError(
            f"{glove_path} holds {dim}-d word vectors but the model was trained with {dim_w2v}-d label "
            f"vectors; use a GloVe file of dimension {dim_w2v} (the paper's: glove-wiki-gigaword-300, "
            "i.e. glove.6B.300d.txt)")
    return LabelVectors(list(names), built.vectors, built.missing_words, str(glove_path))


# -- VGG-19 features --------------------------------------------------------------------------
def load_vgg(vgg_path: str | os.PathLike | None = None, torchvision: bool = False,
             torchvision_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """VGG19Conv54 from a TF-slim ``vgg_19.ckpt`` or from torchvision's ImageNet weights."""
    from lesa.device import channels_last_by_default
    from lesa.features.vgg import VGG19Conv54

    use_torchvision = torchvision or torchvision_weights is not None
    if (vgg_path is None) == (not use_torchvision):
        raise ConfigError("choose the VGG-19 weights: --vgg vgg_19.ckpt (TF-slim, as the original) "
                          "or --torchvision (torchvision's ImageNet weights), not both")
    if vgg_path is not None:
        vgg = VGG19Conv54.from_tf_slim(vgg_path)
    else:
        vgg = VGG19Conv54.from_torchvision(torchvision_weights)
    layout = torch.channels_last if channels_last_by_default(device, "fp32") else torch.contiguous_format
    return vgg.to(device).to(memory_format=layout).eval()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as the original's extraction did -> uint8 (H, W, 3)."""
    from lesa.features.jpeg import decode_jpeg

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc
    return decode_jpeg(data, name=str(path))


@dataclass
class ImageFeatures:
    image: str
    crop: np.ndarray  # (3, 224, 224) float32, VGG-preprocessed (RGB means subtracted)
    features: torch.Tensor  # (196, 512)


@torch.no_grad()
def image_features(vgg, paths: Iterable, device: str | torch.device = "cpu", batch_size: int = 8,
                   errors: list | None = None) -> Iterator[ImageFeatures]:
    """Decode, preprocess and run VGG-19 on ``paths`` in batches; yields one ``ImageFeatures`` each.

    With ``errors`` a list, images that cannot be used are appended as ``(path, ImageError)`` and
    skipped; otherwise the error is raised.
    """
    from lesa.features.preprocess import vgg_preprocess_batch

    def flush(batch):
        crops = vgg_preprocess_batch([im for _, im in batch], device=device)  # (B, 3, 224, 224)
        feats = vgg(crops).float()  # (B, 196, 512)
        for (p, _), crop, f in zip(batch, crops, feats):
            yield ImageFeatures(str(p), crop.cpu().numpy(), f)

    batch = []
    for p in paths:
        try:
            image = read_image(p)
            if image.shape[0] < 1 or image.shape[1] < 1:
                raise ImageError(f"{p}: empty image")
        except ImageError as exc:
            if errors is None:
                raise
            errors.append((str(p), exc))
            continue
        batch.append((p, image))
        if len(batch) == batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


# -- scores ------------------------------------------------------------------------------------
@torch.no_grad()
def label_scores(model, features: torch.Tensor, label_set: str = "unseen"):
    """Scores of one label set for ``features (B, 196, 512)``.

    Returns ``scores (B, L)``, ``head_scores (B, T, L)`` (each head's score; ``scores`` is their max
    over T) and ``alphas (B, T, 196)``. ``label_set``: "unseen" (zs_logits: the labels given to
    ``set_unseen_vecs``), "seen" (logits: the training labels), "all" (gzs_logits, unseen first).
    """
    if label_set not in LABEL_SETS:
        raise ConfigError(f"label set {label_set!r} is not one of {LABEL_SETS}")
    out = model(features)
    if label_set == "unseen":
        heads, scores = out.zs_att_logits, out.zs_logits
    elif label_set == "seen":
        heads, scores = out.att_logits, out.logits
    else:
        heads, scores = torch.cat([out.zs_att_logits, out.att_logits], dim=2), out.gzs_logits
    return scores, heads, out.alphas


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
        order = ranking(self.scores)[: top if top else None]
        return [(self.names[i], float(self.scores[i])) for i in order]

    def to_json(self, top: int | None = None) -> dict:
        return {
            "image": self.image,
            "tags": [{"label": n, "score": s} for n, s in self.ranked(top)],
            "scores": {n: float(s) for n, s in zip(self.names, self.scores)},
        }


class Tagger:
    """Scores images against a label set with a LESA model and a VGG-19 feature extractor.

    ``label_set="unseen"`` with ``labels`` (a ``LabelVectors``): the user's labels, set as the model's
    unseen vectors. Without ``labels``: the checkpoint's own "seen", "unseen" or "all" labels.
    """

    def __init__(self, loaded: LoadedModel, vgg, labels: LabelVectors | None = None,
                 label_set: str = "unseen", device: str | torch.device = "cpu", batch_size: int = 8):
        if label_set not in LABEL_SETS:
            raise ConfigError(f"label set {label_set!r} is not one of {LABEL_SETS}")
        self.model = loaded.model.to(device).eval()
        self.vgg = vgg.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        if labels is not None:
            if label_set != "unseen":
                raise ConfigError("given label names are scored as the unseen (zero-shot) set; "
                                  "--label-set applies only to the checkpoint's own labels")
            self.model.set_unseen_vecs(labels.vectors)
            self.names = list(labels.names)
        else:
            seen, unseen = loaded.seen_names, loaded.unseen_names
            names = {"seen": seen, "unseen": unseen, "all": unseen + seen if seen and unseen else []}
            self.names = names[label_set]
            if not self.names:
                raise ConfigError(
                    f"{loaded.source} holds no names for its {label_set} labels (TF checkpoints and "
                    "checkpoints saved without label names); pass --labels/--labels-file with --embeddings")
        self.label_set = label_set

    def tag(self, paths: Sequence, keep_crops: bool = False, errors: list | None = None,
            progress: bool = False) -> Iterator[ImageTags]:
        """Yields one ``ImageTags`` per usable image, in input order (``errors``: see
        ``image_features``; ``progress``: a tqdm bar on stderr when there are several images)."""
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="tagging", unit="img", disable=not progress or len(paths) < 2)
        try:
            features = image_features(self.vgg, paths, self.device, self.batch_size, errors=errors)
            for done, item in enumerate(features, 1):
                bar.update(done + len(errors or ()) - bar.n)  # images scored or skipped so far
                scores, heads, alphas = label_scores(self.model, item.features[None], self.label_set)
                yield ImageTags(
                    image=item.image,
                    names=self.names,
                    scores=scores[0].cpu().numpy(),  # (L,)
                    head_scores=heads[0].cpu().numpy(),  # (T, L)
                    alphas=alphas[0].cpu().numpy(),  # (T, 196)
                    crop=item.crop if keep_crops else None,
                )
            bar.update(len(paths) - bar.n)
        finally:
            bar.close()


def tags_json(results: Sequence[ImageTags], top: int | None, **info) -> dict:
    """The JSON document of ``lesa tag --json``: run information and each image's ranked tags."""
    return {**info, "images": [r.to_json(top) for r in results]}


def figure_path(base: str | os.PathLike, image: str, images: Sequence[str]) -> Path:
    """Where ``--attention base.png`` draws ``image``: ``base.png`` itself for a single image, else
    ``base-<image name>.png`` (``base-<position>-<image name>.png`` when image names repeat)."""
    base = Path(base)
    if len(images) == 1:
        return base
    stems = [Path(str(p)).stem for p in images]
    stem = Path(image).stem
    if stems.count(stem) > 1:
        stem = f"{[str(p) for p in images].index(str(image)):03d}-{stem}"
    return base.with_name(f"{base.stem}-{stem}{base.suffix or '.png'}")


def format_tags(result: ImageTags, top: int | None) -> str:
    """Plain-text ranking of one image, for the terminal."""
    ranked = result.ranked(top)
    width = max(len(n) for n, _ in ranked)
    lines = [result.image]
    lines += [f"  {i:>3}. {n:<{width}}  {s:+.4f}" for i, (n, s) in enumerate(ranked, 1)]
    return "\n".join(lines)
