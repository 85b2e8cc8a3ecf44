"""Learning-rate schedules, per optimizer step, with PyTorch's formulas.

A schedule is a pure function of the step number t = 0, 1, 2, ... (the number of optimizer
steps already taken): step t uses `schedule.lr(t)` (and `schedule.momentum(t)` when it cycles
momentum), just as a PyTorch scheduler stepped once after every `optimizer.step()`. The only
state is t, so a resumed run needs nothing but the step count:

    schedule = OneCycle(max_lr=0.05, total_steps=epochs * batches_per_epoch)
    schedule.apply(optimizer, step)     # sets optimizer.lr (and momentum) for this step

`config()` gives the constructor arguments as JSON; `build_schedule(config)` rebuilds it.
"""

from __future__ import annotations

import math

from .validate import check_integer, check_number


def _check(name: str, value, low: float, high: float = math.inf, integer: bool = False):
    """`value` within [low, high] (an int when `integer`, else a finite float); ValueError
    naming it otherwise."""
    if integer:
        return check_integer(name, value, low, high)
    return check_number(name, value, low, high)


def cosine_anneal(start: float, end: float, fraction: float) -> float:
    """From `start` (fraction 0) to `end` (fraction 1) along half a cosine:
    end + (start - end) / 2 · (1 + cos(π · fraction))."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)


class Schedule:
    """Base: `lr(step)`, `momentum(step)` (None: leave the optimizer's), `apply`, `config`."""

    name = ""

    def lr(self, step: int) -> float:
        raise NotImplementedError

    def momentum(self, step: int) -> float | None:
        return None

    def apply(self, optimizer, step: int) -> float:
        """Set the optimizer's lr (and momentum, when cycled) for step `step`; returns the lr."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        optimizer.lr = self.lr(step)
        momentum = self.momentum(step)
        if momentum is not None:
            if not hasattr(optimizer, "momentum"):
                raise ValueError(f"{type(self).__name__} cycles momentum, but "
                                 f"{type(optimizer).__name__} has none")
            optimizer.momentum = momentum
        return optimizer.lr

    def config(self) -> dict:
        """{"name": ..., constructor arguments}, JSON-ready."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr(t) = lr."""

    name = "constant"

    def __init__(self, lr: float):
        self.base_lr = _check("lr", lr, 0.0)

    def lr(self, step):
        return self.base_lr

    def config(self):
        return {"name": self.name, "lr": self.base_lr}


class StepDecay(Schedule):
    """Step decay (PyTorch's StepLR): lr(t) = lr · gamma^⌊t / step_size⌋.

    Args:
        lr: the initial learning rate.
        step_size: optimizer steps between decays (>= 1; one epoch is `batches_per_epoch` steps).
        gamma: the decay factor (default 0.1).
    """

    name = "step"

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.base_lr = _check("lr", lr, 0.0)
        self.step_size = _check("step_size", step_size, 1, integer=True)
        self.gamma = _check("gamma", gamma, 0.0)

    def lr(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)

    def config(self):
        return {"name": self.name, "lr": self.base_lr, "step_size": self.step_size,
                "gamma": self.gamma}


class WarmupCosine(Schedule):
    """Linear warm-up, then cosine annealing to min_lr (PyTorch's SequentialLR of LinearLR and
    CosineAnnealingLR, milestone = warmup_steps):

        t < w:       lr(t) = lr · (f + (1 - f) · t / w)
        w <= t:      lr(t) = min_lr + (lr - min_lr) / 2 · (1 + cos(π · min(t - w, T) / T)),
                     T = total_steps - w

    Args:
        lr: the peak learning rate (reached at t = w).
        total_steps: the number of optimizer steps of the run (> warmup_steps).
        warmup_steps: w >= 0 (default 0: plain cosine annealing).
        min_lr: the final learning rate (default 0).
        warmup_start_factor: f in (0, 1], the first step's fraction of lr (default 1/3, LinearLR's).
    """

    name = "cosine"

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
                 warmup_start_factor: float = 1 / 3):
        self.base_lr = _check("lr", lr, 0.0)
        self.total_steps = _check("total_steps", total_steps, 1, integer=True)
        self.warmup_steps = _check("warmup_steps", warmup_steps, 0, self.total_steps - 1,
                                   integer=True)
        self.min_lr = _check("min_lr", min_lr, 0.0)
        self.warmup_start_factor = _check("warmup_start_factor", warmup_start_factor, 1e-12, 1.0)

    def lr(self, step):
        w, f = self.warmup_steps, self.warmup_start_factor
        if step < w:
            return self.base_lr * (f + (1 - f) * step / w)
        cosine_steps = self.total_steps - w
        return cosine_anneal(self.base_lr, self.min_lr, min(step - w, cosine_steps) / cosine_steps)

    def config(self):
        return {"name": self.name, "lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr,
                "warmup_start_factor": self.warmup_start_factor}


