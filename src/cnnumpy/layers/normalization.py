"""Batch normalisation layers (PyTorch's BatchNorm1d/BatchNorm2d semantics)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Layer, _check_positive


class _BatchNorm(Layer):
    """Shared by BatchNorm1D and BatchNorm2D; subclasses set `input_rank` (2 or 4)."""

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    input_rank = 4
    # Where this layer's batch lies in a batch split into parts, and how to sum over them
    # (a `cnnumpy.parallel` split, set for a split pass); None: the batch is whole.
    batch_split = None

    def __init__(self, num_features, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, *, dtype=np.float32):
        self.num_features = _check_positive("num_features", num_features)[0]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        if not isinstance(affine, (bool, np.bool_)):
            raise ValueError(f"affine must be True or False, got {affine!r}")
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)
        c = self.num_features
        self.gamma, self.beta = np.ones(c, dtype=dtype), np.zeros(c, dtype=dtype)
        self.dgamma, self.dbeta = np.zeros_like(self.gamma), np.zeros_like(self.beta)
        if not self.affine:  # γ = 1 and β = 0 stay fixed
            self.param_names = ()
        self.running_mean, self.running_var = np.zeros(c, dtype=dtype), np.ones(c, dtype=dtype)
        self.num_batches_tracked = np.zeros((), dtype=np.int64)

    @property
    def dtype(self):
        return self.running_mean.dtype

    def _convert_own(self, dtype):
        super()._convert_own(dtype)
        if not self.affine:  # the fixed γ = 1, β = 0 are neither parameters nor buffers
            self.gamma, self.beta = self.gamma.astype(dtype), self.beta.astype(dtype)

    def output_shape(self, input_shape):
        if len(input_shape) + 1 != self.input_rank:
            layout = "(N, C, H, W)" if self.input_rank == 4 else "(N, C)"
            raise ValueError(f"expects {self.input_rank}-d input {layout}, got "
                             f"{len(input_shape) + 1}-d")
        if input_shape[0] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got {input_shape[0]}")
        return tuple(input_shape)

    def _total_sum(self):
        """The sum over the parts of a split batch; None for a batch that is whole."""
        split = self.batch_split
        return None if split is None or split.whole else split.sum

    def _check_batch(self, x) -> None:
        samples = len(x) if self.batch_split is None else self.batch_split.total
        if samples * int(np.prod(x.shape[2:], dtype=np.int64)) < 2:
            raise ValueError(f"{type(self).__name__} in training mode needs more than one value "
                             f"per channel to compute a variance, got input shape {x.shape} "
                             f"(use a larger batch, or eval mode)")

    def _forward(self, x, keep_cache=True):
        if not self.training:  # the cache is the input, for the gradients at fixed statistics
            return self._infer(x), ("eval", self._held(x))
        self._check_batch(x)
        if keep_cache and F.fused.enabled:  # the fused cache holds x: a copy unless handed over
            x = self._held(x, channels_last=True)
        out, cache, mean, var = F.batchnorm_forward(x, self.gamma, self.beta, self.eps,
                                                    self._total_sum())
        count = cache.count
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += m * var * (count / (count - 1))  # the unbiased variance
        self.num_batches_tracked += 1
        return out, cache

    def _infer(self, x):
        if self.training:  # the batch's statistics (and running averages), no cache kept
            return self._forward(x, keep_cache=False)[0]
        return F.batchnorm_infer(x, self.gamma, self.beta, self.running_mean, self.running_var,
                                 self.eps)

    def _backward(self, dout, cache, input_grad=True):
        if isinstance(cache[0], str):  # eval mode, a fixed affine map per channel: out = γ·x̂ + β
            x = cache[1]
            shape = (-1,) + (1,) * (dout.ndim - 2)
            inv_std = (1 / np.sqrt(self.running_var + self.eps)).reshape(shape)
            axes = (0,) + tuple(range(2, dout.ndim))
            if self.affine:
                xhat = (x - self.running_mean.reshape(shape)) * inv_std
                self._gradient("gamma")[...] = (dout * xhat).sum(axis=axes)
                self._gradient("beta")[...] = dout.sum(axis=axes)
            return dout * (self.gamma.reshape(shape) * inv_std) if input_grad else None
        dx, dgamma, dbeta = F.batchnorm_backward(dout, cache, self._total_sum())
        if self.affine:
            self._gradient("gamma")[...], self._gradient("beta")[...] = dgamma, dbeta
        return dx if input_grad else None

    def _repr_args(self):
        args = [str(self.num_features)]
        if self.eps != 1e-5:
            args.append(f"eps={self.eps}")
        if self.momentum != 0.1:
            args.append(f"momentum={self.momentum}")
        if not self.affine:
            args.append("affine=False")
        return args


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of images, per channel (Ioffe and Szegedy 2015; PyTorch's rule).

    Training mode, over the N·H·W values of each channel c of the batch:

        μ_c = mean(x[:, c]),   σ²_c = mean((x[:, c] - μ_c)²)            (biased variance)
        out[:, c] = γ_c · (x[:, c] - μ_c) / √(σ²_c + eps) + β_c
        running_mean ← (1 - momentum) · running_mean + momentum · μ
        running_var  ← (1 - momentum) · running_var + momentum · σ² · m / (m - 1)   (unbiased)

    Evaluation mode: the same with running_mean and running_var in place of μ and σ², a fixed
    affine map per channel. Backward (training) is the exact gradient through the batch
    statistics, which depend on every input of the batch. A batch split over threads or
    processes (`cnnumpy.parallel`) is normalised with the statistics of the whole batch.

    Args:
        num_features: C.
        eps: added to the variance (default 1e-5).
        momentum: weight of the new batch in the running averages (default 0.1).
        affine: learn γ and β (default True); False keeps γ = 1, β = 0.
        dtype: float32 (default) or float64.

    Shape: input (N, C, H, W) -> output of the same shape; training needs N·H·W > 1.

    Parameters: gamma (C,) ones, beta (C,) zeros.
    Buffers: running_mean (C,) zeros, running_var (C,) ones, num_batches_tracked () int64.
    """

    input_rank = 4


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of feature vectors: BatchNorm2D's formulas over the N values of
    each feature. Shape: input (N, C) -> (N, C); training needs N > 1."""

    input_rank = 2
