"""The evaluation protocol: equal to the original's recorded outputs, to scikit-learn's AP, and to
the original's ``np.argsort`` top-K picks (ties included), for numpy and torch inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from lesa import metrics
from lesa.errors import ShapeError


# -- the original's recorded outputs ---------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(golden_root):
    return np.load(golden_root("metrics") / "metrics.npz")


def test_average_precision_equals_original(golden):
    ap = metrics.average_precision(golden["scores"], golden["labels"])
    np.testing.assert_allclose(ap, golden["ap"], rtol=0, atol=1e-9)
    assert ap.dtype == np.float64 and ap[3] == 0.0  # class 3 has no positive: AP 0...
    assert metrics.mean_average_precision(golden["scores"], golden["labels"]) == pytest.approx(
        golden["ap"].mean(), abs=1e-9)  # ... and still counted in the mean


@pytest.mark.parametrize("k", [1, 3, 5, 10])
@pytest.mark.parametrize("exclude", [False, True])
def test_overall_topk_equals_original(golden, k, exclude):
    got = metrics.topk_f1(golden["scores"], golden["labels"], k, "overall", exclude)
    np.testing.assert_allclose(got, golden[f"overall_k{k}_exclude{int(exclude)}"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_per_class_topk_equals_original(golden, k):
    f1, p, r = metrics.topk_f1(golden["scores"], golden["labels"], k, "per_class")
    for ours, name in ((f1, "f1"), (p, "p"), (r, "r")):
        np.testing.assert_allclose(ours, golden[f"perclass_k{k}/{name}"], rtol=0, atol=1e-9)


def test_several_k_in_one_call_equal_the_original(golden):
    many = metrics.topk_f1_many(golden["scores"], golden["labels"], [10, 1, 5, 3], exclude_no_positive=True)
    assert sorted(many) == [1, 3, 5, 10]
    for k, got in many.items():
        np.testing.assert_allclose(got, golden[f"overall_k{k}_exclude1"], rtol=0, atol=1e-9)


# -- AP: scikit-learn on the annotated images -------------------------------------------------------
def sklearn_ap(scores, labels):
    """scikit-learn's AP per class on the annotated images; a NaN score ranks lowest. Scores are
    replaced by their dense ranks first (same order and ties; scikit-learn refuses infinities)."""
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    out = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        y = labels[:, c]
        if not (y > 0).any():
            continue
        rank = np.unique(scores[:, c], return_inverse=True)[1]
        out[c] = average_precision_score(y[y != 0] > 0, rank[y != 0])
    return out


label_matrices = st.integers(1, 40).flatmap(
    lambda n: st.integers(1, 12).flatmap(
        lambda c: st.tuples(
            st.lists(st.integers(0, 6), min_size=n * c, max_size=n * c),  # few values: many ties
            st.lists(st.sampled_from([-1, 0, 1]), min_size=n * c, max_size=n * c),
            st.just((n, c)),
        )
    )
)


@settings(max_examples=80, deadline=None)
@given(label_matrices, st.sampled_from([np.float32, np.float64, np.int16]))
def test_average_precision_matches_sklearn_with_ties_and_unannotated_labels(data, dtype):
    s, y, shape = data
    scores = np.array(s, dtype=dtype).reshape(shape)
    labels = np.array(y, dtype=np.int8).reshape(shape)
    ours = metrics.average_precision(scores, labels)
    np.testing.assert_allclose(ours, sklearn_ap(scores, labels), rtol=0, atol=1e-12)
    on_tensors = metrics.average_precision(torch.from_numpy(scores), torch.from_numpy(labels).float())
    np.testing.assert_array_equal(on_tensors, ours)


def test_average_precision_of_special_scores():
    rng = np.random.default_rng(3)
    n, c = 200, 15
    scores = rng.normal(size=(n, c)).astype(np.float32)
    labels = np.where(rng.random((n, c)) < 0.2, 1, -1).astype(np.int8)
    scores[:50, 0] = np.inf  # +inf on negatives and positives
    scores[50:60, 1] = -np.inf
    scores[::7, 2] = np.nan  # NaN ranks lowest, also for positives
    scores[:, 3] = 0.0
    scores[::2, 3] = -0.0  # -0.0 ties with 0.0
    labels[:, 4] = 1  # every image positive: AP 1
    labels[:, 5] = -1  # no positive: AP 0
    labels[:, 6] = -1
    labels[17, 6] = 1  # a single positive
    scores[:, 7] *= 1e38  # a huge span
    scores[:, 8] *= 1e-40  # denormals
    scores[:, 9] = np.round(scores[:, 9])  # many positives share a value
    labels[::3, 10] = 0  # many unannotated
    scores[labels[:, 11] > 0, 11] = 5.0  # every positive ties, above every negative: AP 1
    scores[5, 12], scores[6, 12] = np.inf, -np.inf
    labels[:, 13] = 0  # nothing annotated: AP 0
    scores[labels[:, 14] > 0, 14] = np.nan  # every positive NaN: they rank lowest
    ours = metrics.average_precision(scores, labels)
    np.testing.assert_allclose(ours, sklearn_ap(scores, labels), rtol=0, atol=1e-12)
    assert ours[4] == ours[11] == 1 and ours[5] == ours[13] == 0
    with_inf = np.where(np.isnan(scores), -np.inf, scores)  # the NaN rule: as -inf
    np.testing.assert_array_equal(metrics.average_precision(with_inf, labels), ours)


def test_average_precision_over_several_chunks_with_uneven_classes():
    """NUS-WIDE-like rates: a few frequent classes next to rare ones, in more than one chunk of
    classes (4.5 M scores), compared with scikit-learn on every class."""
    rng = np.random.default_rng(0)
    n, c = 45_000, 100
    rate = np.concatenate([[0.6, 0.3], rng.uniform(0.0001, 0.02, c - 3), [0.0]])
    labels = np.where(rng.random((n, c)) < rate, 1, -1).astype(np.int8)
    labels[rng.random((n, c)) < 0.05] = 0
    scores = rng.normal(size=(n, c)).astype(np.float32)
    scores[labels > 0] += 1.0
    scores[::97, :10] = np.round(scores[::97, :10], 1)  # some ties
    np.testing.assert_allclose(metrics.average_precision(scores, labels), sklearn_ap(scores, labels),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["fortran", "reversed", "big-endian", "read-only", "float16", "uint16"])
def test_average_precision_of_any_array_layout(layout):
    rng = np.random.default_rng(13)
    plain = rng.integers(0, 50, (120, 9)).astype(np.float64)
    labels = np.where(rng.random((120, 9)) < 0.3, 1.0, -1.0)
    labels[rng.random((120, 9)) < 0.2] = 0.0
    scores = {"fortran": np.asfortranarray(plain), "reversed": plain[::-1, ::-1],
              "big-endian": plain.astype(">f8"), "read-only": plain.copy(),
              "float16": plain.astype(np.float16), "uint16": plain.astype(np.uint16)}[layout]
    scores.flags.writeable = layout != "read-only"
    if layout == "reversed":
        labels = labels[::-1, ::-1]
    np.testing.assert_allclose(metrics.average_precision(scores, labels),
                               sklearn_ap(np.asarray(scores, np.float64), labels), rtol=0, atol=1e-12)
    pred = metrics.top_k_predictions(scores, 3)
    np.testing.assert_array_equal(pred, argsort_predictions(scores, 3))


# -- top-K: the original's argsort picks ------------------------------------------------------------
def argsort_predictions(scores, k):
    """The original's picks: the last k of numpy's default argsort of each row."""
    pred = np.zeros(scores.shape, dtype=np.int8)
    if scores.shape[0]:
        np.put_along_axis(pred, np.argsort(scores, axis=1)[:, -k:], 1, axis=1)
    return pred


def reference_topk_f1(scores, labels, k, mode, exclude_no_positive):
    """The protocol written out on the original's argsort picks."""
    if exclude_no_positive:
        keep = (labels == 1).any(axis=1)
        scores, labels = scores[keep], labels[keep]
    pred = argsort_predictions(scores, k) == 1
    positive = labels == 1
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode == "overall":
            tp = np.float64(np.count_nonzero(pred & positive))
            p, r = tp / np.count_nonzero(pred), tp / np.count_nonzero(positive)
            return 2 * p * r / (p + r), p, r
        tp = np.count_nonzero(pred & positive, axis=0).astype(np.float64)
        n_pred = np.count_nonzero(pred, axis=0)
        n_pos = np.count_nonzero(positive, axis=0)
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(n_pos > 0, tp / n_pos, 0.0)
        f1 = np.where(n_pred + n_pos > 0, 2 * tp / (n_pred + n_pos), 0.0)
    return tuple(np.where(n_pos > 0, v, 0.0) for v in (f1, p, r))


