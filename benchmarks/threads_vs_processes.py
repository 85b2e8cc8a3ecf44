"""What splitting a batch over two threads costs, against two processes: ResNet-20, 3x32x32.

    python benchmarks/threads_vs_processes.py [--seconds 8] [--mode infer|train]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/threads_vs_processes.py

`cnnumpy.parallel.BatchParallel` runs the two halves of a batch of 128 in two threads of one
process. This times, for inference (`forward(x, keep_cache=False)`, evaluation mode) or a
training step (forward, cross-entropy, backward):

    one part          64 images through the model in this process, BLAS on one thread
    two threads       the batch of 128 through `BatchParallel` (two parts side by side)
    worker process    the batch of 128 through `BatchParallel(processes=True)`: the second
                      part in a worker forked from this process (`cnnumpy.part_processes`),
                      meeting this one at each BatchNorm's sums in training
    process alone     64 images in a separate process (OPENBLAS_NUM_THREADS=1), alone
    two processes     two such processes started together, each its own 64 images

Figures are medians over `--seconds` of repeated passes; the in-process rows alternate pass
by pass, and the page faults of the threaded passes are counted (a fresh page costs a fault,
and one process's threads share its memory map). With the cores keeping up, two processes
take what one takes alone, and two threads what one part takes alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BATCH = 128


def build(mode: str):
    """The model, the batch, and one pass of `mode` over a given slice of the batch."""
    import numpy as np

    import cnnumpy as cn

    model = cn.models.resnet20(input_shape=(3, 32, 32), num_classes=10,
                               rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = rng.random((BATCH, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    criterion = cn.CrossEntropyLoss()
    if mode == "infer":
        model.eval()
    return model, x, y, criterion


def timed_for(seconds: float, run) -> list[float]:
    times, started = [], time.time()
    while time.time() - started < seconds:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def worker(args) -> None:
    """One process: wait for the start time, time passes over 64 images, print JSON."""
    model, x, y, criterion = build(args.mode)
    part, labels = x[: BATCH // 2], y[: BATCH // 2]

    def one_pass():
        if args.mode == "infer":
            model.forward(part, keep_cache=False)
        else:
            criterion.forward(model.forward(part), labels)
            model.backward(criterion.backward(), input_grad=False)

    for _ in range(3):
        one_pass()
    while time.time() < args.start:
        time.sleep(0.001)
    print(json.dumps({"median": statistics.median(timed_for(args.seconds, one_pass))}))


def processes(count: int, args) -> list[float]:
    """Medians of `count` worker processes started together."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    start = time.time() + 4  # after every process has imported and warmed up
    jobs = [subprocess.Popen([sys.executable, __file__, "--worker", "--mode", args.mode,
                              "--seconds", str(args.seconds), "--start", str(start)],
                             stdout=subprocess.PIPE, text=True, env=env) for _ in range(count)]
    return [json.loads(job.communicate()[0].strip().splitlines()[-1])["median"] for job in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from threadpoolctl import threadpool_info

    from cnnumpy.parallel import BatchParallel, blas_threads

    model, x, y, criterion = build(args.mode)
    forked = BatchParallel(model, 2, processes=True)

    def split_by(passes):
        """One pass of the whole batch through `passes` (threads or a worker process)."""
        if args.mode == "infer":
            return lambda: passes.forward(x)
        return lambda: passes.forward_backward(x, y, criterion)

    split, split_forked = split_by(BatchParallel(model, 2)), split_by(forked)

    def part():
        with blas_threads(1):
            if args.mode == "infer":
                model.forward(x[: BATCH // 2], keep_cache=False)
            else:
                criterion.forward(model.forward(x[: BATCH // 2]), y[: BATCH // 2])
                model.backward(criterion.backward(), input_grad=False)

    for _ in range(3):
        split(), part(), split_forked()
    one, two, two_forked, faults = [], [], [], []
    started = time.time()
    while time.time() - started < 3 * args.seconds:
        for run, into in ((part, one), (split, two), (split_forked, two_forked)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            begin = time.perf_counter()
            run()
            into.append(time.perf_counter() - begin)
            if run is split:
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    forked.close()
    alone = processes(1, args)[0]
    pair = processes(2, args)
    blas = [f"{b['internal_api']} {b['version']} {b.get('architecture')}"
            for b in threadpool_info() if b.get("user_api") == "blas"]
    print(f"ResNet-20 3x32x32, {args.mode}, batch {BATCH} in two parts of {BATCH // 2}; "
          f"BLAS {'; '.join(blas)}, {os.cpu_count()} CPUs")
    print(f"  one part, this process        {1e3 * statistics.median(one):7.1f} ms")
    print(f"  two threads (BatchParallel)   {1e3 * statistics.median(two):7.1f} ms  "
          f"({statistics.median(two) / statistics.median(one):.2f} x one part; "
          f"{statistics.median(faults):.0f} page faults a pass)")
    print(f"  a worker process (forked)     {1e3 * statistics.median(two_forked):7.1f} ms  "
          f"({statistics.median(two_forked) / statistics.median(one):.2f} x one part)")
    print(f"  one process alone             {1e3 * alone:7.1f} ms")
    print(f"  two processes at once         {1e3 * pair[0]:7.1f} and {1e3 * pair[1]:.1f} ms  "
          f"({max(pair) / alone:.2f} x alone)")


if __name__ == "__main__":
    main()
