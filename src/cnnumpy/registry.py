"""The model registry: rebuild a model from its `config()` (what checkpoints store).

    config = model.config()          # {"name": "SimpleCNN", "input_shape": [1, 28, 28], ...}
    same_architecture = build_model(config, rng=np.random.default_rng(0))

A model class is registered under its lower-case name; it must have `config()` returning
{"name": <class name>, **constructor keyword arguments} and accept `rng` and `dtype` keywords.
The zoo's builders (`resnet18`, `vgg16_bn`, ...) are registered under their names too, for
the command line (`cnnumpy train --model resnet20`); the models they build save the config
of their class (`{"name": "CifarResNet", "depth": 20, ...}`). Names are case-insensitive.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import models

MODELS: dict[str, type] = {}


def register_model(cls, name: str | None = None):
    """Add a model class or builder function to the registry under `name` (default its own
    name), lower-cased; usable as a decorator; returns it."""
    MODELS[(name or cls.__name__).lower()] = cls
    return cls


for _model in (models.SimpleCNN, models.AlexNet, models.VGG, models.ResNet, models.CifarResNet,
               models.alexnet, models.vgg11, models.vgg13, models.vgg16, models.vgg19,
               models.vgg11_bn, models.vgg13_bn, models.vgg16_bn, models.vgg19_bn,
               models.resnet18, models.resnet34, models.resnet50,
               models.resnet20, models.resnet32, models.resnet56):
    register_model(_model)


def model_class(name: str) -> type:
    """The registered class for `name` (case-insensitive), or a ValueError listing the choices."""
    cls = MODELS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return cls


def build_model(config: dict, *, rng: np.random.Generator | None = None, dtype=np.float32):
    """A new model of the architecture `config` describes (fresh weights drawn from `rng`)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a model config is a dict with a 'name', got {config!r}")
    cls = model_class(config["name"])
    arguments = {k: v for k, v in config.items() if k != "name"}
    parameters = inspect.signature(cls).parameters.values()
    settings = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(arguments) - (settings - {"rng", "dtype"}))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise ValueError(f"model {config['name']!r} has no setting(s) {unknown}; its settings "
                         f"are {sorted(settings - {'rng', 'dtype'})}")
    arguments = {k: tuple(v) if isinstance(v, list) and k == "input_shape" else v
                 for k, v in arguments.items()}
    try:
        return cls(**arguments, rng=rng, dtype=dtype)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {config['name']!r}: {err}") from None
