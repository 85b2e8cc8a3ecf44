"""Kernel paths the layer tests do not choose by themselves: both column layouts of the
convolution, channels-last windows and their adjoint, and inputs in either memory layout."""

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy import functional as F
from reference import conv2d_loops
from test_layers import CONV_GRID


class ForcedLayoutConv(cn.Conv2D):
    """Conv2D whose kernel is told which column layout to use instead of choosing it."""

    def __init__(self, *args, channels_last, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels_last = channels_last

    def _forward(self, x):
        return F.conv2d_forward(x, self.W, self.b, self.stride, self.padding,
                                channels_last=self.channels_last)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("k, s, p, hw", CONV_GRID)
def test_both_conv_layouts_match_loops_and_finite_differences(k, s, p, hw, channels_last, rng):
    layer = ForcedLayoutConv(2, 3, k, s, p, channels_last=channels_last, rng=rng,
                             dtype=np.float64)
    layer.b = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, *hw))
    expected = conv2d_loops(x, layer.W, layer.b, F.pair(s), F.pair(p))
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
    assert cn.gradient_check(layer, x, rng=rng) < 1e-7


@pytest.mark.parametrize("channels_last", [True, False])
def test_both_conv_layouts_keep_float32(channels_last, rng):
    layer = ForcedLayoutConv(3, 4, 3, 1, 1, channels_last=channels_last, rng=rng)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    out = layer.forward(x)
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dx.dtype == layer.dW.dtype == layer.db.dtype == np.float32
    assert layer.dW.flags.c_contiguous and layer.dW.shape == (4, 3, 3, 3)


def test_conv_layout_choice_follows_run_length():
    assert F.use_channels_last_columns(c_in=32, kw=3, w_out=16)  # runs of 96 values vs 16
    assert not F.use_channels_last_columns(c_in=3, kw=3, w_out=32)  # first layer: runs of 9 vs 32


def channels_last_memory(x):
    """The same NCHW array, stored channels-last (as the kernels return images)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("make", [
    lambda: cn.Conv2D(3, 4, 3, padding=1, dtype=np.float64),
    lambda: cn.Conv2D(3, 4, (2, 3), stride=(2, 1), dtype=np.float64),
    lambda: cn.MaxPool2D(2), lambda: cn.MaxPool2D(3, 2), lambda: cn.AvgPool2D(2),
    lambda: cn.AvgPool2D(3, 1), lambda: cn.ReLU(), lambda: cn.Flatten(),
])
def test_layers_give_the_same_values_for_either_memory_layout(make, rng):
    layer = make()
    x = rng.standard_normal((2, 3, 7, 8))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    grads = {k: v.copy() for k, v in layer.gradients().items()}
    out_cl = layer.forward(channels_last_memory(x))
    dout_cl = channels_last_memory(dout) if dout.ndim == 4 else dout
    dx_cl = layer.backward(dout_cl)
    np.testing.assert_allclose(out_cl, out, rtol=1e-13, atol=1e-13)  # sums may reassociate
    np.testing.assert_allclose(dx_cl, dx, rtol=1e-13, atol=1e-13)
    for name, grad in layer.gradients().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-13, atol=1e-13)


def test_image_outputs_are_channels_last_views(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = cn.Conv2D(3, 5, 3, padding=1).forward(x)
    assert out.shape == (2, 5, 8, 8) and out.transpose(0, 2, 3, 1).flags.c_contiguous
    pooled = cn.MaxPool2D(2).forward(out)
    assert pooled.transpose(0, 2, 3, 1).flags.c_contiguous
    assert F.to_channels_last(pooled).base is not None  # a view, no copy


WINDOW_CASES = [  # kernel, stride, (H, W): overlapping, disjoint with gaps, tiling, remainder
    ((3, 3), (1, 1), (6, 7)), ((2, 2), (3, 3), (8, 8)), ((2, 2), (2, 2), (6, 8)),
    ((2, 3), (2, 3), (7, 8)), ((3, 2), (2, 1), (7, 5)),
]


@pytest.mark.parametrize("kernel, stride, hw", WINDOW_CASES)
def test_channels_last_windows_are_the_nchw_windows_transposed(kernel, stride, hw, rng):
    x = rng.standard_normal((2, 3, *hw))
    nchw = F.windows(x, kernel, stride)  # (N, C, H_out, W_out, kH, kW)
    nhwc = F.windows(F.to_channels_last(x), kernel, stride, channels_last=True)
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 4, 5, 1))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel, stride, hw", WINDOW_CASES)
def test_col2im_is_the_adjoint_of_windows(kernel, stride, hw, channels_last, rng):
    """<windows(x), g> = <x, col2im(g)> for every x and g."""
    shape = (2, *hw, 3) if channels_last else (2, 3, *hw)
    x = rng.standard_normal(shape)
    win = F.windows(x, kernel, stride, channels_last)
    g = rng.standard_normal(win.shape)
    dx = F.col2im(g, shape, stride, channels_last)
    assert dx.shape == shape
    np.testing.assert_allclose(np.sum(win * g), np.sum(x * dx), rtol=1e-12)


def test_maxpool_ties_and_overlaps_route_to_the_first_maximum_per_window():
    """3x3 windows, stride 1, over a plateau: each window's gradient goes to its top-left pixel."""
    x = np.zeros((1, 2, 4, 4), dtype=np.float32)
    x[0, 1] = 7.0
    pool = cn.MaxPool2D(3, 1)
    pool.forward(x)
    dx = pool.backward(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2) + 1)
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[:2, :2] = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(dx[0, 0], expected)
    expected[:2, :2] = [[5, 6], [7, 8]]
    np.testing.assert_array_equal(dx[0, 1], expected)


