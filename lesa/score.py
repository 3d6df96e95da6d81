"""``lesa score``: the tables of ``lesa evaluate`` (``lesa.evaluate.test_tables``) for any method's scores.

Predictions (.npy/.npz/HDF5): ``scores`` (images, labels), optionally ``img_ids`` and ``label_names``;
a ``lesa evaluate --save-scores`` file holds the model's heads and scores bit for bit as evaluate.
Rows are matched to the split's images by id (else taken in its order), columns by label name (else
in the task's order: unseen, or unseen then seen as ``gzs_logits``); the output says which.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from lesa.datasets.h5 import open_features
from lesa.datasets.stream import read_labels
from lesa.errors import DataError, ShapeError
from lesa.evaluate import HEADS, format_summary, refuse_existing_reports, report_heads, test_tables, write_reports
from lesa.experiment import check_config
from lesa.tasks import load_task


def _strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def read_predictions(path) -> dict:
    """``{"scores": {head or "scores": (N, L) array}, "img_ids": [...] | None, "names": {head: [...]}}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file {path} not found")
    try:
        if path.suffix == ".npy":
            arrays = {"scores": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif path.suffix in (".h5", ".hdf5"):
            with h5py.File(path, "r") as f:
                arrays = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        else:
            raise DataError(f"{path}: predictions must be .npy, .npz or .h5 (an array of scores, images x labels)")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the predictions ({exc}); give an .npy/.npz/.h5 file of numbers "
                        "(no pickled objects)") from exc
    heads = [h for h in HEADS if h in arrays] or [k for k in ("scores",) if k in arrays]
    if not heads:
        numeric = [k for k, v in arrays.items() if v.ndim == 2 and v.dtype.kind in "fiu"]
        if len(numeric) != 1:
            raise DataError(f"{path}: which array holds the scores? name it 'scores' (arrays: {sorted(arrays)})")
        heads = numeric
    scores = {h: arrays[h] for h in heads}
    names = {h: _strings(arrays[f"names_{h}"]) for h in heads if f"names_{h}" in arrays}
    if "label_names" in arrays and len(heads) == 1:
        names[heads[0]] = _strings(arrays["label_names"])
    for head, s in scores.items():
        if s.ndim != 2 or s.dtype.kind not in "fiu":
            raise ShapeError(f"{path}: {head} must be a 2-d array of numbers (images, labels), got {s.shape} {s.dtype}")
        bad = ~np.isfinite(s)
        if bad.any():
            where = ", ".join(f"(image {r}, label {c})" for r, c in np.argwhere(bad)[:5])
            raise DataError(f"{path}: {head} holds {int(bad.sum())} NaN or infinite scores, e.g. at {where}")
        if head in names and len(names[head]) != s.shape[1]:
            raise ShapeError(f"{path}: {len(names[head])} label names for {s.shape[1]} score columns")
    ids = _strings(arrays["img_ids"]) if "img_ids" in arrays else None
    return {"scores": scores, "img_ids": ids, "names": names}


def match_rows(pred_ids: list[str] | None, split_ids: list[str], n_rows: int, where: str) -> tuple[np.ndarray, str]:
    """Row of the predictions for each image of the split, and how they were matched."""
    if pred_ids is None:
        if n_rows != len(split_ids):
            raise ShapeError(f"{where}: {n_rows} rows of scores but the split has {len(split_ids)} images; give "
                             "the images' ids (img_ids) to match them, or one row per image in the split's order")
        return np.arange(n_rows), "rows in the split's order (the predictions hold no image ids)"
    if len(pred_ids) != n_rows:
        raise ShapeError(f"{where}: {len(pred_ids)} image ids for {n_rows} rows of scores")
    position = {}
    for i, image in enumerate(pred_ids):
        if image in position:
            raise DataError(f"{where}: image id {image!r} appears twice (rows {position[image]} and {i})")
        position[image] = i
    missing = [image for image in split_ids if image not in position]
    extra = sorted(set(position) - set(split_ids))
    if missing or extra:
        detail = (f"{len(missing)} of the split's images have no scores, e.g. {missing[0]!r}" if missing else
                  f"{len(extra)} scored images are not in the split, e.g. {extra[0]!r}")
        raise DataError(f"{where}: {detail}; the predictions must score exactly the split's images")
    return np.array([position[image] for image in split_ids]), "rows matched to the split by image id"


