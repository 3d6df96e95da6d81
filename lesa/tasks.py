"""What each experiment trains on and reports: labels, label vectors, splits (no I/O of features).

- ``nus_wide_zero_shot`` (original ``zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py``):
  seen = the 925 tags of TagList1k that are not among the 81 concepts, in TagList1k order
  (original: ``[i for i in range(1000) if tag1k[i] not in tag81]``; ``seen_unseen_tag_indices``); unseen = the 81 concepts.
  Vectors: ``vecs_1k[seen]`` and ``vecs_81`` of the pickle. Validation = the first 5,000 train
  records (training skips them). Test reports: zero-shot on 81, generalised on 81+925 (unseen first).
- ``nus_wide_multilabel`` (original ``multilabel_experiments/NUS_WIDE_rank_Visual_Word_Attention.py``):
  the 81 concepts are the (seen) labels, with ``vecs_81``; no unseen labels (original: a zero vector).
- ``openimages`` (original ``multilabel_experiments/OpenImage_rank_Visual_Word_Attention.py`` and
  ``zeroshot_experiments/OpenImage_evaluate_top_multi_label.py``): 7,186 trainable labels seen,
  unseen = the 2,594 unseen labels, or the 400 rows of ``top_400_unseen.csv``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from lesa.datasets.embeddings import load_label_ids_pickle, load_vector_pair, read_label_list
from lesa.datasets.nus_wide import seen_unseen_tag_indices
from lesa.datasets.openimages import read_class_descriptions
from lesa.errors import DataError, ShapeError


@dataclass
class TaskData:
    """Labels and vectors of one experiment; ``*_labels`` are LabelSpecs for ``RangeReader``."""

    task: str
    seen_names: list[str]
    unseen_names: list[str]
    seen_vecs: np.ndarray  # (C, 300) raw word vectors
    unseen_vecs: np.ndarray  # (U, 300)
    train_labels: dict  # {"seen": (array name, columns or None)}
    val_labels: dict
    test_labels: dict
    has_unseen: bool = True  # False: the model's unseen head is a placeholder (multi-label only)

    @property
    def n_seen(self) -> int:
        return len(self.seen_names)


def read_top_unseen(path) -> np.ndarray:
    """Row indices of ``top_400_unseen.csv`` (one integer per line, first line may have a BOM)."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or not row[0].strip():
                    continue
                try:
                    value = int(row[0])
                except ValueError as exc:
                    raise DataError(f"{path}: line {lineno} is not an integer row index ({row[0]!r})") from exc
                if not 0 <= value < 2**31:
                    raise DataError(f"{path}: line {lineno}: row index {value} is out of range")
                rows.append(value)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the top-unseen row list ({exc}); expected a UTF-8 CSV "
                        "with one integer row index per line") from exc
    if not rows:
        raise DataError(f"{path}: no row indices")
    return np.array(rows, dtype=np.int64)


def _vecs(vecs: np.ndarray | None, n: int, path, what: str) -> np.ndarray:
    """``vecs`` checked to have one row per label; without the pickle, placeholders of that length."""
    if vecs is None:
        return np.zeros((n, 1), np.float32)
    if vecs.shape[0] != n:
        raise ShapeError(f"{path}: {what} has {vecs.shape[0]} vectors but there are {n} labels; "
                         "the label-vector file does not belong to these label lists")
    return vecs


def load_task(cfg, vectors: bool = True) -> TaskData:
    """Build the ``TaskData`` of ``cfg.experiment.task`` from the files named in ``cfg.data``
    (``vectors=False``: the label lists only, zero vectors, e.g. to score predictions)."""
    d = cfg.data
    task = cfg.experiment.task
    first, second = load_vector_pair(d.label_vectors, dim=None) if vectors else (None, None)
    if task.startswith("nus_wide"):
        tag1k = read_label_list(d.tag_list)
        tag81 = read_label_list(d.concepts)
        second = _vecs(second, len(tag81), d.label_vectors, "the second array (concept vectors)")
        if task == "nus_wide_multilabel":
            labels = {"seen": ("labels_81", None)}
            return TaskData(task=task, seen_names=tag81, unseen_names=["<none>"], seen_vecs=second,
                            unseen_vecs=np.zeros((1, second.shape[1]), np.float32), train_labels=labels,
                            val_labels=labels, test_labels=labels, has_unseen=False)
        first = _vecs(first, len(tag1k), d.label_vectors, "the first array (tag vectors)")
        seen_idx, _ = seen_unseen_tag_indices(tag1k, tag81)
        if seen_idx.size == 0:
            raise DataError(f"{d.tag_list}: every tag is also a concept of {d.concepts}; no seen labels")
        seen = {"seen": ("labels_1k", seen_idx), "unseen": ("labels_81", None)}
        return TaskData(task=task, seen_names=[tag1k[i] for i in seen_idx], unseen_names=tag81,
                        seen_vecs=first[seen_idx], unseen_vecs=second,
                        train_labels={"seen": ("labels_1k", seen_idx)}, val_labels=seen, test_labels=seen)
    if task == "openimages":
        seen_ids = read_label_list(d.seen_label_ids)
        unseen_ids = load_label_ids_pickle(d.unseen_label_ids)
        first = _vecs(first, len(seen_ids), d.label_vectors, "the first array (seen vectors)")
        second = _vecs(second, len(unseen_ids), d.label_vectors, "the second array (unseen vectors)")
        names = read_class_descriptions(d.class_descriptions) if d.class_descriptions else {}
        seen_names = [names.get(i, i) for i in seen_ids]
        unseen_names = [names.get(i, i) for i in unseen_ids]
        cols = None
        if d.top_unseen:
            cols = read_top_unseen(d.top_unseen)  # (non-negative: checked as it is read)
            if cols.max() >= len(unseen_ids):
                raise DataError(f"{d.top_unseen}: row indices must be in 0..{len(unseen_ids) - 1}")
            second, unseen_names = second[cols], [unseen_names[i] for i in cols]
        labels = {"seen": ("labels", None)}
        return TaskData(task=task, seen_names=seen_names, unseen_names=unseen_names, seen_vecs=first,
                        unseen_vecs=second, train_labels=labels, val_labels=labels,
                        test_labels={"seen": ("seen_labels", None), "unseen": ("unseen_labels", cols)})
    raise DataError(f"unknown task {task!r}")
