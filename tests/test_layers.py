"""Layers: forward against loop references, exact gradients by finite differences, errors."""

import itertools

import numpy as np
import pytest

import cnnumpy as cn
from reference import conv2d_loops, pool2d_loops

CONV_GRID = [
    # kernel, stride, padding, (H, W)
    *[(k, s, p, (7, 6)) for k, s, p in itertools.product([1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2])
      if k <= 6 + 2 * p],
    ((3, 2), (1, 2), (1, 0), (5, 7)),
    ((1, 4), (2, 1), (0, 2), (6, 5)),
    ((2, 3), (3, 2), (2, 1), (8, 9)),
]


def conv_layer(k, s, p, c_in=2, c_out=3, dtype=np.float64, seed=0):
    return cn.Conv2D(c_in, c_out, k, stride=s, padding=p, rng=np.random.default_rng(seed),
                     dtype=dtype)


@pytest.mark.parametrize("k, s, p, hw", CONV_GRID)
def test_conv_forward_matches_loops(k, s, p, hw, rng):
    layer = conv_layer(k, s, p)
    layer.b = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, *hw))
    expected = conv2d_loops(x, layer.W, layer.b, cn.functional.pair(s), cn.functional.pair(p))
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k, s, p, hw", CONV_GRID)
def test_conv_gradients_exact(k, s, p, hw, batch, rng):
    layer = conv_layer(k, s, p)
    layer.b = rng.standard_normal(3)
    x = rng.standard_normal((batch, 2, *hw))
    assert cn.gradient_check(layer, x, rng=rng) < 1e-7


POOL_GRID = [
    # pool, stride, (H, W): tiling, overlapping, leaving a remainder, non-square
    (2, None, (6, 8)), (2, None, (7, 5)), (3, 2, (7, 7)), (3, 1, (5, 6)),
    ((2, 3), (1, 2), (6, 7)), (1, 1, (3, 4)), (4, 3, (9, 10)),
]


@pytest.mark.parametrize("pool_cls, reduce", [(cn.MaxPool2D, np.max), (cn.AvgPool2D, np.mean)])
@pytest.mark.parametrize("pool, stride, hw", POOL_GRID)
def test_pool_forward_matches_loops(pool_cls, reduce, pool, stride, hw, rng):
    layer = pool_cls(pool, stride)
    x = rng.standard_normal((2, 3, *hw))
    expected = pool2d_loops(x, layer.pool_size, layer.stride, reduce)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool_cls", [cn.MaxPool2D, cn.AvgPool2D])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pool, stride, hw", POOL_GRID)
def test_pool_gradients_exact(pool_cls, batch, pool, stride, hw, rng):
    # distinct values, far apart: no ties, so finite differences do not cross a kink
    x = rng.permutation(batch * 3 * hw[0] * hw[1]).reshape(batch, 3, *hw) * 0.1
    assert cn.gradient_check(pool_cls(pool, stride), x, rng=rng) < 1e-7


def test_maxpool_ties_route_to_first_maximum_only():
    x = np.zeros((1, 1, 4, 4))  # all-zero windows, as after a ReLU
    x[0, 0, 2:, 2:] = [[5.0, 5.0], [5.0, 1.0]]
    pool = cn.MaxPool2D(2)
    pool.forward(x)
    dx = pool.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_maxpool_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the maximum of all four 2x2 windows with stride 1
    pool = cn.MaxPool2D(2, stride=1)
    pool.forward(x)
    dx = pool.backward(np.full((1, 1, 2, 2), 0.5))
    assert dx[0, 0, 1, 1] == 2.0 and dx.sum() == 2.0


@pytest.mark.parametrize("layer, shape", [
    (cn.ReLU(), (3, 2, 4, 5)), (cn.ReLU(), (4, 7)), (cn.Flatten(), (2, 3, 4, 5)),
    (cn.Linear(6, 4, rng=np.random.default_rng(0), dtype=np.float64), (5, 6)),
    (cn.Linear(1, 1, rng=np.random.default_rng(0), dtype=np.float64), (1, 1)),
])
def test_other_layers_gradients_exact(layer, shape, rng):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU inputs away from its kink
    assert cn.gradient_check(layer, x, rng=rng) < 1e-7


