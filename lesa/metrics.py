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
  and a small lookup table, and counted in a histogram; the ~5% of negatives that land in a
  bucket holding a positive are placed exactly afterwards. Chunks of classes run on threads,
  each reading its columns in cache-sized blocks of rows; positives and unannotated entries
  are sent to a dropped bucket in the same pass (no second scan of the labels).
- Top-k takes ``torch.topk(k + 1)`` (``np.partition`` for few classes); the picked labels are
  unique unless the k-th and (k+1)-th scores tie, and only such rows are re-ranked with the
  original ``np.argsort``.
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
_LUT_BUDGET = 1 << 19  # lookup-table entries per chunk of classes (1 MB of uint16: stays in cache)
_MAX_CHUNK = 32  # classes per chunk
_BUCKETS_PER_POSITIVE = 16  # buckets B_c = 16 m_c (clamped): ~5% of the negatives land next to a positive
_MAX_BUCKETS = 1 << 15  # (a class with many positives must not crowd the others out of a chunk)
_BLOCK = 1 << 16  # entries (rows x classes of a chunk) bucketed at a time: the scratch stays in cache


def average_precision(scores, labels, threads: int | None = None) -> np.ndarray:
    """AP of each class (C,), equal to scikit-learn's ``average_precision_score`` per class on
    the annotated images (and to :func:`average_precision_exact` within 1e-12).

    ``threads``: worker threads over chunks of classes (default: the CPU count, at most 8).
    A NaN score ranks below every other, as in the sorting path (a NaN or infinite positive
    sends its class to the sorting path).
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
    scores, labels = np.ascontiguousarray(scores), np.ascontiguousarray(labels)  # rows read in blocks
    n_threads = _n_threads(threads)
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        pmap = pool.map if pool else map
        positives = _positives_by_class(scores, labels, pmap)  # one pass over the labels, on all threads
        exact_columns: list[int] = []

        def run(chunk: tuple[int, int]) -> None:
            c0, c1 = chunk
            values, redo = _ap_chunk(scores, labels, c0, c1, positives)
            ap[c0:c1] = values
            exact_columns.extend(c0 + int(c) for c in redo)

        list(pmap(run, _class_chunks(np.diff(positives[2]))))
    finally:
        if pool:
            pool.shutdown()
    if exact_columns:  # a positive scored NaN or +-inf: the sorting path decides
        cols = sorted(set(exact_columns))
        ap[cols] = average_precision_exact(scores[:, cols], labels[:, cols])
    return ap


def _positives_by_class(scores: np.ndarray, labels: np.ndarray, pmap=map, rows_per_block: int = 1024):
    """The positive entries of ``labels`` (N, C) as (scores, cols, offsets) grouped by column
    (column c's are [offsets[c], offsets[c+1])). Row blocks are scanned by ``pmap`` (a thread
    pool's map): no (N, C) temporary, and each block's scores are read while it is in cache."""
    N, C = labels.shape

    def scan(r0: int) -> tuple[np.ndarray, np.ndarray]:
        flat = np.flatnonzero(labels[r0:r0 + rows_per_block] > 0)
        return flat % C, scores[r0:r0 + rows_per_block].reshape(-1)[flat]

    found = list(pmap(scan, range(0, N, rows_per_block)))
    cols = np.concatenate([c for c, _ in found] + [np.zeros(0, np.intp)])
    values = np.concatenate([v for _, v in found] + [np.zeros(0, scores.dtype)])
    order = np.argsort(cols.astype(np.int16 if C < 2**15 else np.int32), kind="stable")  # radix sort
    counts = np.bincount(cols, minlength=C)
    return values[order], cols[order], np.concatenate([[0], np.cumsum(counts)])


def _buckets_for(n_pos: np.ndarray) -> np.ndarray:
    """Buckets per class: proportional to its positives, a power of two in [1024, _MAX_BUCKETS]."""
    want = np.maximum(n_pos, 1) * _BUCKETS_PER_POSITIVE
    return (2 ** np.clip(np.ceil(np.log2(want)), 10, np.log2(_MAX_BUCKETS))).astype(np.int64)


def _class_chunks(n_pos: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive classes grouped so that each chunk's lookup table fits ``_LUT_BUDGET`` and
    its slots (positives + classes + 2) fit 16 bits."""
    sizes = _buckets_for(n_pos) + 3
    chunks, start, used, slots = [], 0, 0, 2
    for c, size in enumerate(sizes):
        if c > start and (used + size > _LUT_BUDGET or c - start >= _MAX_CHUNK
                          or slots + n_pos[c] + 1 >= 2**16):
            chunks.append((start, c))
            start, used, slots = c, 0, 2
        used += int(size)
        slots += int(n_pos[c]) + 1
    chunks.append((start, len(sizes)))
    return chunks


_workspace = threading.local()


def _buffers(n: int, dtype, slot_type) -> tuple[np.ndarray, ...]:
    """Per-thread scratch arrays of n entries: three of scores (dtype), buckets (intp), slots,
    a mask (reused: fresh pages are slow to fault in)."""
    ws = getattr(_workspace, "arrays", None)
    if ws is None or ws[0].size < n or ws[0].dtype != dtype or ws[4].dtype != slot_type:
        ws = (np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype), np.empty(n, np.intp),
              np.empty(n, slot_type), np.empty(n, bool))
        _workspace.arrays = ws
    return tuple(w[:n] for w in ws)


