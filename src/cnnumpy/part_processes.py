"""The parts of a batch in forked processes: `BatchParallel(model, processes=True)`.

Threads of one process share its interpreter lock: each NumPy call lets go of it and takes it
back, and a part whose call has ended waits for the other part's thread to let go (on a
machine whose idle cores sleep, each wait costs a wake-up). A ResNet-20 training step over two
threads took 1.3-1.4 times one part's pass alone, where two independent processes took
1.00-1.14 times (`benchmarks/threads_vs_processes.py`, on a 2-core VM). Here the first part of a batch runs in the calling
process, on the model itself, and every other part in a worker process forked from it:

    parameters   a shared memory mapping the worker's replica reads them from; the model's
                 values are copied into it before every pass (the optimizer changes them)
    buffers      the model's running statistics and random streams, copied into a shared
                 mapping before every pass and from it into the worker's replica
    gradients    the worker's parameter gradients, copied into a shared mapping after backward
                 and summed into the model's by the calling process
    the batch    the worker's part of x and its labels through a pipe, its output back through
                 another: a line of JSON (shapes, dtypes, loss, or an error) and the raw bytes
    sums         BatchNorm's sums over the parts (`BatchSplit.sum`): each part writes its array
                 into its slot of a shared board, the parts meet (a byte through a pipe from
                 each part to each other), and each adds the slots in the same order, so every
                 part holds the same bits. Two boards, used in turn: a part writes a board
                 again only after every part has met once more, so after each has read it.

Nothing is pickled: commands and replies are JSON and raw array bytes. The worker holds a copy
of the model (and of the criterion) made after the fork; it is made again (the workers forked
anew) when the model's structure, its parameter arrays, the criterion's settings or the number
of parts change (a last batch smaller than the number of cores), or after an error. Workers
ignore SIGINT and SIGTERM (the calling process decides when to stop) and end when told to,
or when their command pipe closes. Linux (os.fork) only; elsewhere `BatchParallel` keeps
threads.
"""

from __future__ import annotations

import copy
import json
import mmap
import os
import signal
import time
import warnings
import weakref

import numpy as np

from .batch_split import BatchSplit, set_batch_split
from .models.containers import input_checked

# The largest array a part sums over the parts at once (BatchNorm's per-channel sums, three
# float64 numbers a channel, 48 KiB for 2048 channels, are far smaller; threads have no such
# limit); the mapping's pages are only touched as far as used.
SUM_SLOT_BYTES = 1 << 20
# How long close() waits for a worker to end after telling it to, before killing it.
END_SECONDS = 5.0
# Errors a worker reports that the calling process raises as the same type.
_ERRORS = {error.__name__: error for error in (
    ValueError, TypeError, IndexError, KeyError, FloatingPointError, MemoryError,
    ZeroDivisionError, OverflowError, RuntimeError, NotImplementedError)}


# Pipe ends of every live set of workers in this process: a worker forked later closes them
# (else it would hold other workers' command pipes open, and they would not see them end).
_OPEN_FDS: set[int] = set()


class PartFailed(RuntimeError):
    """Another part of the batch failed or a worker process ended: this part stopped."""


def fork_available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "sched_getaffinity")


def _shared(nbytes: int) -> mmap.mmap:
    """Anonymous memory shared with the processes forked after it is made."""
    return mmap.mmap(-1, max(nbytes, 1))  # MAP_SHARED | MAP_ANONYMOUS


