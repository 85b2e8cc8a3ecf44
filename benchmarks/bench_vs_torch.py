"""Speed and memory of cnnumpy against PyTorch on the CPU, float32, in one run.

    python benchmarks/bench_vs_torch.py [--repeats 30] [--warmup 5] [--no-memory] [--threads N]
                                        [--models simplecnn resnet20]

What it measures, with the default thread settings of both libraries:

- images/s of a training step (forward, softmax cross-entropy, backward, SGD-momentum update)
  and of inference (forward only), for SimpleCNN at 3x32x32 (batch 64) and 1x28x28 (batch 128)
  and ResNet-20 at 3x32x32 (batch 128). cnnumpy's inference ("infer") folds each BatchNorm
  into the convolution before it at every call, where that pays (`Conv2D.infer_fused`); for
  a model with BatchNorm, the row "folded" times a copy folded once beforehand
  (`cnnumpy.models.fold_batchnorm`, as `cnnumpy export --fold-batchnorm` deploys it; outputs
  equal up to float rounding) against PyTorch's eager inference as before. PyTorch runs the
  same architecture, built from the cnnumpy model by `torch_mirror.py` (same weights; its
  BatchNorm is PyTorch's own).
  Each figure is the median of `--repeats` timed runs after `--warmup` untimed ones. The two
  frameworks take turns in blocks of `BLOCK` timed runs (which one goes first alternates), so
  that a load spike from another process hits both alike; each block starts with one untimed
  run. That run matters: right after the other library's call, its worker threads are still
  spinning on the cores (OpenBLAS's and PyTorch's OpenMP threads both busy-wait for a while
  before they sleep), and measured there, a PyTorch step took twice as long, a cnnumpy step
  6-12% longer. Both models hold the same weights, and their losses are compared once as
  a sanity check.
- the ratio cnnumpy / PyTorch of every row (>= 1 means cnnumpy is at least as fast);
- the machine's float32 GEMM rate through NumPy (median of square 1024 products), the useful
  FLOPs of a training step (3 x the forward multiply-adds x 2 of the convolutions and linear
  layers: forward, dX and dW), and the fraction of the GEMM rate each framework reaches;
- a per-layer breakdown of cnnumpy's forward and backward time (one training pass over one
  part of the batch as each worker of the step runs it: batch / workers images, BLAS on one
  thread; every leaf layer timed), next to each layer's GEMM time at the one-thread rate
  (the floor a GEMM-bound layer cannot beat); for ResNet-20, summed by layer type. The parts
  run side by side on the cores, sharing caches and memory bandwidth, so the step takes
  somewhat longer than one part alone;
- peak memory of a training step. Method: a fresh subprocess per framework and shape imports
  only that framework (for cnnumpy with the `fast` extra, Numba too, and its BatchNorm loops
  are loaded: `functional.fused.prepare`, 135 MiB of a process that the steps would
  otherwise count once in each process), builds the model and the data (parameter gradients
  allocated), resets
  the kernel's peak-RSS counter (writes 5 to /proc/self/clear_refs), runs warm-up and timed
  training steps, and reports VmHWM - VmRSS-before: every byte the steps made resident
  (activations, caches, gradients, momentum buffers, allocator slack). For cnnumpy it also
  reports the tracemalloc peak of one step (live NumPy allocations only, no allocator slack;
  the step starts with an empty `cnnumpy.workspace`, so its recycled arrays count). With the
  batch split over worker processes, they are forked before the counters are reset, and
  what the steps add to each one's peak RSS is added to the total (pages a worker shares
  with the process it was forked from count once; a shared page it writes becomes its own
  without raising its RSS, so those copies are not counted). The mappings a worker shares
  with the caller (parameters, gradients, the boards of BatchNorm's sums) are in both RSS
  figures: what a worker's steps made resident there (measured after the steps) is taken
  off its peak growth (16 MiB of SimpleCNN's 3x32x32 step, 2 MiB of ResNet-20's), so they
  count once.

`--split threads` times cnnumpy with the batch split over threads of one process instead of
worker processes (`cnnumpy train --split`; processes are its default on Linux).

`--threads N` sets both libraries to N threads (OpenBLAS through OPENBLAS_NUM_THREADS, set
before NumPy is imported, and cnnumpy's batch split into N parts; PyTorch through
torch.set_num_threads). On a machine shared with
other jobs, one thread each compares the arithmetic without the cost of waiting for a
descheduled worker thread, which both threaded libraries pay at every parallel call.

PyTorch must be installed as `pip install torch==2.13.0`; without it only cnnumpy is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import contextlib
from contextlib import contextmanager

PROCESSES = "--split" not in sys.argv or sys.argv[sys.argv.index("--split") + 1] != "threads"
WORKERS = None  # cnnumpy's parts per batch (cnnumpy.parallel): default, the available CPUs
if "--threads" in sys.argv[:-1]:  # must precede the first import of NumPy
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
    WORKERS = int(sys.argv[sys.argv.index("--threads") + 1])

import numpy as np  # noqa: E402

import cnnumpy as cn  # noqa: E402
from cnnumpy.parallel import BatchParallel, batch_parts, blas_threads  # noqa: E402

try:
    import torch
except ImportError:  # the benchmark still times cnnumpy alone
    torch = None

# (model, input shape, batch); --models picks among the models.
SHAPES = [("simplecnn", (3, 32, 32), 64), ("simplecnn", (1, 28, 28), 128),
          ("resnet20", (3, 32, 32), 128)]
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9


# --------------------------------------------------------------------------- cnnumpy side


class CnnumpyRunner:
    """A model of the registry with cnnumpy's softmax cross-entropy and SGD with momentum."""

    def __init__(self, name, input_shape, batch, seed=0):
        rng = np.random.default_rng(seed)
        self.model = cn.build_model({"name": name, "input_shape": list(input_shape),
                                     "num_classes": NUM_CLASSES}, rng=rng)
        self.x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        self.y = rng.integers(0, NUM_CLASSES, batch)
        self.criterion = cn.CrossEntropyLoss()
        self.optimizer = cn.SGD(self.model, lr=LR, momentum=MOMENTUM)
        # as `cnnumpy train`: the batch over the cores, in worker processes (Linux) by default
        self.passes = BatchParallel(self.model, WORKERS, processes=PROCESSES)

    def loss_and_grad(self, logits):
        """Mean softmax cross-entropy and its gradient dloss/dlogits = (softmax - onehot) / N."""
        loss = self.criterion.forward(logits, self.y)
        return loss, self.criterion.backward()

    def train_step(self):
        # forward, loss, backward (the images need no gradient, as in PyTorch), update
        loss, _ = self.passes.forward_backward(self.x, self.y, self.criterion)
        self.optimizer.step()
        return loss.item()

    def infer(self):
        self.model.eval()  # BatchNorm with its running statistics, as PyTorch's eval()
        out = self.passes.forward(self.x)  # no caches, as PyTorch's inference_mode
        self.model.train()
        return out

    def folded_inference(self):
        """Inference by a copy of the model with each BatchNorm folded into the convolution
        before it (what `cnnumpy export --fold-batchnorm` writes); None without BatchNorm."""
        if not any(isinstance(m, cn.BatchNorm2D) for m in self.model.modules()):
            return None
        folded = BatchParallel(cn.models.fold_batchnorm(self.model), WORKERS,
                               processes=PROCESSES)
        return lambda: folded.forward(self.x)


