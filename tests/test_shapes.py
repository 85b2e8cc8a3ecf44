"""Output-size formula and the receptive-field recurrence."""

import numpy as np
import pytest

import cnnumpy as cn


@pytest.mark.parametrize("args, expected", [
    ((224, 11, 4, 2), 55), ((32, 3, 1, 1), 32), ((28, 2, 2, 0), 14), ((7, 2, 2, 0), 3),
    ((5, 5, 1, 0), 1), ((1, 3, 1, 1), 1), ((10, 3, 3, 0), 3),
])
def test_conv_output_size(args, expected):
    size, kernel, stride, padding = args
    assert cn.conv_output_size(size, kernel, stride=stride, padding=padding) == expected
    assert expected == (size + 2 * padding - kernel) // stride + 1


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(size=4, kernel=7), ValueError, r"kernel 7 does not fit in an input of size 4"),
    (dict(size=4, kernel=7, padding=1), ValueError, r"padded size 6"),
    (dict(size=0, kernel=1), ValueError, r"size must be >= 1, got 0"),
    (dict(size=8, kernel=3, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (dict(size=8, kernel=3, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (dict(size=8.5, kernel=3), TypeError, r"size must be an integer, got 8.5"),
])
def test_conv_output_size_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        cn.conv_output_size(**kwargs)


def test_lesson_example_is_seven_not_eleven():
    assert [f.size for f in cn.receptive_fields([(3, 1), (3, 1), (3, 2)])] == [3, 5, 7]
    assert cn.receptive_field([(3, 1), (3, 1), (3, 2)]) == 7
    # a fourth 3x3 stride-1 layer sees (3 - 1) * 2 = 4 more pixels
    assert cn.receptive_field([(3, 1), (3, 1), (3, 2), (3, 1)]) == 11


def test_simplecnn_receptive_fields_by_hand():
    model = cn.SimpleCNN((1, 28, 28), 10, rng=np.random.default_rng(0))
    # conv1 3/1 p1: r=3 j=1 start=-1; pool1 2/2: r=4 j=2; conv2 3/1 p1: r=4+2*2=8, start=-1-2=-3;
    # pool2 2/2: r=8+1*2=10 j=4
    assert cn.receptive_fields(model) == [
        cn.Field(3, 1, -1), cn.Field(4, 2, -1), cn.Field(8, 2, -3), cn.Field(10, 4, -3)]
    assert cn.receptive_field(model) == 10


def test_deeper_stack_with_padding_and_non_square():
    spec = [((3, 5), 1, (1, 2)), (2, 2), (3, (2, 1)), (5, 1, 2)]
    # height: k 3,2,3,5 s 1,2,2,1 -> r 3,4,8,24; j 1,2,4,4; start -1,-1,-1,-9
    assert cn.receptive_fields(spec, axis=0) == [
        cn.Field(3, 1, -1), cn.Field(4, 2, -1), cn.Field(8, 4, -1), cn.Field(24, 4, -9)]
    # width: k 5,2,3,5 s 1,2,1,1 -> r 5,6,10,18; j 1,2,2,2; start -2,-2,-2,-6
    assert cn.receptive_fields(spec, axis=1) == [
        cn.Field(5, 1, -2), cn.Field(6, 2, -2), cn.Field(10, 2, -2), cn.Field(18, 2, -6)]
    with pytest.raises(ValueError, match=r"not square \(24 x 18\)"):
        cn.receptive_field(spec)


def test_receptive_field_matches_gradient_support():
    """The input pixels with a non-zero gradient of one output unit are its receptive field."""
    rng = np.random.default_rng(0)
    model = cn.Sequential([cn.Conv2D(1, 2, 3, padding=1, rng=rng, dtype=np.float64),
                           cn.AvgPool2D(2), cn.Conv2D(2, 1, 3, stride=2, rng=rng, dtype=np.float64)])
    x = rng.standard_normal((1, 1, 20, 20))
    out = model.forward(x)
    dout = np.zeros_like(out)
    dout[0, 0, 1, 2] = 1.0
    rows, cols = np.nonzero(model.backward(dout)[0, 0])
    field = cn.receptive_fields(model, input_shape=(1, 20, 20))[-1]
    assert rows.min() == field.start + 1 * field.jump and cols.min() == field.start + 2 * field.jump
    assert rows.max() - rows.min() + 1 == field.size == cols.max() - cols.min() + 1


def test_receptive_fields_through_a_residual_block():
    """The Add of a block is listed after the paths' layers, with the union of their fields."""
    rng = np.random.default_rng(0)
    block = cn.Residual({"conv1": cn.Conv2D(2, 4, 3, stride=2, padding=1, rng=rng),
                         "conv2": cn.Conv2D(4, 4, 3, padding=1, rng=rng)},
                        shortcut=cn.Conv2D(2, 4, 1, stride=2, rng=rng))
    # main path: r 3, 3 + 2·2 = 7; start -1, -1 - 1·2 = -3; j 2. Shortcut: r 1 from 0, j 2.
    # The sum: pixels -3..3 and 0..0, so r 7 from -3.
    assert cn.receptive_fields(block, input_shape=(2, 8, 8)) == [
        cn.Field(3, 2, -1), cn.Field(7, 2, -3), cn.Field(1, 2, 0), cn.Field(7, 2, -3)]
    assert cn.receptive_field(block, input_shape=(2, 8, 8)) == 7
    net = cn.models.resnet20(input_shape=(1, 28, 28), rng=rng)
    assert cn.receptive_field(net) == 105  # avgpool over layer3's 7x7 maps: 81 + 6·4


def test_receptive_field_spec_errors():
    with pytest.raises(ValueError, match=r"\(kernel, stride\)"):
        cn.receptive_field([3, 3])
    with pytest.raises(ValueError, match=r"stride must be >= 1, got 0"):
        cn.receptive_field([(3, 0)])
