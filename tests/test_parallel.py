"""Data parallelism (cnnumpy.parallel): the parts of a batch through replicas give the
whole-batch loss, logits and gradients."""

import copy
import os
import signal
import threading
import time

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy import parallel
from cnnumpy.layers.padding import Identity
from cnnumpy.parallel import BatchParallel, batch_parts
from cnnumpy.part_processes import PartFailed, fork_available

needs_threadpoolctl = pytest.mark.skipif(parallel.ThreadpoolController is None,
                                         reason="threadpoolctl (extra 'threads') not installed")
needs_fork = pytest.mark.skipif(not fork_available(),
                                reason="worker processes need os.fork (Linux)")
# Each split test runs with the parts in threads and in worker processes (Linux).
SPLITS = [pytest.param(False, id="threads"), pytest.param(True, id="processes", marks=needs_fork)]


def model_and_batch(n=7, dtype=np.float64):
    model = cn.SimpleCNN((3, 12, 12), 5, rng=np.random.default_rng(0), dtype=dtype)
    rng = np.random.default_rng(1)
    return model, rng.standard_normal((n, 3, 12, 12)).astype(dtype), rng.integers(0, 5, n)


def whole_batch(model, x, y, criterion):
    logits = model.forward(x)
    loss = criterion.forward(logits, y)
    model.backward(criterion.backward(), input_grad=False)
    return loss, logits, {k: v.copy() for k, v in model.gradients().items()}


def test_batch_parts_cover_the_batch_without_empty_parts():
    assert batch_parts(7, 2) == [slice(0, 3), slice(3, 7)]
    assert batch_parts(1, 4) == [slice(0, 1)]
    assert sum(p.stop - p.start for p in batch_parts(130, 3)) == 130


@needs_threadpoolctl
@pytest.mark.parametrize("processes", SPLITS)
@pytest.mark.parametrize("workers, n", [(2, 7), (3, 8), (4, 2)])
def test_parts_give_the_whole_batch_loss_logits_and_gradients(workers, n, processes):
    model, x, y = model_and_batch(n)
    criterion = cn.CrossEntropyLoss(label_smoothing=0.1)
    loss, logits, grads = whole_batch(model, x, y, criterion)
    passes = BatchParallel(model, workers, processes=processes)
    assert passes.workers == workers
    part_loss, part_logits = passes.forward_backward(x, y, criterion)
    np.testing.assert_allclose(part_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(part_logits, logits, rtol=1e-12, atol=1e-12)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-5)


@needs_threadpoolctl
@pytest.mark.parametrize("processes", SPLITS)
def test_replicas_follow_the_model_parameters(processes):
    model, x, y = model_and_batch(6, np.float32)
    passes = BatchParallel(model, 2, processes=processes)
    criterion = cn.CrossEntropyLoss()
    passes.forward_backward(x, y, criterion)
    model["fc2"].W += 1  # in place: the replicas share it
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-5)
    model.astype(np.float64)  # new arrays: the replicas are made again
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(passes.forward(x64), model.forward(x64, keep_cache=False),
                               rtol=1e-12)
    _, _, grads = whole_batch(model, x64, y, criterion)
    passes.forward_backward(x64, y, criterion)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-10, atol=1e-12)


def test_one_worker_is_the_plain_pass():
    model, x, y = model_and_batch(5)
    criterion = cn.CrossEntropyLoss()
    loss, logits, grads = whole_batch(model, x, y, criterion)
    passes = BatchParallel(model, 1)
    part_loss, part_logits = passes.forward_backward(x, y, criterion)
    assert part_loss == loss
    np.testing.assert_array_equal(part_logits, logits)
    for name, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, grads[name])
    with pytest.raises(ValueError, match="workers"):
        BatchParallel(model, 0)


@needs_threadpoolctl
@pytest.mark.parametrize("processes", SPLITS)
def test_replicas_are_made_again_when_the_model_changes(processes):
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=processes)
    passes.forward(x)
    model.layers["pool1"] = cn.AvgPool2D(2)  # no parameters, another computation
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-12)
    model.commute_relu_pool = False
    np.testing.assert_allclose(passes.forward(x), model.forward(x, keep_cache=False), rtol=1e-12)


@needs_threadpoolctl
@pytest.mark.parametrize("processes", SPLITS)
def test_an_error_in_a_part_is_raised_after_every_part_ended(processes):
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 3, processes=processes)
    bad = y.copy()
    bad[-1] = 99  # not a class: the last part's loss raises
    with pytest.raises(ValueError):
        passes.forward_backward(x, bad, cn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="labels"):
        passes.forward_backward(x, y[:-1], cn.CrossEntropyLoss())
    loss, _ = passes.forward_backward(x, y, cn.CrossEntropyLoss())  # still usable
    assert np.isfinite(loss)


