"""NUS-WIDE metadata -> the images of a split and their labels, as the original extraction did.

Files under ``root`` (``data/NUS_WIDE``), as NUS-WIDE's zip files unpack; the original's layout,
with ``Concepts81.txt`` and ``AllLabels/`` at the root, works too (``lesa.layout.nus_wide_file``)::

    ImageList/Imagelist.txt              all 269,648 images (Windows paths), the row order of labels
    ImageList/{Train,Test}Imagelist.txt  the split's images, ``<concept>\\<file>.jpg``
    NUS_WID_Tags/TagList1k.txt           the 1000 tags
    NUS_WID_Tags/AllTags1k.txt           (269648, 1000) 0/1 tag matrix, tab separated
    ConceptsList/Concepts81.txt          the 81 human-annotated concepts
    Groundtruth/AllLabels/Labels_<concept>.txt   (269648,) 0/1 per concept
    Flickr/<concept>/<file>.jpg          the images (``images_dir`` overrides)

Labels ``2*y - 1``, with the 75 of the 1000 tags that are among the 81 concepts set to 0 in
``labels_1k`` (unseen labels are not trained on). Skipped, as the original did: missing files,
Flickr's "photo unavailable" placeholder (by SHA-256) and files of at most 4000 bytes. Ids are the
split-list entries with ``/`` (the original stored ``./data/NUS_WIDE/Flickr/`` + that path).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lesa.datasets.embeddings import read_label_list
from lesa.errors import DataError
from lesa.layout import nus_wide_file

SPLITS = ("Train", "Test")
# SHA-256 of the bytes Flickr served for deleted photos (a 3,344-byte PNG; the original compared
# every file with its copy temps/test.jpg).
FLICKR_PLACEHOLDER_SHA256 = "e29a55808b2b6bb0681116206863eda419e5012384ed75bda880bf87e440676f"
FLICKR_PLACEHOLDER_SIZE = 3344
# original: cap_file_size — files of at most this many bytes are "probably unavailable images"
MIN_IMAGE_BYTES = 4000


def seen_unseen_tag_indices(tags_1k: Sequence[str], concepts_81: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the 1000 tags of the seen tags (not concepts) and of those that are concepts."""
    is_concept = np.isin(np.asarray(tags_1k, dtype=object), list(concepts_81))
    return np.flatnonzero(~is_concept).astype(np.int64), np.flatnonzero(is_concept).astype(np.int64)


