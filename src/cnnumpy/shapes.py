"""Shape arithmetic of convolutions and pools: output sizes and receptive fields.

Output size of a window of size k, stride s, padding p sliding over n pixels:

    n_out = floor((n + 2p - k) / s) + 1

Receptive field r_l (input pixels seen by one unit of layer l) and jump j_l (input pixels
between neighbouring units of layer l), from the lesson's recurrence:

    r_0 = 1, j_0 = 1,    r_l = r_{l-1} + (k_l - 1) * j_{l-1},    j_l = j_{l-1} * s_l

so j_{l-1} is the product of the strides before layer l. The field of unit i of layer l starts
at input pixel `start_l + i * j_l`, with start_0 = 0 and start_l = start_{l-1} - p_l * j_{l-1}
(negative where the field reaches into the padding).
"""

from __future__ import annotations

import operator
from typing import Iterable, NamedTuple

from .functional import pair


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


def _layer_windows(spec) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """(kernel, stride, padding) pairs of every windowed layer of a model or a list."""
    if hasattr(spec, "named_layers"):
        return [layer.window for _, layer in spec.named_layers() if layer.window is not None]
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


def receptive_fields(spec, axis: int = 0) -> list[Field]:
    """Receptive field, jump and start of every windowed layer, along one axis.

    `spec` is a model (its convolutions and pools count; ReLU, Flatten and Linear do not) or a
    list of (kernel, stride) or (kernel, stride, padding) tuples, each an int or an
    (h, w) pair. `axis` 0 is the height, 1 the width.

    >>> [f.size for f in receptive_fields([(3, 1), (3, 1), (3, 2)])]
    [3, 5, 7]
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (height) or 1 (width), got {axis!r}")
    size, jump, start = 1, 1, 0
    fields = []
    for kernel, stride, padding in _layer_windows(spec):
        k = _check_int("kernel", kernel[axis], 1)
        s = _check_int("stride", stride[axis], 1)
        p = _check_int("padding", padding[axis], 0)
        size, start, jump = size + (k - 1) * jump, start - p * jump, jump * s
        fields.append(Field(size, jump, start))
    return fields


def receptive_field(spec: Iterable) -> int:
    """Receptive field of the last layer of `spec` (see `receptive_fields`), in pixels.

    >>> receptive_field([(3, 1), (3, 1), (3, 2)])   # the lesson's example: 7, not 11
    7

    Raises ValueError when the field is not square; use `receptive_fields(spec, axis)` then.
    """
    spec = _layer_windows(spec)
    height = receptive_fields(spec, axis=0)
    width = receptive_fields(spec, axis=1)
    if not height:
        return 1
    if height[-1].size != width[-1].size:
        raise ValueError(
            f"the receptive field is not square ({height[-1].size} x {width[-1].size}); "
            f"use receptive_fields(spec, axis=0 or 1)"
        )
    return height[-1].size
