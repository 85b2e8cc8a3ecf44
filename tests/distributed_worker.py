"""A short seeded fit, as one rank of an MPI job (`mpirun -n P python distributed_worker.py
RUN_DIR [options]`) or in one process (`toy_fit` from a test), for test_distributed.py.

SimpleCNN in float64 on 34 toy images of 8x8 with batches of 16: the last batch of an epoch
has 2 images, so with 3 ranks one rank has none. With --model normdrop, `NormDrop` (BatchNorm
and Dropout, whose results depend on the whole batch) on 35 images. Rank 0 writes
RUN_DIR/last.npz.
"""

import argparse
import copy
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import cnnumpy as cn
from cnnumpy.data import ImageDataset


def toy_data(rng, count, size=8, classes=3):
    labels = rng.integers(0, classes, count)
    noise = rng.integers(0, 60, (count, 1, size, size))
    images = (noise + labels[:, None, None, None] * 90).astype(np.uint8)
    return ImageDataset(images, labels.astype(np.int64), tuple("abc"[:classes]), "toy")


class NormDrop(cn.Sequential):
    """Conv, BatchNorm2D, ReLU, Dropout, pool, Linear, BatchNorm1D, ReLU, Dropout, Linear: a
    small model with every layer whose result depends on the rest of the batch."""

    def __init__(self, input_shape=(1, 8, 8), num_classes=3, *, rng=None, dtype=np.float32):
        c, h, w = input_shape
        super().__init__({
            "conv": cn.Conv2D(c, 4, 3, padding=1, rng=rng, dtype=dtype),
            "bn": cn.BatchNorm2D(4, dtype=dtype), "relu": cn.ReLU(),
            "drop": cn.Dropout(0.3, rng=rng), "pool": cn.MaxPool2D(2), "flat": cn.Flatten(),
            "fc1": cn.Linear(4 * (h // 2) * (w // 2), 6, rng=rng, dtype=dtype),
            "bn1": cn.BatchNorm1D(6, dtype=dtype), "relu1": cn.ReLU(),
            "drop1": cn.Dropout(0.2, rng=rng), "fc2": cn.Linear(6, num_classes, rng=rng,
                                                                 dtype=dtype)})
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def config(self):
        return {"name": "NormDrop", "input_shape": list(self.input_shape),
                "num_classes": self.num_classes}


cn.register_model(NormDrop)


def toy_model(name: str, seed: int):
    if name == "normdrop":
        return NormDrop((1, 8, 8), 3, rng=np.random.default_rng(seed), dtype=np.float64)
    return cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(seed), dtype=np.float64)


def toy_fit(run_dir, communicator=None, *, epochs=3, seed=0, batch_size=16, callbacks=(),
            resume=None, count=34, model="simplecnn", workers=1, optimizer="sgd",
            replace_at=None, factor=1.0, validate=True, kept=None, lr=0.05):
    """fit on toy data; replace_at: after that step, every parameter becomes a new array,
    `factor` times the old (as `astype` or a reassigned layer would make new arrays); kept: a
    list that gets the model's parameters (the arrays themselves) after every step."""
    data_rng = np.random.default_rng(123)
    train, val = toy_data(data_rng, count), toy_data(data_rng, 11)
    model = toy_model(model, seed + 1)

    def replace(info):
        if info.step == replace_at:
            for _, module, key in model.parameter_places():
                setattr(module, key, getattr(module, key) * factor)
        if kept is not None:
            kept[:] = model.parameters().values()

    callbacks = (*callbacks, replace)
    opt = cn.SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4) \
        if optimizer == "sgd" else cn.Adam(model, lr=0.01, weight_decay=5e-4)
    steps = epochs * -(-count // batch_size)
    return model, cn.fit(model, train, val if validate else None, optimizer=opt, epochs=epochs, batch_size=batch_size,
                         schedule=cn.OneCycle(lr, total_steps=steps),
                         rng=np.random.default_rng(seed), run_dir=run_dir, resume=resume,
                         callbacks=callbacks, progress=False, verbose=False, workers=workers,
                         communicator=communicator)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed-of-rank-1", type=int, help="rank 1 uses this seed")
    parser.add_argument("--batch-of-rank-1", type=int, help="rank 1 uses this batch size")
    parser.add_argument("--hang", type=int, nargs=2, metavar=("RANK", "STEP"),
                        help="rank RANK hangs after step STEP")
    parser.add_argument("--die", type=int, nargs=2, metavar=("RANK", "STEP"),
                        help="rank RANK is killed (SIGKILL) after step STEP")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--model", choices=("simplecnn", "normdrop"), default="simplecnn")
    parser.add_argument("--workers", type=int, default=1, help="BatchParallel's parts per rank")
    parser.add_argument("--check-every", type=int, default=1)
    parser.add_argument("--no-node-memory", action="store_true",
                        help="send the buffers (the collectives of several machines)")
    parser.add_argument("--no-room", action="store_true",
                        help="as if /dev/shm were too small for the shared buffers")
    parser.add_argument("--replace-at", type=int, metavar="STEP",
                        help="every rank replaces its parameter arrays after STEP")
    parser.add_argument("--replace-on-rank-0-only", action="store_true")
    parser.add_argument("--factor", type=float, default=1.0, help="of the replaced arrays")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--keep-parameters", action="store_true",
                        help="a callback keeps the model's parameter arrays of the last step")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--run-dir-on-rank-0-only", action="store_true",
                        help="the other ranks get run_dir=None")
    parser.add_argument("--signal-at", type=int, metavar="STEP",
                        help="rank 0 prints 'step N' and waits a moment after each step from STEP "
                             "on, for the test to signal mpirun")
    args = parser.parse_args()
    from cnnumpy.distributed import Group

    if args.no_room:
        cn.distributed.NodeMemory.fits = lambda self, nbytes: False
    group = Group(timeout=args.timeout, check_every=args.check_every,
                  node_memory=not args.no_node_memory)
    rank = group.rank
    split = group.split(10)  # the BatchSplit of rank's part of a batch of 10: sum over ranks
    print(f"rank {rank}: part from {split.start} of {split.total}, sum of rank + 1 over the "
          f"ranks {split.sum(np.array([rank + 1.0]))[0]:g}", flush=True)
    seed = args.seed_of_rank_1 if rank == 1 and args.seed_of_rank_1 is not None else 0
    batch_size = args.batch_of_rank_1 if rank == 1 and args.batch_of_rank_1 else 16

    def callback(info):
        if args.hang and rank == args.hang[0] and info.step == args.hang[1]:
            time.sleep(3600)
        if args.die and rank == args.die[0] and info.step == args.die[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.signal_at is not None and rank == 0 and info.step >= args.signal_at:
            print(f"step {info.step}", flush=True)
            time.sleep(0.3)

    run_dir = Path(args.run_dir)
    resume = run_dir / "last.npz" if args.resume else None
    if args.run_dir_on_rank_0_only and rank != 0:
        run_dir = None
    kept = [] if args.keep_parameters else None
    try:
        model, history = toy_fit(run_dir, group, epochs=args.epochs, seed=seed,
                             batch_size=batch_size, callbacks=[callback], resume=resume,
                             model=args.model, count=35 if args.model == "normdrop" else 34,
                             workers=args.workers, optimizer=args.optimizer,
                             replace_at=None if args.replace_on_rank_0_only and rank != 0
                             else args.replace_at, factor=args.factor, lr=args.lr,
                             validate=not args.no_validation, kept=kept)
    except cn.distributed.AllRanksError as err:
        print(f"rank {rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"rank {rank} {history.status} {history.message}", flush=True)
    memory = group.node_memory
    print(f"rank {rank}: node memory {memory is not None}, windows left "
          f"{len(memory._windows) if memory else 0}", flush=True)
    copy.deepcopy(model)  # reads every array the model holds, caches included
    if kept:  # arrays of the run's last step, still readable
        print(f"rank {rank}: kept {sum(float(array.sum()) for array in kept):.6g}", flush=True)
    for param in model.parameters().values():  # after the run, no rank sees another's writes
        param[...] = rank
    group.barrier()
    own = all(np.all(param == rank) for param in model.parameters().values())
    print(f"rank {rank}: own weights after the run {own}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
