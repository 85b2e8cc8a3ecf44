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

A checkpoint is untrusted input: `load_checkpoint` checks it whole before returning it (the
schema and cross-checks of the validation section below), so the rest of cnnumpy can use
what it returns without checking again.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.dataset import CLASS_NAMES, IMAGE_SHAPES
from .data.files import atomic_write
from .data.sources import DATASETS
from .init import INITS
from .optim import OPTIMIZERS
from .registry import build_model, model_class
from .schedules import SCHEDULES, build_schedule
from .validate import (MAX_IMAGE_SIDE, MAX_JSON_DEPTH, check_bool, check_class_names,
                       check_input_shape, check_integer, check_number, check_num_classes,
                       check_text, json_depth, kind)

FORMAT = "cnnumpy-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
_PREFIXES = ("model/", "optimizer/", "extra/")


def _version() -> str:
    from . import __version__  # late import: the package imports this module

    return __version__


def _encode_metadata(metadata: dict) -> np.ndarray:
    """UTF-8 JSON bytes; NaN and infinities are refused (JSON has none, and load refuses
    them), so a checkpoint is never written that cannot be read back."""
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint metadata must be plain JSON without NaN or "
                         f"infinities: {err}") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


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

    The whole file is checked before it is returned: its metadata by `validate_metadata`,
    each array's header against what the metadata implies before the array is read, then the
    arrays' values by `validate_arrays`. Nothing is unpickled or executed. Raises
    FileNotFoundError when there is no file, ValueError (naming the file and the entry) when
    it is truncated, corrupt, not a cnnumpy checkpoint, or disagrees with itself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    with _Archive(path) as archive:
        metadata = archive.metadata()
        expected = validate_metadata(metadata, path)
        unknown = sorted(name for name in archive.names if name.startswith("model/")
                         and name not in expected["checks"])
        if unknown:
            raise archive.error(f"entries {unknown} are not parameters of its architecture")
        stored = {name: archive.array(name, expected["checks"].get(name))
                  for name in archive.names}
    sections: dict[str, dict[str, np.ndarray]] = {prefix: {} for prefix in _PREFIXES}
    for name, array in stored.items():
        prefix = next(p for p in _PREFIXES if name.startswith(p))
        sections[prefix][name[len(prefix):]] = array
    checkpoint = Checkpoint(path, metadata, sections["model/"], sections["optimizer/"],
                            sections["extra/"])
    validate_arrays(checkpoint, expected["model"])
    return checkpoint


# --------------------------------------------------------------------------- reading


