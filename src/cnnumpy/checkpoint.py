"""Checkpoints: one `.npz` of arrays plus JSON metadata, written atomically, read without pickle.

Layout of the archive (plain NumPy arrays; `np.load(path, allow_pickle=False)` opens it):

    model/<name>                  every parameter and buffer (`model.state_dict()`), e.g.
                                  model/conv1.W, model/bn1.running_mean
    optimizer/<slot>/<param>      optimizer state, e.g. optimizer/momentum_buffer/conv1.W
    extra/<name>                  any other arrays of the caller (normalisation, epoch order)
    __metadata__                  UTF-8 JSON as a uint8 array: format, cnnumpy version,
                                  model config and dtype, optimizer name/hyperparameters/steps,
                                  and whatever the caller adds (schedule, progress, RNG state,
                                  class names, history, ...)

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then renamed
over the target (`os.replace`, by `cnnumpy.data.files.atomic_write`): a process killed during
a save leaves the previous checkpoint whole. Reading a truncated or corrupt file, or one whose
parameters do not fit the model, raises a ValueError that names the file and the problem.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.files import atomic_write
from .registry import build_model

FORMAT = "cnnumpy-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
_PREFIXES = ("model/", "optimizer/", "extra/")


def _version() -> str:
    from . import __version__  # late import: the package imports this module

    return __version__


def _encode_metadata(metadata: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)


def save_checkpoint(path, model, *, optimizer=None, arrays: dict | None = None,
                    metadata: dict | None = None) -> Path:
    """Save model parameters, optimizer state, extra arrays and metadata to `path` (atomic).

    Args:
        model: a model with `config()` (see `cnnumpy.registry`).
        optimizer: an optimizer from `cnnumpy.optim`, or None.
        arrays: extra arrays by name (stored as extra/<name>).
        metadata: JSON-ready dict merged into the metadata (keys other than the reserved
            format, cnnumpy_version, model, dtype, optimizer).
    Returns the path.
    """
    if not hasattr(model, "config"):
        raise TypeError(f"only models with config() can be saved, got {type(model).__name__}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "cnnumpy_version": _version(),
            "model": model.config(), "dtype": str(model.dtype), "optimizer": None}
    stored = {f"model/{name}": value for name, value in model.state_dict().items()}
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {k: v for k, v in state.items() if k != "arrays"}
        stored.update({f"optimizer/{k}": v for k, v in state["arrays"].items()})
    stored.update({f"extra/{k}": np.asarray(v) for k, v in (arrays or {}).items()})
    reserved = set(meta) & set(metadata or {})
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved for the checkpoint")
    meta.update(metadata or {})
    stored[METADATA_KEY] = _encode_metadata(meta)
    return atomic_write(path, lambda file: np.savez(file, **stored))


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: the file's path, its metadata and arrays by section."""

    path: Path
    metadata: dict
    parameters: dict[str, np.ndarray]   # the model's state dict: parameters and buffers
    optimizer_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def error(self, problem: str) -> ValueError:
        return ValueError(f"checkpoint {self.path}: {problem}")

    def build_model(self):
        """A model of the stored architecture and dtype holding the stored parameters."""
        try:
            model = build_model(self.metadata["model"], rng=np.random.default_rng(0),
                                dtype=np.dtype(self.metadata["dtype"]))
        except (ValueError, TypeError) as err:
            raise self.error(f"cannot rebuild the model: {err}") from None
        self.load_into(model)
        return model

    def load_into(self, model) -> None:
        """Copy the stored parameters and buffers into `model`, which must have the stored
        architecture."""
        config = model.config() if hasattr(model, "config") else None
        if config != self.metadata["model"]:
            raise self.error(f"incompatible architecture: the checkpoint holds "
                             f"{self.metadata['model']}, the model is {config}")
        try:
            model.load_state_dict(self.parameters)
        except (ValueError, TypeError) as err:
            raise self.error(f"incompatible architecture: {err}") from None

    def restore_optimizer(self, optimizer) -> None:
        """Load the stored optimizer state into `optimizer` (of the same type and model)."""
        state = self.metadata.get("optimizer")
        if state is None:
            raise self.error("holds no optimizer state")
        try:
            optimizer.load_state_dict({**state, "arrays": self.optimizer_arrays})
        except (ValueError, TypeError, KeyError) as err:
            raise self.error(f"optimizer state does not fit: {err}") from None

    def require(self, *keys: str) -> None:
        """ValueError naming the file unless every metadata key (dotted: a.b) is present."""
        for key in keys:
            node = self.metadata
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise self.error(f"missing metadata entry {key!r}")
                node = node[part]

    def require_arrays(self, *names: str) -> None:
        missing = [name for name in names if name not in self.arrays]
        if missing:
            raise self.error(f"missing arrays {missing}")


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (no pickle), with clear errors.

    Raises FileNotFoundError when there is no file, ValueError (naming the file) when it is
    truncated, corrupt, not a cnnumpy checkpoint, or lacks entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}  # reads and CRC-checks all
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(f"checkpoint {path}: truncated, corrupt or not a plain NumPy .npz "
                         f"archive ({err})") from None
    if METADATA_KEY not in stored:
        raise ValueError(f"checkpoint {path}: no {METADATA_KEY} entry (not a cnnumpy checkpoint)")
    try:
        metadata = json.loads(stored.pop(METADATA_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path}: unreadable metadata ({err})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: not a cnnumpy checkpoint (format "
                         f"{metadata.get('format') if isinstance(metadata, dict) else None!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path}: format version {metadata['format_version']} is "
                         f"newer than this cnnumpy reads ({FORMAT_VERSION}); upgrade cnnumpy")
    sections: dict[str, dict[str, np.ndarray]] = {prefix: {} for prefix in _PREFIXES}
    for name, array in stored.items():
        prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"checkpoint {path}: unexpected entry {name!r}")
        sections[prefix][name[len(prefix):]] = array
    checkpoint = Checkpoint(path, metadata, sections["model/"], sections["optimizer/"],
                            sections["extra/"])
    checkpoint.require("model.name", "dtype")
    if not checkpoint.parameters:
        raise checkpoint.error("holds no model parameters")
    return checkpoint
