"""The evaluation protocol: equal to the original's recorded outputs and to scikit-learn."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from lesa import metrics
from lesa.errors import ShapeError


@pytest.fixture(scope="module")
def golden(golden_root):
    return np.load(golden_root("metrics") / "metrics.npz")


def test_average_precision_equals_original(golden):
    ap = metrics.average_precision(golden["scores"], golden["labels"])
    np.testing.assert_allclose(ap, golden["ap"], rtol=0, atol=1e-9)
    assert ap[3] == 0.0  # class 3 has no positive: AP 0, still counted in the mean


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


def _sklearn_ap(scores, labels):
    out = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        y = labels[:, c]
        if (y > 0).sum() == 0:
            continue
        m = y != 0
        out[c] = average_precision_score(np.clip(y[m], 0, 1), scores[m, c])
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


@settings(max_examples=60, deadline=None)
@given(label_matrices)
def test_average_precision_matches_sklearn_with_ties(data):
    s, y, shape = data
    scores = np.array(s, dtype=np.float32).reshape(shape)
    labels = np.array(y, dtype=np.float32).reshape(shape)
    np.testing.assert_allclose(metrics.average_precision(scores, labels), _sklearn_ap(scores, labels), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(label_matrices, st.integers(1, 5))
def test_per_class_topk_matches_sklearn(data, k):
    s, y, shape = data
    rng = np.random.default_rng(len(s))
    scores = np.array(s, dtype=np.float64).reshape(shape) + rng.random(shape) * 1e-3  # no ties
    labels = np.array(y, dtype=np.float32).reshape(shape)
    f1, p, r = metrics.topk_f1(scores, labels, k, "per_class")
    pred = metrics.top_k_predictions(scores, k)
    for c in range(shape[1]):
        if not (labels[:, c] > 0).any():
            assert f1[c] == p[c] == r[c] == 0
            continue
        yb = np.clip(labels[:, c], 0, 1)
        assert f1[c] == pytest.approx(f1_score(yb, pred[:, c], zero_division=0), abs=1e-12)
        assert p[c] == pytest.approx(precision_score(yb, pred[:, c], zero_division=0), abs=1e-12)
        assert r[c] == pytest.approx(recall_score(yb, pred[:, c], zero_division=0), abs=1e-12)


def test_top_k_marks_k_per_image():
    scores = np.random.default_rng(1).random((50, 9))
    pred = metrics.top_k_predictions(scores, 3)
    assert (pred.sum(axis=1) == 3).all()
    assert (np.sort(scores, axis=1)[:, -3:].min(axis=1) <= (scores * pred).max(axis=1)).all()


def test_overall_is_pooled_precision_recall():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    labels = np.array([[1, -1, 1], [-1, -1, 1]])
    f1, p, r = metrics.topk_f1(scores, labels, 1)
    # image 0 predicts class 0 (correct), image 1 predicts class 1 (wrong)
    assert p == 0.5 and r == pytest.approx(1 / 3) and f1 == pytest.approx(0.4)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ShapeError, match="must be equal"):
        metrics.average_precision(np.zeros((3, 4)), np.zeros((3, 5)))