def tied_scores(n, c, seed, dtype=np.float32):
    """Rows with ties at every rank (few distinct values), a NaN row, a row with one NaN, +-inf,
    -0.0 next to 0.0."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(-1, 3, (n, c)).astype(np.float64)
    scores[rng.random((n, c)) < 0.1] = 0.0 * -1  # -0.0
    if np.dtype(dtype).kind == "f":
        scores[0] = np.nan
        scores[1 % n, 0] = np.nan
        scores[2 % n, -1] = np.inf
        scores[3 % n, :2] = -np.inf
    return scores.astype(dtype)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(1, 14), st.integers(1, 6), st.integers(0, 2**31 - 1),
       st.sampled_from([np.float32, np.float64, np.int32]))
def test_top_k_predictions_are_the_original_argsort_picks_on_tied_rows(n, c, k, seed, dtype):
    scores = tied_scores(n, c, seed, dtype)
    expected = argsort_predictions(scores, k)
    np.testing.assert_array_equal(metrics.top_k_predictions(scores, k), expected)
    np.testing.assert_array_equal(metrics.top_k_predictions(torch.from_numpy(scores), k), expected)


def test_top_k_on_a_wide_matrix_with_boundary_ties():
    """Most rows go through torch.topk; rows whose k-th and (k+1)-th scores tie through argsort."""
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(3000, 300)).astype(np.float32)
    scores[::5, :4] = 9.0  # 4 tied at the top: k=3 is a boundary tie, k=5 is not
    scores[1::5, 10:20] = 7.0
    scores[2::5] = np.round(scores[2::5])
    scores[3, 5] = np.nan
    for k in (1, 3, 5, 10):
        np.testing.assert_array_equal(metrics.top_k_predictions(scores, k), argsort_predictions(scores, k))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.integers(1, 10), st.integers(0, 2**31 - 1), st.integers(1, 6),
       st.sampled_from(["overall", "per_class"]), st.booleans())
def test_topk_f1_equals_the_protocol_on_argsort_picks(n, c, seed, k, mode, exclude):
    scores = tied_scores(n, c, seed)
    rng = np.random.default_rng(seed + 1)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), (n, c), p=[0.6, 0.1, 0.3])
    ours = metrics.topk_f1(scores, labels, k, mode, exclude)
    for a, b in zip(ours, reference_topk_f1(scores, labels, k, mode, exclude)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    many = metrics.topk_f1_many(torch.from_numpy(scores), torch.from_numpy(labels), [k, k + 2], mode, exclude)
    for a, b in zip(many[k], ours):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(many[k + 2], reference_topk_f1(scores, labels, k + 2, mode, exclude)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(label_matrices, st.integers(1, 5))
def test_per_class_topk_matches_sklearn(data, k):
    s, y, shape = data
    scores = np.array(s, dtype=np.float64).reshape(shape)
    labels = np.array(y, dtype=np.float32).reshape(shape)
    f1, p, r = metrics.topk_f1(scores, labels, k, "per_class")
    pred = metrics.top_k_predictions(scores, k)
    for c in range(shape[1]):
        if not (labels[:, c] > 0).any():
            assert f1[c] == p[c] == r[c] == 0  # original: a class without a positive keeps 0
            continue
        yb = labels[:, c] > 0  # unannotated labels count as negatives
        assert f1[c] == pytest.approx(f1_score(yb, pred[:, c], zero_division=0), abs=1e-12)
        assert p[c] == pytest.approx(precision_score(yb, pred[:, c], zero_division=0), abs=1e-12)
        assert r[c] == pytest.approx(recall_score(yb, pred[:, c], zero_division=0), abs=1e-12)


def test_overall_is_pooled_precision_recall():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    labels = np.array([[1, -1, 1], [-1, -1, 1]])
    f1, p, r = metrics.topk_f1(scores, labels, 1)
    # image 0 predicts class 0 (correct), image 1 predicts class 1 (wrong)
    assert p == 0.5 and r == pytest.approx(1 / 3) and f1 == pytest.approx(0.4)
    assert metrics.topk_f1(scores, labels, 5) == pytest.approx((2 / 3, 0.5, 1.0))  # k >= C: every label


def test_classes_without_positives():
    scores = np.random.default_rng(2).normal(size=(30, 4))
    labels = -np.ones((30, 4), dtype=np.int8)
    labels[::3, 0] = 1
    labels[:, 2] = 0  # never annotated
    ap = metrics.average_precision(scores, labels)
    assert ap[0] > 0 and ap[1] == ap[2] == ap[3] == 0
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(ap[0] / 4)
    f1, p, r = metrics.topk_f1(scores, labels, 2, "per_class")
    assert (f1[1:] == 0).all() and (p[1:] == 0).all() and (r[1:] == 0).all()


# -- inputs ----------------------------------------------------------------------------------------
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
devices = ["cpu", pytest.param("cuda", marks=no_cuda)]


@pytest.mark.parametrize("device", devices)
def test_torch_and_numpy_inputs_agree(device):
    scores = tied_scores(500, 40, seed=9)
    scores[5:, :] += np.random.default_rng(9).normal(size=(495, 40)).astype(np.float32) * (scores[5:] > 1)
    labels = np.random.default_rng(10).choice(np.array([-1, 0, 1], np.int8), (500, 40), p=[0.7, 0.1, 0.2])
    s, y = torch.from_numpy(scores).to(device), torch.from_numpy(labels).to(device)
    np.testing.assert_allclose(metrics.average_precision(s, y), metrics.average_precision(scores, labels),
                               rtol=0, atol=1e-12)
    for mode in ("overall", "per_class"):
        ours = metrics.topk_f1_many(s, y, (3, 5), mode)
        ref = metrics.topk_f1_many(scores, labels, (3, 5), mode)
        for k in (3, 5):
            for a, b in zip(ours[k], ref[k]):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics.top_k_predictions(s, 3), argsort_predictions(scores, 3))
    half = s.to(torch.bfloat16)  # (numpy has no bfloat16: its values in float32)
    as_float = half.float().cpu().numpy()
    np.testing.assert_allclose(metrics.average_precision(half, y), sklearn_ap(as_float, labels),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(metrics.top_k_predictions(half, 3), argsort_predictions(as_float, 3))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ShapeError, match="must be equal"):
        metrics.average_precision(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ShapeError, match="must be equal"):
        metrics.topk_f1(np.zeros(4), np.zeros(4), 1)


def test_bad_k_and_mode_are_refused():
    with pytest.raises(ValueError, match="K must be >= 1"):
        metrics.topk_f1(np.zeros((3, 4)), np.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="mode must be"):
        metrics.topk_f1(np.zeros((3, 4)), np.zeros((3, 4)), 1, mode="macro")
