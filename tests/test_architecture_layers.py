"""The layers of the classic architectures (BatchNorm, Dropout, padded and adaptive pooling,
bias-free convolution, Add, Residual): exact gradients by finite differences, forward values
against loop references, Dropout's stream of masks, errors. NumPy only."""

import numpy as np
import pytest

import cnnumpy as cn
from architectures import conv64
from reference import pool2d_loops


def batchnorm(cls, channels, rng, training=True):
    """A float64 BatchNorm with non-trivial γ, β and running statistics."""
    layer = cls(channels, dtype=np.float64)
    layer.gamma[...] = rng.uniform(0.5, 2.0, channels)
    layer.beta[...] = rng.standard_normal(channels)
    layer.running_mean[...] = rng.standard_normal(channels)
    layer.running_var[...] = rng.uniform(0.5, 2.0, channels)
    return layer.train(training)


def distinct(rng, shape):
    """Distinct values 0.1 apart, shuffled: no max-pooling ties within a finite-difference step."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


def conv(c_in, c_out, k, stride=1, padding=0, seed=0, bias=False):
    """Bias-free by default, as ResNet's convolutions."""
    return conv64(c_in, c_out, k, stride, padding, seed=seed, bias=bias)


# ------------------------------------------------------------------ gradient checks


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, shape", [(cn.BatchNorm2D, (3, 4, 5, 4)),
                                        (cn.BatchNorm2D, (1, 3, 2, 3)),
                                        (cn.BatchNorm1D, (6, 5))])
def test_batchnorm_gradients_exact(cls, shape, training, rng, batchnorm_way):
    layer = batchnorm(cls, shape[1], rng, training)
    x = rng.standard_normal(shape) * 3 + 1
    assert set(layer.parameters()) == {"gamma", "beta"}
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)


@pytest.mark.parametrize("pool_cls", [cn.MaxPool2D, cn.AvgPool2D])
@pytest.mark.parametrize("pool, stride, padding, hw", [
    (3, 2, 1, (7, 6)), (2, 2, 1, (5, 5)), (3, 1, 1, (4, 5)),
    ((3, 2), (2, 1), (1, 1), (6, 5)), ((4, 3), (3, 2), (2, 0), (7, 8)),
])
def test_padded_pools_forward_and_gradients(pool_cls, pool, stride, padding, hw, rng):
    """Max-pooling pads with -inf (a padded pixel is never a maximum), average pooling with
    zeros that count in the mean (count_include_pad=True)."""
    layer = pool_cls(pool, stride, padding)
    x = distinct(rng, (2, 3, *hw))
    (ph, pw), fill = layer.padding, (-np.inf if pool_cls is cn.MaxPool2D else 0.0)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    reduce = np.max if pool_cls is cn.MaxPool2D else np.mean
    expected = pool2d_loops(padded, layer.pool_size, layer.stride, reduce)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-13, atol=1e-13)
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)


def test_padded_maxpool_of_negative_values_ignores_the_padding():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: zero padding would win
    out = cn.MaxPool2D(2, 2, padding=1).forward(x)
    np.testing.assert_array_equal(out[0, 0], [[-1.0, -2.0], [-4.0, -5.0]])


def adaptive_loops(x, output_size):
    """PyTorch's rule: output i averages [floor(i·H/oH), ceil((i+1)·H/oH)) along each axis."""
    (oh, ow), (h, w) = output_size, x.shape[2:]
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * h // oh, -(-(i + 1) * h // oh))
            cols = slice(j * w // ow, -(-(j + 1) * w // ow))
            out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


@pytest.mark.parametrize("hw, output_size", [
    ((6, 6), 3), ((8, 4), (2, 4)),          # divisible
    ((7, 5), (3, 2)), ((5, 9), (4, 7)),     # non-divisible: windows overlap
    ((3, 2), (5, 4)), ((2, 3), 4),          # output larger than the input
    ((4, 5), (4, 5)), ((5, 3), 1),          # same size; global
])
def test_adaptive_avgpool_forward_and_gradients(hw, output_size, rng):
    layer = cn.AdaptiveAvgPool2D(output_size)
    x = rng.standard_normal((2, 3, *hw))
    np.testing.assert_allclose(layer.forward(x), adaptive_loops(x, layer.output_size),
                               rtol=1e-13, atol=1e-13)
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)


