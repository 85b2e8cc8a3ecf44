"""Data parallelism over processes with MPI (mpi4py): every rank holds the whole model and
takes a part of each batch; one sum of the gradients per step keeps the copies identical.

    mpirun -n 2 cnnumpy train --distributed --out runs/fmnist-2
    mpirun -n 2 python script.py       # script: cn.fit(..., communicator=MPI.COMM_WORLD)

One step on P ranks with a global batch of B images: rank r takes the images
[B r / P, B (r + 1) / P) of the batch (every rank draws the same seeded order), so with n_r
images on rank r

    g = Σ_r (n_r / B) ∇ mean loss(part r) = ∇ mean loss(batch)

is summed over the ranks, and the optimizer step is shared out: the parameters' elements end
to end are cut into P ranges, rank r receives the sum of range r only (one Reduce_scatter of
a flat buffer of every gradient), updates those elements (`optimizer.step(part)`: the update
rules are elementwise), and one Allgatherv gives every rank every range's new values. The
same bytes travel as in one Allreduce of the gradients, and each rank makes 1/P of the
update instead of all of it. When every rank runs on one machine, the two buffers live in
memory the ranks share (MPI-3 shared windows, `NodeMemory`) and no bytes travel at all: one
parameter buffer serves every rank, and rank r sums range r of the ranks' gradient buffers
itself, reading the others' in place; two synchronisations a step say when the buffers are
ready (on several machines, the Reduce_scatter and Allgatherv above). Augmentation draws for
the whole batch on every rank (the same generator state everywhere) and each rank keeps its
own images' draws, so P ranks train exactly as one process with batch B, up to the order of
float sums.

The pieces:
    BatchSplit   (from cnnumpy.parallel) a part of a global batch: where it starts, the
                 batch's size, and the sum over all parts (BatchNorm's statistics, dropout's
                 masks use it)
    WholeBatch   the one part of a single process
    MPISplit     a rank's part; its sum is an Allreduce
    Group        the ranks of a run: an mpi4py communicator whose collectives have a time
                 limit (a rank that died or hangs stops the others: MPI_Abort, with a message)
    Solo         the one-rank group of a run without MPI (no mpi4py needed)
    NodeMemory   arrays in the memory the ranks of one machine share (MPI shared windows)
    Replicas     what `fit` does with a group: agree on the run, start from rank 0's weights,
                 sum the gradients, share out the update, compare parameter checksums
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import zlib
from contextlib import contextmanager

import numpy as np

from .optim import element_pieces
from .parallel import BatchSplit, available_cpus

ABORT_STATUS = 3  # the exit status of every rank when a collective timed out
_MISSING = "(nothing)"
LOCAL_KEYS = ("data_dir",)  # settings that may differ between machines (paths to the data)


def mpi():
    """mpi4py's MPI module; ImportError saying what to install when it cannot be loaded.

    When this imports mpi4py (which starts MPI), Open MPI's one-sided framework is told not to
    try UCX for windows (OMPI_MCA_osc=^ucx, unless the environment sets it): on a machine
    without a UCX network, Open MPI 5 prints an error for it at every shared window and then
    uses shared memory anyway. Windows here are only shared memory (`NodeMemory`)."""
    if "mpi4py.MPI" not in sys.modules:
        os.environ.setdefault("OMPI_MCA_osc", "^ucx")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as err:
        raise ImportError(f"distributed training needs mpi4py and an MPI library ({err}): "
                          f"pip install 'cnnumpy[mpi]' (mpi4py and Open MPI), then start "
                          f"the ranks with mpirun -n P ...") from None
    return MPI


class AllRanksError(Exception):
    """An error raised alike on every rank: each rank stops by itself, and one report (rank
    0's) is enough."""


class RankAgreementError(AllRanksError, ValueError):
    """The ranks disagree on the run, or rank 0 refused it."""


class ReplicasDivergedError(AllRanksError, RuntimeError):
    """The ranks' copies of the model are no longer identical."""


# --------------------------------------------------------------------------- batch splits


class WholeBatch(BatchSplit):
    """The global batch in one part (one process): the sum over all parts is the array."""

    whole = True

    def __init__(self, total: int):
        self.start, self.total = 0, total

    def sum(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)


class MPISplit(BatchSplit):
    """One rank's part of a global batch: samples [start, start + n) of `total`; `sum` adds
    the arrays of all ranks of `group` (an Allreduce under the group's time limit, which gives
    every rank the same result: BatchNorm's ranks decide alike from it whether to meet again,
    see `functional.normalization`)."""

    def __init__(self, group: "Group", start: int, total: int):
        self.group, self.start, self.total = group, start, total

    def sum(self, array: np.ndarray) -> np.ndarray:
        return self.group.sum(array)


def part_bounds(total: int, rank: int, size: int) -> slice:
    """Rank `rank`'s samples of a batch of `total` over `size` ranks: near-equal contiguous
    parts in rank order (a part is empty when the batch has fewer samples than ranks)."""
    return slice(total * rank // size, total * (rank + 1) // size)


# --------------------------------------------------------------------------- groups


class Solo:
    """The group of a run in one process: every collective is the identity."""

    rank, size, local_size = 0, 1, 1
    note = ""
    node_memory = None  # nothing to share

    def sum(self, array: np.ndarray, what: str = "") -> np.ndarray:
        return np.array(array, copy=True)

    def any(self, flag: bool, what: str = "") -> bool:
        return bool(flag)

    def gather(self, value, what: str = "") -> list:
        return [value]

    def root_decides(self, decide, what: str = ""):
        return decide()

    def part(self, total: int) -> slice:
        return slice(0, total)

    def split(self, total: int) -> WholeBatch:
        return WholeBatch(total)


class Group:
    """The ranks of one run, over an mpi4py communicator (default MPI.COMM_WORLD).

    Every collective runs under a time limit: a watchdog thread sees a collective that has
    not ended after `timeout` seconds (a rank died, hangs, or left the loop on an error),
    prints which collective on which rank, and calls MPI_Abort, which stops every rank of the
    job (exit status ABORT_STATUS). Checkpoints are written atomically, so the last one stays
    loadable; `note` (set by `fit`) is added to the message to say which.

    Args:
        comm: an mpi4py communicator.
        timeout: seconds a collective may wait for the slowest rank; longer than any work
            one rank does alone between two collectives (rank 0 writing a checkpoint).
        check_every: steps between two comparisons of the ranks' parameter checksums (also
            compared before every checkpoint and at the end).
        node_memory: when every rank runs on one machine, keep the flat buffers of
            parameters and gradients in memory the ranks share (`NodeMemory`) instead of
            sending them (default True; False: the collectives of several machines).
    """

    def __init__(self, comm=None, *, timeout: float = 300.0, check_every: int = 100,
                 node_memory: bool = True):
        MPI = mpi()
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout, self.check_every = float(timeout), check_every
        self.note = ""
        self._current: tuple[str, float] | None = None  # (collective, start) in progress
        self._watchdog: threading.Thread | None = None
        if not isinstance(node_memory, bool):
            raise ValueError(f"node_memory must be True or False, got {node_memory!r}")
        with self._limited("finding the ranks on each machine"):
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        one_machine = self.size > 1 and self.local_size == self.size
        # only if every rank asks for it (and numbers the ranks alike)
        shared = one_machine and node_memory and node.Get_rank() == self.rank
        self.node_memory = NodeMemory(self, node) if not self.any(
            not shared, "agreeing on shared memory") else None
        if self.node_memory is None:
            node.Free()

    # ------------------------------------------------------------------ time limit

    @contextmanager
    def _limited(self, what: str):
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                              name="cnnumpy-mpi-watchdog")
            self._watchdog.start()
        self._current = (what, time.monotonic())  # one assignment: the watchdog reads it whole
        try:
            yield
        finally:
            self._current = None

    def _watch(self) -> None:
        period = min(1.0, self.timeout / 10)
        while True:
            time.sleep(period)
            current = self._current
            if current is not None and time.monotonic() - current[1] > self.timeout:
                what = current[0]
                sys.stderr.write(
                    f"cnnumpy: error: rank {self.rank} of {self.size}: {what} got no answer "
                    f"from every rank within {self.timeout:g} s: a rank died, hangs or "
                    f"stopped on an error; stopping all ranks (MPI_Abort)."
                    f"{' ' + self.note if self.note else ''}\n")
                sys.stderr.flush()
                self.comm.Abort(ABORT_STATUS)
                return

    # ------------------------------------------------------------------ collectives

    def sum(self, array: np.ndarray, what: str = "a sum over the ranks") -> np.ndarray:
        """Elementwise sum of `array` over the ranks, as a new array on every rank."""
        array = np.ascontiguousarray(array)
        out = np.empty_like(array)
        with self._limited(what):
            self.comm.Allreduce(array, out, op=self._MPI.SUM)
        return out

    def sum_parts(self, buffer: np.ndarray, counts: list[int],
                  what: str = "a sum over the ranks, in parts") -> np.ndarray:
        """This rank's part of the elementwise sum of `buffer` over the ranks: the parts are
        consecutive, counts[r] elements for rank r (a new array; `buffer` is not changed)."""
        out = np.empty(counts[self.rank], dtype=buffer.dtype)
        with self._limited(what):
            self.comm.Reduce_scatter(buffer, out, recvcounts=counts, op=self._MPI.SUM)
        return out

    def share_parts(self, buffer: np.ndarray, counts: list[int],
                    what: str = "an exchange of the ranks' parts") -> np.ndarray:
        """Fill the contiguous `buffer`, in place, with every rank's part of it: counts[r]
        consecutive elements from rank r (each rank holds its own part on entry)."""
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        with self._limited(what):
            self.comm.Allgatherv(self._MPI.IN_PLACE, [buffer, (counts, starts)])
        return buffer

    def barrier(self, what: str = "a barrier") -> None:
        """Return when every rank has called it."""
        with self._limited(what):
            self.comm.Barrier()

    def any(self, flag: bool, what: str = "the stop request") -> bool:
        """True on every rank when `flag` is true on at least one."""
        buffer = np.array([1 if flag else 0], dtype=np.int32)
        with self._limited(what):
            self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.MAX)
        return bool(buffer[0])

    def broadcast(self, buffer: np.ndarray, what: str = "a broadcast from rank 0") -> np.ndarray:
        """Overwrite the contiguous `buffer` with rank 0's, in place."""
        with self._limited(what):
            self.comm.Bcast(buffer, root=0)
        return buffer

    def gather(self, value, what: str = "a gather") -> list:
        """[value of rank 0, value of rank 1, ...] on every rank (small picklable values)."""
        with self._limited(what):
            return self.comm.allgather(value)

    def root_decides(self, decide, what: str = "rank 0's decision"):
        """Rank 0's `decide()` on every rank; an error it raises is raised on every rank as a
        RankAgreementError with the same message."""
        if self.rank == 0:
            try:
                outcome = (True, decide())
            except (ValueError, OSError) as err:
                outcome = (False, str(err))
        else:
            outcome = None
        with self._limited(what):
            ok, value = self.comm.bcast(outcome, root=0)
        if not ok:
            raise RankAgreementError(value)
        return value

    def part(self, total: int) -> slice:
        """This rank's samples of a batch (or data set) of `total`."""
        return part_bounds(total, self.rank, self.size)

    def split(self, total: int) -> MPISplit:
        return MPISplit(self, self.part(total).start, total)