def test_linear_is_the_same_for_wide_and_tall_outputs(rng):
    for batch, out_features in [(2, 9), (9, 2)]:  # both orders of the product
        layer = cn.Linear(5, out_features, rng=rng, dtype=np.float64)
        x = rng.standard_normal((batch, 5))
        np.testing.assert_allclose(layer.forward(x), x @ layer.W.T + layer.b, rtol=1e-13)
        assert cn.gradient_check(layer, x, rng=rng) < 1e-7


@pytest.mark.parametrize("pool, stride", [(2, 2), (3, 2), ((2, 3), (1, 2))])
def test_maxpool_in_blocks_of_images_gives_the_one_pass_results(pool, stride, rng, monkeypatch):
    x = np.maximum(rng.standard_normal((5, 3, 9, 10)), 0).astype(np.float32)  # ties at zero
    out, cache = F.maxpool2d_forward(x, pool, stride)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = F.maxpool2d_backward(dout, cache)
    monkeypatch.setattr(F, "POOL_BLOCK_BYTES", 2 * x[0].nbytes)  # blocks of 2, 2 and 1 images
    assert len(F.batch_blocks(len(x), x[0].nbytes, F.POOL_BLOCK_BYTES)) == 3
    out_blocks, cache_blocks = F.maxpool2d_forward(x, pool, stride)
    np.testing.assert_array_equal(out_blocks, out)
    np.testing.assert_array_equal(cache_blocks[0], cache[0])
    np.testing.assert_array_equal(F.maxpool2d_backward(dout, cache_blocks), dx)


@pytest.mark.parametrize("c_in, c_out, k, p", [(4, 4, 3, 1), (5, 3, 3, 0), (4, 4, (3, 1), (2, 0)),
                                               (3, 2, 5, 2), (2, 2, 1, 0)])
def test_input_gradient_by_convolution_is_col2ims(c_in, c_out, k, p):
    """Stride 1 and C_out <= C_in take the flipped-kernel path: the same dx as adding every
    window's gradient back onto its pixels (the definition col2im implements)."""
    rng = np.random.default_rng(3)
    (kh, kw), (ph, pw) = F.pair(k), F.pair(p)
    w = rng.standard_normal((c_out, c_in, kh, kw))
    x = rng.standard_normal((2, c_in, 7, 6))
    out, cache = F.conv2d_forward(x, w, rng.standard_normal(c_out), 1, p)
    dout = rng.standard_normal(out.shape)
    dx = F.conv2d_backward(dout, cache)[0]
    _, _, h_out, w_out = out.shape
    dx_pad = np.zeros((2, c_in, 7 + 2 * ph, 6 + 2 * pw))
    for m in range(kh):
        for q in range(kw):  # window offset (m, q): every output pixel's share
            dx_pad[:, :, m:m + h_out, q:q + w_out] += np.einsum("nohw,oc->nchw", dout,
                                                                w[:, :, m, q])
    np.testing.assert_allclose(dx, dx_pad[:, :, ph:ph + 7, pw:pw + 6], rtol=1e-12, atol=1e-12)


