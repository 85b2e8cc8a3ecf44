"""An ONNX graph read back as a cnnumpy model: `Sequential` and `Residual` trees of layers.

Supported: the operators `to_onnx` writes and the spellings `torch.onnx.export` uses for
them (see SUPPORTED): Gemm with or without transB, MatMul followed by Add for a linear
layer, Reshape (to batch x features, its target shape constant or computed by
Shape/Gather/Slice/Squeeze/Unsqueeze/Concat) for Flatten, ReduceMean over H and W for
global pooling, nearest Resize by whole factors (in the modes of EXACT_RESIZE), Identity and
evaluation-mode Dropout as nothing, Constant nodes as weights. An attribute the layers would
compute differently is refused, naming the node. Elementwise Mul/Add/Sub/Div by constants
right at the input are the input's normalisation: they are taken out of the graph
(`OnnxFile.normalization`), not made layers, so the model starts after them.

The graph becomes a tree in two passes. Forward, node by node, each operator becomes a
layer (and the shape of every tensor is known). Backward from the output, a chain of layers
is followed to the input; an Add of two computed tensors is a join: its two paths go back
to the tensor where they forked, the latest tensor both depend on, and become a `Residual`
(the longer path its main path, the other its shortcut, a Relu right after the Add its
activation). A graph that does not decompose so (a tensor used by two paths that do not
join in an Add) is refused with an error naming the node.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..init import ZeroDraws
from ..layers import (AdaptiveAvgPool2D, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D,
                      Flatten, GlobalAvgPool2D, Linear, MaxPool2D, Module, ReLU, ZeroPad2D)
from ..models import Residual, Sequential
from ..validate import check_class_names, check_text
from .extras import require
from .onnx_export import METADATA_PREFIX

SUPPORTED = ("Add (two paths: a residual join; a constant after MatMul: the bias)",
             "AveragePool (counting its padding)", "BatchNormalization", "Constant", "Conv",
             "Dropout (evaluation mode)", "Flatten",
             "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool",
             "Mul/Add/Sub/Div by constants at the input (the normalisation)",
             "Pad (zeros)", "ReduceMean (over H and W, keepdims)", "Relu",
             "Reshape (to batch x features)",
             "Resize (nearest, whole factors, the modes of EXACT_RESIZE)",
             "Shape/Gather/Unsqueeze/Concat/Squeeze/Slice/Cast (computing a Reshape's shape)")
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Slice", "Cast")
NORMALIZATION_OPS = ("Mul", "Add", "Sub", "Div")
ALIAS_OPS = ("Identity", "Dropout")
FLOAT_TYPES = (1, 11)  # TensorProto.FLOAT, TensorProto.DOUBLE


class OnnxImportError(ValueError):
    """An ONNX file cnnumpy cannot read: corrupt, or with an unsupported operator."""


@dataclass
class OnnxFile:
    """What `read_onnx` found: the model and what the file says about its inputs.

    model: the graph after its normalisation prefix (its `input_shape` is the file's);
    normalization: (mean, std) per channel of `cnnumpy.data.normalize` (pixels / 255), from
    cnnumpy's metadata or the constants at the graph's input; None when there is neither.
    metadata: cnnumpy's metadata_props (model config, class names, data set), decoded."""

    path: Path
    model: Sequential
    normalization: tuple[np.ndarray, np.ndarray] | None = None
    metadata: dict = field(default_factory=dict)


def from_onnx(path) -> Sequential:
    """The cnnumpy model of an ONNX file (see the module doc): trainable, in evaluation
    mode, of the file's weights' dtype.

    The model is the graph *without* its normalisation prefix (Mul/Add/Sub/Div by constants
    right at the input, as in cnnumpy's `raw_pixels` export): it takes normalised images, so
    `from_onnx(f)(x)` differs from ONNX Runtime's output on `x` when the file has such a
    prefix. `read_onnx(f)` gives the model and the prefix as `normalization`, (mean, std) of
    `cnnumpy.data.normalize`: then `model(normalize(pixels, mean, std))` is ONNX Runtime's
    output on `pixels` 0..255 for cnnumpy's `raw_pixels` exports (their metadata holds the
    normalisation), and on `pixels / 255` for another tool's file (torchvision's inputs)."""
    return read_onnx(path).model


def read_onnx(path) -> OnnxFile:
    """Read and check an ONNX file, and convert its graph (see the module doc).

    Raises FileNotFoundError without a file, and OnnxImportError (a ValueError) naming the
    file when it is not a readable ONNX model (truncated, corrupt), and naming the node and
    its operator, with the supported ones, when an operator or attribute has no layer."""
    onnx = require("onnx")
    require("onnx.numpy_helper")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        content = path.read_bytes()
        proto = onnx.load_model_from_string(content)
        external = _has_external_data(onnx, proto)
        if not external:
            onnx.checker.check_model(content)  # the bytes: the proto is not serialised again
    except Exception as err:  # protobuf's DecodeError, onnx's ValidationError, ...
        raise OnnxImportError(f"{path}: not a readable ONNX model (truncated or corrupt?): "
                              f"{_first_line(err)}") from None
    if external:  # weights in files beside the model, found from its folder (not the
        try:      # working directory); the checker refuses locations outside that folder
            onnx.checker.check_model(str(path))
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except Exception as err:
            raise OnnxImportError(f"{path}: the weights it keeps in external data files "
                                  f"(beside it) cannot be read: {_first_line(err)}") from None
    metadata = {key[len(METADATA_PREFIX):]: _json(value) for key, value in
                ((p.key, p.value) for p in proto.metadata_props)
                if key.startswith(METADATA_PREFIX)}
    try:
        return _Importer(onnx, proto.graph, path, metadata).file()
    except OnnxImportError:
        raise
    except ValueError as err:  # a layer refused its hyperparameters
        raise OnnxImportError(f"{path}: {err}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _has_external_data(onnx, proto) -> bool:
    """Whether an initialiser or a Constant node keeps its values in another file."""
    tensors = list(proto.graph.initializer) + [a.t for node in proto.graph.node
                                               for a in node.attribute if a.HasField("t")]
    return any(onnx.external_data_helper.uses_external_data(t) for t in tensors)


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass
class _Op:
    """A layer of the graph: the module, its computed input tensors, its output tensor."""

    module: Module | None          # None for a join (Add of two paths)
    inputs: list[str]
    output: str
    index: int                     # position in the graph's node order
    node: str


class _Importer:
    """One graph's conversion: its constants, tensor names, shapes and layers (`_Op`)."""

    def __init__(self, onnx, graph, path: Path, metadata: dict):
        self.onnx, self.graph, self.path, self.metadata = onnx, graph, path, metadata
        # initialisers and Constant nodes (read-only views of the file: layers take copies)
        self.constants = {init.name: onnx.numpy_helper.to_array(init)
                          for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                (value,) = [onnx.helper.get_attribute_value(a) for a in node.attribute]
                self.constants[node.output[0]] = (onnx.numpy_helper.to_array(value)
                                                  if hasattr(value, "dims") else np.asarray(value))
        self.aliases: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        self.ops: dict[str, _Op] = {}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.done: set[int] = set()  # ids of nodes already converted (fused or shape-only)

    # ------------------------------------------------------------------ errors and inputs

    def error(self, node, problem: str) -> OnnxImportError:
        return OnnxImportError(f"{self.path}: node {node.name or node.output[0]!r} "
                               f"({node.op_type}): {problem}")

    def unsupported(self, node) -> OnnxImportError:
        return self.error(node, "operator not supported; cnnumpy reads "
                          + ", ".join(SUPPORTED))

    def attributes(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def name(self, tensor: str) -> str:
        while tensor in self.aliases:
            tensor = self.aliases[tensor]
        return tensor

    def constant(self, tensor: str):
        """The value of a constant tensor (initialiser or Constant node), else None."""
        return self.constants.get(self.name(tensor)) if tensor else None

    def computed(self, node) -> list[str]:
        """The node's inputs that are computed from the image (not constants, not shapes)."""
        return [self.name(t) for t in node.input if t and self.constant(t) is None
                and getattr(self.producers.get(self.name(t)), "op_type", "") not in SHAPE_OPS]

    # ------------------------------------------------------------------ the passes

    def file(self) -> OnnxFile:
        inputs = [i for i in self.graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise OnnxImportError(f"{self.path}: cnnumpy reads graphs of one input and one "
                                  f"output, this one has {len(inputs)} and "
                                  f"{len(self.graph.output)}")
        tensor_type = inputs[0].type.tensor_type
        if tensor_type.elem_type not in FLOAT_TYPES:
            found = self.onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise OnnxImportError(f"{self.path}: the input {inputs[0].name!r} holds {found}; "
                                  f"cnnumpy's models take FLOAT or DOUBLE images")
        shape = tuple(d.dim_value if d.HasField("dim_value") else None
                      for d in tensor_type.shape.dim)
        if len(shape) != 4 or None in shape[1:]:
            raise OnnxImportError(f"{self.path}: the input {inputs[0].name!r} must be "
                                  f"(batch, C, H, W) with fixed C, H, W, got {shape}")
        self.input = inputs[0].name
        self.batch = shape[0]  # None when the batch axis is dynamic
        self.shapes[self.input] = shape[1:]
        start, scale, shift = self.normalization_prefix()
        for index, node in enumerate(self.graph.node):
            if id(node) not in self.done:
                self.convert(index, node)
        used: set[str] = set()
        model = Sequential(_named(self.chain(start, self.name(self.graph.output[0].name),
                                             used)))
        left = [op.node for op in self.ops.values() if op.output not in used]
        if left:
            raise OnnxImportError(f"{self.path}: nodes {left} are on no path from the input "
                                  f"to the output of a chain of blocks; cnnumpy reads "
                                  f"sequences and residual blocks (two paths joined by Add)")
        model.input_shape = tuple(int(v) for v in self.shapes[self.input])
        model.eval()
        return OnnxFile(self.path, model, self.normalization(scale, shift), self.metadata)

    def normalization_prefix(self):
        """Mul/Add/Sub/Div by constants right after the input: x·scale + shift per channel.
        They are skipped: (the tensor the layers start from, scale, shift), scale and shift
        None when there are none."""
        c = self.shapes[self.input][0]
        scale, shift, tensor = np.ones(c), np.zeros(c), self.input
        while len(self.consumers.get(tensor, [])) == 1:
            node = self.consumers[tensor][0]
            other = [t for t in node.input if t != tensor]
            value = self.constant(other[0]) if node.op_type in NORMALIZATION_OPS \
                and len(other) == 1 else None
            per_channel = value is not None and (value.size == 1 or (
                value.ndim >= 3 and value.shape[-3:] == (c, 1, 1) and value.size == c))
            if not per_channel or (node.op_type in ("Sub", "Div")
                                   and list(node.input).index(tensor) != 0) \
                    or (node.op_type in ("Mul", "Div") and np.any(value == 0)):
                break
            value = np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (c,))
            if node.op_type == "Mul":
                scale, shift = scale * value, shift * value
            elif node.op_type == "Div":
                scale, shift = scale / value, shift / value
            else:
                shift = shift + (value if node.op_type == "Add" else -value)
            self.done.add(id(node))
            tensor = node.output[0]
        self.shapes[tensor] = self.shapes[self.input]
        if tensor == self.input:
            return tensor, None, None
        return tensor, scale, shift

    def normalization(self, scale, shift):
        """(mean, std) of cnnumpy's normalize: cnnumpy's metadata when it wrote the file,
        else from the graph's x·scale + shift taking pixels in [0, 1] (torchvision's)."""
        stored = self.metadata.get("normalization")
        if isinstance(stored, dict) and {"mean", "std"} <= set(stored):
            return (np.asarray(stored["mean"], np.float32), np.asarray(stored["std"],
                                                                       np.float32))
        if scale is None:
            return None
        std = 1 / scale
        return (-shift * std).astype(np.float32), std.astype(np.float32)

    def convert(self, index: int, node) -> None:
        """One node of the forward pass: an alias, a constant, or a layer (`_Op`)."""
        op = node.op_type
        if op in ALIAS_OPS:
            if len(node.output) > 1 and node.output[1] and node.output[1] in self.consumers:
                raise self.error(node, "its mask output is used; cnnumpy reads evaluation "
                                       "graphs")
            training = self.constant(node.input[2]) if op == "Dropout" \
                and len(node.input) > 2 and node.input[2] else False
            if training is None or np.any(training) \
                    or self.attributes(node).get("is_test", 1) == 0:  # opsets 1 to 6
                raise self.error(node, "its training_mode is not a constant false: it drops "
                                       "values; cnnumpy reads evaluation graphs (export in "
                                       "eval mode)")
            self.aliases[node.output[0]] = self.name(node.input[0])
            return
        if op == "Constant" or op in SHAPE_OPS:
            return  # read in __init__; shapes evaluated when a Reshape needs one (_reshape)
        inputs = self.computed(node)
        if op == "Add" and len(inputs) == 2:
            return self.add(index, node, None, inputs)
        if len(inputs) != 1:
            raise self.error(node, f"expected one input computed from the image, got "
                                   f"{len(inputs)}") if op in _LAYERS or op == "MatMul" \
                else self.unsupported(node)
        if op not in _LAYERS and op != "MatMul":
            raise self.unsupported(node)
        try:
            if op == "MatMul":
                return self.matmul(index, node, inputs[0])
            module = _LAYERS[op](self, node, self.shapes[inputs[0]])
        except OnnxImportError:
            raise
        except ValueError as err:  # a layer refused its hyperparameters
            raise self.error(node, str(err)) from None
        self.add(index, node, module, inputs)

    def add(self, index, node, module, inputs, output=None) -> None:
        output = output or node.output[0]
        shape = self.shapes[inputs[0]]
        if module is None:
            if self.shapes[inputs[1]] != shape:
                raise self.error(node, f"adds shapes {shape} and {self.shapes[inputs[1]]}")
        else:
            try:
                shape = module.output_shape(shape)
            except ValueError as err:
                raise self.error(node, f"{err} (input shape {shape})") from None
        self.shapes[output] = shape
        self.ops[output] = _Op(module, inputs, output, index, node.name or output)

    def matmul(self, index: int, node, x: str) -> None:
        """MatMul by a constant (in, out) matrix, with the bias of an Add right after it."""
        weight = self.constant(node.input[1])
        if weight is None or weight.ndim != 2 or list(node.input).index(x) != 0:
            raise self.error(node, "only x·W with a constant 2-d W is a linear layer")
        bias, output = np.zeros(weight.shape[1], weight.dtype), node.output[0]
        after = self.consumers.get(output, [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [t for t in after[0].input if t != output]
            value = self.constant(other[0]) if len(other) == 1 else None
            if value is not None and value.size == weight.shape[1]:
                bias, output = value.reshape(-1), after[0].output[0]
                self.done.add(id(after[0]))
        self.add(index, node, _linear(weight.T, bias), [x], output)

    # ------------------------------------------------------------------ the tree

    def ancestors(self, tensor: str) -> set[str]:
        seen, stack = set(), [tensor]
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.ops[t].inputs if t in self.ops else [])
        return seen

    def order(self, tensor: str) -> int:
        return self.ops[tensor].index if tensor in self.ops else -1

    def chain(self, start: str, end: str, used: set) -> list[Module]:
        """The modules that compute `end` from `start`, in order (residual blocks for joins)."""
        modules = []
        tensor = end
        while tensor != start:
            op = self.ops.get(tensor)
            if op is None or tensor in used:
                raise OnnxImportError(f"{self.path}: tensor {tensor!r} is not computed on one "
                                      f"path from {start!r}: the graph is not a chain of "
                                      f"layers and residual blocks")
            used.add(tensor)
            join = self.ops.get(op.inputs[0])
            if isinstance(op.module, ReLU) and join is not None and join.module is None \
                    and len(self.consumers.get(join.output, [])) == 1:
                used.add(join.output)  # the Relu after a join: the block's activation
                block, tensor = self.residual(join, used, ReLU())
            elif op.module is None:
                block, tensor = self.residual(op, used, None)
            else:
                block, tensor = op.module, op.inputs[0]
            modules.append(block)
        return modules[::-1]

    def residual(self, join: _Op, used: set, activation) -> tuple[Residual, str]:
        """The block of an Add of two paths, and the tensor where they fork."""
        a, b = join.inputs
        common = self.ancestors(a) & self.ancestors(b)
        fork = max(common, key=self.order)
        main, short = self.chain(fork, a, used), self.chain(fork, b, used)
        if len(short) > len(main):
            main, short = short, main
        if not main:
            raise OnnxImportError(f"{self.path}: node {join.node!r} (Add) adds a tensor to "
                                  f"itself")
        shortcut = Sequential(short) if short else None
        return Residual(_named(main), shortcut, activation), fork


def _named(modules: list[Module]) -> dict[str, Module]:
    """Names by kind and count, as the zoo's: conv1, bn1, relu1, conv2, ..., block1, fc1."""
    counts: dict[str, int] = {}
    named = {}
    for module in modules:
        kind = _KINDS.get(type(module), type(module).__name__.lower())
        counts[kind] = counts.get(kind, 0) + 1
        named[f"{kind}{counts[kind]}"] = module
    return named


_KINDS = {Conv2D: "conv", BatchNorm2D: "bn", BatchNorm1D: "bn", ReLU: "relu", Linear: "fc",
          MaxPool2D: "pool", AvgPool2D: "pool", GlobalAvgPool2D: "pool",
          AdaptiveAvgPool2D: "pool", Flatten: "flatten", Residual: "block", ZeroPad2D: "pad"}


# --------------------------------------------------------------------------- operators


def _check(importer, node, attributes: dict, allowed: dict) -> None:
    """Refuse attributes other than `allowed` {name: value it must have, or None: any}."""
    for key, value in attributes.items():
        if key not in allowed:
            raise importer.error(node, f"attribute {key}={value!r} is not supported")
        want = allowed[key]
        if want is not None and value != want and not (
                isinstance(want, (list, tuple)) and list(value) == list(want)):
            raise importer.error(node, f"attribute {key}={value!r} is not supported "
                                       f"(cnnumpy reads {key}={want!r})")


def _symmetric(importer, node, pads) -> tuple[int, int]:
    pads = list(pads or [0, 0, 0, 0])
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise importer.error(node, f"pads {pads} are not the same on both sides of each axis")
    return pads[0], pads[1]


def _weights(importer, node, position: int, required: bool = True):
    value = importer.constant(node.input[position]) if len(node.input) > position else None
    if value is None and required:
        raise importer.error(node, f"input {position} must be a constant (an initialiser)")
    return value


def _conv(importer, node, shape) -> Conv2D:
    a = importer.attributes(node)
    _check(importer, node, a, {"kernel_shape": None, "strides": None, "pads": None,
                               "dilations": [1, 1], "group": 1, "auto_pad": b"NOTSET"})
    weight = _weights(importer, node, 1)
    bias = _weights(importer, node, 2, required=False)
    if weight.ndim != 4 or weight.shape[1] != shape[0]:
        raise importer.error(node, f"weight of shape {weight.shape} is not a 2-d convolution "
                                   f"of {shape[0]} channels")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise importer.error(node, f"bias of shape {bias.shape} is not one per output channel")
    layer = Conv2D(weight.shape[1], weight.shape[0], weight.shape[2:],
                   tuple(a.get("strides", (1, 1))), _symmetric(importer, node, a.get("pads")),
                   rng=ZeroDraws(), dtype=weight.dtype, init="normal",
                   bias=bias is not None)
    layer.W = weight.copy()
    if bias is not None:
        layer.b = bias.astype(weight.dtype)
    return layer


def _batchnorm(importer, node, shape):
    a = importer.attributes(node)
    _check(importer, node, a, {"epsilon": None, "momentum": None, "training_mode": 0,
                               "spatial": 1})
    gamma, beta, mean, var = (_weights(importer, node, i) for i in (1, 2, 3, 4))
    if len({gamma.shape, beta.shape, mean.shape, var.shape, (shape[0],)}) != 1:
        raise importer.error(node, f"scale, bias, mean and var must hold one value per "
                                   f"channel ({shape[0]}), got shapes {gamma.shape}, "
                                   f"{beta.shape}, {mean.shape}, {var.shape}")
    layer = (BatchNorm2D if len(shape) == 3 else BatchNorm1D)(
        gamma.size, eps=_float32_attribute(a.get("epsilon", 1e-5)),
        momentum=_float32_attribute(1 - a.get("momentum", 0.9)), dtype=gamma.dtype)
    layer.gamma, layer.beta = gamma.copy(), beta.astype(gamma.dtype)
    layer.running_mean, layer.running_var = mean.astype(gamma.dtype), var.astype(gamma.dtype)
    return layer


def _float32_attribute(value: float) -> float:
    """An attribute stored as float32 to its shortest decimal (1e-05, not 9.9999997e-06)."""
    return float(f"{value:.7g}")


def _pool(importer, node, shape):
    a = importer.attributes(node)
    allowed = {"kernel_shape": None, "strides": None, "pads": None, "ceil_mode": 0,
               "auto_pad": b"NOTSET", "dilations": [1, 1], "storage_order": 0}
    padding = _symmetric(importer, node, a.get("pads"))
    if node.op_type == "AveragePool":
        del allowed["dilations"], allowed["storage_order"]
        allowed["count_include_pad"] = None
        if any(padding) and a.get("count_include_pad", 0) != 1:
            raise importer.error(node, f"pads {list(a['pads'])} with count_include_pad=0 "
                                       f"(ONNX's default: the padding is not counted) are not "
                                       f"supported; cnnumpy's AvgPool2D counts the padding "
                                       f"(count_include_pad=1)")
    _check(importer, node, a, allowed)
    if len(node.output) > 1 and node.output[1]:
        raise importer.error(node, "the Indices output is not supported")
    kernel = tuple(a["kernel_shape"])
    layer = MaxPool2D if node.op_type == "MaxPool" else AvgPool2D
    return layer(kernel, tuple(a.get("strides", (1, 1))), padding)


def _global_pool(importer, node, shape):
    return GlobalAvgPool2D()


def _reduce_mean(importer, node, shape):
    """ReduceMean over H and W keeping the axes (the dynamo exporter's global pooling)."""
    a = importer.attributes(node)
    _check(importer, node, a, {"axes": None, "keepdims": 1, "noop_with_empty_axes": None})
    axes = a.get("axes", _weights(importer, node, 1, required=False)
                 if len(node.input) > 1 and node.input[1] else None)
    if len(shape) != 3 or axes is None or sorted(int(v) % 4 for v in np.reshape(axes, -1)) \
            != [2, 3]:
        raise importer.error(node, f"only a mean over H and W of (batch, C, H, W) is "
                                   f"supported, got axes {axes} of (batch, "
                                   f"{', '.join(map(str, shape))})")
    return GlobalAvgPool2D()


def _relu(importer, node, shape):
    return ReLU()


def _flatten(importer, node, shape):
    a = importer.attributes(node)
    _check(importer, node, a, {"axis": 1})
    return Flatten()


def _linear(weight: np.ndarray, bias: np.ndarray) -> Linear:
    """A Linear holding W (out, in) and b (out,)."""
    layer = Linear(weight.shape[1], weight.shape[0], rng=ZeroDraws(),
                   dtype=weight.dtype, init="normal")
    layer.W, layer.b = np.array(weight, order="C"), bias.reshape(-1).astype(weight.dtype)
    return layer


def _gemm(importer, node, shape):
    """Gemm: out = alpha·x·op(B) + beta·C, op(B) = Bᵀ with transB (W is B) else B."""
    a = importer.attributes(node)
    _check(importer, node, a, {"alpha": None, "beta": None, "transA": 0, "transB": None})
    weight = _weights(importer, node, 1)
    bias = _weights(importer, node, 2, required=False)
    weight = weight if a.get("transB", 0) else weight.T
    if bias is None:
        bias = np.zeros(weight.shape[0], weight.dtype)
    if bias.size != weight.shape[0]:
        raise importer.error(node, f"bias of shape {bias.shape} is not one per output")
    return _linear(a.get("alpha", 1.0) * weight if a.get("alpha", 1.0) != 1 else weight,
                   a.get("beta", 1.0) * bias if a.get("beta", 1.0) != 1 else bias)


def _pad(importer, node, shape):
    a = importer.attributes(node)
    _check(importer, node, a, {"mode": b"constant", "pads": None, "value": 0.0})
    pads = a.get("pads")
    if pads is None:
        pads = _weights(importer, node, 1)
    value = _weights(importer, node, 2, required=False) if len(node.input) > 2 \
        and node.input[2] else None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if (value is not None and np.any(value != 0)) or len(pads) != 8 or any(pads[:2]) \
            or any(pads[4:6]) or pads[2:4] != pads[6:8]:
        raise importer.error(node, f"only the same zeros on both sides of H and W are "
                                   f"supported, got pads {pads}")
    return ZeroPad2D(tuple(pads[2:4]))


# Resize's (coordinate_transformation_mode, nearest_mode) pairs that map output pixel i to
# input pixel floor(i / s) for a whole factor s (i = k·s + r, 0 <= r < s): asymmetric takes
# i / s = k + r/s, floored; half_pixel (and pytorch_half_pixel, the same when upsampling)
# takes (i + 0.5) / s - 0.5 = k + ((r + 0.5) / s - 0.5), rounded either way (never a half),
# as half_pixel_symmetric (the same when the output is s times the input);
# tf_half_pixel_for_nn takes (i + 0.5) / s, floored. Checked against ONNX Runtime in the tests.
EXACT_RESIZE = (("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor"),
                *((mode, f"round_prefer_{way}") for mode in
                  ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
                  for way in ("floor", "ceil")))


def _resize(importer, node, shape):
    """Nearest upsampling of H and W by whole factors: AdaptiveAvgPool2D to the larger size
    is the same map (each of its windows is one pixel) for the modes of EXACT_RESIZE."""
    a = importer.attributes(node)
    # cubic_coeff_a, exclude_outside, extrapolation_value: for cubic and tf_crop_and_resize
    _check(importer, node, a, {"mode": b"nearest", "coordinate_transformation_mode": None,
                               "nearest_mode": None, "cubic_coeff_a": None,
                               "exclude_outside": None, "extrapolation_value": None})
    modes = (a.get("coordinate_transformation_mode", b"half_pixel").decode(),
             a.get("nearest_mode", b"round_prefer_floor").decode())
    if modes not in EXACT_RESIZE:
        raise importer.error(node, f"coordinate_transformation_mode={modes[0]!r} with "
                                   f"nearest_mode={modes[1]!r} is not supported; cnnumpy "
                                   f"reads " + ", ".join(f"{c} with {n}"
                                                         for c, n in EXACT_RESIZE))
    scales = _weights(importer, node, 2, required=False) if len(node.input) > 2 else None
    sizes = _weights(importer, node, 3, required=False) if len(node.input) > 3 else None
    if sizes is not None and sizes.size == 4:
        if importer.batch is None or sizes[0] != importer.batch or sizes[1] != shape[0]:
            raise importer.error(node, f"sizes {sizes.tolist()} must keep the input's batch "
                                       f"({importer.batch or 'dynamic: give scales'}) and "
                                       f"channels ({shape[0]}); cnnumpy resizes H and W only")
        out = tuple(int(v) for v in sizes[2:])
    elif scales is not None and scales.size == 4:
        if scales[0] != 1 or scales[1] != 1 or np.any(scales[2:] != np.round(scales[2:])):
            raise importer.error(node, f"scales {scales.tolist()} are not 1 on the batch and "
                                       f"channel axes and whole factors on H and W")
        out = tuple(int(s) * n for s, n in zip(scales[2:], shape[1:]))
    else:
        raise importer.error(node, "needs constant scales or sizes (of the 4 axes)")
    if any(o % n for o, n in zip(out, shape[1:])):
        raise importer.error(node, f"only whole upsampling factors are supported, "
                                   f"{shape[1:]} -> {out}")
    return AdaptiveAvgPool2D(out)


def _reshape(importer, node, shape):
    """A Reshape to (batch, features): Flatten. Its target is evaluated for two batch sizes
    (a constant, or the usual Shape -> Gather -> Unsqueeze -> Concat of torch.onnx.export)."""
    a = importer.attributes(node)
    _check(importer, node, a, {"allowzero": None})
    features = int(np.prod(shape))
    for batch in (3, 5):
        try:
            target = [int(v) for v in _evaluate(importer, node.input[1], batch)]
        except OnnxImportError:
            raise
        except (ValueError, IndexError, TypeError) as err:
            raise importer.error(node, f"its shape cannot be evaluated: {err}") from None
        if a.get("allowzero", 0) and 0 in target:
            raise importer.error(node, f"allowzero=1 with a 0 in the shape {target} (an "
                                       f"empty axis) is not supported")
        resolved = [batch if v == 0 and i == 0 else v for i, v in enumerate(target)]
        if -1 in resolved:
            known = int(np.prod([v for v in resolved if v != -1]))
            resolved[resolved.index(-1)] = batch * features // known if known else -1
        if resolved != [batch, features]:
            raise importer.error(node, f"only a reshape to (batch, features) (a flatten) is "
                                       f"supported, this one makes {target} of "
                                       f"(batch, {', '.join(map(str, shape))})")
    return Flatten()


def _evaluate(importer, tensor: str, batch: int) -> np.ndarray:
    """The value of a shape computation (SHAPE_OPS over constants and tensor shapes), for a
    batch of `batch` images."""
    value = importer.constant(tensor)
    if value is not None:
        return value
    node = importer.producers.get(importer.name(tensor))
    if node is None or node.op_type not in SHAPE_OPS:
        raise OnnxImportError(f"{importer.path}: tensor {tensor!r} is a Reshape's shape but "
                              f"is computed by {node.op_type if node else 'nothing'}; cnnumpy "
                              f"evaluates {', '.join(SHAPE_OPS)} there")
    a = importer.attributes(node)
    if node.op_type == "Shape":
        full = np.array([batch, *importer.shapes[importer.name(node.input[0])]], np.int64)
        return full[a.get("start", 0): a.get("end", len(full))]
    inputs = [_evaluate(importer, t, batch) if t else None for t in node.input]
    if node.op_type == "Gather":
        return np.take(inputs[0], inputs[1], axis=a.get("axis", 0))
    if node.op_type == "Unsqueeze":
        axes = a.get("axes", inputs[1] if len(inputs) > 1 else None)
        return np.expand_dims(inputs[0], tuple(int(v) for v in np.asarray(axes).reshape(-1)))
    if node.op_type == "Squeeze":
        axes = a.get("axes", inputs[1] if len(inputs) > 1 else None)
        return np.squeeze(inputs[0], None if axes is None else
                          tuple(int(v) for v in np.asarray(axes).reshape(-1)))
    if node.op_type == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in inputs], axis=a.get("axis", 0))
    if node.op_type == "Slice":  # of a 1-d shape: ONNX's clamping is Python's slicing
        starts, ends, axes, steps = (a.get(key, inputs[i] if len(inputs) > i else None)
                                     for i, key in enumerate(("starts", "ends", "axes",
                                                              "steps"), 1))
        if inputs[0].ndim != 1 or len(starts) != 1 or (
                axes is not None and [int(v) for v in axes] not in ([0], [-1])):
            raise ValueError(f"cnnumpy slices 1-d shapes on axis 0, not axes "
                             f"{None if axes is None else list(axes)} of {inputs[0].shape}")
        step = 1 if steps is None else int(steps[0])
        return inputs[0][int(starts[0]): int(ends[0]): step]
    return inputs[0]  # Cast


_LAYERS = {"Conv": _conv, "BatchNormalization": _batchnorm, "MaxPool": _pool,
           "AveragePool": _pool, "GlobalAveragePool": _global_pool, "Relu": _relu,
           "Flatten": _flatten, "Gemm": _gemm, "Pad": _pad, "Resize": _resize,
           "Reshape": _reshape, "ReduceMean": _reduce_mean}


# --------------------------------------------------------------------------- as a checkpoint


@dataclass
class OnnxCheckpoint(Checkpoint):
    """An ONNX file where cnnumpy's commands take a checkpoint (`summary`, `evaluate`,
    `predict`, `plot`): the imported model, its input shape and number of classes, and the
    class names, data set and normalisation of cnnumpy's metadata. A file without a
    normalisation (one cnnumpy did not write) is fed pixels / 255, the input of
    torchvision's models before theirs."""

    model: Module | None = None

    def build_model(self):
        """A new copy of the imported model at every call, as a checkpoint's (the explorer
        predicts the test set with one copy in a thread while requests use another)."""
        return copy.deepcopy(self.model)


def onnx_checkpoint(path) -> OnnxCheckpoint:
    """`read_onnx(path)` as a checkpoint (see OnnxCheckpoint); its metadata is checked."""
    read = read_onnx(path)
    num_classes = read.model.output_shape(read.model.input_shape)
    config = read.metadata.get("model") if isinstance(read.metadata.get("model"), dict) \
        else {"name": "onnx"}
    metadata = {"model": {**config, "input_shape": list(read.model.input_shape),
                          "num_classes": int(num_classes[0])}}
    try:
        if read.metadata.get("class_names") is not None:
            metadata["class_names"] = check_class_names(
                "cnnumpy.class_names", read.metadata["class_names"], int(num_classes[0]))
        if read.metadata.get("dataset") is not None:
            metadata["dataset"] = check_text("cnnumpy.dataset", read.metadata["dataset"])
    except ValueError as err:
        raise OnnxImportError(f"{read.path}: metadata {err}") from None
    channels = read.model.input_shape[0]
    mean, std = read.normalization or (np.zeros(channels, np.float32),
                                       np.ones(channels, np.float32))
    if mean.shape != (channels,) or std.shape != (channels,) or not np.all(std > 0):
        raise OnnxImportError(f"{read.path}: the normalisation is not {channels} means and "
                              f"positive stds")
    return OnnxCheckpoint(read.path, metadata, {}, arrays={"normalization/mean": mean,
                                                           "normalization/std": std},
                          model=read.model)