class _Archive:
    """The members of a checkpoint's zip archive, read one by one with every size checked
    before it is allocated: the zip entry's declared size against MAX_ARRAY_BYTES and the
    compression ratio deflate allows, the .npy header against the entry's size. Any fault of
    the zip or .npy layers becomes a ValueError naming the file and the entry."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        with open(path, "rb") as file:
            start = file.read(4)
        if start[:2] != b"PK":
            kind = "a single .npy array" if start == b"\x93NUM" else "not a zip archive"
            raise self.error(f"{_NOT_NPZ} ({kind})")
        try:
            self.zip = zipfile.ZipFile(path)
            members = self.zip.infolist()
        except _READ_ERRORS as err:
            raise self.error(f"{_NOT_NPZ} ({_zip_problem(err)})") from None
        if not any(info.filename == METADATA_KEY + ".npy" for info in members):
            raise self.error(f"no {METADATA_KEY} entry (not a cnnumpy checkpoint)")
        self.members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in members:
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or (name != METADATA_KEY and not name.startswith(_PREFIXES)):
                raise self.error(f"unexpected entry {info.filename!r}")
            if name in self.members:
                raise self.error(f"{_NOT_NPZ}: entry {info.filename!r} appears twice")
            if info.flag_bits & 0x1:
                raise self.error(f"{_NOT_NPZ}: entry {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise self.error(f"{_NOT_NPZ}: entry {info.filename!r} uses compression method "
                                 f"{info.compress_type} (only stored or deflated)")
            if info.file_size > info.compress_size * _MAX_DEFLATE_RATIO + 1024:
                raise self.error(f"{_NOT_NPZ}: entry {info.filename!r} declares "
                                 f"{info.file_size} bytes from {info.compress_size} "
                                 f"compressed ones")
            total += info.file_size
            self.members[name] = info
        if total > MAX_ARRAY_BYTES:
            raise self.error(f"its entries declare {total} bytes, more than the {MAX_ARRAY_BYTES}"
                             f" a checkpoint may hold")
        self.names = [name for name in self.members if name != METADATA_KEY]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.zip is not None:
            self.zip.close()
        return False

    def error(self, problem: str) -> ValueError:
        return ValueError(f"checkpoint {self.path}: {problem}")

    def array(self, name: str, check=None) -> np.ndarray:
        """The array of entry `name`; `check(shape, dtype)` may refuse it before it is read."""
        info = self.members[name]
        try:
            with self.zip.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f".npy format version {version} is not supported")
                shape, fortran_order, dtype = read_header(stream)
                if dtype.hasobject:
                    raise ValueError("holds Python objects (never unpickled)")
                size = math.prod(shape) * dtype.itemsize
                if size != info.file_size - stream.tell():
                    raise ValueError(f"its header declares shape {shape} of {dtype} "
                                     f"({size} bytes), the entry holds "
                                     f"{info.file_size - stream.tell()}")
                if check is not None:
                    check(shape, dtype)
                data = stream.read(size)
                if len(data) != size or stream.read(1):
                    raise ValueError("the entry's data does not match its size")
        except _READ_ERRORS as err:
            raise self.error(f"{_NOT_NPZ}: entry {name!r}: {_zip_problem(err)}") from None
        array = np.frombuffer(data, dtype=dtype)
        return array.reshape(shape, order="F" if fortran_order else "C").copy()

    def metadata(self) -> dict:
        info = self.members[METADATA_KEY]
        if info.file_size > MAX_METADATA_BYTES:
            raise self.error(f"its metadata declares {info.file_size} bytes, more than "
                             f"{MAX_METADATA_BYTES}")

        def is_bytes(shape, dtype):
            if dtype != np.uint8 or len(shape) != 1:
                raise ValueError(f"metadata must be 1-D uint8 (JSON text), got {dtype} of "
                                 f"shape {shape}")
        text = self.array(METADATA_KEY, is_bytes).tobytes()
        try:
            metadata = json.loads(text.decode("utf-8"))
        except RecursionError:
            raise self.error(f"metadata is nested more than {MAX_JSON_DEPTH} levels "
                             f"deep") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self.error(f"unreadable metadata: not UTF-8 JSON ({str(err)[:200]})") from None
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise self.error(f"not a cnnumpy checkpoint (format "
                             f"{metadata.get('format') if isinstance(metadata, dict) else None!r})")
        return metadata


_NOT_NPZ = "truncated, corrupt or not a plain NumPy .npz archive"


def _zip_problem(err: Exception) -> str:
    """What a zip or .npy error means, in words (the raw message after them)."""
    text = str(err)
    for raw, meaning in (("Bad CRC-32", "its data fails the zip checksum"),
                         ("File is not a zip", "no zip directory: cut short or not a zip"),
                         ("Bad magic number", "a damaged zip entry header"),
                         ("Truncated file header", "a damaged zip entry header"),
                         ("Error -3", "damaged compressed data")):
        if raw in text:
            return meaning
    return text[:200]
# What the zip, zlib and .npy layers raise on a damaged file.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError, OSError,
                EOFError, KeyError, NotImplementedError, RuntimeError, struct.error,
                UnicodeDecodeError, SyntaxError, TypeError, OverflowError)
_MAX_DEFLATE_RATIO = 1100          # deflate inflates at most about 1032:1
MAX_ARRAY_BYTES = 4 << 30          # the arrays of one checkpoint, all together
MAX_METADATA_BYTES = 16 << 20      # its JSON metadata


# --------------------------------------------------------------------------- validation
#
# The schema of a checkpoint: every metadata field save_checkpoint and fit write, with its
# type and range, and the cross-checks between fields and arrays. Optional fields are checked
# when present (a checkpoint of save_checkpoint alone has no training progress). The model
# is rebuilt from the checked config (its sizes are bounded first), and the stored arrays
# are compared with what it holds: names, shapes, dtypes, finite values.

# Progress fields of a run (train.Progress): counters, then sums.
PROGRESS_COUNTERS = ("epoch", "batch", "step", "correct", "seen")
PROGRESS_FIELDS = (*PROGRESS_COUNTERS, "loss_sum", "seconds", "best_score")
FIT_FIELDS = ("batch_size", "augment", "crop_padding", "flip", "label_smoothing", "train_size")
# Fit settings a run may lack, with the value they had then: runs saved before random
# erasing existed had none. A checkpoint read without them gets them (`_check_run`).
OPTIONAL_FIT_FIELDS = {"random_erasing": 0.0}
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
MAX_EPOCHS = 1_000_000
_FLOAT_DTYPES = ("float32", "float64")


def _dict(name: str, value, required=(), allowed=None) -> dict:
    """`value` as a dict with every key of `required` and no key outside `allowed`."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {kind(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    unknown = sorted(set(value) - set(allowed if allowed is not None else value))
    if unknown:
        raise ValueError(f"{name} has unknown entries {unknown}")
    return value


