"""The gradient checker finds wrong gradients, including the lesson's batch-division bug."""

import numpy as np
import pytest

import cnnumpy as cn


class LessonConv(cn.Conv2D):
    """The lesson's bug: dW and db are divided by the batch size, dX is not."""

    def _backward(self, dout, cache):
        dx = super()._backward(dout, cache)
        self.dW, self.db = self.dW / dout.shape[0], self.db / dout.shape[0]
        return dx


def test_accepts_a_correct_layer_and_leaves_it_unchanged(rng):
    layer = cn.Conv2D(2, 3, 3, stride=2, padding=1, rng=rng)
    W = layer.W.copy()
    error = cn.gradient_check(layer, rng.random((2, 2, 7, 7)))
    assert 0 <= error < 1e-7
    assert layer.W.dtype == np.float32 and np.array_equal(layer.W, W)


def test_catches_the_lessons_batch_division(rng):
    layer = LessonConv(2, 3, 3, padding=1, rng=rng)
    with pytest.raises(cn.GradientCheckError, match=r"worst relative error 5.00e-01 in (W|b)"):
        cn.gradient_check(layer, rng.random((2, 2, 5, 5)))
    assert cn.gradient_check(layer, rng.random((1, 2, 5, 5))) < 1e-7  # batch 1 hides it
    assert cn.gradient_check(layer, rng.random((2, 2, 5, 5)), tol=None) == pytest.approx(0.5)


def test_maxpool_backward_routes_a_tied_window_to_one_input_not_to_all_as_the_lesson(rng):
    class TieMaskPool(cn.MaxPool2D):
        def _backward(self, dout, cache):  # every tie gets the gradient, as in the lesson
            x = self._x
            win = cn.functional.windows(x, self.pool_size, self.stride)
            mask = win == win.max(axis=(-2, -1), keepdims=True)
            return cn.functional.col2im(mask * dout[..., None, None], x.shape, self.stride)

        def _forward(self, x):
            self._x = x
            return super()._forward(x)

    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 1.0
    good = cn.MaxPool2D(2)
    good.forward(x)
    bad = TieMaskPool(2)
    bad.forward(x)
    dout = np.ones((1, 1, 2, 2))
    assert good.backward(dout).sum() == 4.0  # one input per window
    assert bad.backward(dout).sum() == 13.0  # 1 + 3 windows x 4 tied zeros