# --------------------------------------------------------------------------- PyTorch side


class TorchRunner:
    """The same architecture in PyTorch (`torch_mirror.mirror`), with the cnnumpy model's
    weights."""

    def __init__(self, cn_model, x, y):
        from torch_mirror import mirror

        self.model = mirror(cn_model)
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)  # allocated up front, as cnnumpy's dW, db
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step(self):
        self.opt.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self):
        self.model.eval()
        with torch.inference_mode():
            out = self.model(self.x)
        self.model.train()
        return out


# --------------------------------------------------------------------------- measurements


BLOCK = 5  # timed runs of one framework before the other takes its turn


def interleaved_medians(fns: dict, warmup: int, repeats: int) -> dict:
    """Median seconds of each callable over `repeats` timed runs, taken in alternating blocks of
    `BLOCK` runs, each block after one untimed run (see the module doc); the order of the
    callables is flipped each round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(-(-repeats // BLOCK)):
        for name in (names if r % 2 == 0 else names[::-1]):
            fns[name]()  # the other library's threads may still be spinning
            for _ in range(min(BLOCK, repeats - len(times[name]))):
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def blas_kernel() -> str:
    """The BLAS library and the kernel it runs, as threadpoolctl reports them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    return ", ".join(f"{info.get('internal_api')} {info.get('version')} "
                     f"{info.get('architecture')} ({info.get('num_threads')} threads)"
                     for info in threadpool_info() if info.get("user_api") == "blas")