def test_global_avgpool_is_the_mean_of_every_map(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    layer = cn.GlobalAvgPool2D()
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-13)
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)


def test_conv_without_bias(rng):
    layer = conv(3, 4, 3, stride=2, padding=1)
    assert set(layer.parameters()) == {"W"} and not layer.bias
    x = rng.standard_normal((2, 3, 7, 6))
    with_zero_bias = conv(3, 4, 3, stride=2, padding=1, bias=True)  # same seed: same W
    with_zero_bias.b[...] = 0
    np.testing.assert_array_equal(layer.forward(x), with_zero_bias.forward(x))
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)


def test_add_sums_and_sends_the_gradient_to_both_inputs(rng):
    a, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    add = cn.Add()
    np.testing.assert_array_equal(add(a, b), a + b)
    dout = rng.standard_normal(a.shape)
    da, db = add.backward(dout)
    np.testing.assert_array_equal(da, dout)
    np.testing.assert_array_equal(db, dout)


def basic_block(c_in, c_out, stride, rng, shortcut=True):
    """conv-bn-relu-conv-bn, plus the identity or a 1x1 convolution + BatchNorm shortcut."""
    main = {"conv1": conv(c_in, c_out, 3, stride, 1, seed=1), "bn1": batchnorm(cn.BatchNorm2D, c_out, rng),
            "relu1": cn.ReLU(),
            "conv2": conv(c_out, c_out, 3, 1, 1, seed=2), "bn2": batchnorm(cn.BatchNorm2D, c_out, rng)}
    down = cn.Sequential([conv(c_in, c_out, 1, stride, seed=3),
                          batchnorm(cn.BatchNorm2D, c_out, rng)]) if shortcut else None
    return cn.Residual(main, down)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("c_in, c_out, stride, shortcut", [(3, 3, 1, False), (2, 4, 2, True),
                                                           (3, 3, 1, True)])
def test_residual_block_gradients_exact(c_in, c_out, stride, shortcut, training, rng):
    block = basic_block(c_in, c_out, stride, rng, shortcut).train(training)
    x = rng.standard_normal((2, c_in, 5, 4))
    cn.gradient_check(block, x, rng=rng, tol=1e-6, samples=24)