def heads_of(task, scores: np.ndarray, names: list[str] | None, where: str) -> tuple[dict, str]:
    """One matrix of another method's scores -> the heads the task's reports read."""
    unseen, seen = list(task.unseen_names) if task.has_unseen else [], list(task.seen_names)
    sets = {"zs_logits": unseen, "gzs_logits": unseen + seen, "logits": seen}
    if names is not None:
        known = set(unseen) | set(seen)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(f"{where}: label {unknown[0]!r} is not a label of {task.task} ({len(unknown)} unknown)")
        column = {n: i for i, n in enumerate(names)}
        heads = {h: scores[:, [column[n] for n in labels]] for h, labels in sets.items()
                 if labels and all(n in column for n in labels)}
        if not heads:
            missing = [n for n in (unseen or seen) if n not in column]
            raise DataError(f"{where}: no report of {task.task} is covered: label {missing[0]!r} has no scores")
        return heads, "columns matched by label name"
    width = scores.shape[1]
    head = next((h for h, labels in sets.items() if labels and len(labels) == width), None)
    if head is None:
        widths = ", ".join(f"{len(labels)} ({h})" for h, labels in sets.items() if labels)
        raise ShapeError(f"{where}: {width} score columns; without label names {task.task} takes {widths}")
    heads = {head: scores}
    if head == "gzs_logits":  # its parts: the unseen labels first, then the seen
        heads["zs_logits"], heads["logits"] = scores[:, :len(unseen)], scores[:, len(unseen):]
    order = {"zs_logits": "the unseen labels", "gzs_logits": "the unseen labels, then the seen",
             "logits": "the seen labels"}[head]
    return heads, f"columns in the task's order: {order}, as the label lists give them"


def score(cfg, predictions, labels_path, out_dir, tag: str = "f", overwrite: bool = False, log=print) -> dict:
    """Reports of ``predictions`` against the split ``labels_path`` (see the module doc)."""
    check_config(cfg, splits=(), vectors=False)
    task = load_task(cfg, vectors=False)
    out_dir = Path(out_dir).absolute()
    refuse_existing_reports(out_dir, [tag], overwrite)
    pred = read_predictions(predictions)
    with open_features(labels_path) as split:
        labels = read_labels(split, task.test_labels)
        split_ids = split.img_ids
    for key, values in labels.items():
        bad = ~np.isin(values, (-1, 0, 1))
        if bad.any():
            raise DataError(f"{labels_path}: {int(bad.sum())} labels of {key!r} are outside {{-1, 0, 1}}")
    first = next(iter(pred["scores"].values()))
    rows, row_note = match_rows(pred["img_ids"], split_ids, first.shape[0], str(predictions))
    if set(pred["scores"]) <= set(HEADS):  # a model's heads (lesa evaluate --save-scores)
        heads = {h: s[rows] for h, s in pred["scores"].items() if h in report_heads(task)}
        for head in heads:
            if head in pred["names"]:  # (the task's order, whatever order they were saved in)
                heads[head] = heads_of(task, heads[head], pred["names"][head], str(predictions))[0][head]
        col_note = "the heads " + ", ".join(heads) + (" matched by label name" if pred["names"] else "")
    else:
        (matrix,), names = pred["scores"].values(), next(iter(pred["names"].values()), None)
        heads, col_note = heads_of(task, matrix[rows], names, str(predictions))
    summary = write_reports(out_dir, tag, test_tables(task, heads, labels, cfg.evaluate),
                            extra={"predictions": str(predictions), "labels": str(labels_path), "task": task.task})
    log(f"{predictions}: {row_note}; {col_note}")
    log(format_summary(summary))
    log(f"wrote the reports and summary_{tag}.json to {out_dir}")
    return summary
