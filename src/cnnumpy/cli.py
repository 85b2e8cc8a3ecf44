"""The `cnnumpy` command (also `python -m cnnumpy`): train, evaluate, predict, summary, plot,
explore.

    cnnumpy train --dataset fashion-mnist --epochs 15 --out runs/fmnist
    cnnumpy train --resume runs/fmnist
    cnnumpy evaluate runs/fmnist/best.npz --json
    cnnumpy predict runs/fmnist/best.npz shoe.png image.npy --top-k 3
    cnnumpy summary --model simplecnn --input-shape 3,32,32     (or: cnnumpy summary CHECKPOINT)
    cnnumpy plot saliency runs/fmnist/best.npz test:0 --out saliency.png
    cnnumpy explore runs/fmnist/best.npz        (a web page at http://127.0.0.1:PORT/)
    cnnumpy convert resnet18.safetensors --model resnet18 --out resnet18.npz
    cnnumpy export runs/fmnist/best.npz --onnx fmnist.onnx    (summary/evaluate/predict/plot/
                                                               explore read .onnx files too)

Each subcommand is a pair of functions registered in `COMMANDS` by `register_command`:
`configure(parser)` adds its arguments, `run(args) -> exit status` does the work. Errors print
one line, `cnnumpy: error: ...`, and exit 1 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .checkpoint import METADATA_KEY, load_checkpoint, save_checkpoint
from . import interop
from . import insight, plots
from .data import DATASETS, load_dataset, normalize, num_batches, train_val_split
from .data.images import load_images
from .distributed import AllRanksError, Group, Solo
from .init import INITS, ZeroDraws
from .optim import build_optimizer
from .registry import MODELS, build_model
from .schedules import SCHEDULES, make_schedule
from .train import LAST_FILE, evaluate, fit, predict_proba
from .validate import (MAX_CLASSES, check_class_names, check_input_shape, check_integer,
                       check_number, check_num_classes, finite_json, range_text)


@dataclass
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, configure, run) -> None:
    """Add a subcommand: `configure(parser)` declares its arguments, `run(args)` returns a status."""
    COMMANDS[name] = Command(help, configure, run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _number(low: float, high: float = math.inf, high_open: bool = False):
    """An argparse type: a finite number in [low, high] (or [low, high))."""
    def parse(text: str) -> float:
        try:
            return check_number("the value", float(text), low, high, high_open=high_open)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number "
                                             f"{range_text(low, high, high_open)}, "
                                             f"got {text}") from None
    return parse


_fraction = _number(0.0, 1.0, high_open=True)


def _seed(text: str) -> int:
    try:
        return check_integer("the value", int(text), 0, 2**63 - 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {text}") from None


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, got an empty string")
    return Path(text)


def _data_dir(value):
    """`value` (a --data-dir, given or stored in a checkpoint) unless it names no folder: a
    folder that does not exist is a mistake, not a place to create and download into."""
    if value is not None and not Path(value).is_dir():
        raise ValueError(f"--data-dir {value}: no such directory")
    return value


# --------------------------------------------------------------------------- train

# The default recipe of `cnnumpy train` (documented in the README): SimpleCNN on Fashion-MNIST,
# SGD with Nesterov momentum and weight decay, a one-cycle schedule, crop + flip augmentation.
# PyTorch's uniform initialisation: with He's, the same recipe ends about 0.3 points lower in
# test accuracy, in cnnumpy and in PyTorch alike (benchmarks/accuracy_vs_torch.py --same-init).
RECIPE = {
    "dataset": "fashion-mnist", "data_dir": None, "model": "simplecnn", "init": "uniform",
    "epochs": 15, "batch_size": 128, "lr": None, "optimizer": "sgd", "momentum": None,
    "nesterov": None, "schedule": "onecycle", "weight_decay": None, "label_smoothing": 0.0,
    "augment": True, "random_erasing": 0.0, "val_split": 0.0, "seed": 0, "limit": None,
}
# What the default recipe changes for other models: {registry name: {setting: value}}; see
# the README's table. The CIFAR ResNets train twice as long at twice the peak lr, with label
# smoothing and random erasing; VGG without BatchNorm and AlexNet need a lower lr (at 0.05
# their loss diverged).
CIFAR_RESNET_RECIPE = {"epochs": 30, "lr": 0.1, "label_smoothing": 0.1, "random_erasing": 0.5}
MODEL_RECIPES = {
    "simplecnn": {},
    "resnet20": CIFAR_RESNET_RECIPE, "resnet32": CIFAR_RESNET_RECIPE,
    "resnet56": CIFAR_RESNET_RECIPE,
    "resnet18": {"lr": 0.1}, "resnet34": {"lr": 0.1}, "resnet50": {"lr": 0.1},
    "vgg11_bn": {}, "vgg13_bn": {}, "vgg16_bn": {}, "vgg19_bn": {},
    "vgg11": {"lr": 0.01}, "vgg13": {"lr": 0.01}, "vgg16": {"lr": 0.01}, "vgg19": {"lr": 0.01},
    "alexnet": {"lr": 0.01},
}
# The smallest images the pools of VGG (five 2x2 pools) and AlexNet allow, by registry name
# prefix (the models' own error says the same, `ZooModel`): a new run zero-pads smaller
# images up to them (the setting `input_padding`, a ZeroPad2D named "pad" before the layers):
# Fashion-MNIST's 28x28 by 2 and 18 pixels, CIFAR-10's 32x32 by 0 and 16.
SMALLEST_IMAGE = {"vgg": 32, "alexnet": 63}


def input_padding(model: str, sample_shape) -> int:
    """Zero pixels around each side of images of `sample_shape` (C, H, W) that make them as
    large as `model` (a registry name) needs; 0 for models that take them as they are."""
    need = next((side for prefix, side in SMALLEST_IMAGE.items() if model.startswith(prefix)), 0)
    return max(0, -(-(need - min(sample_shape[1:])) // 2))


def with_input_padding(settings: dict, sample_shape) -> dict:
    """A new run's settings with the `input_padding` its model needs for images of
    `sample_shape` (none when 0). A resumed run keeps what its checkpoint stored: its model
    was built with that."""
    padding = input_padding(settings["model"], sample_shape)
    return {**settings, "input_padding": padding} if padding else dict(settings)


# Defaults that depend on the optimizer: {optimizer: {setting: value}}.
OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
}
# Options a resumed run may change (the others are stored in the checkpoint).
RESUME_OPTIONS = ("data_dir",)


def configure_train(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dataset", choices=DATASETS, help="data set (default fashion-mnist)")
    add("--data-dir", type=_path, help="folder with the data files (default: the per-user "
                                       "cache, then system folders, then a download)")
    add("--model", choices=sorted(MODEL_RECIPES), help="architecture (default simplecnn); "
        "each has its own defaults, see the README")
    add("--init", choices=INITS[:2], help="initial weights of simplecnn: he (the lesson's) or "
                                        "uniform (PyTorch's default); default uniform")
    add("--epochs", type=_positive_int, help="number of epochs (default 15)")
    add("--batch-size", type=_positive_int, help="images per step (default 128)")
    add("--lr", type=_number(0.0), help="learning rate; the peak for onecycle "
                                 "(default 0.05 for sgd, 1e-3 for adam/adamw)")
    add("--optimizer", choices=sorted(OPTIMIZER_DEFAULTS), help="optimizer (default sgd)")
    add("--momentum", type=_number(0.0, 1.0, high_open=True),
        help="SGD momentum (default 0.9; cycled by onecycle)")
    add("--nesterov", action=argparse.BooleanOptionalAction,
        help="SGD Nesterov momentum (default on)")
    add("--schedule", choices=sorted(SCHEDULES), help="learning-rate schedule (default onecycle)")
    add("--weight-decay", type=_number(0.0),
        help="weight decay (default 5e-4 for sgd, 0 for adam, 1e-2 for adamw)")
    add("--label-smoothing", type=_number(0.0, 1.0),
        help="label smoothing of the loss (default 0)")
    add("--augment", action=argparse.BooleanOptionalAction,
        help="random crop (2 px padding), horizontal flip and the model's random erasing of "
             "training images (default on)")
    add("--random-erasing", type=_number(0.0, 1.0), metavar="P",
        help="with --augment, fill a random rectangle of each training image with the mean "
             "pixel with probability P, as torchvision's RandomErasing (default 0.5 for "
             "the CIFAR ResNets, 0 for the others)")
    add("--val-split", type=_fraction, help="fraction of the training images held out for "
                                            "per-epoch validation (default 0: none)")
    add("--seed", type=_seed, help="seed of initialisation, split, shuffling, augmentation "
                                 "(default 0)")
    add("--limit", type=_positive_int, help="use only the first N training images")
    add("--out", type=_path, help="run folder for checkpoints and metrics "
                                 "(default runs/DATASET, numbered if taken)")
    add("--resume", type=_path, metavar="RUN_DIR",
        help="continue the run in RUN_DIR with its stored settings")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--split", choices=("processes", "threads"), default=None,
        help="how each batch is split over this machine's cores: worker processes forked "
             "from this one (default on Linux) or threads of this process (the default "
             "elsewhere and with --distributed); the results are the same")
    add("--distributed", action="store_true",
        help="train on the ranks of an MPI job, each on its part of every batch: start with "
             "mpirun -n P cnnumpy train --distributed ... (needs the extra `mpi`)")
    add("--collective-timeout", type=float, default=300.0, metavar="SECONDS",
        help="--distributed: stop every rank when one has not answered for SECONDS "
             "(it died or hangs); default 300")


def _train_settings(args) -> dict:
    """The full settings of a new run: given options over the recipe and optimizer defaults."""
    given = {key: getattr(args, key) for key in RECIPE if getattr(args, key) is not None}
    model = given.get("model", RECIPE["model"])
    if model != "simplecnn" and "init" in given:
        raise ValueError(f"--init applies to --model simplecnn only; {model} is initialised "
                         f"as torchvision initialises it")
    settings = {**RECIPE, **MODEL_RECIPES[model], **given}
    if model != "simplecnn":
        del settings["init"]
    if settings["random_erasing"] and not settings["augment"]:
        if "random_erasing" in given:
            raise ValueError("--random-erasing is an augmentation: it needs --augment")
        settings["random_erasing"] = 0.0  # the model's recipe erases only with its crop and flip
    if settings["optimizer"] != "sgd" and "lr" not in given:  # the models' lr is SGD's
        settings["lr"] = None
    defaults = OPTIMIZER_DEFAULTS[settings["optimizer"]]
    stray = sorted(key for key in given if key in ("momentum", "nesterov") and key not in defaults)
    if stray:
        raise ValueError(f"--{stray[0]} applies to --optimizer sgd only, not "
                         f"{settings['optimizer']}")
    for key, value in defaults.items():
        if settings[key] is None:
            settings[key] = value
    return {key: value for key, value in settings.items()
            if value is not None or key in ("data_dir", "limit")}


def _new_run_dir(requested: Path | None, dataset: str) -> Path:
    """The run folder: `requested` if free, else runs/DATASET, runs/DATASET-2, ..."""
    if requested is not None:
        if requested.exists() and not requested.is_dir():
            raise ValueError(f"--out {requested} is a file, not a folder; choose another --out")
        if (requested / LAST_FILE).exists():
            raise ValueError(f"{requested} already holds a run; continue it with --resume "
                             f"{requested} or choose another --out")
        return requested
    candidate, number = Path("runs") / dataset, 1
    while (candidate / LAST_FILE).exists():
        number += 1
        candidate = Path("runs") / f"{dataset}-{number}"
    return candidate


def _training_data(settings: dict, rng: np.random.Generator):
    """(train, val or None) as the settings say; draws the split from rng."""
    data = load_dataset(settings["dataset"], "train", data_dir=_data_dir(settings["data_dir"]))
    if settings["limit"] is not None:
        data = data.subset(slice(0, settings["limit"]))
    if settings["val_split"]:
        return train_val_split(data, settings["val_split"], rng)
    return data, None


def _optimizer_for(settings: dict, model):
    hyperparameters = {key: settings[key] for key in OPTIMIZER_DEFAULTS[settings["optimizer"]]}
    return build_optimizer(settings["optimizer"], model, **hyperparameters)


def run_train(args) -> int:
    if not args.distributed:
        return _train(args, Solo())
    group = Group(timeout=args.collective_timeout)
    if group.size == 1:
        print("--distributed with 1 rank: start several with mpirun -n P", file=sys.stderr)
    try:
        return _train(args, group)
    except AllRanksError:
        if group.rank == 0:
            raise  # every rank stops; rank 0 reports
        return 1
    except Exception as err:  # one rank's error: stop the others now, not at the time limit
        if args.debug:
            import traceback
            traceback.print_exc()
        print(f"cnnumpy: error: rank {group.rank} of {group.size}: "
              f"{str(err) or type(err).__name__}", file=sys.stderr, flush=True)
        group.comm.Abort(1)
        return 1


def _train(args, group) -> int:
    checkpoint = None
    launch = f"mpirun -n {group.size} cnnumpy train --distributed" if args.distributed else \
        "cnnumpy train"
    if args.resume is not None:
        explicit = sorted(f"--{key.replace('_', '-')}" for key in RECIPE
                          if getattr(args, key) is not None and key not in RESUME_OPTIONS)
        if explicit or args.out is not None:
            raise ValueError(f"--resume continues a run with its stored settings; drop "
                             f"{', '.join(explicit + (['--out'] if args.out else []))}")
        run_dir = args.resume
        checkpoint = load_checkpoint(run_dir / LAST_FILE)
        checkpoint.require("train_settings", "progress.epoch", "epochs")
        settings = dict(checkpoint.metadata["train_settings"])
        if args.data_dir is not None:
            settings["data_dir"] = args.data_dir
        if checkpoint.metadata["progress"]["epoch"] >= checkpoint.metadata["epochs"]:
            raise ValueError(f"the run in {run_dir} already finished its "
                             f"{checkpoint.metadata['epochs']} epochs")
    else:
        settings = _train_settings(args)
        run_dir = group.root_decides(lambda: _new_run_dir(args.out, settings["dataset"]),
                                     "rank 0's choice of the run folder")

    rng = np.random.default_rng(settings["seed"])
    train, val = _training_data(settings, rng)
    if checkpoint is None:
        settings = with_input_padding(settings, train.sample_shape)
    test = load_dataset(settings["dataset"], "test", data_dir=settings["data_dir"])
    model = build_model(_model_config(settings, train), rng=rng)
    optimizer = _optimizer_for(settings, model)
    steps_per_epoch = num_batches(train, settings["batch_size"])
    schedule = make_schedule(settings["schedule"], settings["lr"], settings["epochs"],
                             steps_per_epoch)
    ranks = checkpoint.metadata.get("ranks", 1) if checkpoint else group.size
    say = print if group.rank == 0 else (lambda *args, **kwargs: None)
    say(f"{'resuming' if checkpoint else 'training'} {settings['model']} on "
        f"{len(train)} {settings['dataset']} images"
        f"{f' ({len(val)} held out for validation)' if val is not None else ''}"
        f"{f' on {group.size} rank' + 's' * (group.size > 1) if args.distributed else ''}; "
        f"run folder {run_dir}",
        file=sys.stderr, flush=True)
    if ranks != group.size:
        say(f"the run was trained on {ranks} rank(s), it goes on with {group.size}: the same "
            f"batches and augmentation, weights equal up to the order of float sums",
            file=sys.stderr, flush=True)
    history = fit(model, train, val, optimizer=optimizer, epochs=settings["epochs"],
                  batch_size=settings["batch_size"], schedule=schedule,
                  augment=settings["augment"], random_erasing=settings["random_erasing"],
                  label_smoothing=settings["label_smoothing"],
                  rng=rng, run_dir=run_dir, resume=checkpoint, progress=not args.no_progress,
                  processes=None if args.split is None else args.split == "processes",
                  metadata={"train_settings": {**settings, "data_dir": _text(settings["data_dir"])}},
                  communicator=group)
    if history.status == "diverged":
        raise AllRanksError(history.message)  # the summed loss: every rank sees it
    if history.status == "interrupted":
        say(f"resume with: {launch} --resume {run_dir}", file=sys.stderr)
        return 128 + history.signal if history.signal else 1
    metrics = evaluate(model, test, history.normalization, group=group)
    say(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} "
        f"({metrics['count']} test images, final weights in {run_dir / LAST_FILE})")
    return 0


def _model_config(settings: dict, train) -> dict:
    """The registry config of the run's model for the training images."""
    config = {"name": settings["model"], "input_shape": list(train.sample_shape),
              "num_classes": train.num_classes}
    if settings["model"] == "simplecnn":
        config["init"] = settings.get("init", "he")
    if "input_padding" in settings:
        config["input_padding"] = settings["input_padding"]
    return config