class NodeMemory:
    """Arrays in the memory that the ranks of one machine share: MPI-3 shared windows
    (MPI_Win_allocate_shared) over the machine's communicator, whose ranks are the group's.

    `rank_arrays` gives every rank an array of its own to write, which the other ranks read in
    place; `one_array` gives one array that every rank sees (rank 0's memory). What a rank
    writes before `synchronize` every rank reads after it (MPI's unified memory model: a
    window sync on each side of a barrier, or of another collective). `free` lets go of the
    windows that no array refers to any more on any rank (every array made from a window is a
    view of one kept here, so its reference count says); the others stay until the process
    ends.

    Open MPI keeps the windows in files under /dev/shm (or its osc_sm_backing_directory):
    `fits` says whether that has room.
    """

    def __init__(self, group: "Group", comm):
        self.group, self.comm = group, comm
        self._windows: list = []  # [(window, [its arrays, one per rank])]

    def fits(self, nbytes: int) -> bool:
        """Whether the folder where Open MPI puts its shared windows has `nbytes` free, with
        a margin (True when there is no such folder: the MPI library puts them elsewhere)."""
        folder = os.environ.get("OMPI_MCA_osc_sm_backing_directory", "/dev/shm")
        try:
            return shutil.disk_usage(folder).free >= 1.25 * nbytes
        except OSError:
            return True

    def _segments(self, counts: list[int], dtype, what: str) -> list[np.ndarray]:
        """A window of counts[r] elements of rank r's memory, as one array per rank."""
        MPI, dtype = self.group._MPI, np.dtype(dtype)
        with self.group._limited(what):
            window = MPI.Win.Allocate_shared(counts[self.group.rank] * dtype.itemsize,
                                             dtype.itemsize, comm=self.comm)
        window.Lock_all()  # loads and stores from now on; Sync orders them
        arrays = [np.frombuffer(window.Shared_query(rank)[0], dtype=dtype, count=count)
                  for rank, count in enumerate(counts)]
        self._windows.append((window, arrays))
        return [array[:] for array in arrays]  # views: what refers to them is counted

    def rank_arrays(self, count: int, dtype, what: str) -> list[np.ndarray]:
        """[rank 0's array, rank 1's, ...], each of `count` elements (contents undefined)."""
        return self._segments([count] * self.group.size, dtype, what)

    def one_array(self, count: int, dtype, what: str) -> np.ndarray:
        """One array of `count` elements that every rank sees (contents undefined)."""
        return self._segments([count] + [0] * (self.group.size - 1), dtype, what)[0]

    def synchronize(self, what: str, collective=None):
        """Return when every rank has called it, every rank's earlier writes to the shared
        arrays visible to all: a barrier, or `collective()` (whose result is returned), which
        no rank leaves before every rank has entered it (an Allreduce)."""
        for window, _ in self._windows:
            window.Sync()
        result = self.group.barrier(what) if collective is None else collective()
        for window, _ in self._windows:
            window.Sync()
        return result

    def free(self) -> int:
        """Free the windows that no array refers to on any rank (a collective: every rank
        calls it); returns how many stay (an array made from them is still alive)."""
        held = [any(_references(arrays, index) > _ONLY_LISTED for index in range(len(arrays)))
                for _, arrays in self._windows]
        anywhere = self.group.gather(held, "freeing the shared memory")
        kept = []
        with self.group._limited("freeing the shared memory"):
            for (window, arrays), *holders in zip(self._windows, *anywhere):
                if any(holders):
                    kept.append((window, arrays))
                else:
                    window.Unlock_all()
                    window.Free()
        self._windows = kept
        return len(kept)