def gemm_rate(n=1024, repeats=15) -> float:
    """float32 GFLOP/s of NumPy's matmul on square n x n operands (2 n^3 flops), median."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def layer_forward_flops(model, input_shape) -> dict:
    """Multiply-add FLOPs (2 per MAC) of each convolution and linear layer's forward, per
    image, by leaf name (from the summary's traced MACs)."""
    rows = cn.summary.summarize(model, input_shape).rows
    return {row.name: 2 * row.macs for row in rows if row.leaf and row.macs}


@contextmanager
def timed_leaves(model, methods=("forward", "backward")):
    """Inside the block, every leaf layer's `methods` (those it has) record their seconds: yields
    ({method: {leaf name: [seconds, ...]}}, [leaf names in the order forward first ran them],
    {leaf name: leaf}); the methods are restored on exit."""
    times = {method: {} for method in methods}
    order: list[str] = []
    leaves = dict(model.named_layers())

    def timed(name, method, into):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = method(*args, **kwargs)
            into.setdefault(name, []).append(time.perf_counter() - start)
            if name not in order:
                order.append(name)
            return out
        return run

    wrapped = [(name, leaf, method) for name, leaf in leaves.items() for method in methods
               if hasattr(leaf, method)]  # a method some leaves lack: theirs only
    for name, leaf, method in wrapped:
        setattr(leaf, method, timed(name, getattr(leaf, method), times[method]))
    try:
        yield times, order, leaves
    finally:
        for _, leaf, method in wrapped:
            delattr(leaf, method)


def per_layer_times(runner: CnnumpyRunner, warmup: int, repeats: int):
    """Median forward and backward seconds of every leaf layer in one training pass over one
    part of the batch, as each worker of the training step runs it (`BatchParallel`: the
    first batch / workers images, BLAS held to one thread when the batch is split; the parts
    run side by side, one a core), [(name, type, forward, backward)] in the order forward
    runs them, and the part's number of images."""
    model, workers = runner.model, runner.passes.workers
    part = -(-len(runner.x) // workers)
    x, y = runner.x[:part], runner.y[:part]
    blas = blas_threads(1) if workers > 1 else contextlib.nullcontext()
    with timed_leaves(model) as (times, order, leaves), blas:
        fwd, bwd = times["forward"], times["backward"]
        for r in range(warmup + repeats):
            if r == warmup:
                fwd.clear(), bwd.clear()
            runner.criterion.forward(model.forward(x), y)
            model.backward(runner.criterion.backward(), input_grad=False)
    return [(name, type(leaves[name]).__name__, statistics.median(fwd[name]),
             statistics.median(bwd.get(name, [0.0]))) for name in order], part


def memory_child(framework: str, shape_index: int, steps: int) -> dict:
    """Run in a fresh subprocess: peak resident bytes added by training steps (see module doc)."""
    name, input_shape, batch = SHAPES[shape_index]
    runner = CnnumpyRunner(name, input_shape, batch)
    if framework == "torch":
        runner = TorchRunner(runner.model, runner.x, runner.y)
    workers = []
    if framework == "cnnumpy" and cn.functional.fused.enabled:
        cn.functional.fused.prepare()  # Numba's runtime and loops: the library, as torch's is
    if framework == "cnnumpy" and runner.passes.processes and runner.passes.workers > 1:
        # the worker processes forked now, so that the steps' growth in them is counted
        count = len(batch_parts(batch, runner.passes.workers)) - 1
        workers = runner.passes._workers_for(count, runner.criterion).pids
    pids = ["self", *workers]
    before = [_status_kib("VmRSS", pid) for pid in pids]
    shared_before = [_shared_kib(pid) for pid in workers]
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    for _ in range(steps):
        runner.train_step()
    peaks = [_status_kib("VmHWM", pid) - rss for pid, rss in zip(pids, before)]
    # the memory a worker shares with the caller (parameters, gradients, sum boards) is in
    # the caller's RSS too: take off what the steps made resident there in the worker (an
    # estimate: measured after the steps, taken off a peak; the caller touches all of it)
    for i, (pid, shared) in enumerate(zip(workers, shared_before), start=1):
        peaks[i] -= _shared_kib(pid) - shared
    result = {"rss_peak_mib": sum(peaks) / 1024, "processes": len(pids)}
    if framework == "cnnumpy":
        cn.workspace.release()  # so that the traced step allocates its recycled arrays again
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        runner.train_step()
        result["tracemalloc_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
    return result


def _shared_kib(pid) -> int:
    """KiB resident in the shared mappings of process pid (those whose permissions end in s,
    from /proc/pid/smaps)."""
    total, shared = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and len(fields[1]) == 4:  # a mapping
                shared = fields[1].endswith("s")
            elif shared and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def _status_kib(key: str, pid="self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


def measure_memory(framework: str, shape_index: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", framework, str(shape_index),
         "--split", "processes" if PROCESSES else "threads"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- report


def shape_label(name, input_shape, batch) -> str:
    return f"{name} " + "x".join(map(str, input_shape)) + f" b{batch}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer breakdown")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both libraries (default: each library's own default)")
    parser.add_argument("--split", choices=("processes", "threads"), default="processes",
                        help="cnnumpy's batch split over the cores, as `cnnumpy train "
                             "--split` (default processes, as there on Linux)")
    parser.add_argument("--models", nargs="+", default=sorted({name for name, _, _ in SHAPES}),
                        help="which models to time (default: all)")
    parser.add_argument("--memory-child", nargs=2, metavar=("FRAMEWORK", "SHAPE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads and torch:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[0], int(args.memory_child[1]), steps=4)))
        return

    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"cnnumpy {cn.__version__}, NumPy {np.__version__} (OpenBLAS threads: {threads}), "
          + (f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)" if torch
             else "PyTorch not installed")
          + f", Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"BLAS: {blas_kernel()} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})")
    gflops = gemm_rate()
    print(f"NumPy float32 GEMM (1024^3): {gflops:.0f} GFLOP/s\n")

    rows, breakdowns, flop_rows = [], [], []
    workloads = [(i, *w) for i, w in enumerate(SHAPES) if w[0] in args.models]
    for _, name, input_shape, batch in workloads:
        ours = CnnumpyRunner(name, input_shape, batch)
        theirs = TorchRunner(ours.model, ours.x, ours.y) if torch else None
        if theirs:  # same weights, same data: the same loss
            loss_ours, loss_theirs = ours.train_step(), theirs.train_step()
            if not np.isclose(loss_ours, loss_theirs, rtol=1e-3):
                raise RuntimeError(f"losses differ: cnnumpy {loss_ours}, torch {loss_theirs}")
        label = shape_label(name, input_shape, batch)
        ours_by_mode = {"train": ours.train_step, "infer": ours.infer,
                        "folded": ours.folded_inference()}  # None: nothing to fold
        rates = {}
        for mode, cnnumpy_fn in ours_by_mode.items():
            if cnnumpy_fn is None:
                continue
            fns = {"cnnumpy": cnnumpy_fn}
            if theirs:
                fns["torch"] = theirs.train_step if mode == "train" else theirs.infer
            secs = interleaved_medians(fns, args.warmup, args.repeats)
            rates[mode] = {k: batch / s for k, s in secs.items()}
            rows.append((label, mode, rates[mode]))
        flops = layer_forward_flops(ours.model, input_shape)
        step_flops = 3 * sum(flops.values())
        flop_rows.append((label, step_flops, rates["train"]))
        if not args.no_layers:
            layers, part = per_layer_times(ours, args.warmup, args.repeats)
            with blas_threads(1) if ours.passes.workers > 1 else contextlib.nullcontext():
                part_gflops = gemm_rate()  # the BLAS a part runs on
            breakdowns.append((label, part, ours.passes.workers, part_gflops, flops, layers))

    print(f"{'workload':<25}{'step':<8}{'cnnumpy img/s':>14}{'torch img/s':>13}{'ratio':>7}")
    for label, mode, rate in rows:
        torch_rate = rate.get("torch")
        print(f"{label:<25}{mode:<8}{rate['cnnumpy']:>14.0f}"
              + (f"{torch_rate:>13.0f}{rate['cnnumpy'] / torch_rate:>7.2f}" if torch_rate else ""))

    print("\nTraining step against the GEMM rate (useful FLOPs = 3 x forward multiply-adds)")
    print(f"{'workload':<25}{'MFLOP/img':>10}{'cnnumpy GFLOP/s':>16}{'of GEMM':>8}"
          f"{'torch GFLOP/s':>14}{'of GEMM':>8}")
    for label, step_flops, rate in flop_rows:
        line = f"{label:<25}{step_flops / 1e6:>10.1f}"
        for fw in ("cnnumpy", "torch"):
            if fw in rate:
                achieved = step_flops * rate[fw] / 1e9
                line += f"{achieved:>16.1f}{achieved / gflops:>8.0%}" if fw == "cnnumpy" \
                    else f"{achieved:>14.1f}{achieved / gflops:>8.0%}"
        print(line)

    for label, part, workers, part_gflops, flops, layers in breakdowns:
        by_type = len(layers) > 20  # a deep network: one row per layer type
        if by_type:
            grouped: dict = {}
            for name, kind, f, b in layers:
                entry = grouped.setdefault(kind, [kind, kind, 0.0, 0.0, 0])
                entry[2] += f
                entry[3] += b
                entry[4] += flops.get(name, 0)
            flops = {kind: entry[4] for kind, entry in grouped.items()}
            layers = [(kind, kind, f, b) for kind, _, f, b, _ in grouped.values()]
        total = sum(f + b for _, _, f, b in layers)
        print(f"\ncnnumpy per layer{' type' if by_type else ''}, {label}: ms for one part of "
              f"{part} images, as each of the step's {workers} workers runs it side by side "
              f"(GEMM floor = FLOPs / the part's GEMM rate, {part_gflops:.0f} GFLOP/s)")
        print(f"{'layer':<20}{'forward':>9}{'backward':>10}{'share':>7}{'GEMM floor f+b':>16}")
        for name, _, f, b in layers:
            floor = (f"{3 * flops[name] * part / part_gflops / 1e6:>16.2f}" if flops.get(name)
                     else "")
            print(f"{name:<20}{f * 1e3:>9.2f}{b * 1e3:>10.2f}{(f + b) / total:>7.0%}{floor}")
        print(f"{'total':<20}{sum(f for _, _, f, _ in layers) * 1e3:>9.2f}"
              f"{sum(b for _, _, _, b in layers) * 1e3:>10.2f}")

    if not args.no_memory:
        print("\nPeak memory of a training step (MiB; RSS added by the steps in a fresh process, "
              "and in cnnumpy's worker processes)")
        print(f"{'workload':<25}{'cnnumpy':>9}{'torch':>9}{'cnnumpy tracemalloc':>21}")
        for i, name, input_shape, batch in workloads:
            ours = measure_memory("cnnumpy", i)
            line = f"{shape_label(name, input_shape, batch):<25}{ours['rss_peak_mib']:>9.1f}"
            line += f"{measure_memory('torch', i)['rss_peak_mib']:>9.1f}" if torch else f"{'-':>9}"
            print(line + f"{ours['tracemalloc_peak_mib']:>21.1f}")


if __name__ == "__main__":
    main()
