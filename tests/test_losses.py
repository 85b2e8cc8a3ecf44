"""Softmax cross-entropy: hand-computed values, finite differences, stability, errors, torch."""

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.gradcheck import _numeric_gradient
from cnnumpy.losses import softmax, softmax_cross_entropy, softmax_cross_entropy_backward


def test_hand_computed_value_and_gradient():
    logits = np.array([[0.0, np.log(3.0)], [np.log(4.0), 0.0]])  # p = [1/4, 3/4], [4/5, 1/5]
    labels = np.array([1, 1])
    loss, cache = softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(-(np.log(0.75) + np.log(0.2)) / 2, rel=1e-14)
    expected = np.array([[0.25, -0.25], [0.8, -0.8]]) / 2
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache), expected, atol=1e-15)


def test_label_smoothing_hand_computed():
    logits = np.array([[0.0, np.log(3.0)]])  # p = [1/4, 3/4]
    eps = 0.2  # q = [0.1, 0.9]
    loss, cache = softmax_cross_entropy(logits, np.array([1]), eps)
    assert loss == pytest.approx(-(0.1 * np.log(0.25) + 0.9 * np.log(0.75)), rel=1e-14)
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache), [[0.15, -0.15]],
                               atol=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradient_matches_finite_differences(smoothing, rng):
    logits = rng.standard_normal((5, 4)) * 3
    labels = rng.integers(0, 4, 5)
    criterion = cn.CrossEntropyLoss(label_smoothing=smoothing)
    criterion.forward(logits, labels)
    analytic = criterion.backward()
    numeric = _numeric_gradient(lambda: float(criterion.forward(logits, labels)), logits,
                                np.arange(logits.size), 1e-6).reshape(logits.shape)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_stable_for_huge_logits_and_float32_stays_float32():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype=np.float32)
    criterion = cn.CrossEntropyLoss(label_smoothing=0.1)
    loss = criterion.forward(logits, np.array([0, 0]))
    dlogits = criterion.backward()
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    # sample 1: log p(class 0) = -2e4 - log 2; sample 0: certain of its true class
    plain = float(cn.CrossEntropyLoss().forward(logits, np.array([0, 0])))
    assert plain == pytest.approx((2e4 + np.log(2)) / 2, rel=1e-6)
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1, rtol=1e-6)


def test_errors():
    criterion = cn.CrossEntropyLoss()
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        criterion.forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] for 4 classes, got 4"):
        criterion.forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="got -1"):
        criterion.forward(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        criterion.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\)"):
        criterion.forward(np.zeros(4), np.array([0]))
    with pytest.raises(TypeError, match="floating-point"):
        criterion.forward(np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        cn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        cn.CrossEntropyLoss().backward()


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_against_torch(smoothing, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 5)) * 4
    labels = rng.integers(0, 5, 6)
    criterion = cn.CrossEntropyLoss(label_smoothing=smoothing)
    loss = criterion.forward(logits, labels)
    tlogits = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tlogits, torch.tensor(labels),
                                              label_smoothing=smoothing)
    tloss.backward()
    assert float(loss) == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(criterion.backward(), tlogits.grad.numpy(), rtol=1e-10,
                               atol=1e-14)
