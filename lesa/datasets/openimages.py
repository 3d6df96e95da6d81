"""Open Images (2018_04) metadata -> the images of a split and their labels, as the original did.

Files under ``root`` (``data/OpenImages/2018_04``; the original's ``data/2018_04``)::

    <split>-annotations-human-imagelabels.csv   ImageID,Source,LabelName,Confidence
    classes-trainable.txt                        the 7186 seen label ids
    unseen_labels.pkl                            numpy array of the 2594 unseen label ids (test)

Images: ``<images_dir>/<ImageID>.jpg`` (default ``<root>/../image_data/<split>``, where ``lesa
download openimages`` writes them) in the CSV's order of first appearance; missing files are
skipped (as the original). Labels ``2*Confidence - 1``, 0 where not annotated: ``labels (N, 7186)``,
test ``seen_labels (N, 7186)`` and ``unseen_labels (N, 2594)``, kept sparse (train: 5.5 M images).

original: the CSV was cut into blocks of 40,000 rows and each image's labels were looked up in its
block only, so an image whose rows straddle two blocks appeared twice, each time with part of its
labels. By default each image is kept once; ``partition_rows=40000`` (``--original-partition-quirk``)
reproduces the original.
"""
from __future__ import annotations

import csv
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lesa.datasets.embeddings import load_label_ids_pickle, read_label_list
from lesa.datasets.nus_wide import ImageSplit
from lesa.errors import DataError

SPLITS = ("train", "validation", "test")
ORIGINAL_PARTITION_ROWS = 40000


@dataclass
class OpenImagesLabels:
    """Sparse labels of images: for image ``i``, rows ``offsets[i]:offsets[i+1]`` of the entries."""

    image_ids: list[str]
    label_dims: dict[str, int]
    offsets: np.ndarray                    # (N+1,) int64
    columns: dict[str, np.ndarray]         # name -> (E,) int32 column, -1 where not in that map
    values: np.ndarray                     # (E,) int8 in {-1, 0, 1}

    def dense(self, name: str, positions: Sequence[int]) -> np.ndarray:
        """Labels (B, D) int8 of array ``name`` for images at ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros((positions.size, self.label_dims[name]), dtype=np.int8)
        cols = self.columns[name]
        for row, i in enumerate(positions):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            c = cols[lo:hi]
            keep = c >= 0
            out[row, c[keep]] = self.values[lo:hi][keep]  # later rows win, as the original loop
        return out

    def select(self, positions: Sequence[int]) -> "OpenImagesLabels":
        """The labels of a subset of images (in the given order)."""
        positions = np.asarray(positions, dtype=np.int64)
        lengths = self.offsets[positions + 1] - self.offsets[positions]
        entry_idx = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in positions]) \
            if positions.size else np.zeros(0, dtype=np.int64)
        return OpenImagesLabels([self.image_ids[i] for i in positions], dict(self.label_dims),
                                np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                                {k: v[entry_idx] for k, v in self.columns.items()}, self.values[entry_idx])


def build_openimages_labels(rows: Iterable[tuple[str, str, str]], seen: Sequence[str],
                            unseen: Sequence[str] | None = None, partition_rows: int | None = None,
                            source: str = "<rows>") -> OpenImagesLabels:
    """``(ImageID, LabelName, Confidence)`` rows -> sparse labels: ``labels``, or with ``unseen``
    ``seen_labels``/``unseen_labels``; ``partition_rows``: the original's per-block lookup."""
    seen_col = {label: i for i, label in enumerate(seen)}
    unseen_col = {label: i for i, label in enumerate(unseen or ())}
    image_index: dict[tuple[int, str], int] = {}
    image_ids: list[str] = []
    # compact growable columns (Open Images train has ~15 M label rows)
    entry_image, entry_seen, entry_unseen, entry_value = array("q"), array("i"), array("i"), array("b")
    for n, (image_id, label, confidence) in enumerate(rows):
        try:
            value = 2 * int(float(confidence)) - 1
        except (ValueError, OverflowError):
            raise DataError(f"{source}: row {n + 2}: Confidence {confidence!r} is not a number") from None
        if value not in (-1, 1):
            raise DataError(f"{source}: row {n + 2}: Confidence {confidence!r}; expected 0 or 1")
        key = (n // partition_rows if partition_rows else 0, image_id)
        idx = image_index.setdefault(key, len(image_ids))
        if idx == len(image_ids):
            image_ids.append(image_id)
        s, u = seen_col.get(label, -1), unseen_col.get(label, -1)
        if s < 0 and u < 0:
            continue  # original: not a trainable (or unseen) class
        entry_image.append(idx)
        entry_seen.append(s)
        entry_unseen.append(u)
        entry_value.append(value)
    image_arr = np.frombuffer(entry_image, dtype=np.int64)
    order = np.argsort(image_arr, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(image_arr, minlength=len(image_ids)))]).astype(np.int64)
    seen_arr = np.array(entry_seen, dtype=np.int32)[order]
    unseen_arr = np.array(entry_unseen, dtype=np.int32)[order]
    values = np.array(entry_value, dtype=np.int8)[order]
    if unseen is None:
        dims, columns = {"labels": len(seen)}, {"labels": seen_arr}
    else:
        dims = {"seen_labels": len(seen), "unseen_labels": len(unseen)}
        columns = {"seen_labels": seen_arr, "unseen_labels": unseen_arr}
    return OpenImagesLabels(image_ids, dims, offsets, columns, values)