def validate_metadata(metadata: dict, path=None) -> dict:
    """Check every field of a checkpoint's metadata. Returns {"model": the rebuilt model,
    "checks": {entry name: check(shape, dtype)}} for the arrays the metadata implies, each
    check to be applied to an array's header before its data is read.

    Rebuilds the model of the (checked) config to learn its parameters' names, shapes and
    dtypes; canonicalises the model name (registry names are case-insensitive). Raises a
    ValueError naming the file and the field."""
    try:
        return _check_metadata(metadata)
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: {err}") from None


def _check_metadata(m: dict) -> dict:
    if json_depth(m) > MAX_JSON_DEPTH:
        raise ValueError(f"metadata is nested more than {MAX_JSON_DEPTH} levels deep")
    version = check_integer("format_version", m.get("format_version"), 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"format version {version} is newer than this cnnumpy reads "
                         f"({FORMAT_VERSION}); upgrade cnnumpy")
    check_text("cnnumpy_version", m.get("cnnumpy_version"))
    dtype = np.dtype(check_text("dtype", m.get("dtype"), _FLOAT_DTYPES))
    config = _check_model_config(m)
    input_shape = config.get("input_shape")
    num_classes = config.get("num_classes")
    if m.get("class_names"):
        check_class_names("class_names", m["class_names"], num_classes)
    dataset = m.get("dataset")
    if dataset is not None:
        check_text("dataset", dataset)
        if dataset in IMAGE_SHAPES and input_shape is not None \
                and tuple(input_shape) != IMAGE_SHAPES[dataset]:
            raise ValueError(f"model.input_shape {input_shape} does not fit data set {dataset} "
                             f"({list(IMAGE_SHAPES[dataset])})")
        if dataset in CLASS_NAMES and num_classes is not None \
                and num_classes != len(CLASS_NAMES[dataset]):
            raise ValueError(f"model.num_classes {num_classes} does not fit data set {dataset} "
                             f"({len(CLASS_NAMES[dataset])} classes)")
    if m.get("schedule") is not None:
        build_schedule(m["schedule"])
    if "epochs" in m:
        check_integer("epochs", m["epochs"], 1, MAX_EPOCHS)
    optimizer = m.get("optimizer")
    if optimizer is not None:
        _dict("optimizer", optimizer, ("name", "hyperparameters", "steps"),
              ("name", "hyperparameters", "steps"))
        names = {cls.__name__: cls for cls in OPTIMIZERS.values()}
        check_text("optimizer.name", optimizer["name"], names)
    _check_run(m)
    model = _build(config, dtype)  # the first allocation: everything above is checked
    parameters = getattr(model, "state_dict", model.parameters)()
    checks = {f"model/{name}": _same_as(value) for name, value in parameters.items()}
    if optimizer is not None:
        for slot in names[optimizer["name"]].slots:
            checks.update({f"optimizer/{slot}/{name}": _same_as(value)
                           for name, value in model.parameters().items()})
    if input_shape is not None:
        for which in ("mean", "std"):
            checks[f"extra/normalization/{which}"] = _float_vector(input_shape[0])
    if "fit" in m:
        checks["extra/epoch_order"] = _index_vector(m["fit"]["train_size"])
    return {"model": model, "checks": checks}


