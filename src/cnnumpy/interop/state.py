"""PyTorch state dicts <-> cnnumpy state dicts, and the files that hold them.

PyTorch names a module's arrays `weight` and `bias` whatever the module is; cnnumpy says
what they are in the lesson's letters:

    Conv2D, Linear:  weight -> W,       bias -> b
    BatchNorm:       weight -> gamma,   bias -> beta
    buffers:         running_mean, running_var, num_batches_tracked (the same names)

The arrays themselves need no change: both lay out convolution kernels as
(C_out, C_in, kH, kW), linear weights as (out_features, in_features) and images as NCHW.
Files are read without pickle: `.safetensors` (a JSON header and raw bytes; nothing is
executed) and `.npz` (`np.load(..., allow_pickle=False)`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..data.files import atomic_write, atomic_write_bytes
from ..layers import Module
from ..layers.normalization import _BatchNorm
from .extras import require

TO_TORCH = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
FROM_TORCH = {"weight": "W", "bias": "b"}
FROM_TORCH_BATCHNORM = {"weight": "gamma", "bias": "beta"}
# cnnumpy's buffers PyTorch has no counterpart of: Dropout's random stream
CNNUMPY_ONLY = ("rng_state",)


def _split(name: str) -> tuple[str, str]:
    """"layer1.0.bn1.weight" -> ("layer1.0.bn1", "weight")."""
    prefix, _, last = name.rpartition(".")
    return prefix, last


def _join(prefix: str, last: str) -> str:
    return f"{prefix}.{last}" if prefix else last


def _array(value) -> np.ndarray:
    """A NumPy array of a NumPy array or a CPU torch tensor (detached)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def to_torch(model_or_state) -> dict[str, np.ndarray]:
    """PyTorch's names for a cnnumpy model's state dict (or a state dict by cnnumpy names):
    {"conv1.weight": array, "bn1.weight": array, "bn1.running_mean": array, ...}, copies;
    without cnnumpy's own buffers (Dropout's `rng_state`).
    `torch.nn.Module.load_state_dict({k: torch.from_numpy(v) ...})` takes it as it is."""
    state = model_or_state.state_dict() if isinstance(model_or_state, Module) \
        else dict(model_or_state)
    return {torch_name(name): np.array(_array(value)) for name, value in state.items()
            if _split(name)[1] not in CNNUMPY_ONLY}


def torch_name(name: str) -> str:
    """cnnumpy's name -> PyTorch's: layer1.0.conv1.W -> layer1.0.conv1.weight."""
    prefix, last = _split(name)
    return _join(prefix, TO_TORCH.get(last, last))


def from_torch(state: dict, model: Module | None = None) -> dict[str, np.ndarray]:
    """cnnumpy's names for a PyTorch state dict (arrays or CPU tensors): `conv1.weight` ->
    `conv1.W`, `bn1.weight` -> `bn1.gamma`, buffers unchanged.

    A `weight` is BatchNorm's gamma when the module is a BatchNorm: known from `model` when
    given, else from a `running_mean` beside it. With `model`, cnnumpy's own buffers
    (Dropout's `rng_state`) are added from the model, and every name and shape is checked
    against it, and one ValueError lists, in PyTorch's names, every entry missing,
    unexpected or of the wrong shape.
    """
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict (a dict of arrays by name), got "
                        f"{type(state).__name__}")
    modules = dict(model.named_modules()) if model is not None else {}
    mapped = {}
    for name, value in state.items():
        prefix, last = _split(name)
        batchnorm = isinstance(modules.get(prefix), _BatchNorm) if model is not None \
            else _join(prefix, "running_mean") in state
        table = FROM_TORCH_BATCHNORM if batchnorm else FROM_TORCH
        mapped[_join(prefix, table.get(last, last))] = _array(value)
    if model is not None:
        own = {name: np.array(value) for name, value in model.state_dict().items()
               if _split(name)[1] in CNNUMPY_ONLY and name not in mapped}
        mapped.update(own)  # kept as they are: the model's own Dropout streams
        check_state(mapped, model.state_dict())
    return mapped


def check_state(given: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """One ValueError, in PyTorch's names, listing every missing, unexpected or misshapen
    entry of `given` against `expected` (both by cnnumpy names)."""
    missing = sorted(map(torch_name, set(expected) - set(given)))
    unexpected = sorted(map(torch_name, set(given) - set(expected)))
    shapes = [f"{torch_name(name)}: expected "
              f"{tuple(expected[name].shape)}, got {tuple(given[name].shape)}"
              for name in sorted(set(given) & set(expected))
              if given[name].shape != expected[name].shape]
    problems = ([f"missing {missing}"] if missing else []) \
        + ([f"unexpected {unexpected}"] if unexpected else []) \
        + ([f"wrong shapes ({'; '.join(shapes)})"] if shapes else [])
    if problems:
        raise ValueError("the state dict does not fit the model: " + ", ".join(problems))


# --------------------------------------------------------------------------- files


def load_state_file(path) -> dict[str, np.ndarray]:
    """{name: array} of a `.safetensors` or `.npz` file (no pickle). ValueError naming the
    file when it is not one, or is corrupt or truncated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        safetensors = require("safetensors.numpy")
        try:
            return dict(safetensors.load_file(str(path)))
        except Exception as err:  # the Rust reader raises its own SafetensorError
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    raise ValueError(f"{path}: expected a .safetensors or .npz file")


def save_state_file(path, state: dict) -> Path:
    """Write {name: array} as `.safetensors` or `.npz` (by the suffix), atomically."""
    path = Path(path)
    arrays = {name: np.array(_array(value), order="C") for name, value in state.items()}
    if path.suffix.lower() == ".safetensors":
        return atomic_write_bytes(path, require("safetensors.numpy").save(arrays))
    if path.suffix.lower() == ".npz":
        return atomic_write(path, lambda file: np.savez(file, **arrays))
    raise ValueError(f"{path}: expected a .safetensors or .npz file name")