def _bucket(values, q, out=None):
    """Monotone map of scores to bucket numbers (integers once truncated): clip((v - lo) *
    scale + base1, base, top) with the per-class constants q = (lo, scale, base1 = base + 1,
    base, top). Every step is monotone in v under IEEE rounding, so v <= w implies bucket(v)
    <= bucket(w) (-inf -> base, +inf -> top). The same elementwise operations run for blocks
    of the chunk (constants tiled) and for single entries (constants gathered), so equal
    scores of a class get equal buckets."""
    lo, scale, base1, base, top = q
    out = np.subtract(values, lo, out=out)
    np.multiply(out, scale, out=out)
    np.add(out, base1, out=out)
    np.fmax(out, base, out=out)  # fmax/fmin: NaN -> base, the lowest bucket (a NaN score ranks
    np.fmin(out, top, out=out)  # below every other in the sorting path too)
    return out


_MAX_SCAN = 8  # positives in one bucket compared one by one; more (ties) -> searchsorted


def _place(values, cls, buckets, P, off, first, count):
    """Exact histogram slots of entries whose bucket holds positives: (index in P of the first
    positive of the class above the value) + class. ``values``, ``cls``, ``buckets`` (n,);
    ``count`` (positives per bucket) may be clipped above _MAX_SCAN."""
    start = first[buckets]  # index in P of the bucket's first positive
    n_in = count[buckets]
    below = start + (P[start] <= values)  # most such buckets hold one positive
    more = np.flatnonzero(n_in > 1)
    for k in range(1, _MAX_SCAN):  # compare with the bucket's k-th positive
        more = more[n_in[more] > k]
        if not more.size:
            break
        below[more] += P[start[more] + k] <= values[more]
    many = np.flatnonzero(n_in > _MAX_SCAN)  # many positives share a bucket (tied scores)
    for c in np.unique(cls[many]):
        i = many[cls[many] == c]
        below[i] = np.searchsorted(P[off[c]:off[c + 1]], values[i], side="right") + off[c]
    return below + cls


