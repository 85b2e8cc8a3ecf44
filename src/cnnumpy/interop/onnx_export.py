"""A cnnumpy model as an ONNX graph, written by walking its module tree.

Each layer becomes the ONNX operator of the same formula (opset 17):

    Conv2D       Conv (pads on both sides)        Linear          Gemm (transB=1: x·Wᵀ + b)
    BatchNorm    BatchNormalization (eval mode)   ReLU            Relu
    MaxPool2D    MaxPool                          AvgPool2D       AveragePool (count_include_pad)
    GlobalAvgPool2D  GlobalAveragePool            Flatten         Flatten (axis 1)
    ZeroPad2D    Pad (constant zeros)             Residual        its paths, then Add (and Relu)
    Dropout, Identity: nothing (evaluation mode is the identity)

AdaptiveAvgPool2D has no operator of its own: at the exported input size it is
GlobalAveragePool (output 1x1), AveragePool with kernel = stride = input / output (the output
divides the input), or a nearest-neighbour Resize (the input divides the output: each output
window is one pixel). The batch axis is dynamic; the image size is the one given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.files import atomic_write_bytes
from ..layers import (AdaptiveAvgPool2D, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dropout,
                      Flatten, Identity, Linear, MaxPool2D, Module, ReLU, ZeroPad2D)
from ..models import Residual, Sequential, fold_batchnorm as fold
from .extras import require

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: read by every ONNX Runtime since 1.13
METADATA_PREFIX = "cnnumpy."


class _Graph:
    """The nodes and initialisers of a graph being written, and its tensor names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.initializers = [], []

    def constant(self, name: str, value: np.ndarray) -> str:
        """An initialiser (float arrays stored as float32, the exported model's dtype)."""
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32, copy=False)
        self.initializers.append((name, np.require(value, requirements="C")))
        return name

    def add_initializers(self, graph) -> None:
        """Write the initialisers straight into the model's graph (VGG's half a gigabyte of
        weights copied once, not once into a list and again into the model)."""
        for name, value in self.initializers:
            tensor = graph.initializer.add()
            tensor.name, tensor.dims[:] = name, value.shape
            tensor.data_type = self.onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            tensor.raw_data = value.tobytes()

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        """Add a node; its output tensor is named after it."""
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name,
                                                     **attributes))
        return name


def _pads(padding) -> list[int]:
    """ONNX's pads (begin of each axis, then end of each axis) of a symmetric (pH, pW)."""
    return [padding[0], padding[1], padding[0], padding[1]]


