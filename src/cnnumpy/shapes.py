"""Shape arithmetic of convolutions and pools: output sizes and receptive fields.

Output size of a window of size k, stride s, padding p sliding over n pixels:

    n_out = floor((n + 2p - k) / s) + 1

Receptive field r_l (input pixels seen by one unit of layer l) and jump j_l (input pixels
between neighbouring units of layer l), from the lesson's recurrence:

    r_0 = 1, j_0 = 1,    r_l = r_{l-1} + (k_l - 1) * j_{l-1},    j_l = j_{l-1} * s_l

so j_{l-1} is the product of the strides before layer l. The field of unit i of layer l starts
at input pixel `start_l + i * j_l`, with start_0 = 0 and start_l = start_{l-1} - p_l * j_{l-1}
(negative where the field reaches into the padding).

Through branches (a residual block adds two paths), the field of a sum is the union of its
inputs' fields: from the smallest start to the largest end over the paths, the largest field
over all paths (Araujo, Norris and Sim, "Computing receptive fields of convolutional neural
networks", Distill 2019). `traced_fields` follows a recorded forward pass (`cnnumpy.trace`),
so it handles any tree of modules.
"""

from __future__ import annotations

import operator
from typing import Iterable, NamedTuple

import numpy as np

from .functional.windowing import pair


