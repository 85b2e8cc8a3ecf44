"""Data parallelism over the cores: the parts of a batch through replicas of one model, at once.

NumPy runs its elementwise work (ReLU, pooling, im2col, col2im, the optimizer's updates) on
one core; only BLAS's matrix products spread over the others. `BatchParallel` gives every
core a part of the batch instead: each part goes through its own replica of the model in its
own thread (NumPy releases the GIL in its loops and products), with BLAS held to one thread
meanwhile. Replicas share the model's parameter arrays and keep their own caches, gradients
and buffers. A training pass scales each part's loss gradient by the part's share of the batch
and sums the replicas' parameter gradients into the model's, which gives the gradient of the
mean loss over the whole batch, as one pass over it would (up to the order of float sums).

Layers whose result depends on the whole batch see where their part lies through a split
(`BatchSplit`: `start`, `total`, and `sum(array)`, the sum of an array over every part):
BatchNorm normalises with the statistics of the whole batch (the parts' sums, summed), and
Dropout draws exactly its part's slice of the whole batch's mask. So a split pass computes
what a whole-batch pass does. Buffers (running statistics, Dropout's stream) go from the
model to the replicas before a pass and back from the first replica after it: every part
computes the same update, and the model takes it once.

A batch may itself be one part of a larger batch split over processes (`cnnumpy.distributed`):
`forward_backward(x, labels, criterion, split=split)` then composes its parts with that
split, and the gradients are those of the mean loss over the larger batch.

With `processes=True` the parts after the first run in worker processes forked from this
one (`cnnumpy.part_processes`), which compute the same bits without sharing the interpreter's
lock: `cnnumpy.fit` and `cnnumpy train` split batches that way on Linux. The first part then
runs on the model itself (its buffers updated in place, the caches its layers held put back
after the pass), and the workers' copies take the model's buffers before every pass.

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
from contextlib import contextmanager

import numpy as np

from .batch_split import BatchSplit, set_batch_split
from .models.containers import check_finite_input, input_checked
from .part_processes import PartFailed, WorkerProcesses, fork_available
from .validate import check_bool

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # the optional extra is not installed: no data parallelism
    ThreadpoolController = None

_controller = None
_executor: ThreadPoolExecutor | None = None
_executor_threads = 0
_parallel_region = threading.Lock()
# Attributes of a module that change from pass to pass, not its structure.
_PER_PASS = ("cache", "training", "batch_split", "_executed")  # one split pass at a time: BLAS's thread limit is global


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


@contextmanager
def blas_threads(count: int):
    """BLAS held to `count` threads inside the block (threadpoolctl, the extra `threads`;
    without it nothing changes: set OPENBLAS_NUM_THREADS for each process instead)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=count, user_api="blas"):
        yield


def _threads(workers: int) -> ThreadPoolExecutor:
    """One pool of threads for every BatchParallel, grown when more workers are wanted."""
    global _executor, _executor_threads
    if _executor is None or _executor_threads < workers:
        if _executor is not None:
            _executor.shutdown(wait=False)  # its threads end once idle
        _executor = ThreadPoolExecutor(workers, thread_name_prefix="cnnumpy")
        _executor_threads = workers
    return _executor


class _Parts:
    """The parts of one split pass in threads, meeting at a barrier to sum arrays."""

    def __init__(self, count: int, outer: BatchSplit | None):
        self.barrier = threading.Barrier(count)
        self.slots: list = [None] * count
        self.outer = outer
        self.result = None

    def sum(self, index: int, array: np.ndarray) -> np.ndarray:
        self.slots[index] = array
        self.barrier.wait()  # every part's array is in
        if index == 0:  # a new result object: the last one may still be read
            total = self.slots[0].copy()
            for other in self.slots[1:]:
                total += other
            self.result = total if self.outer is None else self.outer.sum(total)
        self.barrier.wait()  # the result is out; it is replaced only after the next first wait
        return self.result