def _adaptive(graph: _Graph, x: str, name: str, shape, layer: AdaptiveAvgPool2D) -> str:
    """AdaptiveAvgPool2D at the input size `shape` (C, H, W) as one operator (module doc)."""
    (h, w), (oh, ow) = shape[1:], layer.output_size
    if (oh, ow) == (1, 1):
        return graph.node("GlobalAveragePool", [x], name)
    if h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        return graph.node("AveragePool", [x], name, kernel_shape=kernel, strides=kernel)
    if oh % h == 0 and ow % w == 0:
        scales = graph.constant(f"{name}.scales", np.array([1, 1, oh / h, ow / w], np.float32))
        return graph.node("Resize", [x, "", scales], name, mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    raise ValueError(f"{name}: AdaptiveAvgPool2D from {h}x{w} to {oh}x{ow} is no ONNX "
                     f"operator (neither size divides the other); export at an input size "
                     f"where one does")


def _child(name: str, child: str) -> str:
    """The dotted name of a child module ("block1" + "conv1"; the model itself is "")."""
    return f"{name}.{child}" if name else child


def _emit(graph: _Graph, module: Module, x: str, name: str, shape: tuple) -> str:
    """Add the nodes of `module` (named `name`, input tensor `x` of sample shape `shape`);
    returns its output tensor."""
    if isinstance(module, Sequential):
        for child_name, child in module.layers.items():
            x = _emit(graph, child, x, _child(name, child_name), shape)
            shape = child.output_shape(shape)
        return x
    if isinstance(module, Residual):
        out, main_shape = x, shape
        for child_name, child in module.main_path:
            out = _emit(graph, child, out, _child(name, child_name), main_shape)
            main_shape = child.output_shape(main_shape)
        short = x if module.downsample is None else \
            _emit(graph, module.downsample, x, _child(name, "downsample"), shape)
        out = graph.node("Add", [out, short], _child(name, "add"))
        return out if module.relu is None else \
            _emit(graph, module.relu, out, _child(name, "relu"), main_shape)
    name = name or type(module).__name__.lower()  # a lone layer exported as the model
    if isinstance(module, (Dropout, Identity)):
        return x  # the identity in evaluation mode
    if isinstance(module, Conv2D):
        inputs = [x, graph.constant(f"{name}.weight", module.W)]
        if module.bias:
            inputs.append(graph.constant(f"{name}.bias", module.b))
        return graph.node("Conv", inputs, name, kernel_shape=list(module.kernel_size),
                          strides=list(module.stride), pads=_pads(module.padding))
    if isinstance(module, (BatchNorm2D, BatchNorm1D)):
        inputs = [x] + [graph.constant(f"{name}.{key}", value) for key, value in
                        (("weight", module.gamma), ("bias", module.beta),
                         ("running_mean", module.running_mean),
                         ("running_var", module.running_var))]
        return graph.node("BatchNormalization", inputs, name, epsilon=module.eps,
                          momentum=1 - module.momentum)
    if isinstance(module, ReLU):
        return graph.node("Relu", [x], name)
    if isinstance(module, MaxPool2D):
        return graph.node("MaxPool", [x], name, kernel_shape=list(module.pool_size),
                          strides=list(module.stride), pads=_pads(module.padding))
    if isinstance(module, AvgPool2D):
        return graph.node("AveragePool", [x], name, kernel_shape=list(module.pool_size),
                          strides=list(module.stride), pads=_pads(module.padding),
                          count_include_pad=1)
    if isinstance(module, AdaptiveAvgPool2D):
        return _adaptive(graph, x, name, shape, module)
    if isinstance(module, Flatten):
        return graph.node("Flatten", [x], name, axis=1)
    if isinstance(module, Linear):
        return graph.node("Gemm", [x, graph.constant(f"{name}.weight", module.W),
                                   graph.constant(f"{name}.bias", module.b)], name, transB=1)
    if isinstance(module, ZeroPad2D):
        (ph, pw) = module.padding
        pads = graph.constant(f"{name}.pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
        return graph.node("Pad", [x, pads], name, mode="constant")
    raise ValueError(f"{name or 'the model'}: {type(module).__name__} has no ONNX export; "
                     f"exportable: Sequential, Residual, Conv2D, Linear, BatchNorm1D/2D, ReLU, "
                     f"MaxPool2D, AvgPool2D, AdaptiveAvgPool2D, GlobalAvgPool2D, Flatten, "
                     f"ZeroPad2D, Dropout, Identity")


def to_onnx(model: Module, path, input_shape=None, *, fold_batchnorm: bool = False,
            normalization=None, raw_pixels: bool = False, class_names=None,
            dataset: str | None = None) -> Path:
    """Write `model` (in evaluation mode) as an ONNX file that ONNX Runtime runs.

    Args:
        model: any tree of cnnumpy's layers in `Sequential` and `Residual` containers.
        path: the .onnx file to write (atomically: a failed export leaves no file).
        input_shape: (C, H, W) of one image (default: the model's `input_shape`).
        fold_batchnorm: fold each Conv2D -> BatchNorm2D pair into one Conv (see
            `cnnumpy.models.fold_batchnorm`); otherwise BatchNormalization nodes.
        normalization: the (mean, std) per channel the model's inputs were normalised with
            (`cnnumpy.data.normalize`), stored in the file's metadata.
        raw_pixels: put the normalisation in the graph, x·(1 / (255·std)) - mean / std
            (Mul, Add), so that the file takes pixel values 0..255 as floats.
        class_names, dataset: stored in the metadata, for `cnnumpy predict` and `evaluate`.

    The input is "input" (batch, C, H, W) float32 with a dynamic batch, the output "output";
    weights are float32. Metadata (`metadata_props`): cnnumpy.model (the config, when the
    model has one), cnnumpy.input_shape, cnnumpy.normalization, cnnumpy.class_names,
    cnnumpy.dataset. The file is checked by `onnx.checker.check_model` before it is written.
    Returns the path.
    """
    onnx = require("onnx")
    input_shape = tuple(int(v) for v in (input_shape or getattr(model, "input_shape", ())))
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r} (give "
                         f"input_shape= for a model without one)")
    if raw_pixels and normalization is None:
        raise ValueError("raw_pixels puts the normalisation in the graph: give normalization="
                         "(mean, std)")
    output_shape = model.output_shape(input_shape)
    exported = fold(model) if fold_batchnorm else model
    graph = _Graph(onnx)
    x = "input"
    if normalization is not None:
        mean, std = (np.asarray(v, np.float64).reshape(-1) for v in normalization)
        if mean.shape != (input_shape[0],) or std.shape != (input_shape[0],):
            raise ValueError(f"normalization needs {input_shape[0]} means and stds, got "
                             f"{mean.size} and {std.size}")
    if raw_pixels:  # as cnnumpy.data.normalize, in float32: x · (1 / (255 std)) - mean / std
        scale = (1 / (255 * std)).astype(np.float32).reshape(1, -1, 1, 1)
        shift = (-(mean / std)).astype(np.float32).reshape(1, -1, 1, 1)
        x = graph.node("Mul", [x, graph.constant("normalize.scale", scale)], "normalize.mul")
        x = graph.node("Add", [x, graph.constant("normalize.shift", shift)], "normalize.add")
    out = _emit(graph, exported, x, "", input_shape)
    if out == x:  # a model that is the identity still needs a node
        out = graph.node("Identity", [x], "identity")
    graph.nodes.append(onnx.helper.make_node("Identity", [out], ["output"], name="output"))
    helper = onnx.helper
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes, type(model).__name__,
            [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                           ["batch", *input_shape])],
            [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT,
                                           ["batch", *output_shape])]),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name="cnnumpy")
    graph.add_initializers(proto.graph)
    metadata = {"input_shape": list(input_shape)}
    if hasattr(model, "config"):
        metadata["model"] = model.config()
    if normalization is not None:
        metadata["normalization"] = {"mean": mean.tolist(), "std": std.tolist(),
                                     "in_graph": bool(raw_pixels)}
    if class_names is not None:
        metadata["class_names"] = [str(name) for name in class_names]
    if dataset is not None:
        metadata["dataset"] = str(dataset)
    helper.set_model_props(proto, {METADATA_PREFIX + key: json.dumps(value)
                                   for key, value in metadata.items()})
    content = proto.SerializeToString()
    onnx.checker.check_model(content)
    return atomic_write_bytes(path, content)