def read_annotation_rows(path: Path) -> Iterable[tuple[str, str, str]]:
    """Stream ``(ImageID, LabelName, Confidence)`` from a human image-labels CSV."""
    if not path.exists():
        raise DataError(f"Open Images annotations {path} not found; download "
                        f"{path.name} of the 2018_04 release into --root")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            needed = ("ImageID", "LabelName", "Confidence")
            if header is None or any(h not in header for h in needed):
                raise DataError(f"{path}: header {header}; expected columns {', '.join(needed)}")
            cols = [header.index(h) for h in needed]
            for n, row in enumerate(reader):
                if len(row) < len(header):
                    raise DataError(f"{path}: row {n + 2} has {len(row)} fields; expected {len(header)}")
                yield row[cols[0]], row[cols[1]], row[cols[2]]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a UTF-8 annotation CSV ({exc}); the file is corrupted — "
                        "download it again") from exc


def read_class_descriptions(path: Path) -> dict[str, str]:
    """``class-descriptions.csv`` (no header): label id -> display name."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the class descriptions ({exc}); expected the UTF-8 CSV "
                        "class-descriptions.csv (label id, name)") from exc


def load_openimages_split(root: str | os.PathLike, split: str, images_dir: str | os.PathLike | None = None,
                          partition_rows: int | None = None) -> ImageSplit:
    """Read the 2018_04 metadata under ``root`` and list the ``split`` images found in ``images_dir``
    (default ``<root>/../image_data/<split>``)."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"Open Images split {split!r} is not one of {SPLITS}")
    images_dir = Path(images_dir) if images_dir else root.parent / "image_data" / split
    seen = read_label_list(root / "classes-trainable.txt")
    unseen = load_label_ids_pickle(root / "unseen_labels.pkl") if split == "test" else None
    csv_path = root / f"{split}-annotations-human-imagelabels.csv"
    labels = build_openimages_labels(read_annotation_rows(csv_path), seen, unseen, partition_rows, str(csv_path))
    keep, paths, skipped = [], [], {}
    for i, image_id in enumerate(labels.image_ids):
        path = images_dir / f"{image_id}.jpg"
        if path.is_file():
            keep.append(i)
            paths.append(path)
        else:
            skipped.setdefault("missing", []).append(image_id)
    if labels.image_ids and not keep:
        raise DataError(f"none of the {len(labels.image_ids)} images of {csv_path.name} is in {images_dir} (e.g. "
                        f"{images_dir / labels.image_ids[0]}.jpg does not exist); pass the folder of the "
                        f"<ImageID>.jpg files with --images-dir (`lesa download openimages --split {split}` "
                        f"writes them to OpenImages/image_data/{split} in the data folder)")
    labels = labels.select(keep)
    label_names = {"labels": seen} if unseen is None else {"seen_labels": seen, "unseen_labels": unseen}
    return ImageSplit(split, labels.image_ids, paths, labels, label_names, skipped, images_dir)