def _padded(nbytes: int) -> int:
    """nbytes rounded up to a cache line (64 bytes)."""
    return -(-nbytes // 64) * 64


def _shared_like(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Arrays shaped and typed as `arrays`, one after the other (each at a cache line) in one
    new shared mapping."""
    memory = _shared(sum(_padded(array.nbytes) for array in arrays))
    views, offset = [], 0
    for array in arrays:
        views.append(np.ndarray(array.shape, array.dtype, memory, offset))
        offset += _padded(array.nbytes)
    return views


def _send(stream, header: dict, *arrays: np.ndarray) -> None:
    stream.write(json.dumps(header).encode() + b"\n")
    for array in arrays:
        stream.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    stream.flush()


def _receive(stream) -> dict:
    line = stream.readline()
    if not line:
        raise PartFailed("a worker process ended (its pipe closed)")
    return json.loads(line)


def _receive_array(stream, shape, dtype) -> np.ndarray:
    """An array of `shape` and `dtype` from the raw bytes that `_send` wrote."""
    array = np.empty(shape, dtype)
    view, got = memoryview(array).cast("B"), 0
    while got < len(view):
        count = stream.readinto(view[got:])
        if not count:
            raise PartFailed("a worker process ended (its pipe closed)")
        got += count
    return array


class _Meeting:
    """Where the parts of one split meet: the sum boards and the pipes between the parts."""

    def __init__(self, count: int):
        self.count = count
        self.boards = [_shared(count * SUM_SLOT_BYTES) for _ in range(2)]
        # pipes[(i, j)]: part i -> part j, as (read end, write end)
        self.pipes = {(i, j): _pipe(wide=False)
                      for i in range(count) for j in range(count) if i != j}

    def keep_only(self, index: int) -> None:
        """Close the pipe ends part `index` does not use (in the process that runs it)."""
        for (i, j), (read, write) in self.pipes.items():
            if j != index:
                _close(read)
            if i != index:
                _close(write)

    def close(self) -> None:
        for read, write in self.pipes.values():
            _close(read)
            _close(write)


def _pipe(wide: bool = True) -> tuple[int, int]:
    """A pipe; `wide`: one that holds a part of a batch whole where Linux allows (1 MiB, out
    of a user's 64 MiB of pipes by default), so that sending it takes few wake-ups of the
    reader. The meetings' pipes, which carry a byte at a time, keep the default size."""
    read, write = os.pipe()
    _OPEN_FDS.update((read, write))
    if wide:
        try:
            import fcntl
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (ImportError, AttributeError, OSError):
            pass
    return read, write


def _close(fd: int) -> None:
    _OPEN_FDS.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


class ProcessPart(BatchSplit):
    """One part's place in a batch split over processes."""

    def __init__(self, meeting: _Meeting, index: int):
        self.meeting, self.index = meeting, index
        self.start, self.total, self.calls = 0, 0, 0
        self.broken = False

    def begin(self, start: int, total: int) -> None:
        self.start, self.total = start, total

    def meet(self) -> None:
        """Wait until every part has arrived here (one byte from each other part)."""
        meeting = self.meeting
        if self.broken:
            raise PartFailed("another part of the batch failed")
        for other in range(meeting.count):
            if other != self.index:
                try:
                    os.write(meeting.pipes[(self.index, other)][1], b".")
                except BrokenPipeError:  # that part's process ended
                    self.broken = True
                    raise PartFailed("a worker process ended (its pipe closed)") from None
        for other in range(meeting.count):
            if other != self.index:
                got = os.read(meeting.pipes[(other, self.index)][0], 1)
                if got != b".":  # b"!" (that part failed) or b"" (its process ended)
                    self.broken = True
                    raise PartFailed("another part of the batch failed" if got else
                                     "a worker process ended (its pipe closed)")

    def abort(self) -> None:
        """Tell the other parts this one failed (each stops at its next meeting)."""
        if self.broken:
            return
        self.broken = True
        for other in range(self.meeting.count):
            if other != self.index:
                try:
                    os.write(self.meeting.pipes[(self.index, other)][1], b"!")
                except OSError:
                    pass

    def sum(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        if array.nbytes > SUM_SLOT_BYTES:
            raise ValueError(f"a sum over the parts of {array.nbytes} bytes is more than "
                             f"SUM_SLOT_BYTES ({SUM_SLOT_BYTES}) allows")
        board = self.meeting.boards[self.calls % 2]
        self.calls += 1
        slots = [np.ndarray(array.shape, array.dtype, board, k * SUM_SLOT_BYTES)
                 for k in range(self.meeting.count)]
        np.copyto(slots[self.index], array)
        self.meet()
        total = slots[0].copy()
        for other in slots[1:]:
            total += other
        return total


class WorkerProcesses:
    """Worker processes forked from this one, each running one part of every batch with its
    own replica of `model` (made by make_replica(parameter views), after the fork) and copy of
    `criterion` (None for inference only); `self.part` is this process's own part (0)."""

    def __init__(self, model, criterion, count: int, make_replica, blas_one_thread):
        self.model = model
        params = list(model.parameters().values())
        self.params = _shared_like(params)
        self.buffers = _shared_like(list(model.buffers().values()))
        self.grads = [_shared_like(params) for _ in range(count)]
        self.meeting = _Meeting(count + 1)  # part 0 runs in this process
        self.commands, self.replies, self.pids = [], [], []
        self._finalizer = weakref.finalize(self, _end, os.getpid(), self.commands,
                                           self.replies, self.pids, self.meeting)
        try:
            for index in range(1, count + 1):
                self._fork(index, criterion, make_replica, blas_one_thread)
            for stream in self.replies:  # each has made its copy of the model
                reply = _receive(stream)
                if "error" in reply:
                    raise _error(reply["error"], f"copying the model into a worker process: "
                                                 f"{reply['message']}")
        except BaseException:  # a fork refused (memory, process limits) or interrupted
            self.kill()
            raise
        self.meeting.keep_only(0)
        self.part = ProcessPart(self.meeting, 0)

    def _fork(self, index: int, criterion, make_replica, blas_one_thread) -> None:
        """Fork the worker of part `index`, which serves until told to end."""
        command_read, command_write = _pipe()
        try:
            reply_read, reply_write = _pipe()
        except BaseException:
            _close(command_read)
            _close(command_write)
            raise
        try:
            pid = _fork()
        except BaseException:
            for fd in (command_read, command_write, reply_read, reply_write):
                _close(fd)
            raise
        if pid == 0:  # the worker: never returns
            try:
                own = {command_read, reply_write, *(
                    ends[0] for (_, to), ends in self.meeting.pipes.items() if to == index), *(
                    ends[1] for (by, _), ends in self.meeting.pipes.items() if by == index)}
                for fd in list(_OPEN_FDS - own):
                    _close(fd)  # other workers' pipes, and the calling process's ends
                commands, replies = os.fdopen(command_read, "rb"), os.fdopen(reply_write, "wb")
                try:
                    replica = make_replica(self.params)
                except Exception as err:
                    _send(replies, {"error": type(err).__name__, "message": str(err)})
                    raise
                _send(replies, {"ready": True})
                _serve(replica, copy.copy(criterion), self.buffers, self.grads[index - 1],
                       ProcessPart(self.meeting, index), commands, replies, blas_one_thread)
            finally:
                os._exit(0)
        self.pids.append(pid)
        _close(command_read)
        _close(reply_write)
        self.commands.append(os.fdopen(command_write, "wb"))
        self.replies.append(os.fdopen(reply_read, "rb"))

    def close(self) -> None:
        """Tell the workers to end, wait for them (killing any still running after
        END_SECONDS), and close their pipes."""
        self._finalizer()

    def kill(self) -> None:
        """End the workers at once (after a broken pass, whose data may still be in their
        pipes), then close their pipes."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.close()

    def send(self, kind: str, x_parts, label_parts, offsets, total: int, training) -> None:
        """Start each worker on its part: parameters and buffers in the shared mappings, the
        part and its labels (or None) through its pipe."""
        for shared, param in zip(self.params, self.model.parameters().values()):
            np.copyto(shared, param)
        for shared, buffer in zip(self.buffers, self.model.buffers().values()):
            np.copyto(shared, buffer)  # first: a failed pass puts the model's back from here
        for array in (*x_parts, *(labels for labels in label_parts if labels is not None)):
            if array.dtype.hasobject:  # its bytes are pointers, meaningless in another process
                raise TypeError(f"a batch split over processes takes numeric arrays, got "
                                f"dtype {array.dtype}")
        for stream, x, labels, start in zip(self.commands, x_parts, label_parts, offsets):
            header = {"kind": kind, "shape": list(x.shape), "dtype": x.dtype.str,
                      "start": start, "total": total, "training": training,
                      "labels": None if labels is None else [list(labels.shape),
                                                             labels.dtype.str]}
            try:
                _send(stream, header, x, *(() if labels is None else (labels,)))
            except OSError as err:  # its pipe is closed: the worker ended
                raise PartFailed(f"a worker process ended ({err})") from None

    def results(self) -> list[tuple[float | None, np.ndarray]]:
        """Each worker's (loss or None, output), or the first error they reported (one that
        names its cause before one that says another part failed)."""
        results, error = [], None
        for stream in self.replies:
            try:
                reply = _receive(stream)
                if "error" in reply:
                    raise _error(reply["error"], reply["message"])
                output = _receive_array(stream, tuple(reply["shape"]), np.dtype(reply["dtype"]))
                loss = reply["loss"]
                results.append((None if loss is None else np.dtype(reply["loss_dtype"]).type(loss),
                                output))
            except Exception as err:  # the others are still read: each worker replies once
                if error is None or (isinstance(error, PartFailed)
                                     and not isinstance(err, PartFailed)):
                    error = err
        if error is not None:
            raise error
        return results


def _fork() -> int:
    """os.fork(), with SIGINT and SIGTERM held back around it: the worker ignores them before
    it runs any Python code (a Ctrl-C to the process group would otherwise raise in the
    worker before it reached its loop, and the worker would go on as a copy of the caller)."""
    held = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads (BLAS's, a pool's): the
            # worker runs only this module's loop, NumPy and OpenBLAS (which resets its
            # threads at a fork), and takes no lock another thread may have held.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            for number in held:
                signal.signal(number, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pid


def _error(name: str, message: str) -> Exception:
    """A worker's error as the calling process raises it: the same type where it is one of
    Python's usual ones, else PartFailed naming the type."""
    if name in _ERRORS:
        return _ERRORS[name](message)
    return PartFailed(f"{name} in a worker process: {message}")


def _end(parent: int, commands, replies, pids, meeting) -> None:
    """End the workers: a quit command each (their pipes may also be held open by processes
    forked since), a wait, SIGKILL for any still running after END_SECONDS; close the pipes.
    Only in the process that forked them (a process forked from it later inherits this
    finalizer, and must leave them be)."""
    if os.getpid() != parent:
        return
    for stream in commands:
        try:
            stream.write(b'{"kind": "quit"}\n')
            stream.flush()
        except (OSError, ValueError):  # the worker ended already
            pass
    deadline = time.monotonic() + END_SECONDS
    for pid in pids:
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.001)
        except ChildProcessError:  # reaped already
            pass
    for stream in commands + replies:
        if not stream.closed:
            _OPEN_FDS.discard(stream.fileno())
        try:
            stream.close()
        except OSError:
            pass
    meeting.close()


def _serve(replica, criterion, buffers, grads, part: ProcessPart, commands, replies,
           blas_one_thread) -> None:
    """The worker's loop: a part of a batch per command, until told to end (or the commands
    end)."""
    modules = list(replica.modules())
    replica_buffers = list(replica.buffers().values())
    set_batch_split(replica, part)
    with blas_one_thread():
        while True:
            line = commands.readline()
            if not line:
                return
            header = json.loads(line)
            if header["kind"] == "quit":
                return
            try:
                x = _receive_array(commands, tuple(header["shape"]), np.dtype(header["dtype"]))
                labels = (None if header["labels"] is None else
                          _receive_array(commands, tuple(header["labels"][0]),
                                         np.dtype(header["labels"][1])))
                for module, training in zip(modules, header["training"]):
                    module.training = training
                for kept, shared in zip(replica_buffers, buffers):
                    np.copyto(kept, shared)
                part.begin(header["start"], header["total"])
                with input_checked():
                    if header["kind"] == "infer":
                        loss, output = None, replica.forward(x, keep_cache=False)
                    else:
                        output = replica.forward(x)
                        loss = criterion.forward(output, labels)
                        dlogits = criterion.backward()
                        dlogits *= dlogits.dtype.type(len(x) / header["total"])
                        replica.backward(dlogits, input_grad=False)
                        for shared, grad in zip(grads, replica.gradients().values()):
                            np.copyto(shared, grad)
            except BaseException as err:  # told to the calling process, which raises it
                part.abort()
                _send(replies, {"error": type(err).__name__, "message": str(err)})
                if not isinstance(err, Exception):
                    raise
                continue
            _send(replies, {"loss": None if loss is None else float(loss),
                            "loss_dtype": None if loss is None else np.asarray(loss).dtype.str,
                            "shape": list(output.shape), "dtype": output.dtype.str}, output)
