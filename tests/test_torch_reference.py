"""Forward, dx, dW and db against PyTorch autograd (skipped when PyTorch is absent)."""

import numpy as np
import pytest

import cnnumpy as cn

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def check_against_torch(layer, torch_fn, x, rng, fwd_tol=1e-12, grad_tol=1e-10):
    """Run the same seeded input and upstream gradient through cnnumpy and torch.

    `torch_fn(x, **params)` computes the reference from torch tensors named like the layer's
    parameters. Checks shape, then dtype, then values, forward and every gradient.
    """
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape).astype(x.dtype)
    dx = layer.backward(dout)

    tx = torch.tensor(x, requires_grad=True)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in layer.parameters().items()}
    tout = torch_fn(tx, **tparams)
    tout.backward(torch.tensor(dout))

    assert out.shape == tuple(tout.shape)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=fwd_tol, atol=fwd_tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=grad_tol, atol=grad_tol)
    for name, grad in layer.gradients().items():
        np.testing.assert_allclose(grad, tparams[name].grad.numpy(), rtol=grad_tol, atol=grad_tol,
                                   err_msg=name)


@pytest.mark.parametrize("k, s, p, shape", [
    (3, 1, 1, (2, 3, 8, 8)), (5, 2, 2, (3, 2, 11, 9)), ((3, 1), (2, 1), (0, 1), (1, 4, 7, 6)),
    (1, 3, 0, (2, 2, 7, 7)), (4, 3, 2, (2, 1, 10, 13)),
])
def test_conv2d(k, s, p, shape, rng):
    layer = cn.Conv2D(shape[1], 5, k, stride=s, padding=p, rng=rng, dtype=np.float64)
    layer.b = rng.standard_normal(5)
    x = rng.standard_normal(shape)
    check_against_torch(layer, lambda x, W, b: tF.conv2d(x, W, b, stride=s, padding=p), x, rng)


@pytest.mark.parametrize("pool, stride, shape", [
    (2, None, (2, 3, 8, 8)), (3, 2, (2, 2, 9, 8)), (2, 1, (1, 2, 5, 5)), ((2, 3), (1, 2), (2, 1, 6, 9)),
])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pools(kind, pool, stride, shape, rng):
    layer = (cn.MaxPool2D if kind == "max" else cn.AvgPool2D)(pool, stride)
    fn = tF.max_pool2d if kind == "max" else tF.avg_pool2d
    x = rng.standard_normal(shape)
    check_against_torch(layer, lambda x: fn(x, pool, stride), x, rng)


def test_maxpool_ties_after_relu_like_torch(rng):
    """After a ReLU, whole windows are 0: torch and cnnumpy both pick one (the first) maximum."""
    x = np.maximum(rng.standard_normal((2, 3, 8, 8)), 0).round(0)
    check_against_torch(cn.MaxPool2D(2), lambda x: tF.max_pool2d(x, 2), x, rng)
    check_against_torch(cn.MaxPool2D(3, 1), lambda x: tF.max_pool2d(x, 3, 1), x, rng)


def test_linear_relu_flatten(rng):
    layer = cn.Linear(6, 4, rng=rng, dtype=np.float64)
    layer.b = rng.standard_normal(4)
    check_against_torch(layer, lambda x, W, b: tF.linear(x, W, b), rng.standard_normal((3, 6)), rng)
    check_against_torch(cn.ReLU(), tF.relu, rng.standard_normal((3, 2, 4, 4)), rng)
    check_against_torch(cn.Flatten(), lambda x: x.flatten(1), rng.standard_normal((3, 2, 4, 4)), rng)


def test_simplecnn_float32(rng):
    model = cn.SimpleCNN((3, 16, 16), 10, rng=rng)

    def reference(x, **p):
        h = tF.max_pool2d(tF.relu(tF.conv2d(x, p["conv1.W"], p["conv1.b"], padding=1)), 2)
        h = tF.max_pool2d(tF.relu(tF.conv2d(h, p["conv2.W"], p["conv2.b"], padding=1)), 2)
        h = tF.relu(tF.linear(h.flatten(1), p["fc1.W"], p["fc1.b"]))
        return tF.linear(h, p["fc2.W"], p["fc2.b"])

    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    check_against_torch(model, reference, x, rng, fwd_tol=1e-4, grad_tol=1e-3)
