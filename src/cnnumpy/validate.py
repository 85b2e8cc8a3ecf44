"""Checks of values that come from outside: arguments, command-line options, file metadata.

Each check returns the value in its plain Python type or raises a ValueError (a TypeError for
a value of the wrong kind where the caller is a program) whose message names the value, says
what is allowed and shows what was given:

    check_number("lr", float("inf"), low=0.0)
    # ValueError: lr must be a finite number >= 0.0, got inf
    check_integer("epochs", 0, low=1)
    # ValueError: epochs must be an integer >= 1, got 0

Limits on sizes taken from files (a checkpoint's input shape, an image's side) are here too,
so a declared size is refused before anything of that size is allocated.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

# Bounds on sizes declared by untrusted input, checked before allocating anything.
MAX_CHANNELS = 64               # channels of an input image
MAX_IMAGE_SIDE = 512            # height or width of an input image, in pixels
MAX_CLASSES = 100_000           # outputs of a classifier
MAX_JSON_DEPTH = 32             # nesting of JSON metadata


def range_text(low, high, high_open: bool) -> str:
    if high == math.inf:
        return f">= {low}"
    return f"in [{low}, {high}{')' if high_open else ']'}"


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf, *,
                 high_open: bool = False) -> float:
    """`value` as a finite float in [low, high] (or [low, high)); ValueError naming it otherwise.

    Booleans, strings, None, NaN and infinities are refused."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        number = float(value)
        ok = math.isfinite(number) and low <= number and (
            number < high if high_open else number <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number {range_text(low, high, high_open)}, "
                         f"got {value!r}")
    return number


def check_integer(name: str, value, low: int = 0, high: float = math.inf) -> int:
    """`value` as an int in [low, high]; ValueError naming it otherwise (bools and floats too)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not ok or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer {range_text(low, high, False)}, "
                         f"got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_text(name: str, value, choices=None) -> str:
    """A non-empty string, one of `choices` when given."""
    if not isinstance(value, str) or not value or (choices is not None and value not in choices):
        allowed = f"one of {sorted(choices)}" if choices is not None else "a non-empty string"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_input_shape(name: str, value) -> tuple[int, int, int]:
    """(C, H, W) of one image: C in [1, MAX_CHANNELS], H and W in [1, MAX_IMAGE_SIDE]."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{name} must be (C, H, W), three integers, got {value!r}")
    channels, height, width = value
    return (check_integer(f"{name} channels", channels, 1, MAX_CHANNELS),
            check_integer(f"{name} height", height, 1, MAX_IMAGE_SIDE),
            check_integer(f"{name} width", width, 1, MAX_IMAGE_SIDE))


def check_num_classes(name: str, value) -> int:
    return check_integer(name, value, 1, MAX_CLASSES)


def check_class_names(name: str, value, count: int | None = None) -> list[str]:
    """A list of non-empty strings, `count` of them when given."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and item for item in value):
        raise ValueError(f"{name} must be a list of non-empty strings, got {_short(value)}")
    if count is not None and len(value) != count:
        raise ValueError(f"{name} must hold {count} names (one per class), got {len(value)}")
    return list(value)


def check_rng(name: str, value) -> np.random.Generator:
    if not isinstance(value, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {kind(value)}")
    return value


def kind(value) -> str:
    """What `value` is, for messages: "None", or its type's name ("str", "list", ...)."""
    return "None" if value is None else type(value).__name__


def json_depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a JSON value (a scalar is 0); stops counting past `limit`."""
    depth, level = 0, [value]
    while level and depth <= limit:
        children = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not children:
            break
        depth, level = depth + 1, children
    return depth


def finite_json(value):
    """`value` with every NaN or infinite float replaced by None: JSON has no NaN, and
    `json.dumps(..., allow_nan=False)` of the result cannot fail on numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
