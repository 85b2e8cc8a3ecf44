"""Recording a forward pass: every module call, with the arrays it took and gave.

    t = cnnumpy.trace.record(model, x)        # runs model(x) and records it
    for call in t.calls:                      # in the order the calls started, parents first
        call.name, call.module, call.inputs, call.output, call.depth

Composite modules only route arrays between their children, and the arithmetic happens in
leaves (`Add` included), so the leaf calls of a trace are the whole computation: a graph whose
edges are the arrays themselves (an array is known by identity, and the trace holds a
reference to every array it saw, so none is freed and its identity reused while the trace
lives). The summary, the receptive fields (`cnnumpy.shapes.traced_fields`), `cnnumpy.insight`
and the plots read models through a trace, so they work for any tree of modules, branches
included.

While a trace records, `Sequential` runs its layers as written (no ReLU/max-pool swap), so
every recorded output is the one the model's definition names. Recording is per thread:
record a model's own pass, not a `cnnumpy.parallel.BatchParallel` pass (its replicas and
worker processes are not the model's modules, and would not be recorded).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

_local = threading.local()


def active_recorder() -> "Trace | None":
    """The trace recording in this thread, or None."""
    return getattr(_local, "recorder", None)


@dataclass(eq=False)
class Call:
    """One call of one module."""

    name: str                  # dotted name in the traced model ("" for the model itself)
    module: object
    inputs: tuple
    depth: int                 # 0 for the model, 1 for its children, ...
    output: np.ndarray | None = None

    @property
    def is_leaf(self) -> bool:
        return next(self.module.named_children(), None) is None


@dataclass(eq=False)
class Trace:
    """The calls of one forward pass of `model` (see the module docstring)."""

    model: object
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self):
        self._names = {id(module): name for name, module in self.model.named_modules()}
        self._depth = 0

    def enter(self, module, inputs: tuple) -> Call:
        name = self._names.get(id(module), f"<{type(module).__name__} outside the model>")
        call = Call(name, module, inputs, self._depth)
        self.calls.append(call)
        self._depth += 1
        return call

    def exit(self, call: Call, output) -> None:
        call.output = output
        self._depth -= 1

    @property
    def input(self) -> np.ndarray:
        return self.calls[0].inputs[0]

    def leaves(self) -> list[Call]:
        return [call for call in self.calls if call.is_leaf]

    def call(self, name: str) -> Call:
        """The (first) call of the module called `name`; ValueError listing the names if none."""
        for call in self.calls:
            if call.name == name:
                return call
        names = [call.name for call in self.calls if call.name]
        raise ValueError(f"no module named {name!r} ran; the modules are {names}")


@contextmanager
def recording(model) -> Iterator[Trace]:
    """Record the module calls made in this thread inside the `with` block."""
    if active_recorder() is not None:
        raise RuntimeError("a trace is already recording in this thread")
    trace = Trace(model)
    _local.recorder = trace
    try:
        yield trace
    finally:
        _local.recorder = None


@contextmanager
def evaluation(model):
    """Evaluation mode inside the block (BatchNorm uses its running statistics and updates
    nothing, Dropout is the identity), every module's own flag restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def preserved(model):
    """Inside the block, passes may overwrite the layers' caches; after it, every module has
    its earlier cache back (a training step's forward still waiting for its backward)."""
    kept = [(module, {key: vars(module)[key] for key in _PASS_STATE if key in vars(module)})
            for module in model.modules()]
    try:
        yield model
    finally:
        for module, state in kept:
            for key in _PASS_STATE:
                if key in state:
                    setattr(module, key, state[key])
                elif key in vars(module):
                    delattr(module, key)


# What a forward pass leaves in a module for its backward.
_PASS_STATE = ("cache", "_executed")


def record(model, x: np.ndarray, keep_cache: bool = False) -> Trace:
    """Run `model(x)` in evaluation mode and return its trace; the model's modes are left as
    they were. keep_cache=False (inference) also leaves the caches as they were. keep_cache=True
    keeps what backward needs, for `backward_from`, in the layers' caches: do it inside
    `with preserved(model):` to have the earlier caches back afterwards."""
    caches = nullcontext() if keep_cache else preserved(model)
    with caches, evaluation(model), recording(model) as trace:
        model(x, keep_cache=keep_cache)
    return trace


def backward_from(trace: Trace, array: np.ndarray, dout: np.ndarray) -> np.ndarray:
    """Gradient with respect to the traced input of Σ dout · `array`, for any array a leaf
    of the trace produced (a layer's output inside a branch, say), through the leaves only.

    The trace must have been recorded with keep_cache=True, and each leaf must have run once
    in it (a leaf called twice keeps only its last cache).
    """
    leaves = trace.leaves()
    seen: set[int] = set()
    for call in leaves:
        if id(call.module) in seen:
            raise ValueError(f"module {call.name!r} ran twice in one forward pass: its cache "
                             f"holds only the last call, so the gradient cannot be traced")
        seen.add(id(call.module))
    grads = {id(array): dout}
    for call in reversed(leaves):
        if id(call.output) not in grads:
            continue
        dinputs = call.module.backward(grads.pop(id(call.output)))
        if len(call.inputs) == 1:
            dinputs = (dinputs,)
        for x, dx in zip(call.inputs, dinputs):
            grads[id(x)] = grads[id(x)] + dx if id(x) in grads else dx
    if id(trace.input) not in grads:
        raise ValueError("the array does not depend on the model's input in this trace")
    return grads[id(trace.input)]