def _check_model_config(m: dict) -> dict:
    """m["model"], with a registered name and bounded sizes (nothing built yet)."""
    config = _dict("model", m.get("model"), ("name",))
    model_class(check_text("model.name", config["name"]))
    if "input_shape" in config:
        check_input_shape("model.input_shape", config["input_shape"])
    if "num_classes" in config:
        check_num_classes("model.num_classes", config["num_classes"])
    return config


def _build(config: dict, dtype):
    """The model of a checked config; the config's name made canonical (the registry's
    names are case-insensitive, Checkpoint.load_into compares configs)."""
    try:
        model = build_model(config, rng=np.random.default_rng(0), dtype=dtype)
    except MemoryError:
        raise ValueError(f"model {config} is too large to build") from None
    config["name"] = model.config()["name"]
    return model


def _check_run(m: dict) -> None:
    """The fields `fit` writes, against each other: settings, progress, history, RNG."""
    fit = m.get("fit")
    if fit is not None:
        _dict("fit", fit, FIT_FIELDS, FIT_FIELDS + tuple(OPTIONAL_FIT_FIELDS))
        for key, value in OPTIONAL_FIT_FIELDS.items():
            fit.setdefault(key, value)
        check_integer("fit.batch_size", fit["batch_size"], 1)
        check_integer("fit.train_size", fit["train_size"], 1)
        check_integer("fit.crop_padding", fit["crop_padding"], 0, MAX_IMAGE_SIDE)
        check_bool("fit.augment", fit["augment"])
        check_bool("fit.flip", fit["flip"])
        check_number("fit.label_smoothing", fit["label_smoothing"], 0.0, 1.0)
        check_number("fit.random_erasing", fit["random_erasing"], 0.0, 1.0)
    progress = m.get("progress")
    if progress is not None:
        if fit is None or "epochs" not in m:
            raise ValueError("progress needs the entries fit and epochs")
        _check_progress(progress, fit, m["epochs"])
    if "history" in m:
        _check_history(m["history"], progress)
    if "rng_state" in m:
        _check_rng_state(m["rng_state"])
    if "train_settings" in m:
        _check_train_settings(m["train_settings"], m)


