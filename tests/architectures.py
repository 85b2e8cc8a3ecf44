"""Helpers shared by the tests of the architectures: small float64 layers, cheap construction
of big models, torchvision's definitions without its C++ extension, and PyTorch's names for
cnnumpy's state-dict entries."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cnnumpy as cn


def conv64(c_in, c_out, k, stride=1, padding=0, *, seed=0, bias=True):
    """A float64 Conv2D with weights drawn from `seed`."""
    return cn.Conv2D(c_in, c_out, k, stride, padding, rng=np.random.default_rng(seed),
                     dtype=np.float64, bias=bias)


def randomize(model, rng) -> None:
    """Fresh weights for a model built with ZeroDraws: N(0, 2/fan_in) weights, small random
    biases, BatchNorm γ around 1 and β around 0."""
    for name, param in model.parameters().items():
        kind = name.rpartition(".")[2]
        if kind == "W":
            fan_in = int(np.prod(param.shape[1:]))
            param[...] = rng.standard_normal(param.shape, param.dtype)  # float32: cheaper
            param *= np.sqrt(2 / fan_in)
        elif kind == "gamma":
            param[...] = rng.uniform(0.5, 1.5, param.shape)
        else:
            param[...] = rng.standard_normal(param.shape) * 0.1


def import_torchvision_models():
    """torchvision.models without torchvision's __init__ (whose C++ operators this torch build
    lacks): an empty package module pointing at the installed sources. Skips without them."""
    torch = pytest.importorskip("torch")
    if "torchvision" not in sys.modules:
        location = Path(torch.__file__).parent.parent / "torchvision"
        if not (location / "models").is_dir():
            pytest.skip("torchvision is not installed")
        package = types.ModuleType("torchvision")
        package.__path__ = [str(location)]
        sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models


TORCH_NAMES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}


def torch_name(name: str) -> str:
    """cnnumpy's state-dict name -> PyTorch's: layer1.0.conv1.W -> layer1.0.conv1.weight
    (buffers keep their names)."""
    prefix, _, last = name.rpartition(".")
    last = TORCH_NAMES.get(last, last)
    return f"{prefix}.{last}" if prefix else last