def _text(value):
    return None if value is None else str(value)


# --------------------------------------------------------------------------- evaluate


def _load_model_file(path: Path):
    """A checkpoint (.npz) or an ONNX file read as one (see `cnnumpy.interop.OnnxCheckpoint`)."""
    if Path(path).suffix.lower() == ".onnx":
        return interop.onnx_checkpoint(path)
    return load_checkpoint(path)


def _print_json(value) -> None:
    """Print `value` as JSON, NaN and infinities as null: the output is always valid JSON."""
    print(json.dumps(finite_json(value), allow_nan=False))


def _checkpoint_data_dir(checkpoint, given):
    if given is not None:
        return given
    return checkpoint.metadata.get("train_settings", {}).get("data_dir")


def _normalization(checkpoint):
    checkpoint.require_arrays("normalization/mean", "normalization/std")
    return checkpoint.arrays["normalization/mean"], checkpoint.arrays["normalization/std"]


def _add_test_set_options(parser: argparse.ArgumentParser, limit: bool = False) -> None:
    parser.add_argument("--dataset", choices=DATASETS,
                        help="data set whose test split to use (default: the checkpoint's)")
    parser.add_argument("--data-dir", type=_path, help="folder with the data files")
    if limit:
        parser.add_argument("--limit", type=_positive_int, help="use the first N test images")