def _check_progress(p: dict, fit: dict, epochs: int) -> None:
    _dict("progress", p, PROGRESS_FIELDS, PROGRESS_FIELDS)
    for key in PROGRESS_COUNTERS:
        check_integer(f"progress.{key}", p[key], 0)
    check_number("progress.loss_sum", p["loss_sum"], 0.0)
    check_number("progress.seconds", p["seconds"], 0.0)
    if p["best_score"] is not None:
        check_number("progress.best_score", p["best_score"], 0.0, 1.0)
    batches = -(-fit["train_size"] // fit["batch_size"])
    check_integer("progress.epoch", p["epoch"], 0, epochs)
    check_integer("progress.batch", p["batch"], 0, batches - 1 if p["epoch"] < epochs else 0)
    step = p["epoch"] * batches + p["batch"]
    if p["step"] != step:
        raise ValueError(f"progress.step must be epoch · batches per epoch + batch = {step}, "
                         f"got {p['step']}")
    seen = min(p["batch"] * fit["batch_size"], fit["train_size"])
    if p["seen"] != seen:
        raise ValueError(f"progress.seen must be the images of the {p['batch']} batches done "
                         f"= {seen}, got {p['seen']}")
    check_integer("progress.correct", p["correct"], 0, seen)
    if p["batch"] == 0 and (p["loss_sum"] or p["seconds"]):
        raise ValueError(f"progress.loss_sum and progress.seconds must be 0 before the first "
                         f"batch of an epoch, got {p['loss_sum']!r} and {p['seconds']!r}")
    if p["epoch"] > 0 and p["best_score"] is None:
        raise ValueError("progress.best_score must be a number after the first epoch")


def _check_optimizer_progress(optimizer: dict, schedule, step: int) -> None:
    """The optimizer has taken at least the run's steps, and its learning rate (and cycled
    momentum) are the schedule's values for the last step taken."""
    check_integer("optimizer.steps", optimizer["steps"], step)
    if schedule is None or step == 0:
        return
    hyperparameters = _dict("optimizer.hyperparameters", optimizer["hyperparameters"])
    planned = build_schedule(schedule)
    expected = {"lr": planned.lr(step - 1), "momentum": planned.momentum(step - 1)}
    found = {"lr": hyperparameters.get("lr"),
             "momentum": hyperparameters.get("momentum",
                                             (hyperparameters.get("betas") or [None])[0])}
    for key, value in expected.items():
        if value is not None and found[key] != value:
            raise ValueError(f"optimizer.hyperparameters {key} {found[key]!r} is not the "
                             f"schedule's {value!r} at step {step - 1}, the last one taken")


def _check_history(history, progress) -> None:
    """One entry per epoch done, numbers >= 0, accuracies at most 1, and the best score of
    the progress the best of the history's (validation accuracy, else training)."""
    epochs_done = None if progress is None else progress["epoch"]
    if not isinstance(history, list):
        raise ValueError(f"history must be a list, got {kind(history)}")
    if epochs_done is not None and len(history) != epochs_done:
        raise ValueError(f"history must hold one entry per epoch done ({epochs_done}), "
                         f"got {len(history)}")
    for number, entry in enumerate(history, start=1):
        _dict(f"history[{number - 1}]", entry, ("epoch",), HISTORY_FIELDS)
        if entry["epoch"] != number or isinstance(entry["epoch"], bool):
            raise ValueError(f"history[{number - 1}].epoch must be {number}, got "
                             f"{entry['epoch']!r}")
        for key, value in entry.items():
            check_number(f"history[{number - 1}].{key}", value, 0.0,
                         1.0 if key.endswith("_acc") else math.inf)
    if history and progress is not None:
        best = max(entry.get("val_acc", entry.get("train_acc", 0.0)) for entry in history)
        if progress["best_score"] != best:
            raise ValueError(f"progress.best_score must be the history's best accuracy "
                             f"{best}, got {progress['best_score']!r}")


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _check_rng_state(state) -> None:
    _dict("rng_state", state, ("bit_generator", "state"))
    name = check_text("rng_state.bit_generator", state["bit_generator"], _BIT_GENERATORS)
    numbers = [value for value in _leaves(state) if not isinstance(value, str)]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**128
               for v in numbers):
        raise ValueError(f"rng_state: the state of {name} is made of integers in [0, 2^128), "
                         f"got {[v for v in numbers if not isinstance(v, int) or v < 0][:3]}")
    try:
        getattr(np.random, name)().state = state
    except (ValueError, TypeError, KeyError, OverflowError):
        raise ValueError(f"rng_state is not a state of {name} (its entries "
                         f"{sorted(state)} do not fit)") from None


def _leaves(tree):
    """Every scalar of a JSON tree."""
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if isinstance(tree, list):
        return [leaf for value in tree for leaf in _leaves(value)]
    return [tree]