def test_image_chunks_bound_the_columns_unless_the_weights_are_larger():
    """Chunks of whole images in order: at most COLUMNS_BYTES of columns each, or twice the
    weights' bytes where that is more (every product packs the weights)."""
    big = np.empty((64, 34, 34, 16), np.float32)  # 1024 rows an image, 590 KB of columns
    chunks = F.image_chunks(big, (3, 3), 1, True, weight_bytes=16 * 145 * 4)
    assert [c.start for c in chunks] == list(range(0, 64, 7)) and chunks[-1].stop == 64
    assert 7 * 1024 * (9 * 16) * 4 <= F.COLUMNS_BYTES
    small = np.empty((40, 9, 9, 512), np.float32)  # 49 rows an image: 0.9 MB of columns
    assert len(F.image_chunks(small, (3, 3), 1, True)) == 10  # 4 images in 4 MiB
    weights = 512 * 4609 * 4  # 9 MB: 20 images' columns
    chunks = F.image_chunks(small, (3, 3), 1, True, weight_bytes=weights)
    assert [(c.start, c.stop) for c in chunks] == [(0, 20), (20, 40)]


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_convolution_in_chunks_is_the_one_chunk_convolution(channels_last, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 9, 8))
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    results = []
    per_image = 72 * 28 * 8  # bytes of one image's columns
    made = []  # the images of each column matrix the kernels make
    im2col = F.conv.im2col
    monkeypatch.setattr(F.conv, "im2col", lambda x_pad, *args: made.append(len(x_pad))
                        or im2col(x_pad, *args))
    for columns_bytes, chunks in ((2**30, [5]), (1, [1] * 5), (2 * per_image, [2, 2, 1])):
        monkeypatch.setattr(F.conv, "COLUMNS_BYTES", columns_bytes)
        made.clear()
        out, cache = F.conv2d_forward(x, w, b, 1, 1, channels_last=channels_last)
        by_columns = [] if channels_last else chunks  # channels-last goes by kernel rows
        assert made == by_columns
        dout = np.cos(out)
        results.append((out, *F.conv2d_backward(dout, cache)))
        # backward makes them again for dw (C_out > C_in: dx by col2im, which needs none)
        assert made == by_columns * 2
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda rng: rng.standard_normal((4, 6, 5, 3)).astype(np.float32).transpose(0, 3, 1, 2),
    lambda rng: rng.standard_normal((4, 3, 5, 6)),                      # NCHW memory, float64
    lambda rng: rng.standard_normal((4, 3, 5, 6)).astype(np.float32)[:, :, 1:, ::2],  # strided
    lambda rng: rng.standard_normal((7, 13)).astype(np.float32),        # a size prime to 1024
    lambda rng: rng.standard_normal((5, 6)).astype(np.longdouble),      # no integer of its size
    lambda rng: np.zeros((0, 5), np.float32),
])
def test_relu_in_runs_of_memory_is_numpys_maximum(make, rng):
    """`relu` takes contiguous values as rows against a row of zeros (a faster NumPy loop);
    it must be np.maximum(x, 0) exactly, in x's memory layout, signs of zero, NaN and -inf
    included."""
    x = make(rng)
    if x.size:
        x.flat[:4] = [np.nan, -np.inf, -0.0, np.inf]
    out = F.relu(x)
    expected = np.maximum(x, 0)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))
    by_stride = lambda a: sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))
    assert by_stride(out) == by_stride(x)  # x's memory layout (channels-last stays so)

    # training: the mask of positive inputs, packed eight to a byte; dout in either layout
    forward_out, cache = F.relu_forward(x)
    np.testing.assert_array_equal(forward_out, expected)
    assert cache[0].nbytes == -(-x.size // 8)
    for dout in (rng.standard_normal(x.shape), np.ascontiguousarray(x.transpose()).T * 3):
        if x.size:
            dout.flat[4:6] = [np.nan, -0.0]  # at inputs neither positive nor NaN: 0, not NaN
            x.flat[4:6] = -1.0
            forward_out, cache = F.relu_forward(x)
        dx = F.relu_backward(dout, cache)
        assert dx.dtype == dout.dtype
        expected_dx = np.where(x > 0, dout, 0)
        np.testing.assert_array_equal(dx, expected_dx)
        np.testing.assert_array_equal(np.signbit(dx), np.signbit(expected_dx))


def test_column_sums_and_dots_are_sums_down_the_columns(rng):
    """BatchNorm's statistics: Σ_rows a and Σ_rows a·b per column, for any dtype, for
    contiguous rows (in runs, with rows left over), strided rows, and too few for a run."""
    from cnnumpy.functional.channelwise import column_dots, column_sums

    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        wide = rng.standard_normal((5000, 32)).astype(dtype)  # 5000 rows: runs and the rest
        for a in (np.ascontiguousarray(wide[:, :16]), wide[:, ::2], wide[:100, :16].copy()):
            b = rng.standard_normal(a.shape).astype(dtype)
            exact = a.astype(np.float64)
            sums, dots = column_sums(a), column_dots(a, b)
            assert sums.shape == dots.shape == (16,) and sums.dtype == dots.dtype == dtype
            scale = np.abs(exact).sum(axis=0)
            np.testing.assert_allclose(sums, exact.sum(axis=0), atol=tolerance * scale.max())
            np.testing.assert_allclose(dots, (exact * b).sum(axis=0),
                                       atol=tolerance * (np.abs(exact * b)).sum(axis=0).max())


@pytest.mark.parametrize("rows, c", [(4096, 16), (3000, 16), (40000, 1), (96, 3), (7, 5),
                                     (2048, 512)])
@pytest.mark.parametrize("ufunc", [np.add, np.multiply, np.maximum])
def test_channelwise_runs_are_plain_broadcasting(rows, c, ufunc, rng):
    """`channelwise` reshapes contiguous rows into runs against a tiled vector: it must give
    NumPy's broadcast exactly, contiguous or not (the second case has no run to make)."""
    from cnnumpy.functional.channelwise import channelwise

    matrix = rng.standard_normal((rows, 2 * c)).astype(np.float32)
    vector = rng.standard_normal(c).astype(np.float32)
    for values in (np.ascontiguousarray(matrix[:, :c]), matrix[:, ::2]):
        out = np.empty((rows, c), np.float32)
        assert channelwise(ufunc, values, vector, out) is out
        np.testing.assert_array_equal(out, ufunc(values, vector))


def test_a_convolution_by_kernel_rows_is_im2cols_in_any_chunks(monkeypatch):
    """Stride-1 channels-last convolutions go by one product per kernel row: the same values
    as im2col's one product (float64), whole or in chunks of images, with or without a
    bias, for square, tall, wide and 1-row kernels and any padding, whether the input comes
    padded or the padding is implied (a kernel wider than the input plus padding included)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 9, 8))
    wide = np.zeros((5, 9, 8, 6))
    wide[..., ::2] = F.to_channels_last(x)  # x's pixels, channels 16 bytes apart
    for kernel, padding in (((3, 3), 1), ((5, 3), 2), ((2, 4), 0), ((1, 3), 1), ((3, 3), 0),
                            ((3, 5), (0, 2)), ((2, 3), (1, 3)), ((3, 3), (2, 1)), ((3, 9), 1),
                            ((3, 17), (1, 6))):  # much wider than the input: pW > W_out
        w, b = rng.standard_normal((4, 3, *kernel)), rng.standard_normal(4)
        x_pad = F.pad2d(x, padding, True)
        cols = F.im2col(x_pad, kernel, 1, True)
        n, h_out, w_out = 5, x_pad.shape[1] - kernel[0] + 1, x_pad.shape[2] - kernel[1] + 1
        for bias in (b, None):
            w_mat = F.conv._weight_matrix_with_bias(w, b if bias is not None else 0 * b, True)
            expected = (cols @ w_mat.T).reshape(n, h_out, w_out, 4).transpose(0, 3, 1, 2)
            for rows_bytes in (2**30, 1, 2 * x_pad[0].nbytes * kernel[1]):
                monkeypatch.setattr(F.conv, "ROWS_BYTES", rows_bytes)
                out = F.conv2d_by_kernel_rows(x_pad, w, bias)
                np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
                assert out.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last memory
                # the padding implied, read from x itself: pixels packed, or strided
                implied = F.conv2d_by_kernel_rows(F.to_channels_last(x), w, bias, padding)
                np.testing.assert_allclose(implied, expected, rtol=1e-12, atol=1e-12)
                strided = F.conv2d_by_kernel_rows(wide[..., ::2], w, bias, padding)
                np.testing.assert_allclose(strided, expected, rtol=1e-12, atol=1e-12)


def test_convolutions_by_kernel_rows_make_no_padded_copy(monkeypatch):
    """By kernel rows the input is read with its padding implied: `conv2d` (no cache) and
    `conv2d_forward` give the same output without a padded copy, the cache holds x itself,
    and backward (dw by kernel rows, dx a convolution of dout) pads nothing either. Stride
    2 and Winograd pad in forward and hold the padded copy for backward; im2col's weight
    gradient of a convolution that went by kernel rows pads in backward."""
    rng = np.random.default_rng(17)
    padded = []
    pad2d = F.conv.pad2d
    monkeypatch.setattr(F.conv, "pad2d", lambda *args: padded.append(args[1]) or pad2d(*args))
    x, w = rng.standard_normal((2, 8, 8, 9)), rng.standard_normal((8, 8, 3, 3))
    expected, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert cache[0] is x and F.conv2d_holds_input(x, w, 1, 1) == "channels-last"
    np.testing.assert_allclose(F.conv2d(x, w, None, 1, 1), expected, rtol=1e-12, atol=1e-12)
    assert F.conv2d(x[:0], w, None, 1, 1).shape == (0, 8, 8, 9)  # an empty batch, no chunks
    dout = rng.standard_normal(expected.shape)
    dx, dw, db = F.conv2d_backward(dout, cache)
    wider = rng.standard_normal((16, 8, 3, 3))  # more outputs than inputs: dx by col2im
    _, wider_cache = F.conv2d_forward(x, wider, None, 1, 1)
    F.conv2d_backward(rng.standard_normal((2, 16, 8, 9)), wider_cache)
    assert padded == []
    monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", -1)  # im2col's, from a padded copy
    expected_grads = F.conv2d_backward(dout, cache)
    assert padded[0] == 1  # x, for im2col (then dout, for dx as a convolution by im2col)
    for got, want in zip((dx, dw, db), expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", 256 * 2**10)
    for stride, channels in ((2, 8), (1, F.conv.WINOGRAD_CHANNELS)):
        w = rng.standard_normal((channels, channels, 3, 3))
        xi = rng.standard_normal((8, w.shape[1], 10, 10))
        padded.clear()
        expected, cache = F.conv2d_forward(xi, w, None, stride, 1)
        assert padded == [1] and cache[0].shape == (8, 12, 12, channels)  # held for backward
        assert F.conv2d_holds_input(xi, w, stride, 1) is None
        np.testing.assert_allclose(F.conv2d(xi, w, None, stride, 1), expected, rtol=1e-10)
        F.conv2d_backward(rng.standard_normal(expected.shape), cache, input_grad=False)
        assert padded == [1, 1]  # inference's; dw read the one held
    w = rng.standard_normal((8, 8, 3, 3))  # an empty batch: no chunks, in both directions
    for stride, out_shape in ((1, (0, 8, 8, 8)), (2, (0, 8, 4, 4))):  # dw by kernel rows, im2col
        empty, empty_cache = F.conv2d_forward(np.zeros((0, 8, 8, 8)), w, None, stride, 1)
        dx, dw, db = F.conv2d_backward(empty, empty_cache)
        assert empty.shape == out_shape and dx.shape == (0, 8, 8, 8)
        assert dw.shape == w.shape and db.shape == (8,) and not dw.any() and not db.any()


def test_kernel_rows_are_used_while_a_kernel_rows_weights_fit_the_bound(monkeypatch):
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 8, 6, 6)), rng.standard_normal((8, 8, 3, 3))
    used = []
    by_rows = F.conv.conv2d_by_kernel_rows
    monkeypatch.setattr(F.conv, "conv2d_by_kernel_rows",
                        lambda *args: used.append(True) or by_rows(*args))
    expected, _ = F.conv2d_forward(x, w, None, 1, 1)  # 8 channels: channels-last, 1.5 KiB rows
    assert used == [True]
    monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", 3 * 8 * 8 * 8 - 1)
    out, _ = F.conv2d_forward(x, w, None, 1, 1)
    assert used == [True]  # by im2col, the same values
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    F.conv2d_forward(x, w, None, 2, 1)
    assert used == [True]  # stride 2: im2col


def test_kernel_rows_take_what_im2col_takes_and_leave_it_the_small_outputs(monkeypatch):
    """Through conv2d_forward: a kW = 1 kernel, a bias given as a list or a scalar (im2col's
    bias column took them) give im2col's values; a 1x1 output stays with im2col (each
    image's product would be a matrix-vector product), and so does the input gradient of a
    kernel larger than the output (col2im, not a convolution of a padded dout)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 7, 6))
    used, by_convolution = [], []
    by_rows = F.conv.conv2d_by_kernel_rows
    monkeypatch.setattr(F.conv, "conv2d_by_kernel_rows",
                        lambda *args: used.append(True) or by_rows(*args))
    as_convolution = F.conv.input_gradient_by_convolution
    monkeypatch.setattr(F.conv, "input_gradient_by_convolution",
                        lambda *args: by_convolution.append(True) or as_convolution(*args))
    for kernel, bias in (((3, 1), [0.5, -1.0, 2.0, 0.25]), ((3, 3), 0.5)):
        w = rng.standard_normal((4, 4, *kernel))
        monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", 256 * 2**10)
        out, _ = F.conv2d_forward(x, w, bias, 1, 1, channels_last=True)
        monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", -1)
        expected, _ = F.conv2d_forward(x, w, bias, 1, 1, channels_last=True)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert used == [True, True]
    monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", 256 * 2**10)
    w = rng.standard_normal((4, 4, 7, 6))  # the whole image: a 1x1 output
    out, cache = F.conv2d_forward(x, w, None, 1, 0, channels_last=True)
    assert out.shape == (3, 4, 1, 1) and used == [True, True]
    F.conv2d_backward(np.ones_like(out), cache)
    assert by_convolution == []
    w = rng.standard_normal((4, 4, 3, 3))
    out, cache = F.conv2d_forward(x, w, None, 1, 1, channels_last=True)
    F.conv2d_backward(np.ones_like(out), cache)
    assert by_convolution == [True]