def _test_set(checkpoint, args):
    """The test split of --dataset (default: the checkpoint's data set), the first --limit
    images when the command has that option."""
    dataset = args.dataset or checkpoint.metadata.get("dataset")
    if dataset is None or dataset not in DATASETS:
        raise ValueError(f"checkpoint {checkpoint.path} names "
                         f"{'no data set' if dataset is None else f'data set {dataset!r}'} "
                         f"cnnumpy can load; pass --dataset (one of {', '.join(DATASETS)})")
    test = load_dataset(dataset, "test",
                        data_dir=_data_dir(_checkpoint_data_dir(checkpoint, args.data_dir)))
    config = checkpoint.metadata["model"]
    if tuple(config.get("input_shape", test.sample_shape)) != test.sample_shape \
            or config.get("num_classes", test.num_classes) < test.num_classes:
        raise ValueError(f"the model of {checkpoint.path} takes {config.get('input_shape')} "
                         f"images into {config.get('num_classes')} classes, the {dataset} test "
                         f"set has {list(test.sample_shape)} images of {test.num_classes} "
                         f"classes; pass the --dataset it was trained on")
    limit = getattr(args, "limit", None)
    return test if limit is None else test.subset(slice(0, limit))


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="a .npz written by cnnumpy train, or an .onnx file")
    _add_test_set_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_evaluate(args) -> int:
    checkpoint = _load_model_file(args.checkpoint)
    model = checkpoint.build_model()
    test = _test_set(checkpoint, args)
    metrics = evaluate(model, test, _normalization(checkpoint))
    if args.json:
        _print_json({**metrics, "dataset": test.name, "checkpoint": str(args.checkpoint)})
    else:
        print(f"{args.checkpoint}: test accuracy {metrics['accuracy']:.4f}, loss "
              f"{metrics['loss']:.4f} on {metrics['count']} {test.name} test images")
    return 0


