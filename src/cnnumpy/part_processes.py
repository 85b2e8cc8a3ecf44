"""The parts of a batch in forked processes: `BatchParallel(model, processes=True)`.

Threads of one process share its interpreter lock: each NumPy call lets go of it and takes it
back, and a part whose call has ended waits for the other part's thread to let go (on a
machine whose idle cores sleep, each wait costs a wake-up). A ResNet-20 training step over two
threads takes 1.3-1.4 times one part's pass alone, where two processes take 1.02-1.03 times
(`benchmarks/threads_vs_processes.py`). Here the first part of a batch runs in the calling
process, as with threads, and every other part in a worker process forked from it:

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
of the model made after the fork; it is made again (the worker forked anew) when the model's
structure, its parameter arrays or the criterion change, or after an error. Linux (os.fork)
only; elsewhere `BatchParallel` keeps threads.
"""

from __future__ import annotations

import copy
import json
import mmap
import os
import signal
import warnings
import weakref

import numpy as np

from .models.containers import input_checked

# The largest array a part sums over the parts at once (BatchNorm's per-channel sums are far
# smaller); the mapping's pages are only touched as far as used.
SUM_SLOT_BYTES = 1 << 20
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


def _views(buffer, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Arrays shaped and typed as `arrays`, laid one after the other in `buffer`
    (each at a 64-byte boundary)."""
    views, offset = [], 0
    for array in arrays:
        views.append(np.ndarray(array.shape, array.dtype, buffer, offset))
        offset += -(-array.nbytes // 64) * 64
    return views


def _layout_bytes(arrays: list[np.ndarray]) -> int:
    return sum(-(-array.nbytes // 64) * 64 for array in arrays)


def _read_exactly(stream, view: memoryview) -> None:
    got = 0
    while got < len(view):
        count = stream.readinto(view[got:])
        if not count:
            raise PartFailed("a worker process ended (its pipe closed)")
        got += count


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
    array = np.empty(shape, dtype)
    _read_exactly(stream, memoryview(array).cast("B"))
    return array


class _Meeting:
    """Where the parts of one split meet: the sum boards and the pipes between the parts."""

    def __init__(self, count: int):
        self.count = count
        self.boards = [_shared(count * SUM_SLOT_BYTES) for _ in range(2)]
        # pipes[i][j]: part i -> part j (read end, write end)
        self.pipes = {(i, j): _pipe() for i in range(count) for j in range(count) if i != j}

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


def _pipe() -> tuple[int, int]:
    """A pipe that holds a part of a batch whole where Linux allows (1 MiB), so that sending
    it takes few wake-ups of the reader."""
    read, write = os.pipe()
    _OPEN_FDS.update((read, write))
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


class ProcessPart:
    """One part's place in a batch split over processes (see `cnnumpy.parallel.BatchSplit`)."""

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
                os.write(meeting.pipes[(self.index, other)][1], b".")
        for other in range(meeting.count):
            if other != self.index:
                got = os.read(meeting.pipes[(other, self.index)][0], 1)
                if got != b".":  # b"!" (that part failed) or b"" (its process ended)
                    self.broken = True
                    raise PartFailed("another part of the batch failed")

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
    own replica of `model` and copy of `criterion`."""

    def __init__(self, model, criterion, count: int, make_replica, blas_one_thread):
        self.model = model
        params = list(model.parameters().values())
        buffers = list(model.buffers().values())
        self.count = count
        self.meeting = _Meeting(count + 1)  # part 0 runs in this process
        self.param_memory = _shared(_layout_bytes(params))
        self.params = _views(self.param_memory, params)
        self.buffer_memory = _shared(_layout_bytes(buffers))
        self.buffers = _views(self.buffer_memory, buffers)
        self.grad_memory = [_shared(_layout_bytes(params)) for _ in range(count)]
        self.grads = [_views(memory, params) for memory in self.grad_memory]
        self.commands, self.replies, self.pids = [], [], []
        for part in range(1, count + 1):
            command_read, command_write = _pipe()
            reply_read, reply_write = _pipe()
            with warnings.catch_warnings():
                # Python 3.12+ warns of fork() in a process with threads (BLAS's, a pool's):
                # the worker runs only this module's loop, NumPy and OpenBLAS (which resets
                # its threads at a fork), and takes no lock another thread may have held.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the worker: never returns
                try:
                    # the calling process decides when to stop: a terminal's Ctrl-C or a
                    # SIGTERM to the process group ends the workers through their pipes
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    own = {command_read, reply_write, *(
                        ends[0] for (i, j), ends in self.meeting.pipes.items() if j == part), *(
                        ends[1] for (i, j), ends in self.meeting.pipes.items() if i == part)}
                    for fd in list(_OPEN_FDS - own):
                        _close(fd)  # other workers' pipes, and the calling process's ends
                    replica = make_replica(self.params)
                    _serve(replica, copy.copy(criterion), self.buffers, self.grads[part - 1],
                           ProcessPart(self.meeting, part), os.fdopen(command_read, "rb"),
                           os.fdopen(reply_write, "wb"), blas_one_thread)
                finally:
                    os._exit(0)
            _close(command_read)
            _close(reply_write)
            self.commands.append(os.fdopen(command_write, "wb"))
            self.replies.append(os.fdopen(reply_read, "rb"))
            self.pids.append(pid)
        self.meeting.keep_only(0)
        self.part = ProcessPart(self.meeting, 0)
        self._finalizer = weakref.finalize(self, _end, self.commands, self.replies, self.pids,
                                           self.meeting)

    def close(self) -> None:
        self._finalizer()

    def send(self, kind: str, x_parts, label_parts, offsets, total: int, training) -> None:
        """Start each worker on its part: parameters and buffers in the shared mappings, the
        part and its labels (or None) through its pipe."""
        for shared, param in zip(self.params, self.model.parameters().values()):
            np.copyto(shared, param)
        for shared, buffer in zip(self.buffers, self.model.buffers().values()):
            np.copyto(shared, buffer)
        for stream, x, labels, start in zip(self.commands, x_parts, label_parts, offsets):
            header = {"kind": kind, "shape": list(x.shape), "dtype": x.dtype.str,
                      "start": start, "total": total, "training": training,
                      "labels": None if labels is None else [list(labels.shape),
                                                             labels.dtype.str]}
            try:
                _send(stream, header, x, *(() if labels is None else (labels,)))
            except OSError as err:  # its pipe is closed: the worker ended
                raise PartFailed(f"a worker process ended ({err})") from None

    def results(self) -> list:
        """Each worker's (loss or None, output), or the first error they reported."""
        results, error = [], None
        for stream in self.replies:
            try:
                reply = _receive(stream)
                if "error" in reply:
                    raise _ERRORS.get(reply["error"], PartFailed)(reply["message"])
                output = _receive_array(stream, tuple(reply["shape"]), np.dtype(reply["dtype"]))
                results.append((reply.get("loss"), output))
            except Exception as err:  # the others are still read: each worker replies once
                if error is None or isinstance(error, PartFailed):
                    error = err
        if error is not None:
            raise error
        return results


def _end(commands, replies, pids, meeting) -> None:
    for stream in commands + replies:
        if not stream.closed:
            _OPEN_FDS.discard(stream.fileno())
        try:
            stream.close()  # the worker reads the end of its commands and exits
        except OSError:
            pass
    meeting.close()
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _serve(replica, criterion, buffers, grads, part: ProcessPart, commands, replies,
           blas_one_thread) -> None:
    """The worker's loop: a part of a batch per command, until the commands end."""
    from .parallel import set_batch_split

    modules = list(replica.modules())
    replica_buffers = list(replica.buffers().values())
    set_batch_split(replica, part)
    with blas_one_thread():
        while True:
            line = commands.readline()
            if not line:
                return
            header = json.loads(line)
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
                        loss = float(criterion.forward(output, labels))
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
            _send(replies, {"loss": loss, "shape": list(output.shape),
                            "dtype": output.dtype.str}, output)