def _references(arrays: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(arrays[index])


# What `_references` counts for an array that only its list holds (a view of it holds it too)
_ONLY_LISTED = _references([np.empty(1)], 0)


def as_group(communicator) -> Solo | Group:
    """None -> Solo(); a Group or Solo as it is; an mpi4py communicator -> Group(comm)."""
    if communicator is None:
        return Solo()
    if isinstance(communicator, (Group, Solo)):
        return communicator
    return Group(communicator)


def cpus_per_rank(group) -> int:
    """The CPUs of this machine shared by its ranks: at least one each."""
    return max(1, available_cpus() // group.local_size)


# --------------------------------------------------------------------------- replicas


def fingerprint(array: np.ndarray) -> str:
    """Shape, dtype and CRC-32 of an array's bytes: equal arrays, equal fingerprints."""
    crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return f"{array.dtype}{list(array.shape)} crc32 {crc:08x}"


def _flatten(description: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, without the LOCAL_KEYS entries."""
    flat = {}
    for key, value in description.items():
        if key in LOCAL_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_agreement(group, description: dict) -> None:
    """RankAgreementError on every rank, naming each difference, unless every rank's
    `description` (a JSON-ready dict of what the run depends on) equals rank 0's."""
    every = group.gather(_flatten(description), "comparing the ranks' settings")
    reference, problems = every[0], []
    for rank, other in enumerate(every[1:], start=1):
        for key in sorted(set(reference) | set(other)):
            ours, theirs = reference.get(key, _MISSING), other.get(key, _MISSING)
            if json.dumps(ours, sort_keys=True) != json.dumps(theirs, sort_keys=True):
                problems.append(f"{key}: rank 0 has {ours!r}, rank {rank} has {theirs!r}")
    if problems:
        shown = "; ".join(problems[:6])
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise RankAgreementError(f"the ranks were not started alike ({shown}{more}): give "
                                 f"every rank the same arguments, data and seed")


class FlatParameters:
    """A model's parameters and gradients moved into two flat buffers, `params` and `grads`:
    every parameter array (and its gradient) becomes a view of its range of the buffer, end
    to end in the order of `model.parameters()`. The collectives then send and receive the
    buffers themselves, with no copies in or out.

    The layers write their gradients into these views (in place, see `cnnumpy.layers.Layer`);
    for a layer that assigns new gradient arrays instead, `gradients()` copies them in and
    puts the views back. `holds(model)` says whether the model still has these arrays
    (`astype` or replacing a layer makes new ones).

    With `memory` (a `NodeMemory`: every rank of `group` on one machine), the buffers are
    shared: `params` is one buffer for every rank (filled with rank 0's values), and
    `rank_grads[r]` is rank r's gradient buffer (`grads` this rank's), which the others read.
    """

    def __init__(self, model, memory: NodeMemory | None = None, rank: int = 0):
        params = model.parameters()
        dtypes = sorted({str(param.dtype) for param in params.values()})
        if len(dtypes) > 1:  # the same model on every rank: every rank stops here
            raise ValueError(f"the parameters mix dtypes ({', '.join(dtypes)}): a distributed "
                             f"run sums them in one buffer; convert the model with astype")
        first_name = {}
        for name, param in params.items():
            if first_name.setdefault(id(param), name) != name:
                raise ValueError(f"the parameters {first_name[id(param)]} and {name} are one "
                                 f"array: a distributed run gives each parameter its own range "
                                 f"of one buffer, so tied weights cannot be shared out")
        self.places = list(model.parameter_places())
        size = sum(param.size for param in params.values())
        if memory is None:
            self.params = np.empty(size, dtype=dtypes[0])
            self.grads, self.rank_grads = np.empty(size, dtype=dtypes[0]), None
        else:
            self.params = memory.one_array(size, dtypes[0], "sharing the parameters' memory")
            self.rank_grads = memory.rank_arrays(size, dtypes[0],
                                                 "sharing the gradients' memory")
            self.grads = self.rank_grads[rank]
        self.param_views, self.grad_views = [], []
        offset = 0
        for _, module, key in self.places:
            param = getattr(module, key)
            where = slice(offset, offset + param.size)
            views = self.params[where].reshape(param.shape), self.grads[where].reshape(param.shape)
            if memory is None or rank == 0:
                views[0][...] = param
            grad = getattr(module, "d" + key, None)  # (made again: the last backward's)
            views[1][...] = grad if np.shape(grad) == param.shape else 0
            setattr(module, key, views[0])
            setattr(module, "d" + key, views[1])
            self.param_views.append(views[0])
            self.grad_views.append(views[1])
            offset += param.size
        if memory is not None:  # every rank's model holds rank 0's values from here on
            memory.synchronize("sharing rank 0's parameters")

    def holds(self, model) -> bool:
        """Whether the model's parameters are still this object's views (the same model, no
        array replaced since)."""
        places = list(model.parameter_places())
        return len(places) == len(self.places) and all(
            getattr(module, key) is view
            for (_, module, key), view in zip(places, self.param_views))

    def release(self) -> None:
        """Give every parameter and gradient the model still takes from these buffers an
        array of its own (a copy): the model no longer shares them (with other ranks)."""
        for (_, module, key), param, grad in zip(self.places, self.param_views,
                                                  self.grad_views):
            for name, view in ((key, param), ("d" + key, grad)):
                if getattr(module, name) is view:
                    setattr(module, name, view.copy())

    def gradients(self) -> np.ndarray:
        """The flat buffer of the gradients of the last backward."""
        for (name, module, key), view in zip(self.places, self.grad_views):
            grad = getattr(module, "d" + key)
            if grad is not view:  # assigned by the layer: one copy, and the view goes back
                if np.shape(grad) != view.shape:
                    raise ValueError(f"the gradient of {name} has shape {np.shape(grad)}, the "
                                     f"parameter {view.shape}")
                view[...] = grad
                setattr(module, "d" + key, view)
        return self.grads


class Replicas:
    """The copies of `model` on the ranks of `group`, kept identical: what `fit` does with a
    group (with Solo every method costs nothing).

    With more than one rank, the model's parameters and gradients live in one flat buffer
    each (`FlatParameters`, made by `start`): the sum of the gradients and the exchange of
    the new values are collectives on those buffers themselves, or, on one machine, reads of
    the ranks' shared buffers between two barriers. `finish` gives the model arrays of its
    own again.
    """

    def __init__(self, model, group):
        self.model, self.group = model, group
        self.flat: FlatParameters | None = None
        self.memory: NodeMemory | None = None  # where the buffers are shared, if they are
        self._buffer: np.ndarray | None = None

    def _flat_buffer(self) -> np.ndarray:
        """A scratch buffer of as many elements as the parameters, in their dtype (reused)."""
        params = self.flat.params
        if self._buffer is None or (self._buffer.shape, self._buffer.dtype) != (
                params.shape, params.dtype):
            self._buffer = np.empty_like(params)
        return self._buffer

    def _move_to_flat(self) -> None:
        """Move the model's parameters and gradients into new flat buffers, every rank at
        once (the gradients of the last backward kept), every rank's parameters rank 0's.
        In memory the ranks share when the group allows it and /dev/shm has room, else sent."""
        params = self.model.parameters().values()
        layout = (sum(param.size for param in params),
                  ", ".join(sorted({str(param.dtype) for param in params})))
        layouts = self.group.gather(layout, "comparing the parameters' layout")
        if len(set(layouts)) > 1:
            listed = "; ".join(f"rank {rank}: {count} in {dtype}"
                               for rank, (count, dtype) in enumerate(layouts))
            raise RankAgreementError(f"the ranks' models hold different parameters ({listed}): "
                                     f"change every rank's model alike")
        memory = self.group.node_memory
        if memory is not None:  # the parameters once and every rank's gradients
            nbytes = (1 + self.group.size) * sum(param.nbytes for param in params)
            if self.group.any(not memory.fits(nbytes), "checking the room for shared memory"):
                if self.group.rank == 0:
                    print(f"cnnumpy: /dev/shm lacks the {nbytes / 1e6:.0f} MB the shared "
                          f"buffers take on a rank's machine: the ranks send them instead",
                          file=sys.stderr, flush=True)
                memory = None
        self.memory = memory
        self.flat = FlatParameters(self.model, memory, self.group.rank)
        if memory is None:
            self.group.broadcast(self.flat.params, "the broadcast of rank 0's parameters")

    def start(self, describe) -> None:
        """Check that every rank's `describe()` (what the run depends on, JSON-ready) is the
        same, move the parameters into flat buffers, and give every rank rank 0's (one
        broadcast of the parameter buffer; in shared memory, it is rank 0's already)."""
        if self.group.size == 1:
            return
        check_agreement(self.group, describe())
        self._move_to_flat()

    def finish(self, free: bool = False) -> None:
        """After the run: the model's parameters and gradients become arrays of its own, no
        longer shared with other ranks' models, and its layers let go of their caches (which
        hold views of the buffers); no collective: also when the run failed. free=True (every
        rank ended the run) also frees the shared memory that nothing refers to any more."""
        if self.flat is not None:
            self.flat.release()
            self.flat = None
            for module in self.model.modules():
                if getattr(module, "cache", None) is not None:
                    module.cache = None
        self.memory = None
        if free and self.group.node_memory is not None:  # also the windows of earlier moves
            self.group.node_memory.free()

    @property
    def part(self) -> slice | None:
        """The range of the parameters' elements end to end whose update this rank makes
        (`optimizer.step(part)`); None in one process (the whole update)."""
        if self.group.size == 1:
            return None
        return part_bounds(self.model.num_parameters(), self.group.rank, self.group.size)

    def _counts(self) -> list[int]:
        """The number of elements in each rank's part, rank by rank."""
        total = self.model.num_parameters()
        return [part.stop - part.start for part in
                (part_bounds(total, rank, self.group.size) for rank in range(self.group.size))]

    def reduce(self, loss: float, correct: int, count: int, total: int,
               what: str = "the sum of the gradients") -> tuple[float, int]:
        """Sum the gradients of every rank's part over the ranks, where this rank's update
        needs them: in the elements of `part` (the others keep this rank's own share).

        Args:
            loss, correct: this rank's mean loss and correct predictions on its `count`
                images (anything when count is 0: the rank had no images).
            total: the images of the global batch.
        The model's gradients must be this rank's share of the gradient of the mean loss over
        the global batch (`BatchParallel.forward_backward(..., split=...)` makes them so: a
        rank's loss gradient is scaled by count / total before backward, which BatchNorm's
        backward needs, its sums running over every rank); their sum over the ranks is the
        gradient of the mean loss over the global batch. Returns (mean loss, correct) of the
        global batch.
        """
        if self.group.size == 1:
            return loss, correct
        if not count:  # no images, no share of the gradient
            self.model.zero_grad()
        replaced = not self.flat.holds(self.model)  # e.g. by astype in a callback
        if not replaced:
            self.flat.gradients()  # copied in, if a layer assigned new arrays
        mine = np.array([loss * count, correct, replaced] if count else [0.0, 0.0, replaced])
        memory = self.memory
        if memory is None:
            sums = self.group.sum(mine, "the sum of the losses")
        else:  # no rank leaves the sum before every rank's gradients are written
            sums = memory.synchronize(what, lambda: self.group.sum(mine, "the sum of the losses"))
        if sums[2]:  # arrays replaced on some rank: new buffers everywhere, the gradients kept
            self._move_to_flat()
            memory = self.memory
        grads, part = self.flat.grads, self.part
        if memory is None:
            grads[part] = self.group.sum_parts(grads, self._counts(), what)
        else:  # add the other ranks' gradients in this rank's part, read where they are
            own = grads[part]
            for rank, other in enumerate(self.flat.rank_grads):
                if rank != self.group.rank:
                    own += other[part]
        return float(sums[0]) / total, int(round(float(sums[1])))

    def share(self) -> None:
        """After every rank updated its `part` of the parameters: give every rank all of
        the new values (one Allgatherv; on one machine, a barrier)."""
        if self.group.size == 1:
            return
        what = "the exchange of the updated parameters"
        if self.memory is None:
            self.group.share_parts(self.flat.params, self._counts(), what)
        else:  # one buffer: every rank wrote its part there
            self.memory.synchronize(what)

    def whole_optimizer(self, optimizer) -> None:
        """Make the optimizer's state (momentum buffers, moments) whole on every rank: each
        rank's updates kept only its part of it up to date. Before a checkpoint, and at the
        end of a run."""
        if self.group.size == 1:
            return
        params = self.model.parameters()
        for slot, arrays in optimizer.state.items():
            named = set().union(*self.group.gather(sorted(arrays), f"the optimizer's {slot}"))
            if named:  # every parameter has it once its part was updated on some rank
                for name in params:
                    arrays.setdefault(name, np.zeros(params[name].shape, params[name].dtype))
                self._exchange([arrays[name] for name in params], f"the optimizer's {slot}")

    def _exchange(self, arrays: list[np.ndarray], what: str) -> None:
        """Every rank's `part` of the arrays' elements end to end to every rank, in place."""
        buffer = self._flat_buffer()
        own = buffer[self.part]  # a view: this rank's part of the buffer
        for index, where, place in element_pieces(arrays, self.part):
            own[place] = arrays[index].reshape(-1)[where]
        self.group.share_parts(buffer, self._counts(), what)
        offset = 0
        for array in arrays:
            array[...] = buffer[offset:offset + array.size].reshape(array.shape)
            offset += array.size

    def step_done(self, step: int) -> None:
        """After optimizer step `step`: compare the checksums every `check_every` steps."""
        if self.group.size > 1 and step % self.group.check_every == 0:
            self.check(step)

    def check(self, step: int) -> None:
        """ReplicasDivergedError on every rank unless all ranks hold bit-identical parameters."""
        if self.group.size == 1:
            return
        crc = 0
        for param in self.model.state_dict().values():  # buffers too: running statistics
            crc = zlib.crc32(np.ascontiguousarray(param).view(np.uint8).reshape(-1), crc)
        every = self.group.gather(crc, f"comparing the parameters' checksums at step {step}")
        if len(set(every)) > 1:
            listed = ", ".join(f"rank {rank} {value:08x}" for rank, value in enumerate(every))
            raise ReplicasDivergedError(
                f"the ranks' parameters differ after step {step} (CRC-32: {listed}): the "
                f"copies of the model diverged, so the run stops; the MPI library's sums may "
                f"differ between ranks (try another allreduce algorithm) or a rank's memory "
                f"was changed")
