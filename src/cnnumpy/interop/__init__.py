"""Interop: PyTorch state dicts in and out, ONNX out and in.

    state = cn.interop.load_state_file("resnet18.safetensors")   # {torch name: array}
    model = cn.models.resnet18()
    model.load_state_dict(cn.interop.from_torch(state, model))     # names mapped, checked
    cn.interop.to_onnx(model, "m.onnx", input_shape=(3, 224, 224))
    model = cn.interop.from_onnx("m.onnx")                          # a cnnumpy model again

PyTorch and cnnumpy lay out their arrays alike (NCHW images, (C_out, C_in, kH, kW) kernels,
(out, in) linear weights), so a state dict moves by its names alone: `W`/`b` of convolutions
and linears are `weight`/`bias`, BatchNorm's `gamma`/`beta` are `weight`/`bias`, buffers keep
their names. ONNX files are graphs of operators; `to_onnx` writes one by walking the module
tree, `from_onnx` reads one back into `Sequential` and `Residual` trees of cnnumpy layers.

The core of cnnumpy needs only NumPy: `onnx`, `onnxruntime` and `safetensors` are the
optional extra `pip install "cnnumpy[onnx]"`, imported when a function here needs them.
"""

from .state import from_torch, load_state_file, save_state_file, to_torch
from .onnx_export import to_onnx
from .onnx_import import (OnnxCheckpoint, OnnxFile, OnnxImportError, from_onnx,
                          onnx_checkpoint, read_onnx)

__all__ = ["OnnxCheckpoint", "OnnxFile", "OnnxImportError", "from_onnx", "from_torch",
           "load_state_file", "onnx_checkpoint", "read_onnx", "save_state_file", "to_onnx",
           "to_torch"]