class OneCycle(Schedule):
    """The one-cycle policy (PyTorch's OneCycleLR, cosine annealing, two phases):

        initial = max_lr / div_factor,   final = initial / final_div_factor
        a = pct_start · total_steps - 1,  b = total_steps - 1     (phase ends, in steps)
        t <= a:  lr(t) = cos_anneal(initial, max_lr, t / a)
        t >  a:  lr(t) = cos_anneal(max_lr, final, (t - a) / (b - a))
    where cos_anneal(s, e, x) = e + (s - e) / 2 · (1 + cos(π·x)). With cycle_momentum the
    momentum (β1 for Adam) goes the other way: max_momentum -> base_momentum -> max_momentum.
    Steps past the end keep the final values. (A phase shorter than one step jumps to its
    end value, where PyTorch would divide by zero.)

    Args:
        max_lr: the peak learning rate.
        total_steps: the number of optimizer steps of the run (epochs · batches per epoch).
        pct_start: the fraction of steps spent increasing the lr (default 0.3).
        div_factor: initial = max_lr / div_factor (default 25).
        final_div_factor: final = initial / final_div_factor (default 1e4).
        cycle_momentum: cycle the optimizer's momentum (default True, as PyTorch).
        base_momentum, max_momentum: its range (default 0.85 and 0.95).
    """

    name = "onecycle"

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95):
        self.max_lr = _check("max_lr", max_lr, 0.0)
        self.total_steps = _check("total_steps", total_steps, 1, integer=True)
        self.pct_start = _check("pct_start", pct_start, 0.0, 1.0)
        self.div_factor = _check("div_factor", div_factor, 1e-12)
        self.final_div_factor = _check("final_div_factor", final_div_factor, 1e-12)
        if not isinstance(cycle_momentum, bool):
            raise ValueError(f"cycle_momentum must be True or False, got {cycle_momentum!r}")
        self.cycle_momentum = cycle_momentum
        self.base_momentum = _check("base_momentum", base_momentum, 0.0, 1.0)
        self.max_momentum = _check("max_momentum", max_momentum, 0.0, 1.0)
    def _phase(self, step: int) -> tuple[int, float]:
        """(phase 0 or 1, fraction of that phase done) for step `step`."""
        warmup_end = self.pct_start * self.total_steps - 1
        if step <= warmup_end:
            return 0, step / warmup_end if warmup_end > 0 else 1.0
        last = self.total_steps - 1
        done = min(step, last) - warmup_end
        return 1, done / (last - warmup_end) if last > warmup_end else 1.0

    def lr(self, step):
        initial = self.max_lr / self.div_factor
        phase, fraction = self._phase(step)
        if phase == 0:
            return cosine_anneal(initial, self.max_lr, fraction)
        return cosine_anneal(self.max_lr, initial / self.final_div_factor, fraction)

    def momentum(self, step):
        if not self.cycle_momentum:
            return None
        phase, fraction = self._phase(step)
        if phase == 0:
            return cosine_anneal(self.max_momentum, self.base_momentum, fraction)
        return cosine_anneal(self.base_momentum, self.max_momentum, fraction)

    def config(self):
        return {"name": self.name, "max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor, "cycle_momentum": self.cycle_momentum,
                "base_momentum": self.base_momentum, "max_momentum": self.max_momentum}


SCHEDULES = {cls.name: cls for cls in (Constant, StepDecay, WarmupCosine, OneCycle)}


def build_schedule(config: dict) -> Schedule:
    """Rebuild a schedule from its `config()`: {"name": "onecycle", "max_lr": 0.05, ...}."""
    name = config.get("name") if isinstance(config, dict) else config
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    arguments = {k: v for k, v in config.items() if k != "name"}
    try:
        return SCHEDULES[config["name"]](**arguments)
    except TypeError as err:
        raise ValueError(f"bad arguments for schedule {config['name']!r}: {err}") from None


def make_schedule(name: str, lr: float, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule `name` of a run of `epochs` epochs, as the command line builds it.

        constant   lr throughout
        step       StepDecay: lr × 0.1 every ⌊epochs / 3⌋ epochs (at least every epoch)
        cosine     WarmupCosine: one epoch of linear warm-up (at most all steps but one),
                   then cosine annealing to 0
        onecycle   OneCycle peaking at lr, PyTorch's defaults (momentum cycled 0.95-0.85-0.95)
    """
    total_steps = epochs * steps_per_epoch
    if name == "constant":
        return Constant(lr)
    if name == "step":
        return StepDecay(lr, step_size=max(1, epochs // 3) * steps_per_epoch)
    if name == "cosine":
        warmup = min(steps_per_epoch, total_steps - 1) if epochs > 1 else 0
        return WarmupCosine(lr, total_steps, warmup_steps=warmup)
    if name == "onecycle":
        return OneCycle(lr, total_steps)
    raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
