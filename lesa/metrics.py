"""The original evaluation protocol (``core/utils.py``: compute_AP, evaluate_k, compute_F1).

Labels are (N, C) in {-1, 0, 1}: 1 positive, -1 negative, 0 not annotated. Scores and labels are
numpy arrays (computed on CPU tensors) or torch tensors (computed on the scores' device).

- AP of a class, over its annotated images only (label != 0): the mean, over its positives p, of
  the precision at the threshold s_p, i.e. positives / annotated images scoring >= s_p. Tied
  scores share one threshold, as in scikit-learn's ``average_precision_score``. A class without a
  positive gets AP 0 and still counts in the mean (original behaviour). A NaN score ranks lowest
  (as -inf). Each class's negatives and positives are sorted (by numpy's sort on a CPU, torch's
  elsewhere) and each positive's threshold counts those scoring at least as high (a binary
  search); classes go in chunks (bounded memory).
- Top-K: every image predicts its K highest-scoring labels, ties broken as the original's
  ``np.argsort(scores, axis=1)[:, -K:]`` (a NaN ranks highest there). "overall" precision and
  recall pool all images and labels; "per_class" gives one value per class (classes without a
  positive keep 0), where, as in the original, unannotated labels count as negatives.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from lesa.errors import ShapeError

_CHUNK_ENTRIES = 1 << 22  # scores of a chunk of classes copied at a time (16 MB of float32)


def _as_tensor(x) -> torch.Tensor:
    """A torch view of ``x`` (tensors pass through; numpy arrays become CPU tensors)."""
    if torch.is_tensor(x):
        return x.detach()
    x = np.asarray(x)
    if x.dtype.kind == "u" and x.dtype.itemsize > 1:
        x = x.astype(np.int64)  # (torch sorts no unsigned type wider than uint8)
    elif not x.dtype.isnative or any(step < 0 for step in x.strides):
        x = np.array(x, dtype=x.dtype.newbyteorder("="))
    with warnings.catch_warnings():  # a read-only array is only read here
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(x)


def _check(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = _as_tensor(scores), _as_tensor(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ShapeError(
            f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be equal (images, classes) "
            "arrays: pass the labels of the images the scores were computed for"
        )
    return scores, labels.to(scores.device)


# -- average precision -----------------------------------------------------------------------------
def average_precision(scores, labels) -> np.ndarray:
    """AP of each class (C,) float64, equal to scikit-learn's ``average_precision_score`` on the
    class's annotated images (0 for a class without a positive)."""
    scores, labels = _check(scores, labels)
    N, C = scores.shape
    ap = torch.zeros(C, dtype=torch.float64, device=scores.device)
    width = max(1, _CHUNK_ENTRIES // max(N, 1))
    for c0 in range(0, C, width):
        s, y = (_one_class_per_row(x[:, c0:c0 + width]) for x in (scores, labels))
        if s.is_floating_point():
            s = s.float() if s.element_size() < 4 else s  # (float16 and bfloat16: exact in float32)
            s = s.nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)  # NaN ranks lowest
        ap[c0:c0 + width] = _average_precision_rows(s, y)
    return ap.cpu().numpy()


