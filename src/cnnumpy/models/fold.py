"""BatchNorm folded into the convolution before it, for inference.

In evaluation mode BatchNorm is a fixed affine map per channel, out = s·y + t with
s = γ / √(running_var + eps) and t = β - running_mean·s. Applied to a convolution's output
y = W * x + b, it is a convolution itself:

    W' = s · W  (each output channel's kernel scaled),   b' = s · b + t

so `fold_batchnorm(model)` returns a copy of the model in which every Conv2D directly followed
by a BatchNorm2D (in a Sequential or a residual block's main path) carries W' and b', and
the BatchNorm is replaced by an `Identity`: one pass over the activations less per pair, the
same outputs up to float rounding. Names stay (the BatchNorm's name now holds the Identity).

Inference folds on its own: `forward(x, keep_cache=False)` in evaluation mode runs each such
pair as one convolution, folding at every call (`Conv2D.infer_fused`, where the outputs
outnumber the weights). A folded copy pays that once, and is what `cnnumpy export
--fold-batchnorm` writes to ONNX.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import functional as F
from ..layers import BatchNorm2D, Conv2D, Identity, Module
from .containers import Residual, Sequential


def _folded(conv: Conv2D, bn: BatchNorm2D) -> Conv2D:
    """A copy of `conv` whose output is bn(conv(x)) in evaluation mode."""
    folded = copy.copy(conv)
    folded.param_names = ("W", "b")
    folded.cache = None
    folded.W, folded.b = F.batchnorm_folded(conv.W, conv.b if conv.bias else None, bn.gamma,
                                            bn.beta, bn.running_mean, bn.running_var, bn.eps)
    folded.dW, folded.db = np.zeros_like(folded.W), np.zeros_like(folded.b)
    return folded


def _fold_pairs(names: list[str], get, put) -> None:
    """Fold every (Conv2D, BatchNorm2D) pair that follows each other in `names`."""
    for first, second in zip(names, names[1:]):
        conv, bn = get(first), get(second)
        if isinstance(conv, Conv2D) and type(bn) is BatchNorm2D \
                and bn.num_features == conv.out_channels:
            put(first, _folded(conv, bn))
            put(second, Identity())


def fold_batchnorm(model: Module) -> Module:
    """A copy of `model` for inference with every Conv2D -> BatchNorm2D pair folded into one
    convolution (see the module docstring); the copy is in evaluation mode. The original is
    left as it was."""
    caches = {id(getattr(module, "cache", None)): None for module in model.modules()}
    folded = copy.deepcopy(model, caches)  # without the caches of a last training step
    for module in list(folded.modules()):
        if isinstance(module, Sequential):
            _fold_pairs(list(module.layers), module.layers.__getitem__,
                        module.layers.__setitem__)
        elif isinstance(module, Residual):
            names = [name for name, _ in module.main_path]
            _fold_pairs(names, lambda name: getattr(module, name),
                        lambda name, value: setattr(module, name, value))
    return folded.eval()
