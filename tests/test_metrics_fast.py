"""The fast metric paths give exactly the values of the slow reference paths (sorting AP,
numpy-argsort top-k), including ties, unannotated labels and non-finite scores."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lesa import metrics


def reference_topk_f1(scores, labels, k, mode="overall", exclude_no_positive=False):
    """The original protocol on the exact argsort picks (the pre-speed-up implementation)."""
    if exclude_no_positive:
        keep = (labels == 1).any(axis=1)
        scores, labels = scores[keep], labels[keep]
    pred = np.zeros(scores.shape, dtype=bool)
    if scores.shape[0]:
        np.put_along_axis(pred, metrics.top_k_indices_exact(scores, k), True, axis=1)
    positive = labels == 1
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode == "overall":
            tp = float(np.count_nonzero(pred & positive))
            p = np.float64(tp) / np.count_nonzero(pred)
            r = np.float64(tp) / np.count_nonzero(positive)
            return 2 * p * r / (p + r), p, r
        tp = np.count_nonzero(pred & positive, axis=0).astype(np.float64)
        n_pred = np.count_nonzero(pred, axis=0).astype(np.float64)
        n_pos = np.count_nonzero(positive, axis=0).astype(np.float64)
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(n_pos > 0, tp / n_pos, 0.0)
        f1 = np.where(n_pred + n_pos > 0, 2 * tp / (n_pred + n_pos), 0.0)
    z = np.zeros_like(p)
    has = n_pos > 0
    return np.where(has, f1, z), np.where(has, p, z), np.where(has, r, z)


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many chunks of few classes and small bucket tables (every code path on small data)."""
    monkeypatch.setattr(metrics, "_MAX_CHUNK", 3)
    monkeypatch.setattr(metrics, "_LUT_BUDGET", 1 << 12)
    monkeypatch.setattr(metrics, "_MAX_SCAN", 2)


matrices = st.tuples(
    st.integers(1, 60), st.integers(1, 9), st.integers(0, 2**31 - 1),
    st.sampled_from(["ties", "continuous", "mixed"]), st.sampled_from([np.float32, np.float64]),
    st.floats(0.0, 0.4),
)


def make(n, c, seed, kind, dtype, zero_rate):
    rng = np.random.default_rng(seed)
    if kind == "ties":
        scores = rng.integers(0, 5, (n, c)).astype(dtype)
    elif kind == "continuous":
        scores = rng.normal(size=(n, c)).astype(dtype)
    else:
        scores = np.where(rng.random((n, c)) < 0.5, rng.integers(-2, 3, (n, c)), rng.normal(size=(n, c))).astype(dtype)
    labels = np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)
    labels[rng.random((n, c)) < zero_rate] = 0
    return scores, labels


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(matrices)
def test_fast_average_precision_equals_the_sorting_reference(small_chunks, case):
    scores, labels = make(*case)
    np.testing.assert_allclose(metrics.average_precision(scores, labels, threads=2),
                               metrics.average_precision_exact(scores, labels), rtol=0, atol=1e-12)


def test_special_values_are_handled_like_the_reference(small_chunks):
    rng = np.random.default_rng(3)
    n, c = 200, 14
    scores = rng.normal(size=(n, c)).astype(np.float32)
    labels = np.where(rng.random((n, c)) < 0.2, 1, -1).astype(np.int8)
    scores[:50, 0] = np.inf  # +inf negatives and positives
    scores[50:60, 1] = -np.inf
    scores[::7, 2] = np.nan  # NaN scores: the exact path decides
    scores[:, 3] = 0.0  # a constant column
    scores[::2, 3] = -0.0  # -0.0 ties with 0.0
    labels[:, 4] = 1  # every image positive
    labels[:, 5] = -1  # no positive: AP 0
    labels[:, 6] = -1
    labels[17, 6] = 1  # a single positive
    scores[:, 7] *= 1e38  # a huge span
    scores[:, 8] *= 1e-40  # denormals
    scores[:, 9] = np.round(scores[:, 9])  # many positives share a value (more than _MAX_SCAN)
    labels[::3, 10] = 0  # many unannotated
    scores[labels[:, 11] > 0, 11] = 5.0  # all positives tie, above every negative
    scores[5, 12] = np.inf
    scores[6, 12] = -np.inf  # +inf and -inf in one column
    labels[:, 13] = 0  # nothing annotated
    ours = metrics.average_precision(scores, labels)
    ref = metrics.average_precision_exact(scores, labels)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours[5] == 0 and ours[13] == 0