@needs_threadpoolctl
@needs_fork
def test_processes_compute_what_threads_compute_bit_for_bit():
    """BatchNorm's sums over the parts are added in the same order in every process, so a
    float32 ResNet step in processes gives the threads' logits, gradients and statistics."""
    rng = np.random.default_rng(3)
    model = cn.models.resnet20(input_shape=(3, 8, 8), num_classes=4, rng=rng)
    twin = copy.deepcopy(model)
    threads, processes = BatchParallel(model, 2), BatchParallel(twin, 2, processes=True)
    criterion = cn.CrossEntropyLoss()
    for step in range(2):
        x, y = rng.standard_normal((9, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, 9)
        loss, logits = threads.forward_backward(x, y, criterion)
        loss_p, logits_p = processes.forward_backward(x, y, criterion)
        assert loss_p == loss
        np.testing.assert_array_equal(logits_p, logits)
        for name, grad in model.gradients().items():
            np.testing.assert_array_equal(twin.gradients()[name], grad, err_msg=name)
        for name, buffer in model.buffers().items():
            np.testing.assert_array_equal(twin.buffers()[name], buffer, err_msg=name)
        for m in (model, twin):
            for param, grad in zip(m.parameters().values(), m.gradients().values()):
                param -= 0.1 * grad  # the workers read the new values at the next pass
    model.eval(), twin.eval()
    np.testing.assert_array_equal(processes.forward(x), threads.forward(x))
    processes.close()


@needs_threadpoolctl
@needs_fork
def test_a_worker_process_that_dies_gives_an_error_and_the_next_pass_forks_anew():
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=True)
    expected = model.forward(x, keep_cache=False)
    passes.forward_backward(x, y, cn.CrossEntropyLoss())
    np.testing.assert_allclose(passes.forward(x), expected, rtol=1e-12)  # the same worker
    (pid,) = passes._worker_processes.pids
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with pytest.raises(PartFailed, match="worker process ended"):
        passes.forward_backward(x, y, cn.CrossEntropyLoss())
    np.testing.assert_allclose(passes.forward(x), expected, rtol=1e-12)  # a new worker
    (new_pid,) = passes._worker_processes.pids
    assert new_pid != pid
    passes.close()
    with pytest.raises(ChildProcessError):  # ended and reaped by close()
        os.waitpid(new_pid, 0)


@needs_threadpoolctl
@needs_fork
def test_processes_refuse_a_split_over_ranks():
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=True)

    class Ranks(parallel.BatchSplit):  # this process holds images 6..11 of 12
        start, total = 6, 12

        def sum(self, array):
            return 2 * array

    with pytest.raises(ValueError, match="MPI ranks"):
        passes.forward_backward(x, y, cn.CrossEntropyLoss(), split=Ranks())


class _Picky(Identity):
    """Passes its input on, but raises an error of NumPy's own type for images above 100."""

    def _forward(self, x):
        if (x > 100).any():
            raise np.linalg.LinAlgError("an image above 100")
        return super()._forward(x)


@needs_threadpoolctl
@needs_fork
def test_worker_processes_take_label_lists_and_name_errors_of_other_types():
    model, x, y = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=True)
    loss, _ = passes.forward_backward(x, list(y), cn.CrossEntropyLoss())
    assert np.isfinite(loss)
    picky = cn.Sequential([_Picky(), model])
    x[-1] += 1000  # in the worker's part only
    with pytest.raises(PartFailed, match="LinAlgError in a worker process: an image above 100"):
        BatchParallel(picky, 2, processes=True).forward(x)


@needs_threadpoolctl
@needs_fork
def test_close_ends_the_workers_while_another_process_holds_their_pipes():
    """A process forked later (a pool, a subprocess before its exec) inherits the pipes'
    ends: the workers are told to quit instead of waiting for their pipes to close."""
    model, x, _ = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=True)
    passes.forward(x)
    (worker,) = passes._worker_processes.pids
    holder = os.fork()
    if holder == 0:  # holds every pipe end for 20 s
        time.sleep(20)
        os._exit(0)
    try:
        began = time.monotonic()
        passes.close()
        assert time.monotonic() - began < 3
        with pytest.raises(ChildProcessError):
            os.waitpid(worker, 0)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


@needs_threadpoolctl
@pytest.mark.parametrize("processes", SPLITS)
@pytest.mark.parametrize("bad_part", [0, 1])
def test_a_failed_split_step_leaves_the_model_s_buffers_and_caches(processes, bad_part):
    """An error in either part (the other waiting at a BatchNorm meeting) ends the step with
    the running statistics as before it, and the layers' caches of an earlier pass kept."""
    rng = np.random.default_rng(4)
    model = cn.models.resnet20(input_shape=(1, 8, 8), num_classes=3, rng=rng, dtype=np.float64)
    x, y = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 3, 6)
    logits = model.forward(x[:2])  # caches a pass of its own
    buffers = {name: value.copy() for name, value in model.buffers().items()}
    passes = BatchParallel(model, 2, processes=processes)
    bad = y.copy()
    bad[3 * bad_part] = 7
    with pytest.raises(ValueError, match="labels must be in"):
        passes.forward_backward(x, bad, cn.CrossEntropyLoss())
    for name, value in model.buffers().items():
        np.testing.assert_array_equal(value, buffers[name], err_msg=name)
    model.eval()
    passes.forward(x)  # inference: no caches of its own, the earlier ones kept
    model.train()
    assert model.backward(np.ones_like(logits)).shape == (2, 1, 8, 8)


@needs_threadpoolctl
@needs_fork
def test_a_process_forked_later_leaves_the_workers_alone_when_it_exits():
    model, x, _ = model_and_batch(6)
    passes = BatchParallel(model, 2, processes=True)
    expected = passes.forward(x)
    child = os.fork()
    if child == 0:  # exits normally: finalizers run, the workers' included
        passes._worker_processes.close()
        os._exit(0)
    os.waitpid(child, 0)
    np.testing.assert_array_equal(passes.forward(x), expected)  # the same workers, alive
    passes.close()


@needs_threadpoolctl
@needs_fork
def test_a_model_the_worker_cannot_copy_is_named_at_once():
    model, x, _ = model_and_batch(6)
    model.lock = threading.Lock()  # deepcopy cannot copy it
    with pytest.raises(TypeError, match="copying the model into a worker process: .*lock"):
        BatchParallel(model, 2, processes=True).forward(x)
