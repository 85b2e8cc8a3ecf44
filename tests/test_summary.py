"""The summary table: per-layer numbers checked against hand computation, and its layout."""

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.summary import summarize


def _columns(summary):
    """(name, output shape, params, MACs, (rf_h, rf_w), (jump_h, jump_w)) of every row."""
    return [
        (row.name, row.output_shape, row.parameters, row.macs,
         None if row.field is None else (row.field[0].size, row.field[1].size),
         None if row.field is None else (row.field[0].jump, row.field[1].jump))
        for row in summary.rows
    ]


def test_simplecnn_cifar_by_hand():
    summary = summarize(cn.SimpleCNN((3, 32, 32), rng=np.random.default_rng(0)), (3, 32, 32))
    # params: 32*3*9 + 32; 64*32*9 + 64; 4096*512 + 512; 512*10 + 10
    # MACs: C_out*H_out*W_out*C_in*kH*kW for the convolutions, in*out for the linear layers
    # receptive field r += (k - 1) * j, j *= s: 3/1, 4/2, 8/2, 10/4 (see test_shapes)
    assert _columns(summary) == [
        ("conv1", (32, 32, 32), 896, 32 * 32 * 32 * 3 * 9, (3, 3), (1, 1)),
        ("relu1", (32, 32, 32), 0, 0, (3, 3), (1, 1)),
        ("pool1", (32, 16, 16), 0, 0, (4, 4), (2, 2)),
        ("conv2", (64, 16, 16), 18496, 64 * 16 * 16 * 32 * 9, (8, 8), (2, 2)),
        ("relu2", (64, 16, 16), 0, 0, (8, 8), (2, 2)),
        ("pool2", (64, 8, 8), 0, 0, (10, 10), (4, 4)),
        ("flatten", (4096,), 0, 0, None, None),
        ("fc1", (512,), 2097664, 4096 * 512, None, None),
        ("relu3", (512,), 0, 0, None, None),
        ("fc2", (10,), 5130, 5120, None, None),
    ]
    assert summary.parameters == 896 + 18496 + 2097664 + 5130 == 2122186
    assert summary.macs == 884736 + 4718592 + 2097152 + 5120
    # input + every output except Flatten's (a view), float32
    elements = 3 * 32 * 32 + 2 * 32 * 32 * 32 + 32 * 16 * 16 + 2 * 64 * 16 * 16 + 64 * 8 * 8 \
        + 2 * 512 + 10
    assert summary.activation_bytes == 4 * elements


SIMPLECNN_MNIST_TABLE = """\
Model: SimpleCNN, input (1, 28, 28)
================================================================
Layer    Type       Output shape     Params       MACs  RF  Jump
----------------------------------------------------------------
conv1    Conv2D     (32, 28, 28)        320    225,792   3     1
relu1    ReLU       (32, 28, 28)          0          0   3     1
pool1    MaxPool2D  (32, 14, 14)          0          0   4     2
conv2    Conv2D     (64, 14, 14)     18,496  3,612,672   8     2
relu2    ReLU       (64, 14, 14)          0          0   8     2
pool2    MaxPool2D  (64, 7, 7)            0          0  10     4
flatten  Flatten    (3136,)               0          0   -     -
fc1      Linear     (512,)        1,606,144  1,605,632   -     -
relu3    ReLU       (512,)                0          0   -     -
fc2      Linear     (10,)             5,130      5,120   -     -
================================================================
Total parameters: 1,630,090
MACs per image: 5,449,216
Activation memory per image (training): 345,960 bytes (337.85 KiB)"""


