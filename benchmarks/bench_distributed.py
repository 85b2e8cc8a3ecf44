"""Data-parallel training over MPI ranks on one machine: 1 rank against 2, SimpleCNN (or --model) 1x28x28.

    python benchmarks/bench_distributed.py [--rounds 3] [--steps 30] [--warmup 5] [--json F]
                                           [--model resnet20]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_distributed.py

Needs the extra `mpi` (mpi4py, Open MPI's mpirun) and Fashion-MNIST. Each configuration is an
MPI job (`mpirun -n P` of this script with --worker) that trains SimpleCNN (1x28x28, PyTorch's
uniform initialisation; or with --model a zoo model such as resnet20, its own initialisation,
whose BatchNorms also sum their statistics over the ranks or the threads at every layer;
SGD Nesterov, crop + flip) with `cnnumpy.fit` on global batches of 128
Fashion-MNIST images, BLAS held to one thread per rank:

    1 rank          one process, BatchParallel off (workers=1)
    2 ranks         two processes of 64 images each, BatchParallel off, the flat buffers of
                    parameters and gradients in memory the ranks share (the default on one
                    machine: `cnnumpy.distributed.NodeMemory`)
    2 ranks sent    the same, the buffers sent by Reduce_scatter and Allgatherv (what ranks
                    on several machines do: `Group(node_memory=False)`)
    1 proc x2       one process, BatchParallel over 2 threads (the single-machine default),
                    for reference, not bound to one core (`--bind-to none`: Open MPI binds
                    a job of one or two ranks core by core, and before this option the two
                    threads shared one core)

A step is the time between two of fit's callbacks on rank 0 (gather, augment, forward,
backward, the gradient exchange, the optimizer step, the stop agreement); the figure is the median
over `--steps` steps after `--warmup` (and, on a machine shared with other jobs, the fastest
step of all rounds, the least disturbed). The configurations take turns, in an order that
alternates round by round, so that the other load on a shared machine hits them alike.
For 2 ranks it also reports per step, on rank 0: the exchange as fit sees it (shared: the
loss sum, which no rank leaves before every rank's gradients are written, adding the other
rank's half of the gradients to this rank's, and a barrier after the update; sent: the Reduce_scatter that sums this rank's half of the flat
buffer of gradients, the loss sum, writing the half back, and after the update the
Allgatherv of the new parameters into their flat buffer), both including the wait for the
slower rank; for "sent", the two MPI calls alone and the Reduce_scatter and Allgatherv of
the same buffer (SimpleCNN's 6.5 MB) right after a Barrier (the transfer alone, no waiting); the stop
agreement; and the SGD update, which each rank makes for its half of the parameters.

`--json F` writes the figures for benchmarks/scaling_model.py --measured F.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cnnumpy.registry import MODELS, model_class

# name: (ranks, workers, node memory)
CONFIGS = {"1 rank": (1, 1, True), "2 ranks": (2, 1, True), "2 ranks sent": (2, 1, False),
           "1 proc x2": (1, 2, True)}
BATCH = 128


def worker(args) -> None:
    """One rank of a configuration: train, time, print one JSON line on rank 0."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import cnnumpy as cn
    from cnnumpy import distributed
    from cnnumpy.data import load_dataset

    spent: dict[str, list[float]] = {key: [] for key in
                                     ("reduce", "share", "scatter", "gather", "agree", "update")}

    def timed(key, method):
        def run(*a, **k):
            started = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                spent[key].append(time.perf_counter() - started)
        return run

    class TimedGroup(distributed.Group):
        sum_parts = timed("scatter", distributed.Group.sum_parts)
        share_parts = timed("gather", distributed.Group.share_parts)
        any = timed("agree", distributed.Group.any)

    distributed.Replicas.reduce = timed("reduce", distributed.Replicas.reduce)
    distributed.Replicas.share = timed("share", distributed.Replicas.share)
    group = TimedGroup(timeout=300, node_memory=not args.sent)
    steps = args.warmup + args.steps
    train = load_dataset("fashion-mnist", "train").subset(slice(0, BATCH * steps))
    if args.model == "simplecnn":
        model = cn.SimpleCNN(train.sample_shape, train.num_classes,
                             rng=np.random.default_rng(0), init="uniform")
    else:  # a zoo model at the images' shape, its own initialisation
        model = model_class(args.model)(input_shape=train.sample_shape,
                                        num_classes=train.num_classes,
                                        rng=np.random.default_rng(0))
    opt = cn.SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt.step = timed("update", opt.step)
    stamps: list[float] = []
    with threadpool_limits(limits=1, user_api="blas"):
        cn.fit(model, train, optimizer=opt, epochs=1, batch_size=BATCH,
               rng=np.random.default_rng(0), progress=False, verbose=False,
               handle_signals=False, workers=args.workers, communicator=group,
               callbacks=[lambda info: stamps.append(time.perf_counter())])
        transfer = []
        if group.size > 1 and group.node_memory is None:
            buffer = np.ones(model.num_parameters(), np.float32)
            counts = distributed.Replicas(model, group)._counts()
            for _ in range(args.steps):
                group.comm.Barrier()
                started = time.perf_counter()
                distributed.Group.sum_parts(group, buffer, counts)
                distributed.Group.share_parts(group, buffer, counts)
                transfer.append(time.perf_counter() - started)
    if group.rank != 0:
        return
    steps = [b - a for a, b in zip(stamps[args.warmup - 1:], stamps[args.warmup:])]
    step = statistics.median(steps)
    median = {key: statistics.median(values[args.warmup:]) if values[args.warmup:] else None
              for key, values in spent.items()}
    blas = [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for info in threadpool_info() if info.get("user_api") == "blas"]
    print(json.dumps({"ranks": group.size, "workers": args.workers, "step": step,
                      "images_per_s": BATCH / step, "best_step": min(steps), **median,
                      "transfer": statistics.median(transfer) if transfer else None,
                      "buffer_mb": 4 * model.num_parameters() / 1e6, "blas": blas}))