class _ThreadPart(BatchSplit):
    def __init__(self, parts: _Parts, index: int, start: int, total: int):
        self.parts, self.index, self.start, self.total = parts, index, start, total

    def sum(self, array: np.ndarray) -> np.ndarray:
        return self.parts.sum(self.index, array)


def _copy_buffers(source, target) -> None:
    for (name, value), (_, kept) in zip(source.buffers().items(), target.buffers().items()):
        np.copyto(kept, value)


def batch_parts(n: int, parts: int) -> list[slice]:
    """At most `parts` slices of near-equal length covering range(n), none empty."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


class BatchParallel:
    """Forward and backward passes of `model` with the batch split over `workers` threads
    (or processes).

    Args:
        model: a cnnumpy module (its layers keep the caches of a whole-batch pass only when
            the batch is not split).
        workers: parts per batch; default the available CPUs. 1 runs the model whole.
        processes: run every part but the first in a worker process forked from this one
            (`cnnumpy.part_processes`: no interpreter lock shared between the parts, which
            saves the threads' hand-overs of it) instead of a thread; the first part then
            runs on the model itself, no replica. Linux only (elsewhere, threads); not with
            a split over MPI ranks. `close()` ends the workers (they also end with this
            object or this process).
    """

    def __init__(self, model, workers: int | None = None, processes: bool = False):
        workers = available_cpus() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.model = model
        self.workers = workers if _blas_controller() is not None else 1
        self.processes = check_bool("processes", processes) and fork_available()
        self._replicas: list = []
        self._made_for = None  # the model's structure the replicas were made for
        self._worker_processes: WorkerProcesses | None = None
        self._processes_for = None  # (structure, criterion, count) the workers were made for

    def release_replicas(self) -> None:
        """Let go of the replicas and the model's arrays they hold (made again when needed),
        and end the worker processes."""
        self._replicas, self._made_for = [], None
        self.close()

    def close(self) -> None:
        """End the worker processes, if any (forked again when needed)."""
        forked, self._worker_processes, self._processes_for = self._worker_processes, None, None
        if forked is not None:
            forked.close()

    def _structure(self) -> tuple:
        """What the replicas copy besides the parameter values: the module objects, their
        settings (strides, sizes, ReLU/pool order...), the parameter arrays."""
        def settings(module):
            return tuple((key, value) for key, value in vars(module).items()
                         if key not in _PER_PASS and not isinstance(value, np.ndarray))

        modules = tuple((id(module), settings(module)) for module in self.model.modules())
        params = tuple(id(array) for array in self.model.parameters().values())
        return modules, params

    def _copy_model(self, params: list[np.ndarray]):
        """A deep copy of the model whose parameters are the arrays `params` (in the order of
        `parameters()`), without the caches."""
        memo = {id(getattr(module, "cache", None)): None for module in self.model.modules()}
        memo.update((id(old), new) for old, new in zip(self.model.parameters().values(), params))
        return copy.deepcopy(self.model, memo)

    def _replicas_for(self, count: int) -> list:
        """`count` replicas: the model's parameter arrays, their own caches and gradients.
        Made again when the model's structure changed (layers replaced or reconfigured,
        parameter arrays replaced, e.g. by astype)."""
        structure = self._structure()
        if structure != self._made_for or len(self._replicas) < count:
            self._made_for = structure
            params = list(self.model.parameters().values())
            self._replicas = [self._copy_model(params) for _ in range(count)]
        for replica in self._replicas[:count]:
            for module, copied in zip(self.model.modules(), replica.modules()):
                copied.training = module.training  # each module's own mode (a frozen BN)
            _copy_buffers(self.model, replica)
        return self._replicas[:count]

    def _workers_for(self, count: int, criterion) -> WorkerProcesses:
        """`count` worker processes for the model (and criterion) as they are now."""
        def setting(value):  # arrays (class weights...) by their bytes: a repr abridges them
            if isinstance(value, np.ndarray):
                return value.dtype.str, value.shape, value.tobytes()
            return repr(value)

        settings = None if criterion is None else (type(criterion), tuple(
            (key, setting(value)) for key, value in sorted(vars(criterion).items())
            if key != "cache"))
        wanted = (self._structure(), settings, count)
        made_for = self._processes_for
        if criterion is None and made_for is not None and made_for[::2] == wanted[::2]:
            return self._worker_processes  # inference: whatever criterion the workers hold
        if self._worker_processes is None or wanted != made_for:
            self.close()

            def blas_one_thread():
                return _blas_controller().limit(limits=1, user_api="blas")

            # each worker copies the model after the fork, its parameters the shared views
            self._worker_processes = WorkerProcesses(self.model, criterion, count,
                                                     self._copy_model, blas_one_thread)
            self._processes_for = wanted
        return self._worker_processes

    def _run_in_processes(self, work, n: int, x, labels=None, criterion=None) -> list:
        """As `_run`, the parts after the first in worker processes: work(model, part) for
        the first part here, on the model itself (its buffers updated once, its gradients
        this part's; the caches its layers held before are put back after), returning (loss
        or None, output); the same pass in the workers ("infer" without labels, "train" with
        them). Returns each part's (loss, output). A pass that fails leaves the model's
        buffers as they were (its gradients are the first part's, or partly so)."""
        parts = batch_parts(n, self.workers)
        with _parallel_region, _blas_controller().limit(limits=1, user_api="blas"):
            forked = self._workers_for(len(parts) - 1, criterion)
            forked.part.begin(0, n)
            modules = list(self.model.modules())
            caches = [getattr(module, "cache", None) for module in modules]
            training = [module.training for module in modules]
            set_batch_split(self.model, forked.part)
            try:
                forked.send("infer" if labels is None else "train",
                            [x[part] for part in parts[1:]],
                            [None if labels is None else labels[part] for part in parts[1:]],
                            [part.start for part in parts[1:]], n, training)
                try:
                    with input_checked():
                        first = work(self.model, parts[0])
                except BaseException as err:
                    forked.part.abort()  # the workers stop at their next meeting
                    try:
                        forked.results()
                    except Exception as other:  # a worker's own error explains a PartFailed
                        if isinstance(err, PartFailed):
                            raise other from None
                    raise
                others = forked.results()
            except BaseException:
                forked.part.abort()
                for kept, before in zip(self.model.buffers().values(), forked.buffers):
                    np.copyto(kept, before)  # as they were before the pass (send copied them)
                self._worker_processes, self._processes_for = None, None
                forked.kill()  # their pipes may hold a broken pass: forked anew next time
                raise
            finally:
                set_batch_split(self.model, None)
                for module, cache in zip(modules, caches):
                    if hasattr(module, "cache"):
                        module.cache = cache
        return [first, *others]

    def _run(self, work, n: int, outer: BatchSplit | None = None) -> list:
        """work(replica, part) for the parts of range(n), in parallel, BLAS one-threaded:
        the first part in the calling thread, the others in pool threads. Each replica knows
        its part's place in the batch (set_batch_split); the first replica's buffers go back
        to the model."""
        parts = batch_parts(n, self.workers)
        meeting = _Parts(len(parts), outer)
        offset, total = (0, n) if outer is None else (outer.start, outer.total)

        def run_part(index, replica, part):
            set_batch_split(replica, _ThreadPart(meeting, index, offset + part.start, total))
            try:
                with input_checked():  # checked whole by the caller: errors name its shape
                    return work(replica, part)
            except BaseException:
                meeting.barrier.abort()  # the others may wait for this part's sums
                raise

        with _parallel_region, _blas_controller().limit(limits=1, user_api="blas"):
            replicas = self._replicas_for(len(parts))
            others = [_threads(len(parts) - 1).submit(run_part, index, replica, part)
                      for index, (replica, part) in enumerate(zip(replicas, parts)) if index]
            first, errors = None, []
            try:
                first = run_part(0, replicas[0], parts[0])
            except Exception as err:  # raised below, once the other parts have ended
                errors.append(err)
            finally:  # the other parts use the replicas: never return before they all end
                wait(others)
            errors += [other.exception() for other in others if other.exception() is not None]
            if errors:  # the first error that is not another part's broken barrier
                raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                           errors[0])
            _copy_buffers(replicas[0], self.model)
        return [first, *(other.result() for other in others)]

    def _run_whole(self, work, outer: BatchSplit | None = None):
        """work() on the model itself, the batch whole (or the outer split's part)."""
        set_batch_split(self.model, outer)
        try:
            return work()
        finally:
            set_batch_split(self.model, None)

    def _check(self, x) -> None:
        """NaN or infinite inputs, named with the whole batch's shape before it is split."""
        check_finite_input(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's output for x, without caches (inference)."""
        if self.workers == 1 or len(x) < 2:
            return self._run_whole(lambda: self.model.forward(x, keep_cache=False))
        self._check(x)
        if self.processes:
            results = self._run_in_processes(
                lambda replica, part: (None, replica.forward(x[part], keep_cache=False)),
                len(x), x)
            return np.concatenate([output for _, output in results])
        outputs = self._run(lambda replica, part: replica.forward(x[part], keep_cache=False),
                            len(x))
        return np.concatenate(outputs)

    def forward_backward(self, x: np.ndarray, labels: np.ndarray, criterion,
                         split: BatchSplit | None = None):
        """(mean loss over the batch, logits), and the model's parameter gradients of that
        mean loss. `criterion` is e.g. `CrossEntropyLoss()` (each part uses a copy). The
        images' gradient is not made (the first layer skips it). Split, the criterion itself
        keeps no cache (its copies did the work).

        With `split`, x is that part of a larger batch (a process's, `cnnumpy.distributed`):
        the loss returned is still the mean over x, but the gradients are this part's share
        of the gradient of the mean loss over the whole batch (they add up to it over the
        parts), the form BatchNorm's backward needs."""
        labels = np.asarray(labels)
        if len(labels) != len(x):
            raise ValueError(f"got {len(labels)} labels for a batch of {len(x)} images")
        total = len(x) if split is None else split.total  # the mean is over it

        def whole_pass():
            logits = self.model.forward(x)
            loss = criterion.forward(logits, labels)
            dlogits = criterion.backward()
            if total != len(x):
                dlogits *= dlogits.dtype.type(len(x) / total)  # this process's share
            self.model.backward(dlogits, input_grad=False)
            return loss, logits

        if self.workers == 1 or len(x) < 2:
            return self._run_whole(whole_pass, split)

        def part_pass(replica, part):
            own = copy.copy(criterion)
            logits = replica.forward(x[part])
            loss = own.forward(logits, labels[part])
            dlogits = own.backward()
            dlogits *= dlogits.dtype.type((part.stop - part.start) / total)  # share of the mean
            replica.backward(dlogits, input_grad=False)
            return loss, logits

        criterion.cache = None
        self._check(x)
        parts = batch_parts(len(x), self.workers)
        if self.processes:
            if split is not None and (split.start, split.total) != (0, len(x)):
                raise ValueError("BatchParallel(processes=True) does not combine with a split "
                                 "over MPI ranks: use threads within each rank")
            self.model.zero_grad()  # a module whose backward skips a gradient adds nothing
            results = self._run_in_processes(part_pass, len(x), x, labels, criterion)
            part_grads = [[getattr(module, "d" + key) for _, module, key in
                           self.model.parameter_places()], *self._worker_processes.grads]
        else:
            results = self._run(part_pass, len(x), split)
            part_grads = [[getattr(module, "d" + key) for _, module, key in
                           replica.parameter_places()] for replica in self._replicas[:len(parts)]]
        for index, (_, layer, key) in enumerate(self.model.parameter_places()):
            summed = layer._gradient(key)  # the parts' gradients, in the model's own arrays
            np.add(part_grads[0][index], part_grads[1][index], out=summed)
            for grads in part_grads[2:]:  # (a split pass has two parts or more)
                summed += grads[index]
        loss = sum(loss * (part.stop - part.start) for (loss, _), part in zip(results, parts))
        return loss / len(x), np.concatenate([logits for _, logits in results])