def test_simplecnn_mnist_table_is_returned_not_printed(capsys):
    model = cn.SimpleCNN((1, 28, 28), rng=np.random.default_rng(0))
    text = model.summary((1, 28, 28))
    assert capsys.readouterr().out == ""
    assert text == SIMPLECNN_MNIST_TABLE
    # the by-hand numbers behind the table
    assert 32 * 28 * 28 * 1 * 9 == 225792 and 64 * 14 * 14 * 32 * 9 == 3612672
    assert 3136 * 512 + 512 == 1606144 and 320 + 18496 + 1606144 + 5130 == 1630090
    elements = 28 * 28 + 2 * 32 * 28 * 28 + 32 * 14 * 14 + 2 * 64 * 14 * 14 + 64 * 7 * 7 \
        + 2 * 512 + 10
    assert 4 * elements == 345960


def test_deeper_stack_with_stride_padding_pooling_and_non_square_fields():
    rng = np.random.default_rng(0)
    model = cn.Sequential({
        "act0": cn.ReLU(),
        "conv_a": cn.Conv2D(1, 4, (3, 5), padding=(1, 2), rng=rng, dtype=np.float64),
        "pool": cn.MaxPool2D(2),
        "conv_b": cn.Conv2D(4, 8, 3, stride=(2, 1), rng=rng, dtype=np.float64),
        "act": cn.ReLU(),
        "conv_c": cn.Conv2D(8, 8, 5, padding=2, rng=rng, dtype=np.float64),
        "smooth": cn.AvgPool2D(3, stride=1),
        "flat": cn.Flatten(),
        "head": cn.Linear(8 * 2 * 4, 3, rng=rng, dtype=np.float64),
    })
    summary = summarize(model, (1, 20, 16))
    # height: k 3,2,3,5,3 s 1,2,2,1,1 -> r 3,4,8,24,32 j 1,2,4,4,4
    # width:  k 5,2,3,5,3 s 1,2,1,1,1 -> r 5,6,10,18,22 j 1,2,2,2,2
    assert _columns(summary) == [
        ("act0", (1, 20, 16), 0, 0, (1, 1), (1, 1)),
        ("conv_a", (4, 20, 16), 4 * 15 + 4, 4 * 20 * 16 * 15, (3, 5), (1, 1)),
        ("pool", (4, 10, 8), 0, 0, (4, 6), (2, 2)),
        ("conv_b", (8, 4, 6), 8 * 4 * 9 + 8, 8 * 4 * 6 * 4 * 9, (8, 10), (4, 2)),
        ("act", (8, 4, 6), 0, 0, (8, 10), (4, 2)),
        ("conv_c", (8, 4, 6), 8 * 8 * 25 + 8, 8 * 4 * 6 * 8 * 25, (24, 18), (4, 2)),
        ("smooth", (8, 2, 4), 0, 0, (32, 22), (4, 2)),
        ("flat", (64,), 0, 0, None, None),
        ("head", (3,), 64 * 3 + 3, 64 * 3, None, None),
    ]
    assert [f.size for f in cn.receptive_fields(model, input_shape=(1, 20, 16))] == [3, 4, 8, 24, 32]
    elements = 320 + 320 + 1280 + 320 + 192 + 192 + 192 + 64 + 3
    assert summary.activation_bytes == 8 * elements  # float64
    lines = model.summary((1, 20, 16)).splitlines()
    conv_c = next(line for line in lines if line.startswith("conv_c"))
    assert conv_c.split() == ["conv_c", "Conv2D", "(8,", "4,", "6)", "1,608", "38,400",
                              "24", "x", "18", "4", "x", "2"]


def test_columns_are_aligned():
    lines = cn.SimpleCNN((3, 32, 32), rng=np.random.default_rng(0)).summary((3, 32, 32))
    lines = lines.splitlines()
    rule = lines[1]
    table = lines[2:lines.index(rule, 2)]
    assert set(rule) == {"="} and lines[3] == "-" * len(rule)
    header = table[0]
    for column in ("Params", "MACs", "RF", "Jump"):  # numbers end under their header
        end = header.index(column) + len(column)
        for line in table[2:]:
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), line


def test_input_shape_that_does_not_fit():
    model = cn.SimpleCNN((1, 28, 28), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected 1 input channels, got 3"):
        model.summary((3, 28, 28))
