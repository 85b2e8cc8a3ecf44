"""The optimizer's update, whole parameters against blocks: what `Optimizer.block` buys.

    python benchmarks/bench_optim.py [--model simplecnn] [--input-shape 1,28,28] [--repeats 30]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_optim.py

An update rule is a handful of elementwise passes (SGD with Nesterov momentum and weight
decay: d = g + λp, b = μb + d, d = d + μb, p = p - lr·d), each making a temporary the size of
what it updates. Over a whole parameter of millions of elements every temporary goes through
main memory; over a block of a few ten thousand it stays in the L2 cache. The benchmark times
`optimizer.step()` on the model's parameters (float32, random gradients) with the block
sizes given (0: each parameter whole), median of `--repeats` steps after one untimed step,
for SGD (the CLI's recipe) and Adam. No BLAS is involved; its kernel is printed as in the
other benchmarks, since the elementwise passes share the machine's memory bandwidth with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cnnumpy as cn  # noqa: E402
from bench_vs_torch import blas_kernel  # noqa: E402
from cnnumpy.registry import build_model  # noqa: E402

OPTIMIZERS = {
    "SGD nesterov": lambda m: cn.SGD(m, lr=0.05, momentum=0.9, nesterov=True,
                                     weight_decay=5e-4),
    "Adam": lambda m: cn.Adam(m, lr=1e-3, weight_decay=5e-4),
}


def time_steps(optimizer, repeats: int) -> float:
    """Median seconds of one `optimizer.step()`, after one untimed step."""
    optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplecnn")
    parser.add_argument("--input-shape", default="1,28,28")
    parser.add_argument("--blocks", default="0,8192,32768,65536,262144",
                        help="elements per block, comma-separated (0: each parameter whole)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split(","))
    model = build_model({"name": args.model, "input_shape": shape, "num_classes": 10},
                        rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for grad in model.gradients().values():
        grad[...] = rng.standard_normal(grad.shape, dtype=np.float32)
    sizes = sorted(p.size for p in model.parameters().values())
    print(f"{args.model} at {shape}: {model.num_parameters():,} float32 parameters, largest "
          f"{sizes[-1]:,} elements; BLAS: {blas_kernel()} "
          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}); "
          f"cnnumpy's default block {cn.SGD.block:,}")
    blocks = [int(v) for v in args.blocks.split(",")]
    print(f"{'optimizer':14s}" + "".join(f"{(f'block {b:,}' if b else 'whole'):>15s}"
                                         for b in blocks))
    for name, make in OPTIMIZERS.items():
        row = []
        for block in blocks:
            optimizer = make(model)
            optimizer.block = block or model.num_parameters()
            row.append(time_steps(optimizer, args.repeats))
        line = f"{name:14s}" + "".join(f"{seconds * 1e3:12.1f} ms" for seconds in row)
        blocked = [seconds for block, seconds in zip(blocks, row) if block]
        if 0 in blocks and blocked:
            line += f"   whole / best block: {row[blocks.index(0)] / min(blocked):.2f}"
        print(line)


if __name__ == "__main__":
    main()