# --------------------------------------------------------------------------- predict


def configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="a .npz written by cnnumpy train, or an .onnx file")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="PNG/JPEG pictures (needs Pillow) or .npy arrays")
    parser.add_argument("--top-k", type=_positive_int, default=3,
                        help="classes shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON list")


def run_predict(args) -> int:
    checkpoint = _load_model_file(args.checkpoint)
    model = checkpoint.build_model()
    input_shape = checkpoint.metadata["model"]["input_shape"]
    labels, images = load_images(args.files, input_shape)
    probabilities = predict_proba(model, images, _normalization(checkpoint))
    names = checkpoint.metadata.get("class_names") or \
        [str(k) for k in range(probabilities.shape[1])]
    top_k = min(args.top_k, probabilities.shape[1])
    results = []
    for label, row in zip(labels, probabilities):
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append({"file": label, "top": [{"class": names[k], "index": int(k),
                                                 "probability": float(row[k])} for k in best]})
    if args.json:
        _print_json(results)
    for result in results if not args.json else []:
        ranked = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
        print(f"{result['file']}: {ranked}")
    return 0


register_command("train", "train a model (default: SimpleCNN on Fashion-MNIST)",
                 configure_train, run_train)
register_command("evaluate", "test-set accuracy and loss of a checkpoint",
                 configure_evaluate, run_evaluate)