def test_residual_output_is_activation_of_main_plus_shortcut(rng):
    block = basic_block(2, 4, 2, rng).eval()
    x = rng.standard_normal((2, 2, 6, 6))
    main = x
    for name in ("conv1", "bn1", "relu1", "conv2", "bn2"):
        main = getattr(block, name).forward(main)
    expected = np.maximum(main + block.downsample.forward(x), 0)
    np.testing.assert_allclose(block.forward(x), expected, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ Dropout


def test_dropout_training_is_x_times_a_fixed_mask_and_its_gradient_is_the_mask(rng):
    p = 0.3
    layer = cn.Dropout(p, rng=np.random.default_rng(7))
    x = rng.standard_normal((50, 4, 5, 5))
    state = layer.rng_state.copy()
    mask = layer.forward(np.ones_like(x))  # the same draws: the mask itself
    layer.rng_state[...] = state
    out = layer.forward(x)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(out, x * mask)
    np.testing.assert_array_equal(layer.backward(dout), dout * mask)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert abs(np.mean(mask == 0) - p) < 0.02  # 5000 draws: 3 standard deviations (seeded)


def test_dropout_in_training_and_a_model_with_it_pass_the_gradient_check(rng):
    """gradient_check starts each forward from the first buffers: one mask throughout."""
    x = rng.standard_normal((6, 3, 4, 4))
    assert cn.gradient_check(cn.Dropout(0.5, rng=np.random.default_rng(5)), x, rng=rng) < 1e-8
    model = cn.Sequential([cn.Conv2D(3, 4, 3, padding=1, bias=False, rng=rng),
                           cn.BatchNorm2D(4), cn.ReLU(), cn.Flatten(),
                           cn.Dropout(0.4, rng=np.random.default_rng(6)),
                           cn.Linear(64, 3, rng=rng)])
    assert cn.gradient_check(model, x, rng=rng) < 1e-6


def test_dropout_eval_and_p0_are_the_identity(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    layer = cn.Dropout(0.5, rng=rng).eval()
    np.testing.assert_array_equal(layer.forward(x), x)
    cn.gradient_check(layer, x, rng=rng, tol=1e-7)
    np.testing.assert_array_equal(cn.Dropout(0.0, rng=rng).forward(x), x)


def masks(layer, count, shape=(6, 10)):
    return [layer.forward(np.ones(shape)) for _ in range(count)]


def test_dropout_masks_repeat_from_a_seed_and_differ_from_call_to_call():
    first = masks(cn.Dropout(rng=np.random.default_rng(3)), 3)
    again = masks(cn.Dropout(rng=np.random.default_rng(3)), 3)
    reseeded = cn.Dropout(rng=np.random.default_rng(99))
    reseeded.seed(np.random.default_rng(3))
    for a, b, c in zip(first, again, masks(reseeded, 3)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], masks(cn.Dropout(rng=np.random.default_rng(4)), 1)[0])


def test_dropout_state_dict_reproduces_the_next_mask():
    model = cn.Sequential([cn.Linear(10, 10, rng=np.random.default_rng(0), dtype=np.float64),
                           cn.Dropout(0.5, rng=np.random.default_rng(1))])
    x = np.random.default_rng(2).standard_normal((6, 10))
    model.forward(x)
    saved = {name: array.copy() for name, array in model.state_dict().items()}
    assert saved["1.rng_state"].dtype == np.uint64
    expected = model.forward(x)
    other = cn.Sequential([cn.Linear(10, 10, rng=np.random.default_rng(5), dtype=np.float64),
                           cn.Dropout(0.5, rng=np.random.default_rng(6))])
    other.load_state_dict(saved)
    np.testing.assert_array_equal(other.forward(x), expected)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("layer, shape", [(cn.BatchNorm2D(3), (1, 3, 1, 1)),
                                          (cn.BatchNorm1D(4), (1, 4))])
def test_batchnorm_needs_more_than_one_value_per_channel_in_training(layer, shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.forward(x)
    np.testing.assert_allclose(layer.eval().forward(x), x / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: cn.Dropout(1.0), r"p must be a probability in \[0, 1\), got 1.0"),
    (lambda: cn.Dropout(-0.1), r"p must be a probability"),
    (lambda: cn.BatchNorm2D(4, momentum=2), r"momentum must be a number in \[0, 1\], got 2"),
    (lambda: cn.BatchNorm2D(4, eps=0), r"eps must be a number in \(0, 1\)"),
    (lambda: cn.BatchNorm1D(0), r"num_features must be an integer >= 1"),
    (lambda: cn.MaxPool2D(2, padding=2), r"padding must be at most half the pool size"),
    (lambda: cn.AvgPool2D((3, 2), padding=(1, 2)), r"padding must be at most half"),
    (lambda: cn.AdaptiveAvgPool2D(0), r"output_size must be an integer >= 1"),
    (lambda: cn.Conv2D(1, 2, 3, bias="no"), r"bias must be True or False"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_add_of_mismatched_shapes():
    with pytest.raises(ValueError, match=r"two arrays of one shape.*\(2, 3\).*\(2, 4\)"):
        cn.Add()(np.zeros((2, 3)), np.zeros((2, 4)))


def test_residual_with_mismatched_paths(rng):
    block = cn.Residual({"conv1": conv(2, 4, 3, padding=1)})  # identity shortcut: 2 channels
    with pytest.raises(ValueError, match=r"shortcut gives shape \(2, 5, 5\).*\(4, 5, 5\)"):
        block.output_shape((2, 5, 5))