def test_weight_gradient_by_kernel_rows_is_im2cols_in_any_chunks(monkeypatch):
    """Where forward went by kernel rows, the weight gradient does too (one product per
    image and kernel row): im2col's dw and db (float64), whole or in chunks of images."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 9, 8))
    for kernel, padding in (((3, 3), 1), ((5, 3), 2), ((2, 4), 0), ((3, 1), 1)):
        w = rng.standard_normal((4, 3, *kernel))
        out, cache = F.conv2d_forward(x, w, None, 1, padding, channels_last=True)
        dout = np.cos(out)
        monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", -1)
        _, dw, db = F.conv2d_backward(dout, cache, input_grad=False)  # im2col's
        monkeypatch.setattr(F.conv, "ROWS_WEIGHT_BYTES", 256 * 2**10)
        x_rows = x.transpose(0, 2, 3, 1)  # channels-last, the padding implied
        for rows_bytes in (2**30, 1, 2 * x_rows[0].nbytes * kernel[1]):
            monkeypatch.setattr(F.conv, "ROWS_BYTES", rows_bytes)
            by_rows, db_by_rows = F.conv.weight_gradient_by_kernel_rows(dout, x_rows, *kernel,
                                                                        padding)
            assert by_rows.shape == w.shape and by_rows.flags.c_contiguous
            np.testing.assert_allclose(by_rows, dw, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(db_by_rows, db, rtol=1e-12, atol=1e-12)
    # float32 dout against a float64 input: float64 gradients, as im2col's product gives
    dw32, db32 = F.conv.weight_gradient_by_kernel_rows(dout.astype(np.float32), x_rows, 3, 1,
                                                       padding)
    assert dw32.dtype == db32.dtype == np.float64


def test_weight_gradient_by_kernel_rows_only_with_enough_outputs(monkeypatch):
    """conv2d_backward takes dw by kernel rows where forward did and an image has at least
    ROWS_GRADIENT_OUTPUTS outputs (8x8 here), by im2col below (7x7: each image's product
    would have an inner dimension of 49), with or without dx alike."""
    rng = np.random.default_rng(10)
    used = []
    by_rows = F.conv.weight_gradient_by_kernel_rows
    monkeypatch.setattr(F.conv, "weight_gradient_by_kernel_rows",
                        lambda *args: used.append(True) or by_rows(*args))
    for hw, expected in ((8, [True, True]), (7, [])):
        used.clear()
        x, w = rng.standard_normal((2, 8, hw, hw)), rng.standard_normal((8, 8, 3, 3))
        out, cache = F.conv2d_forward(x, w, None, 1, 1, channels_last=True)
        _, dw, _ = F.conv2d_backward(np.cos(out), cache)
        _, dw_alone, _ = F.conv2d_backward(np.cos(out), cache, input_grad=False)
        assert used == expected
        np.testing.assert_array_equal(dw, dw_alone)


def test_winograd_is_the_direct_convolution_for_any_size_padding_and_chunks(monkeypatch):
    """F(2x2, 3x3) gives the loop convolution's values (float64, to rounding): even and odd
    outputs (an odd one reads a row of zeros past the input and drops half a tile), 1x1
    outputs, padding 0-2, with a bias or none, whole or one image at a time."""
    from cnnumpy.functional.winograd import conv2d_winograd

    rng = np.random.default_rng(11)
    for hw, padding in (((8, 8), 1), ((7, 9), 1), ((5, 6), 0), ((4, 4), 2), ((3, 3), 0)):
        x = rng.standard_normal((3, 4, *hw))
        w, b = rng.standard_normal((5, 4, 3, 3)), rng.standard_normal(5)
        for bias in (b, None):
            expected = conv2d_loops(x, w, 0 * b if bias is None else b, (1, 1), F.pair(padding))
            for chunk_bytes in (2**30, 1):
                monkeypatch.setattr("cnnumpy.functional.winograd.WINOGRAD_BYTES", chunk_bytes)
                out = conv2d_winograd(F.pad2d(x, padding, True), w, bias)
                np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
                assert out.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last memory


def test_winograd_in_float32_differs_from_the_direct_convolution_by_rounding():
    """The transforms add up to 16 values and G has halves: in float32 the outputs stay
    within 1e-5 (relative to the largest) of the exact float64 convolution's, and no further
    from them than twice the direct float32 convolution's own difference, or 1e-6."""
    from cnnumpy.functional.winograd import conv2d_winograd

    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((4, 64, 9, 9)), rng.standard_normal((32, 64, 3, 3)) / 24
    exact = conv2d_loops(x, w, np.zeros(32), (1, 1), (1, 1))
    out = conv2d_winograd(F.pad2d(x.astype(np.float32), 1, True), w.astype(np.float32), None)
    direct, _ = F.conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1, 1)
    assert out.dtype == np.float32
    scale = np.abs(exact).max()
    assert np.abs(out - exact).max() < 1e-5 * scale
    assert np.abs(out - exact).max() <= max(2 * np.abs(direct - exact).max(), 1e-6 * scale)


