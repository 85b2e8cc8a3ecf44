"""Data parallelism (cnnumpy.parallel): the parts of a batch through replicas give the
whole-batch loss, logits and gradients."""

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy import parallel
from cnnumpy.parallel import BatchParallel, batch_parts

needs_threadpoolctl = pytest.mark.skipif(parallel.ThreadpoolController is None,
                                         reason="threadpoolctl (extra 'threads') not installed")


def model_and_batch(n=7, dtype=np.float64):
    model = cn.SimpleCNN((3, 12, 12), 5, rng=np.random.default_rng(0), dtype=dtype)
    rng = np.random.default_rng(1)
    return model, rng.standard_normal((n, 3, 12, 12)).astype(dtype), rng.integers(0, 5, n)


def whole_batch(model, x, y, criterion):
    logits = model.forward(x)
    loss = criterion.forward(logits, y)
    model.backward(criterion.backward(), input_grad=False)
    return loss, logits, {k: v.copy() for k, v in model.gradients().items()}


def test_batch_parts_cover_the_batch_without_empty_parts():
    assert batch_parts(7, 2) == [slice(0, 3), slice(3, 7)]
    assert batch_parts(1, 4) == [slice(0, 1)]
    assert sum(p.stop - p.start for p in batch_parts(130, 3)) == 130


@needs_threadpoolctl
@pytest.mark.parametrize("workers, n", [(2, 7), (3, 8), (4, 2)])
def test_parts_give_the_whole_batch_loss_logits_and_gradients(workers, n):
    model, x, y = model_and_batch(n)
    criterion = cn.CrossEntropyLoss(label_smoothing=0.1)
    loss, logits, grads = whole_batch(model, x, y, criterion)
    passes = BatchParallel(model, workers)
    assert passes.workers == workers
    part_loss, part_logits = passes.forward_backward(x, y, criterion)
    np.testing.assert_allclose(part_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(part_logits, logits, rtol=1e-12, atol=1e-12)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-5)


@needs_threadpoolctl
def test_replicas_follow_the_model_parameters():
    model, x, y = model_and_batch(6, np.float32)
    passes = BatchParallel(model, 2)
    criterion = cn.CrossEntropyLoss()
    passes.forward_backward(x, y, criterion)
    model["fc2"].W += 1  # in place: the replicas share it
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-5)
    model.astype(np.float64)  # new arrays: the replicas are made again
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(passes.forward(x64), model.forward(x64, keep_cache=False),
                               rtol=1e-12)
    _, _, grads = whole_batch(model, x64, y, criterion)
    passes.forward_backward(x64, y, criterion)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-10, atol=1e-12)


def test_one_worker_is_the_plain_pass():
    model, x, y = model_and_batch(5)
    criterion = cn.CrossEntropyLoss()
    loss, logits, grads = whole_batch(model, x, y, criterion)
    passes = BatchParallel(model, 1)
    part_loss, part_logits = passes.forward_backward(x, y, criterion)
    assert part_loss == loss
    np.testing.assert_array_equal(part_logits, logits)
    for name, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, grads[name])
    with pytest.raises(ValueError, match="workers"):
        BatchParallel(model, 0)


@needs_threadpoolctl
def test_replicas_are_made_again_when_the_model_changes():
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 2)
    passes.forward(x)
    model.layers["pool1"] = cn.AvgPool2D(2)  # no parameters, another computation
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-12)
    model.commute_relu_pool = False
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-12)


@needs_threadpoolctl
def test_an_error_in_a_part_is_raised_after_every_part_ended():
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 3)
    bad = y.copy()
    bad[-1] = 99  # not a class: the last part's loss raises
    with pytest.raises(ValueError):
        passes.forward_backward(x, bad, cn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="labels"):
        passes.forward_backward(x, y[:-1], cn.CrossEntropyLoss())
    loss, _ = passes.forward_backward(x, y, cn.CrossEntropyLoss())  # still usable
    assert np.isfinite(loss)