def _check_int(name: str, value, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a window sliding over one axis: floor((size + 2p - k) / s) + 1.

    >>> conv_output_size(224, 11, stride=4, padding=2)
    55

    Raises ValueError when an argument is out of range or the window is larger than the
    padded input.
    """
    size = _check_int("size", size, 1)
    kernel = _check_int("kernel", kernel, 1)
    stride = _check_int("stride", stride, 1)
    padding = _check_int("padding", padding, 0)
    if kernel > size + 2 * padding:
        raise ValueError(
            f"kernel {kernel} does not fit in an input of size {size} with padding {padding} "
            f"(padded size {size + 2 * padding})"
        )
    return (size + 2 * padding - kernel) // stride + 1


class Field(NamedTuple):
    """Receptive field of one layer along one axis, in input pixels."""

    size: int  # r_l: how many input pixels one unit sees
    jump: int  # j_l: input pixels between neighbouring units (product of strides so far)
    start: int  # first input pixel seen by unit 0 (negative inside the padding)


def _step(field: Field, kernel: int, stride: int, padding: int) -> Field:
    """The recurrence through one window: r += (k - 1)·j, start -= p·j, j *= s."""
    return Field(field.size + (kernel - 1) * field.jump, field.jump * stride,
                 field.start - padding * field.jump)


def _union(fields: list[Field]) -> Field:
    """The field of a sum of units: from the first start to the last end over the inputs."""
    start = min(f.start for f in fields)
    end = max(f.start + f.size for f in fields)
    return Field(end - start, max(f.jump for f in fields), start)


def field_box(field: tuple[Field, Field], unit: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) in input pixels of the field of unit (row, column), for a
    layer whose (height, width) fields are `field`: top = start + row · jump along the height,
    left likewise along the width. Negative or too large coordinates lie in the padding."""
    height, width = field
    row, column = unit
    return (height.start + row * height.jump, width.start + column * width.jump,
            height.size, width.size)


def traced_fields(trace) -> dict[int, tuple[Field, Field] | None]:
    """(height, width) receptive field of every array of a trace, keyed by id(array); None
    for arrays that are no longer images (after Flatten: a unit then sees the whole input).

    Each leaf maps its input's field: windowed layers (convolutions, pools; their
    `receptive_window`) by the recurrence, `Add` by the union of its inputs' fields, the others
    (ReLU, BatchNorm, Dropout) keep it.
    """
    unit = Field(1, 1, 0)
    fields: dict[int, tuple[Field, Field] | None] = {id(trace.input): (unit, unit)}
    for call in trace.leaves():
        inputs = [fields.get(id(x)) for x in call.inputs]
        if call.output.ndim != 4 or any(field is None for field in inputs):
            fields[id(call.output)] = None
            continue
        if len(inputs) > 1:
            field = tuple(_union([f[axis] for f in inputs]) for axis in (0, 1))
        else:
            field = inputs[0]
            window = call.module.receptive_window(call.inputs[0].shape[1:])
            if window is not None:
                kernel, stride, padding = (pair(v) for v in window)
                field = tuple(_step(field[axis], kernel[axis], stride[axis], padding[axis])
                              for axis in (0, 1))
        fields[id(call.output)] = field
    return fields


def _model_fields(model, input_shape) -> list[tuple[Field, Field]]:
    """(height, width) fields of the windowed leaves of `model` and of the joins of paths
    (`Add`: the union), in the order they run."""
    from . import trace  # late: trace is about modules, this module about arithmetic

    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(f"the receptive fields of a {type(model).__name__} depend on its "
                             f"input: pass input_shape=(C, H, W)")
    x = np.zeros((1, *input_shape), dtype=model.dtype or np.float32)
    recorded = trace.record(model, x)
    fields = traced_fields(recorded)
    return [fields[id(call.output)] for call in recorded.leaves()
            if (len(call.inputs) > 1
                or call.module.receptive_window(call.inputs[0].shape[1:]) is not None)
            and fields[id(call.output)] is not None]


def _layer_windows(spec) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """(kernel, stride, padding) pairs of a list of (kernel, stride[, padding]) items."""
    windows = []
    for item in spec:
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(
                f"receptive-field spec items are (kernel, stride) or (kernel, stride, padding), "
                f"got {item!r}"
            )
        kernel, stride, padding = (*item, 0) if len(item) == 2 else item
        windows.append((pair(kernel), pair(stride), pair(padding)))
    return windows


def receptive_fields(spec, axis: int = 0, input_shape=None) -> list[Field]:
    """Receptive field, jump and start of every windowed layer, along one axis.

    `spec` is a model (its convolutions and pools count, in the order they run, and so does
    the `Add` of a residual block, with the union of its paths' fields; ReLU, Flatten and
    Linear do not) or a list of (kernel, stride) or (kernel, stride, padding) tuples, each an
    int or an (h, w) pair. `axis` 0 is the height, 1 the width. A model is traced on one
    input of `input_shape` (C, H, W), by default its `input_shape` attribute.

    >>> [f.size for f in receptive_fields([(3, 1), (3, 1), (3, 2)])]
    [3, 5, 7]
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (height) or 1 (width), got {axis!r}")
    if hasattr(spec, "named_modules"):
        return [field[axis] for field in _model_fields(spec, input_shape)]
    field, fields = Field(1, 1, 0), []
    for kernel, stride, padding in _layer_windows(spec):
        field = _step(field, _check_int("kernel", kernel[axis], 1),
                      _check_int("stride", stride[axis], 1),
                      _check_int("padding", padding[axis], 0))
        fields.append(field)
    return fields


def receptive_field(spec: Iterable, input_shape=None) -> int:
    """Receptive field of the last layer of `spec` (see `receptive_fields`), in pixels.

    >>> receptive_field([(3, 1), (3, 1), (3, 2)])   # the lesson's example: 7, not 11
    7

    Raises ValueError when the field is not square; use `receptive_fields(spec, axis)` then.
    """
    if not hasattr(spec, "named_modules"):
        spec = _layer_windows(spec)
    height = receptive_fields(spec, axis=0, input_shape=input_shape)
    width = receptive_fields(spec, axis=1, input_shape=input_shape)
    if not height:
        return 1
    if height[-1].size != width[-1].size:
        raise ValueError(
            f"the receptive field is not square ({height[-1].size} x {width[-1].size}); "
            f"use receptive_fields(spec, axis=0 or 1)"
        )
    return height[-1].size