def test_winograd_serves_3x3_convolutions_with_many_channels_and_their_gradients(monkeypatch,
                                                                                rng):
    """conv2d_forward goes by Winograd for stride-1 3x3 kernels with at least
    WINOGRAD_CHANNELS channels in and out and WINOGRAD_TILES output tiles (ceil(7 / 2)² = 16
    an image for a 7x7 output), and by the direct convolution otherwise (fewer channels or
    tiles, stride 2, 5x5), with the same values; the input gradient of such a layer, a
    convolution with the flipped kernel, goes by it too, and a float64 gradient check of a
    layer with both passes by Winograd passes."""
    used = []
    winograd = F.conv.conv2d_winograd
    monkeypatch.setattr(F.conv, "conv2d_winograd",
                        lambda *a: used.append(a[1].shape) or winograd(*a))
    x, w = rng.standard_normal((2, 128, 7, 7)), rng.standard_normal((128, 128, 3, 3)) / 32
    monkeypatch.setattr(F.conv, "WINOGRAD_TILES", 33)
    out, cache = F.conv2d_forward(x, w, None, 1, 1)  # 2 images of 4x4 tiles: 32 tiles
    dx, dw, _ = F.conv2d_backward(np.cos(out), cache)
    assert used == []
    monkeypatch.setattr(F.conv, "WINOGRAD_TILES", 32)
    by_winograd, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert used == [(128, 128, 3, 3)]
    np.testing.assert_allclose(by_winograd, out, rtol=1e-12, atol=1e-12)
    dx_by_winograd, dw_too, _ = F.conv2d_backward(np.cos(out), cache)  # dx: flipped kernel
    assert len(used) == 2
    np.testing.assert_allclose(dx_by_winograd, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(dw_too, dw)
    w5 = rng.standard_normal((128, 128, 5, 5))
    for inputs, kernel, stride in ((x[:, :64], w[:, :64], 1), (x, w, 2), (x, w5, 1)):
        F.conv2d_forward(inputs, kernel, None, stride, 1)
    assert len(used) == 2  # 64 input channels, stride 2, a 5x5 kernel: direct
    monkeypatch.setattr(F.conv, "WINOGRAD_CHANNELS", 2)
    monkeypatch.setattr(F.conv, "WINOGRAD_TILES", 1)
    used.clear()
    layer = cn.Conv2D(4, 4, 3, padding=1, rng=rng, dtype=np.float64)
    assert cn.gradient_check(layer, rng.standard_normal((2, 4, 5, 6)), rng=rng) < 1e-7
    assert used  # the layer's forward passes (its dx by Winograd is compared above)


def test_winograd_takes_the_weights_and_biases_the_direct_convolution_takes(monkeypatch, rng):
    """Integer weights (G's halves would round to 0 in their dtype), a float64 kernel for
    a float32 input and a float32 kernel for a float64 input (the products in float64, as
    the direct one's), and a bias as a list or a (1, C_out) row give the direct
    convolution's values."""
    monkeypatch.setattr(F.conv, "WINOGRAD_CHANNELS", 1)
    monkeypatch.setattr(F.conv, "WINOGRAD_TILES", 1)
    x = rng.standard_normal((2, 3, 6, 5))
    cases = ((x, rng.integers(-2, 3, (4, 3, 3, 3)), None),
             (x.astype(np.float32), rng.standard_normal((4, 3, 3, 3)), None),
             (x, rng.standard_normal((4, 3, 3, 3)).astype(np.float32), None),
             (x, rng.standard_normal((4, 3, 3, 3)), [0.5, -1.0, 2.0, 0.25]),
             (x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((1, 4))))
    for inputs, w, b in cases:
        out, _ = F.conv2d_forward(inputs, w, b, 1, 1)
        expected = conv2d_loops(inputs.astype(np.float64), w.astype(np.float64),  # w as given
                                np.zeros(4) if b is None else np.ravel(b), (1, 1), (1, 1))
        assert out.dtype == inputs.dtype
        tol = 1e-12 if inputs.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_add_bias_adds_in_place_to_any_layout_and_names_a_wrong_length():
    from cnnumpy.functional.channelwise import add_bias

    for out in (np.zeros((2, 3, 4)), np.zeros((2, 4, 3)).transpose(0, 2, 1)):
        add_bias(out, [[1.0, 2.0, 3.0, 4.0]])  # a (1, C) row, into contiguous or not
        np.testing.assert_array_equal(out, np.broadcast_to([1.0, 2.0, 3.0, 4.0], (2, 3, 4)))
    with pytest.raises(ValueError, match="shape"):
        add_bias(np.zeros((2, 3, 4)), np.ones(5))