# The options of `cnnumpy train` stored for --resume: cli.RECIPE's keys, each with its check.
TRAIN_SETTINGS_FIELDS = {
    "dataset": lambda name, v: check_text(name, v, DATASETS),
    "data_dir": lambda name, v: v is None or check_text(name, v),
    "model": lambda name, v: model_class(check_text(name, v)),
    "init": lambda name, v: check_text(name, v, INITS),
    "epochs": lambda name, v: check_integer(name, v, 1, MAX_EPOCHS),
    "batch_size": lambda name, v: check_integer(name, v, 1),
    "lr": lambda name, v: check_number(name, v, 0.0),
    "optimizer": lambda name, v: check_text(name, v, OPTIMIZERS),
    "momentum": lambda name, v: check_number(name, v, 0.0, 1.0, high_open=True),
    "nesterov": check_bool,
    "schedule": lambda name, v: check_text(name, v, SCHEDULES),
    "weight_decay": lambda name, v: check_number(name, v, 0.0),
    "label_smoothing": lambda name, v: check_number(name, v, 0.0, 1.0),
    "augment": check_bool,
    "random_erasing": lambda name, v: check_number(name, v, 0.0, 1.0),
    "val_split": lambda name, v: check_number(name, v, 0.0, 1.0, high_open=True),
    "seed": lambda name, v: check_integer(name, v, 0),
    "limit": lambda name, v: v is None or check_integer(name, v, 1),
    "input_padding": lambda name, v: check_integer(name, v, 0, MAX_IMAGE_SIDE),
}
# Settings a run may lack: older runs had no `init` and no `random_erasing`, and only
# SimpleCNN has an init; momentum and nesterov are SGD's only; input_padding is VGG's and
# AlexNet's, for images smaller than they need (cli.input_padding).
OPTIONAL_TRAIN_SETTINGS = ("init", "momentum", "nesterov", "input_padding", "random_erasing")


def _check_train_settings(settings, m: dict) -> None:
    checks = TRAIN_SETTINGS_FIELDS
    required = [key for key in checks if key not in OPTIONAL_TRAIN_SETTINGS]
    _dict("train_settings", settings, required, checks)
    for key, value in OPTIONAL_FIT_FIELDS.items():  # the same defaults as the fit's
        settings.setdefault(key, value)
    for key, value in settings.items():
        checks[key](f"train_settings.{key}", value)
    fit = m.get("fit") or {}
    for key, where, value in (("epochs", "epochs", m.get("epochs")),
                              ("batch_size", "fit.batch_size", fit.get("batch_size")),
                              ("augment", "fit.augment", fit.get("augment")),
                              ("label_smoothing", "fit.label_smoothing",
                               fit.get("label_smoothing")),
                              ("random_erasing", "fit.random_erasing",
                               fit.get("random_erasing"))):
        if value is not None and settings[key] != value:
            raise ValueError(f"train_settings.{key} is {settings[key]!r} but {where} is "
                             f"{value!r}")
    optimizer = m.get("optimizer") or {}
    if optimizer and OPTIMIZERS[settings["optimizer"]].__name__ != optimizer.get("name"):
        raise ValueError(f"train_settings.optimizer is {settings['optimizer']!r} but the "
                         f"optimizer state is {optimizer.get('name')!r}")
    stored = optimizer.get("hyperparameters") if isinstance(optimizer, dict) else None
    for key in ("weight_decay", "nesterov"):
        if isinstance(stored, dict) and key in settings and key in stored \
                and settings[key] != stored[key]:
            raise ValueError(f"train_settings.{key} is {settings[key]!r} but the optimizer "
                             f"has {stored[key]!r}")
    schedule = m.get("schedule")
    if isinstance(schedule, dict):
        peak = schedule.get("max_lr", schedule.get("lr"))
        if schedule.get("name") != settings["schedule"] or peak != settings["lr"]:
            raise ValueError(f"train_settings (schedule {settings['schedule']!r}, lr "
                             f"{settings['lr']!r}) disagree with the stored schedule "
                             f"{schedule.get('name')!r} peaking at {peak!r}")
    if settings["limit"] is not None and fit.get("train_size", 0) > settings["limit"]:
        raise ValueError(f"fit.train_size {fit['train_size']} is more than "
                         f"train_settings.limit {settings['limit']}")