def _one_class_per_row(chunk: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the transpose of a chunk of classes (N, c): bounded memory, each class
    read contiguously. On a CPU, 4-byte scores are faster copied as they lie first, 1-byte labels
    transposed at once (benchmarks/bench_metrics.py)."""
    return chunk.T.contiguous() if chunk.element_size() == 1 else chunk.contiguous().T.contiguous()


def _masks(y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(negatives, their count per row) and (positives, their count per row) of labels ``y`` (c, N).
    On a CPU numpy's comparisons and counts: over twice torch's speed on int8 labels."""
    if y.device.type == "cpu":
        masks = (y.numpy() < 0, y.numpy() > 0)
        return [(torch.from_numpy(m), torch.from_numpy(np.count_nonzero(m, axis=1))[:, None]) for m in masks]
    return [(m, m.count_nonzero(dim=1)[:, None]) for m in (y < 0, y > 0)]


def _average_precision_rows(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AP of c classes from their scores ``s`` (c, N) (no NaN) and labels ``y`` (c, N)."""
    highest = torch.inf if s.is_floating_point() else torch.iinfo(s.dtype).max
    (negative, n_neg), (positive, m) = _masks(y)
    # each class's negatives and positives, ascending (then the highest value, never < a score)
    negatives = _sort_rows(s.where(negative, highest))
    positives = _sort_rows(s.where(positive, highest), first=max(int(m.max()), 1))
    # at the threshold s_p of each positive p, the images scoring >= s_p (tied scores share one
    # threshold): all negatives but those scoring < s_p, all positives but those scoring < s_p
    neg_above = n_neg - torch.searchsorted(negatives, positives)
    pos_above = m - torch.searchsorted(positives, positives)
    precision = pos_above.double() / (pos_above + neg_above).double()
    real = torch.arange(positives.shape[1], device=s.device) < m  # (the first m of each row)
    precision = precision.where(real, 0.0)
    # original: a class without a positive has AP 0 (and still counts in the mean)
    return precision.sum(dim=1) / m[:, 0].clamp(min=1)


def _sort_rows(x: torch.Tensor, first: int | None = None) -> torch.Tensor:
    """The ``first`` smallest values of each row of ``x`` (default: all), ascending. On a CPU by
    numpy's vectorised sort (torch's CPU sort takes over ten times longer), after a partition when
    only the first few are needed (benchmarks/bench_metrics.py)."""
    if x.device.type != "cpu":
        return x.sort(dim=1).values[:, :first].contiguous()
    a = x.numpy()
    if first is not None and first < a.shape[1]:
        a = np.partition(a, first - 1, axis=1)[:, :first]  # the same values, not yet in order
    return torch.from_numpy(np.sort(a, axis=1))


def mean_average_precision(scores, labels) -> float:
    """Mean of :func:`average_precision` over all classes (classes without a positive count as 0)."""
    return float(np.mean(average_precision(scores, labels)))


# -- top-K -----------------------------------------------------------------------------------------
def top_k_indices_exact(scores, k: int) -> np.ndarray:
    """(N, min(k, C)) indices of each image's k highest scores, exactly as the original picked
    them. original: ``np.argsort`` (numpy's default sort) of each row, its last k."""
    return np.argsort(np.asarray(scores), axis=1)[:, -int(k):]


def _top_k(scores: torch.Tensor, ks, original=None) -> dict[int, torch.Tensor]:
    """{k: (N, min(k, C)) indices of each image's k highest scores} from one ``torch.topk``.

    The k highest are unique unless the k-th and (k+1)-th scores tie (or the row holds a NaN):
    only such rows go through the original's ``argsort`` (on ``original``, the numpy array the
    scores came from, when there is one)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"K must be >= 1, got {ks}")
    N, C = scores.shape
    values, index = torch.topk(scores, min(ks[-1] + 1, C), dim=1)  # sorted, highest first
    floats = scores.is_floating_point()
    # the rows holding a NaN: their sum is NaN (a row with +inf and -inf too: one argsort more)
    has_nan = scores.sum(dim=1).isnan() if floats else scores.new_zeros(N, dtype=torch.bool)
    tops = {}
    for k in ks:
        top = index[:, :k].clone()
        if k < C:
            rows = ((values[:, k - 1] == values[:, k]) | has_nan).nonzero()[:, 0]
            if rows.numel():
                tied = _numpy_rows(scores, rows, original)
                top[rows] = torch.from_numpy(top_k_indices_exact(tied, k)).to(top.device)
        tops[k] = top  # (k >= C: every label, whatever the order)
    return tops


def _numpy_rows(scores: torch.Tensor, rows: torch.Tensor, original) -> np.ndarray:
    """Rows of the scores as numpy: of the caller's numpy array itself where there is one."""
    rows = rows.cpu().numpy()
    if original is not None:
        return original[rows]
    tied = scores[rows].cpu()
    return (tied.float() if tied.dtype == torch.bfloat16 else tied).numpy()  # (numpy has no bfloat16)


def top_k_predictions(scores, k: int) -> np.ndarray:
    """(N, C) int8 matrix marking each image's k highest scores (ties as the original broke them)."""
    original = None if torch.is_tensor(scores) else np.asarray(scores)
    scores = _as_tensor(scores)
    top = _top_k(scores, [k], original)[int(k)]
    pred = torch.zeros(scores.shape, dtype=torch.int8, device=scores.device)
    return pred.scatter_(1, top, 1).cpu().numpy()


def topk_f1(scores, labels, k: int, mode: str = "overall", exclude_no_positive: bool = False):
    """F1, precision and recall of the top-k predictions: floats for ``mode="overall"``, (C,)
    arrays for ``mode="per_class"``. ``exclude_no_positive`` drops the images without a positive
    label first (the original's ``is_exclude``)."""
    return topk_f1_many(scores, labels, [k], mode, exclude_no_positive)[int(k)]


def topk_f1_many(scores, labels, ks, mode: str = "overall", exclude_no_positive: bool = False) -> dict:
    """:func:`topk_f1` for several k, ``{k: (f1, p, r)}``, from one top-k pass."""
    if mode not in ("overall", "per_class"):
        raise ValueError(f"mode must be 'overall' or 'per_class', got {mode!r}")
    original = None if torch.is_tensor(scores) else np.asarray(scores)
    scores, labels = _check(scores, labels)
    tops = _top_k(scores, ks, original)  # rows are independent: the exclusion can come after
    positive = labels > 0
    if exclude_no_positive:
        keep = positive.any(dim=1)
        tops, positive = {k: top[keep] for k, top in tops.items()}, positive[keep]
    n_pos = positive.count_nonzero(dim=None if mode == "overall" else 0).double()
    return {k: _f1(top, positive, n_pos, mode) for k, top in tops.items()}


def _f1(top: torch.Tensor, positive: torch.Tensor, n_pos: torch.Tensor, mode: str):
    hit = positive.gather(1, top)  # (N, k): predicted and positive
    if mode == "overall":
        tp = hit.count_nonzero().double()
        p = tp / top.numel()
        r = tp / n_pos
        return float(2 * p * r / (p + r)), float(p), float(r)  # (0/0 -> NaN)

    C = positive.shape[1]
    tp = torch.bincount(top[hit], minlength=C).double()
    n_pred = torch.bincount(top.flatten(), minlength=C).double()
    zero = torch.zeros_like(tp)
    # scikit-learn's zero_division=0: a class nobody predicts has precision 0
    p = torch.where(n_pred > 0, tp / n_pred, zero)
    r = torch.where(n_pos > 0, tp / n_pos, zero)
    f1 = torch.where(n_pred + n_pos > 0, 2 * tp / (n_pred + n_pos), zero)
    # original: a class without a positive keeps 0
    return tuple(torch.where(n_pos > 0, v, zero).cpu().numpy() for v in (f1, p, r))
