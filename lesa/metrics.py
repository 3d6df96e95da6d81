"""The original evaluation protocol (``core/utils.py``: compute_AP, evaluate_k, compute_F1),
vectorised over images and classes.

Labels are (N, C) in {-1, 0, 1}; 0 means "not annotated".
- AP per class over the annotated images only (label != 0); a class without a positive gets AP 0
  and still counts in the mean (original behaviour).
- Top-k: every image predicts its k highest-scoring labels. "overall" precision/recall pool all
  images and labels; "per_class" gives one value per class (classes without a positive keep 0),
  where, as in the original, unannotated labels count as negatives.
"""
from __future__ import annotations

import numpy as np

from lesa.errors import ShapeError


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ShapeError(
            f"scores {scores.shape} and labels {labels.shape} must be equal (images, classes) arrays"
        )
    return scores, labels


def average_precision(scores, labels) -> np.ndarray:
    """AP of each class (C,), equal to scikit-learn's ``average_precision_score`` per class on
    the annotated images, computed for all classes at once.

    AP = sum over distinct score thresholds t (descending) of (R_t - R_prev) * P_t.
    """
    scores, labels = _check(scores, labels)
    N, C = scores.shape
    if N == 0:
        return np.zeros(C)
    order = np.argsort(-scores, axis=0, kind="stable")  # (N,C) each column sorted descending
    s = np.take_along_axis(scores, order, axis=0)
    y = np.take_along_axis(labels, order, axis=0)
    tp = np.cumsum(y > 0, axis=0, dtype=np.float64)
    fp = np.cumsum(y < 0, axis=0, dtype=np.float64)
    # A threshold is the last position of a run of equal scores (ties share one threshold).
    is_threshold = np.ones((N, C), dtype=bool)
    is_threshold[:-1] = s[1:] != s[:-1]
    n_pos = tp[-1]  # (C,)
    # tp at the previous threshold: the running tp, sampled at thresholds only
    tp_at = np.where(is_threshold, tp, np.nan)
    prev = np.vstack([np.zeros((1, C)), tp_at[:-1]])
    prev = _forward_fill(prev)
    gain = np.where(is_threshold, tp - prev, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (gain * precision).sum(axis=0) / n_pos
    return np.where(n_pos > 0, ap, 0.0)


def _forward_fill(a: np.ndarray) -> np.ndarray:
    """Replace NaNs by the last non-NaN value above them in the same column (first row is set)."""
    mask = np.isnan(a)
    idx = np.where(~mask, np.arange(a.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return np.take_along_axis(a, idx, axis=0)


def top_k_predictions(scores, k: int) -> np.ndarray:
    """(N,C) 0/1 matrix marking each image's k highest scores.

    original: ties are broken by numpy's default ``argsort`` (introsort), so the same call is used
    here to pick exactly the same labels when scores tie.
    """
    scores = np.asarray(scores)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pred = np.zeros(scores.shape, dtype=np.int8)
    if scores.shape[0] == 0:
        return pred
    top = np.argsort(scores, axis=1)[:, -k:]
    np.put_along_axis(pred, top, 1, axis=1)
    return pred


def topk_f1(scores, labels, k: int, mode: str = "overall", exclude_no_positive: bool = False):
    """F1, precision and recall of top-k predictions: floats for ``mode="overall"``, (C,) arrays
    for ``mode="per_class"``. ``exclude_no_positive`` drops images without any positive label
    first (the original's ``is_exclude``)."""
    scores, labels = _check(scores, labels)
    if mode not in ("overall", "per_class"):
        raise ValueError(f"mode must be 'overall' or 'per_class', got {mode!r}")
    if exclude_no_positive:
        keep = (labels == 1).any(axis=1)
        scores, labels = scores[keep], labels[keep]
    pred = top_k_predictions(scores, k).astype(bool)
    positive = labels == 1
    if mode == "overall":
        tp = float(np.count_nonzero(pred & positive))
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.float64(tp) / np.count_nonzero(pred)
            r = np.float64(tp) / np.count_nonzero(positive)
            f1 = 2 * p * r / (p + r)
        return float(f1), float(p), float(r)

    tp = np.count_nonzero(pred & positive, axis=0).astype(np.float64)
    n_pred = np.count_nonzero(pred, axis=0).astype(np.float64)
    n_pos = np.count_nonzero(positive, axis=0).astype(np.float64)
    has_pos = n_pos > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        # scikit-learn's zero_division default: 0 where there is no prediction
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(has_pos, tp / n_pos, 0.0)
        f1 = np.where(n_pred + n_pos > 0, 2 * tp / (n_pred + n_pos), 0.0)
    zero = np.zeros_like(p)
    return np.where(has_pos, f1, zero), np.where(has_pos, p, zero), np.where(has_pos, r, zero)


def mean_average_precision(scores, labels) -> float:
    """Mean of :func:`average_precision` over all classes (classes without a positive count as 0)."""
    return float(np.mean(average_precision(scores, labels)))
