"""A ResNet-20 training step of two versions of cnnumpy, timed in turn.

    git worktree add /tmp/before <commit>
    python benchmarks/step_between_versions.py /tmp/before . [--rounds 8] [--steps 20]
        [--split threads] [--input-shape 1,28,28]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/step_between_versions.py ...

Each round runs one fresh process per version, one after the other: the version's `src` first
on the path, ResNet-20 (3x32x32 or `--input-shape`, 10 classes), a batch of 128 through
`BatchParallel(model, 2, processes=...)` (forward, cross-entropy, backward; no update), and
the median of `--steps` steps after two untimed ones. The machine's speed drifts from minute
to minute more than most changes move a step, so the versions alternate, and the table gives
every round's figures, sorted, and their medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, cnnumpy as cn
from cnnumpy.parallel import BatchParallel
rng = np.random.default_rng(0)
shape = tuple(int(size) for size in sys.argv[4].split(","))
model = cn.models.resnet20(input_shape=shape, num_classes=10, rng=rng)
x = rng.random((128, *shape), dtype=np.float32)
y = rng.integers(0, 10, 128)
criterion = cn.CrossEntropyLoss()
passes = BatchParallel(model, 2, processes=sys.argv[3] == "processes")
times = []
for _ in range(int(sys.argv[2]) + 2):
    start = time.perf_counter()
    passes.forward_backward(x, y, criterion)
    times.append(time.perf_counter() - start)
passes.close()
print(1e3 * statistics.median(times[2:]))
"""


def step_ms(tree: str, steps: int, split: str, shape: str) -> float:
    src = os.path.abspath(os.path.join(tree, "src"))
    if not os.path.isdir(os.path.join(src, "cnnumpy")):
        raise SystemExit(f"{tree} has no src/cnnumpy")
    out = subprocess.run([sys.executable, "-c", CHILD, src, str(steps), split, shape],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the step of {tree} failed:\n{out.stderr}")
    return float(out.stdout)


def input_shape(text: str) -> str:
    """C,H,W as three positive integers (argparse's check of --input-shape)."""
    sizes = text.split(",")
    if len(sizes) != 3 or not all(size.strip().isdigit() and int(size) > 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers), got {text!r}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, help="two checkouts of cnnumpy (each with src/)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--split", choices=("processes", "threads"), default="processes")
    parser.add_argument("--input-shape", type=input_shape, default="3,32,32",
                        help="C,H,W of the images")
    args = parser.parse_args()
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    from threadpoolctl import threadpool_info
    kernels = {info.get("architecture") for info in threadpool_info()
               if info.get("user_api") == "blas"}
    print(f"ResNet-20 at {args.input_shape}, batch 128 over 2 {args.split}; "
          f"BLAS kernel {', '.join(map(str, kernels))}"
          f" (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})")
    times = {tree: [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            times[tree].append(step_ms(tree, args.steps, args.split,
                                       args.input_shape))
    for tree, values in times.items():
        figures = " ".join(f"{value:.1f}" for value in sorted(values))
        print(f"{tree}: median {statistics.median(values):.1f} ms  ({figures})")


if __name__ == "__main__":
    main()
