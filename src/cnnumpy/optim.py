"""Optimizers with the update rules of PyTorch's `torch.optim`: SGD, Adam, AdamW.

An optimizer holds a model and walks its parameters by dotted name:

    opt = SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss = criterion(model.forward(x), y); model.backward(criterion.backward())
    opt.step()          # updates every array of model.parameters() in place, in its dtype
    opt.lr = 0.01       # schedules set the learning rate (and `momentum`) between steps

`model.parameters()` and `model.gradients()` are fetched at every step (cnnumpy's layers
write into their gradient arrays; a layer written elsewhere may assign new ones).
Per-parameter state (momentum buffers, moments) is keyed by the parameter's name and has its
dtype. `state_dict()` gives plain arrays plus JSON-ready scalars
for checkpoints; `load_state_dict()` restores them, so a resumed run takes identical steps.

Notation for one parameter p with gradient g at step t = 1, 2, ...; λ is weight_decay.
"""

from __future__ import annotations

import math

import numpy as np

from .validate import check_integer, check_number, kind


def _check_number(name: str, value, low: float, high: float = math.inf,
                  high_open: bool = False) -> float:
    """`value` as a finite float in [low, high] (or [low, high)); ValueError naming it otherwise."""
    return check_number(name, value, low, high, high_open=high_open)


