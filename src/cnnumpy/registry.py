"""The model registry: rebuild a model from its `config()` (what checkpoints store).

    config = model.config()          # {"name": "SimpleCNN", "input_shape": [1, 28, 28], ...}
    same_architecture = build_model(config, rng=np.random.default_rng(0))

A model class is registered under its lower-case name; it must have `config()` returning
{"name": <class name>, **constructor keyword arguments} and accept `rng` and `dtype` keywords.
"""

from __future__ import annotations

import inspect

import numpy as np

from .models import SimpleCNN

MODELS: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Add a model class to the registry (usable as a decorator); returns the class."""
    MODELS[cls.__name__.lower()] = cls
    return cls


register_model(SimpleCNN)


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
    try:
        return cls(**arguments, rng=rng, dtype=dtype)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {config['name']!r}: {err}") from None
