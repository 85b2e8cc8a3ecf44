"""Finite-difference gradient check for any layer or model (float64, central differences)."""

from __future__ import annotations

import copy

import numpy as np


class GradientCheckError(AssertionError):
    """Raised by `gradient_check` when backward disagrees with finite differences."""


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|): 0 when equal, ~1 when unrelated."""
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / scale)


def _numeric_gradient(f, array: np.ndarray, indices: np.ndarray, eps: float) -> np.ndarray:
    """(f(a + eps·e_i) - f(a - eps·e_i)) / (2 eps) for the flat indices i of `array`."""
    grad = np.zeros(indices.size)
    flat = array.reshape(-1)  # a view: array is contiguous
    for out_index, i in enumerate(indices):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        grad[out_index] = (plus - minus) / (2 * eps)
    return grad


def gradient_check(module, x, *, eps: float = 1e-6, tol: float | None = 1e-6,
                   samples: int | None = None, rng: np.random.Generator | None = None) -> float:
    """Compare `module.backward` with central finite differences, in float64.

    The scalar checked is L = Σ forward(x) · g for a fixed random upstream gradient g, so
    backward(g) must return dL/dx and set the gradient of every parameter to dL/dθ. The
    module is copied and converted to float64; the original is left untouched. Every forward
    sees the same buffers (the copy's first), so that a Dropout in training mode draws the
    same mask each time: the function checked is the one of that mask.

    Args:
        module: a layer or model with forward/backward/parameters/gradients.
        x: an input batch (any floating dtype; converted to float64).
        eps: finite-difference step.
        tol: raise `GradientCheckError` when the worst relative error exceeds it
            (None: never raise).
        samples: check at most this many randomly chosen entries of each array (None: all),
            for models too large to check element by element.
        rng: generator for g and the samples (default: seeded with a fixed number, 2718, so
            checks repeat; not 0, the seed a test most often draws its x from: g = x would
            make the check of a normalisation degenerate).

    Returns:
        The worst relative error, max |analytic - numeric| / max magnitude, over the input
        and every parameter.
    """
    rng = np.random.default_rng(2718) if rng is None else rng
    module = copy.deepcopy(module).astype(np.float64)
    x = np.array(x, dtype=np.float64)  # a contiguous copy we may perturb
    buffers = getattr(module, "buffers", dict)
    first = {name: array.copy() for name, array in buffers().items()}

    def forward() -> np.ndarray:
        for name, array in buffers().items():
            array[...] = first[name]
        return module.forward(x)

    upstream = rng.standard_normal(forward().shape)

    def loss() -> float:
        return float(np.sum(forward() * upstream))

    forward()
    analytic = {"input": module.backward(upstream.copy())}
    analytic.update(module.gradients())
    analytic = {name: np.array(grad) for name, grad in analytic.items()}  # keep them

    def error(name: str, array: np.ndarray) -> float:
        indices = np.arange(array.size)
        if samples is not None and samples < array.size:
            indices = rng.choice(array.size, size=samples, replace=False)
        numeric = _numeric_gradient(loss, array, indices, eps)
        return _relative_error(analytic[name].reshape(-1)[indices], numeric)

    errors = {"input": error("input", x)}
    for name, param in module.parameters().items():
        errors[name] = error(name, param)
    worst_name = max(errors, key=errors.get)
    worst = errors[worst_name]
    if tol is not None and not worst <= tol:
        details = ", ".join(f"{name}: {err:.2e}" for name, err in errors.items())
        raise GradientCheckError(
            f"gradient check failed: worst relative error {worst:.2e} in {worst_name} "
            f"(tolerance {tol:.0e}); {details}"
        )
    return worst