class Optimizer:
    """Base of the optimizers: parameter walking, learning rate, step count, state (de)serialising.

    Subclasses set `slots` (the names of their per-parameter state arrays), implement
    `_update(param, grad, state, first)` and `hyperparameters()`, and may narrow
    `slots_in_use()` (plain SGD keeps no momentum buffer).
    """

    slots: tuple[str, ...] = ()

    def __init__(self, model, lr: float):
        if not hasattr(model, "parameters") or not hasattr(model, "gradients"):
            raise TypeError(
                f"{type(self).__name__} needs a cnnumpy module (with parameters() and "
                f"gradients()), got {type(model).__name__}"
            )
        if not model.parameters():
            raise ValueError(f"{type(self).__name__} got a model without parameters")
        self.model = model
        self.lr = lr
        self.steps = 0  # number of step() calls so far
        self.state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_number("lr", value, 0.0)

    def zero_grad(self) -> None:
        self.model.zero_grad()

    # Elements updated at a time: an update's temporaries (a few arrays of this many
    # elements) then stay in the L2 cache. SimpleCNN's 1.6 M float32 parameters updated
    # whole stream every temporary through memory: 1.5-1.7 times the time of blocks of
    # 32 K-64 K elements (benchmarks/bench_optim.py).
    block = 1 << 15

    def step(self, part: slice | None = None) -> None:
        """One update of every parameter, in place, from the gradients of the last backward.

        part: a range of the parameters' elements, counted through all of them end to end
        (in the order of `model.parameters()`): only those are updated. A distributed run
        shares the update out so (`cnnumpy.distributed.Replicas`): each rank updates its
        part, then the ranks exchange the new values. The update rules are elementwise, so
        the parts come out exactly as the whole does; for the same reason a parameter is
        updated `block` elements at a time.
        """
        params = self.model.parameters()
        grads = self.model.gradients()
        self.steps += 1
        for name, param in params.items():
            if grads[name].shape != param.shape:
                raise ValueError(f"gradient of {name} has shape {grads[name].shape}, "
                                 f"the parameter {param.shape}")
        named = list(params.items())
        if part is None:
            part = slice(0, sum(param.size for _, param in named))
        for index, where, _ in element_pieces([param for _, param in named], part):
            name, param = named[index]
            grad = grads[name].astype(param.dtype, copy=False)
            state, first = self._state_of(name, param)
            if where == slice(0, param.size) and not param.flags.c_contiguous:
                self._update(param, grad, state, first)  # whole: no flat view to cut
                continue
            flat, grad = _flat(param, name), grad.reshape(-1)
            for start in range(where.start, where.stop, self.block):
                piece = slice(start, min(start + self.block, where.stop))
                self._update(flat[piece], grad[piece],
                             {slot: array.reshape(-1)[piece] for slot, array in state.items()},
                             first)

    def _state_of(self, name: str, param: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Parameter `name`'s state arrays by slot, C-contiguous (the blocks of an update are
        views of their flattened elements), and whether any was just made (with zeros): the
        parameter's first update, which some rules treat apart."""
        first = False
        for slot in self.slots_in_use():
            arrays = self.state[slot]
            if name not in arrays:
                arrays[name], first = np.zeros(param.shape, param.dtype), True
            elif not arrays[name].flags.c_contiguous:  # set from elsewhere
                arrays[name] = np.ascontiguousarray(arrays[name])
        return {slot: self.state[slot][name] for slot in self.slots_in_use()}, first

    def slots_in_use(self) -> tuple[str, ...]:
        """The slots the update rule reads with the present hyperparameters."""
        return self.slots

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray],
                first: bool) -> None:
        """Update `param` (a parameter, or a piece of one) in place from its gradient `grad`;
        `state` holds the matching pieces of its state arrays by slot, `first` says whether
        this is the parameter's first update."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The constructor arguments (JSON-ready), lr included."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """{"name", "hyperparameters", "steps", "arrays": {"slot/param.name": array}}.

        Everything but "arrays" is JSON-ready; the arrays are the live state (copy to keep).
        """
        return {
            "name": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "steps": self.steps,
            "arrays": {f"{slot}/{name}": array
                       for slot, arrays in self.state.items() for name, array in arrays.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` of the same optimizer type for a model with the same names.

        Everything is checked before anything changes: the type, the hyperparameters (as the
        constructor checks them), the step count, and each array's name, shape, float dtype
        and finiteness. Raises ValueError (TypeError for a state that is not a dict)."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"optimizer state must be a dict (a state_dict()), "
                            f"got {kind(state)}")
        missing = sorted({"name", "hyperparameters", "steps", "arrays"} - set(state))
        if missing:
            raise ValueError(f"optimizer state lacks {missing}")
        if state["name"] != name:
            raise ValueError(f"optimizer state is for {state['name']!r}, not {name}")
        hyperparameters, arrays = state["hyperparameters"], state["arrays"]
        expected = set(self.hyperparameters())
        if not isinstance(hyperparameters, dict) or set(hyperparameters) != expected:
            got = sorted(hyperparameters) if isinstance(hyperparameters, dict) else hyperparameters
            raise ValueError(f"optimizer hyperparameters {got!r} do not match {name}'s "
                             f"{sorted(expected)}")
        try:  # the constructor's checks, on a throw-away optimizer
            checked = type(self)(self.model, **hyperparameters).hyperparameters()
        except (TypeError, ValueError) as err:
            raise ValueError(f"optimizer hyperparameters: {err}") from None
        steps = check_integer("optimizer steps", state["steps"], 0)
        if not isinstance(arrays, dict):
            raise ValueError(f"optimizer arrays must be a dict of name -> array, "
                             f"got {kind(arrays)}")
        params = self.model.parameters()
        buffers: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        for key, array in arrays.items():
            slot, _, param_name = str(key).partition("/")
            if slot not in buffers or param_name not in params:
                raise ValueError(f"optimizer state has an unexpected entry {key!r} "
                                 f"(slots {list(self.slots)}, parameters {sorted(params)})")
            param = params[param_name]
            if not isinstance(array, np.ndarray) or array.shape != param.shape:
                raise ValueError(f"optimizer state {key!r} has shape "
                                 f"{getattr(array, 'shape', None)}, the parameter {param.shape}")
            if array.dtype != param.dtype:
                raise ValueError(f"optimizer state {key!r} has dtype {array.dtype}, the "
                                 f"parameter {param.dtype}")
            if not np.isfinite(array).all():
                raise ValueError(f"optimizer state {key!r} holds NaN or infinite values")
            buffers[slot][param_name] = array.copy()
        for key, value in checked.items():
            setattr(self, key, value)
        self.steps = steps
        self.state = buffers

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

        d = g + λ·p
        b = d                              at the first step, then
        b = μ·b + (1 - dampening)·d        (momentum buffer, μ = momentum)
        d = d + μ·b  (nesterov)   or   d = b  (otherwise; no buffer when μ = 0)
        p = p - lr·d

    Args:
        model: a cnnumpy module.
        lr: learning rate (>= 0).
        momentum: μ in [0, 1) (default 0).
        dampening: in [0, 1] (default 0).
        nesterov: Nesterov momentum (needs μ > 0 and dampening 0), default False.
        weight_decay: λ >= 0 (L2 penalty added to the gradient), default 0.
    """

    slots = ("momentum_buffer",)

    def __init__(self, model, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(model, lr)
        self.momentum = momentum
        self.dampening = _check_number("dampening", dampening, 0.0, 1.0)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov momentum needs momentum > 0 and dampening 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")
        self.nesterov = nesterov

    @property
    def momentum(self) -> float:
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._momentum = _check_number("momentum", value, 0.0, 1.0, high_open=True)

    def slots_in_use(self):
        return self.slots if self.momentum else ()  # plain SGD keeps no buffer

    def _update(self, param, grad, state, first):
        d = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum:
            buf = state["momentum_buffer"]
            if first:
                buf[...] = d
            else:
                buf *= self.momentum
                if self.dampening:
                    buf += (1 - self.dampening) * d
                else:  # no scaling pass
                    buf += d
            d = d + self.momentum * buf if self.nesterov else buf
        param -= self.lr * d

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba), with bias correction, as `torch.optim.Adam`.

        g = g + λ·p                        (Adam: L2 penalty in the gradient)
        m = m + (1 - β1)·(g - m)           (= β1·m + (1 - β1)·g, first moment)
        v = β2·v + (1 - β2)·g²             (second moment)
        p = p - lr / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + eps)

    Args:
        model: a cnnumpy module.
        lr: learning rate (default 1e-3).
        betas: (β1, β2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: λ >= 0 (default 0).
    """

    slots = ("exp_avg", "exp_avg_sq")
    decoupled_weight_decay = False

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(model, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = betas
        self.eps = _check_number("eps", eps, 0.0)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)

    @property
    def betas(self) -> tuple[float, float]:
        return self._betas

    @betas.setter
    def betas(self, value) -> None:
        self._betas = (_check_number("betas[0]", value[0], 0.0, 1.0, high_open=True),
                       _check_number("betas[1]", value[1], 0.0, 1.0, high_open=True))

    @property
    def momentum(self) -> float:
        """β1: what a one-cycle schedule cycles (as PyTorch's OneCycleLR does for Adam)."""
        return self.betas[0]

    @momentum.setter
    def momentum(self, value: float) -> None:
        self.betas = (value, self.betas[1])

    def _update(self, param, grad, state, first):
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled_weight_decay:
                param *= 1 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        step_size = self.lr / (1 - beta1 ** self.steps)
        denom = np.sqrt(exp_avg_sq)
        denom /= math.sqrt(1 - beta2 ** self.steps)
        denom += self.eps
        param -= step_size * exp_avg / denom

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW`.

        p = p · (1 - lr·λ)                 (decay applied to the weights, not the gradient)
        then the Adam update of p with the plain gradient g.

    Args: as `Adam`, but weight_decay defaults to 1e-2 (as PyTorch).
    """

    decoupled_weight_decay = True

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(model, lr, betas=betas, eps=eps, weight_decay=weight_decay)


def element_pieces(arrays: list[np.ndarray], part: slice):
    """The arrays' elements in `part`, a range of all their elements end to end (each array
    flattened in C order, one after the other): (index, where, place) for each array with
    elements in it: its index in `arrays`, the range of those elements in the array, and
    their range in the part."""
    start = 0  # of the array's elements in the elements end to end
    for index, array in enumerate(arrays):
        low, high = max(part.start - start, 0), min(part.stop - start, array.size)
        if low < high:
            offset = start - part.start  # of the array in the part
            yield index, slice(low, high), slice(offset + low, offset + high)
        start += array.size


def _flat(param: np.ndarray, name: str) -> np.ndarray:
    """The elements of `param` as a 1-d view (updated in place through it)."""
    if not param.flags.c_contiguous:
        raise ValueError(f"parameter {name} is not contiguous in memory: it cannot be "
                         f"updated in parts")
    return param.reshape(-1)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def build_optimizer(name: str, model, **hyperparameters) -> Optimizer:
    """An optimizer by its lower-case name (sgd, adam, adamw) with its keyword arguments."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}") from None
    return cls(model, **hyperparameters)
