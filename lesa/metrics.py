"""The original evaluation protocol (``core/utils.py``: compute_AP, evaluate_k, compute_F1),
vectorised over images and classes, fast enough for NUS-WIDE's 107,859 x 1,006 test scores in
seconds on a laptop CPU.

Labels are (N, C) in {-1, 0, 1}; 0 means "not annotated".
- AP per class over the annotated images only (label != 0); a class without a positive gets AP 0
  and still counts in the mean (original behaviour).
- Top-k: every image predicts its k highest-scoring labels. "overall" precision/recall pool all
  images and labels; "per_class" gives one value per class (classes without a positive keep 0),
  where, as in the original, unannotated labels count as negatives.

Speed (values identical to the sorting reference ``average_precision_exact`` and to numpy's
``argsort`` top-k; see ``tests/test_metrics_fast.py``):
- AP never sorts a column. AP = mean over the positives p of  pos(>= s_p) / all(>= s_p)  (a tie
  group of positives shares its last threshold, as in scikit-learn). Only the positives (a few
  hundred per class) are sorted; each negative is placed among them by a monotone bucket map
  (a lookup table) and counted in a histogram; the few negatives that land in a bucket holding a
  positive are placed exactly with ``searchsorted``. Columns are processed in chunks on threads.
- Top-k takes ``torch.topk(k + 1)``; the picked labels are unique unless the k-th and (k+1)-th
  scores tie, and only such rows are re-ranked with the original ``np.argsort``.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

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


def _n_threads(threads: int | None) -> int:
    return max(1, int(threads) if threads else min(os.cpu_count() or 1, 8))


# -- average precision -----------------------------------------------------------------------------
_LUT_BUDGET = 1 << 19  # lookup-table entries per chunk of classes (2 MB of int32: stays in cache)
_MAX_CHUNK = 32  # classes per chunk
_BUCKETS_PER_POSITIVE = 16  # buckets B_c = 16 m_c (clamped): ~5-10% of entries land next to a positive


def average_precision(scores, labels, threads: int | None = None) -> np.ndarray:
    """AP of each class (C,), equal to scikit-learn's ``average_precision_score`` per class on
    the annotated images (and to :func:`average_precision_exact` within 1e-12).

    ``threads``: worker threads over chunks of classes (default: the CPU count, at most 8).
    """
    scores, labels = _check(scores, labels)
    N, C = scores.shape
    ap = np.zeros(C)
    if N == 0 or C == 0:
        return ap
    if scores.dtype.kind != "f":  # integer scores: the sorting path is exact for any width
        return average_precision_exact(scores, labels)
    if scores.dtype == np.float16:
        scores = scores.astype(np.float32)
    # One pass over the labels for all classes: positives and unannotated entries, by class.
    positives, unannotated = _entries_by_class(labels)
    # A NaN score anywhere in a column (or +inf and -inf together) sends it to the exact path.
    with np.errstate(invalid="ignore", over="ignore"):
        exact = np.isnan(scores.sum(axis=0))
    chunks = _class_chunks(np.diff(positives[2]))
    exact_columns: list[int] = list(np.flatnonzero(exact))

    def run(chunk: tuple[int, int]) -> None:
        c0, c1 = chunk
        values, bad = _ap_chunk(scores, c0, c1, positives, unannotated, exact[c0:c1])
        ap[c0:c1] = values
        exact_columns.extend(c0 + int(c) for c in bad)

    n_threads = min(_n_threads(threads), len(chunks))
    if n_threads == 1:
        for chunk in chunks:
            run(chunk)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, chunks))
    if exact_columns:  # NaN scores, or a positive scored +-inf: the sorting path decides
        cols = sorted(set(exact_columns))
        ap[cols] = average_precision_exact(scores[:, cols], labels[:, cols])
    return ap


def _entries_by_class(labels: np.ndarray, rows_per_block: int = 16384):
    """The positive and the unannotated entries of ``labels`` (N, C), each as (rows, cols,
    offsets) grouped by column (column c's entries are [offsets[c], offsets[c+1])). Read in row
    blocks: no (N, C) temporary."""
    N, C = labels.shape
    found = {"pos": ([], []), "zero": ([], [])}
    for r0 in range(0, N, rows_per_block):
        block = labels[r0:r0 + rows_per_block]
        for key, mask in (("pos", block > 0), ("zero", block == 0)):
            flat = np.flatnonzero(mask)
            found[key][0].append(flat // C + r0)
            found[key][1].append((flat % C).astype(np.int16 if C < 2**15 else np.int32))
    out = []
    for key in ("pos", "zero"):
        rows, cols = np.concatenate(found[key][0]), np.concatenate(found[key][1])
        order = np.argsort(cols, kind="stable")  # radix sort for 16-bit columns
        counts = np.bincount(cols, minlength=C)
        out.append((rows[order], cols[order].astype(np.int64), np.concatenate([[0], np.cumsum(counts)])))
    return out


def _buckets_for(n_pos: np.ndarray) -> np.ndarray:
    """Buckets per class: proportional to its positives, a power of two in [1024, 2**18]."""
    want = np.maximum(n_pos, 1) * _BUCKETS_PER_POSITIVE
    return (2 ** np.clip(np.ceil(np.log2(want)), 10, 18)).astype(np.int64)


def _class_chunks(n_pos: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive classes grouped so that each chunk's lookup table fits ``_LUT_BUDGET``."""
    sizes = _buckets_for(n_pos) + 3
    chunks, start, used = [], 0, 0
    for c, size in enumerate(sizes):
        if c > start and (used + size > _LUT_BUDGET or c - start >= _MAX_CHUNK):
            chunks.append((start, c))
            start, used = c, 0
        used += int(size)
    chunks.append((start, len(sizes)))
    return chunks


_workspace = threading.local()


def _buffers(n: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread scratch arrays of n entries (reused: fresh pages are slow to fault in)."""
    ws = getattr(_workspace, "arrays", None)
    if ws is None or ws[0].size < n or ws[0].dtype != dtype:
        ws = (np.empty(n, dtype), np.empty(n, np.int32), np.empty(n, np.int32))
        _workspace.arrays = ws
    return ws[0][:n], ws[1][:n], ws[2][:n]


def _bucket(values, lo, scale, base, top, out=None, out_int=None):
    """Monotone map of scores to integer buckets: floor(clip((v - lo) * scale + 1 + base,
    base, top)). Every step is monotone in v under IEEE rounding, so v <= w implies
    bucket(v) <= bucket(w) (-inf -> base, +inf -> top). The same
    elementwise operations run for the whole chunk (per-class constants broadcast) and for
    single entries (constants gathered), so equal scores of a class get equal buckets."""
    out = np.subtract(values, lo, out=out)
    np.multiply(out, scale, out=out)
    np.add(out, base + 1, out=out)
    np.fmax(out, base, out=out)  # fmax/fmin: NaN -> base (NaN columns are redone exactly, but
    np.fmin(out, top, out=out)  # must not spill into another class's buckets)
    if out_int is None:
        return out.astype(np.int32)
    np.copyto(out_int, out, casting="unsafe")
    return out_int


_MAX_SCAN = 8  # positives in one bucket compared one by one; more (ties) -> searchsorted


def _place(values, cls, buckets, P, off, first, count):
    """Exact histogram slots of entries whose bucket holds positives: (index in P of the first
    positive of the class above the value) + class. ``values``, ``cls``, ``buckets`` (n,)."""
    start = first[buckets]  # index in P of the bucket's first positive
    n_in = count[buckets]
    below = start.astype(np.int64)
    last = len(P) - 1
    for k in range(min(int(n_in.max()), _MAX_SCAN)):
        below += (n_in > k) & (P[np.minimum(start + k, last)] <= values)
    for i in np.flatnonzero(n_in > _MAX_SCAN):  # many positives share a bucket (tied scores)
        c = cls[i]
        below[i] = np.searchsorted(P[off[c]:off[c + 1]], values[i], side="right") + off[c]
    return below + cls


def _ap_chunk(scores, c0: int, c1: int, positives, unannotated, skip) -> tuple[np.ndarray, np.ndarray]:
    """AP of classes c0..c1-1. Returns (ap (cc,), indices of classes whose positives include an
    infinite score, left to the exact path)."""
    N = scores.shape[0]
    cc = c1 - c0
    S = scores[:, c0:c1]  # (N, cc) view
    dtype = S.dtype
    # positives, sorted by (class, score): P (M,), their class Pc (M,), class offsets off (cc+1,)
    prow, pcol, poff = positives
    a, b = poff[c0], poff[c1]
    pos_rows, pos_cols = prow[a:b], pcol[a:b] - c0
    pos_values = S[pos_rows, pos_cols]
    order = np.lexsort((pos_values, pos_cols))
    P = pos_values[order]
    Pc = pos_cols[order]
    m = np.diff(poff[c0:c1 + 1])
    off = poff[c0:c1 + 1] - a
    M = int(off[-1])
    ap = np.zeros(cc)
    if M == 0:
        return ap, np.zeros(0, dtype=np.int64)

    has = (m > 0) & ~skip
    lo = np.zeros(cc, dtype=np.float64)
    hi = np.zeros(cc, dtype=np.float64)
    lo[has] = P[off[:-1][has]]
    hi[has] = P[off[1:][has] - 1]
    bad = has & ~(np.isfinite(lo) & np.isfinite(hi))
    has &= ~bad
    lo[~has] = hi[~has] = 0.0
    # per class: B_c buckets over [lo, hi], a bucket below (base) and above (top)
    B = _buckets_for(m)
    size = B + 3
    base_i = np.concatenate([[0], np.cumsum(size)[:-1]])
    with np.errstate(divide="ignore", over="ignore"):
        span = hi - lo
        scale = np.where(span > 0, B / np.where(span > 0, span, 1.0), B.astype(np.float64))
    scale = np.clip(scale, 1e-30, 1e30).astype(dtype)
    lo = lo.astype(dtype)
    base = base_i.astype(dtype)  # exact: the table has < 2**24 entries
    top = (base_i + B + 2).astype(dtype)

    # tables over all buckets of the chunk: how many positives, the first one's index in P, and
    # the histogram slot "r positives of the class lie below" = (index in P of the r-th) + class,
    # or -1 where the bucket holds a positive (entries there are placed one by one)
    with np.errstate(invalid="ignore", over="ignore"):
        gP = _bucket(P, lo[Pc], scale[Pc], base[Pc], top[Pc])
    count = np.bincount(gP, minlength=int(size.sum())).astype(np.int32)
    first = (np.cumsum(count) - count).astype(np.int32)
    lut = np.where(count > 0, -1, first + np.repeat(np.arange(cc, dtype=np.int32), size))

    # every image of every class (positives and unannotated are taken out again below)
    fbuf, gbuf, flat = _buffers(N * cc, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        G = _bucket(S, lo, scale, base, top, out=fbuf.reshape(N, cc), out_int=gbuf.reshape(N, cc))
    G = G.reshape(-1)
    np.take(lut, G, out=flat, mode="clip")  # (N * cc,) slot (indices are in range; "clip" avoids a copy)
    # slot of every entry, -1 where ambiguous
    amb = np.flatnonzero(flat < 0)
    if amb.size:
        amb_cls = amb % cc
        flat[amb] = _place(S[amb // cc, amb_cls], amb_cls, G[amb], P, off, first, count)
    del G
    n_slots = M + cc
    hist = np.bincount(flat, minlength=n_slots)
    # take out the positives: a positive's slot counts the positives up to the end of its tie run
    g = np.arange(M)
    new_run = np.ones(M, dtype=bool)
    new_run[1:] = (Pc[1:] != Pc[:-1]) | (P[1:] != P[:-1])
    run_id = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run_ends = np.append(run_starts[1:], M)  # exclusive end (global index in P) of each run
    hist -= np.bincount(run_ends[run_id] + Pc, minlength=n_slots)
    # and the unannotated entries of these classes
    urow, ucol, uoff = unannotated
    ua, ub = uoff[c0], uoff[c1]
    if ub > ua:
        ucls = ucol[ua:ub] - c0
        uvals = S[urow[ua:ub], ucls]
        with np.errstate(invalid="ignore", over="ignore"):
            ub_ = _bucket(uvals, lo[ucls], scale[ucls], base[ucls], top[ucls])
        uslots = np.take(lut, ub_)
        uamb = np.flatnonzero(uslots < 0)
        if uamb.size:
            uslots[uamb] = _place(uvals[uamb], ucls[uamb], ub_[uamb], P, off, first, count)
        hist -= np.bincount(uslots, minlength=n_slots)
    cum = np.cumsum(hist)  # cum[slot]: negatives of the class at or below that slot

    # per positive j of class c (global index g): negatives >= s_j are those whose slot > g + c;
    # positives >= s_j are those from the first of its tie run to the end of the class
    end = off[1:] + np.arange(cc)  # last slot of each class
    neg_ge = cum[end[Pc]] - cum[g + Pc]
    pos_ge = off[1:][Pc] - run_starts[run_id]
    precision = pos_ge / (pos_ge + neg_ge).astype(np.float64)
    sums = np.bincount(Pc, weights=precision, minlength=cc)
    ap[has] = sums[has] / m[has]
    return ap, np.flatnonzero(bad)


def average_precision_exact(scores, labels) -> np.ndarray:
    """AP of each class (C,) by sorting every column: the reference the fast
    :func:`average_precision` is tested against (and its fallback for non-finite positives).

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


# -- top-k ----------------------------------------------------------------------------------------
def top_k_indices_exact(scores, k: int) -> np.ndarray:
    """(N, min(k, C)) indices of each image's k highest scores as the original picked them.

    original: ties are broken by numpy's default ``argsort`` (introsort)."""
    return np.argsort(np.asarray(scores), axis=1)[:, -int(k):]


def top_k_indices(scores, k: int) -> np.ndarray:
    """(N, min(k, C)) indices of each image's k highest scores: the same labels as
    :func:`top_k_indices_exact` (the order within a row may differ).

    ``torch.topk(k + 1)`` finds them; the set is unique unless the k-th and (k+1)-th scores tie
    (or a row holds NaN), and only those rows go through the original ``argsort``."""
    scores = np.asarray(scores)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    N, C = scores.shape
    if N == 0 or C <= k or scores.dtype.kind not in "fiu" or scores.dtype in (np.uint16, np.uint32, np.uint64):
        return top_k_indices_exact(scores, k)
    import torch

    if not scores.dtype.isnative or any(st < 0 for st in scores.strides):
        scores = np.ascontiguousarray(scores, dtype=scores.dtype.newbyteorder("="))
    with warnings.catch_warnings():  # read only: a read-only array is fine
        warnings.simplefilter("ignore", UserWarning)
        values, index = torch.topk(torch.from_numpy(scores), k + 1, dim=1, sorted=True)
    values = values.numpy()
    top = index[:, :k].numpy()
    unsure = values[:, k - 1] == values[:, k]
    if scores.dtype.kind == "f":
        unsure |= np.isnan(values).any(axis=1)
    rows = np.flatnonzero(unsure)
    if rows.size:
        top[rows] = top_k_indices_exact(scores[rows], k)
    return top


def top_k_predictions(scores, k: int) -> np.ndarray:
    """(N,C) 0/1 matrix marking each image's k highest scores (ties as the original broke them)."""
    scores = np.asarray(scores)
    pred = np.zeros(scores.shape, dtype=np.int8)
    top = top_k_indices(scores, k)
    if scores.shape[0]:
        np.put_along_axis(pred, top, 1, axis=1)
    return pred


def _count_positives(labels: np.ndarray, axis=None, rows: int = 16384):
    """Entries equal to 1: in total (``axis=None``), per image (``axis=1``) or per class
    (``axis=0``), counted in row blocks (no (N, C) temporary)."""
    if axis is None:
        return sum(int(np.count_nonzero(labels[r:r + rows] == 1)) for r in range(0, labels.shape[0], rows))
    if axis == 1:
        return np.concatenate([np.count_nonzero(labels[r:r + rows] == 1, axis=1)
                               for r in range(0, labels.shape[0], rows)] or [np.zeros(0, np.intp)])
    total = np.zeros(labels.shape[1], dtype=np.int64)
    for r in range(0, labels.shape[0], rows):
        total += (labels[r:r + rows] == 1).sum(axis=0)
    return total


def topk_f1(scores, labels, k: int, mode: str = "overall", exclude_no_positive: bool = False):
    """F1, precision and recall of top-k predictions: floats for ``mode="overall"``, (C,) arrays
    for ``mode="per_class"``. ``exclude_no_positive`` drops images without any positive label
    first (the original's ``is_exclude``)."""
    scores, labels = _check(scores, labels)
    if mode not in ("overall", "per_class"):
        raise ValueError(f"mode must be 'overall' or 'per_class', got {mode!r}")
    top = top_k_indices(scores, k)  # (N, k): rows are independent, so exclusion can come after
    if exclude_no_positive:
        keep = _count_positives(labels, axis=1) > 0
        if not keep.all():
            top, labels = top[keep], labels[keep]
    hit = np.take_along_axis(labels, top, axis=1) == 1  # (N, k) predicted and positive
    if mode == "overall":
        tp = float(np.count_nonzero(hit))
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.float64(tp) / top.size
            r = np.float64(tp) / _count_positives(labels)
            f1 = 2 * p * r / (p + r)
        return float(f1), float(p), float(r)

    C = labels.shape[1]
    tp = np.bincount(top[hit], minlength=C).astype(np.float64)
    n_pred = np.bincount(top.reshape(-1), minlength=C).astype(np.float64)
    n_pos = _count_positives(labels, axis=0).astype(np.float64)
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