def test_linear_forward_formula(rng):
    layer = cn.Linear(4, 3, rng=rng, dtype=np.float64)
    layer.b = rng.standard_normal(3)
    x = rng.standard_normal((5, 4))
    np.testing.assert_allclose(layer.forward(x), x @ layer.W.T + layer.b)


def test_gradients_are_not_divided_by_batch(rng):
    """Duplicating the batch doubles dW and db (sum over samples), and leaves dx per sample."""
    layer = conv_layer(3, 1, 1)
    x = rng.standard_normal((2, 2, 5, 5))
    dout = rng.standard_normal((2, 3, 5, 5))
    layer.forward(x)
    dx1 = layer.backward(dout)
    dW1, db1 = layer.dW.copy(), layer.db.copy()
    layer.forward(np.concatenate([x, x]))
    dx2 = layer.backward(np.concatenate([dout, dout]))
    np.testing.assert_allclose(layer.dW, 2 * dW1)
    np.testing.assert_allclose(layer.db, 2 * db1)
    np.testing.assert_allclose(dx2[:2], dx1)


def test_he_initialisation_statistics():
    layer = cn.Conv2D(16, 64, 3, rng=np.random.default_rng(0))
    assert layer.W.shape == (64, 16, 3, 3) and layer.b.shape == (64,)
    assert layer.W.dtype == np.float32 and not layer.b.any()
    assert abs(layer.W.std() - np.sqrt(2 / (16 * 9))) < 0.01
    assert abs(layer.W.mean()) < 0.01


@pytest.mark.parametrize("make, fan_in", [(lambda init: cn.Conv2D(16, 64, 3, init=init,
                                                                   rng=np.random.default_rng(0)),
                                             16 * 9),
                                            (lambda init: cn.Linear(200, 300, init=init,
                                                                    rng=np.random.default_rng(0)),
                                             200)])
def test_uniform_initialisation_is_pytorchs_default(make, fan_in):
    layer = make("uniform")
    bound = 1 / np.sqrt(fan_in)
    for values in (layer.W, layer.b):
        assert values.dtype == np.float32
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    assert abs(layer.W.std() - bound / np.sqrt(3)) < 0.05 * bound  # U(-a, a) has std a/√3
    assert layer.W.std() < make("he").W.std() / 2
    with pytest.raises(ValueError, match=r"init must be one of \['he', 'uniform', 'he_out', 'normal'\], got 'xavier'"):
        make("xavier")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype, rng):
    for layer, shape in [(cn.Conv2D(2, 3, 3, padding=1, dtype=dtype), (2, 2, 6, 6)),
                         (cn.Linear(4, 3, dtype=dtype), (2, 4)), (cn.MaxPool2D(2), (2, 2, 6, 6)),
                         (cn.AvgPool2D(3, 2), (2, 2, 7, 7)), (cn.ReLU(), (2, 5)),
                         (cn.Flatten(), (2, 3, 2))]:
        x = rng.standard_normal(shape).astype(dtype)
        out = layer.forward(x)
        dx = layer.backward(np.ones_like(out))
        grads = list(layer.gradients().values())
        assert out.dtype == dtype and dx.dtype == dtype, layer
        assert all(g.dtype == dtype for g in grads), layer


def test_parameters_are_assignable_and_walkable(rng):
    layer = cn.Conv2D(1, 2, 2, dtype=np.float64)
    layer.W = np.ones((2, 1, 2, 2))
    layer.b = np.array([1.0, -1.0])
    out = layer.forward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(out.ravel(), [5.0, 3.0])
    assert list(layer.parameters()) == ["W", "b"] == list(layer.gradients())
    layer.backward(np.ones_like(out))
    assert layer.gradients()["W"] is layer.dW


@pytest.mark.parametrize("make", [lambda: cn.Conv2D(2, 3, 2), lambda: cn.Linear(4, 3),
                                  lambda: cn.BatchNorm2D(2)])