register_command("predict", "top classes of images (PNG/JPEG/.npy) by a checkpoint",
                 configure_predict, run_predict)


# --------------------------------------------------------------------------- summary


def _shape(text: str) -> tuple[int, ...]:
    """"3,32,32" -> (3, 32, 32)."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    try:
        return check_input_shape("C,H,W", shape)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be C,H,W (three positive integers): "
                                         f"{err}") from None


def _class_count(text: str) -> int:
    try:
        return check_num_classes("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_CLASSES}], "
                                         f"got {text}") from None


def configure_summary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", type=Path,
                        help="a .npz written by cnnumpy train, or an .onnx file (or give "
                             "--model)")
    parser.add_argument("--model", choices=sorted(MODELS),
                        help="a fresh model of this architecture instead of a checkpoint")
    parser.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                        help="one input image (default: the checkpoint's, or the --model's "
                             "own: 3,224,224 for the ImageNet models, 3,32,32 for the others)")
    parser.add_argument("--num-classes", type=_class_count,
                        help="outputs of a --model (default: its own, 1000 for the ImageNet "
                             "models, 10 for the others)")
    parser.add_argument("--input-padding", type=int, metavar="P",
                        help="zero pixels around the input of a --model vgg* or alexnet, as "
                             "`cnnumpy train` pads 28x28 images (2 for VGG, 18 for AlexNet)")


def run_summary(args) -> int:
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either a CHECKPOINT or --model, e.g. cnnumpy summary --model "
                         "simplecnn --input-shape 3,32,32")
    if args.checkpoint is not None:
        checkpoint = _load_model_file(args.checkpoint)
        model = checkpoint.build_model()
        shape = args.input_shape or tuple(checkpoint.metadata["model"]["input_shape"])
    else:
        config = {"name": args.model}
        if args.num_classes is not None:
            config["num_classes"] = args.num_classes
        if args.input_shape is not None:
            config["input_shape"] = list(args.input_shape)
        if args.input_padding is not None:
            config["input_padding"] = args.input_padding
        model = build_model(config, rng=np.random.default_rng(0))
        shape = model.input_shape
    print(model.summary(shape))
    return 0


register_command("summary", "layer table: shapes, parameters, MACs, receptive fields",
                 configure_summary, run_summary)


# --------------------------------------------------------------------------- plot


def _class_names(checkpoint, count: int) -> list[str]:
    return checkpoint.metadata.get("class_names") or [str(k) for k in range(count)]


def _one_image(checkpoint, args) -> np.ndarray:
    """The IMAGE argument as the model sees it: (C, H, W) float, normalised like training.

    IMAGE is a picture or .npy file, or test:N for image N of the test set."""
    input_shape = checkpoint.metadata["model"]["input_shape"]
    if args.image.startswith("test:"):
        index = args.image[len("test:"):]
        if not index.isdigit():
            raise ValueError(f"test:N takes an image number, got {args.image}")
        test = _test_set(checkpoint, args)
        if int(index) >= len(test):
            raise ValueError(f"{args.image}: the test set has {len(test)} images")
        pixels = test.images[int(index): int(index) + 1]
    else:
        _, pixels = load_images([args.image], input_shape)
        if len(pixels) != 1:
            raise ValueError(f"{args.image} holds {len(pixels)} images; give one")
    return normalize(pixels, *_normalization(checkpoint))[0]


def _plot_curves(args) -> Path:
    return plots.learning_curves(insight.read_metrics(args.run_dir), args.out)


def _plot_filters(args) -> Path:
    return plots.first_layer_filters(_load_model_file(args.checkpoint).build_model(), args.out)


def _plot_features(args) -> Path:
    checkpoint = _load_model_file(args.checkpoint)
    return plots.feature_maps(checkpoint.build_model(), _one_image(checkpoint, args), args.out)


def _test_predictions(args):
    checkpoint = _load_model_file(args.checkpoint)
    test = _test_set(checkpoint, args)
    probabilities = predict_proba(checkpoint.build_model(), test.images,
                                  _normalization(checkpoint))
    return test, probabilities, _class_names(checkpoint, probabilities.shape[1])


def _plot_confusion(args) -> Path:
    test, probabilities, names = _test_predictions(args)
    return plots.confusion_matrix_plot(test.labels, probabilities.argmax(axis=1), names,
                                       args.out)


def _plot_mistakes(args) -> Path:
    test, probabilities, names = _test_predictions(args)
    return plots.confident_mistakes(test.images, test.labels, probabilities, names, args.out,
                                    count=args.count)


def _plot_saliency(args) -> Path:
    checkpoint = _load_model_file(args.checkpoint)
    model = checkpoint.build_model()
    input_shape = checkpoint.metadata["model"]["input_shape"]
    names = _class_names(checkpoint, model.output_shape(input_shape)[0])
    target = args.target
    if target is not None and not target.isdigit():
        if target not in names:
            raise ValueError(f"--target {target!r} is not a class; the classes are {names}")
        target = names.index(target)
    return plots.saliency_map(model, _one_image(checkpoint, args), args.out,
                              target=None if target is None else int(target), class_names=names)


def _unit(text: str) -> tuple[int, int]:
    try:
        row, column = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be ROW,COLUMN, got {text}") from None
    return row, column


def _plot_receptive_field(args) -> Path:
    checkpoint = _load_model_file(args.checkpoint)
    return plots.receptive_field_plot(checkpoint.build_model(), _one_image(checkpoint, args),
                                      args.out, layer=args.layer, unit=args.unit,
                                      channel=args.channel)


# kind -> (help, its positional arguments, the function that draws it and returns the path)
PLOTS = {
    "curves": ("loss, accuracy and lr per epoch of a run", ("run_dir",), _plot_curves),
    "filters": ("the first convolution's kernels", ("checkpoint",), _plot_filters),
    "features": ("each convolution's maps for one image", ("checkpoint", "image"),
                 _plot_features),
    "confusion": ("confusion matrix on the test set", ("checkpoint",), _plot_confusion),
    "mistakes": ("the most confidently misclassified test images", ("checkpoint",),
                 _plot_mistakes),
    "saliency": ("|d class score / d pixel| for one image", ("checkpoint", "image"),
                 _plot_saliency),
    "receptive-field": ("the input pixels one unit sees, on one image",
                        ("checkpoint", "image"), _plot_receptive_field),
}
_POSITIONAL_HELP = {
    "run_dir": ("RUN_DIR", "a run folder of cnnumpy train (holds metrics.jsonl)"),
    "checkpoint": ("CHECKPOINT", "a .npz written by cnnumpy train, or an .onnx file"),
    "image": ("IMAGE", "a PNG/JPEG picture, a .npy array, or test:N for test image N"),
}


def configure_plot(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (help_text, positionals, function) in PLOTS.items():
        sub = kinds.add_parser(kind, help=help_text, description=help_text)
        for name in positionals:
            metavar, text = _POSITIONAL_HELP[name]
            sub.add_argument(name, metavar=metavar, type=str if name == "image" else Path,
                             help=text)
        sub.add_argument("--out", type=_path, default=Path(f"{kind}.png"),
                         help=f"PNG file to write (default {kind}.png)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks of errors")
        if "image" in positionals or kind in ("confusion", "mistakes"):
            _add_test_set_options(sub, limit=True)
        if kind == "mistakes":
            sub.add_argument("--count", type=_positive_int, default=16,
                             help="images shown (default 16)")
        if kind == "saliency":
            sub.add_argument("--target", help="class (index or name) whose score to explain "
                                              "(default: the predicted class)")
        if kind == "receptive-field":
            sub.add_argument("--layer", help="layer name (default: the last conv or pool)")
            sub.add_argument("--unit", type=_unit, metavar="ROW,COL",
                             help="unit of the layer's output (default: the centre)")
            sub.add_argument("--channel", type=int,
                             help="map of the unit (default: the sum over all maps)")
        sub.set_defaults(plot=function)


def run_plot(args) -> int:
    print(args.plot(args))
    return 0


register_command("plot", "PNG figures: curves, filters, features, confusion, mistakes, "
                         "saliency, receptive-field", configure_plot, run_plot)


# --------------------------------------------------------------------------- explore


def _port(text: str) -> int:
    try:
        return check_integer("the value", int(text), 0, 65535)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number in [0, 65535], "
                                         f"got {text}") from None


def configure_explore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="a .npz written by cnnumpy train or convert, or an .onnx file")
    parser.add_argument("--port", type=_port, default=0,
                        help="TCP port (default 0: a free one; the URL is printed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; "
                             "another address lets other machines in, with a warning)")
    _add_test_set_options(parser, limit=True)


def explorer_for(args):
    """The `cnnumpy.explore.Explorer` of the checkpoint and test set that `args` name."""
    from . import explore  # Flask, only when exploring

    checkpoint = _load_model_file(args.checkpoint)
    return explore.Explorer(
        checkpoint.build_model, _normalization(checkpoint), _test_set(checkpoint, args),
        checkpoint.metadata.get("class_names"), run_dir=args.checkpoint.parent,
        input_shape=checkpoint.metadata["model"]["input_shape"])


def run_explore(args) -> int:
    from .explore import serve

    return serve(explorer_for(args), args.host, args.port)


register_command("explore", "a local web page of what a checkpoint's network sees (needs "
                            "the extra `web`)", configure_explore, run_explore)


# --------------------------------------------------------------------------- interop

# torchvision's normalisation of ImageNet images: what its pretrained weights expect
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _channel_values(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be numbers separated by commas, got "
                                         f"{text}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be finite numbers, got {text}")
    return values


def _new_file(path: Path, force: bool) -> None:
    """Refuse to replace an existing file (something saved would be lost) without --force."""
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to replace it")


def configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="FILE",
                        help="a PyTorch state dict saved as .safetensors or .npz")
    parser.add_argument("--model", required=True, choices=sorted(MODELS),
                        help="the cnnumpy architecture of the weights (torchvision's names)")
    parser.add_argument("--out", required=True, type=_path,
                        help="the checkpoint to write (.npz)")
    parser.add_argument("--num-classes", type=_class_count,
                        help="outputs of the model (default: the model's own, 1000 for the "
                             "ImageNet models)")
    parser.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                        help="one input image (default: the model's own)")
    parser.add_argument("--mean", type=_channel_values, metavar="M1,M2,...",
                        help="normalisation mean per channel of pixels / 255 (default: "
                             "ImageNet's for 3 channels, else 0)")
    parser.add_argument("--std", type=_channel_values, metavar="S1,S2,...",
                        help="normalisation std per channel (default: ImageNet's for 3 "
                             "channels, else 1)")
    parser.add_argument("--class-names", type=Path, metavar="TEXT_FILE",
                        help="class names, one a line")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run_convert(args) -> int:
    if args.out.suffix.lower() != ".npz":
        raise ValueError(f"--out must be a .npz checkpoint, got {args.out}")
    _new_file(args.out, args.force)
    config = {"name": args.model}
    if args.num_classes is not None:
        config["num_classes"] = args.num_classes
    if args.input_shape is not None:
        config["input_shape"] = list(args.input_shape)
    state = interop.load_state_file(args.source)
    if METADATA_KEY in state:
        raise ValueError(f"{args.source} is a cnnumpy checkpoint already (convert reads "
                         f"PyTorch state dicts); give it to the other commands as it is")
    model = build_model(config, rng=ZeroDraws())  # every weight is set from the file next
    model.load_state_dict(interop.from_torch(state, model))
    channels = model.input_shape[0]
    imagenet = channels == 3
    mean = np.array(args.mean or (IMAGENET_MEAN if imagenet else (0.0,) * channels))
    std = np.array(args.std or (IMAGENET_STD if imagenet else (1.0,) * channels))
    if mean.shape != (channels,) or std.shape != (channels,) or not np.all(std > 0):
        raise ValueError(f"--mean and --std need {channels} values each (stds positive), got "
                         f"{mean.size} and {std.size}")
    metadata = {}
    if args.class_names is not None:
        names = [line.strip() for line in args.class_names.read_text().splitlines()
                 if line.strip()]
        metadata["class_names"] = check_class_names("--class-names", names,
                                                    model.output_shape(model.input_shape)[0])
    save_checkpoint(args.out, model, metadata=metadata,
                    arrays={"normalization/mean": mean.astype(np.float32),
                            "normalization/std": std.astype(np.float32)})
    print(f"{args.out}: {args.model} with the {len(state)} arrays of {args.source}")
    return 0


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a .npz written by cnnumpy train or "
                                                      "convert")
    parser.add_argument("--onnx", required=True, type=_path, metavar="OUT.onnx",
                        help="the ONNX file to write")
    parser.add_argument("--fold-batchnorm", action="store_true",
                        help="fold BatchNorm into the convolution before it")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="put the normalisation in the graph: the file takes pixel values "
                             "0..255 (floats)")
    parser.add_argument("--force", action="store_true", help="replace an existing --onnx")


def run_export(args) -> int:
    if args.onnx.suffix.lower() != ".onnx":
        raise ValueError(f"--onnx must name a .onnx file, got {args.onnx}")
    _new_file(args.onnx, args.force)
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.build_model()
    normalization = _normalization(checkpoint) if "normalization/mean" in checkpoint.arrays \
        else None
    interop.to_onnx(model, args.onnx, checkpoint.metadata["model"]["input_shape"],
                    fold_batchnorm=args.fold_batchnorm, normalization=normalization,
                    raw_pixels=args.raw_pixels,
                    class_names=checkpoint.metadata.get("class_names") or None,
                    dataset=checkpoint.metadata.get("dataset"))
    print(f"{args.onnx}: {checkpoint.metadata['model']['name']} as ONNX (opset "
          f"{interop.onnx_export.OPSET}{', raw pixels' if args.raw_pixels else ''})")
    return 0


register_command("convert", "a PyTorch state dict (.safetensors/.npz) as a cnnumpy checkpoint",
                 configure_convert, run_convert)
register_command("export", "a checkpoint as an ONNX file (for ONNX Runtime)",
                 configure_export, run_export)


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnumpy", description="Convolutional neural networks in plain NumPy.")
    parser.add_argument("--version", action="version", version=f"cnnumpy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks of errors")
        command.configure(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("cnnumpy: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for people; --debug for the traceback
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(f"cnnumpy: error: {message}", file=sys.stderr)
        return 1