def _ap_chunk(scores, labels, c0: int, c1: int, positives) -> tuple[np.ndarray, np.ndarray]:
    """AP of classes c0..c1-1. Returns (ap (cc,), indices of classes whose positives include an
    infinite or NaN score, left to the exact path)."""
    N = scores.shape[0]
    cc = c1 - c0
    S = scores[:, c0:c1]  # (N, cc) views
    L = labels[:, c0:c1]
    dtype = S.dtype
    # positives sorted by (class, score): P (M,), their class Pc (M,), class offsets off (cc+1,)
    pval, pcol, poff = positives
    a, b = poff[c0], poff[c1]
    Pc = pcol[a:b] - c0
    P = pval[a:b].copy()
    m = np.diff(poff[c0:c1 + 1])
    off = poff[c0:c1 + 1] - a
    for c in np.flatnonzero(m > 1):
        P[off[c]:off[c + 1]].sort()  # NaN last
    M = int(off[-1])
    ap = np.zeros(cc)
    if M == 0:
        return ap, np.zeros(0, dtype=np.int64)

    has = m > 0
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
    q = (lo, np.clip(scale, 1e-30, 1e30), base_i + 1, base_i, base_i + B + 2)
    q = tuple(x.astype(dtype) for x in q)  # bucket numbers are exact: the table has < 2**24

    # tables over all buckets of the chunk: how many positives, the first one's index in P, and
    # the histogram slot "r positives of the class lie below" = (index in P of the r-th) + class,
    # or AMB where the bucket holds a positive (entries there are placed one by one)
    with np.errstate(invalid="ignore", over="ignore"):
        gP = _bucket(P, tuple(x[Pc] for x in q)).astype(np.intp)
    n_buckets = int(size.sum())  # and one more bucket: entries that are not negatives
    count = np.bincount(gP, minlength=n_buckets)
    first = np.cumsum(count)
    first -= count
    n_slots = M + cc  # class c's slots: off[c] + c .. off[c+1] + c
    AMB, DROP = n_slots, n_slots + 1  # slots of entries placed later, and of dropped ones
    slot_type = np.uint16 if DROP < 2**16 else np.intp  # a small table stays in cache
    lut = np.empty(n_buckets + 1, slot_type)
    for c in range(cc):  # (few temporaries: this runs once per chunk, on tables of ~2**19)
        np.add(first[base_i[c]:base_i[c] + size[c]], c, out=lut[base_i[c]:base_i[c] + size[c]],
               casting="unsafe")
    lut[:-1][count > 0] = AMB
    lut[-1] = DROP

    # the histogram of every entry's slot, built over blocks of rows; the negatives in a bucket
    # with a positive are collected and placed exactly at the end
    hist = np.zeros(n_slots + 2, dtype=np.int64)
    R = max(1, max(_BLOCK, 2 * n_slots) // cc)  # (each block's histogram costs n_slots)
    tiled = tuple(np.tile(x, R) for x in q)  # per-class constants for a block (row-major)
    raw_buf, fbuf, dbuf, gbuf, sbuf, mbuf = _buffers(R * cc, dtype, slot_type)
    amb_cls, amb_value, amb_bucket = [], [], []
    for r0 in range(0, N, R):
        n = min(R, N - r0) * cc
        raw, f, drop, bkt, slot, mask = raw_buf[:n], fbuf[:n], dbuf[:n], gbuf[:n], sbuf[:n], mbuf[:n]
        np.copyto(raw.reshape(-1, cc), S[r0:r0 + R])  # the block's scores, contiguous
        with np.errstate(invalid="ignore", over="ignore"):
            _bucket(raw, tuple(x[:n] for x in tiled), out=f)
        # positives and unannotated entries go to the last bucket (its slot is dropped)
        np.greater_equal(L[r0:r0 + R], 0, out=drop.reshape(-1, cc))
        np.multiply(drop, n_buckets, out=drop)
        np.fmax(f, drop, out=f)
        bkt32 = drop.view(np.int32)[:n]
        np.copyto(bkt32, f, casting="unsafe")  # truncation: the bucket numbers (via int32: fast)
        np.copyto(bkt, bkt32)
        np.take(lut, bkt, out=slot, mode="clip")  # (indices are in range; "clip" avoids a copy)
        amb = np.flatnonzero(np.equal(slot, AMB, out=mask))
        amb_cls.append(amb % cc)
        amb_value.append(raw[amb])
        amb_bucket.append(bkt[amb])
        hist += np.bincount(slot, minlength=n_slots + 2)
    # the negatives in a bucket with a positive, placed exactly
    # (compact copies of the bucket tables: their random reads stay in cache)
    placed = _place(np.concatenate(amb_value), np.concatenate(amb_cls), np.concatenate(amb_bucket),
                    P, off, first.astype(np.int32 if M < 2**31 else np.intp),
                    np.minimum(count, 255).astype(np.uint8))
    hist[:n_slots] += np.bincount(placed, minlength=n_slots)
    cum = np.cumsum(hist[:n_slots])  # cum[slot]: negatives of the class at or below that slot

    # per positive j of class c (global index g): negatives >= s_j are those whose slot > g + c
    # (no negative falls strictly inside a tie run); positives >= s_j are those from the first
    # of its tie run to the end of the class
    end = off[1:] + np.arange(cc)  # last slot of each class
    g = np.arange(M)
    new_run = np.ones(M, dtype=bool)
    new_run[1:] = (Pc[1:] != Pc[:-1]) | (P[1:] != P[:-1])
    run_starts = np.flatnonzero(new_run)
    run_id = np.cumsum(new_run) - 1
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


_PARTITION_MAX_C = 256  # up to this many classes numpy's partition beats torch.topk (per-row cost)


def top_k_indices(scores, k: int) -> np.ndarray:
    """(N, min(k, C)) indices of each image's k highest scores: the same labels as
    :func:`top_k_indices_exact` (the order within a row may differ).

    The set is unique unless the k-th and (k+1)-th scores tie (or a row holds NaN), and only
    those rows go through the original ``argsort``. Narrow float matrices: ``np.partition`` on
    row blocks (threads); otherwise ``torch.topk(k + 1)``."""
    return top_k_indices_many(scores, [k])[int(k)]


def top_k_indices_many(scores, ks) -> dict[int, np.ndarray]:
    """:func:`top_k_indices` for several k at once ``{k: (N, min(k, C))}``: on wide matrices one
    ``torch.topk(max(ks) + 1)`` serves every k (F1@3 and F1@5 cost one pass)."""
    scores = np.asarray(scores)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be >= 1, got {ks}")
    N, C = scores.shape
    out = {}
    plain = scores.dtype.kind in "fiu" and scores.dtype not in (np.uint16, np.uint32, np.uint64)
    for k in ks:
        if N == 0 or C <= k or not plain:
            out[k] = top_k_indices_exact(scores, k)
    todo = [k for k in ks if k not in out]
    if not todo:
        return out
    if scores.dtype.kind == "f" and C <= _PARTITION_MAX_C:
        found = {k: _top_k_by_partition(scores, k) for k in todo}
    else:
        found = _top_k_by_torch(scores, todo)
    for k, (top, unsure) in found.items():
        rows = np.flatnonzero(unsure)
        if rows.size:
            top[rows] = top_k_indices_exact(scores[rows], k)
        out[k] = top
    return out


def _top_k_by_torch(scores: np.ndarray, ks: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each k: top-k indices (N, k) from one ``torch.topk(max(ks) + 1)``, and the rows where
    they are not unique (a tie between the k-th and (k+1)-th score, or a NaN among them)."""
    import torch

    if not scores.dtype.isnative or any(st < 0 for st in scores.strides):
        scores = np.ascontiguousarray(scores, dtype=scores.dtype.newbyteorder("="))
    with warnings.catch_warnings():  # read only: a read-only array is fine
        warnings.simplefilter("ignore", UserWarning)
        values, index = torch.topk(torch.from_numpy(scores), max(ks) + 1, dim=1, sorted=True)
    values, index = values.numpy(), index.numpy()
    nan = np.isnan(values) if scores.dtype.kind == "f" else None
    out = {}
    for k in ks:  # the k + 1 largest values are the first k + 1 of the sorted max(ks) + 1
        unsure = values[:, k - 1] == values[:, k]
        if nan is not None:
            unsure |= nan[:, :k + 1].any(axis=1)
        out[k] = (np.ascontiguousarray(index[:, :k]), unsure)
    return out


def _top_k_by_partition(scores: np.ndarray, k: int, rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Top-k indices (N, k) of float scores by ``np.partition`` on row blocks (on threads), and
    the rows where they are not unique (a tie at the k-th score, or a NaN)."""
    N, C = scores.shape
    top = np.zeros((N, k), np.intp)
    unsure = np.zeros(N, bool)

    def block(r0: int) -> None:
        s = scores[r0:r0 + rows]
        part = np.partition(s, C - k - 1, axis=1)  # NaN sorts last (as the largest)
        kth = part[:, C - k - 1]  # the (k+1)-th largest score
        kmin = part[:, C - k:].min(axis=1)  # the k-th largest (NaN if one of the top is NaN)
        u = unsure[r0:r0 + rows]
        np.logical_not(kmin > kth, out=u)
        # the top k of a sure row are exactly its scores above the (k+1)-th; none in unsure rows
        above = s > np.where(u, np.inf, kth)[:, None]
        top[r0:r0 + rows][~u] = np.nonzero(above)[1].reshape(-1, k)

    n_threads = min(_n_threads(None), -(-N // rows))
    if n_threads > 1:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(block, range(0, N, rows)))
    else:
        for r0 in range(0, N, rows):
            block(r0)
    return top, unsure


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
    return topk_f1_many(scores, labels, [k], mode, exclude_no_positive)[int(k)]


def topk_f1_many(scores, labels, ks, mode: str = "overall", exclude_no_positive: bool = False) -> dict:
    """:func:`topk_f1` for several k: ``{k: (f1, p, r)}``, the top-k found in one pass."""
    scores, labels = _check(scores, labels)
    if mode not in ("overall", "per_class"):
        raise ValueError(f"mode must be 'overall' or 'per_class', got {mode!r}")
    tops = top_k_indices_many(scores, ks)  # (N, k) each: rows are independent, exclusion can come after
    if exclude_no_positive:
        keep = _count_positives(labels, axis=1) > 0
        if not keep.all():
            tops, labels = {k: top[keep] for k, top in tops.items()}, labels[keep]
    n_pos = _count_positives(labels, axis=None if mode == "overall" else 0)
    return {k: _f1_of_top(top, labels, mode, n_pos) for k, top in tops.items()}


def _f1_of_top(top: np.ndarray, labels: np.ndarray, mode: str, n_pos):
    hit = np.take_along_axis(labels, top, axis=1) == 1  # (N, k) predicted and positive
    if mode == "overall":
        tp = float(np.count_nonzero(hit))
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.float64(tp) / top.size
            r = np.float64(tp) / n_pos
            f1 = 2 * p * r / (p + r)
        return float(f1), float(p), float(r)

    C = labels.shape[1]
    tp = np.bincount(top[hit], minlength=C).astype(np.float64)
    n_pred = np.bincount(top.reshape(-1), minlength=C).astype(np.float64)
    n_pos = np.asarray(n_pos, dtype=np.float64)
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
