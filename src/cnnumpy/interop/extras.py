"""The optional packages of `cnnumpy.interop`, imported when first needed."""

from __future__ import annotations

import importlib

EXTRA = 'pip install "cnnumpy[onnx]"'


def require(package: str):
    """The module `package` (e.g. "onnx", "safetensors.numpy"), or an ImportError saying
    which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        top = package.partition(".")[0]
        raise ImportError(f"this needs the optional package {top!r}: {EXTRA} (onnx, "
                          f"onnxruntime, safetensors)") from None