def test_large_matrix_with_realistic_rates_and_default_chunks():
    rng = np.random.default_rng(0)
    n, c = 20_000, 40
    scores = rng.normal(size=(n, c)).astype(np.float32)
    labels = np.where(rng.random((n, c)) < rng.uniform(0.001, 0.2, c), 1, -1).astype(np.int8)
    labels[rng.random(n) < 0.1] = 0
    scores[labels > 0] += 1.0
    np.testing.assert_allclose(metrics.average_precision(scores, labels),
                               metrics.average_precision_exact(scores, labels), rtol=0, atol=1e-12)


def test_integer_and_half_scores():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random((80, 5)) < 0.3, 1, -1)
    ints = rng.integers(0, 4, (80, 5))
    np.testing.assert_allclose(metrics.average_precision(ints, labels), metrics.average_precision_exact(ints, labels), atol=1e-12)
    half = rng.normal(size=(80, 5)).astype(np.float16)
    np.testing.assert_allclose(metrics.average_precision(half, labels), metrics.average_precision_exact(half, labels), atol=1e-12)


def _same_sets(a, b):
    np.testing.assert_array_equal(np.sort(a, axis=1), np.sort(b, axis=1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_top_k_picks_the_same_labels_as_argsort_including_ties(n, c, k, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (n, c)).astype(np.float32) if ties else rng.normal(size=(n, c))
    if n > 2:
        scores[1, :] = np.nan if c > 1 else scores[1, :]  # a row of NaN
        scores[2, 0] = np.nan
    _same_sets(metrics.top_k_indices(scores, k), metrics.top_k_indices_exact(scores, k))


@settings(max_examples=80, deadline=None)
@given(matrices, st.integers(1, 6), st.sampled_from(["overall", "per_class"]), st.booleans())
def test_topk_f1_equals_the_reference(case, k, mode, exclude):
    scores, labels = make(*case)
    ours = metrics.topk_f1(scores, labels, k, mode, exclude)
    ref = reference_topk_f1(scores, labels, k, mode, exclude)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_top_k_on_a_wide_matrix_with_boundary_ties():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(3000, 300)).astype(np.float32)
    scores[::5, :4] = 9.0  # 4 tied at the top: k=3 is a boundary tie, k=5 is not
    scores[1::5, 10:20] = 7.0
    for k in (1, 3, 5, 10):
        _same_sets(metrics.top_k_indices(scores, k), metrics.top_k_indices_exact(scores, k))


def test_top_k_accepts_reversed_and_big_endian_arrays():
    scores = np.random.default_rng(2).normal(size=(20, 9))
    expected = metrics.top_k_indices_exact(scores[:, ::-1], 3)
    _same_sets(metrics.top_k_indices(scores[:, ::-1], 3), expected)
    _same_sets(metrics.top_k_indices(scores.astype(">f8")[:, ::-1], 3), expected)


def test_nan_negatives_rank_lowest_on_the_fast_path(small_chunks, monkeypatch):
    """NaN scores of negatives and unannotated entries no longer send a class to the sorting path:
    they rank below every other score, as in the sorting reference."""
    rng = np.random.default_rng(11)
    n, c = 300, 7
    scores = rng.normal(size=(n, c)).astype(np.float32)
    labels = np.where(rng.random((n, c)) < 0.25, 1, -1).astype(np.int8)
    labels[rng.random((n, c)) < 0.1] = 0
    scores[(labels <= 0) & (rng.random((n, c)) < 0.2)] = np.nan
    called = []
    monkeypatch.setattr(metrics, "average_precision_exact",
                        lambda s, y, f=metrics.average_precision_exact: called.append(1) or f(s, y))
    ours = metrics.average_precision(scores, labels, threads=2)
    assert not called  # every class stayed on the fast path
    np.testing.assert_allclose(ours, metrics.average_precision_exact(scores, labels), rtol=0, atol=1e-12)


def test_a_class_with_more_positives_than_16_bit_slots():
    """A chunk with more than 65,533 slots (positives + classes) counts with a wide table."""
    rng = np.random.default_rng(12)
    n = 70_000
    scores = rng.normal(size=(n, 3)).astype(np.float32)
    labels = np.where(rng.random((n, 3)) < [0.97, 0.5, 0.01], 1, -1).astype(np.int8)
    labels[rng.random(n) < 0.01, 1] = 0
    scores[labels > 0] += 0.5
    scores[::97, 0] = np.round(scores[::97, 0], 1)  # some ties
    assert np.diff(metrics._positives_by_class(scores, labels)[2])[0] > 2**16
    np.testing.assert_allclose(metrics.average_precision(scores, labels),
                               metrics.average_precision_exact(scores, labels), rtol=0, atol=1e-12)


def test_non_contiguous_and_float_label_inputs(small_chunks):
    rng = np.random.default_rng(13)
    scores = rng.normal(size=(9, 120)).astype(np.float64).T  # Fortran-ordered (120, 9)
    labels = np.where(rng.random((120, 9)) < 0.3, 1.0, -1.0)[::-1]  # reversed rows, float labels
    labels[rng.random((120, 9)) < 0.2] = 0.0
    np.testing.assert_allclose(metrics.average_precision(scores, labels, threads=2),
                               metrics.average_precision_exact(scores, labels), rtol=0, atol=1e-12)


@pytest.mark.parametrize("width", [30, metrics._PARTITION_MAX_C, 300])  # np.partition / torch.topk
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_top_k_both_paths_with_ties_and_nan(width, dtype):
    rng = np.random.default_rng(width)
    scores = rng.normal(size=(2000, width)) * 3
    scores[::7] = np.round(scores[::7])  # many ties
    scores[::5, :4] = 9.0  # 4 tied at the top: k=3 is a boundary tie, k=5 is not
    if np.dtype(dtype).kind == "f":
        scores[3, 5] = np.nan
        scores[11, :] = np.nan
        scores[13, 2] = np.inf
        scores[17, :3] = -np.inf
    scores = scores.astype(dtype)
    for k in (1, 3, 5):
        _same_sets(metrics.top_k_indices(scores, k), metrics.top_k_indices_exact(scores, k))


@pytest.mark.parametrize("C", [40, 700])  # the np.partition and the torch.topk paths
def test_several_k_at_once_equal_one_k_at_a_time(C):
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((300, C)).astype(np.float32)
    scores[::7, :6] = 1.5  # ties at the top
    scores[3, 2] = np.nan
    labels = rng.integers(-1, 2, scores.shape).astype(np.int8)
    many = metrics.top_k_indices_many(scores, [5, 3, 1])
    assert sorted(many) == [1, 3, 5]
    for k, top in many.items():
        _same_sets(top, metrics.top_k_indices_exact(scores, k))
    f1s = metrics.topk_f1_many(scores, labels, (3, 5), exclude_no_positive=True)
    keep = (labels == 1).any(axis=1)
    for k in (3, 5):  # reference: the original's argsort top-k on the images with a positive
        top = metrics.top_k_indices_exact(scores[keep], k)
        tp = np.count_nonzero(np.take_along_axis(labels[keep], top, axis=1) == 1)
        p, r = tp / top.size, tp / np.count_nonzero(labels[keep] == 1)
        assert f1s[k] == pytest.approx((2 * p * r / (p + r), p, r), rel=1e-12)