def run_config(name: str, args) -> dict:
    ranks, workers, node_memory = CONFIGS[name]
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # Open MPI binds each of 2 or fewer ranks to one core: a process with two worker threads
    # must be let run on both
    binding = ["--bind-to", "none"] if workers > 1 else []
    result = subprocess.run(
        [mpirun, "-n", str(ranks), *binding, sys.executable, __file__, "--worker", "--workers",
         str(workers), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--model", args.model, *([] if node_memory else ["--sent"])],
        capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed: {result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ms(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--model", default="simplecnn", type=str.lower,
                        choices=sorted(MODELS),
                        help="simplecnn (default, PyTorch's uniform initialisation), or a zoo "
                             "model that takes 1x28x28 images, such as resnet20 (its own)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--sent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; global batch {BATCH}, "
          f"median of {args.steps} steps after {args.warmup}")
    rounds = []
    for number in range(args.rounds):
        order = list(CONFIGS) if number % 2 == 0 else list(reversed(CONFIGS))
        rounds.append({name: run_config(name, args) for name in order})
    blas = rounds[0]["1 rank"]["blas"]
    print("BLAS (threadpoolctl): " + "; ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']}, {b['num_threads']} thread(s)"
        for b in blas))
    print(f"\n{'round':<6}" + "".join(f"{name + ' img/s':>18}" for name in CONFIGS)
          + f"{'2 ranks / 1':>12}{'sent / 1':>9}{'step ms':>8}{'exch.':>7}{'sent':>7}"
          f"{'MPI':>6}{'agree':>6}{'transfer':>9}{'update':>7}")
    ratios, sent_ratios = [], []
    for number, figures in enumerate(rounds, start=1):
        one, two, sent = figures["1 rank"], figures["2 ranks"], figures["2 ranks sent"]
        ratios.append(two["images_per_s"] / one["images_per_s"])
        sent_ratios.append(sent["images_per_s"] / one["images_per_s"])
        print(f"{number:<6}" + "".join(f"{figures[name]['images_per_s']:>18.0f}"
                                       for name in CONFIGS)
              + f"{ratios[-1]:>12.2f}{sent_ratios[-1]:>9.2f}{ms(two['step']):>8}"
              f"{ms(two['reduce'] + two['share']):>7}{ms(sent['reduce'] + sent['share']):>7}"
              f"{ms(sent['scatter'] + sent['gather']):>6}{ms(two['agree']):>6}"
              f"{ms(sent['transfer']):>9}{ms(two['update']):>7}")
    print(f"\nmedian ratio 2 ranks / 1 rank: {statistics.median(ratios):.2f} shared, "
          f"{statistics.median(sent_ratios):.2f} sent "
          f"(gradient buffer {rounds[0]['2 ranks']['buffer_mb']:.2f} MB)")
    best = {name: min(figures[name]["best_step"] for figures in rounds) for name in CONFIGS}
    print("fastest step of all rounds (the least disturbed by other load), img/s: "
          + ", ".join(f"{name} {BATCH / best[name]:.0f}" for name in CONFIGS)
          + f"; ratio 2 ranks / 1 rank {best['1 rank'] / best['2 ranks']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "batch": BATCH,
                                         "model": args.model}, indent=1))


if __name__ == "__main__":
    main()