def nus_wide_labels(tags01_1k: np.ndarray, labels01_81: np.ndarray, unseen_tag_idx: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices -> (labels_1k (N,1000), labels_81 (N,81)) int8 in {-1,0,1} as the original."""
    labels_1k = (2 * np.asarray(tags01_1k, dtype=np.int8) - 1).astype(np.int8)
    labels_1k[:, unseen_tag_idx] = 0  # original: tags among the 81 concepts are unseen -> 0
    labels_81 = (2 * np.asarray(labels01_81, dtype=np.int8) - 1).astype(np.int8)
    return labels_1k, labels_81


def read_01_matrix(path: Path, n_cols: int, block_lines: int = 8192) -> np.ndarray:
    """A text matrix of single 0/1 digits separated by whitespace, one row per line -> uint8 (N, n_cols),
    parsed in blocks of lines (AllTags1k.txt is ~540 MB: no whole-file temporaries)."""
    if not path.exists():
        raise DataError(f"NUS-WIDE label file {path} not found; check --root")
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    if raw.size and (line_ends.size == 0 or line_ends[-1] != raw.size - 1):
        line_ends = np.append(line_ends, raw.size)  # last line without a newline
    rows, start = [], 0
    for first in range(0, line_ends.size, block_lines):
        stop = int(line_ends[min(first + block_lines, line_ends.size) - 1]) + 1
        rows.append(_parse_01_block(raw[start:stop], n_cols, path, first))
        start = stop
    return np.concatenate(rows) if rows else np.zeros((0, n_cols), dtype=np.uint8)


def _parse_01_block(raw: np.ndarray, n_cols: int, path: Path, first_line: int) -> np.ndarray:
    is_digit = (raw == ord("0")) | (raw == ord("1"))
    is_space = (raw == ord("\t")) | (raw == ord(" ")) | (raw == ord("\r")) | (raw == ord("\n"))
    bad = np.flatnonzero(~(is_digit | is_space))
    if bad.size:
        line = first_line + int(np.count_nonzero(raw[: bad[0]] == ord("\n"))) + 1
        raise DataError(f"{path}: line {line} has {bytes(raw[bad[0]:bad[0] + 1])!r}; only 0/1 values expected")
    if np.any(is_digit[1:] & is_digit[:-1]):  # "10" would be a number, not two labels
        raise DataError(f"{path}: multi-digit values near line {first_line + 1}; only 0/1 values expected")
    line_of = np.cumsum(raw == ord("\n"))
    n_lines = int(line_of[-1]) + (0 if raw[-1] == ord("\n") else 1)
    counts = np.bincount(line_of[is_digit], minlength=n_lines)[:n_lines]
    used = np.flatnonzero(counts)
    last = int(used[-1]) if used.size else -1  # blank lines at the end are ignored
    if np.any(counts[: last + 1] != n_cols):
        wrong = int(np.flatnonzero(counts[: last + 1] != n_cols)[0])
        raise DataError(f"{path}: line {first_line + wrong + 1} has {int(counts[wrong])} values; "
                        f"expected {n_cols} per line")
    return (raw[is_digit] - ord("0")).reshape(-1, n_cols)


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip().replace("\\", "/") for line in text.rstrip().splitlines()]


def skip_reason(path: Path, min_bytes: int = MIN_IMAGE_BYTES) -> str | None:
    """Why the original skipped this file: 'missing', 'placeholder', 'small' — or None (keep it)."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size == FLICKR_PLACEHOLDER_SIZE and hashlib.sha256(path.read_bytes()).hexdigest() == FLICKR_PLACEHOLDER_SHA256:
        return "placeholder"
    return "small" if size <= min_bytes else None


@dataclass
class ImageSplit:
    """The images of one split that are extracted (NUS-WIDE or Open Images), their labels, and what
    was skipped."""

    split: str
    img_ids: list[str]
    paths: list[Path]
    labels: object  # NUS-WIDE {labels_1k: (N, 1000), labels_81: (N, 81)} int8; Open Images OpenImagesLabels
    label_names: dict[str, list[str]]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> img ids
    images_dir: Path | None = None


def load_nus_wide_split(root: str | os.PathLike, split: str, images_dir: str | os.PathLike | None = None,
                        min_bytes: int = MIN_IMAGE_BYTES) -> ImageSplit:
    """Read the metadata under ``root`` and list the ``split`` ('Train'|'Test') images to extract."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"NUS-WIDE split {split!r} is not one of {SPLITS}")
    images_dir = Path(images_dir) if images_dir else root / "Flickr"
    tags_1k = read_label_list(nus_wide_file(root, "tag_list"))
    concepts_81 = read_label_list(nus_wide_file(root, "concepts"))
    if len(tags_1k) != 1000 or len(concepts_81) != 81:
        raise DataError(f"{root}: TagList1k.txt has {len(tags_1k)} tags and Concepts81.txt "
                        f"{len(concepts_81)} concepts; expected 1000 and 81")
    _, unseen_idx = seen_unseen_tag_indices(tags_1k, concepts_81)
    all_images = _read_lines(nus_wide_file(root, "image_list"))
    # original: images are matched to label rows by file name only (last one wins)
    row_of = {name.split("/")[-1]: row for row, name in enumerate(all_images)}
    split_list = nus_wide_file(root, "split_list", split)
    entries = [entry for entry in _read_lines(split_list) if entry]
    kept_ids, kept_paths, rows = [], [], []
    skipped: dict[str, list[str]] = {}
    for entry in entries:
        key = entry.split("/")[-1]
        if key not in row_of:
            raise DataError(f"{split_list}: image {entry!r} is not in Imagelist.txt; the metadata files do "
                            "not belong together")
        path = images_dir / entry
        reason = skip_reason(path, min_bytes)
        if reason:
            skipped.setdefault(reason, []).append(entry)
            continue
        kept_ids.append(entry)
        kept_paths.append(path)
        rows.append(row_of[key])
    if entries and len(skipped.get("missing", ())) == len(entries):
        raise DataError(f"none of the {len(entries)} images of {split_list} is in {images_dir} (e.g. "
                        f"{images_dir / entries[0]} does not exist); pass the folder that holds NUS-WIDE's "
                        "<concept>/<file>.jpg images with --images-dir (default: Flickr in --root)")
    tags01 = read_01_matrix(nus_wide_file(root, "all_tags"), 1000)
    all_labels = nus_wide_file(root, "all_labels")
    labels01_81 = np.stack([read_01_matrix(all_labels / f"Labels_{c}.txt", 1)[:, 0] for c in concepts_81], axis=1)
    for what, arr in (("AllTags1k.txt", tags01), (f"{all_labels}/Labels_*.txt", labels01_81)):
        if arr.shape[0] != len(all_images):
            raise DataError(f"{root}: {what} has {arr.shape[0]} rows but Imagelist.txt lists "
                            f"{len(all_images)} images; the metadata files do not belong together")
    rows_arr = np.array(rows, dtype=np.int64)
    labels_1k, labels_81 = nus_wide_labels(tags01[rows_arr], labels01_81[rows_arr], unseen_idx)
    return ImageSplit(split, kept_ids, kept_paths, {"labels_1k": labels_1k, "labels_81": labels_81},
                      {"labels_1k": tags_1k, "labels_81": concepts_81}, skipped, images_dir)
