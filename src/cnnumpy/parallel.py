"""Data parallelism over the cores: the parts of a batch through replicas of one model, at once.

NumPy runs its elementwise work (ReLU, pooling, im2col, col2im, the optimizer's updates) on
one core; only BLAS's matrix products spread over the others. `BatchParallel` gives every
core a part of the batch instead: each part goes through its own replica of the model in its
own thread (NumPy releases the GIL in its loops and products), with BLAS held to one thread
meanwhile. Replicas share the model's parameter arrays and keep their own caches and
gradients. A training pass scales each part's loss gradient by the part's share of the batch
and sums the replicas' parameter gradients into the model's, which gives the gradient of the
mean loss over the whole batch, as one pass over it would (up to the order of float sums).

    passes = BatchParallel(model)                            # one part per available CPU
    loss, logits = passes.forward_backward(x, labels, criterion)   # then optimizer.step()
    logits = passes.forward(x)                               # inference, no caches

BLAS threads are set through threadpoolctl (the optional extra `threads`); without it, or
with one CPU, or for a batch of one, the batch goes through the model whole.
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # the optional extra is not installed: no data parallelism
    ThreadpoolController = None

_controller = None
_executor: ThreadPoolExecutor | None = None
_executor_threads = 0
_parallel_region = threading.Lock()  # one split pass at a time: BLAS's thread limit is global


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded, or None (no threadpoolctl, or no
    BLAS it knows: then the threads of the products cannot be held to one)."""
    global _controller
    if _controller is None and ThreadpoolController is not None:
        blas = ThreadpoolController().select(user_api="blas")
        _controller = blas if blas.info() else False
    return _controller or None


def _threads(workers: int) -> ThreadPoolExecutor:
    """One pool of threads for every BatchParallel, grown when more workers are wanted."""
    global _executor, _executor_threads
    if _executor is None or _executor_threads < workers:
        _executor = ThreadPoolExecutor(workers, thread_name_prefix="cnnumpy")
        _executor_threads = workers
    return _executor


def batch_parts(n: int, parts: int) -> list[slice]:
    """At most `parts` slices of near-equal length covering range(n), none empty."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


class BatchParallel:
    """Forward and backward passes of `model` with the batch split over `workers` threads.

    Args:
        model: a cnnumpy module (its layers keep the caches of a whole-batch pass only when
            the batch is not split).
        workers: parts per batch; default the available CPUs. 1 runs the model whole.
    """

    def __init__(self, model, workers: int | None = None):
        workers = available_cpus() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.model = model
        self.workers = workers if _blas_controller() is not None else 1
        self._replicas: list = []
        self._made_for = None  # the model's structure the replicas were made for

    def _structure(self) -> tuple:
        """What the replicas copy besides the parameter values: the layer objects, their
        settings (strides, sizes...), the parameter arrays, the model's ReLU/pool order."""
        def settings(layer):
            return tuple((key, value) for key, value in vars(layer).items()
                         if key not in ("cache", "training") and not isinstance(value, np.ndarray))

        layers = tuple((id(layer), settings(layer)) for _, layer in self.model.named_layers())
        params = tuple(id(array) for array in self.model.parameters().values())
        return layers, params, getattr(self.model, "commute_relu_pool", None)

    def _replicas_for(self, count: int) -> list:
        """`count` replicas: the model's parameter arrays, their own caches and gradients.
        Made again when the model's structure changed (layers replaced or reconfigured,
        parameter arrays replaced, e.g. by astype)."""
        structure = self._structure()
        if structure != self._made_for or len(self._replicas) < count:
            self._made_for = structure
            shared = {id(array): array for array in self.model.parameters().values()}
            for _, layer in self.model.named_layers():
                shared[id(layer.cache)] = None  # a copy needs no caches
            self._replicas = [copy.deepcopy(self.model, dict(shared)) for _ in range(count)]
        for replica in self._replicas[:count]:
            replica.train(self.model.training)
        return self._replicas[:count]

    def _run(self, work, n: int) -> list:
        """work(replica, part) for the parts of range(n), in parallel, BLAS one-threaded:
        the first part in the calling thread, the others in pool threads."""
        parts = batch_parts(n, self.workers)
        with _parallel_region, _blas_controller().limit(limits=1, user_api="blas"):
            replicas = self._replicas_for(len(parts))
            others = [_threads(len(parts) - 1).submit(work, replica, part)
                      for replica, part in zip(replicas[1:], parts[1:])]
            try:
                first = work(replicas[0], parts[0])
            finally:  # the other parts use the replicas: never return before they all end
                wait(others)
        return [first, *(other.result() for other in others)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's output for x, without caches (inference)."""
        if self.workers == 1 or len(x) < 2:
            return self.model.forward(x, keep_cache=False)
        outputs = self._run(lambda replica, part: replica.forward(x[part], keep_cache=False),
                            len(x))
        return np.concatenate(outputs)

    def forward_backward(self, x: np.ndarray, labels: np.ndarray, criterion):
        """(mean loss over the batch, logits), and the model's parameter gradients of that
        mean loss. `criterion` is e.g. `CrossEntropyLoss()` (each part uses a copy). The
        images' gradient is not made (the first layer skips it). Split, the criterion itself
        keeps no cache (its copies did the work)."""
        if len(labels) != len(x):
            raise ValueError(f"got {len(labels)} labels for a batch of {len(x)} images")
        if self.workers == 1 or len(x) < 2:
            logits = self.model.forward(x)
            loss = criterion.forward(logits, labels)
            self.model.backward(criterion.backward(), input_grad=False)
            return loss, logits

        def part_pass(replica, part):
            own = copy.copy(criterion)
            logits = replica.forward(x[part])
            loss = own.forward(logits, labels[part])
            dlogits = own.backward()
            dlogits *= dlogits.dtype.type((part.stop - part.start) / len(x))  # share of the mean
            replica.backward(dlogits, input_grad=False)
            return loss, logits

        criterion.cache = None
        results = self._run(part_pass, len(x))
        parts = batch_parts(len(x), self.workers)
        replicas = self._replicas[: len(parts)]
        for name_layers in zip(self.model.named_layers(),
                               *(replica.named_layers() for replica in replicas)):
            layer, first, *others = [pair[1] for pair in name_layers]
            for key in layer.param_names:
                total = getattr(first, "d" + key)  # summed in place: no new arrays
                for other in others:
                    total += getattr(other, "d" + key)
                setattr(layer, "d" + key, total)
        loss = sum(loss * (part.stop - part.start) for (loss, _), part in zip(results, parts))
        return loss / len(x), np.concatenate([logits for _, logits in results])