def test_gradients_are_written_in_place_and_follow_a_replaced_parameter(make, rng):
    """Backward writes into the layer's gradient arrays (the same arrays step after step);
    a parameter replaced by one of another dtype or shape gets a gradient of its own, exact
    in that dtype."""
    layer = make()
    x = rng.standard_normal((5, 2, 3, 3) if not isinstance(layer, cn.Linear) else (5, 4))
    kept = layer.gradients()
    layer.backward(np.ones_like(layer.forward(x.astype(np.float32))))
    assert all(layer.gradients()[name] is grad for name, grad in kept.items())
    assert any(grad.any() for grad in kept.values())

    for key in (*layer.param_names, *layer.buffer_names):  # new float64 arrays, not astype
        if getattr(layer, key).dtype == np.float32:
            setattr(layer, key, getattr(layer, key).astype(np.float64))
    out = layer.forward(x)
    layer.backward(np.ones_like(out))
    reference = make().astype(np.float64)
    reference.load_state_dict(layer.state_dict())
    reference.backward(np.ones_like(reference.forward(x)))
    for key, grad in layer.gradients().items():
        assert grad.dtype == np.float64, key
        np.testing.assert_array_equal(grad, reference.gradients()[key], err_msg=key)


@pytest.mark.parametrize("make, x, error, match", [
    (lambda: cn.Conv2D(3, 8, 3), np.zeros((8, 1, 28, 28), np.float32), ValueError,
     r"Conv2D expected 3 input channels, got 1 \(input shape \(8, 1, 28, 28\)\)"),
    (lambda: cn.Conv2D(1, 8, 3), np.zeros((1, 28, 28), np.float32), ValueError,
     r"expects 4-d input \(N, C, H, W\), got 3-d"),
    (lambda: cn.Conv2D(1, 8, 5, padding=1), np.zeros((2, 1, 2, 2), np.float32), ValueError,
     r"does not fit in a 2x2 image"),
    (lambda: cn.Conv2D(1, 8, 3), np.zeros((2, 1, 8, 8), np.uint8), TypeError,
     r"floating-point input .* got uint8"),
    (lambda: cn.Conv2D(1, 8, 3), np.zeros((2, 1, 8, 8), np.float64), TypeError,
     r"float32 parameters but got a float64 input"),
    (lambda: cn.Conv2D(1, 8, 3), [[1.0]], TypeError, r"expects a NumPy array, got list"),
    (lambda: cn.MaxPool2D(3), np.zeros((1, 1, 2, 5)), ValueError, r"does not fit in a 2x5"),
    (lambda: cn.Linear(10, 2), np.zeros((4, 9), np.float32), ValueError,
     r"expected 10 input features, got 9"),
    (lambda: cn.Linear(10, 2), np.zeros((4, 1, 10), np.float32), ValueError,
     r"put a Flatten before it"),
])
def test_bad_input_is_named(make, x, error, match):
    with pytest.raises(error, match=match):
        make().forward(x)


