"""A model summary: one row per module with its output shape, parameters, multiply-accumulates,
receptive field and jump, then totals; returned as a string, in the shape of Keras's table.

The rows come from one recorded forward pass of a zero image (`cnnumpy.trace`, in evaluation
mode: the model is left as it was), in the order the modules run, blocks before their
layers: a residual network shows `layer1`, `layer1.0`, `layer1.0.conv1`, ... A block's row
counts the parameters and MACs of everything inside it; the totals count each once.

    print(cn.SimpleCNN((1, 28, 28)).summary((1, 28, 28)))

Definitions (per image, i.e. for a batch of one):

- **Parameters**: elements of the module's parameters (`W` and `b`, BatchNorm's γ and β;
  not buffers such as running statistics), and of its children's for a block.
- **MACs** (multiply-accumulates) of the layers that multiply by weights:
  Conv2D  C_out · H_out · W_out · C_in · kH · kW      (one per weight per output position)
  Linear  out_features · in_features
  Bias additions are not counted; pools, ReLU and Flatten count 0 (they compare or add).
- **Receptive field / jump** (`cnnumpy.shapes.traced_fields`): how many input pixels one
  unit of the layer sees, and how many input pixels lie between neighbouring units; a layer
  without a window (ReLU, BatchNorm) keeps those of the layer before it, and a sum (the
  `Add` of a residual block) takes the union of its paths' fields. Shown "h x w" when they differ
  along the two axes, and "-" once the output is no longer an image (after Flatten): a unit
  of a Linear layer sees the whole input.
- **Activation memory for training**: the bytes of the tensors a forward pass keeps until
  backward has run, counted as the input image plus the output of every leaf layer, in the
  model's dtype. Flatten's output counts 0 (a reshape shares its input's memory), and so
  does an output that is its input (an identity, such as adaptive pooling to the same size,
  or Dropout, which the summary's pass runs in evaluation mode: in training it adds an output
  and a mask). The
  kernels' scratch buffers (im2col columns, max-pool indices, ReLU masks) and the gradients
  are not counted: they depend on the implementation, so the figure is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import trace
from .layers import Conv2D, Flatten, Linear
from .shapes import Field, traced_fields

# The largest input (elements of one sample) a summary traces: a summary runs the model.
MAX_INPUT_ELEMENTS = 2**27


@dataclass(frozen=True)
class LayerSummary:
    """One row of the table."""

    name: str                       # dotted name, e.g. "conv1" or "layer1.0.conv1"
    type: str                       # class name, e.g. "Conv2D"
    output_shape: tuple[int, ...]   # one sample, no batch axis
    parameters: int
    macs: int                       # multiply-accumulates per image
    field: tuple[Field, Field] | None  # (height, width) receptive field; None after Flatten
    leaf: bool = True               # False for a block (its figures include its children's)


@dataclass(frozen=True)
class ModelSummary:
    """The rows of a model for one input shape, and the totals of the footer."""

    model: str                      # class name of the model
    input_shape: tuple[int, ...]
    rows: list[LayerSummary]
    activation_bytes: int           # per image, for training (see the module docstring)

    parameters: int                 # of the whole model

    @property
    def macs(self) -> int:
        return sum(row.macs for row in self.rows if row.leaf)


def _macs(layer, output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per image of one layer producing `output_shape`."""
    if isinstance(layer, Conv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(output_shape, dtype=np.int64)) * layer.in_channels * kh * kw
    if isinstance(layer, Linear):
        return layer.out_features * layer.in_features
    return 0


def summarize(model, input_shape) -> ModelSummary:
    """The summary rows and totals of `model` for one input sample of shape `input_shape`.

    Raises ValueError (from the layers' shape rules) when the shape does not fit the model.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if min(input_shape, default=0) < 1 or np.prod(input_shape, dtype=np.float64) > \
            MAX_INPUT_ELEMENTS:
        raise ValueError(f"input_shape must be positive sizes of at most {MAX_INPUT_ELEMENTS:,} "
                         f"elements in all (a summary runs the model once), got {input_shape}")
    model.output_shape(input_shape)  # the layers' own errors, before anything runs
    dtype = model.dtype or np.float32
    recorded = trace.record(model, np.zeros((1, *input_shape), dtype=dtype))
    fields = traced_fields(recorded)
    leaves = recorded.leaves()
    macs = {id(call): _macs(call.module, call.output.shape[1:]) for call in leaves}
    calls = [call for call in recorded.calls if call.depth > 0] or recorded.calls
    rows = []
    for call in calls:
        inside = [leaf for leaf in leaves if leaf is call
                  or leaf.name.startswith(call.name + ".")] if call.name else leaves
        rows.append(LayerSummary(
            call.name or type(call.module).__name__, type(call.module).__name__,
            tuple(call.output.shape[1:]), int(call.module.num_parameters()),
            sum(macs[id(leaf)] for leaf in inside), fields.get(id(call.output)), call.is_leaf))
    kept = [call.output for call in leaves if not isinstance(call.module, Flatten)
            and not any(call.output is x for x in call.inputs)]
    activations = sum(out[0].size for out in kept) + int(np.prod(input_shape, dtype=np.int64))
    return ModelSummary(type(model).__name__, input_shape, rows,
                        activations * np.dtype(dtype).itemsize, int(model.num_parameters()))


def _both_axes(height: int, width: int) -> str:
    return str(height) if height == width else f"{height} x {width}"


def _human_bytes(count: int) -> str:
    """1234567 -> "1.18 MiB" (binary units)."""
    exponent = min(int(np.log2(max(count, 1)) // 10), 3)
    if exponent == 0:
        return f"{count} B"
    return f"{count / 1024 ** exponent:.2f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


_HEADER = ("Layer", "Type", "Output shape", "Params", "MACs", "RF", "Jump")
_LEFT_ALIGNED = 3  # name, type and shape are left-aligned, the numbers right-aligned


def _cells(row: LayerSummary) -> tuple[str, ...]:
    if row.field is None:
        field = jump = "-"
    else:
        height, width = row.field
        field = _both_axes(height.size, width.size)
        jump = _both_axes(height.jump, width.jump)
    return (row.name, row.type, str(row.output_shape), f"{row.parameters:,}", f"{row.macs:,}", field, jump)


def format_summary(summary: ModelSummary) -> str:
    """The table of a `ModelSummary`: header, one line per layer, totals; no trailing newline."""
    lines = [_HEADER] + [_cells(row) for row in summary.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]

    def render(cells) -> str:
        return "  ".join(cell.ljust(width) if i < _LEFT_ALIGNED else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    rule = len(render(lines[0]))
    table = [render(line) for line in lines]
    return "\n".join([
        f"Model: {summary.model}, input {summary.input_shape}",
        "=" * rule, table[0], "-" * rule, *table[1:], "=" * rule,
        f"Total parameters: {summary.parameters:,}",
        f"MACs per image: {summary.macs:,}",
        f"Activation memory per image (training): {summary.activation_bytes:,} bytes "
        f"({_human_bytes(summary.activation_bytes)})",
    ])


def summary_table(model, input_shape) -> str:
    """`format_summary(summarize(model, input_shape))`: the summary table as a string."""
    return format_summary(summarize(model, input_shape))
