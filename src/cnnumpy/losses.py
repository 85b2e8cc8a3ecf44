"""Softmax cross-entropy on logits: the classification loss, its exact gradient, label smoothing.

For logits z (N, K) and integer labels y (N,), with p = softmax(z) and smoothing ε:

    log p[n, k] = z[n, k] - logsumexp(z[n])         (logsumexp(z) = m + log Σ_k exp(z_k - m),
                                                      m = max_k z_k: no overflow, no log(0))
    q[n, k]     = (1 - ε) · [k == y_n] + ε / K      (the smoothed target, as PyTorch)
    loss        = -1/N · Σ_n Σ_k q[n, k] · log p[n, k]
    dloss/dz    = (p - q) / N

With ε = 0 this is the mean negative log-likelihood of the true classes, PyTorch's
`nn.CrossEntropyLoss(label_smoothing=ε)` with its default mean reduction.

The pure pair is `softmax_cross_entropy(logits, labels, label_smoothing) -> (loss, cache)` and
`softmax_cross_entropy_backward(cache) -> dlogits`; `CrossEntropyLoss` is the thin class.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax along the last axis, stable for any finite logits: z - logsumexp(z)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # largest entry is 0
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis: exp(log_softmax(z)). Same shape and dtype."""
    return np.exp(log_softmax(logits))


def check_label_smoothing(label_smoothing) -> float:
    """The smoothing ε as a float in [0, 1], or a ValueError naming the value received."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def check_logits_and_labels(logits, labels) -> np.ndarray:
    """Validate (N, K) floating logits and (N,) integer labels in [0, K); returns labels as int64."""
    if not isinstance(logits, np.ndarray) or not np.issubdtype(logits.dtype, np.floating):
        got = logits.dtype if isinstance(logits, np.ndarray) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point NumPy array, got {got}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, K) with N, K >= 1, got {logits.shape}")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits {logits.shape}, "
            f"got {labels.shape}"
        )
    num_classes = logits.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"labels must be in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got {bad}")
    return labels.astype(np.int64, copy=False)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,).

    Returns (loss, cache): loss is a scalar of the logits' dtype; cache feeds the backward.
    Kernel: trusts its caller (see `CrossEntropyLoss` for the checks).
    """
    n, k = logits.shape
    log_p = log_softmax(logits)  # (N, K)
    dtype = logits.dtype.type
    nll = -log_p[np.arange(n), labels]  # (N,) -log p of the true class
    if label_smoothing:
        eps = dtype(label_smoothing)
        per_sample = (1 - eps) * nll - eps * log_p.mean(axis=1)
    else:
        per_sample = nll
    loss = per_sample.mean(dtype=logits.dtype)
    return loss, (log_p, labels, label_smoothing)


def softmax_cross_entropy_backward(cache) -> np.ndarray:
    """Gradient of the mean loss w.r.t. the logits: (softmax(z) - q) / N, shape (N, K)."""
    log_p, labels, label_smoothing = cache
    n, k = log_p.shape
    dtype = log_p.dtype.type
    dlogits = np.exp(log_p)  # p
    if label_smoothing:
        eps = dtype(label_smoothing)
        dlogits -= eps / dtype(k)
        dlogits[np.arange(n), labels] -= 1 - eps
    else:
        dlogits[np.arange(n), labels] -= 1
    dlogits /= dtype(n)
    return dlogits


class CrossEntropyLoss:
    """Softmax cross-entropy on logits, mean over the batch (`nn.CrossEntropyLoss` in PyTorch).

        loss = criterion.forward(logits, labels)   # checks shapes, labels and dtype
        dlogits = criterion.backward()             # d loss / d logits, (N, K), logits' dtype

    Args:
        label_smoothing: ε in [0, 1] (default 0): the target puts 1 - ε + ε/K on the true class
            and ε/K on each other class.

    Shape:
        logits (N, K) float, labels (N,) integers in [0, K) -> a scalar loss.
    """

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.cache = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> np.floating:
        labels = check_logits_and_labels(logits, labels)
        loss, self.cache = softmax_cross_entropy(logits, labels, self.label_smoothing)
        return loss

    __call__ = forward

    def backward(self) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        return softmax_cross_entropy_backward(self.cache)

    def __repr__(self) -> str:
        args = f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"CrossEntropyLoss({args})"