@pytest.mark.parametrize("make, match", [
    (lambda: cn.Conv2D(0, 8, 3), r"in_channels must be an integer >= 1 .* got 0"),
    (lambda: cn.Conv2D(1, 8, 3, stride=0), r"stride must be .* got 0"),
    (lambda: cn.Conv2D(1, 8, (3, 3, 3)), r"kernel_size must be .* got \(3, 3, 3\)"),
    (lambda: cn.Conv2D(1, 8, 3, padding=-1), r"padding must be an integer >= 0"),
    (lambda: cn.Conv2D(1, 8, 2.5), r"kernel_size must be"),
    (lambda: cn.MaxPool2D(0), r"pool_size must be"),
    (lambda: cn.Linear(3, 2, dtype=np.int32), r"dtype must be float32 or float64, got int32"),
])
def test_bad_hyperparameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_backward_errors(rng):
    layer = cn.Conv2D(1, 2, 3)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))
    layer.forward(np.zeros((4, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 2, 3, 3\).*got \(4, 2, 5, 5\)"):
        layer.backward(np.zeros((4, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="expected a float32 gradient, got float64"):
        layer.backward(np.zeros((4, 2, 3, 3)))


def test_repr_shows_non_default_arguments():
    assert repr(cn.Conv2D(3, 32, 3, padding=1)) == "Conv2D(3, 32, 3, padding=1)"
    assert repr(cn.Conv2D(3, 8, (3, 5), stride=2)) == "Conv2D(3, 8, (3, 5), stride=2)"
    assert repr(cn.MaxPool2D(2)) == "MaxPool2D(2)"
    assert repr(cn.AvgPool2D(3, 1)) == "AvgPool2D(3, stride=1)"
    assert repr(cn.Linear(4, 2)) == "Linear(4, 2)"


INFERENCE_LAYERS = [
    lambda: conv_layer(3, 1, 1),
    lambda: cn.ReLU(),
    lambda: cn.MaxPool2D(2),
    lambda: cn.MaxPool2D(3, stride=2),  # overlapping windows
    lambda: cn.MaxPool2D((1, 2), stride=(1, 3)),
    lambda: cn.AvgPool2D(2),
    lambda: cn.Flatten(),
]


@pytest.mark.parametrize("make", INFERENCE_LAYERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_without_cache_gives_the_same_output_and_keeps_nothing(make, dtype, rng):
    layer = make()
    if layer.param_names:
        layer.astype(dtype)
    x = rng.standard_normal((3, 2, 7, 8)).astype(dtype)
    x[0, 0, :2, :2] = 0  # ties inside a pooling window
    expected = layer.forward(x)
    out = layer.forward(x, keep_cache=False)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == dtype
    assert layer.cache is None
    with pytest.raises(RuntimeError, match="keep_cache=False"):
        layer.backward(np.ones_like(expected))


def test_inference_kernels_match_the_training_kernels(rng):
    x = cn.functional.to_nchw(rng.standard_normal((4, 12, 10, 5)).astype(np.float32))
    np.testing.assert_array_equal(cn.functional.relu(x), cn.functional.relu_forward(x)[0])
    for pool, stride in [(2, 2), (3, 1), ((2, 3), (2, 1))]:
        np.testing.assert_array_equal(cn.functional.maxpool2d(x, pool, stride),
                                      cn.functional.maxpool2d_forward(x, pool, stride)[0])


@pytest.mark.parametrize("make", [
    lambda rng: cn.Conv2D(2, 3, 3, rng=rng, dtype=np.float64),  # no padding: x itself is read
    lambda rng: cn.Conv2D(2, 3, 3, padding=1, rng=rng, dtype=np.float64),  # padding implied
    lambda rng: cn.Conv2D(2, 3, 1, stride=2, rng=rng, dtype=np.float64, bias=False),
    lambda rng: cn.Linear(2 * 6 * 6, 4, rng=rng, dtype=np.float64),
    lambda rng: cn.BatchNorm2D(2, dtype=np.float64).eval(),
])
def test_changing_the_input_after_forward_does_not_change_the_gradients(make, rng):
    """Caches keep copies: the caller may reuse its input array before backward."""
    layer = make(rng)
    x = rng.standard_normal((3, 2, 6, 6))
    if isinstance(layer, cn.Linear):
        x = x.reshape(3, -1)
    dout = rng.standard_normal((3, *layer.output_shape(x.shape[1:])))
    layer.forward(x.copy())
    expected = layer.backward(dout), {k: v.copy() for k, v in layer.gradients().items()}
    kept = x.copy()
    layer.forward(kept)
    kept[...] = 7.0  # the caller's array changes before backward
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, expected[0])
    for name, grad in layer.gradients().items():
        np.testing.assert_array_equal(grad, expected[1][name])


@pytest.mark.parametrize("shape", [(3, 2, 6, 6), (5, 4)])
def test_changing_the_input_after_a_training_batchnorm_does_not_change_the_gradients(
        shape, rng, batchnorm_way):
    """The fused cache holds the input's rows: a channels-last x (the kernels' own layout)
    or an (N, C) x would be held as it is, so the layer holds a copy."""
    layer = (cn.BatchNorm2D if len(shape) == 4 else cn.BatchNorm1D)(shape[1], dtype=np.float64)
    x = rng.standard_normal(shape)
    if x.ndim == 4:
        x = cn.functional.to_nchw(np.ascontiguousarray(cn.functional.to_channels_last(x)))
    dout = rng.standard_normal(shape)
    layer.forward(x.copy())
    expected = layer.backward(dout), {k: v.copy() for k, v in layer.gradients().items()}
    layer.forward(x)
    x[...] = 7.0  # the caller's array changes before backward
    np.testing.assert_array_equal(layer.backward(dout), expected[0])
    for name, grad in layer.gradients().items():
        np.testing.assert_array_equal(grad, expected[1][name])


def _held_inputs(model) -> dict:
    """{layer name: the input array its cache holds} of the convolutions of a model."""
    return {name: layer.cache[2][0] for name, layer in model.named_layers()
            if isinstance(layer, cn.Conv2D)}


def test_a_model_holds_the_arrays_it_made_without_copies(rng, monkeypatch):
    """Inside a model, a convolution that reads its input itself (by kernel rows, or without
    padding) holds the array the module before it made (no copy), but a copy of the model's
    input, also when an Identity passes it on, and of every input while a trace records;
    the gradients are those of copies everywhere, and the caller changing its input before
    backward changes none of them."""
    monkeypatch.setattr(cn.workspace, "MIN_BYTES", 0)  # every kernel's array is recycled memory
    conv = lambda c_in, stride=1: cn.Conv2D(c_in, 4, 3, stride=stride, padding=1, rng=rng,
                                            dtype=np.float64, bias=False)
    block = cn.Residual({"conv1": conv(4), "bn1": cn.BatchNorm2D(4, dtype=np.float64),
                         "relu1": cn.ReLU(), "conv2": conv(4)},
                        cn.Sequential({"0": cn.Conv2D(4, 4, 1, rng=rng, dtype=np.float64)}))
    model = cn.Sequential({"skip": cn.layers.Identity(), "conv1": conv(4), "relu": cn.ReLU(),
                           "conv2": conv(4), "block": block, "conv3": conv(4, stride=2)})
    outputs = {}
    for name in ("relu", "conv2", "block"):
        layer = model[name]
        forward = layer.forward
        layer.forward = lambda x, keep_cache=True, name=name, forward=forward: \
            outputs.setdefault(name, forward(x, keep_cache))
    x = rng.standard_normal((2, 4, 8, 8))
    dout = rng.standard_normal((2, 4, 4, 4))

    def step(images):
        outputs.clear()
        model.forward(images)
        return model.backward(dout), {k: v.copy() for k, v in model.gradients().items()}

    dx, grads = step(x)
    held = _held_inputs(model)
    assert held["conv2"] is outputs["relu"]  # by kernel rows, its padding implied
    assert held["block.conv1"] is held["block.downsample.0"] is outputs["conv2"]
    assert not np.shares_memory(held["conv1"], x)  # the model's input: copied,
    assert held["conv1"].transpose(0, 2, 3, 1).flags.c_contiguous  # as kernel rows read it
    assert held["conv3"].shape == (2, 10, 10, 4)  # stride 2: the padded copy im2col read
    with monkeypatch.context() as copying:
        copying.setattr(cn.workspace, "handed_over", lambda array: False)
        copied_dx, copied = step(x)
        assert all(not np.shares_memory(held_x, outputs["relu"])
                   for held_x in _held_inputs(model).values())
    np.testing.assert_array_equal(dx, copied_dx)
    for name in grads:
        np.testing.assert_array_equal(grads[name], copied[name])
    images = cn.workspace.empty(x.shape, x.dtype)  # recycled memory, as a model's output is
    images[...] = x
    outputs.clear()
    model.forward(images)
    assert not np.shares_memory(_held_inputs(model)["conv1"], images)
    images[...] = 7.0  # the caller's array changes before backward
    np.testing.assert_array_equal(model.backward(dout), dx)
    with cn.trace.recording(model):
        outputs.clear()
        model.forward(x)
    assert not np.shares_memory(_held_inputs(model)["conv2"], outputs["relu"])