def _same_as(reference: np.ndarray):
    """check(shape, dtype) refusing anything but `reference`'s shape and dtype."""
    def check(shape, dtype):
        if dtype != reference.dtype or tuple(shape) != reference.shape:
            raise ValueError(f"must be {reference.dtype} of shape {reference.shape} (as the "
                             f"architecture says), got {dtype} of shape {tuple(shape)}")
    return check


def _float_vector(length: int):
    def check(shape, dtype):
        if dtype not in _FLOAT_DTYPES or tuple(shape) != (length,):
            raise ValueError(f"must be float32 or float64 of shape ({length},) (one per input "
                             f"channel), got {dtype} of shape {tuple(shape)}")
    return check


def _index_vector(length: int):
    def check(shape, dtype):
        if dtype.kind not in "iu" or tuple(shape) != (length,):
            raise ValueError(f"must be integers of shape ({length},) (one per training image), "
                             f"got {dtype} of shape {tuple(shape)}")
    return check


def validate_arrays(checkpoint: Checkpoint, model) -> None:
    """The stored arrays against the metadata: every parameter present and finite, the
    optimizer state loadable into an optimizer of the stored kind, the normalisation finite
    with std > 0, the epoch's order a permutation. ValueError naming the file and entry."""
    m = checkpoint.metadata
    expected = getattr(model, "state_dict", model.parameters)()
    missing = set(expected) - set(checkpoint.parameters)
    if missing:
        buffers = set(getattr(model, "buffers", dict)())
        kinds = [f"the {kind} {sorted(names)}" for kind, names in
                 (("parameters", missing - buffers), ("buffers", missing & buffers)) if names]
        raise checkpoint.error(f"lacks {' and '.join(kinds)} of its architecture")
    for section, arrays in (("model", checkpoint.parameters),
                            ("optimizer", checkpoint.optimizer_arrays),
                            ("extra", checkpoint.arrays)):
        for name, array in arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise checkpoint.error(f"{section}/{name} holds NaN or infinite values")
    if m.get("optimizer") is None and checkpoint.optimizer_arrays:
        raise checkpoint.error("holds optimizer arrays but no optimizer metadata")
    if m.get("optimizer") is not None:
        cls = next(c for c in OPTIMIZERS.values() if c.__name__ == m["optimizer"]["name"])
        try:
            optimizer = cls(model, **_dict("optimizer.hyperparameters",
                                           m["optimizer"]["hyperparameters"]))
            optimizer.load_state_dict({**m["optimizer"], "arrays": checkpoint.optimizer_arrays})
        except (ValueError, TypeError) as err:
            raise checkpoint.error(f"optimizer state does not fit: {err}") from None
        if m.get("progress") is not None:
            try:
                _check_optimizer_progress(m["optimizer"], m.get("schedule"),
                                          m["progress"]["step"])
            except ValueError as err:
                raise checkpoint.error(str(err)) from None
    std = checkpoint.arrays.get("normalization/std")
    if std is not None and not (std > 0).all():
        raise checkpoint.error(f"extra/normalization/std must be > 0, got {std}")
    progress = m.get("progress")
    order = checkpoint.arrays.get("epoch_order")
    if progress is not None and progress["batch"] and order is None:
        raise checkpoint.error("lacks extra/epoch_order, the order of its unfinished epoch")
    if order is not None and not np.array_equal(np.sort(order), np.arange(len(order))):
        raise checkpoint.error("extra/epoch_order must be a permutation of the training "
                               "images' indices")
